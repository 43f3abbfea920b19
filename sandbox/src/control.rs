//! The control plane: every `/_sandbox/...` route, on its own listener, never mixed with a provider
//! surface.
//!
//! Generic routes (clock, request log, counters, faults) talk to [`SandboxState`] directly; per-provider
//! routes (`/_sandbox/{provider}/...`) look the provider up by name and delegate to its [`Provider`]
//! methods, so a new provider gets the whole control plane by implementing the trait. `docs/sandbox.md`
//! lists the routes with examples.
//!
//! Invariant: the control plane never goes through the request gate, so its calls are not logged,
//! counted, throttled or faulted.

use crate::changes::{GeneratorSpec, MutationRequest};
use crate::clock::{ClockMode, Millis, parse_duration_ms, parse_time};
use crate::config::ProviderKind;
use crate::faults::FaultSpec;
use crate::observe::RequestFilter;
use crate::provider::{ControlError, Provider};
use crate::sandbox::SandboxUrls;
use crate::state::SandboxState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct Ctl {
    pub(crate) state: Arc<SandboxState>,
    pub(crate) providers: Arc<BTreeMap<ProviderKind, Arc<dyn Provider>>>,
    pub(crate) urls: Arc<SandboxUrls>,
}

impl Ctl {
    fn provider(&self, name: &str) -> Result<Arc<dyn Provider>, ControlError> {
        let kind: ProviderKind = name.parse().map_err(ControlError::not_found)?;
        self.providers
            .get(&kind)
            .cloned()
            .ok_or_else(|| ControlError::not_found(format!("provider {kind} is not running")))
    }
}

type CtlResult = Result<Response, ControlError>;

fn ok(v: impl serde::Serialize) -> CtlResult {
    Ok(Json(v).into_response())
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|e| ControlError::bad_request(format!("invalid JSON body: {e}")))
}

/// Builds the control-plane router.
pub(crate) fn router(ctl: Ctl) -> Router {
    Router::new()
        .route("/_sandbox/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/_sandbox/urls", get(urls))
        .route("/_sandbox/clock", get(clock_get).post(clock_post))
        .route("/_sandbox/requests", get(requests_get).delete(requests_delete))
        .route("/_sandbox/counters", get(counters_all).delete(counters_reset_all))
        .route("/_sandbox/faults", get(faults_list).post(faults_add).delete(faults_clear))
        .route("/_sandbox/faults/{id}", delete(faults_remove))
        .route("/_sandbox/{provider}/faults", post(provider_faults_add).delete(provider_faults_clear))
        .route("/_sandbox/{provider}/settings", get(settings_get).patch(settings_patch))
        .route("/_sandbox/{provider}/accounts", get(accounts_list).post(accounts_create))
        .route("/_sandbox/{provider}/accounts/{id}", get(account_get).patch(account_patch))
        .route(
            "/_sandbox/{provider}/accounts/{id}/counters",
            get(account_counters).delete(account_counters_reset),
        )
        .route("/_sandbox/{provider}/accounts/{id}/created", get(account_created))
        .route("/_sandbox/{provider}/accounts/{id}/tokens", post(account_tokens))
        .route("/_sandbox/{provider}/accounts/{id}/revoke", post(account_revoke))
        .route("/_sandbox/{provider}/accounts/{id}/expire-tokens", post(account_expire))
        .route("/_sandbox/{provider}/accounts/{id}/mutations", post(account_mutations))
        .route("/_sandbox/{provider}/accounts/{id}/changes", get(account_changes))
        .route(
            "/_sandbox/{provider}/accounts/{id}/generator",
            get(generator_get).post(generator_start).delete(generator_stop),
        )
        .route(
            "/_sandbox/{provider}/accounts/{id}/objects/{object}/{record_id}",
            get(record_get).patch(record_patch).delete(record_delete),
        )
        .fallback(|| async {
            ControlError::not_found("no such control-plane route; see docs/sandbox.md").into_response()
        })
        .with_state(ctl)
}

async fn urls(State(c): State<Ctl>) -> Json<SandboxUrls> {
    Json((*c.urls).clone())
}

async fn clock_get(State(c): State<Ctl>) -> CtlResult {
    ok(c.state.clock.reading())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TimeArg {
    Num(Millis),
    Str(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockPost {
    #[serde(default)]
    set: Option<TimeArg>,
    #[serde(default)]
    advance: Option<TimeArg>,
    #[serde(default)]
    mode: Option<ClockMode>,
}

/// `POST /_sandbox/clock {"set": "2026-01-06T00:00:00Z"?, "advance": "10s"|ms?, "mode": "frozen"|"running"?}`
/// applies `mode`, then `set`, then `advance`.
async fn clock_post(State(c): State<Ctl>, body: axum::body::Bytes) -> CtlResult {
    let p: ClockPost = parse_body(&body)?;
    match p.mode {
        Some(ClockMode::Frozen) => c.state.clock.freeze(),
        Some(ClockMode::Running) => c.state.clock.resume(),
        None => {}
    }
    if let Some(t) = p.set {
        let ms = match t {
            TimeArg::Num(n) => n,
            TimeArg::Str(s) => {
                parse_time(&s).ok_or_else(|| ControlError::bad_request(format!("not a time: {s:?}")))?
            }
        };
        c.state.clock.set(ms);
    }
    if let Some(d) = p.advance {
        let ms = match d {
            TimeArg::Num(n) => n,
            TimeArg::Str(s) => parse_duration_ms(&s)
                .ok_or_else(|| ControlError::bad_request(format!("not a duration: {s:?}")))?,
        };
        if ms < 0 {
            return Err(ControlError::bad_request("advance must not be negative; use set"));
        }
        c.state.clock.advance(ms);
    }
    ok(c.state.clock.reading())
}

async fn requests_get(State(c): State<Ctl>, Query(f): Query<RequestFilter>) -> CtlResult {
    let entries = c.state.log.query(&f);
    ok(json!({"last_seq": c.state.log.last_seq(), "count": entries.len(), "requests": entries}))
}

async fn requests_delete(State(c): State<Ctl>) -> StatusCode {
    c.state.log.clear();
    StatusCode::NO_CONTENT
}

async fn counters_all(State(c): State<Ctl>) -> CtlResult {
    let mut out = Vec::new();
    for (p, a) in c.state.counters.accounts() {
        out.push(json!({"provider": p, "account": a, "counters": c.state.account_counters(p, &a)}));
    }
    ok(json!({"accounts": out}))
}

async fn counters_reset_all(State(c): State<Ctl>) -> StatusCode {
    c.state.reset_counters(None, None);
    StatusCode::NO_CONTENT
}

async fn faults_list(State(c): State<Ctl>) -> CtlResult {
    ok(json!({"faults": c.state.faults.list()}))
}

async fn faults_add(State(c): State<Ctl>, body: axum::body::Bytes) -> CtlResult {
    let spec: FaultSpec = parse_body(&body)?;
    if let Some(p) = spec.provider
        && !c.providers.contains_key(&p)
    {
        return Err(ControlError::not_found(format!("provider {p} is not running")));
    }
    let rule = c.state.faults.add(spec, c.state.clock.now_ms()).map_err(ControlError::bad_request)?;
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

async fn provider_faults_add(
    State(c): State<Ctl>,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> CtlResult {
    let p = c.provider(&provider)?;
    let mut spec: FaultSpec = parse_body(&body)?;
    spec.provider = Some(p.kind());
    let rule = c.state.faults.add(spec, c.state.clock.now_ms()).map_err(ControlError::bad_request)?;
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

async fn provider_faults_clear(State(c): State<Ctl>, Path(provider): Path<String>) -> CtlResult {
    let p = c.provider(&provider)?;
    c.state.faults.clear(Some(p.kind()));
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn faults_clear(State(c): State<Ctl>) -> StatusCode {
    c.state.faults.clear(None);
    StatusCode::NO_CONTENT
}

async fn faults_remove(State(c): State<Ctl>, Path(id): Path<u64>) -> CtlResult {
    if c.state.faults.remove(id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ControlError::not_found(format!("no fault rule {id}")))
    }
}

async fn settings_get(State(c): State<Ctl>, Path(provider): Path<String>) -> CtlResult {
    ok(c.provider(&provider)?.settings())
}

async fn settings_patch(
    State(c): State<Ctl>,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> CtlResult {
    let patch: Value = parse_body(&body)?;
    ok(c.provider(&provider)?.update_settings(patch)?)
}

async fn accounts_list(State(c): State<Ctl>, Path(provider): Path<String>) -> CtlResult {
    ok(c.provider(&provider)?.list_accounts())
}

async fn accounts_create(
    State(c): State<Ctl>,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> CtlResult {
    let spec: Value = parse_body(&body)?;
    let p = c.provider(&provider)?;
    let created = tokio::task::spawn_blocking(move || p.create_account(spec))
        .await
        .map_err(|e| ControlError::bad_request(format!("account creation failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn account_get(State(c): State<Ctl>, Path((provider, id)): Path<(String, String)>) -> CtlResult {
    ok(c.provider(&provider)?.account(&id)?)
}

async fn account_patch(
    State(c): State<Ctl>,
    Path((provider, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> CtlResult {
    let patch: Value = parse_body(&body)?;
    ok(c.provider(&provider)?.update_account(&id, patch)?)
}

async fn account_counters(State(c): State<Ctl>, Path((provider, id)): Path<(String, String)>) -> CtlResult {
    let p = c.provider(&provider)?;
    p.account(&id)?;
    ok(c.state.account_counters(p.kind(), &id))
}

async fn account_counters_reset(
    State(c): State<Ctl>,
    Path((provider, id)): Path<(String, String)>,
) -> CtlResult {
    let p = c.provider(&provider)?;
    p.account(&id)?;
    c.state.reset_counters(Some(p.kind()), Some(&id));
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct CreatedQuery {
    object: Option<String>,
    contains: Option<String>,
}

async fn account_created(
    State(c): State<Ctl>,
    Path((provider, id)): Path<(String, String)>,
    Query(q): Query<CreatedQuery>,
) -> CtlResult {
    let p = c.provider(&provider)?;
    p.account(&id)?;
    let objs = c.state.counters.created(p.kind(), &id, q.object.as_deref(), q.contains.as_deref());
    ok(json!({"count": objs.len(), "objects": objs}))
}

async fn account_tokens(State(c): State<Ctl>, Path((provider, id)): Path<(String, String)>) -> CtlResult {
    Ok((StatusCode::CREATED, Json(c.provider(&provider)?.issue_tokens(&id)?)).into_response())
}

async fn account_revoke(State(c): State<Ctl>, Path((provider, id)): Path<(String, String)>) -> CtlResult {
    let p = c.provider(&provider)?;
    p.account(&id)?;
    ok(p.revoke_tokens(&c.state, &id)?)
}

async fn account_expire(State(c): State<Ctl>, Path((provider, id)): Path<(String, String)>) -> CtlResult {
    let p = c.provider(&provider)?;
    p.account(&id)?;
    let n = c.state.tokens.expire_account(p.kind(), &id, c.state.clock.now_ms());
    ok(json!({"expired": n}))
}

async fn account_mutations(
    State(c): State<Ctl>,
    Path((provider, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> CtlResult {
    let req: MutationRequest = parse_body(&body)?;
    let p = c.provider(&provider)?;
    let log = tokio::task::spawn_blocking(move || p.mutate(&id, req, "mutation"))
        .await
        .map_err(|e| ControlError::bad_request(format!("mutation failed: {e}")))??;
    ok(log)
}

#[derive(Deserialize)]
struct SinceQuery {
    since: Option<u64>,
}

async fn account_changes(
    State(c): State<Ctl>,
    Path((provider, id)): Path<(String, String)>,
    Query(q): Query<SinceQuery>,
) -> CtlResult {
    let changes = c.provider(&provider)?.changes(&id, q.since.unwrap_or(0))?;
    ok(json!({"count": changes.len(), "changes": changes}))
}

async fn generator_get(State(c): State<Ctl>, Path((provider, id)): Path<(String, String)>) -> CtlResult {
    let p = c.provider(&provider)?;
    p.account(&id)?;
    ok(json!({"running": c.state.generators.get(p.kind(), &id)}))
}

async fn generator_start(
    State(c): State<Ctl>,
    Path((provider, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> CtlResult {
    let spec: GeneratorSpec = parse_body(&body)?;
    if !(spec.per_second > 0.0 && spec.per_second <= 10_000.0) {
        return Err(ControlError::bad_request("per_second must be within (0, 10000]"));
    }
    if spec.creates + spec.updates + spec.deletes == 0 {
        return Err(ControlError::bad_request("at least one of creates/updates/deletes must be > 0"));
    }
    let p = c.provider(&provider)?;
    p.account(&id)?;
    let task = tokio::spawn(run_generator(p.clone(), id.clone(), spec.clone()));
    c.state.generators.insert(p.kind(), &id, spec.clone(), task);
    Ok((StatusCode::CREATED, Json(json!({"running": spec}))).into_response())
}

async fn run_generator(p: Arc<dyn Provider>, account: String, spec: GeneratorSpec) {
    let mut rng = crate::seed::rng_for(spec.seed, &["generator", p.kind().as_str(), &account]);
    let period = Duration::from_secs_f64(1.0 / spec.per_second);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let total = spec.creates + spec.updates + spec.deletes;
    loop {
        tick.tick().await;
        let roll = rng.random_range(0..total);
        let mut req = MutationRequest {
            seed: Some(rng.random()),
            objects: spec.objects.clone(),
            ..MutationRequest::default()
        };
        if roll < spec.creates {
            req.creates = 1;
        } else if roll < spec.creates + spec.updates {
            req.updates = 1;
        } else {
            req.deletes = 1;
        }
        if let Err(e) = p.mutate(&account, req, "generator") {
            tracing::warn!(error = %e, account, "change generator stopped");
            return;
        }
    }
}

async fn generator_stop(State(c): State<Ctl>, Path((provider, id)): Path<(String, String)>) -> CtlResult {
    let p = c.provider(&provider)?;
    let was = c.state.generators.stop(p.kind(), &id);
    ok(json!({"stopped": was}))
}

async fn record_get(
    State(c): State<Ctl>,
    Path((provider, id, object, record_id)): Path<(String, String, String, String)>,
) -> CtlResult {
    ok(c.provider(&provider)?.record(&id, &object, &record_id)?)
}

async fn record_patch(
    State(c): State<Ctl>,
    Path((provider, id, object, record_id)): Path<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> CtlResult {
    let patch: Value = parse_body(&body)?;
    ok(c.provider(&provider)?.edit_record(&id, &object, &record_id, patch)?)
}

async fn record_delete(
    State(c): State<Ctl>,
    Path((provider, id, object, record_id)): Path<(String, String, String, String)>,
) -> CtlResult {
    ok(c.provider(&provider)?.delete_record(&id, &object, &record_id)?)
}
