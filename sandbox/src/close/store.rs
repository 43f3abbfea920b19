//! One Close organization's data: leads, contacts, opportunities, tasks, calls and notes, their
//! indexes, the change journal, the event log, and the deterministic seeding of a fresh organization.
//!
//! Records keep their writable fields as JSON (`fields`) in the canonical shape Close returns them,
//! plus typed timestamps. Each [`Table`] keeps live records by id, deleted records separately (the
//! control plane can still read them), and two ordered indexes, `(date_created, id)` and
//! `(date_updated, id)`, so listings ordered by either, and `date_updated__gte` windows, never sort a
//! whole table. `by_lead` maps a lead to its children (contacts, opportunities, tasks, calls, notes).
//!
//! Invariants: every live record is in exactly one place in each index, keyed by its current
//! timestamps; a child's `lead_id` names a live lead and the child is in that lead's `by_lead` set;
//! every write goes through [`AccountData::create`], [`AccountData::update`] or
//! [`AccountData::delete`], which stamp the logical time, append to the journal and write an event
//! (deleting a lead deletes its children, each with its own journal entry and event).

use super::events::{EventLog, EventWrite};
use crate::changes::{Change, ChangeOp, Journal};
use crate::clock::{Millis, to_datetime};
use crate::seed::{self, pick, rng_for};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The object types the imitation stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A lead: Close's company/account.
    Lead,
    /// A contact (belongs to one lead).
    Contact,
    /// An opportunity (deal).
    Opportunity,
    /// A task (`_type: lead`).
    Task,
    /// A call activity.
    Call,
    /// A note activity.
    Note,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 6] =
        [Kind::Lead, Kind::Contact, Kind::Opportunity, Kind::Task, Kind::Call, Kind::Note];

    /// The kinds a sync reads (leads, contacts, opportunities).
    pub const SYNCED: [Kind; 3] = [Kind::Lead, Kind::Contact, Kind::Opportunity];

    /// Table index.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used by the control plane, the journal and `created` counters.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Lead => "lead",
            Kind::Contact => "contact",
            Kind::Opportunity => "opportunity",
            Kind::Task => "task",
            Kind::Call => "call",
            Kind::Note => "note",
        }
    }

    /// `object_type` in the event log.
    pub fn event_type(self) -> &'static str {
        match self {
            Kind::Lead => "lead",
            Kind::Contact => "contact",
            Kind::Opportunity => "opportunity",
            Kind::Task => "task.lead",
            Kind::Call => "activity.call",
            Kind::Note => "activity.note",
        }
    }

    /// The id prefix Close uses.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Lead => "lead_",
            Kind::Contact => "cont_",
            Kind::Opportunity => "oppo_",
            Kind::Task => "task_",
            Kind::Call | Kind::Note => "acti_",
        }
    }

    /// Human name for error messages (`Lead matching query does not exist.`).
    pub fn title(self) -> &'static str {
        match self {
            Kind::Lead => "Lead",
            Kind::Contact => "Contact",
            Kind::Opportunity => "Opportunity",
            Kind::Task => "Task",
            Kind::Call => "Call",
            Kind::Note => "Note",
        }
    }

    /// Parses a control-plane or event object name (`contact`, `contacts`, `activity.call`, ...).
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lead" | "leads" => Some(Kind::Lead),
            "contact" | "contacts" => Some(Kind::Contact),
            "opportunity" | "opportunities" => Some(Kind::Opportunity),
            "task" | "tasks" | "task.lead" => Some(Kind::Task),
            "call" | "calls" | "activity.call" => Some(Kind::Call),
            "note" | "notes" | "activity.note" => Some(Kind::Note),
            _ => None,
        }
    }

    /// Whether the kind is a child of a lead.
    pub fn is_child(self) -> bool {
        self != Kind::Lead
    }
}

/// Close's date-time format: `2013-02-01T00:54:51.331000+00:00`.
pub fn close_time(ms: Millis) -> String {
    to_datetime(ms).format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// The event log's top-level format, without offset: `2019-01-15T12:48:23.395000`.
pub fn naive_time(ms: Millis) -> String {
    to_datetime(ms).format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// Parses a Close date or date-time (`2025-01-31`, RFC 3339, or a naive UTC date-time).
pub fn parse_close_time(s: &str) -> Option<Millis> {
    if let Some(ms) = crate::clock::parse_time(s) {
        return Some(ms);
    }
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// One record.
#[derive(Clone, Debug)]
pub struct Record {
    /// Prefixed id (`lead_…`, `cont_…`, ...).
    pub id: String,
    /// Stored fields in Close's response shape (without id, timestamps, organization and computed
    /// fields).
    pub fields: Map<String, Value>,
    /// Creation time.
    pub created_at: Millis,
    /// Last modification time.
    pub updated_at: Millis,
    /// Deletion time, for deleted records.
    pub deleted_at: Option<Millis>,
}

impl Record {
    /// A stored field as text.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// The lead a child belongs to.
    pub fn lead_id(&self) -> Option<&str> {
        self.str("lead_id")
    }
}

/// One kind's records and indexes.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Live records by id.
    pub live: BTreeMap<String, Record>,
    /// Deleted records by id.
    pub deleted: BTreeMap<String, Record>,
    /// `(date_created, id)` of live records.
    pub by_created: BTreeSet<(Millis, String)>,
    /// `(date_updated, id)` of live records.
    pub by_updated: BTreeSet<(Millis, String)>,
}

impl Table {
    fn insert(&mut self, r: Record) {
        self.by_created.insert((r.created_at, r.id.clone()));
        self.by_updated.insert((r.updated_at, r.id.clone()));
        self.live.insert(r.id.clone(), r);
    }

    fn take(&mut self, id: &str) -> Option<Record> {
        let r = self.live.remove(id)?;
        self.by_created.remove(&(r.created_at, r.id.clone()));
        self.by_updated.remove(&(r.updated_at, r.id.clone()));
        Some(r)
    }
}

/// A user of the organization.
#[derive(Clone, Debug)]
pub struct User {
    /// `user_…`.
    pub id: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Email.
    pub email: String,
}

impl User {
    /// Full name.
    pub fn name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

/// A lead or opportunity status.
#[derive(Clone, Debug)]
pub struct Status {
    /// `stat_…`.
    pub id: String,
    /// Label.
    pub label: String,
    /// `active`, `won` or `lost` (opportunities only).
    pub status_type: Option<&'static str>,
}

/// A custom field definition.
#[derive(Clone, Debug)]
pub struct CustomField {
    /// `cf_…`.
    pub id: String,
    /// Name.
    pub name: String,
    /// `text`, `hidden`, `choices`, `number`, ...
    pub field_type: &'static str,
    /// Which kind it belongs to.
    pub kind: Kind,
    /// Allowed values for `choices`.
    pub choices: Vec<String>,
}

/// Name of the contact custom field crm-fleet writes its action marker into (a `hidden` text field,
/// as crm-fleet's onboarding would create in a real organization).
pub const MARKER_FIELD_NAME: &str = "crm_fleet_action_id";

/// Organization-level, read-only configuration.
#[derive(Clone, Debug)]
pub struct Meta {
    /// `orga_…`.
    pub org_id: String,
    /// Organization name.
    pub org_name: String,
    /// Users; the first one authorized the OAuth app and owns the API key, the second is "another
    /// user" for mutations made through the control plane.
    pub users: Vec<User>,
    /// Opportunity statuses (Active, Won, Lost).
    pub opp_statuses: Vec<Status>,
    /// Lead statuses.
    pub lead_statuses: Vec<Status>,
    /// The opportunity pipeline `(id, name)`.
    pub pipeline: (String, String),
    /// Custom fields.
    pub custom_fields: Vec<CustomField>,
}

impl Meta {
    /// A user by id.
    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// An opportunity status by id.
    pub fn opp_status(&self, id: &str) -> Option<&Status> {
        self.opp_statuses.iter().find(|s| s.id == id)
    }

    /// A lead status by id.
    pub fn lead_status(&self, id: &str) -> Option<&Status> {
        self.lead_statuses.iter().find(|s| s.id == id)
    }

    /// A custom field of `kind` by id.
    pub fn custom_field(&self, kind: Kind, id: &str) -> Option<&CustomField> {
        self.custom_fields.iter().find(|c| c.kind == kind && c.id == id)
    }

    /// The marker custom field on contacts.
    pub fn marker_field(&self) -> Option<&CustomField> {
        self.custom_fields.iter().find(|c| c.kind == Kind::Contact && c.name == MARKER_FIELD_NAME)
    }
}

/// Field-level validation errors: field name → message (Close's `field-errors`).
pub type FieldErrors = BTreeMap<String, String>;

/// Why a write failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// No live record with that id.
    NotFound(Kind),
    /// Validation failed.
    Invalid(FieldErrors),
    /// A plan limit was reached (402).
    PlanLimit(String),
}

/// Who made a write, for `created_by`/`updated_by`, events and the journal.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The acting user.
    pub user_id: String,
    /// Journal source: `api`, `mutation`, `generator` or `control`.
    pub source: String,
    /// `req_…` of the API request (events carry it).
    pub request_id: String,
    /// HTTP method and path of the request, for event `meta`.
    pub meta: Option<(String, String)>,
}

/// One organization's data.
#[derive(Clone, Debug)]
pub struct AccountData {
    /// Organization configuration.
    pub meta: Meta,
    tables: [Table; 6],
    /// Lead id → its children `(kind, id)`.
    pub by_lead: BTreeMap<String, BTreeSet<(Kind, String)>>,
    /// Every change.
    pub journal: Journal,
    /// The event log.
    pub events: EventLog,
    /// Ids for runtime creates.
    id_rng: ChaCha8Rng,
    /// Records a plan allows (leads + contacts + opportunities), if limited.
    pub record_limit: Option<u64>,
}

/// A random Close-style id: prefix plus 43 alphanumeric characters.
pub fn new_id(rng: &mut impl Rng, prefix: &str) -> String {
    format!("{prefix}{}", seed::random_string(rng, seed::ALNUM, 43))
}

impl AccountData {
    /// An empty organization.
    pub fn new(meta: Meta, id_rng: ChaCha8Rng) -> Self {
        Self {
            meta,
            tables: Default::default(),
            by_lead: BTreeMap::new(),
            journal: Journal::default(),
            events: EventLog::default(),
            id_rng,
            record_limit: None,
        }
    }

    /// One kind's table.
    pub fn table(&self, kind: Kind) -> &Table {
        &self.tables[kind.index()]
    }

    fn table_mut(&mut self, kind: Kind) -> &mut Table {
        &mut self.tables[kind.index()]
    }

    /// Live record count per kind.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        Kind::ALL.iter().map(|k| (k.name(), self.table(*k).live.len())).collect()
    }

    /// Deleted record count per kind.
    pub fn deleted_counts(&self) -> BTreeMap<&'static str, usize> {
        Kind::ALL.iter().map(|k| (k.name(), self.table(*k).deleted.len())).collect()
    }

    /// A live record.
    pub fn get(&self, kind: Kind, id: &str) -> Option<&Record> {
        self.table(kind).live.get(id)
    }

    /// A live or deleted record.
    pub fn any(&self, kind: Kind, id: &str) -> Option<&Record> {
        let t = self.table(kind);
        t.live.get(id).or_else(|| t.deleted.get(id))
    }

    /// A fresh id for `kind`.
    pub fn fresh_id(&mut self, kind: Kind) -> String {
        new_id(&mut self.id_rng, kind.prefix())
    }

    /// A fresh `req_…` id.
    pub fn fresh_request_id(&mut self) -> String {
        format!("req_{}", seed::random_string(&mut self.id_rng, seed::ALNUM, 22))
    }

    /// Live children of a lead, of one kind, in id order.
    pub fn children(&self, lead_id: &str, kind: Kind) -> Vec<&Record> {
        self.by_lead
            .get(lead_id)
            .map(|s| s.iter().filter(|(k, _)| *k == kind).filter_map(|(k, id)| self.get(*k, id)).collect())
            .unwrap_or_default()
    }

    fn limited_count(&self) -> u64 {
        Kind::SYNCED.iter().map(|k| self.table(*k).live.len() as u64).sum()
    }

    /// Validates a create or update body for `kind`, returning the normalised fields to store.
    /// `existing` is the record being updated (`None` on create).
    pub fn validate(
        &self,
        kind: Kind,
        body: &Map<String, Value>,
        existing: Option<&Record>,
    ) -> Result<Map<String, Value>, FieldErrors> {
        validate(self, kind, body, existing)
    }

    /// Creates a record from an already validated field map (children need a live `lead_id`).
    pub fn create(
        &mut self,
        kind: Kind,
        mut fields: Map<String, Value>,
        now: Millis,
        actor: &Actor,
    ) -> Result<(String, Vec<Change>), WriteError> {
        if let Some(limit) = self.record_limit
            && Kind::SYNCED.contains(&kind)
            && self.limited_count() >= limit
        {
            return Err(WriteError::PlanLimit(format!(
                "Your organization has reached the limit of {limit} records on its current plan."
            )));
        }
        let mut changes = Vec::new();
        let nested_contacts = if kind == Kind::Lead { fields.remove("contacts") } else { None };
        if kind == Kind::Contact && !fields.contains_key("lead_id") {
            // Close creates a lead named after the contact.
            let mut lead = Map::new();
            let name = fields.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            lead.insert("name".into(), json!(name));
            lead.insert("status_id".into(), json!(self.meta.lead_statuses[0].id));
            let (lead_id, mut c) = self.create(Kind::Lead, lead, now, actor)?;
            changes.append(&mut c);
            fields.insert("lead_id".into(), json!(lead_id));
        }
        if kind == Kind::Opportunity && !fields.contains_key("lead_id") {
            let mut lead = Map::new();
            lead.insert("name".into(), json!(""));
            lead.insert("status_id".into(), json!(self.meta.lead_statuses[0].id));
            let (lead_id, mut c) = self.create(Kind::Lead, lead, now, actor)?;
            changes.append(&mut c);
            fields.insert("lead_id".into(), json!(lead_id));
        }
        if kind.is_child() {
            let lead = fields.get("lead_id").and_then(Value::as_str).unwrap_or("");
            if self.get(Kind::Lead, lead).is_none() {
                return Err(WriteError::Invalid(one("lead_id", "Object does not exist.")));
            }
        }
        fields.insert("created_by".into(), json!(actor.user_id));
        fields.insert("updated_by".into(), json!(actor.user_id));
        let id = self.fresh_id(kind);
        let rec = Record { id: id.clone(), fields, created_at: now, updated_at: now, deleted_at: None };
        if let Some(lead) = rec.lead_id().map(str::to_owned) {
            self.by_lead.entry(lead).or_default().insert((kind, id.clone()));
        }
        self.table_mut(kind).insert(rec);
        changes.push(self.journal.push(now, ChangeOp::Create, kind.name(), &id, &actor.source));
        self.write_event(kind, &id, "created", now, actor, Vec::new(), Map::new());
        if let Some(Value::Array(contacts)) = nested_contacts {
            for c in contacts {
                let Value::Object(mut m) = c else { continue };
                m.insert("lead_id".into(), json!(id));
                let (_, mut c) = self.create(Kind::Contact, m, now, actor)?;
                changes.append(&mut c);
            }
        }
        Ok((id, changes))
    }

    /// Applies validated fields to a live record (a patch: absent fields keep their value).
    pub fn update(
        &mut self,
        kind: Kind,
        id: &str,
        fields: Map<String, Value>,
        now: Millis,
        actor: &Actor,
    ) -> Result<Change, WriteError> {
        let t = self.table_mut(kind);
        let Some(mut rec) = t.take(id) else {
            return Err(WriteError::NotFound(kind));
        };
        let mut previous = Map::new();
        let mut changed = Vec::new();
        for (k, v) in fields {
            let old = rec.fields.get(&k).cloned().unwrap_or(Value::Null);
            if old != v {
                previous.insert(k.clone(), old);
                changed.push(k.clone());
            }
            if v.is_null() && k.starts_with("custom.") {
                rec.fields.remove(&k);
            } else {
                rec.fields.insert(k, v);
            }
        }
        if kind == Kind::Opportunity
            && changed.iter().any(|c| c == "status_id")
            && rec.str("status_id").and_then(|s| self.meta.opp_status(s)).and_then(|s| s.status_type)
                == Some("won")
            && rec.fields.get("date_won").is_none_or(Value::is_null)
        {
            // Setting a won status sets date_won to today when it is not set.
            let today = to_datetime(now).date_naive().to_string();
            previous.insert("date_won".into(), Value::Null);
            changed.push("date_won".into());
            rec.fields.insert("date_won".into(), json!(today));
        }
        previous.insert("date_updated".into(), json!(close_time(rec.updated_at)));
        changed.push("date_updated".into());
        rec.fields.insert("updated_by".into(), json!(actor.user_id));
        rec.updated_at = now;
        self.table_mut(kind).insert(rec);
        let change = self.journal.push(now, ChangeOp::Update, kind.name(), id, &actor.source);
        self.write_event(kind, id, "updated", now, actor, changed, previous);
        Ok(change)
    }

    /// Deletes a live record (a lead takes its children with it). Returns every change, children
    /// first.
    pub fn delete(
        &mut self,
        kind: Kind,
        id: &str,
        now: Millis,
        actor: &Actor,
    ) -> Result<Vec<Change>, WriteError> {
        if self.get(kind, id).is_none() {
            return Err(WriteError::NotFound(kind));
        }
        let mut changes = Vec::new();
        if kind == Kind::Lead {
            let children: Vec<(Kind, String)> =
                self.by_lead.get(id).map(|s| s.iter().cloned().collect()).unwrap_or_default();
            for (k, cid) in children {
                changes.extend(self.delete(k, &cid, now, actor)?);
            }
            self.by_lead.remove(id);
        }
        // The event carries the record as it was.
        let data = self.render(kind, self.get(kind, id).ok_or(WriteError::NotFound(kind))?);
        let t = self.table_mut(kind);
        let Some(mut rec) = t.take(id) else {
            return Err(WriteError::NotFound(kind));
        };
        rec.deleted_at = Some(now);
        let lead = rec.lead_id().map(str::to_owned);
        t.deleted.insert(id.to_owned(), rec);
        if let Some(lead) = lead
            && let Some(s) = self.by_lead.get_mut(&lead)
        {
            s.remove(&(kind, id.to_owned()));
        }
        changes.push(self.journal.push(now, ChangeOp::Delete, kind.name(), id, &actor.source));
        self.events.write(EventWrite {
            org_id: self.meta.org_id.clone(),
            object_type: kind.event_type(),
            object_id: id.to_owned(),
            lead_id: if kind == Kind::Lead {
                Some(id.to_owned())
            } else {
                data.get("lead_id").and_then(Value::as_str).map(str::to_owned)
            },
            action: "deleted",
            now,
            user_id: actor.user_id.clone(),
            request_id: actor.request_id.clone(),
            meta: actor.meta.clone(),
            changed_fields: Vec::new(),
            previous_data: data,
            data: Map::new(),
        });
        Ok(changes)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_event(
        &mut self,
        kind: Kind,
        id: &str,
        action: &'static str,
        now: Millis,
        actor: &Actor,
        changed_fields: Vec<String>,
        mut previous_data: Map<String, Value>,
    ) {
        let Some(rec) = self.get(kind, id) else { return };
        let data = self.render(kind, rec);
        let lead_id = if kind == Kind::Lead { Some(id.to_owned()) } else { rec.lead_id().map(str::to_owned) };
        previous_data.retain(|k, _| changed_fields.contains(k));
        self.events.write(EventWrite {
            org_id: self.meta.org_id.clone(),
            object_type: kind.event_type(),
            object_id: id.to_owned(),
            lead_id,
            action,
            now,
            user_id: actor.user_id.clone(),
            request_id: actor.request_id.clone(),
            meta: actor.meta.clone(),
            changed_fields,
            previous_data,
            data,
        });
    }

    /// A record as the API returns it (every field; `_fields` projection is the caller's job).
    pub fn render(&self, kind: Kind, r: &Record) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(r.id));
        m.insert("organization_id".into(), json!(self.meta.org_id));
        m.insert("date_created".into(), json!(close_time(r.created_at)));
        m.insert("date_updated".into(), json!(close_time(r.updated_at)));
        for (k, v) in &r.fields {
            m.insert(k.clone(), v.clone());
        }
        let user_name = |id: Option<&str>| id.and_then(|u| self.meta.user(u)).map(User::name);
        m.insert("created_by_name".into(), json!(user_name(r.str("created_by"))));
        m.insert("updated_by_name".into(), json!(user_name(r.str("updated_by"))));
        let lead_name =
            r.lead_id().and_then(|l| self.any(Kind::Lead, l)).map(|l| l.str("name").unwrap_or("").to_owned());
        match kind {
            Kind::Lead => {
                let name = r.str("name").unwrap_or("");
                m.insert("display_name".into(), json!(if name.is_empty() { "Untitled" } else { name }));
                let status = r.str("status_id").and_then(|s| self.meta.lead_status(s));
                m.insert("status_label".into(), json!(status.map(|s| s.label.clone())));
                m.insert("html_url".into(), json!(format!("https://app.close.com/lead/{}/", r.id)));
                let children = |k: Kind| -> Value {
                    Value::Array(
                        self.children(&r.id, k)
                            .into_iter()
                            .filter(|c| k != Kind::Task || c.fields.get("is_complete") != Some(&json!(true)))
                            .map(|c| Value::Object(self.render(k, c)))
                            .collect(),
                    )
                };
                m.insert("contacts".into(), children(Kind::Contact));
                m.insert("opportunities".into(), children(Kind::Opportunity));
                m.insert("tasks".into(), children(Kind::Task));
            }
            Kind::Contact => {
                m.insert("display_name".into(), json!(r.str("name").unwrap_or("")));
            }
            Kind::Opportunity => {
                m.insert("lead_name".into(), json!(lead_name));
                let contact_name = r
                    .str("contact_id")
                    .and_then(|c| self.any(Kind::Contact, c))
                    .map(|c| c.str("name").unwrap_or("").to_owned());
                m.insert("contact_name".into(), json!(contact_name));
                m.insert("user_name".into(), json!(user_name(r.str("user_id"))));
                let status = r.str("status_id").and_then(|s| self.meta.opp_status(s));
                m.insert("status_label".into(), json!(status.map(|s| s.label.clone())));
                m.insert("status_type".into(), json!(status.and_then(|s| s.status_type)));
                m.insert("pipeline_id".into(), json!(self.meta.pipeline.0));
                m.insert("pipeline_name".into(), json!(self.meta.pipeline.1));
                let value = r.fields.get("value").and_then(Value::as_i64);
                let currency = r.str("value_currency").unwrap_or("USD");
                m.insert("value_formatted".into(), json!(value.map(|v| format_money(v, currency))));
                let confidence = r.fields.get("confidence").and_then(Value::as_i64).unwrap_or(0);
                let annualized = value.map(|v| match r.str("value_period") {
                    Some("monthly") => v * 12,
                    _ => v,
                });
                m.insert("annualized_value".into(), json!(annualized));
                m.insert("expected_value".into(), json!(value.map(|v| v * confidence / 100)));
                m.insert("annualized_expected_value".into(), json!(annualized.map(|v| v * confidence / 100)));
            }
            Kind::Task => {
                m.insert("_type".into(), r.fields.get("_type").cloned().unwrap_or(json!("lead")));
                m.insert("lead_name".into(), json!(lead_name));
                m.insert("assigned_to_name".into(), json!(user_name(r.str("assigned_to"))));
                m.insert("is_dateless".into(), json!(r.fields.get("date").is_none_or(Value::is_null)));
            }
            Kind::Call | Kind::Note => {
                m.insert("_type".into(), json!(if kind == Kind::Call { "Call" } else { "Note" }));
                m.insert("user_name".into(), json!(user_name(r.str("user_id"))));
                m.insert("lead_name".into(), json!(lead_name));
            }
        }
        m
    }

    /// Inserts a seeded record with given timestamps (no journal entry, no event, no validation).
    fn insert_seeded(
        &mut self,
        kind: Kind,
        id: String,
        fields: Map<String, Value>,
        created: Millis,
        updated: Millis,
    ) {
        let rec =
            Record { id: id.clone(), fields, created_at: created, updated_at: updated, deleted_at: None };
        if let Some(lead) = rec.lead_id().map(str::to_owned) {
            self.by_lead.entry(lead).or_default().insert((kind, id));
        }
        self.table_mut(kind).insert(rec);
    }

    /// A deterministic, uniformly chosen live record of `kind`.
    pub fn pick_live(&self, kind: Kind, rng: &mut ChaCha8Rng) -> Option<String> {
        let t = self.table(kind);
        if t.live.is_empty() {
            return None;
        }
        let n = rng.random_range(0..t.live.len());
        t.live.keys().nth(n).cloned()
    }

    /// The searchable text of a record, as the control plane's `created` listing shows it.
    pub fn searchable_text(&self, kind: Kind, id: &str) -> String {
        let Some(r) = self.get(kind, id) else { return String::new() };
        let mut parts: Vec<String> = Vec::new();
        for k in ["name", "title", "text", "note", "description"] {
            if let Some(v) = r.str(k).filter(|v| !v.is_empty()) {
                parts.push(v.to_owned());
            }
        }
        if let Some(Value::Array(emails)) = r.fields.get("emails") {
            parts.extend(emails.iter().filter_map(|e| e.get("email")?.as_str().map(str::to_owned)));
        }
        for (k, v) in &r.fields {
            if k.starts_with("custom.")
                && let Some(s) = v.as_str()
            {
                parts.push(s.to_owned());
            }
        }
        parts.join("\n")
    }
}

fn one(field: &str, message: &str) -> FieldErrors {
    let mut e = FieldErrors::new();
    e.insert(field.to_owned(), message.to_owned());
    e
}

/// Formats cents as Close's `value_formatted` (`$3,000`, `$1,000.50`, `EUR 10`).
pub fn format_money(cents: i64, currency: &str) -> String {
    let neg = cents < 0;
    let abs = cents.unsigned_abs();
    let (units, rest) = (abs / 100, abs % 100);
    let digits = units.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if rest != 0 {
        grouped.push_str(&format!(".{rest:02}"));
    }
    let symbol = match currency {
        "USD" | "CAD" | "AUD" => "$".to_owned(),
        "EUR" => "€".to_owned(),
        "GBP" => "£".to_owned(),
        other => format!("{other} "),
    };
    format!("{}{symbol}{grouped}", if neg { "-" } else { "" })
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// The fields a client may write, per kind; everything else (ids, timestamps, computed fields) is
/// read-only and rejected.
fn writable(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Lead => &["name", "description", "url", "status_id", "contacts", "addresses"],
        Kind::Contact => &["lead_id", "name", "title", "emails", "phones", "urls"],
        Kind::Opportunity => &[
            "lead_id",
            "contact_id",
            "user_id",
            "status_id",
            "value",
            "value_period",
            "value_currency",
            "confidence",
            "note",
            "date_won",
        ],
        Kind::Task => &["_type", "lead_id", "contact_id", "assigned_to", "text", "date", "is_complete"],
        Kind::Call => &[
            "lead_id",
            "contact_id",
            "user_id",
            "direction",
            "status",
            "duration",
            "phone",
            "note",
            "note_html",
            "recording_url",
            "activity_at",
        ],
        Kind::Note => {
            &["lead_id", "contact_id", "user_id", "note", "note_html", "title", "pinned", "activity_at"]
        }
    }
}

/// Fields that only a create may set.
fn create_only(kind: Kind, field: &str) -> bool {
    matches!((kind, field), (Kind::Task, "_type")) || (kind.is_child() && field == "lead_id")
}

const REQUIRED: &str = "This field is required.";

fn validate(
    d: &AccountData,
    kind: Kind,
    body: &Map<String, Value>,
    existing: Option<&Record>,
) -> Result<Map<String, Value>, FieldErrors> {
    let create = existing.is_none();
    let mut out = Map::new();
    let mut errs = FieldErrors::new();
    for (k, v) in body {
        if let Some(cf_id) = k.strip_prefix("custom.") {
            match d.meta.custom_field(kind, cf_id) {
                None => {
                    errs.insert(k.clone(), format!("Unknown custom field {cf_id}."));
                }
                Some(cf) => match check_custom(cf, v) {
                    Ok(v) => {
                        out.insert(k.clone(), v);
                    }
                    Err(m) => {
                        errs.insert(k.clone(), m);
                    }
                },
            }
            continue;
        }
        if !writable(kind).contains(&k.as_str()) {
            errs.insert(k.clone(), "Unknown or read-only field.".to_owned());
            continue;
        }
        if !create && create_only(kind, k) {
            if existing.and_then(|e| e.fields.get(k)) != Some(v) {
                errs.insert(k.clone(), "This field cannot be changed.".to_owned());
            }
            continue;
        }
        match check_field(d, kind, k, v, body, existing) {
            Ok(Some(v)) => {
                out.insert(k.clone(), v);
            }
            Ok(None) => {}
            Err(m) => {
                errs.insert(k.clone(), m);
            }
        }
    }
    if create {
        let required: &[&str] = match kind {
            Kind::Task => &["lead_id", "text"],
            Kind::Call | Kind::Note => &["lead_id"],
            _ => &[],
        };
        for r in required {
            if !body.contains_key(*r) && !errs.contains_key(*r) {
                errs.insert((*r).to_owned(), REQUIRED.to_owned());
            }
        }
        apply_defaults(d, kind, &mut out);
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

fn apply_defaults(d: &AccountData, kind: Kind, out: &mut Map<String, Value>) {
    let mut default = |k: &str, v: Value| {
        out.entry(k.to_owned()).or_insert(v);
    };
    match kind {
        Kind::Lead => {
            default("name", json!(""));
            default("description", json!(""));
            default("url", Value::Null);
            default("status_id", json!(d.meta.lead_statuses[0].id));
            default("addresses", json!([]));
        }
        Kind::Contact => {
            default("name", json!(""));
            default("title", json!(""));
            default("emails", json!([]));
            default("phones", json!([]));
            default("urls", json!([]));
        }
        Kind::Opportunity => {
            default("status_id", json!(d.meta.opp_statuses[0].id));
            default("contact_id", Value::Null);
            default("user_id", json!(d.meta.users[0].id));
            default("value", Value::Null);
            default("value_period", json!("one_time"));
            default("value_currency", json!("USD"));
            default("confidence", json!(0));
            default("note", json!(""));
            default("date_won", Value::Null);
            default("date_lost", Value::Null);
        }
        Kind::Task => {
            default("_type", json!("lead"));
            default("contact_id", Value::Null);
            default("assigned_to", json!(d.meta.users[0].id));
            default("date", Value::Null);
            default("is_complete", json!(false));
        }
        Kind::Call => {
            default("contact_id", Value::Null);
            default("user_id", json!(d.meta.users[0].id));
            default("direction", json!("outbound"));
            default("status", json!("completed"));
            default("duration", json!(0));
            default("phone", Value::Null);
            default("note", json!(""));
            default("recording_url", Value::Null);
        }
        Kind::Note => {
            default("contact_id", Value::Null);
            default("user_id", json!(d.meta.users[0].id));
            default("note", json!(""));
            default("title", json!(""));
            default("pinned", json!(false));
        }
    }
    if matches!(kind, Kind::Call | Kind::Note) && !out.contains_key("note_html") {
        let note = out.get("note").and_then(Value::as_str).unwrap_or("").to_owned();
        out.insert("note_html".into(), json!(format!("<p>{}</p>", html_escape(&note))));
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn check_custom(cf: &CustomField, v: &Value) -> Result<Value, String> {
    match (cf.field_type, v) {
        (_, Value::Null) => Ok(Value::Null),
        ("text" | "hidden", Value::String(s)) => Ok(json!(s)),
        ("number", Value::Number(n)) => Ok(Value::Number(n.clone())),
        ("choices", Value::String(s)) if cf.choices.contains(s) => Ok(json!(s)),
        ("choices", Value::String(s)) => Err(format!("{s} is not a valid choice.")),
        (t, _) => Err(format!("Invalid value for a {t} field.")),
    }
}

fn text(v: &Value) -> Result<Option<Value>, String> {
    match v {
        Value::String(s) => Ok(Some(json!(s))),
        Value::Null => Ok(Some(json!(""))),
        _ => Err("Not a valid string.".to_owned()),
    }
}

fn date_only(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

fn check_field(
    d: &AccountData,
    kind: Kind,
    k: &str,
    v: &Value,
    body: &Map<String, Value>,
    existing: Option<&Record>,
) -> Result<Option<Value>, String> {
    let lead_of_request = || -> Option<String> {
        body.get("lead_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| existing.and_then(|e| e.lead_id().map(str::to_owned)))
    };
    match (kind, k) {
        (_, "name" | "description" | "title" | "note" | "text") => {
            if k == "text" && v.as_str().is_some_and(|s| s.trim().is_empty()) {
                return Err(REQUIRED.to_owned());
            }
            text(v)
        }
        (_, "lead_id") => match v.as_str() {
            Some(id) if d.get(Kind::Lead, id).is_some() => Ok(Some(json!(id))),
            Some(_) => Err("Object does not exist.".to_owned()),
            None => Err(REQUIRED.to_owned()),
        },
        (_, "contact_id") => match v {
            Value::Null => Ok(Some(Value::Null)),
            Value::String(id) => match d.get(Kind::Contact, id) {
                None => Err("Object does not exist.".to_owned()),
                Some(c) if lead_of_request().is_some_and(|l| c.lead_id() != Some(l.as_str())) => {
                    Err("Contact does not belong to this lead.".to_owned())
                }
                Some(_) => Ok(Some(json!(id))),
            },
            _ => Err("Not a valid string.".to_owned()),
        },
        (_, "user_id" | "assigned_to") => match v.as_str() {
            Some(u) if d.meta.user(u).is_some() => Ok(Some(json!(u))),
            _ => Err("Invalid user.".to_owned()),
        },
        (Kind::Lead, "url") => match v {
            Value::Null => Ok(Some(Value::Null)),
            Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => Ok(Some(json!(s))),
            _ => Err("Enter a valid URL.".to_owned()),
        },
        (Kind::Lead, "status_id") => match v.as_str() {
            Some(s) if d.meta.lead_status(s).is_some() => Ok(Some(json!(s))),
            _ => Err("Invalid lead status.".to_owned()),
        },
        (Kind::Lead, "contacts") => match v {
            Value::Array(items) if existing.is_none() => {
                for item in items {
                    let Value::Object(m) = item else { return Err("Invalid contact.".to_owned()) };
                    if m.contains_key("lead_id") {
                        return Err("Nested contacts cannot name a lead_id.".to_owned());
                    }
                    if let Err(e) = validate(d, Kind::Contact, m, None) {
                        let (f, msg) = e.into_iter().next().unwrap_or_default();
                        return Err(format!("{f}: {msg}"));
                    }
                }
                Ok(Some(v.clone()))
            }
            Value::Array(_) => Err("Update contacts through the contact endpoint.".to_owned()),
            _ => Err("Expected a list.".to_owned()),
        },
        (Kind::Lead, "addresses") => match v {
            Value::Array(a) if a.iter().all(Value::is_object) => Ok(Some(v.clone())),
            _ => Err("Expected a list of addresses.".to_owned()),
        },
        (Kind::Contact, "emails") => entries(v, "email", |e| {
            e.split_once('@').is_some_and(|(l, dom)| !l.is_empty() && dom.contains('.'))
        })
        .map(|mut list| {
            for e in &mut list {
                e.entry("is_unsubscribed").or_insert(json!(false));
            }
            Some(Value::Array(list.into_iter().map(Value::Object).collect()))
        }),
        (Kind::Contact, "phones") => {
            entries(v, "phone", |p| p.chars().filter(char::is_ascii_digit).count() >= 5).map(|mut list| {
                for p in &mut list {
                    let phone = p.get("phone").cloned().unwrap_or(Value::Null);
                    p.insert("phone_formatted".into(), phone);
                }
                Some(Value::Array(list.into_iter().map(Value::Object).collect()))
            })
        }
        (Kind::Contact, "urls") => entries(v, "url", |u| u.contains('.'))
            .map(|list| Some(Value::Array(list.into_iter().map(Value::Object).collect()))),
        (Kind::Opportunity, "status_id") => match v.as_str() {
            Some(s) if d.meta.opp_status(s).is_some() => Ok(Some(json!(s))),
            _ => Err("Invalid opportunity status.".to_owned()),
        },
        (Kind::Opportunity, "value") => match v {
            Value::Null => Ok(Some(Value::Null)),
            Value::Number(n) if n.is_i64() => Ok(Some(v.clone())),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 => Ok(Some(json!(f as i64))),
                _ => Err("Value must be an integer number of cents.".to_owned()),
            },
            _ => Err("A valid integer is required.".to_owned()),
        },
        (Kind::Opportunity, "value_period") => match v.as_str() {
            Some(p @ ("one_time" | "monthly" | "annual")) => Ok(Some(json!(p))),
            _ => Err("Must be one of one_time, monthly, annual.".to_owned()),
        },
        (Kind::Opportunity, "value_currency") => match v.as_str() {
            Some(c) if c.len() == 3 && c.chars().all(|x| x.is_ascii_uppercase()) => Ok(Some(json!(c))),
            _ => Err("Invalid currency.".to_owned()),
        },
        (Kind::Opportunity, "confidence") => match v.as_i64() {
            Some(c) if (0..=100).contains(&c) => Ok(Some(json!(c))),
            _ => Err("Ensure this value is an integer between 0 and 100.".to_owned()),
        },
        (Kind::Opportunity, "date_won") => match v {
            Value::Null => Ok(Some(Value::Null)),
            Value::String(s) if date_only(s) => Ok(Some(json!(s))),
            _ => Err("Date has wrong format. Use YYYY-MM-DD.".to_owned()),
        },
        (Kind::Task, "_type") => match v.as_str() {
            Some(t @ ("lead" | "outgoing_call")) => Ok(Some(json!(t))),
            _ => Err("Only lead and outgoing_call tasks can be created.".to_owned()),
        },
        (Kind::Task, "date") => match v {
            Value::Null => Ok(Some(Value::Null)),
            Value::String(s) if date_only(s) => Ok(Some(json!(s))),
            Value::String(s) => match crate::clock::parse_time(s) {
                Some(ms) => Ok(Some(json!(close_time(ms)))),
                None => Err("Enter a valid date or date-time.".to_owned()),
            },
            _ => Err("Enter a valid date or date-time.".to_owned()),
        },
        (Kind::Task, "is_complete") | (Kind::Note, "pinned") => match v {
            Value::Bool(_) => Ok(Some(v.clone())),
            _ => Err("Must be a boolean.".to_owned()),
        },
        (Kind::Call, "direction") => match v.as_str() {
            Some(x @ ("inbound" | "outbound")) => Ok(Some(json!(x))),
            _ => Err("Must be inbound or outbound.".to_owned()),
        },
        (Kind::Call, "status") => match v.as_str() {
            Some(x @ ("completed" | "no-answer" | "busy" | "failed" | "canceled")) => Ok(Some(json!(x))),
            _ => Err("Invalid call status.".to_owned()),
        },
        (Kind::Call, "duration") => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(json!(n))),
            _ => Err("Ensure this value is a non-negative integer.".to_owned()),
        },
        (Kind::Call, "phone") => match v {
            Value::Null => Ok(Some(Value::Null)),
            Value::String(_) => Ok(Some(v.clone())),
            _ => Err("Not a valid string.".to_owned()),
        },
        (Kind::Call, "recording_url") => match v {
            Value::Null => Ok(Some(Value::Null)),
            Value::String(s) if s.starts_with("https://") => Ok(Some(v.clone())),
            _ => Err("Recording URL must use https.".to_owned()),
        },
        (Kind::Call | Kind::Note, "note_html") => text(v),
        (Kind::Call | Kind::Note, "activity_at") => match v.as_str().and_then(crate::clock::parse_time) {
            Some(ms) => Ok(Some(json!(close_time(ms)))),
            None => Err("Enter a valid date-time.".to_owned()),
        },
        _ => Err("Unknown or read-only field.".to_owned()),
    }
}

/// Validates a list of `{<key>: value, type}` entries (emails, phones, urls).
fn entries(v: &Value, key: &str, ok: impl Fn(&str) -> bool) -> Result<Vec<Map<String, Value>>, String> {
    let Value::Array(items) = v else { return Err("Expected a list.".to_owned()) };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(m) = item else { return Err(format!("Each item needs an {key}.")) };
        for field in m.keys() {
            if field != key && field != "type" && field != "is_unsubscribed" && field != "phone_formatted" {
                return Err(format!("Unknown field {field}."));
            }
        }
        let Some(val) = m.get(key).and_then(Value::as_str) else {
            return Err(format!("Each item needs an {key}."));
        };
        if !ok(val) {
            return Err(format!("Invalid {key}: {val}."));
        }
        let mut e = Map::new();
        e.insert("type".into(), m.get("type").cloned().unwrap_or(json!("office")));
        e.insert(key.into(), json!(if key == "email" { val.trim().to_lowercase() } else { val.to_owned() }));
        out.push(e);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Seeding and fake data
// ---------------------------------------------------------------------------------------------

/// The organization configuration of a fresh account, deterministic from `seed` and the index.
pub fn seed_meta(seed: u64, index: u64) -> Meta {
    let mut rng = rng_for(seed, &["close", "org", &index.to_string()]);
    let org_id = new_id(&mut rng, "orga_");
    let users = (0..2)
        .map(|i| {
            let first = pick(&mut rng, seed::FIRST_NAMES).to_owned();
            let last = pick(&mut rng, seed::LAST_NAMES).to_owned();
            User {
                id: new_id(&mut rng, "user_"),
                email: format!(
                    "{}.{}.{i}@org{index}.sandbox.test",
                    first.to_lowercase(),
                    last.to_lowercase()
                ),
                first_name: first,
                last_name: last,
            }
        })
        .collect();
    let status = |rng: &mut ChaCha8Rng, label: &str, t: Option<&'static str>| Status {
        id: new_id(rng, "stat_"),
        label: label.to_owned(),
        status_type: t,
    };
    let opp_statuses = vec![
        status(&mut rng, "Active", Some("active")),
        status(&mut rng, "Won", Some("won")),
        status(&mut rng, "Lost", Some("lost")),
    ];
    let lead_statuses =
        ["Potential", "Bad Fit", "Qualified", "Customer"].iter().map(|l| status(&mut rng, l, None)).collect();
    let pipeline = (new_id(&mut rng, "pipe_"), "Sales".to_owned());
    let custom_fields = vec![
        CustomField {
            id: new_id(&mut rng, "cf_"),
            name: MARKER_FIELD_NAME.to_owned(),
            field_type: "hidden",
            kind: Kind::Contact,
            choices: Vec::new(),
        },
        CustomField {
            id: new_id(&mut rng, "cf_"),
            name: "Industry".to_owned(),
            field_type: "choices",
            kind: Kind::Lead,
            choices: ["Software", "Retail", "Finance", "Healthcare", "Logistics"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        },
    ];
    Meta {
        org_name: format!(
            "{} {}",
            pick(&mut rng, seed::COMPANY_PREFIXES),
            pick(&mut rng, seed::COMPANY_SUFFIXES)
        ),
        org_id,
        users,
        opp_statuses,
        lead_statuses,
        pipeline,
        custom_fields,
    }
}

/// Plausible fields for a new record of `kind` (seeding and mutation creates), with `lead_id` (and
/// for opportunities a contact of that lead) already chosen by the caller. `n` makes values unique.
pub fn fake_fields(
    meta: &Meta,
    kind: Kind,
    rng: &mut ChaCha8Rng,
    n: u64,
    lead_id: Option<&str>,
    contact_id: Option<&str>,
    at: Millis,
) -> Map<String, Value> {
    let first = pick(rng, seed::FIRST_NAMES);
    let last = pick(rng, seed::LAST_NAMES);
    let company = format!("{} {}", pick(rng, seed::COMPANY_PREFIXES), pick(rng, seed::COMPANY_SUFFIXES));
    let domain = format!("{}{}.example", company.split(' ').next().unwrap_or("acme").to_lowercase(), n % 97);
    let user = &meta.users[rng.random_range(0..meta.users.len())].id;
    let mut m = Map::new();
    if let Some(l) = lead_id {
        m.insert("lead_id".into(), json!(l));
    }
    match kind {
        Kind::Lead => {
            m.insert("name".into(), json!(company));
            m.insert(
                "description".into(),
                json!(format!("{} lead from {}", pick(rng, seed::NOTE_WORDS), pick(rng, seed::CITIES))),
            );
            m.insert("url".into(), json!(format!("https://{domain}")));
            m.insert(
                "status_id".into(),
                json!(meta.lead_statuses[rng.random_range(0..meta.lead_statuses.len())].id),
            );
            m.insert(
                "addresses".into(),
                json!([{"label": "business", "city": pick(rng, seed::CITIES), "country": pick(rng, seed::COUNTRIES)}]),
            );
            if let Some(cf) = meta.custom_fields.iter().find(|c| c.kind == Kind::Lead) {
                m.insert(
                    format!("custom.{}", cf.id),
                    json!(cf.choices[rng.random_range(0..cf.choices.len())]),
                );
            }
        }
        Kind::Contact => {
            m.insert("name".into(), json!(format!("{first} {last}")));
            m.insert(
                "title".into(),
                json!(pick(rng, &["CEO", "CTO", "VP Sales", "Engineer", "Buyer", "Analyst"])),
            );
            m.insert(
                "emails".into(),
                json!([{"type": "office", "email": format!("{}.{}.{n}@{domain}", first.to_lowercase(), last.to_lowercase()), "is_unsubscribed": false}]),
            );
            let phone = format!("+1555{:07}", rng.random_range(0..10_000_000));
            m.insert("phones".into(), json!([{"type": "office", "phone": phone, "phone_formatted": phone}]));
            m.insert("urls".into(), json!([]));
        }
        Kind::Opportunity => {
            let status = &meta.opp_statuses[rng.random_range(0..meta.opp_statuses.len())];
            m.insert("status_id".into(), json!(status.id));
            m.insert("contact_id".into(), json!(contact_id));
            m.insert("user_id".into(), json!(user));
            m.insert("value".into(), json!(rng.random_range(1..5_000i64) * 10_000));
            m.insert("value_period".into(), json!(pick(rng, &["one_time", "one_time", "monthly", "annual"])));
            m.insert("value_currency".into(), json!("USD"));
            m.insert("confidence".into(), json!(rng.random_range(0..=10i64) * 10));
            m.insert(
                "note".into(),
                json!(format!(
                    "{} {}",
                    pick(rng, &["New licence", "Expansion", "Renewal", "Pilot"]),
                    company
                )),
            );
            let won = (status.status_type == Some("won"))
                .then(|| to_datetime(at + rng.random_range(0..30i64) * 86_400_000).date_naive().to_string());
            m.insert("date_won".into(), json!(won));
            m.insert("date_lost".into(), Value::Null);
        }
        Kind::Task => {
            m.insert("_type".into(), json!("lead"));
            m.insert("contact_id".into(), json!(contact_id));
            m.insert("assigned_to".into(), json!(user));
            m.insert("text".into(), json!(format!("{} {first} {last}", pick(rng, seed::ACTIVITY_VERBS))));
            m.insert(
                "date".into(),
                json!(to_datetime(at + rng.random_range(0..30i64) * 86_400_000).date_naive().to_string()),
            );
            m.insert("is_complete".into(), json!(rng.random_bool(0.3)));
        }
        Kind::Call => {
            m.insert("contact_id".into(), json!(contact_id));
            m.insert("user_id".into(), json!(user));
            m.insert("direction".into(), json!(pick(rng, &["inbound", "outbound"])));
            m.insert("status".into(), json!("completed"));
            m.insert("duration".into(), json!(rng.random_range(10..3_600i64)));
            m.insert("phone".into(), json!(format!("+1555{:07}", rng.random_range(0..10_000_000))));
            let note = format!("Talked about {}.", pick(rng, seed::NOTE_WORDS));
            m.insert("note_html".into(), json!(format!("<p>{note}</p>")));
            m.insert("note".into(), json!(note));
            m.insert("recording_url".into(), Value::Null);
            m.insert("activity_at".into(), json!(close_time(at)));
        }
        Kind::Note => {
            m.insert("contact_id".into(), json!(contact_id));
            m.insert("user_id".into(), json!(user));
            let note = format!(
                "{} {} {}",
                pick(rng, seed::NOTE_WORDS),
                pick(rng, seed::NOTE_WORDS),
                pick(rng, seed::NOTE_WORDS)
            );
            m.insert("note_html".into(), json!(format!("<p>{note}</p>")));
            m.insert("note".into(), json!(note));
            m.insert("title".into(), json!(""));
            m.insert("pinned".into(), json!(false));
            m.insert("activity_at".into(), json!(close_time(at)));
        }
    }
    if kind != Kind::Lead || !m.contains_key("created_by") {
        m.insert("created_by".into(), json!(user));
        m.insert("updated_by".into(), json!(user));
    }
    m
}

/// Fields a mutation changes on an existing record.
pub fn mutation_update(meta: &Meta, kind: Kind, rng: &mut ChaCha8Rng, now: Millis) -> Map<String, Value> {
    let mut m = Map::new();
    match kind {
        Kind::Lead => {
            m.insert(
                "description".into(),
                json!(format!("Updated: {} at {}", pick(rng, seed::NOTE_WORDS), close_time(now))),
            );
        }
        Kind::Contact => {
            m.insert(
                "title".into(),
                json!(pick(rng, &["CEO", "CTO", "VP Sales", "Engineer", "Buyer", "Analyst", "COO"])),
            );
        }
        Kind::Opportunity => {
            m.insert("value".into(), json!(rng.random_range(1..5_000i64) * 10_000));
            m.insert("confidence".into(), json!(rng.random_range(0..=10i64) * 10));
            m.insert(
                "status_id".into(),
                json!(meta.opp_statuses[rng.random_range(0..meta.opp_statuses.len())].id),
            );
        }
        Kind::Task => {
            m.insert("is_complete".into(), json!(rng.random_bool(0.5)));
        }
        Kind::Call | Kind::Note => {
            m.insert("note".into(), json!(format!("Follow-up on {}.", pick(rng, seed::NOTE_WORDS))));
        }
    }
    m
}

/// Seeds a fresh organization with `counts[kind.index()]` records of each kind, deterministically
/// from `seed` and the organization id: creation times spread over the 90 days before `now`, a third
/// never modified, children attached to random leads (and, for opportunities, tasks, calls and notes,
/// to a contact of that lead when it has one).
pub fn seed_account(seed: u64, meta: Meta, counts: [usize; 6], now: Millis) -> AccountData {
    const DAY: Millis = 86_400_000;
    let org = meta.org_id.clone();
    let id_rng = rng_for(seed, &["close", &org, "runtime-ids"]);
    let mut data = AccountData::new(meta, id_rng);
    let mut leads: Vec<String> = Vec::new();
    let mut contacts_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kind in Kind::ALL {
        let n = if kind.is_child() && leads.is_empty() { 0 } else { counts[kind.index()] };
        let mut rng = rng_for(seed, &["close", &org, kind.name()]);
        let mut times: Vec<(Millis, Millis)> = (0..n)
            .map(|_| {
                let created = now - rng.random_range(DAY..90 * DAY);
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
        for (i, (created, modified)) in times.into_iter().enumerate() {
            let id = new_id(&mut rng, kind.prefix());
            let lead = kind.is_child().then(|| leads[rng.random_range(0..leads.len())].clone());
            let contact = match (&lead, kind) {
                (Some(l), Kind::Opportunity | Kind::Task | Kind::Call | Kind::Note) => contacts_of
                    .get(l)
                    .filter(|c| !c.is_empty())
                    .map(|c| c[rng.random_range(0..c.len())].clone()),
                _ => None,
            };
            let fields = fake_fields(
                &data.meta,
                kind,
                &mut rng,
                i as u64 + 1,
                lead.as_deref(),
                contact.as_deref(),
                created,
            );
            match kind {
                Kind::Lead => leads.push(id.clone()),
                Kind::Contact => {
                    if let Some(l) = &lead {
                        contacts_of.entry(l.clone()).or_default().push(id.clone());
                    }
                }
                _ => {}
            }
            data.insert_seeded(kind, id, fields, created, modified);
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor { user_id: "user_x".into(), source: "api".into(), request_id: "req_1".into(), meta: None }
    }

    #[test]
    fn seeding_is_deterministic_and_children_point_at_live_leads() {
        let a = seed_account(7, seed_meta(7, 1), [20; 6], 1_767_603_600_000);
        let b = seed_account(7, seed_meta(7, 1), [20; 6], 1_767_603_600_000);
        for k in Kind::ALL {
            assert_eq!(a.table(k).live.len(), 20);
            let ia: Vec<_> =
                a.table(k).live.values().map(|r| (r.id.clone(), r.fields.clone(), r.updated_at)).collect();
            let ib: Vec<_> =
                b.table(k).live.values().map(|r| (r.id.clone(), r.fields.clone(), r.updated_at)).collect();
            assert_eq!(ia, ib);
        }
        for c in a.table(Kind::Contact).live.values() {
            let lead = c.lead_id().expect("lead");
            assert!(a.get(Kind::Lead, lead).is_some());
            assert!(a.by_lead[lead].contains(&(Kind::Contact, c.id.clone())));
        }
        assert!(a.table(Kind::Lead).live.keys().all(|k| k.starts_with("lead_") && k.len() == 48));
    }

    #[test]
    fn deleting_a_lead_deletes_its_children_and_journals_each() {
        let mut d = seed_account(3, seed_meta(3, 1), [3, 6, 6, 0, 0, 0], 1_767_603_600_000);
        let lead = d.table(Kind::Lead).live.keys().next().cloned().expect("lead");
        let children = d.by_lead.get(&lead).map(BTreeSet::len).unwrap_or(0);
        let changes = d.delete(Kind::Lead, &lead, 1_767_603_600_000, &actor()).expect("deleted");
        assert_eq!(changes.len(), children + 1);
        assert!(d.get(Kind::Lead, &lead).is_none());
        assert!(d.any(Kind::Lead, &lead).is_some_and(|r| r.deleted_at.is_some()));
        assert_eq!(d.journal.last_seq(), changes.len() as u64);
    }

    #[test]
    fn money_is_formatted_like_close() {
        assert_eq!(format_money(300_000, "USD"), "$3,000");
        assert_eq!(format_money(100_050, "USD"), "$1,000.50");
        assert_eq!(format_money(1_234_567_800, "EUR"), "€12,345,678");
    }
}
