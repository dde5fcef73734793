//! Forward auth as users run it: real Traefik (`forwardAuth` middleware) and real Caddy
//! (`forward_auth` directive) in front of an upstream that echoes what it receives, asking
//! gatehouse's `/auth/redirect` — on the embedded store and on a real redis-server.
//!
//! Both proxies send the auth server the client's headers plus `X-Forwarded-Proto/-Host/-Uri`,
//! copy the named headers of a 2xx answer onto the upstream request, and hand any other answer
//! (401, or 302 to the login page) to the client as it is. The configurations below are the
//! README's "Deploy" snippets, with only the ports filled in.
//!
//! "Client-sent identity headers never reach the upstream" is checked as a CGI, WSGI or PHP
//! backend reads headers: `X_Auth_Request_User` and `X.Auth.Request.User` are
//! `HTTP_X_AUTH_REQUEST_USER` there, the same as `X-Auth-Request-User`, while both proxies
//! treat them as unrelated headers unless told otherwise.

use crate::support::proxy::{Caddy, Traefik};
use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

const LOGIN_URL: &str = "https://login.example.test/login";

/// Traefik's static configuration of the entry point, besides its `address`.
const TRAEFIK_ENTRY_POINT: &str = r#"
http:
  # Drop X_Auth_Request_User, X.Auth.Request.User…: CGI, WSGI and PHP read them as
  # X-Auth-Request-User (option new in Traefik 3.7.12).
  aliasHeadersStrategy: delete
"#;

/// Traefik's dynamic configuration (file provider).
const TRAEFIK_DYNAMIC: &str = r#"
http:
  middlewares:
    gatehouse:
      forwardAuth:
        address: "http://127.0.0.1:{{GATEHOUSE}}/auth/redirect"
        trustForwardHeader: false
        maxResponseBodySize: 65536
        authResponseHeaders:
          - Authorization
          - X-Auth-Request-User
          - X-Auth-Request-Email
          - X-Auth-Request-Amr
  routers:
    app:
      entryPoints: [web]
      rule: "PathPrefix(`/`)"
      middlewares: [gatehouse]
      service: app
  services:
    app:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{{APP}}"
"#;

/// Caddy's site block (Caddyfile). Plain `forward_auth … { copy_headers … }` is not enough:
/// for a header that gatehouse's 200 does not carry (no email), Caddy < 2.10 sets the literal
/// text `{http.reverse_proxy.header.X-Auth-Request-Email}` (caddyserver/caddy#6610), and
/// Caddy 2.10 up to the fix of GHSA-7r4p-vjf4-gxv4 passes the client's own value through.
/// Deleting the client's identity headers first, inside `route` so that it runs before
/// `forward_auth`, closes the second; the `@unset` pair removes the first. Caddy has no
/// equivalent of Traefik's `aliasHeadersStrategy`: the `*_*` and `*.*` deletions drop every
/// header with `_` or `.` in its name (as nginx drops `_` by default).
const CADDY_SITE: &str = r#"
http://127.0.0.1:{{PORT}} {
	route {
		# Only gatehouse's answer may set these: drop whatever the client sent,
		# and the X_Auth_Request_User-style aliases that CGI, WSGI and PHP read as them.
		request_header -X-Auth-Request-User
		request_header -X-Auth-Request-Email
		request_header -X-Auth-Request-Amr
		request_header -*_*
		request_header -*.*
		forward_auth 127.0.0.1:{{GATEHOUSE}} {
			uri /auth/redirect
			copy_headers Authorization X-Auth-Request-User X-Auth-Request-Email X-Auth-Request-Amr
		}
		# Caddy < 2.10 fills a header the answer lacked with its placeholder's name.
		@unset header_regexp X-Auth-Request-Email ^\{http\.reverse_proxy\.header\.
		request_header @unset -X-Auth-Request-Email
		@unsetamr header_regexp X-Auth-Request-Amr ^\{http\.reverse_proxy\.header\.
		request_header @unsetamr -X-Auth-Request-Amr
		reverse_proxy 127.0.0.1:{{APP}}
	}
}
"#;

#[test]
fn traefik_embedded_store() {
    check(Which::Traefik, StoreKind::Embedded);
}

#[test]
fn traefik_redis() {
    check(Which::Traefik, StoreKind::Redis);
}

#[test]
fn caddy_embedded_store() {
    check(Which::Caddy, StoreKind::Embedded);
}

#[test]
fn caddy_redis() {
    check(Which::Caddy, StoreKind::Redis);
}

#[test]
fn traefik_policy_decides_on_the_real_request() {
    policy(Which::Traefik, "auto");
    policy(Which::Traefik, "forwarded");
}

#[test]
fn caddy_policy_decides_on_the_real_request() {
    policy(Which::Caddy, "auto");
    policy(Which::Caddy, "forwarded");
}

const POLICY: &str = r#"
[[rule]]
path = "/admin"
scopes = ["admin"]

[[rule]]
path = "/public"
anonymous = true

[[rule]]
path = "/vault"
mfa = true
"#;

/// The audit's bypass, through the real proxies: both copy the client's own headers into the
/// auth request, so a client asking for `/admin/x` could add `X-Original-URI: /public/x`
/// (nginx's family) to have the `/public` rule decide. With `--original-request auto` such a
/// request carries two families and is refused; pinned to `forwarded`, only the proxy's own
/// `X-Forwarded-*` headers are read, and the real path decides.
fn policy(which: Which, mode: &str) {
    let dir = TempDir::new("policy");
    let path = dir.join("policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    let s = stack_with(
        which,
        StoreKind::Embedded,
        &args(&["--policy", &path, "--original-request", mode]),
    );
    let user = s.session(&["--sub", "u-user", "--scope", "read"]);
    let admin = s.session(&["--sub", "u-admin", "--scope", "admin"]);
    let user = format!("Bearer {user}");
    let admin = format!("Bearer {admin}");
    let ctx = || format!("[{mode}] {}", s.context());

    assert_eq!(s.get("/public/a", &[]).status, 200, "{}", ctx());
    assert_eq!(
        s.get("/admin/a", &[("Authorization", &admin)]).status,
        200,
        "{}",
        ctx()
    );
    for path in ["/admin/b", "/ADMIN/b", "/Admin/b"] {
        let r = s.get(path, &[("Authorization", &user)]);
        assert_eq!(
            r.status,
            403,
            "[{mode}] {path} without the admin scope: {}",
            ctx()
        );
    }
    // The client names another request in nginx's or ingress-nginx's headers.
    for (name, value) in [
        ("X-Original-URI", "/public/x"),
        ("X-Original-URL", "http://127.0.0.1/public/x"),
        ("X-Original-Host", "public.example.org"),
        ("X-Original-Method", "OPTIONS"),
    ] {
        for cred in [None, Some(user.as_str())] {
            let mut headers = vec![(name, value)];
            if let Some(c) = cred {
                headers.push(("Authorization", c));
            }
            let r = s.get("/admin/c", &headers);
            let want: &[u16] = match mode {
                // Two families: refused outright.
                "auto" if name != "X-Original-Method" => &[401],
                // X-Original-Method alone is no family's marker; the real path decides.
                _ => &[401, 403],
            };
            assert!(
                want.contains(&r.status),
                "[{mode}] /admin/c with {name}: {value} and {cred:?}: {} (want {want:?})\n{}",
                r.status,
                ctx()
            );
        }
    }
    assert!(
        !s.app
            .requests()
            .iter()
            .any(|h| h.starts_with("GET /admin/b") || h.starts_with("GET /admin/c")),
        "[{mode}] a refused request reached the upstream: {}",
        ctx()
    );

    // Issue 18, step-up through /auth/redirect: a browser without a second factor is sent to
    // sign in with what the route needs; an API client gets RFC 9470's challenge.
    let cookie = format!(
        "gatehouse_session={}",
        s.session(&["--sub", "u-pwd", "--amr", "pwd"])
    );
    let r = s.get("/vault/x", &[("Cookie", &cookie), ("Accept", "text/html")]);
    assert_eq!(r.status, 302, "[{mode}] {}", ctx());
    let location = r.header("location").unwrap_or_default();
    assert!(
        location.contains("rd=") && location.ends_with("&acr_values=urn%3Agatehouse%3Aacr%3A2fa"),
        "[{mode}] {location}"
    );
    let r = s.get("/vault/x", &[("Authorization", &user)]);
    assert_eq!(r.status, 401, "[{mode}] {}", ctx());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("insufficient_user_authentication")),
        "[{mode}] {r:?}"
    );
    let mfa = format!(
        "Bearer {}",
        s.session(&["--sub", "u-mfa", "--amr", "otp", "--amr", "mfa"])
    );
    assert_eq!(
        s.get("/vault/x", &[("Authorization", &mfa)]).status,
        200,
        "[{mode}] {}",
        ctx()
    );
}

// ---------------------------------------------------------------------------------------------
// The stack

#[derive(Clone, Copy)]
enum Which {
    Traefik,
    Caddy,
}

#[derive(Clone, Copy)]
enum StoreKind {
    Embedded,
    Redis,
}

enum Proxy {
    Traefik(Traefik),
    Caddy(Caddy),
}

impl Proxy {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Proxy::Traefik(t) => t.addr(),
            Proxy::Caddy(c) => c.addr(),
        }
    }

    /// Version, configuration and log, for failure messages.
    fn describe(&self) -> String {
        match self {
            Proxy::Traefik(t) => format!(
                "traefik {}\n{}\n{}",
                Traefik::version(),
                t.config(),
                t.logs()
            ),
            Proxy::Caddy(c) => format!("caddy {}\n{}\n{}", Caddy::version(), c.config(), c.logs()),
        }
    }
}

/// Where the sessions live: gatehouse's own embedded store, or a redis-server.
enum Store {
    Embedded(TempDir),
    Redis(RedisServer),
}

impl Store {
    /// The store flags, the same for `serve` and `session create`.
    fn flags(&self) -> Vec<String> {
        match self {
            Store::Embedded(dir) => args(&["--data-dir", &dir.join("data")]),
            Store::Redis(redis) => args(&["--redis-url", &redis.url()]),
        }
    }
}

// Fields drop in order: the proxy first, the store last.
struct Stack {
    proxy: Proxy,
    app: EchoServer,
    gatehouse: Gatehouse,
    store: Store,
}

fn stack(which: Which, store: StoreKind) -> Stack {
    stack_with(which, store, &[])
}

/// A stack whose gatehouse has `extra` flags too.
fn stack_with(which: Which, store: StoreKind, extra: &[String]) -> Stack {
    let store = match store {
        StoreKind::Embedded => Store::Embedded(TempDir::new("forward-auth-store")),
        StoreKind::Redis => Store::Redis(RedisServer::start()),
    };
    let mut flags = store.flags();
    flags.extend(args(&["--login-url", LOGIN_URL]));
    flags.extend(extra.iter().cloned());
    let gatehouse = Gatehouse::spawn(&flags);
    let app = EchoServer::start();
    let vars = [
        ("GATEHOUSE", gatehouse.addr().port().to_string()),
        ("APP", app.port().to_string()),
    ];
    let proxy = match which {
        Which::Traefik => {
            Proxy::Traefik(Traefik::start(TRAEFIK_ENTRY_POINT, TRAEFIK_DYNAMIC, &vars))
        }
        Which::Caddy => Proxy::Caddy(Caddy::start(CADDY_SITE, &vars)),
    };
    Stack {
        proxy,
        app,
        gatehouse,
        store,
    }
}

impl Stack {
    /// `gatehouse session create <store flags> <more>`: the new token.
    fn session(&self, more: &[&str]) -> String {
        let mut argv = vec!["session".to_string(), "create".to_string()];
        argv.extend(self.store.flags());
        argv.extend(args(more));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        cli_stdout(&gatehouse_cli(&argv))
    }

    /// GET `path` through the proxy.
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http_get(self.proxy.addr(), path, headers)
    }

    /// Everything a failure message needs: both processes' logs and what the upstream saw.
    fn context(&self) -> String {
        format!(
            "{}\n{}\n--- upstream received ---\n{:#?}",
            self.proxy.describe(),
            self.gatehouse.logs(),
            self.app.requests()
        )
    }

    /// GETs `path` (which must be unique in the test) through the proxy, asserts that the
    /// upstream answered it, and returns the request head the upstream received.
    fn allowed(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let r = self.get(path, headers);
        assert_eq!(
            r.status,
            200,
            "{path} was not let through: {r:?}\n{}",
            self.context()
        );
        self.received(path, &r)
    }

    /// The request head the upstream received for `path`, which it must have received once
    /// and answered with `r`.
    fn received(&self, path: &str, r: &Response) -> String {
        let request_line = format!("GET {path} HTTP/1.1");
        let heads: Vec<String> = self
            .app
            .requests()
            .into_iter()
            .filter(|h| h.lines().next() == Some(request_line.as_str()))
            .collect();
        assert_eq!(
            heads.len(),
            1,
            "the upstream should have seen {path} once\n{}",
            self.context()
        );
        // The echo upstream answers with the head it received: the client got that answer.
        assert_eq!(
            r.body, heads[0],
            "{path}: the client did not get the upstream's answer"
        );
        heads[0].clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The test body

/// Spellings of the identity headers that both proxies treat as unrelated headers, but that a
/// CGI, WSGI or PHP backend reads as `X-Auth-Request-User` / `-Email`.
const ALIASES: &[(&str, &str)] = &[
    ("X_Auth_Request_User", "admin"),
    ("X_Auth_Request_Email", "admin@evil"),
    ("X.Auth.Request.User", "admin"),
    ("X-Auth_Request-Email", "admin@evil"),
    ("X~Auth~Request~Email", "admin@evil"),
];

/// What gatehouse should have told the upstream about a request.
struct Identity<'a> {
    sub: &'a str,
    user: &'a str,
    email: Option<&'a str>,
    /// The JWT's `auth_method`: `session` (cookie) or `bearer`.
    method: &'a str,
    /// `X-Auth-Request-Amr`, when the session says how its user signed in.
    amr: Option<&'a str>,
}

fn check(which: Which, store: StoreKind) {
    let s = stack(which, store);
    let port = s.proxy.addr().port();
    let alice = s.session(&[
        "--sub",
        "u-alice",
        "--username",
        "alice",
        "--email",
        "alice@example.org",
        "--amr",
        "pwd",
        "--amr",
        "otp",
        "--amr",
        "mfa",
    ]);
    let bob = s.session(&["--sub", "u-bob", "--username", "bob"]); // no email
    let alice_cookie = format!("gatehouse_session={alice}");
    let alice_bearer = format!("Bearer {alice}");
    let bob_cookie = format!("gatehouse_session={bob}");
    let html = ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8");
    let json = ("Accept", "application/json");
    let mut let_through = Vec::new();

    // Allowed: a browser with the session cookie, an API client with a bearer token.
    let path = "/allow/cookie?x=1";
    let head = s.allowed(path, &[("Cookie", &alice_cookie), html]);
    let_through.push(path);
    let alice_by_cookie = Identity {
        sub: "u-alice",
        user: "alice",
        email: Some("alice@example.org"),
        method: "session",
        amr: Some("pwd otp mfa"),
    };
    check_identity(&s, &head, &alice, &alice_by_cookie);

    let path = "/allow/bearer";
    let head = s.allowed(path, &[("Authorization", &alice_bearer), json]);
    let_through.push(path);
    let alice_by_bearer = Identity {
        method: "bearer",
        ..alice_by_cookie
    };
    check_identity(&s, &head, &alice, &alice_by_bearer);
    assert!(
        !head.contains(&alice),
        "the client's bearer token reached the upstream:\n{head}"
    );

    // Client-sent identity headers never reach the upstream: gatehouse's values replace them…
    let path = "/allow/spoofed";
    let head = s.allowed(
        path,
        &[
            ("Cookie", &alice_cookie),
            ("X-Auth-Request-User", "admin"),
            ("X-Auth-Request-Email", "admin@evil"),
            ("X-Auth-Request-Amr", "hwk mfa"),
            json,
        ],
    );
    let_through.push(path);
    check_identity(&s, &head, &alice, &alice_by_cookie);

    // …and a header that gatehouse's answer did not set (this session has no email) must be
    // removed by the proxy, not passed through.
    let path = "/allow/no-email";
    let head = s.allowed(
        path,
        &[
            ("Cookie", &bob_cookie),
            ("X-Auth-Request-User", "admin"),
            ("X-Auth-Request-Email", "admin@evil"),
            ("X-Auth-Request-Amr", "hwk mfa"),
            json,
        ],
    );
    let_through.push(path);
    let bob_by_cookie = Identity {
        sub: "u-bob",
        user: "bob",
        email: None,
        method: "session",
        amr: None,
    };
    check_identity(&s, &head, &bob, &bob_by_cookie);

    // Aliases of the identity headers: gatehouse may refuse such a request; if it is let
    // through, the proxy must have removed them.
    let path = "/allow/aliases";
    let mut headers = vec![("Cookie", bob_cookie.as_str()), json];
    headers.extend_from_slice(ALIASES);
    let r = s.get(path, &headers);
    match r.status {
        200 => {
            let head = s.received(path, &r);
            let_through.push(path);
            check_identity(&s, &head, &bob, &bob_by_cookie);
        }
        401 | 403 => {}
        _ => panic!("{path}: {r:?}\n{}", s.context()),
    }

    // Denied, API clients: the 401 itself, with gatehouse's WWW-Authenticate.
    let api_denials: [(&str, Vec<(&str, &str)>); 4] = [
        ("/deny/api/none", vec![json]),
        (
            "/deny/api/garbage-bearer",
            vec![("Authorization", "Bearer garbage"), json],
        ),
        (
            "/deny/api/garbage-cookie",
            vec![("Cookie", "gatehouse_session=garbage"), json],
        ),
        ("/deny/api/no-accept", vec![]),
    ];
    for (path, headers) in &api_denials {
        let r = s.get(path, headers);
        assert_eq!(r.status, 401, "{path}: {r:?}\n{}", s.context());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"gatehouse\""),
            "{path}: WWW-Authenticate {challenge:?} did not reach the client: {r:?}"
        );
    }

    // Denied, browsers: 302 to the login page, `rd` carrying the URL the browser asked for —
    // as the proxy saw it, whatever X-Forwarded-* the client itself sent.
    let browser_denials: [(&str, Vec<(&str, &str)>); 5] = [
        ("/some/path?x=1", vec![html]),
        // Issue 17, 1.10: every byte of a deep link's query comes back.
        (
            "/search?q=a%26b&sort=%2Bdate&frag=%23top&plus=a+b&y=two",
            vec![html],
        ),
        (
            "/caf%C3%A9?rd=https://evil.example/&name=Zo%C3%AB",
            vec![html],
        ),
        (
            "/some/path?x=1",
            vec![("Cookie", "gatehouse_session=garbage"), html],
        ),
        (
            "/some/path?x=1",
            vec![
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.test"),
                ("X-Forwarded-Uri", "/elsewhere"),
                ("X-Original-URL", "https://evil.test/elsewhere"),
                html,
            ],
        ),
    ];
    for (path, headers) in &browser_denials {
        let r = s.get(path, headers);
        assert_eq!(r.status, 302, "{path} {headers:?}: {r:?}\n{}", s.context());
        let location = r.header("location").unwrap_or_default();
        let rd = location
            .strip_prefix(&format!("{LOGIN_URL}?rd="))
            .unwrap_or_else(|| panic!("Location {location:?} is not {LOGIN_URL}?rd=…"));
        assert!(
            !rd.contains(['&', '?', '#', ' ', '+']),
            "rd is not percent-encoded: {location}"
        );
        assert_eq!(
            percent_decode(rd),
            format!("http://127.0.0.1:{port}{path}"),
            "rd of {headers:?}"
        );
    }

    // The upstream received exactly the requests that were let through, nothing denied.
    let seen: Vec<String> = s
        .app
        .requests()
        .iter()
        .map(|h| h.lines().next().unwrap_or("").to_string())
        .collect();
    let expected: Vec<String> = let_through
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1"))
        .collect();
    assert_eq!(
        seen,
        expected,
        "what the upstream received\n{}",
        s.context()
    );
}

/// The upstream request `head` carries exactly gatehouse's identity for `id`: one
/// `Authorization: Bearer <JWT minted for it>` (not the client's `token`), one
/// `X-Auth-Request-User`, `X-Auth-Request-Email` only when the session has an email, and
/// `X-Auth-Request-Amr` only when it has an `amr`.
/// No client-sent value (`admin`, `admin@evil`) survives.
fn check_identity(s: &Stack, head: &str, token: &str, id: &Identity) {
    let fail =
        |what: String| -> ! { panic!("{what}\n--- upstream request ---\n{head}\n{}", s.context()) };
    if head.contains("admin@evil") || cgi_lines(head, "X-Auth-Request-User").contains(&"admin") {
        fail("a client-sent identity header reached the upstream".into());
    }
    let auth = cgi_lines(head, "Authorization");
    let [auth] = auth[..] else {
        fail(format!("expected one Authorization header, got {auth:?}"))
    };
    let Some(jwt) = auth.strip_prefix("Bearer ") else {
        fail(format!("Authorization {auth:?} is not a Bearer token"))
    };
    if jwt.contains(token) || jwt.split('.').count() != 3 {
        fail(format!("{jwt:?} is not a JWT minted by gatehouse"));
    }
    let claims: Value = URL_SAFE_NO_PAD
        .decode(jwt.split('.').nth(1).unwrap())
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_else(|| fail(format!("undecodable JWT payload in {jwt:?}")));
    let claim = |name: &str| claims.get(name).and_then(Value::as_str);
    if claim("sub") != Some(id.sub)
        || claim("preferred_username") != Some(id.user)
        || claim("email") != id.email
        || claim("auth_method") != Some(id.method)
    {
        fail(format!("JWT claims {claims} are not those of {}", id.sub));
    }
    if cgi_lines(head, "X-Auth-Request-User") != [id.user] {
        fail(format!(
            "X-Auth-Request-User should be exactly {:?}",
            id.user
        ));
    }
    let emails = cgi_lines(head, "X-Auth-Request-Email");
    if emails != id.email.into_iter().collect::<Vec<_>>() {
        fail(format!(
            "X-Auth-Request-Email should be {:?}, got {emails:?}",
            id.email
        ));
    }
    let amr = cgi_lines(head, "X-Auth-Request-Amr");
    if amr != id.amr.into_iter().collect::<Vec<_>>() {
        fail(format!(
            "X-Auth-Request-Amr should be {:?}, got {amr:?}",
            id.amr
        ));
    }
}

/// Values of every header line in a raw request head that a CGI, WSGI or PHP backend reads
/// as header `name`: names compared after uppercasing and turning every character other than
/// a letter or digit into `_` (`X_Auth_Request_User` and `x-auth-request-user` are both
/// `X-Auth-Request-User` there).
fn cgi_lines<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    let cgi = |n: &str| -> String {
        n.trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| cgi(n) == cgi(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// `%XX` → byte (and nothing else: `+` stays `+`), decoded as UTF-8.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("rd decodes to UTF-8")
}

/// The README's "Deploy" section shows exactly the configurations tested here.
#[test]
fn readme_shows_the_tested_snippets() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (name, snippet) in [
        ("Traefik entry point", TRAEFIK_ENTRY_POINT),
        ("Traefik dynamic", TRAEFIK_DYNAMIC),
        ("Caddy site", CADDY_SITE),
    ] {
        let body = snippet.trim_start_matches('\n');
        assert!(
            readme.contains(body),
            "README.md does not show the tested {name} snippet:\n{body}"
        );
    }
}
