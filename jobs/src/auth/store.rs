//! Connections and OAuth apps in PostgreSQL, with tokens and secrets encrypted by the
//! [`Keyring`]. This module only stores and loads; refreshing is [`crate::auth::tokens`].
//!
//! Invariant: plaintext tokens never reach the database or a `Debug` output; a
//! [`Connection`] carries metadata only.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use super::AuthError;
use super::keys::Keyring;
use super::oauth::{Grant, OAuthApp, account_id, api_base};
use crate::providers::Provider;

/// How a connection authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// OAuth access + refresh tokens.
    Oauth,
    /// A provider API key (Close, Pipedrive).
    ApiKey,
    /// A long-lived static token (HubSpot private apps).
    StaticToken,
}

impl AuthKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oauth => "oauth",
            Self::ApiKey => "api_key",
            Self::StaticToken => "static_token",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "api_key" => Self::ApiKey,
            "static_token" => Self::StaticToken,
            _ => Self::Oauth,
        }
    }
}

/// A connection's metadata (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Connection {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// Provider.
    pub provider: Provider,
    /// Auth kind.
    pub auth_kind: AuthKind,
    /// Provider account (portal, org, company).
    pub account_id: String,
    /// API host for this account.
    pub api_base: String,
    /// Token version (the refresh fence).
    pub token_version: i64,
    /// Access token expiry, where known.
    pub expires_at: Option<DateTime<Utc>>,
    /// `active`, `needs_reauth` or `disabled`.
    pub status: String,
    /// Why the status is what it is.
    pub status_reason: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    pub id: Uuid,
    pub tenant_id: String,
    pub provider: String,
    pub auth_kind: String,
    pub account_id: String,
    pub api_base: String,
    pub token_url: Option<String>,
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub key_id: String,
    pub token_version: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: String,
    pub status_reason: Option<String>,
}

pub(crate) const ROW_COLUMNS: &str = "id, tenant_id, provider, auth_kind, account_id, api_base, token_url, \
    access_token, refresh_token, key_id, token_version, expires_at, status, status_reason";

impl Row {
    pub(crate) fn connection(&self) -> Result<Connection, AuthError> {
        Ok(Connection {
            id: self.id,
            tenant_id: self.tenant_id.clone(),
            provider: self.provider.parse().map_err(AuthError::Config)?,
            auth_kind: AuthKind::parse(&self.auth_kind),
            account_id: self.account_id.clone(),
            api_base: self.api_base.clone(),
            token_version: self.token_version,
            expires_at: self.expires_at,
            status: self.status.clone(),
            status_reason: self.status_reason.clone(),
        })
    }
}

pub(crate) fn aad(id: Uuid, column: &str) -> String {
    format!("connection:{id}:{column}")
}

/// The connection and app store.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: PgPool,
    pub(crate) keys: Arc<Keyring>,
}

impl Store {
    /// A store over `pool` encrypting with `keys`.
    pub fn new(pool: PgPool, keys: Arc<Keyring>) -> Self {
        Self { pool, keys }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The keyring.
    pub fn keys(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// Creates the tenant if it does not exist.
    pub async fn ensure_tenant(&self, id: &str, name: &str) -> Result<(), AuthError> {
        sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the tenant exists.
    pub async fn tenant_exists(&self, id: &str) -> Result<bool, AuthError> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Saves (replaces) an OAuth app registration.
    pub async fn save_app(&self, app: &OAuthApp) -> Result<(), AuthError> {
        let secret = self
            .keys
            .seal(app.client_secret.expose_secret().as_bytes(), &format!("app:{}:secret", app.provider));
        sqlx::query(
            "INSERT INTO oauth_apps (provider, client_id, client_secret, key_id, authorize_url, token_url, revoke_url, \
               redirect_uri, scopes, api_base, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10, now()) \
             ON CONFLICT (provider) DO UPDATE SET client_id = $2, client_secret = $3, key_id = $4, authorize_url = $5, \
               token_url = $6, revoke_url = $7, redirect_uri = $8, scopes = $9, api_base = $10, updated_at = now()",
        )
        .bind(app.provider.as_str())
        .bind(&app.client_id)
        .bind(secret)
        .bind(self.keys.current_id())
        .bind(&app.authorize_url)
        .bind(&app.token_url)
        .bind(&app.revoke_url)
        .bind(&app.redirect_uri)
        .bind(&app.scopes)
        .bind(&app.api_base)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The app registered for `provider`.
    pub async fn app(&self, provider: Provider) -> Result<OAuthApp, AuthError> {
        #[allow(clippy::type_complexity)]
        let row: Option<(String, Vec<u8>, String, String, String, Option<String>, String, String, Option<String>)> =
            sqlx::query_as(
                "SELECT client_id, client_secret, key_id, authorize_url, token_url, revoke_url, redirect_uri, scopes, api_base \
                 FROM oauth_apps WHERE provider = $1",
            )
            .bind(provider.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let (client_id, secret, key_id, authorize_url, token_url, revoke_url, redirect_uri, scopes, api_base) =
            row.ok_or_else(|| AuthError::Config(format!("no OAuth app is registered for {provider}")))?;
        let client_secret = self.keys.open(&key_id, &secret, &format!("app:{provider}:secret"))?;
        Ok(OAuthApp {
            provider,
            client_id,
            client_secret,
            authorize_url,
            token_url,
            revoke_url,
            redirect_uri,
            scopes,
            api_base,
        })
    }

    /// Stores an OAuth connection from a grant (a new connection, or re-authorisation of the
    /// same tenant's account: tokens replaced, status active, version bumped).
    pub async fn save_grant(
        &self,
        tenant_id: &str,
        app: &OAuthApp,
        grant: &Grant,
        token_url: Option<&str>,
    ) -> Result<Connection, AuthError> {
        self.save_grant_for(tenant_id, app, grant, token_url, None).await
    }

    /// As [`Store::save_grant`], naming the provider account when the token response does not
    /// (a Zoho org is only known from its API).
    pub async fn save_grant_for(
        &self,
        tenant_id: &str,
        app: &OAuthApp,
        grant: &Grant,
        token_url: Option<&str>,
        account: Option<&str>,
    ) -> Result<Connection, AuthError> {
        let provider = app.provider;
        let account = account
            .map(str::to_owned)
            .or_else(|| account_id(provider, &grant.fields))
            .unwrap_or_else(|| "default".to_owned());
        let base = api_base(app, &grant.fields)
            .ok_or_else(|| AuthError::Config(format!("{provider}: the token response named no API host")))?;
        let mut tx = self.pool.begin().await?;
        let existing: Option<(Uuid, Option<Vec<u8>>, String)> = sqlx::query_as(
            "SELECT id, refresh_token, key_id FROM connections \
             WHERE tenant_id = $1 AND provider = $2 AND account_id = $3 FOR UPDATE",
        )
        .bind(tenant_id)
        .bind(provider.as_str())
        .bind(&account)
        .fetch_optional(&mut *tx)
        .await?;
        let id = existing.as_ref().map_or_else(Uuid::new_v4, |e| e.0);
        let access = self.keys.seal(grant.access_token.expose_secret().as_bytes(), &aad(id, "access"));
        // A re-authorisation that brought no refresh token keeps the stored one, sealed again
        // with the current key (the row's one key id must fit both tokens).
        // One that cannot be read (sealed with a key no longer configured) is dropped rather
        // than failing the re-authorisation that repairs the connection.
        let kept = match (&grant.refresh_token, &existing) {
            (Some(_), _) | (None, None) | (None, Some((_, None, _))) => None,
            (None, Some((_, Some(sealed), key_id))) => {
                match self.keys.open(key_id, sealed, &aad(id, "refresh")) {
                    Ok(token) => Some(token),
                    Err(error) => {
                        tracing::warn!(message = "stored refresh token unreadable; re-authorised without one",
                        connection = %id, %error);
                        None
                    }
                }
            }
        };
        let refresh = grant
            .refresh_token
            .as_ref()
            .or(kept.as_ref())
            .map(|r| self.keys.seal(r.expose_secret().as_bytes(), &aad(id, "refresh")));
        if existing.is_some() {
            sqlx::query(
                "UPDATE connections SET access_token = $2, refresh_token = $3, key_id = $4, \
                   expires_at = $5, api_base = $6, token_url = $7, scopes = $8, token_version = token_version + 1, \
                   status = 'active', status_reason = NULL, refreshed_at = now(), updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .bind(access)
            .bind(refresh)
            .bind(self.keys.current_id())
            .bind(grant.expires_at)
            .bind(&base)
            .bind(token_url)
            .bind(&grant.scopes)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO connections (id, tenant_id, provider, auth_kind, account_id, api_base, token_url, access_token, \
                   refresh_token, key_id, expires_at, scopes, refreshed_at) \
                 VALUES ($1,$2,$3,'oauth',$4,$5,$6,$7,$8,$9,$10,$11, now())",
            )
            .bind(id)
            .bind(tenant_id)
            .bind(provider.as_str())
            .bind(&account)
            .bind(&base)
            .bind(token_url)
            .bind(access)
            .bind(refresh)
            .bind(self.keys.current_id())
            .bind(grant.expires_at)
            .bind(&grant.scopes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.get(id).await?.ok_or(AuthError::NotFound(id))
    }

    /// Stores a connection authenticated by an API key or a static token.
    pub async fn save_key(
        &self,
        tenant_id: &str,
        provider: Provider,
        kind: AuthKind,
        secret: &SecretString,
        api_base: &str,
        account: &str,
    ) -> Result<Connection, AuthError> {
        let id = Uuid::new_v4();
        let sealed = self.keys.seal(secret.expose_secret().as_bytes(), &aad(id, "access"));
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO connections (id, tenant_id, provider, auth_kind, account_id, api_base, access_token, key_id) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8) \
             ON CONFLICT (tenant_id, provider, account_id) DO UPDATE SET auth_kind = $4, api_base = $6, \
               access_token = NULL, refresh_token = NULL, status = 'needs_reauth', updated_at = now() RETURNING id",
        )
        .bind(id)
        .bind(tenant_id)
        .bind(provider.as_str())
        .bind(kind.as_str())
        .bind(account)
        .bind(api_base)
        .bind(&sealed)
        .bind(self.keys.current_id())
        .fetch_one(&self.pool)
        .await?;
        // On conflict the row kept its own id: seal for that id and activate.
        let sealed = self.keys.seal(secret.expose_secret().as_bytes(), &aad(id, "access"));
        sqlx::query(
            "UPDATE connections SET access_token = $2, key_id = $3, status = 'active', status_reason = NULL, \
               token_version = token_version + 1 WHERE id = $1",
        )
        .bind(id)
        .bind(sealed)
        .bind(self.keys.current_id())
        .execute(&self.pool)
        .await?;
        self.get(id).await?.ok_or(AuthError::NotFound(id))
    }

    pub(crate) async fn row(&self, id: Uuid) -> Result<Option<Row>, AuthError> {
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM connections WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// One connection.
    pub async fn get(&self, id: Uuid) -> Result<Option<Connection>, AuthError> {
        self.row(id).await?.map(|r| r.connection()).transpose()
    }

    /// Connections, optionally of one tenant.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<Connection>, AuthError> {
        let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM connections WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY tenant_id, provider"
        )))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Row::connection).collect()
    }

    /// Sets a connection's status.
    pub async fn set_status(&self, id: Uuid, status: &str, reason: Option<&str>) -> Result<(), AuthError> {
        sqlx::query(
            "UPDATE connections SET status = $2, status_reason = $3, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Re-encrypts every stored secret with the current key; returns how many rows changed.
    /// Rows already under the current key are left alone, so it can be re-run safely.
    pub async fn rotate_keys(&self) -> Result<u64, AuthError> {
        let mut changed = 0;
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM connections WHERE key_id <> $1 FOR UPDATE"
        )))
        .bind(self.keys.current_id())
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
            let reseal = |col: &str, v: &Option<Vec<u8>>| -> Result<Option<Vec<u8>>, AuthError> {
                v.as_ref()
                    .map(|b| {
                        let plain = self.keys.open(&r.key_id, b, &aad(r.id, col))?;
                        Ok(self.keys.seal(plain.expose_secret().as_bytes(), &aad(r.id, col)))
                    })
                    .transpose()
            };
            let access = reseal("access", &r.access_token)?;
            let refresh = reseal("refresh", &r.refresh_token)?;
            sqlx::query(
                "UPDATE connections SET access_token = $2, refresh_token = $3, key_id = $4 WHERE id = $1",
            )
            .bind(r.id)
            .bind(access)
            .bind(refresh)
            .bind(self.keys.current_id())
            .execute(&mut *tx)
            .await?;
            changed += 1;
        }
        let apps: Vec<(String, Vec<u8>, String)> = sqlx::query_as(
            "SELECT provider, client_secret, key_id FROM oauth_apps WHERE key_id <> $1 FOR UPDATE",
        )
        .bind(self.keys.current_id())
        .fetch_all(&mut *tx)
        .await?;
        for (provider, secret, key_id) in apps {
            let a = format!("app:{provider}:secret");
            let plain = self.keys.open(&key_id, &secret, &a)?;
            sqlx::query("UPDATE oauth_apps SET client_secret = $2, key_id = $3 WHERE provider = $1")
                .bind(&provider)
                .bind(self.keys.seal(plain.expose_secret().as_bytes(), &a))
                .bind(self.keys.current_id())
                .execute(&mut *tx)
                .await?;
            changed += 1;
        }
        tx.commit().await?;
        Ok(changed)
    }

    pub(crate) fn open(&self, key_id: &str, sealed: &[u8], aad: &str) -> Result<SecretString, AuthError> {
        Ok(self.keys.open(key_id, sealed, aad)?)
    }
}
