//! A std-only HTTP/1.1 client, one request per connection or kept alive.

use super::*;

// HTTP/1.1 client

/// A whole HTTP response (the client always sends `Connection: close` and reads to EOF).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// In received order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded from chunked if needed; lossy UTF-8.
    pub body: String,
}

impl Response {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// Every value of a repeated header (e.g. `Set-Cookie`), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
}

/// First value of `name` in `headers`, case-insensitively.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// All values of `name` in `headers`, case-insensitively, in order.
pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `GET path` at `addr` (anything that prints as `host:port`, e.g. a `SocketAddr`).
/// `headers` are sent verbatim (so tests can send odd spellings such as
/// `X_Auth_Request_User`); a `Host` among them replaces the default `Host: addr`.
/// Panics on connection or protocol errors.
pub fn http_get(addr: impl Display, path: &str, headers: &[(&str, &str)]) -> Response {
    http_request("GET", addr, path, headers, b"")
}

/// Any method, with an optional body (sent with `Content-Length`).
pub fn http_request(
    method: &str,
    addr: impl Display,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let addr = addr.to_string();
    try_http_request(method, &addr, path, headers, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// `http_request` that returns I/O and parse errors instead of panicking, with a timeout
/// for connecting and for each read.
pub fn try_http_request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let socket = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head += &format!("Host: {addr}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "Connection: close\r\n\r\n";
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// Sets the flag when dropped, also when a test panics: a load thread that loops until the
/// flag is set then ends, instead of keeping a panicking `thread::scope` open forever.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One keep-alive connection that pipelines requests: a batch is written at once and its
/// responses are read back in order. For driving many requests through a debug build
/// without paying a connection per request. Only for servers that answer with
/// `Content-Length` (gatehouse does).
pub struct KeepAlive {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> io::Result<KeepAlive> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// `GET path` once per entry of `headers` (each a list of header lines), pipelined;
    /// returns the statuses in request order.
    pub fn get_all(&mut self, path: &str, headers: &[Vec<(&str, &str)>]) -> io::Result<Vec<u16>> {
        let mut out = String::with_capacity(headers.len() * 160);
        for set in headers {
            out += &format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
            for (name, value) in set {
                out += &format!("{name}: {value}\r\n");
            }
            out += "\r\n";
        }
        self.stream.write_all(out.as_bytes())?;
        (0..headers.len()).map(|_| self.read_one()).collect()
    }

    fn read_one(&mut self) -> io::Result<u16> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| invalid(format!("bad status line in {head:?}")))?;
                let body: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .ok_or_else(|| invalid(format!("no content-length in {head:?}")))?;
                if self.buf.len() >= end + 4 + body {
                    self.buf.drain(..end + 4 + body);
                    return Ok(status);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-pipeline",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Every response in `raw` (a connection's whole output) in order, each framed by its
/// `Content-Length`: for servers that always send one (gatehouse does), answering no HEAD.
pub fn split_responses(mut raw: &[u8]) -> io::Result<Vec<Response>> {
    let mut all = Vec::new();
    while !raw.is_empty() {
        let end = find(raw, b"\r\n\r\n").ok_or_else(|| invalid("no header end"))? + 4;
        let response = parse_response(raw, false)?;
        let len = match response.header("content-length") {
            Some(len) => len
                .parse::<usize>()
                .map_err(|_| invalid("bad content-length"))?,
            None => return Err(invalid("a response without content-length")),
        };
        raw = raw
            .get(end + len..)
            .ok_or_else(|| invalid("body cut short"))?;
        all.push(response);
    }
    Ok(all)
}

pub(crate) fn parse_response(mut raw: &[u8], head_only: bool) -> io::Result<Response> {
    loop {
        let end = find(raw, b"\r\n\r\n").ok_or_else(|| {
            invalid(format!(
                "no header end in {:?}",
                String::from_utf8_lossy(raw)
            ))
        })?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        if (100..200).contains(&status) {
            raw = rest; // an interim response (100 Continue); the real one follows
            continue;
        }
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if header_value(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            decode_chunked(rest)?
        } else if let Some(len) = header_value(&headers, "content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
            rest.get(..len)
                .ok_or_else(|| invalid("body shorter than content-length"))?
                .to_vec()
        } else {
            rest.to_vec()
        };
        return Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or_else(|| invalid("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_hex:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body); // trailers, if any, are ignored
        }
        body.extend_from_slice(data.get(..size).ok_or_else(|| invalid("truncated chunk"))?);
        data = data
            .get(size + 2..)
            .ok_or_else(|| invalid("truncated chunk"))?;
    }
}

/// The claims of a JWT (its payload, decoded; the signature is not checked).
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let jwt = jwt.trim_start_matches("Bearer ");
    let payload = jwt
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}
