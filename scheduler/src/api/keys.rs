//! API keys: `cf_<prefix>_<secret>`. Only the SHA-256 of the secret is stored (the secret is 32
//! random bytes, so a fast hash is enough); the prefix finds the row and names the key in logs.
//! Scopes: `enqueue` (actions, jobs, syncs) and `admin` (everything, including dead letters).
//! Every request checks its key against the table, so a revocation ([`revoke`], `crmctl
//! api-keys revoke`) holds from the next request on.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::error::ApiError;

/// A scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Enqueue actions and read jobs.
    Enqueue,
    /// Everything.
    Admin,
}

impl Scope {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue",
            Self::Admin => "admin",
        }
    }
}

/// The caller, once authenticated (inserted into request extensions).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Key prefix (safe to log).
    pub key_prefix: String,
    /// Key name.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<String>,
}

impl Caller {
    /// How audit records name this caller: `api-key:<name> (<prefix>)`.
    pub fn actor(&self) -> String {
        format!("api-key:{} ({})", self.name, self.key_prefix)
    }
}

/// Creates a key; returns (the full key to show once, its prefix).
pub async fn create(pool: &PgPool, name: &str, scopes: &[Scope]) -> Result<(String, String), sqlx::Error> {
    let prefix = hex::encode(rand::random::<[u8; 4]>());
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let hash = Sha256::digest(secret.as_bytes()).to_vec();
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query("INSERT INTO api_keys (name, prefix, secret_hash, scopes) VALUES ($1, $2, $3, $4)")
        .bind(name)
        .bind(&prefix)
        .bind(hash)
        .bind(&scopes)
        .execute(pool)
        .await?;
    Ok((format!("cf_{prefix}_{secret}"), prefix))
}

/// A key as listed: never its secret or hash.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    /// The prefix that names it (`cf_<prefix>_…`).
    pub prefix: String,
    /// Its name (the service that uses it).
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Last authenticated a request (to the minute).
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Revoked (`None`: in force).
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

const KEY_COLUMNS: &str = "prefix, name, scopes, created_at, last_used_at, revoked_at";

/// The keys, newest first; revoked ones too when `revoked`.
pub async fn list(pool: &PgPool, revoked: bool) -> Result<Vec<KeyInfo>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE $1 OR revoked_at IS NULL ORDER BY created_at DESC, prefix"
    )))
    .bind(revoked)
    .fetch_all(pool)
    .await
}

/// What revoking a key found.
#[derive(Debug, Clone)]
pub enum Revoked {
    /// Revoked now: every request with it is refused from now on (keys are checked against
    /// the database on every request).
    Now(KeyInfo),
    /// It was revoked before.
    Already(KeyInfo),
    /// No key has this prefix.
    Unknown,
}

/// Revokes the key named by its prefix, or by the whole key (`cf_<prefix>_<secret>`, as
/// found in a leak).
pub async fn revoke(pool: &PgPool, key_or_prefix: &str) -> Result<Revoked, sqlx::Error> {
    let prefix = prefix_of(key_or_prefix);
    let now: Option<KeyInfo> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL RETURNING {KEY_COLUMNS}"
    )))
    .bind(prefix)
    .fetch_optional(pool)
    .await?;
    if let Some(k) = now {
        return Ok(Revoked::Now(k));
    }
    let before: Option<KeyInfo> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE prefix = $1")))
            .bind(prefix)
            .fetch_optional(pool)
            .await?;
    Ok(before.map_or(Revoked::Unknown, Revoked::Already))
}

/// The prefix of `cf_<prefix>_<secret>`, or the text itself.
fn prefix_of(key_or_prefix: &str) -> &str {
    let t = key_or_prefix.trim();
    t.strip_prefix("cf_").and_then(|rest| rest.split('_').next()).unwrap_or(t)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(pool: &PgPool, auth: Option<&str>) -> Result<Caller, ApiError> {
    let unauthorized =
        |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", Some("Authorization"), m);
    let token = auth
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("send an API key as `Authorization: Bearer cf_…`"))?;
    let mut parts = token.trim().splitn(3, '_');
    let (Some("cf"), Some(prefix), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(unauthorized("malformed API key"));
    };
    let row: Option<(String, Vec<u8>, Vec<String>)> = sqlx::query_as(
        "SELECT name, secret_hash, scopes FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await?;
    let Some((name, hash, scopes)) = row else { return Err(unauthorized("unknown or revoked API key")) };
    if !constant_time_eq(&Sha256::digest(secret.as_bytes()), &hash) {
        return Err(unauthorized("unknown or revoked API key"));
    }
    let _ = sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE prefix = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')")
        .bind(prefix)
        .execute(pool)
        .await;
    Ok(Caller { key_prefix: prefix.to_owned(), name, scopes })
}

/// Middleware requiring a scope (`admin` satisfies any).
pub async fn require(State((pool, scope)): State<(PgPool, Scope)>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let caller = match authenticate(&pool, header.as_deref()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if !caller.scopes.iter().any(|s| s == scope.as_str() || s == "admin") {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            Some("Authorization"),
            format!("this key lacks the `{}` scope", scope.as_str()),
        )
        .into_response();
    }
    tracing::debug!(message = "authenticated", key = %caller.key_prefix);
    req.extensions_mut().insert(caller);
    next.run(req).await
}
