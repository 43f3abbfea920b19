//! Connecting crm-fleet tenants to accounts of the `crm-sandbox` CRM imitations, from the JSON
//! its control plane serves (`GET /_sandbox/urls`, `GET /_sandbox/{provider}/accounts`). Used by
//! the end-to-end tests and by `crmctl demo`; it needs no dependency on the sandbox crate.
//!
//! Each provider connects the way a real deployment would: HubSpot with a private-app token,
//! Pipedrive with an API token, Close with an API key, Zoho and Salesforce with OAuth (the
//! sandbox's pre-issued token pair, refreshed through the registered OAuth app).

use chrono::Utc;
use secrecy::SecretString;
use serde_json::Value;

use crate::auth::oauth::{Grant, OAuthApp, ProviderTokenFields};
use crate::auth::{AuthError, AuthKind, Connection, Store};
use crate::providers::Provider;

fn text(v: &Value, pointer: &str) -> Result<String, AuthError> {
    v.pointer(pointer)
        .and_then(|x| x.as_str().map(str::to_owned).or_else(|| x.as_u64().map(|n| n.to_string())))
        .ok_or_else(|| AuthError::Config(format!("sandbox JSON has no {pointer}")))
}

fn secret(v: &Value, pointer: &str) -> Result<SecretString, AuthError> {
    text(v, pointer).map(SecretString::from)
}

/// Stores a connection of `tenant` to a sandbox `account` of `provider`. `urls` is the
/// sandbox's `SandboxUrls` JSON. OAuth providers also get their OAuth app registered.
pub async fn connect(
    store: &Store,
    tenant: &str,
    provider: Provider,
    urls: &Value,
    account: &Value,
) -> Result<Connection, AuthError> {
    store.ensure_tenant(tenant, tenant).await?;
    let id = text(account, "/id")?;
    match provider {
        Provider::Hubspot => {
            let token = secret(account, "/credentials/private_app_token")?;
            let base = text(urls, "/hubspot/api_base")?;
            store.save_key(tenant, provider, AuthKind::StaticToken, &token, &base, &id).await
        }
        Provider::Pipedrive => {
            let token = secret(account, "/credentials/api_token")?;
            let base = text(account, "/credentials/api_domain")?;
            store.save_key(tenant, provider, AuthKind::ApiKey, &token, &base, &id).await
        }
        Provider::Close => {
            let key = secret(account, "/credentials/api_key")?;
            let base = text(urls, "/close/api_base")?;
            store.save_key(tenant, provider, AuthKind::ApiKey, &key, &base, &id).await
        }
        Provider::Zoho | Provider::Salesforce => {
            let key = provider.as_str();
            let app = OAuthApp {
                provider,
                client_id: text(account, "/credentials/client_id")?,
                client_secret: secret(account, "/credentials/client_secret")?,
                authorize_url: text(urls, &format!("/{key}/authorize_url"))?,
                token_url: text(account, "/credentials/token_url")
                    .or_else(|_| text(urls, &format!("/{key}/token_url")))?,
                revoke_url: None,
                redirect_uri: text(account, "/credentials/redirect_uri")
                    .unwrap_or_else(|_| "http://127.0.0.1/v1/oauth/callback".into()),
                scopes: String::new(),
                api_base: None,
            };
            store.save_app(&app).await?;
            let oauth = account.pointer("/credentials/oauth").cloned().unwrap_or(Value::Null);
            let expires_in = oauth.get("expires_in").and_then(Value::as_i64);
            let fields = ProviderTokenFields {
                instance_url: oauth.get("instance_url").and_then(Value::as_str).map(str::to_owned),
                id: oauth.get("id").and_then(Value::as_str).map(str::to_owned),
                api_domain: oauth.get("api_domain").and_then(Value::as_str).map(str::to_owned),
                ..ProviderTokenFields::default()
            };
            let grant = Grant {
                access_token: secret(&oauth, "/access_token")?,
                refresh_token: secret(&oauth, "/refresh_token").ok(),
                expires_at: expires_in.map(|s| Utc::now() + chrono::Duration::seconds(s)),
                scopes: String::new(),
                fields,
            };
            store.save_grant_for(tenant, &app, &grant, None, Some(&id)).await
        }
    }
}
