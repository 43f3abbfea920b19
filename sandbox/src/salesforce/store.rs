//! One Salesforce org's records: a table per sObject type with its indexes, the delete log, the
//! change journal, and the deterministic seeding of a fresh org.
//!
//! Each [`Table`] keeps every record (live and in the Recycle Bin) by id as an `Arc<Record>`, so a
//! query cursor can snapshot its result set by cloning pointers; an ordered `(SystemModstamp, id)`
//! index of live records for changed-since queries and `updated/`; a `(deletedDate, id)` index for
//! `deleted/` and `queryAll`; and a value→ids map per External ID field.
//!
//! Invariants: every live record is in `by_modstamp` exactly once under its current
//! `SystemModstamp`, every deleted record in `deleted` exactly once under its deletion time, and the
//! external-id maps hold exactly the live records' values; all writes go through a [`Tx`] (stamp the
//! logical time truncated to the second, as Salesforce stores date-times, then journal on commit or
//! undo on rollback), so `allOrNone` batches leave no trace when they fail.

use super::schema::{self, ACTION_ID_FIELD, FieldType, SObject, STAGES, Val};
use crate::changes::{Change, ChangeOp, Journal};
use crate::clock::Millis;
use crate::seed::{self, pick, rng_for};
use chrono::NaiveDate;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Deleted records stay in the Recycle Bin (visible to `queryAll` and `deleted/`) this long.
pub const RECYCLE_BIN_MS: Millis = 15 * 86_400_000;

/// Truncates a time to the second: Salesforce date-times carry no sub-second part.
pub fn to_second(ms: Millis) -> Millis {
    ms - ms.rem_euclid(1000)
}

/// One record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// 18-character id.
    pub id: String,
    /// Its type.
    pub object: SObject,
    /// Non-system fields with a value (derived ones included).
    pub fields: BTreeMap<&'static str, Val>,
    /// `CreatedDate`.
    pub created_at: Millis,
    /// `CreatedById`.
    pub created_by: String,
    /// `LastModifiedDate` (user changes).
    pub modified_at: Millis,
    /// `LastModifiedById`.
    pub modified_by: String,
    /// `SystemModstamp` (every change, including deletion).
    pub modstamp: Millis,
    /// When it was deleted (moved to the Recycle Bin).
    pub deleted_at: Option<Millis>,
}

impl Record {
    /// A field's value, including system fields.
    pub fn get(&self, name: &str) -> Option<Val> {
        match name {
            "Id" => Some(Val::Str(self.id.clone())),
            "IsDeleted" => Some(Val::Bool(self.deleted_at.is_some())),
            "CreatedDate" => Some(Val::DateTime(self.created_at)),
            "CreatedById" => Some(Val::Str(self.created_by.clone())),
            "LastModifiedDate" => Some(Val::DateTime(self.modified_at)),
            "LastModifiedById" => Some(Val::Str(self.modified_by.clone())),
            "SystemModstamp" => Some(Val::DateTime(self.modstamp)),
            other => self.fields.get(other).cloned(),
        }
    }

    /// Whether the record is live (not in the Recycle Bin).
    pub fn is_live(&self) -> bool {
        self.deleted_at.is_none()
    }

    fn text(&self, name: &str) -> Option<&str> {
        match self.fields.get(name) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Recomputes derived fields (`Name`, `IsClosed`, `IsWon`, `IsConverted`).
    fn derive(&mut self) {
        match self.object {
            SObject::Contact | SObject::Lead => {
                let name = [self.text("FirstName"), self.text("LastName")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                self.fields.insert("Name", Val::Str(name));
                if self.object == SObject::Lead {
                    self.fields.insert("IsConverted", Val::Bool(false));
                }
            }
            SObject::Opportunity => {
                let stage = self.text("StageName").unwrap_or("");
                let (closed, won) =
                    STAGES.iter().find(|s| s.0 == stage).map(|s| (s.2, s.3)).unwrap_or((false, false));
                self.fields.insert("IsClosed", Val::Bool(closed));
                self.fields.insert("IsWon", Val::Bool(won));
            }
            SObject::Task => {
                let closed = self.text("Status") == Some("Completed");
                self.fields.insert("IsClosed", Val::Bool(closed));
            }
            _ => {}
        }
    }
}

/// One type's records and indexes.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Every record (live and deleted) by id.
    pub records: BTreeMap<String, Arc<Record>>,
    /// `(SystemModstamp, id)` of live records.
    pub by_modstamp: BTreeSet<(Millis, String)>,
    /// `(deletedDate, id)` of deleted records (the delete log).
    pub deleted: BTreeSet<(Millis, String)>,
    /// External ID field → lower-cased value → ids of live records holding it.
    pub external: HashMap<&'static str, HashMap<String, BTreeSet<String>>>,
}

impl Table {
    fn index(&mut self, r: &Record) {
        match r.deleted_at {
            None => {
                self.by_modstamp.insert((r.modstamp, r.id.clone()));
                for (name, v) in &r.fields {
                    if is_external(r.object, name) {
                        self.external
                            .entry(name)
                            .or_default()
                            .entry(v.text().to_lowercase())
                            .or_default()
                            .insert(r.id.clone());
                    }
                }
            }
            Some(at) => {
                self.deleted.insert((at, r.id.clone()));
            }
        }
    }

    fn unindex(&mut self, r: &Record) {
        match r.deleted_at {
            None => {
                self.by_modstamp.remove(&(r.modstamp, r.id.clone()));
                for (name, v) in &r.fields {
                    if is_external(r.object, name)
                        && let Some(m) = self.external.get_mut(name)
                    {
                        let key = v.text().to_lowercase();
                        if let Some(ids) = m.get_mut(&key) {
                            ids.remove(&r.id);
                            if ids.is_empty() {
                                m.remove(&key);
                            }
                        }
                    }
                }
            }
            Some(at) => {
                self.deleted.remove(&(at, r.id.clone()));
            }
        }
    }

    /// Live records whose External ID field `field` holds `value` (case-insensitive).
    pub fn by_external(&self, field: &str, value: &str) -> Vec<String> {
        self.external
            .get(field)
            .and_then(|m| m.get(&value.trim().to_lowercase()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A live record.
    pub fn live(&self, id: &str) -> Option<&Arc<Record>> {
        self.records.get(id).filter(|r| r.is_live())
    }

    /// Live record count.
    pub fn live_count(&self) -> usize {
        self.by_modstamp.len()
    }
}

fn is_external(obj: SObject, name: &str) -> bool {
    obj.field(name).is_some_and(|f| f.external_id)
}

/// An undo step of a transaction.
#[derive(Clone, Debug)]
enum Undo {
    /// A record was inserted: remove it.
    Inserted(SObject, String),
    /// A record was replaced: put the old one back.
    Replaced(Arc<Record>),
}

/// A set of writes that is journaled together on commit, or undone.
#[derive(Debug, Default)]
#[must_use = "a transaction must be committed or rolled back"]
pub struct Tx {
    undo: Vec<Undo>,
    changes: Vec<(Millis, ChangeOp, SObject, String)>,
}

impl Tx {
    /// A new, empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the writes to the journal (with `source`) and returns the changes.
    pub fn commit(self, data: &mut OrgData, source: &str) -> Vec<Change> {
        self.changes
            .into_iter()
            .map(|(at, op, obj, id)| data.journal.push(at, op, obj.name(), &id, source))
            .collect()
    }

    /// Undoes every write, newest first.
    pub fn rollback(self, data: &mut OrgData) {
        for u in self.undo.into_iter().rev() {
            match u {
                Undo::Inserted(obj, id) => {
                    let t = data.table_mut(obj);
                    if let Some(r) = t.records.remove(&id) {
                        t.unindex(&r);
                    }
                }
                Undo::Replaced(old) => {
                    let t = data.table_mut(old.object);
                    if let Some(cur) = t.records.remove(&old.id) {
                        t.unindex(&cur);
                    }
                    t.index(&old);
                    t.records.insert(old.id.clone(), old);
                }
            }
        }
    }
}

/// One org's data.
#[derive(Clone, Debug, Default)]
pub struct OrgData {
    tables: [Table; 7],
    /// Every change.
    pub journal: Journal,
    /// Base of this org's id counters (ids of different orgs never collide).
    id_base: u64,
    next_seq: u64,
    /// The org's users (ids), the first being the integration user tokens speak for.
    pub users: Vec<String>,
}

/// Ids handed out per org before the counter base of the next org.
const ORG_ID_SPACE: u64 = 10_000_000_000;

impl OrgData {
    /// An empty org whose ids derive from `org_index`.
    pub fn new(org_index: u64) -> Self {
        Self { id_base: (org_index + 1) * ORG_ID_SPACE, next_seq: 1_000_000, ..Self::default() }
    }

    /// One type's table.
    pub fn table(&self, obj: SObject) -> &Table {
        &self.tables[obj.index()]
    }

    fn table_mut(&mut self, obj: SObject) -> &mut Table {
        &mut self.tables[obj.index()]
    }

    /// Mints the next id for `obj`.
    pub fn mint_id(&mut self, obj: SObject) -> String {
        self.next_seq += 1;
        schema::make_id(obj.key_prefix(), self.id_base + self.next_seq)
    }

    /// Live record count per type.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        SObject::ALL.iter().map(|o| (o.name(), self.table(*o).live_count())).collect()
    }

    /// Deleted (Recycle Bin) record count per type.
    pub fn deleted_counts(&self) -> BTreeMap<&'static str, usize> {
        SObject::ALL.iter().map(|o| (o.name(), self.table(*o).deleted.len())).collect()
    }

    /// Any record of any type, by id (the key prefix names the table).
    pub fn find(&self, id: &str) -> Option<&Arc<Record>> {
        let obj = SObject::from_id(id)?;
        self.table(obj).records.get(id)
    }

    /// A record, unless it was purged from the Recycle Bin (deleted more than 15 days ago).
    pub fn visible(&self, obj: SObject, id: &str, now: Millis) -> Option<&Arc<Record>> {
        self.table(obj).records.get(id).filter(|r| r.deleted_at.is_none_or(|d| now - d < RECYCLE_BIN_MS))
    }

    fn put(&mut self, tx: &mut Tx, rec: Record, op: ChangeOp, at: Millis) {
        let t = self.table_mut(rec.object);
        match t.records.remove(&rec.id) {
            Some(old) => {
                t.unindex(&old);
                tx.undo.push(Undo::Replaced(old));
            }
            None => tx.undo.push(Undo::Inserted(rec.object, rec.id.clone())),
        }
        t.index(&rec);
        tx.changes.push((at, op, rec.object, rec.id.clone()));
        t.records.insert(rec.id.clone(), Arc::new(rec));
    }

    /// Creates a record from already validated fields (see [`OrgData::check_write`]), stamped at
    /// `now` (truncated to the second) by `user`. Returns its id.
    pub fn create(
        &mut self,
        tx: &mut Tx,
        obj: SObject,
        fields: BTreeMap<&'static str, Val>,
        now: Millis,
        user: &str,
    ) -> String {
        let at = to_second(now);
        let id = self.mint_id(obj);
        let mut rec = Record {
            id,
            object: obj,
            fields,
            created_at: at,
            created_by: user.to_owned(),
            modified_at: at,
            modified_by: user.to_owned(),
            modstamp: at,
            deleted_at: None,
        };
        apply_defaults(&mut rec, user);
        rec.derive();
        let id = rec.id.clone();
        self.put(tx, rec, ChangeOp::Create, at);
        id
    }

    /// Updates a live record (`None` values clear fields). Every update bumps `LastModifiedDate` and
    /// `SystemModstamp`, even when nothing changes (as a no-op `PATCH` does in Salesforce).
    pub fn update(
        &mut self,
        tx: &mut Tx,
        obj: SObject,
        id: &str,
        changes: &BTreeMap<&'static str, Option<Val>>,
        now: Millis,
        user: &str,
    ) -> Result<(), WriteError> {
        let at = to_second(now);
        let Some(old) = self.table(obj).records.get(id) else {
            return Err(WriteError::NotFound);
        };
        if !old.is_live() {
            return Err(WriteError::Deleted);
        }
        let mut rec = (**old).clone();
        for (k, v) in changes {
            match v {
                Some(v) => {
                    rec.fields.insert(k, v.clone());
                }
                None => {
                    rec.fields.remove(k);
                }
            }
        }
        rec.modified_at = at.max(rec.modified_at);
        rec.modstamp = at.max(rec.modstamp);
        rec.modified_by = user.to_owned();
        rec.derive();
        self.put(tx, rec, ChangeOp::Update, at);
        Ok(())
    }

    /// Moves a live record to the Recycle Bin: `IsDeleted` becomes true, `SystemModstamp` moves, a
    /// delete-log entry is written, and its External ID values are released.
    pub fn delete(&mut self, tx: &mut Tx, obj: SObject, id: &str, now: Millis) -> Result<(), WriteError> {
        let at = to_second(now);
        let Some(old) = self.table(obj).records.get(id) else {
            return Err(WriteError::NotFound);
        };
        if !old.is_live() {
            return Err(WriteError::Deleted);
        }
        let mut rec = (**old).clone();
        rec.deleted_at = Some(at);
        rec.modstamp = at.max(rec.modstamp);
        self.put(tx, rec, ChangeOp::Delete, at);
        Ok(())
    }

    /// Checks a create or update against the org's data: required fields (on create, or cleared on
    /// update), references to live records of the right type, External ID uniqueness, and the
    /// optional contact duplicate rule. `existing` is the record being updated.
    pub fn check_write(
        &self,
        obj: SObject,
        fields: &BTreeMap<&'static str, Option<Val>>,
        existing: Option<&Record>,
        opts: &WriteOptions,
    ) -> Result<(), WriteError> {
        let mut missing = Vec::new();
        for def in obj.fields() {
            if !def.required {
                continue;
            }
            let given = fields.get(def.name);
            let absent = match (existing, given) {
                (None, None) | (_, Some(None)) => true,
                (Some(_), None) | (_, Some(Some(_))) => false,
            };
            if absent {
                missing.push(def.name);
            }
        }
        if !missing.is_empty() {
            return Err(WriteError::RequiredMissing(missing.into_iter().map(str::to_owned).collect()));
        }
        for (name, v) in fields {
            let Some(def) = obj.field(name) else { continue };
            let Some(Val::Str(target)) = v else { continue };
            if let FieldType::Reference(types) = def.ty {
                let Some(target_obj) = SObject::from_id(target).filter(|t| types.contains(t)) else {
                    return Err(WriteError::WrongReferenceType {
                        field: def.name,
                        label: def.label,
                        id: target.clone(),
                    });
                };
                match self.table(target_obj).records.get(target) {
                    Some(r) if r.is_live() => {}
                    Some(_) => return Err(WriteError::ReferenceDeleted { field: def.name }),
                    None => return Err(WriteError::ReferenceMissing { field: def.name }),
                }
            }
            if def.external_id && opts.unique_external_ids {
                let holders = self.table(obj).by_external(def.name, target);
                if let Some(other) = holders.into_iter().find(|h| existing.is_none_or(|e| &e.id != h)) {
                    return Err(WriteError::DuplicateValue { field: def.name, existing: other });
                }
            }
        }
        if obj == SObject::Contact && opts.contact_duplicate_rule {
            let email = match fields.get("Email") {
                Some(Some(Val::Str(e))) => Some(e.to_lowercase()),
                _ => None,
            };
            if let Some(email) = email {
                let dup = self.table(SObject::Contact).records.values().find(|r| {
                    r.is_live()
                        && existing.is_none_or(|e| e.id != r.id)
                        && matches!(r.fields.get("Email"), Some(Val::Str(x)) if x.to_lowercase() == email)
                });
                if let Some(d) = dup {
                    return Err(WriteError::DuplicatesDetected { existing: d.id.clone() });
                }
            }
        }
        Ok(())
    }

    /// A deterministic, uniformly chosen live record of `obj` (linear in the table size; mutation
    /// batches are small).
    pub fn pick_live(&self, obj: SObject, rng: &mut ChaCha8Rng) -> Option<String> {
        let t = self.table(obj);
        if t.by_modstamp.is_empty() {
            return None;
        }
        let n = rng.random_range(0..t.by_modstamp.len());
        t.by_modstamp.iter().nth(n).map(|(_, id)| id.clone())
    }
}

/// Org-level switches that change what a write accepts.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// External ID fields are also unique (a second record with the same value → `DUPLICATE_VALUE`).
    pub unique_external_ids: bool,
    /// A duplicate rule blocks contacts whose email matches a live contact (`DUPLICATES_DETECTED`).
    pub contact_duplicate_rule: bool,
}

/// Why a write failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// No such record.
    NotFound,
    /// The record is in the Recycle Bin.
    Deleted,
    /// Required fields missing (or cleared).
    RequiredMissing(Vec<String>),
    /// A reference names an id of a type the field cannot point to.
    WrongReferenceType {
        /// The field.
        field: &'static str,
        /// Its label.
        label: &'static str,
        /// The id given.
        id: String,
    },
    /// A reference names a record that does not exist.
    ReferenceMissing {
        /// The field.
        field: &'static str,
    },
    /// A reference names a deleted record.
    ReferenceDeleted {
        /// The field.
        field: &'static str,
    },
    /// A unique External ID value is taken.
    DuplicateValue {
        /// The field.
        field: &'static str,
        /// The record holding it.
        existing: String,
    },
    /// The contact duplicate rule matched.
    DuplicatesDetected {
        /// The matching contact.
        existing: String,
    },
}

fn apply_defaults(rec: &mut Record, user: &str) {
    fn default(rec: &mut Record, k: &'static str, v: Val) {
        rec.fields.entry(k).or_insert(v);
    }
    let text = |v: &str| Val::Str(v.to_owned());
    match rec.object {
        SObject::Task => {
            default(rec, "Status", text("Not Started"));
            default(rec, "Priority", text("Normal"));
            default(rec, "TaskSubtype", text("Task"));
        }
        SObject::Lead => default(rec, "Status", text("Open - Not Contacted")),
        SObject::Note => default(rec, "IsPrivate", Val::Bool(false)),
        SObject::Opportunity => {
            let stage = match rec.fields.get("StageName") {
                Some(Val::Str(s)) => s.clone(),
                _ => String::new(),
            };
            if let Some(s) = STAGES.iter().find(|s| s.0 == stage) {
                default(rec, "Probability", Val::Num(s.1));
            }
        }
        _ => {}
    }
    if rec.object.field("OwnerId").is_some() {
        default(rec, "OwnerId", text(user));
    }
}

/// The text a test may search "created objects" for: names, subject, body, email, and the action id.
pub fn searchable_text(rec: &Record) -> String {
    let keys: &[&str] = match rec.object {
        SObject::Contact | SObject::Lead => &["Name", "Email"],
        SObject::Account | SObject::Opportunity => &["Name"],
        SObject::Task => &["Subject", "Description"],
        SObject::Note => &["Title", "Body"],
        SObject::User => &["Name"],
    };
    keys.iter()
        .chain(std::iter::once(&ACTION_ID_FIELD))
        .filter_map(|k| rec.fields.get(k).map(Val::text))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The org's users: the integration user (whom tokens speak for) and two colleagues.
pub const USER_NAMES: &[(&str, &str)] = &[("Integration", "User"), ("Avery", "Stone"), ("Jordan", "Reyes")];

/// Builds plausible fields for a new record of `obj` (seeding and mutation creates). `n` makes
/// emails unique; `refs` supplies ids to link to (accounts, contacts, opportunities, users).
pub fn fake_fields(
    obj: SObject,
    rng: &mut ChaCha8Rng,
    n: u64,
    org_tag: &str,
    at: Millis,
    refs: &Refs,
) -> BTreeMap<&'static str, Val> {
    let mut m = BTreeMap::new();
    let first = pick(rng, seed::FIRST_NAMES);
    let last = pick(rng, seed::LAST_NAMES);
    let company = format!("{} {}", pick(rng, seed::COMPANY_PREFIXES), pick(rng, seed::COMPANY_SUFFIXES));
    let domain = format!("{}{}.example", company.split(' ').next().unwrap_or("acme").to_lowercase(), n % 97);
    let s = |v: &str| Val::Str(v.to_owned());
    let owner = refs.pick(rng, &refs.users);
    match obj {
        SObject::Account => {
            m.insert("Name", Val::Str(company.clone()));
            m.insert("Type", s(pick(rng, schema::ACCOUNT_TYPES)));
            m.insert("Industry", s(pick(rng, schema::INDUSTRIES)));
            m.insert("Website", Val::Str(format!("https://www.{domain}")));
            m.insert("Phone", Val::Str(format!("+1-555-{:04}", rng.random_range(0..10_000))));
            m.insert("BillingCity", s(pick(rng, seed::CITIES)));
            m.insert("BillingCountry", s(pick(rng, seed::COUNTRIES)));
            m.insert("NumberOfEmployees", Val::Int(rng.random_range(2..5_000)));
            m.insert("AnnualRevenue", Val::Num((rng.random_range(10..50_000u64) * 1000) as f64));
        }
        SObject::Contact => {
            m.insert("FirstName", s(first));
            m.insert("LastName", s(last));
            m.insert(
                "Email",
                Val::Str(format!("{}.{}.{n}.{org_tag}@{domain}", first.to_lowercase(), last.to_lowercase())),
            );
            m.insert("Phone", Val::Str(format!("+1-555-{:04}", rng.random_range(0..10_000))));
            m.insert("Title", s(pick(rng, &["CEO", "CTO", "VP Sales", "Engineer", "Buyer", "Analyst"])));
            m.insert("MailingCity", s(pick(rng, seed::CITIES)));
            m.insert("LeadSource", s(pick(rng, schema::LEAD_SOURCES)));
            if let Some(a) = refs.pick(rng, &refs.accounts) {
                m.insert("AccountId", Val::Str(a));
            }
        }
        SObject::Opportunity => {
            let stage = schema::STAGES[rng.random_range(0..schema::STAGES.len())].0;
            m.insert(
                "Name",
                Val::Str(format!(
                    "{company} - {}",
                    pick(rng, &["New licence", "Expansion", "Renewal", "Pilot"])
                )),
            );
            m.insert("StageName", s(stage));
            m.insert("Amount", Val::Num((rng.random_range(1..500u64) * 100) as f64));
            m.insert("CloseDate", Val::Date(date_of(at + rng.random_range(1..120i64) * 86_400_000)));
            m.insert("Type", s(pick(rng, schema::OPPORTUNITY_TYPES)));
            if let Some(a) = refs.pick(rng, &refs.accounts) {
                m.insert("AccountId", Val::Str(a));
            }
        }
        SObject::Task => {
            m.insert("Subject", Val::Str(format!("{} {first} {last}", pick(rng, seed::ACTIVITY_VERBS))));
            m.insert(
                "Description",
                Val::Str(format!(
                    "Discuss {} and {}.",
                    pick(rng, seed::NOTE_WORDS),
                    pick(rng, seed::NOTE_WORDS)
                )),
            );
            m.insert("Status", s(pick(rng, schema::TASK_STATUSES)));
            m.insert("Priority", s(pick(rng, schema::TASK_PRIORITIES)));
            m.insert("ActivityDate", Val::Date(date_of(at + rng.random_range(0..30i64) * 86_400_000)));
            if rng.random_bool(0.3) {
                m.insert("TaskSubtype", s("Call"));
                m.insert("CallType", s(pick(rng, &["Inbound", "Outbound"])));
                m.insert("CallDurationInSeconds", Val::Int(rng.random_range(10..3_600)));
            }
            if let Some(c) = refs.pick(rng, &refs.contacts) {
                m.insert("WhoId", Val::Str(c));
            }
            if let Some(o) = refs.pick(rng, &refs.opportunities) {
                m.insert("WhatId", Val::Str(o));
            }
        }
        SObject::Lead => {
            m.insert("FirstName", s(first));
            m.insert("LastName", s(last));
            m.insert("Company", Val::Str(company));
            m.insert(
                "Email",
                Val::Str(format!(
                    "{}.{}.lead{n}.{org_tag}@{domain}",
                    first.to_lowercase(),
                    last.to_lowercase()
                )),
            );
            m.insert("Status", s(pick(rng, &["Open - Not Contacted", "Working - Contacted"])));
            m.insert("LeadSource", s(pick(rng, schema::LEAD_SOURCES)));
        }
        SObject::Note => {
            m.insert("Title", Val::Str(format!("Notes on {}", pick(rng, seed::NOTE_WORDS))));
            m.insert(
                "Body",
                Val::Str(format!(
                    "{} {} {}",
                    pick(rng, seed::NOTE_WORDS),
                    pick(rng, seed::NOTE_WORDS),
                    pick(rng, seed::NOTE_WORDS)
                )),
            );
            if let Some(c) = refs.pick(rng, &refs.contacts) {
                m.insert("ParentId", Val::Str(c));
            }
        }
        SObject::User => {}
    }
    if let Some(o) = owner
        && obj.field("OwnerId").is_some()
    {
        m.insert("OwnerId", Val::Str(o));
    }
    m
}

/// Fields a mutation update changes on an existing record of `obj`.
pub fn fake_update(obj: SObject, rng: &mut ChaCha8Rng, at: Millis) -> BTreeMap<&'static str, Option<Val>> {
    let mut m = BTreeMap::new();
    let s = |v: &str| Some(Val::Str(v.to_owned()));
    match obj {
        SObject::Account => {
            m.insert("NumberOfEmployees", Some(Val::Int(rng.random_range(2..5_000))));
            m.insert("Industry", s(pick(rng, schema::INDUSTRIES)));
        }
        SObject::Contact => {
            m.insert("Phone", Some(Val::Str(format!("+1-555-{:04}", rng.random_range(0..10_000)))));
            m.insert("Title", s(pick(rng, &["CEO", "CTO", "VP Sales", "Engineer", "Buyer", "Analyst"])));
        }
        SObject::Opportunity => {
            m.insert("StageName", s(schema::STAGES[rng.random_range(0..schema::STAGES.len())].0));
            m.insert("Amount", Some(Val::Num((rng.random_range(1..500u64) * 100) as f64)));
        }
        SObject::Task => {
            m.insert("Status", s(pick(rng, schema::TASK_STATUSES)));
            m.insert("Priority", s(pick(rng, schema::TASK_PRIORITIES)));
        }
        SObject::Lead => {
            m.insert("Status", s(pick(rng, &["Working - Contacted", "Closed - Not Converted"])));
        }
        SObject::Note => {
            m.insert(
                "Body",
                Some(Val::Str(format!(
                    "Updated: {} at {}",
                    pick(rng, seed::NOTE_WORDS),
                    schema::format_datetime(at)
                ))),
            );
        }
        SObject::User => {}
    }
    m
}

/// Ids available to link new records to.
#[derive(Clone, Debug, Default)]
pub struct Refs {
    /// Users (owners).
    pub users: Vec<String>,
    /// Accounts.
    pub accounts: Vec<String>,
    /// Contacts.
    pub contacts: Vec<String>,
    /// Opportunities.
    pub opportunities: Vec<String>,
}

impl Refs {
    fn pick(&self, rng: &mut ChaCha8Rng, from: &[String]) -> Option<String> {
        if from.is_empty() { None } else { Some(from[rng.random_range(0..from.len())].clone()) }
    }

    /// The live ids of an org, for mutation creates.
    pub fn of(data: &OrgData) -> Self {
        let live =
            |o: SObject| data.table(o).by_modstamp.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>();
        Refs {
            users: data.users.clone(),
            accounts: live(SObject::Account),
            contacts: live(SObject::Contact),
            opportunities: live(SObject::Opportunity),
        }
    }
}

fn date_of(ms: Millis) -> NaiveDate {
    crate::clock::to_datetime(ms).date_naive()
}

/// Seeds a fresh org: three users, then `counts[type.index()]` records of each writable type,
/// deterministically from `seed` and the org id, with creation times spread over the 90 days before
/// `now` and modification times between creation and `now` (whole seconds; a third never modified).
/// Accounts come first so contacts and opportunities can point at them, then contacts and
/// opportunities, so tasks and notes can point at those.
pub fn seed_org(seed: u64, org_index: u64, org_id: &str, counts: [usize; 7], now: Millis) -> OrgData {
    const DAY: Millis = 86_400_000;
    let mut data = OrgData::new(org_index);
    let now = to_second(now);
    let org_tag = org_id.get(org_id.len().saturating_sub(6)..).unwrap_or(org_id).to_lowercase();
    let created = now - 365 * DAY;
    for (first, last) in USER_NAMES {
        let id = data.mint_id(SObject::User);
        let mut fields = BTreeMap::new();
        fields.insert("FirstName", Val::Str((*first).to_owned()));
        fields.insert("LastName", Val::Str((*last).to_owned()));
        fields.insert("Name", Val::Str(format!("{first} {last}")));
        fields.insert(
            "Username",
            Val::Str(format!("{}.{}@{org_tag}.sandbox.test", first.to_lowercase(), last.to_lowercase())),
        );
        fields.insert(
            "Email",
            Val::Str(format!("{}.{}@{org_tag}.sandbox.test", first.to_lowercase(), last.to_lowercase())),
        );
        fields.insert("IsActive", Val::Bool(true));
        let rec = Record {
            id: id.clone(),
            object: SObject::User,
            fields,
            created_at: created,
            created_by: id.clone(),
            modified_at: created,
            modified_by: id.clone(),
            modstamp: created,
            deleted_at: None,
        };
        data.users.push(id.clone());
        let t = data.table_mut(SObject::User);
        t.index(&rec);
        t.records.insert(id, Arc::new(rec));
    }
    let mut refs = Refs { users: data.users.clone(), ..Refs::default() };
    for obj in [
        SObject::Account,
        SObject::Contact,
        SObject::Opportunity,
        SObject::Lead,
        SObject::Task,
        SObject::Note,
    ] {
        let n_records = counts[obj.index()];
        let mut rng = rng_for(seed, &["salesforce", org_id, obj.name()]);
        // Times are drawn first and sorted by creation, so ids increase with creation time.
        let mut times: Vec<(Millis, Millis)> = (0..n_records)
            .map(|_| {
                let c = to_second(now - rng.random_range(DAY..90 * DAY));
                let m = if rng.random_bool(0.33) { c } else { to_second(rng.random_range(c..now)) };
                (c, m.max(c))
            })
            .collect();
        times.sort();
        let mut ids = Vec::with_capacity(n_records);
        for (i, (c, m)) in times.into_iter().enumerate() {
            let fields = fake_fields(obj, &mut rng, i as u64 + 1, &org_tag, c, &refs);
            let user = refs.users.first().cloned().unwrap_or_default();
            let modifier =
                refs.users.get(rng.random_range(0..refs.users.len().max(1))).cloned().unwrap_or_default();
            let id = data.mint_id(obj);
            let mut rec = Record {
                id: id.clone(),
                object: obj,
                fields,
                created_at: c,
                created_by: user.clone(),
                modified_at: m,
                modified_by: if m == c { user.clone() } else { modifier },
                modstamp: m,
                deleted_at: None,
            };
            apply_defaults(&mut rec, &user);
            rec.derive();
            let t = data.table_mut(obj);
            t.index(&rec);
            t.records.insert(id.clone(), Arc::new(rec));
            ids.push(id);
        }
        match obj {
            SObject::Account => refs.accounts = ids,
            SObject::Contact => refs.contacts = ids,
            SObject::Opportunity => refs.opportunities = ids,
            _ => {}
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: usize) -> [usize; 7] {
        let mut c = [n; 7];
        c[SObject::User.index()] = 0;
        c
    }

    #[test]
    fn seeding_is_deterministic_and_sized() {
        let a = seed_org(7, 0, "00D5g0000000001AAA", counts(40), 1_767_603_600_000);
        let b = seed_org(7, 0, "00D5g0000000001AAA", counts(40), 1_767_603_600_000);
        for obj in SObject::WRITABLE {
            assert_eq!(a.table(obj).live_count(), 40, "{obj:?}");
            let ra: Vec<_> = a.table(obj).records.values().map(|r| (**r).clone()).collect();
            let rb: Vec<_> = b.table(obj).records.values().map(|r| (**r).clone()).collect();
            assert_eq!(ra, rb);
        }
        assert_eq!(a.table(SObject::User).live_count(), 3);
        let c = seed_org(8, 0, "00D5g0000000001AAA", counts(40), 1_767_603_600_000);
        assert_ne!(
            a.table(SObject::Contact).records.values().next().map(|r| r.fields.clone()),
            c.table(SObject::Contact).records.values().next().map(|r| r.fields.clone())
        );
        // Every contact's account exists.
        for r in a.table(SObject::Contact).records.values() {
            if let Some(Val::Str(acc)) = r.fields.get("AccountId") {
                assert!(a.table(SObject::Account).live(acc).is_some());
            }
        }
    }

    #[test]
    fn rollback_undoes_every_write_and_journals_nothing() {
        let mut d = OrgData::new(0);
        d.users.push("005".into());
        let mut tx = Tx::new();
        let mut f = BTreeMap::new();
        f.insert("Name", Val::Str("Acme".into()));
        let id = d.create(&mut tx, SObject::Account, f, 1_500, "005");
        let changes = tx.commit(&mut d, "api");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].at_ms, 1_000, "stamps are whole seconds");
        let mut tx = Tx::new();
        let mut up = BTreeMap::new();
        up.insert("Name", Some(Val::Str("Renamed".into())));
        d.update(&mut tx, SObject::Account, &id, &up, 5_000, "005").expect("updated");
        let mut f2 = BTreeMap::new();
        f2.insert("Name", Val::Str("Other".into()));
        let other = d.create(&mut tx, SObject::Account, f2, 5_000, "005");
        tx.rollback(&mut d);
        assert!(!d.table(SObject::Account).records.contains_key(&other));
        let r = d.table(SObject::Account).live(&id).expect("still there");
        assert_eq!(r.get("Name"), Some(Val::Str("Acme".into())));
        assert_eq!(d.table(SObject::Account).by_modstamp.len(), 1);
        assert_eq!(d.journal.last_seq(), 1);
    }

    #[test]
    fn delete_moves_the_record_to_the_delete_log_and_releases_external_ids() {
        let mut d = OrgData::new(0);
        let mut tx = Tx::new();
        let mut f = BTreeMap::new();
        f.insert("Subject", Val::Str("Call".into()));
        f.insert(ACTION_ID_FIELD, Val::Str("m-1".into()));
        let id = d.create(&mut tx, SObject::Task, f, 1_000, "005");
        assert_eq!(d.table(SObject::Task).by_external(ACTION_ID_FIELD, "M-1"), vec![id.clone()]);
        d.delete(&mut tx, SObject::Task, &id, 9_000).expect("deleted");
        let _ = tx.commit(&mut d, "api");
        let t = d.table(SObject::Task);
        assert!(t.by_external(ACTION_ID_FIELD, "m-1").is_empty());
        assert_eq!(t.deleted.iter().next(), Some(&(9_000, id.clone())));
        assert_eq!(t.records.get(&id).and_then(|r| r.get("IsDeleted")), Some(Val::Bool(true)));
        assert!(d.visible(SObject::Task, &id, 9_000 + RECYCLE_BIN_MS - 1).is_some());
        assert!(d.visible(SObject::Task, &id, 9_000 + RECYCLE_BIN_MS).is_none(), "purged after 15 days");
    }
}
