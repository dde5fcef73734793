//! In-process cost of the `/auth` hot path, against a baseline measured in the same run.
//!
//! `cargo bench --bench hot_path` prints nanoseconds per operation for: reading and checking a
//! credential, hashing it, and a whole cache-hit `/auth` answer, next to the cost of building
//! the empty 200 response that any handler must build (the floor). Ratios, not absolute
//! times, are what to compare between runs: these machines are shared and noisy. Each
//! figure is the median of several rounds.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use gatehouse::config::{Cli, Command};
use gatehouse::credential::{self, TokenHash, TokenKind};
use gatehouse::session::{unix_now, Session};
use gatehouse::store::SessionStore;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};

const ROUNDS: usize = 7;

/// Median nanoseconds per call of `f` over `ROUNDS` rounds of `n` calls.
fn measure(n: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rounds[ROUNDS / 2]
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; keep that quick.
    let n = if std::env::args().any(|a| a == "--bench") {
        200_000
    } else {
        1_000
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = std::env::temp_dir().join(format!("gatehouse-bench-{}", std::process::id()));
    let cli = Cli::parse_from(["gatehouse", "serve", "--data-dir", data.to_str().unwrap()]);
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };

    let gateway = runtime
        .block_on(gatehouse::build_gateway(&args))
        .expect("gateway");
    let token = credential::generate(TokenKind::Session);
    let now = unix_now();
    let session = Session {
        sub: "u1".into(),
        username: Some("alice".into()),
        email: Some("alice@example.org".into()),
        name: None,
        scopes: vec!["read".into()],
        roles: vec![],
        kind: Default::default(),
        client_id: None,
        created_at: now,
        expires_at: now + 3600,
        last_seen: None,
        ip: None,
        user_agent: None,
    };
    runtime
        .block_on(gateway.store.put(&TokenHash::of(token.expose()), &session))
        .unwrap();

    let mut bearer = HeaderMap::new();
    bearer.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", token.expose())).unwrap(),
    );
    let mut cookie = HeaderMap::new();
    cookie.insert(
        COOKIE,
        HeaderValue::from_str(&format!(
            "_ga=GA1.2.3; theme=dark; gatehouse_session={}; lang=en",
            token.expose()
        ))
        .unwrap(),
    );
    // Warm the cache for both methods.
    for h in [&bearer, &cookie] {
        assert_eq!(runtime.block_on(gateway.auth(h)).status(), 200);
    }

    let floor = measure(n, || {
        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
        r.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        black_box(r);
    });
    let extract_bearer = measure(n, || {
        black_box(credential::extract(black_box(&bearer), "gatehouse_session").unwrap());
    });
    let extract_cookie = measure(n, || {
        black_box(credential::extract(black_box(&cookie), "gatehouse_session").unwrap());
    });
    let check = measure(n, || {
        black_box(credential::check(black_box(token.expose())));
    });
    let hash = measure(n, || {
        black_box(TokenHash::of(black_box(token.expose())));
    });
    let block_on = measure(n, || {
        black_box(runtime.block_on(async { black_box(1) }));
    });
    let key = gatehouse::cache::CacheKey {
        hash: TokenHash::of(token.expose()),
        method: credential::Method::Bearer,
    };
    let cache_get = measure(n, || {
        black_box(runtime.block_on(gateway.cache.get(black_box(&key))));
    });
    let hit_bearer = measure(n, || {
        black_box(runtime.block_on(gateway.auth(black_box(&bearer))));
    });
    let hit_cookie = measure(n, || {
        black_box(runtime.block_on(gateway.auth(black_box(&cookie))));
    });

    println!(
        "size of the /auth future: {} bytes",
        std::mem::size_of_val(&gateway.auth(&bearer))
    );
    println!("| operation | ns/op | × floor |");
    println!("|---|---:|---:|");
    for (name, ns) in [
        ("floor: build an empty 200 response", floor),
        ("extract bearer credential", extract_bearer),
        ("extract cookie credential (4 cookies)", extract_cookie),
        ("check token checksum", check),
        ("SHA-256 of token", hash),
        ("runtime.block_on(ready future)", block_on),
        ("cache lookup (moka, inside block_on)", cache_get),
        ("/auth cache hit, bearer (whole handler)", hit_bearer),
        ("/auth cache hit, cookie (whole handler)", hit_cookie),
    ] {
        println!("| {name} | {ns:.0} | {:.1} |", ns / floor);
    }
    let _ = std::fs::remove_dir_all(&data);
}
