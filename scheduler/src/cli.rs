//! `crmctl`, the operator CLI. Each subcommand is a function over typed arguments; output is a
//! table by default and JSON with `--json`. Exit codes: 0 success, 1 a failed operation,
//! 64 bad configuration or usage.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
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
    require(&cli.redis_url, "REDIS_URL")?;
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

fn require(value: &str, name: &str) -> anyhow::Result<()> {
    if value.is_empty() {
        anyhow::bail!(
            "{name} is required (flag --{} or environment {name})",
            name.to_lowercase().replace('_', "-")
        );
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
        anyhow::bail!("no secret given: pipe it on stdin or set CRM_FLEET_SECRET");
    }
    Ok(secrecy::SecretString::from(s))
}

async fn pool(cli: &Cli) -> anyhow::Result<sqlx::PgPool> {
    require(&cli.database_url, "DATABASE_URL")?;
    Ok(crm_jobs::storage::connect(&cli.database_url, 2, Duration::from_secs(10)).await?)
}

fn keyring(cli: &Cli) -> anyhow::Result<std::sync::Arc<crm_jobs::auth::Keyring>> {
    require(&cli.token_key, "CRM_FLEET_TOKEN_KEY")?;
    let previous: Vec<String> = cli
        .token_keys_previous
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(std::sync::Arc::new(crm_jobs::auth::Keyring::from_base64(&cli.token_key, &previous)?))
}

fn print<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce()) {
    if json {
        println!("{}", serde_json::to_string(value).unwrap_or_default());
    } else {
        text();
    }
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
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
            let provider: crm_jobs::providers::Provider = provider.parse().map_err(anyhow::Error::msg)?;
            let kind = match kind.as_str() {
                "api_key" => crm_jobs::auth::AuthKind::ApiKey,
                "static_token" => crm_jobs::auth::AuthKind::StaticToken,
                other => anyhow::bail!("--kind {other:?}: expected api_key or static_token"),
            };
            let secret = read_secret()?;
            let store = crm_jobs::auth::Store::new(pool(&cli).await?, keyring(&cli)?);
            let c = store.save_key(tenant, provider, kind, &secret, api_base, account).await?;
            print(cli.json, &c, || println!("connection {} ({provider}, {}) active", c.id, c.account_id));
            Ok(0)
        }
        Command::Connections(ConnectionCmd::SetStatus { id, status }) => {
            if !["active", "disabled"].contains(&status.as_str()) {
                anyhow::bail!("status {status:?}: expected active or disabled");
            }
            let pool = pool(&cli).await?;
            let n = sqlx::query("UPDATE connections SET status = $2, status_reason = 'set by operator', updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(status)
                .execute(&pool)
                .await?
                .rows_affected();
            if n == 0 {
                anyhow::bail!("no connection {id}");
            }
            if status == "active" {
                // Lift any re-authorisation park so its jobs run again.
                let queue = queue(&cli).await?;
                queue.pause(&crm_jobs::enqueue::budget::connection_pause(*id), Duration::ZERO).await?;
            }
            println!("connection {id} is {status}");
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
            let provider: crm_jobs::providers::Provider = provider.parse().map_err(anyhow::Error::msg)?;
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
            println!("{provider} OAuth app registered");
            Ok(0)
        }
        Command::ApiKeys(ApiKeyCmd::Create { name, scopes }) => {
            let mut parsed = Vec::new();
            for s in scopes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                parsed.push(match s {
                    "enqueue" => crate::api::keys::Scope::Enqueue,
                    "admin" => crate::api::keys::Scope::Admin,
                    other => anyhow::bail!("--scopes: unknown scope {other:?} (enqueue, admin)"),
                });
            }
            if parsed.is_empty() {
                anyhow::bail!("--scopes: give at least one of enqueue, admin");
            }
            let pool = pool(&cli).await?;
            let (key, prefix) = crate::api::keys::create(&pool, name, &parsed).await?;
            print(cli.json, &serde_json::json!({ "key": key, "prefix": prefix }), || {
                println!("{key}");
                eprintln!("API key {prefix} for {name:?} created; it is shown only once.");
            });
            Ok(0)
        }
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
            require(&cli.database_url, "DATABASE_URL")?;
            let pool = crm_jobs::storage::connect(&cli.database_url, 2, Duration::from_secs(10)).await?;
            let n = crm_jobs::storage::migrate(&pool).await.context("applying migrations")?;
            if cli.json {
                println!("{}", serde_json::json!({ "applied": n }));
            } else {
                println!("migrations applied: {n}");
            }
            Ok(0)
        }
        Command::Queues => {
            let queue = queue(&cli).await?;
            let stats = queue.stats().await?;
            let workers = queue.workers().await?;
            let limits = queue.limits().await?;
            let pauses = queue.pauses().await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "queue": cli.queue, "stats": stats,
                        "workers": workers.iter().map(|(w, t)| serde_json::json!({"id": w, "last_seen_ms": t})).collect::<Vec<_>>(),
                        "limits": limits.iter().map(|(k, v)| (k.clone(), format!("{v:?}"))).collect::<std::collections::BTreeMap<_, _>>(),
                        "pauses": pauses,
                    })
                );
            } else {
                println!("queue {}", cli.queue);
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
                        println!("    {k:<40} {v:?}");
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
