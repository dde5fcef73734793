//! The token endpoint as API clients use it: `client_credentials` tokens per second and
//! latency at 16 concurrent clients (client_secret_basic), against a real `gatehouse serve`
//! (release build, embedded store, SQLite clients). Then `/auth` with a client token against
//! `/auth` with a browser session: the same cache hit, so the ratio should be ~1.
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
    print!("{out}");
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load");
    std::fs::create_dir_all(&report).unwrap();
    std::fs::write(report.join("tokens.md"), out).unwrap();
}
