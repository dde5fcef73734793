//! The embedded default (no --redis-url): sessions persist in --data-dir across restarts, and
//! the CLI works against the same file while the server runs.

use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn sessions_survive_a_restart_and_cli_revocation_reaches_the_server() {
    let data = TempDir::new("data");
    let data_dir = data.path().to_str().unwrap().to_string();
    let mut gh = Gatehouse::spawn(&args(&["--data-dir", &data_dir, "--cache-ttl", "300s"]));
    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--data-dir",
        &data_dir,
        "--sub",
        "dana",
        "--username",
        "dana",
    ]));
    let cookie = format!("gatehouse_session={token}");
    let first = http_get(gh.addr(), "/auth", &[("Cookie", &cookie)]);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("x-auth-request-user"), Some("dana"));
    let kid_before = jwks_kids(&gh);

    gh.restart();
    let again = http_get(gh.addr(), "/auth", &[("Cookie", &cookie)]);
    assert_eq!(
        again.status, 200,
        "the session survives a restart: {again:?}"
    );
    assert_eq!(
        jwks_kids(&gh),
        kid_before,
        "the generated key survives a restart too"
    );

    // Revoke with the CLI while the server runs; the cache TTL is 300 s, so only the
    // revocation log can make this a 401.
    cli_stdout(&gatehouse_cli_stdin(
        &["session", "revoke", "--data-dir", &data_dir],
        &token,
    ));
    let revoked_at = Instant::now();
    while http_get(gh.addr(), "/auth", &[("Cookie", &cookie)]).status != 401 {
        assert!(
            // The contract is 1 s embedded; 3 s is the margin of a noisy machine.
            revoked_at.elapsed() < Duration::from_secs(3),
            "revocation took over 3 s to reach the server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "embedded: revoked session refused {:?} after the CLI returned",
        revoked_at.elapsed()
    );
}

fn jwks_kids(gh: &Gatehouse) -> String {
    let body = http_get(gh.addr(), "/.well-known/jwks.json", &[]).body;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",")
}
