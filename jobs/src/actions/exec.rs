//! Running an action exactly once at the provider, as far as the provider allows.
//!
//! 1. An action already succeeded is done (a replayed or duplicated job does nothing); one
//!    that failed for good is too, until a replay sets it back to queued.
//! 2. A create whose last attempt recorded an intent but no result is **outcome-unknown**: the
//!    object may exist. Reconcile first — find it by the action's marker (the provider's unique
//!    property, external id, or a search, per client) — and adopt it if found.
//! 3. Record the intent (committed), call the provider with the action id as marker, record the
//!    result. A conflict that names the existing object (HubSpot's duplicate email, a duplicate
//!    marker) is adopted as the result; an outcome-unknown error leaves the intent in place so
//!    the next attempt reconciles.
//!
//! 4. An update of a contact's email or names is recorded as a local pending change
//!    ([`crate::sync::store::mark_pending`]) before the success, for the next sync to confirm.
//!
//! An attempt that finds an earlier one's intent with nothing recorded after it waits until
//! that request must have ended ([`IN_FLIGHT_BOUND`]) before reconciling: the earlier worker
//! may be stalled rather than gone. A failure the provider refused clears the intent (nothing
//! was created), so a throttled create is not reconciled hours later. A run reads the action
//! `FOR SHARE`, waiting out a replay that is setting it back to `queued`, and never turns a
//! recorded success into a failure.
//!
//! Residual risk, per provider, is documented in `docs/ARCHITECTURE.md` (actions).

use std::time::Duration;

use crm_queue::{FailureKind, JobError};
use serde_json::json;
use uuid::Uuid;

use super::model::Action;
use super::store;
use crate::auth::call::CallError;
use crate::enqueue::Target;
use crate::ops::JobContext;
use crate::providers::{ActionObject, CrmClient, CrmRecord, ExternalRef, ProviderError, Reply};

fn db(e: sqlx::Error) -> JobError {
    JobError::transient("database", format!("database: {e}"))
}

fn object_of(a: &Action) -> Option<ActionObject> {
    match a {
        Action::CreateTask(_) => Some(ActionObject::Task),
        Action::LogCall(_) => Some(ActionObject::Call),
        Action::CreateNote(_) => Some(ActionObject::Note),
        Action::CreateContact(_) => Some(ActionObject::Contact),
        _ => None,
    }
}

fn with_marker(a: &Action, marker: &str) -> Action {
    let mut a = a.clone();
    match &mut a {
        Action::CreateTask(t) => t.marker = marker.to_owned(),
        Action::LogCall(c) => c.marker = marker.to_owned(),
        Action::CreateNote(n) => n.marker = marker.to_owned(),
        Action::CreateContact(c) => c.marker = marker.to_owned(),
        _ => {}
    }
    a
}

/// The outcome of one provider call, normalised.
enum Outcome {
    Ref(ExternalRef),
    Found(Option<Box<CrmRecord>>),
}

async fn perform(
    client: &dyn CrmClient,
    auth: &crate::providers::Auth,
    a: &Action,
) -> Result<Reply<Outcome>, ProviderError> {
    Ok(match a {
        Action::CreateTask(t) => client.create_task(auth, t).await?.map(Outcome::Ref),
        Action::UpdateDeal(u) => client.update_deal(auth, u).await?.map(Outcome::Ref),
        Action::LogCall(c) => client.log_call(auth, c).await?.map(Outcome::Ref),
        Action::CreateContact(c) => client.create_contact(auth, c).await?.map(Outcome::Ref),
        Action::UpdateContact(u) => {
            client.update_contact(auth, &u.contact_id, &u.fields).await?.map(Outcome::Ref)
        }
        Action::CreateNote(n) => client.create_note(auth, n).await?.map(Outcome::Ref),
        Action::SearchContactByEmail(s) => {
            client.search_contact_by_email(auth, &s.email).await?.map(|r| Outcome::Found(r.map(Box::new)))
        }
    })
}

/// Runs action `id` (attempt `attempt` of `max`).
pub async fn run(ctx: &JobContext, id: Uuid, attempt: u32, max: u32) -> Result<(), JobError> {
    let row = store::get_for_run(&ctx.pool, id)
        .await
        .map_err(db)?
        .ok_or_else(|| JobError::permanent("not_found", format!("action {id} does not exist")))?;
    if row.state == "succeeded" {
        return Ok(());
    }
    if row.state == "failed" {
        // Ended for good (its last attempt, or its job dead-lettered); only a replay, which sets
        // it back to queued first, runs it again. A job that still comes does nothing if a dead
        // letter waits to be replayed (a request resent in the instant its job died). If none
        // does, the worker that recorded the failure stopped before dead-lettering its job (this
        // is that job, reaped): dead-letter it now, or the action could never be replayed.
        if store::dead_letters_of(&ctx.pool, id).await.map_err(db)? == Some(true) {
            tracing::info!(message = "action already failed; this job does nothing", action = %id);
            return Ok(());
        }
        return Err(JobError::permanent(
            row.last_error_class.clone().unwrap_or_else(|| "failed".to_owned()),
            format!(
                "the action had failed ({}) but its job was not dead-lettered; dead-lettering it now",
                row.last_error.as_deref().unwrap_or("no error recorded")
            ),
        ));
    }
    let target =
        crate::enqueue::target(&ctx.pool, row.connection_id).await.map_err(db)?.ok_or_else(|| {
            JobError::permanent("not_found", format!("connection {} no longer exists", row.connection_id))
        })?;
    let action: Action = serde_json::from_value(json!({ "action": row.action, "params": row.params }))
        .map_err(|e| JobError::permanent("invalid_action", format!("stored action cannot be read: {e}")))?;
    let client = ctx.clients.get(target.provider);
    let marker = id.to_string();

    // A throttle seen by any worker since this job was admitted paused the account (or the
    // breaker opened): wait it out instead of sending into it. Nothing is recorded and no
    // attempt is spent. (The pause budget has no limit of its own: this takes nothing.)
    let account = crate::enqueue::budget::account_pause(target.provider, &target.account);
    let breaker = crate::enqueue::budget::breaker(target.provider);
    match ctx.queue.take_token_unless_paused(&account, &[&breaker]).await {
        // Back to the head of its lane, which sleeps on the pause (and wakes when it is lifted).
        Ok(crm_queue::InJobToken::Paused(_)) => {
            return Err(crate::enqueue::back_to_lane(
                crate::enqueue::LanePause::Paused,
                "provider account or provider paused since this job was admitted",
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(JobError::transient("queue", e.to_string())),
    }

    if action.creates()
        && let Some(intent_at) = row.intent_at
        && row.external_id.is_none()
    {
        // An earlier attempt that recorded its intent and nothing after may still be sending
        // (its worker stalled or cut off from the queue, so its lease went to this one): a
        // lookup now could miss the object it is about to create, and this attempt would
        // create a second. Wait until that request must have ended, spending no attempt.
        if let Some(left) = store::in_flight_for(&ctx.pool, id, IN_FLIGHT_BOUND).await.map_err(db)? {
            tracing::info!(message = "an earlier attempt of this action may still be in flight; waiting before reconciling",
                action = %id, wait_ms = left.as_millis() as u64);
            return Err(JobError::defer(
                left,
                "in_flight",
                "an earlier attempt's request may still be in flight; reconciling once it must have ended",
            ));
        }
        // Back to the last intent: an earlier one was followed by a conclusive reconciliation
        // (it recorded the next intent only after finding nothing), and the lookups that
        // scan are bounded by age (a replay days later must not scan back to the creation).
        let (found, age) = reconcile(ctx, &target, &action, &marker, intent_at).await?;
        if let Some(found) = found {
            tracing::info!(message = "outcome-unknown action reconciled: adopting the object created earlier",
                action = %id, external_id = %found.id);
            return adopt(ctx, id, &found.id, true, true).await;
        }
        // Not found by a lookup whose index lags behind writes (Pipedrive's person search):
        // not conclusive for an object younger than the lag. Look again once it is older.
        let lag = object_of(&action).map_or(Duration::ZERO, |k| client.marker_lookup_lag(k));
        if age < lag {
            return Err(JobError::defer(
                lag - age,
                "reconcile_settling",
                "the provider's search may not show an object created this recently; looking again shortly",
            ));
        }
    }

    // Taken before the intent is written (its stamp is the statement's start): a slow write
    // must not give the requests more time than the bound assumes.
    let deadline = std::time::Instant::now() + SEND_DEADLINE;
    if !store::intent(&ctx.pool, id).await.map_err(db)? {
        tracing::info!(message = "action ended meanwhile (another run of it); nothing sent", action = %id);
        return Ok(());
    }
    let to_send = with_marker(&action, &marker);
    // No request of this attempt starts after its send deadline (a token refresh, a wait for
    // the connection's row lock or a stall may come first): with the client's timeout, that
    // bounds how long after the intent a request can be in flight (`IN_FLIGHT_BOUND`).
    let missed = std::sync::atomic::AtomicBool::new(false);
    let result = crate::auth::call(&ctx.tokens, target.connection, |auth| {
        let to_send = to_send.clone();
        let missed = &missed;
        async move {
            if std::time::Instant::now() >= deadline {
                missed.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(ProviderError::Transient {
                    status: None,
                    retry_after: None,
                    message: "the attempt's send deadline passed before its request could start".into(),
                });
            }
            perform(client, &auth, &to_send).await
        }
    })
    .await;
    if missed.load(std::sync::atomic::Ordering::Relaxed) {
        // Not the provider's failure (no breaker count): this attempt sent nothing that could
        // have created the object (a first request that got a 401 created nothing either).
        let decision = JobError::transient(
            "send_deadline",
            "the attempt's send deadline passed before its request could start (a slow token refresh?)",
        );
        let last = attempt >= max;
        return Err(failed(ctx, id, decision, last, true).await);
    }
    match result {
        Ok(reply) => {
            crate::limits::observe(ctx, &target, reply.quota.as_ref()).await;
            let (external, value) = match reply.value {
                Outcome::Ref(r) => (Some(r.id.clone()), json!({ "external_id": r.id, "created": r.created })),
                Outcome::Found(rec) => (
                    rec.as_ref().map(|r| r.external_id.clone()),
                    json!({ "found": rec.is_some(), "contact": rec.map(|r| json!({
                        "external_id": r.external_id, "email": r.email, "name": r.name, "phone": r.phone,
                    })) }),
                ),
            };
            // Before the success is recorded: a crash in between retries the (idempotent)
            // update, which marks again.
            mark_pending(ctx, &target, &action).await?;
            store::succeed(&ctx.pool, id, external.as_deref(), &value, false).await.map_err(db)?;
            Ok(())
        }
        Err(CallError::Provider(ProviderError::Conflict { existing_id: Some(existing), .. }))
            if action.creates() =>
        {
            // The object exists already: our own earlier create (duplicate marker) or, for a
            // contact, the same person (duplicate email). Either way the action's goal holds.
            adopt(ctx, id, &existing, false, false).await
        }
        Err(CallError::Provider(ProviderError::Conflict { existing_id: None, .. })) if action.creates() => {
            match reconcile(ctx, &target, &action, &marker, row.created_at).await?.0 {
                Some(found) => adopt(ctx, id, &found.id, false, true).await,
                None => Err(failed(
                    ctx,
                    id,
                    JobError::permanent("conflict", "the provider reports a duplicate it does not name"),
                    true,
                    false,
                )
                .await),
            }
        }
        Err(e) => {
            let decision = crate::limits::on_error(ctx, &target, &e).await;
            let last = matches!(decision.kind, FailureKind::Permanent)
                || (attempt >= max
                    && matches!(decision.kind, FailureKind::Transient | FailureKind::RetryAfter(_)));
            // A refusal created nothing, and an intent this run found was reconciled above
            // (conclusively: a lookup that lags waited first), so the intent goes.
            Err(failed(ctx, id, decision, last, refused(&e)).await)
        }
    }
}

/// No request of an attempt starts later than this after its intent was recorded.
pub const SEND_DEADLINE: Duration = Duration::from_secs(25);

/// The longest an attempt's request can be in flight after its intent is recorded: its last
/// request starts before [`SEND_DEADLINE`] and takes at most the provider client's timeout
/// (twice: Close's first contact create per credential reads its custom fields first), and a
/// margin.
pub const IN_FLIGHT_BOUND: Duration =
    Duration::from_secs(SEND_DEADLINE.as_secs() + 2 * crate::providers::http::DEFAULT_TIMEOUT.as_secs() + 5);

/// The request of this attempt created nothing: it was never sent (no credential) or the
/// provider refused it (throttled, unauthorised, invalid). A 5xx, a timeout or an unreadable
/// answer may have created the object, so those keep the intent.
fn refused(e: &CallError) -> bool {
    match e {
        CallError::Auth(_) => true,
        CallError::Provider(p) => matches!(
            p,
            ProviderError::Throttled { .. }
                | ProviderError::Unauthorized { .. }
                | ProviderError::InvalidGrant { .. }
                | ProviderError::Forbidden { .. }
                | ProviderError::Rejected { .. }
                | ProviderError::NotFound { .. }
        ),
    }
}

/// An update of a contact's critical fields (email, names) is a local pending change until a
/// sync sees the CRM with it: the local record shows it at once, and a sync that finds the
/// CRM changed since by someone else records a conflict instead of overwriting it.
async fn mark_pending(ctx: &JobContext, target: &Target, action: &Action) -> Result<(), JobError> {
    let Action::UpdateContact(u) = action else { return Ok(()) };
    let changed: serde_json::Map<String, serde_json::Value> = [
        ("email", &u.fields.email),
        ("first_name", &u.fields.first_name),
        ("last_name", &u.fields.last_name),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), json!(v))))
    .collect();
    if !changed.is_empty() {
        let synced = crate::sync::store::mark_pending(
            &ctx.pool,
            &target.tenant,
            target.provider.as_str(),
            crate::providers::ObjectKind::Contact,
            &u.contact_id,
            &changed,
        )
        .await
        .map_err(db)?;
        if !synced {
            // Not synced yet (or known by another id form): its first sync brings the CRM's values.
            tracing::debug!(message = "updated contact not in the local store; nothing marked pending",
                contact = %u.contact_id, connection = %target.connection);
        }
    }
    Ok(())
}

/// Records as the action's result an object that exists already at the provider: `created`
/// by an earlier attempt of it (or not: a duplicate it named), `reconciled` when a lookup
/// found it.
async fn adopt(
    ctx: &JobContext,
    id: Uuid,
    external_id: &str,
    created: bool,
    reconciled: bool,
) -> Result<(), JobError> {
    store::succeed(
        &ctx.pool,
        id,
        Some(external_id),
        &json!({ "external_id": external_id, "created": created }),
        reconciled,
    )
    .await
    .map_err(db)
}

async fn failed(ctx: &JobContext, id: Uuid, decision: JobError, last: bool, refused: bool) -> JobError {
    if let Err(e) = store::fail(&ctx.pool, id, &decision.class, &decision.message, last, refused).await {
        tracing::warn!(message = "could not record an action failure", action = %id, %e);
    }
    decision
}

/// Looks for the object an earlier attempt may have created, and says how long ago `since` was.
/// None can be older than `since` (the action's creation or its last intent, on our database's
/// clock, which also gives "now"); the provider is told that age, a duration, never a time to
/// compare with its own clock.
async fn reconcile(
    ctx: &JobContext,
    target: &Target,
    action: &Action,
    marker: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<(Option<ExternalRef>, Duration), JobError> {
    let Some(kind) = object_of(action) else { return Ok((None, Duration::MAX)) };
    let client = ctx.clients.get(target.provider);
    // The age on the clock that stamped `since` (a worker's clock may be off).
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&ctx.pool)
        .await
        .map_err(|e| JobError::transient("database", e.to_string()))?;
    let age = (now - since).to_std().unwrap_or_default();
    let found = crate::auth::call(&ctx.tokens, target.connection, |auth| async move {
        client.find_by_marker_within(&auth, kind, marker, age).await
    })
    .await;
    match found {
        Ok(reply) => Ok((reply.value, age)),
        // The lookup could not tell whether the object exists (a scan that could not reach back
        // to the action's creation): neither create again nor retry the same scan; an operator
        // decides from the dead letter. Not a provider failure, so the breaker is not told.
        Err(CallError::Provider(ProviderError::OutcomeUnknown { message })) => Err(JobError::permanent(
            "reconcile_inconclusive",
            format!("could not tell whether an earlier attempt created the object: {message}"),
        )),
        Err(e) => {
            let decision = crate::limits::on_error(ctx, target, &e).await;
            let decision = if matches!(decision.kind, FailureKind::Permanent) {
                // A reconciliation lookup that is refused must not become a blind re-create.
                JobError::retry_after(Duration::from_secs(60), "reconcile_failed", decision.message)
            } else {
                decision
            };
            Err(decision)
        }
    }
}
