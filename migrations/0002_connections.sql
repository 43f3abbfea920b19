-- Tenants, their CRM connections with encrypted tokens, the OAuth apps crm-fleet is registered
-- as with each provider, and short-lived OAuth authorization states.

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    weight      integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per provider: where its OAuth endpoints are and crm-fleet's client credentials there.
-- The client secret is encrypted like tokens.
CREATE TABLE oauth_apps (
    provider         text PRIMARY KEY CHECK (provider IN ('hubspot', 'salesforce', 'pipedrive', 'zoho', 'close')),
    client_id        text NOT NULL,
    client_secret    bytea NOT NULL,
    key_id           text NOT NULL,
    authorize_url    text NOT NULL,
    token_url        text NOT NULL,
    revoke_url       text,
    redirect_uri     text NOT NULL,
    scopes           text NOT NULL DEFAULT '',
    api_base         text,                 -- fixed API host where the provider has one (HubSpot, Close)
    -- Other token endpoints a callback may name (Zoho data centres send `accounts-server`);
    -- anything else is refused, so a forged callback cannot send our secret elsewhere.
    extra_token_urls text[] NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE connections (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        text NOT NULL REFERENCES tenants (id),
    provider         text NOT NULL CHECK (provider IN ('hubspot', 'salesforce', 'pipedrive', 'zoho', 'close')),
    auth_kind        text NOT NULL CHECK (auth_kind IN ('oauth', 'api_key', 'static_token')),
    account_id       text NOT NULL,        -- HubSpot portal, Salesforce org, Pipedrive company, Zoho org, Close org
    api_base         text NOT NULL,        -- instance_url / api_domain / API host, from the latest token response
    token_url        text,                 -- per-connection token endpoint (Zoho data centres), else the app's
    access_token     bytea,                -- AES-256-GCM, see key_id
    refresh_token    bytea,
    key_id           text NOT NULL,
    token_version    bigint NOT NULL DEFAULT 1,   -- bumped by every refresh: the fence
    expires_at       timestamptz,          -- NULL: the provider gives no expiry (Salesforce)
    refreshed_at     timestamptz,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'needs_reauth', 'disabled')),
    status_reason    text,
    scopes           text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, provider, account_id)
);

CREATE INDEX connections_status ON connections (status) WHERE status <> 'active';

-- An authorization in progress: the signed `state` parameter names a row; it is single-use and
-- expires quickly. The PKCE verifier is encrypted.
CREATE TABLE oauth_states (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL,
    provider         text NOT NULL,
    pkce_verifier    bytea NOT NULL,
    key_id           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    used_at          timestamptz
);
