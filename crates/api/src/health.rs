//! Liveness and readiness probes.

use crate::{AppState, Error};
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::time::Duration;

/// How long readiness waits for the database before calling it unreachable.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /healthz`: the process is up and serving. Touches nothing else, so a slow database
/// never gets a healthy process restarted.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers and its schema is the one this build expects; 503
/// otherwise, so a load balancer sends no traffic to a process that could only fail it.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Error> {
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
    Ok(Json(json!({ "status": "ready" })))
}
