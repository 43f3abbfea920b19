-- Sync conflicts by record and field: a sync records a conflict only if the same one (same
-- local and remote values) is not open or kept local already, so re-reading an unchanged
-- record (every full sync) does not pile up copies; and resolving one finds its siblings.
CREATE INDEX sync_conflicts_record ON sync_conflicts (tenant_id, provider, object, external_id, field);

-- How a conflict was resolved: `remote` (the CRM's value taken, the local pending change
-- dropped) or `local` (our value kept; it stays pending until the CRM has it), and by whom.
ALTER TABLE sync_conflicts
    ADD COLUMN resolution text CONSTRAINT sync_conflicts_resolution_allowed CHECK (resolution IN ('remote', 'local')),
    ADD COLUMN resolved_by text;
