//! The close imitation (being built; not registered yet).
