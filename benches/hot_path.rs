//! Micro-benchmarks of the `/auth` hot path, with criterion: `cargo bench --bench hot_path`.
//!
//! Per-operation times for reading a credential (bearer, and a cookie among others), checking
//! its checksum, hashing it, a whole cache-hit `/auth` answer called in-process, a refused
//! garbage token, and JWT signing with each algorithm. The group `floor` is the cost of
//! building the empty 200 response that any handler must build: compare against it, not
//! against absolute times, because these machines are shared and noisy.

use std::hint::black_box;
use std::path::Path;

use clap::Parser;
use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::config::{Cli, Command, JwtAlg};
use gatehouse::credential::{self, Method, TokenHash};
use gatehouse::secret::Secret;
use gatehouse::session::SessionKind;
use gatehouse::session::{unix_now, Session};
use gatehouse::signer::{Signer, TokenSettings};
use gatehouse::store::SessionStore;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CACHE_CONTROL, COOKIE};

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn session() -> Session {
    let now = unix_now();
    Session {
        username: Some("alice".into()),
        email: Some("alice@example.org".into()),
        scopes: vec!["read".into(), "write".into()],
        ..Session::new("u1", now, now + 3600)
    }
}

fn headers(name: hyper::header::HeaderName, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_str(value).unwrap());
    h
}

fn credential(c: &mut Criterion) {
    let token = credential::generate(SessionKind::User);
    let bearer = headers(AUTHORIZATION, &format!("Bearer {}", token.expose()));
    let cookie = headers(
        COOKIE,
        &format!(
            "_ga=GA1.2.3; theme=dark; gatehouse_session={}; lang=en",
            token.expose()
        ),
    );
    let mut g = c.benchmark_group("credential");
    g.bench_function("extract bearer", |b| {
        b.iter(|| credential::extract(black_box(&bearer), "gatehouse_session").unwrap())
    });
    g.bench_function("extract cookie (4 cookies)", |b| {
        b.iter(|| credential::extract(black_box(&cookie), "gatehouse_session").unwrap())
    });
    g.bench_function("check checksum", |b| {
        b.iter(|| credential::check(black_box(token.expose())))
    });
    g.bench_function("SHA-256 of token", |b| {
        b.iter(|| TokenHash::of(black_box(token.expose())))
    });
    g.finish();
}

fn handler(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let cli = Cli::parse_from([
        "gatehouse",
        "serve",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let gateway = runtime
        .block_on(gatehouse::build_gateway(&args))
        .expect("gateway");
    // The cache serves hits only once the store's revocation log is followed.
    runtime.block_on(async {
        while !gateway.cache.is_following() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    let token = credential::generate(SessionKind::User);
    runtime
        .block_on(
            gateway
                .store
                .put(&TokenHash::of(token.expose()), &session()),
        )
        .unwrap();
    let bearer = headers(AUTHORIZATION, &format!("Bearer {}", token.expose()));
    let cookie = headers(
        COOKIE,
        &format!(
            "_ga=GA1.2.3; theme=dark; gatehouse_session={}; lang=en",
            token.expose()
        ),
    );
    let garbage = headers(AUTHORIZATION, &format!("Bearer gts_{}", "A".repeat(50)));
    for h in [&bearer, &cookie] {
        assert_eq!(runtime.block_on(gateway.auth(h, LOOPBACK)).status(), 200);
    }

    let mut g = c.benchmark_group("handler");
    g.bench_function("floor: empty 200 response", |b| {
        b.iter(|| {
            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        })
    });
    g.bench_function("floor: block_on a ready future", |b| {
        b.iter(|| runtime.block_on(async { black_box(1) }))
    });
    let key = gatehouse::cache::CacheKey {
        hash: TokenHash::of(token.expose()),
        method: Method::Bearer,
    };
    g.bench_function("cache lookup (moka, in block_on)", |b| {
        b.iter(|| {
            runtime
                .block_on(gateway.cache.get(black_box(&key)))
                .unwrap()
        })
    });
    g.bench_function("/auth cache hit, bearer", |b| {
        b.iter(|| runtime.block_on(gateway.auth(black_box(&bearer), LOOPBACK)))
    });
    g.bench_function("/auth cache hit, cookie", |b| {
        b.iter(|| runtime.block_on(gateway.auth(black_box(&cookie), LOOPBACK)))
    });
    g.bench_function("/auth refused, bad checksum", |b| {
        b.iter(|| runtime.block_on(gateway.auth(black_box(&garbage), LOOPBACK)))
    });
    g.finish();
}

fn signing(c: &mut Criterion) {
    let keys = tempfile::tempdir().unwrap();
    let settings = TokenSettings {
        issuer: "gatehouse".into(),
        audience: None,
        ttl_secs: 300,
    };
    let session = session();
    let secret = Secret::new("a-bench-secret-of-at-least-32-bytes!".to_string());
    let mut g = c.benchmark_group("sign");
    for alg in [JwtAlg::EdDsa, JwtAlg::Es256, JwtAlg::Rs256, JwtAlg::Hs256] {
        let signer = Signer::load(Path::new(keys.path()), alg, Some(&secret), settings.clone())
            .expect("signer");
        g.bench_function(format!("mint JWT {alg:?}"), |b| {
            b.iter(|| {
                signer
                    .mint(black_box(&session), "sid", Method::Bearer, unix_now())
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = credential, handler, signing
}
criterion_main!(benches);
