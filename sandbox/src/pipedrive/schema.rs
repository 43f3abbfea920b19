//! Pipedrive's entities and the fixed configuration every account shares (`crm-providers.md` §3):
//! entity names and OAuth scopes, users, pipelines and stages, activity types, field definitions,
//! and the typed validation of v2 (and v1 notes) write bodies.
//!
//! Write bodies are validated field by field against [`FieldSpec`] tables: unknown fields, wrong
//! JSON types, malformed dates, emails and enumerations are rejected with the field named, as v2's
//! strict JSON parsing does. References to other records (`org_id`, `person_id`, ...) and owners
//! are checked later against the account's data (`store`).
//!
//! Invariant: a body that passes [`validate`] holds only known fields, each normalised to the JSON
//! type Pipedrive returns for it, so the store never has to re-check types.

use serde_json::{Map, Value};

/// The entity types the imitation stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// People (`/api/v2/persons`).
    Persons,
    /// Companies (`/api/v2/organizations`).
    Organizations,
    /// Deals (`/api/v2/deals`, `/api/v2/deals/archived`).
    Deals,
    /// Tasks, calls, meetings, ... (`/api/v2/activities`).
    Activities,
    /// Notes (`/v1/notes`; there is no v2 endpoint).
    Notes,
}

impl Entity {
    /// Every entity, in seeding order (organizations first so persons can link to them).
    pub const ALL: [Entity; 5] =
        [Entity::Organizations, Entity::Persons, Entity::Deals, Entity::Activities, Entity::Notes];

    /// Plural path and journal name (`persons`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Entity::Persons => "persons",
            Entity::Organizations => "organizations",
            Entity::Deals => "deals",
            Entity::Activities => "activities",
            Entity::Notes => "notes",
        }
    }

    /// Singular name, as search results and `recents` call it (`person`, ...).
    pub fn singular(self) -> &'static str {
        match self {
            Entity::Persons => "person",
            Entity::Organizations => "organization",
            Entity::Deals => "deal",
            Entity::Activities => "activity",
            Entity::Notes => "note",
        }
    }

    /// Capitalised singular for messages (`Person not found`).
    pub fn title(self) -> &'static str {
        match self {
            Entity::Persons => "Person",
            Entity::Organizations => "Organization",
            Entity::Deals => "Deal",
            Entity::Activities => "Activity",
            Entity::Notes => "Note",
        }
    }

    /// Position in per-entity arrays.
    pub fn index(self) -> usize {
        match self {
            Entity::Organizations => 0,
            Entity::Persons => 1,
            Entity::Deals => 2,
            Entity::Activities => 3,
            Entity::Notes => 4,
        }
    }

    /// Parses a control-plane or `recents` name (plural, singular, `org`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "persons" | "person" | "people" | "contacts" | "contact" => Some(Entity::Persons),
            "organizations" | "organization" | "org" | "orgs" | "companies" | "company" => {
                Some(Entity::Organizations)
            }
            "deals" | "deal" => Some(Entity::Deals),
            "activities" | "activity" => Some(Entity::Activities),
            "notes" | "note" => Some(Entity::Notes),
            _ => None,
        }
    }

    /// OAuth scopes of which any one allows reading.
    pub fn read_scopes(self) -> &'static [&'static str] {
        match self {
            Entity::Persons | Entity::Organizations => &["contacts:read", "contacts:full"],
            Entity::Deals => &["deals:read", "deals:full"],
            Entity::Activities => &["activities:read", "activities:full"],
            Entity::Notes => &["deals:read", "deals:full", "contacts:read", "contacts:full"],
        }
    }

    /// OAuth scopes of which any one allows writing.
    pub fn write_scopes(self) -> &'static [&'static str] {
        match self {
            Entity::Persons | Entity::Organizations => &["contacts:full"],
            Entity::Deals => &["deals:full"],
            Entity::Activities => &["activities:full"],
            Entity::Notes => &["deals:full", "contacts:full"],
        }
    }

    /// Whether the account's crm-fleet marker custom field exists on this entity.
    pub fn has_marker_field(self) -> bool {
        matches!(self, Entity::Persons | Entity::Activities | Entity::Notes)
    }

    /// The `{entity}Fields` endpoint name (`personFields`, ...).
    pub fn fields_endpoint(self) -> &'static str {
        match self {
            Entity::Persons => "personFields",
            Entity::Organizations => "organizationFields",
            Entity::Deals => "dealFields",
            Entity::Activities => "activityFields",
            Entity::Notes => "noteFields",
        }
    }
}

/// Every OAuth scope the sandbox app can hold (Pipedrive's scope names).
pub const ALL_SCOPES: &[&str] = &[
    "base",
    "deals:read",
    "deals:full",
    "contacts:read",
    "contacts:full",
    "activities:read",
    "activities:full",
    "search:read",
    "recents:read",
    "users:read",
];

/// Scopes that allow person search (any one).
pub const SEARCH_SCOPES: &[&str] = &["contacts:read", "contacts:full", "search:read"];

/// The name of the varchar custom field each account carries for crm-fleet's action marker.
pub const MARKER_FIELD_NAME: &str = "crm-fleet action id";

/// Deal statuses.
pub const DEAL_STATUSES: &[&str] = &["open", "won", "lost"];

/// Values of `visible_to` (owner only, owner's visibility group, ..., entire company).
pub const VISIBLE_TO: &[i64] = &[1, 3, 5, 7];

/// One pipeline and its stages `(stage id, name, probability)`.
#[derive(Clone, Copy, Debug)]
pub struct Pipeline {
    /// Pipeline id.
    pub id: i64,
    /// Name.
    pub name: &'static str,
    /// Stages in order.
    pub stages: &'static [(i64, &'static str, i64)],
}

/// The two pipelines every account has.
pub const PIPELINES: &[Pipeline] = &[
    Pipeline {
        id: 1,
        name: "Sales pipeline",
        stages: &[
            (1, "Qualified", 10),
            (2, "Contact made", 20),
            (3, "Demo scheduled", 40),
            (4, "Proposal made", 60),
            (5, "Negotiations started", 80),
        ],
    },
    Pipeline {
        id: 2,
        name: "Renewals",
        stages: &[(6, "Up for renewal", 50), (7, "Renewal quoted", 70), (8, "Renewal signed", 90)],
    },
];

/// The pipeline a stage belongs to.
pub fn pipeline_of_stage(stage_id: i64) -> Option<&'static Pipeline> {
    PIPELINES.iter().find(|p| p.stages.iter().any(|s| s.0 == stage_id))
}

/// A pipeline by id.
pub fn pipeline(id: i64) -> Option<&'static Pipeline> {
    PIPELINES.iter().find(|p| p.id == id)
}

/// Activity types `(id, name, key_string, icon_key)`: Pipedrive's defaults.
pub const ACTIVITY_TYPES: &[(i64, &str, &str, &str)] = &[
    (1, "Call", "call", "call"),
    (2, "Meeting", "meeting", "meeting"),
    (3, "Task", "task", "task"),
    (4, "Deadline", "deadline", "deadline"),
    (5, "Email", "email", "email"),
    (6, "Lunch", "lunch", "lunch"),
];

/// Whether `key` is an activity type's `key_string`.
pub fn is_activity_type(key: &str) -> bool {
    ACTIVITY_TYPES.iter().any(|t| t.2 == key)
}

/// Activity priorities (the `activityFields` options of `priority`).
pub const PRIORITIES: &[(i64, &str)] = &[(1, "Low"), (2, "Medium"), (3, "High")];

/// Deal currencies accepted.
pub const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "SEK", "NOK", "DKK", "JPY", "CAD", "AUD"];

/// The shape a field's value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A non-empty string of at most this many characters.
    Text(usize),
    /// A string (may be empty) of at most this many characters.
    LongText(usize),
    /// An integer id of a user (checked against the account's users later).
    UserId,
    /// An integer id of another record (checked later); `null` clears.
    Ref(Entity),
    /// A non-negative number.
    Number,
    /// `true` or `false`.
    Bool,
    /// `0`/`1` or a boolean (v1 flags).
    Flag,
    /// `YYYY-MM-DD`.
    Date,
    /// `HH:MM`.
    Time,
    /// `HH:MM` duration.
    Duration,
    /// An RFC 3339 date-time (second precision).
    DateTime,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// One of these integers.
    IntOneOf(&'static [i64]),
    /// A three-letter currency code from [`CURRENCIES`].
    Currency,
    /// An integer stage id of one of the pipelines.
    Stage,
    /// An integer pipeline id.
    PipelineId,
    /// An activity type `key_string`.
    ActivityType,
    /// `[{value, primary?, label?}]` with email values.
    Emails,
    /// `[{value, primary?, label?}]`.
    Phones,
    /// `[{person_id, primary?}]`.
    Participants,
    /// `[integer]`.
    IntList,
    /// An object (address, location) kept as given.
    Object,
    /// `{hash: value}` custom fields (checked against the account's custom fields later).
    CustomFields,
}

/// One writable field.
#[derive(Clone, Copy, Debug)]
pub struct FieldSpec {
    /// Wire name.
    pub name: &'static str,
    /// Value shape.
    pub kind: Kind,
    /// Must be present (and not null) on create.
    pub required: bool,
}

const fn f(name: &'static str, kind: Kind) -> FieldSpec {
    FieldSpec { name, kind, required: false }
}

const fn req(name: &'static str, kind: Kind) -> FieldSpec {
    FieldSpec { name, kind, required: true }
}

const PERSON_FIELDS: &[FieldSpec] = &[
    req("name", Kind::Text(255)),
    f("owner_id", Kind::UserId),
    f("org_id", Kind::Ref(Entity::Organizations)),
    f("emails", Kind::Emails),
    f("phones", Kind::Phones),
    f("visible_to", Kind::IntOneOf(VISIBLE_TO)),
    f("label_ids", Kind::IntList),
    f("marketing_status", Kind::OneOf(&["no_consent", "unsubscribed", "subscribed", "archived"])),
    f("custom_fields", Kind::CustomFields),
];

const ORG_FIELDS: &[FieldSpec] = &[
    req("name", Kind::Text(255)),
    f("owner_id", Kind::UserId),
    f("visible_to", Kind::IntOneOf(VISIBLE_TO)),
    f("label_ids", Kind::IntList),
    f("address", Kind::Object),
    f("custom_fields", Kind::CustomFields),
];

const DEAL_FIELDS: &[FieldSpec] = &[
    req("title", Kind::Text(255)),
    f("owner_id", Kind::UserId),
    f("person_id", Kind::Ref(Entity::Persons)),
    f("org_id", Kind::Ref(Entity::Organizations)),
    f("pipeline_id", Kind::PipelineId),
    f("stage_id", Kind::Stage),
    f("value", Kind::Number),
    f("currency", Kind::Currency),
    f("status", Kind::OneOf(DEAL_STATUSES)),
    f("probability", Kind::Number),
    f("lost_reason", Kind::LongText(255)),
    f("visible_to", Kind::IntOneOf(VISIBLE_TO)),
    f("expected_close_date", Kind::Date),
    f("is_archived", Kind::Bool),
    f("label_ids", Kind::IntList),
    f("origin_id", Kind::LongText(255)),
    f("custom_fields", Kind::CustomFields),
];

const ACTIVITY_FIELDS: &[FieldSpec] = &[
    f("subject", Kind::Text(255)),
    f("type", Kind::ActivityType),
    f("owner_id", Kind::UserId),
    f("deal_id", Kind::Ref(Entity::Deals)),
    f("person_id", Kind::Ref(Entity::Persons)),
    f("org_id", Kind::Ref(Entity::Organizations)),
    f("due_date", Kind::Date),
    f("due_time", Kind::Time),
    f("duration", Kind::Duration),
    f("busy", Kind::Bool),
    f("done", Kind::Bool),
    f("location", Kind::Object),
    f("participants", Kind::Participants),
    f("public_description", Kind::LongText(65_535)),
    f("priority", Kind::IntOneOf(&[1, 2, 3])),
    f("note", Kind::LongText(65_535)),
    f("custom_fields", Kind::CustomFields),
];

/// v1 notes: custom fields are top-level keys, handled by the caller.
const NOTE_FIELDS: &[FieldSpec] = &[
    req("content", Kind::LongText(100_000)),
    f("user_id", Kind::UserId),
    f("deal_id", Kind::Ref(Entity::Deals)),
    f("person_id", Kind::Ref(Entity::Persons)),
    f("org_id", Kind::Ref(Entity::Organizations)),
    f("pinned_to_deal_flag", Kind::Flag),
    f("pinned_to_person_flag", Kind::Flag),
    f("pinned_to_organization_flag", Kind::Flag),
];

/// The writable fields of an entity.
pub fn fields(e: Entity) -> &'static [FieldSpec] {
    match e {
        Entity::Persons => PERSON_FIELDS,
        Entity::Organizations => ORG_FIELDS,
        Entity::Deals => DEAL_FIELDS,
        Entity::Activities => ACTIVITY_FIELDS,
        Entity::Notes => NOTE_FIELDS,
    }
}

/// A field that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field (`emails`, `stage_id`, or a custom field key).
    pub field: String,
    /// Why.
    pub message: String,
    /// Whether `field` is a custom field key (Pipedrive then adds `field_code`).
    pub custom: bool,
}

impl FieldError {
    /// An error on a standard field.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into(), custom: false }
    }
}

/// Whether a string looks like an email address (one `@`, a dot in the domain, no spaces).
pub fn is_email(s: &str) -> bool {
    let s = s.trim();
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    }
}

fn is_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
}

fn is_hhmm(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' {
        return false;
    }
    match (s[..2].parse::<u32>(), s[3..].parse::<u32>()) {
        (Ok(h), Ok(m)) => h < 24 && m < 60,
        _ => false,
    }
}

fn is_duration(s: &str) -> bool {
    let Some((h, m)) = s.split_once(':') else { return false };
    h.len() >= 2 && m.len() == 2 && h.parse::<u32>().is_ok() && m.parse::<u32>().is_ok_and(|m| m < 60)
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
}

fn contact_list(field: &str, v: &Value, emails: bool) -> Result<Value, FieldError> {
    let Some(items) = v.as_array() else {
        return Err(FieldError::new(field, "must be an array of objects"));
    };
    let mut out = Vec::with_capacity(items.len());
    let mut primaries = 0;
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            return Err(FieldError::new(field, format!("item {i} must be an object")));
        };
        if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "value" | "primary" | "label")) {
            return Err(FieldError::new(field, format!("item {i} has unknown property {k}")));
        }
        let value = match obj.get("value") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => return Err(FieldError::new(field, format!("item {i}: value must be a non-empty string"))),
        };
        if emails && !is_email(&value) {
            return Err(FieldError::new(field, format!("item {i}: {value:?} is not a valid email address")));
        }
        let primary = match obj.get("primary") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(FieldError::new(field, format!("item {i}: primary must be a boolean"))),
        };
        if primary {
            primaries += 1;
        }
        let label = match obj.get("label") {
            None | Some(Value::Null) => {
                if emails {
                    "work".to_owned()
                } else {
                    "mobile".to_owned()
                }
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(FieldError::new(field, format!("item {i}: label must be a string"))),
        };
        out.push(serde_json::json!({"value": value, "primary": primary, "label": label}));
    }
    if primaries > 1 {
        return Err(FieldError::new(field, "only one item can be primary"));
    }
    if primaries == 0
        && let Some(first) = out.first_mut()
    {
        first["primary"] = Value::Bool(true);
    }
    Ok(Value::Array(out))
}

fn check(spec: &FieldSpec, v: &Value) -> Result<Value, FieldError> {
    let name = spec.name;
    let bad = |what: &str| Err(FieldError::new(name, what.to_owned()));
    if v.is_null() {
        return match spec.kind {
            Kind::Text(_) if spec.required => bad("must not be null"),
            Kind::Emails | Kind::Phones | Kind::Participants | Kind::IntList => Ok(Value::Array(Vec::new())),
            _ => Ok(Value::Null),
        };
    }
    match spec.kind {
        Kind::Text(max) => match v.as_str().map(str::trim) {
            Some("") => bad("must not be empty"),
            Some(s) if s.chars().count() <= max => Ok(Value::String(s.to_owned())),
            Some(_) => bad(&format!("must be at most {max} characters")),
            None => bad("must be a string"),
        },
        Kind::LongText(max) => match v.as_str() {
            Some(s) if s.chars().count() <= max => Ok(Value::String(s.to_owned())),
            Some(_) => bad(&format!("must be at most {max} characters")),
            None => bad("must be a string"),
        },
        Kind::UserId | Kind::Ref(_) | Kind::PipelineId | Kind::Stage => match int(v) {
            Some(n) if n > 0 => {
                if spec.kind == Kind::Stage && pipeline_of_stage(n).is_none() {
                    return bad(&format!("stage {n} does not exist"));
                }
                if spec.kind == Kind::PipelineId && pipeline(n).is_none() {
                    return bad(&format!("pipeline {n} does not exist"));
                }
                Ok(Value::from(n))
            }
            _ => bad("must be a positive integer"),
        },
        Kind::Number => match v.as_f64() {
            Some(n) if n >= 0.0 && n.is_finite() => Ok(v.clone()),
            Some(_) => bad("must not be negative"),
            None => bad("must be a number"),
        },
        Kind::Bool => match v {
            Value::Bool(_) => Ok(v.clone()),
            _ => bad("must be a boolean"),
        },
        Kind::Flag => match v {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            _ => match int(v) {
                Some(0) => Ok(Value::Bool(false)),
                Some(1) => Ok(Value::Bool(true)),
                _ => bad("must be 0 or 1"),
            },
        },
        Kind::Date => match v.as_str() {
            Some(s) if is_date(s) => Ok(v.clone()),
            _ => bad("must be a date in the format YYYY-MM-DD"),
        },
        Kind::Time => match v.as_str() {
            Some(s) if is_hhmm(s) => Ok(v.clone()),
            _ => bad("must be a time in the format HH:MM"),
        },
        Kind::Duration => match v.as_str() {
            Some(s) if is_duration(s) => Ok(v.clone()),
            _ => bad("must be a duration in the format HH:MM"),
        },
        Kind::DateTime => match v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
            Some(_) => Ok(v.clone()),
            None => bad("must be an RFC 3339 date-time"),
        },
        Kind::OneOf(options) => match v.as_str() {
            Some(s) if options.contains(&s) => Ok(v.clone()),
            _ => bad(&format!("must be one of {}", options.join(", "))),
        },
        Kind::IntOneOf(options) => match int(v) {
            Some(n) if options.contains(&n) => Ok(Value::from(n)),
            _ => bad(&format!(
                "must be one of {}",
                options.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
            )),
        },
        Kind::Currency => match v.as_str() {
            Some(s) if CURRENCIES.contains(&s) => Ok(v.clone()),
            _ => bad("must be a supported 3-letter currency code"),
        },
        Kind::ActivityType => match v.as_str() {
            Some(s) if is_activity_type(s) => Ok(v.clone()),
            _ => bad("must be the key_string of an existing activity type"),
        },
        Kind::Emails => contact_list(name, v, true),
        Kind::Phones => contact_list(name, v, false),
        Kind::Participants => {
            let Some(items) = v.as_array() else { return bad("must be an array of objects") };
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Some(obj) = item.as_object() else {
                    return bad(&format!("item {i} must be an object"));
                };
                if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "person_id" | "primary")) {
                    return bad(&format!("item {i} has unknown property {k}"));
                }
                let Some(pid) = obj.get("person_id").and_then(int).filter(|n| *n > 0) else {
                    return bad(&format!("item {i}: person_id must be a positive integer"));
                };
                let primary = match obj.get("primary") {
                    None | Some(Value::Null) => i == 0,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return bad(&format!("item {i}: primary must be a boolean")),
                };
                out.push(serde_json::json!({"person_id": pid, "primary": primary}));
            }
            Ok(Value::Array(out))
        }
        Kind::IntList => match v.as_array() {
            Some(items) if items.iter().all(|x| int(x).is_some()) => {
                Ok(Value::Array(items.iter().filter_map(int).map(Value::from).collect()))
            }
            _ => bad("must be an array of integers"),
        },
        Kind::Object => match v {
            Value::Object(_) => Ok(v.clone()),
            _ => bad("must be an object"),
        },
        Kind::CustomFields => match v {
            Value::Object(_) => Ok(v.clone()),
            _ => bad("must be an object keyed by custom field keys"),
        },
    }
}

/// A validated body: the standard fields and the custom fields.
pub type Validated = (Map<String, Value>, Map<String, Value>);

/// Validates a write body: unknown keys, types, required fields (on create). Returns the normalised
/// standard fields and, separately, the `custom_fields` object (if any). `extra_ok` decides whether
/// an unknown top-level key is accepted as a custom field (v1 notes put custom fields top-level).
pub fn validate(
    e: Entity,
    body: &Map<String, Value>,
    create: bool,
    extra_ok: &dyn Fn(&str) -> bool,
) -> Result<Validated, FieldError> {
    let specs = fields(e);
    let mut out = Map::new();
    let mut custom = Map::new();
    for (k, v) in body {
        match specs.iter().find(|s| s.name == k) {
            Some(spec) if spec.kind == Kind::CustomFields => {
                let checked = check(spec, v)?;
                if let Value::Object(m) = checked {
                    custom.extend(m);
                }
            }
            Some(spec) => {
                out.insert(k.clone(), check(spec, v)?);
            }
            None if extra_ok(k) => {
                custom.insert(k.clone(), v.clone());
            }
            None => {
                return Err(FieldError::new(k.clone(), format!("unknown field {k}")));
            }
        }
    }
    if create {
        for spec in specs.iter().filter(|s| s.required) {
            if out.get(spec.name).is_none_or(Value::is_null) {
                return Err(FieldError::new(spec.name, "is required"));
            }
        }
    }
    Ok((out, custom))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn person_bodies_are_validated_strictly() {
        let none = |_: &str| false;
        let (ok, custom) = validate(
            Entity::Persons,
            &obj(json!({"name": " Jane Doe ", "emails": [{"value": "jane@x.com"}], "custom_fields": {"abc": "m1"}})),
            true,
            &none,
        )
        .expect("valid");
        assert_eq!(ok["name"], json!("Jane Doe"));
        assert_eq!(ok["emails"], json!([{"value": "jane@x.com", "primary": true, "label": "work"}]));
        assert_eq!(custom["abc"], json!("m1"));
        let missing =
            validate(Entity::Persons, &obj(json!({"org_id": 1})), true, &none).expect_err("no name");
        assert_eq!(missing.field, "name");
        let unknown = validate(Entity::Persons, &obj(json!({"name": "x", "job": "y"})), true, &none)
            .expect_err("unknown");
        assert_eq!(unknown.field, "job");
        let bad_email =
            validate(Entity::Persons, &obj(json!({"name": "x", "emails": [{"value": "nope"}]})), true, &none)
                .expect_err("email");
        assert_eq!(bad_email.field, "emails");
        let bad_type = validate(Entity::Deals, &obj(json!({"title": "x", "value": "100"})), true, &none)
            .expect_err("type");
        assert_eq!(bad_type.field, "value");
        assert!(validate(Entity::Deals, &obj(json!({"stage_id": 99})), false, &none).is_err());
        assert!(validate(Entity::Deals, &obj(json!({"stage_id": 3})), false, &none).is_ok());
    }

    #[test]
    fn formats() {
        assert!(is_email("a.b@c.io"));
        assert!(!is_email("a@b"));
        assert!(is_hhmm("09:30"));
        assert!(!is_hhmm("9:30"));
        assert!(is_duration("00:05"));
        assert!(is_date("2026-01-31"));
        assert!(!is_date("2026-1-31"));
    }
}
