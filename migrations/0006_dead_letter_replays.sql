-- Replaying dead letters: each dead letter is replayed at most once (a later death of the
-- replayed job is a new dead letter), and every replay is audited: who, when, why, and any
-- edited field.

ALTER TABLE dead_letters
    ADD COLUMN replayed_at   timestamptz,
    ADD COLUMN replay_job_id uuid;

CREATE INDEX dead_letters_unreplayed ON dead_letters (dead_at DESC) WHERE replayed_at IS NULL;
CREATE INDEX dead_letters_error_class ON dead_letters (error_class, dead_at DESC);

CREATE TABLE dead_letter_replays (
    id               bigserial PRIMARY KEY,
    dead_letter_id   uuid NOT NULL,          -- kept after a purge of the dead letter
    job_id           uuid NOT NULL,          -- the dead job
    replay_job_id    uuid NOT NULL,          -- the new job (deterministic per dead letter)
    actor            text NOT NULL,          -- API key name or OS user
    reason           text NOT NULL,
    changes          jsonb NOT NULL DEFAULT '{}'::jsonb,
    outcome          text NOT NULL,          -- enqueued | merged (an equivalent job was already queued)
    replayed_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_replays_dl ON dead_letter_replays (dead_letter_id);

-- Dead letters removed by the retention service, counted per day so nothing disappears
-- without a trace.
CREATE TABLE dead_letter_purges (
    id          bigserial PRIMARY KEY,
    purged_at   timestamptz NOT NULL DEFAULT now(),
    older_than  timestamptz NOT NULL,
    count       bigint NOT NULL,
    actor       text NOT NULL
);
