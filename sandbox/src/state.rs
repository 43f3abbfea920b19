//! The shared services every provider plugs into, bundled in one [`SandboxState`].
//!
//! Invariant: there is exactly one `SandboxState` per running sandbox, created before any listener
//! starts and shared (`Arc`) by the control plane, the request gate and every provider; providers keep
//! their own records and limits but take time, tokens, faults, logs and counters from here.

use crate::changes::Generators;
use crate::clock::Clock;
use crate::config::{ProviderKind, SandboxConfig};
use crate::faults::FaultRegistry;
use crate::observe::{AccountCounters, Counters, RequestLog};
use crate::seed::SharedRng;
use crate::tokens::TokenStore;

/// The shared services.
#[derive(Debug)]
pub struct SandboxState {
    /// The configuration the sandbox started with.
    pub config: SandboxConfig,
    /// The logical clock.
    pub clock: Clock,
    /// OAuth codes and tokens of every provider.
    pub tokens: TokenStore,
    /// Fault rules.
    pub faults: FaultRegistry,
    /// The request log.
    pub log: RequestLog,
    /// Per-account counters.
    pub counters: Counters,
    /// Background change generators.
    pub generators: Generators,
    /// Deterministic stream for correlation and request ids.
    pub ids: SharedRng,
}

impl SandboxState {
    /// Builds the services from a configuration.
    pub fn new(config: SandboxConfig) -> Self {
        Self {
            clock: Clock::new(config.clock_start_ms, config.clock_mode),
            tokens: TokenStore::new(),
            faults: FaultRegistry::new(config.seed),
            log: RequestLog::new(config.request_log_capacity),
            counters: Counters::new(),
            generators: Generators::default(),
            ids: SharedRng::new(config.seed, &["ids"]),
            config,
        }
    }

    /// An account's counters merged with its token statistics.
    pub fn account_counters(&self, provider: ProviderKind, account: &str) -> AccountCounters {
        let s = self.counters.stats(provider, account);
        let t = self.tokens.stats(provider, account);
        let mut created = std::collections::BTreeMap::new();
        for c in &s.created {
            *created.entry(c.object.clone()).or_default() += 1;
        }
        AccountCounters {
            requests: s.requests,
            by_operation: s.by_operation,
            by_status: s.by_status,
            throttled: s.throttled,
            in_flight: s.in_flight,
            max_in_flight: s.max_in_flight,
            token_refreshes: t.token_refreshes,
            token_refresh_failures: t.token_refresh_failures,
            code_exchanges: t.code_exchanges,
            created,
        }
    }

    /// Resets counters and token statistics (of one provider, one account, or all).
    pub fn reset_counters(&self, provider: Option<ProviderKind>, account: Option<&str>) {
        self.counters.reset(provider, account);
        self.tokens.reset_stats(provider, account);
    }
}
