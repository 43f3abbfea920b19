-- Synced CRM data, sync cursors and the sync-run audit.
--
-- Records are keyed by (tenant, provider, external id). Each page of a sync is upserted in one
-- transaction together with the cursor advance, so a crashed sync resumes exactly after its last
-- committed page. Last write wins on the remote modification time.

CREATE TABLE crm_contacts (
    tenant_id          text NOT NULL,
    provider           text NOT NULL,
    external_id        text NOT NULL,
    connection_id      uuid NOT NULL,
    email              text,
    first_name         text,
    last_name          text,
    name               text,
    phone              text,
    company            text,
    owner              text,
    raw                jsonb NOT NULL,
    remote_updated_at  timestamptz NOT NULL,
    deleted_at         timestamptz,
    last_synced_at     timestamptz NOT NULL DEFAULT now(),
    -- Fields changed locally (by an action) and not yet seen back from the provider.
    local_pending      jsonb,
    PRIMARY KEY (tenant_id, provider, external_id)
);
CREATE INDEX crm_contacts_email ON crm_contacts (tenant_id, lower(email));

CREATE TABLE crm_companies (
    tenant_id          text NOT NULL,
    provider           text NOT NULL,
    external_id        text NOT NULL,
    connection_id      uuid NOT NULL,
    name               text,
    phone              text,
    owner              text,
    raw                jsonb NOT NULL,
    remote_updated_at  timestamptz NOT NULL,
    deleted_at         timestamptz,
    last_synced_at     timestamptz NOT NULL DEFAULT now(),
    local_pending      jsonb,
    PRIMARY KEY (tenant_id, provider, external_id)
);

CREATE TABLE crm_deals (
    tenant_id          text NOT NULL,
    provider           text NOT NULL,
    external_id        text NOT NULL,
    connection_id      uuid NOT NULL,
    name               text,
    company            text,
    amount             numeric,
    currency           text,
    stage              text,
    close_date         date,
    owner              text,
    raw                jsonb NOT NULL,
    remote_updated_at  timestamptz NOT NULL,
    deleted_at         timestamptz,
    last_synced_at     timestamptz NOT NULL DEFAULT now(),
    local_pending      jsonb,
    PRIMARY KEY (tenant_id, provider, external_id)
);

-- Where each (connection, object) sync stands.
CREATE TABLE sync_state (
    connection_id    uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    object           text NOT NULL CHECK (object IN ('contact', 'company', 'deal')),
    cursor           jsonb NOT NULL,          -- the provider cursor after the last committed page
    run_id           uuid,                    -- the run in progress, if any
    last_success_at  timestamptz,
    rerun_requested  boolean NOT NULL DEFAULT false,   -- overlap policy buffer_one: run again when done
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, object)
);

CREATE TABLE sync_runs (
    id             uuid PRIMARY KEY,
    connection_id  uuid NOT NULL,
    tenant_id      text NOT NULL,
    provider       text NOT NULL,
    object         text NOT NULL,
    mode           text NOT NULL,             -- full | incremental
    trigger        text NOT NULL DEFAULT '',
    job_id         uuid,
    status         text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    pages          integer NOT NULL DEFAULT 0,
    processed      integer NOT NULL DEFAULT 0,
    created        integer NOT NULL DEFAULT 0,
    updated        integer NOT NULL DEFAULT 0,
    deleted        integer NOT NULL DEFAULT 0,
    unchanged      integer NOT NULL DEFAULT 0,
    failed         integer NOT NULL DEFAULT 0,
    error          text
);
CREATE INDEX sync_runs_connection ON sync_runs (connection_id, object, started_at DESC);

-- A remote change that collided with a local pending change on a critical field.
CREATE TABLE sync_conflicts (
    id             bigserial PRIMARY KEY,
    tenant_id      text NOT NULL,
    provider       text NOT NULL,
    object         text NOT NULL,
    external_id    text NOT NULL,
    field          text NOT NULL,
    local_value    text,
    remote_value   text,
    run_id         uuid,
    detected_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz
);
