//! `GET /v1/usage?from=&to=&group_by=day|model|kind`: the caller's tokens and cost over
//! `[from, to)`, grouped, from `usage_events` only, with their quota status; and how a refused
//! quota reaches the client (413 for storage, 429 for tokens, the message naming the budget
//! and the use).

use crate::params::Query;
use crate::schemas;
use crate::{AppState, Auth, Error, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ragpipe_store::quotas::{self, Exceeded, QuotaError, QuotaStatus};
use ragpipe_store::usage::{self, GroupBy, Period, UsageReport};
use serde::{Deserialize, Serialize};

/// Query of `GET /v1/usage`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// First instant counted: a date (`2026-11-01`, midnight UTC) or an RFC 3339 time
    /// (default: the start of the current month, UTC).
    pub from: Option<String>,
    /// First instant not counted (default: the start of next month).
    pub to: Option<String>,
    /// `day` (default), `model` or `kind`.
    #[param(value_type = Option<schemas::GroupBy>, default = "day")]
    pub group_by: Option<GroupBy>,
}

/// What `GET /v1/usage` returns.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UsageReport)]
pub struct UsageResponse {
    /// `from`, `to`, `group_by`, `rows`, `total`.
    #[serde(flatten)]
    #[schema(value_type = UsageSums)]
    pub report: UsageReport,
    /// The caller's budgets and their use in the current period.
    #[schema(value_type = schemas::QuotaStatus)]
    pub quota: QuotaStatus,
}

/// The caller's usage events in `[from, to)`, grouped: the shape of the store's usage report,
/// which `GET /v1/usage` answers with beside the quota status.
#[derive(Debug, utoipa::ToSchema)]
pub struct UsageSums {
    /// First instant counted.
    pub from: chrono::DateTime<chrono::Utc>,
    /// First instant not counted.
    pub to: chrono::DateTime<chrono::Utc>,
    /// How the rows are grouped.
    pub group_by: schemas::GroupBy,
    /// One per group with at least one event, by key.
    pub rows: Vec<schemas::UsageRow>,
    /// The sums of every event in the period.
    pub total: schemas::UsageTotals,
}

/// `GET /v1/usage`.
#[utoipa::path(
    get,
    operation_id = "get_usage",
    path = "/v1/usage",
    tag = "usage",
    summary = "Model usage: tokens, requests and cost, grouped",
    description = "The caller's usage events in `[from, to)`, summed per UTC day, model or kind, \
        with the total, and the caller's quota status.",
    params(UsageParams),
    responses(
        (status = 200, description = "The rows, their total and the quota status", body = UsageResponse),
        (status = 400, description = "A bound that is not a date or RFC 3339 time, `to` not after \
            `from`, an unknown `group_by` or parameter (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
    ),
)]
pub async fn usage(
    State(state): State<AppState>,
    auth: Auth,
    Query(params): Query<UsageParams>,
) -> Result<Json<UsageResponse>, Error> {
    let period = Period::from_bounds_now(params.from.as_deref(), params.to.as_deref()).map_err(Error::bad_request)?;
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let report = usage::report(&mut tx, period, params.group_by.unwrap_or_default()).await?;
    let quota = quotas::status(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(UsageResponse { report, quota }))
}

/// The error for a quota check that refused (or could not be made), counted in
/// `ragpipe_quota_refusals_total{quota}`.
pub fn refused(e: QuotaError) -> Error {
    if let QuotaError::Exceeded(exceeded) = &e {
        let quota = match exceeded {
            Exceeded::MonthlyTokens { .. } => "monthly_tokens",
            Exceeded::StorageBytes { .. } => "storage_bytes",
        };
        tracing::info!(quota, reason = %exceeded, "refused by a quota");
        metrics::counter!("ragpipe_quota_refusals_total", "quota" => quota).increment(1);
    }
    e.into()
}

/// A budget that refuses the request: storage is 413 (the upload is too large for what is
/// left), tokens are 429 (used up until the period rolls over).
impl From<Exceeded> for Error {
    fn from(e: Exceeded) -> Error {
        let (status, code) = match e {
            Exceeded::MonthlyTokens { .. } => (StatusCode::TOO_MANY_REQUESTS, "token_budget_exceeded"),
            Exceeded::StorageBytes { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "storage_budget_exceeded"),
        };
        Error::new(status, code, e.to_string())
    }
}

impl From<QuotaError> for Error {
    fn from(e: QuotaError) -> Error {
        match e {
            QuotaError::Exceeded(e) => e.into(),
            QuotaError::Store(e) => e.into(),
        }
    }
}
