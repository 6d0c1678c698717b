//! `ragpipe demo`: the main job end to end on the embedded defaults. Migrates, creates (or
//! finds) the demo user, ingests the demo corpus with progress (`fixtures/demo/`: nine pages of
//! the SQLite documentation, one of them also as a Markdown copy), searches it, then asks a
//! question and streams the answer with its sources. The question is answered by several pages,
//! so the answer cites different documents; the copy shows as `also in` on the page it repeats.
//! Running it again is quick: identical uploads return the documents already ingested.

use anyhow::Context;
use clap::Args;
use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, StoreError, users};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The demo account's id: fixed, so every run finds the same user and documents.
const DEMO_USER: uuid::Uuid = uuid::Uuid::from_u128(0x0000_0000_0000_4000_8000_00de_0000_0001);

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Documents to ingest.
    #[arg(long, default_value = "fixtures/demo")]
    pub documents: PathBuf,
    /// The question to search for and answer.
    #[arg(
        long,
        default_value = "Can readers and a writer use an SQLite database at the same time?"
    )]
    pub question: String,
}

pub async fn run(config: Config, args: DemoArgs) -> anyhow::Result<()> {
    let config = Arc::new(config);
    println!("== ragpipe demo ==");
    let store = Store::connect(&config).await?;
    let report = store.migrate(&config.embedding).await.context("migrating")?;
    println!(
        "schema at version {} ({} migration(s) applied now)",
        report.current.unwrap_or_default(),
        report.applied.len()
    );
    println!(
        "models: embeddings {} ({}), chat {} ({})",
        config.embedding.model,
        match config.embedding_provider() {
            ragpipe_core::config::EmbeddingProvider::Api => "remote",
            ragpipe_core::config::EmbeddingProvider::Local => "local, in-process",
            ragpipe_core::config::EmbeddingProvider::Hashed => "offline, hashed",
        },
        config.chat.model,
        if config.chat.base_url.is_some() {
            "remote"
        } else {
            "offline"
        },
    );
    let user = demo_user(&store).await?;
    println!("demo user {user}");

    println!("\n-- ingesting {} --", args.documents.display());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let workers = crate::workers::spawn(&store, &config, shutdown.clone())?;
    let result = async {
        let paths = demo_paths(&args.documents)?;
        let results = crate::ingest::ingest_paths(&store, &config, user, &paths, true).await?;
        crate::ingest::print_summary(&results);

        println!("\n-- hybrid search: {:?} --", args.question);
        let embedders = ragpipe_llm::Embedders::new(&config.embedding).context("embedding model")?;
        let retriever = ragpipe_agent::Retriever::new(store.clone(), embedders);
        let request = ragpipe_agent::SearchRequest {
            query: args.question.clone(),
            mode: ragpipe_agent::SearchMode::Hybrid,
            k: 5,
            document_ids: Vec::new(),
            metadata: None,
            highlight: true,
        };
        let hits = retriever.search(user, &request).await?;
        crate::search::print_hits(&hits);

        println!("\n-- asking: {:?} --", args.question);
        let question = crate::ask::Question::new(user, &args.question);
        crate::ask::ask_and_stream(&store, &config, &question, &mut std::io::stdout()).await?;
        anyhow::Ok(())
    }
    .await;
    shutdown.cancel();
    let _ = workers.await;
    result
}

/// What the demo uploads from `documents`: everything in it but hidden entries and entries
/// named `_...`, which hold what made the documents rather than documents
/// (`fixtures/documents/_source/`: the generator scripts, one of which quotes a PDF header).
fn demo_paths(documents: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !documents.is_dir() {
        return Ok(vec![documents.to_path_buf()]);
    }
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(documents).with_context(|| format!("reading {}", documents.display()))? {
        let entry = entry.with_context(|| format!("reading {}", documents.display()))?;
        if !entry.file_name().to_string_lossy().starts_with(['_', '.']) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

async fn demo_user(store: &Store) -> anyhow::Result<UserId> {
    let id = UserId(DEMO_USER);
    match users::get(store, id).await {
        Ok(_) => Ok(id),
        Err(StoreError::NotFound(_)) => {
            let new = users::NewUser {
                email: "demo@ragpipe.local".into(),
                display_name: Some("Demo".into()),
                plan: None,
                id: Some(id),
            };
            users::create(store, &new).await.context("creating the demo user")?;
            Ok(id)
        }
        Err(e) => Err(e.into()),
    }
}
