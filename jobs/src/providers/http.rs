//! The one HTTP client every provider client shares, and the plumbing around a request:
//! authentication headers, transport-error classification, metrics and a tracing span.
//!
//! Transport errors are classified by whether the request may have reached the provider: a
//! connect failure never did (transient); a timeout or a dropped connection after sending might
//! have (outcome-unknown for non-idempotent requests, transient for reads). Only method and
//! path are logged; headers and bodies never are.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::ExposeSecret;
use tracing::Instrument;

use super::{Auth, Credential, Provider, ProviderError};

/// Per-request timeout. CRM APIs answer in well under a second normally; 30 s covers slow
/// searches without letting a hung connection hold a worker for long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Quota information a response revealed (any field may be absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QuotaObservation {
    /// Requests allowed in the short window.
    pub limit: Option<u64>,
    /// Requests left in the short window.
    pub remaining: Option<u64>,
    /// The short window's length.
    pub window: Option<Duration>,
    /// Time until the short window resets.
    pub reset_after: Option<Duration>,
    /// Daily (or 24 h) allocation.
    pub daily_limit: Option<u64>,
    /// Daily allocation left.
    pub daily_remaining: Option<u64>,
}

impl QuotaObservation {
    /// Whether the response carried any quota header.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A response read into memory.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl RawResponse {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header as a number.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.trim().parse::<f64>().ok()).map(|f| f.max(0.0) as u64)
    }

    /// `Retry-After` in seconds (the delta-seconds form).
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.max(0.0)))
    }

    /// The body as JSON (a protocol error when it is not).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| ProviderError::Protocol {
            status: self.status.as_u16(),
            message: format!("unreadable JSON body: {e}"),
        })
    }

    /// The body as loosely-typed JSON (`Null` when it is not JSON).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text, shortened for error messages and stripped of anything token-like
    /// (error messages are logged and kept in dead letters). Control characters become spaces:
    /// a NUL cannot be stored in PostgreSQL text, and escapes have no place in a log line.
    pub fn snippet(&self) -> String {
        snippet(&self.body)
    }
}

/// See [`RawResponse::snippet`].
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(300).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(300).is_some() {
        s.push('…');
    }
    scrub_tokens(&s)
}

/// Replaces every run of 24 or more token characters (letters, digits, `-._~+=`) that mixes
/// letters and digits — the shape of access tokens, API keys and secrets, not of words, paths,
/// record ids or dates — with `[redacted]`. UUIDs are kept (they name records, not secrets).
pub fn scrub_tokens(s: &str) -> String {
    fn token_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || "-._~+=".contains(c)
    }
    fn flush(run: &mut String, out: &mut String) {
        let secretish = run.chars().count() >= 24
            && run.chars().any(|c| c.is_ascii_digit())
            && run.chars().any(|c| c.is_ascii_alphabetic())
            && uuid::Uuid::try_parse(run).is_err();
        out.push_str(if secretish { "[redacted]" } else { run });
        run.clear();
    }
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    for c in s.chars() {
        if token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The shared HTTP client (rustls with ring, no redirects, bounded timeouts). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    /// A client with the default timeouts.
    pub fn new() -> Result<Self, reqwest::Error> {
        Self::with_timeout(DEFAULT_TIMEOUT)
    }

    /// A client with a given request timeout.
    pub fn with_timeout(timeout: Duration) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("crm-fleet/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }

    /// The underlying reqwest client (for the OAuth adapter).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A request builder for `method` on `auth`'s API, authenticated.
    pub fn request(&self, method: Method, auth: &Auth, path: &str) -> Result<RequestBuilder, ProviderError> {
        let url = auth.url(path)?;
        Ok(authorize(self.client.request(method, url), &auth.credential))
    }

    /// A request builder for an absolute URL, authenticated.
    pub fn request_url(&self, method: Method, auth: &Auth, url: url::Url) -> RequestBuilder {
        authorize(self.client.request(method, url), &auth.credential)
    }

    /// Sends a request and reads the whole response. `idempotent` says whether repeating it is
    /// harmless, which decides how a lost answer is classified.
    pub async fn send(
        &self,
        provider: Provider,
        op: &'static str,
        request: RequestBuilder,
        idempotent: bool,
    ) -> Result<RawResponse, ProviderError> {
        let request =
            request.build().map_err(|e| ProviderError::Protocol { status: 0, message: e.to_string() })?;
        let method = request.method().clone();
        let path = request.url().path().to_owned();
        let span = tracing::info_span!("provider.request", provider = provider.as_str(), op, http.method = %method,
            url.path = %path, http.status_code = tracing::field::Empty);
        let started = Instant::now();
        let result = async {
            let resp = self.client.execute(request).await.map_err(|e| transport_error(&e, idempotent))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(|e| transport_error(&e, idempotent))?;
            Ok::<_, ProviderError>(RawResponse { status, headers, body })
        }
        .instrument(span.clone())
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let status_class = match &result {
            Ok(r) => {
                span.record("http.status_code", r.status.as_u16());
                match r.status.as_u16() {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    429 => "429",
                    400..=499 => "4xx",
                    _ => "5xx",
                }
            }
            Err(ProviderError::OutcomeUnknown { .. }) => "timeout",
            Err(_) => "error",
        };
        metrics::counter!("crm_fleet_provider_requests_total", "provider" => provider.as_str(), "op" => op, "status" => status_class)
            .increment(1);
        metrics::histogram!("crm_fleet_provider_request_duration_seconds", "provider" => provider.as_str(), "op" => op)
            .record(elapsed);
        tracing::debug!(parent: &span, message = "provider request", status = status_class, elapsed_ms = (elapsed * 1000.0) as u64);
        result
    }
}

fn authorize(builder: RequestBuilder, credential: &Credential) -> RequestBuilder {
    match credential {
        Credential::Bearer(t) => builder.bearer_auth(t.expose_secret()),
        Credential::ZohoOauth(t) => {
            let mut v = HeaderValue::from_str(&format!("Zoho-oauthtoken {}", t.expose_secret()))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            v.set_sensitive(true);
            builder.header(reqwest::header::AUTHORIZATION, v)
        }
        Credential::ApiTokenHeader(t) => {
            let mut v =
                HeaderValue::from_str(t.expose_secret()).unwrap_or_else(|_| HeaderValue::from_static(""));
            v.set_sensitive(true);
            builder.header("x-api-token", v)
        }
        Credential::BasicKey(k) => builder.basic_auth(k.expose_secret(), Some("")),
    }
}

fn transport_error(e: &reqwest::Error, idempotent: bool) -> ProviderError {
    // reqwest's Display may include the URL; our URLs never carry secrets (tokens go in headers).
    let message = e.to_string();
    if e.is_connect() {
        return ProviderError::Transient {
            status: None,
            retry_after: None,
            message: format!("connect failed: {message}"),
        };
    }
    if idempotent {
        ProviderError::Transient { status: None, retry_after: None, message }
    } else {
        ProviderError::OutcomeUnknown { message }
    }
}

/// Maps the statuses every provider shares (5xx → transient) and leaves the rest to the
/// provider's own mapping. Returns `None` for statuses the caller must map.
pub fn common_status(resp: &RawResponse) -> Option<ProviderError> {
    let s = resp.status.as_u16();
    if (500..=599).contains(&s) {
        return Some(ProviderError::Transient {
            status: Some(s),
            retry_after: resp.retry_after(),
            message: format!("HTTP {s}: {}", resp.snippet()),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{scrub_tokens, snippet};

    #[test]
    fn snippets_are_short_single_line_and_free_of_nul() {
        assert_eq!(snippet(b"bad\0value\r\n\x1b[31mred"), "bad value   [31mred");
        let long = snippet("é".repeat(400).as_bytes());
        assert_eq!(long.chars().count(), 301, "300 characters and an ellipsis");
        assert!(long.ends_with('…'));
        assert_eq!(
            snippet("é".repeat(300).as_bytes()).chars().count(),
            300,
            "no ellipsis when nothing was cut"
        );
    }

    #[test]
    fn token_shapes_are_scrubbed_and_the_rest_kept() {
        let msg = "invalid token pat-na1-11111111-2222-4333-8444-555555555555x for 003xx000004TmiQAAS \
                   at /services/data/v59.0/sobjects on 2026-11-23T10:00:00Z: Bearer 00Dxx0000001gPL!AQ4AQFmRk7q9Z2vN8yS1tH3uJ6wK0eC5bD \
                   record 5f0c7a36-8b1e-4c55-9a2b-1d2e3f405162";
        let out = scrub_tokens(msg);
        assert!(!out.contains("pat-na1-11111111"), "{out}");
        assert!(!out.contains("AQ4AQFmRk7q9Z2vN8yS1tH3uJ6wK0eC5bD"), "{out}");
        for kept in [
            "invalid token",
            "003xx000004TmiQAAS",
            "/services/data/v59.0/sobjects",
            "2026-11-23T10:00:00Z",
            "5f0c7a36-8b1e-4c55-9a2b-1d2e3f405162",
        ] {
            assert!(out.contains(kept), "{kept} kept in {out}");
        }
    }
}
