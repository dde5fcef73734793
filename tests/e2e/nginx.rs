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

/// One annotation's value in `k8s/examples/ingress-nginx.yaml` (a quoted string).
fn ingress_annotation(name: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/k8s/examples/ingress-nginx.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let key = format!("nginx.ingress.kubernetes.io/{name}:");
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(&key))
        .unwrap_or_else(|| panic!("{path} has no {name}"));
    line.trim().trim_matches('"').to_owned()
}

/// What ingress-nginx generates for an Ingress carrying the example's annotations (its
/// `nginx.tmpl`: the external-auth location, the sign-in location, the protected location),
/// less its Lua balancer. There is no cluster here, so plain nginx runs it, with the set-misc
/// module that ingress-nginx builds in for `set_escape_uri`.
const INGRESS_SITE: &str = r#"
server {
    listen 127.0.0.1:{{PORT}};
    location = /_external-auth-Lw {
        internal;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Forwarded-Proto "";
        proxy_set_header Host gatehouse.gatehouse.svc.cluster.local;
        proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Sent-From "nginx-ingress-controller";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Auth-Request-Redirect $request_uri;
        proxy_http_version 1.1;
        proxy_pass_request_headers on;
        set $target {{AUTH_URL}};
        proxy_pass $target;
    }
    location @64ef7e8f8cab5fcb2ac3e0c4ebd6ee9fbd3ffb9e {
        internal;
        add_header Set-Cookie $auth_cookie;
        return 302 {{SIGNIN}};
    }
    location / {
        auth_request /_external-auth-Lw;
        auth_request_set $auth_cookie $upstream_http_set_cookie;
        add_header Set-Cookie $auth_cookie;
{{RESPONSE_HEADERS}}
        set_escape_uri $escaped_request_uri $request_uri;
        error_page 401 = @64ef7e8f8cab5fcb2ac3e0c4ebd6ee9fbd3ffb9e;
        proxy_set_header Host $http_host;
        proxy_pass http://127.0.0.1:{{APP}};
    }
}
"#;

/// Issue 17, 1.10, for ingress-nginx: the configuration it generates from
/// `k8s/examples/ingress-nginx.yaml` brings a deep link back whole through `auth-signin`, and
/// a signed-in request reaches the application with its query and gatehouse's JWT.
#[test]
fn ingress_nginx_generated_config_keeps_deep_links_whole() {
    let redis = RedisServer::start();
    let gatehouse = Gatehouse::spawn(&args(&["--redis-url", &redis.url()]));
    let app = EchoServer::start();
    let port = free_port();
    let auth_url = ingress_annotation("auth-url").replace(
        "http://gatehouse.gatehouse.svc.cluster.local:8080",
        &format!("http://{}", gatehouse.addr()),
    );
    let signin = ingress_annotation("auth-signin").replace(
        "https://app.example.com",
        &format!("http://127.0.0.1:{port}"),
    );
    let mut response_headers = String::new();
    for (i, name) in ingress_annotation("auth-response-headers")
        .split(',')
        .map(str::trim)
        .enumerate()
    {
        let var = name.to_ascii_lowercase().replace('-', "_");
        response_headers += &format!(
            "        auth_request_set $authHeader{i} $upstream_http_{var};\n        proxy_set_header '{name}' $authHeader{i};\n"
        );
    }
    let modules = "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n\
                   load_module /usr/lib/nginx/modules/ngx_http_set_misc_module.so;\n";
    let nginx = Nginx::start_with_main(
        modules,
        &render(
            INGRESS_SITE,
            &[
                ("PORT", port.to_string()),
                ("APP", app.port().to_string()),
                ("AUTH_URL", auth_url),
                ("SIGNIN", signin),
                ("RESPONSE_HEADERS", response_headers),
            ],
        ),
    );
    let paths = [
        "/dashboard?x=1&y=two",
        "/search?q=a%26b&sort=%2Bdate&frag=%23top&plus=a+b",
        "/r?rd=https://evil.example/&next=1",
        "/caf%C3%A9?name=Zo%C3%AB&raw=\u{e9}t\u{e9}",
    ];
    for path in paths {
        let r = http_get(nginx.addr(), path, &[("Accept", "text/html")]);
        assert_eq!(r.status, 302, "{path}: {r:?}\n{}", nginx.error_log());
        let location = r.header("location").expect("Location");
        let rd = location
            .strip_prefix("https://login.example.com/login?rd=")
            .unwrap_or_else(|| panic!("{path}: {location}"));
        assert!(
            !rd.contains(['&', '?', '#', '+']),
            "{path}: rd not encoded: {rd}"
        );
        let back = String::from_utf8(percent_decode(rd)).unwrap();
        assert_eq!(back, format!("http://127.0.0.1:{port}{path}"), "{location}");
    }
    assert!(app.requests().is_empty(), "{:?}", app.requests());

    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--redis-url",
        &redis.url(),
        "--sub",
        "u9",
        "--username",
        "ines",
    ]));
    let cookie = format!("gatehouse_session={token}");
    for path in paths {
        let r = http_get(nginx.addr(), path, &[("Cookie", &cookie)]);
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", nginx.error_log());
    }
    let seen = app.requests();
    assert_eq!(seen.len(), paths.len(), "{seen:?}");
    for (head, path) in seen.iter().zip(paths) {
        let line = head.lines().next().unwrap();
        let raw: String = path
            .bytes()
            .map(|b| {
                if b.is_ascii() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert!(
            line.contains(&format!(" {path} ")) || line.contains(&format!(" {raw} ")),
            "{line} for {path}"
        );
        assert_eq!(
            header_lines(head, "x-auth-request-user"),
            vec!["ines"],
            "{head}"
        );
        assert!(
            header_lines(head, "authorization")
                .first()
                .is_some_and(|a| a.starts_with("Bearer ey")),
            "{head}"
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
