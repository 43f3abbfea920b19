//! `crmctl`, the operator CLI. Each subcommand is a function over typed arguments; output is a
//! table by default and JSON with `--json`. Exit codes: 0 success, 1 a failed operation,
//! 3 the named id (schedule, connection, tenant, dead letter, conflict) does not exist or a
//! dead-letter selection matched nothing ([`EXIT_NOTHING`]), 64 bad configuration
//! or usage ([`UsageError`]).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use crm_jobs::config::EXIT_CONFIG;
use crm_jobs::job::SyncMode;
use uuid::Uuid;

use crate::schedule::freshness;
use crate::schedule::model::{FieldError, NewSchedule, Schedule, SchedulePatch, parse_objects};
use crate::schedule::store::{self, StoreError};
use crate::schedule::trigger::{self, TriggerError};

/// The command line. No `Debug`: it holds the token keys.
#[derive(Parser)]
#[command(name = "crmctl", version, about = "Operate a crm-fleet deployment.")]
pub struct Cli {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", global = true, default_value = "")]
    pub database_url: String,
    /// Redis URL, or a comma-separated list of Redis Cluster nodes.
    #[arg(long, env = "REDIS_URL", global = true, default_value = "")]
    pub redis_url: String,
    /// Queue name.
    #[arg(long, env = "CRM_FLEET_QUEUE", global = true, default_value = crm_jobs::job::DEFAULT_QUEUE)]
    pub queue: String,
    /// Redis key prefix.
    #[arg(long, env = "CRM_FLEET_REDIS_PREFIX", global = true, default_value = crm_queue::config::DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Token encryption key (base64 of 32 bytes).
    #[arg(long, env = "CRM_FLEET_TOKEN_KEY", global = true, default_value = "", hide_env_values = true)]
    pub token_key: String,
    /// Previous token keys, comma-separated.
    #[arg(
        long,
        env = "CRM_FLEET_TOKEN_KEYS_PREVIOUS",
        global = true,
        default_value = "",
        hide_env_values = true
    )]
    pub token_keys_previous: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole fleet locally against the CRM sandbox, with live progress (Ctrl-C stops it).
    Demo(crate::demo::DemoArgs),
    /// Apply pending database migrations.
    Migrate,
    /// Show queue depth, age, workers, limits and pauses.
    Queues,
    /// Tenants.
    #[command(subcommand)]
    Tenants(TenantCmd),
    /// Connections to CRMs.
    #[command(subcommand)]
    Connections(ConnectionCmd),
    /// OAuth app registrations (one per provider).
    #[command(subcommand)]
    Apps(AppCmd),
    /// API keys for services and operators.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeyCmd),
    /// Token encryption keys.
    #[command(subcommand)]
    Keys(KeyCmd),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Fleet-wide limits: show budgets, their use and pauses; set or unset a limit.
    #[command(subcommand)]
    Limits(LimitsCmd),
    /// Trigger syncs.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Manage sync schedules.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Sync conflicts: remote changes a sync did not apply over a local pending change.
    #[command(subcommand)]
    Conflicts(ConflictsCommand),
}

/// `crmctl conflicts …`
#[derive(Debug, Subcommand)]
pub enum ConflictsCommand {
    /// List conflicts, oldest first.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this provider's.
        #[arg(long)]
        provider: Option<String>,
        /// Only this object's (contact, company, deal).
        #[arg(long)]
        object: Option<String>,
        /// open, resolved or all.
        #[arg(long, default_value = "open")]
        state: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Those after this conflict id (the last of the previous page).
        #[arg(long)]
        after: Option<i64>,
    },
    /// Resolve a conflict (and the open ones of the same record and field): --keep remote
    /// takes the CRM's value; --keep local keeps ours, still pending until the CRM has it.
    Resolve {
        /// Conflict id.
        id: i64,
        /// remote or local.
        #[arg(long)]
        keep: String,
    },
}

async fn conflicts_command(cli: &Cli, cmd: &ConflictsCommand) -> anyhow::Result<i32> {
    use crm_jobs::sync::conflicts::{self, Keep, ListFilter, ResolveError};
    match cmd {
        ConflictsCommand::List { tenant, provider, object, state, limit, after } => {
            let open = match ListFilter::parse_state(state) {
                Ok(open) => open,
                Err(e) => return Ok(usage(&FieldError::new("state", e))),
            };
            if let Some(Err(e)) = provider.as_deref().map(str::parse::<crm_jobs::providers::Provider>) {
                return Ok(usage(&FieldError::new("provider", e)));
            }
            let object =
                match object.as_deref().map(str::parse::<crm_jobs::providers::ObjectKind>).transpose() {
                    Ok(o) => o,
                    Err(e) => return Ok(usage(&FieldError::new("object", e))),
                };
            let filter = ListFilter { tenant: tenant.clone(), provider: provider.clone(), object, open };
            let limit = (*limit).max(1);
            let list = conflicts::list(&pool(cli).await?, &filter, *after, limit).await?;
            print(cli.json, &list, || {
                println!(
                    "{:>8}  {:<16}  {:<10}  {:<7}  {:<20}  {:<10}  {:<28}  {:<28}  STATE",
                    "ID", "TENANT", "PROVIDER", "OBJECT", "RECORD", "FIELD", "LOCAL", "REMOTE"
                );
                for c in &list {
                    let state = match (&c.resolution, &c.resolved_by) {
                        (Some(r), Some(by)) => format!("kept {r} ({by})"),
                        (Some(r), None) => format!("kept {r}"),
                        _ => "open".to_owned(),
                    };
                    println!(
                        "{:>8}  {:<16}  {:<10}  {:<7}  {:<20}  {:<10}  {:<28}  {:<28}  {state}",
                        c.id,
                        c.tenant_id,
                        c.provider,
                        c.object,
                        c.external_id,
                        c.field,
                        c.local_value.as_deref().unwrap_or("-"),
                        c.remote_value.as_deref().unwrap_or("-"),
                    );
                }
            });
            more_hint(cli.json, list.len() as i64 == limit, list.last().map(|c| c.id));
            Ok(0)
        }
        ConflictsCommand::Resolve { id, keep } => {
            let keep: Keep = match keep.parse() {
                Ok(k) => k,
                Err(e) => return Ok(usage(&FieldError::new("keep", e))),
            };
            match conflicts::resolve(&pool(cli).await?, *id, keep, &actor()).await {
                Ok(r) => {
                    print(cli.json, &r, || {
                        println!(
                            "conflict {id} resolved (kept {}; {} resolved): {} {} of {} is now {}",
                            keep.as_str(),
                            r.resolved,
                            r.conflict.object,
                            r.conflict.field,
                            r.conflict.external_id,
                            r.value.as_deref().unwrap_or("empty")
                        )
                    });
                    Ok(0)
                }
                Err(ResolveError::NotFound) => {
                    eprintln!("crmctl: no conflict {id}");
                    Ok(EXIT_NOTHING)
                }
                Err(e @ ResolveError::AlreadyResolved(_)) => {
                    eprintln!("crmctl: conflict {id}: {e}");
                    Ok(1)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// `crmctl limits …`
#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// Every configured budget, the learned per-account rates, the slots in use and the pauses.
    Show,
    /// Set a limit (applied fleet-wide within a second): `c:tenant:hubspot:acme 5`,
    /// `r:account:hubspot:* 100/10s`, `w:tenant:acme 3`.
    Set {
        /// Budget name (may end in `:*`).
        budget: String,
        /// `N` for concurrency and weights, `N/PERIOD` (10s, 1m, 24h) for rates.
        value: String,
        /// Burst for rates (default 1).
        #[arg(long)]
        burst: Option<u32>,
        /// A note (why).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Remove a limit.
    Unset {
        /// Budget name.
        budget: String,
    },
    /// Lift a pause now (a throttled account, a parked connection, an open breaker).
    Resume {
        /// Budget name (`x:account:hubspot:123`, `x:conn:<id>`, `x:provider:hubspot`).
        budget: String,
    },
}

fn parse_limit(budget: &str, value: &str, burst: Option<u32>) -> anyhow::Result<crm_queue::Limit> {
    let bad = |m: &str| anyhow::Error::from(UsageError(format!("{value:?} for {budget}: {m}")));
    if budget.starts_with("r:") {
        let (n, per) = value.split_once('/').ok_or_else(|| bad("a rate is N/PERIOD, like 100/10s"))?;
        let count: u32 = n.trim().parse().map_err(|_| bad("N must be a whole number"))?;
        let per =
            humantime::parse_duration(per.trim()).map_err(|_| bad("PERIOD must be a duration like 10s"))?;
        if count == 0 || per.is_zero() {
            return Err(bad("must be positive"));
        }
        Ok(crm_queue::Limit::Rate { count, per, burst: burst.unwrap_or(1).max(1) })
    } else {
        let n: u32 = value.trim().parse().map_err(|_| bad("must be a whole number"))?;
        if n == 0 {
            return Err(bad("must be at least 1"));
        }
        if budget.starts_with("w:") {
            Ok(crm_queue::Limit::Weight(n))
        } else if budget.starts_with("c:") {
            Ok(crm_queue::Limit::Concurrency(n))
        } else {
            Err(bad("budget names start with c: (concurrency), r: (rate) or w: (weight)"))
        }
    }
}

fn describe(l: &crm_queue::Limit) -> String {
    match l {
        crm_queue::Limit::Concurrency(n) => format!("{n} at once"),
        crm_queue::Limit::Weight(n) => format!("weight {n}"),
        crm_queue::Limit::Rate { count, per, burst } => {
            format!("{count} per {} (burst {burst})", humantime::format_duration(*per))
        }
    }
}

async fn limits_command(cli: &Cli, cmd: &LimitsCmd) -> anyhow::Result<i32> {
    match cmd {
        LimitsCmd::Show => {
            let pool = pool(cli).await?;
            let queue = queue(cli).await?;
            let rows = crm_jobs::limits::load(&pool).await?;
            let live = queue.limits().await?;
            let slots = queue.slots().await?;
            let pauses = queue.pauses().await?;
            let now = chrono::Utc::now().timestamp_millis();
            let configured: std::collections::HashSet<&str> =
                rows.iter().map(|r| r.budget.as_str()).collect();
            let learned: Vec<(&String, &crm_queue::Limit)> =
                live.iter().filter(|(k, _)| !configured.contains(k.as_str())).collect();
            let json = serde_json::json!({
                "configured": rows.iter().map(|r| serde_json::json!({"budget": r.budget, "limit": describe(&r.limit), "source": r.source, "note": r.note})).collect::<Vec<_>>(),
                "learned": learned.iter().map(|(k, l)| serde_json::json!({"budget": k, "limit": describe(l)})).collect::<Vec<_>>(),
                "in_use": slots.iter().map(|(b, n)| serde_json::json!({"budget": b, "slots": n})).collect::<Vec<_>>(),
                "pauses": pauses.iter().filter(|(_, until)| **until > now).map(|(b, until)| serde_json::json!({"budget": b, "until_ms": until, "remaining_s": (until - now) / 1000})).collect::<Vec<_>>(),
            });
            print(cli.json, &json, || {
                println!("{:<40} {:<28} {:<9} NOTE", "BUDGET", "LIMIT", "SOURCE");
                for r in &rows {
                    println!("{:<40} {:<28} {:<9} {}", r.budget, describe(&r.limit), r.source, r.note);
                }
                if !learned.is_empty() {
                    println!("\nlearned from provider responses:");
                    for (k, l) in &learned {
                        println!("  {k:<38} {}", describe(l));
                    }
                }
                println!("\nin use:");
                if slots.is_empty() {
                    println!("  (no concurrency slot held)");
                }
                for (b, n) in &slots {
                    let limit = live.get(b).map(describe).unwrap_or_else(|| "see wildcard".into());
                    println!("  {b:<38} {n} held ({limit})");
                }
                println!("\npauses:");
                let mut any = false;
                for (b, until) in &pauses {
                    if *until > now {
                        any = true;
                        let end = chrono::DateTime::from_timestamp_millis(*until)
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_default();
                        println!("  {b:<38} until {end} ({}s)", (until - now) / 1000);
                    }
                }
                if !any {
                    println!("  (none)");
                }
            });
            Ok(0)
        }
        LimitsCmd::Set { budget, value, burst, note } => {
            let limit = parse_limit(budget, value, *burst)?;
            let pool = pool(cli).await?;
            crm_jobs::limits::set(&pool, budget, limit, note).await?;
            let set = serde_json::json!({"budget": budget, "limit": describe(&limit)});
            print(cli.json, &set, || println!("{budget}: {} (applied within a second)", describe(&limit)));
            Ok(0)
        }
        LimitsCmd::Unset { budget } => {
            let pool = pool(cli).await?;
            if crm_jobs::limits::unset(&pool, budget).await? {
                print(cli.json, &serde_json::json!({"budget": budget, "removed": true}), || {
                    println!("{budget}: removed")
                });
                Ok(0)
            } else {
                eprintln!("crmctl: no limit {budget}");
                Ok(EXIT_NOTHING)
            }
        }
        LimitsCmd::Resume { budget } => {
            let queue = queue(cli).await?;
            // A provider's pause is its circuit breaker's: lifting the pause alone would leave
            // the breaker open (the gauge and alert say so) or half-open (one failure re-opens
            // it for twice as long), so the breaker is closed with it.
            let breaker = budget
                .strip_prefix("x:provider:")
                .and_then(|p| p.parse::<crm_jobs::providers::Provider>().ok());
            match breaker {
                Some(p) => crm_jobs::limits::breaker::close(&queue, p).await?,
                None => {
                    queue.pause(budget, Duration::ZERO).await?;
                }
            }
            let closed = breaker.is_some();
            print(
                cli.json,
                &serde_json::json!({"budget": budget, "resumed": true, "breaker_closed": closed}),
                || println!("{budget}: resumed{}", if closed { " (circuit breaker closed)" } else { "" }),
            );
            Ok(0)
        }
    }
}

/// Filters shared by the `dlq` subcommands (lists are comma-separated).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DlqFilterArgs {
    /// Providers.
    #[arg(long)]
    pub provider: Option<String>,
    /// Tenants.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Job types (action, sync, probe).
    #[arg(long)]
    pub job_type: Option<String>,
    /// Error classes; `auth` = unauthorized, forbidden, invalid_grant, needs_reauth.
    #[arg(long)]
    pub error_class: Option<String>,
    /// Why they died (max_attempts, permanent, poison, undecodable).
    #[arg(long)]
    pub dead_reason: Option<String>,
    /// Died at or after: RFC 3339, or a duration back from now (1h, 30m, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Died before.
    #[arg(long)]
    pub until: Option<String>,
}

impl DlqFilterArgs {
    fn filter(&self) -> anyhow::Result<crm_jobs::dlq::Filter> {
        let list = |v: &Option<String>| -> Vec<String> {
            v.as_deref()
                .map(|s| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let when =
            |name: &str, v: &Option<String>| -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
                v.as_deref()
                    .map(|s| {
                        crm_jobs::dlq::parse_when(s)
                            .map_err(|e| anyhow::Error::from(UsageError(format!("--{name}: {e}"))))
                    })
                    .transpose()
            };
        Ok(crm_jobs::dlq::Filter {
            provider: list(&self.provider),
            tenant: list(&self.tenant),
            job_type: list(&self.job_type),
            error_class: list(&self.error_class),
            reason: list(&self.dead_reason),
            since: when("since", &self.since)?,
            until: when("until", &self.until)?,
            replayed: None,
        })
    }
}

/// `crmctl dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// List dead letters, newest first (or the tenants concerned, with --group-by tenant).
    List {
        /// Filters.
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Not yet replayed only.
        #[arg(long)]
        unreplayed: bool,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Continue from a previous page's cursor.
        #[arg(long)]
        cursor: Option<String>,
        /// `tenant`: one line per (tenant, provider) with a count.
        #[arg(long)]
        group_by: Option<String>,
    },
    /// Show one dead letter: payload (secrets redacted), every attempt, every replay.
    Show {
        /// Dead-letter id.
        id: uuid::Uuid,
    },
    /// Replay dead letters by id, or every one matching --filter (counted first; asks unless --yes).
    Replay {
        /// Dead-letter ids.
        ids: Vec<uuid::Uuid>,
        /// Replay by the filter flags instead of ids.
        #[arg(long)]
        filter: bool,
        /// Filters (with --filter).
        #[command(flatten)]
        f: DlqFilterArgs,
        /// Why (audited).
        #[arg(long)]
        reason: String,
        /// Edit a field: `params.subject=…` for actions, `mode=full` for syncs (repeatable).
        #[arg(long = "set")]
        set: Vec<String>,
        /// Count only.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Delete dead letters by id (audited; asks unless --yes): one whose action happened after
    /// all, or a garbage payload.
    Delete {
        /// Dead-letter ids.
        #[arg(required = true)]
        ids: Vec<uuid::Uuid>,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Delete dead letters older than an age (audited; asks unless --yes).
    Purge {
        /// Age: a duration (30d) or an RFC 3339 time.
        #[arg(long)]
        older_than: String,
        /// Further filters.
        #[command(flatten)]
        f: DlqFilterArgs,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// Exit code when nothing matched or the id is unknown.
pub const EXIT_NOTHING: i32 = 3;

/// A usage or configuration error: `crmctl` prints it and exits 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Returns early with a [`UsageError`].
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err(UsageError(format!($($arg)*)).into())
    };
}

/// The exit code an error of [`run`] calls for: 64 for usage and configuration, 1 for
/// everything else (an unknown id is not an error: the command prints it and returns 3).
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if error.downcast_ref::<UsageError>().is_some()
        || matches!(error.downcast_ref(), Some(crm_jobs::dlq::DlqError::Invalid { .. }))
    {
        EXIT_CONFIG
    } else {
        1
    }
}

fn actor() -> String {
    std::env::var("CRM_FLEET_ACTOR")
        .or_else(|_| std::env::var("USER"))
        .map(|u| format!("cli:{u}"))
        .unwrap_or_else(|_| "cli".to_owned())
}

fn confirm(question: &str, yes: bool) -> anyhow::Result<bool> {
    use std::io::{IsTerminal, Write};
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        usage_bail!("{question} — refusing without --yes (stdin is not a terminal)");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

async fn dlq_command(cli: &Cli, cmd: &DlqCmd) -> anyhow::Result<i32> {
    use crm_jobs::dlq;
    let pool = pool(cli).await?;
    match cmd {
        DlqCmd::List { filter, unreplayed, limit, cursor, group_by } => {
            let mut f = filter.filter()?;
            if *unreplayed {
                f.replayed = Some(false);
            }
            match group_by.as_deref() {
                Some("tenant") => {
                    let rows = dlq::tenants(&pool, &f).await?;
                    let v: Vec<_> = rows
                        .iter()
                        .map(|(t, p, n)| serde_json::json!({"tenant": t, "provider": p, "count": n}))
                        .collect();
                    print(cli.json, &v, || {
                        println!("{:<32} {:<12} DEAD LETTERS", "TENANT", "PROVIDER");
                        for (t, p, n) in &rows {
                            println!("{t:<32} {p:<12} {n}");
                        }
                    });
                    Ok(if rows.is_empty() { EXIT_NOTHING } else { 0 })
                }
                Some(other) => usage_bail!("--group-by {other:?}: only `tenant` is supported"),
                None => {
                    let (items, next) = dlq::list(&pool, &f, *limit, cursor.as_deref()).await?;
                    print(cli.json, &serde_json::json!({"items": items, "next_cursor": next}), || {
                        println!(
                            "{:<36} {:<20} {:<10} {:<16} {:<14} {:<12} {:>3}  LAST ERROR",
                            "ID", "DEAD AT", "PROVIDER", "TENANT", "CLASS", "REASON", "ATT"
                        );
                        for d in &items {
                            let mut err = d.last_error.clone();
                            err.truncate(60);
                            println!(
                                "{:<36} {:<20} {:<10} {:<16} {:<14} {:<12} {:>3}  {}{}",
                                d.id,
                                d.dead_at.format("%Y-%m-%d %H:%M:%S"),
                                d.provider,
                                d.tenant,
                                d.error_class,
                                d.reason,
                                d.attempts,
                                err,
                                if d.replayed_at.is_some() { "  (replayed)" } else { "" }
                            );
                        }
                        if let Some(n) = &next {
                            println!("more: --cursor {n}");
                        }
                    });
                    Ok(if items.is_empty() { EXIT_NOTHING } else { 0 })
                }
            }
        }
        DlqCmd::Show { id } => match dlq::show(&pool, *id).await? {
            Some(d) => {
                print(cli.json, &d, || {
                    println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
                });
                Ok(0)
            }
            None => {
                eprintln!("crmctl: no dead letter {id}");
                Ok(EXIT_NOTHING)
            }
        },
        DlqCmd::Replay { ids, filter, f, reason, set, dry_run, yes } => {
            if reason.trim().is_empty() {
                usage_bail!("--reason is required (it is audited)");
            }
            let mut changes = std::collections::BTreeMap::new();
            for kv in set {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| UsageError(format!("--set {kv:?}: expected key=value")))?;
                changes.insert(k.to_owned(), v.to_owned());
            }
            let req = dlq::ReplayRequest { actor: actor(), reason: reason.clone(), changes };
            if *filter {
                if !ids.is_empty() {
                    usage_bail!("give ids or --filter, not both");
                }
                let queue = queue(cli).await?;
                let f = f.filter()?;
                let planned = dlq::replay_matching(&pool, &queue, &f, &req, true).await?;
                eprintln!("{} dead letters match and have not been replayed.", planned.matched);
                if planned.matched == 0 {
                    return Ok(EXIT_NOTHING);
                }
                if *dry_run {
                    print(cli.json, &planned, || println!("dry run: {} would be replayed", planned.matched));
                    return Ok(0);
                }
                if !confirm(&format!("Replay {} dead letters?", planned.matched), *yes)? {
                    eprintln!("nothing replayed");
                    return Ok(1);
                }
                let done = dlq::replay_matching(&pool, &queue, &f, &req, false).await?;
                print(cli.json, &done, || {
                    println!(
                        "replayed: {} enqueued, {} merged into queued jobs, {} skipped",
                        done.enqueued, done.merged, done.skipped
                    );
                    for r in &done.skip_reasons {
                        println!("  skipped {r}");
                    }
                });
                Ok(if done.skipped > 0 { 1 } else { 0 })
            } else {
                if ids.is_empty() {
                    usage_bail!("give dead-letter ids, or --filter with filter flags");
                }
                // Each checked as a replay would check it; a dry run changes nothing.
                let (out, code) = if *dry_run {
                    per_id(
                        ids,
                        |id| dlq::preview_one(&pool, id, &req.changes),
                        |p| matches!(p, dlq::Preview::Unreplayable { .. }),
                    )
                    .await?
                } else {
                    let queue = queue(cli).await?;
                    per_id(
                        ids,
                        |id| dlq::replay_one(&pool, &queue, id, &req),
                        |o| matches!(o, dlq::ReplayOutcome::Unreplayable { .. }),
                    )
                    .await?
                };
                let prefix = if *dry_run { "dry run: " } else { "" };
                print(cli.json, &out, || {
                    for o in &out {
                        println!("{prefix}{o}");
                    }
                });
                Ok(code)
            }
        }
        DlqCmd::Delete { ids, yes } => {
            if !confirm(&format!("Delete {} dead letters?", ids.len()), *yes)? {
                eprintln!("nothing deleted");
                return Ok(1);
            }
            let actor = actor();
            let (out, code) = per_id(
                ids,
                |id| {
                    let (pool, actor) = (&pool, &actor);
                    async move {
                        match dlq::delete(pool, id, actor).await? {
                            true => Ok("deleted"),
                            false => Err(dlq::DlqError::Invalid {
                                field: "id".into(),
                                message: format!("no dead letter {id}"),
                            }),
                        }
                    }
                },
                |_| false,
            )
            .await?;
            print(cli.json, &out, || {
                for o in &out {
                    match (o["result"].as_str(), o["error"].as_str()) {
                        (Some(r), _) => println!("{} {r}", o["id"].as_str().unwrap_or_default()),
                        (_, Some(e)) => eprintln!("crmctl: {e}"),
                        _ => {}
                    }
                }
            });
            Ok(code)
        }
        DlqCmd::Purge { older_than, f, yes } => {
            let cutoff = crm_jobs::dlq::parse_when(older_than)
                .map_err(|e| UsageError(format!("--older-than: {e}")))?;
            let mut filter = f.filter()?;
            filter.until = Some(filter.until.map_or(cutoff, |u| u.min(cutoff)));
            let n = dlq::count(&pool, &filter).await?;
            eprintln!("{n} dead letters died before {cutoff}.");
            if n == 0 {
                return Ok(EXIT_NOTHING);
            }
            if !confirm(&format!("Delete {n} dead letters?"), *yes)? {
                eprintln!("nothing deleted");
                return Ok(1);
            }
            let done = dlq::purge(&pool, &filter, cutoff, &actor()).await?;
            print(cli.json, &serde_json::json!({"purged": done}), || println!("purged {done} dead letters"));
            Ok(0)
        }
    }
}

/// `crmctl tenants …`
#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant (no-op if it exists).
    Add {
        /// Tenant id.
        id: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Fairness weight (1–1000).
        #[arg(long, default_value_t = 1)]
        weight: i32,
    },
    /// List tenants.
    List,
}

/// `crmctl connections …`
#[derive(Debug, Subcommand)]
pub enum ConnectionCmd {
    /// List connections (no secrets).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Add a connection authenticated by an API key or static token (read from stdin or
    /// CRM_FLEET_SECRET, never a flag, so it stays out of shell history).
    AddKey {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Provider.
        #[arg(long)]
        provider: String,
        /// `api_key` (Close, Pipedrive) or `static_token` (HubSpot private app).
        #[arg(long, default_value = "api_key")]
        kind: String,
        /// The account's API base URL.
        #[arg(long)]
        api_base: String,
        /// The provider account id.
        #[arg(long)]
        account: String,
    },
    /// Print a connect link: the URL a tenant's user opens to connect a CRM account to the
    /// tenant through the provider's consent page (the provider's OAuth app must be registered
    /// with `crmctl apps set`). Anyone holding the link can connect an account until it
    /// expires: hand it only to that tenant.
    Link {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Provider.
        #[arg(long)]
        provider: String,
        /// How long it stays valid (at most 7d).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        expires_in: Duration,
    },
    /// Mark a connection disabled (its jobs park) or active again.
    SetStatus {
        /// Connection id.
        id: uuid::Uuid,
        /// active or disabled.
        status: String,
    },
}

/// `crmctl apps …`
#[derive(Debug, Subcommand)]
pub enum AppCmd {
    /// Register (or replace) the OAuth app for a provider. The client secret is read from
    /// stdin or CRM_FLEET_SECRET.
    Set {
        /// Provider.
        #[arg(long)]
        provider: String,
        /// Client id.
        #[arg(long)]
        client_id: String,
        /// Authorization endpoint.
        #[arg(long)]
        authorize_url: String,
        /// Token endpoint.
        #[arg(long)]
        token_url: String,
        /// Our callback URL (…/v1/oauth/callback).
        #[arg(long)]
        redirect_uri: String,
        /// Scopes, space-separated.
        #[arg(long, default_value = "")]
        scopes: String,
        /// Fixed API host (HubSpot, Close).
        #[arg(long)]
        api_base: Option<String>,
    },
}

/// `crmctl api-keys …`
#[derive(Debug, Subcommand)]
pub enum ApiKeyCmd {
    /// Create a key and print it once.
    Create {
        /// A name for the key (the service that uses it).
        #[arg(long)]
        name: String,
        /// Scopes: enqueue, admin (comma-separated).
        #[arg(long, default_value = "enqueue")]
        scopes: String,
    },
    /// List keys (prefix, name, scopes, last use; never secrets).
    List {
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key: requests with it get 401 from the next one on.
    Revoke {
        /// The key's prefix, or the whole key (`cf_<prefix>_<secret>`).
        key: String,
    },
}

/// `crmctl keys …`
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Print a new random token key (base64 of 32 bytes).
    Generate,
    /// Re-encrypt every stored token and secret with the current key (CRM_FLEET_TOKEN_KEY),
    /// reading old ones with CRM_FLEET_TOKEN_KEYS_PREVIOUS.
    Rotate,
}

async fn queue(cli: &Cli) -> anyhow::Result<crm_queue::Queue> {
    require(&cli.redis_url, "REDIS_URL", "--redis-url")?;
    Ok(crm_queue::Queue::connect(
        crm_queue::QueueConfig::new(&cli.redis_url, &cli.queue).with_prefix(&cli.redis_prefix),
    )
    .await?)
}

/// Listing connections needs no key (no secret is read); a throwaway ring satisfies the store.
fn keyring_or_dummy(cli: &Cli) -> std::sync::Arc<crm_jobs::auth::Keyring> {
    keyring(cli).unwrap_or_else(|_| {
        std::sync::Arc::new(
            crm_jobs::auth::Keyring::from_base64(&crm_jobs::auth::Keyring::generate_base64(), &[])
                .unwrap_or_else(|_| std::process::abort()),
        )
    })
}

/// `crmctl sync …`
#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Enqueue a sync of a connection now (one job per object; an object whose sync is
    /// already queued or running is reported as a duplicate).
    Now {
        /// The connection.
        #[arg(long)]
        connection: Uuid,
        /// Object to sync (repeatable): contact, company, deal. Default: all three.
        #[arg(long = "object")]
        objects: Vec<String>,
        /// A full sync instead of an incremental one.
        #[arg(long)]
        full: bool,
    },
    /// List scheduled syncs that have fallen behind: a tick fired more than --after ago and
    /// no sync of that connection and object has succeeded since (longest behind first, with
    /// the latest run and its error).
    Stale {
        /// Grace after a tick (e.g. 30m, 2h); the scheduler reads the same variable, so set it
        /// alike for both.
        #[arg(long, env = "CRM_FLEET_SYNC_STALE_AFTER", default_value = "30m", value_parser = humantime::parse_duration)]
        after: Duration,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this provider's (hubspot, salesforce, pipedrive, zoho, close).
        #[arg(long)]
        provider: Option<String>,
        /// Show at most this many (all are counted).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `crmctl schedules …`
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// List schedules.
    List {
        /// Only this connection's.
        #[arg(long)]
        connection: Option<Uuid>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Those after this schedule id (the last of the previous page).
        #[arg(long)]
        after: Option<Uuid>,
    },
    /// Create a schedule.
    Add(AddArgs),
    /// Change a schedule.
    Set(SetArgs),
    /// Disable a schedule (`set ID --enable` turns it back on).
    Disable {
        /// The schedule.
        id: Uuid,
    },
    /// Delete a schedule (syncs already queued still run; `disable` keeps it instead).
    Delete {
        /// The schedule.
        id: Uuid,
    },
}

/// `crmctl schedules add`
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The connection to sync.
    #[arg(long)]
    pub connection: Uuid,
    /// Cron expression: 5 fields, or 6 with seconds first (quote it).
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[arg(long = "tz", default_value = "UTC")]
    pub time_zone: String,
    /// Object to sync (repeatable). Default: contact, company and deal.
    #[arg(long = "object")]
    pub objects: Vec<String>,
    /// While a sync is queued or running: skip | buffer_one.
    #[arg(long, default_value = "skip")]
    pub overlap: String,
    /// Ticks missed while no scheduler ran: skip | run_once | backfill.
    #[arg(long, default_value = "run_once")]
    pub missed: String,
    /// Ticks replayed at most under --missed backfill.
    #[arg(long, default_value_t = crate::schedule::model::DEFAULT_BACKFILL_LIMIT)]
    pub backfill_limit: u32,
    /// Spread: each tick fires up to this late (e.g. 30s, 500ms), fixed per schedule.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub jitter: Option<Duration>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
}

/// `crmctl schedules set`
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The schedule.
    pub id: Uuid,
    /// New cron expression.
    #[arg(long)]
    pub cron: Option<String>,
    /// New time zone.
    #[arg(long = "tz")]
    pub time_zone: Option<String>,
    /// New objects (repeatable; replaces the list).
    #[arg(long = "object")]
    pub objects: Vec<String>,
    /// New overlap policy.
    #[arg(long)]
    pub overlap: Option<String>,
    /// New missed-tick policy.
    #[arg(long)]
    pub missed: Option<String>,
    /// New backfill limit.
    #[arg(long)]
    pub backfill_limit: Option<u32>,
    /// New jitter.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub jitter: Option<Duration>,
    /// Enable it.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable it.
    #[arg(long)]
    pub disable: bool,
}

/// A setting every command of its kind needs: named by its environment variable and flag.
fn require(value: &str, env: &str, flag: &str) -> anyhow::Result<()> {
    if value.is_empty() {
        usage_bail!("{env} is required (environment {env} or flag {flag})");
    }
    Ok(())
}

fn read_secret() -> anyhow::Result<secrecy::SecretString> {
    if let Ok(s) = std::env::var("CRM_FLEET_SECRET") {
        return Ok(secrecy::SecretString::from(s));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the secret from stdin")?;
    let s = line.trim().to_owned();
    if s.is_empty() {
        usage_bail!("no secret given: pipe it on stdin or set CRM_FLEET_SECRET");
    }
    Ok(secrecy::SecretString::from(s))
}

/// The flag a validation error is about.
fn flag(field: &str) -> String {
    let base = field.split('[').next().unwrap_or(field);
    match base {
        "time_zone" => "--tz".to_owned(),
        "objects" => "--object".to_owned(),
        "overlap_policy" => "--overlap".to_owned(),
        "missed_policy" => "--missed".to_owned(),
        "jitter_ms" => "--jitter".to_owned(),
        "connection_id" => "--connection".to_owned(),
        "body" => "arguments".to_owned(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

/// A usage error: printed, exit 64.
fn usage(e: &FieldError) -> i32 {
    eprintln!("crmctl: {}: {}", flag(&e.field), e.message);
    EXIT_CONFIG
}

fn jitter_ms(jitter: Option<Duration>) -> Result<Option<u32>, FieldError> {
    jitter
        .map(|d| u32::try_from(d.as_millis()).map_err(|_| FieldError::new("jitter_ms", "too long")))
        .transpose()
}

fn parsed<T: std::str::FromStr<Err = String>>(field: &str, v: &str) -> Result<T, FieldError> {
    v.parse().map_err(|e| FieldError::new(field, e))
}

async fn pool(cli: &Cli) -> anyhow::Result<sqlx::PgPool> {
    require(&cli.database_url, "DATABASE_URL", "--database-url")?;
    Ok(crm_jobs::storage::connect(&cli.database_url, 2, Duration::from_secs(10)).await?)
}

fn keyring(cli: &Cli) -> anyhow::Result<std::sync::Arc<crm_jobs::auth::Keyring>> {
    require(&cli.token_key, "CRM_FLEET_TOKEN_KEY", "--token-key")?;
    let previous: Vec<String> = cli
        .token_keys_previous
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let keys = crm_jobs::auth::Keyring::from_base64(&cli.token_key, &previous)
        .map_err(|e| UsageError(format!("CRM_FLEET_TOKEN_KEY or CRM_FLEET_TOKEN_KEYS_PREVIOUS: {e}")))?;
    Ok(std::sync::Arc::new(keys))
}

/// Runs `one` (a replay, its dry run, or a deletion) for each dead-letter id: `{id, result}` or
/// `{id, error}` per id, and the exit code: 1 when one cannot be replayed, 3 for an unknown id,
/// 64 for edits a dead letter refuses (the highest wins).
async fn per_id<T: serde::Serialize, F: Future<Output = Result<T, crm_jobs::dlq::DlqError>>>(
    ids: &[Uuid],
    one: impl Fn(Uuid) -> F,
    unreplayable: impl Fn(&T) -> bool,
) -> anyhow::Result<(Vec<serde_json::Value>, i32)> {
    let mut code = 0;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match one(*id).await {
            Ok(r) => {
                if unreplayable(&r) {
                    code = code.max(1);
                }
                out.push(serde_json::json!({"id": id, "result": r}));
            }
            Err(crm_jobs::dlq::DlqError::Invalid { field, message }) => {
                code = code.max(if field == "id" { EXIT_NOTHING } else { EXIT_CONFIG });
                out.push(serde_json::json!({"id": id, "error": message}));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((out, code))
}

/// Under a full page of a table, on stderr: how to ask for the next one.
fn more_hint(json: bool, full: bool, last: Option<impl std::fmt::Display>) {
    if let (false, true, Some(last)) = (json, full, last) {
        eprintln!("more: --after {last}");
    }
}

fn print<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce()) {
    if json {
        println!("{}", serde_json::to_string(value).unwrap_or_default());
    } else {
        text();
    }
}

fn print_schedules(json: bool, schedules: &[Schedule]) {
    if json {
        println!("{}", serde_json::json!(schedules));
        return;
    }
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".to_owned())
    };
    println!(
        "{:<36}  {:<36}  {:<20}  {:<16}  {:<16}  {:<3}  {:<10}  {:<12}  {:<19}  {:<19}",
        "ID",
        "CONNECTION",
        "OBJECTS",
        "CRON",
        "TZ",
        "ON",
        "OVERLAP",
        "MISSED",
        "LAST TICK (UTC)",
        "NEXT TICK (UTC)"
    );
    for s in schedules {
        let missed = match s.missed_policy {
            crate::schedule::model::MissedPolicy::Backfill => format!("backfill:{}", s.backfill_limit),
            m => m.as_str().to_owned(),
        };
        println!(
            "{:<36}  {:<36}  {:<20}  {:<16}  {:<16}  {:<3}  {:<10}  {:<12}  {:<19}  {:<19}",
            s.id,
            s.connection_id,
            s.objects.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(","),
            s.cron,
            s.time_zone,
            if s.enabled { "yes" } else { "no" },
            s.overlap_policy.as_str(),
            missed,
            time(s.last_tick_at),
            time(s.next_tick_at),
        );
    }
}

/// Maps a store error to an exit code, printing it.
fn store_failure(e: StoreError) -> anyhow::Result<i32> {
    match e {
        StoreError::Invalid(f) => Ok(usage(&f)),
        StoreError::ConnectionNotFound => {
            eprintln!("crmctl: --connection: no such connection");
            Ok(EXIT_NOTHING)
        }
        StoreError::ScheduleNotFound => {
            eprintln!("crmctl: no such schedule");
            Ok(EXIT_NOTHING)
        }
        StoreError::Db(e) => Err(e).context("database"),
    }
}

async fn schedules(cli: &Cli, command: &SchedulesCommand) -> anyhow::Result<i32> {
    let pool = pool(cli).await?;
    let result = match command {
        SchedulesCommand::List { connection, limit, after } => {
            let list = match store::list(&pool, *connection, *after, *limit).await {
                Ok(l) => l,
                Err(e) => return store_failure(e),
            };
            print_schedules(cli.json, &list);
            more_hint(cli.json, list.len() as u64 == u64::from(*limit), list.last().map(|s| s.id));
            return Ok(0);
        }
        SchedulesCommand::Add(a) => {
            let new = (|| -> Result<NewSchedule, FieldError> {
                let objects = if a.objects.is_empty() {
                    crm_jobs::providers::ObjectKind::ALL.to_vec()
                } else {
                    parse_objects("objects", &a.objects)?
                };
                NewSchedule {
                    connection_id: a.connection,
                    objects,
                    cron: a.cron.clone(),
                    time_zone: a.time_zone.clone(),
                    enabled: !a.disabled,
                    overlap_policy: parsed("overlap_policy", &a.overlap)?,
                    missed_policy: parsed("missed_policy", &a.missed)?,
                    backfill_limit: a.backfill_limit,
                    jitter_ms: jitter_ms(a.jitter)?.unwrap_or(0),
                }
                .validated()
            })();
            match new {
                Ok(new) => store::create(&pool, &new).await,
                Err(e) => return Ok(usage(&e)),
            }
        }
        SchedulesCommand::Set(a) => {
            let patch = (|| -> Result<SchedulePatch, FieldError> {
                let patch = SchedulePatch {
                    objects: if a.objects.is_empty() {
                        None
                    } else {
                        Some(parse_objects("objects", &a.objects)?)
                    },
                    cron: a.cron.clone(),
                    time_zone: a.time_zone.clone(),
                    enabled: if a.enable {
                        Some(true)
                    } else if a.disable {
                        Some(false)
                    } else {
                        None
                    },
                    overlap_policy: a.overlap.as_deref().map(|v| parsed("overlap_policy", v)).transpose()?,
                    missed_policy: a.missed.as_deref().map(|v| parsed("missed_policy", v)).transpose()?,
                    backfill_limit: a.backfill_limit,
                    jitter_ms: jitter_ms(a.jitter)?,
                };
                if patch.is_empty() {
                    return Err(FieldError::new("body", "nothing to change (give at least one option)"));
                }
                Ok(patch)
            })();
            match patch {
                Ok(patch) => store::update(&pool, a.id, &patch).await,
                Err(e) => return Ok(usage(&e)),
            }
        }
        SchedulesCommand::Delete { id } => {
            return match crate::schedule::delete_schedule(&pool, &queue(cli).await?, *id).await {
                Ok(_) => {
                    print(cli.json, &serde_json::json!({ "id": id, "deleted": true }), || {
                        println!("schedule {id} deleted")
                    });
                    Ok(0)
                }
                Err(e) => store_failure(e),
            };
        }
        SchedulesCommand::Disable { id } => {
            store::update(&pool, *id, &SchedulePatch { enabled: Some(false), ..SchedulePatch::default() })
                .await
        }
    };
    match result {
        Ok(s) => {
            print_schedules(cli.json, std::slice::from_ref(&s));
            Ok(0)
        }
        Err(e) => store_failure(e),
    }
}

async fn sync_now(cli: &Cli, connection: Uuid, objects: &[String], full: bool) -> anyhow::Result<i32> {
    let objects = if objects.is_empty() {
        crm_jobs::providers::ObjectKind::ALL.to_vec()
    } else {
        match parse_objects("objects", objects) {
            Ok(o) => o,
            Err(e) => return Ok(usage(&e)),
        }
    };
    let pool = pool(cli).await?;
    require(&cli.redis_url, "REDIS_URL", "--redis-url")?;
    let queue = crm_queue::Queue::connect(
        crm_queue::QueueConfig::new(&cli.redis_url, &cli.queue).with_prefix(&cli.redis_prefix),
    )
    .await?;
    let mode = if full { SyncMode::Full } else { SyncMode::Incremental };
    let jobs = match trigger::sync_now(&pool, &queue, connection, &objects, mode, "cli").await {
        Ok(jobs) => jobs,
        Err(TriggerError::NotFound) => {
            eprintln!("crmctl: no such connection {connection}");
            return Ok(EXIT_NOTHING);
        }
        Err(e @ (TriggerError::Disabled | TriggerError::UnknownProvider)) => {
            eprintln!("crmctl: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    if cli.json {
        println!("{}", serde_json::json!({ "connection_id": connection, "mode": mode, "jobs": jobs }));
    } else {
        println!("{:<8}  {:<36}  STATUS", "OBJECT", "JOB");
        for j in &jobs {
            let status = if j.duplicate { "already queued or running" } else { "enqueued" };
            println!("{:<8}  {:<36}  {status}", j.object.as_str(), j.job_id);
        }
    }
    Ok(0)
}

async fn sync_stale(
    cli: &Cli,
    after: Duration,
    filter: freshness::Filter,
    limit: usize,
) -> anyhow::Result<i32> {
    if after.is_zero() {
        return Ok(usage(&FieldError::new("after", "must be positive")));
    }
    if let Some(Err(e)) = filter.provider.as_deref().map(str::parse::<crm_jobs::providers::Provider>) {
        return Ok(usage(&FieldError::new("provider", e)));
    }
    let pool = pool(cli).await?;
    let now = chrono::Utc::now();
    let mut stale = freshness::stale_syncs(&pool, now, after, &filter).await.context("database")?;
    let total = stale.len();
    stale.truncate(limit);
    freshness::with_last_runs(&pool, &mut stale).await.context("database")?;
    let after_text = humantime::format_duration(after).to_string();
    let value = serde_json::json!({ "after_seconds": after.as_secs(), "total": total, "stale": stale });
    print(cli.json, &value, || {
        if total == 0 {
            println!("no stale syncs: every scheduled sync succeeded within {after_text} of its last tick");
            return;
        }
        let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M").to_string();
        println!(
            "{:<16}  {:<10}  {:<7}  {:<36}  {:>10}  {:<16}  LATEST RUN",
            "TENANT", "PROVIDER", "OBJECT", "CONNECTION", "BEHIND", "LAST SUCCESS"
        );
        for s in &stale {
            let behind = Duration::from_secs((now - s.due_at).num_seconds().max(0) as u64);
            let mut run = match &s.last_run {
                None => "none".to_owned(),
                Some(r) if r.status == "running" => {
                    format!("running since {} ({} pages)", time(r.started_at), r.pages)
                }
                Some(r) => format!(
                    "{} {}{}",
                    r.status,
                    time(r.finished_at.unwrap_or(r.started_at)),
                    r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                ),
            };
            if s.connection_status != "active" {
                run = format!("connection {}; {run}", s.connection_status);
            }
            println!(
                "{:<16}  {:<10}  {:<7}  {:<36}  {:>10}  {:<16}  {run}",
                s.tenant_id,
                s.provider,
                s.object,
                s.connection_id,
                humantime::format_duration(behind)
                    .to_string()
                    .split(' ')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
                s.last_success_at.map(time).unwrap_or_else(|| "never".to_owned()),
            );
        }
        println!(
            "{total} stale (a tick fired over {after_text} ago with no successful sync since){}",
            if total > stale.len() {
                format!("; the first {} shown (--limit)", stale.len())
            } else {
                String::new()
            }
        );
    });
    Ok(0)
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Sync(SyncCommand::Now { connection, objects, full }) => {
            sync_now(&cli, *connection, objects, *full).await
        }
        Command::Sync(SyncCommand::Stale { after, tenant, provider, limit }) => {
            let filter =
                freshness::Filter { tenant: tenant.clone(), provider: provider.clone(), connection: None };
            sync_stale(&cli, *after, filter, *limit).await
        }
        Command::Schedules(command) => schedules(&cli, command).await,
        Command::Conflicts(command) => conflicts_command(&cli, command).await,
        Command::Tenants(TenantCmd::Add { id, name, weight }) => {
            let pool = pool(&cli).await?;
            sqlx::query("INSERT INTO tenants (id, name, weight) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = $2, weight = $3")
                .bind(id)
                .bind(name)
                .bind(weight)
                .execute(&pool)
                .await?;
            print(cli.json, &serde_json::json!({ "id": id }), || println!("tenant {id} ready"));
            Ok(0)
        }
        Command::Tenants(TenantCmd::List) => {
            let pool = pool(&cli).await?;
            let rows: Vec<(String, String, i32)> =
                sqlx::query_as("SELECT id, name, weight FROM tenants ORDER BY id").fetch_all(&pool).await?;
            let v: Vec<_> =
                rows.iter().map(|(i, n, w)| serde_json::json!({"id": i, "name": n, "weight": w})).collect();
            print(cli.json, &v, || {
                println!("{:<24} {:<32} WEIGHT", "ID", "NAME");
                for (i, n, w) in &rows {
                    println!("{i:<24} {n:<32} {w}");
                }
            });
            Ok(0)
        }
        Command::Connections(ConnectionCmd::List { tenant }) => {
            let store = crm_jobs::auth::Store::new(pool(&cli).await?, keyring_or_dummy(&cli));
            let conns = store.list(tenant.as_deref()).await?;
            print(cli.json, &conns, || {
                println!(
                    "{:<36} {:<16} {:<11} {:<14} {:<13} ACCOUNT",
                    "ID", "TENANT", "PROVIDER", "AUTH", "STATUS"
                );
                for c in &conns {
                    println!(
                        "{:<36} {:<16} {:<11} {:<14} {:<13} {}",
                        c.id,
                        c.tenant_id,
                        c.provider,
                        c.auth_kind.as_str(),
                        c.status,
                        c.account_id
                    );
                }
            });
            Ok(0)
        }
        Command::Connections(ConnectionCmd::AddKey { tenant, provider, kind, api_base, account }) => {
            let provider: crm_jobs::providers::Provider =
                provider.parse().map_err(|e: String| UsageError(format!("--provider: {e}")))?;
            let kind = match kind.as_str() {
                "api_key" => crm_jobs::auth::AuthKind::ApiKey,
                "static_token" => crm_jobs::auth::AuthKind::StaticToken,
                other => usage_bail!("--kind {other:?}: expected api_key or static_token"),
            };
            let secret = read_secret()?;
            let store = crm_jobs::auth::Store::new(pool(&cli).await?, keyring(&cli)?);
            let c = store.save_key(tenant, provider, kind, &secret, api_base, account).await?;
            print(cli.json, &c, || println!("connection {} ({provider}, {}) active", c.id, c.account_id));
            Ok(0)
        }
        Command::Connections(ConnectionCmd::Link { tenant, provider, expires_in }) => {
            use crm_jobs::auth::connect::{LinkError, link};
            let provider: crm_jobs::providers::Provider = match parsed("provider", provider) {
                Ok(p) => p,
                Err(e) => return Ok(usage(&e)),
            };
            let store = crm_jobs::auth::Store::new(pool(&cli).await?, keyring(&cli)?);
            match link(&store, provider, tenant, *expires_in).await {
                Ok(l) => {
                    print(cli.json, &l, || {
                        println!("{}", l.url);
                        eprintln!(
                            "valid until {} for tenant {tenant} at {provider}",
                            l.expires_at.to_rfc3339()
                        );
                    });
                    Ok(0)
                }
                Err(LinkError::Ttl(_)) => Ok(usage(&FieldError::new("expires_in", "from 1s to 7d"))),
                Err(LinkError::UnknownTenant(t)) => {
                    eprintln!("crmctl: no tenant {t:?} (crmctl tenants add)");
                    Ok(EXIT_NOTHING)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Connections(ConnectionCmd::SetStatus { id, status }) => {
            if !["active", "disabled"].contains(&status.as_str()) {
                usage_bail!("status {status:?}: expected active or disabled");
            }
            let pool = pool(&cli).await?;
            let n = sqlx::query("UPDATE connections SET status = $2, status_reason = 'set by operator', updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(status)
                .execute(&pool)
                .await?
                .rows_affected();
            if n == 0 {
                eprintln!("crmctl: no connection {id}");
                return Ok(EXIT_NOTHING);
            }
            if status == "active" {
                // Lift any re-authorisation park so its jobs run again.
                let queue = queue(&cli).await?;
                queue.pause(&crm_jobs::enqueue::budget::connection_pause(*id), Duration::ZERO).await?;
            }
            print(cli.json, &serde_json::json!({"id": id, "status": status}), || {
                println!("connection {id} is {status}")
            });
            Ok(0)
        }
        Command::Apps(AppCmd::Set {
            provider,
            client_id,
            authorize_url,
            token_url,
            redirect_uri,
            scopes,
            api_base,
        }) => {
            let provider: crm_jobs::providers::Provider =
                provider.parse().map_err(|e: String| UsageError(format!("--provider: {e}")))?;
            let secret = read_secret()?;
            let store = crm_jobs::auth::Store::new(pool(&cli).await?, keyring(&cli)?);
            store
                .save_app(&crm_jobs::auth::OAuthApp {
                    provider,
                    client_id: client_id.clone(),
                    client_secret: secret,
                    authorize_url: authorize_url.clone(),
                    token_url: token_url.clone(),
                    revoke_url: None,
                    redirect_uri: redirect_uri.clone(),
                    scopes: scopes.clone(),
                    api_base: api_base.clone(),
                })
                .await?;
            print(cli.json, &serde_json::json!({"provider": provider.as_str(), "registered": true}), || {
                println!("{provider} OAuth app registered")
            });
            Ok(0)
        }
        Command::ApiKeys(ApiKeyCmd::Create { name, scopes }) => {
            let mut parsed = Vec::new();
            for s in scopes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                parsed.push(match s {
                    "enqueue" => crate::api::keys::Scope::Enqueue,
                    "admin" => crate::api::keys::Scope::Admin,
                    other => usage_bail!("--scopes: unknown scope {other:?} (enqueue, admin)"),
                });
            }
            if parsed.is_empty() {
                usage_bail!("--scopes: give at least one of enqueue, admin");
            }
            let pool = pool(&cli).await?;
            let (key, prefix) = crate::api::keys::create(&pool, name, &parsed).await?;
            print(cli.json, &serde_json::json!({ "key": key, "prefix": prefix }), || {
                println!("{key}");
                eprintln!("API key {prefix} for {name:?} created; it is shown only once.");
            });
            Ok(0)
        }
        Command::ApiKeys(ApiKeyCmd::List { all }) => {
            let keys = crate::api::keys::list(&pool(&cli).await?, *all).await?;
            print(cli.json, &keys, || {
                println!(
                    "{:<10} {:<24} {:<15} {:<20} {:<20} REVOKED",
                    "PREFIX", "NAME", "SCOPES", "CREATED", "LAST USED"
                );
                let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                };
                for k in &keys {
                    println!(
                        "{:<10} {:<24} {:<15} {:<20} {:<20} {}",
                        k.prefix,
                        k.name,
                        k.scopes.join(","),
                        time(Some(k.created_at)),
                        time(k.last_used_at),
                        time(k.revoked_at)
                    );
                }
            });
            Ok(0)
        }
        Command::ApiKeys(ApiKeyCmd::Revoke { key }) => {
            use crate::api::keys::{Revoked, revoke};
            match revoke(&pool(&cli).await?, key).await? {
                Revoked::Now(k) => {
                    print(cli.json, &k, || {
                        println!("API key {} ({:?}) revoked: requests with it now get 401", k.prefix, k.name)
                    });
                    Ok(0)
                }
                Revoked::Already(k) => {
                    print(cli.json, &k, || {
                        let at = k.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default();
                        println!("API key {} ({:?}) was already revoked at {at}", k.prefix, k.name)
                    });
                    Ok(0)
                }
                Revoked::Unknown => {
                    eprintln!("crmctl: no API key with that prefix (crmctl api-keys list --all)");
                    Ok(EXIT_NOTHING)
                }
            }
        }
        Command::Dlq(cmd) => dlq_command(&cli, cmd).await,
        Command::Limits(cmd) => limits_command(&cli, cmd).await,
        Command::Keys(KeyCmd::Generate) => {
            println!("{}", crm_jobs::auth::Keyring::generate_base64());
            Ok(0)
        }
        Command::Keys(KeyCmd::Rotate) => {
            let store = crm_jobs::auth::Store::new(pool(&cli).await?, keyring(&cli)?);
            let n = store.rotate_keys().await?;
            print(cli.json, &serde_json::json!({ "reencrypted": n }), || {
                println!("re-encrypted {n} rows with key {}", store.keys().current_id())
            });
            Ok(0)
        }
        Command::Migrate => {
            require(&cli.database_url, "DATABASE_URL", "--database-url")?;
            let pool = crm_jobs::storage::connect(&cli.database_url, 2, Duration::from_secs(10)).await?;
            let n = crm_jobs::storage::migrate(&pool).await.context("applying migrations")?;
            if cli.json {
                println!("{}", serde_json::json!({ "applied": n }));
            } else {
                println!("migrations applied: {n}");
            }
            Ok(0)
        }
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Queues => {
            let queue = queue(&cli).await?;
            let stats = queue.stats().await?;
            let workers = queue.workers().await?;
            let limits = queue.limits().await?;
            let pauses = queue.pauses().await?;
            let redis_warnings = queue.server_warnings().await;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "queue": cli.queue, "stats": stats, "redis_warnings": redis_warnings,
                        "workers": workers.iter().map(|(w, t)| serde_json::json!({"id": w, "last_seen_ms": t})).collect::<Vec<_>>(),
                        "limits": limits.iter().map(|(k, v)| (k.clone(), describe(v))).collect::<std::collections::BTreeMap<_, _>>(),
                        "pauses": pauses,
                    })
                );
            } else {
                println!("queue {}", cli.queue);
                for w in &redis_warnings {
                    println!("  WARNING: {w}");
                }
                println!(
                    "  ready {:>10}   oldest ready {:>8.1}s",
                    stats.ready,
                    stats.oldest_ready_age_ms as f64 / 1000.0
                );
                println!(
                    "  delayed {:>8}   leased {:>10}   dying {:>6}",
                    stats.delayed, stats.leased, stats.dying
                );
                println!(
                    "  lanes: {} active, {} sleeping; {} budgets with blocked lanes",
                    stats.active_lanes, stats.sleeping_lanes, stats.blocked_budgets
                );
                println!("  workers ({}):", workers.len());
                for (w, t) in workers {
                    println!("    {w}  last seen {t}");
                }
                if !limits.is_empty() {
                    println!("  limits:");
                    let mut l: Vec<_> = limits.into_iter().collect();
                    l.sort_by(|a, b| a.0.cmp(&b.0));
                    for (k, v) in l {
                        println!("    {k:<40} {}", describe(&v));
                    }
                }
                for (k, until) in pauses {
                    println!("  paused {k} until {until}");
                }
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
