//! Close's event log (`GET /api/v1/event/`, `crm-providers.md` §5.3): one event per create, update
//! and delete, newest first, cursor-paginated, kept for 30 days of logical time.
//!
//! Events are keyed by `(date_updated, seq)`, so listing newest-first is a reverse range scan and a
//! cursor is simply the key of the last event returned. Rapid `updated` events on one object are
//! consolidated: an update within `consolidation_ms` of the object's previous `updated` event (by
//! that event's `date_created`) merges into it (changed fields united, the oldest previous values
//! kept, the newest data) and moves it to the top by bumping its `date_updated`, as Close documents
//! ("event consolidation of multiple recent events to the same object may occur").
//!
//! Invariant: `latest` maps an object to the key of its newest event, and every key in it is in
//! `events`; events older than the retention window are pruned before every read.

use super::store::naive_time;
use crate::clock::Millis;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// Days of logical time an event stays readable.
pub const RETENTION_DAYS: i64 = 30;
/// Most events one page returns (Close: "capped at and defaulting to 50").
pub const PAGE_MAX: usize = 50;

/// What a write reports to the log.
#[derive(Clone, Debug)]
pub struct EventWrite {
    /// Organization id.
    pub org_id: String,
    /// `lead`, `contact`, `opportunity`, `task.lead`, `activity.call`, `activity.note`.
    pub object_type: &'static str,
    /// The object's id.
    pub object_id: String,
    /// Its lead (the lead itself for leads).
    pub lead_id: Option<String>,
    /// `created`, `updated` or `deleted`.
    pub action: &'static str,
    /// Logical time.
    pub now: Millis,
    /// Acting user.
    pub user_id: String,
    /// Request id.
    pub request_id: String,
    /// Method and path of the request, when it came through the API.
    pub meta: Option<(String, String)>,
    /// Changed fields (updates).
    pub changed_fields: Vec<String>,
    /// Previous values of changed fields (updates), or the whole record (deletes).
    pub previous_data: Map<String, Value>,
    /// The record after the change (empty for deletes).
    pub data: Map<String, Value>,
}

/// One stored event.
#[derive(Clone, Debug)]
pub struct Event {
    /// `ev_…`.
    pub id: String,
    /// Creation time.
    pub date_created: Millis,
    /// Last consolidation time (the sort key).
    pub date_updated: Millis,
    /// The write.
    pub write: EventWrite,
}

impl Event {
    /// The event as the API returns it.
    pub fn to_json(&self) -> Value {
        let w = &self.write;
        let meta = match &w.meta {
            Some((m, p)) => json!({"request_method": m, "request_path": p}),
            None => json!({}),
        };
        json!({
            "id": self.id,
            "date_created": naive_time(self.date_created),
            "date_updated": naive_time(self.date_updated),
            "action": w.action,
            "object_type": w.object_type,
            "object_id": w.object_id,
            "lead_id": w.lead_id,
            "organization_id": w.org_id,
            "user_id": w.user_id,
            "request_id": w.request_id,
            "changed_fields": w.changed_fields,
            "previous_data": w.previous_data,
            "data": w.data,
            "meta": meta,
        })
    }
}

/// Filters of one listing (all optional; they combine with AND).
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// `object_type`.
    pub object_type: Option<String>,
    /// `object_id`.
    pub object_id: Option<String>,
    /// `action`.
    pub action: Option<String>,
    /// `lead_id`.
    pub lead_id: Option<String>,
    /// `user_id`.
    pub user_id: Option<String>,
    /// `request_id`.
    pub request_id: Option<String>,
    /// `date_updated` lower bound (inclusive flag).
    pub after: Option<(Millis, bool)>,
    /// `date_updated` upper bound (inclusive flag).
    pub before: Option<(Millis, bool)>,
}

impl EventFilter {
    fn matches(&self, e: &Event) -> bool {
        let w = &e.write;
        self.object_type.as_deref().is_none_or(|t| t == w.object_type)
            && self.object_id.as_deref().is_none_or(|t| t == w.object_id)
            && self.action.as_deref().is_none_or(|t| t == w.action)
            && self.lead_id.as_deref().is_none_or(|t| Some(t) == w.lead_id.as_deref())
            && self.user_id.as_deref().is_none_or(|t| t == w.user_id)
            && self.request_id.as_deref().is_none_or(|t| t == w.request_id)
            && self.after.is_none_or(|(t, inc)| if inc { e.date_updated >= t } else { e.date_updated > t })
            && self.before.is_none_or(|(t, inc)| if inc { e.date_updated <= t } else { e.date_updated < t })
    }

    /// Whether the combination of filters (ignoring the date bounds) is one Close supports.
    pub fn supported(&self) -> bool {
        let set = (
            self.object_type.is_some(),
            self.object_id.is_some(),
            self.action.is_some(),
            self.lead_id.is_some(),
            self.user_id.is_some(),
            self.request_id.is_some(),
        );
        // (object_type, object_id, action, lead_id, user_id, request_id)
        matches!(
            set,
            (false, false, false, false, false, false)
                | (true, true, false, false, false, false)
                | (true, false, true, false, false, false)
                | (false, true, true, false, false, false)
                | (true, false, false, true, false, false)
                | (true, false, true, true, false, false)
                | (true, false, false, true, true, false)
                | (true, false, true, true, true, false)
                | (false, false, false, true, true, false)
                | (false, true, false, false, true, false)
                | (false, true, true, false, true, false)
                | (true, false, false, false, true, false)
                | (true, false, true, false, true, false)
                | (false, false, false, true, false, false)
                | (false, false, false, false, true, false)
                | (false, false, false, false, false, true)
        )
    }
}

/// A page of events.
#[derive(Debug)]
pub struct EventPage {
    /// Events, newest first.
    pub data: Vec<Value>,
    /// Key of the last event when older ones match.
    pub next: Option<(Millis, u64)>,
    /// Key of the first event when newer ones match.
    pub previous: Option<(Millis, u64)>,
}

/// One organization's event log.
#[derive(Clone, Debug)]
pub struct EventLog {
    events: BTreeMap<(Millis, u64), Event>,
    latest: HashMap<String, (Millis, u64)>,
    next_seq: u64,
    /// Window in which updates of one object merge into one event (0 = never).
    pub consolidation_ms: Millis,
    /// How long events stay readable.
    pub retention_ms: Millis,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            events: BTreeMap::new(),
            latest: HashMap::new(),
            next_seq: 0,
            consolidation_ms: 1_000,
            retention_ms: RETENTION_DAYS * 86_400_000,
        }
    }
}

fn event_id(org: &str, seq: u64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{org}/{seq}").as_bytes());
    let alphabet = crate::seed::ALNUM;
    let s: String = digest.iter().take(22).map(|b| alphabet[*b as usize % alphabet.len()] as char).collect();
    format!("ev_{s}")
}

impl EventLog {
    /// Records a write (consolidating rapid updates).
    pub fn write(&mut self, w: EventWrite) {
        let now = w.now;
        if w.action == "updated"
            && self.consolidation_ms > 0
            && let Some(key) = self.latest.get(&w.object_id).copied()
            && let Some(prev) = self.events.get(&key)
            && prev.write.action == "updated"
            && now - prev.date_created <= self.consolidation_ms
            && let Some(mut ev) = self.events.remove(&key)
        {
            for f in w.changed_fields {
                if !ev.write.changed_fields.contains(&f) {
                    if let Some(v) = w.previous_data.get(&f) {
                        ev.write.previous_data.insert(f.clone(), v.clone());
                    }
                    ev.write.changed_fields.push(f);
                }
            }
            ev.write.data = w.data;
            ev.write.request_id = w.request_id;
            ev.date_updated = now.max(ev.date_updated);
            let new_key = (ev.date_updated, key.1);
            self.latest.insert(ev.write.object_id.clone(), new_key);
            self.events.insert(new_key, ev);
            return;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        let key = (now, seq);
        self.latest.insert(w.object_id.clone(), key);
        self.events.insert(
            key,
            Event { id: event_id(&w.org_id, seq), date_created: now, date_updated: now, write: w },
        );
    }

    /// Drops events older than the retention window.
    pub fn prune(&mut self, now: Millis) {
        let cutoff = now - self.retention_ms;
        while let Some((key, _)) = self.events.first_key_value() {
            if key.0 >= cutoff {
                break;
            }
            let key = *key;
            if let Some(e) = self.events.remove(&key)
                && self.latest.get(&e.write.object_id) == Some(&key)
            {
                self.latest.remove(&e.write.object_id);
            }
        }
    }

    /// Events matching `f`, newest first, strictly older than `cursor` when given.
    pub fn list(&self, f: &EventFilter, cursor: Option<(Millis, u64)>, limit: usize) -> EventPage {
        let upper = match cursor {
            Some(c) => std::ops::Bound::Excluded(c),
            None => std::ops::Bound::Unbounded,
        };
        let mut iter =
            self.events.range((std::ops::Bound::Unbounded, upper)).rev().filter(|(_, e)| f.matches(e));
        let mut data = Vec::with_capacity(limit);
        let mut first: Option<(Millis, u64)> = None;
        let mut last: Option<(Millis, u64)> = None;
        for (k, e) in iter.by_ref().take(limit) {
            first.get_or_insert(*k);
            last = Some(*k);
            data.push(e.to_json());
        }
        let more = iter.next().is_some();
        let newer = first.is_some_and(|k| {
            self.events
                .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))
                .any(|(_, e)| f.matches(e))
        });
        EventPage { data, next: if more { last } else { None }, previous: if newer { first } else { None } }
    }

    /// One event by id.
    pub fn by_id(&self, id: &str) -> Option<Value> {
        self.events.values().find(|e| e.id == id).map(Event::to_json)
    }

    /// Number of stored events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Encodes an event key as an opaque cursor.
pub fn encode_cursor(key: (Millis, u64)) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("ev:{}:{}", key.0, key.1))
}

/// Decodes a cursor made by [`encode_cursor`].
pub fn decode_cursor(s: &str) -> Option<(Millis, u64)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.strip_prefix("ev:")?.split(':');
    let t = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((t, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, action: &'static str, now: Millis) -> EventWrite {
        EventWrite {
            org_id: "orga_1".into(),
            object_type: "contact",
            object_id: id.into(),
            lead_id: Some("lead_1".into()),
            action,
            now,
            user_id: "user_1".into(),
            request_id: "req_1".into(),
            meta: None,
            changed_fields: vec!["title".into()],
            previous_data: Map::new(),
            data: Map::new(),
        }
    }

    #[test]
    fn newest_first_with_cursors_and_consolidation() {
        let mut log = EventLog::default();
        log.write(w("a", "created", 1_000));
        log.write(w("a", "updated", 2_000));
        log.write(w("a", "updated", 2_500)); // consolidated into the previous update
        log.write(w("b", "deleted", 3_000));
        assert_eq!(log.len(), 3);
        let all = log.list(&EventFilter::default(), None, 2);
        assert_eq!(all.data.len(), 2);
        assert_eq!(all.data[0]["object_id"], json!("b"));
        assert_eq!(all.data[1]["date_updated"], json!("1970-01-01T00:00:02.500000"));
        let rest = log.list(&EventFilter::default(), all.next, 2);
        assert_eq!(rest.data.len(), 1);
        assert!(rest.next.is_none());
        assert!(rest.previous.is_some());
        let cursor = encode_cursor((2_500, 2));
        assert_eq!(decode_cursor(&cursor), Some((2_500, 2)));
    }

    #[test]
    fn retention_prunes_old_events_and_combinations_are_checked() {
        let mut log = EventLog::default();
        log.write(w("a", "created", 0));
        log.write(w("b", "created", RETENTION_DAYS * 86_400_000));
        log.prune(RETENTION_DAYS * 86_400_000 + 1);
        assert_eq!(log.len(), 1);
        let ok = EventFilter {
            object_type: Some("lead".into()),
            action: Some("deleted".into()),
            ..Default::default()
        };
        assert!(ok.supported());
        let bad = EventFilter { action: Some("deleted".into()), ..Default::default() };
        assert!(!bad.supported());
    }
}
