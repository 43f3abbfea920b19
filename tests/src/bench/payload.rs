//! The job every benchmark run enqueues and the clock its timestamps are taken on.
//!
//! The payload mirrors the peer benchmark's (`/work/shared/bench/peers/node/common.js`,
//! `payload(i)`): tenant, provider, action, object id, sequence number, attempt, enqueue
//! timestamp and padding, ~200 bytes of JSON. Timestamps are seconds on `CLOCK_MONOTONIC`, one
//! system-wide clock, so the enqueue time a producer process writes and the start time a worker
//! process reads compare directly (the peers use the same clock).

use serde::{Deserialize, Serialize};

/// Distinct tenants the payloads cycle through (as in the peers' payload).
pub const TENANTS: u64 = 1_000;
/// The provider label every job carries.
pub const PROVIDER: &str = "hubspot";
/// The action (and our job type) every job carries.
pub const ACTION: &str = "crm.create_task";
/// Padding that brings the JSON to ~200 bytes, as in the peers' payload.
const PAD_LEN: usize = 46;

/// Seconds since an arbitrary fixed point on `CLOCK_MONOTONIC`.
pub fn now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// One job's arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    /// Tenant label, `tenant-00042`.
    pub tenant: String,
    /// Provider label.
    pub provider: String,
    /// Action name.
    pub action: String,
    /// CRM object id.
    pub object_id: String,
    /// Sequence number within the run.
    pub seq: u64,
    /// Always 0 (the peers carry it too).
    pub attempt: u32,
    /// Enqueue time, seconds on `CLOCK_MONOTONIC`, taken right before the enqueue call.
    pub ts: f64,
    /// Padding.
    pub pad: String,
}

impl Payload {
    /// The payload of job `i`, stamped now.
    pub fn new(i: u64) -> Self {
        Self {
            tenant: format!("tenant-{:05}", i % TENANTS),
            provider: PROVIDER.to_owned(),
            action: ACTION.to_owned(),
            object_id: (100_000_000 + i).to_string(),
            seq: i,
            attempt: 0,
            ts: now(),
            pad: "x".repeat(PAD_LEN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_about_200_bytes_of_json() {
        let json = serde_json::to_vec(&Payload::new(123_456)).expect("payload encodes");
        assert!((170..=230).contains(&json.len()), "{} bytes", json.len());
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        assert!(now() > 0.0);
    }
}
