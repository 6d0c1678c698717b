//! Word F1 of the text extracted from the PDFs of `fixtures/pdf-producers` (real files from
//! many producers, see `fixtures/README.md`) against the text pdftotext (poppler 22.12) gives
//! for them, committed as `fixtures/pdf-producers/_reference/NAME.txt` so that the test needs
//! no poppler. Pages the extractor reports as having an undecodable text layer are left out
//! on both sides: their text is missing by design and said so on the document.
//!
//! `PDF_PRODUCERS_DUMP=DIR cargo test -p ragpipe-ingest --test pdf_producers` writes the
//! extracted texts to DIR for review.

use ragpipe_ingest::{Extracted, Limits, extract};
use std::path::{Path, PathBuf};

/// Lowest word F1 of any one file.
const MIN_FILE_F1: f64 = 0.90;
/// Lowest mean of the files' word F1.
const MIN_MEAN_F1: f64 = 0.97;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pdf-producers")
}

/// Bag-of-words F1 (lower-cased alphanumeric runs), as the extraction benchmark measures it.
fn f1(ours: &str, reference: &str) -> f64 {
    ragpipe_ingest::quality::word_f1(ours, reference).f1
}

/// The reference pages less the running lines the extractor drops on purpose.
fn reference_pages(reference: &str) -> Vec<String> {
    ragpipe_ingest::quality::pages_without_running_lines(reference)
}

/// The extracted text and the reference, each without the pages reported undecodable.
fn comparable(doc: &Extracted, reference: &str) -> (String, String) {
    let skipped: Vec<u32> = doc
        .warnings
        .iter()
        .filter(|w| w.code == "undecodable_text_layer")
        .flat_map(|w| w.pages.iter().copied())
        .collect();
    let mut ours = String::new();
    for p in &doc.pages {
        if !skipped.contains(&p.number) {
            ours.push_str(&doc.text[p.range.clone()]);
            ours.push('\n');
        }
    }
    let mut theirs = String::new();
    for (i, p) in reference_pages(reference).iter().enumerate() {
        if !skipped.contains(&(i as u32 + 1)) {
            theirs.push_str(p);
        }
    }
    (ours, theirs)
}

#[test]
fn pdf_producers_match_pdftotext() {
    let mut pdfs: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("fixtures/pdf-producers is in the repository")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .collect();
    pdfs.sort();
    assert!(pdfs.len() >= 30, "the set has {} PDFs", pdfs.len());
    let dump = std::env::var_os("PDF_PRODUCERS_DUMP").map(PathBuf::from);
    let limits = Limits::default();
    let mut scores: Vec<(String, f64)> = Vec::new();
    for path in &pdfs {
        let name = path.file_stem().expect("a file name").to_string_lossy().into_owned();
        let bytes = std::fs::read(path).expect("readable fixture");
        let reference = std::fs::read_to_string(dir().join("_reference").join(format!("{name}.txt")))
            .unwrap_or_else(|e| panic!("{name}: no reference text: {e}"));
        let doc = extract(&bytes, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(d) = &dump {
            std::fs::write(d.join(format!("{name}.txt")), &doc.text).expect("writable dump directory");
        }
        let (ours, theirs) = comparable(&doc, &reference);
        scores.push((name, f1(&ours, &theirs)));
    }
    let mean = scores.iter().map(|(_, f)| f).sum::<f64>() / scores.len() as f64;
    let table: Vec<String> = scores.iter().map(|(n, f)| format!("{n}: {f:.3}")).collect();
    let table = table.join("\n");
    println!("{table}\nmean {mean:.3}");
    let low: Vec<&(String, f64)> = scores.iter().filter(|(_, f)| *f < MIN_FILE_F1).collect();
    assert!(low.is_empty(), "files under {MIN_FILE_F1}: {low:?}\n{}", table);
    assert!(mean >= MIN_MEAN_F1, "mean F1 {mean:.3} under {MIN_MEAN_F1}\n{}", table);
}

#[test]
fn a_page_drawn_in_unnamed_glyphs_is_reported_and_the_rest_is_read() {
    // Ghostscript from `_source/type3-unnamed.ps`: page 1 in Times, page 2 in a Type 3 font
    // whose glyphs are named box1..box26 at codes 1..26, with no ToUnicode.
    let bytes = std::fs::read(dir().join("ghostscript-type3-unnamed-glyphs.pdf")).expect("fixture");
    let doc = extract(&bytes, &Limits::default()).expect("page 1 has text");
    assert_eq!(
        serde_json::to_value(&doc.warnings).expect("serialisable"),
        serde_json::json!([{"code": "undecodable_text_layer", "pages": [2]}])
    );
    assert!(doc.text.contains("can be read by anyone"), "{:?}", doc.text);
}

#[test]
fn old_pdftex_lh_cyrillic_bitmap_fonts_read_as_russian() {
    // pdfTeX with the LH fonts from Metafont (`_source/cyrillic-lh.tex`): Type 3 bitmap fonts
    // with glyphs named a0..a255, no font name, no ToUnicode. pdftotext prints the codes as
    // Latin-1 ("Èçâëå÷åíèå"), so this file is checked against its expected text instead.
    let cyrillic = dir().join("cyrillic");
    let bytes = std::fs::read(cyrillic.join("pdftex-lh-cyrillic-type3-bitmap.pdf")).expect("fixture");
    let expected =
        std::fs::read_to_string(cyrillic.join("pdftex-lh-cyrillic-type3-bitmap.txt")).expect("expected text");
    let doc = extract(&bytes, &Limits::default()).expect("the text decodes");
    assert_eq!(doc.text, expected);
    assert!(doc.text.contains("Извлечение текста из документов"), "{:?}", doc.text);
    assert!(doc.warnings.is_empty(), "{:?}", doc.warnings);
}

#[test]
fn a_cff_font_without_an_encoding_entry_reads_through_its_own_encoding() {
    // `_source/gen_cff_cyrillic.py`: a Type 1C program whose built-in encoding puts afii10017..
    // at the Windows-1251 codes; the font dictionary has no /Encoding and there is no
    // ToUnicode, as Ghostscript 7 wrote Cyrillic fonts (pdftotext reads it the same way).
    let cyrillic = dir().join("cyrillic");
    let bytes = std::fs::read(cyrillic.join("cff-builtin-encoding-cyrillic.pdf")).expect("fixture");
    let expected = std::fs::read_to_string(cyrillic.join("cff-builtin-encoding-cyrillic.txt")).expect("expected text");
    let doc = extract(&bytes, &Limits::default()).expect("the text decodes");
    assert_eq!(doc.text.trim_end(), expected.trim_end());
    assert!(doc.warnings.is_empty(), "{:?}", doc.warnings);
}
