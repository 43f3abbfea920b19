-- When a schedule's ticks began to be expected: its creation, and again whenever its timing
-- (cron, time zone, jitter) changes or it is re-enabled (the same moments at which the
-- trigger restarts its ticks from now).
--
-- Sync freshness (scheduler/src/schedule/freshness.rs) counts a synced object's unanswered
-- ticks from the later of its last success and this instant. `updated_at` would not do: it
-- moves on every definition change, so editing a policy or the object list of a schedule
-- whose syncs had failed for days would hide that they are behind.
ALTER TABLE schedules ADD COLUMN ticking_since timestamptz;
-- Best known for existing rows (this statement sets no definition column: no trigger runs).
UPDATE schedules SET ticking_since = updated_at;
ALTER TABLE schedules ALTER COLUMN ticking_since SET DEFAULT now();
ALTER TABLE schedules ALTER COLUMN ticking_since SET NOT NULL;

CREATE OR REPLACE FUNCTION schedules_touch() RETURNS trigger LANGUAGE plpgsql AS $$
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
            NEW.ticking_since := now();
        END IF;
    END IF;
    RETURN NEW;
END
$$;
