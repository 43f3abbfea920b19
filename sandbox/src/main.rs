//! `crm-sandbox`: runs the CRM imitations on loopback and prints their base URLs.
fn main() {}
