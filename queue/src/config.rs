//! Queue configuration: where the queue lives in Redis and the timings of its lease protocol.
//!
//! Every default is a `DEFAULT_*` constant that says where its value came from. The one
//! invariant the timings must keep is `heartbeat_interval * 3 < lease_ttl`: a live worker
//! renews a lease at least twice before it could expire, so a single slow heartbeat (a Redis
//! stall, a GC-like pause) never hands a running job to another worker.

use std::time::Duration;

/// Key prefix shared by all queues of one deployment.
pub const DEFAULT_PREFIX: &str = "crm-fleet";
/// How long a fetched job stays leased without a heartbeat. Short enough that a SIGKILLed
/// worker's jobs come back in seconds, long enough to ride out a multi-second Redis stall
/// (`CLIENT PAUSE 3000` is one of our acceptance tests).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(20);
/// How often a worker renews its leases: a quarter of the lease, so three renewals may fail
/// before the lease lapses.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How often each worker looks for expired leases. Any live worker reaps, so recovery time is
/// the lease TTL plus at most this.
pub const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(1);
/// How often each worker promotes due delayed jobs and wakes sleeping lanes. This bounds how
/// late a delayed job or a throttled lane starts (the limits issue asks for resumption within
/// 1 s of a Retry-After).
pub const DEFAULT_PROMOTE_INTERVAL: Duration = Duration::from_millis(200);
/// Jobs promoted per Lua call. Bounded so that 100,000 jobs due at once never produce one
/// giant script run (apalis-redis moves them all in one `unpack` and crashes past 7,999).
pub const DEFAULT_PROMOTE_CHUNK: usize = 1_000;
/// Orphanings (expired leases) after which a job is treated as a poison pill and
/// dead-lettered: a job that kills its worker three times will do it again.
pub const DEFAULT_POISON_LIMIT: u32 = 3;
/// Default attempts per job when the producer does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// How long an idle worker blocks waiting for a push signal before it polls anyway; the
/// fallback for work that becomes runnable by the clock alone (a budget's rate window).
pub const DEFAULT_IDLE_POLL: Duration = Duration::from_millis(500);
/// A sync lane that has waited this long behind actions is served next (aging), so syncs
/// cannot starve however busy actions are.
pub const DEFAULT_SYNC_AGING: Duration = Duration::from_millis(250);
/// A dying job whose PostgreSQL record has not been confirmed after this long is written by
/// whichever worker sweeps next (its first writer presumably died).
pub const DEFAULT_DYING_GRACE: Duration = Duration::from_secs(15);
/// Redis response timeout. Generous on purpose: a stalled Redis should make workers wait,
/// not fail (apalis-redis' 500 ms default kills workers on a 1.5 s stall).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Redis connect timeout per attempt; reconnects go on forever with backoff.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a queue lives and how its lease protocol is timed.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Redis URL: `redis://host:port/db`, or a comma-separated list of cluster nodes
    /// (`redis://127.0.0.1:7000,redis://127.0.0.1:7001`) for Redis Cluster.
    pub redis_url: String,
    /// Key prefix shared by all queues of a deployment (tests use a random one).
    pub prefix: String,
    /// Queue name; it becomes the hash tag of every key of the queue.
    pub name: String,
    /// Lease time-to-live without heartbeat.
    pub lease_ttl: Duration,
    /// Heartbeat (lease renewal) interval.
    pub heartbeat_interval: Duration,
    /// Expired-lease scan interval.
    pub reap_interval: Duration,
    /// Delayed-job promotion interval.
    pub promote_interval: Duration,
    /// Jobs promoted per Lua call.
    pub promote_chunk: usize,
    /// Orphanings before a job is dead-lettered as a poison pill.
    pub poison_limit: u32,
    /// Idle wait for a push signal before polling.
    pub idle_poll: Duration,
    /// Aging after which a waiting sync lane goes before actions.
    pub sync_aging: Duration,
    /// Grace before another worker completes an unfinished dead-lettering.
    pub dying_grace: Duration,
    /// Redis response timeout.
    pub response_timeout: Duration,
    /// Redis connect timeout.
    pub connect_timeout: Duration,
}

impl QueueConfig {
    /// A config for `name` on `redis_url` with every timing at its default.
    pub fn new(redis_url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            name: name.into(),
            lease_ttl: DEFAULT_LEASE_TTL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            reap_interval: DEFAULT_REAP_INTERVAL,
            promote_interval: DEFAULT_PROMOTE_INTERVAL,
            promote_chunk: DEFAULT_PROMOTE_CHUNK,
            poison_limit: DEFAULT_POISON_LIMIT,
            idle_poll: DEFAULT_IDLE_POLL,
            sync_aging: DEFAULT_SYNC_AGING,
            dying_grace: DEFAULT_DYING_GRACE,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the lease TTL and derives the heartbeat interval (a quarter of it).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self.heartbeat_interval = ttl / 4;
        self
    }

    /// Sets the poison limit.
    pub fn with_poison_limit(mut self, limit: u32) -> Self {
        self.poison_limit = limit;
        self
    }

    /// Checks the invariants between the settings; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.name.is_empty() || self.name.contains(['{', '}']) {
            problems.push(format!(
                "queue name {:?} must be non-empty and must not contain braces (it becomes the hash tag)",
                self.name
            ));
        }
        if self.prefix.contains(['{', '}']) {
            problems.push(format!("key prefix {:?} must not contain braces", self.prefix));
        }
        if self.heartbeat_interval * 3 >= self.lease_ttl {
            problems.push(format!(
                "heartbeat interval {:?} must be under a third of the lease TTL {:?}",
                self.heartbeat_interval, self.lease_ttl
            ));
        }
        if self.poison_limit == 0 {
            problems.push("poison limit must be at least 1".to_owned());
        }
        if self.promote_chunk == 0 {
            problems.push("promote chunk must be at least 1".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(QueueConfig::new("redis://127.0.0.1", "crm").validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = QueueConfig::new("redis://127.0.0.1", "{bad}").with_poison_limit(0);
        c.heartbeat_interval = c.lease_ttl;
        let problems = c.validate().expect_err("invalid config");
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
