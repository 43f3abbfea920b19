//! Incremental sync of one (connection, object) into PostgreSQL.
//!
//! * [`engine`] runs a sync job: resumes the run in progress or starts one from the stored
//!   cursor, fetches page after page through the provider client, and commits each page
//!   together with its cursor and the run's counters in one transaction — so a crashed sync
//!   resumes after its last committed page, never losing or re-fetching one.
//! * [`store`] writes a page (bulk upsert, last write wins on the remote modification time,
//!   deletes, conflicts with local pending changes).
//! * [`conflicts`] lists the conflicts and resolves them (keep the CRM's value or ours).

pub mod conflicts;
pub mod engine;
pub mod store;
pub mod writer;

pub use engine::{RunSummary, Stop, run};
