//! `ragpipe-bench search`: search latency at 100,000 chunks, against the bare pgvector HNSW
//! query measured in the same run (the ratio is what to compare across machines).
//!
//! A database is created for the run (dropped first). The corpus is generated: Zipf-distributed
//! words (a few very common, most rare, as in real text), about 300 words per chunk, 50 chunks
//! per document, with the offline hashed embeddings of each chunk's text (which have lexical
//! neighbourhoods, unlike random vectors). It is bulk-loaded on the benchmark's own connection
//! with `INSERT ... SELECT FROM UNNEST` batches, the indexes and the statistics triggers off; the
//! indexes are built afterwards with a large `maintenance_work_mem` and the term statistics
//! and postings computed in one statement each (the migrations' backfills). Queries are 3 to 8
//! words drawn from random chunks, so they mix common and rare terms; how often each mode ranks
//! the query's source chunk first or within k is printed beside the latency. Every search runs
//! as the product runs it: in a user transaction (role `ragpipe_app`, row-level security); only
//! the statement is timed.

use crate::common::{Rng, ScratchDatabase, create_user, measurement_pool};
use crate::storage;
use anyhow::Context;
use clap::Args;
use ragpipe_core::{Config, UserId};
use ragpipe_llm::HashedEmbedder;
use ragpipe_store::search::{self, Bm25, QueryVector, SearchMode, SearchQuery};
use ragpipe_store::{Store, embedding_models};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct BenchSearchArgs {
    /// Chunks loaded.
    #[arg(long, default_value_t = 100_000)]
    pub chunks: usize,
    /// Users the documents are spread over (document i belongs to user i mod N); each query
    /// runs as the user of the chunk it was taken from, its filters within that user's
    /// documents.
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// `maintenance_work_mem` for the HNSW build after the load. A graph that no longer fits
    /// goes on being built on disk, several times slower (pgvector says after how many rows).
    #[arg(long, value_name = "SIZE", default_value = "1GB")]
    pub index_memory: String,
    /// Queries timed per mode.
    #[arg(long, default_value_t = 300)]
    pub queries: usize,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// Database created (dropped first) for the run, on the configured server.
    #[arg(long, default_value = "ragpipe_bench_search")]
    pub database: String,
    /// Keep the database after the run (to rerun queries by hand or with --reuse).
    #[arg(long)]
    pub keep: bool,
    /// Query the database a previous `--keep` run left, without loading (implies --keep).
    #[arg(long)]
    pub reuse: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Text leg: postings read per query (default: the built-in `Bm25`).
    #[arg(long)]
    pub postings_budget: Option<u32>,
    /// Text leg: candidates rescored with term frequencies (default: the built-in `Bm25`).
    #[arg(long)]
    pub rescored: Option<u32>,
}

const WORDS_PER_CHUNK: usize = 300;
const CHUNKS_PER_DOCUMENT: usize = 50;
const BATCH: usize = 1000;

/// 50,000 pronounceable words sampled with Zipf's law (probability ~ 1/rank).
struct Vocabulary {
    words: Vec<String>,
    /// Cumulative probabilities, for inverse-transform sampling.
    cdf: Vec<f64>,
}

impl Vocabulary {
    fn new(rng: &mut Rng) -> Vocabulary {
        const ONSETS: &[&str] = &[
            "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "gr",
            "br", "ch", "sh",
        ];
        const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"];
        const CODAS: &[&str] = &["", "n", "r", "s", "t", "l", "m", "nd", "rk", "st", "x"];
        let mut seen = std::collections::HashSet::new();
        let mut words = Vec::with_capacity(50_000);
        while words.len() < 50_000 {
            let syllables = 1 + rng.below(4);
            let mut w = String::new();
            for _ in 0..syllables {
                w.push_str(ONSETS[rng.below(ONSETS.len())]);
                w.push_str(VOWELS[rng.below(VOWELS.len())]);
                w.push_str(CODAS[rng.below(CODAS.len())]);
            }
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let weights: Vec<f64> = (1..=words.len()).map(|r| 1.0 / r as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Vocabulary { words, cdf }
    }

    fn word(&self, rng: &mut Rng) -> &str {
        let u = rng.unit();
        let i = self.cdf.partition_point(|c| *c < u).min(self.words.len() - 1);
        &self.words[i]
    }

    fn chunk(&self, rng: &mut Rng) -> String {
        let mut out = String::with_capacity(WORDS_PER_CHUNK * 8);
        for i in 0..WORDS_PER_CHUNK {
            if i > 0 {
                out.push(if rng.below(12) == 0 { '.' } else { ' ' });
                if out.ends_with('.') {
                    out.push(' ');
                }
            }
            out.push_str(self.word(rng));
        }
        out
    }
}

/// Latency percentiles of one series.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Series {
    pub name: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub hits_per_query: f64,
    /// Share of queries whose source chunk (the one its words were taken from) ranked first.
    pub source_first: f64,
    /// Share of queries whose source chunk was among the k results.
    pub source_in_k: f64,
}

fn series(name: &str, mut samples: Vec<Duration>, hits: usize, found: (usize, usize)) -> Series {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]);
    Series {
        name: name.to_owned(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        mean_ms: samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64,
        hits_per_query: hits as f64 / samples.len() as f64,
        source_first: found.0 as f64 / samples.len() as f64,
        source_in_k: found.1 as f64 / samples.len() as f64,
    }
}

pub async fn run(config: Config, args: BenchSearchArgs) -> anyhow::Result<()> {
    let scratch = ScratchDatabase::open(config, &args.database, !args.reuse).await?;
    let config = scratch.config.clone();
    let store = Store::connect(&config).await?;
    store.migrate(&config.embedding).await?;
    let db = measurement_pool(&config).await?;
    let result = measure(&store, &db, &config, &args).await;
    let storage = storage::measure(&db).await;
    db.close().await;
    drop(store);
    if !args.keep && !args.reuse {
        scratch.drop().await?;
    }
    let (load, out) = result?;
    let storage = storage?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"load": load, "series": out, "storage": storage}))?
        );
    } else {
        println!("{load}");
        println!(
            "{:<22} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8}",
            "query", "p50 ms", "p99 ms", "mean ms", "hits", "src 1st", "src in k"
        );
        for s in &out {
            println!(
                "{:<22} {:>8.2} {:>8.2} {:>8.2} {:>6.1} {:>8.3} {:>8.3}",
                s.name, s.p50_ms, s.p99_ms, s.mean_ms, s.hits_per_query, s.source_first, s.source_in_k
            );
        }
        let bare = out
            .iter()
            .find(|s| s.name == "bare hnsw")
            .map_or(f64::NAN, |s| s.p50_ms);
        for s in out.iter().filter(|s| s.name != "bare hnsw") {
            println!("{} p50 / bare hnsw p50 = {:.2}", s.name, s.p50_ms / bare);
        }
        let p99 = |name: &str| out.iter().find(|s| s.name == name).map_or(f64::NAN, |s| s.p99_ms);
        for docs in [3, 100] {
            println!(
                "{docs} docs exact p99 / {docs} docs hnsw p99 = {:.2}",
                p99(&format!("{docs} docs exact")) / p99(&format!("{docs} docs hnsw"))
            );
        }
        storage.print();
    }
    Ok(())
}

async fn measure(
    store: &Store,
    db: &PgPool,
    config: &Config,
    args: &BenchSearchArgs,
) -> anyhow::Result<(String, Vec<Series>)> {
    let model = config.embedding.model.clone();
    let dim = config.embedding.dim;
    let embedder = HashedEmbedder::new(dim as usize);
    let load = if args.reuse {
        "reused the corpus of a previous --keep run".to_owned()
    } else {
        load(store, db, &model, dim, &embedder, args).await?
    };
    eprintln!("{load}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE 'bench-search%@example.com'")
        .fetch_one(db)
        .await
        .context("counting the benchmark's users")?;
    anyhow::ensure!(users > 0, "no benchmark user (does the corpus of a --keep run exist?)");
    // Queries: 3 to 8 consecutive words of chunks spread over the table, so they mix common
    // and rare terms as a person's keywords do.
    let mut rng = Rng(0x00DD_BA11);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM document_chunks")
        .fetch_one(db)
        .await
        .context("counting the chunks")?;
    let stride = (total / args.queries.max(1) as i64).max(1);
    let texts: Vec<(i64, Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT id, document_id, user_id, content FROM document_chunks WHERE id % $1 = 7 ORDER BY id LIMIT $2",
    )
    .bind(stride)
    .bind(args.queries as i64)
    .fetch_all(db)
    .await
    .context("reading the chunks queries are taken from")?;
    // The chunk each query was taken from: how often a mode ranks it first, or within k, is a
    // measure of retrieval quality that needs no judgements (a known-item search).
    let sources: Vec<i64> = texts.iter().map(|(id, _, _, _)| *id).collect();
    // The filtered searches keep the query's own document and others of its user at random:
    // 100 documents (5,000 chunks, the most scored exactly), of which the first three.
    let owned: Vec<(Uuid, Uuid)> = sqlx::query_as("SELECT user_id, id FROM documents ORDER BY user_id, id")
        .fetch_all(db)
        .await
        .context("listing the documents")?;
    let mut by_user: std::collections::HashMap<Uuid, Vec<Uuid>> = std::collections::HashMap::new();
    for (user, document) in owned {
        by_user.entry(user).or_default().push(document);
    }
    // A random source of their own, so the queries stay those of earlier runs.
    let mut picks = Rng(0x5EED_D0C5);
    let filters: Vec<Vec<Uuid>> = texts
        .iter()
        .map(|(_, document, user, _)| {
            let documents = by_user.get(user).map_or(&[][..], |d| &d[..]);
            let mut picked = vec![*document];
            while picked.len() < 100.min(documents.len()) {
                let other = documents[picks.below(documents.len())];
                if !picked.contains(&other) {
                    picked.push(other);
                }
            }
            picked
        })
        .collect();
    let queries: Vec<String> = texts
        .iter()
        .map(|(_, _, _, text)| {
            let words: Vec<&str> = text.split([' ', '.']).filter(|w| !w.is_empty()).collect();
            let len = (3 + rng.below(6)).min(words.len());
            let start = rng.below(words.len() - len + 1);
            words[start..start + len].join(" ")
        })
        .collect();
    let load = format!(
        "{load}; {users} user(s); {} queries of 3-8 words, k = {}",
        queries.len(),
        args.k
    );
    let vectors: Vec<Vec<f32>> = queries.iter().map(|q| embedder.embed(q)).collect();
    let bare_sql = format!(
        "SELECT id FROM document_chunks WHERE embedding_model = {} ORDER BY embedding::vector({dim}) <=> $1::vector({dim}) LIMIT $2",
        embedding_models::sql_literal(&model)
    );
    // With several users the index holds every user's chunks and row-level security drops the
    // others' after the index returns them: the bare query scans iteratively (as search does),
    // or it would return a user's share of ef_search rows. One user: the plain query, as before.
    let bare_settings = (users > 1).then_some(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.ef_search', '40', true)",
    );
    // "3 docs exact": hybrid within three documents, their few chunks scored exactly (the
    // default); "3 docs hnsw": the same through the HNSW index, as before the switch; the same
    // within 100 documents, at the limit of the exact scan.
    let names = [
        "bare hnsw",
        "vector",
        "text",
        "hybrid",
        "3 docs exact",
        "3 docs hnsw",
        "100 docs exact",
        "100 docs hnsw",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut hits = vec![0usize; names.len()];
    let mut found = vec![(0usize, 0usize); names.len()];
    // One warm-up pass (caches, prepared statements), then the timed pass; the four queries
    // of each question run back to back so they see the same cache state.
    for timed in [false, true] {
        for ((((q, v), source), filter), (_, _, owner, _)) in
            queries.iter().zip(&vectors).zip(&sources).zip(&filters).zip(&texts)
        {
            let user = UserId(*owner);
            for (s, name) in names.iter().enumerate() {
                // Searches run as Retriever::search does (generic plans); the bare query as a
                // plain user transaction.
                let mut tx = if *name == "bare hnsw" {
                    let mut tx = store.user_tx(user).await?;
                    if let Some(settings) = bare_settings {
                        sqlx::query(settings).execute(tx.conn()).await?;
                    }
                    tx
                } else {
                    store.search_tx(user).await?
                };
                let t = Instant::now();
                let ids: Vec<i64> = if *name == "bare hnsw" {
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(bare_sql.clone()))
                        .bind(pgvector::Vector::from(v.clone()))
                        .bind(i64::from(args.k))
                        .fetch_all(tx.conn())
                        .await?
                } else {
                    let filtered = name.contains(" docs ");
                    let kept = if name.starts_with("3 ") { 3 } else { filter.len() };
                    let mode: SearchMode = if filtered {
                        SearchMode::Hybrid
                    } else {
                        name.parse().map_err(|e: String| anyhow::anyhow!(e))?
                    };
                    let vectors = [QueryVector {
                        model: &model,
                        dim,
                        embedding: v,
                    }];
                    let query = SearchQuery {
                        text: q,
                        vectors: &vectors,
                        mode,
                        k: args.k,
                        depth: ragpipe_agent::retrieve::candidate_depth(args.k),
                        document_ids: filtered.then_some(&filter[..kept.min(filter.len())]),
                        metadata: None,
                        fusion: ragpipe_agent::retrieve::DEFAULT_FUSION,
                        bm25: Bm25 {
                            postings_budget: args.postings_budget.unwrap_or(Bm25::default().postings_budget),
                            postings_per_term: args.postings_budget.unwrap_or(Bm25::default().postings_per_term),
                            rescored: args.rescored.unwrap_or(Bm25::default().rescored),
                            ..Bm25::default()
                        },
                        highlight: false,
                        exact_scan_chunks: if name.ends_with("hnsw") {
                            0
                        } else {
                            search::EXACT_SCAN_CHUNKS
                        },
                    };
                    search::search(&mut tx, &query)
                        .await?
                        .into_iter()
                        .map(|hit| hit.chunk_id)
                        .collect()
                };
                let elapsed = t.elapsed();
                tx.commit().await?;
                if timed {
                    samples[s].push(elapsed);
                    hits[s] += ids.len();
                    found[s].0 += usize::from(ids.first() == Some(source));
                    found[s].1 += usize::from(ids.contains(source));
                }
            }
        }
    }
    let out = names
        .iter()
        .zip(samples)
        .zip(hits)
        .zip(found)
        .map(|(((name, s), h), f)| series(name, s, h, f))
        .collect();
    Ok((load, out))
}

/// Generates and bulk-loads the corpus, then builds the indexes and the term statistics.
async fn load(
    store: &Store,
    pool: &PgPool,
    model: &str,
    dim: u32,
    embedder: &HashedEmbedder,
    args: &BenchSearchArgs,
) -> anyhow::Result<String> {
    let (chunks, users) = (args.chunks, args.users.max(1));
    let mut owners = Vec::with_capacity(users);
    for u in 0..users {
        let email = if u == 0 {
            "bench-search@example.com".to_owned()
        } else {
            format!("bench-search-{u}@example.com")
        };
        owners.push(create_user(store, &email).await?.0);
    }
    let index = embedding_models::index_name(model, dim);
    // Load without indexes or statistics triggers; build both afterwards.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP INDEX {index}; \
         ALTER TABLE document_chunks DISABLE TRIGGER document_chunks_search_stats_insert"
    )))
    .execute(pool)
    .await?;

    let started = Instant::now();
    let mut rng = Rng(0x5EED_0F5E_A7C4);
    let vocabulary = Vocabulary::new(&mut rng);
    let documents = chunks.div_ceil(CHUNKS_PER_DOCUMENT);
    let doc_ids: Vec<Uuid> = (0..documents).map(|_| Uuid::now_v7()).collect();
    let names: Vec<String> = (0..documents).map(|i| format!("generated-{i:05}.txt")).collect();
    let doc_users: Vec<Uuid> = (0..documents).map(|i| owners[i % users]).collect();
    let hashes: Vec<Vec<u8>> = (0..documents)
        .map(|i| {
            use sha2::Digest;
            sha2::Sha256::digest(format!("bench-search-{i}")).to_vec()
        })
        .collect();
    sqlx::query(
        "INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256, status, progress, chunk_count) \
         SELECT id, u, name, 'text/plain', 1, sha, 'ready', 1, $5 \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bytea[]) AS u(u, id, name, sha)",
    )
    .bind(&doc_users)
    .bind(&doc_ids)
    .bind(&names)
    .bind(&hashes)
    .bind(CHUNKS_PER_DOCUMENT as i32)
    .execute(pool)
    .await?;
    let mut loaded = 0;
    while loaded < chunks {
        let n = BATCH.min(chunks - loaded);
        let mut docs = Vec::with_capacity(n);
        let mut chunk_users = Vec::with_capacity(n);
        let mut indexes = Vec::with_capacity(n);
        let mut contents = Vec::with_capacity(n);
        let mut vectors = Vec::with_capacity(n);
        for i in loaded..loaded + n {
            let text = vocabulary.chunk(&mut rng);
            vectors.push(pgvector::Vector::from(embedder.embed(&text)));
            docs.push(doc_ids[i / CHUNKS_PER_DOCUMENT]);
            chunk_users.push(doc_users[i / CHUNKS_PER_DOCUMENT]);
            indexes.push((i % CHUNKS_PER_DOCUMENT) as i32);
            contents.push(text);
        }
        sqlx::query(
            "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, byte_start, byte_end, \
                                          embedding, embedding_model) \
             SELECT d, u, i, c, 400, 0, length(c), v, $6 \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::vector[]) AS u(u, d, i, c, v)",
        )
        .bind(&chunk_users)
        .bind(&docs)
        .bind(&indexes)
        .bind(&contents)
        .bind(&vectors)
        .bind(model)
        .execute(pool)
        .await?;
        loaded += n;
    }
    let load_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET maintenance_work_mem = {}; \
         CREATE INDEX {index} ON document_chunks USING hnsw ((embedding::vector({dim})) vector_cosine_ops) \
             WHERE embedding_model = {};",
        embedding_models::sql_literal(&args.index_memory),
        embedding_models::sql_literal(model)
    )))
    .execute(&mut *conn)
    .await?;
    let hnsw_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    sqlx::raw_sql(
        "INSERT INTO search_term_stats (user_id, lexeme, chunks) \
             SELECT c.user_id, l.lexeme, count(*) \
             FROM document_chunks AS c, unnest(tsvector_to_array(c.search_vector)) AS l(lexeme) GROUP BY 1, 2; \
         INSERT INTO search_corpus_stats (user_id, chunks, tokens) \
             SELECT user_id, count(*), sum(token_count) FROM document_chunks GROUP BY user_id; \
         SELECT ragpipe_search_blocks_rebuild(); \
         ALTER TABLE document_chunks ENABLE TRIGGER document_chunks_search_stats_insert; \
         RESET maintenance_work_mem;",
    )
    .execute(&mut *conn)
    .await?;
    // One statement each: VACUUM cannot run inside the implicit transaction of a batch.
    for table in [
        "document_chunks",
        "search_term_stats",
        "search_corpus_stats",
        "search_blocks",
        "documents",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(&mut *conn)
            .await?;
    }
    drop(conn);
    let text_secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "{chunks} chunks in {documents} documents of {users} user(s): generated and loaded in {load_secs:.1} s, HNSW built in {hnsw_secs:.1} s \
         (maintenance_work_mem {}), term statistics + postings + VACUUM ANALYZE in {text_secs:.1} s",
        args.index_memory
    ))
}
