//! Traces across processes: a real `crm-scheduler` and a real `crm-worker` export OTLP to a small
//! receiver in this test; the API request span and the provider HTTP span must share a trace id.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use crm_jobs::providers::Provider;
use crm_jobs::testing::eventually;
use crm_sandbox::config::ProviderKind;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;
use serde_json::{Value, json};

use crate::fleet::Fleet;

/// (trace id, span name, service name) of every span received.
type Spans = Arc<Mutex<Vec<(String, String, String)>>>;

async fn receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(req) = ExportTraceServiceRequest::decode(body) {
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.as_ref())
                            .map(|v| format!("{:?}", v.value))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                sink.lock().push((hex::encode(&s.trace_id), s.name.clone(), service.clone()));
                            }
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_request_and_the_provider_call_share_one_trace_across_processes() {
    let (otlp, spans) = receiver().await;
    let mut f = Fleet::start(&[ProviderKind::HubSpot]).await;
    let (_conn, _account) = f
        .connect(
            "acme",
            Provider::Hubspot,
            json!({ "records": 1, "quota": crate::fleet::unlimited(Provider::Hubspot) }),
        )
        .await;
    f.spawn_workers(1, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)]);
    let mut scheduler = f.spawn_scheduler(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)]);
    let base = scheduler.base.clone();
    let (key, _) = crm_scheduler::api::keys::create(
        &f.env.db.pool,
        "traces",
        &[crm_scheduler::api::keys::Scope::Enqueue],
    )
    .await
    .expect("key");
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp: Value = f
        .http
        .post(format!("{base}/v1/actions"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "trace-1")
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .json(&json!({ "tenant_id": "acme", "provider": "hubspot", "action": "create_task", "params": { "subject": "traced" } }))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = resp["job_id"].as_str().expect("job id").to_owned();
    eventually(Duration::from_secs(30), "action done", || async { f.succeeded().await == 1 }).await;
    // Spans are exported in batches: stop both processes, which flush on shutdown.
    for p in [scheduler.child.id(), f.workers[0].child.id()] {
        let _ = Command::new("kill").arg("-TERM").arg(p.to_string()).status();
    }
    let _ = scheduler.child.wait();
    let _ = f.workers[0].child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let done = {
            let s = spans.lock();
            s.iter().any(|(t, n, _)| t == caller_trace && n == "http.request")
                && s.iter().any(|(t, n, _)| t == caller_trace && n == "provider.request")
        };
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans of both processes not received: {:?}",
            spans.lock()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = spans.lock().clone();
    let trace: Vec<&(String, String, String)> = s.iter().filter(|(t, _, _)| t == caller_trace).collect();
    let services: std::collections::HashSet<&str> = trace.iter().map(|(_, _, svc)| svc.as_str()).collect();
    assert!(
        services.iter().any(|x| x.contains("crm-scheduler"))
            && services.iter().any(|x| x.contains("crm-worker")),
        "one trace across both processes: {trace:?}"
    );
    assert!(trace.iter().any(|(_, n, _)| n == "job"), "the job attempt is in the trace: {trace:?}");
    let _ = id;
}
