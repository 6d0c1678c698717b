//! Fuzzes the PDF path of `ragpipe_ingest::extract`: any bytes (given a PDF header when they
//! lack one, so the fuzzer spends its time past format detection) must give `Ok` or a
//! non-panic error, within small limits.
//!
//! ```text
//! cd crates/ingest/fuzz
//! mkdir -p corpus/pdf && cp ../../../fixtures/documents/*.pdf corpus/pdf/
//! RUSTC_BOOTSTRAP=1 cargo fuzz run pdf corpus/pdf -- -max_total_time=1200 -rss_limit_mb=2048 -timeout=10
//! ```
//!
//! The runs so far and what they found: `README.md` beside this crate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragpipe_ingest::{ExtractError, Limits, extract};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_decompressed_bytes: 4 << 20,
        max_chars: 1 << 20,
        timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let owned;
    let bytes = if data.starts_with(b"%PDF-") {
        data
    } else {
        owned = [b"%PDF-1.7\n".as_slice(), data].concat();
        &owned
    };
    match extract(bytes, &limits) {
        // A caught panic is still a bug to fix: surface it to the fuzzer.
        Err(ExtractError::Panicked(msg)) => panic!("extractor panicked: {msg}"),
        Ok(doc) => {
            assert!(!doc.text.contains('\0'), "NUL in extracted text");
            // A page whose interpretation panicked fails alone and the rest of the document
            // is returned: still a bug.
            let crashed = ExtractError::Panicked(String::new()).to_string();
            let prefix = crashed.split('(').next().unwrap_or_default();
            if let Some(page) = doc.failed_pages.iter().find(|p| p.reason.starts_with(prefix)) {
                panic!("page {} panicked: {}", page.page, page.reason);
            }
        }
        Err(_) => {}
    }
});
