use crate::replica::{ReadReplica, Route};
use crate::{APP_ROLE, Store, StoreError};
use ragpipe_core::UserId;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// A transaction acting as one user: the only way ragpipe touches user data.
///
/// It begins with `SET LOCAL ROLE ragpipe_app` and `set_config('ragpipe.user_id', id, true)`
/// in one round trip. Both are transaction-local, so when the transaction ends (commit,
/// rollback, or drop) the pooled connection returns to its own role with no user set, and the
/// next transaction on that connection inherits nothing.
pub struct UserTx {
    tx: Transaction<'static, Postgres>,
    user: UserId,
    side: Side,
}

/// Which server a [`UserTx`] runs on.
enum Side {
    /// The primary; with a read replica configured, the commit records the user's WAL position
    /// there, so that their later replica reads wait for it (see [`crate::replica`]).
    Primary(Option<ReadReplica>),
    /// The read replica, which had replayed everything the user's view depends on when the
    /// transaction began. Read-only: the server refuses writes.
    Replica,
}

/// How the statements of a user transaction are planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plans {
    /// PostgreSQL's choice (`plan_cache_mode = auto`): a custom plan for the parameters of
    /// each execution until a generic one looks as cheap.
    Auto,
    /// One generic plan per prepared statement (`plan_cache_mode = force_generic_plan`).
    Generic,
}

impl Store {
    /// A transaction for the search statement ([`crate::search::search`]): a [`UserTx`] whose
    /// prepared statements use their generic plan, set in the same round trip as the role and
    /// user, so it costs nothing.
    ///
    /// JIT is off in the same round trip. The generic plan estimates `LIMIT $4` at a tenth of
    /// the HNSW scan's rows, so its cost grows with the table and passes `jit_above_cost`
    /// (100,000) at about 470,000 chunks (106,852 at 500,000): every search then compiled ~200
    /// expressions with LLVM, 80-170 ms, for an execution of 3-10 ms. JIT is decided from the
    /// plan's cost but only runs while `jit` is on, so turning it off for the transaction is
    /// enough for a plan cached before.
    ///
    /// Why: sqlx prepares the search statement once per connection, but in hybrid and vector
    /// mode PostgreSQL's heuristic keeps choosing a custom plan, so every search is planned
    /// again (~1.5 ms at 100,000 chunks, about a sixth of a hybrid search). The statement has
    /// nothing a parameter value could plan better: the model and dimension are literals, the
    /// vector leg's index is chosen by them, the text leg reads postings by user and lexeme.
    /// EXPLAIN of the prepared statement under generic plans shows the same plan (partial HNSW
    /// index, range scans of `search_blocks`, primary-key reads) with planning at
    /// ~0.1-0.2 ms (BENCHMARKS.md,
    /// "Search"). Only for search: other statements filter with `($1 IS NULL OR col = $1)`,
    /// which a custom plan folds into an index condition and a generic plan cannot (the
    /// document list then reads every document of the user to fill a page).
    pub async fn search_tx(&self, user: UserId) -> Result<UserTx, StoreError> {
        UserTx::begin_with(&self.pool, user, Plans::Generic, self.replica.clone()).await
    }

    /// A transaction for a read that may be served by the read replica
    /// (`RAGPIPE_READ_DATABASE_URL`): a document or conversation list, a message page, an
    /// answer's replay. It runs on the replica when one is configured, reachable, and has
    /// replayed the user's last transaction on the primary that this process knows of;
    /// otherwise on the primary, like [`Store::user_tx`]. Row-level security applies the same
    /// on both. A transaction on the replica cannot write ([`UserTx::on_replica`]).
    pub async fn read_tx(&self, user: UserId) -> Result<UserTx, StoreError> {
        self.read_with(user, Plans::Auto).await
    }

    /// [`Store::read_tx`] with the generic plans of [`Store::search_tx`], for the search
    /// statement.
    pub async fn search_read_tx(&self, user: UserId) -> Result<UserTx, StoreError> {
        self.read_with(user, Plans::Generic).await
    }

    async fn read_with(&self, user: UserId, plans: Plans) -> Result<UserTx, StoreError> {
        if let Some(replica) = &self.replica
            && let Route::Replica { needs } = replica.route(user)
        {
            match UserTx::begin_on_replica(&replica.replica, user, plans).await {
                Ok((tx, Some(replayed))) if replayed >= needs => {
                    replica.replayed(user, replayed);
                    return Ok(tx);
                }
                Ok((_, Some(replayed))) => {
                    replica.replayed(user, replayed);
                    tracing::debug!(user_id = %user.0, replayed, needs, "the replica is behind the user's writes; reading the primary");
                }
                Ok((_, None)) => {
                    replica.unreachable();
                    tracing::warn!(
                        "the read database is not in recovery, so not a replica of the primary; reading the primary"
                    );
                }
                Err(e) => {
                    replica.unreachable();
                    tracing::warn!(error = %e, "the read replica failed; reading the primary");
                }
            }
        }
        UserTx::begin_with(&self.pool, user, plans, self.replica.clone()).await
    }
}

impl UserTx {
    pub(crate) async fn begin(pool: &PgPool, user: UserId, replica: Option<ReadReplica>) -> Result<UserTx, StoreError> {
        UserTx::begin_with(pool, user, Plans::Auto, replica).await
    }

    /// Begins a user transaction on the replica and reads how far it has replayed, in the
    /// statement that sets the role and user (`None`: the server is not in recovery).
    /// `pg_last_wal_replay_lsn()` alone is not enough: a server that started after a crash keeps
    /// the position its crash recovery reached, though it is a primary.
    async fn begin_on_replica(
        replica: &PgPool,
        user: UserId,
        plans: Plans,
    ) -> Result<(UserTx, Option<i64>), StoreError> {
        let mut tx = replica
            .begin()
            .await
            .map_err(StoreError::db("beginning a user transaction on the read replica"))?;
        let user_id = user.0.to_string();
        let replayed = match plans {
            Plans::Auto => sqlx::query!(
                "SELECT set_config('role', $1, true) AS role, set_config('ragpipe.user_id', $2, true) AS user, \
                        CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 END AS replayed",
                APP_ROLE,
                user_id,
            )
            .fetch_one(&mut *tx)
            .await
            .map(|row| row.replayed),
            Plans::Generic => sqlx::query!(
                "SELECT set_config('role', $1, true) AS role, set_config('ragpipe.user_id', $2, true) AS user, \
                        set_config('plan_cache_mode', 'force_generic_plan', true) AS plans, \
                        set_config('jit', 'off', true) AS jit, \
                        CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 END AS replayed",
                APP_ROLE,
                user_id,
            )
            .fetch_one(&mut *tx)
            .await
            .map(|row| row.replayed),
        }
        .map_err(StoreError::db("switching to the application role on the read replica"))?;
        Ok((
            UserTx {
                tx,
                user,
                side: Side::Replica,
            },
            replayed,
        ))
    }

    async fn begin_with(
        pool: &PgPool,
        user: UserId,
        plans: Plans,
        replica: Option<ReadReplica>,
    ) -> Result<UserTx, StoreError> {
        let mut tx = pool
            .begin()
            .await
            .map_err(StoreError::db("beginning a user transaction"))?;
        let user_id = user.0.to_string();
        let set = match plans {
            Plans::Auto => sqlx::query!(
                "SELECT set_config('role', $1, true) AS role, set_config('ragpipe.user_id', $2, true) AS user",
                APP_ROLE,
                user_id,
            )
            .fetch_one(&mut *tx)
            .await
            .map(drop),
            Plans::Generic => sqlx::query!(
                "SELECT set_config('role', $1, true) AS role, set_config('ragpipe.user_id', $2, true) AS user, \
                        set_config('plan_cache_mode', 'force_generic_plan', true) AS plans, \
                        set_config('jit', 'off', true) AS jit",
                APP_ROLE,
                user_id,
            )
            .fetch_one(&mut *tx)
            .await
            .map(drop),
        };
        set.map_err(StoreError::db("switching to the application role"))?;
        Ok(UserTx {
            tx,
            user,
            side: Side::Primary(replica),
        })
    }

    /// Whether this transaction runs on the read replica (it cannot write there).
    pub fn on_replica(&self) -> bool {
        matches!(self.side, Side::Replica)
    }

    /// The acting user.
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// The connection, to run queries on. Row-level security applies to everything run here.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits the transaction. On the primary, with a read replica configured, it then
    /// records the primary's WAL position as the user's, so that their later reads from the
    /// replica wait until it has replayed this transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        let committed = self.tx.commit().await.map_err(StoreError::db("committing"));
        if let Side::Primary(Some(replica)) = &self.side {
            match &committed {
                Ok(()) => replica.note_after_commit(self.user).await,
                // The outcome is unknown (a lost connection during COMMIT): it may have
                // committed, at a position this process cannot learn now.
                Err(_) => replica.note(self.user, None),
            }
        }
        committed
    }

    /// Rolls the transaction back (dropping it does the same, without waiting).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(StoreError::db("rolling back"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragpipe_core::Config;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    /// How a parameterised statement prepared in `tx` is planned: `$1 + 1` stays a parameter in
    /// a generic plan and is folded to a constant in a custom one.
    async fn planned_generically(tx: &mut UserTx) -> bool {
        sqlx::raw_sql("PREPARE plan_probe(int) AS SELECT $1 + 1")
            .execute(tx.conn())
            .await
            .expect("prepare");
        let plan: Vec<String> = sqlx::query_scalar("EXPLAIN (VERBOSE, COSTS OFF) EXECUTE plan_probe(41)")
            .fetch_all(tx.conn())
            .await
            .expect("explain");
        sqlx::raw_sql("DEALLOCATE plan_probe")
            .execute(tx.conn())
            .await
            .expect("deallocate");
        let plan = plan.join("\n");
        match (plan.contains("$1"), plan.contains("42")) {
            (true, false) => true,
            (false, true) => false,
            _ => panic!("unexpected plan: {plan}"),
        }
    }

    async fn settings(tx: &mut UserTx) -> (String, String, String) {
        sqlx::query_as(
            "SELECT current_user::text, current_setting('ragpipe.user_id', true), \
                    current_setting('plan_cache_mode') || ' jit ' || current_setting('jit')",
        )
        .fetch_one(tx.conn())
        .await
        .expect("settings")
    }

    #[sqlx::test(migrations = false)]
    async fn search_transactions_plan_generically_without_jit_and_leave_the_connection_as_it_was(
        options: PgPoolOptions,
        connect: PgConnectOptions,
    ) {
        let migrating = Store::from_pool(PgPoolOptions::new().connect_with(connect.clone()).await.expect("pool"));
        migrating.migrate(&Config::defaults().embedding).await.expect("migrate");
        drop(migrating);
        // One connection, so every transaction below runs on the same one.
        let pool = options.max_connections(1).connect_with(connect).await.expect("pool");
        let store = Store::from_pool(pool);
        let user = UserId::new();

        let mut tx = store.search_tx(user).await.expect("search tx");
        let (role, acting, mode) = settings(&mut tx).await;
        assert_eq!((role.as_str(), mode.as_str()), (APP_ROLE, "force_generic_plan jit off"));
        assert_eq!(acting, user.0.to_string());
        assert!(planned_generically(&mut tx).await);
        tx.commit().await.expect("commit");

        // A plain user transaction on the same connection afterwards plans as the server
        // chooses: the setting ended with the search transaction.
        let mut tx = store.user_tx(user).await.expect("user tx");
        let (role, _, mode) = settings(&mut tx).await;
        assert_eq!((role.as_str(), mode.as_str()), (APP_ROLE, "auto jit on"));
        assert!(!planned_generically(&mut tx).await);
        tx.rollback().await.expect("rollback");

        // So does the connection outside any user transaction, after a search transaction
        // that was dropped rather than ended.
        let tx = store.search_tx(user).await.expect("search tx");
        drop(tx);
        let mode: String =
            sqlx::query_scalar("SELECT current_setting('plan_cache_mode') || ' jit ' || current_setting('jit')")
                .fetch_one(&store.pool)
                .await
                .expect("setting");
        assert_eq!(mode, "auto jit on");
    }
}
