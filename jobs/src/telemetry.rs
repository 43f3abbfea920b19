//! Logging and metrics setup shared by the binaries.
//!
//! Logs are structured (`key=value`, or JSON with `CRM_FLEET_LOG_FORMAT=json`), filtered by
//! `RUST_LOG` (default `info`). Metrics go through the `metrics` facade into a Prometheus
//! recorder whose rendering each binary serves at `/metrics`. Invariant: metric labels come
//! from closed sets (outcome, job type, provider, state), never tenant ids or error strings.

use std::collections::HashMap;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable key=value lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not a log format (text or json)")),
        }
    }
}

/// Installs the global tracing subscriber (once; later calls are ignored).
pub fn init_logging(format: LogFormat) {
    let _ = init("crm-fleet", format, None);
}

/// The running telemetry: flush it before exit.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends buffered spans and stops the exporter (call last, after the process drained).
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.force_flush() {
                eprintln!("telemetry: flushing spans failed: {e}");
            }
            let _ = p.shutdown();
        }
    }
}

/// Installs logging and, when `otlp_endpoint` is set (`OTEL_EXPORTER_OTLP_ENDPOINT`), an
/// OpenTelemetry exporter of traces over OTLP/HTTP, with W3C trace-context propagation.
pub fn init(service: &'static str, format: LogFormat, otlp_endpoint: Option<&str>) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let provider = otlp_endpoint.filter(|e| !e.is_empty()).and_then(|endpoint| {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        match opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(url).build() {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                    .build(),
            ),
            Err(e) => {
                eprintln!("telemetry: OTLP exporter unavailable ({e}); traces are off");
                None
            }
        }
    });
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match format {
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init()
        }
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
            .try_init(),
    };
    Telemetry { provider }
}

/// The W3C `traceparent` of the current span (to carry in a job), if tracing is on.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote context named by a W3C `traceparent`.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let carrier: HashMap<String, String> = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }
}

/// Installs the global Prometheus recorder and returns the handle that renders it. Histogram
/// buckets are set for job and request durations (seconds).
pub fn init_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // A recorder is already installed (tests running several apps in one process):
                // render from a private recorder instead of failing.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe_metrics();
            metrics::gauge!("crm_fleet_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            metrics::gauge!("crm_fleet_process_start_time_seconds").set(started);
            handle
        })
        .clone()
}

/// HELP text and units of every metric (the catalogue of `docs/telemetry.md`, which a test
/// checks against a scrape).
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("crm_fleet_build_info", "Version of the running binary (always 1).");
    describe_gauge!("crm_fleet_process_start_time_seconds", Unit::Seconds, "Unix time the process started.");
    describe_counter!("crm_fleet_jobs_enqueued_total", Unit::Count, "Jobs pushed (duplicates not counted).");
    describe_counter!(
        "crm_fleet_jobs_completed_total",
        Unit::Count,
        "Job attempts finished, by outcome (success, retry, deferred, dead, lease_lost, abandoned) and job type."
    );
    describe_histogram!(
        "crm_fleet_job_duration_seconds",
        Unit::Seconds,
        "Time a job attempt ran in the handler."
    );
    describe_histogram!(
        "crm_fleet_job_wait_seconds",
        Unit::Seconds,
        "Time from enqueue to the first lease (first attempts only)."
    );
    describe_counter!("crm_fleet_jobs_orphaned_total", Unit::Count, "Jobs reclaimed from expired leases.");
    describe_counter!(
        "crm_fleet_leases_lost_total",
        Unit::Count,
        "Running jobs whose lease was reclaimed before they finished."
    );
    describe_counter!("crm_fleet_queue_errors_total", Unit::Count, "Failed queue operations, by operation.");
    describe_gauge!("crm_fleet_queue_depth", Unit::Count, "Jobs in the queue, by state.");
    describe_gauge!("crm_fleet_queue_oldest_age_seconds", Unit::Seconds, "Age of the oldest ready job.");
    describe_gauge!(
        "crm_fleet_queue_runnable",
        Unit::Count,
        "Ready jobs a worker could take now (not held by a full concurrency budget, a pause or a rate budget)."
    );
    describe_gauge!(
        "crm_fleet_queue_held",
        Unit::Count,
        "Ready jobs whose lane admission set aside, by reason (blocked, sleeping)."
    );
    describe_gauge!(
        "crm_fleet_dead_letters",
        Unit::Count,
        "Dead letters not yet replayed, by provider and error class."
    );
    describe_counter!("crm_fleet_dead_letters_purged_total", Unit::Count, "Dead letters purged.");
    describe_counter!(
        "crm_fleet_actions_repushed_total",
        Unit::Count,
        "Actions found without a job and pushed again by the re-push sweep."
    );
    describe_counter!(
        "crm_fleet_provider_requests_total",
        Unit::Count,
        "HTTP requests to CRMs, by provider, operation and status class."
    );
    describe_histogram!(
        "crm_fleet_provider_request_duration_seconds",
        Unit::Seconds,
        "Duration of HTTP requests to CRMs."
    );
    describe_counter!(
        "crm_fleet_provider_throttled_total",
        Unit::Count,
        "Throttled answers from CRMs (429 and equivalents), by provider and scope."
    );
    describe_gauge!("crm_fleet_circuit_open", "1 while a provider's circuit breaker is open or half-open.");
    describe_histogram!(
        "crm_fleet_limiter_wait_seconds",
        Unit::Seconds,
        "Time a sync waited for a rate token between pages."
    );
    describe_gauge!(
        "crm_fleet_limiter_slots_in_use",
        Unit::Count,
        "Jobs holding a provider's fleet-wide concurrency slot."
    );
    describe_gauge!("crm_fleet_limiter_paused", Unit::Count, "Pauses in force, by provider and scope.");
    describe_gauge!("crm_fleet_connections", Unit::Count, "CRM connections, by provider and status.");
    describe_gauge!(
        "crm_fleet_syncs_stale",
        Unit::Count,
        "Scheduled syncs of active connections with a tick fired more than the grace ago and no success since, by provider and object."
    );
    describe_gauge!(
        "crm_fleet_sync_conflicts_open",
        Unit::Count,
        "Sync conflicts (remote changes over a local pending change) not yet resolved, by provider."
    );
    describe_counter!(
        "crm_fleet_token_refreshes_total",
        Unit::Count,
        "OAuth token refreshes, by provider and outcome (ok, invalid_grant, error)."
    );
    describe_histogram!(
        "crm_fleet_token_refresh_duration_seconds",
        Unit::Seconds,
        "Duration of OAuth token refresh requests."
    );
    describe_counter!(
        "crm_fleet_sync_records_total",
        Unit::Count,
        "Records written by syncs, by provider and operation (created, updated, deleted, unchanged)."
    );
    describe_counter!(
        "crm_fleet_scheduler_ticks_total",
        Unit::Count,
        "Scheduled (tick, object) pairs, by outcome (enqueued, duplicate, skipped)."
    );
    describe_histogram!(
        "crm_fleet_scheduler_lag_seconds",
        Unit::Seconds,
        "Delay from a tick's firing time to its push returning."
    );
    describe_gauge!("crm_fleet_scheduler_is_leader", "1 while this scheduler replica holds the lease.");
    describe_counter!(
        "crm_fleet_http_requests_total",
        Unit::Count,
        "Control-plane API requests, by route and status class."
    );
    describe_histogram!(
        "crm_fleet_http_request_duration_seconds",
        Unit::Seconds,
        "Duration of control-plane API requests."
    );
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(message = "SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!(message = "SIGINT received"),
                }
            }
            Err(error) => {
                tracing::warn!(message = "cannot listen for SIGTERM; Ctrl-C only", %error);
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
