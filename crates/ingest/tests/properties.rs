//! Properties that hold for every input: extraction never panics (whatever the bytes), and
//! chunks cover the text in order, within the token limit, with overlaps as configured.

use proptest::prelude::*;
use ragpipe_ingest::{ChunkSettings, Chunker, ExtractError, Extracted, Format, Limits, extract};
use std::sync::OnceLock;
use std::time::Duration;

fn limits() -> Limits {
    Limits {
        max_decompressed_bytes: 1 << 20,
        timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

fn chunker(markdown: bool) -> &'static Chunker {
    static PLAIN: OnceLock<Chunker> = OnceLock::new();
    static MD: OnceLock<Chunker> = OnceLock::new();
    let cell = if markdown { &MD } else { &PLAIN };
    cell.get_or_init(|| {
        Chunker::new(ChunkSettings {
            max_tokens: 32,
            overlap_tokens: 8,
            tokenizer: "cl100k_base".into(),
        })
        .expect("chunker")
    })
}

fn pdf_fixture() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/documents/reportlab-report-header-footer.pdf"
        ))
        .expect("fixture")
    })
}

fn never_panics(bytes: &[u8]) {
    match extract(bytes, &limits()) {
        Err(ExtractError::Panicked(msg)) => panic!("extraction panicked: {msg}"),
        Ok(doc) => assert!(!doc.text.contains('\0')),
        Err(_) => {}
    }
}

fn doc(text: String, format: Format) -> Extracted {
    let mut d = extract(b"x", &Limits::default()).expect("one letter is text");
    d.format = format;
    d.text = text;
    d.title = None;
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn extraction_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        never_panics(&bytes);
    }

    #[test]
    fn extraction_never_panics_on_pdf_like_bytes(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut bytes = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n".to_vec();
        bytes.extend(tail);
        never_panics(&bytes);
    }

    #[test]
    fn extraction_never_panics_on_damaged_pdfs(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..32), cut in any::<prop::sample::Index>()) {
        let mut bytes = pdf_fixture().to_vec();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        never_panics(&bytes);
        let n = cut.index(bytes.len());
        bytes.truncate(n);
        never_panics(&bytes);
    }

    #[test]
    fn chunks_cover_the_text_in_order_within_limits(
        text in "([a-zA-Zé ]{0,12}[.,]?( |\n|\n\n)|# [A-Z][a-z]{1,8}\n\n|[ぁ-ゖ]{1,6}|[0-9]{1,5} |\t){0,120}",
        markdown in any::<bool>(),
    ) {
        let format = if markdown { Format::Markdown } else { Format::Text };
        let d = doc(text.clone(), format);
        let c = chunker(markdown);
        let chunks = c.chunk(&d);
        prop_assert_eq!(&chunks, &c.chunk(&d), "chunking is deterministic");
        let mut covered = vec![false; text.len()];
        let mut prev: Option<&ragpipe_ingest::Chunk> = None;
        for (i, ch) in chunks.iter().enumerate() {
            prop_assert_eq!(ch.index as usize, i);
            prop_assert!(!ch.content.is_empty());
            prop_assert_eq!(&text[ch.byte_range.clone()], ch.content.as_str());
            prop_assert!(ch.token_count <= 32, "chunk {} has {} tokens", i, ch.token_count);
            prop_assert_eq!(ch.token_count as usize, c.count_tokens(&ch.content));
            if let Some(p) = prev {
                prop_assert!(ch.byte_range.start > p.byte_range.start, "chunks in order");
                prop_assert!(ch.byte_range.end >= p.byte_range.end, "chunks in order");
                if ch.byte_range.start < p.byte_range.end {
                    let overlap = &text[ch.byte_range.start..p.byte_range.end];
                    // text-splitter sizes the overlap without its surrounding whitespace.
                    prop_assert!(c.count_tokens(overlap.trim()) <= 8, "overlap {:?} is over 8 tokens", overlap);
                }
            }
            for b in covered[ch.byte_range.clone()].iter_mut() {
                *b = true;
            }
            prev = Some(ch);
        }
        for (i, ch) in text.char_indices() {
            prop_assert!(ch.is_whitespace() || covered[i], "byte {} ({:?}) is in no chunk", i, ch);
        }
    }
}
