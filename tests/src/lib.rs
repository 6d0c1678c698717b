//! ragpipe

pub mod app;
pub mod openai_server;
pub mod replica;

/// A connection URL for the database behind `pool` (e.g. one `#[sqlx::test]` created), for
/// starting `ragpipe` processes against it.
pub fn database_url(pool: &sqlx::PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres")
    )
}

/// Uploads `bytes` as `name` for `user` the way the API and CLI do (detect the format, hash,
/// then the document row, its bytes and its ingest job in one transaction) and returns the
/// document; an unsupported format is an `Err` with the reason.
pub async fn upload_inline(
    store: &ragpipe_store::Store,
    user: ragpipe_core::UserId,
    name: &str,
    bytes: &[u8],
) -> Result<ragpipe_core::DocumentId, String> {
    use sha2::Digest;
    let format = ragpipe_ingest::detect(bytes).map_err(|e| e.to_string())?;
    let mut tx = store.user_tx(user).await.expect("tx");
    let stored = ragpipe_store::documents::create(
        &mut tx,
        &ragpipe_store::documents::NewDocument {
            filename: name,
            content_type: format.content_type(),
            bytes,
            sha256: sha2::Sha256::digest(bytes).into(),
            metadata: serde_json::json!({}),
        },
        8,
    )
    .await
    .expect("create");
    tx.commit().await.expect("commit");
    Ok(ragpipe_core::DocumentId(stored.document.id))
}
