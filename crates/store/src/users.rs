//! Users.

use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use ragpipe_core::UserId;
use serde::Serialize;
use uuid::Uuid;

/// A user account.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Email, unique case-insensitively.
    pub email: String,
    /// Name shown in interfaces.
    pub display_name: Option<String>,
    /// Billing plan.
    pub plan: String,
    /// Subscription state.
    pub subscription_status: String,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
}

/// What a new user starts with.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// Email address.
    pub email: String,
    /// Optional display name.
    pub display_name: Option<String>,
    /// Plan (default `free`).
    pub plan: Option<String>,
    /// A chosen id (default: a new one), for accounts that must be found again by id.
    pub id: Option<UserId>,
}

/// Creates a user. The insert runs as the new user (there is no path around row-level security,
/// not even for administration). A second user with the same email is a conflict.
pub async fn create(store: &Store, new: &NewUser) -> Result<User, StoreError> {
    let id = new.id.unwrap_or_default();
    let mut tx = store.user_tx(id).await?;
    let user = sqlx::query_as!(
        User,
        "INSERT INTO users (id, email, display_name, plan) VALUES ($1, $2, $3, coalesce($4, 'free')) \
         RETURNING id, email, display_name, plan, subscription_status, created_at",
        id.0,
        new.email.trim(),
        new.display_name.as_deref(),
        new.plan.as_deref(),
    )
    .fetch_one(tx.conn())
    .await
    .map_err(StoreError::db("creating a user"))
    .map_err(|e| match e {
        e if e.is_unique_violation() => {
            StoreError::Conflict(format!("a user with email {} already exists", new.email.trim()))
        }
        e if is_check_violation(&e) => StoreError::Conflict(format!("invalid user: {e}")),
        e => e,
    })?;
    tx.commit().await?;
    Ok(user)
}

/// The user, as seen by themselves.
pub async fn get(store: &Store, id: UserId) -> Result<User, StoreError> {
    let mut tx = store.user_tx(id).await?;
    let user = sqlx::query_as!(
        User,
        "SELECT id, email, display_name, plan, subscription_status, created_at FROM users WHERE id = $1",
        id.0,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading a user"))?
    .ok_or(StoreError::NotFound("user"))?;
    tx.commit().await?;
    Ok(user)
}

fn is_check_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Database { source: sqlx::Error::Database(db), .. } if db.code().as_deref() == Some("23514"))
}
