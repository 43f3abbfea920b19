//! One Zoho CRM org's records: a table per module with its indexes, the recycle bin, the users, the
//! change journal, and the deterministic seeding of a fresh org.
//!
//! Each [`Table`] keeps live records by id, ordered `(Modified_Time, id)` and `(Created_Time, id)`
//! indexes for sorted listings and `If-Modified-Since`, one value→ids map per unique field, and the
//! deleted records (recycle bin) with a `(deleted_time, id)` index for `/deleted`.
//!
//! Invariants: times are stored at second precision (Zoho's `Modified_Time` has no milliseconds), so
//! the order clients see is exactly the stored order; every live record is in `by_modified` and
//! `by_created` exactly once under its current stamps; unique maps hold exactly the live records'
//! values (deleted records release theirs); every write goes through [`AccountData::create`],
//! [`AccountData::update`] or [`AccountData::delete`], which validate, stamp the logical time and append
//! to the journal.

use super::schema::{
    self, FieldDef, FieldType, FieldValue, MARKER_FIELD, Module, RecordError, STAGES, STANDARD_PIPELINE,
    Values,
};
use crate::changes::{Change, ChangeOp, Journal};
use crate::clock::Millis;
use crate::seed::{self, pick, rng_for};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A user of the org (record owner, creator, modifier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// CRM user id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Zoho account id of the user.
    pub zuid: u64,
}

/// One record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Record id.
    pub id: u64,
    /// Writable fields with values.
    pub fields: BTreeMap<&'static str, FieldValue>,
    /// `Created_Time`, epoch ms at second precision.
    pub created_at: Millis,
    /// `Modified_Time`, epoch ms at second precision.
    pub modified_at: Millis,
    /// `Created_By` user id.
    pub created_by: u64,
    /// `Modified_By` user id.
    pub modified_by: u64,
}

impl Record {
    /// A text-like field's value.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.fields.get(name) {
            Some(FieldValue::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// `Full_Name` of a contact.
    pub fn full_name(&self) -> Option<String> {
        let parts: Vec<&str> =
            [self.text("First_Name"), self.text("Last_Name")].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    /// The record's display name in module `m`.
    pub fn display_name(&self, m: Module) -> Option<String> {
        match m {
            Module::Contacts => self.full_name(),
            Module::Notes => self
                .text("Note_Title")
                .or_else(|| self.text("Note_Content"))
                .map(|s| s.chars().take(60).collect()),
            other => self.text(other.display_field()).map(str::to_owned),
        }
    }
}

/// A deleted record (in the recycle bin, or permanently deleted after the retention).
#[derive(Clone, Debug, PartialEq)]
pub struct Deleted {
    /// The record as it was.
    pub record: Record,
    /// `deleted_time`, epoch ms at second precision.
    pub deleted_at: Millis,
    /// Who deleted it.
    pub deleted_by: u64,
    /// Its display name at deletion.
    pub display_name: Option<String>,
}

/// One module's records and indexes.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Live records by id.
    pub live: BTreeMap<u64, Record>,
    /// `(Modified_Time, id)` of live records.
    pub by_modified: BTreeSet<(Millis, u64)>,
    /// `(Created_Time, id)` of live records.
    pub by_created: BTreeSet<(Millis, u64)>,
    /// Unique field → lower-cased value → ids of live records holding it.
    pub unique: HashMap<&'static str, HashMap<String, BTreeSet<u64>>>,
    /// Deleted records by id.
    pub deleted: BTreeMap<u64, Deleted>,
    /// `(deleted_time, id)` of deleted records.
    pub deleted_by_time: BTreeSet<(Millis, u64)>,
}

fn unique_key(v: &FieldValue) -> String {
    v.as_text().trim().to_lowercase()
}

impl Table {
    fn index(&mut self, m: Module, r: &Record) {
        self.by_modified.insert((r.modified_at, r.id));
        self.by_created.insert((r.created_at, r.id));
        for def in schema::fields(m).iter().filter(|d| d.unique) {
            if let Some(v) = r.fields.get(def.api_name) {
                self.unique.entry(def.api_name).or_default().entry(unique_key(v)).or_default().insert(r.id);
            }
        }
    }

    fn unindex(&mut self, m: Module, r: &Record) {
        self.by_modified.remove(&(r.modified_at, r.id));
        self.by_created.remove(&(r.created_at, r.id));
        for def in schema::fields(m).iter().filter(|d| d.unique) {
            if let Some(v) = r.fields.get(def.api_name)
                && let Some(map) = self.unique.get_mut(def.api_name)
            {
                let key = unique_key(v);
                if let Some(ids) = map.get_mut(&key) {
                    ids.remove(&r.id);
                    if ids.is_empty() {
                        map.remove(&key);
                    }
                }
            }
        }
    }

    /// Live records holding `value` in unique field `field`, lowest id first.
    pub fn find_unique(&self, field: &str, value: &FieldValue) -> Vec<u64> {
        self.unique
            .get(field)
            .and_then(|m| m.get(&unique_key(value)))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Who writes, when, through which door (`api`, `mutation`, `generator`, `control`).
#[derive(Clone, Copy, Debug)]
pub struct By<'a> {
    /// The acting user (`Created_By` / `Modified_By`).
    pub actor: u64,
    /// Logical now.
    pub now: Millis,
    /// The journal source.
    pub source: &'a str,
}

/// Validation switches that come from provider settings.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Contacts' `Email` refuses duplicates.
    pub unique_contact_email: bool,
}

/// One org's data.
#[derive(Clone, Debug)]
pub struct AccountData {
    tables: [Table; 6],
    /// Every change.
    pub journal: Journal,
    /// The org's users; the first is the admin who authorised the OAuth app.
    pub users: Vec<User>,
    /// Ids are `id_prefix * 10^12 + sequence`.
    pub id_prefix: u64,
    next_seq: u64,
}

/// The first record sequence number (ids look like `4150868000001000001`).
pub const FIRST_SEQ: u64 = 1_000_001;

/// Truncates to whole seconds, as Zoho stamps records.
pub fn to_second(ms: Millis) -> Millis {
    ms - ms.rem_euclid(1000)
}

impl AccountData {
    /// An empty org.
    pub fn new(id_prefix: u64, users: Vec<User>) -> Self {
        Self {
            tables: Default::default(),
            journal: Journal::default(),
            users,
            id_prefix,
            next_seq: FIRST_SEQ,
        }
    }

    /// The id of a module (`Parent_Id.module.id`).
    pub fn module_id(&self, m: Module) -> u64 {
        self.id_prefix * 1_000_000_000_000 + m.id_suffix()
    }

    /// One module's table.
    pub fn table(&self, m: Module) -> &Table {
        &self.tables[m.index()]
    }

    fn table_mut(&mut self, m: Module) -> &mut Table {
        &mut self.tables[m.index()]
    }

    /// A user by id.
    pub fn user(&self, id: u64) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// The admin user (owner of records created through the API).
    pub fn admin(&self) -> &User {
        &self.users[0]
    }

    /// Live record count per module.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        Module::ALL.iter().map(|m| (m.api_name(), self.table(*m).live.len())).collect()
    }

    /// Deleted record count per module.
    pub fn deleted_counts(&self) -> BTreeMap<&'static str, usize> {
        Module::ALL.iter().map(|m| (m.api_name(), self.table(*m).deleted.len())).collect()
    }

    /// A live record.
    pub fn get(&self, m: Module, id: u64) -> Option<&Record> {
        self.table(m).live.get(&id)
    }

    /// The display name of a live (or deleted) record, for lookups.
    pub fn name_of(&self, m: Module, id: u64) -> Option<String> {
        let t = self.table(m);
        match t.live.get(&id) {
            Some(r) => r.display_name(m),
            None => t.deleted.get(&id).and_then(|d| d.display_name.clone()),
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.id_prefix * 1_000_000_000_000 + self.next_seq;
        self.next_seq += 1;
        id
    }

    /// The module `What_Id` points into for a record being written: the request's `$se_module`, else
    /// the stored one.
    fn se_module(values: &Values, existing: Option<&Record>) -> Option<Module> {
        values
            .iter()
            .find(|(d, _)| d.ty == FieldType::SeModule)
            .map(|(_, v)| v.as_ref().map(FieldValue::as_text))
            .unwrap_or_else(|| existing.and_then(|r| r.text("$se_module")).map(str::to_owned))
            .and_then(|s| Module::parse(&s))
    }

    fn check_ref(&self, def: &FieldDef, v: &FieldValue, se: Option<Module>) -> Result<(), RecordError> {
        let bad = || RecordError::field("INVALID_DATA", "invalid data", def.api_name);
        match (def.ty, v) {
            (FieldType::Owner, FieldValue::Ref(id)) => self.user(*id).map(|_| ()).ok_or_else(bad),
            (FieldType::Lookup(target), FieldValue::Ref(id)) => {
                if self.get(target, *id).is_some() {
                    Ok(())
                } else {
                    Err(bad())
                }
            }
            (FieldType::WhatLookup, FieldValue::Ref(id)) => match se {
                None => Err(RecordError::mandatory("$se_module")),
                Some(m @ (Module::Accounts | Module::Deals)) => {
                    if self.get(m, *id).is_some() {
                        Ok(())
                    } else {
                        Err(bad())
                    }
                }
                Some(_) => Err(RecordError::field("INVALID_DATA", "invalid data", "$se_module")),
            },
            (FieldType::Parent, FieldValue::Parent(m, id)) => {
                if *m != Module::Notes && self.get(*m, *id).is_some() { Ok(()) } else { Err(bad()) }
            }
            _ => Ok(()),
        }
    }

    /// The first unique-field conflict of `merged` with another live record.
    fn check_unique(
        &self,
        m: Module,
        merged: &BTreeMap<&'static str, FieldValue>,
        own: Option<u64>,
        rules: Rules,
    ) -> Result<(), RecordError> {
        for def in schema::fields(m).iter().filter(|d| d.unique) {
            if def.api_name == "Email" && !rules.unique_contact_email {
                continue;
            }
            let Some(v) = merged.get(def.api_name) else { continue };
            if let Some(existing) =
                self.table(m).find_unique(def.api_name, v).into_iter().find(|i| Some(*i) != own)
            {
                return Err(self.duplicate_error(m, def.api_name, existing));
            }
        }
        Ok(())
    }

    /// Zoho's `DUPLICATE_DATA` entry naming the existing record.
    pub fn duplicate_error(&self, m: Module, field: &str, existing: u64) -> RecordError {
        let owner = self
            .get(m, existing)
            .and_then(|r| match r.fields.get("Owner") {
                Some(FieldValue::Ref(u)) => self.user(*u),
                _ => None,
            })
            .unwrap_or_else(|| self.admin());
        RecordError::field("DUPLICATE_DATA", "duplicate data", field)
            .with(
                "duplicate_record",
                json!({
                    "Owner": {"name": owner.name, "id": owner.id.to_string(), "zuid": owner.zuid.to_string()},
                    "module": {"api_name": m.api_name(), "id": self.module_id(m).to_string()},
                    "id": existing.to_string(),
                }),
            )
            .with("id", json!(existing.to_string()))
            .with("more_records", json!(false))
    }

    /// Applies `values` over `base`, checking references; returns the merged fields.
    fn merge(
        &self,
        base: Option<&Record>,
        values: &Values,
    ) -> Result<BTreeMap<&'static str, FieldValue>, RecordError> {
        let se = Self::se_module(values, base);
        let mut merged = base.map(|r| r.fields.clone()).unwrap_or_default();
        for (def, v) in values {
            match v {
                None => {
                    if def.mandatory {
                        return Err(RecordError::mandatory(def.api_name));
                    }
                    merged.remove(def.api_name);
                }
                Some(v) => {
                    self.check_ref(def, v, se)?;
                    merged.insert(def.api_name, v.clone());
                }
            }
        }
        if merged.contains_key("What_Id") && !merged.contains_key("$se_module") {
            return Err(RecordError::mandatory("$se_module"));
        }
        Ok(merged)
    }

    fn apply_defaults(
        m: Module,
        merged: &mut BTreeMap<&'static str, FieldValue>,
        values: &Values,
        create: bool,
    ) {
        match m {
            Module::Deals => {
                if create {
                    merged
                        .entry("Pipeline")
                        .or_insert_with(|| FieldValue::Text(STANDARD_PIPELINE.to_owned()));
                }
                let stage_set = values.iter().any(|(d, _)| d.api_name == "Stage");
                let prob_set = values.iter().any(|(d, _)| d.api_name == "Probability");
                if stage_set
                    && !prob_set
                    && let Some(FieldValue::Text(stage)) = merged.get("Stage")
                    && let Some((_, p)) = STAGES.iter().find(|(s, _)| s == stage)
                {
                    merged.insert("Probability", FieldValue::Int(*p));
                }
            }
            Module::Tasks if create => {
                merged.entry("Status").or_insert_with(|| FieldValue::Text("Not Started".to_owned()));
            }
            _ => {}
        }
    }

    fn check_mandatory(m: Module, merged: &BTreeMap<&'static str, FieldValue>) -> Result<(), RecordError> {
        if let Some(missing) =
            schema::fields(m).iter().find(|d| d.mandatory && !merged.contains_key(d.api_name))
        {
            return Err(RecordError::mandatory(missing.api_name));
        }
        // A completed (inbound or outbound) call needs its duration.
        if m == Module::Calls
            && matches!(merged.get("Call_Type"), Some(FieldValue::Text(t)) if t != "Missed")
            && !merged.contains_key("Call_Duration")
        {
            return Err(RecordError::mandatory("Call_Duration"));
        }
        Ok(())
    }

    /// Runs every check [`AccountData::create`] runs, without writing.
    pub fn check_create(&self, m: Module, values: &Values, rules: Rules) -> Result<(), RecordError> {
        let mut merged = self.merge(None, values)?;
        Self::apply_defaults(m, &mut merged, values, true);
        Self::check_mandatory(m, &merged)?;
        self.check_unique(m, &merged, None, rules)
    }

    /// Creates a record owned by `actor` unless `Owner` is given.
    pub fn create(
        &mut self,
        m: Module,
        values: &Values,
        by: By<'_>,
        rules: Rules,
    ) -> Result<(u64, Change), RecordError> {
        let By { actor, now, source } = by;
        let mut merged = self.merge(None, values)?;
        Self::apply_defaults(m, &mut merged, values, true);
        Self::check_mandatory(m, &merged)?;
        self.check_unique(m, &merged, None, rules)?;
        merged.entry("Owner").or_insert(FieldValue::Ref(actor));
        let t = to_second(now);
        let id = self.next_id();
        let rec = Record {
            id,
            fields: merged,
            created_at: t,
            modified_at: t,
            created_by: actor,
            modified_by: actor,
        };
        let table = self.table_mut(m);
        table.index(m, &rec);
        table.live.insert(id, rec);
        let change = self.journal.push(t, ChangeOp::Create, m.api_name(), &id.to_string(), source);
        Ok((id, change))
    }

    /// Updates a live record (Zoho bumps `Modified_Time` on every update, even an empty one).
    pub fn update(
        &mut self,
        m: Module,
        id: u64,
        values: &Values,
        by: By<'_>,
        rules: Rules,
    ) -> Result<Change, RecordError> {
        let By { actor, now, source } = by;
        let Some(existing) = self.get(m, id) else {
            return Err(RecordError::invalid_id(&id.to_string()));
        };
        let mut merged = self.merge(Some(existing), values)?;
        Self::apply_defaults(m, &mut merged, values, false);
        Self::check_mandatory(m, &merged)?;
        self.check_unique(m, &merged, Some(id), rules)?;
        let t = to_second(now);
        let table = self.table_mut(m);
        let Some(mut rec) = table.live.remove(&id) else {
            return Err(RecordError::invalid_id(&id.to_string()));
        };
        table.unindex(m, &rec);
        rec.fields = merged;
        rec.modified_at = t.max(rec.created_at);
        rec.modified_by = actor;
        table.index(m, &rec);
        table.live.insert(id, rec);
        Ok(self.journal.push(t, ChangeOp::Update, m.api_name(), &id.to_string(), source))
    }

    /// Moves a live record to the recycle bin; its unique values are released.
    pub fn delete(&mut self, m: Module, id: u64, by: By<'_>) -> Result<Change, RecordError> {
        let By { actor, now, source } = by;
        let t = to_second(now);
        let table = self.table_mut(m);
        let Some(rec) = table.live.remove(&id) else {
            return Err(RecordError::invalid_id(&id.to_string()));
        };
        table.unindex(m, &rec);
        let display_name = rec.display_name(m);
        table.deleted_by_time.insert((t, id));
        table.deleted.insert(id, Deleted { record: rec, deleted_at: t, deleted_by: actor, display_name });
        Ok(self.journal.push(t, ChangeOp::Delete, m.api_name(), &id.to_string(), source))
    }

    /// A deterministic, uniformly chosen live record of `m`.
    pub fn pick_live(&self, m: Module, rng: &mut ChaCha8Rng) -> Option<u64> {
        let t = self.table(m);
        if t.live.is_empty() {
            return None;
        }
        let n = rng.random_range(0..t.live.len());
        t.live.keys().nth(n).copied()
    }

    /// Inserts a seeded record with given stamps (no journal entry, no validation).
    fn insert_seeded(
        &mut self,
        m: Module,
        fields: BTreeMap<&'static str, FieldValue>,
        created_at: Millis,
        modified_at: Millis,
        by: u64,
    ) -> u64 {
        let id = self.next_id();
        let rec = Record { id, fields, created_at, modified_at, created_by: by, modified_by: by };
        let t = self.table_mut(m);
        t.index(m, &rec);
        t.live.insert(id, rec);
        id
    }
}

fn text(s: impl Into<String>) -> FieldValue {
    FieldValue::Text(s.into())
}

/// Lookups a fake record may point at.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// Account ids.
    pub accounts: Vec<u64>,
    /// Contact ids.
    pub contacts: Vec<u64>,
    /// Deal ids.
    pub deals: Vec<u64>,
}

fn any(rng: &mut ChaCha8Rng, ids: &[u64]) -> Option<u64> {
    (!ids.is_empty()).then(|| ids[rng.random_range(0..ids.len())])
}

/// Builds plausible fields for a new record of `m` (seeding and mutation creates). `n` makes unique
/// values unique; `owner` is a user id.
pub fn fake_fields(
    m: Module,
    rng: &mut ChaCha8Rng,
    n: u64,
    org: &str,
    owner: u64,
    targets: &Targets,
    at: Millis,
) -> BTreeMap<&'static str, FieldValue> {
    let mut f = BTreeMap::new();
    let first = pick(rng, seed::FIRST_NAMES);
    let last = pick(rng, seed::LAST_NAMES);
    let company = format!("{} {}", pick(rng, seed::COMPANY_PREFIXES), pick(rng, seed::COMPANY_SUFFIXES));
    let domain = format!("{}{}.example", company.split(' ').next().unwrap_or("acme").to_lowercase(), n % 97);
    f.insert("Owner", FieldValue::Ref(owner));
    match m {
        Module::Contacts => {
            f.insert("First_Name", text(first));
            f.insert("Last_Name", text(last));
            f.insert(
                "Email",
                text(format!("{}.{}.{n}.{org}@{domain}", first.to_lowercase(), last.to_lowercase())),
            );
            f.insert("Phone", text(format!("+1-555-{:04}", rng.random_range(0..10_000))));
            f.insert("Title", text(pick(rng, &["CEO", "CTO", "VP Sales", "Engineer", "Buyer", "Analyst"])));
            f.insert("Mailing_City", text(pick(rng, seed::CITIES)));
            f.insert("Lead_Source", text(pick(rng, &schema::LEAD_SOURCES[1..])));
            if let Some(a) = any(rng, &targets.accounts) {
                f.insert("Account_Name", FieldValue::Ref(a));
            }
        }
        Module::Accounts => {
            f.insert("Account_Name", text(format!("{company} {n}")));
            f.insert("Website", text(format!("https://www.{domain}")));
            f.insert("Phone", text(format!("+1-555-{:04}", rng.random_range(0..10_000))));
            f.insert("Industry", text(pick(rng, &schema::INDUSTRIES[1..])));
            f.insert("Account_Type", text(pick(rng, &schema::ACCOUNT_TYPES[1..])));
            f.insert("Employees", FieldValue::Int(rng.random_range(2..5_000)));
            f.insert("Annual_Revenue", FieldValue::Num((rng.random_range(10..50_000u32) * 1000) as f64));
            f.insert("Billing_City", text(pick(rng, seed::CITIES)));
            f.insert("Billing_Country", text(pick(rng, seed::COUNTRIES)));
        }
        Module::Deals => {
            let (stage, prob) = STAGES[rng.random_range(0..STAGES.len())];
            f.insert(
                "Deal_Name",
                text(format!("{company} - {}", pick(rng, &["New licence", "Expansion", "Renewal", "Pilot"]))),
            );
            f.insert("Amount", FieldValue::Num((rng.random_range(1..500u32) * 100) as f64));
            f.insert("Stage", text(stage));
            f.insert("Probability", FieldValue::Int(prob));
            f.insert("Pipeline", text(STANDARD_PIPELINE));
            let close = crate::clock::to_datetime(at + rng.random_range(1..120i64) * 86_400_000);
            f.insert("Closing_Date", text(close.format("%Y-%m-%d").to_string()));
            f.insert("Type", text(pick(rng, &schema::DEAL_TYPES[1..])));
            if let Some(a) = any(rng, &targets.accounts) {
                f.insert("Account_Name", FieldValue::Ref(a));
            }
            if let Some(c) = any(rng, &targets.contacts) {
                f.insert("Contact_Name", FieldValue::Ref(c));
            }
        }
        Module::Tasks | Module::Calls => {
            if m == Module::Tasks {
                f.insert("Subject", text(format!("{} {first} {last}", pick(rng, seed::ACTIVITY_VERBS))));
                let due = crate::clock::to_datetime(at + rng.random_range(0..30i64) * 86_400_000);
                f.insert("Due_Date", text(due.format("%Y-%m-%d").to_string()));
                f.insert("Status", text(pick(rng, schema::TASK_STATUSES)));
                f.insert("Priority", text(pick(rng, schema::TASK_PRIORITIES)));
            } else {
                f.insert("Subject", text(format!("Call with {first} {last}")));
                f.insert("Call_Type", text(pick(rng, &["Outbound", "Inbound"])));
                f.insert("Call_Start_Time", FieldValue::Time(to_second(at)));
                let secs = rng.random_range(10..3_600u32);
                f.insert("Call_Duration", text(format!("{:02}:{:02}", secs / 60, secs % 60)));
                f.insert("Call_Purpose", text(pick(rng, &schema::CALL_PURPOSES[1..])));
            }
            f.insert(
                "Description",
                text(format!("Discuss {} and {}.", pick(rng, seed::NOTE_WORDS), pick(rng, seed::NOTE_WORDS))),
            );
            if let Some(c) = any(rng, &targets.contacts) {
                f.insert("Who_Id", FieldValue::Ref(c));
            }
            if let Some(d) = any(rng, &targets.deals) {
                f.insert("What_Id", FieldValue::Ref(d));
                f.insert("$se_module", text("Deals"));
            }
        }
        Module::Notes => {
            f.insert("Note_Title", text(format!("{} notes", pick(rng, seed::NOTE_WORDS))));
            f.insert(
                "Note_Content",
                text(format!(
                    "{} {} {}",
                    pick(rng, seed::NOTE_WORDS),
                    pick(rng, seed::NOTE_WORDS),
                    pick(rng, seed::NOTE_WORDS)
                )),
            );
            let parent = any(rng, &targets.contacts)
                .map(|c| (Module::Contacts, c))
                .or_else(|| any(rng, &targets.accounts).map(|a| (Module::Accounts, a)));
            if let Some((pm, pid)) = parent {
                f.insert("Parent_Id", FieldValue::Parent(pm, pid));
            }
        }
    }
    f
}

/// Seeding order: lookups point at modules seeded earlier.
const SEED_ORDER: [Module; 6] =
    [Module::Accounts, Module::Contacts, Module::Deals, Module::Tasks, Module::Calls, Module::Notes];

/// Seeds a fresh org with `counts[m.index()]` records of each module, deterministically from `seed`
/// and `org`, created over the 90 days before `now` (whole seconds), a third never modified.
pub fn seed_account(seed: u64, org: &str, data: &mut AccountData, counts: [usize; 6], now: Millis) {
    const DAY: Millis = 86_400_000;
    let mut targets = Targets::default();
    for m in SEED_ORDER {
        let n = counts[m.index()];
        let mut rng = rng_for(seed, &["zoho", org, m.api_name()]);
        let mut times: Vec<(Millis, Millis)> = (0..n)
            .map(|_| {
                let created = to_second(now - rng.random_range(DAY..90 * DAY));
                let modified =
                    if rng.random_bool(0.33) { created } else { to_second(rng.random_range(created..now)) };
                (created, modified.max(created))
            })
            .collect();
        times.sort();
        let mut ids = Vec::with_capacity(n);
        for (i, (created, modified)) in times.into_iter().enumerate() {
            let owner = data.users[rng.random_range(0..data.users.len())].id;
            let fields = fake_fields(m, &mut rng, i as u64 + 1, org, owner, &targets, created);
            ids.push(data.insert_seeded(m, fields, created, modified, owner));
        }
        match m {
            Module::Accounts => targets.accounts = ids,
            Module::Contacts => targets.contacts = ids,
            Module::Deals => targets.deals = ids,
            _ => {}
        }
    }
}

/// The text a test may search "created objects" for: names, subjects, bodies, email and the marker.
pub fn searchable_text(m: Module, fields: &BTreeMap<&'static str, FieldValue>) -> String {
    let keys: &[&str] = match m {
        Module::Contacts => &["Email", "First_Name", "Last_Name"],
        Module::Accounts => &["Account_Name"],
        Module::Deals => &["Deal_Name"],
        Module::Tasks | Module::Calls => &["Subject", "Description"],
        Module::Notes => &["Note_Title", "Note_Content"],
    };
    keys.iter()
        .chain(std::iter::once(&MARKER_FIELD))
        .filter_map(|k| fields.get(k).map(FieldValue::as_text))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<User> {
        vec![User { id: 7, name: "Admin".into(), email: "a@x.test".into(), zuid: 1 }]
    }

    fn rules() -> Rules {
        Rules { unique_contact_email: true }
    }

    fn values(m: Module, pairs: &[(&str, serde_json::Value)]) -> Values {
        let map: serde_json::Map<String, serde_json::Value> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        schema::normalize_record(m, &map, true).expect("valid input")
    }

    #[test]
    fn seeding_is_deterministic_and_ordered() {
        let mut a = AccountData::new(4_150_868, users());
        let mut b = AccountData::new(4_150_868, users());
        seed_account(3, "1", &mut a, [20; 6], 1_767_603_600_000);
        seed_account(3, "1", &mut b, [20; 6], 1_767_603_600_000);
        for m in Module::ALL {
            assert_eq!(a.table(m).live, b.table(m).live);
            assert_eq!(a.table(m).live.len(), 20);
            assert!(a.table(m).live.values().all(|r| r.modified_at % 1000 == 0));
        }
    }

    #[test]
    fn unique_values_conflict_with_the_existing_id_and_deletes_release_them() {
        let mut d = AccountData::new(1, users());
        let v = values(Module::Contacts, &[("Last_Name", json!("Lee")), ("Email", json!("a@x.com"))]);
        let (id, _) = d
            .create(Module::Contacts, &v, By { actor: 7, now: 1_000, source: "api" }, rules())
            .expect("created");
        let err = d
            .create(Module::Contacts, &v, By { actor: 7, now: 2_000, source: "api" }, rules())
            .expect_err("duplicate");
        assert_eq!(err.code, "DUPLICATE_DATA");
        assert_eq!(err.extra.get("id"), Some(&json!(id.to_string())));
        d.delete(Module::Contacts, id, By { actor: 7, now: 3_000, source: "api" }).expect("deleted");
        assert!(d.create(Module::Contacts, &v, By { actor: 7, now: 4_000, source: "api" }, rules()).is_ok());
        let no_last = values(Module::Contacts, &[("Email", json!("b@x.com"))]);
        assert_eq!(
            d.create(Module::Contacts, &no_last, By { actor: 7, now: 5_000, source: "api" }, rules())
                .expect_err("mandatory")
                .api_name
                .as_deref(),
            Some("Last_Name")
        );
    }

    #[test]
    fn lookups_must_exist_and_what_id_needs_se_module() {
        let mut d = AccountData::new(1, users());
        let v = values(Module::Tasks, &[("Subject", json!("x")), ("What_Id", json!({"id": "99"}))]);
        assert_eq!(
            d.create(Module::Tasks, &v, By { actor: 7, now: 0, source: "api" }, rules())
                .expect_err("no se")
                .api_name
                .as_deref(),
            Some("$se_module")
        );
        let v = values(
            Module::Tasks,
            &[("Subject", json!("x")), ("What_Id", json!({"id": "99"})), ("$se_module", json!("Deals"))],
        );
        assert_eq!(
            d.create(Module::Tasks, &v, By { actor: 7, now: 0, source: "api" }, rules())
                .expect_err("no deal")
                .api_name
                .as_deref(),
            Some("What_Id")
        );
    }
}
