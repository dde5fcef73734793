//! Webhooks, received by a server that trusts only what the Standard Webhooks reference library
//! (Python `standardwebhooks`, in the tests' virtual environment) verifies: events written
//! while the receiver is down arrive once it is back, and after a gatehouse restart in between;
//! a receiver with another secret refuses every one.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::accounts::{on_both_backends, Backend, Site, PW};
use crate::support::*;

on_both_backends!(events_are_signed_and_arrive_after_an_outage_and_a_restart);

/// Two secrets: the one gatehouse signs with, and another.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr";
const OTHER: &str = "whsec_c2VjcmV0LW9mLWFub3RoZXItcmVjZWl2ZXItLTMy";

/// The receiver script on `port`, verifying with `secret`, writing what it accepts to `out`.
struct Receiver(Child);

impl Receiver {
    fn start(port: u16, secret: &str, out: &str) -> Receiver {
        Receiver::slow(port, secret, out, 0)
    }

    /// One that answers each delivery after `delay_ms`.
    fn slow(port: u16, secret: &str, out: &str, delay_ms: u64) -> Receiver {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/e2e/fixtures/webhook-receiver.py");
        let child = Command::new(venv_python())
            .arg(script)
            .args([&port.to_string(), secret, out, &delay_ms.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Receiver(child)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the receiver accepted: each line's `{"id", "timestamp", "body"}`.
fn accepted(out: &str) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (at most 30 s: the outbox backs off 1, 2, 4, 8 … s) until the receiver accepted an
/// event of each of `types`; every accepted event.
fn wait_for(out: &str, types: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = accepted(out);
        let seen: BTreeSet<&str> = got
            .iter()
            .filter_map(|e| e["body"]["type"].as_str())
            .collect();
        if types.iter().all(|t| seen.contains(t)) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {types:?}, the receiver accepted {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events_are_signed_and_arrive_after_an_outage_and_a_restart(backend: Backend) {
    let dir = TempDir::new("webhooks");
    let (port, other_port) = (free_port(), free_port());
    let (secret_file, other_file) = (dir.join("secret"), dir.join("other"));
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    // The second webhook's file holds a secret its receiver does not know.
    std::fs::write(&other_file, OTHER).unwrap();
    let hooks = dir.join("webhooks.toml");
    std::fs::write(
        &hooks,
        format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{port}/hooks/gatehouse\"\nevents = [\"*\"]\nsecret_file = \"{secret_file}\"\n\n\
             [[webhook]]\nurl = \"http://127.0.0.1:{other_port}/hooks\"\nevents = [\"user.registered\"]\nsecret_file = \"{other_file}\"\n"
        ),
    )
    .unwrap();
    let out = dir.join("received.jsonl");
    let mut site = Site::start("webhooks", backend, &["--webhooks", &hooks]);
    let _other = Receiver::start(other_port, SECRET, &dir.join("other.jsonl"));

    // The receiver is down: the registration waits in the outbox.
    let mut b = Browser::new(site.gh.addr());
    let (r, _) = b.json(
        "POST",
        "/api/register",
        &json!({"username": "uma", "email": "uma@example.org", "name": "Uma", "password": PW}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let confirm = link_in(
        &wait_mail(std::path::Path::new(&site.data()), 1),
        "/email/confirm?token=",
    );
    assert!(
        site.gh
            .wait_for_log("outbox item not delivered", Duration::from_secs(10)),
        "{}",
        site.gh.logs()
    );
    let receiver = Receiver::start(port, SECRET, &out);
    let got = wait_for(&out, &["user.registered"]);
    let registered = &got[0]["body"];
    assert_eq!(b.get(&confirm).status, 200);
    wait_for(&out, &["user.confirmed"]);
    assert_eq!(registered["data"]["username"], "uma", "{registered}");
    assert!(registered["timestamp"].as_str().unwrap().ends_with('Z'));

    // Signing in and out: session.created, then session.revoked, with the same sid.
    let (r, v) = b.json(
        "POST",
        "/api/login",
        &json!({"username": "uma", "password": PW}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sid = v["sid"].as_str().unwrap().to_owned();
    assert_eq!(b.json("POST", "/api/logout", &json!(null)).0.status, 204);
    let got = wait_for(&out, &["session.created", "session.revoked"]);
    for t in ["session.created", "session.revoked"] {
        let e = got.iter().find(|e| e["body"]["type"] == t).unwrap();
        assert_eq!(e["body"]["data"]["sid"], sid.as_str(), "{e}");
    }

    // The receiver goes down, the command line deactivates uma (the server is not involved),
    // and gatehouse restarts before the receiver is back: nothing is lost.
    drop(receiver);
    let out_cli = site.cli(&["user", "deactivate", "uma", "--webhooks", &hooks], None);
    assert!(out_cli.status.success(), "{out_cli:?}");
    site.gh.restart();
    let _receiver = Receiver::start(port, SECRET, &out);
    let got = wait_for(&out, &["user.deactivated"]);

    // Every event verified (the receiver keeps nothing else), each id once, no secret.
    let ids: BTreeSet<&str> = got.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), got.len(), "an event arrived twice: {got:?}");
    let all = serde_json::to_string(&got).unwrap();
    assert!(!all.contains(PW) && !all.contains("argon2"), "{all}");
    let user = registered["data"]["user"].as_str().unwrap();
    let deactivated = got
        .iter()
        .find(|e| e["body"]["type"] == "user.deactivated")
        .unwrap();
    assert_eq!(deactivated["body"]["data"], json!({"user": user}));

    // The receiver with the other secret verified nothing: its event waits, refused.
    assert!(accepted(&dir.join("other.jsonl")).is_empty());
    let listed = cli_stdout(&site.cli(&["outbox", "list", "--json", "--status", "pending"], None));
    assert!(
        listed.contains(&format!("127.0.0.1:{other_port}")) && listed.contains("400"),
        "{listed}"
    );
}

#[test]
fn a_bad_webhooks_file_exits_64_naming_the_flag_and_the_line() {
    let dir = TempDir::new("webhooks-bad");
    let secret = dir.join("secret");
    std::fs::write(&secret, "not-a-whsec-secret").unwrap();
    for (text, says) in [
        (
            format!("[[webhook]]\nurl = \"https://x.example\"\nevents = [\"user.exploded\"]\nsecret_file = \"{secret}\"\n"),
            "line 1: unknown event \"user.exploded\"",
        ),
        (
            format!("\n[[webhook]]\nurl = \"https://x.example\"\nevents = [\"*\"]\nsecret_file = \"{secret}\"\n"),
            "line 2: secret_file",
        ),
        ("[[webhook]]\nurl = 3\n".to_owned(), "line 2"),
    ] {
        let file = dir.join("webhooks.toml");
        std::fs::write(&file, &text).unwrap();
        let data = dir.join("data");
        let out = gatehouse_cli(&["serve", "--webhooks", &file, "--data-dir", &data]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {err}");
        assert!(err.contains("--webhooks") && err.contains(says), "{text}: {err}");
    }
}

/// Two servers on one PostgreSQL share the outbox: every event reaches the receiver exactly
/// once, and both servers deliver (a slow receiver keeps one server busy past the other's
/// first look at the outbox).
#[test]
fn two_servers_on_one_postgres_deliver_each_event_once() {
    const USERS: usize = 240;
    let dir = TempDir::new("webhooks-two");
    let port = free_port();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let hooks = dir.join("webhooks.toml");
    std::fs::write(
        &hooks,
        format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{port}/hooks\"\nevents = [\"user.registered\"]\nsecret_file = \"{secret_file}\"\n"
        ),
    )
    .unwrap();
    let out = dir.join("received.jsonl");
    let _receiver = Receiver::slow(port, SECRET, &out, 400);
    let site = Site::start("webhooks-two", Backend::Postgres, &["--webhooks", &hooks]);
    let other_data = dir.join("other-data");
    let url = site.database_url().unwrap();
    let other = Gatehouse::spawn(&args(&[
        "--insecure-cookies",
        "--data-dir",
        &other_data,
        "--database-url",
        &url,
        "--webhooks",
        &hooks,
    ]));
    // One import: every user.registered written in one transaction, by the command line.
    let lines: String = (0..USERS)
        .map(|i| {
            format!("{{\"username\": \"bulk{i:04}\", \"email\": \"bulk{i:04}@example.org\"}}\n")
        })
        .collect();
    let file = dir.join("users.jsonl");
    std::fs::write(&file, lines).unwrap();
    let imported = site.cli(&["user", "import", &file, "--webhooks", &hooks], None);
    assert!(imported.status.success(), "{imported:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted(&out).len() < USERS {
        assert!(
            Instant::now() < deadline,
            "{} of {USERS} delivered",
            accepted(&out).len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Anything delivered twice would have landed by now.
    std::thread::sleep(Duration::from_secs(1));
    let got = accepted(&out);
    let ids: BTreeSet<&str> = got.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!((got.len(), ids.len()), (USERS, USERS), "each event once");
    let delivered = |gh: &Gatehouse| gh.logs().matches("outbox item delivered").count();
    let (a, b) = (delivered(&site.gh), delivered(&other));
    eprintln!("delivered by the first server: {a}, by the second: {b}");
    assert_eq!(a + b, USERS);
    assert!(
        a > 0 && b > 0,
        "one server delivered everything: {a} and {b}"
    );
}
