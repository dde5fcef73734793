//! The in-process tier: the real server (`server::serve`) started from the test on listeners
//! bound to port 0, its gateway built from flags exactly as `gatehouse serve` builds it, on
//! the embedded store, and driven over HTTP as a client would. No subprocess, so the test
//! can also look inside: at the cache entry a request left, at the store, at the sessions
//! API that the modules will use.
//!
//! Timing rules are checked without sleeping: a cache entry's lifetime is computed when it
//! is filled (and read back here), and idle and last-seen are decided from the session's
//! stored times, which the test writes in the past.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{http_get, split_responses, TempDir};
use bytes::Bytes;
use clap::Parser;
use gatehouse::auth::Gateway;
use gatehouse::cache::CacheKey;
use gatehouse::config::{Cli, Command};
use gatehouse::credential::{Method, TokenHash};
use gatehouse::server::{ModuleBody, Modules};
use gatehouse::session::{unix_now, Session, SessionKind};
use gatehouse::sessions::Sessions;
use gatehouse::store::SessionStore;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

struct InProcess {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

impl InProcess {
    /// `gatehouse serve <flags>` in this process, on the embedded store in a temp dir.
    async fn start(flags: &[&str], modules: Option<Arc<dyn Modules>>) -> InProcess {
        let dir = TempDir::new("in-process");
        let data = dir.join("data");
        let mut argv = vec!["gatehouse", "serve", "--data-dir", &data];
        argv.extend_from_slice(flags);
        let Command::Serve(args) = Cli::parse_from(argv).command else {
            unreachable!()
        };
        let gateway = gatehouse::build_gateway(&args).await.expect("gateway");
        let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = main.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gatehouse::server::serve(
            main,
            admin,
            gateway.clone(),
            modules,
            gatehouse::server_settings(&args),
            async {
                let _ = stopped.await;
            },
        ));
        // The embedded store's revocation log is followed at once; until then nothing caches.
        for _ in 0..500 {
            if gateway.cache.is_following() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gateway.cache.is_following());
        InProcess {
            addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// GET `path` with `headers`, over a real connection.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> crate::support::Response {
        let (addr, path) = (self.addr, path.to_string());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http_get(addr, &path, &h)
        })
        .await
        .unwrap()
    }

    async fn auth(&self, token: &str) -> u16 {
        self.get("/auth", &[("Authorization", &format!("Bearer {token}"))])
            .await
            .status
    }

    async fn issue(&self, session: &Session) -> String {
        let issued = self.gateway.sessions().issue(session).await.unwrap();
        issued.token.expose().clone()
    }

    /// How long the entry that a bearer request for `token` left in the cache may live.
    async fn cached_ttl(&self, token: &str) -> Duration {
        let key = CacheKey {
            hash: TokenHash::of(token),
            method: Method::Bearer,
        };
        self.gateway.cache.get(&key).await.expect("cached").ttl
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// A module router that answers every path it is given, and counts.
struct Echo(AtomicUsize);

impl Modules for Echo {
    fn call(
        &self,
        request: Request<Incoming>,
        _peer: std::net::IpAddr,
    ) -> Pin<Box<dyn std::future::Future<Output = Response<ModuleBody>> + Send>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let body = format!("module:{}", request.uri().path());
        Box::pin(async move {
            Response::new(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modules_get_every_path_but_the_hot_ones() {
    let modules = Arc::new(Echo(AtomicUsize::new(0)));
    let gh = InProcess::start(&[], Some(modules.clone())).await;
    let token = gh
        .issue(&Sessions::draft("u1", Duration::from_secs(600)))
        .await;
    assert_eq!(gh.auth(&token).await, 200);
    assert_eq!(gh.get("/auth", &[]).await.status, 401);
    assert_eq!(gh.get("/auth/redirect", &[]).await.status, 401);
    let jwks = gh.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(jwks.status, 200);
    assert!(jwks.body.contains("\"keys\""), "{}", jwks.body);
    assert_eq!(
        modules.0.load(Ordering::SeqCst),
        0,
        "the hot paths never reach the modules"
    );
    for path in [
        "/login",
        "/auth/x",
        "/",
        "/.well-known/oauth-authorization-server",
    ] {
        let r = gh.get(path, &[]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, format!("module:{path}").as_str())
        );
    }
    assert_eq!(modules.0.load(Ordering::SeqCst), 4);
    gh.stop().await;

    // Without modules, the rest is 404.
    let gh = InProcess::start(&[], None).await;
    assert_eq!(gh.get("/login", &[]).await.status, 404);
    gh.stop().await;
}

/// A cache entry lives until the earliest of: 4/5 of the JWT's life (so the upstream always
/// gets a JWT with a fifth of its life left), the session's end, `--cache-ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_entry_lives_until_the_earliest_of_refresh_session_end_and_cache_ttl() {
    let gh = InProcess::start(&["--jwt-ttl", "100s", "--cache-ttl", "600s"], None).await;
    let long = gh
        .issue(&Sessions::draft("u1", Duration::from_secs(3600)))
        .await;
    assert_eq!(gh.auth(&long).await, 200);
    assert_eq!(
        gh.cached_ttl(&long).await,
        Duration::from_secs(80),
        "4/5 of --jwt-ttl"
    );
    let short = gh
        .issue(&Sessions::draft("u2", Duration::from_secs(30)))
        .await;
    assert_eq!(gh.auth(&short).await, 200);
    let ttl = gh.cached_ttl(&short).await;
    assert!(
        ttl <= Duration::from_secs(30) && ttl >= Duration::from_secs(25),
        "the session's end: {ttl:?}"
    );
    gh.stop().await;

    let gh = InProcess::start(&["--cache-ttl", "10s"], None).await;
    let token = gh
        .issue(&Sessions::draft("u3", Duration::from_secs(3600)))
        .await;
    assert_eq!(gh.auth(&token).await, 200);
    assert_eq!(
        gh.cached_ttl(&token).await,
        Duration::from_secs(10),
        "--cache-ttl"
    );
    gh.stop().await;
}

/// `--session-idle` ends a session unused for that long; a session in use has its
/// `last_seen` written, off the request path, at most once per `--touch-interval`; and the
/// cache never holds a session past its idle end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_end_and_last_seen_is_written_off_the_request_path() {
    let gh = InProcess::start(
        &[
            "--session-idle",
            "1h",
            "--touch-interval",
            "5m",
            "--cache-ttl",
            "60s",
        ],
        None,
    )
    .await;
    let now = unix_now();
    let seen = |ago: u64| Session {
        last_seen: Some(now - ago),
        ..Sessions::draft("idle", Duration::from_secs(86_400))
    };
    let idle = gh.issue(&seen(7200)).await;
    assert_eq!(
        gh.auth(&idle).await,
        401,
        "unused for 2 h with --session-idle 1h"
    );

    let used = gh.issue(&seen(55 * 60)).await;
    assert_eq!(gh.auth(&used).await, 200, "unused for 55 min");
    let ttl = gh.cached_ttl(&used).await;
    assert!(
        ttl <= Duration::from_secs(5 * 60),
        "cached past its idle end: {ttl:?}"
    );
    // Its last_seen is written in the background (it was 55 min old, over --touch-interval).
    let hash = TokenHash::of(&used);
    let mut written = None;
    for _ in 0..300 {
        let s = gh.gateway.store.get(&hash).await.unwrap().unwrap();
        if s.last_seen.is_some_and(|t| t >= now) {
            written = s.last_seen;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(written.is_some(), "last_seen never written");

    // Seen a minute ago: within --touch-interval, nothing is written.
    let fresh = gh.issue(&seen(60)).await;
    assert_eq!(gh.auth(&fresh).await, 200);
    // A marker that is written (56 min old): the one background writer takes the queue in
    // order, so once the marker's write is in, a write for `fresh` would be in too.
    let marker = gh.issue(&seen(56 * 60)).await;
    assert_eq!(gh.auth(&marker).await, 200);
    let marker_hash = TokenHash::of(&marker);
    let mut marker_written = false;
    for _ in 0..300 {
        let s = gh.gateway.store.get(&marker_hash).await.unwrap().unwrap();
        if s.last_seen.is_some_and(|t| t >= now) {
            marker_written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(marker_written, "the marker's last_seen never written");
    let s = gh
        .gateway
        .store
        .get(&TokenHash::of(&fresh))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.last_seen, Some(now - 60));
    // Two writes, counted once each returned (the count follows the write by a moment).
    let two = "gatehouse_store_requests_total{op=\"touch\",result=\"ok\"} 2";
    let mut metrics = gh.gateway.metrics.encode();
    for _ in 0..300 {
        if metrics.contains(two) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        metrics = gh.gateway.metrics.encode();
    }
    assert!(metrics.contains(two), "{metrics}");
    gh.stop().await;
}

/// The sessions API, as `accounts` and `registry` will use it: kinds and prefixes, listing
/// by `sid`, revocations that reach this instance's cache before they return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_api_issues_lists_and_revokes() {
    let gh = InProcess::start(&["--cache-ttl", "300s"], None).await;
    let sessions = gh.gateway.sessions();
    let mut tokens = Vec::new();
    for (kind, prefix) in [
        (SessionKind::User, "gts_"),
        (SessionKind::Client, "gtc_"),
        (SessionKind::Personal, "gtp_"),
    ] {
        let issued = sessions
            .issue(&Session {
                kind,
                ..Sessions::draft("alice", Duration::from_secs(600))
            })
            .await
            .unwrap();
        assert!(issued.token.expose().starts_with(prefix), "{kind:?}");
        assert!(
            !format!("{issued:?}").contains(issued.token.expose()),
            "Debug shows the token"
        );
        tokens.push((issued.token.expose().clone(), issued.sid));
    }
    for (token, _) in &tokens {
        assert_eq!(gh.auth(token).await, 200);
    }
    let listed = sessions.list("alice").await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(tokens
        .iter()
        .all(|(_, sid)| listed.iter().any(|l| &l.sid == sid)));

    // Revoked through the API: refused by the very next request, although the embedded
    // store's revocation log is polled only every 250 ms and the entry is cached for 300 s.
    let (first, first_sid) = &tokens[0];
    assert!(sessions.revoke(first).await.unwrap());
    assert_eq!(gh.auth(first).await, 401);
    assert!(!sessions.revoke(first).await.unwrap(), "already gone");

    // By sid: only the owner's sid counts.
    let (second, second_sid) = &tokens[1];
    assert!(!sessions.revoke_sid("mallory", second_sid).await.unwrap());
    assert_eq!(gh.auth(second).await, 200);
    assert!(!sessions.revoke_sid("alice", first_sid).await.unwrap());

    // Log out the others, keep this one.
    let (third, _) = &tokens[2];
    assert_eq!(sessions.revoke_user("alice", Some(third)).await.unwrap(), 1);
    assert_eq!(gh.auth(second).await, 401);
    assert_eq!(gh.auth(third).await, 200);
    assert!(sessions.revoke("not-a-token").await.is_err());
    assert_eq!(
        sessions.revoke("not-a-token").await.unwrap_err().fault(),
        gatehouse::error::Fault::Caller
    );

    gh.stop().await;
}

/// Writes `requests` at once on one connection and reads until the server closes it.
async fn converse(addr: SocketAddr, requests: String) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(requests.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .expect("the server closes the connection");
        raw
    })
    .await
    .unwrap()
}

/// The headers of a response but `date`, sorted, to compare two answers.
fn headers_but_date(r: &crate::support::Response) -> Vec<(String, String)> {
    let mut h: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    h.sort();
    h
}

/// The lean path (`server/lean.rs`) answers bodiless `GET /auth` on keep-alive connections;
/// the first request it does not take hands the connection, bytes already read included,
/// to hyper. Pipelined in one write, every request is answered, in order, and the lean
/// path's answers are hyper's, byte for byte but the date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_by_the_lean_path_then_by_hyper() {
    let gh = InProcess::start(&[], None).await;
    let token = gh
        .issue(&Sessions::draft("u1", Duration::from_secs(600)))
        .await;
    let auth = |extra: &str| format!("GET /auth HTTP/1.1\r\nHost: gatehouse\r\n{extra}\r\n");
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let requests = [
        auth(&bearer), // lean
        auth(""),      // lean
        // A body: hyper's from here on, and the body is read as a body, not a request.
        auth("Content-Length: 28\r\n") + "GET /auth HTTP/1.1\r\nX: y\r\n",
        auth(&bearer),
        "GET /.well-known/jwks.json HTTP/1.1\r\nHost: gatehouse\r\n\r\n".into(),
        auth("Transfer-Encoding: chunked\r\n") + "3\r\nabc\r\n0\r\n\r\n",
        auth("Connection: close\r\n"),
    ]
    .concat();
    let raw = converse(gh.addr, requests).await;
    let answers = split_responses(&raw).unwrap();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 401, 200, 200, 401, 401]);
    assert_eq!(headers_but_date(&answers[0]), headers_but_date(&answers[3]));
    assert_eq!(headers_but_date(&answers[1]), headers_but_date(&answers[2]));
    assert_eq!(answers[1].body, answers[2].body);
    assert!(answers[0].header("authorization").is_some());
    assert!(answers[0].header("date").is_some() && answers[1].header("date").is_some());
    gh.stop().await;
}

/// What the lean path does not take gets hyper's answer, as before the lean path existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_lean_path_leaves_get_hyper_s_answers() {
    let gh = InProcess::start(&[], None).await;
    let big = "a".repeat(40 * 1024);
    for (request, status_line) in [
        ("GET /auth HTTP/1.0\r\n\r\n".to_string(), "HTTP/1.0 401"),
        (
            "GET /auth HTTP/1.1\r\nBad Name: x\r\n\r\n".into(),
            "HTTP/1.1 400",
        ),
        (
            "GET /auth HTTP/1.1\r\nX: a\r\n folded\r\n\r\n".into(),
            "HTTP/1.1 400",
        ),
        (
            format!("GET /auth HTTP/1.1\r\nX-Big: {big}\r\n\r\n"),
            "HTTP/1.1 431",
        ),
        (
            "HEAD /auth HTTP/1.1\r\nConnection: close\r\n\r\n".into(),
            "HTTP/1.1 401",
        ),
        (
            "GET /auth?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n".into(),
            "HTTP/1.1 401",
        ),
    ] {
        let raw = converse(gh.addr, request.clone()).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with(status_line),
            "{:.60}: {text}",
            request.escape_debug()
        );
        if request.starts_with("HEAD") {
            assert!(text.ends_with("\r\n\r\n"), "no body for HEAD: {text}");
        }
    }
    gh.stop().await;
}

/// `--header-timeout` holds on the lean path as on hyper's: a connection that stalls in a
/// request head, or stays idle after an answer, is closed; one that keeps asking, with
/// pauses shorter than the timeout, stays open however long it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_closes_stalled_and_idle_connections_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gh = InProcess::start(&["--header-timeout", "1s"], None).await;
    let closes = |mut stream: tokio::net::TcpStream| async move {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest));
        read.await.expect("closed by the server").unwrap();
    };
    let request = b"GET /auth HTTP/1.1\r\nHost: gatehouse\r\n\r\n";

    let mut stalled = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    stalled.write_all(&request[..20]).await.unwrap();
    closes(stalled).await;

    let mut idle = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    idle.write_all(request).await.unwrap();
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    closes(idle).await;

    // Busy for three timeouts, with pauses of a tenth of one.
    let mut busy = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        busy.write_all(request).await.unwrap();
        let n = busy.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed while in use");
        assert!(buf[..n].starts_with(b"HTTP/1.1 401"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gh.stop().await;
}

/// At shutdown a keep-alive connection on the lean path is closed once idle, so the drain
/// ends instead of waiting for `--shutdown-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_lean_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gh = InProcess::start(&["--shutdown-timeout", "60s"], None).await;
    let mut conn = tokio::net::TcpStream::connect(gh.addr).await.unwrap();
    conn.write_all(b"GET /auth HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    conn.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    tokio::time::timeout(Duration::from_secs(30), gh.stop())
        .await
        .expect("the drain ends before --shutdown-timeout");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
}
