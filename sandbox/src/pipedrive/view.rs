//! Response shapes: v2 items (persons, organizations, deals, activities), v1 notes, the reduced v1
//! shapes `recents` returns, person search items and `{entity}Fields` definitions.
//!
//! Invariant: every v2 item carries every field of its documented shape (unset ones as `null` or
//! `[]`), `custom_fields` lists every custom field of the entity (unset ones as `null`), and times
//! are second-precision UTC: RFC 3339 in v2 (`2026-01-05T09:00:00Z`), `YYYY-MM-DD HH:MM:SS` in v1.

use super::schema::{self, Entity, Kind};
use super::store::{AccountData, Record};
use crate::clock::{Millis, to_datetime};
use chrono::SecondsFormat;
use serde_json::{Map, Value, json};

/// A v2 time: RFC 3339, seconds, `Z`.
pub fn iso(ms: Millis) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A v1 time: `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn v1_time(ms: Millis) -> String {
    to_datetime(ms).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Parses a v1 time (`YYYY-MM-DD HH:MM:SS`, UTC).
pub fn parse_v1_time(s: &str) -> Option<Millis> {
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// Default (unset) values of each entity's v2 fields.
fn defaults(e: Entity) -> &'static [(&'static str, DefaultValue)] {
    use DefaultValue::{EmptyList, Null};
    match e {
        Entity::Persons => &[
            ("name", Null),
            ("first_name", Null),
            ("last_name", Null),
            ("owner_id", Null),
            ("org_id", Null),
            ("emails", EmptyList),
            ("phones", EmptyList),
            ("visible_to", Null),
            ("label_ids", EmptyList),
            ("picture_id", Null),
        ],
        Entity::Organizations => &[
            ("name", Null),
            ("owner_id", Null),
            ("visible_to", Null),
            ("label_ids", EmptyList),
            ("address", Null),
        ],
        Entity::Deals => &[
            ("title", Null),
            ("owner_id", Null),
            ("person_id", Null),
            ("org_id", Null),
            ("pipeline_id", Null),
            ("stage_id", Null),
            ("value", Null),
            ("currency", Null),
            ("stage_change_time", Null),
            ("is_archived", Null),
            ("archive_time", Null),
            ("status", Null),
            ("probability", Null),
            ("lost_reason", Null),
            ("visible_to", Null),
            ("close_time", Null),
            ("won_time", Null),
            ("lost_time", Null),
            ("expected_close_date", Null),
            ("label_ids", EmptyList),
            ("origin", Null),
            ("origin_id", Null),
            ("channel", Null),
            ("channel_id", Null),
        ],
        Entity::Activities => &[
            ("subject", Null),
            ("type", Null),
            ("owner_id", Null),
            ("creator_user_id", Null),
            ("deal_id", Null),
            ("lead_id", Null),
            ("person_id", Null),
            ("org_id", Null),
            ("project_id", Null),
            ("due_date", Null),
            ("due_time", Null),
            ("duration", Null),
            ("busy", Null),
            ("done", Null),
            ("marked_as_done_time", Null),
            ("location", Null),
            ("participants", EmptyList),
            ("attendees", EmptyList),
            ("public_description", Null),
            ("priority", Null),
            ("note", Null),
        ],
        Entity::Notes => &[],
    }
}

#[derive(Clone, Copy)]
enum DefaultValue {
    Null,
    EmptyList,
}

fn custom_object(d: &AccountData, e: Entity, r: &Record) -> Value {
    let mut m = Map::new();
    for c in d.custom_fields_of(e) {
        m.insert(c.key.clone(), r.custom.get(&c.key).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// A v2 item (persons, organizations, deals, activities). `with_custom` adds `custom_fields`.
pub fn v2_item(d: &AccountData, e: Entity, r: &Record, with_custom: bool) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(r.id));
    for (k, dv) in defaults(e) {
        let v = r.fields.get(*k).cloned().unwrap_or(match dv {
            DefaultValue::Null => Value::Null,
            DefaultValue::EmptyList => Value::Array(Vec::new()),
        });
        m.insert((*k).to_owned(), v);
    }
    m.insert("add_time".into(), json!(iso(r.add_time)));
    m.insert("update_time".into(), json!(iso(r.update_time)));
    m.insert("is_deleted".into(), json!(r.deleted_at.is_some()));
    if with_custom {
        m.insert("custom_fields".into(), custom_object(d, e, r));
    }
    Value::Object(m)
}

fn name_of(d: &AccountData, e: Entity, id: Option<i64>) -> Value {
    let key = if e == Entity::Deals { "title" } else { "name" };
    match id.and_then(|i| d.table(e).rows.get(&(i as u64))) {
        Some(r) => json!({ key: r.str(key) }),
        None => Value::Null,
    }
}

/// A v1 note: custom fields as top-level keys, related names embedded.
pub fn v1_note(d: &AccountData, r: &Record) -> Value {
    let user_id = r.int("user_id").unwrap_or_else(|| d.owner());
    let user = d.users.iter().find(|u| u.id == user_id);
    let flag = |k: &str| r.fields.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut m = Map::new();
    m.insert("id".into(), json!(r.id));
    m.insert("user_id".into(), json!(user_id));
    for k in ["deal_id", "person_id", "org_id"] {
        m.insert(k.into(), r.fields.get(k).cloned().unwrap_or(Value::Null));
    }
    m.insert("lead_id".into(), Value::Null);
    m.insert("project_id".into(), Value::Null);
    m.insert("content".into(), json!(r.str("content").unwrap_or("")));
    m.insert("add_time".into(), json!(v1_time(r.add_time)));
    m.insert("update_time".into(), json!(v1_time(r.update_time)));
    m.insert("active_flag".into(), json!(r.deleted_at.is_none()));
    m.insert("pinned_to_deal_flag".into(), json!(flag("pinned_to_deal_flag")));
    m.insert("pinned_to_person_flag".into(), json!(flag("pinned_to_person_flag")));
    m.insert("pinned_to_organization_flag".into(), json!(flag("pinned_to_organization_flag")));
    m.insert("pinned_to_lead_flag".into(), json!(false));
    m.insert("pinned_to_project_flag".into(), json!(false));
    m.insert(
        "last_update_user_id".into(),
        r.fields.get("last_update_user_id").cloned().unwrap_or(Value::Null),
    );
    m.insert("organization".into(), name_of(d, Entity::Organizations, r.int("org_id")));
    m.insert("person".into(), name_of(d, Entity::Persons, r.int("person_id")));
    m.insert("deal".into(), name_of(d, Entity::Deals, r.int("deal_id")));
    m.insert(
        "user".into(),
        match user {
            Some(u) => {
                json!({"email": u.email, "name": u.name, "icon_url": null, "is_you": u.id == d.owner()})
            }
            None => Value::Null,
        },
    );
    for c in d.custom_fields_of(Entity::Notes) {
        m.insert(c.key.clone(), r.custom.get(&c.key).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// The reduced v1 shape `recents` returns: the v2 fields with v1 times, `active_flag` instead of
/// `is_deleted`, and custom fields as top-level keys.
pub fn v1_item(d: &AccountData, e: Entity, r: &Record) -> Value {
    if e == Entity::Notes {
        return v1_note(d, r);
    }
    let mut v = v2_item(d, e, r, false);
    if let Value::Object(m) = &mut v {
        m.remove("is_deleted");
        m.insert("active_flag".into(), json!(r.deleted_at.is_none()));
        m.insert("add_time".into(), json!(v1_time(r.add_time)));
        m.insert("update_time".into(), json!(v1_time(r.update_time)));
        for c in d.custom_fields_of(e) {
            m.insert(c.key.clone(), r.custom.get(&c.key).cloned().unwrap_or(Value::Null));
        }
    }
    v
}

/// Whichever shape the entity's read endpoints use (v1 for notes, v2 otherwise).
pub fn item(d: &AccountData, e: Entity, r: &Record, activity_custom: bool) -> Value {
    match e {
        Entity::Notes => v1_note(d, r),
        Entity::Activities => v2_item(d, e, r, activity_custom),
        _ => v2_item(d, e, r, true),
    }
}

/// A `persons/search` result item.
pub fn search_item(d: &AccountData, r: &Record, score: f64, matched_custom: Vec<String>) -> Value {
    let list = |k: &str| -> Vec<Value> {
        r.fields
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.get("value").cloned()).collect())
            .unwrap_or_default()
    };
    let org = r.int("org_id").and_then(|i| d.table(Entity::Organizations).rows.get(&(i as u64)));
    json!({
        "result_score": score,
        "item": {
            "id": r.id,
            "type": "person",
            "name": r.str("name"),
            "phones": list("phones"),
            "emails": list("emails"),
            "visible_to": r.int("visible_to"),
            "owner": {"id": r.int("owner_id")},
            "organization": org.map(|o| json!({"id": o.id, "name": o.str("name"), "address": o.fields.get("address").and_then(|a| a.get("value")).cloned()})),
            "custom_fields": matched_custom,
            "notes": [],
        }
    })
}

fn field_type(kind: Kind, name: &str) -> &'static str {
    match kind {
        Kind::Text(_) => "varchar",
        Kind::LongText(_) => "text",
        Kind::UserId => "user",
        Kind::Ref(Entity::Organizations) => "org",
        Kind::Ref(Entity::Persons) => "people",
        Kind::Ref(_) => "int",
        Kind::Number if name == "value" => "monetary",
        Kind::Number => "double",
        Kind::Bool | Kind::Flag => "enum",
        Kind::Date => "date",
        Kind::Time => "time",
        Kind::Duration => "time",
        Kind::DateTime => "date",
        Kind::OneOf(_) if name == "status" => "status",
        Kind::OneOf(_) | Kind::IntOneOf(_) if name == "visible_to" => "visible_to",
        Kind::OneOf(_) | Kind::IntOneOf(_) | Kind::ActivityType => "enum",
        Kind::Currency => "varchar_options",
        Kind::Stage => "stage",
        Kind::PipelineId => "int",
        Kind::Emails | Kind::Phones => "phone",
        Kind::Participants | Kind::IntList => "set",
        Kind::Object => "address",
        Kind::CustomFields => "varchar",
    }
}

fn title_case(name: &str) -> String {
    let mut s = name.replace('_', " ");
    if let Some(c) = s.get(0..1) {
        let up = c.to_uppercase();
        s.replace_range(0..1, &up);
    }
    s
}

/// The v1 `{entity}Fields` list: standard fields, then the account's custom fields.
pub fn fields_list(d: &AccountData, e: Entity, created_ms: Millis) -> Vec<Value> {
    let created = v1_time(created_ms);
    let mut out = Vec::new();
    let base = 1000 * (e.index() as i64 + 1);
    let mut push = |id: i64, key: &str, name: &str, ty: &str, custom: bool, options: Option<Value>| {
        let mut v = json!({
            "id": id,
            "key": key,
            "name": name,
            "order_nr": out.len(),
            "field_type": ty,
            "add_time": created,
            "update_time": created,
            "last_updated_by_user_id": if custom { json!(d.owner()) } else { Value::Null },
            "created_by_user_id": if custom { json!(d.owner()) } else { Value::Null },
            "active_flag": true,
            "edit_flag": custom,
            "index_visible_flag": true,
            "details_visible_flag": true,
            "add_visible_flag": true,
            "important_flag": false,
            "bulk_edit_allowed": true,
            "searchable_flag": custom,
            "filtering_allowed": true,
            "sortable_flag": true,
            "mandatory_flag": false,
        });
        if let Some(o) = options {
            v["options"] = o;
        }
        out.push(v);
    };
    push(base, "id", "ID", "int", false, None);
    for (i, spec) in schema::fields(e).iter().enumerate() {
        if spec.kind == Kind::CustomFields {
            continue;
        }
        let options = match spec.kind {
            Kind::OneOf(o) => Some(Value::Array(
                o.iter().enumerate().map(|(i, x)| json!({"id": i + 1, "label": x})).collect(),
            )),
            Kind::IntOneOf(_) if spec.name == "priority" => Some(Value::Array(
                schema::PRIORITIES.iter().map(|(id, l)| json!({"id": id, "label": l})).collect(),
            )),
            Kind::ActivityType => Some(Value::Array(
                schema::ACTIVITY_TYPES
                    .iter()
                    .map(|t| json!({"id": t.0, "label": t.1, "key_string": t.2}))
                    .collect(),
            )),
            _ => None,
        };
        push(
            base + 1 + i as i64,
            spec.name,
            &title_case(spec.name),
            field_type(spec.kind, spec.name),
            false,
            options,
        );
    }
    push(base + 90, "add_time", "Add time", "date", false, None);
    push(base + 91, "update_time", "Update time", "date", false, None);
    for (i, c) in d.custom_fields_of(e).enumerate() {
        push(12_000 + i as i64, &c.key, &c.name, c.field_type, true, None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats() {
        assert_eq!(iso(1_767_603_600_000), "2026-01-05T09:00:00Z");
        assert_eq!(v1_time(1_767_603_600_000), "2026-01-05 09:00:00");
        assert_eq!(parse_v1_time("2026-01-05 09:00:00"), Some(1_767_603_600_000));
        assert_eq!(parse_v1_time("2026-01-05T09:00:00Z"), None);
    }
}
