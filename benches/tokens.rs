//! The token endpoint as API clients use it: `client_credentials` tokens per second and
//! latency at 16 concurrent clients (client_secret_basic), against a real `gatehouse serve`
//! (release build, embedded store, SQLite clients). Then `/auth` with a client token against
//! `/auth` with a browser session: the same cache hit, so the ratio should be ~1.
//!
//! Then what an OpenID Connect id_token costs: signing one in-process with each algorithm
//! (the p50 of 2 000), and a refresh at the token endpoint with `openid` (an id_token in the
//! answer) against the same refresh without it, one at a time.
//!
//! `cargo bench --bench tokens`. Each request opens its own connection (as the tests' client
//! does), so the figures carry a TCP handshake each; the ratios compare like with like.
//! Nothing here is an assertion: a benchmark reports, it does not fail.

// A bench uses a part of the harness.
#[allow(dead_code, unused_imports)]
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use support::*;

const SECONDS: u64 = 8;
const CLIENTS: usize = 16;

struct Run {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
}

/// `CLIENTS` threads sending `request` for `SECONDS`; a 200 counts.
fn run(request: &(dyn Fn() -> Response + Sync)) -> Run {
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let latencies = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..CLIENTS {
            s.spawn(|| {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = request();
                    mine.push(t.elapsed());
                    if r.status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
        std::thread::sleep(Duration::from_secs(SECONDS));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = latencies.into_inner().unwrap();
    l.sort();
    let pct = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Run {
        per_s: ok.into_inner() as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        failed: failed.into_inner(),
    }
}

/// Median time of a refused client authentication, sequentially, `N` each, interleaved: a
/// wrong secret by Basic, a wrong secret in the body, and a client that does not exist.
fn refusal_timing(addr: std::net::SocketAddr, id: &str) -> [f64; 3] {
    const N: usize = 300;
    let wrong = "gcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let basic = |id: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{wrong}"))
        )
    };
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (by_basic, unknown) = (basic(id), basic("nosuchclient0000000000"));
    let body = format!("grant_type=client_credentials&client_id={id}&client_secret={wrong}");
    type Request<'a> = (Vec<(&'a str, &'a str)>, &'a [u8]);
    let kinds: [Request; 3] = [
        (
            vec![form[0], ("Authorization", &by_basic)],
            b"grant_type=client_credentials",
        ),
        (vec![form[0]], body.as_bytes()),
        (
            vec![form[0], ("Authorization", &unknown)],
            b"grant_type=client_credentials",
        ),
    ];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..N {
        for k in 0..3 {
            let k = (k + round) % 3;
            let t = Instant::now();
            let r = http_request("POST", addr, "/oauth/token", &kinds[k].0, kinds[k].1);
            times[k].push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(r.status, 401, "{}", r.body);
        }
    }
    times.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    })
}

fn main() {
    let dir = TempDir::new("bench-tokens");
    let data = dir.join("data");
    let gh = Gatehouse::spawn(&args(&["--insecure-cookies", "--data-dir", &data]));
    let made: serde_json::Value = serde_json::from_str(&cli_stdout(&gatehouse_cli(&[
        "client",
        "create",
        "--json",
        "--name",
        "bench",
        "--scope",
        "papers:read",
        "--data-dir",
        &data,
    ])))
    .unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            made["client_id"].as_str().unwrap(),
            made["client_secret"].as_str().unwrap()
        ))
    );
    let addr = gh.addr();
    let token = || {
        http_request(
            "POST",
            addr,
            "/oauth/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &basic),
            ],
            b"grant_type=client_credentials",
        )
    };
    let client_token: serde_json::Value = serde_json::from_str(&token().body).unwrap();
    let client_token = format!("Bearer {}", client_token["access_token"].as_str().unwrap());
    let session = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--sub",
        "u1",
        "--data-dir",
        &data,
    ]));
    let session = format!("Bearer {session}");

    let auth_session = run(&|| http_get(addr, "/auth", &[("Authorization", &session)]));
    let auth_client = run(&|| http_get(addr, "/auth", &[("Authorization", &client_token)]));
    let tokens = run(&token);
    let refusals = refusal_timing(addr, made["client_id"].as_str().unwrap());
    let out = format!(
        "{CLIENTS} concurrent clients, {SECONDS} s each, a connection per request.\n\n\
         | request | per s | × /auth (session) | p50 ms | p99 ms | not 200 |\n|---|---|---|---|---|---|\n\
         | /auth, browser session (baseline) | {:.0} | 1.00 | {:.2} | {:.2} | {} |\n\
         | /auth, client token | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n\
         | POST /oauth/token, client_credentials | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n",
        auth_session.per_s, auth_session.p50_ms, auth_session.p99_ms, auth_session.failed,
        auth_client.per_s, auth_client.per_s / auth_session.per_s, auth_client.p50_ms, auth_client.p99_ms, auth_client.failed,
        tokens.per_s, tokens.per_s / auth_session.per_s, tokens.p50_ms, tokens.p99_ms, tokens.failed,
    );
    let out = format!(
        "{out}\nRefused client authentication, one at a time, median of 300 each: wrong secret by \
         Basic {:.0} µs, in the body {:.0} µs, unknown client {:.0} µs.\n",
        refusals[0], refusals[1], refusals[2]
    );
    let out = format!("{out}\n{}", id_token_cost(&gh, &data));
    print!("{out}");
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load");
    std::fs::create_dir_all(&report).unwrap();
    std::fs::write(report.join("tokens.md"), out).unwrap();
}

/// p50 of `n` runs of `f`, in µs.
fn p50_us(n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2].as_secs_f64() * 1e6
}

/// The id_token's cost: signing alone, per algorithm, and a refresh with and without one.
fn id_token_cost(gh: &Gatehouse, data: &str) -> String {
    use gatehouse::signer::{JwtAlg, Signer, TokenSettings};
    let keys = std::path::Path::new(data).join("bench-keys");
    let claims = serde_json::json!({
        "iss": "https://login.example.org", "sub": "u1", "aud": "client", "azp": "client",
        "exp": 2_000_000_000u64, "iat": 1_700_000_000u64, "auth_time": 1_700_000_000u64,
        "nonce": "n-0S6_WzA2Mj", "sid": "Q3G3fTku-GrDSCaO", "amr": ["pwd"],
        "at_hash": "77QmUPtjPfzWtF2AnpK9RQ", "preferred_username": "rosa",
        "email": "rosa@example.org", "email_verified": true,
    });
    let mut lines = String::from("id_token, signed in-process, p50 of 2000:");
    for alg in [JwtAlg::Rs256, JwtAlg::Es256, JwtAlg::EdDsa] {
        let signer = Signer::load(
            &keys,
            alg,
            None,
            TokenSettings {
                issuer: "https://login.example.org".into(),
                audience: None,
                ttl_secs: 300,
            },
        )
        .unwrap();
        let us = p50_us(2000, || {
            signer.sign(alg.algorithm(), "JWT", &claims).unwrap();
        });
        lines.push_str(&format!(" {alg:?} {us:.1} µs;"));
    }
    // A user, a signed-in browser, a client, and two grants: one with openid, one without.
    let pw = "tangerine kayak moonlit orbit";
    create_user(data, "rosa", "rosa@example.org", pw);
    let made: serde_json::Value = serde_json::from_str(&cli_stdout(&gatehouse_cli(&[
        "client",
        "create",
        "--json",
        "--name",
        "rp",
        "--grant",
        "authorization_code",
        "--grant",
        "refresh_token",
        "--redirect-uri",
        "http://127.0.0.1:9/cb",
        "--data-dir",
        data,
    ])))
    .unwrap();
    let (id, secret) = (
        made["client_id"].as_str().unwrap().to_string(),
        made["client_secret"].as_str().unwrap().to_string(),
    );
    let mut b = Browser::new(gh.addr());
    let csrf = hidden(&b.get("/login").body, "csrf").unwrap();
    b.post(
        "/login",
        &[("csrf", &csrf), ("username", "rosa"), ("password", pw)],
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    );
    let token = |body: &str| -> serde_json::Value {
        let r = http_request(
            "POST",
            gh.addr(),
            "/oauth/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &basic),
            ],
            body.as_bytes(),
        );
        serde_json::from_str(&r.body).unwrap()
    };
    let mut grant = |scope: &str| -> String {
        // RFC 7636 appendix B's pair.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let q = form_encode(&[
            ("response_type", "code"),
            ("client_id", &id),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("scope", scope),
            ("nonce", "n"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ]);
        let page = b.get(&format!("/oauth/authorize?{q}"));
        let mut fields: Vec<(String, String)> = [
            "csrf",
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "nonce",
            "code_challenge",
            "code_challenge_method",
        ]
        .iter()
        .filter_map(|n| hidden(&page.body, n).map(|v| (n.to_string(), v)))
        .collect();
        fields.push(("decision".into(), "allow".into()));
        let f: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Consent recorded before (a grant of no scope is covered by any): straight back.
        let back = if page.status == 303 {
            page
        } else {
            b.post("/oauth/authorize", &f)
        };
        let location = back.header("location").unwrap().to_string();
        let code = location
            .split("code=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string();
        let v = token(&form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("code_verifier", verifier),
        ]));
        v["refresh_token"].as_str().unwrap().to_string()
    };
    let mut with = grant("openid profile email");
    let mut without = grant("");
    let refresh = |r: &mut String, want_id_token: bool| {
        let v = token(&form_encode(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", r),
        ]));
        assert_eq!(v["id_token"].is_string(), want_id_token, "{v}");
        *r = v["refresh_token"].as_str().unwrap().to_string();
    };
    // Interleaved, so that both see the same machine.
    let (mut a, mut c) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        refresh(&mut with, true);
        a.push(t.elapsed());
        let t = Instant::now();
        refresh(&mut without, false);
        c.push(t.elapsed());
    }
    a.sort();
    c.sort();
    let (a, c) = (a[150].as_secs_f64() * 1e6, c[150].as_secs_f64() * 1e6);
    lines.push_str(&format!(
        "\nPOST /oauth/token refresh_token, one at a time, p50 of 300: with openid (an id_token, \
         RS256) {a:.0} µs, without {c:.0} µs: the id_token adds {:.0} µs ({:.2}×).\n",
        a - c,
        a / c
    ));
    lines
}
