//! Layout cases read from small PDFs built here, each reduced from a real file where ragpipe
//! and pdftotext disagreed (TeX Live's `transistor.pdf` and `tug2003-slides.pdf`).

use ragpipe_ingest::{Limits, extract};

/// A one-page PDF drawing `content` with `/F1` = `font` (a font dictionary), offsets exact.
fn one_page_pdf(font: &str, content: &str) -> Vec<u8> {
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>"
            .to_owned(),
        font.to_owned(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len() + 1),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn text_of(pdf: &[u8]) -> String {
    extract(pdf, &Limits::default()).expect("the PDF extracts").text
}

#[test]
fn standard_fonts_without_widths_space_words_by_their_real_metrics() {
    // Helvetica's W is 944/1000 em: "WWW" at 10 pt ends at 28.32. "x" drawn 0.3 pt after it
    // belongs to the same word; with a flat 500-unit guess the gap looked like 13 pt.
    let pdf = one_page_pdf(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        "BT /F1 10 Tf 20 100 Td (WWW) Tj 28.62 0 Td (x, and more) Tj ET",
    );
    assert_eq!(text_of(&pdf), "WWWx, and more");
}

#[test]
fn figure_labels_keep_their_indices() {
    // A circuit diagram's labels as Ghostscript wrote them: the letters first, then every
    // subscript, each lowered and placed right after its letter (Times-Roman, no widths).
    let pdf = one_page_pdf(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Times-Roman >>",
        "BT /F1 10.8 Tf 1 0 0 1 0.25 99.25 Tm (v) Tj 12.15 42.75 Td (R) Tj 56.25 0 Td (R) Tj \
         -48.15 -4.5 Td (a) Tj -15.75 -42.75 Td (i) Tj 69.75 94.5 Td (12 V) Tj \
         2.25 -51.75 Td (c) Tj ET",
    );
    let text = text_of(&pdf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["vi", "Ra Rc", "12 V"], "{text:?}");
}

#[test]
fn a_short_line_below_other_text_is_not_pulled_into_it() {
    // The second line ends a sentence with a short word; it starts at the margin, far from the
    // end of the line above, and stays a line of its own.
    let pdf = one_page_pdf(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Times-Roman >>",
        "BT /F1 10 Tf 20 150 Td (a first line of ordinary prose) Tj 0 -12 Td (it.) Tj ET",
    );
    assert_eq!(text_of(&pdf), "a first line of ordinary prose\nit.");
}

#[test]
fn accents_drawn_over_letters_compose_with_them() {
    // TeX's OT1 fonts have no accented letters: `H\`an` is H, a grave kerned forward, and "an"
    // kerned back under it; `caf\'e` puts the acute after the e, kerned back over it.
    let pdf = one_page_pdf(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Times-Roman /Encoding /WinAnsiEncoding >>",
        "BT /F1 10 Tf 20 100 Td [(H) -83 (\\140) 415 (an and caf) (e) 400 (\\264)] TJ ET \
         BT /F1 10 Tf 20 88 Td [(say) (\\140) (hi)] TJ ET",
    );
    // An accent that overprints nothing (a backtick in running text) stays.
    assert_eq!(text_of(&pdf), "Hàn and café\nsay`hi");
}
