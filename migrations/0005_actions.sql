-- Outbound CRM actions and the API keys of the services that enqueue them.

-- One row per action. The id is also the queue job id. The idempotency key is unique per
-- tenant; the request hash tells a true repeat (same body) from a conflicting reuse.
-- `intent_at` is written before each provider call and `external_id` after it: an intent
-- without a result means the outcome is unknown and must be reconciled before any new create.
CREATE TABLE actions (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id),
    connection_id    uuid NOT NULL REFERENCES connections (id),
    provider         text NOT NULL,
    action           text NOT NULL CHECK (action IN ('create_task', 'update_deal', 'log_call', 'create_contact',
                                                     'update_contact', 'create_note', 'search_contact_by_email')),
    params           jsonb NOT NULL,
    idempotency_key  text NOT NULL,
    request_hash     text NOT NULL,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    intent_at        timestamptz,
    external_id      text,
    result           jsonb,
    reconciled       boolean NOT NULL DEFAULT false,   -- the result was found by reconciliation
    last_error       text,
    last_error_class text,
    traceparent      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX actions_created ON actions (created_at);

-- API keys: only a SHA-256 of the secret part is stored; the prefix identifies the key in logs.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL,
    prefix        text NOT NULL UNIQUE,
    secret_hash   bytea NOT NULL,
    scopes        text[] NOT NULL CHECK (scopes <@ ARRAY['enqueue', 'admin']::text[] AND cardinality(scopes) > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
