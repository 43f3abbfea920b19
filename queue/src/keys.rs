//! Redis key naming. Every key of a queue is `<prefix>:{<queue>}:<suffix>`: the braces make the
//! queue name the hash tag, so all of a queue's keys live in one Redis Cluster slot and one Lua
//! script may touch any of them. There are no keys outside a queue's tag (no global registry),
//! which is what lets a queue live on a Redis Cluster.

/// The key base of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// Keys for queue `name` under `prefix`.
    pub fn new(prefix: &str, name: &str) -> Self {
        let base = if prefix.is_empty() { format!("{{{name}}}:") } else { format!("{prefix}:{{{name}}}:") };
        Self { base }
    }

    /// The base every key starts with (passed to scripts as `ARGV[1]`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The routing key passed as `KEYS[1]` so cluster clients send scripts to the right node.
    pub fn route(&self) -> String {
        format!("{}meta", self.base)
    }

    /// The wake-up list idle workers block on.
    pub fn signal(&self) -> String {
        format!("{}signal", self.base)
    }

    /// A job's hash.
    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.base)
    }

    /// A job's attempt history list.
    pub fn history(&self, id: &str) -> String {
        format!("{}h:{id}", self.base)
    }

    /// Any other key, by suffix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_queue_hash_tag() {
        let k = Keys::new("crm-fleet", "crm");
        for key in [k.route(), k.signal(), k.job("1"), k.history("1"), k.key("delayed")] {
            assert!(key.starts_with("crm-fleet:{crm}:"), "{key}");
        }
    }
}
