//! The streaming replica that the replica tests read from: the hot standby `scripts/replica`
//! keeps on port 5433 (`RAGPIPE_REPLICA_PORT`), a physical copy of the whole primary, so a
//! database `#[sqlx::test]` creates on the primary appears there once replayed.
//!
//! Replay is paused and resumed for the whole standby, so the tests that use it hold an
//! exclusive lock on a file for their whole run ([`Replica::attach`]): they run one at a time,
//! whatever process or test runner they are in, and a test never finds replay paused by another.
//! Without a replica the tests fail and say how to make one; they never pass without it.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

/// Where the replica listens unless `RAGPIPE_REPLICA_PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 5433;

/// How long a test waits for the replica to replay what the primary has written.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// The replica's copy of one test database, and the lock that keeps other replica tests out.
pub struct Replica {
    /// A pool on the test database's copy, as the primary's pool connects (a superuser).
    pub pool: PgPool,
    /// The standby's `postgres` database, to pause and resume replay.
    admin: PgPool,
    port: u16,
    paused: bool,
    _lock: std::fs::File,
}

fn port() -> u16 {
    std::env::var("RAGPIPE_REPLICA_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_PORT)
}

/// The primary's WAL insert position, as bytes from `0/0`.
async fn primary_position(primary: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")
        .fetch_one(primary)
        .await
        .expect("reading the primary's WAL position")
}

impl Replica {
    /// Takes the replica tests' lock, makes sure replay runs (a test that died paused it
    /// otherwise), waits until the replica has replayed everything the primary has written so
    /// far (the test database and its schema included), and connects to the test database there.
    /// Panics, saying why, when no streaming replica answers.
    pub async fn attach(primary: &PgPool) -> Replica {
        let lock = tokio::task::spawn_blocking(|| {
            let path = std::env::temp_dir().join("ragpipe-replica-tests.lock");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            file.lock()
                .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
            file
        })
        .await
        .expect("taking the replica tests' lock");

        let port = port();
        let primary_options: PgConnectOptions = (*primary.connect_options()).clone();
        let admin_options = primary_options.clone().port(port).database("postgres");
        let admin = match tokio::time::timeout(
            Duration::from_secs(10),
            PgPoolOptions::new().max_connections(2).connect_with(admin_options),
        )
        .await
        {
            Ok(Ok(pool)) => pool,
            Ok(Err(e)) => panic!(
                "no streaming replica answers on {}:{port} ({e}); scripts/replica makes one (scripts/setup runs it)",
                primary_options.get_host()
            ),
            Err(_) => panic!(
                "no streaming replica answers on {}:{port} (timed out); scripts/replica makes one",
                primary_options.get_host()
            ),
        };
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&admin)
            .await
            .expect("asking the replica whether it is in recovery");
        assert!(
            in_recovery,
            "the server on port {port} is not a standby; scripts/replica makes one"
        );
        let mut replica = Replica {
            pool: PgPoolOptions::new()
                .max_connections(10)
                .connect_lazy_with(primary_options.port(port)),
            admin,
            port,
            paused: true,
            _lock: lock,
        };
        replica.resume().await;
        replica.wait_replayed(primary).await;
        replica
    }

    /// Waits until the replica has replayed everything the primary had written when called.
    pub async fn wait_replayed(&self, primary: &PgPool) {
        let target = primary_position(primary).await;
        let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
        loop {
            let replayed: Option<i64> = sqlx::query_scalar("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8")
                .fetch_one(&self.admin)
                .await
                .expect("reading the replica's replay position");
            if replayed.is_some_and(|r| r >= target) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replica on port {} replayed up to {replayed:?} of {target} in {REPLAY_TIMEOUT:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pauses replay: from now on the replica shows the primary as it was, whatever is written.
    pub async fn pause(&mut self) {
        self.paused = true;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&self.admin)
            .await
            .expect("pausing replay");
        // Pausing takes effect at the next record; wait until the standby says so.
        let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
        loop {
            let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&self.admin)
                .await
                .expect("reading the replay pause state");
            if state == "paused" {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "replay did not pause: {state}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resumes replay.
    pub async fn resume(&mut self) {
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&self.admin)
            .await
            .expect("resuming replay");
        self.paused = false;
    }
}

impl Drop for Replica {
    /// A test that fails while replay is paused resumes it on the way out (the next test would
    /// too, in [`Replica::attach`]); no runtime is at hand here, so through psql.
    fn drop(&mut self) {
        if self.paused {
            let _ = std::process::Command::new("psql")
                .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
                .arg(self.port.to_string())
                .args(["-c", "SELECT pg_wal_replay_resume()"])
                .status();
        }
    }
}
