-- Per-connection sync schedules, read by the crm-scheduler leader, and the leader's record.
--
-- The leader lease itself is a PostgreSQL session-level advisory lock held on a dedicated
-- connection (see scheduler/src/schedule/lease.rs): it needs no table, and a dead leader's
-- session ending releases it. `scheduler_leader` only records who holds it, for operators.

CREATE TABLE schedules (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    connection_id   uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    objects         text[] NOT NULL
                    CONSTRAINT schedules_objects_allowed
                    CHECK (cardinality(objects) BETWEEN 1 AND 3
                           AND objects <@ ARRAY['contact', 'company', 'deal']::text[]),
    cron            text NOT NULL,                 -- 5 fields (minutes) or 6 (seconds first)
    time_zone       text NOT NULL DEFAULT 'UTC',   -- IANA name; the API checks it
    enabled         boolean NOT NULL DEFAULT true,
    overlap_policy  text NOT NULL DEFAULT 'skip'
                    CONSTRAINT schedules_overlap_policy_allowed
                    CHECK (overlap_policy IN ('skip', 'buffer_one')),
    missed_policy   text NOT NULL DEFAULT 'run_once'
                    CONSTRAINT schedules_missed_policy_allowed
                    CHECK (missed_policy IN ('skip', 'run_once', 'backfill')),
    backfill_limit  integer NOT NULL DEFAULT 10
                    CONSTRAINT schedules_backfill_limit_range CHECK (backfill_limit BETWEEN 1 AND 1000),
    jitter_ms       integer NOT NULL DEFAULT 0
                    CONSTRAINT schedules_jitter_range CHECK (jitter_ms BETWEEN 0 AND 3600000),
    -- Every tick up to and including this instant is handled (enqueued, found already
    -- enqueued, or dropped by the missed-tick policy). NULL: none yet, counting from
    -- created_at. Only moves forward.
    last_tick_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Bumped by the trigger below when the definition changes (not when last_tick_at moves).
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The transaction that last changed the definition: the scheduler's change feed reads
    -- rows whose change_xid is at or above the xmin horizon of its previous read, which
    -- misses no commit whatever the commit order (an updated_at watermark would).
    change_xid      xid8 NOT NULL DEFAULT pg_current_xact_id()
)
-- Room on each page for the new version of a row when last_tick_at moves (every tick of
-- every schedule), so those updates stay heap-only and touch no index.
WITH (fillfactor = 70);

CREATE INDEX schedules_connection ON schedules (connection_id);
CREATE INDEX schedules_change_xid ON schedules (change_xid);

-- Definition changes bump updated_at and change_xid. A change of timing (cron, time zone,
-- jitter) or a re-enable restarts the schedule from now: ticks before the change are not
-- "missed", so no replica ever backfills them.
CREATE FUNCTION schedules_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF ROW(NEW.connection_id, NEW.objects, NEW.cron, NEW.time_zone, NEW.enabled, NEW.overlap_policy,
           NEW.missed_policy, NEW.backfill_limit, NEW.jitter_ms)
       IS DISTINCT FROM
       ROW(OLD.connection_id, OLD.objects, OLD.cron, OLD.time_zone, OLD.enabled, OLD.overlap_policy,
           OLD.missed_policy, OLD.backfill_limit, OLD.jitter_ms)
    THEN
        NEW.updated_at := now();
        NEW.change_xid := pg_current_xact_id();
        IF NEW.cron IS DISTINCT FROM OLD.cron
           OR NEW.time_zone IS DISTINCT FROM OLD.time_zone
           OR NEW.jitter_ms IS DISTINCT FROM OLD.jitter_ms
           OR (NEW.enabled AND NOT OLD.enabled)
        THEN
            NEW.last_tick_at := GREATEST(COALESCE(OLD.last_tick_at, OLD.created_at), now());
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- Only statements that set a definition column run it: the scheduler's own writes of
-- last_tick_at (100,000 rows a tick at scale) skip it entirely.
CREATE TRIGGER schedules_touch
    BEFORE UPDATE OF connection_id, objects, cron, time_zone, enabled, overlap_policy, missed_policy,
                     backfill_limit, jitter_ms
    ON schedules
    FOR EACH ROW EXECUTE FUNCTION schedules_touch();

-- Who holds the scheduler's leader lease (one row). Written by each new leader and renewed
-- while it leads; informational only: the advisory lock is the truth.
CREATE TABLE scheduler_leader (
    id           integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    holder       text NOT NULL,        -- instance id: host:pid:random
    pid          integer NOT NULL,     -- OS process id of the holder
    api_addr     text NOT NULL DEFAULT '',
    acquired_at  timestamptz NOT NULL,
    renewed_at   timestamptz NOT NULL
);
