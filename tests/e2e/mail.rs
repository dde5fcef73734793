//! Mail through the outbox to a real SMTP server (Python's aiosmtpd, in the tests' virtual
//! environment), started only after the message was written: it waits in the outbox, sealed,
//! and goes out once the server is up; then it is gone from the outbox.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::accounts::{Backend, Site, PW};
use crate::support::*;

/// aiosmtpd on `port`, keeping each message as a file in the maildir `dir`; killed on drop.
struct Smtp(Child);

impl Smtp {
    fn start(port: u16, dir: &str) -> Smtp {
        let child = Command::new(venv_python())
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
                dir,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Smtp(child)
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The messages in maildir `dir`, waiting (at most `timeout`) for at least one.
fn delivered(dir: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got: Vec<String> = std::fs::read_dir(format!("{dir}/new"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        if !got.is_empty() || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_confirmation_written_while_smtp_is_down_goes_out_when_it_is_back() {
    let port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let site = Site::start("mail-outbox", Backend::Sqlite, &["--smtp-url", &smtp_url]);
    let maildir = TempDir::new("maildir");
    let dir = maildir.join("box");
    let mut b = Browser::new(site.gh.addr());
    let (r, _) = b.json(
        "POST",
        "/api/register",
        &json!({"username": "uma", "email": "uma@example.org", "name": "Uma", "password": PW}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    // SMTP is down: the message waits in the outbox, and the attempt is logged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !site.gh.logs().contains("outbox item not delivered") {
        assert!(
            Instant::now() < deadline,
            "no failed attempt:\n{}",
            site.gh.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        site.sql("SELECT COUNT(*) FROM outbox")
            .parse::<i64>()
            .unwrap(),
        1
    );
    // The operator sees it waiting, never its message; the metrics count the retries.
    let listed = cli_stdout(&site.cli(&["outbox", "list", "--json", "--status", "pending"], None));
    let item: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(
        (item["kind"].as_str(), item["status"].as_str()),
        (Some("mail"), Some("pending"))
    );
    assert!(
        item.get("payload").is_none() && !listed.contains("confirm"),
        "{listed}"
    );
    let metric = |name: &str| {
        let text = http_get(site.gh.admin_addr(), "/metrics", &[]).body;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    assert!(metric("gatehouse_outbox_delivered_total{kind=\"mail\",result=\"retry\"}") >= 1.0);
    // Up: asked to try again now, it goes out, and leaves the outbox.
    let _smtp = Smtp::start(port, &dir);
    std::thread::sleep(Duration::from_millis(300));
    let id = item["id"].as_str().unwrap();
    assert!(site.cli(&["outbox", "retry", id], None).status.success());
    let got = delivered(&dir, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "{}", site.gh.logs());
    assert!(got[0].contains("To: uma@example.org"), "{}", got[0]);
    let link = link_in(&decode_quoted_printable(&got[0]), "/email/confirm?token=");
    let r = b.get(&link);
    assert_eq!(r.status, 200, "{link}\n{}\n{}", got[0], r.body);
    let (r, _) = b.json(
        "POST",
        "/api/login",
        &json!({"username": "uma", "password": PW}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while site
        .sql("SELECT COUNT(*) FROM outbox")
        .parse::<i64>()
        .unwrap()
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "the delivered message stayed in the outbox"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric("gatehouse_outbox_delivered_total{kind=\"mail\",result=\"delivered\"}"),
        1.0
    );
    assert_eq!(
        site.cli(&["outbox", "retry", id], None).status.code(),
        Some(64)
    );
    // Neither the link nor the message is in the log.
    let token = link.split("token=").nth(1).unwrap();
    assert!(!site.gh.logs().contains(token));
}
