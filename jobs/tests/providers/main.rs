//! Provider clients against the sandbox CRMs over real HTTP: every operation, pagination and
//! changed-since semantics, and a table test mapping each sandbox fault knob to the error
//! variant the client must return. One test binary, one module per provider.

mod support;

mod actions;
mod auth;
mod hubspot;
mod salesforce;
mod sync;

mod pipedrive;

mod zoho;

mod close;
