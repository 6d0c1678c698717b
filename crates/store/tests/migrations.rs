//! Released migrations stay as released: every file in `migrations/` is pinned to its sha384,
//! in `migrations/CHECKSUMS` (the migrations up to 20261204000020) or in a pin file of its own
//! beside it, `NAME.sql.sha384`, added with the migration (so no pin is ever edited either). And a database that applied an earlier text of the one migration that
//! was edited in place (`20261202000015`, see `store::migrate::EDITED`) is brought forward by
//! `Store::migrate` to the schema a fresh database gets, while any other edit is refused. Against
//! a real PostgreSQL with pgvector.

use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_store::migrate::{EDITED, MIGRATOR};
use ragpipe_store::search::{self, Bm25, SearchHit, SearchMode, SearchQuery};
use ragpipe_store::{Store, documents};
use sha2::{Digest, Sha384};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{PgPool, SqlSafeStr};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use uuid::Uuid;

mod support;

const EDITED_VERSION: i64 = 20261202000015;

/// The earlier texts of migration 20261202000015, as released (from `git show
/// <commit>:migrations/20261202000015_search_postings_table.sql`), by commit.
const OLD_015: &[(&str, &str)] = &[
    ("f886ea7", include_str!("fixtures/old_015/f886ea7.sql")),
    ("fbfff0a", include_str!("fixtures/old_015/fbfff0a.sql")),
];

fn migrations_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
}

fn sha384_hex(bytes: &[u8]) -> String {
    hex::encode(Sha384::digest(bytes))
}

#[test]
fn every_migration_is_pinned_to_its_released_checksum() {
    let dir = migrations_dir();
    let mut pinned = BTreeMap::new();
    let mut problems = Vec::new();
    let mut pin = |source: &str, text: &str, only: Option<&str>| {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (sum, file) = line
                .split_once("  ")
                .unwrap_or_else(|| panic!("{source} line {line:?} is not `<sha384>  <file>`"));
            if only.is_some_and(|o| o != file) {
                problems.push(format!("{source} pins {file}, not the migration it is named after"));
            }
            if pinned.insert(file.to_owned(), sum.to_owned()).is_some() {
                problems.push(format!("{file} is pinned twice"));
            }
        }
    };
    let pins = std::fs::read_to_string(dir.join("CHECKSUMS")).expect("migrations/CHECKSUMS");
    pin("CHECKSUMS", &pins, None);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("migrations/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.ends_with(".sql") {
            files.insert(name, sha384_hex(&std::fs::read(&path).expect("read migration")));
        } else if let Some(migration) = name.strip_suffix(".sha384") {
            let text = std::fs::read_to_string(&path).expect("read pin");
            pin(&name, &text, Some(migration));
        }
    }
    for (file, sum) in &files {
        match pinned.get(file) {
            None => problems.push(format!(
                "{file} is not pinned: add migrations/{file}.sha384 (`cd migrations && sha384sum {file} > {file}.sha384`), \
                 which holds `{sum}  {file}`"
            )),
            Some(pin) if pin != sum => problems.push(format!(
                "{file} was edited after its release (pinned {pin}, now {sum}): databases that applied it \
                 would refuse to migrate. Put it back as released and make the change in a new migration"
            )),
            Some(_) => {}
        }
    }
    for file in pinned.keys().filter(|f| !files.contains_key(*f)) {
        problems.push(format!(
            "{file} is pinned but gone: released migrations are never removed"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The pins are what sqlx records in _sqlx_migrations for the migrations this binary embeds.
    for m in MIGRATOR.iter() {
        let file = format!("{}_{}.sql", m.version, m.description.replace(' ', "_"));
        assert_eq!(
            pinned.get(&file).map(String::as_str),
            Some(hex::encode(&*m.checksum).as_str()),
            "{file}"
        );
    }
    // And the repair knows the earlier texts by the checksums of the texts kept here.
    let earlier: BTreeSet<(&str, &str)> = EDITED
        .iter()
        .filter(|e| e.version == EDITED_VERSION)
        .flat_map(|e| e.earlier.iter().map(|t| (t.commit, t.sha384)))
        .collect();
    let fixtures: Vec<(&str, String)> = OLD_015
        .iter()
        .map(|(c, text)| (*c, sha384_hex(text.as_bytes())))
        .collect();
    let fixtures: BTreeSet<(&str, &str)> = fixtures.iter().map(|(c, s)| (*c, s.as_str())).collect();
    assert_eq!(earlier, fixtures);
}

/// Everything of a database's schema that migrations make, one line per object, compared as a
/// set: columns (type, collation, default, privileges), indexes, constraints, functions with
/// their bodies, owners and privileges, triggers, policies, tables' row security, options,
/// privileges and comments, and the migrations recorded (without when and how long).
const SCHEMA: &str = r#"
SELECT 'column ' || c.oid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || coalesce(' collate ' || co.collname, '') || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || ' ' || a.attgenerated::text || a.attidentity::text
       || ' acl ' || coalesce(a.attacl::text, '') || ' comment ' || coalesce(col_description(c.oid, a.attnum), '')
FROM pg_attribute AS a
JOIN pg_class AS c ON c.oid = a.attrelid
LEFT JOIN pg_collation AS co ON co.oid = a.attcollation
LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace IN ('public'::regnamespace, 'apalis'::regnamespace) AND c.relkind IN ('r', 'p', 'v', 'm')
  AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname IN ('public', 'apalis')
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace IN ('public'::regnamespace, 'apalis'::regnamespace)
UNION ALL
SELECT 'function ' || pg_get_functiondef(p.oid) || ' owner ' || pg_get_userbyid(p.proowner)
       || ' acl ' || coalesce(p.proacl::text, '')
FROM pg_proc AS p
WHERE p.pronamespace IN ('public'::regnamespace, 'apalis'::regnamespace) AND p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS e WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text FROM pg_trigger AS t WHERE NOT t.tgisinternal
UNION ALL
SELECT 'policy ' || schemaname || '.' || tablename || ' ' || policyname || ' ' || permissive || ' ' || roles::text
       || ' ' || cmd || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
FROM pg_policies
UNION ALL
SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || ' rls ' || c.relrowsecurity || ' ' || c.relforcerowsecurity
       || ' options ' || coalesce(c.reloptions::text, '') || ' owner ' || pg_get_userbyid(c.relowner)
       || ' acl ' || coalesce(c.relacl::text, '') || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '')
FROM pg_class AS c
WHERE c.relnamespace IN ('public'::regnamespace, 'apalis'::regnamespace) AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
UNION ALL
SELECT 'migration ' || version || ' ' || description || ' ' || success || ' ' || encode(checksum, 'hex')
FROM _sqlx_migrations
"#;

async fn schema(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(SCHEMA)
        .fetch_all(pool)
        .await
        .expect("schema")
        .into_iter()
        .collect()
}

/// A database of its own on the test's server (dropped by [`drop_database`]).
async fn scratch_database(pool: &PgPool, label: &str) -> (PgPool, String) {
    let name = format!("ragpipe_m015_{label}_{}", &Uuid::now_v7().simple().to_string()[16..]);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(pool)
        .await
        .expect("create database");
    let options = pool.connect_options().as_ref().clone().database(&name);
    let scratch = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect to the scratch database");
    (scratch, name)
}

async fn drop_database(pool: &PgPool, scratch: PgPool, name: &str) {
    scratch.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\" WITH (FORCE)")))
        .execute(pool)
        .await
        .expect("drop database");
}

/// The schema of a database that ran migrations 1-14 and then `old_015` (the queue's tables
/// first, as `Store::migrate` does), with sqlx recording the old text's checksum.
async fn migrate_with_old_015(pool: &PgPool, old_015: &'static str) {
    apalis_postgres::PostgresStorage::setup(pool)
        .await
        .expect("queue schema");
    let current = MIGRATOR
        .iter()
        .find(|m| m.version == EDITED_VERSION)
        .expect("015 in the binary");
    let mut migrations: Vec<Migration> = MIGRATOR
        .iter()
        .filter(|m| m.version < EDITED_VERSION)
        .cloned()
        .collect();
    migrations.push(Migration::new(
        EDITED_VERSION,
        current.description.clone(),
        MigrationType::Simple,
        old_015.into_sql_str(),
        false,
    ));
    Migrator::with_migrations(migrations)
        .run(pool)
        .await
        .expect("migrations 1-14 and the old 015");
}

/// Chunks of a new user written as the schema owner (so the old schema's grants do not
/// matter); the statistics trigger of the old text writes their postings.
async fn chunks_on_the_old_schema(pool: &PgPool, texts: &[&str]) -> (UserId, DocumentId) {
    let (user, doc) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "WITH u AS (INSERT INTO users (id, email) VALUES ($1, 'old@example.com') RETURNING id),
              d AS (INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256)
                    SELECT $2, id, 'old.txt', 'text/plain', 1, sha256('old') FROM u RETURNING id, user_id)
         INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end)
         SELECT d.id, d.user_id, c.i - 1, c.content, 10, 0, length(c.content)
         FROM d, UNNEST($3::text[]) WITH ORDINALITY AS c(content, i)",
    )
    .bind(user)
    .bind(doc)
    .bind(texts)
    .execute(pool)
    .await
    .expect("chunks on the old schema");
    (UserId(user), DocumentId(doc))
}

async fn text_search(store: &Store, user: UserId, text: &str) -> Vec<SearchHit> {
    let mut tx = store.search_tx(user).await.expect("tx");
    let query = SearchQuery {
        text,
        vectors: &[],
        mode: SearchMode::Text,
        k: 10,
        depth: 10,
        document_ids: None,
        metadata: None,
        fusion: support::EVEN_FUSION,
        bm25: Bm25::default(),
        highlight: false,
        exact_scan_chunks: search::EXACT_SCAN_CHUNKS,
    };
    let hits = search::search(&mut tx, &query).await.expect("search");
    tx.commit().await.expect("commit");
    hits
}

/// Postings that differ from a recount of the chunks' tsvectors (missing, extra or wrong).
async fn postings_off(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "WITH recount AS (
             SELECT c.user_id, u.lexeme, c.id AS chunk_id, greatest(cardinality(u.positions), 1)::smallint AS tf,
                    c.token_count
             FROM document_chunks AS c, unnest(c.search_vector) AS u)
         SELECT count(*) FROM recount FULL JOIN search_postings AS p USING (user_id, lexeme, chunk_id)
         WHERE (recount.tf, recount.token_count) IS DISTINCT FROM (p.tf, p.token_count)",
    )
    .fetch_one(pool)
    .await
    .expect("recount")
}

#[sqlx::test(migrations = false)]
async fn a_database_that_applied_an_earlier_015_is_brought_forward(pool: PgPool) {
    let embedding = Config::defaults().embedding;
    Store::from_pool(pool.clone())
        .migrate(&embedding)
        .await
        .expect("a fresh database");
    let fresh = schema(&pool).await;

    for (commit, text) in OLD_015 {
        let (old, name) = scratch_database(&pool, commit).await;
        // In a task of its own, so that the scratch database is dropped whatever happens.
        let outcome = tokio::spawn(brought_forward(old.clone(), fresh.clone(), commit, text)).await;
        drop_database(&pool, old, &name).await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Migrates `old` as far as the old text `text` of 015, writes chunks, and checks that
/// `Store::migrate` brings it to the schema `fresh` has, with search and postings right.
async fn brought_forward(old: PgPool, fresh: BTreeSet<String>, commit: &'static str, text: &'static str) {
    let embedding = Config::defaults().embedding;
    migrate_with_old_015(&old, text).await;
    let (user, doc) = chunks_on_the_old_schema(&old, &["quokka river", "quokka meadow", "river harbour"]).await;

    let store = Store::from_pool(old.clone());
    let report = store
        .migrate(&embedding)
        .await
        .unwrap_or_else(|e| panic!("{commit}: {e}"));
    assert_eq!(report.repaired.len(), 1, "{commit}: {report:?}");
    assert_eq!(
        (report.repaired[0].version, report.repaired[0].from_commit.as_str()),
        (EDITED_VERSION, commit)
    );
    assert!(
        report.repaired[0].added.contains("search_postings_chunk_idx"),
        "{report:?}"
    );
    assert!(
        report.applied.iter().all(|v| *v > EDITED_VERSION),
        "{commit}: {report:?}"
    );

    let after = schema(&old).await;
    let missing: Vec<&String> = fresh.difference(&after).collect();
    let extra: Vec<&String> = after.difference(&fresh).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{commit}: the repaired schema differs from a fresh one\nonly in the fresh one:\n{}\nonly in the repaired one:\n{}",
        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
    );

    // Search reads the postings written before the repair, and the repaired trigger keeps them
    // right through a new document and a deletion.
    assert_eq!(text_search(&store, user, "quokka").await.len(), 2, "{commit}");
    let mut tx = store.user_tx(user).await.expect("tx");
    let second = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256) \
         VALUES ($1, $2, 'new.txt', 'text/plain', 1, sha256('new'))",
    )
    .bind(second)
    .bind(user.0)
    .execute(tx.conn())
    .await
    .expect("document");
    sqlx::query(
        "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end) \
         VALUES ($1, $2, 0, 'quokka orchard', 10, 0, 14)",
    )
    .bind(second)
    .bind(user.0)
    .execute(tx.conn())
    .await
    .expect("chunk");
    documents::delete(&mut tx, doc).await.expect("delete the old document");
    tx.commit().await.expect("commit");
    assert_eq!(postings_off(&old).await, 0, "{commit}");
    let hits = text_search(&store, user, "quokka").await;
    assert_eq!(
        hits.iter().map(|h| h.content.as_str()).collect::<Vec<_>>(),
        ["quokka orchard"]
    );

    // Done once: the next run finds the current text recorded.
    let again = store.migrate(&embedding).await.expect("again");
    assert!(again.repaired.is_empty() && again.applied.is_empty(), "{again:?}");
}

#[sqlx::test(migrations = false)]
async fn any_other_edit_of_an_applied_migration_is_refused_with_its_version(pool: PgPool) {
    let embedding = Config::defaults().embedding;
    let store = Store::from_pool(pool.clone());
    store.migrate(&embedding).await.expect("migrate");
    let before = schema(&pool).await;
    for (version, name) in [
        (EDITED_VERSION, "search postings table"),
        (20261123000002, "users and api keys"),
    ] {
        // A text no release had.
        let unknown = Sha384::digest(b"-- edited again").to_vec();
        let original: Vec<u8> = sqlx::query_scalar(
            "UPDATE _sqlx_migrations AS m SET checksum = $2 FROM _sqlx_migrations AS o \
                                WHERE m.version = $1 AND o.version = m.version RETURNING o.checksum",
        )
        .bind(version)
        .bind(&unknown)
        .fetch_one(&pool)
        .await
        .expect("tamper");
        let err = store.migrate(&embedding).await.expect_err("an unknown text is refused");
        let message = err.to_string();
        assert!(
            message.contains(&version.to_string()) && message.contains(name) && message.contains("refusing"),
            "{message}"
        );
        assert!(message.contains(&hex::encode(&unknown)), "{message}");
        // Nothing was changed: the checksum is still the unknown one.
        let recorded: Vec<u8> = sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
            .bind(version)
            .fetch_one(&pool)
            .await
            .expect("checksum");
        assert_eq!(recorded, unknown);
        sqlx::query("UPDATE _sqlx_migrations SET checksum = $2 WHERE version = $1")
            .bind(version)
            .bind(&original)
            .execute(&pool)
            .await
            .expect("restore");
    }
    assert_eq!(schema(&pool).await, before);
    let report = store.migrate(&embedding).await.expect("current again");
    assert!(report.repaired.is_empty() && report.applied.is_empty());
}
