//! Reads from a streaming replica (`RAGPIPE_READ_DATABASE_URL`), and the rule that keeps a
//! user's own writes in their view.
//!
//! A hot standby shows the primary's data as of the WAL position it has replayed. Reading from
//! it is safe for a user when it has replayed everything that user's view already depends on.
//! This process records, per user, the primary's WAL insert position after each of the user's
//! transactions on the primary commits (a write, or a read whose answer the user has seen: so
//! later reads never go back in time either). It is taken after the commit, so it is at or past
//! the commit record's end: a standby whose `pg_last_wal_replay_lsn()` has reached it has
//! replayed the commit, and every snapshot it takes afterwards shows the transaction's rows.
//! A read transaction on the replica reads the replay position in the statement that sets its
//! role and user (no extra round trip); when it is behind the user's position, the transaction
//! is dropped and the read runs on the primary instead. The replica's later statements take
//! later snapshots, so they show at least what that position covers.
//!
//! What this process cannot know: writes made by other processes (another API process, a
//! worker process). ARCHITECTURE.md, "Reads from a replica", says what holds with several.

use crate::StoreError;
use ragpipe_core::UserId;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Users whose position this process remembers at most. Past it, positions the replica has
/// already replayed are forgotten, and if that is not enough, all are folded into one position
/// every user's replica read must wait for: still correct, only more reads go to the primary.
const MAX_TRACKED_USERS: usize = 100_000;

/// How long reads stay on the primary after the replica could not be reached, so that a replica
/// that is down costs one failed connection attempt per interval, not one per read.
const REPLICA_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A position that is not known: the user's last write committed (or may have) but the primary's
/// position could not be read afterwards. Reads go to the primary until a later primary
/// transaction of the user records a known position, which covers the unknown one.
const UNKNOWN: i64 = i64::MAX;

/// The replica's pool and what this process knows about users' positions. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct ReadReplica {
    pub(crate) primary: PgPool,
    pub(crate) replica: PgPool,
    positions: Arc<Mutex<Positions>>,
}

/// WAL positions as bytes from `0/0` (`pg_lsn - '0/0'`), which fit an `i64`.
#[derive(Debug, Default)]
struct Positions {
    /// Per user: the primary's position after their last transaction there.
    by_user: HashMap<UserId, i64>,
    /// The position every read must wait for (positions folded in when `by_user` was full).
    floor: i64,
    /// The highest replay position the replica has reported.
    replayed: i64,
    /// Reads stay on the primary until then (the replica could not be reached).
    down_until: Option<Instant>,
}

/// Where a user's read may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To the replica, if it has replayed this position.
    Replica { needs: i64 },
    /// To the primary (the replica is down, or the user's position is not known).
    Primary,
}

impl ReadReplica {
    pub(crate) fn new(primary: PgPool, replica: PgPool) -> ReadReplica {
        ReadReplica {
            primary,
            replica,
            positions: Arc::new(Mutex::new(Positions::default())),
        }
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, Positions> {
        // A panic while holding the lock leaves plain numbers behind, never a broken invariant
        // that a later read could trust wrongly: positions only grow.
        self.positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where `user`'s next read may go.
    pub(crate) fn route(&self, user: UserId) -> Route {
        let p = self.positions();
        if p.down_until.is_some_and(|t| Instant::now() < t) {
            return Route::Primary;
        }
        let own = p.by_user.get(&user).copied().unwrap_or(0);
        if own == UNKNOWN {
            return Route::Primary;
        }
        Route::Replica {
            needs: own.max(p.floor),
        }
    }

    /// The replica reported having replayed `replayed`; `user`'s position, if reached, is no
    /// longer needed.
    pub(crate) fn replayed(&self, user: UserId, replayed: i64) {
        let mut p = self.positions();
        p.replayed = p.replayed.max(replayed);
        if p.by_user.get(&user).is_some_and(|&own| own <= replayed) {
            p.by_user.remove(&user);
        }
    }

    /// The replica could not be reached: reads go to the primary for a while.
    pub(crate) fn unreachable(&self) {
        self.positions().down_until = Some(Instant::now() + REPLICA_RETRY_AFTER);
    }

    /// Records `user`'s position after a transaction of theirs committed on the primary
    /// (`None`: it could not be read, or the commit's outcome is unknown).
    pub(crate) fn note(&self, user: UserId, position: Option<i64>) {
        let mut p = self.positions();
        let position = position.unwrap_or(UNKNOWN);
        let entry = p.by_user.entry(user).or_insert(0);
        *entry = if *entry == UNKNOWN || position == UNKNOWN {
            // A known position read after an unknown one covers it.
            position
        } else {
            (*entry).max(position)
        };
        if p.by_user.len() > MAX_TRACKED_USERS {
            let replayed = p.replayed;
            p.by_user.retain(|_, &mut own| own > replayed);
        }
        if p.by_user.len() > MAX_TRACKED_USERS {
            let highest = p.by_user.values().copied().max().unwrap_or(0);
            // Unknown positions are not folded: the floor would keep every read on the primary
            // for good. Those users' reads go to the primary until their next commit; everyone
            // else's wait for the highest known position.
            let known = p.by_user.values().copied().filter(|&v| v != UNKNOWN).max().unwrap_or(0);
            p.floor = p.floor.max(known);
            if highest == UNKNOWN {
                p.by_user.retain(|_, &mut own| own == UNKNOWN);
            } else {
                p.by_user.clear();
            }
        }
    }

    /// The primary's WAL insert position (any connection: it is the server's).
    async fn primary_position(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar!(r#"SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8 AS "lsn!""#)
            .fetch_one(&self.primary)
            .await
    }

    /// Reads the primary's WAL insert position after `user`'s transaction committed there, and
    /// records it.
    pub(crate) async fn note_after_commit(&self, user: UserId) {
        let position = self
            .primary_position()
            .await
            .map_err(StoreError::db("reading the primary's WAL position after a commit"));
        match position {
            Ok(lsn) => self.note(user, Some(lsn)),
            Err(e) => {
                tracing::warn!(user_id = %user.0, error = %e, "a user's reads go to the primary until their next commit");
                self.note(user, None);
            }
        }
    }
}

/// The read replica as `ragpipe doctor` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Whether the server is a standby in recovery (otherwise reads never go to it).
    pub in_recovery: bool,
    /// Its replay position (bytes from `0/0`), if in recovery.
    pub replayed: Option<i64>,
    /// The primary's WAL insert position when asked, read just before the replica's.
    pub primary: i64,
}

impl ReplicaStatus {
    /// How many bytes of WAL the replica has still to replay (none when not in recovery).
    pub fn behind_bytes(&self) -> Option<i64> {
        self.replayed.map(|r| (self.primary - r).max(0))
    }
}

impl crate::Store {
    /// The read replica's state (`None`: no read replica is configured). Reads server
    /// functions only, no table, on each server's own pool.
    pub async fn read_replica_status(&self) -> Option<Result<ReplicaStatus, StoreError>> {
        let replica = self.replica.as_ref()?;
        Some(
            async {
                let primary = replica
                    .primary_position()
                    .await
                    .map_err(StoreError::db("reading the primary's WAL position"))?;
                let row = sqlx::query!(
                    r#"SELECT pg_is_in_recovery() AS "in_recovery!", CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 END AS replayed"#
                )
                .fetch_one(&replica.replica)
                .await
                .map_err(StoreError::db("asking the read replica how far it has replayed"))?;
                Ok(ReplicaStatus {
                    in_recovery: row.in_recovery,
                    replayed: row.replayed,
                    primary,
                })
            }
            .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> ReadReplica {
        let options = sqlx::postgres::PgConnectOptions::new();
        let pool = || sqlx::postgres::PgPoolOptions::new().connect_lazy_with(options.clone());
        ReadReplica::new(pool(), pool())
    }

    #[tokio::test]
    async fn a_users_reads_wait_for_their_own_position_only() {
        let r = replica();
        let (alice, bob) = (UserId::new(), UserId::new());
        assert_eq!(r.route(alice), Route::Replica { needs: 0 });
        r.note(alice, Some(500));
        r.note(alice, Some(300));
        assert_eq!(r.route(alice), Route::Replica { needs: 500 });
        assert_eq!(r.route(bob), Route::Replica { needs: 0 });
        r.replayed(alice, 499);
        assert_eq!(r.route(alice), Route::Replica { needs: 500 });
        r.replayed(alice, 500);
        assert_eq!(r.route(alice), Route::Replica { needs: 0 });
    }

    #[tokio::test]
    async fn an_unknown_position_keeps_reads_on_the_primary_until_a_known_one_follows() {
        let r = replica();
        let alice = UserId::new();
        r.note(alice, Some(700));
        r.note(alice, None);
        assert_eq!(r.route(alice), Route::Primary);
        r.note(alice, Some(800));
        assert_eq!(r.route(alice), Route::Replica { needs: 800 });
    }

    #[tokio::test]
    async fn an_unreachable_replica_sends_reads_to_the_primary_for_a_while() {
        let r = replica();
        let alice = UserId::new();
        r.unreachable();
        assert_eq!(r.route(alice), Route::Primary);
        r.positions().down_until = Some(Instant::now() - Duration::from_millis(1));
        assert_eq!(r.route(alice), Route::Replica { needs: 0 });
    }

    #[tokio::test]
    async fn past_the_bound_positions_fold_into_a_floor_that_still_covers_every_user() {
        let r = replica();
        let users: Vec<UserId> = (0..=MAX_TRACKED_USERS).map(|_| UserId::new()).collect();
        let unknown = users[0];
        r.note(unknown, None);
        for (i, u) in users.iter().enumerate().skip(1) {
            r.note(*u, Some(1_000 + i as i64));
        }
        let p = r.positions();
        assert!(p.by_user.len() <= MAX_TRACKED_USERS);
        drop(p);
        // Every user's read still waits for at least their own position.
        for (i, u) in users.iter().enumerate().skip(1) {
            match r.route(*u) {
                Route::Replica { needs } => assert!(needs >= 1_000 + i as i64),
                Route::Primary => panic!("a known position routes to the replica"),
            }
        }
        assert_eq!(r.route(unknown), Route::Primary);
    }
}
