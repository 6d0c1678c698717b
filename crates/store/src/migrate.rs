//! Applies the schema: the job queue's own tables, then `migrations/`, then the vector index of
//! the configured embedding model. Safe to run from several processes at once: the whole run
//! holds a PostgreSQL advisory lock.
//!
//! Released migrations are immutable (their sha384 checksums are pinned in
//! `migrations/CHECKSUMS` and `migrations/*.sql.sha384`, checked by a test): sqlx records each applied migration's checksum
//! and refuses to run when a file no longer matches it. One migration was edited in place after
//! its release ([`EDITED`]); a database that applied one of its earlier texts is brought
//! forward here, before the migrations run, and any other mismatch is refused with the version
//! and what to do.

use crate::operator::Reason;
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
    /// Applied migrations whose earlier text this run brought forward to the current one.
    pub repaired: Vec<Repair>,
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
        sqlx::query!("SELECT pg_advisory_lock($1)", MIGRATE_LOCK,)
            .fetch_one(&mut *lock_conn)
            .await
            .map_err(StoreError::db("taking the migration lock"))?;
        let result = self.migrate_locked(embedding).await;
        let unlocked = sqlx::query!("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK,)
            .fetch_one(&mut *lock_conn)
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
        let mut repaired = Vec::new();
        for edited in EDITED {
            repaired.extend(bring_forward(self, edited).await?);
        }
        refuse_unknown_texts(self).await?;
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        let after = applied_versions(self).await?;
        let created_embedding_index =
            embedding_models::ensure(self, &embedding.model, embedding.dim, embedding.base_url.as_deref()).await?;
        Ok(MigrationReport {
            repaired,
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

    /// Whether the pgvector extension is created in the database, or only installed on the
    /// server, or neither.
    pub async fn pgvector(&self) -> Result<Pgvector, StoreError> {
        let mut tx = self.operator_tx(Reason::Shared).await?;
        let created: Option<String> =
            sqlx::query_scalar!("SELECT extversion FROM pg_extension WHERE extname = 'vector'",)
                .fetch_optional(tx.conn())
                .await
                .map_err(StoreError::db("looking for the pgvector extension"))?;
        let state = match created {
            Some(version) => Pgvector::Created(version),
            None => sqlx::query_scalar!("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'",)
                .fetch_optional(tx.conn())
                .await
                .map_err(StoreError::db("looking for an installed pgvector"))?
                .flatten()
                .map_or(Pgvector::Missing, Pgvector::Available),
        };
        tx.commit().await?;
        Ok(state)
    }
}

/// The pgvector extension's state ([`Store::pgvector`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pgvector {
    /// Created in the database, at this version.
    Created(String),
    /// Installed on the server (this default version) but not created in the database.
    Available(String),
    /// Not installed on the server.
    Missing,
}

/// A released migration that was edited in place after databases had applied it.
pub struct EditedMigration {
    /// Its version.
    pub version: i64,
    /// The texts it had before the current one, each as released.
    pub earlier: &'static [EarlierText],
    /// Idempotent SQL that turns the schema any earlier text left into the one the current text
    /// leaves (run in one transaction with the checksum's update).
    pub forward: &'static str,
}

/// One earlier text of an [`EditedMigration`].
pub struct EarlierText {
    /// The commit that released it.
    pub commit: &'static str,
    /// Its sha384, as sqlx computes and records it, in hex.
    pub sha384: &'static str,
    /// What a database that applied it lacks, for the report.
    pub lacks: &'static str,
}

/// Migrations edited after their release, and how to bring their earlier texts forward. Released
/// migrations are immutable since (pinned in `migrations/CHECKSUMS` and `*.sql.sha384`): changes go in new
/// migrations, and this list does not grow.
pub const EDITED: &[EditedMigration] = &[EditedMigration {
    version: 20261202000015,
    earlier: &[
        EarlierText {
            commit: "f886ea7",
            sha384: "326a89243187f86119e34e7c2c1e0bb270469cdf76639a8868d2d27a33acfc747d7e13a8005e4b6607f7cd835fbd40d9",
            lacks: "search_postings.lexeme in byte order (COLLATE \"C\"), the index search_postings_chunk_idx \
                    and the statistics trigger removing postings through it",
        },
        EarlierText {
            commit: "fbfff0a",
            sha384: "a6fa425e6645a703ef451083727dc5a49e83a80fc2ee0b037ec544481589ac3f7cda4cf8958c220ddf30f3c3dbdcd40a",
            lacks: "the index search_postings_chunk_idx and the statistics trigger removing postings through it",
        },
    ],
    forward: include_str!("migrate/20261202000015_forward.sql"),
}];

/// A database brought forward from an earlier text of an edited migration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Repair {
    /// The migration.
    pub version: i64,
    /// The commit that released the text the database had applied.
    pub from_commit: String,
    /// What was added.
    pub added: String,
}

/// The checksum the binary's text of `version` has.
fn current_checksum(version: i64) -> Option<&'static [u8]> {
    MIGRATOR
        .iter()
        .find(|m| m.version == version && m.migration_type.is_up_migration())
        .map(|m| &*m.checksum)
}

/// When the database applied an earlier text of `edited`, applies the difference and records
/// the current checksum, in one transaction; otherwise does nothing.
async fn bring_forward(store: &Store, edited: &EditedMigration) -> Result<Option<Repair>, StoreError> {
    if !migrations_table_exists(store).await? {
        return Ok(None);
    }
    let current = current_checksum(edited.version)
        .ok_or_else(|| StoreError::Migrate(format!("migration {} is not in this binary", edited.version)))?;
    let mut tx = store
        .pool
        .begin()
        .await
        .map_err(StoreError::db("beginning a migration repair"))?;
    let applied: Option<Vec<u8>> = sqlx::query_scalar!(
        "SELECT checksum FROM _sqlx_migrations WHERE version = $1 AND success FOR UPDATE",
        edited.version,
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::db("reading an applied migration's checksum"))?;
    let Some(applied) = applied else {
        return Ok(None);
    };
    let applied_hex = hex::encode(&applied);
    let Some(earlier) = edited.earlier.iter().find(|e| e.sha384 == applied_hex) else {
        // The current text, or one this binary does not know (refused by refuse_unknown_texts).
        return Ok(None);
    };
    sqlx::raw_sql(edited.forward)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::db(
            "bringing an earlier text of an edited migration forward",
        ))?;
    sqlx::query!(
        "UPDATE _sqlx_migrations SET checksum = $2 WHERE version = $1 AND checksum = $3",
        edited.version,
        current,
        &applied,
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::db("recording a repaired migration's checksum"))?;
    tx.commit()
        .await
        .map_err(StoreError::db("committing a migration repair"))?;
    let added = earlier.lacks.split_whitespace().collect::<Vec<_>>().join(" ");
    tracing::warn!(
        version = edited.version,
        from_commit = earlier.commit,
        added = %added,
        "brought forward a migration applied from an earlier text"
    );
    Ok(Some(Repair {
        version: edited.version,
        from_commit: earlier.commit.to_owned(),
        added,
    }))
}

/// Refuses, with the version and what to do, a database that applied a text of a migration
/// other than this binary's (and other than an earlier text [`bring_forward`] repairs). sqlx
/// would refuse too, but with only "migration N was previously applied but has been modified".
async fn refuse_unknown_texts(store: &Store) -> Result<(), StoreError> {
    if !migrations_table_exists(store).await? {
        return Ok(());
    }
    let applied = sqlx::query!("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&store.pool)
        .await
        .map_err(StoreError::db("reading applied migrations' checksums"))?;
    for (version, checksum) in applied.into_iter().map(|r| (r.version, r.checksum)) {
        let Some(migration) = MIGRATOR
            .iter()
            .find(|m| m.version == version && m.migration_type.is_up_migration())
        else {
            continue; // newer than this binary: sqlx says so
        };
        if *migration.checksum != *checksum {
            return Err(StoreError::Migrate(format!(
                "migration {version} ({}) was applied to this database from a text that is not this binary's \
                 (applied sha384 {}, expected {}) and not a known earlier release of it: refusing to run. \
                 Released migrations are never edited; run the ragpipe release that applied it, \
                 or compare the schema with the migration and repair it by hand",
                migration.description,
                hex::encode(&checksum),
                hex::encode(&*migration.checksum),
            )));
        }
    }
    Ok(())
}

async fn migrations_table_exists(store: &Store) -> Result<bool, StoreError> {
    sqlx::query_scalar!(r#"SELECT to_regclass('public._sqlx_migrations') IS NOT NULL AS "exists!""#,)
        .fetch_one(&store.pool)
        .await
        .map_err(StoreError::db("looking for the migrations table"))
}

async fn applied_versions(store: &Store) -> Result<Vec<i64>, StoreError> {
    if !migrations_table_exists(store).await? {
        return Ok(Vec::new());
    }
    sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",)
        .fetch_all(&store.pool)
        .await
        .map_err(StoreError::db("reading applied migrations"))
}
