//! Listeners, connection control and the request gate that wraps every provider router.
//!
//! * [`KillableListener`] wraps a `TcpListener`; each accepted connection carries a kill switch that a
//!   handler reaches through the [`ConnHandle`] connect-info. Flipping it makes the next read or write
//!   on the socket fail, so hyper closes the connection without sending the response. That is how the
//!   "drop" and "commit then drop the connection" faults work.
//! * The gate (one per provider host) runs around every provider request, in this order:
//!   1. identify the account from the credentials ([`Provider::identify`]);
//!   2. mark the request in flight for that account (drop guard);
//!   3. evaluate fault rules: sleep for injected latency, then answer, hang or drop if a terminal rule
//!      fired;
//!   4. run the provider handler; after a `drop_after_commit` fault, kill the connection instead of
//!      answering;
//!   5. write the request log and the account counters (operation name from the [`Operation`] response
//!      extension, throttling from the [`Throttled`] extension).
//!
//! Invariant: the gate is the only writer of the request log and of request counters, so every
//! provider is observed the same way, and a fault never reaches the provider handler unless it is
//! latency or drop-after-commit.

use crate::config::ProviderKind;
use crate::faults::{FaultAction, RequestFacts};
use crate::observe::RequestEntry;
use crate::provider::Provider;
use crate::state::SandboxState;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A per-connection switch that, once flipped, fails every further read and write.
#[derive(Debug, Default)]
pub struct KillSwitch {
    killed: AtomicBool,
}

impl KillSwitch {
    /// Flips the switch.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// A TCP stream with a kill switch.
#[derive(Debug)]
pub struct ConnIo {
    inner: TcpStream,
    kill: Arc<KillSwitch>,
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by fault injection",
            )));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection dropped by fault injection",
            )));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection dropped by fault injection",
            )));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections carry kill switches.
#[derive(Debug)]
pub struct KillableListener {
    inner: TcpListener,
}

impl KillableListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

impl Listener for KillableListener {
    type Io = ConnIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (ConnIo { inner: stream, kill: Arc::new(KillSwitch::default()) }, addr);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Connect info of a request: the peer address and the connection's kill switch.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    /// The peer.
    pub remote: SocketAddr,
    /// Flipping it drops the connection.
    pub kill: Arc<KillSwitch>,
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnHandle { remote: *stream.remote_addr(), kill: stream.io().kill.clone() }
    }
}

/// Response extension: the operation name the gate logs and counts (`contacts.create`, ...).
#[derive(Clone, Debug)]
pub struct Operation(pub String);

/// Response extension: the provider counts this response as a throttle (HubSpot 429, Salesforce
/// 403 `REQUEST_LIMIT_EXCEEDED`, ...).
#[derive(Clone, Copy, Debug)]
pub struct Throttled;

/// Tags a response with its operation name.
pub fn with_operation(mut resp: Response, op: impl Into<String>) -> Response {
    resp.extensions_mut().insert(Operation(op.into()));
    resp
}

/// Marks a response as a throttle response.
pub fn mark_throttled(mut resp: Response) -> Response {
    resp.extensions_mut().insert(Throttled);
    resp
}

#[derive(Clone)]
struct Gate {
    state: Arc<SandboxState>,
    provider: Arc<dyn Provider>,
    kind: ProviderKind,
    host: &'static str,
    shutdown: watch::Receiver<bool>,
}

/// Serves a request in a task of its own: like a real CRM, the imitation finishes a request it
/// received even when the client goes away meanwhile (a timeout, a cancelled caller). Run in
/// the connection's task, it would be dropped with the connection, and a write (a token
/// refresh that rotates, a create) held by a latency fault would never happen.
async fn gate(State(g): State<Gate>, req: Request, next: Next) -> Response {
    match tokio::spawn(serve(g, req, next)).await {
        Ok(resp) => resp,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn serve(g: Gate, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let now = g.state.clock.now_ms();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let account = g.provider.identify(req.headers(), req.uri());
    let template = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let conn = req.extensions().get::<ConnectInfo<ConnHandle>>().map(|c| c.0.clone());
    let _in_flight = account.as_deref().map(|a| g.state.counters.enter(g.kind, a));

    let plan = g.state.faults.evaluate(RequestFacts {
        provider: g.kind,
        account: account.as_deref(),
        method: &method,
        path: &path,
        now,
    });
    if plan.latency_ms > 0 {
        let mut shutdown = g.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(plan.latency_ms)) => {}
            _ = shutdown.changed() => {}
        }
    }

    let mut dropped = false;
    let resp = match &plan.terminal {
        None => next.run(req).await,
        Some(FaultAction::DropAfterCommit) => {
            let resp = next.run(req).await;
            if let Some(c) = &conn {
                c.kill.kill();
                dropped = true;
            }
            resp
        }
        Some(FaultAction::Drop) => {
            if let Some(c) = &conn {
                c.kill.kill();
                dropped = true;
            }
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Some(FaultAction::Hang { ms }) => {
            let mut shutdown = g.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(*ms)) => {}
                _ = shutdown.changed() => {}
            }
            if let Some(c) = &conn {
                c.kill.kill();
                dropped = true;
            }
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Some(action @ FaultAction::Status { .. }) => {
            fault_status(g.provider.as_ref(), action, account.as_deref())
        }
        Some(action @ FaultAction::Throttle { .. }) => {
            mark_throttled(g.provider.fault_response(action, account.as_deref()))
        }
        Some(FaultAction::Latency { .. }) => next.run(req).await,
    };

    let operation = resp
        .extensions()
        .get::<Operation>()
        .map(|o| o.0.clone())
        .or(template)
        .unwrap_or_else(|| format!("{method} {path}"));
    let throttled = resp.extensions().get::<Throttled>().is_some();
    let status = if dropped { 0 } else { resp.status().as_u16() };
    if let Some(a) = &account {
        g.state.counters.record_request(g.kind, a, &operation, status, throttled);
    }
    g.state.log.push(RequestEntry {
        seq: 0,
        at_ms: now,
        at: crate::clock::format_ms(now),
        provider: g.kind,
        host: g.host.to_owned(),
        method,
        path,
        query,
        account,
        operation,
        status,
        dropped,
        throttled,
        faults: plan.labels,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    resp
}

fn fault_status(provider: &dyn Provider, action: &FaultAction, account: Option<&str>) -> Response {
    let FaultAction::Status { status, body, headers, retry_after_secs, .. } = action else {
        return provider.fault_response(action, account);
    };
    let mut resp = match body {
        Some(b) => {
            let code = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (code, axum::Json(b.clone())).into_response()
        }
        None => provider.fault_response(action, account),
    };
    if let Some(secs) = retry_after_secs
        && let Ok(v) = secs.to_string().parse()
    {
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) =
            (axum::http::HeaderName::from_bytes(k.as_bytes()), axum::http::HeaderValue::from_str(v))
        {
            resp.headers_mut().insert(name, value);
        }
    }
    if *status == 429 {
        resp = mark_throttled(resp);
    }
    resp
}

/// Wraps a provider host's router in the request gate.
pub(crate) fn gated(
    router: Router,
    state: Arc<SandboxState>,
    provider: Arc<dyn Provider>,
    host: &'static str,
    shutdown: watch::Receiver<bool>,
) -> Router {
    let kind = provider.kind();
    let g = Gate { state, provider, kind, host, shutdown };
    router.layer(middleware::from_fn_with_state(g, gate))
}

/// Serves `router` on `listener` until `shutdown` flips.
pub(crate) fn spawn_server(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<ConnHandle>();
        let result = axum::serve(KillableListener::new(listener), app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "sandbox listener stopped with an error");
        }
    })
}
