//! `ragpipe search --user ID QUERY [--k N] [--mode M] [--json]`: the best chunks of a user's
//! documents for a query, as `POST /v1/search` returns them.

use anyhow::Context;
use clap::Args;
use ragpipe_agent::{Retriever, SearchHit, SearchMode, SearchRequest};
use ragpipe_core::{Config, UserId};
use ragpipe_llm::Embedders;
use ragpipe_store::Store;
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The user whose documents are searched.
    #[arg(long)]
    pub user: UserId,
    /// The question or keywords (several words need no quotes).
    #[arg(required = true, value_name = "QUERY")]
    pub query: Vec<String>,
    /// Results wanted (1..=100).
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// hybrid, vector or text.
    #[arg(long, default_value = "hybrid")]
    pub mode: SearchMode,
    /// Only this document (repeatable).
    #[arg(long = "document", value_name = "ID")]
    pub documents: Vec<Uuid>,
    /// Only documents whose metadata contains this JSON object, e.g. '{"team":"infra"}'.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
    /// Print the hits as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: Config, args: SearchArgs) -> anyhow::Result<()> {
    let metadata = args
        .metadata
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
        .transpose()
        .context("--metadata is not valid JSON")?;
    let request = SearchRequest {
        query: args.query.join(" "),
        mode: args.mode,
        k: args.k,
        document_ids: args.documents,
        metadata,
        highlight: !args.json,
    };
    let store = Store::connect(&config).await?;
    let embedders = Embedders::new(&config.embedding).context("embedding model")?;
    let reranker = ragpipe_llm::Reranker::new(&config.rerank).context("reranker")?;
    let retriever = Retriever::new(store, embedders).with_reranker(reranker);
    let searched = retriever
        .search_ranked(args.user, &request, &ragpipe_agent::QueryUsage::search())
        .await?;
    if let Some(report) = searched.rerank.as_ref().filter(|r| !r.applied) {
        eprintln!(
            "note: not reranked: {}",
            report.reason.as_deref().unwrap_or("the reranker did not answer")
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&searched.hits)?);
    } else {
        print_hits(&searched.hits);
    }
    Ok(())
}

/// One block per hit: rank, score, source, then the highlighted fragments (or the text's start)
/// and the other documents holding the same passage.
pub fn print_hits(hits: &[SearchHit]) {
    if hits.is_empty() {
        println!("no matching chunks");
        return;
    }
    for (i, hit) in hits.iter().enumerate() {
        let pages = match (hit.page_first, hit.page_last) {
            (Some(a), Some(b)) if a != b => format!(" pp. {a}-{b}"),
            (Some(a), _) => format!(" p. {a}"),
            _ => String::new(),
        };
        let ranks = [("vector", hit.vector_rank), ("text", hit.text_rank)]
            .iter()
            .filter_map(|(leg, r)| r.map(|r| format!("{leg} #{r}")))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:>2}. {:.4}  {}{}  chunk {}  ({ranks})",
            i + 1,
            hit.score,
            hit.filename,
            pages,
            hit.chunk_index
        );
        if !hit.heading_path.is_empty() {
            println!("    {}", hit.heading_path.join(" > "));
        }
        let text = hit
            .highlight
            .clone()
            .unwrap_or_else(|| hit.content.chars().take(240).collect());
        println!("    {}", text.split_whitespace().collect::<Vec<_>>().join(" "));
        if !hit.also_in.is_empty() {
            let mut names: Vec<&str> = Vec::new();
            for a in &hit.also_in {
                if !names.contains(&a.filename.as_str()) {
                    names.push(&a.filename);
                }
            }
            println!("    also in: {}", names.join(", "));
        }
    }
}
