//! `GET /metrics`: Prometheus text exposition, hand-rolled.
//!
//! Requests are counted by route *pattern* (`/v1/licenses/{id}`, never the raw path, so the
//! label set stays bounded), method and status; latency is a histogram per route pattern.
//! The ledger adds its log head, the read model's applied position and lag, and the store's
//! write counters. The route needs no token: it exposes no secret and no customer data.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use parking_lot::RwLock;

use super::error::{ApiError, ErrorBody};
use super::AppState;

/// Upper bounds (seconds) of the latency histogram's buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Label of requests no route matched.
const UNMATCHED: &str = "unmatched";

#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative), then one for `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }
}

/// Route pattern, method, status.
type RequestKey = (String, &'static str, u16);

/// The HTTP request counters, shared by every worker.
#[derive(Default)]
pub struct HttpMetrics {
    requests: RwLock<HashMap<RequestKey, Arc<AtomicU64>>>,
    latency: RwLock<HashMap<String, Arc<Histogram>>>,
}

/// A method label from a bounded set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl HttpMetrics {
    /// Counts one request of `route` (a matched pattern, or `None`) that answered `status`
    /// after `elapsed` (until its headers; a streamed body is not included).
    pub fn record(&self, route: Option<&str>, method: &Method, status: u16, elapsed: Duration) {
        let route = route.unwrap_or(UNMATCHED);
        let key = (route.to_owned(), method_label(method), status);
        let counter = self.requests.read().get(&key).cloned();
        let counter = match counter {
            Some(c) => c,
            None => self.requests.write().entry(key).or_default().clone(),
        };
        counter.fetch_add(1, Relaxed);
        let hist = self.latency.read().get(route).cloned();
        let hist = match hist {
            Some(h) => h,
            None => self
                .latency
                .write()
                .entry(route.to_owned())
                .or_default()
                .clone(),
        };
        hist.observe(elapsed);
    }

    fn render(&self, out: &mut String) {
        let mut requests: Vec<_> = self
            .requests
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Relaxed)))
            .collect();
        requests.sort();
        out.push_str("# HELP ledger_http_requests_total HTTP requests by route pattern, method and status.\n");
        out.push_str("# TYPE ledger_http_requests_total counter\n");
        for ((route, method, status), n) in requests {
            let _ = writeln!(
                out,
                "ledger_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                escape(&route)
            );
        }
        let mut latency: Vec<_> = self
            .latency
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        latency.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP ledger_http_request_duration_seconds Time to answer (until the headers) by route pattern.\n");
        out.push_str("# TYPE ledger_http_request_duration_seconds histogram\n");
        for (route, h) in latency {
            let route = escape(&route);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "ledger_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += h.buckets[LATENCY_BUCKETS.len()].load(Relaxed);
            let _ = writeln!(
                out,
                "ledger_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "ledger_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum_nanos.load(Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "ledger_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count.load(Relaxed)
            );
        }
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Prometheus metrics: requests by route and status, latency histograms, the log's head and
/// the read model's lag. No token needed.
#[utoipa::path(get, path = "/metrics", tag = "service", security(()),
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 503, body = ErrorBody)))]
pub async fn metrics(
    state: web::Data<AppState>,
    http: web::Data<HttpMetrics>,
) -> Result<HttpResponse, ApiError> {
    let head = state.ledger.head().await?.position;
    let applied = state.ledger.view().position();
    let mut out = String::with_capacity(4096);
    http.render(&mut out);
    gauge(
        &mut out,
        "ledger_log_head_position",
        "gauge",
        "Position of the last durable record.",
        head,
    );
    gauge(
        &mut out,
        "ledger_projection_position",
        "gauge",
        "Last position the read models have applied.",
        applied,
    );
    gauge(
        &mut out,
        "ledger_projection_lag",
        "gauge",
        "Records stored but not yet applied by the read models.",
        head.saturating_sub(applied),
    );
    gauge(
        &mut out,
        "ledger_appends_total",
        "counter",
        "Appends stored by this server since it started (retries excluded).",
        state.ledger.appends(),
    );
    let q = &state.quotas.counters;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    out.push_str("# HELP ledger_quota_records_skipped_total Check-ins answered but not recorded by a write quota (token: the terminal token's terminal_records_per_minute; changes: the terminal's terminal_changes_per_hour).\n# TYPE ledger_quota_records_skipped_total counter\n");
    let _ = writeln!(
        out,
        "ledger_quota_records_skipped_total{{quota=\"token\"}} {}\nledger_quota_records_skipped_total{{quota=\"changes\"}} {}",
        load(&q.records_skipped_token),
        load(&q.records_skipped_changes)
    );
    out.push_str("# HELP ledger_quota_refused_total Requests answered 429 by a write quota (binds: terminal_records_per_minute; unknown_terminals: unknown_terminals_per_day; relay_events: relay_events_per_minute).\n# TYPE ledger_quota_refused_total counter\n");
    let _ = writeln!(
        out,
        "ledger_quota_refused_total{{quota=\"binds\"}} {}\nledger_quota_refused_total{{quota=\"unknown_terminals\"}} {}\nledger_quota_refused_total{{quota=\"relay_events\"}} {}",
        load(&q.binds_refused),
        load(&q.unknown_terminals_refused),
        load(&q.relay_forwards_refused)
    );
    if let Some(s) = state.ledger.store_stats() {
        gauge(
            &mut out,
            "ledger_records_written_total",
            "counter",
            "Records written by the store since it was opened.",
            s.records_written,
        );
        gauge(
            &mut out,
            "ledger_write_batches_total",
            "counter",
            "Write batches of the store since it was opened.",
            s.write_batches,
        );
        gauge(
            &mut out,
            "ledger_fsyncs_total",
            "counter",
            "Durability rounds (fdatasync) since the store was opened.",
            s.syncs,
        );
        gauge(
            &mut out,
            "ledger_fsync_seconds_total",
            "counter",
            "Time spent in durability rounds, seconds.",
            s.sync_seconds,
        );
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_pattern_and_renders_cumulative_buckets() {
        let m = HttpMetrics::default();
        m.record(
            Some("/v1/licenses/{id}"),
            &Method::GET,
            200,
            Duration::from_micros(300),
        );
        m.record(
            Some("/v1/licenses/{id}"),
            &Method::GET,
            200,
            Duration::from_millis(3),
        );
        m.record(
            None,
            &Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::from_secs(5),
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "ledger_http_requests_total{route=\"/v1/licenses/{id}\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(out.contains(
            "ledger_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"} 1"
        ));
        assert!(out.contains(
            "ledger_http_request_duration_seconds_bucket{route=\"/v1/licenses/{id}\",le=\"0.0005\"} 1"
        ));
        assert!(out.contains(
            "ledger_http_request_duration_seconds_bucket{route=\"/v1/licenses/{id}\",le=\"0.005\"} 2"
        ));
        assert!(out.contains(
            "ledger_http_request_duration_seconds_bucket{route=\"unmatched\",le=\"2.5\"} 0"
        ));
        assert!(out.contains(
            "ledger_http_request_duration_seconds_bucket{route=\"unmatched\",le=\"+Inf\"} 1"
        ));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
