//! `--compat arxiv` end to end against real `redis-server`, standalone and a 3-master
//! Cluster (arXiv runs one). The records are built here from the format docs/architecture.md describes:
//! an HS256 `ARXIVNG_SESSION_ID` cookie (`user_id`, `session_id`, `nonce`, `expires`) and an
//! HS256 session record stored at the key `session_id`.

use crate::support::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "arxiv-secret"; // arXiv's own secret: short, and must still be accepted
const COOKIE: &str = "ARXIVNG_SESSION_ID";

fn sign(claims: &Value, secret: &str) -> String {
    encode(
        &Header::default(), // HS256
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An ISO 8601 time `offset` seconds from now, as Python's `isoformat()` writes it.
fn iso(offset: i64) -> String {
    let t = gatehouse::session::unix_now() as i64 + offset;
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.123456+00:00",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// One arXiv session: the stored record and the cookie that points at it.
struct ArxivSession {
    session_id: String,
    record: Value,
    cookie: Value,
}

impl ArxivSession {
    fn new(n: u32) -> ArxivSession {
        let session_id = format!("arxiv-session-{n}-{}", std::process::id());
        let record = json!({
            "session_id": session_id,
            "start_time": iso(-60),
            "end_time": iso(3600),
            "nonce": "n0nce-1",
            "user": {"user_id": "1234", "username": "jdoe", "email": "jdoe@example.org",
                     "name": {"forename": "Jane", "surname": "Doe"}},
            "authorizations": {"scopes": [
                "public:read",
                {"domain": "submission", "action": "create"},
                {"domain": "submission", "action": "read", "resource": "42"}
            ]},
            "ip_address": "127.0.0.1",
        });
        let cookie = json!({
            "user_id": "1234",
            "session_id": session_id,
            "nonce": "n0nce-1",
            "expires": iso(3600),
        });
        ArxivSession {
            session_id,
            record,
            cookie,
        }
    }

    /// Writes the record (signed with `secret`) into the store; returns it as stored.
    fn store(&self, store: &dyn Store, secret: &str) -> String {
        let jwt = sign(&self.record, secret);
        assert_eq!(store.command(&["SET", &self.session_id, &jwt]), "OK");
        jwt
    }

    fn cookie_header(&self, secret: &str) -> String {
        format!("_ga=GA1.2; {COOKIE}={}", sign(&self.cookie, secret))
    }
}

fn serve(store: &dyn Store) -> Gatehouse {
    Gatehouse::spawn(&args(&[
        "--redis-url",
        &store.url(),
        "--compat",
        "arxiv",
        "--jwt-secret",
        SECRET,
    ]))
}

fn auth(gh: &Gatehouse, headers: &[(&str, &str)]) -> Response {
    http_get(gh.addr(), "/auth", headers)
}

fn assert_allowed(r: &Response, stored: &str, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    // Verbatim, with no `Bearer` prefix: arXiv's services decode it themselves.
    assert_eq!(r.header("authorization"), Some(stored), "{what}");
    assert_eq!(r.header("x-auth-request-user"), Some("jdoe"), "{what}");
    assert_eq!(
        r.header("x-auth-request-email"),
        Some("jdoe@example.org"),
        "{what}"
    );
}

fn allow_and_refuse(store: &dyn Store) {
    let kind = store.kind();
    let gh = serve(store);
    let s = ArxivSession::new(1);
    let stored = s.store(store, SECRET);

    let r = auth(&gh, &[("Cookie", &s.cookie_header(SECRET))]);
    assert_allowed(&r, &stored, &format!("{kind}: cookie"));
    // A bearer token is the key of a record.
    let bearer = format!("Bearer {}", s.session_id);
    let r = auth(&gh, &[("Authorization", &bearer)]);
    assert_allowed(&r, &stored, &format!("{kind}: bearer"));

    // No credential: anonymous 200, as arXiv's authenticator answered, with no identity.
    let r = auth(&gh, &[]);
    assert_eq!(r.status, 200, "{kind}: anonymous");
    for h in [
        "authorization",
        "x-auth-request-user",
        "x-auth-request-email",
    ] {
        assert_eq!(r.header(h), None, "{kind}: anonymous answer has no {h}");
    }

    // Every way the cookie and its record can disagree or be forged: 401.
    let mut refusals: Vec<(&str, String)> = Vec::new();
    let tweak = |f: &dyn Fn(&mut Value)| {
        let mut c = s.cookie.clone();
        f(&mut c);
        format!("{COOKIE}={}", sign(&c, SECRET))
    };
    refusals.push(("nonce mismatch", tweak(&|c| c["nonce"] = json!("other"))));
    refusals.push(("user_id mismatch", tweak(&|c| c["user_id"] = json!("999"))));
    refusals.push(("cookie expired", tweak(&|c| c["expires"] = json!(iso(-1)))));
    refusals.push((
        "cookie without expires",
        tweak(&|c| c["expires"] = json!(null)),
    ));
    for never in ["NaN", "inf", "Infinity", "-inf", "1e999"] {
        refusals.push((
            "cookie expires NaN/inf",
            tweak(&|c| c["expires"] = json!(never)),
        ));
    }
    refusals.push((
        "unknown session",
        tweak(&|c| c["session_id"] = json!("no-such-session")),
    ));
    refusals.push((
        "cookie signed with another secret",
        s.cookie_header("not-arxivs-secret"),
    ));
    refusals.push(("garbage cookie", format!("{COOKIE}=not.a.jwt")));
    refusals.push((
        "unsigned cookie (alg none)",
        format!(
            "{COOKIE}=eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            base64_url(&s.cookie.to_string())
        ),
    ));
    for (what, cookie) in &refusals {
        let r = auth(&gh, &[("Cookie", cookie)]);
        assert_eq!(r.status, 401, "{kind}: {what} must be refused: {}", r.body);
        assert_eq!(r.header("authorization"), None, "{kind}: {what}");
        assert_eq!(r.header("x-auth-request-user"), None, "{kind}: {what}");
    }
    for (what, header) in [
        ("unknown bearer", "Bearer no-such-key".to_string()),
        ("Basic scheme", "Basic dXNlcjpwYXNz".to_string()),
        ("oversized bearer", format!("Bearer {}", "k".repeat(5000))),
    ] {
        let r = auth(&gh, &[("Authorization", &header)]);
        assert_eq!(r.status, 401, "{kind}: {what}: {}", r.body);
    }

    // Records that are themselves bad: expired, signed with another secret, not a JWT.
    let mut expired = ArxivSession::new(2);
    expired.record["end_time"] = json!(iso(-5));
    expired.store(store, SECRET);
    let forged = ArxivSession::new(3);
    forged.store(store, "not-arxivs-secret");
    let junk = ArxivSession::new(4);
    store.command(&["SET", &junk.session_id, "{\"user\": \"admin\"}"]);
    // Non-finite end times parse as numbers; they must read as no end time at all.
    let mut endless = ArxivSession::new(6);
    endless.record["end_time"] = json!("NaN");
    endless.store(store, SECRET);
    let mut infinite = ArxivSession::new(7);
    infinite.record["end_time"] = json!("inf");
    infinite.store(store, SECRET);
    for (what, sess) in [
        ("record end_time NaN", &endless),
        ("record end_time inf", &infinite),
        ("expired record", &expired),
        ("forged record", &forged),
        ("record not a JWT", &junk),
    ] {
        let r = auth(&gh, &[("Cookie", &sess.cookie_header(SECRET))]);
        assert_eq!(r.status, 401, "{kind}: {what} (cookie): {}", r.body);
        let r = auth(
            &gh,
            &[("Authorization", &format!("Bearer {}", sess.session_id))],
        );
        assert_eq!(r.status, 401, "{kind}: {what} (bearer): {}", r.body);
    }

    // Numeric times (Unix seconds) are read too.
    let mut numeric = ArxivSession::new(5);
    let now = gatehouse::session::unix_now();
    numeric.record["end_time"] = json!(now + 600);
    numeric.record["start_time"] = json!(now - 1);
    numeric.cookie["expires"] = json!(now + 600);
    let stored_numeric = numeric.store(store, SECRET);
    let r = auth(&gh, &[("Cookie", &numeric.cookie_header(SECRET))]);
    assert_allowed(&r, &stored_numeric, &format!("{kind}: numeric times"));

    // arXiv logs out by deleting the record, with no broadcast: the very next request is
    // refused, because compat mode reads the record every time.
    let r = auth(&gh, &[("Cookie", &s.cookie_header(SECRET))]);
    assert_eq!(r.status, 200);
    assert_eq!(store.command(&["DEL", &s.session_id]), "1");
    let r = auth(&gh, &[("Cookie", &s.cookie_header(SECRET))]);
    assert_eq!(
        r.status, 401,
        "{kind}: deleted record must be refused at once"
    );
    let r = auth(&gh, &[("Authorization", &bearer)]);
    assert_eq!(r.status, 401, "{kind}: deleted record (bearer)");
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn standalone_cookie_bearer_anonymous_and_refusals() {
    allow_and_refuse(&RedisServer::start());
}

#[test]
fn cluster_cookie_bearer_anonymous_and_refusals() {
    allow_and_refuse(&RedisCluster::start());
}

/// The original failed open when Redis was down; gatehouse answers 503, and recovers.
#[test]
fn store_down_is_503_never_200_and_recovers() {
    let mut redis = RedisServer::start();
    let gh = serve(&redis);
    let s = ArxivSession::new(6);
    let stored = s.store(&redis, SECRET);
    let cookie = s.cookie_header(SECRET);
    assert_allowed(&auth(&gh, &[("Cookie", &cookie)]), &stored, "before");

    redis.kill();
    for (what, headers) in [
        ("cookie", vec![("Cookie", cookie.as_str())]),
        ("bearer", vec![("Authorization", "Bearer some-key")]),
    ] {
        let r = auth(&gh, &headers);
        assert_eq!(r.status, 503, "{what} with Redis down: {}", r.body);
        assert_eq!(r.header("authorization"), None);
    }
    assert_eq!(http_get(gh.admin_addr(), "/readyz", &[]).status, 503);

    redis.restart();
    let stored = s.store(&redis, SECRET);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = auth(&gh, &[("Cookie", &cookie)]);
        if r.status == 200 {
            assert_allowed(&r, &stored, "after Redis returned");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn compat_needs_redis_and_the_secret() {
    let data = TempDir::new("arxiv-config");
    let out = gatehouse_cli(&[
        "serve",
        "--compat",
        "arxiv",
        "--jwt-secret",
        SECRET,
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--compat"), "{err}");

    let out = gatehouse_cli(&[
        "serve",
        "--compat",
        "arxiv",
        "--redis-url",
        "redis://127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--jwt-secret"), "{err}");
}
