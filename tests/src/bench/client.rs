//! The producer processes: `enqueue` (W1, as fast as one client can, one job per call or
//! batches of 1,000) and `produce` (W3, open loop at a fixed rate). Each prints one JSON line
//! with its figures for the driver and exits.
//!
//! Both await every call before the next (one request in flight), like the peers' clients.
//! Client CPU is this process's CPU time around the timed loop only (connect excluded).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::payload::{Payload, now};
use super::procs::self_cpu_s;
use super::systems::{Producer, System, Target};

/// Jobs per bulk call in W1 bulk (as in the peers).
pub const BULK_BATCH: usize = 1_000;

/// How W1 enqueues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Kind {
    /// One job per call.
    Single,
    /// Batches of [`BULK_BATCH`] per call.
    Bulk,
}

/// What an `enqueue` process reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnqueueReport {
    /// Jobs enqueued.
    pub n: u64,
    /// Seconds the loop took.
    pub seconds: f64,
    /// Jobs per second.
    pub rate: f64,
    /// CPU seconds this client used in the loop.
    pub client_cpu_s: f64,
}

/// What a `produce` process reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProduceReport {
    /// Jobs sent.
    pub sent: u64,
    /// Seconds from the first due time to the last call's return.
    pub seconds: f64,
    /// Jobs per second actually offered.
    pub achieved_rate: f64,
    /// Worst lateness of a send against its due time, ms.
    pub max_lag_ms: f64,
    /// Mean lateness, ms.
    pub mean_lag_ms: f64,
    /// CPU seconds this client used in the loop.
    pub client_cpu_s: f64,
}

/// Runs W1's client: enqueues `n` jobs into an empty queue.
pub async fn enqueue(system: System, target: &Target, n: u64, kind: Kind) -> anyhow::Result<EnqueueReport> {
    let mut producer = Producer::connect(system, target).await?;
    let cpu0 = self_cpu_s();
    let t0 = now();
    match kind {
        Kind::Single => {
            for i in 0..n {
                producer.push_one(Payload::new(i)).await?;
            }
        }
        Kind::Bulk => {
            let mut i = 0;
            while i < n {
                let end = (i + BULK_BATCH as u64).min(n);
                producer.push_many((i..end).map(Payload::new).collect()).await?;
                i = end;
            }
        }
    }
    let seconds = now() - t0;
    let client_cpu_s = self_cpu_s() - cpu0;
    Ok(EnqueueReport { n, seconds, rate: n as f64 / seconds.max(1e-9), client_cpu_s })
}

/// Runs W3's client: job `i` is due at `t0 + i / rate`; the enqueue time in the payload is
/// taken right before the call, so latency excludes producer lag (which is reported).
pub async fn produce(
    system: System,
    target: &Target,
    rate: f64,
    duration: f64,
) -> anyhow::Result<ProduceReport> {
    let mut producer = Producer::connect(system, target).await?;
    let total = (rate * duration).round() as u64;
    let cpu0 = self_cpu_s();
    let t0 = now() + 0.05;
    let (mut max_lag, mut lag_sum) = (0.0f64, 0.0f64);
    for i in 0..total {
        let due = t0 + i as f64 / rate;
        let mut t = now();
        if due > t {
            tokio::time::sleep(Duration::from_secs_f64(due - t)).await;
            t = now();
        }
        let lag = (t - due).max(0.0);
        lag_sum += lag;
        max_lag = max_lag.max(lag);
        let mut p = Payload::new(i);
        p.ts = now();
        producer.push_one(p).await?;
    }
    let seconds = now() - t0;
    Ok(ProduceReport {
        sent: total,
        seconds,
        achieved_rate: total as f64 / seconds.max(1e-9),
        max_lag_ms: max_lag * 1e3,
        mean_lag_ms: if total > 0 { lag_sum / total as f64 * 1e3 } else { 0.0 },
        client_cpu_s: self_cpu_s() - cpu0,
    })
}
