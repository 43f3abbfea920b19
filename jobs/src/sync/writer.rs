//! Ordered page commits, two at a time.
//!
//! A page is written in its own transaction together with the cursor after it and the run's
//! counters ([`commit`]). To use two PostgreSQL backends, page N+1's rows are written while
//! page N's transaction is still open, on a second connection; but the pages **commit in
//! order**, so the stored cursor is always just after the last committed page:
//!
//! 1. page N+1 writes its rows (upsert, deletions, conflicts);
//! 2. it waits for page N's outcome; if page N did not commit, page N+1 rolls back;
//! 3. only then does it store its cursor and counters and commit.
//!
//! Why this cannot deadlock: while page N+1 waits in step 2 it holds the row locks of its own
//! records only. Page N never needs those unless the two pages share a record (a record
//! modified during the sync can come back in a later page), and for such a pair page N+1
//! waits for page N *before* writing anything. The cursor and run rows are touched by one
//! transaction at a time (step 3 follows page N's commit). Both transactions are in READ
//! COMMITTED, so page N+1's statements see whatever page N committed before them; last write
//! wins on the remote modification time either way.
//!
//! A second connection is taken only when the pool has one to spare; otherwise the page waits
//! for its predecessor and reuses the connection it returned, so a busy worker's syncs hold
//! one connection each, as before. Dropping the writer aborts the writes in flight (their
//! transactions roll back), as dropping a single write's future would.

use std::collections::{HashSet, VecDeque};

use sqlx::pool::PoolConnection;
use sqlx::{Acquire as _, PgPool, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::store::{self, PageCounts, Scope};
use crate::providers::{ObjectKind, SyncCursor, SyncPage};

/// Pages written at once by one sync.
pub const IN_FLIGHT: usize = 2;

/// Who is being synced: the owned form of [`Scope`], carried into the write's task.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Tenant id.
    pub tenant: String,
    /// Provider name.
    pub provider: &'static str,
    /// Connection id.
    pub connection: Uuid,
    /// The (connection, object) whose cursor advances.
    pub object: ObjectKind,
}

/// A committed page.
#[derive(Debug, Clone)]
pub struct Committed {
    /// What the page changed.
    pub counts: PageCounts,
    /// The cursor stored with it.
    pub cursor: SyncCursor,
    /// Whether it was the run's last page.
    pub done: bool,
    /// On the last page: whether another run was requested while this one ran.
    pub rerun: bool,
}

/// Why a page did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// PostgreSQL refused or failed.
    #[error("{0}")]
    Db(#[from] sqlx::Error),
    /// The page before it did not commit, so it rolled back to keep the order.
    #[error("an earlier page of this run did not commit")]
    Predecessor,
    /// The write's task ended without an answer (it panicked).
    #[error("page write task failed: {0}")]
    Task(String),
}

struct InFlight {
    handle: JoinHandle<Result<Committed, WriteError>>,
    /// External ids the page touches (records and deletions).
    ids: HashSet<String>,
    /// Told whether the page committed; taken by the next page.
    outcome: Option<oneshot::Receiver<bool>>,
}

/// Writes a run's pages, at most [`IN_FLIGHT`] at once, committing them in order.
pub struct Writer {
    pool: PgPool,
    target: Subject,
    in_flight: VecDeque<InFlight>,
}

impl Writer {
    /// A writer for one (connection, object).
    pub fn new(pool: PgPool, target: Subject) -> Self {
        Self { pool, target, in_flight: VecDeque::new() }
    }

    /// Starts writing `page` of `run`. Returns the pages that committed meanwhile (in order):
    /// to make room, or because no second connection was free. The first error ends the
    /// run's writes: the caller drops the writer.
    pub async fn submit(
        &mut self,
        run: Uuid,
        page: SyncPage,
        done: bool,
    ) -> Result<Vec<Committed>, WriteError> {
        let mut committed = Vec::new();
        while self.in_flight.len() >= IN_FLIGHT {
            committed.push(self.pop().await?);
        }
        let ids: HashSet<String> = page
            .records
            .iter()
            .map(|r| r.external_id.clone())
            .chain(page.deleted.iter().map(|d| d.external_id.clone()))
            .collect();
        if !self.in_flight.is_empty() && !self.spare_connection() {
            committed.extend(self.drain().await?);
        }
        let conn = self.pool.acquire().await?;
        let (tell, outcome) = oneshot::channel();
        let (previous, overlaps) = match self.in_flight.back_mut() {
            Some(p) => (p.outcome.take(), !p.ids.is_disjoint(&ids)),
            None => (None, false),
        };
        let handle =
            tokio::spawn(write(conn, self.target.clone(), run, page, done, previous, overlaps, tell));
        self.in_flight.push_back(InFlight { handle, ids, outcome: Some(outcome) });
        Ok(committed)
    }

    /// Waits for every page in flight; returns them in order, or the first error.
    pub async fn drain(&mut self) -> Result<Vec<Committed>, WriteError> {
        let mut committed = Vec::with_capacity(self.in_flight.len());
        while !self.in_flight.is_empty() {
            committed.push(self.pop().await?);
        }
        Ok(committed)
    }

    async fn pop(&mut self) -> Result<Committed, WriteError> {
        let Some(mut first) = self.in_flight.pop_front() else {
            return Err(WriteError::Task("no page in flight".into()));
        };
        match (&mut first.handle).await {
            Ok(result) => result,
            Err(e) => Err(WriteError::Task(e.to_string())),
        }
    }

    /// Whether a second connection can be had now without waiting for another job's.
    fn spare_connection(&self) -> bool {
        self.pool.num_idle() > 0 || self.pool.size() < self.pool.options().get_max_connections()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        for w in &self.in_flight {
            w.handle.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write(
    mut conn: PoolConnection<Postgres>,
    target: Subject,
    run: Uuid,
    page: SyncPage,
    done: bool,
    previous: Option<oneshot::Receiver<bool>>,
    overlaps: bool,
    tell: oneshot::Sender<bool>,
) -> Result<Committed, WriteError> {
    let result = async {
        let mut previous = previous;
        let mut tx = conn.begin().await?;
        if overlaps {
            after(previous.take()).await?;
        }
        let scope =
            Scope { tenant: &target.tenant, provider: target.provider, connection: target.connection, run };
        let counts = store::apply_page(&mut tx, &scope, target.object, page.records, &page.deleted).await?;
        after(previous.take()).await?;
        let rerun = commit(&mut tx, &scope, target.object, &page.next, &counts, done).await?;
        tx.commit().await?;
        Ok(Committed { counts, cursor: page.next, done, rerun })
    }
    .await;
    // The next page may already be waiting on this answer; a dropped sender reads as "no".
    let _ = tell.send(result.is_ok());
    result
}

/// Waits for the previous page's outcome, if there is one in flight.
async fn after(previous: Option<oneshot::Receiver<bool>>) -> Result<(), WriteError> {
    match previous {
        None => Ok(()),
        Some(rx) => match rx.await {
            Ok(true) => Ok(()),
            _ => Err(WriteError::Predecessor),
        },
    }
}

/// Stores the cursor after the page and adds the page to the run's counters (closing the run
/// on its last page). Returns whether another run was requested meanwhile.
async fn commit(
    tx: &mut sqlx::PgConnection,
    scope: &Scope<'_>,
    object: ObjectKind,
    next: &SyncCursor,
    counts: &PageCounts,
    done: bool,
) -> Result<bool, sqlx::Error> {
    let cursor_json = serde_json::to_value(next).unwrap_or_default();
    let rerun: bool = sqlx::query_scalar(
        "UPDATE sync_state SET cursor = $3, run_id = CASE WHEN $4 THEN NULL ELSE run_id END, \
           last_success_at = CASE WHEN $4 THEN now() ELSE last_success_at END, \
           rerun_requested = CASE WHEN $4 THEN false ELSE rerun_requested END, updated_at = now() \
         WHERE connection_id = $1 AND object = $2 \
         RETURNING (SELECT rerun_requested FROM sync_state WHERE connection_id = $1 AND object = $2)",
        // The sub-select sees the row as it was before this statement: whether a rerun was
        // requested while the run went on.
    )
    .bind(scope.connection)
    .bind(object.as_str())
    .bind(&cursor_json)
    .bind(done)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE sync_runs SET pages = pages + 1, processed = processed + $2, created = created + $3, \
           updated = updated + $4, deleted = deleted + $5, unchanged = unchanged + $6, \
           status = CASE WHEN $7 THEN 'succeeded' ELSE status END, \
           finished_at = CASE WHEN $7 THEN now() ELSE finished_at END WHERE id = $1",
    )
    .bind(scope.run)
    .bind(counts.processed as i32)
    .bind(counts.created as i32)
    .bind(counts.updated as i32)
    .bind(counts.deleted as i32)
    .bind(counts.unchanged as i32)
    .bind(done)
    .execute(&mut *tx)
    .await?;
    Ok(rerun)
}
