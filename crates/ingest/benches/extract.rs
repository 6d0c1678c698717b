//! Extraction and chunking benchmark, with baselines measured in the same run.
//!
//! ```text
//! cargo bench -p ragpipe-ingest --bench extract [-- DIR_OR_PDF...]
//! ```
//!
//! Over the fixture PDFs (plus any PDFs under the given paths) it prints, per file and in
//! total: ragpipe's extraction pages/s and MB/s; when `pdftotext` (poppler-utils) is on the
//! PATH, pdftotext's own pages/s on the same files (one process per file, as pipelines run
//! it) and the word-level F1 of ragpipe's text against pdftotext's. Then, over the text of
//! every fixture document, chunks/s and MB/s of [`Chunker::chunk`] against raw text-splitter
//! with the same settings and tokenizer, and their ratio.

use ragpipe_ingest::{ChunkSettings, Chunker, Extracted, Limits, extract};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

/// Each measurement repeats until it has run at least this long.
const MIN_TIME: Duration = Duration::from_millis(300);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/documents")
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let Ok(rd) = std::fs::read_dir(path) else { return };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            collect(&p, out);
        }
    } else if path.extension().is_some_and(|e| e == "pdf") {
        out.push(path.to_path_buf());
    }
}

/// Runs `f` repeatedly for at least [`MIN_TIME`]; returns seconds per run.
fn time<T>(mut f: impl FnMut() -> T) -> f64 {
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < MIN_TIME || runs < 2 {
        std::hint::black_box(f());
        runs += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(runs)
}

/// Bag-of-words F1 of `ours` against `reference`, and the matched/our/reference counts.
fn f1(ours: &str, reference: &str) -> (f64, usize, usize, usize) {
    let w = ragpipe_ingest::quality::word_f1(ours, reference);
    (w.f1, w.common, w.ours, w.reference)
}

fn pdftotext(path: &Path) -> Option<String> {
    let out = Command::new("pdftotext")
        .arg("-q")
        .arg("-enc")
        .arg("UTF-8")
        .arg(path)
        .arg("-")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// pdftotext's text without running headers, footers and page numbers
/// ([`ragpipe_ingest::quality::pages_without_running_lines`]); a text of fewer than three
/// pages with text is left as it is.
fn without_running_lines(reference: &str) -> String {
    let with_text = reference.split('\u{c}').filter(|p| !p.trim().is_empty()).count();
    if with_text < 3 {
        return reference.to_owned();
    }
    let mut out = String::new();
    for page in ragpipe_ingest::quality::pages_without_running_lines(reference) {
        out.push_str(&page);
        out.push('\u{c}');
    }
    out
}

fn main() {
    let mut pdfs = Vec::new();
    collect(&fixtures(), &mut pdfs);
    pdfs.retain(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("hostile-"))
    });
    for arg in std::env::args().skip(1).filter(|a| !a.starts_with("--")) {
        collect(Path::new(&arg), &mut pdfs);
    }
    let limits = Limits::default();
    let have_pdftotext = Command::new("pdftotext").arg("-v").output().is_ok();

    println!(
        "# Extraction ({} PDFs; pdftotext {})\n",
        pdfs.len(),
        if have_pdftotext {
            "found"
        } else {
            "not found: no F1 or baseline"
        }
    );
    println!(
        "| file | pages | KB | ragpipe pages/s | pdftotext pages/s | ratio | F1 vs pdftotext | F1, running lines out of both |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (mut pages_total, mut bytes_total, mut ours_secs, mut theirs_secs) = (0u64, 0u64, 0.0f64, 0.0f64);
    let (mut common_total, mut ours_words, mut theirs_words) = (0usize, 0usize, 0usize);
    let mut min_f1: Option<(f64, String)> = None;
    // Per-file F1s, raw and without running lines, for the mean over files.
    let (mut file_f1s, mut file_fairs) = (Vec::new(), Vec::new());
    let (mut fair_common, mut fair_theirs) = (0usize, 0usize);
    let mut min_fair: Option<(f64, String)> = None;
    let mut failures = Vec::new();
    for path in &pdfs {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(bytes) = std::fs::read(path) else { continue };
        let doc = match extract(&bytes, &limits) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let secs = time(|| extract(&bytes, &limits));
        let pages = u64::from(doc.page_count);
        pages_total += pages;
        bytes_total += bytes.len() as u64;
        ours_secs += secs;
        let (mut baseline, mut f1_cell, mut fair_cell) = ("-".to_owned(), "-".to_owned(), "-".to_owned());
        let mut ratio = "-".to_owned();
        if have_pdftotext && let Some(reference) = pdftotext(path) {
            let theirs = time(|| pdftotext(path));
            theirs_secs += theirs;
            let (f, common, na, nb) = f1(&doc.text, &reference);
            common_total += common;
            ours_words += na;
            theirs_words += nb;
            if min_f1.as_ref().is_none_or(|(m, _)| f < *m) {
                min_f1 = Some((f, name.clone()));
            }
            baseline = format!("{:.0}", pages as f64 / theirs);
            ratio = format!("{:.2}", theirs / secs);
            f1_cell = format!("{f:.3}");
            file_f1s.push(f);
            let (fair, common, _, nb) = f1(&doc.text, &without_running_lines(&reference));
            fair_common += common;
            fair_theirs += nb;
            if min_fair.as_ref().is_none_or(|(m, _)| fair < *m) {
                min_fair = Some((fair, name.clone()));
            }
            fair_cell = format!("{fair:.3}");
            file_fairs.push(fair);
        }
        println!(
            "| {name} | {pages} | {} | {:.0} | {baseline} | {ratio} | {f1_cell} | {fair_cell} |",
            bytes.len() / 1024,
            pages as f64 / secs
        );
    }
    println!();
    println!(
        "ragpipe: {pages_total} pages, {:.1} MB in {:.3} s: {:.0} pages/s, {:.1} MB/s",
        bytes_total as f64 / 1e6,
        ours_secs,
        pages_total as f64 / ours_secs,
        bytes_total as f64 / 1e6 / ours_secs
    );
    if have_pdftotext && theirs_secs > 0.0 {
        let overall = if ours_words + theirs_words == 0 {
            1.0
        } else {
            2.0 * common_total as f64 / (ours_words + theirs_words) as f64
        };
        println!(
            "pdftotext: {:.0} pages/s (same files, same run); ratio ragpipe/pdftotext {:.2}",
            pages_total as f64 / theirs_secs,
            theirs_secs / ours_secs
        );
        println!(
            "word F1 vs pdftotext: overall {overall:.3}, lowest {:.3} ({})",
            min_f1.as_ref().map_or(1.0, |m| m.0),
            min_f1.as_ref().map_or("-", |m| m.1.as_str())
        );
        let fair = if ours_words + fair_theirs == 0 {
            1.0
        } else {
            2.0 * fair_common as f64 / (ours_words + fair_theirs) as f64
        };
        println!(
            "word F1 vs pdftotext less its running lines: overall {fair:.3}, lowest {:.3} ({})",
            min_fair.as_ref().map_or(1.0, |m| m.0),
            min_fair.as_ref().map_or("-", |m| m.1.as_str())
        );
        let mean = |v: &[f64]| {
            if v.is_empty() {
                1.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        println!(
            "word F1 vs pdftotext, mean over files: {:.3}; less its running lines: {:.3}",
            mean(&file_f1s),
            mean(&file_fairs)
        );
    }
    for f in &failures {
        println!("failed: {f}");
    }

    // Chunking: every fixture document's text, ours against raw text-splitter.
    let mut docs: Vec<Extracted> = Vec::new();
    let mut paths = Vec::new();
    if let Ok(rd) = std::fs::read_dir(fixtures()) {
        paths.extend(rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()));
    }
    paths.extend(pdfs.iter().cloned());
    paths.sort();
    paths.dedup();
    for p in paths {
        if let Ok(b) = std::fs::read(&p)
            && let Ok(d) = extract(&b, &limits)
        {
            docs.push(d);
        }
    }
    let settings = ChunkSettings::default();
    let chunker = Chunker::new(settings.clone()).expect("default settings are valid");
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let config = || {
        ChunkConfig::new(settings.max_tokens as usize)
            .with_overlap(settings.overlap_tokens as usize)
            .expect("overlap < max")
            .with_sizer(bpe)
    };
    let (plain, markdown) = (TextSplitter::new(config()), MarkdownSplitter::new(config()));
    let text_bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    let mut n_ours = 0usize;
    let ours = time(|| {
        n_ours = docs.iter().map(|d| chunker.chunk(d).len()).sum::<usize>();
    });
    let mut n_raw = 0usize;
    let raw = time(|| {
        n_raw = docs
            .iter()
            .map(|d| {
                if d.format.is_markdown_shaped() {
                    markdown.chunk_indices(&d.text).count()
                } else {
                    plain.chunk_indices(&d.text).count()
                }
            })
            .sum::<usize>();
    });
    println!(
        "\n# Chunking ({} documents, {:.2} MB of text, 512 tokens, 64 overlap, cl100k_base)\n",
        docs.len(),
        text_bytes as f64 / 1e6
    );
    println!(
        "ragpipe Chunker: {n_ours} chunks, {:.0} chunks/s, {:.2} MB/s",
        n_ours as f64 / ours,
        text_bytes as f64 / 1e6 / ours
    );
    println!(
        "raw text-splitter: {n_raw} chunks, {:.0} chunks/s, {:.2} MB/s",
        n_raw as f64 / raw,
        text_bytes as f64 / 1e6 / raw
    );
    println!("time ratio Chunker/raw: {:.2} (target <= 1.5)", ours / raw);
}
