-- The per-page conflict check of a sync (jobs/src/sync/store.rs, resolve_conflicts) asks which
-- of a page's records have a local pending change. Almost none ever do, so a partial index over
-- just those rows answers it in well under a millisecond. Without it, PostgreSQL plans the
-- check on a young table (no statistics yet: any tenant's first full sync) as a scan of the
-- tenant's rows with external_id as a filter, so every page reads all rows written so far and
-- a first sync is quadratic (measured: 30-46 ms per page at 20-26k rows; docs/benchmarks.md).
CREATE INDEX crm_contacts_pending ON crm_contacts (tenant_id, provider, external_id) WHERE local_pending IS NOT NULL;
CREATE INDEX crm_companies_pending ON crm_companies (tenant_id, provider, external_id) WHERE local_pending IS NOT NULL;
CREATE INDEX crm_deals_pending ON crm_deals (tenant_id, provider, external_id) WHERE local_pending IS NOT NULL;
