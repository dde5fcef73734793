//! A flood of random tokens against a real `redis-server`: store load and memory stay
//! bounded. Its own test binary, so that nothing runs beside it while it keeps both cores
//! busy for about a minute.

use std::time::Instant;

use crate::support::*;
use gatehouse::credential;
use gatehouse::session::SessionKind;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A flood of one million random well-formed tokens (right shape, right checksum, no such
/// session), over keep-alive connections: each costs at most one store read, and memory
/// does not grow with their number. The bound: what remembers unknown tokens is a fixed
/// 1 MiB table (65,536 slots, 10 s); nothing else keeps anything of a refused token.
#[test]
fn a_million_random_tokens_keep_store_load_and_memory_bounded() {
    let redis = RedisServer::start();
    let gh = Gatehouse::spawn(&args(&["--redis-url", &redis.url()]));
    const CONNECTIONS: usize = 4;
    const BATCH: usize = 64;
    // RSS after each of these totals.
    const CHECKPOINTS: [usize; 5] = [50_000, 100_000, 250_000, 500_000, 1_000_000];
    let started = Instant::now();
    let before = gh.rss_kib();
    redis.config_resetstat();
    let mut sent = 0;
    let mut rss = Vec::new();
    let mut conns: Vec<KeepAlive> = (0..CONNECTIONS)
        .map(|_| KeepAlive::connect(gh.addr()).unwrap())
        .collect();
    for checkpoint in CHECKPOINTS {
        let per_conn = (checkpoint - sent) / CONNECTIONS;
        std::thread::scope(|scope| {
            for conn in conns.iter_mut() {
                scope.spawn(move || {
                    let mut left = per_conn;
                    while left > 0 {
                        let n = left.min(BATCH);
                        let values: Vec<String> = (0..n)
                            .map(|_| bearer(credential::generate(SessionKind::User).expose()))
                            .collect();
                        let headers: Vec<Vec<(&str, &str)>> = values
                            .iter()
                            .map(|v| vec![("Authorization", v.as_str())])
                            .collect();
                        let statuses = conn.get_all("/auth", &headers).unwrap();
                        assert!(
                            statuses.iter().all(|&s| s == 401),
                            "a random token was not refused: {statuses:?}"
                        );
                        left -= n;
                    }
                });
            }
        });
        sent += per_conn * CONNECTIONS;
        rss.push((sent, gh.rss_kib()));
    }
    let gets = redis.commandstats().get("get").copied().unwrap_or(0);
    println!(
        "{sent} random well-formed tokens in {:.0?}: {gets} store reads ({:.3} per token)",
        started.elapsed(),
        gets as f64 / sent as f64
    );
    for (n, kib) in &rss {
        println!(
            "  after {n:>9} tokens: RSS {kib} KiB (+{} KiB)",
            kib.saturating_sub(before)
        );
    }
    assert!(
        gets as usize <= sent,
        "more than one store read per unknown token: {gets}"
    );
    // Bounded: between 250k and 1M tokens — the negative table overwritten ten times over —
    // memory stays flat. (A bound on memory, not on time.)
    let at = |n: usize| rss.iter().find(|(m, _)| *m >= n).unwrap().1;
    let late_growth = at(1_000_000).saturating_sub(at(250_000));
    assert!(
        late_growth < 8 * 1024,
        "memory kept growing with the number of tokens: +{late_growth} KiB from 250k to 1M tokens"
    );
    // And in all: the process's working set under load, which the tokens do not add to.
    let grown = at(1_000_000).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "memory grew by {grown} KiB over 1M tokens"
    );
    // A replayed unknown token is answered from the negative table: no second read.
    let token = credential::generate(SessionKind::User);
    redis.config_resetstat();
    for _ in 0..100 {
        let response = http_get(
            gh.addr(),
            "/auth",
            &[("Authorization", &bearer(token.expose()))],
        );
        assert_eq!(response.status, 401);
    }
    assert_eq!(redis.commandstats().get("get").copied().unwrap_or(0), 1);
    // Garbage (bad checksum) never reaches the store at all.
    redis.config_resetstat();
    for i in 0..2_000 {
        let garbage = format!("gts_{:0>49}", i);
        let response = http_get(gh.addr(), "/auth", &[("Authorization", &bearer(&garbage))]);
        assert_eq!(response.status, 401);
    }
    assert_eq!(redis.commandstats().get("get").copied().unwrap_or(0), 0);
}
