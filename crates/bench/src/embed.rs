//! `ragpipe-bench embed`: the local embedding model's throughput against an OpenAI-compatible
//! embeddings server of the same model (the MiniLM server of `scripts/real-models`), on the same
//! texts in the same run: inputs/s, word pieces/s, the ratio, the agreement of the vectors and
//! peak memory.
//!
//! The texts are real chunks: the documents of `--documents` extracted and chunked as ingest
//! does with the local model (so every one fits the model whole), the first `--inputs` of them.

use anyhow::Context;
use clap::Args;
use ragpipe_core::Config;
use ragpipe_core::config::{DEFAULT_LOCAL_MODEL, EmbeddingProvider, default_local_model_dir};
use ragpipe_ingest::{ChunkSettings, Limits};
use ragpipe_llm::{Embedder, cosine};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchEmbedArgs {
    /// Documents whose chunks are embedded.
    #[arg(long, default_value = "fixtures/eval-unseen/documents")]
    pub documents: PathBuf,
    /// Chunks embedded by each provider.
    #[arg(long, default_value_t = 512)]
    pub inputs: usize,
    /// Base URL of the embeddings server to compare with (`scripts/real-models env` prints it);
    /// none: the local model alone.
    #[arg(long, env = "RAGPIPE_BENCH_EMBEDDING_BASE_URL")]
    pub http: Option<String>,
    /// The server's process id, to read its peak memory (`cat target/real-models/embedding.pid`).
    #[arg(long)]
    pub http_pid: Option<u32>,
    /// Inputs per request to the server.
    #[arg(long, default_value_t = 32)]
    pub http_batch: u32,
}

pub async fn run(config: Config, args: BenchEmbedArgs) -> anyhow::Result<()> {
    let mut local = config.embedding.clone();
    local.provider = Some(EmbeddingProvider::Local.as_str().to_owned());
    local.base_url = None;
    if local.local_dir.is_none() {
        local.local_dir = default_local_model_dir(|n| std::env::var(n).ok());
    }
    if local.model == ragpipe_core::config::HASHED_MODEL {
        local.model = DEFAULT_LOCAL_MODEL.to_owned();
    }
    let rss_start = crate::common::peak_rss_mib().unwrap_or(0.0);
    let loading = Instant::now();
    let local_embedder = Embedder::new(&local).context("loading the local embedding model")?;
    let load_secs = loading.elapsed().as_secs_f64();
    let model = local_embedder.local_model().context("a local model")?.clone();

    let texts = chunk_texts(&config, &args, &local_embedder)?;
    let pieces: usize = texts
        .iter()
        .map(|t| model.count_tokens(t))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .sum();
    println!(
        "embedding benchmark: {} chunks of {} ({} word pieces, {:.0} a chunk), model {} in {}",
        texts.len(),
        args.documents.display(),
        pieces,
        pieces as f64 / texts.len().max(1) as f64,
        local.model,
        model.dir().display()
    );

    // Warm-up on a few inputs, then the timed run.
    local_embedder.embed(&texts[..texts.len().min(8)]).await?;
    let started = Instant::now();
    let local_out = local_embedder.embed(&texts).await?;
    let local_secs = started.elapsed().as_secs_f64();
    let local_rss = crate::common::peak_rss_mib().unwrap_or(0.0);
    println!(
        "  local (in-process, {} threads): {:.1} inputs/s, {:.0} word pieces/s ({local_secs:.1} s; model loaded in {load_secs:.1} s)",
        local_embedder.local_threads().unwrap_or(0),
        texts.len() as f64 / local_secs,
        local_out.prompt_tokens as f64 / local_secs,
    );
    println!("  local peak RSS: {local_rss:.0} MiB (process; {rss_start:.0} MiB before loading the model)");

    let Some(base_url) = args.http.as_deref() else {
        println!("  (no --http server given: nothing to compare with)");
        return Ok(());
    };
    let mut http = config.embedding.clone();
    http.provider = Some(EmbeddingProvider::Api.as_str().to_owned());
    http.base_url = Some(base_url.to_owned());
    http.model = local.model.clone();
    http.dim = local.dim;
    http.batch_size = args.http_batch;
    http.batch_tokens = u32::MAX;
    http.max_input_tokens = u32::MAX;
    http.concurrency = 1;
    let http_embedder = Embedder::new(&http).context("the embeddings server")?;
    http_embedder.embed(&texts[..texts.len().min(8)]).await?;
    let started = Instant::now();
    let http_out = http_embedder.embed(&texts).await?;
    let http_secs = started.elapsed().as_secs_f64();
    println!(
        "  server {base_url} ({} inputs a request): {:.1} inputs/s, {:.0} word pieces/s ({http_secs:.1} s)",
        args.http_batch,
        texts.len() as f64 / http_secs,
        pieces as f64 / http_secs,
    );
    if let Some(pid) = args.http_pid {
        match server_peak_rss_mib(pid) {
            Some(mib) => println!("  server peak RSS: {mib:.0} MiB (pid {pid})"),
            None => println!("  server peak RSS: unreadable (pid {pid})"),
        }
    }
    println!("  local / server throughput: {:.2}x", http_secs / local_secs);
    let cosines: Vec<f32> = local_out
        .vectors
        .iter()
        .zip(&http_out.vectors)
        .map(|(a, b)| cosine(a, b))
        .collect();
    let lowest = cosines.iter().copied().fold(f32::INFINITY, f32::min);
    let mean = cosines.iter().sum::<f32>() / cosines.len().max(1) as f32;
    println!("  vectors local vs server: mean cosine {mean:.6}, lowest {lowest:.6}");
    Ok(())
}

/// The first `args.inputs` chunks of the documents, chunked as ingest chunks for the local model.
fn chunk_texts(config: &Config, args: &BenchEmbedArgs, embedder: &Embedder) -> anyhow::Result<Vec<String>> {
    let paths = crate::common::files_in(&args.documents)?;
    let chunker = ragpipe_ingest_worker::chunker_for(ChunkSettings::from_config(&config.chunking), embedder)
        .context("building the chunker")?;
    let limits = Limits::from_config(&config.limits);
    let mut texts = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let Ok(doc) = ragpipe_ingest::extract(&bytes, &limits) else {
            continue;
        };
        texts.extend(chunker.chunk(&doc).into_iter().map(|c| c.content));
        if texts.len() >= args.inputs {
            texts.truncate(args.inputs);
            break;
        }
    }
    anyhow::ensure!(!texts.is_empty(), "no text in {}", args.documents.display());
    Ok(texts)
}

/// Another process's peak resident set (`VmHWM`), in MiB.
fn server_peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
