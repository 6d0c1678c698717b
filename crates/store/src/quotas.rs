//! Quotas: a monthly token budget and a storage budget per plan (`plans`), overridable per user
//! (`user_quotas`); migration `..._quotas.sql`.
//!
//! Tokens are the prompt and completion tokens of the user's usage events of origin `user`
//! since the start of the calendar month (UTC): a reprocessing run is reported but never
//! charged, and a retried job adds nothing because its event is keyed. Storage is the bytes of
//! the user's documents. A budget of `None` is unlimited.
//!
//! Reading a user's budgets and use goes through their [`UserTx`]; changing budgets is an
//! operator's act (`ragpipe plans set`, `ragpipe users quota`) and runs as the pool's role.

use crate::operator::Reason;
use crate::{Store, StoreError, UserTx};
use chrono::{DateTime, Utc};
use ragpipe_core::UserId;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// A budget a plan sets and a user may have their own of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// Prompt + completion tokens per calendar month (UTC).
    MonthlyTokens,
    /// Bytes of uploaded documents kept.
    StorageBytes,
}

impl Quota {
    /// The name in `user_quotas.quota` (and the column of `plans`).
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::MonthlyTokens => "monthly_tokens",
            Quota::StorageBytes => "storage_bytes",
        }
    }
}

/// Whose setting a user's budget comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSource {
    /// The user's plan.
    Plan,
    /// An override for this user.
    User,
}

/// One budget and how much of it is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// The budget; `None`: unlimited.
    pub limit: Option<i64>,
    /// Used so far (tokens this period, or bytes stored).
    pub used: i64,
    /// Where `limit` comes from.
    pub source: BudgetSource,
}

/// A user's budgets and use, read in one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaStatus {
    /// The user's plan.
    pub plan: String,
    /// Start of the token period: the first instant of the current calendar month, UTC.
    pub period_start: DateTime<Utc>,
    /// Tokens used since `period_start` (origin `user` only).
    pub monthly_tokens: Budget,
    /// Bytes of the user's documents.
    pub storage_bytes: Budget,
}

/// A budget that refuses the work asked for. The message names the budget and the use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    /// The month's tokens have reached the budget.
    #[error("monthly token budget of {limit} tokens is used up ({used} used since {})", since.format("%Y-%m-%d"))]
    MonthlyTokens {
        /// The budget.
        limit: i64,
        /// Tokens used this period.
        used: i64,
        /// Start of the period.
        since: DateTime<Utc>,
    },
    /// The new bytes would take storage over the budget.
    #[error("storage budget of {limit} bytes would be exceeded: {used} bytes stored, this upload adds {adding}")]
    StorageBytes {
        /// The budget.
        limit: i64,
        /// Bytes stored now.
        used: i64,
        /// Bytes the upload would add.
        adding: i64,
    },
}

/// Why work was refused: a budget, or the database could not tell.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// A budget refuses it.
    #[error(transparent)]
    Exceeded(#[from] Exceeded),
    /// Reading budgets or use failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QuotaStatus {
    /// Refuses once the period's tokens have reached the budget. What a question or an upload
    /// will cost is known only after the model has answered, so the last one of a period may
    /// go over; the next is refused.
    pub fn check_tokens(&self) -> Result<(), Exceeded> {
        match self.monthly_tokens.limit {
            Some(limit) if self.monthly_tokens.used >= limit => Err(Exceeded::MonthlyTokens {
                limit,
                used: self.monthly_tokens.used,
                since: self.period_start,
            }),
            _ => Ok(()),
        }
    }

    /// Refuses `adding` new bytes when they would take storage over the budget. Adding nothing
    /// (an upload of bytes already stored) is always allowed, even over a lowered budget.
    pub fn check_storage(&self, adding: i64) -> Result<(), Exceeded> {
        match self.storage_bytes.limit {
            Some(limit) if adding > 0 && self.storage_bytes.used.saturating_add(adding) > limit => {
                Err(Exceeded::StorageBytes {
                    limit,
                    used: self.storage_bytes.used,
                    adding,
                })
            }
            _ => Ok(()),
        }
    }
}

struct StatusRow {
    plan: String,
    period_start: DateTime<Utc>,
    tokens_limit: Option<i64>,
    tokens_override: bool,
    tokens_used: i64,
    storage_limit: Option<i64>,
    storage_override: bool,
    storage_used: i64,
}

/// The acting user's budgets and use (`NotFound` when the user does not exist).
pub async fn status(tx: &mut UserTx) -> Result<QuotaStatus, StoreError> {
    // `now()` is the transaction's start, so the period and the sums agree with each other.
    let user = tx.user_id().0;
    let row = sqlx::query_as!(
        StatusRow,
        r#"SELECT u.plan, period.start AS "period_start!",
                CASE WHEN t.user_id IS NULL THEN p.monthly_tokens ELSE t.budget END AS tokens_limit,
                t.user_id IS NOT NULL AS "tokens_override!",
                (SELECT coalesce(sum(e.prompt_tokens + e.completion_tokens), 0)::bigint FROM usage_events e
                 WHERE e.user_id = u.id AND e.origin = 'user' AND e.created_at >= period.start) AS "tokens_used!",
                CASE WHEN s.user_id IS NULL THEN p.storage_bytes ELSE s.budget END AS storage_limit,
                s.user_id IS NOT NULL AS "storage_override!",
                (SELECT coalesce(sum(d.byte_size), 0)::bigint FROM documents d WHERE d.user_id = u.id) AS "storage_used!"
         FROM users u
         CROSS JOIN (SELECT date_trunc('month', now(), 'UTC') AS start) period
         JOIN plans p ON p.name = u.plan
         LEFT JOIN user_quotas t ON t.user_id = u.id AND t.quota = 'monthly_tokens'
         LEFT JOIN user_quotas s ON s.user_id = u.id AND s.quota = 'storage_bytes'
         WHERE u.id = $1"#,
        user,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading the user's quotas"))?
    .ok_or(StoreError::NotFound("user"))?;
    let source = |overridden: bool| {
        if overridden {
            BudgetSource::User
        } else {
            BudgetSource::Plan
        }
    };
    Ok(QuotaStatus {
        plan: row.plan,
        period_start: row.period_start,
        monthly_tokens: Budget {
            limit: row.tokens_limit,
            used: row.tokens_used,
            source: source(row.tokens_override),
        },
        storage_bytes: Budget {
            limit: row.storage_limit,
            used: row.storage_used,
            source: source(row.storage_override),
        },
    })
}

/// Refuses a question once the month's tokens are used up.
pub async fn check_question(tx: &mut UserTx) -> Result<(), QuotaError> {
    status(tx).await?.check_tokens()?;
    Ok(())
}

/// Refuses an upload of `files` (size and sha256 of each) once the month's tokens are used up
/// (ingesting costs embedding tokens), or when its new bytes would take storage over the
/// budget. Bytes the user already has (same sha256, which the upload returns instead of
/// storing again) and repeats within the upload are not counted.
///
/// Call it in the transaction that stores the files, before storing them: it locks the user's
/// row until that transaction ends, so two uploads of one user are checked one after the other
/// and cannot both fit into the same remaining space.
pub async fn check_upload(
    tx: &mut UserTx,
    files: impl IntoIterator<Item = (u64, [u8; 32])>,
) -> Result<QuotaStatus, QuotaError> {
    // FOR NO KEY UPDATE: conflicts with another upload's lock, not with inserts of rows that
    // reference the user (those take KEY SHARE).
    let user = tx.user_id().0;
    sqlx::query!("SELECT 1 AS locked FROM users WHERE id = $1 FOR NO KEY UPDATE", user)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::db("locking the user for the quota check"))?;
    let status = status(tx).await?;
    status.check_tokens()?;
    if status.storage_bytes.limit.is_some() {
        let mut seen = HashSet::new();
        let files: Vec<(i64, Vec<u8>)> = files
            .into_iter()
            .filter(|(_, sha)| seen.insert(*sha))
            .map(|(len, sha)| (i64::try_from(len).unwrap_or(i64::MAX), sha.to_vec()))
            .collect();
        let shas: Vec<Vec<u8>> = files.iter().map(|(_, sha)| sha.clone()).collect();
        let stored = sqlx::query_scalar!(
            "SELECT sha256 FROM documents WHERE user_id = $1 AND sha256 = ANY($2)",
            user,
            &shas,
        )
        .fetch_all(tx.conn())
        .await
        .map_err(StoreError::db("finding the upload's files among the stored documents"))?;
        let stored: HashSet<Vec<u8>> = stored.into_iter().collect();
        let adding = files
            .iter()
            .filter(|(_, sha)| !stored.contains(sha))
            .fold(0i64, |sum, (len, _)| sum.saturating_add(*len));
        status.check_storage(adding)?;
    }
    Ok(status)
}

/// A plan's budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Its name (`users.plan`).
    pub name: String,
    /// Tokens per calendar month; `None`: unlimited.
    pub monthly_tokens: Option<i64>,
    /// Bytes stored; `None`: unlimited.
    pub storage_bytes: Option<i64>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Every plan, by name. Plans are not user data ([`Reason::Shared`]).
pub async fn plans(store: &Store) -> Result<Vec<Plan>, StoreError> {
    let mut tx = store.operator_tx(Reason::Shared).await?;
    let plans = sqlx::query_as!(
        Plan,
        "SELECT name, monthly_tokens, storage_bytes, updated_at FROM plans ORDER BY name"
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading the plans"))?;
    tx.commit().await?;
    Ok(plans)
}

/// A budget to set: a number, or unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// No budget.
    Unlimited,
    /// At most this many tokens (per month) or bytes.
    At(i64),
}

impl Limit {
    fn value(self) -> Option<i64> {
        match self {
            Limit::Unlimited => None,
            Limit::At(n) => Some(n),
        }
    }
}

impl FromStr for Limit {
    type Err = String;

    /// `unlimited` or a non-negative integer (`_` separators allowed: `1_000_000`).
    fn from_str(s: &str) -> Result<Limit, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("unlimited") {
            return Ok(Limit::Unlimited);
        }
        s.replace('_', "")
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Limit::At)
            .ok_or_else(|| format!("{s:?} is neither `unlimited` nor a non-negative integer"))
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Unlimited => f.write_str("unlimited"),
            Limit::At(n) => write!(f, "{n}"),
        }
    }
}

/// Sets a plan's budgets; `None` leaves one as it is. `NotFound` for an unknown plan.
pub async fn set_plan(
    store: &Store,
    name: &str,
    monthly_tokens: Option<Limit>,
    storage_bytes: Option<Limit>,
) -> Result<Plan, StoreError> {
    let mut tx = store.operator_tx(Reason::Shared).await?;
    let plan = sqlx::query_as!(
        Plan,
        "UPDATE plans SET monthly_tokens = CASE WHEN $2 THEN $3 ELSE monthly_tokens END, \
                          storage_bytes = CASE WHEN $4 THEN $5 ELSE storage_bytes END, \
                          updated_at = now() \
         WHERE name = $1 RETURNING name, monthly_tokens, storage_bytes, updated_at",
        name,
        monthly_tokens.is_some(),
        monthly_tokens.and_then(Limit::value),
        storage_bytes.is_some(),
        storage_bytes.and_then(Limit::value),
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("changing a plan's budgets"))?
    .ok_or(StoreError::NotFound("plan"))?;
    tx.commit().await?;
    Ok(plan)
}

/// A user's own budget: the plan's, or one of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserBudget {
    /// Follow the plan (removes the override).
    Plan,
    /// This budget whatever the plan says.
    Own(Limit),
}

impl FromStr for UserBudget {
    type Err = String;

    /// `plan`, `unlimited` or a non-negative integer.
    fn from_str(s: &str) -> Result<UserBudget, String> {
        if s.trim().eq_ignore_ascii_case("plan") {
            return Ok(UserBudget::Plan);
        }
        s.parse::<Limit>()
            .map(UserBudget::Own)
            .map_err(|_| format!("{s:?} is not `plan`, `unlimited` or a non-negative integer"))
    }
}

/// Sets (or, with [`UserBudget::Plan`], removes) a user's own budget for `quota`.
///
/// `ragpipe_app` may only read `user_quotas` (a user must never raise their own budget), so
/// this runs as the pool's role, the schema owner, in a transaction that sets the user: the
/// table's policy still bounds the write to that user's rows. `NotFound` for an unknown user.
pub async fn set_user_budget(store: &Store, user: UserId, quota: Quota, budget: UserBudget) -> Result<(), StoreError> {
    let mut tx = store.operator_tx(Reason::QuotaChange(user)).await?;
    match budget {
        UserBudget::Plan => {
            sqlx::query!(
                "DELETE FROM user_quotas WHERE user_id = $1 AND quota = $2",
                user.0,
                quota.as_str(),
            )
            .execute(tx.conn())
            .await
            .map_err(StoreError::db("removing a user's budget"))?;
        }
        UserBudget::Own(limit) => {
            sqlx::query!(
                "INSERT INTO user_quotas (user_id, quota, budget) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, quota) DO UPDATE SET budget = EXCLUDED.budget, updated_at = now()",
                user.0,
                quota.as_str(),
                limit.value(),
            )
            .execute(tx.conn())
            .await
            .map_err(StoreError::db("setting a user's budget"))
            .map_err(|e| match &e {
                StoreError::Database {
                    source: sqlx::Error::Database(db),
                    ..
                } if db.code().as_deref() == Some("23503") => StoreError::NotFound("user"),
                _ => e,
            })?;
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn status(tokens: (Option<i64>, i64), storage: (Option<i64>, i64)) -> QuotaStatus {
        QuotaStatus {
            plan: "free".into(),
            period_start: Utc
                .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
                .single()
                .expect("a valid date"),
            monthly_tokens: Budget {
                limit: tokens.0,
                used: tokens.1,
                source: BudgetSource::Plan,
            },
            storage_bytes: Budget {
                limit: storage.0,
                used: storage.1,
                source: BudgetSource::User,
            },
        }
    }

    #[test]
    fn tokens_are_refused_once_the_budget_is_reached_naming_limit_use_and_period() {
        assert_eq!(status((Some(1000), 999), (None, 0)).check_tokens(), Ok(()));
        assert_eq!(status((None, i64::MAX), (None, 0)).check_tokens(), Ok(()));
        let refused = status((Some(1_000_000), 1_000_234), (None, 0))
            .check_tokens()
            .expect_err("over budget");
        assert_eq!(
            refused.to_string(),
            "monthly token budget of 1000000 tokens is used up (1000234 used since 2026-11-01)"
        );
        assert!(status((Some(1000), 1000), (None, 0)).check_tokens().is_err());
        assert!(status((Some(0), 0), (None, 0)).check_tokens().is_err());
    }

    #[test]
    fn storage_refuses_only_new_bytes_past_the_budget() {
        let s = status((None, 0), (Some(100), 60));
        assert_eq!(s.check_storage(40), Ok(()));
        assert_eq!(
            s.check_storage(41).map_err(|e| e.to_string()),
            Err("storage budget of 100 bytes would be exceeded: 60 bytes stored, this upload adds 41".into())
        );
        // Nothing new (a re-upload) passes even over a lowered budget.
        assert_eq!(status((None, 0), (Some(10), 60)).check_storage(0), Ok(()));
        assert_eq!(status((None, 0), (None, i64::MAX)).check_storage(i64::MAX), Ok(()));
        assert!(status((None, 0), (Some(100), i64::MAX)).check_storage(1).is_err());
    }

    #[test]
    fn limits_parse_from_the_command_line() {
        assert_eq!("unlimited".parse::<Limit>(), Ok(Limit::Unlimited));
        assert_eq!("1_000_000".parse::<Limit>(), Ok(Limit::At(1_000_000)));
        assert_eq!("0".parse::<Limit>(), Ok(Limit::At(0)));
        assert!("-1".parse::<Limit>().is_err());
        assert!("lots".parse::<Limit>().is_err());
        assert_eq!("plan".parse::<UserBudget>(), Ok(UserBudget::Plan));
        assert_eq!("Unlimited".parse::<UserBudget>(), Ok(UserBudget::Own(Limit::Unlimited)));
        assert_eq!("5".parse::<UserBudget>(), Ok(UserBudget::Own(Limit::At(5))));
        assert!("".parse::<UserBudget>().is_err());
    }
}
