//! `crm-sandbox`: faithful loopback imitations of the CRMs crm-fleet talks to, for tests, the demo and
//! benchmarks.
//!
//! A sandbox is one process-local server set: a control plane (`/_sandbox/...`) and, per provider, one
//! listener per host the real provider uses (HubSpot: `api` for `api.hubapi.com`, `app` for
//! `app.hubspot.com`). Everything binds to loopback, on port 0 by default.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use crm_sandbox::{Sandbox, SandboxConfig};
//! let sb = Sandbox::start(SandboxConfig::default().with_records(100).with_frozen_clock()).await?;
//! let hubspot = sb.urls().hubspot().expect("hubspot runs by default");
//! println!("GET {}/crm/v3/objects/contacts", hubspot.api_base);
//! sb.clock().advance(31 * 60 * 1000); // every OAuth access token issued so far is now expired
//! # Ok(()) }
//! ```
//!
//! # Map
//!
//! * Core services, shared by all providers ([`state::SandboxState`]): [`clock`] (logical time),
//!   [`seed`] (deterministic randomness), [`tokens`] (OAuth codes and tokens), [`ratelimit`]
//!   (windows, daily counters, buckets, concurrency), [`faults`] (fault rules), [`observe`] (request log
//!   and counters), [`changes`] (journal, mutation feed, generators).
//! * Plumbing: [`server`] (listeners, kill switches, the request gate), `control` (the control
//!   plane), [`sandbox`] (start/stop), [`config`].
//! * Providers: [`provider`] (the trait and registry), [`hubspot`].
//!
//! # Adding a provider
//!
//! 1. Create `src/<name>/mod.rs` with a type implementing [`provider::Provider`] and a
//!    `pub fn build(init: ProviderInit) -> Arc<dyn Provider>` that seeds `init.state.config.accounts`
//!    accounts. Use `init.host(name)` for the base URL of each of your hosts.
//! 2. Add one [`provider::Registration`] line to [`provider::REGISTRY`]: kind, host names (one listener
//!    each), port offset (see [`config::PortPlan`]), build function.
//! 3. Take time from `state.clock`, tokens from `state.tokens` (you mint the strings), randomness from
//!    [`seed::rng_for`] with labels starting with your provider name, limits from [`ratelimit`], and
//!    record creates with `state.counters.record_created`. Tag responses with
//!    [`server::with_operation`] and throttles with [`server::mark_throttled`]; the gate does logging,
//!    in-flight counting and fault injection for you.
//! 4. Document your endpoints, URL keys, settings and deliberate differences in `docs/sandbox.md`, and
//!    add tests under `tests/sandbox/`.
//!
//! The full guide is the "Adding a provider" section of `docs/sandbox.md`.

pub mod changes;
pub mod clock;
pub mod close;
pub mod config;
pub(crate) mod control;
pub mod faults;
pub mod hubspot;
pub mod observe;
pub mod pipedrive;
pub mod provider;
pub mod ratelimit;
pub mod salesforce;
pub mod sandbox;
pub mod seed;
pub mod server;
pub mod state;
pub mod tokens;
pub mod zoho;

pub use clock::{Clock, ClockMode, Millis};
pub use config::{HubSpotConfig, HubSpotTier, PortPlan, ProviderKind, SandboxConfig};
pub use observe::AccountCounters;
pub use provider::{ControlError, Provider};
pub use sandbox::{Sandbox, SandboxError, SandboxHandle, SandboxUrls};
pub use state::SandboxState;
