//! The demo's child processes: each in its own process group (so the terminal's Ctrl-C reaches
//! only `crmctl`, which then stops them in order), its output in a log file, stopped with
//! SIGTERM and a grace period, then SIGKILL.
//!
//! Invariant: a [`Proc`] that is dropped without [`Proc::stop`] is killed (tokio's
//! `kill_on_drop`), so an error path never leaves a process behind.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, ChildStdout, Command};

/// A running child process.
pub struct Proc {
    /// What it is (`sandbox`, `scheduler`, `worker-1`, …).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Where its stdout/stderr go.
    pub log: PathBuf,
    child: Child,
}

/// How to start one.
pub struct Spawn<'a> {
    /// Display name (also the log file's stem).
    pub name: &'a str,
    /// The executable.
    pub program: &'a Path,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment added to a cleared one (only `PATH` and `HOME` are kept).
    pub env: Vec<(String, String)>,
    /// Pipe stdout to the caller instead of the log (the sandbox prints its URLs there).
    pub capture_stdout: bool,
}

impl Proc {
    /// Starts `spec`, writing its output to `<logs>/<name>.log`.
    pub fn spawn(spec: Spawn<'_>, logs: &Path) -> anyhow::Result<(Self, Option<ChildStdout>)> {
        let log = logs.join(format!("{}.log", spec.name));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(["PATH", "HOME"].iter().filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))))
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stderr(file.try_clone().context("log file")?)
            .process_group(0)
            .kill_on_drop(true);
        if spec.capture_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(file);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {}", spec.program.display()))?;
        let pid = child.id().context("the child has no pid")?;
        let stdout = child.stdout.take();
        Ok((Self { name: spec.name.to_owned(), pid, log, child }, stdout))
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit either way.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                eprintln!("  {} did not stop within {grace:?}; killing it", self.name);
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }
}
