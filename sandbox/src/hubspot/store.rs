//! One HubSpot account's records: tables per object type, their indexes, associations and the change
//! journal, plus the deterministic seeding of a fresh account.
//!
//! Each [`Table`] keeps live records by id (the list order), archived records separately (only
//! `archived=true` sees them), an ordered `(modified, id)` index for changed-since searches, and one
//! value→id map per unique property (contacts' `email`, every type's `crm_fleet_action_id`).
//!
//! Invariants: every live record is in exactly one place in `by_modified`, keyed by its current
//! `updated_at`; every unique map holds exactly the live records' non-empty values (archived records
//! release their values); every write goes through [`AccountData::create`], [`AccountData::update`] or
//! [`AccountData::archive`], which stamp the logical time and append to the journal.

use super::schema::{self, ACTION_ID_PROP, ObjectType, PropDef};
use crate::changes::{Change, ChangeOp, Journal};
use crate::clock::{Millis, format_ms};
use crate::seed::{self, pick, rng_for};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One record.
#[derive(Clone, Debug)]
pub struct Record {
    /// Numeric id (`hs_object_id`).
    pub id: u64,
    /// Writable properties with values (never empty strings).
    pub props: BTreeMap<&'static str, String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last modification time.
    pub updated_at: Millis,
    /// Archive time, for archived records.
    pub archived_at: Option<Millis>,
    /// `created_at` formatted once.
    pub created_iso: String,
    /// `updated_at` formatted once.
    pub updated_iso: String,
}

impl Record {
    /// A property's value, including the read-only ones HubSpot computes.
    pub fn get(&self, obj: ObjectType, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        if name == "hs_object_id" {
            return Some(Cow::Owned(self.id.to_string()));
        }
        if name == obj.created_prop() {
            return Some(Cow::Borrowed(&self.created_iso));
        }
        if name == obj.modified_prop() {
            return Some(Cow::Borrowed(&self.updated_iso));
        }
        self.props.get(name).map(|v| Cow::Borrowed(v.as_str()))
    }

    /// A date-time property as epoch milliseconds (fast path for the computed ones).
    pub fn time_ms(&self, obj: ObjectType, name: &str) -> Option<Millis> {
        if name == obj.created_prop() {
            return Some(self.created_at);
        }
        if name == obj.modified_prop() {
            return Some(self.updated_at);
        }
        self.props.get(name).and_then(|v| crate::clock::parse_time(v))
    }

    fn stamp(&mut self, now: Millis) {
        self.updated_at = now;
        self.updated_iso = format_ms(now);
    }
}

/// One object type's records and indexes.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Live records by id.
    pub active: BTreeMap<u64, Record>,
    /// Archived records by id.
    pub archived: BTreeMap<u64, Record>,
    /// `(updated_at, id)` of live records.
    pub by_modified: BTreeSet<(Millis, u64)>,
    /// Unique property → normalised value → id, for live records.
    pub unique: BTreeMap<&'static str, HashMap<String, u64>>,
    /// Changes whenever `by_modified` does, to a value no other table ever had (0: never
    /// indexed, hence empty), so a count over the index can be remembered against it.
    pub generation: u64,
}

/// Source of [`Table::generation`] values, process-wide so that a table replaced by another
/// can never be mistaken for it.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Table {
    fn index(&mut self, obj: ObjectType, r: &Record) {
        self.by_modified.insert((r.updated_at, r.id));
        self.generation = next_generation();
        for def in schema::properties(obj).iter().filter(|d| d.unique) {
            if let Some(v) = r.props.get(def.name) {
                self.unique.entry(def.name).or_default().insert(unique_key(v), r.id);
            }
        }
    }

    fn unindex(&mut self, obj: ObjectType, r: &Record) {
        self.by_modified.remove(&(r.updated_at, r.id));
        self.generation = next_generation();
        for def in schema::properties(obj).iter().filter(|d| d.unique) {
            if let Some(v) = r.props.get(def.name)
                && let Some(m) = self.unique.get_mut(def.name)
                && m.get(&unique_key(v)) == Some(&r.id)
            {
                m.remove(&unique_key(v));
            }
        }
    }

    /// The live record holding `value` in unique property `prop`.
    pub fn find_unique(&self, prop: &str, value: &str) -> Option<u64> {
        self.unique.get(prop)?.get(&unique_key(value)).copied()
    }
}

fn unique_key(v: &str) -> String {
    v.trim().to_lowercase()
}

/// Why a write failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// No live record with that id.
    NotFound(u64),
    /// A unique value is taken.
    Conflict {
        /// The unique property.
        prop: &'static str,
        /// The value.
        value: String,
        /// The record holding it.
        existing: u64,
    },
    /// Property validation failed.
    Invalid(Vec<schema::PropError>),
    /// An association is invalid.
    Association(String),
}

/// An association to create: target type, target id, association type id.
pub type AssocInput = (ObjectType, u64, u16);

/// Associations of each record, both directions: `(type, id) → {(type, id, association type id)}`.
pub type Links = BTreeMap<(ObjectType, u64), BTreeSet<(ObjectType, u64, u16)>>;

/// One account's data.
#[derive(Clone, Debug, Default)]
pub struct AccountData {
    tables: [Table; 6],
    /// Associations of each record, both directions: `(type, id) → {(type, id, association type id)}`.
    pub assoc: Links,
    /// Every change.
    pub journal: Journal,
    next_id: u64,
}

/// The first id handed out in an account.
pub const FIRST_ID: u64 = 100_001;

impl AccountData {
    /// An empty account.
    pub fn new() -> Self {
        Self { next_id: FIRST_ID, ..Self::default() }
    }

    /// One object type's table.
    pub fn table(&self, obj: ObjectType) -> &Table {
        &self.tables[obj.index()]
    }

    fn table_mut(&mut self, obj: ObjectType) -> &mut Table {
        &mut self.tables[obj.index()]
    }

    /// Live record count per type.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        ObjectType::ALL.iter().map(|o| (o.name(), self.table(*o).active.len())).collect()
    }

    fn check_unique(
        &self,
        obj: ObjectType,
        values: &[(&'static PropDef, String)],
        own_id: Option<u64>,
    ) -> Result<(), WriteError> {
        for (def, v) in values {
            if def.unique
                && !v.is_empty()
                && let Some(existing) = self.table(obj).find_unique(def.name, v)
                && Some(existing) != own_id
            {
                return Err(WriteError::Conflict { prop: def.name, value: v.clone(), existing });
            }
        }
        // Two inputs of one request with the same unique value are caught by the map after the first
        // insert; within one record a property appears once.
        Ok(())
    }

    fn check_deal_stage(obj: ObjectType, merged: &BTreeMap<&'static str, String>) -> Result<(), WriteError> {
        if obj != ObjectType::Deals {
            return Ok(());
        }
        let pipeline = merged.get("pipeline").map(String::as_str).unwrap_or("default");
        if let Some(stage) = merged.get("dealstage") {
            let ok = schema::pipeline(pipeline).is_some_and(|p| p.stages.iter().any(|s| s.0 == stage));
            if !ok {
                return Err(WriteError::Invalid(vec![schema::PropError {
                    name: "dealstage".to_owned(),
                    code: "INVALID_OPTION",
                    message: format!("{stage} was not one of the allowed options for pipeline {pipeline}"),
                }]));
            }
        }
        Ok(())
    }

    fn check_assocs(&self, obj: ObjectType, assocs: &[AssocInput]) -> Result<(), WriteError> {
        for (to, id, type_id) in assocs {
            let t = schema::assoc_type(*type_id).ok_or_else(|| {
                WriteError::Association(format!("association type id {type_id} doesn't exist"))
            })?;
            if t.from != obj || t.to != *to {
                return Err(WriteError::Association(format!(
                    "association type id {type_id} is {} and cannot be used from {}",
                    t.label,
                    obj.name()
                )));
            }
            if !self.table(*to).active.contains_key(id) {
                return Err(WriteError::Association(format!(
                    "{} {id} does not exist or is archived",
                    to.upper()
                )));
            }
        }
        Ok(())
    }

    fn create_props(
        obj: ObjectType,
        values: &[(&'static PropDef, String)],
    ) -> Result<BTreeMap<&'static str, String>, WriteError> {
        let mut props = BTreeMap::new();
        for (def, v) in values {
            if !v.is_empty() {
                props.insert(def.name, v.clone());
            }
        }
        let missing: Vec<schema::PropError> = schema::properties(obj)
            .iter()
            .filter(|d| d.required && !props.contains_key(d.name))
            .map(|d| schema::PropError {
                name: d.name.to_owned(),
                code: "REQUIRED_PROPERTY",
                message: format!("Property \"{}\" is required", d.name),
            })
            .collect();
        if !missing.is_empty() {
            return Err(WriteError::Invalid(missing));
        }
        if obj == ObjectType::Deals && !props.contains_key("pipeline") {
            props.insert("pipeline", "default".to_owned());
        }
        Self::check_deal_stage(obj, &props)?;
        Ok(props)
    }

    /// Runs every check [`AccountData::create`] runs, without writing.
    pub fn check_create(
        &self,
        obj: ObjectType,
        values: &[(&'static PropDef, String)],
        assocs: &[AssocInput],
    ) -> Result<(), WriteError> {
        Self::create_props(obj, values)?;
        self.check_unique(obj, values, None)?;
        self.check_assocs(obj, assocs)
    }

    /// Creates a record (validating required properties, uniqueness, deal stages and associations).
    pub fn create(
        &mut self,
        obj: ObjectType,
        values: Vec<(&'static PropDef, String)>,
        assocs: &[AssocInput],
        now: Millis,
        source: &str,
    ) -> Result<(u64, Change), WriteError> {
        let props = Self::create_props(obj, &values)?;
        self.check_unique(obj, &values, None)?;
        self.check_assocs(obj, assocs)?;
        let id = self.next_id;
        self.next_id += 1;
        let iso = format_ms(now);
        let rec = Record {
            id,
            props,
            created_at: now,
            updated_at: now,
            archived_at: None,
            created_iso: iso.clone(),
            updated_iso: iso,
        };
        let t = self.table_mut(obj);
        t.index(obj, &rec);
        t.active.insert(id, rec);
        for (to, to_id, type_id) in assocs {
            self.associate(obj, id, *to, *to_id, *type_id);
        }
        let change = self.journal.push(now, ChangeOp::Create, obj.name(), &id.to_string(), source);
        Ok((id, change))
    }

    /// Inserts a seeded record with given timestamps (no journal entry, no validation).
    fn insert_seeded(
        &mut self,
        obj: ObjectType,
        props: BTreeMap<&'static str, String>,
        created_at: Millis,
        updated_at: Millis,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let rec = Record {
            id,
            props,
            created_at,
            updated_at,
            archived_at: None,
            created_iso: format_ms(created_at),
            updated_iso: format_ms(updated_at),
        };
        let t = self.table_mut(obj);
        t.index(obj, &rec);
        t.active.insert(id, rec);
        id
    }

    /// Adds an association and its reverse.
    pub fn associate(&mut self, from: ObjectType, from_id: u64, to: ObjectType, to_id: u64, type_id: u16) {
        let reverse = schema::assoc_type(type_id).map(|t| t.reverse).unwrap_or(type_id);
        self.assoc.entry((from, from_id)).or_default().insert((to, to_id, type_id));
        self.assoc.entry((to, to_id)).or_default().insert((from, from_id, reverse));
    }

    /// Updates a live record (empty values clear properties).
    pub fn update(
        &mut self,
        obj: ObjectType,
        id: u64,
        values: Vec<(&'static PropDef, String)>,
        now: Millis,
        source: &str,
    ) -> Result<Change, WriteError> {
        let Some(existing) = self.table(obj).active.get(&id) else {
            return Err(WriteError::NotFound(id));
        };
        let mut merged = existing.props.clone();
        for (def, v) in &values {
            if v.is_empty() {
                if def.required {
                    return Err(WriteError::Invalid(vec![schema::PropError {
                        name: def.name.to_owned(),
                        code: "REQUIRED_PROPERTY",
                        message: format!("Property \"{}\" is required and cannot be cleared", def.name),
                    }]));
                }
                merged.remove(def.name);
            } else {
                merged.insert(def.name, v.clone());
            }
        }
        if obj == ObjectType::Deals {
            let pipeline_changed = values.iter().any(|(d, _)| d.name == "pipeline");
            let stage_changed = values.iter().any(|(d, _)| d.name == "dealstage");
            if pipeline_changed || stage_changed {
                Self::check_deal_stage(obj, &merged)?;
            }
        }
        self.check_unique(obj, &values, Some(id))?;
        let t = self.table_mut(obj);
        let Some(mut rec) = t.active.remove(&id) else {
            return Err(WriteError::NotFound(id));
        };
        t.unindex(obj, &rec);
        rec.props = merged;
        rec.stamp(now);
        t.index(obj, &rec);
        t.active.insert(id, rec);
        Ok(self.journal.push(now, ChangeOp::Update, obj.name(), &id.to_string(), source))
    }

    /// Archives a live record: it leaves the live table, its unique values and associations are
    /// released, and it shows up in `archived=true` listings with `archivedAt`.
    pub fn archive(
        &mut self,
        obj: ObjectType,
        id: u64,
        now: Millis,
        source: &str,
    ) -> Result<Change, WriteError> {
        let t = self.table_mut(obj);
        let Some(mut rec) = t.active.remove(&id) else {
            return Err(WriteError::NotFound(id));
        };
        t.unindex(obj, &rec);
        rec.archived_at = Some(now);
        rec.stamp(now);
        t.archived.insert(id, rec);
        if let Some(links) = self.assoc.remove(&(obj, id)) {
            for (to, to_id, _) in links {
                if let Some(back) = self.assoc.get_mut(&(to, to_id)) {
                    back.retain(|(o, i, _)| !(*o == obj && *i == id));
                }
            }
        }
        Ok(self.journal.push(now, ChangeOp::Delete, obj.name(), &id.to_string(), source))
    }

    /// Associations of one record to one target type.
    pub fn associations(&self, obj: ObjectType, id: u64, to: ObjectType) -> Vec<(u64, u16)> {
        self.assoc
            .get(&(obj, id))
            .map(|s| s.iter().filter(|(o, _, _)| *o == to).map(|(_, i, t)| (*i, *t)).collect())
            .unwrap_or_default()
    }

    /// A live or archived record.
    pub fn any_record(&self, obj: ObjectType, id: u64) -> Option<&Record> {
        let t = self.table(obj);
        t.active.get(&id).or_else(|| t.archived.get(&id))
    }

    /// A deterministic, uniformly chosen live record of `obj` (linear in the table size; mutation
    /// batches are small).
    pub fn pick_live(&self, obj: ObjectType, rng: &mut ChaCha8Rng) -> Option<u64> {
        let t = self.table(obj);
        if t.active.is_empty() {
            return None;
        }
        let n = rng.random_range(0..t.active.len());
        t.active.keys().nth(n).copied()
    }
}

/// Builds plausible properties for a new record of `obj` (seeding and mutation creates). `n` makes
/// unique values unique.
pub fn fake_props(
    obj: ObjectType,
    rng: &mut ChaCha8Rng,
    n: u64,
    hub_id: u64,
    timestamp_ms: Millis,
) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let owner = schema::OWNERS[rng.random_range(0..schema::OWNERS.len())].0;
    let first = pick(rng, seed::FIRST_NAMES);
    let last = pick(rng, seed::LAST_NAMES);
    let company = format!("{} {}", pick(rng, seed::COMPANY_PREFIXES), pick(rng, seed::COMPANY_SUFFIXES));
    let domain = format!("{}{}.example", company.split(' ').next().unwrap_or("acme").to_lowercase(), n % 97);
    match obj {
        ObjectType::Contacts => {
            m.insert("firstname", first.to_owned());
            m.insert("lastname", last.to_owned());
            m.insert(
                "email",
                format!("{}.{}.{n}.{hub_id}@{domain}", first.to_lowercase(), last.to_lowercase()),
            );
            m.insert("phone", format!("+1-555-{:04}", rng.random_range(0..10_000)));
            m.insert("company", company);
            m.insert(
                "jobtitle",
                pick(rng, &["CEO", "CTO", "VP Sales", "Engineer", "Buyer", "Analyst"]).to_owned(),
            );
            m.insert("city", pick(rng, seed::CITIES).to_owned());
            m.insert("lifecyclestage", pick(rng, schema::LIFECYCLE_STAGES).to_owned());
            m.insert("hubspot_owner_id", owner.to_owned());
        }
        ObjectType::Companies => {
            m.insert("name", company);
            m.insert("domain", domain);
            m.insert(
                "industry",
                pick(
                    rng,
                    &[
                        "COMPUTER_SOFTWARE",
                        "RETAIL",
                        "FINANCIAL_SERVICES",
                        "HOSPITAL_HEALTH_CARE",
                        "LOGISTICS_AND_SUPPLY_CHAIN",
                    ],
                )
                .to_owned(),
            );
            m.insert("city", pick(rng, seed::CITIES).to_owned());
            m.insert("country", pick(rng, seed::COUNTRIES).to_owned());
            m.insert("numberofemployees", rng.random_range(2..5_000u32).to_string());
            m.insert("annualrevenue", (rng.random_range(10..50_000u64) * 1000).to_string());
            m.insert("hubspot_owner_id", owner.to_owned());
        }
        ObjectType::Deals => {
            let p = &schema::PIPELINES[usize::from(rng.random_bool(0.25))];
            let stage = p.stages[rng.random_range(0..p.stages.len())].0;
            m.insert(
                "dealname",
                format!("{company} - {}", pick(rng, &["New licence", "Expansion", "Renewal", "Pilot"])),
            );
            m.insert("amount", (rng.random_range(1..500u64) * 100).to_string());
            m.insert("pipeline", p.id.to_owned());
            m.insert("dealstage", stage.to_owned());
            m.insert("closedate", format_ms(timestamp_ms + rng.random_range(1..120i64) * 86_400_000));
            m.insert("dealtype", pick(rng, schema::DEAL_TYPES).to_owned());
            m.insert("hubspot_owner_id", owner.to_owned());
        }
        ObjectType::Tasks => {
            m.insert("hs_task_subject", format!("{} {first} {last}", pick(rng, seed::ACTIVITY_VERBS)));
            m.insert(
                "hs_task_body",
                format!("Discuss {} and {}.", pick(rng, seed::NOTE_WORDS), pick(rng, seed::NOTE_WORDS)),
            );
            m.insert("hs_task_status", pick(rng, schema::TASK_STATUSES).to_owned());
            m.insert("hs_task_priority", pick(rng, schema::TASK_PRIORITIES).to_owned());
            m.insert("hs_task_type", pick(rng, schema::TASK_TYPES).to_owned());
            m.insert("hs_timestamp", format_ms(timestamp_ms + rng.random_range(0..30i64) * 86_400_000));
            m.insert("hubspot_owner_id", owner.to_owned());
        }
        ObjectType::Calls => {
            m.insert("hs_call_title", format!("Call with {first} {last}"));
            m.insert("hs_call_body", format!("Talked about {}.", pick(rng, seed::NOTE_WORDS)));
            m.insert("hs_call_direction", pick(rng, schema::CALL_DIRECTIONS).to_owned());
            m.insert("hs_call_duration", (rng.random_range(10..3_600u64) * 1000).to_string());
            m.insert("hs_call_status", "COMPLETED".to_owned());
            m.insert("hs_timestamp", format_ms(timestamp_ms));
            m.insert("hubspot_owner_id", owner.to_owned());
        }
        ObjectType::Notes => {
            m.insert(
                "hs_note_body",
                format!(
                    "<p>{} {} {}</p>",
                    pick(rng, seed::NOTE_WORDS),
                    pick(rng, seed::NOTE_WORDS),
                    pick(rng, seed::NOTE_WORDS)
                ),
            );
            m.insert("hs_timestamp", format_ms(timestamp_ms));
            m.insert("hubspot_owner_id", owner.to_owned());
        }
    }
    m
}

/// Seeds a fresh account with `counts[type.index()]` records of each type, deterministically from
/// `seed` and `hub_id`, with creation times spread over the 90 days before `now` and modification
/// times between creation and `now`.
pub fn seed_account(seed: u64, hub_id: u64, counts: [usize; 6], now: Millis) -> AccountData {
    let mut data = AccountData::new();
    const DAY: Millis = 86_400_000;
    let hub = hub_id.to_string();
    let mut ids: BTreeMap<ObjectType, Vec<u64>> = BTreeMap::new();
    for obj in ObjectType::ALL {
        let records = counts[obj.index()];
        let mut rng = rng_for(seed, &["hubspot", &hub, obj.name()]);
        // Times are drawn first and sorted by creation, so ids increase with creation time.
        let mut times: Vec<(Millis, Millis)> = (0..records)
            .map(|_| {
                let created = now - rng.random_range(DAY..90 * DAY);
                // Whole seconds, and a third of records never modified after creation.
                let created = created - created.rem_euclid(1000);
                let modified = if rng.random_bool(0.33) {
                    created
                } else {
                    let m = rng.random_range(created..now);
                    m - m.rem_euclid(1000)
                };
                (created, modified.max(created))
            })
            .collect();
        times.sort();
        let mut v = Vec::with_capacity(records);
        for (i, (created, modified)) in times.into_iter().enumerate() {
            let props = fake_props(obj, &mut rng, i as u64 + 1, hub_id, created);
            v.push(data.insert_seeded(obj, props, created, modified));
        }
        ids.insert(obj, v);
    }
    // Associations: contacts and deals to companies, deals to contacts, engagements to contacts.
    let mut rng = rng_for(seed, &["hubspot", &hub, "associations"]);
    let get = |o: ObjectType| ids.get(&o).cloned().unwrap_or_default();
    let (contacts, companies, deals) =
        (get(ObjectType::Contacts), get(ObjectType::Companies), get(ObjectType::Deals));
    if !companies.is_empty() {
        for c in &contacts {
            let co = companies[rng.random_range(0..companies.len())];
            data.associate(ObjectType::Contacts, *c, ObjectType::Companies, co, 1);
            data.associate(ObjectType::Contacts, *c, ObjectType::Companies, co, 279);
        }
        for d in &deals {
            let co = companies[rng.random_range(0..companies.len())];
            data.associate(ObjectType::Deals, *d, ObjectType::Companies, co, 5);
            data.associate(ObjectType::Deals, *d, ObjectType::Companies, co, 341);
        }
    }
    if !contacts.is_empty() {
        for d in &deals {
            let c = contacts[rng.random_range(0..contacts.len())];
            data.associate(ObjectType::Deals, *d, ObjectType::Contacts, c, 3);
        }
        for (obj, type_id) in
            [(ObjectType::Tasks, 204u16), (ObjectType::Calls, 194), (ObjectType::Notes, 202)]
        {
            for e in get(obj) {
                let c = contacts[rng.random_range(0..contacts.len())];
                data.associate(obj, e, ObjectType::Contacts, c, type_id);
            }
        }
    }
    data
}

/// The text a test may search "created objects" for: subject, body, name or email, and the action id.
pub fn searchable_text(obj: ObjectType, props: &BTreeMap<&'static str, String>) -> String {
    let keys: &[&str] = match obj {
        ObjectType::Contacts => &["email", "firstname", "lastname"],
        ObjectType::Companies => &["name", "domain"],
        ObjectType::Deals => &["dealname"],
        ObjectType::Tasks => &["hs_task_subject", "hs_task_body"],
        ObjectType::Calls => &["hs_call_title", "hs_call_body"],
        ObjectType::Notes => &["hs_note_body"],
    };
    keys.iter()
        .chain(std::iter::once(&ACTION_ID_PROP))
        .filter_map(|k| props.get(k).map(String::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_is_deterministic_and_sized() {
        let a = seed_account(7, 1, [50; 6], 1_767_603_600_000);
        let b = seed_account(7, 1, [50; 6], 1_767_603_600_000);
        for obj in ObjectType::ALL {
            assert_eq!(a.table(obj).active.len(), 50);
            let pa: Vec<_> =
                a.table(obj).active.values().map(|r| (r.id, r.props.clone(), r.updated_at)).collect();
            let pb: Vec<_> =
                b.table(obj).active.values().map(|r| (r.id, r.props.clone(), r.updated_at)).collect();
            assert_eq!(pa, pb);
        }
        let c = seed_account(8, 1, [50; 6], 1_767_603_600_000);
        assert_ne!(
            a.table(ObjectType::Contacts).active.values().next().map(|r| r.props.clone()),
            c.table(ObjectType::Contacts).active.values().next().map(|r| r.props.clone())
        );
    }

    #[test]
    fn unique_values_conflict_and_archive_releases_them() {
        let mut d = AccountData::new();
        let email = schema::property(ObjectType::Contacts, "email").expect("email");
        let (id, _) =
            d.create(ObjectType::Contacts, vec![(email, "a@x.com".into())], &[], 1, "api").expect("created");
        let err = d
            .create(ObjectType::Contacts, vec![(email, "a@x.com".into())], &[], 2, "api")
            .expect_err("duplicate");
        assert!(matches!(err, WriteError::Conflict { existing, .. } if existing == id));
        d.archive(ObjectType::Contacts, id, 3, "api").expect("archived");
        assert!(d.create(ObjectType::Contacts, vec![(email, "a@x.com".into())], &[], 4, "api").is_ok());
        assert_eq!(d.table(ObjectType::Contacts).archived.len(), 1);
        assert_eq!(d.journal.last_seq(), 3);
    }
}
