//! Redis connections that wait and reconnect rather than fail.
//!
//! [`RedisConn`] is one type over a single server (a [`ConnectionManager`], which reconnects in
//! the background) and a Redis Cluster (a [`ClusterConnection`], which follows slot moves).
//! Both are cheap to clone and multiplex every caller onto one socket per node. Blocking
//! commands (`BLPOP` on the wake-up list) get their own connection from
//! [`RedisConn::connect_blocking`], because a blocked socket would stall every multiplexed
//! caller behind it.
//!
//! Invariant: nothing here gives up for good. `connect` retries until it succeeds (logging each
//! failure), and a command that fails returns an error the caller retries after a backoff; a
//! Redis restart or stall makes workers wait, never exit.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::QueueError;

/// A connection to a single Redis server or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    /// A single server (or a primary behind a proxy).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("RedisConn::Single"),
            Self::Cluster(_) => f.write_str("RedisConn::Cluster"),
        }
    }
}

/// Where to connect: parsed from a URL or a comma-separated list of cluster node URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server.
    Single(String),
    /// Cluster seed nodes.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Parses `redis://host:port` (single) or `redis://a:1,redis://b:2` (cluster). A URL with
    /// the query `?cluster=true` is also treated as a cluster seed.
    pub fn parse(url: &str) -> Result<Self, QueueError> {
        let parts: Vec<String> =
            url.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        match parts.as_slice() {
            [] => Err(QueueError::Config(vec!["REDIS_URL is empty".to_owned()])),
            [one] if one.contains("cluster=true") => {
                Ok(Self::Cluster(vec![one.replace("?cluster=true", "")]))
            }
            [one] => Ok(Self::Single(one.clone())),
            many => Ok(Self::Cluster(many.to_vec())),
        }
    }
}

impl RedisConn {
    /// Connects, retrying with backoff until it succeeds (a worker started before Redis waits
    /// for it). Commands time out after `response_timeout`.
    pub async fn connect(
        target: &RedisTarget,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, QueueError> {
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::try_connect(target, response_timeout, connect_timeout).await {
                Ok(conn) => return Ok(conn),
                Err(QueueError::Config(problems)) => return Err(QueueError::Config(problems)),
                Err(error) => {
                    tracing::warn!(message = "redis unreachable; retrying", %error, retry_in = ?delay);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One connection attempt.
    pub async fn try_connect(
        target: &RedisTarget,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, QueueError> {
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| QueueError::Config(vec![format!("REDIS_URL {url:?}: {e}")]))?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(connect_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                let manager = client.get_connection_manager_with_config(config).await?;
                Ok(Self::Single(manager))
            }
            RedisTarget::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .response_timeout(response_timeout)
                    .connection_timeout(connect_timeout)
                    .retries(6)
                    .build()
                    .map_err(|e| {
                        QueueError::Config(vec![format!("REDIS_URL cluster nodes {nodes:?}: {e}")])
                    })?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A separate connection for blocking commands, whose response timeout leaves room for
    /// the longest block.
    pub async fn connect_blocking(
        target: &RedisTarget,
        longest_block: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, QueueError> {
        Self::connect(target, longest_block + Duration::from_secs(5), connect_timeout).await
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_cluster_targets() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379").ok(),
            Some(RedisTarget::Single("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            RedisTarget::parse("redis://a:1, redis://b:2").ok(),
            Some(RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert!(RedisTarget::parse("").is_err());
    }
}
