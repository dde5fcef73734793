//! The lean HTTP/1 path for `/auth` on the main listener's keep-alive connections.
//!
//! Every connection of the main listener starts here. While its requests are a proxy's auth
//! subrequest — `GET /auth HTTP/1.1` with no body and no `Connection`, `Expect` or `Upgrade`
//! header, which is what nginx sends over an upstream keepalive pool — they are parsed
//! (httparse, as hyper parses), decided by the same [`Gateway::answer`] and answered here,
//! without hyper's general per-request machinery. That machinery (dispatch, the service
//! future, the response encoder, the request's `Incoming` body) was most of the CPU time per
//! request that gatehouse spent beyond a bare 204 behind nginx (benches/README.md).
//!
//! The first request that is anything else — another path or method, HTTP/1.0, a body, a
//! header hyper would refuse, a head that is incomplete at 32 KiB or holds too many headers
//! — and everything after it on that connection go to hyper, the bytes already read
//! included ([`Prefixed`]). So every case this path does not take is answered by hyper,
//! with hyper's strictness, exactly as before it existed; this path only ever answers
//! requests that hyper would have parsed to the same method, path and headers.

use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH,
    EXPECT, TRANSFER_ENCODING, UPGRADE,
};
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::auth::{
    Answer, Gateway, NO_STORE, X_AUTH_REQUEST_AMR, X_AUTH_REQUEST_EMAIL, X_AUTH_REQUEST_USER,
};

/// Headers per request, as hyper's default.
const MAX_HEADERS: usize = 100;

/// What the head at the start of a buffer is.
#[derive(Debug)]
pub(crate) enum Head {
    /// A complete auth subrequest of `len` bytes, with its headers.
    Auth { len: usize, headers: HeaderMap },
    /// Not complete yet: read more.
    Partial,
    /// Anything else: hyper's to answer.
    Other,
}

/// Classifies the head at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Head {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    if req.method != Some("GET") || req.path != Some("/auth") || req.version != Some(1) {
        return Head::Other;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::Other;
        };
        // A body, a connection option or an upgrade: hyper's framing, not ours.
        if [
            CONTENT_LENGTH,
            TRANSFER_ENCODING,
            CONNECTION,
            EXPECT,
            UPGRADE,
        ]
        .contains(&name)
        {
            return Head::Other;
        }
        headers.append(name, value);
    }
    Head::Auth { len, headers }
}

/// Why [`serve`] stopped answering a connection itself.
pub(crate) enum Handover {
    /// The connection is over (closed, timed out, shutting down).
    Done,
    /// The rest is hyper's: the connection and what was read from it but not answered.
    Hyper(Prefixed),
}

/// Answers auth subrequests on `stream` until the connection ends or a request comes that
/// is not one (then hands it over).
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: IpAddr,
    gw: &Gateway,
    header_timeout: Duration,
    max_head: usize,
    mut stop: watch::Receiver<bool>,
) -> Handover {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    // One timer and one shutdown wait for the whole connection, not one per request: the
    // timer is moved only when it fires early (see below).
    let mut waiting_since = tokio::time::Instant::now();
    let timer = tokio::time::sleep_until(waiting_since + header_timeout);
    let stopped = stop.clone();
    let stopping = stop.changed();
    tokio::pin!(timer, stopping);
    loop {
        // Like hyper's header timeout, this one runs from the moment a head is awaited,
        // idle keep-alive included.
        let (len, headers) = loop {
            match parse(&buf) {
                Head::Auth { len, headers } => break (len, headers),
                Head::Other => return hand_over(stream, buf),
                Head::Partial if buf.len() >= max_head => return hand_over(stream, buf),
                Head::Partial => {}
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let idle = buf.is_empty();
            tokio::select! {
                read = stream.read_buf(&mut buf) => match read {
                    Ok(n) if n > 0 => {}
                    Ok(_) => return Handover::Done,
                    Err(e) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        return Handover::Done;
                    }
                },
                () = &mut timer => {
                    let deadline = waiting_since + header_timeout;
                    if tokio::time::Instant::now() < deadline {
                        // Set for an earlier request's wait: wait on for this one's.
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    if !idle {
                        tracing::debug!("request head not received within --header-timeout; closing");
                    }
                    return Handover::Done;
                }
                // Shutting down: an idle connection closes; a request under way is answered.
                _ = &mut stopping, if idle => return Handover::Done,
            }
        };
        buf.advance(len);
        let answer = gw.answer(&headers, peer).await;
        drop(headers);
        out.clear();
        encode(answer, &mut out).await;
        if let Err(e) = stream.write_all(&out).await {
            tracing::debug!(error = %e, "connection ended with an error");
            return Handover::Done;
        }
        if *stopped.borrow() {
            return Handover::Done;
        }
        waiting_since = tokio::time::Instant::now();
    }
}

fn hand_over(stream: TcpStream, buf: BytesMut) -> Handover {
    Handover::Hyper(Prefixed {
        read: buf.freeze(),
        stream,
    })
}

/// Writes `answer` as HTTP/1.1 with `content-length` and `date`, as hyper writes it.
async fn encode(answer: Answer, out: &mut Vec<u8>) {
    let response = match answer {
        // A hit, written from its entry: the headers of `Answer::into_response`, in order.
        Answer::Allow(entry) => {
            status_line(StatusCode::OK, out);
            header(&AUTHORIZATION, &entry.authorization, out);
            header(&X_AUTH_REQUEST_USER, &entry.user, out);
            if let Some(email) = &entry.email {
                header(&X_AUTH_REQUEST_EMAIL, email, out);
            }
            header(&CACHE_CONTROL, &NO_STORE, out);
            if let Some(amr) = &entry.amr {
                header(&X_AUTH_REQUEST_AMR, amr, out);
            }
            end_of_head(&[], out);
            return;
        }
        Answer::Response(response) => response,
    };
    let (parts, mut body) = response.into_parts();
    // A `Full` body is one frame, ready at once.
    let body = match body.frame().await {
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    status_line(parts.status, out);
    for (name, value) in &parts.headers {
        header(name, value, out);
    }
    end_of_head(&body, out);
}

fn status_line(status: StatusCode, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn header(name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `content-length`, `date`, the blank line and the body.
fn end_of_head(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa(body.len(), &mut [0; 20]));
    out.extend_from_slice(b"\r\ndate: ");
    date(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

fn itoa(mut n: usize, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[i..];
        }
    }
}

/// The `date` header's value, formatted once a second per thread (as hyper does).
fn date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// A connection handed to hyper: the bytes already read from it come first.
pub(crate) struct Prefixed {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(head: &[u8]) -> &'static str {
        match parse(head) {
            Head::Auth { .. } => "auth",
            Head::Partial => "partial",
            Head::Other => "other",
        }
    }

    #[test]
    fn only_a_bodiless_get_of_auth_in_http_1_1_is_taken() {
        let auth = b"GET /auth HTTP/1.1\r\nHost: a\r\nCookie: s=1\r\nX-Original-URI: /x\r\n\r\n";
        match parse(auth) {
            Head::Auth { len, headers } => {
                assert_eq!(len, auth.len());
                assert_eq!(headers["cookie"], "s=1");
                assert_eq!(headers["x-original-uri"], "/x");
            }
            other => panic!("{other:?}"),
        }
        // Two of a header stay two (the credential and policy checks refuse them).
        let Head::Auth { headers, .. } =
            parse(b"GET /auth HTTP/1.1\r\nAuthorization: a\r\nauthorization: b\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(headers.get_all("authorization").iter().count(), 2);
        assert_eq!(kind(&auth[..auth.len() - 1]), "partial");
        assert_eq!(kind(b""), "partial");
        for other in [
            &b"HEAD /auth HTTP/1.1\r\n\r\n"[..],
            b"POST /auth HTTP/1.1\r\n\r\n",
            b"GET /auth HTTP/1.0\r\n\r\n",
            b"GET /auth/redirect HTTP/1.1\r\n\r\n",
            b"GET /auth?x=1 HTTP/1.1\r\n\r\n",
            b"GET /Auth HTTP/1.1\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET  /auth HTTP/1.1\r\n\r\n",
            b"GET /auth HTTP/1.1\r\nX: \x01\r\n\r\n",
        ] {
            assert_eq!(kind(other), "other", "{}", String::from_utf8_lossy(other));
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            kind(format!("GET /auth HTTP/1.1\r\n{many}\r\n").as_bytes()),
            "other"
        );
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 31, 12345, usize::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }
}
