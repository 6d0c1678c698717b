//! Reading an upload: a `multipart/form-data` body of one or more `file` parts, each optionally
//! followed by a `metadata` part (a JSON object) for that file.
//!
//! The body is read as it streams in, and the per-file and per-request limits are checked on
//! every chunk, so an oversized upload is refused after at most one chunk past the limit, not
//! after buffering it. What is kept in memory is bounded by the request limit: all files of a
//! request are stored in one transaction, so they are all held until it commits.

use crate::Error;
use crate::body::find_nul;
use axum::extract::Multipart;
use axum::extract::multipart::{Field, MultipartError};
use axum::http::StatusCode;
use ragpipe_core::config::Limits;
use ragpipe_store::{UserTx, quotas};
use serde_json::Value;

/// Most files in one request.
pub const MAX_FILES_PER_REQUEST: usize = 100;
/// Largest `metadata` part, in bytes.
pub const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// Room on top of the files' bytes for part headers, boundaries and metadata parts, so that
/// the body limit (which counts all of them) never fires before the per-file and per-request
/// limits (which count file bytes) can give their more precise answer.
pub const MULTIPART_OVERHEAD_BYTES: u64 = 4 * 1024 * 1024;

/// One uploaded file, read whole and within the limits.
#[derive(Debug)]
pub struct UploadedFile {
    /// The client's file name, reduced to its last path component.
    pub filename: String,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The `metadata` part that followed it, if any (always a JSON object).
    pub metadata: Option<serde_json::Map<String, Value>>,
}

/// Upload limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Largest file.
    pub max_file_bytes: u64,
    /// Largest sum of the files of one request.
    pub max_request_bytes: u64,
}

impl UploadLimits {
    /// The configured limits.
    pub fn from_config(limits: &Limits) -> UploadLimits {
        UploadLimits {
            max_file_bytes: limits.max_file_bytes,
            max_request_bytes: limits.max_request_bytes,
        }
    }

    /// The body limit for the upload route (files plus multipart overhead).
    pub fn body_limit(&self) -> usize {
        usize::try_from(self.max_request_bytes.saturating_add(MULTIPART_OVERHEAD_BYTES)).unwrap_or(usize::MAX)
    }
}

/// Reads every part of the upload. Each file is handed to `check` as soon as it is complete
/// (format detection, hashing), so a bad file fails the request before the rest is read.
pub async fn read_files<T, F, Fut>(
    multipart: &mut Multipart,
    limits: UploadLimits,
    mut check: F,
) -> Result<Vec<(UploadedFile, T)>, Error>
where
    F: FnMut(UploadedFile) -> Fut,
    Fut: Future<Output = Result<(UploadedFile, T), Error>>,
{
    let mut files: Vec<(UploadedFile, T)> = Vec::new();
    let mut request_bytes: u64 = 0;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(&e, limits))? {
        match field.name() {
            Some("file") => {
                if files.len() >= MAX_FILES_PER_REQUEST {
                    return Err(Error::too_large(
                        "too_many_files",
                        format!("an upload may hold at most {MAX_FILES_PER_REQUEST} files"),
                    ));
                }
                let filename = clean_filename(field.file_name());
                let bytes = read_file(&mut field, &filename, limits, &mut request_bytes).await?;
                let file = UploadedFile {
                    filename,
                    bytes,
                    metadata: None,
                };
                files.push(check(file).await?);
            }
            Some("metadata") => {
                let Some((file, _)) = files.last_mut() else {
                    return Err(Error::bad_request(
                        "a `metadata` part must follow the `file` part it describes",
                    ));
                };
                if file.metadata.is_some() {
                    return Err(Error::bad_request(format!(
                        "two `metadata` parts for {}: send one after each `file` part",
                        file.filename
                    )));
                }
                file.metadata = Some(read_metadata(&mut field, &file.filename, limits).await?);
            }
            Some(other) => {
                let shown: String = other.chars().take(64).collect();
                return Err(Error::bad_request(format!(
                    "unexpected part {shown:?}: send `file` parts, each optionally followed by a `metadata` part"
                )));
            }
            None => return Err(Error::bad_request("a multipart part has no name")),
        }
    }
    if files.is_empty() {
        return Err(Error::bad_request("no `file` part in the upload"));
    }
    Ok(files)
}

/// Refuses an upload of `files` (size and sha256 of each) that the caller's quotas do not
/// allow: 429 once the month's tokens are used up (ingesting costs embedding tokens), 413 when
/// its new bytes would take storage over the budget; each message names the budget and the
/// use. Bytes the caller already has do not count (the upload returns that document).
///
/// Call it in the transaction that stores the files, before storing them: it holds the
/// caller's quota lock until that transaction ends, so concurrent uploads are checked in turn.
pub async fn check_quotas(tx: &mut UserTx, files: impl IntoIterator<Item = (u64, [u8; 32])>) -> Result<(), Error> {
    quotas::check_upload(tx, files).await.map_err(crate::usage::refused)?;
    Ok(())
}

async fn read_file(
    field: &mut Field<'_>,
    filename: &str,
    limits: UploadLimits,
    request_bytes: &mut u64,
) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e, limits))? {
        let chunk_len = chunk.len() as u64;
        if bytes.len() as u64 + chunk_len > limits.max_file_bytes {
            return Err(Error::too_large(
                "file_too_large",
                format!(
                    "{filename} is over the limit of {} bytes per file",
                    limits.max_file_bytes
                ),
            ));
        }
        *request_bytes += chunk_len;
        if *request_bytes > limits.max_request_bytes {
            return Err(request_too_large(limits));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn read_metadata(
    field: &mut Field<'_>,
    filename: &str,
    limits: UploadLimits,
) -> Result<serde_json::Map<String, Value>, Error> {
    let mut raw = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e, limits))? {
        if (raw.len() + chunk.len()) as u64 > MAX_METADATA_BYTES {
            return Err(Error::too_large(
                "metadata_too_large",
                format!("the metadata of {filename} is over the limit of {MAX_METADATA_BYTES} bytes"),
            ));
        }
        raw.extend_from_slice(&chunk);
    }
    let parsed = serde_json::from_slice::<Value>(&raw);
    if let Ok(value) = &parsed
        && let Some(field) = find_nul(value)
    {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_metadata",
            format!(
                "the metadata of {filename}: {} contains a NUL character (\\u0000), which text here cannot hold",
                field.replace("the body", "the object")
            ),
        ));
    }
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_metadata",
            format!("the metadata of {filename} must be a JSON object"),
        )),
        Err(e) => Err(Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_metadata",
            format!("the metadata of {filename} is not valid JSON: {e}"),
        )),
    }
}

fn request_too_large(limits: UploadLimits) -> Error {
    Error::too_large(
        "request_too_large",
        format!(
            "the upload is over the limit of {} bytes per request",
            limits.max_request_bytes
        ),
    )
}

/// The body limit (counting the whole body) surfaces as a multipart read error.
fn multipart_error(e: &MultipartError, limits: UploadLimits) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        request_too_large(limits)
    } else {
        Error::bad_request(format!("reading the multipart body: {}", e.body_text()))
    }
}

/// The last path component of the client's file name, without control characters, at most
/// 255 characters; `upload` when nothing is left.
pub fn clean_filename(raw: Option<&str>) -> String {
    let raw = raw.unwrap_or_default();
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).take(255).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "upload".to_owned()
    } else {
        cleaned.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::clean_filename;

    #[test]
    fn file_names_keep_only_their_last_component() {
        assert_eq!(clean_filename(Some("report.pdf")), "report.pdf");
        assert_eq!(clean_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_filename(Some("C:\\Users\\me\\notes.txt")), "notes.txt");
        assert_eq!(clean_filename(Some("a\u{0}b\nc.md")), "abc.md");
        assert_eq!(clean_filename(Some("dir/")), "upload");
        assert_eq!(clean_filename(Some("..")), "upload");
        assert_eq!(clean_filename(None), "upload");
        assert_eq!(clean_filename(Some(&"x".repeat(1000))).len(), 255);
    }
}
