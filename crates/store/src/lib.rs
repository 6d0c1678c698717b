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
pub mod reprocess;
pub mod retry;
mod rows;
pub mod search;
pub mod usage;
mod user_tx;
pub mod users;

pub use error::{StoreError, redact, sqlstate_kind, sqlx_error_kind};
pub use user_tx::UserTx;

use ragpipe_core::{Config, UserId};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The application role every user transaction switches to.
pub const APP_ROLE: &str = "ragpipe_app";

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
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
        Ok(Store { pool })
    }

    /// Wraps an existing pool (tests get theirs from `#[sqlx::test]`).
    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
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
        UserTx::begin(&self.pool, user).await
    }
}
