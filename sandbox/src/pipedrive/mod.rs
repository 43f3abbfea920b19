//! The pipedrive imitation (being built; not registered yet).
