//! What the application role may do, against a real PostgreSQL: its privileges on every table
//! of `public` and `apalis` equal an allow-list kept here (so a new grant is a decision, made in
//! a migration and written down below), and a user's own transaction cannot write the columns
//! that no path of ragpipe writes (plans, quotas, ids, owners, timestamps, statuses).

use ragpipe_core::{Config, ConversationId, UserId};
use ragpipe_store::{Store, conversations, documents, quotas, users};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::BTreeSet;
use uuid::Uuid;

/// Every privilege `ragpipe_app` holds on a table or sequence of `public` and `apalis`, one line
/// per relation: a privilege on every column is written bare (`SELECT`), on some columns with
/// them in table order (`UPDATE(status, progress)`); DELETE, TRUNCATE and TRIGGER are
/// table-wide. Relations on which it holds nothing are not listed.
///
/// `embedding_cache` and `usage_events` are as their own migrations left them.
const ALLOWED: &[&str] = &[
    "apalis.jobs: SELECT INSERT(job, id, job_type, status, attempts, max_attempts, run_at, priority, idempotency_key, metadata)",
    "apalis.workers: SELECT",
    "public.agent_requests: SELECT \
     INSERT(id, user_id, session_id, conversation_id, user_message_id, assistant_message_id, previous_request_id, retrieval) \
     UPDATE(status, progress, results, prompt_tokens, completion_tokens, cost, error, started_at, finished_at)",
    "public.agent_sessions: SELECT INSERT(id, user_id, conversation_id, model) UPDATE(last_request_id, updated_at)",
    "public.api_keys: SELECT INSERT(user_id, name, prefix, key_sha256) UPDATE(last_used_at)",
    "public.copilot_conversations: SELECT INSERT(id, user_id, title) UPDATE(title, updated_at)",
    "public.copilot_messages: SELECT \
     INSERT(id, conversation_id, user_id, role, content, status, model) \
     UPDATE(content, status, citations, model, prompt_tokens, completion_tokens, error, updated_at, completed_at)",
    "public.document_blobs: SELECT INSERT(document_id, user_id, bytes)",
    "public.document_chunks: SELECT \
     INSERT(document_id, user_id, chunk_index, content, token_count, page_first, page_last, heading_path, byte_start, byte_end, embedding, embedding_model) \
     UPDATE(embedding, embedding_model) DELETE",
    "public.documents: SELECT \
     INSERT(id, user_id, filename, content_type, byte_size, sha256, metadata) \
     UPDATE(status, progress, error, title, language, page_count, chunk_count, failed_pages, embedding_model, \
     chunk_max_tokens, chunk_overlap_tokens, tokenizer, extractor_version, attempts, updated_at, ready_at, reprocess, last_reprocess_run, warnings) \
     DELETE",
    "public.embedding_cache: SELECT(user_id, model, dim, text_sha256, embedding, usage_key) \
     INSERT(user_id, model, dim, text_sha256, embedding, usage_key)",
    "public.embedding_models: SELECT",
    "public.plans: SELECT",
    "public.search_corpus_stats: SELECT INSERT UPDATE(chunks, tokens)",
    "public.search_blocks: SELECT INSERT UPDATE(offsets, stats) DELETE",
    "public.search_postings: SELECT",
    "public.search_term_stats: SELECT INSERT UPDATE(chunks)",
    "public.usage_events: \
     SELECT(user_id, kind, model, prompt_tokens, completion_tokens, requests, cost, idempotency_key, document_id, message_id, request_id, created_at, cached_tokens, origin) \
     INSERT(user_id, kind, model, prompt_tokens, completion_tokens, requests, cost, idempotency_key, document_id, message_id, request_id, cached_tokens, origin)",
    "public.user_quotas: SELECT",
    "public.users: SELECT INSERT(id, email, display_name, plan) UPDATE(display_name)",
];

/// The role's privileges in the form of [`ALLOWED`], read from the catalog with
/// `has_column_privilege` / `has_table_privilege` / `has_sequence_privilege` (which count
/// table-wide grants, column grants and grants to PUBLIC alike).
const ACTUAL: &str = r#"
WITH rels AS (
    SELECT c.oid, n.nspname || '.' || c.relname AS rel, c.relkind
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname IN ('public', 'apalis') AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
),
columns AS (
    SELECT r.rel, p.ord, p.priv, a.attnum, a.attname,
           has_column_privilege('ragpipe_app', r.oid, a.attnum, p.priv) AS granted
    FROM rels AS r
    JOIN pg_attribute AS a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    CROSS JOIN (VALUES (1, 'SELECT'), (2, 'INSERT'), (3, 'UPDATE'), (6, 'REFERENCES')) AS p(ord, priv)
    WHERE r.relkind <> 'S'
),
column_privs AS (
    SELECT rel, ord,
           CASE WHEN bool_and(granted) THEN priv
                ELSE priv || '(' || string_agg(attname, ', ' ORDER BY attnum) FILTER (WHERE granted) || ')'
           END AS shown
    FROM columns
    GROUP BY rel, ord, priv
    HAVING bool_or(granted)
),
table_privs AS (
    SELECT r.rel, p.ord, p.priv AS shown
    FROM rels AS r CROSS JOIN (VALUES (4, 'DELETE'), (5, 'TRUNCATE'), (7, 'TRIGGER')) AS p(ord, priv)
    WHERE r.relkind <> 'S' AND has_table_privilege('ragpipe_app', r.oid, p.priv)
),
sequence_privs AS (
    SELECT r.rel, p.ord, p.priv AS shown
    FROM rels AS r CROSS JOIN (VALUES (1, 'SELECT'), (3, 'UPDATE'), (8, 'USAGE')) AS p(ord, priv)
    WHERE r.relkind = 'S' AND has_sequence_privilege('ragpipe_app', r.oid, p.priv)
)
SELECT rel || ': ' || string_agg(shown, ' ' ORDER BY ord)
FROM (SELECT * FROM column_privs UNION ALL SELECT * FROM table_privs UNION ALL SELECT * FROM sequence_privs) AS all_privs
GROUP BY rel
ORDER BY rel
"#;

async fn migrated(pool: PgPool) -> Store {
    let store = Store::from_pool(pool);
    store
        .migrate(&Config::defaults().embedding)
        .await
        .expect("migrations apply");
    store
}

fn sql_state(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

#[sqlx::test(migrations = false)]
async fn the_app_role_holds_exactly_the_allowed_privileges(pool: PgPool) {
    let _store = migrated(pool.clone()).await;
    let actual: Vec<String> = sqlx::query_scalar(ACTUAL).fetch_all(&pool).await.expect("privileges");
    let actual: BTreeSet<String> = actual.into_iter().collect();
    let allowed: BTreeSet<String> = ALLOWED
        .iter()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let granted_not_allowed: Vec<&String> = actual.difference(&allowed).collect();
    let allowed_not_granted: Vec<&String> = allowed.difference(&actual).collect();
    assert!(
        granted_not_allowed.is_empty() && allowed_not_granted.is_empty(),
        "ragpipe_app's privileges differ from the allow-list.\n\
         granted but not in the list:\n  {}\nin the list but not granted:\n  {}",
        granted_not_allowed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        allowed_not_granted
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
    );
}

/// One row of each user-data table for `user`, written as the schema owner (so the test
/// needs none of the privileges it checks).
async fn seed(pool: &PgPool, user: UserId) {
    let u = user.0;
    let (doc, conv, session) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (m1, m2) = (Uuid::now_v7(), Uuid::now_v7());
    let model = Config::defaults().embedding.model;
    let statements: Vec<(String, Vec<Uuid>)> = vec![
        ("INSERT INTO api_keys (user_id, prefix, key_sha256, revoked_at) VALUES ($1, 'rp_x', sha256(gen_random_uuid()::text::bytea), now())".into(), vec![u]),
        ("INSERT INTO user_quotas (user_id, quota, budget) VALUES ($1, 'monthly_tokens', 10)".into(), vec![u]),
        ("INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256) VALUES ($2, $1, 'a.txt', 'text/plain', 5, sha256('hello'))".into(), vec![u, doc]),
        ("INSERT INTO document_blobs (document_id, user_id, bytes) VALUES ($2, $1, 'hello')".into(), vec![u, doc]),
        (format!(
            "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end, embedding, embedding_model) \
             VALUES ($2, $1, 0, 'hello world', 2, 0, 11, array_fill(0.1, ARRAY[384])::vector, '{model}')"
        ), vec![u, doc]),
        ("INSERT INTO copilot_conversations (id, user_id, title) VALUES ($2, $1, 't')".into(), vec![u, conv]),
        ("INSERT INTO copilot_messages (id, conversation_id, user_id, role, content) VALUES ($3, $2, $1, 'user', 'q')".into(), vec![u, conv, m1]),
        ("INSERT INTO copilot_messages (id, conversation_id, user_id, role, content, status) VALUES ($3, $2, $1, 'assistant', '', 'streaming')".into(), vec![u, conv, m2]),
        ("INSERT INTO agent_sessions (id, conversation_id, user_id) VALUES ($3, $2, $1)".into(), vec![u, conv, session]),
        ("INSERT INTO agent_requests (user_id, session_id, conversation_id, user_message_id, assistant_message_id) VALUES ($1, $2, $3, $4, $5)".into(), vec![u, session, conv, m1, m2]),
    ];
    for (sql, binds) in statements {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
        for b in binds {
            q = q.bind(b);
        }
        q.execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Writes a user could want to make to their own rows and that no path of ragpipe makes: each
/// is refused with `permission denied` (42501) in the user's own transaction.
const ATTACKS: &[&str] = &[
    // Their plan, subscription and budgets.
    "UPDATE users SET plan = 'enterprise'",
    "UPDATE users SET subscription_status = 'active'",
    "INSERT INTO users (id, email, subscription_status) VALUES (gen_random_uuid(), 'x@example.com', 'active')",
    "UPDATE user_quotas SET budget = NULL",
    "DELETE FROM user_quotas",
    "INSERT INTO user_quotas (user_id, quota, budget) VALUES (ragpipe_current_user_id(), 'storage_bytes', NULL)",
    "UPDATE plans SET monthly_tokens = NULL",
    // Identities, owners and history.
    "UPDATE users SET id = gen_random_uuid()",
    "UPDATE users SET created_at = now() - interval '10 years'",
    "UPDATE users SET email = 'someone-else@example.com'",
    "DELETE FROM users",
    "UPDATE api_keys SET revoked_at = NULL",
    "UPDATE api_keys SET key_sha256 = sha256('chosen')",
    "UPDATE api_keys SET user_id = user_id",
    "DELETE FROM api_keys",
    "UPDATE documents SET user_id = user_id",
    "UPDATE documents SET byte_size = 0",
    "UPDATE documents SET sha256 = sha256('other')",
    "UPDATE documents SET created_at = now()",
    "INSERT INTO documents (user_id, filename, content_type, byte_size, sha256, status, chunk_count) \
     VALUES (ragpipe_current_user_id(), 'x', 'text/plain', 1, sha256('x'), 'ready', 100)",
    "UPDATE document_blobs SET bytes = 'other'",
    "DELETE FROM document_blobs",
    "UPDATE document_chunks SET content = 'other'",
    "UPDATE document_chunks SET user_id = user_id",
    "UPDATE document_chunks SET document_id = document_id",
    "UPDATE copilot_conversations SET user_id = user_id",
    "DELETE FROM copilot_conversations",
    "UPDATE copilot_messages SET role = 'assistant'",
    "UPDATE copilot_messages SET conversation_id = conversation_id",
    "UPDATE copilot_messages SET created_at = now()",
    "DELETE FROM copilot_messages",
    "UPDATE agent_sessions SET retrieval_mode = 'text', k = 100",
    "UPDATE agent_sessions SET user_id = user_id",
    "DELETE FROM agent_sessions",
    "UPDATE agent_requests SET user_id = user_id",
    "UPDATE agent_requests SET agent_type = 'rag_answer'",
    "UPDATE agent_requests SET created_at = now()",
    "DELETE FROM agent_requests",
    // Search statistics are the triggers' to keep.
    "UPDATE search_term_stats SET user_id = user_id",
    "DELETE FROM search_term_stats",
    "UPDATE search_corpus_stats SET user_id = user_id",
    "DELETE FROM search_corpus_stats",
    "UPDATE search_blocks SET first_chunk = 0",
    "UPDATE search_blocks SET user_id = user_id",
    // The accounting.
    "UPDATE usage_events SET prompt_tokens = 0",
    "DELETE FROM usage_events",
    // The job queue: jobs are inserted, never changed or removed, as the app role.
    "UPDATE apalis.jobs SET status = 'Done'",
    "DELETE FROM apalis.jobs",
    "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) VALUES ('w', 't', 's', '', now())",
    "UPDATE apalis.workers SET last_seen = now()",
    "UPDATE apalis._sqlx_migrations SET checksum = ''",
    "DELETE FROM _sqlx_migrations",
];

#[sqlx::test(migrations = false)]
async fn a_user_cannot_write_what_no_route_writes(pool: PgPool) {
    let store = migrated(pool.clone()).await;
    let user = UserId(
        users::create(
            &store,
            &users::NewUser {
                email: "a@example.com".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user")
        .id,
    );
    seed(&pool, user).await;
    // Each in a transaction of its own; every outcome is collected, so a failure lists them all.
    let mut not_refused = Vec::new();
    for sql in ATTACKS {
        let mut tx = store.user_tx(user).await.expect("tx");
        match sqlx::query(*sql).execute(tx.conn()).await {
            // Refused by a privilege (not by a policy, whose 42501 says "violates row-level
            // security policy"): before any row was looked at.
            Err(e) if sql_state(&e).as_deref() == Some("42501") && e.to_string().contains("permission denied") => {}
            Err(e) => not_refused.push(format!("{sql}: refused, but not for want of privilege: {e}")),
            Ok(done) => not_refused.push(format!("{sql}: ran ({} rows)", done.rows_affected())),
        }
        tx.rollback().await.expect("rollback");
    }
    assert!(
        not_refused.is_empty(),
        "the user's own transaction was not refused these writes:\n  {}",
        not_refused.join("\n  ")
    );

    // The row was there to be changed: it is the privilege that refused, and the plan is as it was.
    let mut tx = store.user_tx(user).await.expect("tx");
    let plan: String = sqlx::query_scalar("SELECT plan FROM users")
        .fetch_one(tx.conn())
        .await
        .expect("own row");
    assert_eq!(plan, "free");
}

/// The other side: an upload and a question, through the store's own functions in the user's
/// transaction, with the row locks they take (a lock needs UPDATE on some column of the row's
/// table, so a table the app may not update at all could not be locked).
#[sqlx::test(migrations = false)]
async fn an_upload_and_a_question_have_every_privilege_they_use(pool: PgPool) {
    let store = migrated(pool).await;
    let user = UserId(
        users::create(
            &store,
            &users::NewUser {
                email: "a@example.com".into(),
                ..Default::default()
            },
        )
        .await
        .expect("user")
        .id,
    );
    let mut tx = store.user_tx(user).await.expect("tx");
    let bytes = b"hello world";
    let sha256: [u8; 32] = Sha256::digest(bytes).into();
    quotas::check_upload(&mut tx, [(bytes.len() as u64, sha256)])
        .await
        .expect("the upload's quota check locks the user's row");
    let new = documents::NewDocument {
        filename: "a.txt",
        content_type: "text/plain",
        bytes,
        sha256,
        metadata: serde_json::json!({}),
    };
    let stored = documents::create(&mut tx, &new, 3)
        .await
        .expect("document, bytes and job");
    assert!(stored.created);
    let conversation = conversations::create(&mut tx, Some("t")).await.expect("conversation");
    let settings = conversations::AskSettings {
        model: "m",
        retrieval_mode: None,
        k: None,
        max_attempts: 3,
    };
    conversations::ask(&mut tx, ConversationId(conversation.id), "what?", &settings)
        .await
        .expect("the question locks its conversation and writes messages, session, request and job");
    tx.commit().await.expect("commit");
}
