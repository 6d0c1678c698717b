//! Storage as a measured figure: bytes on disk of every ragpipe table and index, per chunk, set
//! against the raw payload of the same corpus (the chunks' text bytes plus their vectors at
//! four bytes a dimension), read in the same run. `ragpipe-bench search` and `ingest` print it
//! for the corpus they loaded; `ragpipe-bench storage` reads any database ragpipe migrated
//! (a `search --keep` corpus, or one `ragpipe eval` ingested from real documents).

use crate::common::measurement_pool;
use anyhow::Context;
use ragpipe_core::Config;
use serde::Serialize;
use sqlx::PgPool;

/// `ragpipe-bench storage`.
#[derive(clap::Args, Debug)]
pub struct BenchStorageArgs {
    /// The database to read (default: the configured one).
    #[arg(long)]
    pub database: Option<String>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One table (with its TOAST data, free space and visibility maps) or one index.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Relation {
    /// `schema.name` for the job queue's, the bare name for ragpipe's own.
    pub name: String,
    /// The table it belongs to (itself for a table).
    pub table: String,
    /// `table` or `index`.
    pub kind: String,
    /// Bytes on disk.
    pub bytes: i64,
}

/// The storage of one corpus.
#[derive(Debug, Clone, Serialize)]
pub struct StorageReport {
    /// Chunks stored.
    pub chunks: i64,
    /// Their text, in bytes.
    pub text_bytes: i64,
    /// Their vectors at four bytes a dimension.
    pub vector_bytes: i64,
    /// Every table and index, largest first.
    pub relations: Vec<Relation>,
}

impl StorageReport {
    /// Text plus vector bytes.
    pub fn payload(&self) -> i64 {
        self.text_bytes + self.vector_bytes
    }

    /// Bytes on disk of every relation.
    pub fn total(&self) -> i64 {
        self.relations.iter().map(|r| r.bytes).sum()
    }

    /// Bytes on disk of what holds user data (ragpipe's own tables, not the job queue's).
    pub fn user_data(&self) -> i64 {
        self.relations
            .iter()
            .filter(|r| !r.table.starts_with("apalis."))
            .map(|r| r.bytes)
            .sum()
    }

    /// Prints the report as a table: each relation's bytes, per chunk, and against the payload.
    pub fn print(&self) {
        let per_chunk = |bytes: i64| bytes as f64 / self.chunks.max(1) as f64;
        let payload = self.payload().max(1) as f64;
        println!(
            "storage: {} chunks; raw payload {:.1} MB ({:.1} MB text + {:.1} MB vectors), {:.0} bytes a chunk",
            self.chunks,
            self.payload() as f64 / 1e6,
            self.text_bytes as f64 / 1e6,
            self.vector_bytes as f64 / 1e6,
            per_chunk(self.payload())
        );
        println!(
            "  {:<44} {:>6} {:>10} {:>12} {:>9}",
            "relation", "kind", "MB", "bytes/chunk", "x payload"
        );
        for r in self.relations.iter().filter(|r| r.bytes > 8192) {
            println!(
                "  {:<44} {:>6} {:>10.2} {:>12.0} {:>9.3}",
                r.name,
                r.kind,
                r.bytes as f64 / 1e6,
                per_chunk(r.bytes),
                r.bytes as f64 / payload
            );
        }
        let small = self.relations.iter().filter(|r| r.bytes <= 8192).count();
        println!("  ({small} relations of one page or none not listed; counted in the totals)");
        println!(
            "  user tables and indexes: {:.1} MB, {:.0} bytes/chunk, {:.2} x payload",
            self.user_data() as f64 / 1e6,
            per_chunk(self.user_data()),
            self.user_data() as f64 / payload
        );
        println!(
            "  everything (with the job queue): {:.1} MB, {:.2} x payload",
            self.total() as f64 / 1e6,
            self.total() as f64 / payload
        );
    }
}

/// Reads the sizes and the payload of the database `db` is connected to. Sizes are as they
/// are on disk now: a run that just loaded its corpus has not been vacuumed.
pub async fn measure(db: &PgPool) -> anyhow::Result<StorageReport> {
    let (chunks, text_bytes, vector_bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*)::bigint, coalesce(sum(octet_length(content)), 0)::bigint, \
                coalesce(sum(vector_dims(embedding)), 0)::bigint * 4 \
         FROM document_chunks",
    )
    .fetch_one(db)
    .await
    .context("reading the chunks' payload")?;
    let relations: Vec<Relation> = sqlx::query_as(
        "WITH owned AS ( \
             SELECT c.oid, CASE WHEN n.nspname = 'public' THEN c.relname::text \
                                ELSE n.nspname || '.' || c.relname END AS name \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname IN ('public', 'apalis') AND c.relkind IN ('r', 'p', 'm') \
               AND c.relname <> '_sqlx_migrations') \
         SELECT t.name, t.name AS table, 'table' AS kind, pg_table_size(t.oid) AS bytes FROM owned t \
         UNION ALL \
         SELECT CASE WHEN t.name LIKE 'apalis.%' THEN 'apalis.' || i.relname ELSE i.relname::text END, \
                t.name, 'index', pg_relation_size(i.oid) \
         FROM owned t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid \
         ORDER BY bytes DESC, name",
    )
    .fetch_all(db)
    .await
    .context("reading the tables' and indexes' sizes")?;
    Ok(StorageReport {
        chunks,
        text_bytes,
        vector_bytes,
        relations,
    })
}

/// `ragpipe-bench storage`: the report of an existing database.
pub async fn run(mut config: Config, args: BenchStorageArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.database {
        let mut url = url::Url::parse(&config.database_url).context("DATABASE_URL")?;
        url.set_path(&format!("/{name}"));
        config.database_url = url.to_string();
    }
    let db = measurement_pool(&config).await?;
    let report = measure(&db).await;
    db.close().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}
