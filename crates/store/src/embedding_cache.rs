//! The embedding cache: a user's vectors by (model, dimension, sha256 of the exact text
//! embedded), so that a text of theirs is sent to a model once. Entries are user data: read and
//! written in the user's transaction, under row-level security, never shared between users (a
//! shared cache would tell one user what another had embedded).
//!
//! Each entry names the usage event of the model call that produced it, written in the same
//! transaction ([`insert`] with `usage::record`), so a vector is in the cache exactly when its
//! call is in the ledger.

use crate::{StoreError, UserTx};
use pgvector::Vector;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

/// The cache key of a text: sha256 of its UTF-8 bytes (PostgreSQL computes the same with
/// `sha256(convert_to(content, 'UTF8'))`).
pub fn text_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A cached vector and the usage event of the call that paid for it (`None` for entries
/// rebuilt from stored chunks, paid before calls were recorded one by one).
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    /// The vector.
    pub vector: Vec<f32>,
    /// The idempotency key of the usage event that recorded the call.
    pub usage_key: Option<String>,
}

/// The user's cached vectors among `hashes` for `model` at `dim`, by hash.
pub async fn lookup(
    tx: &mut UserTx,
    model: &str,
    dim: u32,
    hashes: &[[u8; 32]],
) -> Result<HashMap<[u8; 32], Cached>, StoreError> {
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
    let user = tx.user_id().0;
    let rows = sqlx::query!(
        r#"SELECT text_sha256, embedding AS "embedding!: Vector", usage_key FROM embedding_cache
         WHERE user_id = $1 AND model = $2 AND dim = $3 AND text_sha256 = ANY ($4::bytea[])"#,
        user,
        model,
        dim as i32,
        &keys as &[&[u8]],
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading the embedding cache"))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let hash: [u8; 32] = row.text_sha256.try_into().ok()?;
            Some((
                hash,
                Cached {
                    vector: row.embedding.to_vec(),
                    usage_key: row.usage_key,
                },
            ))
        })
        .collect())
}

/// Adds the user's vectors from one model call, recorded as `usage_key`, to the cache (one
/// statement; entries already cached are left as they are). Call it in the transaction that
/// records that usage event. Vectors of the wrong dimension are refused by the table's check.
pub async fn insert(
    tx: &mut UserTx,
    model: &str,
    dim: u32,
    entries: &[([u8; 32], &[f32])],
    usage_key: &str,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let keys: Vec<&[u8]> = entries.iter().map(|(h, _)| &h[..]).collect();
    let vectors: Vec<Vector> = entries.iter().map(|(_, v)| Vector::from(v.to_vec())).collect();
    sqlx::query!(
        "INSERT INTO embedding_cache (user_id, model, dim, text_sha256, embedding, usage_key) \
         SELECT $1, $2, $3, h, v, $6 FROM UNNEST($4::bytea[], $5::vector[]) AS u(h, v) \
         ON CONFLICT DO NOTHING",
        tx.user_id().0,
        model,
        dim as i32,
        &keys as &[&[u8]],
        &vectors as &[Vector],
        usage_key,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("writing the embedding cache"))?;
    Ok(())
}

/// Which of `hashes` the user has cached for `model` at `dim` (without reading the vectors).
pub async fn cached_keys(
    tx: &mut UserTx,
    model: &str,
    dim: u32,
    hashes: &[[u8; 32]],
) -> Result<HashSet<[u8; 32]>, StoreError> {
    if hashes.is_empty() {
        return Ok(Default::default());
    }
    let keys: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
    let rows: Vec<Vec<u8>> = sqlx::query_scalar!(
        "SELECT text_sha256 FROM embedding_cache \
         WHERE user_id = $1 AND model = $2 AND dim = $3 AND text_sha256 = ANY ($4::bytea[])",
        tx.user_id().0,
        model,
        dim as i32,
        &keys as &[&[u8]],
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading the embedding cache"))?;
    Ok(rows.into_iter().filter_map(|h| h.try_into().ok()).collect())
}
