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

/// Times-Roman advances (1/1000 em) of `a`..`z`, for fonts built here with other glyph spaces.
const TIMES_LOWER: [u32; 26] = [
    444, 500, 444, 500, 444, 333, 500, 500, 278, 278, 500, 278, 778, 500, 500, 500, 500, 333, 389, 278, 500, 500, 722,
    500, 500, 444,
];

/// A Type 3 font for `a`..`z` (and the space at 32) whose glyph space has `units_per_em` units,
/// as bitmap fonts downloaded by printer drivers and dvips have: widths and FontMatrix follow.
fn type3_font(units_per_em: f32) -> String {
    let scale = units_per_em / 1000.0;
    let widths: Vec<String> = std::iter::once(250)
        .chain(std::iter::repeat_n(0, 64))
        .chain(TIMES_LOWER)
        .map(|w| format!("{}", (w as f32 * scale).round()))
        .collect();
    let names: Vec<String> = (b'a'..=b'z').map(|c| format!("/{}", c as char)).collect();
    format!(
        "<< /Type /Font /Subtype /Type3 /FontBBox [0 0 {u} {u}] /FontMatrix [{m} 0 0 {m} 0 0] \
         /CharProcs << >> /Resources << >> /FirstChar 32 /LastChar 122 /Widths [{}] \
         /Encoding << /Type /Encoding /Differences [32 /space 97 {}] >> >>",
        widths.join(" "),
        names.join(" "),
        u = units_per_em,
        m = 1.0 / units_per_em,
    )
}

#[test]
fn distiller_pscript5_letter_groups_stay_words() {
    // Word printing through PScript5 to Distiller: a bitmap Type 3 font with a fine glyph space
    // (10,000 units per em), each word shown as letter groups with small kerning between them,
    // and the space as a larger kern. Read as if its glyph space were 1,000 units per em the
    // font was 10x too small, every kern looked like a space: "fe atur es ar e a v".
    let pdf = one_page_pdf(
        &type3_font(10_000.0),
        "BT /F1 10 Tf 20 100 Td [(fe)-30(atur)-25(es)-250(ar)18(e)-250(a)-12(v)-8(ailable)] TJ ET",
    );
    assert_eq!(text_of(&pdf), "features are available");
}

#[test]
fn distiller_dvips_words_spaced_by_kerning_stay_apart() {
    // dvips output through Distiller: a bitmap Type 3 font with a coarse glyph space (100 units
    // per em) and words spaced only by TJ kerning of about a third of an em. Taken as 1,000
    // units per em the font was 10x too large, so no gap looked like a space: "isfixed".
    let pdf = one_page_pdf(
        &type3_font(100.0),
        "BT /F1 10 Tf 20 100 Td [(the)-333(width)-333(is)-280(fixed)-333(at)-333(eight)] TJ ET",
    );
    assert_eq!(text_of(&pdf), "the width is fixed at eight");
}

#[test]
fn distiller_small_moves_between_words_are_spaces() {
    // Distiller from dvips with outline fonts: each word placed by a relative move from the
    // start of the previous one, leaving a gap of 0.26 to 0.3 em (justified TeX lines), with
    // no space glyph; and a word whose letters are kerned apart by less than that.
    // Times-Roman: "Token" is 25.55 pt wide at 10 pt, "should" 26.67, "not" 12.78.
    let pdf = one_page_pdf(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Times-Roman >>",
        "BT /F1 10 Tf 1 0 0 1 20 100 Tm (Token) Tj 28.35 0 Td (should) Tj 29.47 0 Td (not) Tj \
         15.38 0 Td [(g)-60(l)-60(u)-60(e)-60(d)] TJ ET",
    );
    assert_eq!(text_of(&pdf), "Token should not glued");
}

#[test]
fn a_document_whose_only_text_is_undecodable_says_which_pages() {
    // Every glyph in a Type 3 font whose names mean nothing, at codes that are not characters.
    let font = "<< /Type /Font /Subtype /Type3 /FontBBox [0 0 1000 1000] /FontMatrix [0.001 0 0 0.001 0 0] \
                /CharProcs << >> /Resources << >> /FirstChar 1 /LastChar 26 /Widths [500 500 500 500 500 500 \
                500 500 500 500 500 500 500 500 500 500 500 500 500 500 500 500 500 500 500 500] \
                /Encoding << /Type /Encoding /Differences [1 /g1 /g2 /g3 /g4 /g5 /g6 /g7 /g8 /g9 /g10 /g11 \
                /g12 /g13 /g14 /g15 /g16 /g17 /g18 /g19 /g20 /g21 /g22 /g23 /g24 /g25 /g26] >> >>";
    let pdf = one_page_pdf(
        font,
        "BT /F1 10 Tf 20 100 Td <0102030405060708090a0b0c0d0e0f101112131415161718191a> Tj ET",
    );
    let err = extract(&pdf, &Limits::default()).expect_err("nothing can be read");
    assert_eq!(
        err.to_string(),
        "the text layer cannot be decoded (page 1): its fonts map glyphs to no characters"
    );
}

#[test]
fn text_turned_a_quarter_reads_in_lines() {
    // A landscape table printed on a portrait page (itext's Senate expenditure report): every
    // line runs up the page, the next line to its right.
    let pdf = one_page_pdf(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        "BT /F1 10 Tf 0 1 -1 0 100 20 Tm (DISTRICT DIRECTOR) Tj 0 1 -1 0 112 20 Tm (LEGISLATIVE ASSISTANT) Tj ET",
    );
    assert_eq!(text_of(&pdf), "DISTRICT DIRECTOR\nLEGISLATIVE ASSISTANT");
}

#[test]
fn glyphs_jittered_by_a_few_degrees_stay_on_their_line() {
    // LaTeX's typewriter package turns each glyph by a random small angle and draws it twice.
    let content: String = "Introduction"
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let a: f32 = if i % 2 == 0 { 0.05 } else { -0.04 };
            let x = 20.0 + 6.0 * i as f32;
            format!(
                "{:.4} {:.4} {:.4} {:.4} {x:.2} 100 Tm ({c}) Tj {:.4} {:.4} {:.4} {:.4} {:.2} 100.2 Tm ({c}) Tj ",
                10.0 * a.cos(),
                10.0 * a.sin(),
                -10.0 * a.sin(),
                10.0 * a.cos(),
                10.0 * a.cos(),
                10.0 * a.sin(),
                -10.0 * a.sin(),
                10.0 * a.cos(),
                x + 0.3,
            )
        })
        .collect();
    let pdf = one_page_pdf(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>",
        &format!("BT /F1 1 Tf {content}ET"),
    );
    assert_eq!(text_of(&pdf), "Introduction");
}
