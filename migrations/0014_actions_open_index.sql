-- Actions not yet ended, by last change: what the scheduler's re-push sweep reads each minute
-- (`crm_jobs::actions::repush`) to find an action left without a job (its push failed after
-- the row was committed, or Redis lost the job). Small: only open actions are in it.
CREATE INDEX actions_open ON actions (updated_at) WHERE state IN ('queued', 'running');
