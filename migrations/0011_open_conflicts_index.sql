-- Open sync conflicts by provider: the scheduler counts them every 10 s for
-- crm_fleet_sync_conflicts_open (jobs/src/fleet_gauges.rs), and resolved ones accumulate, so
-- the count reads this small partial index instead of the table.
CREATE INDEX sync_conflicts_open ON sync_conflicts (provider) WHERE resolved_at IS NULL;
