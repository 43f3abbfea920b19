//! The core cases against a real 3-node Redis Cluster started on loopback ports.

use std::process::{Command, Stdio};
use std::time::Duration;

use crm_queue::{DeadReason, Lane, Limit, NewJob, Priority, Queue, QueueConfig};

use crate::support::eventually;

struct Cluster {
    dir: std::path::PathBuf,
    ports: Vec<u16>,
}

fn free_port() -> u16 {
    // Cluster bus ports are port + 10000; pick from a range where both are free.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl Cluster {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("crm-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        for p in &ports {
            let node_dir = dir.join(p.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let status = Command::new("redis-server")
                .args([
                    "--port",
                    &p.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "yes",
                    "--dir",
                ])
                .arg(&node_dir)
                .arg("--logfile")
                .arg(node_dir.join("log"))
                .status()
                .expect("redis-server");
            assert!(status.success());
        }
        for p in &ports {
            eventually(Duration::from_secs(10), "node up", || async move {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "ping"])
                    .output()
                    .map(|o| o.stdout.starts_with(b"PONG"))
                    .unwrap_or(false)
            })
            .await;
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::piped())
            .output()
            .expect("cluster create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let first = ports[0];
        eventually(Duration::from_secs(20), "cluster ok", || async move {
            Command::new("redis-cli")
                .args(["-p", &first.to_string(), "cluster", "info"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                .unwrap_or(false)
        })
        .await;
        Self { dir, ports }
    }

    fn url(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &self.ports {
            let _ = Command::new("redis-cli").args(["-p", &p.to_string(), "shutdown", "nosave"]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn core_cases_pass_on_a_three_node_cluster() {
    let cluster = Cluster::start().await;
    // Queues with different names land in different slots (and usually nodes).
    for name in ["crm", "other-queue", "third"] {
        let config = QueueConfig::new(cluster.url(), name).with_lease_ttl(Duration::from_millis(400));
        let q = Queue::connect(config).await.expect("connect cluster");
        let lane = Lane::new("hubspot", "t", Priority::Normal).budget("c:provider:hubspot");
        q.set_limit("c:provider:hubspot", Limit::Concurrency(5)).await.expect("limit");

        // Push (bulk) and unique keys.
        let out = q
            .push_bulk((0..20).map(|_| NewJob::new("noop", lane.clone(), b"{}".to_vec())).collect())
            .await
            .expect("push");
        assert_eq!(out.len(), 20);
        let u1 =
            q.push(NewJob::new("noop", lane.clone(), b"{}".to_vec()).unique_key("k")).await.expect("push");
        let u2 =
            q.push(NewJob::new("noop", lane.clone(), b"{}".to_vec()).unique_key("k")).await.expect("push");
        assert!(!u1.is_duplicate() && u2.is_duplicate());

        // Admission through the concurrency budget, ack, fencing.
        let batch = q.fetch("w", 50).await.expect("fetch");
        assert_eq!(batch.len(), 5);
        assert!(q.ack(&[batch[0].lease.clone()]).await.expect("ack")[0]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reaped = q.reap("w2", 100).await.expect("reap");
        assert_eq!(reaped.requeued, 4);
        assert!(!q.ack(&[batch[1].lease.clone()]).await.expect("ack")[0], "stale lease refused");

        // Retry with delay, promotion, dead-lettering.
        let j = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
        assert!(q.retry(&j.lease, Duration::from_millis(100), None, false, false).await.expect("retry"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        q.promote(1000).await.expect("promote");
        let j = q.fetch("w", 1).await.expect("fetch").pop().expect("job");
        let rec = crm_queue::AttemptRecord {
            attempt: j.attempt,
            started_at: 0,
            finished_at: 0,
            worker: "w".into(),
            outcome: "dead".into(),
            error_class: "x".into(),
            message: "y".into(),
            provider_status: None,
            provider_code: None,
        };
        let dying =
            q.dead_letter(&j.lease, &rec, DeadReason::Permanent).await.expect("dead").expect("record");
        assert_eq!(q.finalize(&[dying.id]).await.expect("finalize"), 1);

        // Drain the rest.
        let mut left = 0;
        loop {
            let b = q.fetch("w", 50).await.expect("fetch");
            if b.is_empty() {
                break;
            }
            left += b.len();
            let leases: Vec<_> = b.iter().map(|j| j.lease.clone()).collect();
            q.ack(&leases).await.expect("ack");
        }
        assert_eq!(left, 21 - 1 - 1, "every other job ran");
        let s = q.stats().await.expect("stats");
        assert_eq!((s.ready, s.leased, s.delayed, s.dying), (0, 0, 0, 0));
    }
}
