//! The mutation feed: changes made "as another user", and the journal every change lands in.
//!
//! Providers keep one [`Journal`] per account and push a [`Change`] for every create, update and delete,
//! whichever door it came through (`api`, `mutation`, `generator`, `control`). A
//! [`MutationRequest`] asks a provider for N deterministic creates, updates and deletes; the answer is
//! the exact [`ChangeLog`] a sync test compares against. [`Generators`] runs the same thing in the
//! background at a given rate.
//!
//! Invariant: the same account state, request and seed produce the same changes (ids, fields and
//! order); each change carries the logical time it was stamped with, which is also the record's new
//! modification time.

use crate::clock::{Millis, format_ms};
use crate::config::ProviderKind;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tokio::task::JoinHandle;

/// Kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// A record was created.
    Create,
    /// A record was updated.
    Update,
    /// A record was deleted (archived, soft-deleted or moved to the recycle bin).
    Delete,
}

/// One change to one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Per-account sequence number, from 1.
    pub seq: u64,
    /// Logical time of the change (the record's new modification time), epoch ms.
    pub at_ms: Millis,
    /// The same, RFC 3339.
    pub at: String,
    /// What happened.
    pub op: ChangeOp,
    /// Object type in the provider's own naming (`contacts`, `Contact`, `persons`, ...).
    pub object: String,
    /// Record id.
    pub id: String,
    /// Door: `api`, `mutation`, `generator` or `control`.
    pub source: String,
}

/// An account's change journal.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    next: u64,
    entries: Vec<Change>,
}

impl Journal {
    /// Appends a change and returns it.
    pub fn push(&mut self, at_ms: Millis, op: ChangeOp, object: &str, id: &str, source: &str) -> Change {
        self.next += 1;
        let c = Change {
            seq: self.next,
            at_ms,
            at: format_ms(at_ms),
            op,
            object: object.to_owned(),
            id: id.to_owned(),
            source: source.to_owned(),
        };
        self.entries.push(c.clone());
        c
    }

    /// Changes with a sequence number greater than `seq`.
    pub fn since(&self, seq: u64) -> Vec<Change> {
        let start = self.entries.partition_point(|c| c.seq <= seq);
        self.entries[start..].to_vec()
    }

    /// The last sequence number.
    pub fn last_seq(&self) -> u64 {
        self.next
    }
}

/// A request for deterministic changes, as posted to `/_sandbox/{provider}/accounts/{id}/mutations`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutationRequest {
    /// Seed of this batch (defaults to the account's journal position, so repeated calls differ but
    /// replays of the same history repeat).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Records to create.
    #[serde(default)]
    pub creates: u32,
    /// Records to update (existing, not deleted).
    #[serde(default)]
    pub updates: u32,
    /// Records to delete.
    #[serde(default)]
    pub deletes: u32,
    /// Object types to touch (the provider's names); all synced types when absent.
    #[serde(default)]
    pub objects: Option<Vec<String>>,
    /// Advance the logical clock by this many milliseconds before each change (0 = all changes share
    /// the current timestamp when the clock is frozen).
    #[serde(default)]
    pub step_ms: Option<Millis>,
}

/// The exact changes a mutation batch applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeLog {
    /// Every change, in order.
    pub changes: Vec<Change>,
    /// Created ids per object type.
    pub created: BTreeMap<String, Vec<String>>,
    /// Updated ids per object type (a record updated twice appears twice).
    pub updated: BTreeMap<String, Vec<String>>,
    /// Deleted ids per object type.
    pub deleted: BTreeMap<String, Vec<String>>,
}

impl ChangeLog {
    /// Groups a list of changes.
    pub fn from_changes(changes: Vec<Change>) -> Self {
        let mut log = ChangeLog::default();
        for c in &changes {
            let bucket = match c.op {
                ChangeOp::Create => &mut log.created,
                ChangeOp::Update => &mut log.updated,
                ChangeOp::Delete => &mut log.deleted,
            };
            bucket.entry(c.object.clone()).or_default().push(c.id.clone());
        }
        log.changes = changes;
        log
    }
}

/// A background change generator, as posted to `/_sandbox/{provider}/accounts/{id}/generator`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// Changes per second (wall clock).
    pub per_second: f64,
    /// Relative weight of creates.
    #[serde(default = "one")]
    pub creates: u32,
    /// Relative weight of updates.
    #[serde(default = "one")]
    pub updates: u32,
    /// Relative weight of deletes.
    #[serde(default)]
    pub deletes: u32,
    /// Object types to touch; all when absent.
    #[serde(default)]
    pub objects: Option<Vec<String>>,
    /// Seed of the generator's choices.
    #[serde(default)]
    pub seed: u64,
}

fn one() -> u32 {
    1
}

type GeneratorTasks = HashMap<(ProviderKind, String), (GeneratorSpec, JoinHandle<()>)>;

/// Running background generators, one per account at most.
#[derive(Debug, Default)]
pub struct Generators {
    tasks: Mutex<GeneratorTasks>,
}

impl Generators {
    /// Registers a running generator, stopping any previous one of the same account.
    pub fn insert(&self, provider: ProviderKind, account: &str, spec: GeneratorSpec, task: JoinHandle<()>) {
        if let Some((_, old)) = self.tasks.lock().insert((provider, account.to_owned()), (spec, task)) {
            old.abort();
        }
    }

    /// Stops an account's generator; returns whether one was running.
    pub fn stop(&self, provider: ProviderKind, account: &str) -> bool {
        match self.tasks.lock().remove(&(provider, account.to_owned())) {
            Some((_, t)) => {
                t.abort();
                true
            }
            None => false,
        }
    }

    /// The spec of an account's running generator.
    pub fn get(&self, provider: ProviderKind, account: &str) -> Option<GeneratorSpec> {
        self.tasks.lock().get(&(provider, account.to_owned())).map(|(s, _)| s.clone())
    }

    /// Stops every generator.
    pub fn stop_all(&self) {
        for (_, (_, t)) in self.tasks.lock().drain() {
            t.abort();
        }
    }
}

impl Drop for Generators {
    fn drop(&mut self) {
        self.stop_all();
    }
}
