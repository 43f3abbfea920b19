//! Salesforce's object model as the sandbox knows it: sObject types, their fields (types, lengths,
//! picklists, createable/updateable/required flags, external ids), key prefixes and 18-character ids.
//!
//! Everything here is static data from `crm-providers.md` §2 and the Salesforce object reference
//! (standard field names, picklist values, key prefixes 001/003/006/00T/00Q/002/005). Invariant: a
//! field that is not in [`SObject::fields`] does not exist: writes naming it get `INVALID_FIELD`,
//! queries naming it get `INVALID_FIELD` with the SOQL position, and stored records only ever hold
//! listed fields, normalised by [`parse_value`].

use crate::clock::Millis;
use chrono::NaiveDate;
use serde_json::Value;

/// The custom External ID field crm-fleet stores its action marker in (Task, Contact, Note).
pub const ACTION_ID_FIELD: &str = "CrmFleet_Action_Id__c";

/// The sObject types the imitation serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SObject {
    /// `Account` (key prefix 001).
    Account,
    /// `Contact` (003).
    Contact,
    /// `Opportunity` (006).
    Opportunity,
    /// `Task` (00T), including logged calls (`TaskSubtype = Call`).
    Task,
    /// `Lead` (00Q).
    Lead,
    /// The legacy `Note` (002).
    Note,
    /// `User` (005), read-only.
    User,
}

impl SObject {
    /// All of them, in index order.
    pub const ALL: [SObject; 7] = [
        SObject::Account,
        SObject::Contact,
        SObject::Opportunity,
        SObject::Task,
        SObject::Lead,
        SObject::Note,
        SObject::User,
    ];

    /// The types the API can write and the mutation feed touches (everything but `User`).
    pub const WRITABLE: [SObject; 6] = [
        SObject::Account,
        SObject::Contact,
        SObject::Opportunity,
        SObject::Task,
        SObject::Lead,
        SObject::Note,
    ];

    /// Index into per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The API name (`Contact`).
    pub fn name(self) -> &'static str {
        match self {
            SObject::Account => "Account",
            SObject::Contact => "Contact",
            SObject::Opportunity => "Opportunity",
            SObject::Task => "Task",
            SObject::Lead => "Lead",
            SObject::Note => "Note",
            SObject::User => "User",
        }
    }

    /// The plural label, as describe calls report it.
    pub fn label_plural(self) -> &'static str {
        match self {
            SObject::Account => "Accounts",
            SObject::Contact => "Contacts",
            SObject::Opportunity => "Opportunities",
            SObject::Task => "Tasks",
            SObject::Lead => "Leads",
            SObject::Note => "Notes",
            SObject::User => "Users",
        }
    }

    /// Parses an API name, case-insensitively (as Salesforce does in paths and SOQL).
    pub fn parse(s: &str) -> Option<Self> {
        SObject::ALL.into_iter().find(|o| o.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The three-character key prefix of this type's ids.
    pub fn key_prefix(self) -> &'static str {
        match self {
            SObject::Account => "001",
            SObject::Contact => "003",
            SObject::Opportunity => "006",
            SObject::Task => "00T",
            SObject::Lead => "00Q",
            SObject::Note => "002",
            SObject::User => "005",
        }
    }

    /// The type an id's key prefix names.
    pub fn from_id(id: &str) -> Option<Self> {
        let p = id.get(..3)?;
        SObject::ALL.into_iter().find(|o| o.key_prefix() == p)
    }

    /// Whether the API may create, update and delete records of this type.
    pub fn writable(self) -> bool {
        self != SObject::User
    }

    /// Every field of the type, system fields first.
    pub fn fields(self) -> &'static [FieldDef] {
        match self {
            SObject::Account => ACCOUNT_FIELDS,
            SObject::Contact => CONTACT_FIELDS,
            SObject::Opportunity => OPPORTUNITY_FIELDS,
            SObject::Task => TASK_FIELDS,
            SObject::Lead => LEAD_FIELDS,
            SObject::Note => NOTE_FIELDS,
            SObject::User => USER_FIELDS,
        }
    }

    /// One field by name, case-insensitively.
    pub fn field(self, name: &str) -> Option<&'static FieldDef> {
        self.fields().iter().find(|f| f.name.eq_ignore_ascii_case(name.trim()))
    }

    /// The name field (`Name`, or `Subject` on Task, `Title` on Note).
    pub fn name_field(self) -> &'static str {
        match self {
            SObject::Task => "Subject",
            SObject::Note => "Title",
            _ => "Name",
        }
    }
}

/// A field's value type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldType {
    /// An 18-character record id (the `Id` field).
    Id,
    /// Text with a maximum length.
    String(usize),
    /// Long text with a maximum length (not filterable in SOQL).
    TextArea(usize),
    /// An email address.
    Email,
    /// A phone number (free text).
    Phone,
    /// A URL (free text).
    Url,
    /// One of a fixed, restricted set of values.
    Picklist(&'static [&'static str]),
    /// A calendar date (`2025-01-31`).
    Date,
    /// A point in time (`2025-01-31T17:00:00.000+0000`).
    DateTime,
    /// A decimal number.
    Double,
    /// A currency amount.
    Currency,
    /// A percentage.
    Percent,
    /// An integer.
    Int,
    /// `true` or `false`.
    Boolean,
    /// A lookup to a record of one of these types.
    Reference(&'static [SObject]),
}

impl FieldType {
    /// The type name describe calls and SOQL errors use (`string`, `dateTime`, `reference`, ...).
    pub fn soap_name(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::String(_) => "string",
            FieldType::TextArea(_) => "textarea",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Url => "url",
            FieldType::Picklist(_) => "picklist",
            FieldType::Date => "date",
            FieldType::DateTime => "dateTime",
            FieldType::Double => "double",
            FieldType::Currency => "currency",
            FieldType::Percent => "percent",
            FieldType::Int => "int",
            FieldType::Boolean => "boolean",
            FieldType::Reference(_) => "reference",
        }
    }

    /// Whether values are text (compared case-insensitively in SOQL).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            FieldType::String(_)
                | FieldType::TextArea(_)
                | FieldType::Email
                | FieldType::Phone
                | FieldType::Url
                | FieldType::Picklist(_)
        )
    }

    /// Whether values are ids (compared exactly, 15-character forms accepted).
    pub fn is_id(self) -> bool {
        matches!(self, FieldType::Id | FieldType::Reference(_))
    }

    /// Whether values are numbers.
    pub fn is_number(self) -> bool {
        matches!(self, FieldType::Double | FieldType::Currency | FieldType::Percent | FieldType::Int)
    }

    fn max_len(self) -> Option<usize> {
        match self {
            FieldType::String(n) | FieldType::TextArea(n) => Some(n),
            FieldType::Email | FieldType::Url => Some(255),
            FieldType::Phone => Some(40),
            _ => None,
        }
    }
}

/// How a field is computed or defaulted when the API does not set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Computed {
    /// Stored as written.
    No,
    /// Set by the platform (Id, audit fields, `IsDeleted`): read-only.
    System,
    /// Derived from other fields on every write (`Name` from first and last name, `IsClosed`).
    Derived,
}

/// One field definition.
#[derive(Clone, Copy, Debug)]
pub struct FieldDef {
    /// API name.
    pub name: &'static str,
    /// Label (used in some error messages).
    pub label: &'static str,
    /// Value type.
    pub ty: FieldType,
    /// Settable on create.
    pub createable: bool,
    /// Settable on update.
    pub updateable: bool,
    /// Required on create, cannot be cleared (not nillable and no default).
    pub required: bool,
    /// Marked External ID (usable in upsert paths).
    pub external_id: bool,
    /// Unique across the type's live records (case-insensitive).
    pub unique: bool,
    /// System or derived.
    pub computed: Computed,
}

const fn f(name: &'static str, label: &'static str, ty: FieldType) -> FieldDef {
    FieldDef {
        name,
        label,
        ty,
        createable: true,
        updateable: true,
        required: false,
        external_id: false,
        unique: false,
        computed: Computed::No,
    }
}

const fn req(name: &'static str, label: &'static str, ty: FieldType) -> FieldDef {
    FieldDef { required: true, ..f(name, label, ty) }
}

/// Create-only (not updateable), like `Note.ParentId`.
const fn create_only(name: &'static str, label: &'static str, ty: FieldType, required: bool) -> FieldDef {
    FieldDef { updateable: false, required, ..f(name, label, ty) }
}

const fn sys(name: &'static str, label: &'static str, ty: FieldType) -> FieldDef {
    FieldDef { createable: false, updateable: false, computed: Computed::System, ..f(name, label, ty) }
}

const fn derived(name: &'static str, label: &'static str, ty: FieldType) -> FieldDef {
    FieldDef { createable: false, updateable: false, computed: Computed::Derived, ..f(name, label, ty) }
}

const ACTION_ID: FieldDef = FieldDef {
    external_id: true,
    unique: true,
    ..f(ACTION_ID_FIELD, "CrmFleet Action Id", FieldType::String(255))
};

const USERS: &[SObject] = &[SObject::User];
const ACCOUNTS: &[SObject] = &[SObject::Account];
const WHO: &[SObject] = &[SObject::Contact, SObject::Lead];
const WHAT: &[SObject] = &[SObject::Account, SObject::Opportunity];
const NOTE_PARENTS: &[SObject] =
    &[SObject::Account, SObject::Contact, SObject::Opportunity, SObject::Lead, SObject::Task];

macro_rules! system_fields {
    () => {
        [
            sys("Id", "Record ID", FieldType::Id),
            sys("IsDeleted", "Deleted", FieldType::Boolean),
            sys("CreatedDate", "Created Date", FieldType::DateTime),
            sys("CreatedById", "Created By ID", FieldType::Reference(USERS)),
            sys("LastModifiedDate", "Last Modified Date", FieldType::DateTime),
            sys("LastModifiedById", "Last Modified By ID", FieldType::Reference(USERS)),
            sys("SystemModstamp", "System Modstamp", FieldType::DateTime),
        ]
    };
}

const SYSTEM: [FieldDef; 7] = system_fields!();

/// The names of the system fields every type has, in describe order.
pub const SYSTEM_FIELD_NAMES: [&str; 7] = [
    "Id",
    "IsDeleted",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
    "SystemModstamp",
];

/// Account industries.
pub const INDUSTRIES: &[&str] = &[
    "Agriculture",
    "Banking",
    "Biotechnology",
    "Consulting",
    "Education",
    "Energy",
    "Finance",
    "Healthcare",
    "Manufacturing",
    "Media",
    "Retail",
    "Technology",
    "Transportation",
];
/// Account types.
pub const ACCOUNT_TYPES: &[&str] =
    &["Prospect", "Customer - Direct", "Customer - Channel", "Channel Partner / Reseller", "Other"];
/// Lead sources.
pub const LEAD_SOURCES: &[&str] = &["Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"];
/// Opportunity stages with their default probabilities, closed and won flags.
pub const STAGES: &[(&str, f64, bool, bool)] = &[
    ("Prospecting", 10.0, false, false),
    ("Qualification", 10.0, false, false),
    ("Needs Analysis", 20.0, false, false),
    ("Value Proposition", 50.0, false, false),
    ("Id. Decision Makers", 60.0, false, false),
    ("Perception Analysis", 70.0, false, false),
    ("Proposal/Price Quote", 75.0, false, false),
    ("Negotiation/Review", 90.0, false, false),
    ("Closed Won", 100.0, true, true),
    ("Closed Lost", 0.0, true, false),
];
const STAGE_NAMES: &[&str] = &[
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
];
/// Opportunity types.
pub const OPPORTUNITY_TYPES: &[&str] =
    &["New Customer", "Existing Customer - Upgrade", "Existing Customer - Renewal"];
/// Task statuses (`crm-providers.md` §2.4).
pub const TASK_STATUSES: &[&str] =
    &["Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"];
/// Task priorities.
pub const TASK_PRIORITIES: &[&str] = &["High", "Normal", "Low"];
/// Task subtypes.
pub const TASK_SUBTYPES: &[&str] = &["Task", "Email", "Call", "ListEmail", "Cadence"];
/// Call types on Task.
pub const CALL_TYPES: &[&str] = &["Internal", "Inbound", "Outbound"];
/// Lead statuses.
pub const LEAD_STATUSES: &[&str] =
    &["Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted"];
/// Salutations.
pub const SALUTATIONS: &[&str] = &["Mr.", "Ms.", "Mrs.", "Dr.", "Prof."];

macro_rules! with_system {
    ($($field:expr),* $(,)?) => {
        &[SYSTEM[0], SYSTEM[1], SYSTEM[2], SYSTEM[3], SYSTEM[4], SYSTEM[5], SYSTEM[6], $($field),*]
    };
}

static ACCOUNT_FIELDS: &[FieldDef] = with_system![
    req("Name", "Account Name", FieldType::String(255)),
    f("Type", "Account Type", FieldType::Picklist(ACCOUNT_TYPES)),
    f("Industry", "Industry", FieldType::Picklist(INDUSTRIES)),
    f("Website", "Website", FieldType::Url),
    f("Phone", "Account Phone", FieldType::Phone),
    f("BillingCity", "Billing City", FieldType::String(40)),
    f("BillingCountry", "Billing Country", FieldType::String(80)),
    f("NumberOfEmployees", "Employees", FieldType::Int),
    f("AnnualRevenue", "Annual Revenue", FieldType::Currency),
    f("Description", "Account Description", FieldType::TextArea(32_000)),
    f("OwnerId", "Owner ID", FieldType::Reference(USERS)),
];

static CONTACT_FIELDS: &[FieldDef] = with_system![
    f("Salutation", "Salutation", FieldType::Picklist(SALUTATIONS)),
    f("FirstName", "First Name", FieldType::String(40)),
    req("LastName", "Last Name", FieldType::String(80)),
    derived("Name", "Full Name", FieldType::String(121)),
    f("Email", "Email", FieldType::Email),
    f("Phone", "Business Phone", FieldType::Phone),
    f("MobilePhone", "Mobile Phone", FieldType::Phone),
    f("Title", "Title", FieldType::String(128)),
    f("Department", "Department", FieldType::String(80)),
    f("AccountId", "Account ID", FieldType::Reference(ACCOUNTS)),
    f("MailingCity", "Mailing City", FieldType::String(40)),
    f("MailingCountry", "Mailing Country", FieldType::String(80)),
    f("LeadSource", "Lead Source", FieldType::Picklist(LEAD_SOURCES)),
    f("Description", "Contact Description", FieldType::TextArea(32_000)),
    f("OwnerId", "Owner ID", FieldType::Reference(USERS)),
    ACTION_ID,
];

static OPPORTUNITY_FIELDS: &[FieldDef] = with_system![
    req("Name", "Name", FieldType::String(120)),
    req("StageName", "Stage", FieldType::Picklist(STAGE_NAMES)),
    req("CloseDate", "Close Date", FieldType::Date),
    f("Amount", "Amount", FieldType::Currency),
    f("Probability", "Probability (%)", FieldType::Percent),
    f("AccountId", "Account ID", FieldType::Reference(ACCOUNTS)),
    f("Type", "Opportunity Type", FieldType::Picklist(OPPORTUNITY_TYPES)),
    f("LeadSource", "Lead Source", FieldType::Picklist(LEAD_SOURCES)),
    f("NextStep", "Next Step", FieldType::String(255)),
    f("Description", "Description", FieldType::TextArea(32_000)),
    derived("IsClosed", "Closed", FieldType::Boolean),
    derived("IsWon", "Won", FieldType::Boolean),
    f("OwnerId", "Owner ID", FieldType::Reference(USERS)),
];

static TASK_FIELDS: &[FieldDef] = with_system![
    f("Subject", "Subject", FieldType::String(255)),
    f("Description", "Description", FieldType::TextArea(32_000)),
    f("ActivityDate", "Due Date Only", FieldType::Date),
    f("Status", "Status", FieldType::Picklist(TASK_STATUSES)),
    f("Priority", "Priority", FieldType::Picklist(TASK_PRIORITIES)),
    f("WhoId", "Name ID", FieldType::Reference(WHO)),
    f("WhatId", "Related To ID", FieldType::Reference(WHAT)),
    f("OwnerId", "Assigned To ID", FieldType::Reference(USERS)),
    create_only("TaskSubtype", "Task Subtype", FieldType::Picklist(TASK_SUBTYPES), false),
    f("CallType", "Call Type", FieldType::Picklist(CALL_TYPES)),
    f("CallDurationInSeconds", "Call Duration", FieldType::Int),
    f("CallDisposition", "Call Result", FieldType::String(255)),
    f("CallObject", "Call Object Identifier", FieldType::String(255)),
    derived("IsClosed", "Closed", FieldType::Boolean),
    ACTION_ID,
];

static LEAD_FIELDS: &[FieldDef] = with_system![
    f("FirstName", "First Name", FieldType::String(40)),
    req("LastName", "Last Name", FieldType::String(80)),
    derived("Name", "Full Name", FieldType::String(121)),
    req("Company", "Company", FieldType::String(255)),
    f("Email", "Email", FieldType::Email),
    f("Phone", "Phone", FieldType::Phone),
    f("Title", "Title", FieldType::String(128)),
    f("Status", "Status", FieldType::Picklist(LEAD_STATUSES)),
    f("LeadSource", "Lead Source", FieldType::Picklist(LEAD_SOURCES)),
    derived("IsConverted", "Converted", FieldType::Boolean),
    f("OwnerId", "Owner ID", FieldType::Reference(USERS)),
];

static NOTE_FIELDS: &[FieldDef] = with_system![
    create_only("ParentId", "Parent ID", FieldType::Reference(NOTE_PARENTS), true),
    req("Title", "Title", FieldType::String(80)),
    f("Body", "Body", FieldType::TextArea(32_000)),
    f("IsPrivate", "Private", FieldType::Boolean),
    f("OwnerId", "Owner ID", FieldType::Reference(USERS)),
    ACTION_ID,
];

static USER_FIELDS: &[FieldDef] = with_system![
    sys("Username", "Username", FieldType::String(80)),
    sys("FirstName", "First Name", FieldType::String(40)),
    sys("LastName", "Last Name", FieldType::String(80)),
    sys("Name", "Full Name", FieldType::String(121)),
    sys("Email", "Email", FieldType::Email),
    sys("IsActive", "Active", FieldType::Boolean),
];

/// A stored field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    /// Text (strings, emails, picklists, ids, references).
    Str(String),
    /// A decimal number (double, currency, percent).
    Num(f64),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A calendar date.
    Date(NaiveDate),
    /// A point in time, epoch milliseconds.
    DateTime(Millis),
}

impl Val {
    /// The value as JSON, in Salesforce's wire formats.
    pub fn to_json(&self) -> Value {
        match self {
            Val::Str(s) => Value::String(s.clone()),
            Val::Num(n) => serde_json::Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null),
            Val::Int(i) => Value::from(*i),
            Val::Bool(b) => Value::Bool(*b),
            Val::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
            Val::DateTime(ms) => Value::String(format_datetime(*ms)),
        }
    }

    /// The value as text (for searchable text and digests).
    pub fn text(&self) -> String {
        match self.to_json() {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }
}

/// Formats a time as Salesforce does: `2025-01-31T17:00:00.000+0000`.
pub fn format_datetime(ms: Millis) -> String {
    crate::clock::to_datetime(ms).format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// Parses a date-time as the REST API accepts it in bodies and parameters: ISO 8601 with `Z`, an
/// offset with or without a colon (`+0000`, `+00:00`), optional fractional seconds.
pub fn parse_datetime(s: &str) -> Option<Millis> {
    let s = s.trim();
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"] {
        if let Ok(dt) = chrono::DateTime::parse_from_str(s, fmt) {
            return Some(dt.timestamp_millis());
        }
    }
    None
}

/// Why a body value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueError {
    /// Salesforce error code (`JSON_PARSER_ERROR`, `INVALID_EMAIL_ADDRESS`, `STRING_TOO_LONG`, ...).
    pub code: &'static str,
    /// Message in Salesforce's words.
    pub message: String,
    /// Fields named in the error (empty for parser errors, which name none).
    pub fields: Vec<String>,
}

fn parser_error(ty: FieldType, v: &Value) -> ValueError {
    let kind = match v {
        Value::String(_) => "VALUE_STRING",
        Value::Number(n) if n.is_f64() => "VALUE_NUMBER_FLOAT",
        Value::Number(_) => "VALUE_NUMBER_INT",
        Value::Bool(true) => "VALUE_TRUE",
        Value::Bool(false) => "VALUE_FALSE",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
        Value::Null => "VALUE_NULL",
    };
    let shown = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    ValueError {
        code: "JSON_PARSER_ERROR",
        message: format!(
            "Cannot deserialize instance of {} from {kind} value {shown} or request may be missing a required field",
            ty.soap_name()
        ),
        fields: Vec::new(),
    }
}

/// Whether a string looks like an email address Salesforce accepts.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(char::is_whitespace)
        && !domain.contains('@')
}

/// Converts a JSON body value to a stored value for `def`, as the REST API does: numbers accept JSON
/// numbers or numeric strings, dates `YYYY-MM-DD`, date-times ISO 8601, booleans `true`/`false`;
/// picklists must use a listed value; text is length-checked. `Ok(None)` means "clear the field".
/// Reference values are only checked for shape here (the store checks the target exists).
pub fn parse_value(def: &FieldDef, v: &Value) -> Result<Option<Val>, ValueError> {
    if v.is_null() {
        return Ok(None);
    }
    let ty = def.ty;
    let text = || match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(parser_error(ty, v)),
    };
    let val = match ty {
        FieldType::String(_) | FieldType::TextArea(_) | FieldType::Phone | FieldType::Url => {
            let s = text()?;
            if s.is_empty() {
                return Ok(None);
            }
            Val::Str(s)
        }
        FieldType::Email => {
            let s = text()?;
            if s.is_empty() {
                return Ok(None);
            }
            if !valid_email(&s) {
                return Err(ValueError {
                    code: "INVALID_EMAIL_ADDRESS",
                    message: format!("{}: invalid email address: {s}", def.label),
                    fields: vec![def.name.to_owned()],
                });
            }
            Val::Str(s)
        }
        FieldType::Picklist(values) => {
            let s = text()?;
            if s.is_empty() {
                return Ok(None);
            }
            match values.iter().find(|x| x.eq_ignore_ascii_case(&s)) {
                Some(canonical) => Val::Str((*canonical).to_owned()),
                None => {
                    return Err(ValueError {
                        code: "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        message: format!("{}: bad value for restricted picklist field: {s}", def.label),
                        fields: vec![def.name.to_owned()],
                    });
                }
            }
        }
        FieldType::Id | FieldType::Reference(_) => {
            let Value::String(s) = v else { return Err(parser_error(ty, v)) };
            if s.is_empty() {
                return Ok(None);
            }
            match normalize_id(s) {
                Some(id) => Val::Str(id),
                None => {
                    return Err(ValueError {
                        code: "MALFORMED_ID",
                        message: format!("{}: id value of incorrect type: {s}", def.label),
                        fields: vec![def.name.to_owned()],
                    });
                }
            }
        }
        FieldType::Date => {
            let Value::String(s) = v else { return Err(parser_error(ty, v)) };
            let d = NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                .ok()
                .filter(|_| s.len() == 10 || parse_datetime(s).is_some());
            match d {
                Some(d) => Val::Date(d),
                None => return Err(parser_error(ty, v)),
            }
        }
        FieldType::DateTime => {
            let Value::String(s) = v else { return Err(parser_error(ty, v)) };
            match parse_datetime(s) {
                Some(ms) => Val::DateTime(ms),
                None => return Err(parser_error(ty, v)),
            }
        }
        FieldType::Double | FieldType::Currency | FieldType::Percent => match v {
            Value::Number(n) => Val::Num(n.as_f64().ok_or_else(|| parser_error(ty, v))?),
            Value::String(s) => Val::Num(s.trim().parse::<f64>().map_err(|_| parser_error(ty, v))?),
            _ => return Err(parser_error(ty, v)),
        },
        FieldType::Int => match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => match n.as_f64() {
                    Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => Val::Int(x as i64),
                    _ => return Err(parser_error(ty, v)),
                },
            },
            Value::String(s) => Val::Int(s.trim().parse::<i64>().map_err(|_| parser_error(ty, v))?),
            _ => return Err(parser_error(ty, v)),
        },
        FieldType::Boolean => match v {
            Value::Bool(b) => Val::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Val::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Val::Bool(false),
            _ => return Err(parser_error(ty, v)),
        },
    };
    if let (Some(max), Val::Str(s)) = (ty.max_len(), &val)
        && s.chars().count() > max
    {
        return Err(ValueError {
            code: "STRING_TOO_LONG",
            message: format!("{}: data value too large: {} (max length={max})", def.label, truncate(s, 40)),
            fields: vec![def.name.to_owned()],
        });
    }
    Ok(Some(val))
}

fn truncate(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push_str("...");
    }
    out
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
/// The two-character pod part of every id the sandbox mints.
pub const POD: &str = "5g";

/// The three-character case-insensitivity suffix of a 15-character id.
pub fn id_suffix(id15: &str) -> String {
    let b = id15.as_bytes();
    (0..3)
        .map(|chunk| {
            let mut flags = 0usize;
            for j in 0..5 {
                if b.get(chunk * 5 + j).is_some_and(u8::is_ascii_uppercase) {
                    flags |= 1 << j;
                }
            }
            SUFFIX[flags] as char
        })
        .collect()
}

/// Mints an 18-character id: key prefix, pod, a 10-character base-62 counter, and the checksum
/// suffix. For one prefix, ids sort (as byte strings) in counter order.
pub fn make_id(prefix: &str, counter: u64) -> String {
    let mut digits = [b'0'; 10];
    let mut n = counter;
    for d in digits.iter_mut().rev() {
        *d = BASE62[(n % 62) as usize];
        n /= 62;
    }
    let mut id = String::with_capacity(18);
    id.push_str(prefix);
    id.push_str(POD);
    id.extend(digits.iter().map(|b| *b as char));
    let suffix = id_suffix(&id);
    id.push_str(&suffix);
    id
}

/// Normalises a 15- or 18-character id to its canonical 18-character form (18-character ids are
/// case-insensitive: the suffix restores the case of the first 15). `None` if it is not an id.
pub fn normalize_id(s: &str) -> Option<String> {
    let s = s.trim();
    if !(s.len() == 15 || s.len() == 18) || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let mut base: Vec<u8> = s.as_bytes()[..15].to_vec();
    if s.len() == 18 {
        let suffix = s.as_bytes()[15..].to_ascii_uppercase();
        for (chunk, c) in suffix.iter().enumerate() {
            let flags = SUFFIX.iter().position(|x| x == c)?;
            for j in 0..5 {
                let b = &mut base[chunk * 5 + j];
                if flags & (1 << j) != 0 {
                    *b = b.to_ascii_uppercase();
                } else {
                    *b = b.to_ascii_lowercase();
                }
            }
        }
    }
    let id15 = String::from_utf8(base).ok()?;
    let suffix = id_suffix(&id15);
    Some(format!("{id15}{suffix}"))
}

/// The API versions the imitation serves (`/services/data/v31.0` to `/services/data/v66.0`).
pub const API_VERSIONS: std::ops::RangeInclusive<u32> = 31..=66;

/// Parses a path version segment (`v62.0`) into its major number, if served.
pub fn parse_version(seg: &str) -> Option<u32> {
    let n: u32 = seg.strip_prefix('v')?.strip_suffix(".0")?.parse().ok()?;
    API_VERSIONS.contains(&n).then_some(n)
}

/// The release label of an API version (62 is Winter '25; three releases a year).
pub fn release_label(v: u32) -> String {
    let d = i64::from(v) - 62;
    let year = 25 + d.div_euclid(3);
    let season = ["Winter", "Spring", "Summer"][d.rem_euclid(3) as usize];
    format!("{season} '{year:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_have_the_documented_shape_and_checksum() {
        let id = make_id("003", 1_000_000);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("0035g"));
        // The well-known example: 001A0000006Vm9r → suffix IAC.
        assert_eq!(id_suffix("001A0000006Vm9r"), "IAC");
        assert_eq!(normalize_id("001A0000006Vm9r").as_deref(), Some("001A0000006Vm9rIAC"));
        assert_eq!(normalize_id("001a0000006vm9rIAC").as_deref(), Some("001A0000006Vm9rIAC"));
        assert_eq!(normalize_id("not-an-id"), None);
        assert!(make_id("003", 5) < make_id("003", 62) && make_id("003", 62) < make_id("003", 3_844));
    }

    #[test]
    fn values_are_validated_like_the_rest_api() {
        let email = SObject::Contact.field("email").expect("email");
        assert_eq!(parse_value(email, &json!("a@x.com")), Ok(Some(Val::Str("a@x.com".into()))));
        assert_eq!(parse_value(email, &json!("nope")).map_err(|e| e.code), Err("INVALID_EMAIL_ADDRESS"));
        let amount = SObject::Opportunity.field("Amount").expect("amount");
        assert_eq!(parse_value(amount, &json!("5000")), Ok(Some(Val::Num(5000.0))));
        assert_eq!(parse_value(amount, &json!("x")).map_err(|e| e.code), Err("JSON_PARSER_ERROR"));
        let stage = SObject::Opportunity.field("StageName").expect("stage");
        assert_eq!(
            parse_value(stage, &json!("closed won")),
            Ok(Some(Val::Str("Closed Won".into()))),
            "picklists match case-insensitively and store the canonical value"
        );
        let title = SObject::Note.field("Title").expect("title");
        assert_eq!(parse_value(title, &json!("x".repeat(81))).map_err(|e| e.code), Err("STRING_TOO_LONG"));
        let close = SObject::Opportunity.field("CloseDate").expect("close");
        assert_eq!(
            parse_value(close, &json!("2025-02-01")),
            Ok(Some(Val::Date(NaiveDate::from_ymd_opt(2025, 2, 1).expect("date"))))
        );
    }

    #[test]
    fn datetimes_use_salesforce_formats() {
        assert_eq!(format_datetime(1_735_689_600_000), "2025-01-01T00:00:00.000+0000");
        assert_eq!(parse_datetime("2025-01-01T00:00:00.000+0000"), Some(1_735_689_600_000));
        assert_eq!(parse_datetime("2025-01-01T02:00:00+02:00"), Some(1_735_689_600_000));
        assert_eq!(parse_datetime("2025-01-01T00:00:00Z"), Some(1_735_689_600_000));
        assert_eq!(release_label(62), "Winter '25");
        assert_eq!(release_label(31), "Summer '14");
        assert_eq!(parse_version("v62.0"), Some(62));
        assert_eq!(parse_version("v99.0"), None);
    }
}
