//! Connections and their credentials: encrypted storage ([`keys`], [`store`]), OAuth grants
//! through the `oauth2` crate ([`oauth`]), the single-flight fenced refresh ([`tokens`]), the
//! connect flow ([`connect`]), and [`call`], which runs a provider call with a valid credential
//! and one refresh-and-retry on a 401.
//!
//! Invariants: no type holding a token derives `Debug`; tokens are logged nowhere; a refresh
//! token is never sent twice.

pub mod call;
pub mod connect;
pub mod keys;
pub mod oauth;
pub mod store;
pub mod tokens;

use uuid::Uuid;

pub use call::call;
pub use keys::{KeyError, Keyring};
pub use oauth::OAuthApp;
pub use store::{AuthKind, Connection, Store};
pub use tokens::{Granted, TokenManager};

/// Why a credential could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The connection must be re-authorised by its user (refresh rejected, key revoked,
    /// status `needs_reauth` or `disabled`).
    #[error("connection {connection} needs re-authorisation: {reason}")]
    NeedsReauth {
        /// Connection.
        connection: Uuid,
        /// Why.
        reason: String,
    },
    /// The refresh token was just rejected; the connection is now `needs_reauth`.
    #[error("connection {connection}: refresh token rejected ({code})")]
    InvalidGrant {
        /// Connection.
        connection: Uuid,
        /// Provider code.
        code: String,
    },
    /// No such connection.
    #[error("no connection {0}")]
    NotFound(Uuid),
    /// The token endpoint or database is briefly unavailable.
    #[error("token refresh failed, try again: {0}")]
    Transient(String),
    /// Misconfiguration (no OAuth app for the provider, bad URL).
    #[error("auth configuration: {0}")]
    Config(String),
    /// The provider refuses the OAuth app's credentials: no grant of the provider works until
    /// they are fixed (`crmctl apps set`); the connections themselves are fine.
    #[error("oauth app refused: {0}")]
    AppRefused(String),
    /// Storage.
    #[error("database: {0}")]
    Storage(#[from] sqlx::Error),
    /// Decryption.
    #[error("token decryption: {0}")]
    Key(#[from] KeyError),
}

impl AuthError {
    /// Whether the connection is parked until its user re-authorises.
    pub fn needs_reauth(&self) -> bool {
        matches!(self, Self::NeedsReauth { .. } | Self::InvalidGrant { .. })
    }
}
