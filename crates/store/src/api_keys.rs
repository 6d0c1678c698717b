//! API keys: created once, shown once, stored as a sha256 hash.

use crate::operator::Reason;
use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use ragpipe_core::UserId;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Every key starts with this, so leaked keys are easy to find in logs and repositories.
pub const KEY_PREFIX: &str = "rp_";
const KEY_RANDOM_CHARS: usize = 40;
const SHOWN_PREFIX_CHARS: usize = 10;

/// A stored key (without the key itself).
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Optional label.
    pub name: Option<String>,
    /// First characters of the key.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A freshly created key: the only time the secret exists outside the caller's hands.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    /// The stored record.
    #[serde(flatten)]
    pub record: ApiKey,
    /// The secret bearer key.
    pub key: String,
}

/// The caller a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    /// The key's owner.
    pub user_id: UserId,
    /// The key used.
    pub key_id: Uuid,
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates a key for `user`. Fails with `NotFound("user")` when the user does not exist.
pub async fn create(store: &Store, user: UserId, name: Option<&str>) -> Result<CreatedKey, StoreError> {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(KEY_RANDOM_CHARS)
        .map(char::from)
        .collect();
    let key = format!("{KEY_PREFIX}{random}");
    let mut tx = store.user_tx(user).await?;
    let record = sqlx::query_as!(
        ApiKey,
        "INSERT INTO api_keys (user_id, name, prefix, key_sha256) VALUES ($1, $2, $3, $4) \
         RETURNING id, user_id, name, prefix, created_at",
        user.0,
        name,
        &key[..SHOWN_PREFIX_CHARS],
        &hash(&key),
    )
    .fetch_one(tx.conn())
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => StoreError::NotFound("user"),
        _ => StoreError::db("creating an api key")(e),
    })?;
    tx.commit().await?;
    Ok(CreatedKey { record, key })
}

/// Finds the owner of an unrevoked key. The lookup runs as the application role with only the
/// presented key's hash set, so it can read that one key row and nothing else.
pub async fn authenticate(store: &Store, key: &str) -> Result<Option<Authenticated>, StoreError> {
    if !key.starts_with(KEY_PREFIX) || key.len() > 200 {
        return Ok(None);
    }
    let mut tx = store
        .operator_tx(Reason::KeyLookup {
            key_sha256: hex::encode(hash(key)),
        })
        .await?;
    let row = sqlx::query!(
        "SELECT id, user_id FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL",
        &hash(key),
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("looking up an api key"))?;
    let Some((key_id, user_id)) = row.map(|r| (r.id, r.user_id)) else {
        return Ok(None);
    };
    // Now acting as the owner: record the use (at most once a minute, to keep reads cheap).
    tx.act_as(UserId(user_id)).await?;
    sqlx::query!(
        "UPDATE api_keys SET last_used_at = now() \
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        key_id,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording api key use"))?;
    tx.commit().await?;
    Ok(Some(Authenticated {
        user_id: UserId(user_id),
        key_id,
    }))
}
