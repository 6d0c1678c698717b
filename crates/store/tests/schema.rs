//! The schema and its security model, against a real PostgreSQL with pgvector: a fresh
//! database per test (`#[sqlx::test]`, DATABASE_URL names the server).

use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, UserTx, api_keys, embedding_models, users};
use sqlx::{PgPool, Row};
use uuid::Uuid;

async fn migrated(pool: PgPool) -> Store {
    let store = Store::from_pool(pool);
    store
        .migrate(&Config::defaults().embedding)
        .await
        .expect("migrations apply");
    store
}

async fn new_user(store: &Store, email: &str) -> UserId {
    let user = users::create(
        store,
        &users::NewUser {
            email: email.into(),
            ..Default::default()
        },
    )
    .await
    .expect("create user");
    UserId(user.id)
}

/// Every user-data table, with its owner column.
const USER_TABLES: &[(&str, &str)] = &[
    ("users", "id"),
    ("api_keys", "user_id"),
    ("documents", "user_id"),
    ("document_blobs", "user_id"),
    ("document_chunks", "user_id"),
    ("copilot_conversations", "user_id"),
    ("copilot_messages", "user_id"),
    ("agent_sessions", "user_id"),
    ("agent_requests", "user_id"),
    ("usage_events", "user_id"),
];

/// Fills every user-data table with one row owned by `user`, through the user's transaction.
async fn seed(store: &Store, user: UserId) {
    let mut tx = store.user_tx(user).await.expect("tx");
    let u = user.0;
    let doc = Uuid::now_v7();
    let conv = Uuid::now_v7();
    let (m1, m2) = (Uuid::now_v7(), Uuid::now_v7());
    let session = Uuid::now_v7();
    let statements: Vec<(String, Vec<Uuid>)> = vec![
        ("INSERT INTO api_keys (user_id, prefix, key_sha256) VALUES ($1, 'rp_x', sha256(gen_random_uuid()::text::bytea))".into(), vec![u]),
        ("INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256) VALUES ($2, $1, 'a.txt', 'text/plain', 5, sha256('hello'))".into(), vec![u, doc]),
        ("INSERT INTO document_blobs (document_id, user_id, bytes) VALUES ($2, $1, 'hello')".into(), vec![u, doc]),
        (format!(
            "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end, embedding, embedding_model) \
             VALUES ($2, $1, 0, 'hello world', 2, 0, 11, array_fill(0.1, ARRAY[384])::vector, '{}')",
            Config::defaults().embedding.model
        ), vec![u, doc]),
        ("INSERT INTO copilot_conversations (id, user_id, title) VALUES ($2, $1, 't')".into(), vec![u, conv]),
        ("INSERT INTO copilot_messages (id, conversation_id, user_id, role, content) VALUES ($3, $2, $1, 'user', 'q')".into(), vec![u, conv, m1]),
        ("INSERT INTO copilot_messages (id, conversation_id, user_id, role, content, status) VALUES ($3, $2, $1, 'assistant', '', 'streaming')".into(), vec![u, conv, m2]),
        ("INSERT INTO agent_sessions (id, conversation_id, user_id) VALUES ($3, $2, $1)".into(), vec![u, conv, session]),
        ("INSERT INTO agent_requests (user_id, session_id, conversation_id, user_message_id, assistant_message_id) VALUES ($1, $2, $3, $4, $5)".into(), vec![u, session, conv, m1, m2]),
        ("INSERT INTO usage_events (user_id, kind, model, prompt_tokens, idempotency_key) VALUES ($1, 'chat', 'm', 10, gen_random_uuid()::text)".into(), vec![u]),
    ];
    for (sql, binds) in statements {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
        for b in binds {
            q = q.bind(b);
        }
        q.execute(tx.conn()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    tx.commit().await.expect("commit");
}

async fn count(tx: &mut UserTx, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(tx.conn())
        .await
        .expect("count")
}

fn sql_state(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

/// Runs `sql` (binding `id`) in a savepoint of `tx`: it must either be refused for want of
/// privilege or affect no row.
async fn assert_reaches_no_row(tx: &mut UserTx, sql: &str, id: Uuid, what: &str) {
    sqlx::raw_sql("SAVEPOINT probe")
        .execute(tx.conn())
        .await
        .expect("savepoint");
    match sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .execute(tx.conn())
        .await
    {
        Ok(done) => assert_eq!(done.rows_affected(), 0, "{what}"),
        Err(e) => {
            assert!(
                sql_state(&e).as_deref() == Some("42501") && e.to_string().contains("permission denied"),
                "{sql}: {e}"
            );
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT probe")
                .execute(tx.conn())
                .await
                .expect("rollback to savepoint");
        }
    }
}

#[sqlx::test(migrations = false)]
async fn migrations_apply_to_an_empty_database_and_again_as_a_no_op(pool: PgPool) {
    let store = Store::from_pool(pool.clone());
    assert!(!store.pending_migrations().await.expect("pending").is_empty());
    let first = store.migrate(&Config::defaults().embedding).await.expect("first run");
    assert_eq!(first.applied.len(), ragpipe_store::migrate::MIGRATOR.iter().count());
    assert!(first.created_embedding_index);
    let second = store.migrate(&Config::defaults().embedding).await.expect("second run");
    assert!(second.applied.is_empty(), "{second:?}");
    assert!(!second.created_embedding_index);
    assert!(store.pending_migrations().await.expect("pending").is_empty());
    let vector: String = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        .fetch_one(&pool)
        .await
        .expect("pgvector");
    assert!(!vector.is_empty());
    let queue_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'apalis' AND table_name = 'jobs'",
    )
    .fetch_one(&pool)
    .await
    .expect("apalis");
    assert_eq!(queue_tables, 1);
}

#[sqlx::test(migrations = false)]
async fn concurrent_migrations_both_succeed(pool: PgPool) {
    let a = Store::from_pool(pool.clone());
    let b = Store::from_pool(pool.clone());
    let config = Config::defaults();
    let (ra, rb) = tokio::join!(a.migrate(&config.embedding), b.migrate(&config.embedding));
    let (ra, rb) = (ra.expect("a"), rb.expect("b"));
    // Exactly one of the runs applied the migrations; the other found them done.
    assert_eq!(
        ra.applied.len() + rb.applied.len(),
        ragpipe_store::migrate::MIGRATOR.iter().count()
    );
    assert!(ra.created_embedding_index ^ rb.created_embedding_index);
}

#[sqlx::test(migrations = false)]
async fn every_user_table_has_forced_row_level_security(pool: PgPool) {
    let _store = migrated(pool.clone()).await;
    let rows = sqlx::query("SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'")
        .fetch_all(&pool)
        .await
        .expect("pg_class");
    for (table, _) in USER_TABLES {
        let row = rows
            .iter()
            .find(|r| r.get::<String, _>("relname") == *table)
            .unwrap_or_else(|| panic!("{table} missing"));
        assert!(
            row.get::<bool, _>("relrowsecurity") && row.get::<bool, _>("relforcerowsecurity"),
            "{table}"
        );
    }
    // The application role cannot bypass row-level security.
    let bypass: bool =
        sqlx::query_scalar("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = 'ragpipe_app'")
            .fetch_one(&pool)
            .await
            .expect("role");
    assert!(!bypass);
}

#[sqlx::test(migrations = false)]
async fn users_see_and_change_only_their_own_rows(pool: PgPool) {
    let store = migrated(pool.clone()).await;
    let a = new_user(&store, "a@example.com").await;
    let b = new_user(&store, "b@example.com").await;
    seed(&store, a).await;

    // The superuser pool itself sees A's rows: the isolation below comes from the transaction.
    let superuser_sees: i64 = sqlx::query_scalar("SELECT count(*) FROM document_chunks")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(superuser_sees, 1);

    for (table, owner) in USER_TABLES {
        let mut tx = store.user_tx(a).await.expect("tx");
        assert!(count(&mut tx, table).await >= 1, "A sees its own {table}");
        drop(tx);

        let mut tx = store.user_tx(b).await.expect("tx");
        let expected_b = if *table == "users" { 1 } else { 0 };
        assert_eq!(count(&mut tx, table).await, expected_b, "B must not see A's {table}");
        if *table != "usage_events" {
            // Ownership columns are not writable at all (migration 017) and most tables cannot
            // be deleted from: refused for want of privilege, or run and reached no row of A's.
            let update = format!("UPDATE {table} SET {owner} = {owner} WHERE {owner} = $1");
            assert_reaches_no_row(&mut tx, &update, a.0, &format!("B updated A's {table}")).await;
            let delete = format!("DELETE FROM {table} WHERE {owner} = $1");
            assert_reaches_no_row(&mut tx, &delete, a.0, &format!("B deleted A's {table}")).await;
        }
        tx.rollback().await.expect("rollback");
    }

    // B cannot insert rows owned by A (one table per policy shape; the rest share it).
    for sql in [
        "INSERT INTO documents (user_id, filename, content_type, byte_size, sha256) VALUES ($1, 'x', 'text/plain', 1, sha256('x'))",
        "INSERT INTO copilot_conversations (user_id, title) VALUES ($1, 'x')",
        "INSERT INTO usage_events (user_id, kind, model, idempotency_key) VALUES ($1, 'chat', 'm', 'k')",
        "INSERT INTO api_keys (user_id, prefix, key_sha256) VALUES ($1, 'p', sha256('k'))",
        "INSERT INTO users (id, email) VALUES ($1, 'z@example.com')",
    ] {
        let mut tx = store.user_tx(b).await.expect("tx");
        let err = sqlx::query(sql).bind(a.0).execute(tx.conn()).await.expect_err(sql);
        assert_eq!(sql_state(&err).as_deref(), Some("42501"), "{sql}: {err}");
    }

    // Nor attach its own rows to A's parents: children reference (id, user_id).
    let a_doc: Uuid = {
        let mut tx = store.user_tx(a).await.expect("tx");
        sqlx::query_scalar("SELECT id FROM documents")
            .fetch_one(tx.conn())
            .await
            .expect("doc")
    };
    let mut tx = store.user_tx(b).await.expect("tx");
    let err = sqlx::query("INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end) VALUES ($1, $2, 9, 'x', 1, 0, 1)")
        .bind(a_doc)
        .bind(b.0)
        .execute(tx.conn())
        .await
        .expect_err("foreign chunk");
    assert_eq!(sql_state(&err).as_deref(), Some("23503"), "{err}");
}

#[sqlx::test(migrations = false)]
async fn usage_events_are_append_only_even_for_their_owner(pool: PgPool) {
    let store = migrated(pool).await;
    let a = new_user(&store, "a@example.com").await;
    seed(&store, a).await;
    for sql in ["UPDATE usage_events SET prompt_tokens = 0", "DELETE FROM usage_events"] {
        let mut tx = store.user_tx(a).await.expect("tx");
        let err = sqlx::query(sql).execute(tx.conn()).await.expect_err(sql);
        assert_eq!(sql_state(&err).as_deref(), Some("42501"), "{sql}: {err}");
    }
    let mut tx = store.user_tx(a).await.expect("tx");
    assert_eq!(count(&mut tx, "usage_events").await, 1);
}

#[sqlx::test(migrations = false)]
async fn nothing_leaks_between_transactions_on_one_pooled_connection(pool: PgPool) {
    let options = pool.connect_options().as_ref().clone();
    let store = migrated(pool).await;
    let a = new_user(&store, "a@example.com").await;
    let b = new_user(&store, "b@example.com").await;
    seed(&store, a).await;
    seed(&store, b).await;
    // One connection, so every transaction below reuses it.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("pool");
    let store = Store::from_pool(one.clone());
    let pid = || {
        let p = one.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&p)
                .await
                .expect("pid")
        }
    };
    let first_pid = pid().await;

    let mut tx = store.user_tx(a).await.expect("tx a");
    let a_docs: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM documents")
        .fetch_all(tx.conn())
        .await
        .expect("a docs");
    assert_eq!(a_docs, vec![a.0]);
    tx.commit().await.expect("commit");

    let mut tx = store.user_tx(b).await.expect("tx b");
    let b_docs: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM documents")
        .fetch_all(tx.conn())
        .await
        .expect("b docs");
    assert_eq!(b_docs, vec![b.0]);
    drop(tx); // dropped without commit: rolled back when the connection is reused

    // Outside any user transaction the connection is back to its own role with no user set.
    let (role, acting): (String, Option<String>) =
        sqlx::query_as("SELECT current_user::text, nullif(current_setting('ragpipe.user_id', true), '')")
            .fetch_one(&one)
            .await
            .expect("state");
    assert_ne!(role, "ragpipe_app");
    assert_eq!(acting, None);
    assert_eq!(pid().await, first_pid, "the same pooled connection was reused");
}

#[sqlx::test(migrations = false)]
async fn isolation_holds_for_a_non_superuser_pool(pool: PgPool) {
    let store = migrated(pool.clone()).await;
    let a = new_user(&store, "a@example.com").await;
    let b = new_user(&store, "b@example.com").await;
    seed(&store, a).await;
    // A plain login role that owns nothing but may act as the application role.
    sqlx::query(
        "DO $$ BEGIN CREATE ROLE ragpipe_test_login LOGIN NOSUPERUSER NOBYPASSRLS; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
    )
    .execute(&pool)
    .await
    .expect("login role");
    sqlx::query("GRANT ragpipe_app TO ragpipe_test_login")
        .execute(&pool)
        .await
        .ok();
    let options = pool.connect_options().as_ref().clone().username("ragpipe_test_login");
    let login_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("login pool");
    let login_store = Store::from_pool(login_pool);
    let mut tx = login_store.user_tx(b).await.expect("tx");
    for (table, _) in USER_TABLES {
        let expected = if *table == "users" { 1 } else { 0 };
        assert_eq!(count(&mut tx, table).await, expected, "{table}");
    }
    drop(tx);
    let mut tx = login_store.user_tx(a).await.expect("tx");
    assert_eq!(count(&mut tx, "documents").await, 1);
}

#[sqlx::test(migrations = false)]
async fn api_keys_are_stored_hashed_and_authenticate_their_owner(pool: PgPool) {
    let store = migrated(pool.clone()).await;
    let a = new_user(&store, "a@example.com").await;
    let created = api_keys::create(&store, a, Some("ci")).await.expect("key");
    assert!(created.key.starts_with("rp_") && created.key.len() > 40);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_sha256 FROM api_keys")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_ne!(stored, created.key.as_bytes());
    let raw = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM api_keys WHERE position($1::bytea in key_sha256) > 0")
        .bind(created.key.as_bytes())
        .fetch_one(&pool)
        .await
        .expect("scan");
    assert_eq!(raw, 0, "the key itself is not stored");

    let auth = api_keys::authenticate(&store, &created.key)
        .await
        .expect("auth")
        .expect("valid key");
    assert_eq!(auth.user_id, a);
    assert_eq!(api_keys::authenticate(&store, "rp_nope").await.expect("auth"), None);
    assert_eq!(api_keys::authenticate(&store, "not-a-key").await.expect("auth"), None);
    let used: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar("SELECT last_used_at FROM api_keys")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert!(used.is_some());

    sqlx::query("UPDATE api_keys SET revoked_at = now()")
        .execute(&pool)
        .await
        .expect("revoke");
    assert_eq!(api_keys::authenticate(&store, &created.key).await.expect("auth"), None);

    let missing = api_keys::create(&store, UserId::new(), None)
        .await
        .expect_err("no such user");
    assert!(
        matches!(missing, ragpipe_store::StoreError::NotFound("user")),
        "{missing}"
    );
}

#[sqlx::test(migrations = false)]
async fn emails_are_unique_case_insensitively(pool: PgPool) {
    let store = migrated(pool).await;
    new_user(&store, "Ann@example.com").await;
    let err = users::create(
        &store,
        &users::NewUser {
            email: "ann@EXAMPLE.com".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("duplicate");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[sqlx::test(migrations = false)]
async fn models_of_different_dimensions_coexist(pool: PgPool) {
    let store = migrated(pool.clone()).await;
    assert!(
        embedding_models::ensure(&store, "text-embedding-3-small", 1536, Some("http://127.0.0.1:9/v1"))
            .await
            .expect("1536")
    );
    let models = embedding_models::list(&store).await.expect("list");
    assert_eq!(models.iter().map(|m| m.dim).collect::<Vec<_>>(), vec![384, 1536]);
    assert_eq!(models[1].base_url.as_deref(), Some("http://127.0.0.1:9/v1"));
    let err = embedding_models::ensure(&store, "text-embedding-3-small", 384, None)
        .await
        .expect_err("dim change");
    assert!(err.to_string().contains("dimension 1536"), "{err}");

    let a = new_user(&store, "a@example.com").await;
    seed(&store, a).await;
    let mut tx = store.user_tx(a).await.expect("tx");
    let doc: Uuid = sqlx::query_scalar("SELECT id FROM documents")
        .fetch_one(tx.conn())
        .await
        .expect("doc");
    sqlx::query(
        "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end, embedding, embedding_model) \
         VALUES ($1, $2, 1, 'x', 1, 0, 1, array_fill(0.1, ARRAY[1536])::vector, 'text-embedding-3-small')",
    )
    .bind(doc)
    .bind(a.0)
    .execute(tx.conn())
    .await
    .expect("1536-d chunk beside 384-d chunks");
    // A vector of the wrong size for its model is refused by that model's index expression.
    let err = sqlx::query(
        "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end, embedding, embedding_model) \
         VALUES ($1, $2, 2, 'x', 1, 0, 1, array_fill(0.1, ARRAY[384])::vector, 'text-embedding-3-small')",
    )
    .bind(doc)
    .bind(a.0)
    .execute(tx.conn())
    .await
    .expect_err("wrong dimension");
    assert!(err.to_string().contains("dimensions"), "{err}");
    drop(tx);

    // Which models have chunks is answered across users whatever the pool's role, though
    // outside a user's transaction row-level security hides every chunk.
    let in_use = |store: Store| async move {
        embedding_models::with_chunks(&store)
            .await
            .expect("models in use")
            .into_iter()
            .map(|m| m.model)
            .collect::<Vec<_>>()
    };
    assert_eq!(in_use(store.clone()).await, vec![Config::defaults().embedding.model]);
    let b = new_user(&store, "b@example.com").await;
    seed(&store, b).await;
    let mut tx = store.user_tx(b).await.expect("tx");
    sqlx::query(
        "UPDATE document_chunks SET embedding = array_fill(0.1, ARRAY[1536])::vector, \
                embedding_model = 'text-embedding-3-small' WHERE chunk_index = 0",
    )
    .execute(tx.conn())
    .await
    .expect("move one chunk of b's to the 1536-d model");
    tx.commit().await.expect("commit");
    assert_eq!(
        in_use(store.clone()).await,
        vec![Config::defaults().embedding.model, "text-embedding-3-small".to_owned()]
    );
}

/// Every index on the chunks table is read by some statement: the text leg reads its own
/// postings, so no GIN index on `search_vector` is written for nothing with every chunk.
#[sqlx::test(migrations = false)]
async fn the_chunks_table_has_no_gin_index_no_query_could_read(pool: PgPool) {
    let admin = pool.clone();
    migrated(pool).await;
    let indexes: Vec<(String, String)> =
        sqlx::query_as("SELECT indexname::text, indexdef FROM pg_indexes WHERE tablename = 'document_chunks'")
            .fetch_all(&admin)
            .await
            .expect("indexes");
    assert!(!indexes.is_empty());
    let gin: Vec<_> = indexes.iter().filter(|(_, def)| def.contains("USING gin")).collect();
    assert!(gin.is_empty(), "unused GIN indexes on document_chunks: {gin:?}");
}

/// The user tables (those with a `user_id` column, and `users` itself) with their owner column:
/// the tables distributed by user on Citus (ARCHITECTURE.md, "Sharding path (Citus)").
async fn owner_columns(pool: &PgPool) -> std::collections::BTreeMap<String, String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, CASE WHEN c.relname = 'users' THEN 'id' ELSE 'user_id' END \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
           AND (c.relname = 'users' OR EXISTS (SELECT 1 FROM pg_attribute a \
                WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped))",
    )
    .fetch_all(pool)
    .await
    .expect("user tables");
    rows.into_iter().collect()
}

/// Citus checks a foreign key between distributed tables, and a unique index of one, inside a
/// shard, so each must include the distribution column; a foreign key may point from a
/// distributed table to a reference table, never the other way. Every foreign key between
/// user tables maps user_id to user_id (or `users.id`), and no table outside them references
/// one. The unique keys without user_id are exactly those the cut-over changes, each listed
/// in ARCHITECTURE.md with why it waits: a new one fails here until it is added there too.
#[sqlx::test(migrations = false)]
async fn keys_between_user_tables_include_user_id(pool: PgPool) {
    let admin = pool.clone();
    migrated(pool).await;
    let owners = owner_columns(&admin).await;
    for table in [
        "users",
        "documents",
        "document_chunks",
        "agent_requests",
        "search_blocks",
    ] {
        assert!(owners.contains_key(table), "{table} is a user table: {owners:?}");
    }

    // (name, table, referenced table, columns, referenced columns)
    type ForeignKey = (String, String, String, Vec<String>, Vec<String>);
    let foreign_keys: Vec<ForeignKey> = sqlx::query_as(
        "SELECT con.conname::text, src.relname::text, dst.relname::text, \
                ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, i) \
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.i), \
                ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, i) \
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.i) \
         FROM pg_constraint con \
         JOIN pg_class src ON src.oid = con.conrelid \
         JOIN pg_class dst ON dst.oid = con.confrelid \
         JOIN pg_namespace n ON n.oid = src.relnamespace \
         WHERE con.contype = 'f' AND n.nspname = 'public' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .expect("foreign keys");
    let mut between_user_tables = 0;
    let mut violations = Vec::new();
    for (name, from, to, columns, referenced) in &foreign_keys {
        match (owners.get(from), owners.get(to)) {
            (Some(from_owner), Some(to_owner)) => {
                between_user_tables += 1;
                let maps_owner = columns
                    .iter()
                    .zip(referenced)
                    .any(|(c, r)| c == from_owner && r == to_owner);
                if !maps_owner {
                    violations.push(format!("{name}: {from} {columns:?} -> {to} {referenced:?}"));
                }
            }
            (None, Some(_)) => violations.push(format!("{name}: {from} (not a user table) -> user table {to}")),
            _ => {}
        }
    }
    assert!(between_user_tables >= 10, "{foreign_keys:?}");
    assert!(
        violations.is_empty(),
        "foreign keys that do not carry the owner: {violations:#?}"
    );

    // Unique indexes (primary keys included) of user tables that lack the owner column.
    let unique: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT i.relname::text, t.relname::text, \
                ARRAY(SELECT coalesce(a.attname::text, '(expression)') \
                      FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                      LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
                      WHERE k.n <= x.indnkeyatts ORDER BY k.n) \
         FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid \
         JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE x.indisunique AND n.nspname = 'public' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .expect("unique indexes");
    let without_owner: Vec<&str> = unique
        .iter()
        .filter(|(_, table, columns)| owners.get(table).is_some_and(|owner| !columns.contains(owner)))
        .map(|(index, ..)| index.as_str())
        .collect();
    assert_eq!(
        without_owner,
        [
            "agent_requests_pkey",
            "agent_sessions_conversation_id_key",
            "agent_sessions_pkey",
            "api_keys_key_sha256_key",
            "api_keys_pkey",
            "copilot_conversations_pkey",
            "copilot_messages_pkey",
            "document_blobs_pkey",
            "document_chunks_document_id_chunk_index_key",
            "document_chunks_pkey",
            "documents_pkey",
            "usage_events_idempotency_key_key",
            "usage_events_pkey",
            "users_email_key",
        ],
        "unique keys of user tables without the owner column (ARCHITECTURE.md lists those the \
         cut-over changes): {unique:#?}"
    );
}

/// A request's previous request is its user's: linking another user's is refused, and deleting
/// the previous request unlinks its successor, which keeps its owner.
#[sqlx::test(migrations = false)]
async fn a_requests_chain_stays_within_its_user(pool: PgPool) {
    use ragpipe_core::ConversationId;
    use ragpipe_store::conversations::{self, AskSettings};
    let admin = pool.clone();
    let store = migrated(pool).await;
    let settings = AskSettings {
        model: "test-chat",
        retrieval_mode: None,
        k: None,
        max_attempts: 1,
    };
    let mut requests = Vec::new();
    for (email, questions) in [("chain-a@example.com", 2), ("chain-b@example.com", 1)] {
        let user = new_user(&store, email).await;
        let mut tx = store.user_tx(user).await.expect("tx");
        let conversation = conversations::create(&mut tx, None).await.expect("conversation");
        for _ in 0..questions {
            conversations::ask(&mut tx, ConversationId(conversation.id), "Why?", &settings)
                .await
                .expect("ask");
        }
        tx.commit().await.expect("commit");
        let ids: Vec<(Uuid, Uuid, Option<Uuid>)> = sqlx::query_as(
            "SELECT id, user_id, previous_request_id FROM agent_requests WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user.0)
        .fetch_all(&admin)
        .await
        .expect("requests");
        requests.push(ids);
    }
    let (first_a, second_a, only_b) = (requests[0][0], requests[0][1], requests[1][0]);
    assert_eq!(second_a.2, Some(first_a.0), "the second question chains to the first");

    let linked = sqlx::query("UPDATE agent_requests SET previous_request_id = $1 WHERE id = $2")
        .bind(first_a.0)
        .bind(only_b.0)
        .execute(&admin)
        .await
        .expect_err("another user's request cannot be the previous one");
    assert_eq!(sql_state(&linked).as_deref(), Some("23503"), "{linked}");

    sqlx::query("DELETE FROM agent_requests WHERE id = $1")
        .bind(first_a.0)
        .execute(&admin)
        .await
        .expect("deleting the first request");
    let after: (Uuid, Option<Uuid>) =
        sqlx::query_as("SELECT user_id, previous_request_id FROM agent_requests WHERE id = $1")
            .bind(second_a.0)
            .fetch_one(&admin)
            .await
            .expect("the second request");
    assert_eq!(after, (second_a.1, None), "unlinked, still its user's");
}
