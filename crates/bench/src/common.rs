//! What the benchmarks share: the measurement pool, a deterministic random source, a generated
//! corpus uploaded as the API uploads, a scratch database on the configured server, and peak
//! memory.

use anyhow::Context;
use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, documents, users};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// A pool of the benchmark's own on `config.database_url`, for its measurement SQL (the
/// connection's role, the database owner or administrator, sees every user's rows). A few
/// connections: one for a sampler that holds its own, the others for counts and bulk loads;
/// they show in `pg_stat_activity` as `ragpipe-bench`. Its statements are not logged: bulk
/// loads and index builds are slow by design, and the benchmark times what it needs itself.
pub async fn measurement_pool(config: &Config) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&config.database_url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("ragpipe-bench")
        .disable_statement_logging();
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to {}", ragpipe_store::redact(&config.database_url)))
}

/// Deterministic pseudo-random numbers (xorshift64*), so every run generates the same corpus.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A database named `name` on the configured server, for one benchmark run.
pub struct ScratchDatabase {
    /// The configured database's connection, which creates and drops the scratch one.
    admin: PgPool,
    name: String,
    /// The configuration pointing at the scratch database.
    pub config: Config,
}

impl ScratchDatabase {
    /// Connects to the configured server and, when `recreate`, drops and creates `name`.
    pub async fn open(config: Config, name: &str, recreate: bool) -> anyhow::Result<ScratchDatabase> {
        let mut url = url::Url::parse(&config.database_url).context("DATABASE_URL")?;
        let admin = measurement_pool(&config).await?;
        let name = name.replace('"', "");
        if recreate {
            drop_database(&admin, &name).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&admin)
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        url.set_path(&format!("/{name}"));
        let mut config = config;
        config.database_url = url.to_string();
        Ok(ScratchDatabase { admin, name, config })
    }

    /// Drops the database (`WITH (FORCE)`: connections still open to it are ended).
    pub async fn drop(self) -> anyhow::Result<()> {
        let dropped = drop_database(&self.admin, &self.name).await;
        self.admin.close().await;
        dropped
    }
}

async fn drop_database(admin: &PgPool, name: &str) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .with_context(|| format!("dropping database {name}"))?;
    Ok(())
}

/// A vocabulary of pronounceable words and a Zipf-like sampler over it: a few words are very
/// common, most are rare, as in real text. The same seed every time, so every run generates the
/// same corpus.
pub struct Corpus {
    words: Vec<String>,
    rng: Rng,
}

impl Corpus {
    pub fn new() -> Corpus {
        const ONSETS: &[&str] = &[
            "b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "st", "tr", "pl", "gr",
        ];
        const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "io"];
        const CODAS: &[&str] = &["", "n", "r", "s", "t", "l", "m", "nd", "rk", "st"];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut words = Vec::with_capacity(8000);
        for _ in 0..8000 {
            let syllables = 1 + rng.below(3);
            let mut w = String::new();
            for _ in 0..syllables {
                w.push_str(ONSETS[rng.below(ONSETS.len())]);
                w.push_str(VOWELS[rng.below(VOWELS.len())]);
                w.push_str(CODAS[rng.below(CODAS.len())]);
            }
            words.push(w);
        }
        Corpus { words, rng }
    }

    fn word(&mut self) -> &str {
        // Rank ~ 1/u: squaring a uniform draw skews it toward the head of the vocabulary.
        let u = (self.rng.next() % 1_000_000) as f64 / 1_000_000.0;
        let rank = ((u * u * u) * self.words.len() as f64) as usize;
        &self.words[rank.min(self.words.len() - 1)]
    }

    /// Document `n` of the corpus: Markdown of about `words` words, a heading every ~600 words.
    pub fn document(&mut self, n: usize, words: usize) -> String {
        let mut out = format!("# Generated document {n}\n\n");
        let mut written = 0;
        let mut section = 0;
        while written < words {
            if written % 600 == 0 {
                section += 1;
                out.push_str(&format!("## Section {section} {}\n\n", self.word().to_owned()));
            }
            let len = 60 + self.rng.below(60);
            for i in 0..len {
                if i > 0 {
                    out.push(' ');
                }
                let w = self.word().to_owned();
                out.push_str(&w);
                if self.rng.below(14) == 0 {
                    out.push('.');
                }
            }
            out.push_str(".\n\n");
            written += len;
        }
        out
    }

    /// The file name document `n` is uploaded under.
    pub fn filename(n: usize) -> String {
        format!("doc-{n:04}.md")
    }
}

/// Creates the run's user, `email`, and returns its id.
pub async fn create_user(store: &Store, email: &str) -> anyhow::Result<UserId> {
    let user = UserId::new();
    let new = users::NewUser {
        email: email.to_owned(),
        id: Some(user),
        ..Default::default()
    };
    users::create(store, &new)
        .await
        .with_context(|| format!("creating the benchmark's user {email}"))?;
    Ok(user)
}

/// Generates `docs` documents of about `words` words and uploads them for `user` through
/// `documents::create` (row, bytes and ingest job, as the API does), in one transaction; returns
/// the bytes uploaded. Each document is generated, uploaded and dropped in turn, so the process
/// holds one at a time and peak memory measures the pipeline, not the corpus.
pub async fn upload_corpus(
    store: &Store,
    user: UserId,
    docs: usize,
    words: usize,
    max_attempts: u32,
) -> anyhow::Result<usize> {
    let mut corpus = Corpus::new();
    let mut total_bytes = 0usize;
    let mut tx = store.user_tx(user).await?;
    for i in 0..docs {
        let text = corpus.document(i, words);
        total_bytes += text.len();
        let filename = Corpus::filename(i);
        let new = documents::NewDocument::new(&filename, "text/markdown", text.as_bytes(), serde_json::json!({}));
        documents::create(&mut tx, &new, max_attempts).await?;
    }
    tx.commit().await?;
    Ok(total_bytes)
}

/// The files directly in `dir`, sorted by path (the benchmarks' corpora of real documents).
pub fn files_in(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Waits until none of `user`'s documents is still in the pipeline (each is ready or failed),
/// counting them on the measurement pool `db`.
pub async fn wait_until_settled(db: &PgPool, user: UserId) -> anyhow::Result<()> {
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM documents WHERE user_id = $1 AND status NOT IN ('ready', 'failed')",
        )
        .bind(user.0)
        .fetch_one(db)
        .await
        .context("counting the documents still in the pipeline")?;
        if open == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The process's peak resident set size so far (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the peak resident set size to the current one (Linux: `5` to `/proc/self/clear_refs`),
/// so the next [`peak_rss_mib`] is the peak of what runs in between. Returns whether it could.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
