//! `crmctl demo` as a new user runs it: the real binary, which starts the sandbox, the
//! scheduler and two workers as processes. Checked: syncs and actions flow on all five
//! providers, and after Ctrl-C (SIGINT) every process it started is gone.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crm_jobs::testing::{REDIS_URL, unique};

const PROVIDERS: [&str; 5] = ["hubspot", "salesforce", "pipedrive", "zoho", "close"];
const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The demo process and everything it printed so far.
struct Demo {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    database: String,
    prefix: String,
}

impl Demo {
    fn start(extra: &[&str]) -> Self {
        crm_jobs::testing::workspace_bin("crm-sandbox", "crm-sandbox");
        crm_jobs::testing::workspace_bin("crm-worker", "crm-worker");
        let database = format!("crm_fleet_demo_{}", unique("t").replace('-', "_"));
        let prefix = unique("crmtest-demo-");
        let mut child = Command::new(env!("CARGO_BIN_EXE_crmctl"))
            .args(["demo", "--database", &database, "--prefix", &prefix, "--api-addr", "127.0.0.1:0"])
            .args(["--rate", "6", "--sync-every", "2", "--records", "20"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("crmctl demo");
        let out = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    out.lock().expect("lock").push(line);
                }
            });
        }
        Self { child, out, database, prefix }
    }

    fn lines(&self) -> Vec<String> {
        self.out.lock().expect("lock").clone()
    }

    fn dump(&self) -> String {
        self.lines().join("\n")
    }

    /// The pids after `label` in a line like `processes   sandbox (pid 1), worker-1 (pid 2)`
    /// or `Redis  redis://… (private, pid 3; …)`.
    fn pids(&self) -> Vec<u32> {
        self.lines()
            .iter()
            .filter(|l| l.trim_start().starts_with("processes") || l.contains("(private, pid"))
            .flat_map(|l| {
                l.split("pid ")
                    .skip(1)
                    .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    }

    /// The latest progress block: per provider, (sync runs, actions done).
    fn progress(&self) -> Vec<(String, u64, u64)> {
        let lines = self.lines();
        let Some(start) = lines.iter().rposition(|l| l == "progress") else { return vec![] };
        lines[start + 1..]
            .iter()
            .take(5)
            .filter_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let after = |w: &str| words.iter().position(|x| *x == w).and_then(|i| words.get(i + 1));
                let before =
                    |w: &str| words.iter().position(|x| *x == w).and_then(|i| words.get(i.checked_sub(1)?));
                Some((
                    words.first()?.to_string(),
                    after("syncs")?.parse().ok()?,
                    before("done")?.parse().ok()?,
                ))
            })
            .collect()
    }

    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&Self) -> bool) {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("timed out waiting for {what}; output:\n{}", self.dump());
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!("crmctl demo did not exit; output:\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn flowing_on_all_providers(&self) -> bool {
        let p = self.progress();
        PROVIDERS.iter().all(|name| p.iter().any(|(n, syncs, done)| n == name && *syncs > 0 && *done > 0))
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (state Z) has exited; anything else is still a process.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let database = self.database.clone();
        let prefix = self.prefix.clone();
        // Drop what the demo created for this test: its database and its Redis keys.
        let cleanup = async move {
            if let Ok(pool) = crm_jobs::storage::connect(ADMIN_URL, 1, Duration::from_secs(5)).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                )))
                .execute(&pool)
                .await;
            }
            if let Ok(client) = redis::Client::open(REDIS_URL)
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
            {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}:*"))
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut c).await;
                }
            }
        };
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(cleanup);
        }
    }
}

fn interrupt(pid: u32) {
    let status = Command::new("kill").arg("-INT").arg(pid.to_string()).status().expect("kill");
    assert!(status.success());
}

#[test]
fn the_demo_shows_syncs_and_actions_on_all_five_providers_and_ctrl_c_leaves_no_process_behind() {
    let mut demo = Demo::start(&[]);
    demo.wait_for(
        "syncs and actions on all five providers",
        Duration::from_secs(240),
        Demo::flowing_on_all_providers,
    );
    let pids = demo.pids();
    assert_eq!(pids.len(), 4, "sandbox, scheduler and two workers: {pids:?}\n{}", demo.dump());
    assert!(pids.iter().all(|p| alive(*p)), "all running before Ctrl-C");
    let logs = demo
        .lines()
        .iter()
        .find_map(|l| l.split("(logs in ").nth(1).map(|s| s.trim_end_matches(')').to_owned()))
        .expect("the demo names its log directory");
    interrupt(demo.child.id());
    let status = demo.wait_exit(Duration::from_secs(90));
    assert!(status.success(), "exit {status}; output:\n{}", demo.dump());
    assert!(demo.lines().iter().any(|l| l == "all demo processes stopped."), "{}", demo.dump());
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!PathBuf::from(&logs).exists(), "the temporary directory {logs} is removed");
}

#[test]
fn without_reachable_servers_the_demo_runs_private_redis_and_postgres_and_stops_them() {
    let mut demo = Demo::start(&[
        "--demo-redis-url",
        "redis://127.0.0.1:1",
        "--postgres-url",
        "postgres://postgres@127.0.0.1:1/postgres",
        "--duration",
        "20s",
    ]);
    let status = demo.wait_exit(Duration::from_secs(240));
    assert!(status.success(), "exit {status}; output:\n{}", demo.dump());
    let out = demo.dump();
    assert_eq!(out.matches("(private, pid").count(), 2, "a private Redis and PostgreSQL:\n{out}");
    let pids = demo.pids();
    assert_eq!(pids.len(), 6, "two servers and four fleet processes: {pids:?}\n{out}");
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(out.lines().any(|l| l.contains("actions accepted")), "the run summary:\n{out}");
}
