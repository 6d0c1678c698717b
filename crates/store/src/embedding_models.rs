//! Embedding models and their vector indexes.
//!
//! `document_chunks.embedding` has no fixed dimension, so models of any dimension can be
//! stored side by side (a 384-d and a 1536-d model, or both during a migration). Each model gets
//! a partial HNSW index over `embedding::vector(dim)` restricted to its own rows; queries use the
//! same expression and predicate so the planner picks that index.

use crate::operator::Reason;
use crate::{Store, StoreError};
use sha2::{Digest, Sha256};

/// A model with a vector index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EmbeddingModel {
    /// Model name as configured.
    pub model: String,
    /// Its dimension.
    pub dim: i32,
    /// Name of its partial HNSW index.
    pub index_name: String,
    /// Its OpenAI-compatible endpoint (`None`: the offline hashed embedder).
    pub base_url: Option<String>,
}

/// Name of the partial HNSW index of `model` (a hash keeps any model name a valid identifier).
pub fn index_name(model: &str, dim: u32) -> String {
    let digest = Sha256::digest(model.as_bytes());
    format!("document_chunks_embedding_{dim}_{}", hex::encode(&digest[..6]))
}

/// SQL string literal for `text` (the index predicate and the matching query need a literal,
/// not a parameter, for the planner to use a partial index).
pub fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Records `model` with its dimension and endpoint and creates its vector index if missing.
/// Returns whether the index was created. Fails when the model is already recorded with another
/// dimension. The endpoint is updated when it changed (a model moved to another server).
pub async fn ensure(store: &Store, model: &str, dim: u32, base_url: Option<&str>) -> Result<bool, StoreError> {
    if dim == 0 || dim > 2000 {
        return Err(StoreError::Config(format!(
            "embedding dimension {dim} is outside 1..=2000"
        )));
    }
    let mut tx = store.operator_tx(Reason::Shared).await?;
    let existing = sqlx::query_scalar!("SELECT dim FROM embedding_models WHERE model = $1", model)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::db("reading embedding models"))?;
    if let Some(recorded) = existing
        && recorded as u32 != dim
    {
        return Err(StoreError::Config(format!(
            "embedding model {model:?} is stored with dimension {recorded}, but RAGPIPE_EMBEDDING_DIM is {dim}; \
             a model keeps its dimension (use a new model name to change it)"
        )));
    }
    let name = index_name(model, dim);
    let index_exists = sqlx::query_scalar!(r#"SELECT to_regclass($1) IS NOT NULL AS "exists!""#, &name)
        .fetch_one(tx.conn())
        .await
        .map_err(StoreError::db("looking for the embedding index"))?;
    sqlx::query!(
        "INSERT INTO embedding_models (model, dim, index_name, base_url) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (model) DO UPDATE SET base_url = EXCLUDED.base_url \
         WHERE embedding_models.base_url IS DISTINCT FROM EXCLUDED.base_url",
        model,
        dim as i32,
        &name,
        base_url,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording the embedding model"))?;
    if !index_exists {
        let ddl = format!(
            "CREATE INDEX IF NOT EXISTS {name} ON document_chunks \
             USING hnsw ((embedding::vector({dim})) vector_cosine_ops) WHERE embedding_model = {}",
            sql_literal(model)
        );
        // Audited: the dimension is an integer and the model a quoted literal.
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(tx.conn())
            .await
            .map_err(StoreError::db("creating the embedding index"))?;
    }
    tx.commit().await?;
    Ok(!index_exists)
}

/// Every recorded model.
pub async fn list(store: &Store) -> Result<Vec<EmbeddingModel>, StoreError> {
    let mut tx = store.operator_tx(Reason::Shared).await?;
    let models = sqlx::query_as!(
        EmbeddingModel,
        "SELECT model, dim, index_name, base_url FROM embedding_models ORDER BY created_at"
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("listing embedding models"))?;
    tx.commit().await?;
    Ok(models)
}

/// The recorded models that have at least one chunk (of any user): during a migration from one
/// model to another, both. Runs as the application role with no acting user, whatever role the
/// pool connects as; the names come from `ragpipe_embedding_models_in_use()` (migration
/// `..._embedding_models_in_use.sql`), which sees every chunk's model and returns only names.
pub async fn with_chunks(store: &Store) -> Result<Vec<EmbeddingModel>, StoreError> {
    let mut tx = store.operator_tx(Reason::Monitoring).await?;
    let models = sqlx::query_as!(
        EmbeddingModel,
        "SELECT m.model, m.dim, m.index_name, m.base_url FROM embedding_models AS m \
         WHERE m.model IN (SELECT u.model FROM ragpipe_embedding_models_in_use() AS u) \
         ORDER BY m.created_at, m.model",
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("listing embedding models in use"))?;
    tx.commit().await?;
    Ok(models)
}

/// One recorded model.
pub async fn get(store: &Store, model: &str) -> Result<Option<EmbeddingModel>, StoreError> {
    let mut tx = store.operator_tx(Reason::Shared).await?;
    let recorded = sqlx::query_as!(
        EmbeddingModel,
        "SELECT model, dim, index_name, base_url FROM embedding_models WHERE model = $1",
        model,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading an embedding model"))?;
    tx.commit().await?;
    Ok(recorded)
}
