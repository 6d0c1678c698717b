//! Prints the extracted text of each file given: `cargo run -p ragpipe-ingest --example extract -- FILE...`
//! (the `ragpipe extract` command does the same with chunks and JSON).

fn main() {
    let limits = ragpipe_ingest::Limits::default();
    for path in std::env::args().skip(1) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        match ragpipe_ingest::extract(&bytes, &limits) {
            Ok(doc) => {
                println!(
                    "== {path}: {} pages={} title={:?} lang={:?} headings={} failed={:?}",
                    doc.format,
                    doc.page_count,
                    doc.title,
                    doc.language,
                    doc.headings.len(),
                    doc.failed_pages
                );
                println!("{}", doc.text);
            }
            Err(e) => println!("== {path}: error: {e}"),
        }
    }
}
