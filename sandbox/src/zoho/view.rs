//! How records look on the wire: field selection, typed values, lookups as `{"name","id"}`, users as
//! `{"name","id","email"}`, date-times as ISO 8601 with the org's UTC offset at second precision
//! (`2025-01-02T10:11:12+05:30`).
//!
//! Invariant: rendering is a pure function of the stored record, the org's data (for lookup names)
//! and its time zone; it never mutates anything.

use super::schema::{self, FieldType, FieldValue, Module};
use super::store::{AccountData, Record};
use crate::clock::{Millis, to_datetime};
use chrono_tz::Tz;
use serde_json::{Map, Value, json};

/// Formats epoch ms as Zoho does: `YYYY-MM-DDTHH:MM:SS±hh:mm` in `tz`.
pub fn format_time(ms: Millis, tz: Tz) -> String {
    to_datetime(ms).with_timezone(&tz).format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Which fields a response shows.
#[derive(Clone, Debug)]
pub enum Selection {
    /// Every field (get by id, search without `fields`).
    All,
    /// The named fields plus `id`.
    Fields(Vec<String>),
}

/// Renders one user reference.
pub fn user_json(d: &AccountData, id: u64) -> Value {
    match d.user(id) {
        Some(u) => json!({"name": u.name, "id": u.id.to_string(), "email": u.email}),
        None => json!({"name": null, "id": id.to_string()}),
    }
}

fn lookup_json(d: &AccountData, m: Module, id: u64) -> Value {
    json!({"name": d.name_of(m, id), "id": id.to_string()})
}

/// One field of a record as JSON (`null` when unset).
pub fn field_json(d: &AccountData, tz: Tz, m: Module, rec: &Record, name: &str) -> Value {
    match name {
        "id" => return json!(rec.id.to_string()),
        "Created_Time" => return json!(format_time(rec.created_at, tz)),
        "Modified_Time" => return json!(format_time(rec.modified_at, tz)),
        "Created_By" => return user_json(d, rec.created_by),
        "Modified_By" => return user_json(d, rec.modified_by),
        "Full_Name" if m == Module::Contacts => return json!(rec.full_name()),
        "Call_Duration_in_seconds" if m == Module::Calls => {
            return json!(rec.text("Call_Duration").and_then(schema::parse_duration));
        }
        "$se_module" if m == Module::Notes => {
            return match rec.fields.get("Parent_Id") {
                Some(FieldValue::Parent(pm, _)) => json!(pm.api_name()),
                _ => Value::Null,
            };
        }
        _ => {}
    }
    let Some(v) = rec.fields.get(name) else { return Value::Null };
    let ty = schema::field(m, name).map(|d| d.ty);
    match (ty, v) {
        (Some(FieldType::Owner), FieldValue::Ref(id)) => user_json(d, *id),
        (Some(FieldType::Lookup(target)), FieldValue::Ref(id)) => lookup_json(d, target, *id),
        (Some(FieldType::WhatLookup), FieldValue::Ref(id)) => {
            match rec.text("$se_module").and_then(Module::parse) {
                Some(target) => lookup_json(d, target, *id),
                None => json!({"name": null, "id": id.to_string()}),
            }
        }
        (_, FieldValue::Parent(pm, id)) => json!({
            "module": {"api_name": pm.api_name(), "id": d.module_id(*pm).to_string()},
            "name": d.name_of(*pm, *id),
            "id": id.to_string(),
        }),
        (_, FieldValue::Text(s)) => json!(s),
        (_, FieldValue::Int(n)) => json!(n),
        (_, FieldValue::Num(n)) => json!(n),
        (_, FieldValue::Bool(b)) => json!(b),
        (_, FieldValue::Time(t)) => json!(format_time(*t, tz)),
        (_, FieldValue::Ref(id)) => json!(id.to_string()),
    }
}

/// Every field name a full record shows, in a stable order.
pub fn all_field_names(m: Module) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = vec!["id"];
    v.extend(schema::fields(m).iter().map(|d| d.api_name));
    v.extend(schema::computed_fields(m));
    v.extend(["Created_Time", "Modified_Time", "Created_By", "Modified_By"]);
    v
}

/// Renders a record with the selected fields.
pub fn render(d: &AccountData, tz: Tz, m: Module, rec: &Record, sel: &Selection) -> Value {
    let mut out = Map::new();
    match sel {
        Selection::All => {
            for name in all_field_names(m) {
                out.insert(name.to_owned(), field_json(d, tz, m, rec, name));
            }
        }
        Selection::Fields(names) => {
            out.insert("id".to_owned(), json!(rec.id.to_string()));
            for name in names {
                out.insert(name.clone(), field_json(d, tz, m, rec, name));
            }
        }
    }
    Value::Object(out)
}

/// The `details` of a successful write entry.
pub fn write_details(d: &AccountData, tz: Tz, rec: &Record) -> Value {
    let brief = |id: u64| match d.user(id) {
        Some(u) => json!({"name": u.name, "id": u.id.to_string()}),
        None => json!({"name": null, "id": id.to_string()}),
    };
    json!({
        "Modified_Time": format_time(rec.modified_at, tz),
        "Modified_By": brief(rec.modified_by),
        "Created_Time": format_time(rec.created_at, tz),
        "id": rec.id.to_string(),
        "Created_By": brief(rec.created_by),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_the_org_offset_at_second_precision() {
        let tz: Tz = "Asia/Kolkata".parse().expect("tz");
        assert_eq!(format_time(1_735_787_045_000, tz), "2025-01-02T08:34:05+05:30");
        let utc: Tz = "UTC".parse().expect("tz");
        assert_eq!(format_time(1_735_787_045_000, utc), "2025-01-02T03:04:05+00:00");
    }
}
