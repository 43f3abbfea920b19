//! Worker processes a benchmark driver spawns (the same binary with a hidden subcommand), and
//! the line protocol between them, over the child's stdin and stdout:
//!
//! 1. the child connects everything it needs and prints `ready`;
//! 2. the driver writes `go` to every child at one instant (start-up is not measured);
//! 3. the child prints `count <n>` whenever its handled count changed (every 20 ms at most);
//! 4. on `stop` (or stdin closed, or SIGTERM) the child shuts down gracefully and prints one
//!    JSON line, its final report, and exits.
//!
//! [`Children`] is the driver's side, the free functions the child's.

use std::io::Write as _;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, watch};

use super::payload::now;
use super::procs;

/// How often a child reports its count.
const PROGRESS_EVERY: Duration = Duration::from_millis(20);

// ------------------------------------------------------------------------------------------
// Child side

/// What the driver asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected, waiting for `go`.
    Wait,
    /// Released.
    Go,
    /// Asked to stop.
    Stop,
}

/// Prints one protocol line on stdout.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reads the driver's commands (stdin; SIGTERM counts as `stop`) into a watch channel.
pub fn read_control() -> watch::Receiver<Phase> {
    let (tx, rx) = watch::channel(Phase::Wait);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let line = tokio::select! {
                l = lines.next_line() => l,
                _ = async {
                    match term.as_mut() {
                        Some(t) => {
                            t.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                } => Ok(None),
            };
            match line {
                Ok(Some(l)) if l.trim() == "go" => {
                    let _ = tx.send(Phase::Go);
                }
                Ok(Some(l)) if l.trim() == "stop" => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = tx.send(Phase::Stop);
    });
    rx
}

/// Waits until the driver asked for `phase` (or to stop).
pub async fn wait_for(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    let _ = rx.wait_for(|p| *p == phase || *p == Phase::Stop).await;
}

/// A future that completes when the driver asks to stop (for `Monitor::run_with_signal`).
pub fn stop_signal(rx: &watch::Receiver<Phase>) -> impl Future<Output = std::io::Result<()>> + use<> {
    let mut rx = rx.clone();
    async move {
        wait_for(&mut rx, Phase::Stop).await;
        Ok(())
    }
}

/// Prints `count <n>` whenever `count` changed, until aborted.
pub fn report_progress(count: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = u64::MAX;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tick.tick().await;
            let n = count.load(Ordering::Acquire);
            if n != last {
                say(&format!("count {n}"));
                last = n;
            }
        }
    })
}

/// How long a child's apalis workers wait for in-flight jobs at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A crm-queue consumer for a child process, with dead letters in the PostgreSQL database at
/// `database_url` (benchmark jobs never fail; the consumer needs the table all the same).
pub async fn our_consumer(
    queue: crm_queue::Queue,
    database_url: &str,
    role: &str,
    concurrency: usize,
) -> anyhow::Result<crm_queue::Consumer> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(database_url)
        .await
        .context("connect PostgreSQL (dead letters)")?;
    let dead_letters = crm_queue::PgDeadLetters::new(pool, queue.config().name.clone());
    Ok(crm_queue::Consumer::start(queue, dead_letters, crm_queue::ConsumerConfig::new(role, concurrency)))
}

/// The child's life after connecting: says `ready`, waits for `go`, runs `monitor` (reporting
/// `count`) until the driver asks to stop, then finishes the consumer's shutdown if there is one.
pub async fn serve(
    monitor: apalis_core::monitor::Monitor,
    mut control: watch::Receiver<Phase>,
    count: Arc<AtomicU64>,
    consumer: Option<crm_queue::Consumer>,
) {
    let stop = stop_signal(&control);
    say("ready");
    wait_for(&mut control, Phase::Go).await;
    let progress = report_progress(count);
    if let Err(error) = monitor.shutdown_timeout(SHUTDOWN_GRACE).run_with_signal(stop).await {
        eprintln!("monitor: {error}");
    }
    if let Some(c) = consumer {
        c.shutdown().await;
    }
    progress.abort();
}

// ------------------------------------------------------------------------------------------
// Driver side

struct ChildProc<F> {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    ready: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    fin: Option<oneshot::Receiver<F>>,
    log: PathBuf,
}

/// A set of child processes released together; `F` is their final report.
pub struct Children<F> {
    procs: Vec<ChildProc<F>>,
    _final: PhantomData<fn() -> F>,
}

impl<F: DeserializeOwned + Send + 'static> Children<F> {
    /// Spawns `n` children `exe argv...`; child `i` logs its stderr to `dir/worker-<i>.log`.
    pub fn start(exe: &Path, argv: &[String], n: usize, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            let log = dir.join(format!("worker-{i}.log"));
            let mut child = Command::new(exe)
                .args(argv)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .kill_on_drop(true)
                .spawn()
                .context("spawn worker")?;
            let pid = child.id().context("worker pid")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let ready = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicU64::new(0));
            let (tx, rx) = oneshot::channel();
            let (r, c) = (ready.clone(), count.clone());
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                let mut tx = Some(tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if line == "ready" {
                        r.store(true, Ordering::Release);
                    } else if let Some(n) = line.strip_prefix("count ") {
                        c.store(n.trim().parse().unwrap_or(0), Ordering::Release);
                    } else if line.starts_with('{')
                        && let Ok(f) = serde_json::from_str::<F>(&line)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(f);
                    }
                }
            });
            procs.push(ChildProc { child, pid, stdin, ready, count, fin: Some(rx), log });
        }
        Ok(Self { procs, _final: PhantomData })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("worker {} exited ({status}); see {}", p.pid, p.log.display());
            }
        }
        Ok(())
    }

    /// Waits until every child printed `ready`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.procs.iter().all(|p| p.ready.load(Ordering::Acquire)) {
                return Ok(());
            }
            self.check_alive()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("workers not ready after {timeout:?}")
    }

    /// Releases every child; returns the go time (monotonic seconds).
    pub async fn go(&mut self) -> anyhow::Result<f64> {
        let t = now();
        for p in &mut self.procs {
            p.stdin.write_all(b"go\n").await?;
            p.stdin.flush().await?;
        }
        Ok(t)
    }

    /// The children's last reported counts, summed.
    pub fn count(&self) -> u64 {
        self.procs.iter().map(|p| p.count.load(Ordering::Acquire)).sum()
    }

    /// Waits until the summed count reaches `expected`; false on timeout.
    pub async fn wait_count(&mut self, expected: u64, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count() >= expected {
                return Ok(true);
            }
            self.check_alive()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(self.count() >= expected)
    }

    /// CPU seconds the children used so far.
    pub fn cpu_s(&self) -> f64 {
        self.procs.iter().map(|p| procs::process_cpu_s(p.pid)).sum()
    }

    /// Peak RSS (`VmHWM`) of every child, MiB.
    pub fn peak_rss_mib(&self) -> Vec<f64> {
        self.procs.iter().filter_map(|p| procs::peak_rss_mib(p.pid)).collect()
    }

    /// Asks every child to stop and collects the final reports of those that sent one.
    pub async fn stop(mut self) -> Vec<F> {
        for p in &mut self.procs {
            let _ = p.stdin.write_all(b"stop\n").await;
            let _ = p.stdin.flush().await;
        }
        let mut out = Vec::new();
        for p in &mut self.procs {
            if let Some(rx) = p.fin.take() {
                match tokio::time::timeout(Duration::from_secs(30), rx).await {
                    Ok(Ok(f)) => out.push(f),
                    _ => eprintln!("[bench] worker {} sent no final report; see {}", p.pid, p.log.display()),
                }
            }
            if tokio::time::timeout(Duration::from_secs(30), p.child.wait()).await.is_err() {
                eprintln!("[bench] worker {} did not exit; killing it", p.pid);
                let _ = p.child.kill().await;
            }
        }
        out
    }
}
