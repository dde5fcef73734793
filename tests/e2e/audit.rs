//! The audit trail in the database: the lines `audit!` logs become rows, read back with
//! `gatehouse audit list`, on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::accounts::{login, on_both_backends, Backend, Site, PW};
use crate::support::*;

on_both_backends!(sign_ins_and_commands_are_audited_as_rows);

/// `gatehouse audit list --json ARGS`, once it holds at least `n` rows (the server writes
/// them off the request).
fn rows(site: &Site, args: &[&str], n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut all = vec!["audit", "list", "--json"];
        all.extend_from_slice(args);
        let out = cli_stdout(&site.cli(&all, None));
        let rows: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if rows.len() >= n || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sign_ins_and_commands_are_audited_as_rows(backend: Backend) {
    let site = Site::start("audit", backend, &[]);
    site.create_user("alice", "alice@example.org", PW);
    let alice: Value = serde_json::from_str(&cli_stdout(
        &site.cli(&["user", "show", "--json", "alice"], None),
    ))
    .unwrap();
    let id = alice["id"].as_str().unwrap();
    let mut b = Browser::new(site.gh.addr());
    assert_eq!(login(&mut b, "nobody-typed-this-name", PW).status, 401);
    assert_eq!(login(&mut b, "alice", "not her password").status, 401);
    assert_eq!(login(&mut b, "alice", PW).status, 303);
    assert!(site
        .cli(&["user", "deactivate", "alice"], None)
        .status
        .success());

    let all = rows(&site, &[], 5);
    let actions: Vec<&str> = all.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for want in [
        "user.created",
        "user.login_failed",
        "user.login",
        "user.deactivated",
    ] {
        assert!(actions.contains(&want), "{want} missing: {all:#?}");
    }
    // Newest first: the deactivation, by the command line, about alice.
    assert_eq!(
        (
            all[0]["action"].as_str(),
            all[0]["actor"].as_str(),
            all[0]["target"].as_str()
        ),
        (Some("user.deactivated"), Some("cli"), Some(id))
    );
    assert_eq!(all[0]["details"]["sessions_ended"], 1);
    // A name that matched no one is stored as its tag, never as typed.
    let unknown = all
        .iter()
        .find(|r| {
            r["action"] == "user.login_failed" && r["actor"].as_str().unwrap().starts_with("login:")
        })
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(
        (unknown["outcome"].as_str(), unknown["ip"].as_str()),
        (Some("refused"), Some("127.0.0.1"))
    );
    assert!(!all
        .iter()
        .any(|r| r.to_string().contains("nobody-typed-this-name")));
    assert!(!all.iter().any(|r| r.to_string().contains(PW)));

    // Filters: by user (as actor or target), by action, by time.
    let hers = rows(&site, &["--actor", "alice"], 4);
    assert!(
        hers.iter().all(|r| r["actor"] == id || r["target"] == id),
        "{hers:#?}"
    );
    assert!(hers
        .iter()
        .any(|r| r["action"] == "user.login" && r["outcome"] == "ok"));
    let failed = rows(&site, &["--action", "user.login_failed"], 2);
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert_eq!(rows(&site, &["--since", "1h"], all.len()).len(), all.len());
    assert_eq!(
        rows(&site, &["--since", "2999-01-01T00:00:00Z"], 0),
        Vec::<Value>::new()
    );
    let text = cli_stdout(&site.cli(&["audit", "list", "--limit", "1"], None));
    assert!(
        text.starts_with("20") && text.contains("\tuser.deactivated\tok\tcli\t"),
        "{text}"
    );
    let bad = site.cli(&["audit", "list", "--since", "last week"], None);
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
}
