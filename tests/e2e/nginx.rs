//! The whole stack as users run it: real nginx with the shipped `nginx/` snippets, gatehouse,
//! redis-server, and an upstream that echoes what it receives.

use crate::support::*;

struct Stack {
    _redis: RedisServer,
    url: String,
    gatehouse: Gatehouse,
    app: EchoServer,
    nginx: Nginx,
}

fn stack() -> Stack {
    let redis = RedisServer::start();
    let url = redis.url();
    let gatehouse = Gatehouse::spawn(&args(&["--redis-url", &url]));
    let app = EchoServer::start();
    let nginx = protected_site(gatehouse.addr().port(), app.port());
    Stack {
        _redis: redis,
        url,
        gatehouse,
        app,
        nginx,
    }
}

/// The request head the upstream received for the request whose path was `path`.
fn received(s: &Stack, path: &str) -> String {
    s.app
        .requests()
        .into_iter()
        .find(|r| r.lines().next().is_some_and(|l| l.contains(path)))
        .unwrap_or_else(|| {
            panic!(
                "the upstream never saw {path}; it saw {:?}",
                s.app.requests()
            )
        })
}

fn header_lines<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// Identity headers of the peers that gatehouse replaces; the shipped snippet clears them.
const PEER_IDENTITY_HEADERS: [&str; 10] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-jwt",
    "remote-user",
    "remote-email",
    "remote-name",
    "remote-groups",
];

#[test]
fn upstream_receives_the_jwt_and_only_gatehouse_identity() {
    let s = stack();
    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--redis-url",
        &s.url,
        "--sub",
        "u7",
        "--username",
        "alice",
        "--email",
        "alice@example.org",
    ]));
    let cookie = format!("gatehouse_session={token}");
    let r = http_get(
        s.nginx.addr(),
        "/app/one",
        &[
            ("Cookie", &cookie),
            ("X-Auth-Request-User", "mallory"),
            ("X_Auth_Request_User", "mallory"),
            ("X-Auth-Request-Email", "mallory@evil.test"),
            // The names oauth2-proxy, Authelia and others use: an upstream moved over
            // from one of them may still believe these.
            ("X-Forwarded-User", "mallory"),
            ("X-Forwarded-Email", "mallory@evil.test"),
            ("X-Forwarded-Preferred-Username", "mallory"),
            ("X-Forwarded-Groups", "mallory-admins"),
            ("X-Forwarded-Access-Token", "mallory-token"),
            ("X-Auth-Jwt", "mallory.jwt"),
            ("Remote-User", "mallory"),
            ("Remote-Email", "mallory@evil.test"),
            ("Remote-Name", "mallory"),
            ("Remote-Groups", "mallory-admins"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", s.nginx.error_log());
    let head = received(&s, "/app/one");
    for name in PEER_IDENTITY_HEADERS {
        assert!(
            header_lines(&head, name).is_empty(),
            "a client-sent {name} reached the upstream:\n{head}"
        );
    }
    assert!(
        !head.contains("mallory"),
        "a client-sent identity reached the upstream:\n{head}"
    );
    assert_eq!(header_lines(&head, "x-auth-request-user"), vec!["alice"]);
    assert_eq!(
        header_lines(&head, "x-auth-request-email"),
        vec!["alice@example.org"]
    );
    let auth = header_lines(&head, "authorization");
    assert_eq!(auth.len(), 1, "{head}");
    let jwt = auth[0].strip_prefix("Bearer ").expect("a Bearer JWT");
    // It is the JWT gatehouse minted for this session (the same one a direct call returns,
    // from the cache).
    let direct = http_get(s.gatehouse.addr(), "/auth", &[("Cookie", &cookie)]);
    assert_eq!(direct.header("authorization"), Some(auth[0]));
    assert_eq!(
        jsonwebtoken::decode_header(jwt).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
}

/// One round of percent-decoding (the login page's reading of `rd`).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Issue 17, 1.10: a deep link comes back whole. gatehouse builds the login location (nginx
/// cannot encode `$request_uri`), so every byte of the query survives as `rd`: `&`, an
/// encoded `&`, `+`, an encoded `#`, a query holding `rd=` itself, and non-ASCII.
#[test]
fn deep_links_keep_their_whole_query_through_the_login_redirect() {
    let s = stack();
    for path in [
        "/dashboard?x=1&y=two",
        "/search?q=a%26b&sort=%2Bdate&frag=%23top&plus=a+b",
        "/r?rd=https://evil.example/&next=1",
        "/caf%C3%A9?name=Zo%C3%AB&raw=\u{e9}t\u{e9}",
    ] {
        let r = http_get(s.nginx.addr(), path, &[("Accept", "text/html")]);
        assert_eq!(r.status, 302, "{path}: {r:?}");
        let location = r.header("location").expect("Location");
        let rd = location
            .strip_prefix("https://login.example.test/login?rd=")
            .unwrap_or_else(|| panic!("{path}: {location}"));
        assert!(
            !rd.contains(['&', '?', '#', '+']),
            "{path}: rd not encoded: {rd}"
        );
        let back = String::from_utf8(percent_decode(rd)).unwrap();
        assert_eq!(
            back,
            format!("http://{}{path}", s.nginx.addr()),
            "{location}"
        );
    }
}

#[test]
fn no_credential_is_redirected_to_login_and_never_reaches_the_upstream() {
    let s = stack();
    let r = http_get(
        s.nginx.addr(),
        "/private/page?x=1",
        &[("X-Auth-Request-User", "mallory")],
    );
    assert_eq!(r.status, 302, "{r:?}");
    let location = r.header("location").expect("Location");
    assert!(
        location.starts_with("https://login.example.test/login?rd="),
        "{location}"
    );
    assert!(location.contains("%2Fprivate%2Fpage%3Fx%3D1"), "{location}");
    assert!(
        s.app.requests().is_empty(),
        "the upstream must not be reached: {:?}",
        s.app.requests()
    );

    // A bad bearer token is an API client: the 401 itself, not a redirect.
    let r = http_get(
        s.nginx.addr(),
        "/api",
        &[("Authorization", "Bearer gts_nonsense")],
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(s.app.requests().is_empty());
}

#[test]
fn revoked_session_is_refused_through_nginx() {
    let s = stack();
    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--redis-url",
        &s.url,
        "--sub",
        "u8",
    ]));
    let bearer = format!("Bearer {token}");
    assert_eq!(
        http_get(s.nginx.addr(), "/a", &[("Authorization", &bearer)]).status,
        200
    );
    cli_stdout(&gatehouse_cli_stdin(
        &["session", "revoke", "--redis-url", &s.url, "-"],
        &token,
    ));
    // The contract is 100 ms with Redis; 1 s is the margin of a noisy machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while http_get(s.nginx.addr(), "/b", &[("Authorization", &bearer)]).status != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "revocation never reached nginx's answers"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
