//! HubSpot's object model as the sandbox knows it: object types, their properties (types, options,
//! uniqueness, read-only and required flags), association type ids, deal pipelines, owners and scopes.
//!
//! Everything here is static data from `crm-providers.md` §1 (association ids from the official SDK's
//! `AssociationTypes.ts`). Invariant: a property that is not in [`properties`] does not exist: writes
//! naming it get `PROPERTY_DOESNT_EXIST`, and stored records only ever hold listed, writable
//! properties, normalised by [`normalize`].

use crate::clock::{format_ms, parse_time};
use serde_json::Value;

/// The six synced object types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectType {
    /// `contacts` (object type id 0-1).
    Contacts,
    /// `companies` (0-2).
    Companies,
    /// `deals` (0-3).
    Deals,
    /// `tasks` (0-27).
    Tasks,
    /// `calls` (0-48).
    Calls,
    /// `notes` (0-46).
    Notes,
}

impl ObjectType {
    /// All six, in index order.
    pub const ALL: [ObjectType; 6] = [
        ObjectType::Contacts,
        ObjectType::Companies,
        ObjectType::Deals,
        ObjectType::Tasks,
        ObjectType::Calls,
        ObjectType::Notes,
    ];

    /// Parses a path segment: plural name, singular name or object type id (`0-1`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "contacts" | "contact" | "0-1" => ObjectType::Contacts,
            "companies" | "company" | "0-2" => ObjectType::Companies,
            "deals" | "deal" | "0-3" => ObjectType::Deals,
            "tasks" | "task" | "0-27" => ObjectType::Tasks,
            "calls" | "call" | "0-48" => ObjectType::Calls,
            "notes" | "note" | "0-46" => ObjectType::Notes,
            _ => return None,
        })
    }

    /// Index into per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Plural name (`contacts`), used in paths and association keys.
    pub fn name(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contacts",
            ObjectType::Companies => "companies",
            ObjectType::Deals => "deals",
            ObjectType::Tasks => "tasks",
            ObjectType::Calls => "calls",
            ObjectType::Notes => "notes",
        }
    }

    /// Upper-case singular (`CONTACT`), as in batch error messages.
    pub fn upper(self) -> &'static str {
        match self {
            ObjectType::Contacts => "CONTACT",
            ObjectType::Companies => "COMPANY",
            ObjectType::Deals => "DEAL",
            ObjectType::Tasks => "TASK",
            ObjectType::Calls => "CALL",
            ObjectType::Notes => "NOTE",
        }
    }

    /// Capitalised singular (`Contact`), as in conflict messages.
    pub fn title(self) -> &'static str {
        match self {
            ObjectType::Contacts => "Contact",
            ObjectType::Companies => "Company",
            ObjectType::Deals => "Deal",
            ObjectType::Tasks => "Task",
            ObjectType::Calls => "Call",
            ObjectType::Notes => "Note",
        }
    }

    /// The modification-time property: `lastmodifieddate` on contacts, `hs_lastmodifieddate` elsewhere.
    pub fn modified_prop(self) -> &'static str {
        match self {
            ObjectType::Contacts => "lastmodifieddate",
            _ => "hs_lastmodifieddate",
        }
    }

    /// The creation-time property: `createdate` on contacts, companies and deals, `hs_createdate` on
    /// engagements.
    pub fn created_prop(self) -> &'static str {
        match self {
            ObjectType::Contacts | ObjectType::Companies | ObjectType::Deals => "createdate",
            _ => "hs_createdate",
        }
    }

    /// Properties returned when a request names none.
    pub fn default_props(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => {
                &["createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"]
            }
            ObjectType::Companies => &["createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name"],
            ObjectType::Deals => &[
                "amount",
                "closedate",
                "createdate",
                "dealname",
                "dealstage",
                "hs_lastmodifieddate",
                "hs_object_id",
                "pipeline",
            ],
            ObjectType::Tasks | ObjectType::Calls | ObjectType::Notes => {
                &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"]
            }
        }
    }

    /// Properties always returned besides the requested ones.
    pub fn always_props(self) -> [&'static str; 3] {
        [self.created_prop(), "hs_object_id", self.modified_prop()]
    }

    /// Scope needed to read.
    pub fn read_scope(self) -> &'static str {
        match self {
            ObjectType::Companies => "crm.objects.companies.read",
            ObjectType::Deals => "crm.objects.deals.read",
            _ => "crm.objects.contacts.read",
        }
    }

    /// Scope needed to write.
    pub fn write_scope(self) -> &'static str {
        match self {
            ObjectType::Companies => "crm.objects.companies.write",
            ObjectType::Deals => "crm.objects.deals.write",
            _ => "crm.objects.contacts.write",
        }
    }
}

/// Every scope the sandbox knows; tokens without an explicit scope list get all of them.
pub const ALL_SCOPES: &[&str] = &[
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.companies.read",
    "crm.objects.companies.write",
    "crm.objects.deals.read",
    "crm.objects.deals.write",
    "crm.objects.owners.read",
    "oauth",
];

/// A property's value type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropType {
    /// Free text.
    String,
    /// An email address (lower-cased on write).
    Email,
    /// A decimal number.
    Number,
    /// An integer.
    Integer,
    /// A point in time (stored as RFC 3339 with milliseconds).
    DateTime,
    /// One of a fixed set of values.
    Enumeration(&'static [&'static str]),
    /// The id of a seeded owner.
    Owner,
    /// A deal pipeline id.
    Pipeline,
    /// A deal stage id (must belong to the deal's pipeline).
    Stage,
}

impl PropType {
    /// HubSpot's `type` name for the properties API.
    pub fn type_name(self) -> &'static str {
        match self {
            PropType::String | PropType::Email => "string",
            PropType::Number | PropType::Integer => "number",
            PropType::DateTime => "datetime",
            PropType::Enumeration(_) | PropType::Owner | PropType::Pipeline | PropType::Stage => {
                "enumeration"
            }
        }
    }
}

/// One property definition.
#[derive(Clone, Copy, Debug)]
pub struct PropDef {
    /// Internal name.
    pub name: &'static str,
    /// Label.
    pub label: &'static str,
    /// Value type.
    pub ty: PropType,
    /// Unique across the object type's live records (`hasUniqueValue`).
    pub unique: bool,
    /// Set by HubSpot, not writable.
    pub read_only: bool,
    /// Required on create.
    pub required: bool,
}

const fn p(name: &'static str, label: &'static str, ty: PropType) -> PropDef {
    PropDef { name, label, ty, unique: false, read_only: false, required: false }
}

const fn ro(name: &'static str, label: &'static str, ty: PropType) -> PropDef {
    PropDef { name, label, ty, unique: false, read_only: true, required: false }
}

const fn req(name: &'static str, label: &'static str, ty: PropType) -> PropDef {
    PropDef { name, label, ty, unique: false, read_only: false, required: true }
}

const fn uniq(name: &'static str, label: &'static str, ty: PropType) -> PropDef {
    PropDef { name, label, ty, unique: true, read_only: false, required: false }
}

/// The custom unique-value property crm-fleet stores its action id in. It exists on every object type.
pub const ACTION_ID_PROP: &str = "crm_fleet_action_id";

const ACTION_ID: PropDef = uniq(ACTION_ID_PROP, "crm-fleet action id", PropType::String);

/// Lifecycle stages of contacts.
pub const LIFECYCLE_STAGES: &[&str] = &[
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
];

/// Task statuses accepted on write (`crm-providers.md` §1.4: `COMPLETED` or `NOT_STARTED`).
pub const TASK_STATUSES: &[&str] = &["NOT_STARTED", "COMPLETED"];
/// Task priorities.
pub const TASK_PRIORITIES: &[&str] = &["LOW", "MEDIUM", "HIGH"];
/// Task types.
pub const TASK_TYPES: &[&str] = &["EMAIL", "CALL", "TODO"];
/// Call directions.
pub const CALL_DIRECTIONS: &[&str] = &["INBOUND", "OUTBOUND"];
/// Call statuses (`crm-providers.md` §1.4).
pub const CALL_STATUSES: &[&str] = &[
    "BUSY",
    "CALLING_CRM_USER",
    "CANCELED",
    "COMPLETED",
    "CONNECTING",
    "FAILED",
    "IN_PROGRESS",
    "NO_ANSWER",
    "QUEUED",
    "RINGING",
];
/// Deal types.
pub const DEAL_TYPES: &[&str] = &["newbusiness", "existingbusiness"];

const CONTACT_PROPS: &[PropDef] = &[
    ro("createdate", "Create Date", PropType::DateTime),
    PropDef { unique: true, ..p("email", "Email", PropType::Email) },
    p("firstname", "First Name", PropType::String),
    ro("hs_object_id", "Record ID", PropType::Integer),
    p("hubspot_owner_id", "Contact owner", PropType::Owner),
    p("jobtitle", "Job Title", PropType::String),
    ro("lastmodifieddate", "Last Modified Date", PropType::DateTime),
    p("lastname", "Last Name", PropType::String),
    p("lifecyclestage", "Lifecycle Stage", PropType::Enumeration(LIFECYCLE_STAGES)),
    p("phone", "Phone Number", PropType::String),
    p("company", "Company Name", PropType::String),
    p("city", "City", PropType::String),
    p("country", "Country/Region", PropType::String),
    p("website", "Website URL", PropType::String),
    ACTION_ID,
];

const COMPANY_PROPS: &[PropDef] = &[
    p("annualrevenue", "Annual Revenue", PropType::Number),
    p("city", "City", PropType::String),
    p("country", "Country/Region", PropType::String),
    ro("createdate", "Create Date", PropType::DateTime),
    p("domain", "Company Domain Name", PropType::String),
    ro("hs_lastmodifieddate", "Last Modified Date", PropType::DateTime),
    ro("hs_object_id", "Record ID", PropType::Integer),
    p("hubspot_owner_id", "Company owner", PropType::Owner),
    p("industry", "Industry", PropType::String),
    p("name", "Name", PropType::String),
    p("numberofemployees", "Number of Employees", PropType::Integer),
    p("phone", "Phone Number", PropType::String),
    ACTION_ID,
];

const DEAL_PROPS: &[PropDef] = &[
    p("amount", "Amount", PropType::Number),
    p("closedate", "Close Date", PropType::DateTime),
    ro("createdate", "Create Date", PropType::DateTime),
    req("dealname", "Deal Name", PropType::String),
    req("dealstage", "Deal Stage", PropType::Stage),
    p("dealtype", "Deal Type", PropType::Enumeration(DEAL_TYPES)),
    p("description", "Deal Description", PropType::String),
    ro("hs_lastmodifieddate", "Last Modified Date", PropType::DateTime),
    ro("hs_object_id", "Record ID", PropType::Integer),
    p("hubspot_owner_id", "Deal owner", PropType::Owner),
    p("pipeline", "Pipeline", PropType::Pipeline),
    ACTION_ID,
];

const TASK_PROPS: &[PropDef] = &[
    ro("hs_createdate", "Create Date", PropType::DateTime),
    ro("hs_lastmodifieddate", "Last Modified Date", PropType::DateTime),
    ro("hs_object_id", "Record ID", PropType::Integer),
    p("hs_task_body", "Notes", PropType::String),
    p("hs_task_priority", "Priority", PropType::Enumeration(TASK_PRIORITIES)),
    p("hs_task_status", "Task Status", PropType::Enumeration(TASK_STATUSES)),
    p("hs_task_subject", "Task Title", PropType::String),
    p("hs_task_type", "Task Type", PropType::Enumeration(TASK_TYPES)),
    req("hs_timestamp", "Due date", PropType::DateTime),
    p("hubspot_owner_id", "Assigned to", PropType::Owner),
    ACTION_ID,
];

const CALL_PROPS: &[PropDef] = &[
    p("hs_call_body", "Call notes", PropType::String),
    p("hs_call_direction", "Call direction", PropType::Enumeration(CALL_DIRECTIONS)),
    p("hs_call_duration", "Call duration (ms)", PropType::Integer),
    p("hs_call_from_number", "From number", PropType::String),
    p("hs_call_status", "Call status", PropType::Enumeration(CALL_STATUSES)),
    p("hs_call_title", "Call title", PropType::String),
    p("hs_call_to_number", "To number", PropType::String),
    ro("hs_createdate", "Create Date", PropType::DateTime),
    ro("hs_lastmodifieddate", "Last Modified Date", PropType::DateTime),
    ro("hs_object_id", "Record ID", PropType::Integer),
    req("hs_timestamp", "Activity date", PropType::DateTime),
    p("hubspot_owner_id", "Activity assigned to", PropType::Owner),
    ACTION_ID,
];

const NOTE_PROPS: &[PropDef] = &[
    ro("hs_createdate", "Create Date", PropType::DateTime),
    ro("hs_lastmodifieddate", "Last Modified Date", PropType::DateTime),
    p("hs_note_body", "Note body", PropType::String),
    ro("hs_object_id", "Record ID", PropType::Integer),
    req("hs_timestamp", "Activity date", PropType::DateTime),
    p("hubspot_owner_id", "Activity assigned to", PropType::Owner),
    ACTION_ID,
];

/// Every property of an object type.
pub fn properties(obj: ObjectType) -> &'static [PropDef] {
    match obj {
        ObjectType::Contacts => CONTACT_PROPS,
        ObjectType::Companies => COMPANY_PROPS,
        ObjectType::Deals => DEAL_PROPS,
        ObjectType::Tasks => TASK_PROPS,
        ObjectType::Calls => CALL_PROPS,
        ObjectType::Notes => NOTE_PROPS,
    }
}

/// One property definition.
pub fn property(obj: ObjectType, name: &str) -> Option<&'static PropDef> {
    properties(obj).iter().find(|d| d.name == name)
}

/// Properties that can be used as `idProperty` (unique ones, plus `hs_object_id`).
pub fn is_id_property(obj: ObjectType, name: &str) -> bool {
    name == "hs_object_id" || property(obj, name).is_some_and(|d| d.unique)
}

/// A property-level validation failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropError {
    /// Property name.
    pub name: String,
    /// HubSpot error code (`PROPERTY_DOESNT_EXIST`, `INVALID_OPTION`, ...).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Seeded owners: `(id, email, first name, last name, user id)`. The same three in every account.
pub const OWNERS: &[(&str, &str, &str, &str, u64)] = &[
    ("64492917", "ada.owner@sandbox.test", "Ada", "Owner", 9_100_001),
    ("64492918", "bo.seller@sandbox.test", "Bo", "Seller", 9_100_002),
    ("64492919", "cy.closer@sandbox.test", "Cy", "Closer", 9_100_003),
];

/// A deal pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Pipeline {
    /// Pipeline id.
    pub id: &'static str,
    /// Label.
    pub label: &'static str,
    /// Stages: `(id, label, probability, is_closed)`.
    pub stages: &'static [(&'static str, &'static str, &'static str, bool)],
}

/// The deal pipelines of every account: HubSpot's default pipeline and a second one with numeric ids,
/// so clients cannot assume stage ids are global.
pub const PIPELINES: &[Pipeline] = &[
    Pipeline {
        id: "default",
        label: "Sales Pipeline",
        stages: &[
            ("appointmentscheduled", "Appointment Scheduled", "0.2", false),
            ("qualifiedtobuy", "Qualified To Buy", "0.4", false),
            ("presentationscheduled", "Presentation Scheduled", "0.6", false),
            ("decisionmakerboughtin", "Decision Maker Bought-In", "0.8", false),
            ("contractsent", "Contract Sent", "0.9", false),
            ("closedwon", "Closed Won", "1.0", true),
            ("closedlost", "Closed Lost", "0.0", true),
        ],
    },
    Pipeline {
        id: "75650210",
        label: "Renewals",
        stages: &[
            ("75650211", "Renewal Due", "0.5", false),
            ("75650212", "Renewal Negotiation", "0.7", false),
            ("75650213", "Renewed", "1.0", true),
            ("75650214", "Churned", "0.0", true),
        ],
    },
];

/// The pipeline with this id.
pub fn pipeline(id: &str) -> Option<&'static Pipeline> {
    PIPELINES.iter().find(|p| p.id == id)
}

/// The pipeline a stage belongs to.
pub fn pipeline_of_stage(stage: &str) -> Option<&'static Pipeline> {
    PIPELINES.iter().find(|p| p.stages.iter().any(|s| s.0 == stage))
}

/// An association type (HUBSPOT_DEFINED).
#[derive(Clone, Copy, Debug)]
pub struct AssocType {
    /// `associationTypeId`.
    pub id: u16,
    /// Source object type.
    pub from: ObjectType,
    /// Target object type.
    pub to: ObjectType,
    /// The `type` label in v3 responses.
    pub label: &'static str,
    /// The id of the reverse direction.
    pub reverse: u16,
}

const fn a(id: u16, from: ObjectType, to: ObjectType, label: &'static str, reverse: u16) -> AssocType {
    AssocType { id, from, to, label, reverse }
}

use ObjectType::{Calls, Companies, Contacts, Deals, Notes, Tasks};

/// HUBSPOT_DEFINED association types among the six objects (ids from the SDK's `AssociationTypes`).
pub const ASSOC_TYPES: &[AssocType] = &[
    a(1, Contacts, Companies, "contact_to_company", 2),
    a(2, Companies, Contacts, "company_to_contact", 1),
    a(3, Deals, Contacts, "deal_to_contact", 4),
    a(4, Contacts, Deals, "contact_to_deal", 3),
    a(5, Deals, Companies, "deal_to_company", 6),
    a(6, Companies, Deals, "company_to_deal", 5),
    a(181, Companies, Calls, "company_to_call", 182),
    a(182, Calls, Companies, "call_to_company", 181),
    a(189, Companies, Notes, "company_to_note", 190),
    a(190, Notes, Companies, "note_to_company", 189),
    a(191, Companies, Tasks, "company_to_task", 192),
    a(192, Tasks, Companies, "task_to_company", 191),
    a(193, Contacts, Calls, "contact_to_call", 194),
    a(194, Calls, Contacts, "call_to_contact", 193),
    a(201, Contacts, Notes, "contact_to_note", 202),
    a(202, Notes, Contacts, "note_to_contact", 201),
    a(203, Contacts, Tasks, "contact_to_task", 204),
    a(204, Tasks, Contacts, "task_to_contact", 203),
    a(205, Deals, Calls, "deal_to_call", 206),
    a(206, Calls, Deals, "call_to_deal", 205),
    a(213, Deals, Notes, "deal_to_note", 214),
    a(214, Notes, Deals, "note_to_deal", 213),
    a(215, Deals, Tasks, "deal_to_task", 216),
    a(216, Tasks, Deals, "task_to_deal", 215),
    a(279, Contacts, Companies, "contact_to_company_unlabeled", 280),
    a(280, Companies, Contacts, "company_to_contact_unlabeled", 279),
    a(341, Deals, Companies, "deal_to_company_unlabeled", 342),
    a(342, Companies, Deals, "company_to_deal_unlabeled", 341),
];

/// The association type with this id.
pub fn assoc_type(id: u16) -> Option<&'static AssocType> {
    ASSOC_TYPES.iter().find(|t| t.id == id)
}

/// Validates and normalises property values for a write. Values may be JSON strings, numbers or
/// booleans (converted to strings); `null` and `""` clear a property. Returns the normalised values,
/// where an empty string means "clear".
pub fn normalize(
    obj: ObjectType,
    input: &serde_json::Map<String, Value>,
) -> Result<Vec<(&'static PropDef, String)>, Vec<PropError>> {
    let mut out = Vec::with_capacity(input.len());
    let mut errors = Vec::new();
    for (name, value) in input {
        let Some(def) = property(obj, name) else {
            errors.push(PropError {
                name: name.clone(),
                code: "PROPERTY_DOESNT_EXIST",
                message: format!("Property \"{name}\" does not exist"),
            });
            continue;
        };
        if def.read_only {
            errors.push(PropError {
                name: name.clone(),
                code: "READ_ONLY_VALUE",
                message: format!("\"{name}\" is a read only property; its value cannot be set."),
            });
            continue;
        }
        let raw = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            Value::Array(_) | Value::Object(_) => {
                errors.push(PropError {
                    name: name.clone(),
                    code: "INVALID_PROPERTY_VALUE",
                    message: format!("Property \"{name}\" must be a string, number or boolean"),
                });
                continue;
            }
        };
        if raw.is_empty() {
            out.push((def, raw));
            continue;
        }
        match normalize_value(def, &raw) {
            Ok(v) => out.push((def, v)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn normalize_value(def: &PropDef, raw: &str) -> Result<String, PropError> {
    let err = |code: &'static str, message: String| PropError { name: def.name.to_owned(), code, message };
    match def.ty {
        PropType::String => Ok(raw.to_owned()),
        PropType::Email => {
            let v = raw.trim().to_ascii_lowercase();
            let valid = v.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !v.contains(char::is_whitespace)
            });
            if valid { Ok(v) } else { Err(err("INVALID_EMAIL", format!("Email address {raw} is invalid"))) }
        }
        PropType::Number => raw
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|_| raw.trim().to_owned())
            .ok_or_else(|| {
                err("INVALID_FLOAT", format!("{raw} was not a valid number for property {}", def.name))
            }),
        PropType::Integer => raw.trim().parse::<i64>().map(|n| n.to_string()).map_err(|_| {
            err("INVALID_INTEGER", format!("{raw} was not a valid long for property {}", def.name))
        }),
        PropType::DateTime => parse_time(raw).map(format_ms).ok_or_else(|| {
            err(
                "INVALID_DATETIME",
                format!(
                    "{raw} was not a valid datetime for property {}; use epoch milliseconds or ISO 8601",
                    def.name
                ),
            )
        }),
        PropType::Enumeration(options) => {
            if options.contains(&raw) {
                Ok(raw.to_owned())
            } else {
                Err(err(
                    "INVALID_OPTION",
                    format!("{raw} was not one of the allowed options: [{}]", options.join(", ")),
                ))
            }
        }
        PropType::Owner => {
            if OWNERS.iter().any(|o| o.0 == raw) {
                Ok(raw.to_owned())
            } else {
                Err(err("INVALID_OWNER_ID", format!("{raw} is not a valid owner id")))
            }
        }
        PropType::Pipeline => {
            if pipeline(raw).is_some() {
                Ok(raw.to_owned())
            } else {
                Err(err(
                    "INVALID_OPTION",
                    format!("{raw} was not one of the allowed options: [{}]", {
                        PIPELINES.iter().map(|p| p.id).collect::<Vec<_>>().join(", ")
                    }),
                ))
            }
        }
        PropType::Stage => {
            if pipeline_of_stage(raw).is_some() {
                Ok(raw.to_owned())
            } else {
                Err(err("INVALID_OPTION", format!("{raw} was not one of the allowed options for dealstage")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn association_types_are_consistent_pairs() {
        for t in ASSOC_TYPES {
            let r = assoc_type(t.reverse).expect("reverse exists");
            assert_eq!(r.reverse, t.id, "{} reverse", t.id);
            assert_eq!((r.from, r.to), (t.to, t.from), "{} direction", t.id);
        }
    }

    #[test]
    fn normalize_rejects_unknown_read_only_and_bad_values() {
        let input =
            json!({"foo": "x", "hs_object_id": "1", "hs_task_status": "DONE", "hs_timestamp": "nope"});
        let errs = normalize(ObjectType::Tasks, input.as_object().expect("object")).expect_err("must fail");
        let codes: Vec<_> = errs.iter().map(|e| e.code).collect();
        assert_eq!(
            codes,
            vec!["PROPERTY_DOESNT_EXIST", "READ_ONLY_VALUE", "INVALID_OPTION", "INVALID_DATETIME"]
        );
    }

    #[test]
    fn normalize_converts_values_to_strings() {
        let input =
            json!({"amount": 5000, "closedate": "2025-02-01", "dealname": "X", "dealstage": "closedwon"});
        let out = normalize(ObjectType::Deals, input.as_object().expect("object")).expect("valid");
        let get = |n: &str| out.iter().find(|(d, _)| d.name == n).map(|(_, v)| v.clone());
        assert_eq!(get("amount").as_deref(), Some("5000"));
        assert_eq!(get("closedate").as_deref(), Some("2025-02-01T00:00:00.000Z"));
    }
}
