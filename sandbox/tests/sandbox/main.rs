//! Integration tests: each test starts its own sandbox on port 0 and drives it over real HTTP, as a
//! HubSpot client following HubSpot's documentation would, plus the control plane.

mod control;
mod determinism;
mod hubspot_limits;
mod hubspot_oauth;
mod hubspot_objects;
mod hubspot_search;
mod salesforce_determinism;
mod salesforce_limits;
mod salesforce_oauth;
mod salesforce_query;
mod salesforce_sobjects;
mod salesforce_support;
mod support;

// tests: pipedrive

// tests: zoho

// tests: close
