//! The shipped nginx/ snippets, run for real: an nginx that includes them as they are, a fake
//! gatehouse (a second nginx server block answering like gatehouse's /auth contract) and an
//! upstream that echoes the exact request head it received. Needs only nginx, no gatehouse.
//!
//! What must hold: identity headers reach the upstream only from gatehouse's answer, never
//! from the client (in any spelling); no credential means a redirect to the login page with
//! `rd=`; the auth subrequest carries the original request's URI/method/host, no body, and
//! reuses keepalive connections.

use crate::support::*;

/// The shipped configuration directory.
const NGINX_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/nginx");
const LOGIN_URL: &str = "https://login.example.com/login";

/// How a user of the snippets builds a server; only the upstream addresses are ours.
const CONF: &str = r#"
    # --- what an including config provides ---
    upstream gatehouse { server 127.0.0.1:{{AUTH}}; keepalive 8; }
    upstream app { server 127.0.0.1:{{APP}}; }

    server {
        listen 127.0.0.1:{{FRONT}};
        set $gatehouse_login_url {{LOGIN}};
        include {{NGINX}}/gatehouse-auth.conf;

        location / {
            include {{NGINX}}/gatehouse-protect.conf;
            proxy_pass http://app;
        }
    }

    # --- a fake gatehouse: cookie "good" = alice, "anon" = anonymous 200, "forbid" = 403,
    # "down" = 503 (store unreachable), anything else = 401. Identity headers only on 200,
    # as gatehouse does (add_header with an empty value adds nothing).
    map $http_cookie $fake_jwt   { ~good "Bearer test-jwt"; default ""; }
    map $http_cookie $fake_user  { ~good alice;             default ""; }
    map $http_cookie $fake_email { ~good alice@example.com; default ""; }
    log_format authlog 'id=$http_x_test_id uri=$request_uri method=$request_method orig_uri=$http_x_original_uri orig_method=$http_x_original_method orig_host=$http_x_original_host orig_url=$http_x_original_url fwd_uri=$http_x_forwarded_uri fwd_method=$http_x_forwarded_method fwd_host=$http_x_forwarded_host cl=$http_content_length conn=$http_connection reqs=$connection_requests';

    server {
        listen 127.0.0.1:{{AUTH}};
        access_log {{DIR}}/auth.log authlog;
        location = /auth {
            if ($http_cookie ~ down)   { return 503; }
            if ($http_cookie ~ forbid) { return 403; }
            if ($http_cookie ~ anon)   { return 200; }
            # gatehouse's login location on a 401: its encoding is tested against the real
            # gatehouse (tests/e2e/nginx.rs); here, that nginx follows it as sent.
            add_header X-Gatehouse-Login "$http_x_gatehouse_login_url?rd=from-gatehouse%26x" always;
            if ($http_cookie !~ good)  { return 401; }
            add_header Authorization $fake_jwt always;
            add_header X-Auth-Request-User $fake_user always;
            add_header X-Auth-Request-Email $fake_email always;
            return 200;
        }
    }
"#;

struct Setup {
    nginx: Nginx,
    app: EchoServer,
}

fn setup() -> Setup {
    let app = EchoServer::start();
    let conf = render(
        CONF,
        &[
            ("AUTH", free_port().to_string()),
            ("APP", app.port().to_string()),
            ("FRONT", free_port().to_string()),
            ("LOGIN", LOGIN_URL.to_string()),
            ("NGINX", NGINX_DIR.to_string()),
        ],
    );
    Setup {
        nginx: Nginx::start(&conf),
        app,
    }
}

/// The headers the upstream received for the response `r` (the echo's body).
fn upstream_headers(r: &Response) -> Vec<(String, String)> {
    assert_eq!(r.status, 200, "{r:?}");
    parse_head_headers(&r.body)
}

/// The fake gatehouse's log line for the request sent with `X-Test-Id: id`.
fn auth_log_line(s: &Setup, id: &str) -> String {
    let log = s.nginx.read_file("auth.log");
    let prefix = format!("id={id} ");
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 1, "auth.log:\n{log}");
    lines[0].to_string()
}

#[test]
fn valid_session_passes_gatehouse_identity() {
    let s = setup();
    let r = http_get(
        s.nginx.addr(),
        "/app/page",
        &[("Cookie", "gatehouse_session=good")],
    );
    let h = upstream_headers(&r);
    assert_eq!(
        header_values(&h, "authorization"),
        vec!["Bearer test-jwt"],
        "{}",
        r.body
    );
    assert_eq!(
        header_values(&h, "x-auth-request-user"),
        vec!["alice"],
        "{}",
        r.body
    );
    assert_eq!(
        header_values(&h, "x-auth-request-email"),
        vec!["alice@example.com"],
        "{}",
        r.body
    );
}

#[test]
fn client_identity_headers_are_replaced() {
    let s = setup();
    let r = http_get(
        s.nginx.addr(),
        "/",
        &[
            ("Cookie", "gatehouse_session=good"),
            ("X-Auth-Request-User", "mallory"),
            ("x-auth-request-email", "mallory@evil.example"),
            ("Authorization", "Bearer forged-by-mallory"),
        ],
    );
    let h = upstream_headers(&r);
    assert_eq!(
        header_values(&h, "x-auth-request-user"),
        vec!["alice"],
        "{}",
        r.body
    );
    assert_eq!(
        header_values(&h, "x-auth-request-email"),
        vec!["alice@example.com"],
        "{}",
        r.body
    );
    assert_eq!(
        header_values(&h, "authorization"),
        vec!["Bearer test-jwt"],
        "{}",
        r.body
    );
    assert!(!r.body.contains("mallory"), "{}", r.body);
}

#[test]
fn anonymous_allow_drops_client_identity_headers() {
    // gatehouse answers 200 without identity headers (--anonymous allow): the upstream
    // must then see no identity at all, not the client's.
    let s = setup();
    let r = http_get(
        s.nginx.addr(),
        "/",
        &[
            ("Cookie", "anon"),
            ("X-Auth-Request-User", "mallory"),
            ("X-Auth-Request-Email", "mallory@evil.example"),
            ("Authorization", "Bearer forged-by-mallory"),
        ],
    );
    let h = upstream_headers(&r);
    for name in [
        "authorization",
        "x-auth-request-user",
        "x-auth-request-email",
    ] {
        assert!(
            header_value(&h, name).is_none(),
            "{name} reached the upstream:\n{}",
            r.body
        );
    }
    assert!(!r.body.contains("mallory"), "{}", r.body);
}

#[test]
fn underscore_spelling_never_reaches_upstream() {
    let s = setup();
    for cookie in ["gatehouse_session=good", "anon"] {
        let r = http_get(
            s.nginx.addr(),
            "/",
            &[
                ("Cookie", cookie),
                ("X_Auth_Request_User", "mallory"),
                ("X_Auth_Request_Email", "m@evil.example"),
            ],
        );
        let h = upstream_headers(&r);
        assert!(
            h.iter().all(|(n, _)| !n.contains('_')) && !r.body.contains("mallory"),
            "underscore header reached the upstream:\n{}",
            r.body
        );
    }
    // Why: nginx discards it as an invalid header (underscores_in_headers off).
    assert!(
        s.nginx
            .error_log()
            .contains("client sent invalid header line"),
        "{}",
        s.nginx.error_log()
    );
}

#[test]
fn no_credential_redirects_to_login_with_rd() {
    let s = setup();
    let before = s.app.requests().len();
    let r = http_get(
        s.nginx.addr(),
        "/some/path?x=1",
        &[("X-Auth-Request-User", "mallory")],
    );
    assert_eq!(r.status, 302, "{r:?}");
    let expected = format!("{LOGIN_URL}?rd=from-gatehouse%26x");
    assert_eq!(r.header("location"), Some(expected.as_str()));
    // Also with a cookie gatehouse rejects, and with the underscore spelling.
    let r = http_get(
        s.nginx.addr(),
        "/",
        &[
            ("Cookie", "gatehouse_session=expired"),
            ("X_Auth_Request_User", "mallory"),
        ],
    );
    assert_eq!(r.status, 302, "{r:?}");
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&format!("{LOGIN_URL}?rd=")));
    assert_eq!(
        s.app.requests().len(),
        before,
        "a denied request reached the upstream"
    );
}

#[test]
fn bad_bearer_gets_401_not_redirect() {
    let s = setup();
    let r = http_get(
        s.nginx.addr(),
        "/api/x",
        &[("Authorization", "Bearer junk")],
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("location").is_none());
    assert!(s.app.requests().is_empty());
}

#[test]
fn forbidden_and_store_down_fail_closed() {
    let s = setup();
    assert_eq!(
        http_get(s.nginx.addr(), "/", &[("Cookie", "forbid")]).status,
        403
    );
    // Any status but 2xx/401/403 from the auth server is a 500 from nginx: fail closed.
    assert_eq!(
        http_get(s.nginx.addr(), "/", &[("Cookie", "down")]).status,
        500
    );
    assert!(s.app.requests().is_empty());
}

#[test]
fn auth_location_is_internal() {
    let s = setup();
    assert_eq!(
        http_get(s.nginx.addr(), "/_gatehouse_auth", &[("Cookie", "good")]).status,
        404
    );
}

#[test]
fn subrequest_carries_original_request_without_body() {
    let s = setup();
    let r = http_request(
        "POST",
        s.nginx.addr(),
        "/upload/file?a=1&b=2",
        &[
            ("Cookie", "good"),
            ("X-Test-Id", "post1"),
            ("Host", "app.example.test"),
            // Spoofed "what is being requested" headers of other proxies must not reach gatehouse.
            ("X-Forwarded-Uri", "/public"),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Host", "public.example.test"),
            ("X-Original-URL", "http://public.example.test/public"),
        ],
        b"hello",
    );
    // The upstream gets the body; gatehouse does not.
    let h = upstream_headers(&r);
    assert_eq!(header_value(&h, "content-length"), Some("5"), "{}", r.body);
    assert!(
        r.body.starts_with("POST /upload/file?a=1&b=2 "),
        "{}",
        r.body
    );
    let line = auth_log_line(&s, "post1");
    for want in [
        "uri=/auth ",
        "method=GET ",
        "orig_uri=/upload/file?a=1&b=2 ",
        "orig_method=POST ",
        "orig_host=app.example.test ",
        "orig_url=- ",
        "fwd_uri=- ",
        "fwd_method=- ",
        "fwd_host=- ",
        "cl=- ",
        "conn=- ",
    ] {
        assert!(line.contains(want), "auth.log lacks {want:?}: {line}");
    }
}

#[test]
fn auth_subrequests_reuse_keepalive_connections() {
    let s = setup();
    for i in 0..5 {
        let r = http_get(
            s.nginx.addr(),
            "/",
            &[("Cookie", "good"), ("X-Test-Id", &format!("ka{i}"))],
        );
        assert_eq!(r.status, 200);
    }
    let reqs: Vec<u32> = (0..5)
        .map(|i| {
            let line = auth_log_line(&s, &format!("ka{i}"));
            line.rsplit("reqs=").next().unwrap().trim().parse().unwrap()
        })
        .collect();
    assert_eq!(
        reqs,
        vec![1, 2, 3, 4, 5],
        "auth connection not reused (reqs per connection)"
    );
}

#[test]
fn example_conf_is_valid() {
    // example.conf as shipped, except that its `include snippets/…` point at this checkout.
    let example = std::fs::read_to_string(format!("{NGINX_DIR}/example.conf")).unwrap();
    assert_eq!(example.matches("include snippets/").count(), 3);
    let conf = example.replace("include snippets/", &format!("include {NGINX_DIR}/"));
    if let Err(why) = Nginx::check_config(&conf) {
        panic!("nginx -t rejects example.conf:\n{why}");
    }
}
