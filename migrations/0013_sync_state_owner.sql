-- The attempt allowed to commit a (connection, object)'s pages. A sync attempt claims it when
-- it starts or resumes a run, under the row lock that its page commits also take, and each
-- page commit checks it: an attempt whose lease was lost (a worker stalled past its lease, the
-- job reclaimed and run again) cannot commit a page, move the cursor back or close the run
-- underneath the attempt that took over, even in the moment before its heartbeat tells it.
-- NULL on rows written before this column existed: the next attempt claims it.
ALTER TABLE sync_state ADD COLUMN owner uuid;
