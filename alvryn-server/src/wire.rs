//! The connection under hyper: gives the HTTP layer's own error answers
//! the API's JSON error body.
//!
//! When hyper cannot parse a request (a malformed request line or header,
//! a head over [`MAX_HEAD_BYTES`](crate::MAX_HEAD_BYTES) or with more than
//! [`MAX_HEADERS`](crate::MAX_HEADERS) fields, a request target too long)
//! it answers by itself, before any service sees the request, with a
//! status line and `content-length: 0`, and closes the connection. hyper
//! has no hook for that answer's body, so [`JsonErrors`] recognises it on
//! its way to the socket and writes the same status with
//! `{"error": {"code", "message"}}` and the API's security headers
//! ([`SECURITY_HEADERS`](crate::web::SECURITY_HEADERS)) instead (no
//! request id: there was no request). It is the only answer hyper
//! writes without our service, and our service never answers 400, 414 or
//! 431 with an empty body, so nothing else can match.
//!
//! | status | code |
//! |--------|------|
//! | 400 | `malformed_request` |
//! | 414 | `uri_too_long` |
//! | 431 | `headers_too_large` |

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose writes of hyper's automatic 400, 414 and 431 answers
/// are replaced by the same answers with a JSON error body. Everything
/// else passes through untouched.
#[derive(Debug)]
pub struct JsonErrors<S> {
    inner: S,
    /// Rewritten bytes accepted from hyper and not yet on the socket.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonErrors<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// The code and message for an automatic answer with this status line.
fn body_for(status: &[u8]) -> Option<(&'static str, &'static str)> {
    Some(match status {
        b"400" => (
            "malformed_request",
            "the request could not be parsed as HTTP/1.1",
        ),
        b"414" => ("uri_too_long", "the request target is too long"),
        b"431" => (
            "headers_too_large",
            "the request headers are too large or too many",
        ),
        _ => return None,
    })
}

const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";

/// `head` with a JSON body, if `head` is exactly one of hyper's automatic
/// error answers: a whole head (ending in the blank line, nothing after
/// it) with status 400, 414 or 431 and `content-length: 0`.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    // The status first: for every other answer this is all the work.
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (code, message) = body_for(status)?;
    // Exactly one head: its blank line ends the write. (Several queued
    // heads of body-less answers can share one write; none of those is
    // touched.)
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let at = head.windows(EMPTY.len()).position(|w| w == EMPTY)?;
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut out = Vec::with_capacity(head.len() + body.len() + 512);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    for (name, value) in crate::web::SECURITY_HEADERS {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&head[at + EMPTY.len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is pending; ready when nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as rewritten if it is an automatic answer: the bytes
    /// count as written, and go out by the next drain.
    fn take_rewritten(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<io::Result<usize>> {
        let rewritten = rewrite(buf)?;
        self.pending = rewritten;
        self.written = 0;
        // Start now; what is left goes out on flush, which hyper calls.
        match self.drain(cx) {
            Poll::Ready(Err(e)) => Some(Err(e)),
            _ => Some(Ok(buf.len())),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let Some(done) = this.take_rewritten(cx, buf) {
            return Poll::Ready(done);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(done) = this.take_rewritten(cx, first)
        {
            return Poll::Ready(done);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const DATE: &str = "date: Mon, 30 Nov 2026 06:00:00 GMT\r\n";

    fn auto(status: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n{DATE}\r\n").into_bytes()
    }

    fn split(out: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(out.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn each_automatic_answer_gets_its_json_body_and_exact_length() {
        for (status, code) in [
            ("400 Bad Request", "malformed_request"),
            ("414 URI Too Long", "uri_too_long"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let out = rewrite(&auto(status)).unwrap();
            let (head, body) = split(&out);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{head}"
            );
            assert!(head.contains("content-type: application/json"), "{head}");
            for (name, value) in crate::web::SECURITY_HEADERS {
                assert!(head.contains(&format!("\r\n{name}: {value}\r\n")), "{head}");
            }
            assert!(head.contains(DATE.trim_end()), "{head}");
            assert_eq!(body["error"]["code"], code);
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            let body_len = out.len() - (head.len() + 4);
            assert_eq!(declared, body_len);
        }
    }

    #[test]
    fn anything_else_passes_untouched() {
        // Our own answers: a JSON 400 (head alone, as written vectored),
        // a 204 with an empty body, and a head followed by its body.
        let json_head = format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n{DATE}\r\n");
        assert!(rewrite(json_head.as_bytes()).is_none());
        let no_content = format!("HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n{DATE}\r\n");
        assert!(rewrite(no_content.as_bytes()).is_none());
        let mut with_body = auto("400 Bad Request");
        with_body.extend_from_slice(b"{}");
        assert!(rewrite(&with_body).is_none());
        assert!(rewrite(&auto("404 Not Found")).is_none());
        // Two queued heads in one write: a 400 of ours (its length says
        // there is a body; a HEAD answer has none) and a redirect with no
        // body. Neither is hyper's automatic answer.
        let mut two =
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n{DATE}\r\n").into_bytes();
        two.extend_from_slice(
            format!("HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n{DATE}\r\n")
                .as_bytes(),
        );
        assert!(rewrite(&two).is_none());
        assert!(rewrite(b"HTTP/1.1 4").is_none());
        assert!(rewrite(b"").is_none());
    }

    #[tokio::test]
    async fn a_rewritten_answer_reaches_the_peer_whole_through_a_tiny_pipe() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A 7-byte pipe: every write is partial, so the pending bytes go
        // out over many polls and the flush.
        let (a, mut b) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            let mut w = JsonErrors::new(a);
            w.write_all(&auto("431 Request Header Fields Too Large"))
                .await
                .unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(
            got,
            rewrite(&auto("431 Request Header Fields Too Large")).unwrap()
        );
    }
}
