-- Sync conflicts by record and field: a sync records a conflict only if the newest open one of
-- the field is not the same (same local and remote values), so re-reading an unchanged record
-- (every full sync) does not pile up copies; resolving one finds its siblings; a sync that
-- finds the CRM with our value closes them.
CREATE INDEX sync_conflicts_record ON sync_conflicts (tenant_id, provider, object, external_id, field);

-- How a conflict was resolved, and by whom: `remote` (the CRM's value taken, the local
-- pending change dropped), `local` (our value kept; it stays pending until the CRM has it) or
-- `confirmed` (a sync found the CRM with our value: resolved_by `sync`).
ALTER TABLE sync_conflicts
    ADD COLUMN resolution text CONSTRAINT sync_conflicts_resolution_allowed
        CHECK (resolution IN ('remote', 'local', 'confirmed')),
    ADD COLUMN resolved_by text;
