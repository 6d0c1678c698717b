//! Fixture-driven tests: every document in `fixtures/documents/` extracts and chunks exactly as
//! its golden snapshots in `fixtures/golden/` say (`NAME.txt.snap`: the text; `NAME.json.snap`:
//! metadata and chunks), and every hostile fixture fails with the error a user should see,
//! without a panic.
//!
//! The goldens are `insta` snapshots. After an intended change, run the test (each differing
//! golden gets its new text beside it, `.snap.new`) and review them with
//! `cargo insta review --workspace` (the goldens live outside the crate),
//! or rewrite them all with `INSTA_UPDATE=always cargo test -p ragpipe-ingest --test fixtures`;
//! either way, review the diff like code.

use ragpipe_ingest::{ChunkSettings, Chunker, ExtractError, Limits, extract};
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Small limits, so the hostile fixtures hit them quickly.
fn limits() -> Limits {
    Limits {
        max_decompressed_bytes: 8 << 20,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    }
}

/// Fixtures that must fail, and how.
fn expected_failure(name: &str) -> Option<fn(&ExtractError) -> bool> {
    Some(match name {
        "encrypted-user-password.pdf" => |e| matches!(e, ExtractError::Encrypted),
        "scanned-image-only.pdf" => |e| matches!(e, ExtractError::NoExtractableText),
        "hostile-zero-byte.pdf" => |e| matches!(e, ExtractError::Empty),
        "hostile-garbage.pdf" => |e| matches!(e, ExtractError::Unsupported { detected } if detected == "binary data"),
        "hostile-truncated.pdf" => |e| matches!(e, ExtractError::Malformed { .. }),
        "hostile-nested-arrays.pdf" => |e| matches!(e, ExtractError::Malformed { .. }),
        "hostile-flate-bomb.pdf" => |e| matches!(e, ExtractError::TooLarge { limit, .. } if *limit == 8 << 20),
        _ => return None,
    })
}

fn documents() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("documents"))
        .expect("fixtures/documents exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

/// Compares `actual` with the snapshot `fixtures/golden/{name}.snap`. A difference is collected
/// rather than ending the test (insta leaves the new text beside the golden as `.snap.new`),
/// so that one run shows every fixture that changed.
fn check_golden(name: &str, actual: &str, mismatches: &mut Vec<String>) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../../fixtures/golden");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let checked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(name, actual));
    }));
    if checked.is_err() {
        mismatches.push(format!("fixtures/golden/{name}.snap"));
    }
}

#[test]
fn fixtures_extract_and_chunk_as_their_goldens_say() {
    let chunker = Chunker::new(ChunkSettings {
        max_tokens: 128,
        overlap_tokens: 16,
        tokenizer: "cl100k_base".into(),
    })
    .expect("chunker");
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for path in documents() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(&path).expect("fixture readable");
        let result = extract(&bytes, &limits());
        if let Some(is_expected) = expected_failure(&name) {
            match &result {
                Err(e) if is_expected(e) => {}
                other => mismatches.push(format!("{name}: expected a specific failure, got {other:?}")),
            }
            if let Err(e) = &result {
                assert!(!e.to_string().is_empty());
                assert!(!matches!(e, ExtractError::Panicked(_)), "{name} panicked: {e}");
            }
            checked += 1;
            continue;
        }
        let doc = match result {
            Ok(d) => d,
            Err(e) => {
                mismatches.push(format!("{name}: extraction failed: {e}"));
                continue;
            }
        };
        assert!(!doc.text.contains('\0'), "{name}: NUL in text");
        let chunks = chunker.chunk(&doc);
        for c in &chunks {
            assert!(
                c.token_count <= 128,
                "{name}: chunk {} has {} tokens",
                c.index,
                c.token_count
            );
            assert_eq!(
                &doc.text[c.byte_range.clone()],
                c.content,
                "{name}: chunk {} range",
                c.index
            );
        }
        let meta = json!({
            "format": doc.format,
            "title": doc.title,
            "language": doc.language,
            "page_count": doc.page_count,
            "pages": doc.pages,
            "headings": doc.headings,
            "failed_pages": doc.failed_pages,
            "chunks": chunks.iter().map(|c| json!({
                "index": c.index,
                "token_count": c.token_count,
                "byte_range": [c.byte_range.start, c.byte_range.end],
                "pages": [c.page_first, c.page_last],
                "heading_path": c.heading_path,
                "starts": c.content.chars().take(40).collect::<String>(),
            })).collect::<Vec<_>>(),
        });
        check_golden(&format!("{name}.txt"), &doc.text, &mut mismatches);
        check_golden(
            &format!("{name}.json"),
            &serde_json::to_string_pretty(&meta).expect("json"),
            &mut mismatches,
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} fixtures found");
    assert!(
        mismatches.is_empty(),
        "{} golden(s) differ (review with `cargo insta review --workspace`, or accept with INSTA_UPDATE=always):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn cyclic_object_graph_extracts_what_it_can() {
    let bytes = std::fs::read(root().join("documents/hostile-cyclic-objects.pdf")).expect("fixture");
    let doc = extract(&bytes, &limits()).expect("the page is readable despite the cycles");
    assert!(doc.text.contains("Cycles must not hang the extractor."));
    assert_eq!(doc.page_count, 1);
}

#[test]
fn limits_are_enforced() {
    let bytes = std::fs::read(root().join("documents/latex-pdftex-cm-fonts.pdf")).expect("fixture");
    let tight = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        extract(&bytes, &l)
    };
    assert!(matches!(
        tight(|l| l.max_input_bytes = 1000),
        Err(ExtractError::TooLarge { .. })
    ));
    assert!(matches!(tight(|l| l.max_pages = 2), Err(ExtractError::TooLarge { .. })));
    assert!(matches!(
        tight(|l| l.max_chars = 100),
        Err(ExtractError::TooLarge { .. })
    ));
    assert!(matches!(
        tight(|l| l.timeout = Duration::ZERO),
        Err(ExtractError::Timeout { .. })
    ));
}

#[test]
fn pdf_text_is_faithful() {
    let read = |n: &str| {
        extract(
            &std::fs::read(root().join("documents").join(n)).expect("fixture"),
            &limits(),
        )
        .expect("extracts")
    };
    // Built-in Type 1 encoding (no ToUnicode), ligatures expanded, hyphenation joined.
    let doc = read("latex-pdftex-builtin-encoding-xref-stream.pdf");
    assert!(
        doc.text.contains("Ligatures such as fi, fl, ff and ffi are expanded"),
        "{}",
        doc.text
    );
    assert!(!doc.text.contains('\u{fb01}'));
    // Running header and page numbers dropped.
    let doc = read("reportlab-report-header-footer.pdf");
    assert!(!doc.text.contains("Quarterly Ingestion Report"));
    assert!(!doc.text.contains("Page 2"));
    assert_eq!(doc.title.as_deref(), Some("Quarterly Ingestion Report"));
    // Type0 / Identity-H CFF CJK and UCS2 CMaps.
    assert!(read("cairo-cff-cjk.pdf").text.contains("文書から本文を取り出すには"));
    assert!(
        read("reportlab-cid-japanese.pdf")
            .text
            .contains("文書から本文を取り出すには")
    );
    assert!(
        read("cairo-truetype-multilingual.pdf")
            .text
            .contains("Извлечение текста из документов")
    );
    // Empty user password opens.
    assert!(
        read("encrypted-empty-user-password.pdf")
            .text
            .contains("Document ingestion begins")
    );
}

#[test]
fn generator_scripts_quoting_a_pdf_header_are_text() {
    // gen_hostile.py writes `b"%PDF-1.4\n..."` within its first KiB and `%%EOF` further on; it
    // is a Python script, and `ragpipe demo` used to list it as a malformed PDF.
    let bytes = std::fs::read(root().join("documents/_source/gen_hostile.py")).expect("generator readable");
    assert_eq!(ragpipe_ingest::detect(&bytes), Ok(ragpipe_ingest::Format::Text));
    let doc = extract(&bytes, &limits()).expect("a script extracts as text");
    assert!(doc.text.contains("%PDF-1.4"));
}
