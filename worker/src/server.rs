//! The worker's small HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process is
//! up) and `/readyz` (Redis and PostgreSQL answer). It stops with the process.

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub(crate) struct State {
    pub metrics: PrometheusHandle,
    pub pool: sqlx::PgPool,
    pub queue: crm_queue::Queue,
}

pub(crate) async fn serve(listener: TcpListener, state: State, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(|AxumState(s): AxumState<State>| async move { s.metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!(message = "metrics listener failed", %error);
    }
}

async fn readyz(AxumState(s): AxumState<State>) -> (StatusCode, String) {
    let redis = s.queue.ping().await;
    let pg = sqlx::query("SELECT 1").execute(&s.pool).await;
    match (redis, pg) {
        (Ok(()), Ok(_)) => (StatusCode::OK, "ready".into()),
        (r, p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "redis: {}; postgres: {}",
                r.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
                p.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string())
            ),
        ),
    }
}
