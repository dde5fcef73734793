//! Route policy end to end: real nginx with the shipped snippets, gatehouse with `--policy`,
//! redis-server, an echoing upstream. Every spelling of a protected path gets the same
//! decision, the query never takes part, a cached session is re-checked per route, and
//! proxy headers count only from trusted peers.

use crate::support::*;

const POLICY: &str = r#"
[[rule]]
path = "/admin"
scopes = ["admin"]

[[rule]]
path = "/public"
anonymous = true

[[rule]]
path = "/api"
methods = ["POST", "DELETE"]
roles = ["writer", "editor"]

[[rule]]
path = "/vault"
mfa = true

[[rule]]
path = "/recent"
max_age = "15m"

[default]
scopes = ["read"]
"#;

struct Stack {
    _redis: RedisServer,
    _dir: TempDir,
    gatehouse: Gatehouse,
    app: EchoServer,
    nginx: Nginx,
    alice: String,
    bob: String,
}

fn stack(extra: &[&str]) -> Stack {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = TempDir::new("policy");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut a = args(&["--redis-url", &url, "--policy", &policy]);
    a.extend(extra.iter().map(|s| s.to_string()));
    let gatehouse = Gatehouse::spawn(&a);
    let app = EchoServer::start();
    let nginx = protected_site(gatehouse.addr().port(), app.port());
    let create = |sub: &str, extra: &[&str]| {
        let mut a = vec!["session", "create", "--redis-url", &url, "--sub", sub];
        a.extend_from_slice(extra);
        cli_stdout(&gatehouse_cli(&a))
    };
    let alice = create("alice", &["--scope", "read"]);
    let bob = create(
        "bob",
        &["--scope", "read", "--scope", "admin", "--role", "editor"],
    );
    Stack {
        _redis: redis,
        _dir: dir,
        gatehouse,
        app,
        nginx,
        alice,
        bob,
    }
}

fn cookie(token: &str) -> String {
    format!("gatehouse_session={token}")
}

/// Through nginx, as an API client (no login redirect).
fn via_nginx(s: &Stack, method: &str, path: &str, token: Option<&str>) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Accept", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    http_request(method, s.nginx.addr(), path, &headers, b"")
}

/// Straight to gatehouse, as a proxy on loopback would ask.
fn direct(s: &Stack, method: &str, uri: &str, token: &str) -> Response {
    http_get(
        s.gatehouse.addr(),
        "/auth",
        &[
            ("Cookie", &cookie(token)),
            ("X-Original-URI", uri),
            ("X-Original-Method", method),
            ("X-Original-Host", "app.example.test"),
        ],
    )
}

fn upstream_saw(s: &Stack, marker: &str) -> bool {
    s.app.requests().iter().any(|r| r.contains(marker))
}

#[test]
fn rules_decide_through_nginx() {
    let s = stack(&[]);
    // Anonymous rule: no credential needed, and no identity reaches the upstream.
    let r = via_nginx(&s, "GET", "/public/page?m=pub1", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(upstream_saw(&s, "m=pub1"));
    // Default rule: a credential with `read`.
    // (Without a bearer token, nginx's snippet turns gatehouse's 401 into the login redirect.)
    assert_eq!(via_nginx(&s, "GET", "/home?m=home0", None).status, 302);
    assert_eq!(
        via_nginx(&s, "GET", "/home?m=home1", Some(&s.alice)).status,
        200
    );
    // Scope rule: alice lacks `admin` → 403, and the upstream never sees the request.
    let r = via_nginx(&s, "GET", "/admin/users?m=adm1", Some(&s.alice));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        !upstream_saw(&s, "m=adm1"),
        "a forbidden request reached the upstream"
    );
    assert_eq!(
        via_nginx(&s, "GET", "/admin/users?m=adm2", Some(&s.bob)).status,
        200
    );
    assert!(upstream_saw(&s, "m=adm2"));
    // Method rule: POST needs a role; GET falls through to the default.
    assert_eq!(
        via_nginx(&s, "POST", "/api/items?m=api1", Some(&s.alice)).status,
        403
    );
    assert!(!upstream_saw(&s, "m=api1"));
    assert_eq!(
        via_nginx(&s, "POST", "/api/items?m=api2", Some(&s.bob)).status,
        200
    );
    assert_eq!(
        via_nginx(&s, "GET", "/api/items?m=api3", Some(&s.alice)).status,
        200
    );
    // The session is cached by now; the next route is still checked on its own.
    assert_eq!(
        via_nginx(&s, "GET", "/admin?m=adm3", Some(&s.alice)).status,
        403
    );
    assert_eq!(
        via_nginx(&s, "GET", "/home?m=home2", Some(&s.alice)).status,
        200
    );
    // A query that looks like a path never takes part.
    let r = via_nginx(&s, "GET", "/admin?next=/public/x&m=adm4", Some(&s.alice));
    assert_eq!(r.status, 403);
    let r = via_nginx(&s, "GET", "/admin?m=adm5&/public", None);
    assert_ne!(r.status, 200);
    assert!(!upstream_saw(&s, "m=adm4") && !upstream_saw(&s, "m=adm5"));

    // Every spelling of /admin through nginx: never 200 for alice, never at the upstream.
    for (i, spelling) in [
        "//admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/%2e%2e/admin",
        "/%61dmin",
        "/admin;x=1",
        "/./admin/",
        "/public/..%2Fadmin",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("m=sp{i}");
        let r = via_nginx(&s, "GET", &format!("{spelling}?{marker}"), Some(&s.alice));
        assert_ne!(r.status, 200, "{spelling} let alice through: {}", r.body);
        assert!(
            !upstream_saw(&s, &marker),
            "{spelling} reached the upstream"
        );
    }
}

/// Issue 18, step-up: a rule with `mfa = true` refuses a password-only session with 401 (a
/// browser is sent to sign in with `acr_values`, an API client gets RFC 9470's challenge),
/// and admits a session with a second factor, whose `amr` reaches the upstream; a rule with
/// `max_age` does the same for a sign-in older than it.
#[test]
fn step_up_rules_ask_for_what_the_session_lacks_through_nginx() {
    let s = stack(&[]);
    let url = s._redis.url();
    let create = |extra: &[&str]| {
        let mut a = vec![
            "session",
            "create",
            "--redis-url",
            &url,
            "--sub",
            "carol",
            "--scope",
            "read",
        ];
        a.extend_from_slice(extra);
        cli_stdout(&gatehouse_cli(&a))
    };
    let password_only = create(&["--amr", "pwd"]);
    let two_factors = create(&["--amr", "pwd", "--amr", "otp", "--amr", "mfa"]);
    let an_hour_ago = create(&[
        "--amr",
        "pwd",
        "--amr",
        "otp",
        "--amr",
        "mfa",
        "--auth-age",
        "1h",
    ]);
    let browser = |token: &str, path: &str| {
        http_get(
            s.nginx.addr(),
            path,
            &[
                ("Cookie", &cookie(token)),
                ("Accept", "text/html"),
                ("X-Auth-Request-Amr", "mfa"),
            ],
        )
    };

    // A second factor: a browser without one goes to sign in, told what is missing.
    let r = browser(&password_only, "/vault/box?m=v1");
    assert_eq!(r.status, 302, "{r:?}");
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with("https://login.example.test/login?rd=http%3A%2F%2F")
            && location.ends_with("&acr_values=urn%3Agatehouse%3Aacr%3A2fa"),
        "{location}"
    );
    assert!(!upstream_saw(&s, "m=v1"), "a step-up reached the upstream");
    // An API client gets the 401 with RFC 9470's challenge through nginx.
    let r = via_nginx(&s, "GET", "/vault/box?m=v2", Some(&password_only));
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header_all("www-authenticate").len(), 1, "{r:?}");
    let challenge = r.header_all("www-authenticate").join(" | ");
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\"")
            && challenge.contains("acr_values=\"urn:gatehouse:acr:2fa\""),
        "{challenge}"
    );
    // With one: through, and the upstream learns how the user signed in, never what the
    // client claimed.
    let r = browser(&two_factors, "/vault/box?m=v3");
    assert_eq!(r.status, 200, "{r:?}");
    let head = s
        .app
        .requests()
        .into_iter()
        .find(|h| h.contains("m=v3"))
        .unwrap();
    let amr: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-auth-request-amr:"))
        .collect();
    assert_eq!(amr, ["X-Auth-Request-Amr: pwd otp mfa"], "{head}");
    let jwt = head
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: Bearer "))
        .unwrap();
    let claims = jwt_claims(jwt);
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
    assert_eq!(claims["acr"], "urn:gatehouse:acr:2fa");
    assert!(claims["auth_time"].as_u64().unwrap() > 0);
    let r = browser(&password_only, "/home?m=v4");
    assert_eq!(r.status, 200);
    let head = s
        .app
        .requests()
        .into_iter()
        .find(|h| h.contains("m=v4"))
        .unwrap();
    assert!(
        head.contains("X-Auth-Request-Amr: pwd\r\n") || head.contains("X-Auth-Request-Amr: pwd\n"),
        "{head}"
    );
    // Anonymous: no amr at all, whatever the client sent.
    let r = http_get(
        s.nginx.addr(),
        "/public/x?m=v5",
        &[("X-Auth-Request-Amr", "mfa")],
    );
    assert_eq!(r.status, 200);
    let head = s
        .app
        .requests()
        .into_iter()
        .find(|h| h.contains("m=v5"))
        .unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("x-auth-request-amr"),
        "{head}"
    );

    // A recent sign-in: an hour-old one goes to sign in again, with max_age.
    let r = browser(&an_hour_ago, "/recent?m=r1");
    assert_eq!(r.status, 302, "{r:?}");
    assert!(
        r.header("location").unwrap().ends_with("&max_age=900"),
        "{r:?}"
    );
    let r = via_nginx(&s, "GET", "/recent?m=r2", Some(&an_hour_ago));
    assert_eq!(r.status, 401);
    assert!(
        r.header_all("www-authenticate")
            .iter()
            .any(|c| c.contains("insufficient_user_authentication") && c.contains("max_age=900")),
        "{r:?}"
    );
    assert!(!upstream_saw(&s, "m=r1") && !upstream_saw(&s, "m=r2"));
    assert_eq!(browser(&two_factors, "/recent?m=r3").status, 200);
    // A second factor an hour ago still satisfies mfa, where max_age does not ask.
    assert_eq!(browser(&an_hour_ago, "/vault?m=r4").status, 200);
}

#[test]
fn every_spelling_gets_the_same_decision_directly() {
    let s = stack(&[]);
    for spelling in [
        "/admin",
        "//admin",
        "///admin//users",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/%2E%2E/admin",
        "/%61dmin",
        "/admin;jsessionid=x",
        "/public;x/../admin",
        "/./admin/",
        "/admin?next=/public",
        "/admin#/public",
    ] {
        let r = direct(&s, "GET", spelling, &s.alice);
        assert_eq!(r.status, 403, "alice, {spelling}: {}", r.body);
        let r = direct(&s, "GET", spelling, &s.bob);
        assert_eq!(r.status, 200, "bob, {spelling}: {}", r.body);
    }
    // No canonical form, or no original request at all: 401, never 200. An escaped slash or
    // backslash is refused: upstreams disagree on whether it separates segments.
    for bad in [
        "/admin%00",
        "/a%zz",
        "/a%",
        "admin",
        "/%0d%0aX-Evil:%201",
        "/public/..%2Fadmin",
        "/public/..%5cadmin",
        "/public\\..\\admin",
    ] {
        let r = direct(&s, "GET", bad, &s.bob);
        assert_eq!(r.status, 401, "{bad:?}: {}", r.body);
        assert_eq!(r.header("authorization"), None);
    }
    let r = http_get(s.gatehouse.addr(), "/auth", &[("Cookie", &cookie(&s.bob))]);
    assert_eq!(r.status, 401, "no X-Original-URI with a policy");
    let twice = http_get(
        s.gatehouse.addr(),
        "/auth",
        &[
            ("Cookie", &cookie(&s.bob)),
            ("X-Original-URI", "/public"),
            ("X-Original-URI", "/admin"),
        ],
    );
    assert_eq!(twice.status, 401, "an ambiguous original request");
}

#[test]
fn proxy_headers_count_only_from_trusted_peers() {
    // Only 10.0.0.0/8 may speak for the original request; nginx here is on loopback.
    let s = stack(&["--trusted-proxies", "10.0.0.0/8"]);
    for (path, token) in [
        ("/public/x?m=u1", None),
        ("/home?m=u2", Some(s.bob.as_str())),
    ] {
        let r = via_nginx(&s, "GET", path, token);
        assert_ne!(
            r.status, 200,
            "{path}: an untrusted proxy's X-Original-URI was believed"
        );
    }
    assert!(!upstream_saw(&s, "m=u1") && !upstream_saw(&s, "m=u2"));
    let r = direct(&s, "GET", "/home", &s.bob);
    assert_eq!(r.status, 401);
}

#[test]
fn bad_policy_exits_64_naming_the_flag() {
    let dir = TempDir::new("bad-policy");
    let path = dir.join("policy.toml");
    std::fs::write(&path, "[[rule]]\npath = \"admin\"\n").unwrap();
    let out = gatehouse_cli(&["serve", "--data-dir", &dir.join("data"), "--policy", &path]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--policy") && err.contains("rule 1"), "{err}");
    let out = gatehouse_cli(&[
        "serve",
        "--data-dir",
        &dir.join("data"),
        "--policy",
        &dir.join("missing.toml"),
    ]);
    assert_eq!(out.status.code(), Some(64));
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn jwks_kids(s: &Stack) -> usize {
    let body = http_get(s.gatehouse.addr(), "/.well-known/jwks.json", &[]).body;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["keys"].as_array().map_or(0, Vec::len)
}

/// The `kid` in the header of the JWT that gatehouse answered with.
fn jwt_kid(r: &Response) -> String {
    use base64::Engine;
    let jwt = r
        .header("Authorization")
        .expect("no Authorization")
        .trim_start_matches("Bearer ");
    let header = jwt.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&header).unwrap();
    v["kid"].as_str().unwrap().to_string()
}

#[test]
fn sighup_reloads_policy_and_keys_without_dropping_a_request() {
    let keys = TempDir::new("reload-keys");
    let keys_dir = keys.path().to_str().unwrap().to_string();
    // The bare gateway: the registry would add the RS256 key of its id_tokens to the JWKS.
    let s = stack(&["--keys-dir", &keys_dir, "--modules", "none"]);
    let pid = s.gatehouse.pid();
    let policy = s._dir.join("policy.toml");
    assert_eq!(direct(&s, "GET", "/admin", &s.alice).status, 403);
    assert_eq!(jwks_kids(&s), 1);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (served, failed) = std::thread::scope(|scope| {
        // Requests that every policy version allows, all through the reloads.
        let load = scope.spawn(|| {
            let (mut served, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = direct(&s, "GET", "/home", &s.bob);
                served += 1;
                if r.status != 200 {
                    failed.push(r.status);
                }
            }
            (served, failed)
        });

        let stop_guard = StopOnDrop(&stop);
        // A new policy: /admin now needs only `read`.
        std::fs::write(
            &policy,
            POLICY.replacen("scopes = [\"admin\"]", "scopes = [\"read\"]", 1),
        )
        .unwrap();
        assert!(send_signal(pid, libc::SIGHUP));
        wait_until("the new policy", || {
            direct(&s, "GET", "/admin", &s.alice).status == 200
        });

        // A broken one is refused, logged, and the previous one stays.
        std::fs::write(&policy, "[[rule]]\npath = \"no-slash\"\n").unwrap();
        assert!(send_signal(pid, libc::SIGHUP));
        wait_until("the refusal in the log", || {
            s.gatehouse.logs().contains("policy not reloaded")
        });
        assert_eq!(direct(&s, "GET", "/admin", &s.alice).status, 200);

        // A new key: published in the JWKS after SIGHUP, and it signs from then on, cached
        // sessions included (their tokens are minted again).
        let old_kid = jwt_kid(&direct(&s, "GET", "/home", &s.bob));
        // At once: by default a second key signs only after the JWKS max-age.
        cli_stdout(&gatehouse_cli(&[
            "keys",
            "generate",
            "--keys-dir",
            &keys_dir,
            "--activate-in",
            "0s",
        ]));
        assert!(send_signal(pid, libc::SIGHUP));
        wait_until("the new key in the JWKS", || jwks_kids(&s) == 2);
        let new_kid = jwt_kid(&direct(&s, "GET", "/home", &s.bob));
        assert_ne!(
            new_kid, old_kid,
            "a cached session still carries the old key's token"
        );
        let jwks = http_get(s.gatehouse.addr(), "/.well-known/jwks.json", &[]).body;
        assert!(jwks.contains(&new_kid) && jwks.contains(&old_kid));

        drop(stop_guard);
        load.join().unwrap()
    });
    assert!(served > 10, "the load thread barely ran ({served})");
    assert!(
        failed.is_empty(),
        "{} of {served} requests failed during reloads: {failed:?}",
        failed.len()
    );
}
