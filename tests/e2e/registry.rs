//! registry, end to end: real `gatehouse serve` processes, clients registered with the CLI,
//! every OAuth2 exchange made by an independent client library (the `oauth2` crate) over real
//! HTTP, tokens checked where they are used: at `/auth`. On SQLite with the embedded session
//! store, and on a real PostgreSQL with sessions in a real Redis.

use std::time::Duration;

use crate::support::*;
use base64::Engine;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, ClientId, ClientSecret, HttpRequest, HttpResponse, IntrospectionUrl, Scope,
    TokenIntrospectionResponse, TokenResponse, TokenUrl,
};

pub(crate) const PW: &str = "tangerine kayak moonlit orbit";

/// Where the test's clients and sessions live.
#[derive(Clone, Copy)]
pub(crate) enum Backend {
    /// SQLite in the data directory, sessions in the embedded store.
    Sqlite,
    /// A throw-away PostgreSQL, sessions in a real Redis.
    PostgresRedis,
}

/// One test's deployment. Fields drop in this order: the server before what it uses.
pub(crate) struct Site {
    pub(crate) gh: Gatehouse,
    pub(crate) pg: Option<Postgres>,
    pub(crate) redis: Option<RedisServer>,
    pub(crate) dir: TempDir,
}

impl Site {
    pub(crate) fn start(name: &str, backend: Backend) -> Site {
        Site::start_with(name, backend, |_| Vec::new())
    }

    /// `start` with more flags for `serve`, made from the test's directory.
    pub(crate) fn start_with(
        name: &str,
        backend: Backend,
        extra: impl Fn(&TempDir) -> Vec<String>,
    ) -> Site {
        let dir = TempDir::new(name);
        let (pg, redis) = match backend {
            Backend::Sqlite => (None, None),
            Backend::PostgresRedis => (Some(Postgres::start()), Some(RedisServer::start())),
        };
        let data = dir.join("data");
        let roles = dir.join("roles.toml");
        // Users may read and write papers; only admins may administer.
        std::fs::write(
            &roles,
            "[roles.user]\nscopes = [\"papers:read\", \"papers:write\"]\n[roles.admin]\nscopes = [\"admin\"]\n",
        )
        .unwrap();
        let mut all = vec![
            "--insecure-cookies".to_string(),
            "--data-dir".into(),
            data,
            "--roles".into(),
            roles,
        ];
        if let (Some(pg), Some(redis)) = (&pg, &redis) {
            all.extend([
                "--database-url".into(),
                pg.url(),
                "--redis-url".into(),
                redis.url(),
            ]);
        }
        all.extend(extra(&dir));
        let gh = Gatehouse::spawn(&all);
        Site { gh, pg, redis, dir }
    }

    /// `gatehouse <args>` on this site's database and session store; the database URL by
    /// environment, as the README tells operators to pass it.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_stdin(args, None)
    }

    pub(crate) fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let (data, roles) = (self.dir.join("data"), self.dir.join("roles.toml"));
        let mut all = args.to_vec();
        all.extend(["--data-dir", &data, "--roles", &roles]);
        let redis = self.redis.as_ref().map(RedisServer::url);
        if let Some(url) = &redis {
            all.extend(["--redis-url", url]);
        }
        let url = self.pg.as_ref().map(Postgres::url);
        let env: Vec<_> = url
            .iter()
            .map(|u| ("GATEHOUSE_DATABASE_URL", u.as_str()))
            .collect();
        gatehouse_cli_with(&all, &env, stdin)
    }

    pub(crate) fn create_user(&self, username: &str) {
        let email = format!("{username}@example.org");
        let out = self.cli_stdin(
            &["user", "create", "--username", username, "--email", &email],
            Some(PW),
        );
        assert!(out.status.success(), "{out:?}");
    }

    /// A confidential client of the authorization code and refresh grants, returning to
    /// CALLBACK, with `scopes`: its id and secret.
    fn code_client(&self, name: &str, scopes: &[&str]) -> (String, String) {
        let mut args = vec![
            "--name",
            name,
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--redirect-uri",
            CALLBACK,
        ];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        let (id, secret) = self.client(&args);
        (id, secret.expect("a confidential client's secret"))
    }

    /// Registers a client with the CLI: its id and secret.
    pub(crate) fn client(&self, args: &[&str]) -> (String, Option<String>) {
        let mut all = vec!["client", "create", "--json"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&cli_stdout(&self.cli(&all))).unwrap();
        (
            v["client_id"].as_str().unwrap().to_string(),
            v["client_secret"].as_str().map(str::to_string),
        )
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gh.url())
    }

    /// The `oauth2` crate's client for a registered client, pointed at this server.
    fn oauth(&self, id: &str, secret: Option<&str>) -> OAuthClient {
        let mut c = BasicClient::new(ClientId::new(id.to_string()));
        if let Some(s) = secret {
            c = c.set_client_secret(ClientSecret::new(s.to_string()));
        }
        c.set_token_uri(TokenUrl::new(self.url("/oauth/token")).unwrap())
            .set_introspection_url(IntrospectionUrl::new(self.url("/oauth/introspect")).unwrap())
    }

    /// RFC 7009 revocation by hand: the `oauth2` crate revokes over https only, and these
    /// servers listen on plain loopback http.
    fn revoke(&self, id: &str, secret: &str, token: &str) -> Response {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        http_request(
            "POST",
            self.gh.addr(),
            "/oauth/revoke",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &format!("Basic {basic}")),
            ],
            format!("token={token}&token_type_hint=access_token").as_bytes(),
        )
    }

    /// `POST /oauth/token` by hand, for what a well-behaved library will not send.
    pub(crate) fn token_raw(
        &self,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (Response, serde_json::Value) {
        let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        let r = http_request(
            "POST",
            self.gh.addr(),
            "/oauth/token",
            &all,
            body.as_bytes(),
        );
        let v = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
        (r, v)
    }
}

/// The `oauth2` crate's client with a token and an introspection endpoint.
type OAuthClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// The `oauth2` crate's HTTP, through the tests' own loopback client.
pub(crate) fn http(request: HttpRequest) -> Result<HttpResponse, std::io::Error> {
    let uri = request.uri();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap_or(80));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let borrowed: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = try_http_request(
        request.method().as_str(),
        &addr,
        path,
        &borrowed,
        request.body(),
        Duration::from_secs(10),
    )?;
    let mut builder = oauth2::http::Response::builder().status(r.status);
    for (k, v) in &r.headers {
        builder = builder.header(k, v);
    }
    Ok(builder.body(r.body.into_bytes()).unwrap())
}

pub(crate) fn bearer(gh: &Gatehouse, token: &str) -> Response {
    http_get(
        gh.addr(),
        "/auth",
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

/// `/auth` until it refuses `token`, for at most 2 s (the revocation bound is 1 s).
fn refused_soon(gh: &Gatehouse, token: &str) -> bool {
    soon(|| bearer(gh, token).status == 401)
}

/// The claims of the JWT in an `/auth` answer.
pub(crate) fn claims(r: &Response) -> serde_json::Value {
    jwt_claims(
        r.header("x-auth-request-jwt")
            .or(r.header("authorization"))
            .unwrap(),
    )
}

/// Each named `fn(Backend)` as two tests, `sqlite::NAME` and `postgres_redis::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Sqlite)
            })*
        }
        mod postgres_redis {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::PostgresRedis)
            })*
        }
    };
}

pub(crate) use on_both_backends;

on_both_backends!(
    client_credentials_reach_auth_with_exactly_the_granted_scopes,
    disabling_or_rotating_a_client_ends_its_tokens,
    authorization_code_with_pkce_consent_and_refresh_rotation,
    personal_tokens_and_authorized_apps,
);

fn client_credentials_reach_auth_with_exactly_the_granted_scopes(backend: Backend) {
    let site = Site::start("registry-cc", backend);
    let (id, secret) = site.client(&[
        "--name",
        "Harvester",
        "--scope",
        "papers:read",
        "--scope",
        "papers:write",
    ]);
    let secret = secret.expect("a confidential client has a secret");
    assert!(
        secret.starts_with("gcs_") && secret.len() >= 4 + 43,
        "{secret}"
    );
    let client = site.oauth(&id, Some(&secret));

    // Basic authentication (the library's default), one of the two scopes.
    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("papers:read".into()))
        .request(&http)
        .unwrap();
    let access = token.access_token().secret().clone();
    assert!(
        access.starts_with("gtc_"),
        "a client token has the client prefix"
    );
    assert_eq!(token.expires_in(), Some(Duration::from_secs(3600)));
    assert_eq!(
        token
            .scopes()
            .unwrap()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        ["papers:read"]
    );
    let r = bearer(&site.gh, &access);
    assert_eq!(r.status, 200, "{}", r.body);
    let c = claims(&r);
    assert_eq!(c["scope"], "papers:read", "{c}");
    assert_eq!(c["client_id"], id.as_str(), "{c}");
    assert_eq!(c["sub"], id.as_str(), "{c}");

    // The stored lifetime is the expires_in: introspection tells both.
    let seen = client
        .introspect(token.access_token())
        .request(&http)
        .unwrap();
    assert!(seen.active());
    assert_eq!(seen.client_id().map(|c| c.as_str()), Some(id.as_str()));
    let (exp, iat) = (seen.exp().unwrap(), seen.iat().unwrap());
    assert_eq!((exp - iat).num_seconds(), 3600);

    // client_secret_post, no scope asked: every scope of the client.
    let post = site
        .oauth(&id, Some(&secret))
        .set_auth_type(AuthType::RequestBody);
    let all = post.exchange_client_credentials().request(&http).unwrap();
    let r = bearer(&site.gh, all.access_token().secret());
    assert_eq!(claims(&r)["scope"], "papers:read papers:write");

    // The token response is never cached.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let (r, _) = site.token_raw(
        &[("Authorization", &format!("Basic {basic}"))],
        "grant_type=client_credentials",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // Revocation (RFC 7009): /auth refuses it, introspection calls it inactive.
    let r = site.revoke(&id, &secret, &access);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        refused_soon(&site.gh, &access),
        "a revoked token still passed /auth"
    );
    assert!(!client
        .introspect(token.access_token())
        .request(&http)
        .unwrap()
        .active());
    assert_eq!(bearer(&site.gh, all.access_token().secret()).status, 200);

    // Another client sees nothing of this client's tokens and cannot revoke them.
    let (other_id, other_secret) = site.client(&["--name", "Other", "--scope", "papers:read"]);
    let other = site.oauth(&other_id, other_secret.as_deref());
    assert!(!other
        .introspect(all.access_token())
        .request(&http)
        .unwrap()
        .active());
    let r = site.revoke(
        &other_id,
        other_secret.as_deref().unwrap(),
        all.access_token().secret(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(bearer(&site.gh, all.access_token().secret()).status, 200);
    // Nor of a token nobody issued.
    let unknown = oauth2::AccessToken::new("gtc_nothing".into());
    assert!(!client.introspect(&unknown).request(&http).unwrap().active());
}

fn disabling_or_rotating_a_client_ends_its_tokens(backend: Backend) {
    let site = Site::start("registry-life", backend);
    let (id, secret) = site.client(&["--name", "Mirror", "--scope", "papers:read"]);
    let secret = secret.unwrap();
    let token = |secret: &str| {
        site.oauth(&id, Some(secret))
            .exchange_client_credentials()
            .request(&http)
    };
    let first = token(&secret).unwrap();
    let first = first.access_token().secret().clone();
    assert_eq!(bearer(&site.gh, &first).status, 200);

    let out = site.cli(&["client", "disable", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        refused_soon(&site.gh, &first),
        "a disabled client's token lived on"
    );
    assert!(token(&secret).is_err(), "a disabled client got a token");
    assert!(site.cli(&["client", "enable", &id]).status.success());
    let second = token(&secret).unwrap().access_token().secret().clone();
    assert_eq!(bearer(&site.gh, &second).status, 200);

    let rotated: serde_json::Value = serde_json::from_str(&cli_stdout(&site.cli(&[
        "client",
        "rotate-secret",
        "--json",
        &id,
    ])))
    .unwrap();
    let new_secret = rotated["client_secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(
        refused_soon(&site.gh, &second),
        "a token outlived its secret"
    );
    assert!(token(&secret).is_err(), "the old secret still works");
    let third = token(new_secret).unwrap().access_token().secret().clone();
    assert_eq!(bearer(&site.gh, &third).status, 200);

    let listed = cli_stdout(&site.cli(&["client", "list", "--json"]));
    assert_eq!(listed.lines().count(), 1);
    assert!(
        !listed.contains(new_secret) && !listed.contains("gcs_"),
        "{listed}"
    );
    // The secrets never reach a log line.
    for s in [secret.as_str(), new_secret, &first, &second, &third] {
        assert!(!site.gh.logs().contains(s), "a secret in the logs");
    }
}

#[test]
fn token_endpoint_refusals_follow_rfc_6749() {
    let site = Site::start("registry-refuse", Backend::Sqlite);
    let (id, secret) = site.client(&["--name", "Bot", "--scope", "papers:read"]);
    let secret = secret.unwrap();
    let basic = |id: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    };
    let error = |v: &serde_json::Value| v["error"].as_str().unwrap_or("").to_string();

    // Wrong secret by Basic and by body, unknown client: 401 invalid_client with a challenge.
    for (headers, body) in [
        (
            vec![("Authorization", basic(&id, "gcs_wrong"))],
            "grant_type=client_credentials".to_string(),
        ),
        (
            vec![],
            format!("grant_type=client_credentials&client_id={id}&client_secret=gcs_wrong"),
        ),
        (
            vec![("Authorization", basic("nosuchclient", &secret))],
            "grant_type=client_credentials".to_string(),
        ),
        (vec![], "grant_type=client_credentials".to_string()),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (r, v) = site.token_raw(&h, &body);
        assert_eq!(
            (r.status, error(&v)),
            (401, "invalid_client".into()),
            "{body}"
        );
        assert!(r.header("www-authenticate").is_some());
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let auth = basic(&id, &secret);
    let with_basic = [("Authorization", auth.as_str())];
    // Scope escalation.
    let (r, v) = site.token_raw(&with_basic, "grant_type=client_credentials&scope=admin");
    assert_eq!((r.status, error(&v)), (400, "invalid_scope".into()));
    let (r, v) = site.token_raw(
        &with_basic,
        "grant_type=client_credentials&scope=papers%3Aread+papers%3Awrite",
    );
    assert_eq!((r.status, error(&v)), (400, "invalid_scope".into()));
    // Grants this server never offers.
    for grant in ["password&username=a&password=b", "implicit", "urn:x"] {
        let (r, v) = site.token_raw(&with_basic, &format!("grant_type={grant}"));
        assert_eq!(
            (r.status, error(&v)),
            (400, "unsupported_grant_type".into()),
            "{grant}"
        );
    }
    // A repeated parameter, two authentication methods, no grant, not a form.
    for body in [
        "grant_type=client_credentials&scope=papers%3Aread&scope=papers%3Aread".to_string(),
        format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
        "scope=papers%3Aread".to_string(),
    ] {
        let (r, v) = site.token_raw(&with_basic, &body);
        assert_eq!(
            (r.status, error(&v)),
            (400, "invalid_request".into()),
            "{body}"
        );
    }
    let r = http_request(
        "POST",
        site.gh.addr(),
        "/oauth/token",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        br#"{"grant_type":"client_credentials"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // A public client has no secret and cannot use client_credentials.
    let refused = site.cli(&[
        "client",
        "create",
        "--name",
        "SPA",
        "--public",
        "--grant",
        "client_credentials",
    ]);
    assert_eq!(refused.status.code(), Some(64), "{refused:?}");
    let (public, none) = site.client(&[
        "--name",
        "SPA",
        "--public",
        "--redirect-uri",
        "http://127.0.0.1:9999/cb",
    ]);
    assert!(none.is_none());
    let (r, v) = site.token_raw(
        &[],
        &format!("grant_type=client_credentials&client_id={public}"),
    );
    assert_eq!(
        (r.status, error(&v)),
        (400, "unauthorized_client".into()),
        "{}",
        r.body
    );
    // Redirect URIs are checked when a client is registered.
    for bad in [
        "http://app.example.org/cb",
        "https://app.example.org/cb#x",
        "https://*.example.org/cb",
    ] {
        let out = site.cli(&[
            "client",
            "create",
            "--name",
            "X",
            "--public",
            "--redirect-uri",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(64), "{bad}: {out:?}");
    }

    // The metadata (RFC 8414) names the endpoints this server has.
    let r = http_get(
        site.gh.addr(),
        "/.well-known/oauth-authorization-server",
        &[],
    );
    assert_eq!(r.status, 200);
    let m: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        m["token_endpoint"],
        format!("{}/oauth/token", site.gh.url())
    );
    assert_eq!(
        m["grant_types_supported"],
        serde_json::json!([
            "authorization_code",
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code"
        ])
    );
    assert_eq!(
        m["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        m["authorization_endpoint"],
        format!("{}/oauth/authorize", site.gh.url())
    );
    assert!(m["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&"client_secret_basic".into()));
}

// ---------------------------------------------------------------------------------------
// The authorization code grant: a user in a browser, the client through the `oauth2` crate.

/// Where the client's redirect URI points: nothing listens, the test reads the `Location`.
pub(crate) const CALLBACK: &str = "http://127.0.0.1:9/cb";

/// `GET` an authorization URL as a browser, signing in as `user` when sent to `/login`:
/// the answer after sign-in (a consent page, or the redirect back to the client).
pub(crate) fn open_authorize(b: &mut Browser, url: &str, user: &str) -> Response {
    let path = url
        .split_once("/oauth/")
        .map(|(_, p)| format!("/oauth/{p}"))
        .unwrap();
    let r = b.get(&path);
    let to_login = r.header("location").unwrap_or("");
    if r.status != 303 || !to_login.starts_with("/login") {
        return r;
    }
    let page = b.get(to_login);
    let csrf = hidden(&page.body, "csrf").unwrap();
    let rd = hidden(&page.body, "rd").unwrap();
    assert!(
        rd.starts_with("/oauth/authorize?"),
        "sign-in does not come back: {rd}"
    );
    let r = b.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("username", user),
            ("password", PW),
            ("rd", &rd),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some(rd.as_str()));
    b.get(&rd)
}

/// Answers a consent page as its buttons would.
pub(crate) fn answer_consent(b: &mut Browser, page: &Response, decision: &str) -> Response {
    assert_eq!(page.status, 200, "{}", page.body);
    let mut fields: Vec<(String, String)> = [
        "csrf",
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
        "nonce",
        "response_mode",
        "resource",
    ]
    .iter()
    .filter_map(|n| hidden(&page.body, n).map(|v| (n.to_string(), v)))
    .collect();
    fields.push(("decision".into(), decision.into()));
    let borrowed: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    b.post("/oauth/authorize", &borrowed)
}

/// The query parameters of the redirect back to the client.
pub(crate) fn callback(r: &Response) -> std::collections::HashMap<String, String> {
    assert_eq!(r.status, 303, "{}", r.body);
    let location = r.header("location").unwrap();
    assert!(location.starts_with(CALLBACK), "sent elsewhere: {location}");
    oauth2::url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The RFC 6749 §5.2 error code of a failed token request.
fn error_code<T: std::fmt::Debug, E: std::error::Error + 'static>(
    r: Result<T, oauth2::RequestTokenError<E, oauth2::basic::BasicErrorResponse>>,
) -> String {
    match r {
        Err(oauth2::RequestTokenError::ServerResponse(e)) => e.error().to_string(),
        other => panic!("expected an OAuth error, got {other:?}"),
    }
}

fn authorization_code_with_pkce_consent_and_refresh_rotation(backend: Backend) {
    use oauth2::{AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, RedirectUrl};
    let site = Site::start("registry-code", backend);
    site.create_user("rosa");
    let (id, secret) = site.client(&[
        "--name",
        "Paper Shelf",
        "--homepage",
        "https://shelf.example.org",
        "--grant",
        "authorization_code",
        "--grant",
        "refresh_token",
        "--redirect-uri",
        CALLBACK,
        "--scope",
        "papers:read",
        "--scope",
        "papers:write",
        "--scope",
        "admin",
    ]);
    let secret = secret.unwrap();
    let client = BasicClient::new(ClientId::new(id.clone()))
        .set_client_secret(ClientSecret::new(secret.clone()))
        .set_auth_uri(AuthUrl::new(site.url("/oauth/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(site.url("/oauth/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).unwrap());
    let authorize = |scopes: &[&str]| {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge);
        for s in scopes {
            req = req.add_scope(Scope::new(s.to_string()));
        }
        let (url, state) = req.url();
        (url.to_string(), state, verifier)
    };

    // Signed out: to /login and back; a consent page names the client and the scopes. The
    // user may read papers but not administer: `admin` is not offered, though asked for.
    let mut b = Browser::new(site.gh.addr());
    let (url, state, verifier) = authorize(&["papers:read", "admin"]);
    let page = open_authorize(&mut b, &url, "rosa");
    assert!(
        page.body.contains("Paper Shelf") && page.body.contains("shelf.example.org"),
        "{} {}",
        page.status,
        page.body
    );
    assert!(page.body.contains("Read your papers"), "{}", page.body);
    assert!(
        !page.body.contains("(admin)"),
        "a scope the user lacks was offered"
    );
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    assert_eq!(
        back["state"],
        *state.secret(),
        "state not echoed byte for byte"
    );
    assert_eq!(back["iss"], site.gh.url());
    let code = back["code"].clone();
    let tokens = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(verifier)
        .request(&http)
        .unwrap();
    let access = tokens.access_token().secret().clone();
    let r = bearer(&site.gh, &access);
    assert_eq!(r.status, 200, "{}", r.body);
    let c = claims(&r);
    assert_eq!(
        (c["scope"].as_str(), c["client_id"].as_str()),
        (Some("papers:read"), Some(id.as_str())),
        "{c}"
    );
    assert_eq!(
        c["preferred_username"].as_str().or(c["username"].as_str()),
        Some("rosa"),
        "{c}"
    );
    // Issue 18: the token says how the consenting user signed in (a password), and when.
    assert_eq!(c["amr"], serde_json::json!(["pwd"]), "{c}");
    assert_eq!(c["acr"], "urn:gatehouse:acr:1fa", "{c}");
    assert!(c["auth_time"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(r.header("x-auth-request-amr"), Some("pwd"));
    assert_eq!(tokens.expires_in(), Some(Duration::from_secs(3600)));
    let first_refresh = tokens.refresh_token().unwrap().clone();

    // Consent is remembered: the next request comes straight back with a code.
    let (url, _, verifier2) = authorize(&["papers:read"]);
    let back2 = callback(&open_authorize(&mut b, &url, "rosa"));
    let second = client
        .exchange_code(AuthorizationCode::new(back2["code"].clone()))
        .set_pkce_verifier(verifier2)
        .request(&http)
        .unwrap();

    // A replayed code is refused and revokes every token it produced.
    let (_, verifier_again) = PkceCodeChallenge::new_random_sha256();
    let replay = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier_again)
        .request(&http);
    assert_eq!(error_code(replay), "invalid_grant");
    assert!(
        refused_soon(&site.gh, &access),
        "a replayed code's token lived on"
    );
    assert_eq!(
        error_code(client.exchange_refresh_token(&first_refresh).request(&http)),
        "invalid_grant"
    );
    assert_eq!(
        bearer(&site.gh, second.access_token().secret()).status,
        200,
        "another grant was hit"
    );

    // Refresh: rotation on every use, scopes may narrow and never widen.
    let r1 = second.refresh_token().unwrap().clone();
    let wider = client
        .exchange_refresh_token(&r1)
        .add_scope(Scope::new("papers:write".into()))
        .request(&http);
    assert_eq!(error_code(wider), "invalid_scope");
    let rotated = client.exchange_refresh_token(&r1).request(&http).unwrap();
    let r2 = rotated.refresh_token().unwrap().clone();
    assert_ne!(r2.secret(), r1.secret(), "the refresh token did not rotate");
    let r = bearer(&site.gh, rotated.access_token().secret());
    assert_eq!(r.status, 200);
    // A refreshed token keeps the consenting sign-in's amr and auth_time.
    assert_eq!(
        (claims(&r)["amr"].clone(), claims(&r)["auth_time"].clone()),
        (c["amr"].clone(), c["auth_time"].clone())
    );
    // The spent one again (a thief, or the client after a theft): the whole family ends.
    assert_eq!(
        error_code(client.exchange_refresh_token(&r1).request(&http)),
        "invalid_grant"
    );
    assert!(refused_soon(&site.gh, rotated.access_token().secret()));
    assert!(refused_soon(&site.gh, second.access_token().secret()));
    assert_eq!(
        error_code(client.exchange_refresh_token(&r2).request(&http)),
        "invalid_grant"
    );

    // Revoking a refresh token (RFC 7009) ends its family's access tokens.
    let (url, _, verifier3) = authorize(&["papers:read"]);
    let third = client
        .exchange_code(AuthorizationCode::new(
            callback(&open_authorize(&mut b, &url, "rosa"))["code"].clone(),
        ))
        .set_pkce_verifier(verifier3)
        .request(&http)
        .unwrap();
    assert_eq!(bearer(&site.gh, third.access_token().secret()).status, 200);
    let r = site.revoke(&id, &secret, third.refresh_token().unwrap().secret());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(refused_soon(&site.gh, third.access_token().secret()));

    // Denying sends the browser back with access_denied.
    let mut other = Browser::new(site.gh.addr());
    site.create_user("sami");
    let (url, state, _) = authorize(&["papers:read"]);
    let page = open_authorize(&mut other, &url, "sami");
    let back = callback(&answer_consent(&mut other, &page, "deny"));
    assert_eq!(
        (back["error"].as_str(), back["state"].as_str()),
        ("access_denied", state.secret().as_str())
    );
}

#[test]
fn authorization_requests_refuse_the_rfc_9700_attacks() {
    use oauth2::{AuthorizationCode, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl};
    let site = Site::start("registry-attacks", Backend::Sqlite);
    site.create_user("tess");
    let code_client = |name: &str| {
        site.client(&[
            "--name",
            name,
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--redirect-uri",
            CALLBACK,
            "--scope",
            "papers:read",
        ])
    };
    let (id, secret) = code_client("Reader");
    let (other_id, other_secret) = code_client("Another");
    let oauth = |id: &str, secret: &str| {
        BasicClient::new(ClientId::new(id.into()))
            .set_client_secret(ClientSecret::new(secret.into()))
            .set_token_uri(TokenUrl::new(site.url("/oauth/token")).unwrap())
            .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).unwrap())
    };
    let client = oauth(&id, secret.as_deref().unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let query = |fields: &[(&str, &str)]| format!("/oauth/authorize?{}", form_encode(fields));
    let base = |redirect: &str, state: &str| {
        vec![
            ("response_type", "code".to_string()),
            ("client_id", id.clone()),
            ("redirect_uri", redirect.to_string()),
            ("scope", "papers:read".to_string()),
            ("state", state.to_string()),
            ("code_challenge", challenge.as_str().to_string()),
            ("code_challenge_method", "S256".to_string()),
        ]
    };
    let url_of = |fields: &[(&str, String)]| {
        let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        query(&f)
    };

    // Signed in, consent given once.
    let mut b = Browser::new(site.gh.addr());
    let page = open_authorize(&mut b, &site.url(&url_of(&base(CALLBACK, "s1"))), "tess");
    let first = callback(&answer_consent(&mut b, &page, "allow"));

    // Redirect URI variants: an error page of ours, never a redirect.
    for variant in [
        "http://127.0.0.1:9/cb/",
        "http://127.0.0.1:9/CB",
        "HTTP://127.0.0.1:9/cb",
        "http://127.0.0.1:99/cb",
        "http://evil@127.0.0.1:9/cb",
        "http://127.0.0.1:9/cb/../cb",
        "http://127.0.0.1:9/cb?x=1",
        "http://127.0.0.1:9/cb#f",
        "https://evil.example/cb",
    ] {
        let r = b.get(&url_of(&base(variant, "s")));
        assert_eq!(r.status, 400, "{variant}: {}", r.body);
        assert!(r.header("location").is_none(), "{variant} redirected");
        assert!(r.body.contains("not registered"), "{variant}");
    }
    // An unknown client: the same page.
    let mut unknown = base(CALLBACK, "s");
    unknown[1].1 = "nosuchclient".into();
    let r = b.get(&url_of(&unknown));
    assert_eq!((r.status, r.header("location")), (400, None));

    // Other errors go back to the registered URI, with the state.
    let error_of = |fields: &[(&str, String)], b: &mut Browser| {
        let back = callback(&b.get(&url_of(fields)));
        assert_eq!(back["state"], "s");
        back["error"].clone()
    };
    let mut no_pkce = base(CALLBACK, "s");
    no_pkce.retain(|(k, _)| !k.starts_with("code_challenge"));
    assert_eq!(error_of(&no_pkce, &mut b), "invalid_request");
    let mut plain = base(CALLBACK, "s");
    plain[5].1 = "a".repeat(43);
    plain[6].1 = "plain".into();
    assert_eq!(error_of(&plain, &mut b), "invalid_request");
    let mut implicit = base(CALLBACK, "s");
    implicit[0].1 = "token".into();
    assert_eq!(error_of(&implicit, &mut b), "unsupported_response_type");
    let mut escalate = base(CALLBACK, "s");
    escalate[3].1 = "papers:read admin".into();
    assert_eq!(error_of(&escalate, &mut b), "invalid_scope");

    // The state comes back byte for byte, whatever it holds.
    let odd = "a b&c=d/é%~+";
    let back = callback(&b.get(&url_of(&base(CALLBACK, odd))));
    assert_eq!(back["state"], odd);

    // A wrong verifier burns the code: the right one fails after it.
    let wrong = client
        .exchange_code(AuthorizationCode::new(back["code"].clone()))
        .set_pkce_verifier(PkceCodeVerifier::new("x".repeat(43)))
        .request(&http);
    assert_eq!(error_code(wrong), "invalid_grant");
    let after = client
        .exchange_code(AuthorizationCode::new(back["code"].clone()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.secret().clone()))
        .request(&http);
    assert_eq!(error_code(after), "invalid_grant", "a burnt code worked");

    // A code redeemed by another client is refused, and burnt: the right client then fails
    // with it too.
    let other = oauth(&other_id, other_secret.as_deref().unwrap());
    let fresh = callback(&b.get(&url_of(&base(CALLBACK, "s"))));
    let stolen = other
        .exchange_code(AuthorizationCode::new(fresh["code"].clone()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.secret().clone()))
        .request(&http);
    assert_eq!(error_code(stolen), "invalid_grant");
    let after = client
        .exchange_code(AuthorizationCode::new(fresh["code"].clone()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.secret().clone()))
        .request(&http);
    assert_eq!(
        error_code(after),
        "invalid_grant",
        "a stolen code was not burnt"
    );
    let _ = &first;

    // A code redeemed with another redirect_uri than it was issued for (RFC 6749 §4.1.3):
    // refused, and burnt.
    let fresh = callback(&b.get(&url_of(&base(CALLBACK, "s"))));
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{id}:{}", secret.as_deref().unwrap()));
    let redeem_at = |redirect: &str| {
        site.token_raw(
            &[("Authorization", &format!("Basic {basic}"))],
            &form_encode(&[
                ("grant_type", "authorization_code"),
                ("code", &fresh["code"]),
                ("redirect_uri", redirect),
                ("code_verifier", verifier.secret()),
            ]),
        )
    };
    let (r, v) = redeem_at("http://127.0.0.1:9/elsewhere");
    assert_eq!(
        (r.status, v["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (r, v) = redeem_at(CALLBACK);
    assert_eq!(
        (r.status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "a code redeemed at another redirect_uri was not burnt"
    );

    // A consent form without its CSRF token, or from another site: 403.
    let r = b.post(
        "/oauth/authorize",
        &[("client_id", &id), ("decision", "allow")],
    );
    assert_eq!(r.status, 403);
    let consent_fields = [
        (
            "csrf",
            b.cookie("gatehouse_session_csrf").unwrap().to_string(),
        ),
        ("client_id", id.clone()),
        ("decision", "allow".to_string()),
    ];
    let fields: Vec<(&str, &str)> = consent_fields
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let r = b.post_with(
        "/oauth/authorize",
        &fields,
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Origin", "https://evil.example"),
        ],
    );
    assert_eq!(r.status, 403, "a cross-site consent was taken: {}", r.body);
    assert_ne!(
        b.post("/oauth/authorize", &fields).status,
        403,
        "the same form from this site is not refused for its origin"
    );

    // Deactivating the user ends what they granted: access tokens now, refresh at next use.
    let back = callback(&b.get(&url_of(&base(CALLBACK, "s"))));
    let tokens = client
        .exchange_code(AuthorizationCode::new(back["code"].clone()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.secret().clone()))
        .request(&http)
        .unwrap();
    assert_eq!(bearer(&site.gh, tokens.access_token().secret()).status, 200);
    assert!(site.cli(&["user", "deactivate", "tess"]).status.success());
    assert!(refused_soon(&site.gh, tokens.access_token().secret()));
    let refreshed = client
        .exchange_refresh_token(tokens.refresh_token().unwrap())
        .request(&http);
    assert_eq!(error_code(refreshed), "invalid_grant");
}

fn personal_tokens_and_authorized_apps(backend: Backend) {
    use oauth2::{AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, RedirectUrl};
    let site = Site::start("registry-pat", backend);
    site.create_user("uma");
    let mut b = Browser::new(site.gh.addr());
    let page = b.get("/account/tokens");
    assert_eq!(page.status, 303, "signed out is sent to sign in");
    let login = b.get("/login");
    let csrf = hidden(&login.body, "csrf").unwrap();
    assert_eq!(
        b.post(
            "/login",
            &[("csrf", &csrf), ("username", "uma"), ("password", PW)]
        )
        .status,
        303
    );

    // Create one on the page: shown once, then listed by name.
    let page = b.get("/account/tokens");
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = hidden(&page.body, "csrf").unwrap();
    let r = b.post(
        "/account/tokens",
        &[
            ("csrf", &csrf),
            ("action", "create"),
            ("name", "nightly harvest"),
            ("scope", "papers:read"),
            ("expires", "30"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r
        .body
        .split("value=\"gtp_")
        .nth(1)
        .map(|t| format!("gtp_{}", &t[..t.find('"').unwrap()]))
        .expect("the new token on the page");
    let auth = bearer(&site.gh, &token);
    assert_eq!(auth.status, 200);
    assert_eq!(claims(&auth)["scope"], "papers:read");
    let listed = b.get("/account/tokens");
    assert!(
        listed.body.contains("nightly harvest") && !listed.body.contains(&token),
        "shown twice"
    );
    // A scope the user does not have is refused.
    let r = b.post(
        "/account/tokens",
        &[
            ("csrf", &csrf),
            ("action", "create"),
            ("name", "root"),
            ("scope", "admin"),
        ],
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not one of yours"));
    // Revoke on the page: /auth refuses it.
    let sid = hidden(&listed.body, "sid").unwrap();
    let r = b.post(
        "/account/tokens",
        &[("csrf", &csrf), ("action", "revoke"), ("sid", &sid)],
    );
    assert!(r.body.contains("revoked"), "{}", r.body);
    assert!(refused_soon(&site.gh, &token));

    // The administrators' CLI: create, list, revoke.
    let made: serde_json::Value = serde_json::from_str(&cli_stdout(&site.cli(&[
        "token",
        "create",
        "--json",
        "--user",
        "uma",
        "--name",
        "ci",
        "--scope",
        "papers:write",
        "--expires-in",
        "1d",
    ])))
    .unwrap();
    let cli_token = made["token"].as_str().unwrap();
    assert_eq!(
        claims(&bearer(&site.gh, cli_token))["scope"],
        "papers:write"
    );
    let list = cli_stdout(&site.cli(&["token", "list", "--user", "uma"]));
    assert!(list.contains(" ci ") && !list.contains(cli_token), "{list}");
    assert_eq!(
        site.cli(&["token", "create", "--user", "uma", "--name", "x", "--scope", "admin"])
            .status
            .code(),
        Some(64)
    );
    let revoked = site.cli(&[
        "token",
        "revoke",
        "--user",
        "uma",
        "--sid",
        made["sid"].as_str().unwrap(),
    ]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(refused_soon(&site.gh, cli_token));

    // Authorized apps: listed after consent; withdrawing ends the app's tokens.
    let (id, secret) = site.client(&[
        "--name",
        "Shelf",
        "--grant",
        "authorization_code",
        "--redirect-uri",
        CALLBACK,
        "--scope",
        "papers:read",
    ]);
    let client = BasicClient::new(ClientId::new(id.clone()))
        .set_client_secret(ClientSecret::new(secret.unwrap()))
        .set_auth_uri(AuthUrl::new(site.url("/oauth/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(site.url("/oauth/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .url();
    let page = open_authorize(&mut b, url.as_str(), "uma");
    let code = callback(&answer_consent(&mut b, &page, "allow"))["code"].clone();
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request(&http)
        .unwrap();
    assert!(
        tokens.refresh_token().is_none(),
        "no refresh_token grant, no refresh token"
    );
    assert_eq!(bearer(&site.gh, tokens.access_token().secret()).status, 200);
    let apps = b.get("/account/apps");
    assert!(
        apps.body.contains("Shelf") && apps.body.contains("papers:read"),
        "{}",
        apps.body
    );
    let csrf = hidden(&apps.body, "csrf").unwrap();
    let r = b.post("/account/apps", &[("csrf", &csrf), ("client_id", &id)]);
    assert!(
        r.body.contains("Access withdrawn") && !r.body.contains("<strong>Shelf"),
        "{}",
        r.body
    );
    assert!(refused_soon(&site.gh, tokens.access_token().secret()));
    // And it must ask again.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let (url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .url();
    assert_eq!(
        open_authorize(&mut b, url.as_str(), "uma").status,
        200,
        "consent was not forgotten"
    );
}

#[test]
fn the_api_catalog_for_programs_and_people() {
    let site = Site::start_with("registry-catalog", Backend::Sqlite, |dir| {
        let path = dir.join("apis.toml");
        std::fs::write(
            &path,
            "[[api]]\nname = \"Papers\"\ndescription = \"Search and fetch papers.\"\n\
             base_url = \"https://example.org/api/papers\"\nscopes = [\"papers:read\"]\n\
             docs = \"https://example.org/docs/papers\"\n",
        )
        .unwrap();
        vec!["--api-catalog".into(), path]
    });
    let json = http_get(site.gh.addr(), "/api", &[("Accept", "application/json")]);
    assert_eq!(json.status, 200, "{}", json.body);
    let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(v["apis"][0]["name"], "Papers");
    assert_eq!(v["apis"][0]["scopes"], serde_json::json!(["papers:read"]));
    assert_eq!(
        v["token_endpoint"],
        format!("{}/oauth/token", site.gh.url())
    );
    assert_eq!(json.header("vary"), Some("Accept"));
    let page = http_get(site.gh.addr(), "/api", &[("Accept", "text/html,*/*;q=0.8")]);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(
        page.body.contains("Search and fetch papers.") && page.body.contains("/account/tokens")
    );

    // A catalog that does not parse stops the server with one line naming the flag.
    let dir = TempDir::new("registry-catalog-bad");
    let bad = dir.join("apis.toml");
    std::fs::write(&bad, "[[api]]\nname = \"x\"\nbase_url = 3\n").unwrap();
    let data = dir.join("data");
    let out = gatehouse_cli(&["serve", "--data-dir", &data, "--api-catalog", &bad]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-catalog"));
}

#[test]
fn users_register_and_manage_their_own_clients() {
    let site = Site::start("registry-own", Backend::Sqlite);
    site.create_user("vera");
    site.create_user("walt");
    let mut vera = signed_in(&site, "vera");
    let page = vera.get("/account/clients");
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = hidden(&page.body, "csrf").unwrap();
    let register = |b: &mut Browser, redirect: &str| {
        b.post(
            "/account/clients",
            &[
                ("csrf", &csrf),
                ("action", "create"),
                ("name", "Vera's Reader"),
                ("redirect_uri", redirect),
                ("scope", "papers:read"),
                ("scope", "admin"),
            ],
        )
    };
    let r = register(&mut vera, "http://reader.example.org/cb");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("https"), "{}", r.body);
    let r = register(&mut vera, CALLBACK);
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = hidden_value(&r.body, "The client secret");
    let id = client_id_on(&r.body);
    assert!(secret.starts_with("gcs_"));
    // What she may not give it, it does not get: a scope she lacks, client_credentials.
    let shown: serde_json::Value =
        serde_json::from_str(&cli_stdout(&site.cli(&["client", "show", "--json", &id]))).unwrap();
    assert_eq!(shown["scopes"], serde_json::json!(["papers:read"]));
    assert_eq!(
        shown["grants"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let (r, v) = site.token_raw(
        &[("Authorization", &format!("Basic {basic}"))],
        "grant_type=client_credentials",
    );
    assert_eq!(
        (r.status, v["error"].as_str()),
        (400, Some("unauthorized_client"))
    );

    // The OpenID Connect fields: a user's back-channel URI must be https; the rest is kept.
    let csrf = hidden(&vera.get("/account/clients").body, "csrf").unwrap();
    let oidc = |b: &mut Browser, backchannel: &str| {
        b.post(
            "/account/clients",
            &[
                ("csrf", &csrf),
                ("action", "create"),
                ("name", "Vera's Wiki"),
                ("redirect_uri", CALLBACK),
                ("post_logout_redirect_uri", "http://127.0.0.1:9/bye"),
                ("backchannel_logout_uri", backchannel),
                ("id_token_alg", "RS256"),
                ("access_token_format", "jwt"),
            ],
        )
    };
    let r = oidc(&mut vera, "http://wiki.example.org/bc");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Use an https address"), "{}", r.body);
    let r = oidc(&mut vera, "https://wiki.example.org/bc");
    assert_eq!(r.status, 200, "{}", r.body);
    let shown: serde_json::Value = serde_json::from_str(&cli_stdout(&site.cli(&[
        "client",
        "show",
        "--json",
        &client_id_on(&r.body),
    ])))
    .unwrap();
    assert_eq!(
        shown["post_logout_redirect_uris"],
        serde_json::json!(["http://127.0.0.1:9/bye"])
    );
    assert_eq!(
        shown["backchannel_logout_uri"],
        "https://wiki.example.org/bc"
    );
    assert_eq!(shown["id_token_alg"], "RS256");
    assert_eq!(shown["access_token_format"], "jwt");
    assert_eq!(shown["self_registered"], false);

    // Another user sees none of it and cannot touch it.
    let mut walt = signed_in(&site, "walt");
    let page = walt.get("/account/clients");
    assert!(!page.body.contains(&id));
    let walt_csrf = hidden(&page.body, "csrf").unwrap();
    let r = walt.post(
        "/account/clients",
        &[
            ("csrf", &walt_csrf),
            ("action", "disable"),
            ("client_id", &id),
        ],
    );
    assert_eq!(r.status, 403);
    let shown: serde_json::Value =
        serde_json::from_str(&cli_stdout(&site.cli(&["client", "show", "--json", &id]))).unwrap();
    assert_eq!(
        shown["disabled"], false,
        "another user disabled the client: {shown}"
    );

    // A new secret: shown once, the old one refused.
    let r = vera.post(
        "/account/clients",
        &[("csrf", &csrf), ("action", "rotate"), ("client_id", &id)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let new_secret = hidden_value(&r.body, "The client secret");
    assert_ne!(new_secret, secret);
    let (r, _) = site.token_raw(
        &[("Authorization", &format!("Basic {basic}"))],
        "grant_type=authorization_code&code=x",
    );
    assert_eq!(r.status, 401, "the old secret still works");

    // An administrator sees every client.
    assert!(site
        .cli(&["user", "role", "add", "walt", "admin"])
        .status
        .success());
    let mut admin = signed_in(&site, "walt");
    assert!(admin.get("/account/clients").body.contains(&id));

    // Deactivating its owner disables the client (the registry follows accounts).
    assert!(site.cli(&["user", "deactivate", "vera"]).status.success());
    let shown: serde_json::Value =
        serde_json::from_str(&cli_stdout(&site.cli(&["client", "show", "--json", &id]))).unwrap();
    assert_eq!(shown["disabled"], true, "{shown}");
}

/// The client id a page shows after registering a client.
fn client_id_on(html: &str) -> String {
    let after = html
        .split("client ID is <code>")
        .nth(1)
        .expect("a client id");
    after[..after.find('<').unwrap()].to_string()
}

/// The value of the read-only input labelled `label` (a secret shown once).
fn hidden_value(html: &str, label: &str) -> String {
    let at = html.find(&format!("aria-label=\"{label}\"")).expect(label);
    let rest = &html[at..];
    let start = rest.find("value=\"").unwrap() + 7;
    html_unescape(&rest[start..start + rest[start..].find('"').unwrap()])
}

/// A signed-in browser of `user` on `site`.
pub(crate) fn signed_in(site: &Site, user: &str) -> Browser {
    let mut b = Browser::new(site.gh.addr());
    let csrf = hidden(&b.get("/login").body, "csrf").unwrap();
    let r = b.post(
        "/login",
        &[("csrf", &csrf), ("username", user), ("password", PW)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    b
}

/// An authorization request of `client_id` for `scope`, with a fresh PKCE pair: the path and
/// the verifier.
pub(crate) fn authorize_path(client_id: &str, scope: &str) -> (String, String) {
    use oauth2::PkceCodeChallenge;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let path = format!(
        "/oauth/authorize?{}",
        form_encode(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CALLBACK),
            ("scope", scope),
            ("state", "s1"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
    );
    (path, verifier.secret().clone())
}

/// Redeems `code` at the token endpoint by hand: the JSON answer.
pub(crate) fn redeem(
    site: &Site,
    id: &str,
    secret: &str,
    code: &str,
    verifier: &str,
) -> serde_json::Value {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let (r, v) = site.token_raw(
        &[("Authorization", &format!("Basic {basic}"))],
        &form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    v
}

/// A refresh by hand: the answer and its JSON.
pub(crate) fn refresh_raw(
    site: &Site,
    id: &str,
    secret: &str,
    refresh: &str,
) -> (Response, serde_json::Value) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    site.token_raw(
        &[("Authorization", &format!("Basic {basic}"))],
        &form_encode(&[("grant_type", "refresh_token"), ("refresh_token", refresh)]),
    )
}

/// A refresh by hand: the status and the RFC 6749 error, if any.
pub(crate) fn refresh_status(site: &Site, id: &str, secret: &str, refresh: &str) -> (u16, String) {
    let (r, v) = refresh_raw(site, id, secret, refresh);
    (r.status, v["error"].as_str().unwrap_or("").to_string())
}

/// Issue 17, 1.1: a client asking for nothing the user can grant (here: `admin`, which an
/// ordinary user lacks; on a client a user registered, every scope they lack) still gets a
/// consent page, and only consent recorded on it skips the page later and lists the app.
#[test]
fn consent_is_asked_even_when_no_scope_can_be_granted() {
    let site = Site::start("registry-silent", Backend::Sqlite);
    site.create_user("mallory");
    site.create_user("vic");
    // The attacker's client, registered the way any user can.
    let mut mallory = signed_in(&site, "mallory");
    let page = mallory.get("/account/clients");
    let csrf = hidden(&page.body, "csrf").unwrap();
    let r = mallory.post(
        "/account/clients",
        &[
            ("csrf", &csrf),
            ("action", "create"),
            ("name", "Free Papers"),
            ("redirect_uri", CALLBACK),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = hidden_value(&r.body, "The client secret");
    let id = client_id_on(&r.body);

    // The victim follows the attacker's link: a consent page, not a code.
    let mut vic = signed_in(&site, "vic");
    let (path, verifier) = authorize_path(&id, "");
    let page = vic.get(&path);
    assert_eq!(
        page.status,
        200,
        "no consent was asked: {:?}",
        page.header("location")
    );
    assert!(page.body.contains("Free Papers"), "{}", page.body);
    assert!(page.body.contains("Know who you are"), "{}", page.body);
    assert!(
        !vic.get("/account/apps").body.contains("Free Papers"),
        "listed before consent"
    );

    // Allowed: the code works, the app is listed and can be withdrawn.
    let back = callback(&answer_consent(&mut vic, &page, "allow"));
    let tokens = redeem(&site, &id, &secret, &back["code"], &verifier);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(bearer(&site.gh, access).status, 200);
    assert!(
        vic.get("/account/apps").body.contains("Free Papers"),
        "an app with a grant is not listed"
    );
    // Consent recorded: the next request for the same (empty) set comes straight back.
    let (path, _) = authorize_path(&id, "");
    let again = vic.get(&path);
    assert_eq!(again.status, 303, "{}", again.body);
    assert!(again.header("location").unwrap().starts_with(CALLBACK));
}

/// Issue 17, 1.2: an OAuth access token and a personal access token carry the scopes they
/// were granted and never their user's roles, in the JWT and at role rules.
#[test]
fn tokens_carry_granted_scopes_and_never_roles() {
    let site = Site::start_with("registry-roles", Backend::Sqlite, |dir| {
        let policy = dir.join("policy.toml");
        std::fs::write(
            &policy,
            "[[rule]]\npath = \"/admin\"\nroles = [\"admin\"]\n\n[default]\nanonymous = true\n",
        )
        .unwrap();
        vec!["--policy".into(), policy]
    });
    site.create_user("ada");
    assert!(site
        .cli(&["user", "role", "add", "ada", "admin"])
        .status
        .success());
    let (id, secret) = site.client(&[
        "--name",
        "Paper Shelf",
        "--grant",
        "authorization_code",
        "--redirect-uri",
        CALLBACK,
        "--scope",
        "papers:read",
    ]);
    let secret = secret.unwrap();
    let at = |uri: &str, headers: &[(&str, &str)]| {
        let mut all = vec![("X-Original-URI", uri), ("X-Original-Method", "GET")];
        all.extend_from_slice(headers);
        http_get(site.gh.addr(), "/auth", &all)
    };
    let at_admin = |headers: &[(&str, &str)]| at("/admin/users", headers);
    let elsewhere = |token: &str| at("/papers", &[("Authorization", &format!("Bearer {token}"))]);

    // The admin's own browser session passes the role rule.
    let mut b = signed_in(&site, "ada");
    let cookie = format!(
        "gatehouse_session={}",
        b.cookie("gatehouse_session").unwrap()
    );
    let r = at_admin(&[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let roles = claims(&r)["roles"].clone();
    assert!(
        roles
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("admin")),
        "{roles}"
    );

    // A token she consented for papers:read does not.
    let (path, verifier) = authorize_path(&id, "papers:read");
    let page = b.get(&path);
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    let tokens = redeem(&site, &id, &secret, &back["code"], &verifier);
    let access = tokens["access_token"].as_str().unwrap();
    let auth = format!("Bearer {access}");
    let r = at_admin(&[("Authorization", &auth)]);
    assert_eq!(r.status, 403, "an OAuth token passed a role rule");
    let r = elsewhere(access);
    assert_eq!(claims(&r)["roles"], serde_json::json!([]), "{}", claims(&r));
    assert_eq!(claims(&r)["scope"], "papers:read");

    // Nor does her personal token with no scope.
    let made: serde_json::Value = serde_json::from_str(&cli_stdout(&site.cli(&[
        "token", "create", "--json", "--user", "ada", "--name", "script",
    ])))
    .unwrap();
    let pat = made["token"].as_str().unwrap();
    let r = at_admin(&[("Authorization", &format!("Bearer {pat}"))]);
    assert_eq!(r.status, 403, "a personal token passed a role rule");
    let r = elsewhere(pat);
    assert_eq!(claims(&r)["roles"], serde_json::json!([]));
    assert_eq!(claims(&r)["scope"], "");
    assert!(
        claims(&r).get("amr").is_none(),
        "a personal token says a person signed in"
    );

    // Issue 17, 1.9: a request whose scope holds an escaped space (%20) survives the sign-in
    // detour and comes back to the client (it used to land on /account).
    let mut fresh = Browser::new(site.gh.addr());
    let (path, _) = authorize_path(&id, "papers:read papers:read");
    assert!(path.contains("%20"), "{path}");
    let back = callback(&open_authorize(&mut fresh, &site.url(&path), "ada"));
    assert!(back.contains_key("code"), "{back:?}");
}

/// Issue 17, 1.3: a password set by an administrator, and a deactivation, end the user's
/// OAuth grants: the refresh token is refused, and reactivation brings nothing back.
#[test]
fn resets_and_deactivation_end_oauth_grants_for_good() {
    let site = Site::start("registry-reset", Backend::Sqlite);
    site.create_user("nina");
    let (id, secret) = site.code_client("Paper Shelf", &["papers:read"]);
    let grant = |b: &mut Browser| {
        let (path, verifier) = authorize_path(&id, "papers:read");
        let page = b.get(&path);
        let r = if page.status == 200 {
            answer_consent(b, &page, "allow")
        } else {
            page
        };
        let back = callback(&r);
        let t = redeem(&site, &id, &secret, &back["code"], &verifier);
        (
            t["access_token"].as_str().unwrap().to_string(),
            t["refresh_token"].as_str().unwrap().to_string(),
        )
    };
    let mut b = signed_in(&site, "nina");
    let (access, refresh) = grant(&mut b);
    assert_eq!(refresh_status(&site, &id, &secret, &refresh).0, 200);

    // A new password (the "I was hacked" reset): the grant's tokens end.
    let (access, refresh) = {
        let (a, r) = grant(&mut b);
        assert_ne!(a, access);
        (a, r)
    };
    let out = site.cli_stdin(
        &["user", "set-password", "nina"],
        Some("a brand new passphrase 42"),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(refused_soon(&site.gh, &access));
    assert_eq!(
        refresh_status(&site, &id, &secret, &refresh),
        (400, "invalid_grant".to_string()),
        "the refresh token survived a new password"
    );
    // Consent given before the reset is asked again.
    let mut b = Browser::new(site.gh.addr());
    let csrf = hidden(&b.get("/login").body, "csrf").unwrap();
    let r = b.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("username", "nina"),
            ("password", "a brand new passphrase 42"),
        ],
    );
    assert_eq!(r.status, 303);
    let (path, _) = authorize_path(&id, "papers:read");
    assert_eq!(b.get(&path).status, 200, "consent survived the reset");

    // Deactivated, then activated again: the grant stays dead.
    let (_, refresh) = grant(&mut b);
    assert!(site.cli(&["user", "deactivate", "nina"]).status.success());
    assert!(site.cli(&["user", "activate", "nina"]).status.success());
    assert_eq!(
        refresh_status(&site, &id, &secret, &refresh),
        (400, "invalid_grant".to_string()),
        "reactivation revived a grant"
    );
}

/// Issue 17, 1.4: the token, revocation and introspection endpoints read at most 64 KiB and
/// 100 parameters, before client authentication.
#[test]
fn oauth_forms_are_capped_before_anything_else() {
    let site = Site::start("registry-forms", Backend::Sqlite);
    for path in ["/oauth/token", "/oauth/revoke", "/oauth/introspect"] {
        let post = |body: &[u8]| {
            http_request(
                "POST",
                site.gh.addr(),
                path,
                &[("Content-Type", "application/x-www-form-urlencoded")],
                body,
            )
        };
        // 540 KB of one repeated parameter: refused by size, not parsed.
        let big = "a=1&".repeat(135_000);
        assert_eq!(post(big.as_bytes()).status, 413, "{path}");
        // 101 parameters in a small body: invalid_request.
        let many: String = (0..101).map(|i| format!("p{i}=x&")).collect();
        let r = post(many.as_bytes());
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.body.contains("invalid_request"), "{path}: {}", r.body);
        assert!(r.body.contains("at most 100"), "{path}: {}", r.body);
        // Within the caps, a repeat is still refused, by name.
        let r = post(b"grant_type=client_credentials&grant_type=client_credentials");
        assert!(r.body.contains("more than once"), "{path}: {}", r.body);
    }
}

/// Issue 17, 4: a user who loses a role between consent and the token (and between two
/// refreshes) gets tokens without that role's scopes.
#[test]
fn a_role_lost_after_consent_narrows_the_tokens() {
    let site = Site::start("registry-narrow", Backend::Sqlite);
    site.create_user("ivo");
    assert!(site
        .cli(&["user", "role", "add", "ivo", "admin"])
        .status
        .success());
    let (id, secret) = site.code_client("Console", &["papers:read", "admin"]);
    let mut b = signed_in(&site, "ivo");
    let (path, verifier) = authorize_path(&id, "papers:read admin");
    let page = b.get(&path);
    assert!(page.body.contains("(admin)"), "{}", page.body);
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    // Consented with the admin role; the role goes before the code is redeemed (another
    // admin stays: the last one keeps the role).
    site.create_user("ada");
    assert!(site
        .cli(&["user", "role", "add", "ada", "admin"])
        .status
        .success());
    assert!(site
        .cli(&["user", "role", "remove", "ivo", "admin"])
        .status
        .success());
    let tokens = redeem(&site, &id, &secret, &back["code"], &verifier);
    assert_eq!(tokens["scope"], "papers:read", "{tokens}");
    let r = bearer(&site.gh, tokens["access_token"].as_str().unwrap());
    assert_eq!(claims(&r)["scope"], "papers:read");

    // Back, then gone again between two refreshes: the second refresh is narrower.
    assert!(site
        .cli(&["user", "role", "add", "ivo", "admin"])
        .status
        .success());
    let refresh = |token: &str| {
        let (r, v) = refresh_raw(&site, &id, &secret, token);
        assert_eq!(r.status, 200, "{}", r.body);
        v
    };
    let wide = refresh(tokens["refresh_token"].as_str().unwrap());
    assert_eq!(wide["scope"], "admin papers:read", "{wide}");
    assert!(site
        .cli(&["user", "role", "remove", "ivo", "admin"])
        .status
        .success());
    let narrow = refresh(wide["refresh_token"].as_str().unwrap());
    assert_eq!(narrow["scope"], "papers:read", "{narrow}");
}

/// Issue 17, 1.9: a grant keeps at most ten live access tokens (a client refreshing in a loop
/// does not pile them up; the oldest ends first), and revoking the grant ends them all.
#[test]
fn a_grant_keeps_at_most_ten_live_access_tokens() {
    let site = Site::start("registry-cap", Backend::Sqlite);
    site.create_user("lena");
    let (id, secret) = site.code_client("Looper", &["papers:read"]);
    let mut b = signed_in(&site, "lena");
    let (path, verifier) = authorize_path(&id, "papers:read");
    let page = b.get(&path);
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    let first = redeem(&site, &id, &secret, &back["code"], &verifier);
    let mut access = vec![first["access_token"].as_str().unwrap().to_string()];
    let mut refresh = first["refresh_token"].as_str().unwrap().to_string();
    for _ in 0..11 {
        let (r, v) = refresh_raw(&site, &id, &secret, &refresh);
        assert_eq!(r.status, 200, "{}", r.body);
        access.push(v["access_token"].as_str().unwrap().to_string());
        refresh = v["refresh_token"].as_str().unwrap().to_string();
    }
    assert!(refused_soon(&site.gh, &access[0]), "the oldest lived on");
    assert!(refused_soon(&site.gh, &access[1]));
    for live in &access[2..] {
        assert_eq!(
            bearer(&site.gh, live).status,
            200,
            "one of the newest ten ended"
        );
    }
    // Revoking the refresh token ends the grant's ten in one pass.
    let r = site.revoke(&id, &secret, &refresh);
    assert_eq!(r.status, 200);
    for live in &access[2..] {
        assert!(refused_soon(&site.gh, live));
    }
}
