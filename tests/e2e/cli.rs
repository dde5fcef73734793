//! The command line contract: exit codes (64 bad configuration naming the flag, 69 store
//! unreachable, 2 usage) and `session create` printing only the token.

use crate::support::*;

fn run(a: &[&str]) -> (i32, String, String) {
    let out = gatehouse_cli(a);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_64_with_one_line_naming_the_flag() {
    let data = TempDir::new("data");
    let d = data.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--listen", "not-an-address"], "--listen"),
        (
            &["serve", "--data-dir", d, "--store-timeout", "soon"],
            "--store-timeout",
        ),
        (
            &["serve", "--data-dir", d, "--jwt-alg", "HS256"],
            "--jwt-secret",
        ),
        (
            &[
                "serve",
                "--data-dir",
                d,
                "--jwt-alg",
                "HS256",
                "--jwt-secret",
                "short",
            ],
            "--jwt-secret",
        ),
        (
            &[
                "serve",
                "--data-dir",
                d,
                "--redis-url",
                "http://example.org",
            ],
            "--redis-url",
        ),
        (
            &["serve", "--data-dir", d, "--cache-capacity", "0"],
            "--cache-capacity",
        ),
        (
            &["serve", "--data-dir", d, "--anonymous", "maybe"],
            "--anonymous",
        ),
        (
            &["serve", "--data-dir", d, "--cookie-name", "a b"],
            "--cookie-name",
        ),
        (
            &[
                "session",
                "create",
                "--data-dir",
                d,
                "--sub",
                "x",
                "--ttl",
                "forever",
            ],
            "--ttl",
        ),
    ];
    let secret = "s".repeat(32);
    let modules: &[(&[&str], &str)] = &[
        (
            &["serve", "--data-dir", d, "--modules", "registry"],
            "--modules",
        ),
        (
            &["serve", "--data-dir", d, "--modules", "billing"],
            "--modules",
        ),
        // Absent and impossible to create (issue 17, 1.8).
        (
            &[
                "serve",
                "--data-dir",
                d,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--server-secret-file",
                "/proc/gatehouse/server.secret",
            ],
            "--server-secret-file",
        ),
        (
            &[
                "serve",
                "--data-dir",
                d,
                "--compat",
                "arxiv",
                "--redis-url",
                "redis://127.0.0.1:1",
                "--jwt-secret",
                &secret,
                "--modules",
                "accounts",
            ],
            "--compat arxiv",
        ),
    ];
    for (a, flag) in cases.iter().chain(modules) {
        let (code, _, stderr) = run(a);
        assert_eq!(code, 64, "{a:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{a:?}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(flag),
            "{a:?}: {stderr:?} should name {flag}"
        );
    }
    // A key file that is not a key.
    let keys = TempDir::new("keys");
    std::fs::write(
        keys.path().join("broken.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&[
        "serve",
        "--data-dir",
        d,
        "--keys-dir",
        keys.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--keys-dir"), "{stderr}");
}

#[test]
fn a_secret_in_a_bad_configuration_is_never_printed() {
    let (code, _, stderr) = run(&[
        "serve",
        "--redis-url",
        "http://user:hunter2hunter2@example.org",
    ]);
    assert_eq!(code, 64);
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn unreachable_store_exits_69() {
    let port = free_port(); // nothing listens there
    let url = format!("redis://127.0.0.1:{port}");
    let (code, stdout, stderr) = run(&["session", "create", "--redis-url", &url, "--sub", "x"]);
    assert_eq!(code, 69, "{stderr}");
    assert_eq!(stdout, "", "nothing on stdout when no token was made");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = run(&["session", "create"]); // --sub missing
    assert_eq!(code, 2);
    let (code, _, _) = run(&["no-such-command"]);
    assert_eq!(code, 2);
}

#[test]
fn session_create_prints_only_the_token_and_json_on_request() {
    let data = TempDir::new("data");
    let d = data.path().to_str().unwrap();
    let (code, stdout, _) = run(&["session", "create", "--data-dir", d, "--sub", "erin"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 1);
    let token = stdout.trim();
    assert!(token.starts_with("gts_"), "{token}");
    assert!(gatehouse::credential::check(token).is_some());

    let (code, stdout, _) = run(&[
        "session",
        "create",
        "--data-dir",
        d,
        "--sub",
        "erin",
        "--email",
        "e@example.org",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["token"].as_str().unwrap().starts_with("gts_"));
    assert_eq!(v["session"]["email"], "e@example.org");

    let (code, listed, _) = run(&["session", "list", "--data-dir", d, "--sub", "erin"]);
    assert_eq!(code, 0);
    assert_eq!(listed.lines().count(), 2);
    assert!(!listed.contains("gts_"), "list never shows tokens");
}

#[test]
fn keys_generate_writes_a_key_the_server_publishes() {
    let data = TempDir::new("data");
    let d = data.path().to_str().unwrap();
    for alg in ["EdDSA", "ES256", "RS256"] {
        let (code, stdout, stderr) = run(&["keys", "generate", "--data-dir", d, "--alg", alg]);
        assert_eq!(code, 0, "{stderr}");
        assert!(std::path::Path::new(stdout.trim()).exists());
    }
    let gh = Gatehouse::spawn(&args(&["--data-dir", d, "--jwt-alg", "ES256"]));
    let jwks: serde_json::Value =
        serde_json::from_str(&http_get(gh.addr(), "/.well-known/jwks.json", &[]).body).unwrap();
    let algs: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["alg"].as_str().unwrap())
        .collect();
    assert_eq!(algs.len(), 3, "{jwks}");
    for alg in ["EdDSA", "ES256", "RS256"] {
        assert!(algs.contains(&alg), "{alg} missing from {jwks}");
    }
}

/// A second key of an algorithm is published at once but signs only after the JWKS max-age
/// (5 min) has passed, plus a minute; consumers holding a cached JWKS never see a token of
/// a key they do not know. `--activate-in 0s` is the explicit way to sign at once.
#[test]
fn keys_generate_by_default_signs_only_after_the_jwks_max_age() {
    let data = TempDir::new("data");
    let d = data.path().to_str().unwrap();
    let activation_ms = |path: &str| -> u64 {
        let stem = std::path::Path::new(path.trim()).file_stem().unwrap();
        stem.to_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // The kid of the JWT gatehouse mints now, and the number of keys it publishes (the bare
    // gateway: the registry would add the RS256 key of its id_tokens).
    let signing = || {
        let gh = Gatehouse::spawn(&args(&["--data-dir", d, "--modules", "none"]));
        let jwks: serde_json::Value =
            serde_json::from_str(&http_get(gh.addr(), "/.well-known/jwks.json", &[]).body).unwrap();
        let token = cli_stdout(&gh.cli(&["session", "create", "--data-dir", d, "--sub", "k"]));
        let r = http_get(
            gh.addr(),
            "/auth",
            &[("Authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(r.status, 200, "{}", gh.logs());
        let jwt = r
            .header("authorization")
            .unwrap()
            .trim_start_matches("Bearer ");
        let kid = jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
        (kid, jwks["keys"].as_array().unwrap().len())
    };

    let before = now_ms();
    let (code, first, stderr) = run(&["keys", "generate", "--data-dir", d]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        activation_ms(&first) < before + 5_000,
        "the first key signs at once: {first}"
    );
    let (kid_first, published) = signing();
    assert_eq!(published, 1);

    let (code, second, stderr) = run(&["keys", "generate", "--data-dir", d]);
    assert_eq!(code, 0, "{stderr}");
    let delay = activation_ms(&second).saturating_sub(now_ms());
    assert!(
        (300_000..=370_000).contains(&delay),
        "the second key must wait past the JWKS max-age (300 s): {delay} ms; {stderr}"
    );
    assert!(stderr.contains("signs from"), "{stderr}");
    let (kid_now, published) = signing();
    assert_eq!(published, 2, "the new key is published at once");
    assert_eq!(kid_now, kid_first, "and the old key still signs");

    // Explicitly at once.
    let before = now_ms();
    let (code, third, stderr) = run(&["keys", "generate", "--data-dir", d, "--activate-in", "0s"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(activation_ms(&third) < before + 5_000, "{third}");
    let (kid_now, published) = signing();
    assert_eq!(published, 3);
    assert_ne!(kid_now, kid_first, "--activate-in 0s signs at once");
}

/// Issue 17, 2: `--modules none` is the bare gateway (no pages: `/login` is 404), and so is
/// `--compat arxiv` by default; a default build runs every module it has.
#[test]
fn modules_can_be_left_out_at_run_time() {
    let bare = Gatehouse::spawn(&args(&["--modules", "none"]));
    assert_eq!(http_get(bare.addr(), "/login", &[]).status, 404);
    assert_eq!(http_get(bare.addr(), "/auth", &[]).status, 401);
    let full = Gatehouse::spawn(&[]);
    let login = http_get(full.addr(), "/login", &[]).status;
    assert_eq!(login, if cfg!(feature = "accounts") { 200 } else { 404 });
    let redis = RedisServer::start();
    let arxiv = Gatehouse::spawn(&args(&[
        "--compat",
        "arxiv",
        "--redis-url",
        &redis.url(),
        "--jwt-secret",
        &"s".repeat(32),
    ]));
    assert_eq!(http_get(arxiv.addr(), "/login", &[]).status, 404);
    let stale = http_get(arxiv.addr(), "/oauth/token", &[]).status;
    assert_eq!(stale, 404, "the registry runs beside --compat arxiv");
}

/// A session handle (sid) is base64url and may start with `-`: `--sid -x…` is a value, not
/// a flag (a registry test failed now and then on such a handle).
#[test]
fn a_handle_starting_with_a_dash_is_a_value() {
    let data = TempDir::new("sid-dash");
    let d = data.path().to_str().unwrap();
    let (code, _, stderr) = run(&[
        "session",
        "revoke",
        "--data-dir",
        d,
        "--sub",
        "nobody",
        "--sid",
        "-jAbCdEf",
    ]);
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
    assert_ne!(code, 2, "{stderr}");
}
