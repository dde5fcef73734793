//! Login throughput: `POST /login` per second, latency and RSS at 1, 16 and 200 concurrent
//! clients, against a real `gatehouse serve` (release build, embedded store, SQLite users),
//! with the Argon2id parameters in use (OWASP: m=19 MiB, t=2, p=1).
//!
//! `cargo bench --bench logins`. The ceiling, measured in the same run on the same machine:
//! Argon2id verifications per second with one thread per CPU and nothing else (this process,
//! the same parameters). A login is one verification plus a session write and a SQL update,
//! so the ratio says how much the rest costs. Beyond one hash per CPU, logins queue (at most
//! 3 s) and the rest get 503: memory stays bounded whatever the burst.
//! It also times the second step's own work (a TOTP verify, a passkey assertion) against
//! one Argon2id verification in the same run.
//! And the outbox's delivery rate and lag (webhooks to a receiver on loopback), against the
//! same receiver fed directly (`BENCH_ONLY=outbox` for that part alone).
//! Nothing here is an assertion: a benchmark reports, it does not fail.

// A bench uses a part of the harness.
#[allow(dead_code, unused_imports)]
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse::accounts::password::{Passwords, OWASP_M_KIB, OWASP_P, OWASP_T};
use gatehouse::secret::Secret;
use support::*;

const PW: &str = "tangerine kayak moonlit orbit";
/// The CSRF cookie on plain http: its value is the form's token (double submit), and each
/// sign-in replaces it, so every request reads it afresh from the jar.
const CSRF_COOKIE: &str = "gatehouse_session_csrf";
const SECONDS: u64 = 8;

fn hash_ceiling() -> f64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let p = Arc::new(Passwords::new(OWASP_M_KIB, OWASP_T, OWASP_P, 12));
        let pw = Secret::new(PW.to_string());
        let stored = Secret::new(p.hash(&pw).await.unwrap());
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..cpus)
            .map(|_| {
                let (p, pw, stored, done) = (p.clone(), pw.clone(), stored.clone(), done.clone());
                tokio::spawn(async move {
                    while start.elapsed() < Duration::from_secs(SECONDS) {
                        assert!(p.verify(&pw, Some(&stored)).await.unwrap().ok);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    })
}

struct Level {
    clients: usize,
    ok: u64,
    busy: u64,
    other: u64,
    logins_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
}

fn level(gh: &Gatehouse, clients: usize) -> Level {
    let stop = AtomicBool::new(false);
    let latencies = Mutex::new(Vec::new());
    let (ok, busy, other) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..clients {
            s.spawn(|| {
                let mut b = Browser::new(gh.addr());
                b.get("/login");
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let csrf = b.cookie(CSRF_COOKIE).unwrap().to_owned();
                    let t = Instant::now();
                    let r = b.post(
                        "/login",
                        &[("csrf", &csrf), ("username", "bench"), ("password", PW)],
                    );
                    mine.push(t.elapsed());
                    match r.status {
                        303 => ok.fetch_add(1, Ordering::Relaxed),
                        503 => busy.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
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
    let ok = ok.into_inner();
    Level {
        clients,
        ok,
        busy: busy.into_inner(),
        other: other.into_inner(),
        logins_per_s: ok as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        rss_mib: gh.rss_kib() as f64 / 1024.0,
    }
}

/// Whether a failed login says, by its time, that the name exists: a wrong password for a
/// real user against a name nobody has (the server verifies a dummy hash then), interleaved,
/// `ROUNDS` each. A correct login between rounds clears the account's delay, and each request
/// comes from its own address (`X-Real-IP`, loopback is a trusted proxy), so no throttle
/// answers instead of the password check. Returns the p50 and p90 in ms of each.
fn failure_timing(gh: &Gatehouse) -> ([f64; 2], [f64; 2]) {
    const ROUNDS: usize = 40;
    let mut b = Browser::new(gh.addr());
    b.get("/login");
    let origin = format!("http://{}", gh.addr());
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    let mut attempt = |user: &str, password: &str, ip: String| {
        let csrf = b.cookie(CSRF_COOKIE).unwrap().to_owned();
        let t = Instant::now();
        let r = b.post_with(
            "/login",
            &[("csrf", &csrf), ("username", user), ("password", password)],
            &[("Origin", &origin), ("X-Real-IP", &ip)],
        );
        (r.status, t.elapsed().as_secs_f64() * 1000.0)
    };
    for round in 0..ROUNDS {
        let ip = |n: usize| format!("10.0.{round}.{n}");
        let nobody = format!("nobody{round}");
        let mut order = [("bench", true), (nobody.as_str(), false)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (n, (user, real)) in order.into_iter().enumerate() {
            let (status, ms) = attempt(user, "not the password at all", ip(n));
            assert_eq!(status, 401, "{user}: {status}");
            if real {
                known.push(ms)
            } else {
                unknown.push(ms)
            }
        }
        assert_eq!(attempt("bench", PW, ip(3)).0, 303);
    }
    let quantiles = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        [v[v.len() / 2], v[v.len() * 9 / 10]]
    };
    (quantiles(&mut known), quantiles(&mut unknown))
}

/// The second step's own work, in this process: p50 (µs) of opening a sealed TOTP secret and
/// checking a code of the oldest step in the window (three HMAC-SHA1s, the worst case), and of
/// one Argon2id verification (the password step) measured the same way, as its baseline. The
/// server adds one SQL UPDATE (the replay check) to the first.
fn second_step_p50() -> (f64, f64) {
    use gatehouse::accounts::factors;
    let secret = gatehouse::secret::ServerSecret::from_bytes(&[7; 32]);
    let raw = factors::new_secret();
    let sealed = secret.seal(factors::TOTP_PURPOSE, &raw);
    let now = 1_800_000_000u64;
    let code = format!("{:06}", factors::code_at(&raw, now / 30 - 1));
    let p50 = |mut samples: Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let totp: Vec<f64> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            let opened = secret.open(factors::TOTP_PURPOSE, &sealed).unwrap();
            assert!(factors::matching_step(&opened, &code, now).is_some());
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let argon: Vec<f64> = rt.block_on(async {
        let p = Passwords::new(OWASP_M_KIB, OWASP_T, OWASP_P, 12);
        let pw = Secret::new(PW.to_string());
        let stored = Secret::new(p.hash(&pw).await.unwrap());
        let mut out = Vec::new();
        for _ in 0..40 {
            let start = Instant::now();
            assert!(p.verify(&pw, Some(&stored)).await.unwrap().ok);
            out.push(start.elapsed().as_secs_f64() * 1e6);
        }
        out
    });
    (p50(totp), p50(argon))
}

/// A passkey assertion's server work, in this process: p50 (µs) of what the server does with
/// an authenticator's answer (webauthn-rs checks the client data, the RP id hash, the flags,
/// the counter and the ECDSA P-256 signature against the stored passkey, read from its JSON
/// record). The answers come from webauthn-rs' software authenticator, made beforehand and
/// not timed. The server adds two SQL statements (the ceremony, the counter) to it.
fn passkey_p50() -> f64 {
    use webauthn_authenticator_rs::prelude::{Url, WebauthnAuthenticator};
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;
    use webauthn_rs::prelude::{Passkey, Uuid, WebauthnBuilder};
    let origin = Url::parse("https://login.example.org").unwrap();
    let rp = WebauthnBuilder::new("example.org", &origin)
        .unwrap()
        .build()
        .unwrap();
    let mut device = SoftPasskey::new(true);
    let (ccr, reg) = rp
        .start_passkey_registration(Uuid::new_v4(), "bench", "Bench", None)
        .unwrap();
    let made = device.do_registration(origin.clone(), ccr).unwrap();
    let stored =
        serde_json::to_string(&rp.finish_passkey_registration(&made, &reg).unwrap()).unwrap();
    let mut samples: Vec<f64> = (0..2_000)
        .map(|_| {
            let key: Passkey = serde_json::from_str(&stored).unwrap();
            let (rcr, state) = rp.start_passkey_authentication(&[key]).unwrap();
            let answer = device.do_authentication(origin.clone(), rcr).unwrap();
            let start = Instant::now();
            let key: Passkey = serde_json::from_str(&stored).unwrap();
            let result = rp.finish_passkey_authentication(&answer, &state).unwrap();
            assert_eq!(result.cred_id(), key.cred_id());
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse. BENCH_ONLY=outbox runs only the
    // outbox's part.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("outbox") {
        print!("{}", outbox_delivery());
        return;
    }
    let dir = TempDir::new("bench-logins");
    let data = dir.join("data");
    let gh = Gatehouse::spawn(&args(&["--insecure-cookies", "--data-dir", &data]));
    create_user(&data, "bench", "bench@example.org", PW);
    let idle = gh.rss_kib() as f64 / 1024.0;
    let ceiling = hash_ceiling();
    let (known, unknown) = failure_timing(&gh);
    let levels: Vec<Level> = [1, 16, 200].iter().map(|&c| level(&gh, c)).collect();
    let mut out = format!(
        "Logins through POST /login (Argon2id m={} KiB, t={}, p={}), {} s per level; idle RSS {:.1} MiB.\n\
         Ceiling: {:.1} Argon2id verifications/s on all CPUs in one process.\n\n\
         | clients | logins/s | × ceiling | p50 ms | p99 ms | 303 | 503 | other | RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n",
        OWASP_M_KIB, OWASP_T, OWASP_P, SECONDS, idle, ceiling
    );
    for l in &levels {
        out += &format!(
            "| {} | {:.1} | {:.2} | {:.0} | {:.0} | {} | {} | {} | {:.1} |\n",
            l.clients,
            l.logins_per_s,
            l.logins_per_s / ceiling,
            l.p50_ms,
            l.p99_ms,
            l.ok,
            l.busy,
            l.other,
            l.rss_mib
        );
    }
    out += &format!(
        "\nA wrong password, one client: a real user p50 {:.1} ms, p90 {:.1} ms; a name nobody has \
         p50 {:.1} ms, p90 {:.1} ms (unknown / known at p50: {:.2}).\n",
        known[0],
        known[1],
        unknown[0],
        unknown[1],
        unknown[0] / known[0]
    );
    let (totp, argon) = second_step_p50();
    let passkey = passkey_p50();
    out += &format!(
        "\nThe second step's own work, p50: a TOTP verify (unseal the key, a code of the oldest \
         step in the window) {totp:.1} µs; one Argon2id verification {:.1} ms in the same run \
         (the password step costs {:.0}× as much). A passkey assertion (webauthn-rs' checks and \
         the P-256 signature) {passkey:.1} µs ({:.0}× less than Argon2id).\n",
        argon / 1000.0,
        argon / totp,
        argon / passkey
    );
    out += &outbox_delivery();
    print!("{out}");
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load");
    std::fs::create_dir_all(&report).unwrap();
    std::fs::write(report.join("logins.md"), out).unwrap();
}

/// Unix milliseconds of an RFC 3339 time.
fn unix_ms(rfc3339: &str) -> u64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as u64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// POSTs `n` bodies to `url` one after another, each on a new connection (as the outbox's
/// client does): what the receiver takes at most, per second.
fn direct_posts(port: u16, n: usize) -> f64 {
    use std::io::{Read, Write};
    let body =
        r#"{"type":"user.registered","timestamp":"2026-12-06T00:00:00.000Z","data":{"user":"x"}}"#;
    let start = Instant::now();
    for _ in 0..n {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        write!(
            s,
            "POST /hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The outbox, through webhooks to a receiver on loopback: how fast a backlog drains (2,000
/// events written by one import) against the same receiver fed directly, and the lag from an
/// event's commit to its arrival when the server wrote it (sign-ins: session.created).
fn outbox_delivery() -> String {
    const BACKLOG: usize = 2000;
    const SIGN_INS: usize = 100;
    let dir = TempDir::new("bench-outbox");
    let data = dir.join("data");
    let receiver = Receiver::start();
    let baseline = direct_posts(receiver.port(), BACKLOG);
    let receiver = Receiver::start();
    let secret = dir.join("secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let hooks = dir.join("webhooks.toml");
    std::fs::write(
        &hooks,
        format!(
            "[[webhook]]\nurl = \"{}\"\nevents = [\"user.registered\", \"session.created\"]\nsecret_file = \"{secret}\"\n",
            receiver.url("/hooks")
        ),
    )
    .unwrap();
    let gh = Gatehouse::spawn(&args(&[
        "--insecure-cookies",
        "--data-dir",
        &data,
        "--webhooks",
        &hooks,
    ]));
    // The backlog: one import, then the server's next look at the outbox (at most 5 s).
    let lines: String = (0..BACKLOG)
        .map(|i| {
            format!("{{\"username\": \"bulk{i:05}\", \"email\": \"bulk{i:05}@example.org\"}}\n")
        })
        .collect();
    let file = dir.join("users.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = gatehouse_cli(&[
        "user",
        "import",
        &file,
        "--data-dir",
        &data,
        "--webhooks",
        &hooks,
    ]);
    assert!(out.status.success(), "{out:?}");
    let bodies = receiver.wait_bodies(BACKLOG, Duration::from_secs(300));
    assert_eq!(bodies.len(), BACKLOG, "the backlog did not drain");
    let arrivals = receiver.arrivals_ms();
    let drained = (arrivals[BACKLOG - 1] - arrivals[0]).max(1) as f64 / 1000.0;
    let rate = (BACKLOG - 1) as f64 / drained;
    // Sign-ins, one after another: each writes session.created as the server answers.
    create_user(&data, "lag", "lag@example.org", PW);
    for _ in 0..SIGN_INS {
        let mut b = Browser::new(gh.addr());
        let (r, _) = b.json(
            "POST",
            "/api/login",
            &serde_json::json!({"username": "lag", "password": PW}),
        );
        assert_eq!(r.status, 200);
    }
    let all = receiver.wait_bodies(BACKLOG + SIGN_INS, Duration::from_secs(60));
    let arrivals = receiver.arrivals_ms();
    let mut lags: Vec<u64> = all[BACKLOG..]
        .iter()
        .zip(&arrivals[BACKLOG..])
        .map(|(body, at)| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            at.saturating_sub(unix_ms(v["timestamp"].as_str().unwrap()))
        })
        .collect();
    lags.sort_unstable();
    format!(
        "\nThe outbox (webhooks to a receiver on loopback that answers 200 at once, a new \
         connection per delivery, SQLite): a backlog of {BACKLOG} events written by one import \
         drained at {rate:.0} deliveries/s; the same receiver fed directly, one request after \
         another, took {baseline:.0}/s (ratio {:.2}). The lag from an event's commit to its \
         arrival, for events the server wrote ({SIGN_INS} sign-ins, session.created): p50 {} ms, \
         p99 {} ms, max {} ms. (Events the command line writes wait for the server's next look \
         at the outbox, at most 5 s.)\n",
        rate / baseline,
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags[lags.len() - 1]
    )
}
