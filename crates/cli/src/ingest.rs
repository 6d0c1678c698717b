//! `ragpipe ingest`: upload files and directories, then wait until each is ready or failed.

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_store::retry::{RetryPolicy, retry};
use ragpipe_store::{Store, StoreError, documents, embedding_models};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// The owner of the documents.
    #[arg(long)]
    pub user: UserId,
    /// Files and directories (recursive).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Only upload; let a separate `ragpipe worker` fleet process them.
    #[arg(long)]
    pub no_local_workers: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// When the configured embedding model has no chunks yet (a new deployment's first bulk
    /// load), keep its vector index and insert every vector into it, instead of building it once
    /// when every document has settled.
    #[arg(long)]
    pub keep_index: bool,
    /// `maintenance_work_mem` for building the model's vector index at the end.
    #[arg(long, value_name = "SIZE", default_value = "1GB")]
    pub index_memory: String,
}

/// One file's result.
#[derive(Debug, serde::Serialize)]
pub struct Ingested {
    pub path: String,
    pub document_id: Option<DocumentId>,
    pub status: String,
    pub chunks: i32,
    pub pages: Option<i32>,
    pub error: Option<String>,
    pub duplicate: bool,
}

pub async fn run(config: Config, args: IngestArgs) -> anyhow::Result<bool> {
    let config = Arc::new(config);
    let store = Store::connect(&config).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let workers = if args.no_local_workers {
        None
    } else {
        Some(crate::workers::spawn(&store, &config, shutdown.clone())?)
    };
    // A model with no chunks yet gets its vectors without its HNSW index, built once at the end
    // (as `ragpipe reprocess` does for a corpus moving to a new model). A model not recorded yet
    // is recorded by the workers as they start, with its index.
    let model = &config.embedding.model;
    let recorded = embedding_models::get(&store, model).await?;
    let dim = recorded.as_ref().map(|m| m.dim as u32);
    if let (Some(dim), false) = (dim, args.keep_index) {
        embedding_models::defer_index(&store, model, dim)
            .await
            .with_context(|| format!("deferring the vector index of {model}"))?;
    }
    let results = ingest_paths(&store, &config, args.user, &args.paths, !args.json).await;
    shutdown.cancel();
    if let Some(w) = workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    // Built whatever happened above: a deferral never outlives the command that made it, unless
    // the command itself is killed (then the next ingest or reprocess run builds it).
    if let Some(dim) = dim {
        let built =
            crate::reprocess::build_index_if_missing(&store, model, dim, &args.index_memory, &ProgressBar::hidden())
                .await?;
        if let (Some(seconds), false) = (built, args.json) {
            println!(
                "vector index of {model} built in {seconds:.1} s (maintenance_work_mem {})",
                args.index_memory
            );
        }
    }
    let results = results?;
    // A document someone deleted while it was followed is an outcome, not a failure.
    let ok = results.iter().all(|r| r.status == "ready" || r.status == "deleted");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print_summary(&results);
    }
    Ok(ok)
}

pub fn print_summary(results: &[Ingested]) {
    let ready = results.iter().filter(|r| r.status == "ready").count();
    let chunks: i64 = results.iter().map(|r| i64::from(r.chunks)).sum();
    println!("{ready} of {} documents ready, {chunks} chunks", results.len());
    for r in results.iter().filter(|r| r.status != "ready") {
        println!("  {} {}: {}", r.status, r.path, r.error.as_deref().unwrap_or(""));
    }
}

/// Every file under `paths`, sorted, skipping hidden ones.
pub fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        walk(p, &mut files).with_context(|| format!("reading {}", p.display()))?;
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            walk(&entry.path(), out)?;
        }
    } else if meta.is_file() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Uploads every file under `paths` for `user` (one transaction per file: the row, the bytes and
/// the job), then waits for each to end `ready` or `failed`.
pub async fn ingest_paths(
    store: &Store,
    config: &Config,
    user: UserId,
    paths: &[PathBuf],
    progress: bool,
) -> anyhow::Result<Vec<Ingested>> {
    let files = collect_files(paths)?;
    if files.is_empty() {
        bail!(
            "no files found under {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut pending: Vec<(Ingested, Option<ProgressBar>)> = Vec::new();
    let bars = MultiProgress::new();
    let show = progress && std::io::stderr().is_terminal();
    if !show {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:40!} [{bar:30}] {percent:>3}% {msg}")
        .map_err(|e| anyhow::anyhow!("progress style: {e}"))?
        .progress_chars("=> ");
    for file in files {
        let display = file.display().to_string();
        let bytes = std::fs::read(&file).with_context(|| format!("reading {display}"))?;
        let mut item = Ingested {
            path: display.clone(),
            document_id: None,
            status: "failed".into(),
            chunks: 0,
            pages: None,
            error: None,
            duplicate: false,
        };
        if bytes.len() as u64 > config.limits.max_file_bytes {
            item.error = Some(format!(
                "{} bytes is over the {}-byte file limit",
                bytes.len(),
                config.limits.max_file_bytes
            ));
            pending.push((item, None));
            continue;
        }
        let format = match ragpipe_ingest::detect(&bytes) {
            Ok(f) => f,
            Err(e) => {
                item.error = Some(e.to_string());
                pending.push((item, None));
                continue;
            }
        };
        let filename = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| display.clone());
        let new = documents::NewDocument::new(
            &filename,
            format.content_type(),
            &bytes,
            serde_json::json!({ "source_path": display }),
        );
        // Retried on a dropped connection: identical bytes return the document already created,
        // so an upload whose commit went through before the connection dropped is not doubled.
        let new = &new;
        let stored = retry(
            &format!("uploading {display}"),
            RetryPolicy::POLLING,
            move || async move {
                let mut tx = store.user_tx(user).await?;
                let stored = documents::create(&mut tx, new, config.worker.max_attempts).await?;
                tx.commit().await?;
                Ok(stored)
            },
        )
        .await
        .with_context(|| format!("uploading {display}"))?;
        item.document_id = Some(DocumentId(stored.document.id));
        item.duplicate = !stored.created;
        item.status = stored.document.status.clone();
        let bar = bars.add(ProgressBar::new(100));
        bar.set_style(style.clone());
        bar.set_prefix(filename);
        pending.push((item, Some(bar)));
    }

    loop {
        let open_ids: Vec<DocumentId> = pending
            .iter()
            .filter_map(|(item, bar)| match (item.document_id, bar) {
                (Some(id), Some(bar)) if !bar.is_finished() => Some(id),
                _ => None,
            })
            .collect();
        if open_ids.is_empty() {
            break;
        }
        // A dropped connection costs a pause, not the command: the uploads are committed.
        let docs = retry("reading the documents' progress", RetryPolicy::POLLING, || {
            read_documents(store, user, &open_ids)
        })
        .await
        .context("reading a document")?;
        let docs: HashMap<Uuid, Option<documents::Document>> = docs.into_iter().map(|(id, d)| (id.0, d)).collect();
        for (item, bar) in pending.iter_mut() {
            let (Some(id), Some(bar)) = (item.document_id, bar.as_ref()) else {
                continue;
            };
            let doc = match docs.get(&id.0) {
                Some(Some(doc)) => doc,
                Some(None) => {
                    // Deleted while it was followed (by another client): that is its outcome.
                    item.status = "deleted".into();
                    item.error = Some("the document was deleted while it was processed".into());
                    bar.finish_with_message("deleted");
                    continue;
                }
                None => continue,
            };
            item.status = doc.status.clone();
            item.chunks = doc.chunk_count;
            item.pages = doc.page_count;
            item.error = doc.error.clone();
            bar.set_position((doc.progress * 100.0) as u64);
            bar.set_message(doc.status.clone());
            if doc.status()?.is_terminal() {
                bar.finish_with_message(match &doc.error {
                    Some(e) => format!("failed: {e}"),
                    None => format!("ready: {} chunks", doc.chunk_count),
                });
            }
        }
        if pending
            .iter()
            .all(|(_, bar)| bar.as_ref().is_none_or(ProgressBar::is_finished))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(pending.into_iter().map(|(i, _)| i).collect())
}

/// The documents `ids` of `user`, read in one transaction; `None` for one that is gone.
async fn read_documents(
    store: &Store,
    user: UserId,
    ids: &[DocumentId],
) -> Result<Vec<(DocumentId, Option<documents::Document>)>, StoreError> {
    let mut tx = store.user_tx(user).await?;
    let mut docs = Vec::with_capacity(ids.len());
    for id in ids {
        let doc = match documents::get(&mut tx, *id).await {
            Ok(doc) => Some(doc),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        docs.push((*id, doc));
    }
    Ok(docs)
}
