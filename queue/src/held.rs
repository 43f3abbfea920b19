//! Ready jobs that cannot run now, and so those that can: what autoscaling should count.
//!
//! A ready job waits in its lane. Admission sets a lane aside when its head cannot be admitted:
//! into `blocked:<budget>` when a concurrency budget is full (until a slot is released), or
//! into `sleeping` until a time (a pause's end, which is how an open circuit breaker, a
//! throttled account and a parked connection hold their lanes, or a rate budget's next token). Until then no worker can take its jobs, however many there are,
//! so scaling workers on every ready job (`crm_fleet_queue_depth{state="ready"}`) adds
//! replicas that only poll during a provider outage or a tenant's throttle.
//!
//! Invariant relied on: a lane with jobs is in exactly one of a ready set, one
//! `blocked:<budget>` set or `sleeping`, so the held jobs are the lengths of the lanes in
//! those sets, and the runnable ones the rest of `readyz`. A lane still in a ready set may yet
//! turn out blocked at its next fetch: *runnable* is an upper bound, reached as workers
//! examine the lanes.
//!
//! Not atomic: lanes are scanned in chunks (`SSCAN`, `ZSCAN`; one pipelined round trip of
//! `LLEN`s per chunk of about [`LANE_CHUNK`] lanes), so under churn the figures are a sample,
//! good for a gauge and not for a decision. Two short-lived cases count as held though a
//! worker could take them: a sleeping lane whose time has come and a blocked lane whose budget
//! has room again, until a worker's promoter or a released slot wakes it. The cost is one
//! `LLEN` per held lane; [`Queue::held`] stops after about `max_lanes` and says so
//! ([`Held::complete`]), counting the rest as runnable.

use std::collections::HashSet;

use redis::AsyncCommands;

use crate::client::Queue;
use crate::conn::RedisConn;
use crate::error::QueueError;
use crate::keys::Keys;

/// Lanes whose lengths are read in one round trip.
pub const LANE_CHUNK: usize = 1_000;

/// The ready jobs of a queue, split by whether a worker could take them now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Ready jobs in all.
    pub ready: u64,
    /// Lanes blocked on a full concurrency budget.
    pub blocked_lanes: u64,
    /// Their jobs.
    pub blocked_jobs: u64,
    /// Lanes asleep until a time (a pause's end, a rate budget's next token).
    pub sleeping_lanes: u64,
    /// Their jobs.
    pub sleeping_jobs: u64,
    /// Whether every held lane was counted (false: `max_lanes` was reached first).
    pub complete: bool,
}

impl Held {
    /// Ready jobs a worker could take now: those not held (at most; see the module docs).
    pub fn runnable(&self) -> u64 {
        self.ready.saturating_sub(self.blocked_jobs + self.sleeping_jobs)
    }
}

impl Queue {
    /// Counts the ready jobs held by admission (see [`crate::held`]), blocked lanes first,
    /// stopping once about `max_lanes` held lanes are read.
    pub async fn held(&self, max_lanes: u64) -> Result<Held, QueueError> {
        let mut conn = self.connection();
        let keys = self.keys();
        let mut held = Held { complete: true, ..Held::default() };
        let mut budgets_cursor: u64 = 0;
        'budgets: loop {
            let (next_budgets, budgets): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(keys.key("blockedb"))
                .arg(budgets_cursor)
                .query_async(&mut conn)
                .await?;
            for budget in budgets {
                let set = keys.key(&format!("blocked:{budget}"));
                let (lanes, jobs) = scan_lanes(&mut conn, keys, "SSCAN", &set, &mut held, max_lanes).await?;
                held.blocked_lanes += lanes;
                held.blocked_jobs += jobs;
                if !held.complete {
                    break 'budgets;
                }
            }
            if next_budgets == 0 {
                break;
            }
            budgets_cursor = next_budgets;
        }
        if held.complete {
            let sleeping = keys.key("sleeping");
            let (lanes, jobs) = scan_lanes(&mut conn, keys, "ZSCAN", &sleeping, &mut held, max_lanes).await?;
            held.sleeping_lanes += lanes;
            held.sleeping_jobs += jobs;
        }
        held.ready = conn.zcard(keys.key("readyz")).await?;
        Ok(held)
    }
}

/// The lanes of one set of lanes (`SSCAN` of a set, `ZSCAN` of a sorted set) and their jobs.
/// Each lane once, though the set changes meanwhile; stops, clearing `held.complete`, before
/// a chunk that would pass `max_lanes` lanes read in all.
async fn scan_lanes(
    conn: &mut RedisConn,
    keys: &Keys,
    scan: &str,
    set: &str,
    held: &mut Held,
    max_lanes: u64,
) -> Result<(u64, u64), QueueError> {
    let (mut lanes, mut jobs) = (0, 0);
    let mut seen: HashSet<String> = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        if held.blocked_lanes + held.sleeping_lanes + lanes >= max_lanes {
            held.complete = false;
            break;
        }
        let (next, members): (u64, Vec<String>) = redis::cmd(scan)
            .arg(set)
            .arg(cursor)
            .arg("COUNT")
            .arg(LANE_CHUNK)
            .query_async(&mut *conn)
            .await?;
        // A sorted set's scan answers member, score, member, score, …
        let step = if scan == "ZSCAN" { 2 } else { 1 };
        let fresh: Vec<String> =
            members.into_iter().step_by(step).filter(|lane| seen.insert(lane.clone())).collect();
        lanes += fresh.len() as u64;
        jobs += lengths(conn, keys, &fresh).await?;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok((lanes, jobs))
}

/// The number of jobs in `lanes`, in one round trip.
async fn lengths(conn: &mut RedisConn, keys: &Keys, lanes: &[String]) -> Result<u64, QueueError> {
    if lanes.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for lane in lanes {
        pipe.llen(keys.key(&format!("q:{lane}")));
    }
    let lens: Vec<u64> = pipe.query_async(conn).await?;
    Ok(lens.iter().sum())
}
