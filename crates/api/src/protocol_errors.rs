//! The answers hyper gives by itself, in the JSON error shape.
//!
//! Some requests never reach a router: hyper's HTTP/1 parser refuses a request line or header
//! it cannot parse (400), a URI over 65,534 bytes (414: a limit hyper hard-codes, `MAX_URI_LEN`
//! in `proto/h1/role.rs`, with no setting), and a request head over its buffer (431). It then
//! writes a bare status line with `content-length: 0` itself and closes the connection; no
//! middleware or service sees it, and hyper has no hook to change that response.
//!
//! So the connection's writing side is wrapped ([`JsonProtocolErrors`]): a response head that is
//! an error status with an empty body and no content type is replaced by the same head with
//! the JSON error body. Every error the application itself returns has a JSON body
//! ([`crate::Error`], and the `json_errors` middleware for the rest), so such a head can only
//! come from hyper. Everything else passes through untouched.

use crate::Error;
use axum::http::StatusCode;
use axum::serve::Listener;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A listener whose connections answer hyper's own errors in the JSON error shape.
#[derive(Debug)]
pub struct JsonProtocolErrors<L>(pub L);

impl<L: Listener> Listener for JsonProtocolErrors<L> {
    type Io = JsonErrorsIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (
            JsonErrorsIo {
                inner: io,
                replacing: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection of [`JsonProtocolErrors`].
#[derive(Debug)]
pub struct JsonErrorsIo<T> {
    inner: T,
    replacing: Option<Replacement>,
}

/// A bare error head being replaced: the bytes written instead, how many are out, and how
/// long the head was (what the writer is told was written once all of them are out).
#[derive(Debug)]
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    head_len: usize,
}

impl<T: AsyncWrite + Unpin> JsonErrorsIo<T> {
    /// Writes the pending replacement; ready with the length of the head it replaces.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some(r) = &mut self.replacing {
            if r.written == r.bytes.len() {
                let head_len = r.head_len;
                self.replacing = None;
                return Poll::Ready(Ok(head_len));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &r.bytes[r.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
        }
        Poll::Ready(Ok(0))
    }

    /// Starts replacing `buf` when it begins with a bare error head.
    fn inspect(&mut self, buf: &[u8]) -> bool {
        if self.replacing.is_none()
            && let Some((head_len, status)) = bare_error_head(buf)
        {
            self.replacing = Some(Replacement {
                bytes: with_json_body(&buf[..head_len], status),
                written: 0,
                head_len,
            });
        }
        self.replacing.is_some()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrorsIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrorsIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.inspect(buf) {
            return this.drive(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // hyper puts a response head in a buffer of its own, first; a partial write of a
        // vectored buffer is allowed, so the head alone is reported written.
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        if this.inspect(first) {
            return this.drive(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The length and status of a response head at the start of `buf` that is an error with an
/// empty body and no content type (what hyper writes for a request it could not parse).
fn bare_error_head(buf: &[u8]) -> Option<(usize, StatusCode)> {
    if !buf.starts_with(b"HTTP/1.") || buf.get(8) != Some(&b' ') {
        return None;
    }
    let status = StatusCode::from_bytes(buf.get(9..12)?).ok()?;
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let head_len = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = buf[..head_len].to_ascii_lowercase();
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    (has(b"\r\ncontent-length: 0\r\n") && !has(b"\r\ncontent-type:")).then_some((head_len, status))
}

/// `head` with its `content-length` replaced, a JSON content type, and the error body.
fn with_json_body(head: &[u8], status: StatusCode) -> Vec<u8> {
    let message = match status {
        StatusCode::URI_TOO_LONG => "the request URI is too long (at most 65534 bytes)",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "the request's headers are too large",
        StatusCode::BAD_REQUEST => "the request is not valid HTTP/1.1 (its request line or a header)",
        _ => status.canonical_reason().unwrap_or("the request was refused"),
    };
    let body = Error::from_status(status, message).body_bytes();
    let head = String::from_utf8_lossy(&head[..head.len() - 2]);
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("content-length:") {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_error_heads_are_replaced() {
        let hyper_414 =
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 09:00:00 GMT\r\n\r\n";
        assert_eq!(
            bare_error_head(hyper_414),
            Some((hyper_414.len(), StatusCode::URI_TOO_LONG))
        );
        let replaced = String::from_utf8(with_json_body(hyper_414, StatusCode::URI_TOO_LONG)).expect("utf-8");
        let (head, body) = replaced.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{replaced}");
        assert!(head.contains("\r\ndate: Fri"), "{replaced}");
        assert!(head.contains("\r\ncontent-type: application/json"), "{replaced}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{replaced}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["error"]["code"], "uri_too_long");

        // The application's own answers pass: successes, and errors with a body.
        assert_eq!(bare_error_head(b"HTTP/1.1 204 No Content\r\n\r\n"), None);
        assert_eq!(bare_error_head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), None);
        assert_eq!(
            bare_error_head(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            bare_error_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 57\r\n\r\n"),
            None
        );
        assert_eq!(bare_error_head(b"{\"HTTP/1.1 400 \"}"), None);
        assert_eq!(
            bare_error_head(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"),
            None
        );
    }
}
