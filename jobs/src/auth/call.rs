//! One provider call with a valid credential: get the credential, call, and on a 401 refresh
//! once (fenced by the token version the call used) and call again. Salesforce gives no expiry,
//! so this is its refresh trigger; for the others it covers tokens revoked or expired early. A
//! fresh token refused too is reported to the manager, which then stops refreshing it on 401s
//! for a while (see [`super::tokens`]).

use std::future::Future;

use uuid::Uuid;

use super::{AuthError, TokenManager};
use crate::providers::{Auth, ProviderError, Reply};

/// A failed call: the credential could not be had, or the provider refused.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Credential problem.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Provider answer.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// Runs `f` with a valid credential for `connection`, refreshing once on a 401.
pub async fn call<T, F, Fut>(tokens: &TokenManager, connection: Uuid, f: F) -> Result<Reply<T>, CallError>
where
    F: Fn(Auth) -> Fut,
    Fut: Future<Output = Result<Reply<T>, ProviderError>>,
{
    let granted = tokens.auth(connection).await?;
    match f(granted.auth.clone()).await {
        Err(e @ ProviderError::Unauthorized { .. }) => {
            let fresh = tokens.after_unauthorized(connection, granted.version).await?;
            if fresh.version == granted.version {
                // Not refreshed: a refresh of this token did not help a moment ago.
                return Err(e.into());
            }
            match f(fresh.auth).await {
                Err(e @ ProviderError::Unauthorized { .. }) => {
                    tokens.refresh_did_not_help(connection, fresh.version).await;
                    Err(e.into())
                }
                other => Ok(other?),
            }
        }
        other => Ok(other?),
    }
}
