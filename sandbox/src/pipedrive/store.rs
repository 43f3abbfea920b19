//! One Pipedrive company's records: a table per entity with ordered indexes, the change journal,
//! soft deletion with purging, derived fields, and the deterministic seeding of a fresh account.
//!
//! Each [`Table`] keeps every row (live, archived and soft-deleted until purged) by id, plus one
//! ordered `(sort value, id)` set per sort key (`id`, `update_time`, `add_time`, `due_date`) and per
//! [`Bucket`] (live, archived deals, deleted), so a list page is a range scan from the cursor, never
//! a sort of the table.
//!
//! Invariants: every row is in exactly one bucket of every applicable index, keyed by its current
//! values; every write goes through [`AccountData::create`], [`AccountData::update`] or
//! [`AccountData::delete`], which stamp the logical time (truncated to the second, Pipedrive's
//! precision) and append to the journal; a soft-deleted row is purged `retention` after its
//! deletion and never comes back.

use super::schema::{self, Entity, FieldError};
use crate::changes::{Change, ChangeOp, Journal};
use crate::clock::Millis;
use crate::seed::{self, pick, rng_for};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// One day in milliseconds.
pub const DAY_MS: Millis = 86_400_000;

/// Truncates logical milliseconds to the second (Pipedrive timestamps have second precision).
pub fn to_second(ms: Millis) -> Millis {
    ms - ms.rem_euclid(1000)
}

/// One record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Id (per entity type, from 1).
    pub id: u64,
    /// Standard fields with values, in their wire names and JSON types.
    pub fields: Map<String, Value>,
    /// Custom field values by 40-character key.
    pub custom: BTreeMap<String, Value>,
    /// Creation time (second precision).
    pub add_time: Millis,
    /// Last modification time (second precision).
    pub update_time: Millis,
    /// Soft-deletion time.
    pub deleted_at: Option<Millis>,
}

impl Record {
    /// Which bucket the record is in.
    pub fn bucket(&self) -> Bucket {
        if self.deleted_at.is_some() {
            Bucket::Deleted
        } else if self.fields.get("is_archived").and_then(Value::as_bool) == Some(true) {
            Bucket::Archived
        } else {
            Bucket::Live
        }
    }

    /// A standard field as a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// A standard field as an integer.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.fields.get(name).and_then(Value::as_i64)
    }

    fn sort_value(&self, e: Entity, key: SortKey) -> Option<i64> {
        match key {
            SortKey::Id => Some(self.id as i64),
            SortKey::UpdateTime => Some(self.update_time),
            SortKey::AddTime => Some(self.add_time),
            SortKey::DueDate => (e == Entity::Activities)
                .then(|| self.str("due_date").and_then(crate::clock::parse_time).unwrap_or(i64::MIN)),
        }
    }

    /// The text a test may search "created objects" for: names, emails, subjects, content and the
    /// custom field values (the crm-fleet marker).
    pub fn searchable_text(&self, e: Entity) -> String {
        let keys: &[&str] = match e {
            Entity::Persons | Entity::Organizations => &["name"],
            Entity::Deals => &["title"],
            Entity::Activities => &["subject", "note"],
            Entity::Notes => &["content"],
        };
        let mut parts: Vec<String> = keys.iter().filter_map(|k| self.str(k)).map(str::to_owned).collect();
        if let Some(Value::Array(emails)) = self.fields.get("emails") {
            parts.extend(emails.iter().filter_map(|m| m.get("value")?.as_str()).map(str::to_owned));
        }
        parts.extend(self.custom.values().filter_map(Value::as_str).map(str::to_owned));
        parts.join("\n")
    }
}

/// Sort keys of list endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SortKey {
    /// `id`.
    Id,
    /// `update_time`.
    UpdateTime,
    /// `add_time`.
    AddTime,
    /// `due_date` (activities).
    DueDate,
}

impl SortKey {
    /// Parses `sort_by`.
    pub fn parse(s: &str, e: Entity) -> Option<Self> {
        match s {
            "id" => Some(SortKey::Id),
            "update_time" => Some(SortKey::UpdateTime),
            "add_time" => Some(SortKey::AddTime),
            "due_date" if e == Entity::Activities => Some(SortKey::DueDate),
            _ => None,
        }
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::UpdateTime => "update_time",
            SortKey::AddTime => "add_time",
            SortKey::DueDate => "due_date",
        }
    }

    const ALL: [SortKey; 4] = [SortKey::Id, SortKey::UpdateTime, SortKey::AddTime, SortKey::DueDate];
}

/// Which rows a listing walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    /// Not deleted (and, for deals, not archived).
    Live,
    /// Archived deals (not deleted).
    Archived,
    /// Soft-deleted, not yet purged.
    Deleted,
}

/// One entity's rows and indexes.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Every row by id.
    pub rows: BTreeMap<u64, Record>,
    index: BTreeMap<(SortKey, Bucket), BTreeSet<(i64, u64)>>,
    purge_queue: BTreeSet<(Millis, u64)>,
    next_id: u64,
}

impl Table {
    fn add_index(&mut self, e: Entity, r: &Record) {
        let b = r.bucket();
        for k in SortKey::ALL {
            if let Some(v) = r.sort_value(e, k) {
                self.index.entry((k, b)).or_default().insert((v, r.id));
            }
        }
        if let Some(d) = r.deleted_at {
            self.purge_queue.insert((d, r.id));
        }
    }

    fn remove_index(&mut self, e: Entity, r: &Record) {
        let b = r.bucket();
        for k in SortKey::ALL {
            if let Some(v) = r.sort_value(e, k)
                && let Some(set) = self.index.get_mut(&(k, b))
            {
                set.remove(&(v, r.id));
            }
        }
        if let Some(d) = r.deleted_at {
            self.purge_queue.remove(&(d, r.id));
        }
    }

    /// The ordered `(sort value, id)` set of one bucket.
    pub fn ordered(&self, key: SortKey, bucket: Bucket) -> Option<&BTreeSet<(i64, u64)>> {
        self.index.get(&(key, bucket))
    }

    /// A row that is not deleted.
    pub fn live(&self, id: u64) -> Option<&Record> {
        self.rows.get(&id).filter(|r| r.deleted_at.is_none())
    }

    /// Rows in a bucket.
    pub fn count(&self, bucket: Bucket) -> usize {
        self.index.get(&(SortKey::Id, bucket)).map_or(0, BTreeSet::len)
    }
}

/// Why a write failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// No such (undeleted) record.
    NotFound(Entity, u64),
    /// A field is invalid (type, reference or custom field).
    Invalid(FieldError),
}

/// A user of the company.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub id: i64,
    /// Full name.
    pub name: String,
    /// Login email.
    pub email: String,
}

/// A custom field definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomField {
    /// The 40-character key.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Field type (`varchar`).
    pub field_type: &'static str,
    /// Entities that carry it.
    pub entities: Vec<Entity>,
}

/// One company's data.
#[derive(Clone, Debug)]
pub struct AccountData {
    tables: [Table; 5],
    /// Every change.
    pub journal: Journal,
    /// Users of the company (the first is the admin who connected the app).
    pub users: Vec<User>,
    /// Default deal currency.
    pub currency: String,
    /// Custom field definitions.
    pub custom_fields: Vec<CustomField>,
}

impl AccountData {
    /// An empty company.
    pub fn new(users: Vec<User>, currency: &str, custom_fields: Vec<CustomField>) -> Self {
        let mut tables: [Table; 5] = Default::default();
        for t in &mut tables {
            t.next_id = 1;
        }
        Self { tables, journal: Journal::default(), users, currency: currency.to_owned(), custom_fields }
    }

    /// One entity's table.
    pub fn table(&self, e: Entity) -> &Table {
        &self.tables[e.index()]
    }

    fn table_mut(&mut self, e: Entity) -> &mut Table {
        &mut self.tables[e.index()]
    }

    /// The admin user (default owner).
    pub fn owner(&self) -> i64 {
        self.users.first().map_or(1, |u| u.id)
    }

    /// Custom fields of an entity.
    pub fn custom_fields_of(&self, e: Entity) -> impl Iterator<Item = &CustomField> {
        self.custom_fields.iter().filter(move |c| c.entities.contains(&e))
    }

    /// Rows per entity and bucket, for the control plane.
    pub fn counts(&self) -> Value {
        let mut m = Map::new();
        for e in Entity::ALL {
            let t = self.table(e);
            m.insert(
                e.name().to_owned(),
                json!({"live": t.count(Bucket::Live), "archived": t.count(Bucket::Archived), "deleted": t.count(Bucket::Deleted)}),
            );
        }
        Value::Object(m)
    }

    /// Checks references (`org_id`, `person_id`, `deal_id`, participants), owners and custom fields
    /// of a validated body.
    pub fn check_refs(
        &self,
        e: Entity,
        fields: &Map<String, Value>,
        custom: &Map<String, Value>,
        create: bool,
    ) -> Result<(), FieldError> {
        for spec in schema::fields(e) {
            let Some(v) = fields.get(spec.name) else { continue };
            match spec.kind {
                schema::Kind::Ref(target) => {
                    if let Some(id) = v.as_i64()
                        && self.table(target).live(id as u64).is_none()
                    {
                        return Err(FieldError::new(
                            spec.name,
                            format!("{} with id {id} does not exist", target.title()),
                        ));
                    }
                }
                schema::Kind::UserId => {
                    if let Some(id) = v.as_i64()
                        && !self.users.iter().any(|u| u.id == id)
                    {
                        return Err(FieldError::new(spec.name, format!("user {id} does not exist")));
                    }
                }
                schema::Kind::Participants => {
                    for p in v.as_array().into_iter().flatten() {
                        if let Some(id) = p.get("person_id").and_then(Value::as_i64)
                            && self.table(Entity::Persons).live(id as u64).is_none()
                        {
                            return Err(FieldError::new(
                                spec.name,
                                format!("Person with id {id} does not exist"),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        for (k, v) in custom {
            let Some(def) = self.custom_fields_of(e).find(|c| &c.key == k) else {
                return Err(FieldError {
                    field: k.clone(),
                    message: format!("custom field {k} does not exist on {}", e.name()),
                    custom: true,
                });
            };
            let ok = match def.field_type {
                "varchar" => v.is_null() || v.as_str().is_some_and(|s| s.chars().count() <= 255),
                _ => true,
            };
            if !ok {
                return Err(FieldError {
                    field: k.clone(),
                    message: format!("{} must be a string of at most 255 characters", def.name),
                    custom: true,
                });
            }
        }
        if e == Entity::Notes && create {
            // One of the records a note is attached to is required on create (v1 documents
            // deal, person, organization, lead or project; the sandbox has the first three). An
            // update keeps the note's attachments unless it names new ones: every field of
            // `PUT /v1/notes/{id}` is optional.
            let attached = ["deal_id", "person_id", "org_id"]
                .iter()
                .any(|k| fields.get(*k).is_some_and(|v| !v.is_null()));
            if !attached && fields.contains_key("content") {
                return Err(FieldError::new(
                    "deal_id",
                    "one of deal_id, person_id, org_id, lead_id or project_id is required",
                ));
            }
        }
        Ok(())
    }

    /// Applies fields Pipedrive derives from others (names, pipeline of a stage, status times,
    /// participants, done times) after `patch` was merged into `r`.
    fn derive(&self, e: Entity, r: &mut Record, patch: &Map<String, Value>, now: Millis, creating: bool) {
        let iso = Value::String(super::view::iso(now));
        match e {
            Entity::Persons => {
                if let Some(name) = r.str("name").map(str::to_owned) {
                    let (first, last) = match name.split_once(' ') {
                        Some((a, b)) => (Value::String(a.to_owned()), Value::String(b.trim().to_owned())),
                        None => (Value::String(name.clone()), Value::Null),
                    };
                    r.fields.insert("first_name".into(), first);
                    r.fields.insert("last_name".into(), last);
                }
            }
            Entity::Deals => {
                if let Some(stage) = patch.get("stage_id").and_then(Value::as_i64) {
                    if let Some(p) = schema::pipeline_of_stage(stage) {
                        r.fields.insert("pipeline_id".into(), json!(p.id));
                    }
                    if !creating {
                        r.fields.insert("stage_change_time".into(), iso.clone());
                    }
                } else if let Some(pid) = patch.get("pipeline_id").and_then(Value::as_i64) {
                    let in_pipeline =
                        r.int("stage_id").and_then(schema::pipeline_of_stage).is_some_and(|p| p.id == pid);
                    if !in_pipeline && let Some(p) = schema::pipeline(pid) {
                        r.fields.insert("stage_id".into(), json!(p.stages[0].0));
                        if !creating {
                            r.fields.insert("stage_change_time".into(), iso.clone());
                        }
                    }
                }
                if r.int("stage_id").is_none() {
                    r.fields.insert("pipeline_id".into(), json!(1));
                    r.fields.insert("stage_id".into(), json!(1));
                }
                if let Some(status) = patch.get("status").and_then(Value::as_str) {
                    match status {
                        "won" => {
                            r.fields.insert("won_time".into(), iso.clone());
                            r.fields.insert("close_time".into(), iso.clone());
                        }
                        "lost" => {
                            r.fields.insert("lost_time".into(), iso.clone());
                            r.fields.insert("close_time".into(), iso.clone());
                        }
                        _ => {
                            r.fields.insert("close_time".into(), Value::Null);
                        }
                    }
                }
                if let Some(a) = patch.get("is_archived").and_then(Value::as_bool) {
                    r.fields.insert("archive_time".into(), if a { iso.clone() } else { Value::Null });
                }
                r.fields.entry("status").or_insert_with(|| json!("open"));
                r.fields.entry("currency").or_insert_with(|| json!(self.currency));
                r.fields.entry("value").or_insert_with(|| json!(0));
                r.fields.entry("is_archived").or_insert(Value::Bool(false));
                if creating {
                    r.fields.entry("origin").or_insert_with(|| json!("API"));
                }
            }
            Entity::Activities => {
                let ty = r.str("type").unwrap_or("task").to_owned();
                r.fields.insert("type".into(), json!(ty));
                if r.str("subject").is_none() {
                    let name =
                        schema::ACTIVITY_TYPES.iter().find(|t| t.2 == ty).map(|t| t.1).unwrap_or("Task");
                    r.fields.insert("subject".into(), json!(name));
                }
                if patch.contains_key("participants") {
                    let parts =
                        r.fields.get("participants").and_then(Value::as_array).cloned().unwrap_or_default();
                    let primary = parts
                        .iter()
                        .find(|p| p.get("primary").and_then(Value::as_bool) == Some(true))
                        .or_else(|| parts.first())
                        .and_then(|p| p.get("person_id").cloned())
                        .unwrap_or(Value::Null);
                    r.fields.insert("person_id".into(), primary);
                } else if let Some(pid) = patch.get("person_id") {
                    let parts = match pid.as_i64() {
                        Some(p) => json!([{"person_id": p, "primary": true}]),
                        None => json!([]),
                    };
                    r.fields.insert("participants".into(), parts);
                }
                if let Some(done) = patch.get("done").and_then(Value::as_bool) {
                    r.fields.insert("marked_as_done_time".into(), if done { iso } else { Value::Null });
                }
                r.fields.entry("done").or_insert(Value::Bool(false));
                r.fields.entry("busy").or_insert(Value::Bool(false));
            }
            Entity::Organizations | Entity::Notes => {}
        }
        if e != Entity::Notes {
            r.fields.entry("owner_id").or_insert_with(|| json!(self.owner()));
            if creating && e == Entity::Activities {
                let creator = r.fields.get("owner_id").cloned().unwrap_or(Value::Null);
                r.fields.entry("creator_user_id").or_insert(creator);
            }
            r.fields.entry("visible_to").or_insert_with(|| json!(3));
        } else {
            r.fields.entry("user_id").or_insert_with(|| json!(self.owner()));
            r.fields.insert("last_update_user_id".into(), json!(self.owner()));
        }
    }

    fn insert_row(&mut self, e: Entity, r: Record) {
        let t = self.table_mut(e);
        t.add_index(e, &r);
        t.next_id = t.next_id.max(r.id + 1);
        t.rows.insert(r.id, r);
    }

    /// Creates a record from validated, reference-checked fields.
    pub fn create(
        &mut self,
        e: Entity,
        fields: Map<String, Value>,
        custom: Map<String, Value>,
        now: Millis,
        source: &str,
    ) -> (u64, Change) {
        let now = to_second(now);
        let id = self.table(e).next_id;
        let mut r = Record {
            id,
            fields: Map::new(),
            custom: BTreeMap::new(),
            add_time: now,
            update_time: now,
            deleted_at: None,
        };
        for (k, v) in &fields {
            if !v.is_null() {
                r.fields.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in custom {
            if !v.is_null() {
                r.custom.insert(k, v);
            }
        }
        self.derive(e, &mut r, &fields, now, true);
        self.insert_row(e, r);
        let change = self.journal.push(now, ChangeOp::Create, e.name(), &id.to_string(), source);
        (id, change)
    }

    /// Updates an undeleted record (nulls clear fields).
    pub fn update(
        &mut self,
        e: Entity,
        id: u64,
        fields: Map<String, Value>,
        custom: Map<String, Value>,
        now: Millis,
        source: &str,
    ) -> Result<Change, WriteError> {
        let now = to_second(now);
        let Some(old) = self.table(e).live(id).cloned() else {
            return Err(WriteError::NotFound(e, id));
        };
        let mut r = old.clone();
        for (k, v) in &fields {
            if v.is_null() {
                r.fields.remove(k);
            } else {
                r.fields.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in custom {
            if v.is_null() {
                r.custom.remove(&k);
            } else {
                r.custom.insert(k, v);
            }
        }
        self.derive(e, &mut r, &fields, now, false);
        r.update_time = now;
        let t = self.table_mut(e);
        t.remove_index(e, &old);
        t.add_index(e, &r);
        t.rows.insert(id, r);
        Ok(self.journal.push(now, ChangeOp::Update, e.name(), &id.to_string(), source))
    }

    /// Soft-deletes a record: `is_deleted` becomes true, `update_time` the deletion time; it leaves
    /// default listings and is purged after the retention period.
    pub fn delete(&mut self, e: Entity, id: u64, now: Millis, source: &str) -> Result<Change, WriteError> {
        let now = to_second(now);
        let Some(old) = self.table(e).live(id).cloned() else {
            return Err(WriteError::NotFound(e, id));
        };
        let mut r = old.clone();
        r.deleted_at = Some(now);
        r.update_time = now;
        let t = self.table_mut(e);
        t.remove_index(e, &old);
        t.add_index(e, &r);
        t.rows.insert(id, r);
        Ok(self.journal.push(now, ChangeOp::Delete, e.name(), &id.to_string(), source))
    }

    /// Whether some soft-deleted row is due for purging at `now`.
    pub fn purge_due(&self, now: Millis, retention_ms: Millis) -> bool {
        self.tables.iter().any(|t| t.purge_queue.first().is_some_and(|(d, _)| d + retention_ms <= now))
    }

    /// Permanently removes rows deleted at least `retention_ms` ago. Returns how many.
    pub fn purge(&mut self, now: Millis, retention_ms: Millis) -> usize {
        let mut n = 0;
        for e in Entity::ALL {
            loop {
                let t = self.table_mut(e);
                let Some(&(d, id)) = t.purge_queue.first() else { break };
                if d + retention_ms > now {
                    break;
                }
                if let Some(r) = t.rows.remove(&id) {
                    t.remove_index(e, &r);
                } else {
                    t.purge_queue.remove(&(d, id));
                }
                n += 1;
            }
        }
        n
    }

    /// A deterministic, uniformly chosen undeleted record (linear; mutation batches are small).
    pub fn pick_live(&self, e: Entity, rng: &mut ChaCha8Rng) -> Option<u64> {
        let t = self.table(e);
        let live: Vec<u64> = t.rows.values().filter(|r| r.deleted_at.is_none()).map(|r| r.id).collect();
        if live.is_empty() {
            return None;
        }
        Some(live[rng.random_range(0..live.len())])
    }

    /// Inserts a seeded record with given timestamps (no journal entry).
    fn insert_seeded(
        &mut self,
        e: Entity,
        fields: Map<String, Value>,
        custom: Map<String, Value>,
        add: Millis,
        upd: Millis,
    ) -> u64 {
        let id = self.table(e).next_id;
        let mut r = Record {
            id,
            fields: fields.into_iter().filter(|(_, v)| !v.is_null()).collect(),
            custom: custom.into_iter().collect(),
            add_time: add,
            update_time: upd,
            deleted_at: None,
        };
        let patch = r.fields.clone();
        self.derive(e, &mut r, &patch, add, true);
        self.insert_row(e, r);
        id
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Plausible fields for a new record (seeding and mutation creates). `n` makes names unique; `ids`
/// are existing `(organizations, persons, deals)` to link to.
pub fn fake_fields(
    e: Entity,
    rng: &mut ChaCha8Rng,
    n: u64,
    company_id: u64,
    users: &[i64],
    links: (&[u64], &[u64], &[u64]),
    at_ms: Millis,
) -> Map<String, Value> {
    let owner = users[rng.random_range(0..users.len())];
    let first = pick(rng, seed::FIRST_NAMES);
    let last = pick(rng, seed::LAST_NAMES);
    let company = format!("{} {}", pick(rng, seed::COMPANY_PREFIXES), pick(rng, seed::COMPANY_SUFFIXES));
    let domain = format!("{}{}.example", company.split(' ').next().unwrap_or("acme").to_lowercase(), n % 97);
    let (orgs, persons, deals) = links;
    let any = |rng: &mut ChaCha8Rng, v: &[u64]| -> Value {
        if v.is_empty() { Value::Null } else { json!(v[rng.random_range(0..v.len())]) }
    };
    match e {
        Entity::Persons => {
            let org = if rng.random_bool(0.8) { any(rng, orgs) } else { Value::Null };
            obj(json!({
                "name": format!("{first} {last}"),
                "owner_id": owner,
                "org_id": org,
                "emails": [{"value": format!("{}.{}.{n}.{company_id}@{domain}", first.to_lowercase(), last.to_lowercase()), "primary": true, "label": "work"}],
                "phones": [{"value": format!("+1-555-{:04}", rng.random_range(0..10_000)), "primary": true, "label": "mobile"}],
                "visible_to": 3,
            }))
        }
        Entity::Organizations => obj(json!({
            "name": company,
            "owner_id": owner,
            "visible_to": 3,
            "address": {"value": format!("{} Main Street, {}", rng.random_range(1..200), pick(rng, seed::CITIES)), "locality": pick(rng, seed::CITIES), "country": pick(rng, seed::COUNTRIES)},
        })),
        Entity::Deals => {
            let p = &schema::PIPELINES[usize::from(rng.random_bool(0.25))];
            let stage = p.stages[rng.random_range(0..p.stages.len())].0;
            let roll = rng.random_range(0..10);
            let status = match roll {
                0 | 1 => "won",
                2 => "lost",
                _ => "open",
            };
            let close = crate::clock::to_datetime(at_ms + rng.random_range(1..120i64) * DAY_MS).date_naive();
            let mut m = obj(json!({
                "title": format!("{company} - {}", pick(rng, &["New licence", "Expansion", "Renewal", "Pilot"])),
                "owner_id": owner,
                "person_id": any(rng, persons),
                "org_id": any(rng, orgs),
                "stage_id": stage,
                "value": rng.random_range(1..500u64) * 100,
                "status": status,
                "expected_close_date": close.format("%Y-%m-%d").to_string(),
                "visible_to": 3,
                "origin": "ManuallyCreated",
            }));
            if status == "lost" {
                m.insert("lost_reason".into(), json!(pick(rng, &["Price", "Timing", "Competitor"])));
            }
            m
        }
        Entity::Activities => {
            let ty = pick(rng, &["call", "meeting", "task", "email"]);
            let due = crate::clock::to_datetime(at_ms + rng.random_range(0..30i64) * DAY_MS);
            obj(json!({
                "subject": format!("{} {first} {last}", pick(rng, seed::ACTIVITY_VERBS)),
                "type": ty,
                "owner_id": owner,
                "deal_id": any(rng, deals),
                "person_id": any(rng, persons),
                "due_date": due.format("%Y-%m-%d").to_string(),
                "due_time": format!("{:02}:{:02}", rng.random_range(8..18), 15 * rng.random_range(0..4)),
                "duration": "00:30",
                "done": rng.random_bool(0.4),
                "note": format!("Discuss {} and {}.", pick(rng, seed::NOTE_WORDS), pick(rng, seed::NOTE_WORDS)),
            }))
        }
        Entity::Notes => {
            let mut m = obj(json!({
                "content": format!("<p>{} {} {}</p>", pick(rng, seed::NOTE_WORDS), pick(rng, seed::NOTE_WORDS), pick(rng, seed::NOTE_WORDS)),
                "user_id": owner,
            }));
            if rng.random_bool(0.5) && !deals.is_empty() {
                m.insert("deal_id".into(), any(rng, deals));
            } else if !persons.is_empty() {
                m.insert("person_id".into(), any(rng, persons));
            } else if !orgs.is_empty() {
                m.insert("org_id".into(), any(rng, orgs));
            }
            m
        }
    }
}

/// Seeds a fresh company with `counts[entity.index()]` records of each entity, deterministically from
/// `seed` and `company_id`: creation times spread over the 90 days before `now` (whole seconds, ids
/// increasing with creation time), a third never modified, a tenth of the deals archived.
pub fn seed_account(
    seed: u64,
    company_id: u64,
    counts: [usize; 5],
    now: Millis,
    mut data: AccountData,
) -> AccountData {
    let company = company_id.to_string();
    let users: Vec<i64> = data.users.iter().map(|u| u.id).collect();
    let mut linked: [Vec<u64>; 5] = Default::default();
    for e in Entity::ALL {
        let records = counts[e.index()];
        let mut rng = rng_for(seed, &["pipedrive", &company, e.name()]);
        let mut times: Vec<(Millis, Millis)> = (0..records)
            .map(|_| {
                let created = to_second(now - rng.random_range(DAY_MS..90 * DAY_MS));
                let modified =
                    if rng.random_bool(0.33) { created } else { to_second(rng.random_range(created..now)) };
                (created, modified.max(created))
            })
            .collect();
        times.sort();
        for (i, (created, modified)) in times.into_iter().enumerate() {
            let links = (
                linked[Entity::Organizations.index()].as_slice(),
                linked[Entity::Persons.index()].as_slice(),
                linked[Entity::Deals.index()].as_slice(),
            );
            let mut fields = fake_fields(e, &mut rng, i as u64 + 1, company_id, &users, links, created);
            if e == Entity::Deals && rng.random_bool(0.1) {
                fields.insert("is_archived".into(), Value::Bool(true));
            }
            let id = data.insert_seeded(e, fields, Map::new(), created, modified);
            linked[e.index()].push(id);
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> AccountData {
        let u = |id: i64| User { id, name: format!("U{id}"), email: format!("u{id}@x.test") };
        AccountData::new(vec![u(11), u(12)], "EUR", Vec::new())
    }

    #[test]
    fn seeding_is_deterministic() {
        let a = seed_account(7, 1, [30; 5], 1_767_603_600_000, empty());
        let b = seed_account(7, 1, [30; 5], 1_767_603_600_000, empty());
        let c = seed_account(8, 1, [30; 5], 1_767_603_600_000, empty());
        for e in Entity::ALL {
            assert_eq!(a.table(e).rows.len(), 30);
            assert_eq!(a.table(e).rows, b.table(e).rows);
        }
        assert_ne!(a.table(Entity::Persons).rows, c.table(Entity::Persons).rows);
        assert!(a.table(Entity::Deals).count(Bucket::Archived) > 0);
    }

    #[test]
    fn soft_delete_moves_buckets_and_purges_after_retention() {
        let mut d = seed_account(1, 1, [3; 5], 100 * DAY_MS, empty());
        let id = *d.table(Entity::Persons).rows.keys().next().expect("a person");
        d.delete(Entity::Persons, id, 100 * DAY_MS + 1_500, "api").expect("deleted");
        let r = &d.table(Entity::Persons).rows[&id];
        assert_eq!(r.deleted_at, Some(100 * DAY_MS + 1_000), "second precision");
        assert_eq!(d.table(Entity::Persons).count(Bucket::Deleted), 1);
        assert!(matches!(d.delete(Entity::Persons, id, 0, "api"), Err(WriteError::NotFound(..))));
        assert!(!d.purge_due(130 * DAY_MS, 30 * DAY_MS));
        assert!(d.purge_due(130 * DAY_MS + 1_000, 30 * DAY_MS));
        assert_eq!(d.purge(130 * DAY_MS + 1_000, 30 * DAY_MS), 1);
        assert!(!d.table(Entity::Persons).rows.contains_key(&id));
        assert_eq!(d.table(Entity::Persons).count(Bucket::Deleted), 0);
    }

    #[test]
    fn deal_stage_sets_pipeline_and_status_sets_times() {
        let mut d = empty();
        let (id, _) =
            d.create(Entity::Deals, obj(json!({"title": "x", "stage_id": 7})), Map::new(), 5_000, "api");
        let r = &d.table(Entity::Deals).rows[&id];
        assert_eq!(r.int("pipeline_id"), Some(2));
        assert_eq!(r.str("status"), Some("open"));
        d.update(
            Entity::Deals,
            id,
            obj(json!({"status": "won", "is_archived": true})),
            Map::new(),
            9_000,
            "api",
        )
        .expect("updated");
        let r = &d.table(Entity::Deals).rows[&id];
        assert_eq!(r.str("won_time"), Some("1970-01-01T00:00:09Z"));
        assert_eq!(r.bucket(), Bucket::Archived);
    }
}
