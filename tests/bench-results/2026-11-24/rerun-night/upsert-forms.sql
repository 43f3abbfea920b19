-- The scratch-database experiment behind docs/benchmarks.md "Which upsert form costs what".
-- Run: createdb zz_ingest_exp; psql -f upsert-forms.sql; then per form: TRUNCATE t; CHECKPOINT; CALL run('upsert'|'upsert_noret'|'nothing'|'insert').
-- The 'probe_insert' and 'merge' forms got generic plans that scan the table (88 s and 18 s): not comparable, not reported.
CREATE TABLE src AS
SELECT g AS n, (g % 500) AS pg, (1000000 + (g * 7919) % 100000)::text AS id,
  jsonb_build_object('id', (1000000 + (g * 7919) % 100000)::text, 'properties', jsonb_build_object(
    'createdate', '2026-01-01T00:00:00.000Z', 'email', 'person' || g || '@example' || (g%97) || '.com',
    'firstname', 'First' || g, 'lastname', 'Last' || g, 'phone', '+1 555 0' || g, 'company', 'Company ' || (g % 1000),
    'hs_object_id', (1000000 + (g * 7919) % 100000)::text, 'lastmodifieddate', '2026-11-24T10:00:00.000Z',
    'hubspot_owner_id', (g % 50)::text, 'lifecyclestage', 'lead', 'jobtitle', 'Engineer', 'city', 'Springfield'),
    'createdAt', '2026-01-01T00:00:00.000Z', 'updatedAt', '2026-11-24T10:00:00.000Z', 'archived', false)::text AS rawtext,
  '2026-11-24T10:00:00Z'::timestamptz + (g || ' ms')::interval AS upd
FROM generate_series(1, 100000) g;
CREATE INDEX ON src (pg);
CREATE TABLE t (
    tenant_id text NOT NULL, provider text NOT NULL, external_id text NOT NULL, connection_id uuid NOT NULL,
    email text, first_name text, last_name text, name text, phone text, company text, owner text,
    raw jsonb NOT NULL, remote_updated_at timestamptz NOT NULL, deleted_at timestamptz,
    last_synced_at timestamptz NOT NULL DEFAULT now(), local_pending jsonb,
    PRIMARY KEY (tenant_id, provider, external_id));
CREATE INDEX t_email ON t (tenant_id, lower(email));
CREATE INDEX t_pending ON t (tenant_id, provider, external_id) WHERE local_pending IS NOT NULL;
CREATE PROCEDURE run(form text) LANGUAGE plpgsql AS $$
DECLARE p int; c int;
BEGIN
  FOR p IN 0..499 LOOP
    IF form = 'upsert' THEN
      WITH up AS (INSERT INTO t (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, name, phone, local_pending, email, first_name, last_name, company)
        SELECT 'tenant-1', 'hubspot', '0b9c5f1e-aaaa-bbbb-cccc-123456789012', s.id, s.rawtext::jsonb, s.upd, 'o', 'n', 'ph', NULL, 'e' || s.n, 'f', 'l', 'c'
        FROM src s WHERE s.pg = p ORDER BY s.id
        ON CONFLICT (tenant_id, provider, external_id) DO UPDATE SET email = EXCLUDED.email, raw = EXCLUDED.raw, remote_updated_at = EXCLUDED.remote_updated_at
        WHERE t.remote_updated_at < EXCLUDED.remote_updated_at OR t.deleted_at IS NOT NULL
        RETURNING (xmax = 0) AS inserted)
      SELECT count(*) INTO c FROM up;
    ELSIF form = 'insert' THEN
      INSERT INTO t (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, name, phone, local_pending, email, first_name, last_name, company)
        SELECT 'tenant-1', 'hubspot', '0b9c5f1e-aaaa-bbbb-cccc-123456789012', s.id, s.rawtext::jsonb, s.upd, 'o', 'n', 'ph', NULL, 'e' || s.n, 'f', 'l', 'c'
        FROM src s WHERE s.pg = p ORDER BY s.id;
    ELSIF form = 'probe_insert' THEN
      SELECT count(*) INTO c FROM t WHERE t.tenant_id = 'tenant-1' AND t.provider = 'hubspot' AND t.external_id = ANY(ARRAY(SELECT s.id FROM src s WHERE s.pg = p));
      INSERT INTO t (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, name, phone, local_pending, email, first_name, last_name, company)
        SELECT 'tenant-1', 'hubspot', '0b9c5f1e-aaaa-bbbb-cccc-123456789012', s.id, s.rawtext::jsonb, s.upd, 'o', 'n', 'ph', NULL, 'e' || s.n, 'f', 'l', 'c'
        FROM src s WHERE s.pg = p ORDER BY s.id;
    ELSIF form = 'merge' THEN
      MERGE INTO t USING (SELECT s.id, s.rawtext::jsonb AS raw, s.upd, 'e' || s.n AS email FROM src s WHERE s.pg = p ORDER BY s.id) x
        ON t.tenant_id = 'tenant-1' AND t.provider = 'hubspot' AND t.external_id = x.id
        WHEN MATCHED AND (t.remote_updated_at < x.upd OR t.deleted_at IS NOT NULL) THEN UPDATE SET email = x.email, raw = x.raw, remote_updated_at = x.upd
        WHEN NOT MATCHED THEN INSERT (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, name, phone, local_pending, email, first_name, last_name, company)
          VALUES ('tenant-1', 'hubspot', '0b9c5f1e-aaaa-bbbb-cccc-123456789012', x.id, x.raw, x.upd, 'o', 'n', 'ph', NULL, x.email, 'f', 'l', 'c');
    ELSIF form = 'upsert_noret' THEN
      INSERT INTO t (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, name, phone, local_pending, email, first_name, last_name, company)
        SELECT 'tenant-1', 'hubspot', '0b9c5f1e-aaaa-bbbb-cccc-123456789012', s.id, s.rawtext::jsonb, s.upd, 'o', 'n', 'ph', NULL, 'e' || s.n, 'f', 'l', 'c'
        FROM src s WHERE s.pg = p ORDER BY s.id
        ON CONFLICT (tenant_id, provider, external_id) DO UPDATE SET email = EXCLUDED.email, raw = EXCLUDED.raw, remote_updated_at = EXCLUDED.remote_updated_at
        WHERE t.remote_updated_at < EXCLUDED.remote_updated_at OR t.deleted_at IS NOT NULL;
    ELSIF form = 'nothing' THEN
      INSERT INTO t (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, name, phone, local_pending, email, first_name, last_name, company)
        SELECT 'tenant-1', 'hubspot', '0b9c5f1e-aaaa-bbbb-cccc-123456789012', s.id, s.rawtext::jsonb, s.upd, 'o', 'n', 'ph', NULL, 'e' || s.n, 'f', 'l', 'c'
        FROM src s WHERE s.pg = p ORDER BY s.id
        ON CONFLICT DO NOTHING;
    ELSIF form = 'select' THEN
      PERFORM count(*) FROM (SELECT s.rawtext::jsonb FROM src s WHERE s.pg = p) x;
    END IF;
    COMMIT;
  END LOOP;
END $$;
