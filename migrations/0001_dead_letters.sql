-- Dead letters: jobs that cannot succeed, kept durably with their payload and every attempt.
-- Redis holds live jobs only; a job leaves Redis only after its row here is committed.
CREATE TABLE dead_letters (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id          uuid NOT NULL UNIQUE,           -- idempotent writes: one row per dead job
    queue           text NOT NULL,
    job_type        text NOT NULL,
    lane            text NOT NULL,
    provider        text NOT NULL,
    tenant          text NOT NULL,
    priority        text NOT NULL,
    payload         bytea NOT NULL,                 -- raw bytes, even when undecodable
    payload_json    jsonb,                          -- the payload when it is JSON
    meta            jsonb NOT NULL DEFAULT '{}'::jsonb,
    unique_key      text,
    reason          text NOT NULL CHECK (reason IN ('max_attempts', 'permanent', 'poison', 'undecodable')),
    error_class     text NOT NULL,                  -- last attempt's class
    last_error      text NOT NULL,                  -- last attempt's redacted message
    provider_status integer,
    provider_code   text,
    attempts        integer NOT NULL,
    max_attempts    integer NOT NULL,
    orphans         integer NOT NULL,
    enqueued_at     timestamptz NOT NULL,
    dead_at         timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_dead_at ON dead_letters (dead_at DESC, id);
CREATE INDEX dead_letters_provider_class ON dead_letters (provider, error_class, dead_at DESC);
CREATE INDEX dead_letters_tenant ON dead_letters (tenant, dead_at DESC);
CREATE INDEX dead_letters_job_type ON dead_letters (job_type, dead_at DESC);

CREATE TABLE dead_letter_attempts (
    dead_letter_id  uuid NOT NULL REFERENCES dead_letters (id) ON DELETE CASCADE,
    seq             integer NOT NULL,               -- order in the history
    attempt         integer NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    worker_id       text NOT NULL,
    outcome         text NOT NULL,                  -- retry | dead | orphaned | deferred | released
    error_class     text NOT NULL,
    message         text NOT NULL,
    provider_status integer,
    provider_code   text,
    PRIMARY KEY (dead_letter_id, seq)
);
