//! Applies the schema: the job queue's own tables, then `migrations/`, then the vector index of
//! the configured embedding model. Safe to run from several processes at once: the whole run
//! holds a PostgreSQL advisory lock.

use crate::{Store, StoreError, embedding_models};
use ragpipe_core::config::ModelEndpoint;
use sqlx::migrate::Migrator;

/// ragpipe's own migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Advisory lock key serialising concurrent `ragpipe migrate` runs ("ragpipe" in ASCII).
const MIGRATE_LOCK: i64 = 0x0072_6167_7069_7065;

/// What a migration run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationReport {
    /// Versions of ragpipe migrations applied by this run.
    pub applied: Vec<i64>,
    /// Latest ragpipe migration version now in the database.
    pub current: Option<i64>,
    /// Whether this run created the configured embedding model's vector index.
    pub created_embedding_index: bool,
}

impl Store {
    /// Brings the database to the current schema and makes sure the configured embedding model
    /// has its vector index. Applying it again is a no-op.
    pub async fn migrate(&self, embedding: &ModelEndpoint) -> Result<MigrationReport, StoreError> {
        let mut lock_conn = self
            .pool
            .acquire()
            .await
            .map_err(StoreError::db("acquiring a connection to migrate"))?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *lock_conn)
            .await
            .map_err(StoreError::db("taking the migration lock"))?;
        let result = self.migrate_locked(embedding).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *lock_conn)
            .await;
        let report = result?;
        unlocked.map_err(StoreError::db("releasing the migration lock"))?;
        Ok(report)
    }

    async fn migrate_locked(&self, embedding: &ModelEndpoint) -> Result<MigrationReport, StoreError> {
        let before = applied_versions(self).await?;
        apalis_postgres::PostgresStorage::setup(&self.pool)
            .await
            .map_err(|e| StoreError::Migrate(format!("setting up the job queue schema: {e}")))?;
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        let after = applied_versions(self).await?;
        let created_embedding_index =
            embedding_models::ensure(self, &embedding.model, embedding.dim, embedding.base_url.as_deref()).await?;
        Ok(MigrationReport {
            applied: after.iter().copied().filter(|v| !before.contains(v)).collect(),
            current: after.iter().copied().max(),
            created_embedding_index,
        })
    }

    /// Migrations embedded in this binary that the database has not applied (empty: current).
    pub async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        let applied = applied_versions(self).await?;
        Ok(MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }
}

async fn applied_versions(store: &Store) -> Result<Vec<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
        .fetch_one(&store.pool)
        .await
        .map_err(StoreError::db("looking for the migrations table"))?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&store.pool)
        .await
        .map_err(StoreError::db("reading applied migrations"))
}
