//! `ragpipe extract FILE [--chunks] [--json]`: what the ingest pipeline would store for a file,
//! without touching the database. The first tool to reach for when an answer looks wrong.

use anyhow::Context;
use ragpipe_ingest::{ChunkSettings, Limits};
use ragpipe_llm::Embedder;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `ragpipe extract`.
#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// The document to extract (PDF, text, Markdown, HTML or DOCX; told from its bytes).
    pub file: PathBuf,
    /// Print the chunks (with token counts, pages and heading paths) instead of the text.
    #[arg(long)]
    pub chunks: bool,
    /// Print JSON: the extracted document, and with --chunks the chunk settings and chunks.
    #[arg(long)]
    pub json: bool,
}

/// Extracts (and with `--chunks`, chunks) the file with the configured limits and chunk
/// settings, and prints the result. Human output: the text (or chunks) on stdout, a summary on
/// stderr.
pub fn run(args: &ExtractArgs, config: &ragpipe_core::Config) -> anyhow::Result<()> {
    let limits = Limits::from_config(&config.limits);
    let meta = std::fs::metadata(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    if meta.len() > limits.max_input_bytes {
        anyhow::bail!(
            "{} is {} bytes, over the limit of {} (RAGPIPE_MAX_FILE_BYTES)",
            args.file.display(),
            meta.len(),
            limits.max_input_bytes
        );
    }
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let doc =
        ragpipe_ingest::extract(&bytes, &limits).with_context(|| format!("extracting {}", args.file.display()))?;
    // Chunks are cut as ingest cuts them for the configured embedder: a local model's own
    // input limit caps them too (loading the model for its tokenizer).
    let chunker = if args.chunks {
        let embedder = Embedder::new(&config.embedding).context("loading the embedding model")?;
        Some(
            ragpipe_ingest_worker::chunker_for(ChunkSettings::from_config(&config.chunking), &embedder)
                .context("building the chunker")?,
        )
    } else {
        None
    };
    let chunks = chunker.as_ref().map(|c| c.chunk(&doc));
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = match (&chunker, &chunks) {
            (Some(c), Some(chunks)) => {
                let model_limit = c
                    .model_limit()
                    .map(|l| serde_json::json!({ "max_tokens": l.max_tokens }));
                serde_json::json!({
                    "document": doc,
                    "chunk_settings": c.settings(),
                    "model_limit": model_limit,
                    "chunks": chunks,
                })
            }
            _ => serde_json::to_value(&doc)?,
        };
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut summary = format!("{}: {}", args.file.display(), doc.format);
    if doc.page_count > 0 {
        summary.push_str(&format!(", {} pages", doc.page_count));
    }
    summary.push_str(&format!(", {} characters", doc.text.chars().count()));
    if let Some(t) = &doc.title {
        summary.push_str(&format!(", title {t:?}"));
    }
    if let Some(l) = &doc.language {
        summary.push_str(&format!(", language {l}"));
    }
    if let Some(chunks) = &chunks {
        let tokens: u64 = chunks.iter().map(|c| u64::from(c.token_count)).sum();
        summary.push_str(&format!(", {} chunks, {tokens} tokens", chunks.len()));
    }
    eprintln!("{summary}");
    for f in &doc.failed_pages {
        eprintln!("page {} failed: {}", f.page, f.reason);
    }
    for w in &doc.warnings {
        let pages: Vec<String> = w.pages.iter().map(u32::to_string).collect();
        eprintln!("warning {}: pages {}", w.code, pages.join(", "));
    }
    match &chunks {
        None => {
            out.write_all(doc.text.as_bytes())?;
            if !doc.text.ends_with('\n') {
                writeln!(out)?;
            }
        }
        Some(chunks) => {
            for c in chunks {
                let mut head = format!(
                    "--- chunk {} · {} tokens · bytes {}..{}",
                    c.index, c.token_count, c.byte_range.start, c.byte_range.end
                );
                match (c.page_first, c.page_last) {
                    (Some(a), Some(b)) if a == b => head.push_str(&format!(" · page {a}")),
                    (Some(a), Some(b)) => head.push_str(&format!(" · pages {a}-{b}")),
                    _ => {}
                }
                if !c.heading_path.is_empty() {
                    head.push_str(&format!(" · {}", c.heading_path.join(" > ")));
                }
                writeln!(out, "{head}\n{}\n", c.content)?;
            }
        }
    }
    Ok(())
}
