//! Ordered page commits, two at a time.
//!
//! A page is written in its own transaction together with the cursor after it and the run's
//! counters ([`commit`]). To use two PostgreSQL backends, page N+1's rows are written while
//! page N's transaction is still open, on a second connection; but the pages **commit in
//! order**, so the stored cursor is always just after the last committed page:
//!
//! 1. page N takes a transaction-scoped advisory lock of its own before page N+1 starts;
//! 2. page N+1 writes its rows (upsert, deletions, conflicts);
//! 3. it then waits for page N's advisory lock, i.e. for page N's transaction to end, and
//!    reads page N's outcome; if page N did not commit, page N+1 rolls back;
//! 4. only then does it store its cursor and counters and commit.
//!
//! Why waits cannot hang: page N+1 waits for page N *inside PostgreSQL* (the advisory lock),
//! so any cycle through it — page N blocked on a row that another sync holds, which waits for
//! a row page N+1 wrote — is one PostgreSQL's deadlock detector sees and breaks (one of them
//! fails with 40P01 and its job retries from its stored cursor). Within one sync, two pages
//! that share a record are not written at once at all: the second waits for the first to
//! commit before it starts. The cursor and run rows are touched by one transaction at a time
//! (step 4 follows page N's end). Both transactions are in READ COMMITTED; last write wins on
//! the remote modification time either way.
//!
//! A second connection is used only when the pool yields one at once; otherwise the page waits
//! for its predecessor and reuses the connection it returned, so a busy worker's syncs hold one
//! connection each, as before. Dropping the writer aborts the writes in flight (their
//! transactions roll back), as dropping a single write's future would.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::store::{self, PageCounts, Scope};
use crate::enqueue::Target;
use crate::providers::{ObjectKind, SyncCursor, SyncPage};

/// Pages written at once by one sync.
pub const IN_FLIGHT: usize = 2;

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
    /// Another attempt claimed the sync (this one's lease was lost): the page rolled back.
    #[error("another attempt of this sync took it over")]
    Superseded,
}

/// How long a page waits for a second connection before it waits for its predecessor instead.
const SPARE_WAIT: Duration = Duration::from_millis(50);

struct InFlight {
    handle: JoinHandle<Result<Committed, WriteError>>,
    /// External ids the page touches (records and deletions).
    ids: HashSet<String>,
    /// The advisory lock its transaction holds until it ends.
    lock: i64,
    /// Told whether the page committed; taken by the next page.
    outcome: Option<oneshot::Receiver<bool>>,
}

/// The predecessor a page waits for before it commits.
struct Previous {
    lock: i64,
    outcome: oneshot::Receiver<bool>,
}

/// Writes a run's pages, at most [`IN_FLIGHT`] at once, committing them in order.
pub struct Writer {
    pool: PgPool,
    target: Target,
    object: ObjectKind,
    /// The attempt's claim on the sync (`sync_state.owner`), checked by every commit.
    owner: Uuid,
    in_flight: VecDeque<InFlight>,
    /// Pages committed and not yet taken by [`Writer::take_committed`].
    committed: Vec<Committed>,
    /// Pages submitted so far (names each page's advisory lock).
    seq: u64,
    /// A page failed: nothing after it may commit.
    failed: bool,
}

impl Writer {
    /// A writer for one (connection, object), committing for the attempt that claimed it as
    /// `owner`.
    pub fn new(pool: PgPool, target: Target, object: ObjectKind, owner: Uuid) -> Self {
        Self {
            pool,
            target,
            object,
            owner,
            in_flight: VecDeque::new(),
            committed: Vec::new(),
            seq: 0,
            failed: false,
        }
    }

    /// Starts writing `page` of `run`; pages that committed meanwhile (to make room, or because
    /// no second connection was free) are kept for [`Writer::take_committed`]. After an error
    /// the writer refuses further pages: the caller ends the attempt.
    pub async fn submit(&mut self, run: Uuid, page: SyncPage, done: bool) -> Result<(), WriteError> {
        if self.failed {
            return Err(WriteError::Predecessor);
        }
        while self.in_flight.len() >= IN_FLIGHT {
            self.pop().await?;
        }
        let ids: HashSet<String> = page
            .records
            .iter()
            .map(|r| r.external_id.clone())
            .chain(page.deleted.iter().map(|d| d.external_id.clone()))
            .collect();
        // A page sharing a record with the one in flight is written after it, not beside it.
        if self.in_flight.back().is_some_and(|p| !p.ids.is_disjoint(&ids)) {
            self.drain().await?;
        }
        self.seq += 1;
        let lock = lock_key(self.owner, self.seq);
        // Before the next page can start, this page holds its own advisory lock (so the next
        // page's wait for it is always a real one) and the records lock shared (so pages of
        // one sync hold it in page order: a mark queued between them cannot make page N wait
        // behind page N+1): `store::begin_page`, in a task of its own. A begin given up on
        // (the timeout below, or this job cancelled) then still ends, and the transaction
        // nobody awaits is dropped, so rolled back; dropping the future instead could leave a
        // pooled connection in a transaction holding this page's lock, which the page's next
        // begin would wait for forever.
        let (pool, target, object) = (self.pool.clone(), self.target.clone(), self.object);
        let begin = || {
            let (pool, target) = (pool.clone(), target.clone());
            let task = tokio::spawn(async move {
                store::begin_page(&pool, &target.tenant, target.provider.as_str(), object, Some(lock)).await
            });
            async move {
                match task.await {
                    Ok(tx) => tx.map_err(WriteError::from),
                    Err(e) => Err(WriteError::Task(e.to_string())),
                }
            }
        };
        let tx = match self.in_flight.is_empty() {
            true => begin().await?,
            false => match tokio::time::timeout(SPARE_WAIT, begin()).await {
                Ok(tx) => tx?,
                Err(_) => {
                    self.drain().await?;
                    begin().await?
                }
            },
        };
        let previous = self
            .in_flight
            .back_mut()
            .and_then(|p| p.outcome.take().map(|outcome| Previous { lock: p.lock, outcome }));
        let (tell, outcome) = oneshot::channel();
        let page = Page { run, owner: self.owner, page, done };
        let handle = tokio::spawn(write(tx, self.target.clone(), self.object, page, previous, tell));
        self.in_flight.push_back(InFlight { handle, ids, lock, outcome: Some(outcome) });
        Ok(())
    }

    /// Waits for every page in flight, in order; stops at the first error.
    pub async fn drain(&mut self) -> Result<(), WriteError> {
        while !self.in_flight.is_empty() {
            self.pop().await?;
        }
        Ok(())
    }

    /// The object written.
    pub fn object(&self) -> ObjectKind {
        self.object
    }

    /// The pages committed since the last call, in order (also after an error).
    pub fn take_committed(&mut self) -> Vec<Committed> {
        std::mem::take(&mut self.committed)
    }

    /// Waits for the oldest page. Cancel-safe: the page stays in flight (and is aborted with
    /// the writer) until its task has answered.
    async fn pop(&mut self) -> Result<(), WriteError> {
        let Some(first) = self.in_flight.front_mut() else { return Ok(()) };
        let joined = (&mut first.handle).await;
        self.in_flight.pop_front();
        let result = match joined {
            Ok(result) => result,
            Err(e) => Err(WriteError::Task(e.to_string())),
        };
        match result {
            Ok(page) => {
                self.committed.push(page);
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        for w in &self.in_flight {
            w.handle.abort();
        }
    }
}

/// The 64-bit advisory lock key page `seq` (from 1) of the attempt `owner` holds while it is
/// written (a collision with another attempt's key only makes a page wait a moment longer);
/// `pg_locks` shows it as `classid`/`objid`.
pub fn lock_key(owner: Uuid, seq: u64) -> i64 {
    let v = owner.as_u128();
    ((v as u64) ^ ((v >> 64) as u64) ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64
}

/// A page to write, of which run, for which attempt.
struct Page {
    run: Uuid,
    owner: Uuid,
    page: SyncPage,
    done: bool,
}

async fn write(
    mut tx: Transaction<'static, Postgres>,
    target: Target,
    object: ObjectKind,
    Page { run, owner, page, done }: Page,
    previous: Option<Previous>,
    tell: oneshot::Sender<bool>,
) -> Result<Committed, WriteError> {
    let result = async {
        let scope = Scope {
            tenant: &target.tenant,
            provider: target.provider.as_str(),
            connection: target.connection,
            run,
        };
        let counts = store::apply_page(&mut tx, &scope, object, page.records, &page.deleted).await?;
        if let Some(p) = previous {
            // Granted when the previous page's transaction has ended, committed or not.
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(p.lock).execute(&mut *tx).await?;
            if p.outcome.await != Ok(true) {
                return Err(WriteError::Predecessor);
            }
        }
        let rerun = commit(&mut tx, &scope, object, owner, &page.next, &counts, done).await?;
        tx.commit().await?;
        Ok(Committed { counts, cursor: page.next, done, rerun })
    }
    .await;
    // The next page may already be waiting on this answer; a dropped sender reads as "no".
    let _ = tell.send(result.is_ok());
    result
}

/// Stores the cursor after the page and adds the page to the run's counters (closing the run
/// on its last page), if `owner` still holds the claim (else [`WriteError::Superseded`], and the
/// caller's transaction rolls back). Returns whether another run was requested meanwhile.
async fn commit(
    tx: &mut sqlx::PgConnection,
    scope: &Scope<'_>,
    object: ObjectKind,
    owner: Uuid,
    next: &SyncCursor,
    counts: &PageCounts,
    done: bool,
) -> Result<bool, WriteError> {
    let cursor_json = serde_json::to_value(next).unwrap_or_default();
    // The claim is checked under the row lock that a claim takes too (the `FOR UPDATE` below,
    // or the `UPDATE`, which re-reads the row once a concurrent claim ends), so an attempt
    // claiming meanwhile either waits for this commit, and reads its cursor, or is seen here.
    // On the last page: was another run asked for meanwhile? Read under the row lock, so a
    // request committed a moment before is seen here rather than cleared unseen below.
    let rerun = if done {
        let rerun: Option<bool> = sqlx::query_scalar(
            "SELECT rerun_requested FROM sync_state WHERE connection_id = $1 AND object = $2 AND owner = $3 \
             FOR UPDATE",
        )
        .bind(scope.connection)
        .bind(object.as_str())
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        rerun.ok_or(WriteError::Superseded)?
    } else {
        false
    };
    let stored = sqlx::query(
        "UPDATE sync_state SET cursor = $3, run_id = CASE WHEN $4 THEN NULL ELSE run_id END, \
           last_success_at = CASE WHEN $4 THEN now() ELSE last_success_at END, \
           rerun_requested = CASE WHEN $4 THEN false ELSE rerun_requested END, updated_at = now() \
         WHERE connection_id = $1 AND object = $2 AND owner = $5",
    )
    .bind(scope.connection)
    .bind(object.as_str())
    .bind(&cursor_json)
    .bind(done)
    .bind(owner)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if stored == 0 {
        return Err(WriteError::Superseded);
    }
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
