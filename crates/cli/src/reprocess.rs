//! `ragpipe reprocess`: bring the selected documents to the current configuration (or to the
//! chunk settings and embedding model given), redoing each from the stage that needs it, through
//! the ingest queue, a bounded number at a time.
//!
//! The run's key is derived from what it selects and wants, so running the same command again
//! after an interruption continues the same run: documents it finished are skipped, documents
//! still in the queue are waited for (not enqueued twice), documents it failed on are retried.

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ragpipe_core::{Config, DocumentId, DocumentStatus, UserId};
use ragpipe_ingest::{ChunkSettings, Chunker, Limits};
use ragpipe_llm::PriceTable;
use ragpipe_store::reprocess::{self, Candidate, Plan, Selection, Stage, Target};
use ragpipe_store::retry::{RetryPolicy, retry};
use ragpipe_store::{Store, StoreError, documents, embedding_cache, embedding_models};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct ReprocessArgs {
    /// Every document (otherwise at least one filter below is required).
    #[arg(long)]
    pub all: bool,
    /// Only this user's documents (repeatable).
    #[arg(long = "user", value_name = "ID")]
    pub users: Vec<Uuid>,
    /// Only this document (repeatable).
    #[arg(long = "document", value_name = "ID")]
    pub documents: Vec<Uuid>,
    /// Only documents with this status (e.g. `failed`).
    #[arg(long)]
    pub status: Option<DocumentStatus>,
    /// Only documents uploaded since this date (2026-11-01) or RFC 3339 time.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only documents whose vectors are by this embedding model.
    #[arg(long, value_name = "OLD")]
    pub from_embedding_model: Option<String>,
    /// Only documents extracted by this extractor version.
    #[arg(long, value_name = "OLD")]
    pub extractor_version: Option<String>,
    /// Embed with this model (default: the configured one); a document whose chunks only need
    /// new vectors keeps its chunks. The model must be the configured one or recorded by a
    /// `ragpipe migrate` run configured with it.
    #[arg(long, value_name = "NEW")]
    pub embedding_model: Option<String>,
    /// Chunk size in tokens (default: the configured one).
    #[arg(long, value_name = "N")]
    pub chunk_tokens: Option<u32>,
    /// Chunk overlap in tokens (default: the configured one).
    #[arg(long, value_name = "N")]
    pub overlap: Option<u32>,
    /// Redo at least this stage (extract, chunk, embed) on every selected document, even one
    /// that already matches.
    #[arg(long)]
    pub stage: Option<Stage>,
    /// Print what would be done (documents per stage, estimated embedding tokens and cost) and
    /// change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Most documents of this run in the queue at once, so uploads are not starved.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_in_flight: u32,
    /// Only enqueue; let a separate `ragpipe worker` fleet process the jobs.
    #[arg(long)]
    pub no_local_workers: bool,
    /// When the target model has no chunks yet (a whole corpus moving to a new model), keep its
    /// vector index and insert every vector into it, instead of building it once when the run
    /// completes. Search ranks the model's chunks either way; without the index it computes
    /// each distance until the build.
    #[arg(long)]
    pub keep_index: bool,
    /// `maintenance_work_mem` for building the target model's vector index at the end of the
    /// run (PostgreSQL's default is 64MB; a graph that fits in memory builds several times
    /// faster).
    #[arg(long, value_name = "SIZE", default_value = "1GB")]
    pub index_memory: String,
    /// Print the plan or the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a dry run found for one stage.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StagePlan {
    /// Documents to redo from this stage.
    pub documents: u64,
    /// Chunks their new sets will have.
    pub chunks: u64,
    /// Of those, chunks whose text the model has to embed (not in the embedding cache).
    pub chunks_to_embed: u64,
    /// Tokens of those.
    pub tokens_to_embed: u64,
}

/// The plan of a run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunPlan {
    /// The run's key.
    pub run: String,
    /// What the run wants.
    pub target: Option<Target>,
    /// Documents selected.
    pub selected: u64,
    /// Already matching, or done by this run before.
    pub done: u64,
    /// In the queue already (this run's, from before an interruption, or another run's).
    pub in_flight: u64,
    /// Still in their first ingest; looked at again at the end.
    pub busy: u64,
    /// Per stage.
    pub stages: BTreeMap<Stage, StagePlan>,
    /// Estimated embedding tokens in all.
    pub tokens_to_embed: u64,
    /// Their estimated cost (price table).
    pub estimated_cost: f64,
}

/// How a run ended.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunResult {
    /// The run's key.
    pub run: String,
    /// Documents this invocation enqueued.
    pub enqueued: u64,
    /// Documents of the run finished (by this invocation or an earlier one of the same run).
    pub finished: u64,
    /// Documents the run failed on, with why (their previous chunk set is kept).
    pub failed: Vec<Failure>,
    /// Whether it stopped early (a signal); the same command continues it.
    pub interrupted: bool,
    /// Whether the target model's vector index was left out while the run wrote its vectors
    /// (the model had no chunks when the run began).
    pub index_deferred: bool,
    /// Seconds spent building the target model's vector index after the run, when it built one.
    pub index_build_seconds: Option<f64>,
    /// Seconds it took.
    pub seconds: f64,
}

/// A document the run failed on.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The document.
    pub document_id: Uuid,
    /// Why.
    pub error: String,
}

impl ReprocessArgs {
    /// The documents the flags select; fails when none is given (neither `--all` nor a filter).
    pub fn selection(&self) -> anyhow::Result<Selection> {
        let filtered = !self.users.is_empty()
            || !self.documents.is_empty()
            || self.status.is_some()
            || self.since.is_some()
            || self.from_embedding_model.is_some()
            || self.extractor_version.is_some();
        if !self.all && !filtered {
            bail!(
                "say which documents: --all, or filters (--user, --document, --status, --since, \
                 --from-embedding-model, --extractor-version)"
            );
        }
        let since = self
            .since
            .as_deref()
            .map(ragpipe_store::usage::parse_instant)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
        let mut users = self.users.clone();
        users.sort_unstable();
        users.dedup();
        let mut documents = self.documents.clone();
        documents.sort_unstable();
        documents.dedup();
        Ok(Selection {
            users,
            documents,
            status: self.status,
            since,
            embedding_model: self.from_embedding_model.clone(),
            extractor_version: self.extractor_version.clone(),
        })
    }

    /// What the selected documents are brought to: the flags, else the configured settings.
    pub fn target(&self, config: &Config) -> Target {
        Target {
            chunk_max_tokens: self.chunk_tokens.unwrap_or(config.chunking.max_tokens),
            chunk_overlap_tokens: self.overlap.unwrap_or(config.chunking.overlap_tokens),
            embedding_model: self
                .embedding_model
                .clone()
                .unwrap_or_else(|| config.embedding.model.clone()),
            extractor_version: ragpipe_ingest::EXTRACTOR_VERSION.to_owned(),
            stage: self.stage,
        }
    }
}

pub async fn run(config: Config, args: ReprocessArgs) -> anyhow::Result<bool> {
    let selection = args.selection()?;
    let target = args.target(&config);
    if target.chunk_overlap_tokens >= target.chunk_max_tokens {
        bail!(
            "the overlap ({}) must be smaller than the chunk size ({})",
            target.chunk_overlap_tokens,
            target.chunk_max_tokens
        );
    }
    let config = Arc::new(config);
    let store = Store::connect(&config).await?;
    reprocess::check_admin(&store).await?;
    let (model, dim) = target_model(&store, &config, &target.embedding_model, args.dry_run).await?;
    let run = reprocess::run_key(&selection, &target);
    let candidates = current_candidates(&store, &selection).await?;

    if args.dry_run {
        let plan = dry_run(&store, &config, &run, &target, &candidates, (&model, dim)).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print_plan(&plan);
        }
        return Ok(true);
    }

    let shutdown = crate::shutdown::on_signal();
    let workers_stop = tokio_util::sync::CancellationToken::new();
    let workers = if args.no_local_workers {
        None
    } else {
        Some(crate::workers::spawn(&store, &config, workers_stop.clone())?)
    };
    let result = execute(&store, &config, &run, &target, &selection, candidates, &args, &shutdown).await;
    workers_stop.cancel();
    if let Some(w) = workers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    let result = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "run {}: {} documents finished, {} failed, {} enqueued by this invocation, {:.1} s{}",
            result.run,
            result.finished,
            result.failed.len(),
            result.enqueued,
            result.seconds,
            if result.interrupted && result.index_deferred {
                " (interrupted: run the same command again to continue; the model's vector index is built when the run completes)"
            } else if result.interrupted {
                " (interrupted: run the same command again to continue)"
            } else {
                ""
            }
        );
        if let Some(seconds) = result.index_build_seconds {
            println!(
                "vector index of {} built in {seconds:.1} s (maintenance_work_mem {})",
                target.embedding_model, args.index_memory
            );
        }
        for f in &result.failed {
            println!("  failed {}: {}", f.document_id, f.error);
        }
    }
    Ok(result.failed.is_empty() && !result.interrupted)
}

/// The target model's name and dimension. The configured model is recorded (with its vector
/// index) if it is not yet; another must have been recorded by a process configured with it.
pub async fn target_model(store: &Store, config: &Config, model: &str, dry_run: bool) -> anyhow::Result<(String, u32)> {
    if model == config.embedding.model {
        if !dry_run {
            embedding_models::ensure(store, model, config.embedding.dim, config.embedding.base_url.as_deref())
                .await
                .with_context(|| format!("embedding model {model}"))?;
        }
        return Ok((model.to_owned(), config.embedding.dim));
    }
    match embedding_models::get(store, model).await? {
        Some(m) => Ok((m.model, m.dim as u32)),
        None => bail!(
            "embedding model {model:?} is not recorded: configure it (RAGPIPE_EMBEDDING_MODEL, \
             RAGPIPE_EMBEDDING_DIM, RAGPIPE_EMBEDDING_BASE_URL) and run `ragpipe migrate` or this command with that \
             configuration"
        ),
    }
}

/// Plans every candidate and estimates the embedding work: for documents that keep their
/// chunks, the stored chunks not yet embedded by the model; for the others, the chunks their
/// text gives with the target settings (extracted and chunked here, as the worker will).
async fn dry_run(
    store: &Store,
    config: &Config,
    run: &str,
    target: &Target,
    candidates: &[Candidate],
    (model, dim): (&str, u32),
) -> anyhow::Result<RunPlan> {
    let mut plan = RunPlan {
        run: run.to_owned(),
        target: Some(target.clone()),
        selected: candidates.len() as u64,
        ..RunPlan::default()
    };
    let chunker = Arc::new(
        Chunker::new(ChunkSettings {
            max_tokens: target.chunk_max_tokens,
            overlap_tokens: target.chunk_overlap_tokens,
            tokenizer: config.chunking.tokenizer.clone(),
        })
        .context("chunk settings")?,
    );
    let limits = Limits::from_config(&config.limits);
    for c in candidates {
        let stage = match c.plan(run, target) {
            Plan::Done => {
                plan.done += 1;
                continue;
            }
            Plan::InFlight => {
                plan.in_flight += 1;
                continue;
            }
            Plan::Busy => {
                plan.busy += 1;
                continue;
            }
            Plan::Redo(stage) => stage,
        };
        let mut tx = store.user_tx(UserId(c.user_id)).await?;
        let texts: Vec<(String, u32)> = if stage == Stage::Embed {
            ragpipe_store::chunks::texts(&mut tx, DocumentId(c.id))
                .await?
                .into_iter()
                .map(|t| (t.content, t.token_count as u32))
                .collect()
        } else {
            let bytes = documents::bytes(&mut tx, DocumentId(c.id)).await?;
            let (chunker, limits) = (Arc::clone(&chunker), limits.clone());
            tokio::task::spawn_blocking(move || match ragpipe_ingest::extract(&bytes, &limits) {
                Ok(extracted) => chunker
                    .chunk(&extracted)
                    .into_iter()
                    .map(|c| (c.content, c.token_count))
                    .collect(),
                Err(_) => Vec::new(),
            })
            .await
            .context("extracting")?
        };
        // The cache is the user's own: what they have embedded is what they will not pay again.
        let hashes: Vec<[u8; 32]> = texts.iter().map(|(t, _)| embedding_cache::text_hash(t)).collect();
        let cached = embedding_cache::cached_keys(&mut tx, model, dim, &hashes).await?;
        tx.commit().await?;
        let mut sent = std::collections::HashSet::new();
        let entry = plan.stages.entry(stage).or_default();
        entry.documents += 1;
        entry.chunks += texts.len() as u64;
        for ((_, tokens), hash) in texts.iter().zip(&hashes) {
            if !cached.contains(hash) && sent.insert(*hash) {
                entry.chunks_to_embed += 1;
                entry.tokens_to_embed += u64::from(*tokens);
            }
        }
    }
    plan.tokens_to_embed = plan.stages.values().map(|s| s.tokens_to_embed).sum();
    let prices =
        PriceTable::from_setting(config.prices.as_deref()).map_err(|e| anyhow::anyhow!("RAGPIPE_PRICES: {e}"))?;
    plan.estimated_cost = prices.cost(model, plan.tokens_to_embed, 0);
    Ok(plan)
}

fn print_plan(plan: &RunPlan) {
    println!("run {} (dry run: nothing changed)", plan.run);
    if let Some(t) = &plan.target {
        println!(
            "target: chunks of {} tokens with {} overlap, embedding model {}, extractor {}",
            t.chunk_max_tokens, t.chunk_overlap_tokens, t.embedding_model, t.extractor_version
        );
    }
    println!(
        "{} documents selected: {} already done, {} in the queue, {} still in their first ingest",
        plan.selected, plan.done, plan.in_flight, plan.busy
    );
    for (stage, s) in &plan.stages {
        println!(
            "  from {stage:<8} {:>6} documents  {:>8} chunks  {:>8} to embed ({} tokens)",
            s.documents, s.chunks, s.chunks_to_embed, s.tokens_to_embed
        );
    }
    println!(
        "estimated embedding: {} tokens, cost {:.6}",
        plan.tokens_to_embed, plan.estimated_cost
    );
}

/// Enqueues the run's documents at most `max_in_flight` at a time and follows them until every
/// one is finished or failed, looking again at the end for documents that became due meanwhile
/// (uploads still in their first ingest, uploaded during the run on the old settings).
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    store: &Store,
    config: &Config,
    run: &str,
    target: &Target,
    selection: &Selection,
    candidates: Vec<Candidate>,
    args: &ReprocessArgs,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<RunResult> {
    let started = Instant::now();
    let max_in_flight = u64::from(args.max_in_flight.max(1));
    let mut result = RunResult {
        run: run.to_owned(),
        ..RunResult::default()
    };
    let bar = if std::io::stderr().is_terminal() && !args.json {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} documents  {per_sec}  eta {eta}  {msg}")
                .map_err(|e| anyhow::anyhow!("progress template: {e}"))?
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("reprocess {run}"));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    // Documents the run owns: its queue (not yet enqueued) and, once enqueued, in flight.
    let mut queue: VecDeque<(Uuid, Uuid, Stage)> = VecDeque::new();
    let mut total: u64 = 0;
    let mut already_finished: u64 = 0;
    plan_into(run, target, &candidates, &mut queue, &mut total);
    for c in &candidates {
        if c.last_reprocess_run.as_deref() == Some(run) {
            already_finished += 1;
        }
    }
    // A model with no chunks yet gets its vectors without its HNSW index, built once at the end.
    let (model, dim) = (target.embedding_model.as_str(), target_dim(store, target).await?);
    if !args.keep_index && !queue.is_empty() {
        result.index_deferred = embedding_models::defer_index(store, model, dim)
            .await
            .with_context(|| format!("deferring the vector index of {model}"))?;
    }
    let mut state = run_state(store, run).await?;
    total += state.in_flight + already_finished;
    bar.set_length(total);
    let mut last_in_flight = state.in_flight;
    let mut finished_here: u64 = 0;
    loop {
        if shutdown.is_cancelled() {
            result.interrupted = true;
            break;
        }
        // Top up the queue to the limit.
        let room = max_in_flight.saturating_sub(state.in_flight);
        if room > 0 && !queue.is_empty() {
            let mut by_user: HashMap<Uuid, Vec<(DocumentId, reprocess::Pending)>> = HashMap::new();
            for _ in 0..room {
                let Some((doc, user, stage)) = queue.pop_front() else {
                    break;
                };
                by_user
                    .entry(user)
                    .or_default()
                    .push((DocumentId(doc), target.pending(run, stage)));
            }
            for (user, docs) in by_user {
                // Safe to retry: a document already marked (by an attempt whose commit went
                // through) is left alone and gets no second job.
                let marked = retry("marking documents for reprocessing", RetryPolicy::POLLING, || {
                    reprocess::mark_many(store, UserId(user), &docs, config.worker.max_attempts)
                })
                .await?;
                result.enqueued += marked as u64;
                // A document that changed since it was planned (deleted, or taken by another
                // run) is not this run's any more.
                total -= (docs.len() - marked) as u64;
            }
            state = run_state(store, run).await?;
            last_in_flight = state.in_flight;
            bar.set_length(total);
        }
        if queue.is_empty() && state.in_flight == 0 {
            // Everything planned is through: look again for documents that became due.
            let fresh = current_candidates(store, selection).await?;
            let busy = plan_into(run, target, &fresh, &mut queue, &mut total);
            bar.set_length(total);
            if queue.is_empty() {
                if busy == 0 {
                    break;
                }
                bar.set_message(format!("waiting for {busy} documents in their first ingest"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.cancelled() => {}
        }
        state = run_state(store, run).await?;
        if state.in_flight < last_in_flight {
            finished_here += last_in_flight - state.in_flight;
        }
        last_in_flight = state.in_flight;
        bar.set_position(already_finished + finished_here);
        if !state.failed.is_empty() {
            bar.set_message(format!("{} failed", state.failed.len()));
        }
    }
    bar.finish_and_clear();
    let state = run_state(store, run).await?;
    result.failed = state
        .failed
        .into_iter()
        .map(|(document_id, error)| Failure { document_id, error })
        .collect();
    let now = current_candidates(store, selection).await?;
    result.finished = now
        .iter()
        .filter(|c| c.last_reprocess_run.as_deref() == Some(run))
        .count() as u64;
    // The index this run (or an interrupted one before it) left out is built once everything
    // is through; an interrupted run leaves it to the command that continues it.
    if !result.interrupted {
        result.index_build_seconds = build_index_if_missing(store, model, dim, &args.index_memory, &bar).await?;
    }
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// Builds `model`'s vector index if it is missing (deferred by this command or an interrupted
/// one before it) or invalid, riding out dropped connections: a build cut off leaves an invalid
/// index, which the next attempt drops and builds again. Returns the seconds it took, or `None`
/// when the index was there.
pub async fn build_index_if_missing(
    store: &Store,
    model: &str,
    dim: u32,
    memory: &str,
    bar: &ProgressBar,
) -> anyhow::Result<Option<f64>> {
    let building = Instant::now();
    bar.set_message(format!("building the vector index of {model}"));
    let built = retry("building the vector index", RetryPolicy::POLLING, || {
        embedding_models::build_index(store, model, dim, memory)
    })
    .await
    .with_context(|| format!("building the vector index of {model}"))?;
    Ok(built.then(|| building.elapsed().as_secs_f64()))
}

/// The dimension of the run's target model, as recorded.
async fn target_dim(store: &Store, target: &Target) -> anyhow::Result<u32> {
    let model = &target.embedding_model;
    let recorded = embedding_models::get(store, model)
        .await?
        .with_context(|| format!("embedding model {model:?} is not recorded"))?;
    Ok(recorded.dim as u32)
}

/// The run's state, riding out a dropped connection (the run polls it every 250 ms for as long
/// as it lasts).
async fn run_state(store: &Store, run: &str) -> Result<reprocess::RunState, StoreError> {
    retry("reading the run's state", RetryPolicy::POLLING, || {
        reprocess::run_state(store, run)
    })
    .await
}

/// The selection's documents, riding out a dropped connection.
async fn current_candidates(store: &Store, selection: &Selection) -> Result<Vec<Candidate>, StoreError> {
    retry("listing the documents to reprocess", RetryPolicy::POLLING, || {
        reprocess::candidates(store, selection)
    })
    .await
}

/// Adds the candidates the run has to redo (and has not queued yet) to `queue`; returns how many
/// are still in their first ingest.
fn plan_into(
    run: &str,
    target: &Target,
    candidates: &[Candidate],
    queue: &mut VecDeque<(Uuid, Uuid, Stage)>,
    total: &mut u64,
) -> u64 {
    let queued: std::collections::HashSet<Uuid> = queue.iter().map(|q| q.0).collect();
    let mut busy = 0;
    for c in candidates {
        match c.plan(run, target) {
            Plan::Redo(stage) if !queued.contains(&c.id) => {
                queue.push_back((c.id, c.user_id, stage));
                *total += 1;
            }
            Plan::Busy => busy += 1,
            _ => {}
        }
    }
    busy
}
