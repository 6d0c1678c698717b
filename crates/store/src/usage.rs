//! Usage events: append-only, idempotent by key; and the usage report (grouped totals over a
//! period), for one user through their transaction or for all users as the operator.

use crate::operator::Reason;
use crate::{Store, StoreError, UserTx};
use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Utc};
use uuid::Uuid;

/// Kind of model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    /// Embedding requests.
    Embedding,
    /// A chat completion.
    Chat,
    /// A `/rerank` call over a search's fused top N.
    Rerank,
}

impl UsageKind {
    /// The name stored in `usage_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageKind::Embedding => "embedding",
            UsageKind::Chat => "chat",
            UsageKind::Rerank => "rerank",
        }
    }
}

/// Who caused a model call: the user (an upload, a question) or an operator's reprocessing run,
/// which quotas do not charge to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageOrigin {
    /// An upload or a question.
    #[default]
    User,
    /// A batch reprocessing run.
    Reprocess,
}

impl UsageOrigin {
    /// The name stored in `usage_events.origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageOrigin::User => "user",
            UsageOrigin::Reprocess => "reprocess",
        }
    }
}

/// One usage event to record.
#[derive(Debug, Clone)]
pub struct NewUsage<'a> {
    /// Kind.
    pub kind: UsageKind,
    /// Model.
    pub model: &'a str,
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens served from the embedding cache (not sent, not in `prompt_tokens`).
    pub cached_tokens: u64,
    /// Requests made.
    pub requests: u32,
    /// Cost in the price table's currency.
    pub cost: f64,
    /// Derived from the job and its subject so a retry records nothing new.
    pub idempotency_key: String,
    /// Document it was for.
    pub document_id: Option<Uuid>,
    /// Message it was for.
    pub message_id: Option<Uuid>,
    /// Agent request it was for.
    pub request_id: Option<Uuid>,
    /// Who caused it.
    pub origin: UsageOrigin,
}

/// Records the event unless one with the same idempotency key exists. Returns whether it was new.
pub async fn record(tx: &mut UserTx, e: &NewUsage<'_>) -> Result<bool, StoreError> {
    let user = tx.user_id().0;
    let inserted = sqlx::query!(
        "INSERT INTO usage_events (user_id, kind, model, prompt_tokens, completion_tokens, requests, cost, \
                                   idempotency_key, document_id, message_id, request_id, cached_tokens, origin) \
         VALUES ($1, $2, $3, $4, $5, $6, ($7::float8)::numeric, $8, $9, $10, $11, $12, $13) ON CONFLICT (idempotency_key) DO NOTHING",
        user,
        e.kind.as_str(),
        e.model,
        e.prompt_tokens as i64,
        e.completion_tokens as i64,
        e.requests as i32,
        e.cost,
        e.idempotency_key,
        e.document_id,
        e.message_id,
        e.request_id,
        e.cached_tokens as i64,
        e.origin.as_str(),
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording usage"))?
    .rows_affected();
    Ok(inserted == 1)
}

/// What a usage report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// The UTC day the event was recorded (`2026-11-23`).
    #[default]
    Day,
    /// The model.
    Model,
    /// `embedding`, `chat` or `rerank`.
    Kind,
}

impl GroupBy {
    /// The name in `group_by=` and `--by`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Model => "model",
            GroupBy::Kind => "kind",
        }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<GroupBy, String> {
        match s {
            "day" => Ok(GroupBy::Day),
            "model" => Ok(GroupBy::Model),
            "kind" => Ok(GroupBy::Kind),
            other => Err(format!("cannot group usage by {other:?}: use day, model or kind")),
        }
    }
}

/// The half-open interval `[from, to)` a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Period {
    /// First instant counted.
    pub from: DateTime<Utc>,
    /// First instant not counted.
    pub to: DateTime<Utc>,
}

impl Period {
    /// `[from, to)`, refused unless `from` is before `to`.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Period, String> {
        if from < to {
            Ok(Period { from, to })
        } else {
            Err(format!("`from` ({from}) must be before `to` ({to})"))
        }
    }

    /// The calendar month (UTC) that holds `at`, the period quotas count tokens over.
    pub fn month_of(at: DateTime<Utc>) -> Period {
        let date = at.date_naive();
        let first = date.with_day(1).unwrap_or(date);
        let next = first.checked_add_months(Months::new(1)).unwrap_or(NaiveDate::MAX);
        Period {
            from: first.and_time(NaiveTime::MIN).and_utc(),
            to: next.and_time(NaiveTime::MIN).and_utc(),
        }
    }

    /// The period from optional bounds (see [`parse_instant`]), each defaulting to that of the
    /// calendar month (UTC) holding now.
    pub fn from_bounds_now(from: Option<&str>, to: Option<&str>) -> Result<Period, String> {
        Period::from_bounds(from, to, Utc::now())
    }

    /// The period from optional bounds, each defaulting to that of the month holding `now`.
    pub fn from_bounds(from: Option<&str>, to: Option<&str>, now: DateTime<Utc>) -> Result<Period, String> {
        let month = Period::month_of(now);
        let from = from.map(parse_instant).transpose()?.unwrap_or(month.from);
        let to = to.map(parse_instant).transpose()?.unwrap_or(month.to);
        Period::new(from, to)
    }
}

/// A report bound: a date (`2026-11-01`, midnight UTC) or an RFC 3339 instant
/// (`2026-11-01T12:00:00Z`, `2026-11-01T13:00:00+01:00`).
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(date.and_time(NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is neither a date (2026-11-01) nor an RFC 3339 time (2026-11-01T12:00:00Z): {e}"))
}

/// Sums over a set of usage events.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageTotals {
    /// Usage events.
    pub events: i64,
    /// Model requests made.
    pub requests: i64,
    /// Input tokens sent to models.
    pub prompt_tokens: i64,
    /// Output tokens.
    pub completion_tokens: i64,
    /// Input tokens served from the embedding cache (not sent, not charged).
    pub cached_tokens: i64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: i64,
    /// The part of `total_tokens` that counts against quotas (origin `user`; reprocessing runs
    /// are reported but not charged).
    pub charged_tokens: i64,
    /// Cost from the price table in force when each event was recorded.
    pub cost: f64,
}

/// The totals of one group.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageRow {
    /// The day (`2026-11-23`), model or kind.
    pub key: String,
    /// Its sums.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Usage over a period, grouped, with the grand total.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageReport {
    /// First instant counted.
    pub from: DateTime<Utc>,
    /// First instant not counted.
    pub to: DateTime<Utc>,
    /// What the groups are.
    pub group_by: GroupBy,
    /// One row per group with at least one event, by key.
    pub rows: Vec<UsageRow>,
    /// All events of the period (zeros when none).
    pub total: UsageTotals,
}

/// A checked statement that groups per-day rows by `$3` with a grand total (the empty grouping
/// set) in one pass. `$by_day` (a string literal) gives the per-day rows: the acting user's
/// (`$4`) events, or every user's from `ragpipe_usage_by_day()`, so both reports group
/// identically. Costs are summed as `numeric` and converted once, so the total is the exact sum.
macro_rules! query_report {
    ($by_day:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query!(
            "WITH by_day AS (" + $by_day + r#"),
                  keyed AS (SELECT CASE $3 WHEN 'day' THEN to_char(day::timestamp, 'YYYY-MM-DD')
                                           WHEN 'model' THEN model ELSE kind END AS key, *
                            FROM by_day)
             SELECT key, grouping(key) = 1 AS "is_total!",
                    coalesce(sum(events), 0)::bigint AS "events!", coalesce(sum(requests), 0)::bigint AS "requests!",
                    coalesce(sum(prompt_tokens), 0)::bigint AS "prompt_tokens!",
                    coalesce(sum(completion_tokens), 0)::bigint AS "completion_tokens!",
                    coalesce(sum(cached_tokens), 0)::bigint AS "cached_tokens!",
                    coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint AS "total_tokens!",
                    coalesce(sum(prompt_tokens + completion_tokens) FILTER (WHERE origin = 'user'), 0)::bigint
                        AS "charged_tokens!",
                    coalesce(sum(cost), 0)::float8 AS "cost!"
             FROM keyed GROUP BY GROUPING SETS ((key), ()) ORDER BY 2, key"#
            $(, $arg)*
        )
    };
}

/// Reads [`query_report!`]'s rows.
macro_rules! grouped_rows {
    ($rows:expr) => {
        $rows
            .into_iter()
            .map(|r| GroupedRow {
                key: r.key,
                is_total: r.is_total,
                totals: UsageTotals {
                    events: r.events,
                    requests: r.requests,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    cached_tokens: r.cached_tokens,
                    total_tokens: r.total_tokens,
                    charged_tokens: r.charged_tokens,
                    cost: r.cost,
                },
            })
            .collect::<Vec<_>>()
    };
}

/// A row of [`query_report!`]: a group, or (`is_total`) the grand total.
struct GroupedRow {
    key: Option<String>,
    is_total: bool,
    totals: UsageTotals,
}

fn assemble(period: Period, group_by: GroupBy, grouped: Vec<GroupedRow>) -> UsageReport {
    let mut rows = Vec::with_capacity(grouped.len());
    let mut total = None;
    for row in grouped {
        if row.is_total {
            total = Some(row.totals);
        } else {
            rows.push(UsageRow {
                // Days, models and kinds are never NULL.
                key: row.key.unwrap_or_default(),
                totals: row.totals,
            });
        }
    }
    UsageReport {
        from: period.from,
        to: period.to,
        group_by,
        rows,
        // The empty grouping set always yields a row; zeros stand in should it not.
        total: total.unwrap_or(UsageTotals {
            events: 0,
            requests: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
            total_tokens: 0,
            charged_tokens: 0,
            cost: 0.0,
        }),
    }
}

/// The acting user's usage over `period`, grouped by `group_by`.
pub async fn report(tx: &mut UserTx, period: Period, group_by: GroupBy) -> Result<UsageReport, StoreError> {
    let user = tx.user_id().0;
    let rows = query_report!(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, model, kind, origin, count(*) AS events,
                sum(requests)::bigint AS requests, sum(prompt_tokens)::bigint AS prompt_tokens,
                sum(completion_tokens)::bigint AS completion_tokens, sum(cached_tokens)::bigint AS cached_tokens,
                sum(cost) AS cost
         FROM usage_events WHERE user_id = $4 AND created_at >= $1 AND created_at < $2 GROUP BY 1, 2, 3, 4",
        period.from,
        period.to,
        group_by.as_str(),
        user,
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading the usage report"))?;
    let grouped = grouped_rows!(rows);
    Ok(assemble(period, group_by, grouped))
}

/// Every user's usage over `period`, grouped by `group_by`: the operator's report.
///
/// Runs as the application role with no acting user, like the monitoring reads
/// ([`crate::monitoring`]): `usage_events` is user data under forced row-level security, so the rows
/// come from `ragpipe_usage_by_day()`, which sees every event and returns per-day aggregates
/// only.
pub async fn report_all(store: &Store, period: Period, group_by: GroupBy) -> Result<UsageReport, StoreError> {
    let mut tx = store.operator_tx(Reason::UsageReport).await?;
    let rows = query_report!(
        "SELECT * FROM ragpipe_usage_by_day($1, $2)",
        period.from,
        period.to,
        group_by.as_str(),
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading the all-users usage report"))?;
    let grouped = grouped_rows!(rows);
    tx.commit().await?;
    Ok(assemble(period, group_by, grouped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .expect("a valid instant")
    }

    #[test]
    fn bounds_are_dates_or_rfc3339_instants() {
        assert_eq!(parse_instant("2026-11-01"), Ok(utc(2026, 11, 1, 0)));
        assert_eq!(parse_instant("2026-11-01T12:00:00Z"), Ok(utc(2026, 11, 1, 12)));
        assert_eq!(parse_instant("2026-11-01T13:00:00+01:00"), Ok(utc(2026, 11, 1, 12)));
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("2026-13-01").is_err());
    }

    #[test]
    fn the_default_period_is_the_current_utc_month_and_bounds_must_be_ordered() {
        let now = utc(2026, 12, 31, 23);
        assert_eq!(
            Period::from_bounds(None, None, now),
            Ok(Period {
                from: utc(2026, 12, 1, 0),
                to: utc(2027, 1, 1, 0)
            })
        );
        assert_eq!(
            Period::from_bounds(Some("2026-11-05"), None, now).map(|p| (p.from, p.to)),
            Ok((utc(2026, 11, 5, 0), utc(2027, 1, 1, 0)))
        );
        assert!(Period::from_bounds(Some("2026-11-05"), Some("2026-11-05"), now).is_err());
        assert!(Period::from_bounds(Some("2026-11-06"), Some("2026-11-05"), now).is_err());
    }

    #[test]
    fn group_names_round_trip() {
        for g in [GroupBy::Day, GroupBy::Model, GroupBy::Kind] {
            assert_eq!(g.as_str().parse::<GroupBy>(), Ok(g));
        }
        assert!("user".parse::<GroupBy>().is_err());
    }
}
