//! The Lua scripts, each prefixed with the shared prelude (`lua/common.lua`).
//!
//! Every state change of a job happens inside one of these scripts, so each transition is
//! atomic on the Redis server. The scripts are loaded lazily (EVALSHA, falling back to
//! SCRIPT LOAD on every primary of a cluster).

use redis::Script;

const COMMON: &str = include_str!("../lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// All queue scripts.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub push: Script,
    pub fetch: Script,
    pub ack: Script,
    pub retry: Script,
    pub dead: Script,
    pub finalize: Script,
    pub collect_dying: Script,
    pub heartbeat: Script,
    pub reap: Script,
    pub records: Script,
    pub promote: Script,
    pub stats: Script,
    pub pause: Script,
    pub take: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            push: script(include_str!("../lua/push.lua")),
            fetch: script(include_str!("../lua/fetch.lua")),
            ack: script(include_str!("../lua/ack.lua")),
            retry: script(include_str!("../lua/retry.lua")),
            dead: script(include_str!("../lua/dead.lua")),
            finalize: script(include_str!("../lua/finalize.lua")),
            collect_dying: script(include_str!("../lua/collect_dying.lua")),
            heartbeat: script(include_str!("../lua/heartbeat.lua")),
            reap: script(include_str!("../lua/reap.lua")),
            records: script(include_str!("../lua/records.lua")),
            promote: script(include_str!("../lua/promote.lua")),
            stats: script(include_str!("../lua/stats.lua")),
            pause: script(include_str!("../lua/pause.lua")),
            take: script(include_str!("../lua/take.lua")),
        }
    }
}
