//! Starting and stopping a sandbox: binds every listener, builds the providers, serves.
//!
//! [`Sandbox::start`] binds the control plane first, then, provider by provider in registry order, one
//! listener per host (port 0, or the fixed offsets of [`PortPlan::Base`]), builds the provider with the
//! bound URLs, wraps its routers in the request gate and starts serving. The returned
//! [`SandboxHandle`] holds the URLs, the shared state and the server tasks.
//!
//! Invariant: when `start` returns `Ok`, every listener is bound and accepting, every default account is
//! seeded, and [`SandboxHandle::urls`] names every base URL a client needs; dropping the handle (or
//! calling [`SandboxHandle::shutdown`]) stops every listener and background generator.

use crate::clock::Clock;
use crate::config::{PortPlan, ProviderKind, SandboxConfig};
use crate::control::{self, Ctl};
use crate::observe::AccountCounters;
use crate::provider::{Provider, ProviderInit, ProviderUrls, registration};
use crate::server::{gated, spawn_server};
use crate::state::SandboxState;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every base URL of a running sandbox. Serialized (one JSON line) by the `crm-sandbox` binary:
/// `{"control":"http://127.0.0.1:4000","hubspot":{"api_base":"…","authorize_url":"…",…}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxUrls {
    /// Base URL of the control plane (routes under `/_sandbox/`).
    pub control: String,
    /// Per running provider, its named base URLs (see each provider's section in `docs/sandbox.md`).
    #[serde(flatten)]
    pub providers: BTreeMap<ProviderKind, ProviderUrls>,
}

impl SandboxUrls {
    /// The URLs of one provider, if it is running.
    pub fn provider(&self, kind: ProviderKind) -> Option<&ProviderUrls> {
        self.providers.get(&kind)
    }

    /// One named URL of one provider.
    pub fn get(&self, kind: ProviderKind, name: &str) -> Option<&str> {
        self.providers.get(&kind).and_then(|m| m.get(name)).map(String::as_str)
    }

    /// HubSpot's URLs, typed.
    pub fn hubspot(&self) -> Option<crate::hubspot::HubSpotUrls> {
        crate::hubspot::HubSpotUrls::from_map(self.providers.get(&ProviderKind::HubSpot)?)
    }

    /// Salesforce's URLs, typed.
    pub fn salesforce(&self) -> Option<crate::salesforce::SalesforceUrls> {
        crate::salesforce::SalesforceUrls::from_map(self.providers.get(&ProviderKind::Salesforce)?)
    }

    /// Pipedrive's URLs, typed.
    pub fn pipedrive(&self) -> Option<crate::pipedrive::PipedriveUrls> {
        crate::pipedrive::PipedriveUrls::from_map(self.providers.get(&ProviderKind::Pipedrive)?)
    }

    /// Zoho CRM's URLs, typed.
    pub fn zoho(&self) -> Option<crate::zoho::ZohoUrls> {
        crate::zoho::ZohoUrls::from_map(self.providers.get(&ProviderKind::Zoho)?)
    }

    /// Close's URLs, typed.
    pub fn close(&self) -> Option<crate::close::CloseUrls> {
        crate::close::CloseUrls::from_map(self.providers.get(&ProviderKind::Close)?)
    }
}

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A listener could not bind.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A requested provider is not implemented yet.
    #[error("provider {0} is not implemented in this sandbox yet")]
    NotImplemented(ProviderKind),
    /// The configuration is unusable.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
}

/// Entry point.
#[derive(Debug)]
pub struct Sandbox;

impl Sandbox {
    /// Binds every listener, seeds the default accounts and starts serving.
    pub async fn start(config: SandboxConfig) -> Result<SandboxHandle, SandboxError> {
        let mut kinds: Vec<ProviderKind> = Vec::new();
        for k in &config.providers {
            if registration(*k).is_none() {
                return Err(SandboxError::NotImplemented(*k));
            }
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
        kinds.sort();
        if let PortPlan::Base(b) = config.ports
            && b > u16::MAX - 64
        {
            return Err(SandboxError::Config(format!("base port {b} is too high")));
        }

        let state = Arc::new(SandboxState::new(config.clone()));
        let (tx, rx) = watch::channel(false);
        let control_listener = bind(config.control_addr).await?;
        let control_addr = local_addr(&control_listener, config.control_addr)?;
        let ip = control_addr.ip();

        let mut providers: BTreeMap<ProviderKind, Arc<dyn Provider>> = BTreeMap::new();
        let mut urls = BTreeMap::new();
        let mut tasks = Vec::new();
        for kind in kinds {
            let Some(reg) = registration(kind) else {
                return Err(SandboxError::NotImplemented(kind));
            };
            let mut listeners = Vec::new();
            let mut host_urls = BTreeMap::new();
            for (k, host) in reg.hosts.iter().enumerate() {
                let port = match config.ports {
                    PortPlan::Ephemeral => 0,
                    PortPlan::Base(b) => b + reg.port_offset + k as u16,
                };
                let want = SocketAddr::new(ip, port);
                let l = bind(want).await?;
                let addr = local_addr(&l, want)?;
                host_urls.insert(*host, format!("http://{addr}"));
                listeners.push((*host, l));
            }
            let init = ProviderInit { state: state.clone(), host_urls };
            let build = reg.build;
            let provider = tokio::task::spawn_blocking(move || build(init))
                .await
                .map_err(|e| SandboxError::Config(format!("building {kind} failed: {e}")))?;
            urls.insert(kind, provider.urls());
            for (host, l) in listeners {
                let router =
                    gated(provider.clone().router(host), state.clone(), provider.clone(), host, rx.clone());
                tasks.push(spawn_server(l, router, rx.clone()));
            }
            providers.insert(kind, provider);
        }

        let urls = SandboxUrls { control: format!("http://{control_addr}"), providers: urls };
        let providers = Arc::new(providers);
        let ctl = Ctl { state: state.clone(), providers: providers.clone(), urls: Arc::new(urls.clone()) };
        tasks.push(spawn_server(control_listener, control::router(ctl), rx));
        Ok(SandboxHandle { state, urls, providers, shutdown: tx, tasks })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, SandboxError> {
    TcpListener::bind(addr).await.map_err(|source| SandboxError::Bind { addr, source })
}

fn local_addr(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, SandboxError> {
    l.local_addr().map_err(|source| SandboxError::Bind { addr, source })
}

/// A running sandbox. Dropping it stops the servers.
pub struct SandboxHandle {
    state: Arc<SandboxState>,
    urls: SandboxUrls,
    providers: Arc<BTreeMap<ProviderKind, Arc<dyn Provider>>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle").field("urls", &self.urls).finish_non_exhaustive()
    }
}

impl SandboxHandle {
    /// Every base URL.
    pub fn urls(&self) -> &SandboxUrls {
        &self.urls
    }

    /// The shared services (clock, tokens, faults, log, counters).
    pub fn state(&self) -> &Arc<SandboxState> {
        &self.state
    }

    /// The logical clock.
    pub fn clock(&self) -> &Clock {
        &self.state.clock
    }

    /// One account's counters merged with its token statistics.
    pub fn counters(&self, provider: ProviderKind, account: &str) -> AccountCounters {
        self.state.account_counters(provider, account)
    }

    /// A running provider, as the trait object the control plane uses.
    pub fn provider(&self, kind: ProviderKind) -> Option<Arc<dyn Provider>> {
        self.providers.get(&kind).cloned()
    }

    /// The running HubSpot imitation, typed (accounts, settings, direct record access).
    pub fn hubspot(&self) -> Option<Arc<crate::hubspot::HubSpot>> {
        let p = self.providers.get(&ProviderKind::HubSpot)?.clone();
        let any: Arc<dyn Any + Send + Sync> = p.into_any();
        any.downcast::<crate::hubspot::HubSpot>().ok()
    }

    /// The running Salesforce imitation, typed (orgs, settings, direct record access).
    pub fn salesforce(&self) -> Option<Arc<crate::salesforce::Salesforce>> {
        let p = self.providers.get(&ProviderKind::Salesforce)?.clone();
        let any: Arc<dyn Any + Send + Sync> = p.into_any();
        any.downcast::<crate::salesforce::Salesforce>().ok()
    }

    /// The running Pipedrive imitation, typed (companies, settings, direct record access).
    pub fn pipedrive(&self) -> Option<Arc<crate::pipedrive::Pipedrive>> {
        let p = self.providers.get(&ProviderKind::Pipedrive)?.clone();
        let any: Arc<dyn Any + Send + Sync> = p.into_any();
        any.downcast::<crate::pipedrive::Pipedrive>().ok()
    }

    /// The running Zoho CRM imitation, typed (orgs, settings, direct record access).
    pub fn zoho(&self) -> Option<Arc<crate::zoho::Zoho>> {
        let p = self.providers.get(&ProviderKind::Zoho)?.clone();
        let any: Arc<dyn Any + Send + Sync> = p.into_any();
        any.downcast::<crate::zoho::Zoho>().ok()
    }

    /// The running Close imitation, typed (accounts, settings, direct record access).
    pub fn close(&self) -> Option<Arc<crate::close::Close>> {
        let p = self.providers.get(&ProviderKind::Close)?.clone();
        let any: Arc<dyn Any + Send + Sync> = p.into_any();
        any.downcast::<crate::close::Close>().ok()
    }

    /// Stops every listener and generator, waiting up to two seconds for in-flight requests.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.state.generators.stop_all();
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let joined = futures::future::join_all(tasks);
        if tokio::time::timeout(Duration::from_secs(2), joined).await.is_err() {
            for a in aborts {
                a.abort();
            }
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.state.generators.stop_all();
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip_through_the_printed_json() {
        let mut hs = ProviderUrls::new();
        hs.insert("api_base".into(), "http://127.0.0.1:1".into());
        hs.insert("app_base".into(), "http://127.0.0.1:2".into());
        hs.insert("authorize_url".into(), "http://127.0.0.1:2/oauth/authorize".into());
        hs.insert("token_url".into(), "http://127.0.0.1:1/oauth/v1/token".into());
        hs.insert("token_url_v3".into(), "http://127.0.0.1:1/oauth/v3/token".into());
        let urls = SandboxUrls {
            control: "http://127.0.0.1:0".into(),
            providers: [(ProviderKind::HubSpot, hs)].into_iter().collect(),
        };
        let line = serde_json::to_string(&urls).expect("serializes");
        assert!(line.starts_with("{\"control\":\"http://127.0.0.1:0\",\"hubspot\":{"), "{line}");
        let back: SandboxUrls = serde_json::from_str(&line).expect("parses");
        assert_eq!(back, urls);
        assert_eq!(
            back.hubspot().map(|h| h.token_url_v3),
            Some("http://127.0.0.1:1/oauth/v3/token".to_owned())
        );
    }
}
