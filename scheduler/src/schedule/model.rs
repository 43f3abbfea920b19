//! What a schedule is, parsed once at the edge: the API and `crmctl` turn untrusted input into
//! [`NewSchedule`] / [`SchedulePatch`] here, and every rejection is a [`FieldError`] naming the
//! field. Nothing past this module re-validates a cron expression, a time zone or a policy.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use crm_jobs::providers::ObjectKind;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::timing::Timing;

/// The largest `backfill_limit` accepted (the table's check constraint says the same).
pub const MAX_BACKFILL_LIMIT: u32 = 1_000;
/// Default `backfill_limit` when a schedule does not say.
pub const DEFAULT_BACKFILL_LIMIT: u32 = 10;
/// The largest jitter accepted: one hour (the table's check constraint says the same).
pub const MAX_JITTER_MS: u32 = 3_600_000;

/// The OpenAPI schema of a non-empty list of object names (`objects` in request bodies).
pub(crate) fn objects_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(crate::api::string_enum("An object.", ObjectKind::ALL.iter().map(|o| o.as_str())))
        .min_items(Some(1))
        .unique_items(true)
        .description(Some("Objects, at least one, each at most once."))
        .build()
}

/// [`objects_schema`], or null for "not given".
pub(crate) fn optional_objects_schema() -> utoipa::openapi::schema::Array {
    let mut schema = objects_schema();
    schema.schema_type = utoipa::openapi::schema::SchemaType::from_iter([
        utoipa::openapi::schema::Type::Array,
        utoipa::openapi::schema::Type::Null,
    ]);
    schema
}

/// An input rejected, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as the caller named it (`cron`, `objects[1]`, `time_zone`, …).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A rejection of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// What happens to a scheduled tick while a sync of the same (connection, object) is queued or
/// running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Drop the tick (the queue's unique key refuses it).
    #[default]
    Skip,
    /// Drop the tick but ask the running sync to run once more when it finishes
    /// (`sync_state.rerun_requested`).
    BufferOne,
}

impl OverlapPolicy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::BufferOne => "buffer_one",
        }
    }
}

impl FromStr for OverlapPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Self::Skip),
            "buffer_one" => Ok(Self::BufferOne),
            other => Err(format!("{other:?} is not an overlap policy (skip or buffer_one)")),
        }
    }
}

/// What happens to ticks that passed while no scheduler could fire them (no leader, or a
/// leader stalled on a database or Redis outage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// Drop them.
    Skip,
    /// Fire the most recent one.
    #[default]
    RunOnce,
    /// Fire the `backfill_limit` most recent ones.
    Backfill,
}

impl MissedPolicy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::RunOnce => "run_once",
            Self::Backfill => "backfill",
        }
    }

    /// How many missed ticks to fire under this policy.
    pub fn keep(self, backfill_limit: u32) -> usize {
        match self {
            Self::Skip => 0,
            Self::RunOnce => 1,
            Self::Backfill => backfill_limit as usize,
        }
    }
}

impl FromStr for MissedPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Self::Skip),
            "run_once" => Ok(Self::RunOnce),
            "backfill" => Ok(Self::Backfill),
            other => Err(format!("{other:?} is not a missed-tick policy (skip, run_once or backfill)")),
        }
    }
}

/// A stored schedule, as the API and `crmctl` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    /// Id.
    pub id: Uuid,
    /// The connection it syncs.
    pub connection_id: Uuid,
    /// The objects each tick syncs (`contact`, `company`, `deal`).
    #[schema(value_type = Vec<String>)]
    pub objects: Vec<ObjectKind>,
    /// Cron expression (5 fields, or 6 with seconds first).
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub time_zone: String,
    /// Whether it fires.
    pub enabled: bool,
    /// Overlap policy.
    pub overlap_policy: OverlapPolicy,
    /// Missed-tick policy.
    pub missed_policy: MissedPolicy,
    /// Ticks fired at most under `backfill`.
    pub backfill_limit: u32,
    /// Fixed delay of this schedule's ticks within `[0, jitter_ms)`, to spread load.
    pub jitter_ms: u32,
    /// Every tick up to this instant is handled.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// The next tick (cron instant, before jitter) after now and `last_tick_at`, when enabled.
    pub next_tick_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Definition last changed.
    pub updated_at: DateTime<Utc>,
}

/// A schedule to create, validated. Its OpenAPI schema is the request body of
/// `POST /v1/schedules` (same field names; all but `connection_id` and `cron` have defaults).
#[derive(Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct NewSchedule {
    /// The connection (its existence is checked by the store).
    pub connection_id: Uuid,
    /// Objects, at least one, no repeats (default: contact, company, deal).
    #[schema(schema_with = objects_schema, required = false)]
    pub objects: Vec<ObjectKind>,
    /// A cron expression that parses and fires: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// An IANA time zone (default UTC).
    #[schema(required = false)]
    pub time_zone: String,
    /// Enabled (default true).
    #[schema(required = false)]
    pub enabled: bool,
    /// Overlap policy (default skip).
    #[schema(required = false)]
    pub overlap_policy: OverlapPolicy,
    /// Missed-tick policy (default run_once).
    #[schema(required = false)]
    pub missed_policy: MissedPolicy,
    /// `1..=MAX_BACKFILL_LIMIT` (default 10).
    #[schema(required = false, minimum = 1, maximum = 1000)]
    pub backfill_limit: u32,
    /// `0..=MAX_JITTER_MS` (default 0).
    #[schema(required = false, maximum = 3_600_000)]
    pub jitter_ms: u32,
}

/// Changes to a schedule, validated; `None` leaves a field as it is. Its OpenAPI schema is the
/// request body of `PATCH /v1/schedules/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, utoipa::ToSchema)]
pub struct SchedulePatch {
    /// New objects.
    #[schema(schema_with = optional_objects_schema)]
    pub objects: Option<Vec<ObjectKind>>,
    /// New cron expression.
    pub cron: Option<String>,
    /// New time zone.
    pub time_zone: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New overlap policy.
    pub overlap_policy: Option<OverlapPolicy>,
    /// New missed-tick policy.
    pub missed_policy: Option<MissedPolicy>,
    /// New backfill limit.
    #[schema(minimum = 1, maximum = 1000)]
    pub backfill_limit: Option<u32>,
    /// New jitter.
    #[schema(maximum = 3_600_000)]
    pub jitter_ms: Option<u32>,
}

impl SchedulePatch {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Checks a cron expression: 5 fields (minute granularity) or 6 (seconds first), or an
/// `@hourly`-style nickname, that fires at least once in the time zone `tz`.
pub fn check_cron(cron: &str, tz: &str) -> Result<(), FieldError> {
    let tz = parse_time_zone(tz).unwrap_or(chrono_tz::UTC);
    let timing = Timing::parse(cron, tz, 0, Uuid::nil()).map_err(|m| FieldError::new("cron", m))?;
    if timing.next_after(Utc::now()).is_none() {
        return Err(FieldError::new("cron", format!("{cron:?} never fires")));
    }
    Ok(())
}

/// Parses an IANA time zone name (`Europe/Paris`, `UTC`).
pub fn parse_time_zone(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse::<chrono_tz::Tz>().map_err(|_| format!("{s:?} is not an IANA time zone (e.g. Europe/Paris, UTC)"))
}

/// Parses object names, rejecting repeats and empty lists.
pub fn parse_objects<S: AsRef<str>>(field: &str, names: &[S]) -> Result<Vec<ObjectKind>, FieldError> {
    if names.is_empty() {
        return Err(FieldError::new(field, "must name at least one of contact, company, deal"));
    }
    let mut out = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let o: ObjectKind =
            n.as_ref().parse().map_err(|e: String| FieldError::new(format!("{field}[{i}]"), e))?;
        if out.contains(&o) {
            return Err(FieldError::new(format!("{field}[{i}]"), format!("{o} is listed twice")));
        }
        out.push(o);
    }
    Ok(out)
}

fn check_backfill_limit(n: u32) -> Result<u32, FieldError> {
    if (1..=MAX_BACKFILL_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(FieldError::new("backfill_limit", format!("must be between 1 and {MAX_BACKFILL_LIMIT}")))
    }
}

fn check_jitter(n: u32) -> Result<u32, FieldError> {
    if n <= MAX_JITTER_MS {
        Ok(n)
    } else {
        Err(FieldError::new("jitter_ms", format!("must be between 0 and {MAX_JITTER_MS} (one hour)")))
    }
}

/// Field readers over a JSON object, each naming its field on failure.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn of(body: &'a Value, allowed: &[&str]) -> Result<Self, FieldError> {
        let map = body.as_object().ok_or_else(|| FieldError::new("body", "must be a JSON object"))?;
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(FieldError::new(
                k.clone(),
                format!("unknown field (expected one of {})", allowed.join(", ")),
            ));
        }
        Ok(Self(map))
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<String>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(_) => Err(FieldError::new(name, "must be a string")),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(FieldError::new(name, "must be true or false")),
        }
    }

    fn u32(&self, name: &str) -> Result<Option<u32>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| FieldError::new(name, "must be a non-negative integer")),
        }
    }

    fn uuid(&self, name: &str) -> Result<Option<Uuid>, FieldError> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => Uuid::parse_str(&s)
                .map(Some)
                .map_err(|_| FieldError::new(name, format!("{s:?} is not a UUID"))),
        }
    }

    fn objects(&self, name: &str) -> Result<Option<Vec<ObjectKind>>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let mut names = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    names.push(
                        v.as_str()
                            .ok_or_else(|| FieldError::new(format!("{name}[{i}]"), "must be a string"))?,
                    );
                }
                parse_objects(name, &names).map(Some)
            }
            Some(_) => Err(FieldError::new(name, "must be an array of contact, company, deal")),
        }
    }

    fn parsed<T: FromStr<Err = String>>(&self, name: &str) -> Result<Option<T>, FieldError> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|e| FieldError::new(name, e)),
        }
    }
}

const CREATE_FIELDS: &[&str] = &[
    "connection_id",
    "objects",
    "cron",
    "time_zone",
    "enabled",
    "overlap_policy",
    "missed_policy",
    "backfill_limit",
    "jitter_ms",
];

impl NewSchedule {
    /// Validates a JSON body (`POST /v1/schedules`). `objects` defaults to all three,
    /// `time_zone` to UTC, `enabled` to true, the policies to `skip` / `run_once`.
    pub fn from_json(body: &Value) -> Result<Self, FieldError> {
        let f = Fields::of(body, CREATE_FIELDS)?;
        let connection_id =
            f.uuid("connection_id")?.ok_or_else(|| FieldError::new("connection_id", "is required"))?;
        let objects = f.objects("objects")?.unwrap_or_else(|| ObjectKind::ALL.to_vec());
        let cron = f.string("cron")?.ok_or_else(|| FieldError::new("cron", "is required"))?;
        let time_zone = f.string("time_zone")?.unwrap_or_else(|| "UTC".to_owned());
        Self {
            connection_id,
            objects,
            cron,
            time_zone,
            enabled: f.bool("enabled")?.unwrap_or(true),
            overlap_policy: f.parsed("overlap_policy")?.unwrap_or_default(),
            missed_policy: f.parsed("missed_policy")?.unwrap_or_default(),
            backfill_limit: f.u32("backfill_limit")?.unwrap_or(DEFAULT_BACKFILL_LIMIT),
            jitter_ms: f.u32("jitter_ms")?.unwrap_or(0),
        }
        .validated()
    }

    /// Checks every field (also used by `crmctl schedules add`).
    pub fn validated(self) -> Result<Self, FieldError> {
        parse_time_zone(&self.time_zone).map_err(|m| FieldError::new("time_zone", m))?;
        check_cron(&self.cron, &self.time_zone)?;
        parse_objects("objects", &self.objects.iter().map(|o| o.as_str()).collect::<Vec<_>>())?;
        check_backfill_limit(self.backfill_limit)?;
        check_jitter(self.jitter_ms)?;
        Ok(self)
    }
}

impl SchedulePatch {
    /// Validates a JSON body (`PATCH /v1/schedules/{id}`). `connection_id` cannot change.
    pub fn from_json(body: &Value) -> Result<Self, FieldError> {
        let mut allowed = CREATE_FIELDS.to_vec();
        allowed.retain(|f| *f != "connection_id");
        if body.get("connection_id").is_some() {
            return Err(FieldError::new(
                "connection_id",
                "cannot be changed; create a schedule for the other connection",
            ));
        }
        let f = Fields::of(body, &allowed)?;
        let patch = Self {
            objects: f.objects("objects")?,
            cron: f.string("cron")?,
            time_zone: f.string("time_zone")?,
            enabled: f.bool("enabled")?,
            overlap_policy: f.parsed("overlap_policy")?,
            missed_policy: f.parsed("missed_policy")?,
            backfill_limit: f.u32("backfill_limit")?,
            jitter_ms: f.u32("jitter_ms")?,
        };
        if patch.is_empty() {
            return Err(FieldError::new("body", "changes nothing (name at least one field)"));
        }
        Ok(patch)
    }

    /// Applies the patch to `current`, checking the result as a whole (a new cron is read in
    /// the new or the current time zone).
    pub fn apply(&self, current: &Schedule) -> Result<NewSchedule, FieldError> {
        if let Some(tz) = &self.time_zone {
            parse_time_zone(tz).map_err(|m| FieldError::new("time_zone", m))?;
        }
        NewSchedule {
            connection_id: current.connection_id,
            objects: self.objects.clone().unwrap_or_else(|| current.objects.clone()),
            cron: self.cron.clone().unwrap_or_else(|| current.cron.clone()),
            time_zone: self.time_zone.clone().unwrap_or_else(|| current.time_zone.clone()),
            enabled: self.enabled.unwrap_or(current.enabled),
            overlap_policy: self.overlap_policy.unwrap_or(current.overlap_policy),
            missed_policy: self.missed_policy.unwrap_or(current.missed_policy),
            backfill_limit: self.backfill_limit.unwrap_or(current.backfill_limit),
            jitter_ms: self.jitter_ms.unwrap_or(current.jitter_ms),
        }
        .validated()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field_of(body: Value) -> String {
        NewSchedule::from_json(&body).expect_err("rejected").field
    }

    #[test]
    fn creation_defaults() {
        let s = NewSchedule::from_json(&json!({
            "connection_id": "00000000-0000-0000-0000-000000000001", "cron": "*/5 * * * *"
        }))
        .expect("valid");
        assert_eq!(s.objects, ObjectKind::ALL.to_vec());
        assert_eq!(s.time_zone, "UTC");
        assert!(s.enabled);
        assert_eq!((s.overlap_policy, s.missed_policy), (OverlapPolicy::Skip, MissedPolicy::RunOnce));
        assert_eq!((s.backfill_limit, s.jitter_ms), (DEFAULT_BACKFILL_LIMIT, 0));
    }

    #[test]
    fn every_rejection_names_its_field() {
        let c = "00000000-0000-0000-0000-000000000001";
        assert_eq!(field_of(json!({"cron": "* * * * *"})), "connection_id");
        assert_eq!(field_of(json!({"connection_id": "nope", "cron": "* * * * *"})), "connection_id");
        assert_eq!(field_of(json!({"connection_id": c})), "cron");
        assert_eq!(field_of(json!({"connection_id": c, "cron": "61 * * * *"})), "cron");
        assert_eq!(field_of(json!({"connection_id": c, "cron": "* * * *"})), "cron");
        assert_eq!(field_of(json!({"connection_id": c, "cron": "0 0 0 * * * 2030"})), "cron");
        assert_eq!(field_of(json!({"connection_id": c, "cron": "0 0 30 2 *"})), "cron");
        assert_eq!(
            field_of(json!({"connection_id": c, "cron": "* * * * *", "time_zone": "Mars/Base"})),
            "time_zone"
        );
        assert_eq!(field_of(json!({"connection_id": c, "cron": "* * * * *", "objects": []})), "objects");
        assert_eq!(
            field_of(json!({"connection_id": c, "cron": "* * * * *", "objects": ["deal", "ticket"]})),
            "objects[1]"
        );
        assert_eq!(
            field_of(json!({"connection_id": c, "cron": "* * * * *", "objects": ["deal", "deal"]})),
            "objects[1]"
        );
        assert_eq!(
            field_of(json!({"connection_id": c, "cron": "* * * * *", "overlap_policy": "queue"})),
            "overlap_policy"
        );
        assert_eq!(
            field_of(json!({"connection_id": c, "cron": "* * * * *", "missed_policy": "all"})),
            "missed_policy"
        );
        assert_eq!(
            field_of(json!({"connection_id": c, "cron": "* * * * *", "backfill_limit": 0})),
            "backfill_limit"
        );
        assert_eq!(field_of(json!({"connection_id": c, "cron": "* * * * *", "jitter_ms": -1})), "jitter_ms");
        assert_eq!(
            field_of(json!({"connection_id": c, "cron": "* * * * *", "jitter_ms": 3_600_001})),
            "jitter_ms"
        );
        assert_eq!(field_of(json!({"connection_id": c, "cron": "* * * * *", "enabled": "yes"})), "enabled");
        assert_eq!(field_of(json!({"connection_id": c, "cron": "* * * * *", "colour": "red"})), "colour");
        assert_eq!(field_of(json!(["not", "an", "object"])), "body");
    }

    #[test]
    fn patches_are_checked_as_a_whole() {
        assert_eq!(SchedulePatch::from_json(&json!({})).expect_err("empty").field, "body");
        assert_eq!(
            SchedulePatch::from_json(&json!({"connection_id": "00000000-0000-0000-0000-000000000001"}))
                .expect_err("immutable")
                .field,
            "connection_id"
        );
        let p =
            SchedulePatch::from_json(&json!({"enabled": false, "cron": "*/10 * * * * *"})).expect("valid");
        assert_eq!(p.enabled, Some(false));
        assert_eq!(p.cron.as_deref(), Some("*/10 * * * * *"));
    }
}
