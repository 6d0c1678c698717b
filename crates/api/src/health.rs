//! Liveness and readiness probes.

use crate::{AppState, Error};
use axum::Json;
use axum::extract::State;
use ragpipe_store::liveness::State as ComponentState;
use serde_json::{Value, json};
use std::time::Duration;

/// How long readiness waits for the database before calling it unreachable.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /healthz`: the process is up and serving. Touches nothing else, so a slow database
/// never gets a healthy process restarted.
#[utoipa::path(
    get,
    operation_id = "healthz",
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process is up", body = crate::schemas::Health,
        example = json!({"status": "ok"}))),
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: every supervised component of the process (queue workers, message feed) is
/// running with a fresh heartbeat, the database answers and its schema is the one this build
/// expects; 503 otherwise, so a load balancer sends no traffic to a process that could only
/// fail it. A dead or stale component is named in the error's message; when ready, the body
/// lists the components (`components`, omitted in a process that supervises none).
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Error> {
    let components = state.liveness.report();
    let unhealthy: Vec<String> = components
        .iter()
        .filter_map(|c| {
            let reason = c.reason.as_deref()?;
            let what = match &c.queue {
                Some(queue) => format!("{} worker ({queue})", c.name),
                None => c.name.clone(),
            };
            let state = if c.stale { "stale" } else { state_name(c.state) };
            Some(format!("{what} is {state}: {reason}"))
        })
        .collect();
    if !unhealthy.is_empty() {
        return Err(Error::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "component_down",
            format!("not ready: {}", unhealthy.join("; ")),
        ));
    }
    let pending = tokio::time::timeout(READY_TIMEOUT, state.store.pending_migrations())
        .await
        .map_err(|_| Error::unavailable(format!("readiness: database did not answer within {READY_TIMEOUT:?}")))?
        .map_err(|e| Error::unavailable(format!("readiness: {e}")))?;
    if !pending.is_empty() {
        return Err(Error::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "migrations_pending",
            format!(
                "the database schema is behind this build: run `ragpipe migrate` ({} pending)",
                pending.len()
            ),
        ));
    }
    if components.is_empty() {
        return Ok(Json(json!({ "status": "ready" })));
    }
    Ok(Json(json!({ "status": "ready", "components": components })))
}

fn state_name(state: ComponentState) -> &'static str {
    match state {
        ComponentState::Starting => "starting",
        ComponentState::Running => "running",
        ComponentState::Restarting => "restarting",
        ComponentState::Dead => "dead",
        ComponentState::Stopped => "stopped",
    }
}
