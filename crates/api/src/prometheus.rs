//! `GET /metrics` in the Prometheus text format.
//!
//! Two sources. Everything recorded through the `metrics` facade anywhere in the process
//! (`metrics::counter!`, `histogram!`, ... in the API, the workers, the model client) goes to
//! the Prometheus recorder installed by [`install_recorder`] and is rendered from its handle;
//! those crates depend on the facade only, not on this one. And at scrape time, gauges read
//! from the database: queue depth and age of the oldest waiting job per queue, documents by
//! status across all users. Those are rendered here directly rather than set on the global
//! recorder, so two apps in one process (tests) never see each other's values.

use crate::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ragpipe_core::DocumentStatus;
use ragpipe_store::jobs::{AGENT_QUEUE, INGEST_QUEUE};
use ragpipe_store::liveness::ComponentReport;
use ragpipe_store::monitoring::{self, Snapshot};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// Buckets for every histogram whose name ends in `_seconds` (HTTP latency, ingest stages,
/// model calls): 5 ms to 5 min. Other histograms render as summaries.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets for the stages of streaming an answer (`ragpipe_answer_stream_*_seconds`: a write of
/// streamed text, a reader's read of it), which take milliseconds: 0.25 ms to 1 s.
const STREAM_STAGE_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 1.0,
];

/// The process-wide Prometheus recorder's handle, installing the recorder on first use.
///
/// The `metrics` facade has one global recorder per process, so this installs it at most once
/// and every caller (each `AppState`, tests starting many apps) shares it. If some other
/// recorder was installed first, the handle still renders, but only what was recorded into it:
/// nothing, which a warning says.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(Matcher::Prefix("ragpipe_answer_stream_".to_owned()), STREAM_STAGE_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics shows only database gauges");
            }
            handle
        })
        .clone()
}

/// `GET /metrics`. Always 200: when the database cannot be read the process metrics are still
/// served, with `ragpipe_metrics_database_up 0` in place of the database gauges.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let snapshot = match monitoring::snapshot(&state.store).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: reading database gauges failed");
            None
        }
    };
    // Histograms are folded into their buckets here; with no exporter thread, each scrape
    // does the upkeep.
    state.metrics.run_upkeep();
    let mut body = state.metrics.render();
    render_database_gauges(&mut body, snapshot.as_ref());
    render_components(&mut body, &state.liveness.report());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Appends the database gauges. Every known queue and status gets a line, zero when it has
/// nothing, so series do not vanish when a queue drains.
pub fn render_database_gauges(out: &mut String, snapshot: Option<&Snapshot>) {
    gauge_header(
        out,
        "ragpipe_metrics_database_up",
        "Whether the database gauges below could be read (1) or not (0).",
    );
    let _ = writeln!(out, "ragpipe_metrics_database_up {}", u8::from(snapshot.is_some()));
    let Some(snapshot) = snapshot else {
        return;
    };

    let mut depth: BTreeMap<&str, i64> = [INGEST_QUEUE, AGENT_QUEUE].into_iter().map(|q| (q, 0)).collect();
    let mut age: BTreeMap<&str, f64> = [INGEST_QUEUE, AGENT_QUEUE].into_iter().map(|q| (q, 0.0)).collect();
    for q in &snapshot.queues {
        depth.insert(&q.queue, q.waiting);
        age.insert(&q.queue, q.oldest_waiting_seconds);
    }
    gauge_header(
        out,
        "ragpipe_queue_depth",
        "Jobs waiting in the queue: new, and failed with attempts left (taken jobs not counted).",
    );
    for (queue, n) in &depth {
        let _ = writeln!(out, "ragpipe_queue_depth{{queue=\"{}\"}} {n}", escape_label(queue));
    }
    gauge_header(
        out,
        "ragpipe_queue_oldest_job_age_seconds",
        "Seconds since the oldest waiting job became due (0 when none is due).",
    );
    for (queue, seconds) in &age {
        let _ = writeln!(
            out,
            "ragpipe_queue_oldest_job_age_seconds{{queue=\"{}\"}} {seconds}",
            escape_label(queue)
        );
    }

    let mut by_status: BTreeMap<&str, i64> = DocumentStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for s in &snapshot.documents {
        by_status.insert(&s.status, s.documents);
    }
    gauge_header(
        out,
        "ragpipe_documents",
        "Documents by pipeline status, across all users.",
    );
    for (status, n) in &by_status {
        let _ = writeln!(out, "ragpipe_documents{{status=\"{}\"}} {n}", escape_label(status));
    }
}

/// Appends the supervised components' health (from the process's registry, read now, so a
/// component that stopped beating shows as down even though nothing recorded it):
/// `ragpipe_worker_up` (1 running with a fresh heartbeat, else 0),
/// `ragpipe_worker_restarts_total` and `ragpipe_worker_heartbeat_age_seconds`, labelled by
/// `component` and, for queue workers, `queue`. Nothing when the process supervises nothing.
pub fn render_components(out: &mut String, components: &[ComponentReport]) {
    if components.is_empty() {
        return;
    }
    let labels = |c: &ComponentReport| match &c.queue {
        Some(q) => format!("component=\"{}\",queue=\"{}\"", escape_label(&c.name), escape_label(q)),
        None => format!("component=\"{}\"", escape_label(&c.name)),
    };
    gauge_header(
        out,
        "ragpipe_worker_up",
        "Whether a supervised component (queue worker, message feed) is running with a fresh heartbeat.",
    );
    for c in components {
        let _ = writeln!(out, "ragpipe_worker_up{{{}}} {}", labels(c), u8::from(c.up));
    }
    metric_header(
        out,
        "ragpipe_worker_restarts_total",
        "counter",
        "Times a supervised component was restarted after its connection or run failed.",
    );
    for c in components {
        let _ = writeln!(out, "ragpipe_worker_restarts_total{{{}}} {}", labels(c), c.restarts);
    }
    gauge_header(
        out,
        "ragpipe_worker_heartbeat_age_seconds",
        "Seconds since a supervised component's last heartbeat (absent before the first).",
    );
    for c in components {
        if let Some(age) = c.seconds_since_heartbeat {
            let _ = writeln!(out, "ragpipe_worker_heartbeat_age_seconds{{{}}} {age:.3}", labels(c));
        }
    }
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    metric_header(out, name, "gauge", help);
}

fn metric_header(out: &mut String, name: &str, kind: &str, help: &str) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value as the text format requires (backslash, quote, newline).
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragpipe_store::monitoring::{QueueStats, StatusCount};

    #[test]
    fn database_gauges_cover_every_known_queue_and_status() {
        let snapshot = Snapshot {
            queues: vec![QueueStats {
                queue: INGEST_QUEUE.to_owned(),
                waiting: 3,
                oldest_waiting_seconds: 1.5,
            }],
            documents: vec![StatusCount {
                status: "queued".to_owned(),
                documents: 3,
            }],
        };
        let mut out = String::new();
        render_database_gauges(&mut out, Some(&snapshot));
        assert!(out.contains("ragpipe_metrics_database_up 1\n"), "{out}");
        assert!(
            out.contains("ragpipe_queue_depth{queue=\"ragpipe.ingest\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("ragpipe_queue_depth{queue=\"ragpipe.agent\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("ragpipe_queue_oldest_job_age_seconds{queue=\"ragpipe.ingest\"} 1.5\n"),
            "{out}"
        );
        assert!(out.contains("ragpipe_documents{status=\"queued\"} 3\n"), "{out}");
        assert!(out.contains("ragpipe_documents{status=\"failed\"} 0\n"), "{out}");
        assert_eq!(out.matches("# TYPE ragpipe_documents gauge").count(), 1);
    }

    #[test]
    fn an_unreadable_database_is_reported_not_hidden() {
        let mut out = String::from("some_counter 1");
        render_database_gauges(&mut out, None);
        assert!(out.starts_with("some_counter 1\n# HELP"), "{out}");
        assert!(out.ends_with("ragpipe_metrics_database_up 0\n"), "{out}");
    }

    #[test]
    fn components_render_up_restarts_and_heartbeat_age() {
        let liveness = ragpipe_store::liveness::Liveness::new();
        let ingest = liveness.register("ingest", Some(INGEST_QUEUE), std::time::Duration::from_secs(5));
        ingest.heartbeat();
        let feed = liveness.register("message_feed", None, std::time::Duration::from_secs(2));
        feed.heartbeat();
        feed.restarting(&"connection lost");
        let mut out = String::new();
        render_components(&mut out, &liveness.report());
        assert!(
            out.contains("ragpipe_worker_up{component=\"ingest\",queue=\"ragpipe.ingest\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("ragpipe_worker_up{component=\"message_feed\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("ragpipe_worker_restarts_total{component=\"message_feed\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE ragpipe_worker_restarts_total counter\n"), "{out}");
        let mut empty = String::new();
        render_components(&mut empty, &[]);
        assert!(empty.is_empty());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
