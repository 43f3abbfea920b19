//! Integration tests of the queue against a real Redis and PostgreSQL. One test binary with
//! modules, to keep link time down.

mod support;

mod cluster;
mod processes;
mod protocol;
