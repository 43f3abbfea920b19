//! The actions services can ask for, with their parameters parsed (not merely validated) at the
//! edge: an [`ActionRequest`] either parses into a typed [`Action`] or yields errors that name
//! the offending field (`params.subject`, `action`, …).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::providers::{ContactInput, CreateNote, CreateTask, LogCall, UpdateDeal};

/// The action names.
pub const ACTION_NAMES: [&str; 7] = [
    "create_task",
    "update_deal",
    "log_call",
    "create_contact",
    "update_contact",
    "create_note",
    "search_contact_by_email",
];

/// A typed action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", content = "params", rename_all = "snake_case")]
pub enum Action {
    /// Create a task.
    CreateTask(CreateTask),
    /// Update a deal's stage, amount, close date.
    UpdateDeal(UpdateDeal),
    /// Log a call.
    LogCall(LogCall),
    /// Create a contact.
    CreateContact(ContactInput),
    /// Update a contact.
    UpdateContact(UpdateContact),
    /// Create a note.
    CreateNote(CreateNote),
    /// Look up a contact by email (result stored on the job).
    SearchContactByEmail(SearchByEmail),
}

/// Update a contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateContact {
    /// The contact's id.
    pub contact_id: String,
    /// New values.
    #[serde(flatten)]
    pub fields: ContactInput,
}

/// Search by email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchByEmail {
    /// The email.
    pub email: String,
}

impl Action {
    /// The action's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateTask(_) => "create_task",
            Self::UpdateDeal(_) => "update_deal",
            Self::LogCall(_) => "log_call",
            Self::CreateContact(_) => "create_contact",
            Self::UpdateContact(_) => "update_contact",
            Self::CreateNote(_) => "create_note",
            Self::SearchContactByEmail(_) => "search_contact_by_email",
        }
    }

    /// Whether repeating the call could create a duplicate (it needs the intent/result protocol).
    pub fn creates(&self) -> bool {
        matches!(self, Self::CreateTask(_) | Self::LogCall(_) | Self::CreateContact(_) | Self::CreateNote(_))
    }
}

/// One problem with a request, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field (`params.due_at`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

fn obj<'a>(params: &'a Value, errors: &mut Vec<FieldError>) -> Option<&'a serde_json::Map<String, Value>> {
    match params.as_object() {
        Some(m) => Some(m),
        None => {
            errors.push(FieldError::new("params", "must be a JSON object"));
            None
        }
    }
}

fn string(
    p: &serde_json::Map<String, Value>,
    name: &str,
    required: bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match p.get(name) {
        None | Some(Value::Null) if required => {
            errors.push(FieldError::new(format!("params.{name}"), "is required"));
            None
        }
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() && required => {
            errors.push(FieldError::new(format!("params.{name}"), "must not be empty"));
            None
        }
        Some(Value::String(s)) if s.len() > 10_000 => {
            errors.push(FieldError::new(format!("params.{name}"), "is longer than 10,000 characters"));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(FieldError::new(
                format!("params.{name}"),
                format!("must be a string, got {}", kind(other)),
            ));
            None
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn email(
    p: &serde_json::Map<String, Value>,
    name: &str,
    required: bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let e = string(p, name, required, errors)?;
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'));
    if !ok {
        errors.push(FieldError::new(format!("params.{name}"), format!("{e:?} is not an email address")));
        return None;
    }
    Some(e)
}

fn datetime(
    p: &serde_json::Map<String, Value>,
    name: &str,
    required: bool,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    let s = string(p, name, required, errors)?;
    match DateTime::parse_from_rfc3339(&s) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => {
            errors.push(FieldError::new(
                format!("params.{name}"),
                format!("{s:?} is not an RFC 3339 date-time"),
            ));
            None
        }
    }
}

fn date(p: &serde_json::Map<String, Value>, name: &str, errors: &mut Vec<FieldError>) -> Option<NaiveDate> {
    let s = string(p, name, false, errors)?;
    match NaiveDate::parse_from_str(&s, "%Y-%m-%d") {
        Ok(d) => Some(d),
        Err(_) => {
            errors
                .push(FieldError::new(format!("params.{name}"), format!("{s:?} is not a date (YYYY-MM-DD)")));
            None
        }
    }
}

fn number(p: &serde_json::Map<String, Value>, name: &str, errors: &mut Vec<FieldError>) -> Option<f64> {
    match p.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Some(f),
            _ => {
                errors.push(FieldError::new(format!("params.{name}"), "must be a non-negative number"));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                format!("params.{name}"),
                format!("must be a number, got {}", kind(other)),
            ));
            None
        }
    }
}

fn unknown_fields(p: &serde_json::Map<String, Value>, allowed: &[&str], errors: &mut Vec<FieldError>) {
    for k in p.keys() {
        if !allowed.contains(&k.as_str()) {
            errors.push(FieldError::new(
                format!("params.{k}"),
                format!("is not a parameter of this action (expected one of {})", allowed.join(", ")),
            ));
        }
    }
}

/// Parses `action` + `params` into a typed action, or every problem found.
pub fn parse(action: &str, params: &Value) -> Result<Action, Vec<FieldError>> {
    let mut e = Vec::new();
    if !ACTION_NAMES.contains(&action) {
        return Err(vec![FieldError::new(
            "action",
            format!("unknown action {action:?} (expected one of {})", ACTION_NAMES.join(", ")),
        )]);
    }
    let Some(p) = obj(params, &mut e) else { return Err(e) };
    let parsed = match action {
        "create_task" => {
            unknown_fields(
                p,
                &["subject", "body", "due_at", "contact_id", "deal_id", "company_id", "priority", "owner_id"],
                &mut e,
            );
            let priority = string(p, "priority", false, &mut e);
            if let Some(pr) = &priority
                && !["low", "normal", "high"].contains(&pr.as_str())
            {
                e.push(FieldError::new("params.priority", "must be low, normal or high"));
            }
            Action::CreateTask(CreateTask {
                subject: string(p, "subject", true, &mut e).unwrap_or_default(),
                body: string(p, "body", false, &mut e),
                due_at: datetime(p, "due_at", false, &mut e),
                contact_id: string(p, "contact_id", false, &mut e),
                deal_id: string(p, "deal_id", false, &mut e),
                company_id: string(p, "company_id", false, &mut e),
                priority,
                owner_id: string(p, "owner_id", false, &mut e),
                marker: String::new(),
            })
        }
        "update_deal" => {
            unknown_fields(p, &["deal_id", "stage", "amount", "close_date"], &mut e);
            let u = UpdateDeal {
                deal_id: string(p, "deal_id", true, &mut e).unwrap_or_default(),
                stage: string(p, "stage", false, &mut e),
                amount: number(p, "amount", &mut e),
                close_date: date(p, "close_date", &mut e),
            };
            if u.stage.is_none() && u.amount.is_none() && u.close_date.is_none() && e.is_empty() {
                e.push(FieldError::new("params", "give at least one of stage, amount, close_date"));
            }
            Action::UpdateDeal(u)
        }
        "log_call" => {
            unknown_fields(
                p,
                &[
                    "subject",
                    "body",
                    "direction",
                    "duration_secs",
                    "occurred_at",
                    "contact_id",
                    "deal_id",
                    "company_id",
                ],
                &mut e,
            );
            let direction = string(p, "direction", false, &mut e).unwrap_or_else(|| "outbound".into());
            if !["inbound", "outbound"].contains(&direction.as_str()) {
                e.push(FieldError::new("params.direction", "must be inbound or outbound"));
            }
            let duration = number(p, "duration_secs", &mut e).unwrap_or(0.0);
            if duration > 86_400.0 {
                e.push(FieldError::new("params.duration_secs", "must be at most 86400"));
            }
            Action::LogCall(LogCall {
                subject: string(p, "subject", true, &mut e).unwrap_or_default(),
                body: string(p, "body", false, &mut e),
                direction,
                duration_secs: duration as u32,
                occurred_at: datetime(p, "occurred_at", true, &mut e).unwrap_or_else(Utc::now),
                contact_id: string(p, "contact_id", false, &mut e),
                deal_id: string(p, "deal_id", false, &mut e),
                company_id: string(p, "company_id", false, &mut e),
                marker: String::new(),
            })
        }
        "create_contact" | "update_contact" => {
            let update = action == "update_contact";
            let mut allowed = vec!["email", "first_name", "last_name", "phone", "company_id", "title"];
            if update {
                allowed.push("contact_id");
            }
            unknown_fields(p, &allowed, &mut e);
            let fields = ContactInput {
                email: email(p, "email", false, &mut e),
                first_name: string(p, "first_name", false, &mut e),
                last_name: string(p, "last_name", false, &mut e),
                phone: string(p, "phone", false, &mut e),
                company_id: string(p, "company_id", false, &mut e),
                title: string(p, "title", false, &mut e),
                marker: String::new(),
            };
            if !update
                && fields.email.is_none()
                && fields.last_name.is_none()
                && !e.iter().any(|x| x.field == "params.email")
            {
                e.push(FieldError::new("params.email", "give an email or a last_name"));
            }
            if update {
                Action::UpdateContact(UpdateContact {
                    contact_id: string(p, "contact_id", true, &mut e).unwrap_or_default(),
                    fields,
                })
            } else {
                Action::CreateContact(fields)
            }
        }
        "create_note" => {
            unknown_fields(p, &["body", "title", "contact_id", "deal_id", "company_id"], &mut e);
            let n = CreateNote {
                body: string(p, "body", true, &mut e).unwrap_or_default(),
                title: string(p, "title", false, &mut e),
                contact_id: string(p, "contact_id", false, &mut e),
                deal_id: string(p, "deal_id", false, &mut e),
                company_id: string(p, "company_id", false, &mut e),
                marker: String::new(),
            };
            if n.contact_id.is_none() && n.deal_id.is_none() && n.company_id.is_none() && e.is_empty() {
                e.push(FieldError::new(
                    "params.contact_id",
                    "give one of contact_id, deal_id, company_id to attach the note to",
                ));
            }
            Action::CreateNote(n)
        }
        _ => {
            unknown_fields(p, &["email"], &mut e);
            Action::SearchContactByEmail(SearchByEmail {
                email: email(p, "email", true, &mut e).unwrap_or_default(),
            })
        }
    };
    if e.is_empty() { Ok(parsed) } else { Err(e) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_task_and_names_bad_fields() {
        let ok = parse(
            "create_task",
            &json!({"subject": "Call back", "due_at": "2026-02-01T09:00:00Z", "priority": "high"}),
        );
        assert!(matches!(ok, Ok(Action::CreateTask(ref t)) if t.subject == "Call back"));
        let bad = parse("create_task", &json!({"due_at": "tomorrow", "priority": 3, "colour": "red"}))
            .expect_err("bad");
        let fields: Vec<&str> = bad.iter().map(|e| e.field.as_str()).collect();
        for f in ["params.subject", "params.due_at", "params.priority", "params.colour"] {
            assert!(fields.contains(&f), "{f} not reported: {bad:?}");
        }
        assert_eq!(parse("launch_rocket", &json!({})).expect_err("unknown")[0].field, "action");
        assert_eq!(parse("create_task", &json!([1])).expect_err("array")[0].field, "params");
    }

    #[test]
    fn every_action_parses_from_its_documented_params() {
        let cases = [
            (
                "update_deal",
                json!({"deal_id": "9", "stage": "closedwon", "amount": 5000, "close_date": "2026-03-31"}),
            ),
            (
                "log_call",
                json!({"subject": "Intro", "occurred_at": "2026-01-05T10:00:00Z", "duration_secs": 120}),
            ),
            ("create_contact", json!({"email": "a@b.co", "first_name": "A"})),
            ("update_contact", json!({"contact_id": "5", "phone": "+1"})),
            ("create_note", json!({"body": "Hi", "deal_id": "9"})),
            ("search_contact_by_email", json!({"email": "a@b.co"})),
        ];
        for (name, params) in cases {
            let a = parse(name, &params).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(a.name(), name);
        }
        assert_eq!(
            parse("update_deal", &json!({"deal_id": "9"})).expect_err("nothing to change")[0].field,
            "params"
        );
        assert_eq!(
            parse("create_contact", &json!({"email": "nope"})).expect_err("email")[0].field,
            "params.email"
        );
    }
}
