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

mod pipedrive_limits;
mod pipedrive_oauth;
mod pipedrive_objects;
mod pipedrive_support;

mod zoho_determinism;
mod zoho_limits;
mod zoho_oauth;
mod zoho_query;
mod zoho_records;
mod zoho_support;

mod close_limits;
mod close_oauth;
mod close_objects;
mod close_search;
mod close_support;
