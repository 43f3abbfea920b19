//! The salesforce imitation (being built; not registered yet).
