//! Every fixture document uploaded through the HTTP API ends `ready` with its golden chunk
//! count (or `failed` with its reason), through the real queue and an in-process worker.

use ragpipe_tests::app::{TestApp, UploadFile};
use serde_json::Value;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The chunk count in the fixture's golden (an insta snapshot: a header between `---` lines,
/// then the JSON).
fn golden_chunks(name: &str) -> Option<usize> {
    let text = std::fs::read_to_string(fixtures().join("golden").join(format!("{name}.json.snap"))).ok()?;
    let (_, json) = text.strip_prefix("---\n")?.split_once("\n---\n")?;
    let golden: Value = serde_json::from_str(json).ok()?;
    golden["chunks"].as_array().map(Vec::len)
}

#[sqlx::test(migrations = false)]
async fn fixture_documents_uploaded_over_http_end_ready_with_their_golden_chunk_counts(pool: PgPool) {
    // The goldens (crates/ingest/tests/fixtures.rs) are cut at 128 tokens with 16 of overlap.
    let app = TestApp::builder(pool)
        .config(|c| {
            c.chunking.max_tokens = 128;
            c.chunking.overlap_tokens = 16;
        })
        .with_task("ingest worker", |store, config, shutdown| {
            ragpipe_ingest_worker::spawn(store, config, shutdown)
        })
        .start()
        .await;
    let user = app.create_user("fixtures@example.com").await;

    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures().join("documents"))
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut uploaded = Vec::new();
    for path in &paths {
        let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_owned();
        let bytes = std::fs::read(path).expect("read");
        let (status, body) = app.upload_json(&user.key, vec![UploadFile::new(&name, bytes)]).await;
        // Rejected at the door, before anything is stored: unsupported bytes and empty files.
        if name.starts_with("hostile-garbage") {
            assert_eq!(status.as_u16(), 415, "{name}: {body}");
            continue;
        }
        if name.starts_with("hostile-zero-byte") {
            assert_eq!(status.as_u16(), 400, "{name}: {body}");
            continue;
        }
        assert_eq!(status.as_u16(), 201, "{name}: {body}");
        let doc = &body["documents"][0];
        assert_eq!(
            doc["status"], "queued",
            "{name}: listed as queued the moment the upload returns"
        );
        uploaded.push((name, doc["id"].as_str().expect("id").to_owned()));
    }
    assert!(uploaded.len() >= 10);

    let mut with_golden = 0;
    for (name, id) in &uploaded {
        let doc = app.wait_for_document(&user.key, id, Duration::from_secs(180)).await;
        let status = doc["status"].as_str().unwrap_or_default();
        match name.as_str() {
            n if n.contains("encrypted-user-password") => {
                assert_eq!(status, "failed");
                assert!(doc["error"].as_str().unwrap_or_default().contains("encrypted"), "{doc}");
            }
            n if n.contains("scanned-image-only") => {
                assert_eq!(status, "failed");
                assert!(
                    doc["error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("no extractable text"),
                    "{doc}"
                );
            }
            n if n.starts_with("hostile-") => {
                assert!(status == "failed" || status == "ready", "{name}: {doc}");
                if status == "failed" {
                    assert!(
                        !doc["error"].as_str().unwrap_or_default().is_empty(),
                        "{name} failed without a reason"
                    );
                }
            }
            _ => {
                assert_eq!(status, "ready", "{name}: {doc}");
                let chunks = doc["chunk_count"].as_u64().expect("chunk_count") as usize;
                if let Some(golden) = golden_chunks(name) {
                    assert_eq!(
                        chunks, golden,
                        "{name}: chunk count differs from fixtures/golden/{name}.json.snap"
                    );
                    with_golden += 1;
                }
                let (code, listed) = app
                    .get_json(&user.key, &format!("/v1/documents/{id}/chunks?limit=1000"))
                    .await;
                assert_eq!(code.as_u16(), 200);
                let rows = listed["chunks"].as_array().expect("chunks");
                assert_eq!(rows.len(), chunks, "{name}");
                assert!(
                    rows.iter().all(|c| c["embedded"] == true && c["searchable"] == true),
                    "{name}: {listed}"
                );
            }
        }
    }
    assert!(with_golden >= 8, "only {with_golden} fixtures had goldens");
    app.shutdown().await;
}

#[sqlx::test(migrations = false)]
async fn a_page_whose_text_cannot_be_decoded_is_named_on_the_document(pool: PgPool) {
    // Page 2 is drawn in a Type 3 font with meaningless glyph names and no ToUnicode
    // (fixtures/pdf-producers/_source/type3-unnamed.ps): the document is ready with page 1's
    // text, and says which page search cannot see.
    let app = TestApp::builder(pool)
        .with_task("ingest worker", |store, config, shutdown| {
            ragpipe_ingest_worker::spawn(store, config, shutdown)
        })
        .start()
        .await;
    let user = app.create_user("warnings@example.com").await;
    let name = "ghostscript-type3-unnamed-glyphs.pdf";
    let bytes = std::fs::read(fixtures().join("pdf-producers").join(name)).expect("fixture");
    let (status, body) = app.upload_json(&user.key, vec![UploadFile::new(name, bytes)]).await;
    assert_eq!(status.as_u16(), 201, "{body}");
    assert_eq!(body["documents"][0]["warnings"], serde_json::json!([]), "{body}");
    let id = body["documents"][0]["id"].as_str().expect("id").to_owned();
    let doc = app.wait_for_document(&user.key, &id, Duration::from_secs(120)).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(
        doc["warnings"],
        serde_json::json!([{"code": "undecodable_text_layer", "pages": [2]}]),
        "{doc}"
    );
    let (code, listed) = app.get_json(&user.key, &format!("/v1/documents/{id}")).await;
    assert_eq!(code.as_u16(), 200);
    assert_eq!(listed["warnings"][0]["pages"], serde_json::json!([2]), "{listed}");
    app.shutdown().await;
}
