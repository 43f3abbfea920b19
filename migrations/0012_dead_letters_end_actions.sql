-- A dead-lettered action job ends its action. When a job dies without its handler recording
-- the failure (a worker killed on every attempt until the reaper dead-letters it as poison),
-- the action row still said `running`, `GET /v1/jobs/{id}` followed it, and a caller sending
-- the request again had the job pushed again. The dead letter's own transaction now marks the
-- action failed, whoever writes it (the queue crate knows nothing of actions); a replay sets it
-- back to `queued`.
--
-- The action id is read from the payload, never cast unchecked: a dead letter must always be
-- writable, or its job would stay in the dying outbox.
CREATE INDEX dead_letters_action ON dead_letters ((payload_json ->> 'action_id')) WHERE job_type = 'action';

CREATE FUNCTION dead_letter_ends_action() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    action_id text;
BEGIN
    IF NEW.job_type = 'action' AND jsonb_typeof(NEW.payload_json) = 'object' THEN
        action_id := NEW.payload_json ->> 'action_id';
        IF action_id ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            UPDATE actions
               SET state = 'failed', completed_at = now(), updated_at = now(),
                   last_error = COALESCE(NEW.last_error, last_error),
                   last_error_class = COALESCE(NEW.error_class, last_error_class)
             WHERE id = action_id::uuid AND state IN ('queued', 'running');
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER dead_letters_end_action AFTER INSERT ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION dead_letter_ends_action();
