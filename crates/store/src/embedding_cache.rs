//! The embedding cache: vectors by (model, dimension, sha256 of the exact text embedded), so a
//! text is sent to a model once. It holds no user id and no text, so it is shared by all users
//! and read through the pool (it is not user data); a hit needs the text itself.

use crate::{Store, StoreError};
use pgvector::Vector;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The cache key of a text: sha256 of its UTF-8 bytes (PostgreSQL computes the same with
/// `sha256(convert_to(content, 'UTF8'))`).
pub fn text_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The cached vectors among `hashes` for `model` at `dim`, by hash.
pub async fn lookup(
    store: &Store,
    model: &str,
    dim: u32,
    hashes: &[[u8; 32]],
) -> Result<HashMap<[u8; 32], Vec<f32>>, StoreError> {
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
    let rows: Vec<(Vec<u8>, Vector)> = sqlx::query_as(
        "SELECT text_sha256, embedding FROM embedding_cache \
         WHERE model = $1 AND dim = $2 AND text_sha256 = ANY ($3::bytea[])",
    )
    .bind(model)
    .bind(dim as i32)
    .bind(&keys)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::db("reading the embedding cache"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(hash, vector)| {
            let hash: [u8; 32] = hash.try_into().ok()?;
            Some((hash, vector.to_vec()))
        })
        .collect())
}

/// Adds vectors to the cache (one statement; entries already cached are left as they are).
/// Vectors of the wrong dimension are refused by the table's check.
pub async fn insert(store: &Store, model: &str, dim: u32, entries: &[([u8; 32], &[f32])]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let keys: Vec<&[u8]> = entries.iter().map(|(h, _)| &h[..]).collect();
    let vectors: Vec<Vector> = entries.iter().map(|(_, v)| Vector::from(v.to_vec())).collect();
    sqlx::query(
        "INSERT INTO embedding_cache (model, dim, text_sha256, embedding) \
         SELECT $1, $2, h, v FROM UNNEST($3::bytea[], $4::vector[]) AS u(h, v) \
         ON CONFLICT DO NOTHING",
    )
    .bind(model)
    .bind(dim as i32)
    .bind(&keys)
    .bind(&vectors)
    .execute(store.pool())
    .await
    .map_err(StoreError::db("writing the embedding cache"))?;
    Ok(())
}

/// Which of `hashes` are cached for `model` at `dim` (without reading the vectors).
pub async fn cached_keys(
    store: &Store,
    model: &str,
    dim: u32,
    hashes: &[[u8; 32]],
) -> Result<std::collections::HashSet<[u8; 32]>, StoreError> {
    if hashes.is_empty() {
        return Ok(Default::default());
    }
    let keys: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT text_sha256 FROM embedding_cache WHERE model = $1 AND dim = $2 AND text_sha256 = ANY ($3::bytea[])",
    )
    .bind(model)
    .bind(dim as i32)
    .bind(&keys)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::db("reading the embedding cache"))?;
    Ok(rows.into_iter().filter_map(|h| h.try_into().ok()).collect())
}
