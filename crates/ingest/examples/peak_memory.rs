//! Extracts and chunks one file as the ingest worker does (default limits but `max_chars`,
//! default chunk settings) and prints the sizes, the times and the process's peak RSS against
//! the input size:
//!
//! ```text
//! cargo build --release -p ragpipe-ingest --example peak_memory
//! /usr/bin/time -v target/release/examples/peak_memory FILE
//! ```
//!
//! `max_chars` is raised to 500 M so that a 100 MB text file (more than the default 50 M
//! characters) is measured rather than refused; the refusal itself comes only after extraction,
//! so it costs the same memory.

use ragpipe_ingest::{ChunkSettings, Chunker, Limits, extract};
use std::time::Instant;

/// The process's peak resident set (`VmHWM`), in bytes, where /proc has it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: peak_memory FILE")?;
    let bytes = std::fs::read(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let input = bytes.len() as u64;
    let limits = Limits {
        max_chars: 500_000_000,
        ..Limits::default()
    };
    let chunker = Chunker::new(ChunkSettings::default())?;
    let after_read = peak_rss().unwrap_or(0);
    let start = Instant::now();
    let doc = extract(&bytes, &limits).map_err(|e| format!("extracting {path}: {e}"))?;
    let extracted = start.elapsed();
    let after_extract = peak_rss().unwrap_or(0);
    let start = Instant::now();
    let chunks = chunker.chunk(&doc);
    let chunked = start.elapsed();
    let peak = peak_rss().unwrap_or(0);
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "input: {path}, {:.1} MB, {} ({} pages)",
        mb(input),
        doc.format,
        doc.page_count
    );
    println!(
        "extract: {:.1} s, text {:.1} MB; chunk: {:.1} s, {} chunks, {:.1} MB of chunk text",
        extracted.as_secs_f64(),
        mb(doc.text.len() as u64),
        chunked.as_secs_f64(),
        chunks.len(),
        mb(chunks.iter().map(|c| c.content.len() as u64).sum())
    );
    println!(
        "peak RSS: after reading {:.0} MB, after extracting {:.0} MB, after chunking {:.0} MB; peak / input {:.2}",
        mb(after_read),
        mb(after_extract),
        mb(peak),
        peak as f64 / input as f64
    );
    Ok(())
}
