//! The zoho imitation (being built; not registered yet).
