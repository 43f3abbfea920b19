//! Tick arithmetic: when a schedule's ticks fall, which of them are due, which are missed and
//! which a missed-tick policy keeps. Pure functions over instants, unit-tested without a
//! clock; [croner](https://docs.rs/croner/3) does the calendar work.
//!
//! Definitions the rest of the scheduler relies on:
//! * a **tick** is an instant at which the cron expression matches the wall clock of the
//!   schedule's time zone; it names the job (`scheduled_sync_job` derives the job id and the
//!   dedupe stamp from it), so it never depends on who computes it or when;
//! * a tick **fires** at `tick + jitter`, where the jitter is fixed per schedule (derived
//!   from its id, below `jitter_ms`): it spreads schedules that share an expression without
//!   ever reordering one schedule's ticks;
//! * a tick is **due** once it fires; due ticks are handled in order, and a schedule's
//!   `last_tick_at` says up to which tick all are handled;
//! * the latest due tick is **on time** when the engine gets to it within the late
//!   tolerance; every other due tick is **missed**, and the missed-tick policy keeps the most
//!   recent `keep` of them (skip 0, run_once 1, backfill N).
//!
//! Daylight saving time follows croner (and Vixie cron): in a spring-forward gap a
//! fixed-time expression fires at the first instant after the gap and an interval expression
//! skips the missing wall-clock times; in a fall-back overlap a fixed-time expression fires
//! once (the first pass) and an interval expression fires in both passes. [`Timing::next_after`]
//! guards the instant order croner's wall-clock search can lose in an overlap.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Duration, LocalResult, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};
use uuid::Uuid;

/// Croner calls one search may make before it gives up on a pathological expression (a
/// fixed-time expression rejected in a DST overlap needs a handful).
const MAX_SEARCH_STEPS: usize = 64;
/// Ticks one missed-tick search enumerates at most; with the window doubling, a regular
/// expression needs about `2 × keep`, so this only bounds bursty ones.
const MAX_ENUMERATED_TICKS: u64 = 200_000;
/// Older missed ticks counted (for the `skipped` metric) beyond the kept ones; past this the
/// count is a lower bound, so a long outage of many schedules costs little to plan.
const MAX_EXTRA_COUNT: usize = 64;

/// Parses a cron expression: 5 fields (minute granularity), 6 (seconds first), or an
/// `@hourly`-style nickname. Seven fields (years) are refused.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "{expr:?} has {fields} fields; expected 5 (minute hour day month weekday) or 6 (second first)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("{expr:?} is not a cron expression: {e}"))
}

/// A schedule's timing: expression, time zone and jitter.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Arc<Cron>,
    tz: Tz,
    jitter: Duration,
    fixed: bool,
}

/// The ticks a policy fires at one moment, and how far the schedule is then handled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Ticks to fire now, oldest first: the kept missed ticks, then the on-time one.
    pub fire: Vec<DateTime<Utc>>,
    /// The latest due tick: everything up to it is handled once `fire` is pushed. `None`
    /// when nothing is due.
    pub handled_through: Option<DateTime<Utc>>,
    /// Due ticks dropped by the missed-tick policy (a lower bound when the gap was too long
    /// to count: see [`Recent::exact`]).
    pub dropped: u64,
    /// Whether the latest due tick was on time.
    pub on_time: bool,
    /// The first tick after `handled_through` (or after the schedule's handled instant when
    /// nothing is due), `None` if it never fires again.
    pub next: Option<DateTime<Utc>>,
}

/// The most recent ticks of an interval.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recent {
    /// At most `k` most recent ticks, oldest first.
    pub ticks: Vec<DateTime<Utc>>,
    /// How many ticks the interval holds (at least this many when not `exact`).
    pub total: u64,
    /// Whether `total` is the exact count.
    pub exact: bool,
}

impl Timing {
    /// Parses an expression read in `tz`, with the jitter of schedule `id` below `jitter_ms`.
    pub fn parse(expr: &str, tz: Tz, jitter_ms: u32, id: Uuid) -> Result<Self, String> {
        Ok(Self::new(Arc::new(parse_cron(expr)?), tz, jitter_ms, id))
    }

    /// A timing over an already parsed expression (shared between schedules that use the
    /// same expression).
    pub fn new(cron: Arc<Cron>, tz: Tz, jitter_ms: u32, id: Uuid) -> Self {
        let fixed = cron.determine_job_type() == JobType::FixedTime;
        Self { cron, tz, jitter: Duration::milliseconds(jitter_of(id, jitter_ms) as i64), fixed }
    }

    /// The schedule's fixed delay of every tick.
    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// When `tick` fires.
    pub fn fire_at(&self, tick: DateTime<Utc>) -> DateTime<Utc> {
        tick + self.jitter
    }

    /// The first tick strictly after `after`, or `None` if the expression never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        let first = self.search(local.naive_local(), after)?;
        // Croner searches wall-clock time. If the clock falls back between `after` and the
        // answer, the repeated wall-clock times lie after `after` too (read in the later
        // offset) and an interval expression fires there: search them as well.
        let off_after = local.offset().fix().local_minus_utc();
        let off_first = first.with_timezone(&self.tz).offset().fix().local_minus_utc();
        if off_first < off_after && !self.fixed {
            let repeated = (after + Duration::seconds(off_first as i64)).naive_utc();
            if let Some(second) = self.search(repeated, after) {
                return Some(first.min(second));
            }
        }
        Some(first)
    }

    /// The earliest instant after `after` whose wall-clock time (searching from the
    /// wall-clock time `from`) matches.
    fn search(&self, from: chrono::NaiveDateTime, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Croner reads only the wall-clock time and the zone of its starting point, and keeps
        // its fraction of a second: start from the whole second (ticks are whole seconds).
        let from = from.with_nanosecond(0).unwrap_or(from);
        let mut cursor = match self.tz.from_local_datetime(&from) {
            LocalResult::Single(d) => d,
            LocalResult::Ambiguous(early, _) => early,
            // A wall-clock time in a gap: start from the instant just after the gap.
            LocalResult::None => (after + Duration::seconds(1)).with_timezone(&self.tz).with_nanosecond(0)?,
        };
        for _ in 0..MAX_SEARCH_STEPS {
            let found = self.cron.find_next_occurrence(&cursor, false).ok()?;
            let candidates = match self.tz.from_local_datetime(&found.naive_local()) {
                LocalResult::Ambiguous(early, late) if !self.fixed => [Some(early), Some(late)],
                LocalResult::Ambiguous(early, _) => [Some(early), None],
                // Single, or a fixed-time expression moved past a gap by croner.
                _ => [Some(found), None],
            };
            if let Some(t) =
                candidates.into_iter().flatten().map(|d| d.with_timezone(&Utc)).find(|t| *t > after)
            {
                return Some(t);
            }
            cursor = found;
        }
        None
    }

    /// The `k` most recent ticks in `(lo, hi]` (and how many there are). Searches a window
    /// ending at `hi` that doubles until it holds `k` ticks or reaches `lo`, so a schedule
    /// handled long ago costs about `k` steps, not one per tick since.
    pub fn recent(&self, lo: DateTime<Utc>, hi: DateTime<Utc>, k: usize) -> Recent {
        let mut width = Duration::seconds(1);
        loop {
            let start = if hi - lo <= width { lo } else { hi - width };
            let mut ring: VecDeque<DateTime<Utc>> = VecDeque::with_capacity(k + 1);
            let mut total = 0u64;
            let mut cursor = start;
            while let Some(t) = self.next_after(cursor).filter(|t| *t <= hi) {
                total += 1;
                ring.push_back(t);
                if ring.len() > k {
                    ring.pop_front();
                }
                cursor = t;
                if total >= MAX_ENUMERATED_TICKS {
                    break;
                }
            }
            if total >= k as u64 || start == lo {
                let mut exact = total < MAX_ENUMERATED_TICKS;
                // Count the older ticks too while that is cheap; beyond, `total` is a bound.
                if start > lo && exact {
                    let (mut cursor, mut extra) = (lo, 0usize);
                    exact = false;
                    while let Some(t) = self.next_after(cursor) {
                        if t > start {
                            exact = true;
                            break;
                        }
                        total += 1;
                        extra += 1;
                        cursor = t;
                        if extra >= MAX_EXTRA_COUNT {
                            break;
                        }
                    }
                }
                return Recent { ticks: ring.into(), total, exact };
            }
            width = width * 2;
        }
    }

    /// What to fire at `now` for a schedule handled through `handled`, keeping at most `keep`
    /// missed ticks, where the latest due tick is on time if `now` is within `tolerance` of
    /// its firing.
    pub fn plan(&self, handled: DateTime<Utc>, now: DateTime<Utc>, keep: usize, tolerance: Duration) -> Plan {
        self.plan_from(handled, self.next_after(handled), now, keep, tolerance)
    }

    /// As [`Timing::plan`], given `first`, the first tick after `handled` (the caller's timer
    /// knows it): the common case — exactly one tick due — then costs one search.
    pub fn plan_from(
        &self,
        handled: DateTime<Utc>,
        first: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        keep: usize,
        tolerance: Duration,
    ) -> Plan {
        let hi = now - self.jitter;
        let Some(first) = first.filter(|t| *t <= hi) else {
            return Plan { next: first, ..Plan::default() };
        };
        let second = self.next_after(first);
        let (recent, next) = match second {
            Some(s) if s <= hi => {
                let r = self.recent(handled, hi, keep + 1);
                let next = r.ticks.last().and_then(|l| self.next_after(*l));
                (r, next)
            }
            _ => (Recent { ticks: vec![first], total: 1, exact: true }, second),
        };
        let Some(&latest) = recent.ticks.last() else {
            return Plan::default();
        };
        let on_time = now - self.fire_at(latest) <= tolerance;
        let missed = if on_time { &recent.ticks[..recent.ticks.len() - 1] } else { &recent.ticks[..] };
        let kept = &missed[missed.len().saturating_sub(keep)..];
        let mut fire = kept.to_vec();
        if on_time {
            fire.push(latest);
        }
        Plan {
            dropped: recent.total.saturating_sub(fire.len() as u64),
            fire,
            handled_through: Some(latest),
            on_time,
            next,
        }
    }
}

/// A schedule's fixed jitter in ms: below `jitter_ms`, derived from its id so every replica
/// computes the same.
pub fn jitter_of(id: Uuid, jitter_ms: u32) -> u64 {
    if jitter_ms == 0 { 0 } else { (id.as_u128() % jitter_ms as u128) as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("rfc3339").with_timezone(&Utc)
    }

    fn timing(expr: &str, tz: &str) -> Timing {
        Timing::parse(expr, tz.parse().expect("tz"), 0, Uuid::nil()).expect("cron")
    }

    fn ticks(t: &Timing, from: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = utc(from);
        for _ in 0..n {
            cur = t.next_after(cur).expect("next");
            out.push(cur.to_rfc3339());
        }
        out
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            ticks(&timing("*/15 * * * *", "UTC"), "2025-01-01T10:07:00Z", 2),
            ["2025-01-01T10:15:00+00:00", "2025-01-01T10:30:00+00:00"]
        );
        assert_eq!(
            ticks(&timing("*/5 * * * * *", "UTC"), "2025-01-01T10:07:03Z", 3),
            ["2025-01-01T10:07:05+00:00", "2025-01-01T10:07:10+00:00", "2025-01-01T10:07:15+00:00"]
        );
        // Strictly after: a tick is not its own successor.
        assert_eq!(
            ticks(&timing("0 * * * *", "UTC"), "2025-01-01T10:00:00Z", 1),
            ["2025-01-01T11:00:00+00:00"]
        );
        assert_eq!(
            ticks(&timing("@hourly", "UTC"), "2025-01-01T10:00:00Z", 1),
            ["2025-01-01T11:00:00+00:00"]
        );
        for bad in ["* * * *", "0 0 0 * * * 2030", "61 * * * *", "* * * * * * * *", "", "every day"] {
            assert!(parse_cron(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn read_in_the_schedule_time_zone() {
        // 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
        let t = timing("0 9 * * *", "Europe/Paris");
        assert_eq!(ticks(&t, "2025-01-15T12:00:00Z", 1), ["2025-01-16T08:00:00+00:00"]);
        assert_eq!(ticks(&t, "2025-07-15T12:00:00Z", 1), ["2025-07-16T07:00:00+00:00"]);
        // Weekdays are the zone's: Monday 01:00 in Tokyo is Sunday 16:00 UTC.
        let t = timing("0 1 * * MON", "Asia/Tokyo");
        assert_eq!(ticks(&t, "2025-03-01T00:00:00Z", 1), ["2025-03-02T16:00:00+00:00"]);
    }

    #[test]
    fn spring_forward_gap() {
        // New York, 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        // A fixed-time 02:30 fires at the first instant after the gap, once.
        let t = timing("30 2 * * *", "America/New_York");
        assert_eq!(
            ticks(&t, "2025-03-08T12:00:00Z", 3),
            ["2025-03-09T07:00:00+00:00", "2025-03-10T06:30:00+00:00", "2025-03-11T06:30:00+00:00"]
        );
        // An interval expression skips the missing wall-clock hour.
        let t = timing("*/30 * * * *", "America/New_York");
        assert_eq!(
            ticks(&t, "2025-03-09T06:15:00Z", 3),
            ["2025-03-09T06:30:00+00:00", "2025-03-09T07:00:00+00:00", "2025-03-09T07:30:00+00:00"]
        );
    }

    #[test]
    fn fall_back_overlap() {
        // New York, 2025-11-02: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:xx happens
        // twice, at 05:xx UTC (EDT) and 06:xx UTC (EST).
        let t = timing("30 1 * * *", "America/New_York");
        assert_eq!(
            ticks(&t, "2025-11-01T12:00:00Z", 2),
            ["2025-11-02T05:30:00+00:00", "2025-11-03T06:30:00+00:00"],
            "a fixed-time expression fires once, in the first pass"
        );
        let t = timing("*/30 * * * *", "America/New_York");
        assert_eq!(
            ticks(&t, "2025-11-02T04:50:00Z", 6),
            [
                "2025-11-02T05:00:00+00:00",
                "2025-11-02T05:30:00+00:00",
                "2025-11-02T06:00:00+00:00",
                "2025-11-02T06:30:00+00:00",
                "2025-11-02T07:00:00+00:00",
                "2025-11-02T07:30:00+00:00",
            ],
            "an interval expression fires in both passes, in instant order"
        );
        // From inside the second pass, the next tick is in the second pass, not back in time.
        assert_eq!(ticks(&t, "2025-11-02T06:10:00Z", 1), ["2025-11-02T06:30:00+00:00"]);
        // Seconds granularity across the overlap: every tick is 20 s after the previous one.
        let t = timing("*/20 * * * * *", "America/New_York");
        let all = ticks(&t, "2025-11-02T04:59:00Z", 3 * 60 * 3);
        for w in all.windows(2) {
            let gap = utc(&w[1]) - utc(&w[0]);
            assert_eq!(gap, Duration::seconds(20), "{} → {}", w[0], w[1]);
        }
    }

    #[test]
    fn jitter_is_fixed_per_schedule_and_bounded() {
        let a = Uuid::from_u128(12_345);
        assert_eq!(jitter_of(a, 0), 0);
        assert_eq!(jitter_of(a, 1000), 345);
        let t = Timing::parse("*/5 * * * * *", chrono_tz::UTC, 1000, a).expect("cron");
        assert_eq!(t.fire_at(utc("2025-01-01T00:00:05Z")), utc("2025-01-01T00:00:05.345Z"));
        // Not due before it fires.
        let p = t.plan(utc("2025-01-01T00:00:00Z"), utc("2025-01-01T00:00:05.300Z"), 1, Duration::seconds(1));
        assert_eq!((p.fire.len(), p.handled_through), (0, None));
        assert_eq!(p.next, Some(utc("2025-01-01T00:00:05Z")));
        let p = t.plan(utc("2025-01-01T00:00:00Z"), utc("2025-01-01T00:00:05.400Z"), 1, Duration::seconds(1));
        assert_eq!(p.fire, [utc("2025-01-01T00:00:05Z")]);
    }

    #[test]
    fn on_time_tick_fires_alone() {
        let t = timing("*/5 * * * * *", "UTC");
        let p = t.plan(utc("2025-01-01T00:00:00Z"), utc("2025-01-01T00:00:05.020Z"), 0, Duration::seconds(1));
        assert_eq!(
            p,
            Plan {
                fire: vec![utc("2025-01-01T00:00:05Z")],
                handled_through: Some(utc("2025-01-01T00:00:05Z")),
                dropped: 0,
                on_time: true,
                next: Some(utc("2025-01-01T00:00:10Z")),
            }
        );
    }

    #[test]
    fn missed_ticks_per_policy() {
        let t = timing("*/5 * * * * *", "UTC");
        let handled = utc("2025-01-01T00:00:00Z");
        // A minute without a leader, back 2.5 s after the 00:01:00 tick: 12 ticks due
        // (00:00:05 … 00:01:00), all missed with a 1 s tolerance.
        let now = utc("2025-01-01T00:01:02.500Z");
        let tol = Duration::seconds(1);
        let skip = t.plan(handled, now, 0, tol);
        assert_eq!(skip.fire, Vec::<DateTime<Utc>>::new());
        assert_eq!(skip.handled_through, Some(utc("2025-01-01T00:01:00Z")));
        assert_eq!(skip.dropped, 12);
        assert_eq!(skip.next, Some(utc("2025-01-01T00:01:05Z")));
        let once = t.plan(handled, now, 1, tol);
        assert_eq!(once.fire, [utc("2025-01-01T00:01:00Z")]);
        assert_eq!(once.dropped, 11);
        let back = t.plan(handled, now, 3, tol);
        assert_eq!(
            back.fire,
            [utc("2025-01-01T00:00:50Z"), utc("2025-01-01T00:00:55Z"), utc("2025-01-01T00:01:00Z")]
        );
        assert_eq!(back.dropped, 9);
        // Back 0.5 s after the tick: the latest tick is on time and fires besides the kept
        // missed ones.
        let now = utc("2025-01-01T00:01:00.500Z");
        let once = t.plan(handled, now, 1, tol);
        assert_eq!(once.fire, [utc("2025-01-01T00:00:55Z"), utc("2025-01-01T00:01:00Z")]);
        assert!(once.on_time);
        assert_eq!(t.plan(handled, now, 0, tol).fire, [utc("2025-01-01T00:01:00Z")]);
        // More kept than missed: all of them.
        assert_eq!(t.plan(handled, now, 100, tol).fire.len(), 12);
    }

    #[test]
    fn a_long_outage_costs_little() {
        // Every second, handled a year ago: only the kept ticks are enumerated.
        let t = timing("* * * * * *", "UTC");
        let start = std::time::Instant::now();
        let p = t.plan(utc("2024-01-01T00:00:00Z"), utc("2025-01-01T00:00:00.200Z"), 3, Duration::seconds(1));
        assert!(start.elapsed() < std::time::Duration::from_millis(500), "took {:?}", start.elapsed());
        // Three missed ticks kept, and the latest, on time.
        assert_eq!(
            p.fire,
            [
                utc("2024-12-31T23:59:57Z"),
                utc("2024-12-31T23:59:58Z"),
                utc("2024-12-31T23:59:59Z"),
                utc("2025-01-01T00:00:00Z")
            ]
        );
        assert!(p.on_time);
        assert!(p.dropped >= 64, "a lower bound of what was dropped");
        // A weekday-morning expression handled a month ago keeps the last business days.
        let t = timing("0 9 * * MON-FRI", "Europe/Paris");
        let p = t.plan(utc("2025-05-01T00:00:00Z"), utc("2025-06-02T12:00:00Z"), 2, Duration::seconds(1));
        assert_eq!(p.fire, [utc("2025-05-30T07:00:00Z"), utc("2025-06-02T07:00:00Z")]);
        assert!(!p.on_time);
    }

    #[test]
    fn missed_ticks_across_dst() {
        // Hourly in New York over the fall-back night, last handled at 00:00 EDT (04:00 UTC),
        // back at 03:30 EST (08:30 UTC): 01:00 EDT, 01:00 EST, 02:00 EST, 03:00 EST are due.
        let t = timing("0 * * * *", "America/New_York");
        let r = t.recent(utc("2025-11-02T04:00:00Z"), utc("2025-11-02T08:30:00Z"), 10);
        assert_eq!(
            r.ticks,
            [
                utc("2025-11-02T05:00:00Z"),
                utc("2025-11-02T06:00:00Z"),
                utc("2025-11-02T07:00:00Z"),
                utc("2025-11-02T08:00:00Z")
            ]
        );
        assert!(r.exact);
    }
}
