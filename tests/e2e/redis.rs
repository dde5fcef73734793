//! End to end against real `redis-server`: standalone and a 3-master Redis Cluster run the
//! same suite, with `gatehouse serve` and the CLI as separate processes, as users run them.

use std::time::{Duration, Instant};

use crate::support::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "example-services";

/// Flags shared by every instance of one test: same store and same keys directory.
struct Setup {
    url: String,
    keys: TempDir,
}

impl Setup {
    fn new(store: &dyn Store) -> Setup {
        Setup {
            url: store.url(),
            keys: TempDir::new("keys"),
        }
    }

    fn serve(&self, extra: &[&str]) -> Gatehouse {
        let mut a = args(&[
            "--redis-url",
            &self.url,
            "--keys-dir",
            self.keys.path().to_str().unwrap(),
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
            // Long enough that only the revocation broadcast can explain a 401 after revoke.
            "--cache-ttl",
            "300s",
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        Gatehouse::spawn(&a)
    }

    fn create(&self, extra: &[&str]) -> String {
        let mut a = vec!["session", "create", "--redis-url", &self.url];
        a.extend_from_slice(extra);
        cli_stdout(&gatehouse_cli(&a))
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn auth(gh: &Gatehouse, headers: &[(&str, &str)]) -> Response {
    http_get(gh.addr(), "/auth", headers)
}

/// Verifies `jwt` against the JWKS served by the same process and returns its claims.
fn verify(gh: &Gatehouse, jwt: &str) -> serde_json::Value {
    let jwks: JwkSet =
        serde_json::from_str(&http_get(gh.addr(), "/.well-known/jwks.json", &[]).body).unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.expect("kid in the JWT header");
    let jwk = jwks.find(&kid).expect("the signing key is in the JWKS");
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(jwt, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .expect("the JWT verifies against the JWKS")
        .claims
}

fn jwt_of(r: &Response) -> String {
    let h = r.header("authorization").expect("Authorization on a 200");
    h.strip_prefix("Bearer ").expect("a Bearer JWT").to_string()
}

/// Store commands issued since the last reset, leaving out the harness's own INFO/CONFIG and
/// the cluster's housekeeping.
fn store_calls(store: &dyn Store) -> u64 {
    store
        .commandstats()
        .iter()
        .filter(|(cmd, _)| {
            !(cmd.starts_with("info")
                || cmd.starts_with("config")
                || cmd.starts_with("cluster")
                || *cmd == "ping")
        })
        .map(|(_, n)| *n)
        .sum()
}

fn allow_and_verify(store: &dyn Store) {
    let s = Setup::new(store);
    let gh = s.serve(&[]);
    let token = s.create(&[
        "--sub",
        "u-42",
        "--username",
        "alice",
        "--email",
        "alice@example.org",
        "--name",
        "Alice Liddell",
        "--scope",
        "read",
        "--scope",
        "write",
        "--role",
        "admin",
    ]);

    let cookie = format!("gatehouse_session={token}");
    let by_cookie = auth(&gh, &[("Cookie", &cookie)]);
    assert_eq!(by_cookie.status, 200, "{by_cookie:?}");
    assert_eq!(by_cookie.header("x-auth-request-user"), Some("alice"));
    assert_eq!(
        by_cookie.header("x-auth-request-email"),
        Some("alice@example.org")
    );
    assert_eq!(by_cookie.header("cache-control"), Some("no-store"));
    let claims = verify(&gh, &jwt_of(&by_cookie));
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["sub"], "u-42");
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["email"], "alice@example.org");
    assert_eq!(claims["name"], "Alice Liddell");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["roles"], serde_json::json!(["admin"]));
    assert_eq!(claims["auth_method"], "session");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let sid = claims["sid"].as_str().expect("sid");
    assert!(
        !sid.is_empty() && !token.contains(sid),
        "sid is a handle, never (part of) the token"
    );
    let (iat, nbf, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(iat, nbf);
    assert_eq!(exp - iat, 300, "--jwt-ttl defaults to 300 s");

    let bearer_token = bearer(&token);
    let by_bearer = auth(&gh, &[("Authorization", &bearer_token)]);
    assert_eq!(by_bearer.status, 200, "{by_bearer:?}");
    let first_jwt = jwt_of(&by_bearer);
    assert_eq!(verify(&gh, &first_jwt)["auth_method"], "bearer");

    // Within the JWT's lifetime: the same JWT, and not one store command.
    store.config_resetstat();
    let before = store_calls(store);
    for _ in 0..20 {
        let again = auth(&gh, &[("Authorization", &bearer_token)]);
        assert_eq!(again.status, 200);
        assert_eq!(jwt_of(&again), first_jwt);
    }
    assert_eq!(
        store_calls(store),
        before,
        "cache hits must not touch the store: {:?}",
        store.commandstats()
    );
}

fn refusals(store: &dyn Store) {
    let s = Setup::new(store);
    let gh = s.serve(&[]);
    let token = s.create(&["--sub", "u1"]);
    let short = s.create(&["--sub", "u1", "--ttl", "1s"]);
    let revoked = s.create(&["--sub", "u1"]);
    let revoked_bearer = bearer(&revoked);
    assert_eq!(auth(&gh, &[("Authorization", &revoked_bearer)]).status, 200);
    cli_stdout(&gatehouse_cli(&[
        "session",
        "revoke",
        "--redis-url",
        &s.url,
        &revoked,
    ]));
    std::thread::sleep(Duration::from_millis(2100)); // let the 1 s session expire
    let cookie = format!("gatehouse_session={token}");
    let short_bearer = bearer(&short);
    let garbage = bearer("gts_this-is-not-a-real-token");
    // Right shape and checksum, unknown to the store.
    let unknown =
        bearer(gatehouse::credential::generate(gatehouse::session::SessionKind::User).expose());
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no credential", vec![]),
        ("garbage bearer", vec![("Authorization", &garbage)]),
        (
            "garbage cookie",
            vec![("Cookie", "gatehouse_session=nonsense")],
        ),
        ("expired", vec![("Authorization", &short_bearer)]),
        ("revoked", vec![("Authorization", &revoked_bearer)]),
        ("unknown", vec![("Authorization", &unknown)]),
        (
            "Basic scheme",
            vec![
                ("Authorization", "Basic YWxpY2U6c2VjcmV0"),
                ("Cookie", &cookie),
            ],
        ),
        (
            "empty bearer",
            vec![("Authorization", "Bearer "), ("Cookie", &cookie)],
        ),
        (
            "malformed header",
            vec![("Authorization", "Bearer a b c"), ("Cookie", &cookie)],
        ),
        (
            "scheme only",
            vec![("Authorization", "Bearer"), ("Cookie", &cookie)],
        ),
    ];
    for (name, headers) in &cases {
        let r = auth(&gh, headers);
        assert_eq!(r.status, 401, "{name}: {r:?}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|w| w.starts_with("Bearer realm=\"gatehouse\"")),
            "{name}"
        );
        assert!(
            r.header("x-auth-request-user").is_none() && r.header("authorization").is_none(),
            "{name}"
        );
        assert!(r.body.contains("\"reason\""), "{name}: {}", r.body);
    }
    // The valid cookie itself still works: the refusals above were about the header.
    assert_eq!(auth(&gh, &[("Cookie", &cookie)]).status, 200);

    let anon = s.serve(&["--anonymous", "allow"]);
    let r = auth(&anon, &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("authorization").is_none()
            && r.header("x-auth-request-user").is_none()
            && r.header("x-auth-request-email").is_none()
    );
    assert_eq!(
        auth(&anon, &[("Authorization", &garbage)]).status,
        401,
        "a bad credential is never anonymous"
    );
}

fn revocation_reaches_every_instance(store: &dyn Store) {
    let s = Setup::new(store);
    let a = s.serve(&[]);
    let b = s.serve(&[]);
    let token = s.create(&["--sub", "bob"]);
    let other = s.create(&["--sub", "bob"]);
    let h = bearer(&token);
    let h_other = bearer(&other);
    for gh in [&a, &b] {
        assert_eq!(auth(gh, &[("Authorization", &h)]).status, 200);
        assert_eq!(auth(gh, &[("Authorization", &h_other)]).status, 200);
    }
    // The token on stdin, the documented way (argv is visible in /proc).
    cli_stdout(&gatehouse_cli_stdin(
        &["session", "revoke", "--redis-url", &s.url],
        &token,
    ));
    let revoked_at = Instant::now();
    for (name, gh) in [("a", &a), ("b", &b)] {
        // The cache TTL is 300 s, so only the broadcast can turn this into a 401.
        // The contract is 100 ms; 1 s is the margin of a noisy machine.
        let deadline = revoked_at + Duration::from_secs(1);
        loop {
            if auth(gh, &[("Authorization", &h)]).status == 401 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "instance {name} still accepts a revoked token"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        println!(
            "{} instance {name}: revoked token refused {:?} after the CLI returned",
            store.kind(),
            revoked_at.elapsed()
        );
        assert_eq!(
            auth(gh, &[("Authorization", &h_other)]).status,
            200,
            "other sessions stay"
        );
    }
    // Log out everywhere.
    cli_stdout(&gatehouse_cli(&[
        "session",
        "revoke",
        "--redis-url",
        &s.url,
        "--sub",
        "bob",
    ]));
    for gh in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(1);
        while auth(gh, &[("Authorization", &h_other)]).status != 401 {
            assert!(
                Instant::now() < deadline,
                "revoke --sub did not reach an instance"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let listed = cli_stdout(&gatehouse_cli(&[
        "session",
        "list",
        "--redis-url",
        &s.url,
        "--sub",
        "bob",
    ]));
    assert_eq!(listed, "", "no sessions left");
}

#[test]
fn standalone_allow_and_jwt() {
    allow_and_verify(&RedisServer::start());
}

#[test]
fn cluster_allow_and_jwt() {
    allow_and_verify(&RedisCluster::start());
}

#[test]
fn standalone_refusals() {
    refusals(&RedisServer::start());
}

#[test]
fn cluster_refusals() {
    refusals(&RedisCluster::start());
}

#[test]
fn standalone_revocation_reaches_every_instance() {
    revocation_reaches_every_instance(&RedisServer::start());
}

#[test]
fn cluster_revocation_reaches_every_instance() {
    revocation_reaches_every_instance(&RedisCluster::start());
}

#[test]
fn redis_down_fails_closed_and_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let s = Setup::new(&redis);
    let gh = s.serve(&["--store-timeout", "200ms"]);
    let uncached = s.create(&["--sub", "carol"]);
    redis.kill();

    let r = auth(&gh, &[("Authorization", &bearer(&uncached))]);
    assert_eq!(
        r.status, 503,
        "an uncached credential with the store down: {r:?}"
    );
    assert!(r.header("x-auth-request-user").is_none());
    assert_eq!(http_get(gh.admin_addr(), "/readyz", &[]).status, 503);
    assert_eq!(
        http_get(gh.admin_addr(), "/healthz", &[]).status,
        200,
        "alive, just not ready"
    );
    let metrics = http_get(gh.admin_addr(), "/metrics", &[]).body;
    assert!(
        metrics.contains("gatehouse_auth_requests_total{result=\"error\",method=\"bearer\"} 1"),
        "{metrics}"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(gh.admin_addr(), "/readyz", &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after Redis came back:\n{}",
            gh.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The restarted Redis kept nothing (no persistence in the test), so create anew.
    let fresh = s.create(&["--sub", "carol"]);
    assert_eq!(auth(&gh, &[("Authorization", &bearer(&fresh))]).status, 200);
    assert_eq!(
        auth(&gh, &[("Authorization", &bearer(&uncached))]).status,
        401
    );
}

/// The body of `/readyz` (status, text).
fn readiness(gh: &Gatehouse) -> (u16, String) {
    let admin = gh.admin_addr().to_string();
    match try_http_request("GET", &admin, "/readyz", &[], b"", Duration::from_secs(2)) {
        Ok(r) => (r.status, r.body),
        Err(_) => (0, String::new()), // not listening yet
    }
}

fn wait_for(what: &str, gh: &Gatehouse, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            gh.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// In Kubernetes gatehouse and Redis start in any order: a Redis that comes up after
/// gatehouse must be used once it answers, the revocation channel included, with no restart.
#[test]
fn redis_started_after_gatehouse_is_used_when_it_comes() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut gh = Gatehouse::spawn_no_wait(&args(&["--redis-url", &url]));
    wait_for("the admin listener", &gh, Duration::from_secs(20), || {
        readiness(&gh).0 != 0
    });
    // It keeps trying rather than giving up: five readiness probes, each a store ping that
    // fails against the absent Redis (--store-timeout each), all answered by a live process.
    for _ in 0..5 {
        assert_eq!(readiness(&gh).0, 503, "{}", gh.logs());
    }
    assert!(
        gh.is_running(),
        "gave up on a Redis not up yet:\n{}",
        gh.logs()
    );
    assert_eq!(readiness(&gh).0, 503, "not ready without Redis");

    let _redis = RedisServer::start_on(port, &[]);
    assert!(
        gh.wait_ready(Duration::from_secs(20)),
        "never ready after Redis came up:\n{}",
        gh.logs()
    );
    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--redis-url",
        &url,
        "--sub",
        "late",
    ]));
    let h = bearer(&token);
    assert_eq!(
        auth(&gh, &[("Authorization", &h)]).status,
        200,
        "{}",
        gh.logs()
    );
    assert_eq!(
        auth(&gh, &[("Authorization", &h)]).status,
        200,
        "cached now"
    );
    // The revocation channel came up too: a revocation reaches the cached entry.
    cli_stdout(&gatehouse_cli_stdin(
        &["session", "revoke", "--redis-url", &url],
        &token,
    ));
    wait_for("the revocation", &gh, Duration::from_secs(1), || {
        auth(&gh, &[("Authorization", &h)]).status == 401
    });
}

/// Redis answers, but an ACL refuses SUBSCRIBE: the watcher keeps trying, and meanwhile no
/// cached entry is trusted: every request reads the store, so a revocation takes effect at
/// once. When the ACL is fixed, the channel is followed and the cache used again.
#[test]
fn without_channel_rights_nothing_is_cached_until_the_channel_is_followed() {
    let redis = RedisServer::start();
    assert_eq!(
        redis.cmd(&[
            "ACL",
            "SETUSER",
            "gh",
            "on",
            ">gh-password",
            "~*",
            "resetchannels",
            "+@all"
        ]),
        "OK"
    );
    let admin_url = redis.url();
    let gh_url = format!("redis://gh:gh-password@127.0.0.1:{}", redis.port());
    let gh = Gatehouse::spawn_no_wait(&args(&["--redis-url", &gh_url, "--cache-ttl", "300s"]));
    wait_for("readiness (store up)", &gh, Duration::from_secs(20), || {
        readiness(&gh).0 == 200
    });
    let (_, body) = readiness(&gh);
    assert!(body.contains("not followed"), "{body}");

    // Sessions are created and revoked by someone with channel rights (another service).
    let create = || {
        cli_stdout(&gatehouse_cli(&[
            "session",
            "create",
            "--redis-url",
            &admin_url,
            "--sub",
            "acl",
        ]))
    };
    let token = create();
    let h = bearer(&token);
    for _ in 0..3 {
        assert_eq!(
            auth(&gh, &[("Authorization", &h)]).status,
            200,
            "{}",
            gh.logs()
        );
    }
    cli_stdout(&gatehouse_cli_stdin(
        &["session", "revoke", "--redis-url", &admin_url],
        &token,
    ));
    // No wait: nothing was cached, so the very next request reads the store.
    assert_eq!(
        auth(&gh, &[("Authorization", &h)]).status,
        401,
        "a cached entry outlived a revocation its instance could not hear:\n{}",
        gh.logs()
    );
    assert!(
        gh.wait_for_log("revocation channel not followed", Duration::from_secs(5)),
        "{}",
        gh.logs()
    );

    // Fixed: the watcher's next try subscribes (backoff at most 5 s).
    assert_eq!(redis.cmd(&["ACL", "SETUSER", "gh", "allchannels"]), "OK");
    wait_for(
        "the channel to be followed",
        &gh,
        Duration::from_secs(15),
        || readiness(&gh) == (200, "ready\n".to_string()),
    );
    let token = create();
    let h = bearer(&token);
    assert_eq!(auth(&gh, &[("Authorization", &h)]).status, 200);
    cli_stdout(&gatehouse_cli_stdin(
        &["session", "revoke", "--redis-url", &admin_url],
        &token,
    ));
    wait_for(
        "the broadcast revocation",
        &gh,
        Duration::from_secs(1),
        || auth(&gh, &[("Authorization", &h)]).status == 401,
    );
}

/// "Log out everywhere" racing new logins: every session created before the last
/// `revoke_user` returned is gone, on Redis (standalone and cluster) and embedded. Before
/// the fix, `DEL` of the whole index dropped sessions indexed meanwhile, which then
/// survived every later "log out everywhere".
fn log_out_everywhere_races_logins(store_args: gatehouse::store::StoreSettings) {
    use gatehouse::sessions::Sessions;
    use gatehouse::store::{SessionStore, Store};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&store_args, Some(Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut creators = Vec::new();
        for t in 0..4 {
            let store = store.clone();
            creators.push(tokio::spawn(async move {
                let mut tokens = Vec::new();
                for i in 0..15 {
                    let session = Sessions::draft("racer", Duration::from_secs(600));
                    let issued = Sessions::new(&store, None)
                        .issue(&gatehouse::session::Session {
                            name: Some(format!("{t}-{i}")),
                            ..session
                        })
                        .await
                        .unwrap();
                    tokens.push(issued.token);
                    tokio::task::yield_now().await;
                }
                tokens
            }));
        }
        let revoker = {
            let store = store.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let (mut rounds, mut revoked) = (0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    revoked += Sessions::new(&store, None)
                        .revoke_user("racer", None)
                        .await
                        .unwrap();
                    rounds += 1;
                }
                (rounds, revoked)
            })
        };
        let mut tokens = Vec::new();
        for c in creators {
            tokens.extend(c.await.unwrap());
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (rounds, revoked_meanwhile) = revoker.await.unwrap();
        Sessions::new(&store, None)
            .revoke_user("racer", None)
            .await
            .unwrap();
        let survivors = {
            let mut n = 0;
            for t in &tokens {
                let hash = gatehouse::credential::TokenHash::of(t.expose());
                if store.get(&hash).await.unwrap().is_some() {
                    n += 1;
                }
            }
            n
        };
        println!(
            "{}: {} sessions created during {rounds} rounds of revoke_user",
            store.kind(),
            tokens.len()
        );
        assert_eq!(
            survivors,
            0,
            "{survivors} of {} sessions survived the last \"log out everywhere\"",
            tokens.len()
        );
        // The race happened: "log out everywhere" ran while sessions were being created, and
        // ended some of them mid-way (not all at the end).
        assert!(
            rounds >= 2 && revoked_meanwhile > 0,
            "no race: {rounds} rounds ended {revoked_meanwhile} sessions while {} were created",
            tokens.len()
        );
    });
}

fn store_args(
    redis_url: Option<String>,
    data_dir: &std::path::Path,
) -> gatehouse::store::StoreSettings {
    gatehouse::store::StoreSettings {
        redis_url: redis_url.map(gatehouse::secret::Secret::new),
        redis_prefix: "gh:".into(),
        data_dir: data_dir.to_path_buf(),
        timeout: Duration::from_secs(2),
    }
}

#[test]
fn standalone_log_out_everywhere_races_logins() {
    let redis = RedisServer::start();
    let dir = TempDir::new("race");
    log_out_everywhere_races_logins(store_args(Some(redis.url()), dir.path()));
}

#[test]
fn cluster_log_out_everywhere_races_logins() {
    let cluster = RedisCluster::start();
    let dir = TempDir::new("race");
    log_out_everywhere_races_logins(store_args(Some(cluster.url()), dir.path()));
}

#[test]
fn embedded_log_out_everywhere_races_logins() {
    let dir = TempDir::new("race");
    log_out_everywhere_races_logins(store_args(None, dir.path()));
}
