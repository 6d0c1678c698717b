//! Search over a user's chunks: hybrid (vector + text, fused), vector only, or text only, in
//! one SQL statement (`search/hybrid.sql`) run in the caller's [`UserTx`].
//!
//! - **Vector leg:** the top chunks by cosine distance through the model's partial HNSW index
//!   (same expression and predicate as the index, model as a literal), with pgvector's
//!   iterative scan so that row-level security and filters cannot starve it.
//! - **Text leg:** BM25 over any query term. Term statistics (per-user document frequencies,
//!   chunk count, total tokens) and the postings in blocks `search_blocks` (per user, lexeme
//!   and run of up to 128 chunks: the chunk ids and, for each, the term frequency and chunk
//!   length, 8 bytes a posting) are kept by the chunk table's trigger (migrations
//!   `..._search_term_stats.sql` and `..._search_postings_in_blocks.sql`). Candidates come from
//!   the rarest terms' postings, whole blocks unnested within a budget, and are pre-scored
//!   without reading any chunk row; the best are then completed with the other terms'
//!   frequencies, one block probe each. `websearch_to_tsquery` would require every term, so most natural questions
//!   would match nothing, and `ts_rank_cd` ignores rarity (shared/FACTS.md).
//! - **Fusion:** weighted Reciprocal Rank Fusion, `w / (k + rank)` summed over the legs that
//!   ranked a chunk. The weights are the caller's (ragpipe-agent chooses them by measurement).
//!
//! - **Distinct passages:** the statement returns the fused top `3k`, and [`collapse`] keeps
//!   the first `k` distinct passages: identical and near-identical chunk texts (the same
//!   document uploaded as PDF and DOCX, or twice in two versions) are one hit, the best-ranked,
//!   with the others in its `also_in`. Every caller (the API, `ragpipe search`, the agent's
//!   prompt) gets `k` different passages.
//!
//! Apart from that collapse this module computes nothing itself: it binds, runs and maps.
//! Callers embed the query.

mod collapse;

pub use collapse::{NEAR_DUPLICATE, collapse, normalise, similarity};

use crate::{StoreError, UserTx, embedding_models::sql_literal};
use pgvector::Vector;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The statement, with a `{vector_legs}` placeholder.
const HYBRID_SQL: &str = include_str!("search/hybrid.sql");
/// One vector leg, with `{model}`, `{dim}` and `{leg}` placeholders.
const VECTOR_LEG_SQL: &str = include_str!("search/vector_leg.sql");
/// The vector leg when no model is searched (text mode).
const NO_VECTOR_LEG_SQL: &str = "    SELECT NULL::int8 AS id, NULL::float8 AS distance, NULL::int8 AS rank WHERE false";

/// Most embedding models one search ranks (one leg each).
pub const MAX_MODELS: usize = 4;

/// Most results one search returns.
pub const MAX_K: u32 = 100;
/// Fused candidates read per result wanted, so that `k` distinct passages remain after
/// duplicates are collapsed.
pub const CANDIDATES_PER_RESULT: u32 = 3;
/// Most candidates one leg contributes.
pub const MAX_DEPTH: u32 = 1000;

/// Which legs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Both legs, fused (the default).
    #[default]
    Hybrid,
    /// Cosine distance only.
    Vector,
    /// BM25 only (needs no query embedding).
    Text,
}

impl SearchMode {
    /// Every mode, in display order.
    pub const ALL: [SearchMode; 3] = [SearchMode::Hybrid, SearchMode::Vector, SearchMode::Text];

    /// The mode's name (`hybrid`, `vector`, `text`).
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Vector => "vector",
            SearchMode::Text => "text",
        }
    }

    /// Whether the vector leg runs (and so the query must be embedded).
    pub fn uses_vector(self) -> bool {
        self != SearchMode::Text
    }

    /// Whether the text leg runs.
    pub fn uses_text(self) -> bool {
        self != SearchMode::Vector
    }
}

impl std::fmt::Display for SearchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SearchMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SearchMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hybrid" => Ok(SearchMode::Hybrid),
            "vector" => Ok(SearchMode::Vector),
            "text" => Ok(SearchMode::Text),
            other => Err(format!("unknown search mode {other:?} (hybrid, vector or text)")),
        }
    }
}

/// Weighted Reciprocal Rank Fusion: a chunk's score is the sum, over the legs that ranked it,
/// of `weight / (k + rank)` (ranks from 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fusion {
    /// Weight of the vector leg.
    pub vector_weight: f64,
    /// RRF constant of the vector leg (larger: flatter over ranks).
    pub vector_k: f64,
    /// Weight of the text leg.
    pub text_weight: f64,
    /// RRF constant of the text leg.
    pub text_k: f64,
}

impl Fusion {
    /// The fused score of a chunk with these leg ranks (1-based; `None`: not ranked by that leg).
    /// The SQL computes exactly this.
    pub fn score(&self, vector_rank: Option<u64>, text_rank: Option<u64>) -> f64 {
        let leg = |weight: f64, k: f64, rank: Option<u64>| rank.map_or(0.0, |r| weight / (k + r as f64));
        leg(self.vector_weight, self.vector_k, vector_rank) + leg(self.text_weight, self.text_k, text_rank)
    }
}

/// BM25 parameters and the text leg's work bounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bm25 {
    /// Term-frequency saturation (1.2 is the usual choice).
    pub k1: f64,
    /// Length normalisation, 0..=1 (0.75 is the usual choice).
    pub b: f64,
    /// Postings read to find candidates: terms join, rarest first, while their postings together
    /// stay within this (the rarest always joins, with at most `postings_per_term`).
    pub postings_budget: u32,
    /// Most postings read for any one term.
    pub postings_per_term: u32,
    /// Candidates completed with the other query terms' frequencies after the first pass (at
    /// least the leg's depth).
    pub rescored: u32,
}

impl Default for Bm25 {
    /// Usual BM25 constants. The bounds keep the text leg within a few milliseconds at 100,000
    /// chunks: a posting costs ~0.5 us to read and aggregate (unnested from its block of
    /// `search_blocks`) and a rescored candidate one ~5 us block probe per other query term.
    /// Chosen on the 100,000-chunk benchmark corpus by how often the text leg ranks the chunk a
    /// query was taken from first, against latency (BENCHMARKS.md, "Search"). Below the budget,
    /// that is for every corpus of up to a few thousand chunks, the text leg is exact BM25.
    fn default() -> Bm25 {
        Bm25 {
            k1: 1.2,
            b: 0.75,
            postings_budget: 1500,
            postings_per_term: 1500,
            rescored: 50,
        }
    }
}

/// The query embedded by one model, whose chunks a vector leg of their own ranks.
#[derive(Debug, Clone, Copy)]
pub struct QueryVector<'a> {
    /// Model whose vectors are searched; its partial index is used.
    pub model: &'a str,
    /// Its dimension.
    pub dim: u32,
    /// The query's embedding by that model.
    pub embedding: &'a [f32],
}

/// One search.
#[derive(Debug, Clone)]
pub struct SearchQuery<'a> {
    /// The question or keywords as typed.
    pub text: &'a str,
    /// The query embedded by each model whose chunks are searched (at least one unless the mode
    /// is `Text`; two while chunks move from one model to another).
    pub vectors: &'a [QueryVector<'a>],
    /// Which legs run.
    pub mode: SearchMode,
    /// Results wanted (1..=[`MAX_K`]).
    pub k: u32,
    /// Candidates taken from each leg before fusion (at least `k`; at most [`MAX_DEPTH`]).
    pub depth: u32,
    /// Only these documents (`None`: all of the user's).
    pub document_ids: Option<&'a [Uuid]>,
    /// Only documents whose metadata contains this JSON (`@>`), e.g. `{"team": "infra"}`.
    pub metadata: Option<&'a serde_json::Value>,
    /// Fusion weights.
    pub fusion: Fusion,
    /// Text-leg parameters.
    pub bm25: Bm25,
    /// Whether to return a highlighted snippet (`ts_headline`, matches in `**`).
    pub highlight: bool,
    /// A filter (`document_ids`, `metadata`) that keeps at most this many chunks has the
    /// vector legs compute each of their distances exactly instead of reading the HNSW index,
    /// and the text leg read each query term's postings blocks over those chunks alone, scoring
    /// every term, instead of scanning the generating terms' postings through the filter
    /// ([`EXACT_SCAN_CHUNKS`] unless a test or benchmark says otherwise).
    pub exact_scan_chunks: u32,
}

/// Most chunks a filtered search scores exactly rather than through the HNSW index. An exact
/// distance costs a few microseconds a chunk (the row read by document, its vector detoasted);
/// the index, filtered after the fact, walks most of its graph when the filter keeps a few
/// documents out of thousands (BENCHMARKS.md, "Filtered search").
pub const EXACT_SCAN_CHUNKS: u32 = 5_000;

/// A chunk found, with where it comes from and why it ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SearchHit {
    /// Chunk id.
    pub chunk_id: i64,
    /// Its document.
    pub document_id: Uuid,
    /// The document's filename.
    pub filename: String,
    /// Position of the chunk in the document.
    pub chunk_index: i32,
    /// First page it covers (paged formats).
    pub page_first: Option<i32>,
    /// Last page it covers.
    pub page_last: Option<i32>,
    /// Headings above it.
    pub heading_path: Vec<String>,
    /// Fused score (higher is better); comparable within one search only.
    pub score: f64,
    /// Rank in the vector leg (1-based), when it ranked there.
    pub vector_rank: Option<i64>,
    /// Rank in the text leg (1-based), when it ranked there.
    pub text_rank: Option<i64>,
    /// Cosine similarity to the query, when the vector leg ranked it.
    pub vector_similarity: Option<f64>,
    /// BM25 score, when the text leg ranked it.
    pub text_score: Option<f64>,
    /// The chunk's text.
    pub content: String,
    /// Best fragments with query terms in `**`, when asked for and a term matched.
    pub highlight: Option<String>,
    /// Other chunks with the same or a near-identical text, ranked below this one and left out
    /// of the results for it ([`collapse`]), best first.
    #[sqlx(skip)]
    #[serde(default)]
    pub also_in: Vec<AlsoIn>,
}

/// A chunk left out of the results because a better-ranked hit has the same passage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlsoIn {
    /// Its document.
    pub document_id: Uuid,
    /// The document's filename.
    pub filename: String,
    /// The chunk.
    pub chunk_id: i64,
}

/// Why a query was refused before reaching the database.
fn invalid(message: String) -> StoreError {
    StoreError::Config(message)
}

/// Runs `query` as the transaction's user and returns at most `k` hits, best first, each a
/// different passage (duplicates in `also_in`). Only the acting user's chunks can come back
/// (row-level security on every table the statement reads, the text leg's postings and
/// statistics included).
pub async fn search(tx: &mut UserTx, query: &SearchQuery<'_>) -> Result<Vec<SearchHit>, StoreError> {
    let k = query.k.clamp(1, MAX_K);
    let fetched = k * CANDIDATES_PER_RESULT;
    let depth = query.depth.clamp(k, MAX_DEPTH);
    let vectors: &[QueryVector<'_>] = if query.mode.uses_vector() { query.vectors } else { &[] };
    if query.mode.uses_vector() && vectors.is_empty() {
        return Err(invalid(format!("{} search needs the query's embedding", query.mode)));
    }
    if vectors.len() > MAX_MODELS {
        return Err(invalid(format!(
            "{} embedding models to search; at most {MAX_MODELS}",
            vectors.len()
        )));
    }
    let mut legs = Vec::with_capacity(vectors.len());
    let mut embeddings = Vec::with_capacity(vectors.len());
    for (i, v) in vectors.iter().enumerate() {
        if v.dim == 0 || v.dim > 2000 {
            return Err(invalid(format!("embedding dimension {} is outside 1..=2000", v.dim)));
        }
        if v.embedding.len() != v.dim as usize {
            return Err(invalid(format!(
                "query embedding has {} dimensions, model {} has {}",
                v.embedding.len(),
                v.model,
                v.dim
            )));
        }
        // Audited: the dimension and the leg are integers and the model a quoted literal.
        legs.push(
            VECTOR_LEG_SQL
                .replace("{dim}", &v.dim.to_string())
                .replace("{leg}", &(i + 1).to_string())
                .replace("{model}", &sql_literal(v.model)),
        );
        embeddings.push(Vector::from(v.embedding.to_vec()));
    }
    let legs = if legs.is_empty() {
        NO_VECTOR_LEG_SQL.to_owned()
    } else {
        legs.join("    UNION ALL\n")
    };
    let vector_depth = if query.mode.uses_vector() { depth } else { 0 };
    let text_depth = if query.mode.uses_text() { depth } else { 0 };
    let bm25 = &query.bm25;
    let sql = HYBRID_SQL.replace("{vector_legs}", &legs);
    let ef_search = vector_depth.max(40);
    sqlx::query_as::<_, SearchHit>(sqlx::AssertSqlSafe(sql))
        .bind(query.text)
        .bind(&embeddings)
        .bind(fetched as i32)
        .bind(vector_depth as i32)
        .bind(text_depth as i32)
        .bind(query.document_ids)
        .bind(query.metadata)
        .bind(query.fusion.vector_weight)
        .bind(query.fusion.vector_k)
        .bind(query.fusion.text_weight)
        .bind(query.fusion.text_k)
        .bind(bm25.k1)
        .bind(bm25.b)
        .bind(i64::from(bm25.postings_budget.max(1)))
        .bind(bm25.postings_per_term.max(1) as i32)
        .bind(bm25.rescored.max(text_depth) as i32)
        .bind(ef_search.to_string())
        .bind(query.highlight)
        .bind(i64::from(query.exact_scan_chunks))
        .fetch_all(tx.conn())
        .await
        .map(|ranked| collapse(ranked, k as usize))
        .map_err(StoreError::db("searching chunks"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for mode in SearchMode::ALL {
            assert_eq!(mode.as_str().parse::<SearchMode>(), Ok(mode));
        }
        assert_eq!(" Hybrid ".parse::<SearchMode>(), Ok(SearchMode::Hybrid));
        assert!("semantic".parse::<SearchMode>().is_err());
        assert!(!SearchMode::Text.uses_vector() && SearchMode::Text.uses_text());
        assert!(SearchMode::Vector.uses_vector() && !SearchMode::Vector.uses_text());
    }

    #[test]
    fn the_statement_has_every_placeholder_and_parameter() {
        assert!(HYBRID_SQL.contains("{vector_legs}"));
        for placeholder in ["{dim}", "{model}", "{leg}"] {
            assert!(VECTOR_LEG_SQL.contains(placeholder), "{placeholder}");
        }
        for n in 1..=19 {
            assert!(HYBRID_SQL.contains(&format!("${n}")), "${n} unused");
        }
        assert!(!HYBRID_SQL.contains("$20"));
    }
}
