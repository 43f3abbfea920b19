//! Zoho CRM's object model as the sandbox knows it: the six modules, their fields (types, picklist
//! values, mandatory and unique flags), the read-only system fields, scopes, and the validation that
//! turns one `data[]` entry of a write request into typed field values.
//!
//! Field API names follow `crm-providers.md` §4.4 and the v8 OpenAPI request examples
//! (`zoho/crm-oas`, `record/operations/createRecords/examples/request.md`). Invariant: a field that is
//! not in [`fields`] does not exist: writes naming it get `INVALID_DATA` "the field api name given seems
//! to be invalid" (unless the `reject_unknown_fields` setting is off), and stored records only ever hold
//! listed, writable fields, normalised by [`normalize_field`].

use crate::clock::Millis;
use chrono::{DateTime, NaiveDate};
use serde_json::{Map, Value, json};

/// The custom unique field crm-fleet writes its action marker into (on Contacts, Tasks, Calls, Notes).
pub const MARKER_FIELD: &str = "CrmFleet_Action_Id";

/// The six modules the sandbox serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Module {
    /// `Contacts`.
    Contacts,
    /// `Accounts` (companies).
    Accounts,
    /// `Deals`.
    Deals,
    /// `Tasks`.
    Tasks,
    /// `Calls`.
    Calls,
    /// `Notes`.
    Notes,
}

impl Module {
    /// All six, in index order.
    pub const ALL: [Module; 6] =
        [Module::Contacts, Module::Accounts, Module::Deals, Module::Tasks, Module::Calls, Module::Notes];

    /// Parses a module API name (case-insensitive, as Zoho's URL matching is).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "contacts" => Module::Contacts,
            "accounts" => Module::Accounts,
            "deals" | "potentials" => Module::Deals,
            "tasks" => Module::Tasks,
            "calls" => Module::Calls,
            "notes" => Module::Notes,
            _ => return None,
        })
    }

    /// Index into per-module arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The module API name.
    pub fn api_name(self) -> &'static str {
        match self {
            Module::Contacts => "Contacts",
            Module::Accounts => "Accounts",
            Module::Deals => "Deals",
            Module::Tasks => "Tasks",
            Module::Calls => "Calls",
            Module::Notes => "Notes",
        }
    }

    /// Suffix of the module's own id (module ids share the org's id space).
    pub fn id_suffix(self) -> u64 {
        match self {
            Module::Contacts => 2179,
            Module::Accounts => 2177,
            Module::Deals => 2181,
            Module::Tasks => 2193,
            Module::Calls => 2201,
            Module::Notes => 2203,
        }
    }

    /// The field whose value names a record (lookups show it as `name`, deleted records as
    /// `display_name`).
    pub fn display_field(self) -> &'static str {
        match self {
            Module::Contacts => "Full_Name",
            Module::Accounts => "Account_Name",
            Module::Deals => "Deal_Name",
            Module::Tasks | Module::Calls => "Subject",
            Module::Notes => "Note_Title",
        }
    }

    /// The system-defined duplicate check field used by upsert when the request names none.
    pub fn system_duplicate_field(self) -> Option<&'static str> {
        match self {
            Module::Contacts => Some("Email"),
            Module::Accounts => Some("Account_Name"),
            Module::Deals => Some("Deal_Name"),
            Module::Tasks | Module::Calls | Module::Notes => None,
        }
    }

    /// Scope suffix (`ZohoCRM.modules.contacts.READ`).
    fn scope_name(self) -> &'static str {
        match self {
            Module::Contacts => "contacts",
            Module::Accounts => "accounts",
            Module::Deals => "deals",
            Module::Tasks => "tasks",
            Module::Calls => "calls",
            Module::Notes => "notes",
        }
    }
}

/// What a field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// Single-line text with a maximum length.
    Text(usize),
    /// Multi-line text with a maximum length.
    TextArea(usize),
    /// An email address.
    Email,
    /// A phone number (free text up to 30 characters).
    Phone,
    /// A URL.
    Website,
    /// One of fixed values.
    Picklist(&'static [&'static str]),
    /// A whole number.
    Integer,
    /// A decimal or currency amount.
    Double,
    /// `YYYY-MM-DD`.
    Date,
    /// ISO 8601 with offset, second precision.
    DateTime,
    /// `true` / `false`.
    Boolean,
    /// A lookup to one module.
    Lookup(Module),
    /// `What_Id`: a lookup to Accounts or Deals, the module named by `$se_module`.
    WhatLookup,
    /// The record owner (a user of the org).
    Owner,
    /// `Parent_Id` of a note: `{"module": {"api_name"}, "id"}`.
    Parent,
    /// `$se_module`: the module of `What_Id` (or of a note's parent, in the legacy note shape).
    SeModule,
    /// `Call_Duration`: `mm:ss`.
    Duration,
}

impl FieldType {
    /// The `expected_data_type` Zoho reports for a value of the wrong type.
    pub fn expected(self) -> &'static str {
        match self {
            FieldType::Text(_) | FieldType::Phone | FieldType::Website | FieldType::Duration => "text",
            FieldType::TextArea(_) => "textarea",
            FieldType::Email => "email",
            FieldType::Picklist(_) | FieldType::SeModule => "picklist",
            FieldType::Integer => "integer",
            FieldType::Double => "double",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::Boolean => "boolean",
            FieldType::Lookup(_) | FieldType::WhatLookup | FieldType::Parent => "jsonobject",
            FieldType::Owner => "jsonobject",
        }
    }
}

/// One field of a module.
#[derive(Clone, Copy, Debug)]
pub struct FieldDef {
    /// The field API name.
    pub api_name: &'static str,
    /// Its type.
    pub ty: FieldType,
    /// Required on create (and cannot be cleared).
    pub mandatory: bool,
    /// "Do not allow duplicate values" is on.
    pub unique: bool,
}

const fn f(api_name: &'static str, ty: FieldType) -> FieldDef {
    FieldDef { api_name, ty, mandatory: false, unique: false }
}

const fn req(api_name: &'static str, ty: FieldType) -> FieldDef {
    FieldDef { api_name, ty, mandatory: true, unique: false }
}

const fn uniq(api_name: &'static str, ty: FieldType) -> FieldDef {
    FieldDef { api_name, ty, mandatory: false, unique: true }
}

/// `Lead_Source` values.
pub const LEAD_SOURCES: &[&str] = &[
    "-None-",
    "Advertisement",
    "Cold Call",
    "Employee Referral",
    "External Referral",
    "Online Store",
    "Partner",
    "Public Relations",
    "Sales Email Alias",
    "Seminar Partner",
    "Internal Seminar",
    "Trade Show",
    "Web Download",
    "Web Research",
    "Chat",
];

/// `Industry` values.
pub const INDUSTRIES: &[&str] = &[
    "-None-",
    "ASP (Application Service Provider)",
    "Data/Telecom OEM",
    "ERP (Enterprise Resource Planning)",
    "Government/Military",
    "Large Enterprise",
    "ManagementISV",
    "MSP (Management Service Provider)",
    "Network Equipment Enterprise",
    "Non-management ISV",
    "Optical Networking",
    "Service Provider",
    "Small/Medium Enterprise",
    "Storage Equipment",
    "Storage Service Provider",
    "Systems Integrator",
    "Wireless Industry",
];

/// `Account_Type` values.
pub const ACCOUNT_TYPES: &[&str] = &[
    "-None-",
    "Analyst",
    "Competitor",
    "Customer",
    "Distributor",
    "Integrator",
    "Investor",
    "Other",
    "Partner",
    "Press",
    "Prospect",
    "Reseller",
    "Supplier",
    "Vendor",
];

/// Deal stages of the standard pipeline, with their default probabilities.
pub const STAGES: &[(&str, i64)] = &[
    ("Qualification", 10),
    ("Needs Analysis", 20),
    ("Value Proposition", 40),
    ("Identify Decision Makers", 60),
    ("Perception Analysis", 70),
    ("Proposal/Price Quote", 75),
    ("Negotiation/Review", 90),
    ("Closed Won", 100),
    ("Closed Lost", 0),
    ("Closed Lost to Competition", 0),
];

const STAGE_NAMES: &[&str] = &[
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Identify Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
    "Closed Lost to Competition",
];

/// The one pipeline of every sandbox org.
pub const STANDARD_PIPELINE: &str = "Standard (Standard)";
const PIPELINES: &[&str] = &[STANDARD_PIPELINE];
/// Deal `Type` values.
pub const DEAL_TYPES: &[&str] = &["-None-", "Existing Business", "New Business"];
/// Task `Status` values.
pub const TASK_STATUSES: &[&str] =
    &["Not Started", "Deferred", "In Progress", "Completed", "Waiting for input"];
/// Task `Priority` values.
pub const TASK_PRIORITIES: &[&str] = &["High", "Highest", "Low", "Lowest", "Normal"];
/// `Call_Type` values.
pub const CALL_TYPES: &[&str] = &["Outbound", "Inbound", "Missed"];
/// `Call_Purpose` values.
pub const CALL_PURPOSES: &[&str] =
    &["-None-", "Prospecting", "Administrative", "Negotiation", "Demo", "Project", "Desk"];

const CONTACT_FIELDS: &[FieldDef] = &[
    f("Owner", FieldType::Owner),
    f("First_Name", FieldType::Text(40)),
    req("Last_Name", FieldType::Text(80)),
    uniq("Email", FieldType::Email),
    f("Secondary_Email", FieldType::Email),
    f("Phone", FieldType::Phone),
    f("Mobile", FieldType::Phone),
    f("Title", FieldType::Text(100)),
    f("Department", FieldType::Text(30)),
    f("Account_Name", FieldType::Lookup(Module::Accounts)),
    f("Lead_Source", FieldType::Picklist(LEAD_SOURCES)),
    f("Mailing_Street", FieldType::Text(250)),
    f("Mailing_City", FieldType::Text(30)),
    f("Mailing_Country", FieldType::Text(30)),
    f("Email_Opt_Out", FieldType::Boolean),
    f("Date_of_Birth", FieldType::Date),
    f("Description", FieldType::TextArea(32_000)),
    uniq(MARKER_FIELD, FieldType::Text(100)),
];

const ACCOUNT_FIELDS: &[FieldDef] = &[
    f("Owner", FieldType::Owner),
    req("Account_Name", FieldType::Text(200)),
    f("Website", FieldType::Website),
    f("Phone", FieldType::Phone),
    f("Industry", FieldType::Picklist(INDUSTRIES)),
    f("Account_Type", FieldType::Picklist(ACCOUNT_TYPES)),
    f("Employees", FieldType::Integer),
    f("Annual_Revenue", FieldType::Double),
    f("Billing_City", FieldType::Text(30)),
    f("Billing_Country", FieldType::Text(30)),
    f("Description", FieldType::TextArea(32_000)),
];

const DEAL_FIELDS: &[FieldDef] = &[
    f("Owner", FieldType::Owner),
    req("Deal_Name", FieldType::Text(120)),
    f("Amount", FieldType::Double),
    req("Stage", FieldType::Picklist(STAGE_NAMES)),
    req("Closing_Date", FieldType::Date),
    f("Pipeline", FieldType::Picklist(PIPELINES)),
    f("Probability", FieldType::Integer),
    f("Account_Name", FieldType::Lookup(Module::Accounts)),
    f("Contact_Name", FieldType::Lookup(Module::Contacts)),
    f("Type", FieldType::Picklist(DEAL_TYPES)),
    f("Lead_Source", FieldType::Picklist(LEAD_SOURCES)),
    f("Next_Step", FieldType::Text(100)),
    f("Description", FieldType::TextArea(32_000)),
];

const TASK_FIELDS: &[FieldDef] = &[
    f("Owner", FieldType::Owner),
    req("Subject", FieldType::Text(300)),
    f("Due_Date", FieldType::Date),
    f("Status", FieldType::Picklist(TASK_STATUSES)),
    f("Priority", FieldType::Picklist(TASK_PRIORITIES)),
    f("Who_Id", FieldType::Lookup(Module::Contacts)),
    f("What_Id", FieldType::WhatLookup),
    f("$se_module", FieldType::SeModule),
    f("Description", FieldType::TextArea(32_000)),
    uniq(MARKER_FIELD, FieldType::Text(100)),
];

const CALL_FIELDS: &[FieldDef] = &[
    f("Owner", FieldType::Owner),
    req("Subject", FieldType::Text(300)),
    req("Call_Type", FieldType::Picklist(CALL_TYPES)),
    req("Call_Start_Time", FieldType::DateTime),
    f("Call_Duration", FieldType::Duration),
    f("Call_Purpose", FieldType::Picklist(CALL_PURPOSES)),
    f("Call_Result", FieldType::Text(120)),
    f("Who_Id", FieldType::Lookup(Module::Contacts)),
    f("What_Id", FieldType::WhatLookup),
    f("$se_module", FieldType::SeModule),
    f("Description", FieldType::TextArea(32_000)),
    uniq(MARKER_FIELD, FieldType::Text(100)),
];

const NOTE_FIELDS: &[FieldDef] = &[
    f("Owner", FieldType::Owner),
    f("Note_Title", FieldType::Text(120)),
    req("Note_Content", FieldType::TextArea(32_000)),
    req("Parent_Id", FieldType::Parent),
    uniq(MARKER_FIELD, FieldType::Text(100)),
];

/// The writable fields of a module.
pub fn fields(m: Module) -> &'static [FieldDef] {
    match m {
        Module::Contacts => CONTACT_FIELDS,
        Module::Accounts => ACCOUNT_FIELDS,
        Module::Deals => DEAL_FIELDS,
        Module::Tasks => TASK_FIELDS,
        Module::Calls => CALL_FIELDS,
        Module::Notes => NOTE_FIELDS,
    }
}

/// One writable field by API name (exact, as Zoho matches API names).
pub fn field(m: Module, name: &str) -> Option<&'static FieldDef> {
    fields(m).iter().find(|d| d.api_name == name)
}

/// System fields every record has; they are returned but cannot be written (writes ignore them).
pub const SYSTEM_FIELDS: &[&str] = &["id", "Created_Time", "Modified_Time", "Created_By", "Modified_By"];

/// Read-only computed fields of a module (returned, ignored on write).
pub fn computed_fields(m: Module) -> &'static [&'static str] {
    match m {
        Module::Contacts => &["Full_Name"],
        Module::Calls => &["Call_Duration_in_seconds"],
        Module::Notes => &["$se_module"],
        _ => &[],
    }
}

/// Whether `name` may appear in a `fields` parameter or a COQL select list of module `m`.
pub fn is_readable(m: Module, name: &str) -> bool {
    field(m, name).is_some() || SYSTEM_FIELDS.contains(&name) || computed_fields(m).contains(&name)
}

/// Keys a write request may carry that are accepted and ignored (system and computed fields,
/// layout, tags, `$`-prefixed request options).
pub fn is_ignored_input(m: Module, name: &str) -> bool {
    (SYSTEM_FIELDS.contains(&name) || computed_fields(m).contains(&name) || name == "Layout" || name == "Tag")
        || (name.starts_with('$') && name != "$se_module")
}

/// A stored, typed field value.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// Text of any text-like type (also picklists, dates, durations, `$se_module`).
    Text(String),
    /// Whole number.
    Int(i64),
    /// Decimal.
    Num(f64),
    /// Boolean.
    Bool(bool),
    /// Date-time, epoch ms (second precision).
    Time(Millis),
    /// Lookup or owner: the target's id.
    Ref(u64),
    /// A note's parent: module and id.
    Parent(Module, u64),
}

impl FieldValue {
    /// The value as text, for search and comparisons.
    pub fn as_text(&self) -> String {
        match self {
            FieldValue::Text(s) => s.clone(),
            FieldValue::Int(n) => n.to_string(),
            FieldValue::Num(n) => format_number(*n),
            FieldValue::Bool(b) => b.to_string(),
            FieldValue::Time(t) => t.to_string(),
            FieldValue::Ref(id) | FieldValue::Parent(_, id) => id.to_string(),
        }
    }
}

/// Formats a decimal the way JSON shows it (no trailing `.0` noise beyond one digit).
pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{n:.1}") } else { n.to_string() }
}

/// A validation failure of one record, before its index is known.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordError {
    /// `INVALID_DATA`, `MANDATORY_NOT_FOUND`, `DUPLICATE_DATA`, ...
    pub code: &'static str,
    /// Zoho's message.
    pub message: String,
    /// The field, when there is one (rendered as `api_name` and `json_path`).
    pub api_name: Option<String>,
    /// Extra `details` keys (`expected_data_type`, `maximum_length`, `duplicate_record`, `id`, ...).
    pub extra: Map<String, Value>,
}

impl RecordError {
    /// An error about one field.
    pub fn field(code: &'static str, message: impl Into<String>, api_name: &str) -> Self {
        Self { code, message: message.into(), api_name: Some(api_name.to_owned()), extra: Map::new() }
    }

    /// Adds a `details` key.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// `INVALID_DATA` "invalid data" with `expected_data_type`.
    pub fn invalid_type(def: &FieldDef) -> Self {
        Self::field("INVALID_DATA", "invalid data", def.api_name)
            .with("expected_data_type", json!(def.ty.expected()))
    }

    /// `MANDATORY_NOT_FOUND` "required field not found".
    pub fn mandatory(api_name: &str) -> Self {
        Self::field("MANDATORY_NOT_FOUND", "required field not found", api_name)
    }

    /// `INVALID_DATA` "the id given seems to be invalid" for an unknown record id.
    pub fn invalid_id(id: &str) -> Self {
        Self {
            code: "INVALID_DATA",
            message: "the id given seems to be invalid".to_owned(),
            api_name: None,
            extra: Map::new(),
        }
        .with("id", json!(id))
    }

    /// Renders the `data[]` entry for record number `index` of the request.
    pub fn render(&self, index: usize) -> Value {
        let mut details = Map::new();
        if let Some(api) = &self.api_name {
            details.insert("api_name".into(), json!(api));
            details.insert("json_path".into(), json!(format!("$.data[{index}].{api}")));
        }
        for (k, v) in &self.extra {
            details.insert(k.clone(), v.clone());
        }
        json!({"code": self.code, "details": details, "message": self.message, "status": "error"})
    }
}

/// Parses Zoho's ISO 8601 date-time (an offset is required; `Z` is accepted), to epoch ms.
pub fn parse_datetime(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s.trim()).ok().map(|d| d.timestamp_millis())
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()
}

/// Parses a `Call_Duration` (`mm:ss`, minutes unbounded) to seconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let (m, sec) = s.trim().split_once(':')?;
    if m.is_empty() || m.len() > 5 || sec.len() != 2 {
        return None;
    }
    let m: i64 = m.parse().ok()?;
    let sec: i64 = sec.parse().ok()?;
    (m >= 0 && (0..60).contains(&sec)).then_some(m * 60 + sec)
}

fn valid_email(v: &str) -> bool {
    v.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !v.contains(char::is_whitespace)
            && !domain.contains('@')
    })
}

/// An id given as a JSON string or number.
pub fn id_of(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Normalises one input value of a writable field. Lookups are checked for shape only here (the
/// store checks that the target exists). `Ok(None)` clears the field.
pub fn normalize_field(def: &FieldDef, value: &Value) -> Result<Option<FieldValue>, RecordError> {
    if value.is_null() {
        return Ok(None);
    }
    let bad = || RecordError::invalid_type(def);
    let text = || value.as_str().map(str::to_owned).ok_or_else(bad);
    let v = match def.ty {
        FieldType::Text(max) | FieldType::TextArea(max) => {
            let s = text()?;
            if s.chars().count() > max {
                return Err(RecordError::field("INVALID_DATA", "invalid data", def.api_name)
                    .with("maximum_length", json!(max)));
            }
            if s.is_empty() {
                return Ok(None);
            }
            FieldValue::Text(s)
        }
        FieldType::Email => {
            let s = text()?.trim().to_owned();
            if s.is_empty() {
                return Ok(None);
            }
            if !valid_email(&s) || s.len() > 100 {
                return Err(bad());
            }
            FieldValue::Text(s)
        }
        FieldType::Phone | FieldType::Website => {
            let s = text()?;
            if s.chars().count() > if def.ty == FieldType::Phone { 30 } else { 255 } {
                return Err(RecordError::field("INVALID_DATA", "invalid data", def.api_name)
                    .with("maximum_length", json!(if def.ty == FieldType::Phone { 30 } else { 255 })));
            }
            if s.is_empty() {
                return Ok(None);
            }
            FieldValue::Text(s)
        }
        FieldType::Picklist(options) => {
            let s = text()?;
            match options.iter().find(|o| o.eq_ignore_ascii_case(s.trim())) {
                Some(o) => FieldValue::Text((*o).to_owned()),
                None => return Err(RecordError::field("INVALID_DATA", "invalid data", def.api_name)),
            }
        }
        FieldType::SeModule => {
            let s = text()?;
            match Module::parse(&s) {
                Some(m @ (Module::Accounts | Module::Deals | Module::Contacts)) => {
                    FieldValue::Text(m.api_name().to_owned())
                }
                _ => return Err(RecordError::field("INVALID_DATA", "invalid data", def.api_name)),
            }
        }
        FieldType::Integer => match value.as_i64() {
            Some(n) => FieldValue::Int(n),
            None => return Err(bad()),
        },
        FieldType::Double => match value.as_f64() {
            Some(n) if n.is_finite() => FieldValue::Num(n),
            _ => return Err(bad()),
        },
        FieldType::Date => {
            let s = text()?;
            match parse_date(&s) {
                Some(d) => FieldValue::Text(d.format("%Y-%m-%d").to_string()),
                None => return Err(bad()),
            }
        }
        FieldType::DateTime => {
            let s = text()?;
            match parse_datetime(&s) {
                Some(ms) => FieldValue::Time(ms - ms.rem_euclid(1000)),
                None => return Err(bad()),
            }
        }
        FieldType::Duration => {
            let s = text()?;
            match parse_duration(&s) {
                Some(_) => FieldValue::Text(s.trim().to_owned()),
                None => return Err(bad()),
            }
        }
        FieldType::Boolean => match value.as_bool() {
            Some(b) => FieldValue::Bool(b),
            None => return Err(bad()),
        },
        FieldType::Lookup(_) | FieldType::WhatLookup | FieldType::Owner => {
            let id = match value {
                Value::Object(o) => o.get("id").and_then(id_of),
                other => id_of(other),
            };
            match id {
                Some(id) => FieldValue::Ref(id),
                None => return Err(bad()),
            }
        }
        FieldType::Parent => {
            // `{"module": {"api_name": "Contacts"}, "id": "…"}` (v7/v8). The legacy form (a plain id
            // with `$se_module`) is resolved by the caller.
            let Value::Object(o) = value else { return Err(bad()) };
            let module = o
                .get("module")
                .and_then(|m| m.get("api_name").or(Some(m)))
                .and_then(Value::as_str)
                .and_then(Module::parse);
            let id = o.get("id").and_then(id_of);
            match (module, id) {
                (Some(m), Some(id)) => FieldValue::Parent(m, id),
                (None, _) => return Err(RecordError::mandatory(def.api_name)),
                (_, None) => return Err(bad()),
            }
        }
    };
    Ok(Some(v))
}

/// One record of a write request, normalised: every named writable field with its new value
/// (`None` clears it), in input order.
pub type Values = Vec<(&'static FieldDef, Option<FieldValue>)>;

/// Normalises one `data[]` entry of module `m`. Unknown keys are rejected when `strict` (Zoho's
/// "the field api name given seems to be invalid"), read-only system keys are ignored, and a note's
/// legacy parent shape (`"Parent_Id": "<id>"` with `"$se_module"` or `"se_module"`) is accepted.
pub fn normalize_record(m: Module, input: &Map<String, Value>, strict: bool) -> Result<Values, RecordError> {
    let mut out: Values = Vec::with_capacity(input.len());
    for (name, value) in input {
        if m == Module::Notes && (name == "$se_module" || name == "se_module") {
            continue;
        }
        let Some(def) = field(m, name) else {
            if is_ignored_input(m, name) || !strict {
                continue;
            }
            return Err(RecordError::field(
                "INVALID_DATA",
                "the field api name given seems to be invalid",
                name,
            ));
        };
        if def.ty == FieldType::Parent && !value.is_object() && !value.is_null() {
            let module = input
                .get("$se_module")
                .or_else(|| input.get("se_module"))
                .and_then(Value::as_str)
                .and_then(Module::parse);
            let Some(module) = module else {
                return Err(RecordError::mandatory("$se_module"));
            };
            let Some(id) = id_of(value) else {
                return Err(RecordError::invalid_type(def));
            };
            out.push((def, Some(FieldValue::Parent(module, id))));
            continue;
        }
        out.push((def, normalize_field(def, value)?));
    }
    Ok(out)
}

/// The scopes the pre-issued token pair carries by default.
pub const DEFAULT_SCOPES: &[&str] =
    &["ZohoCRM.modules.ALL", "ZohoCRM.settings.ALL", "ZohoCRM.coql.READ", "ZohoSearch.securesearch.READ"];

/// What an API call does to a module, for scope checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `GET`.
    Read,
    /// `POST` create.
    Create,
    /// `PUT` update.
    Update,
    /// `DELETE`.
    Delete,
}

impl Access {
    fn word(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Create => "create",
            Access::Update => "update",
            Access::Delete => "delete",
        }
    }
}

/// Whether `scopes` allow `access` on module `m` (`ZohoCRM.modules.ALL`, `ZohoCRM.modules.READ`,
/// `ZohoCRM.modules.contacts.ALL`, `ZohoCRM.modules.contacts.CREATE`, `…WRITE`, case-insensitive).
pub fn scope_allows(scopes: &[String], m: Module, access: Access) -> bool {
    scopes.iter().any(|s| {
        let s = s.to_ascii_lowercase();
        let Some(rest) = s.strip_prefix("zohocrm.modules.") else { return false };
        let (target, op) = match rest.split_once('.') {
            Some((t, op)) => (Some(t), op),
            None => (None, rest),
        };
        if target.is_some_and(|t| t != m.scope_name() && t != "all") {
            return false;
        }
        match op {
            "all" => true,
            "write" => access != Access::Read,
            other => other == access.word(),
        }
    })
}

/// Whether `scopes` allow COQL queries.
pub fn scope_allows_coql(scopes: &[String]) -> bool {
    scopes.iter().any(|s| {
        let s = s.to_ascii_lowercase();
        s == "zohocrm.coql.read" || s == "zohocrm.coql.all"
    })
}

/// Whether the scopes allow reading the organization (`GET /org`).
pub fn scope_allows_org(scopes: &[String]) -> bool {
    scopes.iter().any(|s| {
        let s = s.to_ascii_lowercase();
        s == "zohocrm.org.read" || s == "zohocrm.org.all"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_zoho_patterns() {
        let all = vec!["ZohoCRM.modules.ALL".to_owned()];
        assert!(scope_allows(&all, Module::Deals, Access::Update));
        let read = vec!["ZohoCRM.modules.READ".to_owned()];
        assert!(scope_allows(&read, Module::Deals, Access::Read));
        assert!(!scope_allows(&read, Module::Deals, Access::Update));
        let contacts = vec!["ZohoCRM.modules.contacts.ALL".to_owned()];
        assert!(scope_allows(&contacts, Module::Contacts, Access::Delete));
        assert!(!scope_allows(&contacts, Module::Deals, Access::Read));
        let write = vec!["ZohoCRM.modules.tasks.WRITE".to_owned()];
        assert!(scope_allows(&write, Module::Tasks, Access::Create));
        assert!(!scope_allows(&write, Module::Tasks, Access::Read));
    }

    #[test]
    fn values_are_typed_and_checked() {
        let stage = field(Module::Deals, "Stage").expect("stage");
        assert_eq!(
            normalize_field(stage, &json!("negotiation/review")).expect("valid"),
            Some(FieldValue::Text("Negotiation/Review".into()))
        );
        assert_eq!(normalize_field(stage, &json!("Won")).expect_err("bad").code, "INVALID_DATA");
        let emp = field(Module::Accounts, "Employees").expect("employees");
        let e = normalize_field(emp, &json!("12")).expect_err("string for integer");
        assert_eq!(e.extra.get("expected_data_type"), Some(&json!("integer")));
        let start = field(Module::Calls, "Call_Start_Time").expect("start");
        assert_eq!(
            normalize_field(start, &json!("2025-01-15T10:00:00.700+05:30")).expect("valid"),
            Some(FieldValue::Time(1_736_915_400_000))
        );
        assert_eq!(parse_duration("05:00"), Some(300));
        assert_eq!(parse_duration("75:30"), Some(4_530));
        assert_eq!(parse_duration("5:7"), None);
        let parent = field(Module::Notes, "Parent_Id").expect("parent");
        assert_eq!(
            normalize_field(parent, &json!({"module": {"api_name": "Contacts"}, "id": "42"})).expect("ok"),
            Some(FieldValue::Parent(Module::Contacts, 42))
        );
    }
}
