//! Bad input, sent as raw bytes straight to gatehouse and through real nginx with the shipped
//! snippets: every answer is a refusal (never a 200 for bad input, never a crash), identity
//! headers reach the upstream only from gatehouse, and a header read that never finishes is
//! cut off after `--header-timeout`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

struct Stack {
    _redis: RedisServer,
    gatehouse: Gatehouse,
    app: EchoServer,
    nginx: Nginx,
    token: String,
    revoked: String,
}

fn stack() -> Stack {
    let redis = RedisServer::start();
    let url = redis.url();
    let gatehouse = Gatehouse::spawn(&args(&["--redis-url", &url, "--header-timeout", "1s"]));
    let app = EchoServer::start();
    let nginx = protected_site(gatehouse.addr().port(), app.port());
    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--redis-url",
        &url,
        "--sub",
        "alice",
        "--username",
        "alice",
    ]));
    // A token of the right shape and checksum whose session is gone: refused by the store
    // lookup, not by the shape check.
    let revoked = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--redis-url",
        &url,
        "--sub",
        "bob",
    ]));
    let out = gatehouse_cli(&["session", "revoke", "--redis-url", &url, "--sub", "bob"]);
    assert!(out.status.success(), "{out:?}");
    Stack {
        _redis: redis,
        gatehouse,
        app,
        nginx,
        token,
        revoked,
    }
}

/// Sends `head` (the request line and headers, CRLF-separated, without the final blank
/// line) and returns the status code, or 0 when the server closed without answering.
fn raw(addr: SocketAddr, head: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = head.to_vec();
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(&req);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn head(path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut h = format!("GET {path} HTTP/1.1\r\nHost: app.example.test").into_bytes();
    for (name, value) in headers {
        h.extend_from_slice(b"\r\n");
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(value);
    }
    h
}

/// The bad requests, each with the credential of a valid session somewhere in it or not:
/// none may be answered 200.
fn bad_requests(token: &str, revoked: &str) -> Vec<(&'static str, Vec<u8>)> {
    let cookie = format!("gatehouse_session={token}");
    let bearer = format!("Bearer {token}");
    let many_cookies: String = (0..300).map(|i| format!("c{i}=v{i}; ")).collect();
    vec![
        ("no credential", head("/", &[])),
        (
            "two Authorization headers",
            head(
                "/",
                &[
                    ("Authorization", bearer.as_bytes()),
                    ("Authorization", b"Bearer x"),
                ],
            ),
        ),
        (
            "Basic scheme",
            head("/", &[("Authorization", b"Basic YWxpY2U6cGFzcw==")]),
        ),
        (
            "bearer with NUL escape",
            head(
                "/",
                &[("Authorization", format!("Bearer {token}%00").as_bytes())],
            ),
        ),
        (
            "4 KiB cookie",
            head(
                "/",
                &[(
                    "Cookie",
                    format!("gatehouse_session={}", "A".repeat(4096)).as_bytes(),
                )],
            ),
        ),
        (
            "300 cookies, none ours",
            head("/", &[("Cookie", many_cookies.as_bytes())]),
        ),
        (
            "invalid UTF-8 cookie",
            head("/", &[("Cookie", b"gatehouse_session=\xff\xfe\xfd")]),
        ),
        (
            "oversized header",
            head("/", &[("X-Big", "b".repeat(40 * 1024).as_bytes())]),
        ),
        (
            "NUL in a header",
            head("/", &[("Cookie", format!("{cookie}\0x").as_bytes())]),
        ),
        (
            "bare CR in a header",
            head("/", &[("X-A", b"a\rb"), ("Cookie", cookie.as_bytes())]),
        ),
        (
            "token with a valid shape and a wrong checksum",
            head(
                "/",
                &[(
                    "Authorization",
                    format!("Bearer {}", flip(token)).as_bytes(),
                )],
            ),
        ),
        (
            "token of a revoked session, shape and checksum valid",
            head(
                "/",
                &[("Authorization", format!("Bearer {revoked}").as_bytes())],
            ),
        ),
        (
            "cookie of a revoked session",
            head(
                "/",
                &[("Cookie", format!("gatehouse_session={revoked}").as_bytes())],
            ),
        ),
        (
            "identity sent by the client, no credential",
            head(
                "/",
                &[
                    ("X-Auth-Request-User", b"admin"),
                    ("X_Auth_Request_User", b"admin"),
                ],
            ),
        ),
    ]
}

/// The token with one body character changed: its checksum no longer matches.
fn flip(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    b[10] = if b[10] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[test]
fn bad_requests_are_never_allowed_directly_or_through_nginx() {
    let s = stack();
    for (what, req) in bad_requests(&s.token, &s.revoked) {
        // Straight to /auth: a refusal (or the HTTP layer's 400/431 for malformed HTTP).
        let direct = raw(s.gatehouse.addr(), &replace_path(&req, "/auth"));
        assert!(
            [400, 401, 403, 431].contains(&direct),
            "{what}: gatehouse answered {direct}"
        );
        // Through nginx: refused or redirected to login, and the upstream never sees it.
        let marker = format!("/bad-{}", what.replace(' ', "-"));
        let through = raw(s.nginx.addr(), &replace_path(&req, &marker));
        // A browser's refusal is the login redirect, an API client's the 401 itself,
        // malformed HTTP nginx's own 400.
        assert!(
            [302, 400, 401, 403].contains(&through),
            "{what}: nginx answered {through}"
        );
        assert!(
            !s.app.requests().iter().any(|r| r.contains(&marker)),
            "{what}: reached the upstream"
        );
    }
    // gatehouse is still there and still answers the valid session.
    let r = http_get(
        s.gatehouse.addr(),
        "/auth",
        &[("Authorization", &format!("Bearer {}", s.token))],
    );
    assert_eq!(r.status, 200);
}

/// The store reads gatehouse has counted (`store_requests_total{op="get"}`, both results).
fn store_gets(gh: &Gatehouse) -> u64 {
    http_get(gh.admin_addr(), "/metrics", &[])
        .body
        .lines()
        .filter(|l| l.starts_with("gatehouse_store_requests_total{") && l.contains("op=\"get\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Issue 17, 4: a token with a valid shape and a wrong checksum is refused before any cache
/// or store work, end to end; a revoked one of the right checksum costs one store read.
#[test]
fn a_wrong_checksum_is_refused_before_any_store_call() {
    let s = stack();
    let before = store_gets(&s.gatehouse);
    for i in 0..50 {
        let mut t = flip(&s.token).into_bytes();
        t[12] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxy"[i];
        let t = String::from_utf8(t).unwrap();
        assert_eq!(t.len(), s.token.len(), "the shape is kept");
        let r = http_get(
            s.gatehouse.addr(),
            "/auth",
            &[("Authorization", &format!("Bearer {t}"))],
        );
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        store_gets(&s.gatehouse),
        before,
        "a bad checksum reached the store"
    );
    let r = http_get(
        s.gatehouse.addr(),
        "/auth",
        &[("Authorization", &format!("Bearer {}", s.revoked))],
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        store_gets(&s.gatehouse),
        before + 1,
        "a revoked token is looked up"
    );
}

fn replace_path(head: &[u8], path: &str) -> Vec<u8> {
    let rest = &head[b"GET / ".len()..];
    let mut h = format!("GET {path} ").into_bytes();
    h.extend_from_slice(rest);
    h
}

#[test]
fn identity_headers_reach_the_upstream_only_from_gatehouse() {
    let s = stack();
    let cookie = format!("gatehouse_session={}", s.token);
    for (i, spoof) in [
        vec![("X-Auth-Request-User", &b"admin"[..])],
        vec![("X_Auth_Request_User", &b"admin"[..])],
        vec![
            ("x-auth-request-user", &b"admin"[..]),
            ("X-Auth-Request-Email", &b"admin@evil"[..]),
        ],
        vec![("Connection", &b"x-auth-request-user"[..])],
        vec![
            ("X-Auth-Request-User", &b"admin"[..]),
            ("X-Auth-Request-User", &b"root"[..]),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let mut headers = spoof.clone();
        headers.push(("Cookie", cookie.as_bytes()));
        let path = format!("/spoof-{i}");
        let status = raw(s.nginx.addr(), &head(&path, &headers));
        assert_eq!(status, 200, "spoof {i}");
        let seen = s
            .app
            .requests()
            .into_iter()
            .find(|r| r.contains(&path))
            .expect("the upstream saw the request");
        let users: Vec<_> = parse_head_headers(&seen)
            .into_iter()
            .filter(|(n, _)| {
                n.eq_ignore_ascii_case("x-auth-request-user")
                    || n.eq_ignore_ascii_case("x_auth_request_user")
            })
            .map(|(_, v)| v)
            .collect();
        assert_eq!(users, ["alice"], "spoof {i}: the upstream saw {seen}");
        assert!(
            !seen.contains("admin@evil") && !seen.contains("root"),
            "spoof {i}: {seen}"
        );
    }
}

#[test]
fn a_header_read_that_never_finishes_is_cut_off() {
    let s = stack();
    let mut conn = TcpStream::connect(s.gatehouse.addr()).unwrap();
    conn.write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let start = Instant::now();
    // Trickle a byte now and then, never finishing the header.
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(12) {
        if conn.write_all(b"a").is_err() {
            closed = true;
            break;
        }
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 512];
        match conn.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                // An answer (408) followed by the close is fine too.
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    println!(
        "slow header cut off after {:?} (--header-timeout 1s)",
        start.elapsed()
    );
    assert!(
        closed,
        "a connection trickling its header was kept open for 12 s"
    );
    // Others are still served.
    let r = http_get(
        s.gatehouse.addr(),
        "/auth",
        &[("Authorization", &format!("Bearer {}", s.token))],
    );
    assert_eq!(r.status, 200);
}

/// A flood of connections is shed at `--max-connections`: beyond it, a new connection is
/// closed at once (no answer, nothing held), those already open keep working, and a freed
/// slot serves again.
#[test]
fn connections_beyond_the_limit_are_closed_and_the_rest_keep_working() {
    let dir = TempDir::new("limit");
    let gh = Gatehouse::spawn(&args(&[
        "--data-dir",
        &dir.join("data"),
        "--max-connections",
        "4",
    ]));
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let s = TcpStream::connect(gh.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    // The four are served (keep-alive), so they are surely accepted and counted.
    for s in &mut held {
        s.write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 401"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // The fifth is closed without an answer.
    assert_eq!(
        raw(gh.addr(), b"GET /auth HTTP/1.1\r\nHost: x"),
        0,
        "{}",
        gh.logs()
    );
    assert!(
        gh.wait_for_log("connection limit reached", Duration::from_secs(5)),
        "{}",
        gh.logs()
    );
    // One slot freed: served again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match raw(gh.addr(), b"GET /auth HTTP/1.1\r\nHost: x") {
            401 => break,
            0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("after a slot was freed: {other}\n{}", gh.logs()),
        }
    }
    // The ones held all along still work.
    for s in &mut held {
        s.write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 401"));
    }
}
