//! The token lifecycle: a valid credential for every call, refreshed proactively before expiry
//! and reactively after a 401, **single-flight and fenced** across every process of the fleet.
//!
//! 1. In a process, callers for one connection share one async mutex: while one refreshes,
//!    the others wait and then use its result.
//! 2. Across processes, a refresh runs inside a transaction holding the connection's row lock
//!    (`SELECT … FOR UPDATE`) and compares the `token_version` the caller saw. A caller that
//!    finds the version moved lost the race: it uses the new token and never sends the old
//!    refresh token (which a rotating provider such as Close has already revoked).
//! 3. The new tokens are stored (encrypted) and the version bumped in that same transaction,
//!    before any caller uses them.
//! 4. `invalid_grant` (or the provider's equivalent) marks the connection `needs_reauth` and
//!    counts `crm_fleet_token_refreshes_total{outcome="invalid_grant"}`; the job layer then parks
//!    the connection's lane instead of burning retries.
//!
//! 5. A cached credential is read again from its row at least every [`DEFAULT_REVALIDATE`], so
//!    a connection disabled or re-authorised elsewhere is seen by every process within it.
//! 6. A refresh after a 401 that the fresh token meets again (a 401 refreshing cannot fix: a
//!    wrong host, a permission the provider reports as 401) is not repeated by this process
//!    for that token for [`FUTILE_REFRESH_PAUSE`]: each job attempt would otherwise refresh
//!    once more, spending the provider's token quota (Zoho: 10 per 10 minutes).
//!
//! Known limit: if a process dies, or the answer is lost on the way, after the provider
//! rotated the refresh token but before the commit, the new refresh token is lost and the
//! connection needs re-authorisation. (A caller cancelled meanwhile does not lose it: the
//! refresh runs in a task of its own.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::AuthError;
use super::oauth::{self, GrantError};
use super::store::{AuthKind, ROW_COLUMNS, Row, Store, aad};
use crate::providers::{Auth, Credential, Provider};

/// Refresh this long before expiry (the default).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A cached credential is read again from PostgreSQL after this long.
pub const DEFAULT_REVALIDATE: Duration = Duration::from_secs(60);

/// After a refreshed token was refused too, no further refresh of it for this long.
pub const FUTILE_REFRESH_PAUSE: Duration = Duration::from_secs(600);

/// A credential for one call, with the version it came from (for the 401 fence).
#[derive(Clone)]
pub struct Granted {
    /// What to call with.
    pub auth: Auth,
    /// Token version.
    pub version: i64,
    /// Connection.
    pub connection: Uuid,
    /// Provider.
    pub provider: Provider,
    /// Whether a 401 may be fixed by refreshing.
    pub refreshable: bool,
}

#[derive(Clone)]
struct Cached {
    granted: Granted,
    expires_at: Option<chrono::DateTime<Utc>>,
    /// When the row was read.
    read_at: std::time::Instant,
    /// Until when a 401 on this version does not refresh again (a refresh did not help).
    futile_until: Option<std::time::Instant>,
}

/// One connection's cached credential behind its single-flight lock.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Hands out valid credentials; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct TokenManager {
    store: Store,
    http: reqwest::Client,
    margin: Duration,
    revalidate: Duration,
    slots: Arc<Mutex<HashMap<Uuid, Slot>>>,
    /// Refreshes in progress, which a stopping process waits for ([`Self::finish_refreshes`]).
    refreshes: tokio_util::task::TaskTracker,
}

fn credential(provider: Provider, kind: AuthKind, token: SecretString) -> Credential {
    match (provider, kind) {
        (Provider::Zoho, _) => Credential::ZohoOauth(token),
        (Provider::Pipedrive, AuthKind::ApiKey) => Credential::ApiTokenHeader(token),
        (Provider::Close, AuthKind::ApiKey) => Credential::BasicKey(token),
        _ => Credential::Bearer(token),
    }
}

fn count(provider: Provider, outcome: &'static str) {
    metrics::counter!("crm_fleet_token_refreshes_total", "provider" => provider.as_str(), "outcome" => outcome)
        .increment(1);
}

impl TokenManager {
    /// A manager over the connection store, refreshing through `http`.
    pub fn new(store: Store, http: reqwest::Client) -> Self {
        Self::with_margin(store, http, DEFAULT_REFRESH_MARGIN)
    }

    /// A manager with a given proactive-refresh margin.
    pub fn with_margin(store: Store, http: reqwest::Client, margin: Duration) -> Self {
        Self {
            store,
            http,
            margin,
            revalidate: DEFAULT_REVALIDATE,
            slots: Arc::default(),
            refreshes: tokio_util::task::TaskTracker::new(),
        }
    }

    /// The same manager, reading cached credentials again after `every` (default
    /// [`DEFAULT_REVALIDATE`]).
    pub fn revalidate_every(mut self, every: Duration) -> Self {
        self.revalidate = every;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn slot(&self, id: Uuid) -> Slot {
        self.slots.lock().entry(id).or_default().clone()
    }

    fn near_expiry(&self, expires_at: Option<chrono::DateTime<Utc>>) -> bool {
        let margin = chrono::Duration::from_std(self.margin).unwrap_or_else(|_| chrono::Duration::minutes(5));
        expires_at.is_some_and(|e| e - margin <= Utc::now())
    }

    fn granted(&self, row: &Row) -> Result<Cached, AuthError> {
        let conn = row.connection()?;
        let sealed = row
            .access_token
            .as_ref()
            .ok_or(AuthError::NeedsReauth { connection: row.id, reason: "no access token stored".into() })?;
        let token = self.store.open(&row.key_id, sealed, &aad(row.id, "access"))?;
        let api_base =
            row.api_base.parse().map_err(|e| AuthError::Config(format!("api_base {}: {e}", row.api_base)))?;
        Ok(Cached {
            granted: Granted {
                auth: Auth { credential: credential(conn.provider, conn.auth_kind, token), api_base },
                version: row.token_version,
                connection: row.id,
                provider: conn.provider,
                refreshable: conn.auth_kind == AuthKind::Oauth && row.refresh_token.is_some(),
            },
            expires_at: row.expires_at,
            read_at: std::time::Instant::now(),
            futile_until: None,
        })
    }

    /// A valid credential for `connection`, refreshing first when the token is within the
    /// margin of its expiry.
    pub async fn auth(&self, connection: Uuid) -> Result<Granted, AuthError> {
        let slot = self.slot(connection);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref()
            && !self.near_expiry(c.expires_at)
            && c.read_at.elapsed() < self.revalidate
        {
            return Ok(c.granted.clone());
        }
        let row = self.store.row(connection).await?.ok_or(AuthError::NotFound(connection))?;
        if row.status != "active" {
            *guard = None;
            return Err(AuthError::NeedsReauth {
                connection,
                reason: row.status_reason.clone().unwrap_or_else(|| row.status.clone()),
            });
        }
        let row = if row.auth_kind == "oauth" && self.near_expiry(row.expires_at) {
            self.refresh_detached(connection, row.token_version, false).await?
        } else {
            row
        };
        let mut cached = self.granted(&row)?;
        // A refresh found futile stays so for the same token.
        if let Some(c) = guard.as_ref()
            && c.granted.version == cached.granted.version
        {
            cached.futile_until = c.futile_until;
        }
        *guard = Some(cached.clone());
        Ok(cached.granted)
    }

    /// After a 401 on a credential of version `seen`: refresh once (unless someone already
    /// did) and return the new credential. A connection that cannot refresh is marked
    /// `needs_reauth`.
    pub async fn after_unauthorized(&self, connection: Uuid, seen: i64) -> Result<Granted, AuthError> {
        let slot = self.slot(connection);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref()
            && (c.granted.version != seen || c.futile_until.is_some_and(|u| u > std::time::Instant::now()))
        {
            return Ok(c.granted.clone());
        }
        let row = self.refresh_detached(connection, seen, true).await?;
        let cached = self.granted(&row)?;
        *guard = Some(cached.clone());
        Ok(cached.granted)
    }

    /// A token of version `version`, fresh from a refresh after a 401, was refused too: a 401
    /// on it does not refresh again for [`FUTILE_REFRESH_PAUSE`].
    pub async fn refresh_did_not_help(&self, connection: Uuid, version: i64) {
        let slot = self.slot(connection);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_mut()
            && c.granted.version == version
        {
            c.futile_until = Some(std::time::Instant::now() + FUTILE_REFRESH_PAUSE);
            tracing::warn!(message = "a freshly refreshed token was refused too; not refreshing it again for a while",
                %connection, pause_s = FUTILE_REFRESH_PAUSE.as_secs());
        }
    }

    /// Waits (at most `patience`) for the refreshes in progress to end: a stopping process
    /// calls it after its jobs stopped, or dropping the runtime would cut a refresh between
    /// the provider's answer and the commit.
    pub async fn finish_refreshes(&self, patience: Duration) {
        self.refreshes.close();
        if tokio::time::timeout(patience, self.refreshes.wait()).await.is_err() {
            tracing::warn!(message = "token refreshes still running at exit", count = self.refreshes.len());
        }
    }

    /// Forgets the cached credential of a connection (after re-authorisation elsewhere).
    pub fn invalidate(&self, connection: Uuid) {
        self.slots.lock().remove(&connection);
    }

    /// [`Self::refresh_locked`] in a task of its own. A caller cancelled mid-refresh (a job's
    /// future dropped when the shutdown grace ends) must not drop the refresh between the
    /// provider's answer and the commit: a rotating provider has then revoked the refresh token
    /// we hold, and the new one would be lost with the connection. The task runs to its end;
    /// the single-flight lock is the caller's and goes with it, the row lock fences the rest.
    async fn refresh_detached(&self, id: Uuid, seen: i64, force: bool) -> Result<Row, AuthError> {
        let me = self.clone();
        self.refreshes
            .spawn(async move { me.refresh_locked(id, seen, force).await })
            .await
            .map_err(|e| AuthError::Transient(format!("token refresh task ended abnormally: {e}")))?
    }

    /// The fenced refresh: under the row lock, refresh only if the version is still `seen`
    /// (and, unless `force`, the token is near expiry).
    async fn refresh_locked(&self, id: Uuid, seen: i64, force: bool) -> Result<Row, AuthError> {
        let mut tx = self.store.pool.begin().await?;
        let row = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM connections WHERE id = $1 FOR UPDATE"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AuthError::NotFound(id))?;
        let conn = row.connection()?;
        if row.status != "active" {
            tx.commit().await?;
            return Err(AuthError::NeedsReauth {
                connection: id,
                reason: row.status_reason.unwrap_or(row.status),
            });
        }
        if row.token_version != seen || (!force && !self.near_expiry(row.expires_at)) {
            // Another caller refreshed while we waited for the lock: use its token.
            tx.commit().await?;
            return Ok(row);
        }
        let Some(sealed_refresh) = row.refresh_token.as_ref().filter(|_| conn.auth_kind == AuthKind::Oauth)
        else {
            // An API key or static token that the provider rejects: nothing to refresh.
            let reason = format!("{} credential rejected by {}", conn.auth_kind.as_str(), conn.provider);
            mark(&mut tx, id, &reason).await?;
            tx.commit().await?;
            count(conn.provider, "invalid_grant");
            tracing::warn!(message = "connection needs re-authorisation", connection = %id, provider = %conn.provider, %reason);
            return Err(AuthError::NeedsReauth { connection: id, reason });
        };
        let refresh_token = self.store.open(&row.key_id, sealed_refresh, &aad(id, "refresh"))?;
        let app = self.store.app(conn.provider).await?;
        let token_url = row.token_url.clone().unwrap_or_else(|| app.token_url.clone());
        match oauth::refresh(&self.http, &app, &token_url, &refresh_token).await {
            Ok(grant) => {
                let keys = &self.store.keys;
                let access = keys.seal(grant.access_token.expose_secret().as_bytes(), &aad(id, "access"));
                // The refresh token kept when the provider sent no new one (Zoho never does;
                // HubSpot and Salesforce unless rotating) is sealed again with the current key:
                // the row has one key id for both, and after a key rotation the old sealing
                // under the new id could never be opened again.
                let kept = grant.refresh_token.as_ref().unwrap_or(&refresh_token);
                let refresh = keys.seal(kept.expose_secret().as_bytes(), &aad(id, "refresh"));
                let base = oauth::api_base(&app, &grant.fields).unwrap_or_else(|| row.api_base.clone());
                let row = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
                    "UPDATE connections SET access_token = $2, refresh_token = $3, key_id = $4, \
                       expires_at = $5, api_base = $6, token_version = token_version + 1, refreshed_at = now(), \
                       updated_at = now() WHERE id = $1 RETURNING {ROW_COLUMNS}"
                )))
                .bind(id)
                .bind(access)
                .bind(refresh)
                .bind(keys.current_id())
                .bind(grant.expires_at)
                .bind(base)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                count(conn.provider, "ok");
                tracing::info!(message = "token refreshed", connection = %id, provider = %conn.provider, version = row.token_version);
                Ok(row)
            }
            Err(GrantError::Rejected { code }) => {
                let reason =
                    format!("refresh rejected by {} ({code}); re-authorise the connection", conn.provider);
                mark(&mut tx, id, &reason).await?;
                tx.commit().await?;
                count(conn.provider, "invalid_grant");
                tracing::warn!(message = "connection needs re-authorisation", connection = %id, provider = %conn.provider, %code);
                Err(AuthError::InvalidGrant { connection: id, code })
            }
            Err(GrantError::Transient(msg)) => {
                tx.rollback().await?;
                count(conn.provider, "error");
                tracing::warn!(message = "token refresh failed", connection = %id, provider = %conn.provider, error = %msg);
                Err(AuthError::Transient(msg))
            }
            Err(GrantError::AppRefused(msg)) => {
                tx.rollback().await?;
                count(conn.provider, "error");
                tracing::error!(message = "token refresh failed", connection = %id, provider = %conn.provider, error = %msg);
                Err(AuthError::AppRefused(msg))
            }
            Err(GrantError::Config(msg)) => {
                tx.rollback().await?;
                count(conn.provider, "error");
                tracing::error!(message = "token refresh failed", connection = %id, provider = %conn.provider, error = %msg);
                Err(AuthError::Config(msg))
            }
        }
    }
}

async fn mark(tx: &mut sqlx::PgConnection, id: Uuid, reason: &str) -> Result<(), AuthError> {
    sqlx::query("UPDATE connections SET status = 'needs_reauth', status_reason = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(reason)
        .execute(tx)
        .await?;
    Ok(())
}
