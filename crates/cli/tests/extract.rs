//! `ragpipe extract`: the first tool a user reaches for when an answer looks wrong. It must work
//! without a database.

use std::process::Command;

fn fixture(name: &str) -> String {
    format!("{}/../../fixtures/documents/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn extract_prints_chunks_with_metadata_as_json_without_a_database() {
    let out = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(["extract", &fixture("latex-pdftex-twocolumn.pdf"), "--chunks", "--json"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("run ragpipe extract");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let chunks = v["chunks"].as_array().expect("chunks");
    assert!(!chunks.is_empty());
    assert!(
        chunks
            .iter()
            .all(|c| c["token_count"].as_u64().is_some_and(|t| t > 0 && t <= 512)),
        "{v}"
    );
    assert_eq!(chunks[0]["page_first"], 1);
    assert_eq!(v["document"]["format"], "pdf");
}

#[test]
fn extract_fails_with_a_readable_reason_on_an_encrypted_pdf() {
    let out = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(["extract", &fixture("encrypted-user-password.pdf")])
        .output()
        .expect("run ragpipe extract");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("encrypted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--chunks` cuts what ingest cuts: with the local model configured, chunks are also capped by
/// the model's own input limit (256 word pieces for MiniLM), so there are more of them than
/// with the hashed embedder, whose cap is the chunk size alone.
#[test]
fn extract_chunks_as_ingest_does_for_the_local_model() {
    let chunks_with = |provider: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
            .args(["extract", &fixture("latex-pdftex-twocolumn.pdf"), "--chunks", "--json"])
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("RAGPIPE_EMBEDDING_PROVIDER", provider)
            .env_remove("RAGPIPE_EMBEDDING_BASE_URL")
            .output()
            .expect("run ragpipe extract");
        assert!(
            out.status.success(),
            "{provider}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let local = chunks_with("local");
    let hashed = chunks_with("hashed");
    assert_eq!(local["model_limit"]["max_tokens"], 256, "{}", local["model_limit"]);
    assert!(hashed["model_limit"].is_null(), "{}", hashed["model_limit"]);
    let count = |v: &serde_json::Value| v["chunks"].as_array().expect("chunks").len();
    assert!(
        count(&local) > count(&hashed),
        "local {} chunks, hashed {}",
        count(&local),
        count(&hashed)
    );
}
