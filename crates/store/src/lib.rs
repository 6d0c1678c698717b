//! PostgreSQL access for ragpipe: the pool, the migrations runner, the per-user transaction
//! through which all user data is touched, and the repositories (one module per noun).
//!
//! Invariant: every query that reads or writes user data runs inside a [`UserTx`], which
//! switches to the `ragpipe_app` role and sets the acting user, so row-level security decides
//! what the query can see, whatever role the pool itself connects as.

pub mod api_keys;
pub mod chunks;
pub mod conversations;
pub mod documents;
pub mod embedding_cache;
pub mod embedding_models;
mod error;
pub mod feed;
pub mod jobs;
pub mod liveness;
pub mod migrate;
pub mod monitoring;
mod operator;
pub mod quotas;
mod replica;
pub mod reprocess;
pub mod retry;
mod rows;
pub mod search;
pub mod usage;
mod user_tx;
pub mod users;

pub use error::{StoreError, redact, sqlstate_kind, sqlx_error_kind};
pub use replica::ReplicaStatus;
pub use user_tx::UserTx;

use ragpipe_core::{Config, UserId};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// How long a read waits for a connection to the read replica before it reads the primary.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The application role every user transaction switches to.
pub const APP_ROLE: &str = "ragpipe_app";

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// The read replica (`RAGPIPE_READ_DATABASE_URL`), if configured: [`Store::read_tx`].
    replica: Option<replica::ReadReplica>,
}

impl Store {
    /// Connects a pool to `config.database_url`.
    pub async fn connect(config: &Config) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(&config.database_url)
            .map_err(|e| StoreError::Config(format!("DATABASE_URL is not a valid PostgreSQL URL: {e}")))?
            .application_name("ragpipe");
        // One direct connection first: a pool that cannot connect reports only "timed out",
        // while the first attempt's own error says why (refused, unknown database, auth).
        let probe = tokio::time::timeout(
            Duration::from_secs(10),
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
        )
        .await;
        match probe {
            Err(_) => {
                return Err(StoreError::Config(format!(
                    "connecting to {}: timed out after 10 s",
                    redact(&config.database_url)
                )));
            }
            Ok(Err(e)) => return Err(StoreError::connect(&config.database_url, e)),
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.database_max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options);
        let store = Store { pool, replica: None };
        match config.read_database_url.as_deref().filter(|u| !u.trim().is_empty()) {
            None => Ok(store),
            Some(url) => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| {
                        StoreError::Config(format!("RAGPIPE_READ_DATABASE_URL is not a valid PostgreSQL URL: {e}"))
                    })?
                    .application_name("ragpipe");
                // Not probed: a replica that is down only sends reads to the primary.
                let replica = PgPoolOptions::new()
                    .max_connections(config.database_max_connections.max(1))
                    .acquire_timeout(REPLICA_ACQUIRE_TIMEOUT)
                    .connect_lazy_with(options);
                Ok(store.with_read_replica(replica))
            }
        }
    }

    /// Wraps an existing pool (tests get theirs from `#[sqlx::test]`).
    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool, replica: None }
    }

    /// The same store with `replica`, a pool on a streaming replica of this store's database,
    /// serving [`Store::read_tx`] and [`Store::search_read_tx`].
    pub fn with_read_replica(self, replica: PgPool) -> Store {
        let read = replica::ReadReplica::new(self.pool.clone(), replica);
        Store {
            pool: self.pool,
            replica: Some(read),
        }
    }

    /// Whether reads may go to a replica ([`Store::read_tx`]).
    pub fn has_read_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// The database this store connects to, as `host:port/database` (no credentials).
    pub(crate) fn database(&self) -> String {
        let options = self.pool.connect_options();
        format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        )
    }

    /// Begins a transaction acting as `user`: row-level security shows it only that user's rows.
    pub async fn user_tx(&self, user: UserId) -> Result<UserTx, StoreError> {
        UserTx::begin(&self.pool, user, self.replica.clone()).await
    }
}
