//! Writing a sync page: one statement per object table upserts the whole page from arrays
//! (`UNNEST`), last write wins on the remote modification time, and the counts of created,
//! updated and unchanged rows come back from the same statement. Deletes mark `deleted_at`.
//!
//! Invariant: everything here runs inside the caller's transaction, which also advances the
//! cursor, so a page is either fully applied with its cursor or not at all.
//!
//! Pending marks and pages are ordered by the **records lock** of (tenant, provider, object), a
//! transaction-scoped advisory lock. A page's transaction ([`begin_page`]) takes it shared
//! before [`apply_page`] reads anything, so its conflict check and its upsert see the same
//! pending marks (under READ
//! COMMITTED each statement sees what committed before it started; without the lock a mark
//! committed between the two statements was written over). A mark ([`mark_pending`]) and a
//! conflict resolution hold it exclusive ([`lock_records`]): they wait for the pages being
//! written, and pages that start meanwhile wait for them and then see them. Pages of concurrent
//! syncs share it. The page writer ([`super::writer`]) begins a page, with this lock and the
//! page's own, before it starts the next page, so pages of one sync hold it in page order.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::providers::{CrmRecord, DeletedRecord, ObjectKind};

/// What applying a page changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// Records received.
    pub processed: i64,
    /// New rows.
    pub created: i64,
    /// Rows changed (the remote copy was newer).
    pub updated: i64,
    /// Rows already up to date.
    pub unchanged: i64,
    /// Rows marked deleted.
    pub deleted: i64,
    /// Conflicts recorded.
    pub conflicts: i64,
}

/// The table of an object.
pub fn table(object: ObjectKind) -> &'static str {
    match object {
        ObjectKind::Contact => "crm_contacts",
        ObjectKind::Company => "crm_companies",
        ObjectKind::Deal => "crm_deals",
    }
}

/// The advisory lock class of records locks (`pg_advisory_xact_lock(int4, int4)` keys are a
/// space apart from the single-`bigint` keys of the leader lease and the page writer).
const RECORDS_LOCK_CLASS: i32 = 0x5359_4e43; // "SYNC"

/// The records lock key of (tenant, provider, object): FNV-1a of the three, so every process
/// computes the same one (a collision of two tenants only makes one wait a moment longer).
fn records_lock_key(tenant: &str, provider: &str, object: ObjectKind) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in [tenant, provider, object.as_str()] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h as i32
}

/// Takes the records lock exclusive until the transaction ends: no page of these records is
/// being written meanwhile.
pub async fn lock_records(
    tx: &mut PgConnection,
    tenant: &str,
    provider: &str,
    object: ObjectKind,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(RECORDS_LOCK_CLASS)
        .bind(records_lock_key(tenant, provider, object))
        .execute(tx)
        .await?;
    Ok(())
}

/// Starts the transaction of a page of (tenant, provider, object): `BEGIN`, then one statement
/// taking the records lock shared and, when given, `page_lock` (the writer's lock that orders
/// one sync's pages). [`apply_page`] runs in such a transaction.
///
/// The locks are a statement of their own, never part of the `BEGIN` message: sqlx counts a
/// transaction only once `BEGIN` has answered, so a failing or abandoned statement in that
/// message would leave the pooled connection inside an open (or aborted) transaction.
pub async fn begin_page(
    pool: &PgPool,
    tenant: &str,
    provider: &str,
    object: ObjectKind,
    page_lock: Option<i64>,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let records = records_lock_key(tenant, provider, object);
    match page_lock {
        Some(lock) => {
            sqlx::query("SELECT pg_advisory_xact_lock($3), pg_advisory_xact_lock_shared($1, $2)")
                .bind(RECORDS_LOCK_CLASS)
                .bind(records)
                .bind(lock)
                .execute(&mut *tx)
                .await?
        }
        None => {
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
                .bind(RECORDS_LOCK_CLASS)
                .bind(records)
                .execute(&mut *tx)
                .await?
        }
    };
    Ok(tx)
}

/// Fields whose local pending changes a remote change must not silently overwrite.
pub(crate) fn critical_fields(object: ObjectKind) -> &'static [&'static str] {
    match object {
        ObjectKind::Contact => &["email", "first_name", "last_name", "name"],
        _ => &["name"],
    }
}

fn field<'a>(r: &'a CrmRecord, name: &str) -> Option<&'a str> {
    match name {
        "email" => r.email.as_deref(),
        "first_name" => r.first_name.as_deref(),
        "last_name" => r.last_name.as_deref(),
        "name" => r.name.as_deref(),
        _ => None,
    }
}

fn set_field(r: &mut CrmRecord, name: &str, v: Option<String>) {
    match name {
        "email" => r.email = v,
        "first_name" => r.first_name = v,
        "last_name" => r.last_name = v,
        "name" => r.name = v,
        _ => {}
    }
}

/// Whether the CRM's value of a critical field is the one we wrote: emails compare without
/// case (CRMs may store them lowercased), every field without surrounding spaces, and an empty
/// value is no value.
fn same_value(field: &str, remote: Option<&str>, local: Option<&str>) -> bool {
    fn norm(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    match (norm(remote), norm(local)) {
        (Some(r), Some(l)) if field == "email" => r.eq_ignore_ascii_case(l),
        (r, l) => r == l,
    }
}

/// Who the page belongs to.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Provider name.
    pub provider: &'a str,
    /// Connection.
    pub connection: Uuid,
    /// Run (for conflict records).
    pub run: Uuid,
}

/// Applies records and deletions of one page, in a transaction from [`begin_page`] (which
/// holds the records lock shared).
pub async fn apply_page(
    tx: &mut Transaction<'_, Postgres>,
    scope: &Scope<'_>,
    object: ObjectKind,
    records: Vec<CrmRecord>,
    deleted: &[DeletedRecord],
) -> Result<PageCounts, sqlx::Error> {
    let mut counts = PageCounts { processed: records.len() as i64, ..PageCounts::default() };
    // One row per id (the newest), or the statement would touch a row twice.
    let mut newest: HashMap<String, CrmRecord> = HashMap::with_capacity(records.len());
    for r in records {
        match newest.get(&r.external_id) {
            Some(old) if old.remote_updated_at >= r.remote_updated_at => {}
            _ => {
                newest.insert(r.external_id.clone(), r);
            }
        }
    }
    // In key order: neighbouring rows share index pages, and concurrent writers lock rows in
    // one order.
    let mut records: Vec<CrmRecord> = newest.into_values().collect();
    records.sort_unstable_by(|a, b| a.external_id.cmp(&b.external_id));
    let pending = resolve_conflicts(tx, scope, object, &mut records).await?;
    counts.conflicts = pending.conflicts;
    if !records.is_empty() {
        let (created, updated) = upsert(tx, scope, object, &records, &pending.keep).await?;
        counts.created = created;
        counts.updated = updated;
        counts.unchanged = records.len() as i64 - created - updated;
    }
    if !deleted.is_empty() {
        let ids: Vec<&str> = deleted.iter().map(|d| d.external_id.as_str()).collect();
        let at: Vec<Option<DateTime<Utc>>> = deleted.iter().map(|d| d.deleted_at).collect();
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {t} SET deleted_at = COALESCE(d.at, now()), last_synced_at = now() \
             FROM UNNEST($3::text[], $4::timestamptz[]) AS d(id, at) \
             WHERE {t}.tenant_id = $1 AND {t}.provider = $2 AND {t}.external_id = d.id AND {t}.deleted_at IS NULL",
            t = table(object)
        )))
        .bind(scope.tenant)
        .bind(scope.provider)
        .bind(&ids)
        .bind(&at)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        counts.deleted = n as i64;
    }
    Ok(counts)
}

struct Pending {
    /// The local_pending value to store per external id (absent: none).
    keep: HashMap<String, Value>,
    conflicts: i64,
}

/// Records whose local copy has a pending change on a critical field: a remote value that
/// confirms it clears it; one that differs is recorded as a conflict and the local value kept.
async fn resolve_conflicts(
    tx: &mut PgConnection,
    scope: &Scope<'_>,
    object: ObjectKind,
    records: &mut [CrmRecord],
) -> Result<Pending, sqlx::Error> {
    let ids: Vec<&str> = records.iter().map(|r| r.external_id.as_str()).collect();
    let rows: Vec<(String, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT external_id, local_pending FROM {} WHERE tenant_id = $1 AND provider = $2 \
         AND external_id = ANY($3) AND local_pending IS NOT NULL",
        table(object)
    )))
    .bind(scope.tenant)
    .bind(scope.provider)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Pending { keep: HashMap::new(), conflicts: 0 };
    if rows.is_empty() {
        return Ok(out);
    }
    let pending: HashMap<String, Value> = rows.into_iter().collect();
    for r in records.iter_mut() {
        let Some(p) = pending.get(&r.external_id).and_then(Value::as_object) else { continue };
        let mut keep = serde_json::Map::new();
        for f in critical_fields(object) {
            let Some(local) = p.get(*f) else { continue };
            let local_s = local.as_str().map(str::to_owned);
            let remote = field(r, f).map(str::to_owned);
            if same_value(f, remote.as_deref(), local_s.as_deref()) {
                // The provider now has our change: no longer pending, and the conflicts a
                // sync recorded meanwhile (a page read before our write reached the CRM, or
                // someone who since put our value back) are answered.
                sqlx::query(
                    "UPDATE sync_conflicts SET resolved_at = now(), resolution = 'confirmed', resolved_by = 'sync' \
                     WHERE tenant_id = $1 AND provider = $2 AND object = $3 AND external_id = $4 AND field = $5 \
                     AND resolved_at IS NULL",
                )
                .bind(scope.tenant)
                .bind(scope.provider)
                .bind(object.as_str())
                .bind(&r.external_id)
                .bind(*f)
                .execute(&mut *tx)
                .await?;
                continue;
            }
            // Recorded once: a full sync re-reads the record, and while the newest open
            // conflict of this field holds the same values it is the same question. (Only the
            // newest: a CRM that went A → B → A asks about A again.)
            let recorded = sqlx::query(
                "INSERT INTO sync_conflicts (tenant_id, provider, object, external_id, field, local_value, remote_value, run_id) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE NOT EXISTS ( \
                   SELECT 1 FROM (SELECT local_value, remote_value FROM sync_conflicts \
                     WHERE tenant_id = $1 AND provider = $2 AND object = $3 AND external_id = $4 AND field = $5 \
                     AND resolved_at IS NULL ORDER BY id DESC LIMIT 1) newest \
                   WHERE newest.local_value IS NOT DISTINCT FROM $6 AND newest.remote_value IS NOT DISTINCT FROM $7)",
            )
            .bind(scope.tenant)
            .bind(scope.provider)
            .bind(object.as_str())
            .bind(&r.external_id)
            .bind(*f)
            .bind(&local_s)
            .bind(&remote)
            .bind(scope.run)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            out.conflicts += recorded as i64;
            set_field(r, f, local_s);
            keep.insert((*f).to_owned(), local.clone());
        }
        if !keep.is_empty() {
            out.keep.insert(r.external_id.clone(), Value::Object(keep));
        }
    }
    Ok(out)
}

async fn upsert(
    tx: &mut PgConnection,
    scope: &Scope<'_>,
    object: ObjectKind,
    records: &[CrmRecord],
    pending: &HashMap<String, Value>,
) -> Result<(i64, i64), sqlx::Error> {
    let ids: Vec<&str> = records.iter().map(|r| r.external_id.as_str()).collect();
    let raw: Vec<sqlx::types::Json<&Value>> = records.iter().map(|r| sqlx::types::Json(&r.raw)).collect();
    let updated_at: Vec<DateTime<Utc>> = records.iter().map(|r| r.remote_updated_at).collect();
    let owner: Vec<Option<&str>> = records.iter().map(|r| r.owner.as_deref()).collect();
    let name: Vec<Option<&str>> = records.iter().map(|r| r.name.as_deref()).collect();
    let phone: Vec<Option<&str>> = records.iter().map(|r| r.phone.as_deref()).collect();
    let local: Vec<Option<Value>> = records.iter().map(|r| pending.get(&r.external_id).cloned()).collect();
    let upsert_tail = "ON CONFLICT (tenant_id, provider, external_id) DO UPDATE SET {set}, connection_id = EXCLUDED.connection_id, \
        raw = EXCLUDED.raw, remote_updated_at = EXCLUDED.remote_updated_at, deleted_at = NULL, \
        local_pending = EXCLUDED.local_pending, last_synced_at = now() \
        WHERE {t}.remote_updated_at < EXCLUDED.remote_updated_at OR {t}.deleted_at IS NOT NULL \
        RETURNING (xmax = 0) AS inserted";
    let t = table(object);
    let (sql, extra): (String, Vec<Vec<Option<String>>>) = match object {
        ObjectKind::Contact => (
            format!(
                "WITH up AS (INSERT INTO {t} (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, \
                   name, phone, local_pending, email, first_name, last_name, company) \
                 SELECT $1, $2, $3, * FROM UNNEST($4::text[], $5::jsonb[], $6::timestamptz[], $7::text[], $8::text[], \
                   $9::text[], $10::jsonb[], $11::text[], $12::text[], $13::text[], $14::text[]) {tail}) \
                 SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up",
                tail = upsert_tail.replace("{t}", t).replace(
                    "{set}",
                    "owner = EXCLUDED.owner, name = EXCLUDED.name, phone = EXCLUDED.phone, email = EXCLUDED.email, \
                     first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, company = EXCLUDED.company"
                )
            ),
            vec![
                records.iter().map(|r| r.email.clone()).collect(),
                records.iter().map(|r| r.first_name.clone()).collect(),
                records.iter().map(|r| r.last_name.clone()).collect(),
                records.iter().map(|r| r.company.clone()).collect(),
            ],
        ),
        ObjectKind::Company => (
            format!(
                "WITH up AS (INSERT INTO {t} (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, \
                   name, phone, local_pending) \
                 SELECT $1, $2, $3, * FROM UNNEST($4::text[], $5::jsonb[], $6::timestamptz[], $7::text[], $8::text[], \
                   $9::text[], $10::jsonb[]) {tail}) \
                 SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up",
                tail = upsert_tail
                    .replace("{t}", t)
                    .replace("{set}", "owner = EXCLUDED.owner, name = EXCLUDED.name, phone = EXCLUDED.phone")
            ),
            vec![],
        ),
        ObjectKind::Deal => (
            format!(
                "WITH up AS (INSERT INTO {t} (tenant_id, provider, connection_id, external_id, raw, remote_updated_at, owner, \
                   name, local_pending, company, currency, stage, amount, close_date) \
                 SELECT $1, $2, $3, i.id, i.raw, i.upd, i.owner, i.name, i.lp, i.company, i.currency, i.stage, i.amount, i.close \
                 FROM UNNEST($4::text[], $5::jsonb[], $6::timestamptz[], $7::text[], $8::text[], $10::jsonb[], \
                   $11::text[], $12::text[], $13::text[], $14::float8[], $15::date[]) \
                   AS i(id, raw, upd, owner, name, lp, company, currency, stage, amount, close) \
                 WHERE cardinality($9::text[]) >= 0 {tail}) \
                 SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up",
                tail = upsert_tail.replace("{t}", t).replace(
                    "{set}",
                    "owner = EXCLUDED.owner, name = EXCLUDED.name, company = EXCLUDED.company, currency = EXCLUDED.currency, \
                     stage = EXCLUDED.stage, amount = EXCLUDED.amount, close_date = EXCLUDED.close_date"
                )
            ),
            vec![
                records.iter().map(|r| r.company.clone()).collect(),
                records.iter().map(|r| r.currency.clone()).collect(),
                records.iter().map(|r| r.stage.clone()).collect(),
            ],
        ),
    };
    let mut q = sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(sql))
        .bind(scope.tenant)
        .bind(scope.provider)
        .bind(scope.connection)
        .bind(&ids)
        .bind(&raw)
        .bind(&updated_at)
        .bind(&owner)
        .bind(&name);
    if object == ObjectKind::Deal {
        // $9 is unused for deals (no phone column): keep the numbering by using it as a no-op cast.
        q = q.bind(Vec::<Option<String>>::new()).bind(&local);
    } else {
        q = q.bind(&phone).bind(&local);
    }
    for col in &extra {
        q = q.bind(col);
    }
    if object == ObjectKind::Deal {
        let amount: Vec<Option<f64>> = records.iter().map(|r| r.amount).collect();
        let close: Vec<Option<chrono::NaiveDate>> = records.iter().map(|r| r.close_date).collect();
        q = q.bind(amount).bind(close);
    }
    q.fetch_one(&mut *tx).await
}

/// Records a local pending change on critical fields (an action changed them at the CRM):
/// the local columns take the new values at once, and the next sync either confirms them
/// (the CRM has them: no longer pending) or records a conflict and keeps them. Fields other
/// than the object's critical ones (and values other than strings or null) are ignored.
/// Returns whether the record is in the local store (a record not synced yet has nothing to
/// protect: its first sync brings the CRM's values).
///
/// Holds the records lock exclusive: it waits for the pages of these records being written,
/// and the pages after it see the mark.
pub async fn mark_pending(
    pool: &sqlx::PgPool,
    tenant: &str,
    provider: &str,
    object: ObjectKind,
    external_id: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<bool, sqlx::Error> {
    let critical = critical_fields(object);
    let fields: serde_json::Map<String, Value> = fields
        .iter()
        .filter(|(k, v)| critical.contains(&k.as_str()) && (v.is_string() || v.is_null()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if fields.is_empty() {
        return Ok(false);
    }
    // Column names come from `critical_fields`, never from the input.
    let sets: Vec<String> = critical
        .iter()
        .filter(|f| fields.contains_key(**f))
        .enumerate()
        .map(|(i, f)| format!("{f} = ${}", i + 5))
        .collect();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET local_pending = COALESCE(local_pending, '{{}}'::jsonb) || $4, {} \
         WHERE tenant_id = $1 AND provider = $2 AND external_id = $3",
        table(object),
        sets.join(", ")
    )))
    .bind(tenant)
    .bind(provider)
    .bind(external_id)
    .bind(Value::Object(fields.clone()));
    for f in critical.iter().filter(|f| fields.contains_key(**f)) {
        q = q.bind(fields.get(*f).and_then(Value::as_str).map(str::to_owned));
    }
    let mut tx = pool.begin().await?;
    lock_records(&mut tx, tenant, provider, object).await?;
    let marked = q.execute(&mut *tx).await?.rows_affected() > 0;
    tx.commit().await?;
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use super::same_value;

    #[test]
    fn the_crm_has_our_value_whatever_its_case_for_emails_and_spaces_and_empties() {
        assert!(same_value("email", Some(" Ann@Example.com"), Some("ann@example.com")));
        assert!(!same_value("first_name", Some("ann"), Some("Ann")), "names keep their case");
        assert!(same_value("first_name", Some(""), None), "empty is no value");
        assert!(same_value("last_name", Some("Lee "), Some("Lee")));
        assert!(!same_value("email", Some("a@example.com"), Some("b@example.com")));
        assert!(!same_value("email", None, Some("b@example.com")));
    }
}
