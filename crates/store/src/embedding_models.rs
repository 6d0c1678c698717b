//! Embedding models and their vector indexes.
//!
//! `document_chunks.embedding` has no fixed dimension, so models of any dimension can be
//! stored side by side (a 384-d and a 1536-d model, or both during a migration). Each model gets
//! a partial HNSW index over `embedding::vector(dim)` restricted to its own rows; queries use the
//! same expression and predicate so the planner picks that index.

use crate::operator::Reason;
use crate::{Store, StoreError};
use sha2::{Digest, Sha256};
use sqlx::Connection;

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

/// The DDL of `model`'s partial HNSW index (`how`: "" or "CONCURRENTLY"). Audited: the name
/// is made by [`index_name`], the dimension is an integer and the model a quoted literal.
fn index_ddl(model: &str, dim: u32, how: &str) -> String {
    format!(
        "CREATE INDEX {how} IF NOT EXISTS {} ON document_chunks \
         USING hnsw ((embedding::vector({dim})) vector_cosine_ops) WHERE embedding_model = {}",
        index_name(model, dim),
        sql_literal(model)
    )
}

/// SQL string literal for `text` (the index predicate and the matching query need a literal,
/// not a parameter, for the planner to use a partial index).
pub fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Records `model` with its dimension and endpoint and creates its vector index if missing
/// (unless a bulk write deferred it: [`defer_index`]). Returns whether the index was created. Fails when the model is already recorded with another
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
    // A deferred index ([`defer_index`]) is missing on purpose until its run builds it.
    let index_exists = sqlx::query_scalar!(
        r#"SELECT to_regclass($1) IS NOT NULL
                  OR EXISTS (SELECT 1 FROM embedding_models WHERE model = $2 AND index_deferred_at IS NOT NULL)
                  AS "exists!""#,
        &name,
        model
    )
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
        sqlx::query(sqlx::AssertSqlSafe(index_ddl(model, dim, "")))
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

/// The state of a model's vector index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    /// No index: deferred by a bulk write ([`defer_index`]) until [`build_index`].
    Missing,
    /// Left by a concurrent build that failed: PostgreSQL keeps maintaining it but never reads
    /// it. [`build_index`] drops and builds it again.
    Invalid,
    /// Built and used by search.
    Valid,
}

/// Whether `model`'s partial HNSW index exists and can be read.
pub async fn index_state(store: &Store, model: &str, dim: u32) -> Result<IndexState, StoreError> {
    let name = index_name(model, dim);
    let mut tx = store.operator_tx(Reason::Shared).await?;
    let valid = sqlx::query_scalar!(
        "SELECT i.indisvalid FROM pg_index AS i WHERE i.indexrelid = to_regclass($1)",
        &name
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading the embedding index's state"))?;
    tx.commit().await?;
    Ok(match valid {
        None => IndexState::Missing,
        Some(false) => IndexState::Invalid,
        Some(true) => IndexState::Valid,
    })
}

/// Drops `model`'s vector index when no chunk of any user is embedded by the model yet, so
/// that a bulk write of its vectors (a whole corpus re-embedded into it) does not insert each
/// vector into an HNSW graph one at a time; [`build_index`] builds it once afterwards, several
/// times faster (BENCHMARKS.md, "Reprocessing"). Until then search still ranks the model's
/// chunks, by computing each distance. Returns whether the index was dropped: a model that
/// already has chunks keeps its index.
pub async fn defer_index(store: &Store, model: &str, dim: u32) -> Result<bool, StoreError> {
    let name = index_name(model, dim);
    let mut tx = store.operator_tx(Reason::Shared).await?;
    // The table lock first: no chunk of the model can be written between the check and the drop.
    sqlx::query!("LOCK TABLE document_chunks IN SHARE ROW EXCLUSIVE MODE")
        .execute(tx.conn())
        .await
        .map_err(StoreError::db("locking the chunks to defer an embedding index"))?;
    let used = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM document_chunks WHERE embedding_model = $1) AS "used!""#,
        model
    )
    .fetch_one(tx.conn())
    .await
    .map_err(StoreError::db("looking for chunks of the embedding model"))?;
    if used {
        tx.commit().await?;
        return Ok(false);
    }
    // Recorded first, so no process builds it back while the vectors are written.
    let recorded = sqlx::query!(
        "UPDATE embedding_models SET index_deferred_at = coalesce(index_deferred_at, now()) WHERE model = $1",
        model
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording the deferred embedding index"))?;
    if recorded.rows_affected() == 0 {
        return Err(StoreError::Config(format!("embedding model {model:?} is not recorded")));
    }
    // Audited: the name is made by index_name (digits, letters and underscores).
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX IF EXISTS {name}")))
        .execute(tx.conn())
        .await
        .map_err(StoreError::db("dropping the embedding index"))?;
    tx.commit().await?;
    Ok(true)
}

/// Builds `model`'s vector index if it is missing or invalid, without blocking writes
/// (`CREATE INDEX CONCURRENTLY`), with `maintenance_work_mem` set to `memory` (e.g. `"1GB"`)
/// for the build: the graph built in memory is several times faster than one built on disk.
/// Clears the deferral ([`defer_index`]). Returns whether it built one.
pub async fn build_index(store: &Store, model: &str, dim: u32, memory: &str) -> Result<bool, StoreError> {
    let name = index_name(model, dim);
    let state = index_state(store, model, dim).await?;
    if state == IndexState::Valid {
        clear_deferral(store, model).await?;
        return Ok(false);
    }
    // Outside a transaction, as a concurrent build must be: on a connection of its own (never a
    // pooled one a transaction may have used), closed after so the setting ends with it, and in
    // the simple query protocol, where each statement is its own transaction.
    let mut conn = sqlx::PgConnection::connect_with(&store.pool.connect_options())
        .await
        .map_err(StoreError::db("connecting to build the embedding index"))?;
    let built = async {
        // Audited: a quoted literal.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET maintenance_work_mem = {}",
            sql_literal(memory)
        )))
        .execute(&mut conn)
        .await
        .map_err(StoreError::db("setting maintenance_work_mem for the index build"))?;
        if state == IndexState::Invalid {
            // Audited: the name is made by index_name.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX CONCURRENTLY IF EXISTS {name}")))
                .execute(&mut conn)
                .await
                .map_err(StoreError::db("dropping the invalid embedding index"))?;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(index_ddl(model, dim, "CONCURRENTLY")))
            .execute(&mut conn)
            .await
            .map_err(StoreError::db("building the embedding index"))?;
        Ok::<_, StoreError>(())
    }
    .await;
    let _ = conn.close().await;
    built?;
    clear_deferral(store, model).await?;
    Ok(true)
}

async fn clear_deferral(store: &Store, model: &str) -> Result<(), StoreError> {
    let mut tx = store.operator_tx(Reason::Shared).await?;
    sqlx::query!(
        "UPDATE embedding_models SET index_deferred_at = NULL WHERE model = $1 AND index_deferred_at IS NOT NULL",
        model
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("clearing the deferred embedding index"))?;
    tx.commit().await?;
    Ok(())
}
