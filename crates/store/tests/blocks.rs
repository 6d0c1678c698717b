//! The text leg's postings in blocks (`search_blocks`), on a real PostgreSQL: after every kind
//! of chunk write (a chunk set, appends, deletions, re-chunked text, ids out of order) the
//! blocks hold exactly the postings the chunks' tsvectors give, each block keeps its
//! invariants, appends rewrite no full block and keep few partial ones, and deletions leave
//! full blocks. The compaction repacks thinned
//! blocks, and upgrading a database keeps every posting.

use ragpipe_core::{Config, UserId};
use ragpipe_store::Store;
use sqlx::PgPool;
use uuid::Uuid;

mod support;

async fn document(store: &Store, user: UserId, name: &str) -> Uuid {
    let doc = Uuid::now_v7();
    let mut tx = store.user_tx(user).await.expect("tx");
    sqlx::query(
        "INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256) \
         VALUES ($1, $2, $3, 'text/plain', 1, sha256($3::bytea))",
    )
    .bind(doc)
    .bind(user.0)
    .bind(name)
    .execute(tx.conn())
    .await
    .expect("document");
    tx.commit().await.expect("commit");
    doc
}

/// Writes chunks `from..to` of `doc` in one statement, as a chunk-set write does: every chunk
/// says "lantern"; "harbour" is in every third, and each has a word of its own.
async fn chunks(store: &Store, user: UserId, doc: Uuid, from: i32, to: i32) {
    let mut tx = store.user_tx(user).await.expect("tx");
    sqlx::query(
        "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end) \
         SELECT $1, $2, i, c, 5 + i % 11, 0, length(c) \
         FROM generate_series($3::int, $4::int - 1) AS i, \
              LATERAL (SELECT 'lantern ' || CASE WHEN i % 3 = 0 THEN 'harbour harbour ' ELSE '' END \
                              || 'word' || i || ' lantern' AS c) AS t",
    )
    .bind(doc)
    .bind(user.0)
    .bind(from)
    .bind(to)
    .execute(tx.conn())
    .await
    .expect("chunks");
    tx.commit().await.expect("commit");
}

async fn run(store: &Store, user: UserId, sql: &str) -> u64 {
    let mut tx = store.user_tx(user).await.expect("tx");
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(tx.conn())
        .await
        .expect(sql);
    tx.commit().await.expect("commit");
    done.rows_affected()
}

/// Postings missing from the blocks or not in the chunks, blocks breaking an invariant, and
/// the blocks of `lexeme` with their sizes in key order (read as the owner of the tables).
async fn check(pool: &PgPool, lexeme: &str) -> (i64, i64, Vec<i32>) {
    let (mismatched, broken): (i64, i64) = sqlx::query_as(
        "WITH recount AS (
             SELECT c.user_id, u.lexeme COLLATE \"C\" AS lexeme, c.id AS chunk_id,
                    greatest(cardinality(u.positions), 1) AS tf, c.token_count
             FROM document_chunks AS c, unnest(c.search_vector) AS u),
         stored AS (
             SELECT b.user_id, b.lexeme, b.first_chunk + u.o AS chunk_id, u.s >> 22 AS tf, u.s & 4194303 AS token_count
             FROM search_blocks AS b, unnest(b.offsets, b.stats) AS u(o, s))
         SELECT (SELECT count(*) FROM recount AS r FULL JOIN stored AS s USING (user_id, lexeme, chunk_id)
                 WHERE (r.tf, r.token_count) IS DISTINCT FROM (s.tf, s.token_count)),
                (SELECT count(*) FROM search_blocks AS b
                 WHERE cardinality(b.offsets) NOT BETWEEN 1 AND 128
                    OR cardinality(b.stats) <> cardinality(b.offsets)
                    OR b.offsets[1] < 0
                    OR (b.first_chunk + b.offsets[cardinality(b.offsets)]) >> 30 <> b.first_chunk >> 30
                    OR EXISTS (SELECT FROM unnest(b.offsets[1:cardinality(b.offsets) - 1], b.offsets[2:]) AS p(a, z)
                               WHERE p.a >= p.z))",
    )
    .fetch_one(pool)
    .await
    .expect("recount");
    let sizes: Vec<i32> = sqlx::query_scalar(
        "SELECT cardinality(offsets) FROM search_blocks WHERE lexeme = $1 ORDER BY user_id, first_chunk",
    )
    .bind(lexeme)
    .fetch_all(pool)
    .await
    .expect("sizes");
    (mismatched, broken, sizes)
}

#[sqlx::test(migrations = false)]
async fn blocks_hold_exactly_the_chunks_postings_through_every_kind_of_write(pool: PgPool) {
    let (store, user) = support::store_with_user(&pool, "blocks@example.com").await;
    let doc = document(&store, user, "a.txt").await;

    // A chunk set of 300: "lantern" fills two blocks and starts a third.
    chunks(&store, user, doc, 0, 300).await;
    assert_eq!(check(&pool, "lantern").await, (0, 0, vec![128, 128, 44]));
    // Appends of a few chunks at a time add blocks of their own and rewrite no full block;
    // the partial ones at the end merge, tiered: four of ten make one of forty, and a block no
    // larger than the newer ones together joins them.
    let full = "SELECT first_chunk, xmin::text FROM search_blocks WHERE lexeme = 'lantern' AND cardinality(offsets) = 128 ORDER BY 1";
    let full_before: Vec<(i64, String)> = sqlx::query_as(full).fetch_all(&pool).await.expect("full blocks");
    for from in (300..400).step_by(10) {
        chunks(&store, user, doc, from, from + 10).await;
    }
    assert_eq!(check(&pool, "lantern").await, (0, 0, vec![128, 128, 104, 40]));
    let full_after: Vec<(i64, String)> = sqlx::query_as(full).fetch_all(&pool).await.expect("full blocks");
    assert_eq!(full_before, full_after);

    // Deleting chunks across every block repacks them: full blocks again.
    let removed = run(&store, user, "DELETE FROM document_chunks WHERE chunk_index % 4 = 1").await;
    assert_eq!(removed, 100);
    assert_eq!(check(&pool, "lantern").await, (0, 0, vec![128, 128, 44]));

    // New text in place (no route of the app does this, but the trigger follows it, as the
    // tables' owner may): postings move with it; "harbour" leaves these chunks.
    let changed =
        sqlx::query("UPDATE document_chunks SET content = 'lantern beacon', token_count = 2 WHERE chunk_index % 6 = 0")
            .execute(&pool)
            .await
            .expect("new text")
            .rows_affected();
    assert!(changed > 0);
    let (mismatched, broken, _) = check(&pool, "lantern").await;
    assert_eq!((mismatched, broken), (0, 0));
    let (_, _, beacon) = check(&pool, "beacon").await;
    assert_eq!(beacon.iter().sum::<i32>() as u64, changed);

    // Chunk ids below the ones already stored (another writer's ids, committed later): merged
    // into the blocks that hold their range.
    let (low,): (i64,) = sqlx::query_as("SELECT min(id) FROM document_chunks")
        .fetch_one(&pool)
        .await
        .expect("min id");
    let late = document(&store, user, "late.txt").await;
    sqlx::query(
        "INSERT INTO document_chunks (id, document_id, user_id, chunk_index, content, token_count, byte_start, byte_end) \
         OVERRIDING SYSTEM VALUE \
         SELECT $1 + 4 * i + 1, $2, $3, i, 'lantern harbour late', 3, 0, 20 FROM generate_series(0, 24) AS i",
    )
    .bind(low)
    .bind(late)
    .bind(user.0)
    .execute(&pool)
    .await
    .expect("chunks out of order");
    let (mismatched, broken, sizes) = check(&pool, "lantern").await;
    assert_eq!((mismatched, broken), (0, 0));
    assert_eq!(sizes.iter().sum::<i32>(), 325);

    // Deleting documents removes all their postings and every emptied block.
    run(&store, user, "DELETE FROM documents").await;
    let (mismatched, broken, sizes) = check(&pool, "lantern").await;
    assert_eq!((mismatched, broken, sizes), (0, 0, vec![]));
    let (blocks,): (i64,) = sqlx::query_as("SELECT count(*) FROM search_blocks")
        .fetch_one(&pool)
        .await
        .expect("blocks");
    assert_eq!(blocks, 0);
}

#[sqlx::test(migrations = false)]
async fn compaction_repacks_blocks_that_deletions_thinned(pool: PgPool) {
    let (store, user) = support::store_with_user(&pool, "blocks@example.com").await;
    let doc = document(&store, user, "a.txt").await;
    chunks(&store, user, doc, 0, 300).await;
    // Chunks removed one at a time: each deletion repacks only its own block, which thins.
    for index in (0..100).chain(128..228) {
        run(
            &store,
            user,
            &format!("DELETE FROM document_chunks WHERE chunk_index = {index}"),
        )
        .await;
    }
    assert_eq!(check(&pool, "lantern").await, (0, 0, vec![28, 28, 44]));

    let mut tx = store.user_tx(user).await.expect("tx");
    let (removed,): (i64,) = sqlx::query_as("SELECT ragpipe_search_blocks_compact($1)")
        .bind(user.0)
        .fetch_one(tx.conn())
        .await
        .expect("compact");
    tx.commit().await.expect("commit");
    assert_eq!(removed, 2);
    assert_eq!(check(&pool, "lantern").await, (0, 0, vec![100]));
}

#[sqlx::test(migrations = false)]
async fn upgrading_keeps_every_posting_and_search_reads_the_blocks(pool: PgPool) {
    // The schema with a posting a row, with chunks of two users in it.
    apalis_postgres::PostgresStorage::setup(&pool)
        .await
        .expect("queue schema");
    ragpipe_store::migrate::MIGRATOR
        .run_to(20261205000021, &pool)
        .await
        .expect("the older schema");
    for i in 0..2 {
        sqlx::query(
            "WITH u AS (INSERT INTO users (id, email) VALUES (gen_random_uuid(), $1) RETURNING id),
                  d AS (INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256)
                        SELECT gen_random_uuid(), id, 'old.txt', 'text/plain', 1, sha256($1::bytea) FROM u
                        RETURNING id, user_id)
             INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end)
             SELECT d.id, d.user_id, g.i, 'lantern word' || g.i || CASE WHEN g.i % 2 = 0 THEN ' harbour' ELSE '' END,
                    3 + g.i % 5, 0, 10
             FROM d, generate_series(0, 199) AS g(i)",
        )
        .bind(format!("old{i}@example.com"))
        .execute(&pool)
        .await
        .expect("chunks on the older schema");
    }
    let postings = "SELECT user_id, lexeme::text, chunk_id, tf::int, token_count FROM search_postings ORDER BY 1, 2, 3";
    let before: Vec<(Uuid, String, i64, i32, i32)> = sqlx::query_as(postings)
        .fetch_all(&pool)
        .await
        .expect("postings before");
    assert_eq!(before.len(), 2 * (200 + 200 + 100));

    let store = Store::from_pool(pool.clone());
    let report = store.migrate(&Config::defaults().embedding).await.expect("upgrade");
    assert!(report.applied.contains(&20261205000022), "{:?}", report.applied);
    let after: Vec<(Uuid, String, i64, i32, i32)> =
        sqlx::query_as(postings).fetch_all(&pool).await.expect("postings after");
    assert_eq!(before, after);
    let (blocks, kind): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM search_blocks), \
                (SELECT relkind::text FROM pg_class WHERE oid = 'search_postings'::regclass)",
    )
    .fetch_one(&pool)
    .await
    .expect("blocks");
    // Per user: "lantern" 200 postings (two blocks), "harbour" 100, each "wordN" one.
    assert_eq!(blocks, 2 * (2 + 1 + 200));
    assert_eq!(kind, "v");
    let (mismatched, broken, sizes) = check(&pool, "lantern").await;
    assert_eq!((mismatched, broken), (0, 0));
    assert_eq!(sizes, vec![128, 72, 128, 72]);
}

/// `search_blocks` rows read so far by this backend through any index of the table, and by
/// scans of it. Counters not yet reported to the statistics system may hold earlier
/// transactions' reads on the same connection, so a write's reads are a difference.
async fn blocks_read(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT (pg_stat_get_xact_tuples_returned('search_blocks'::regclass) \
               + (SELECT coalesce(sum(pg_stat_get_xact_tuples_fetched(i.indexrelid)), 0) \
                  FROM pg_index AS i WHERE i.indrelid = 'search_blocks'::regclass))::bigint",
    )
    .fetch_one(conn)
    .await
    .expect("blocks read")
}

#[sqlx::test(migrations = false)]
async fn a_write_reads_the_blocks_it_merges_into_not_every_block_of_its_lexemes(pool: PgPool) {
    let (store, user) = support::store_with_user(&pool, "blocks@example.com").await;
    // "lantern" in 51,200 chunks: some 400 blocks.
    for d in 0..200 {
        let doc = document(&store, user, &format!("doc-{d}.txt")).await;
        chunks(&store, user, doc, 0, 256).await;
    }
    let lantern: i64 = sqlx::query_scalar("SELECT count(*) FROM search_blocks WHERE lexeme = 'lantern'")
        .fetch_one(&pool)
        .await
        .expect("blocks");
    assert!(lantern >= 350, "{lantern} blocks");
    sqlx::query("ANALYZE search_blocks")
        .execute(&pool)
        .await
        .expect("analyze");

    // One more chunk-set write: its postings go after each lexeme's last block, and the
    // trigger reads that block and the few trailing ones it may merge, found through the key.
    let doc = document(&store, user, "one-more.txt").await;
    let mut tx = store.user_tx(user).await.expect("tx");
    // Plan as for a table of millions of blocks (a few hundred rows are cheaper to read whole).
    sqlx::query("SELECT set_config('enable_seqscan', 'off', true)")
        .execute(tx.conn())
        .await
        .expect("plan as for a large table");
    let before = blocks_read(tx.conn()).await;
    sqlx::query(
        "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end) \
         SELECT $1, $2, i, 'lantern harbour word' || i, 5, 0, 20 FROM generate_series(0, 9) AS i",
    )
    .bind(doc)
    .bind(user.0)
    .execute(tx.conn())
    .await
    .expect("chunks");
    let read = blocks_read(tx.conn()).await - before;
    tx.commit().await.expect("commit");
    // Per lexeme of the write (lantern, harbour, word0..word9): the block at or below its new
    // postings and the ones after it (here one), the 32 trailing blocks the tiered merge looks
    // at, and those it rewrites. Reading every block of the write's lexemes, as the trigger did
    // before, is over 600 here.
    let lexemes = 12;
    assert!(
        read <= 40 * lexemes,
        "a 10-chunk write read {read} blocks; \"lantern\" alone has {lantern}"
    );
    let (mismatched, broken, sizes) = check(&pool, "lantern").await;
    assert_eq!(
        (mismatched, broken),
        (0, 0),
        "the blocks hold exactly the chunks' postings"
    );
    assert_eq!(sizes.iter().sum::<i32>(), 51_210, "every posting of lantern");
}
