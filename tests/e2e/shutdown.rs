//! SIGTERM under load: readiness turns 503 first, requests keep being served during
//! --shutdown-delay and for as long as they keep coming, in-flight requests finish, the
//! process exits 0, and no request fails — directly, and through nginx.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::support::*;

/// Four client threads sending `GET path` with a bearer token to `addr` until stopped,
/// counting 200s (and those after `mark`) and keeping every other outcome.
struct Load {
    stop: Arc<AtomicBool>,
    marked: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    ok_after_mark: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: String, path: &'static str, token: &str) -> Load {
        let header = Arc::new(format!("Bearer {token}"));
        let load = Load {
            stop: Arc::default(),
            marked: Arc::default(),
            ok: Arc::default(),
            ok_after_mark: Arc::default(),
            failures: Arc::default(),
            clients: Vec::new(),
        };
        let clients = (0..4)
            .map(|_| {
                let (stop, marked, ok, ok_after_mark, failures, header, addr) = (
                    load.stop.clone(),
                    load.marked.clone(),
                    load.ok.clone(),
                    load.ok_after_mark.clone(),
                    load.failures.clone(),
                    header.clone(),
                    addr.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let after_mark = marked.load(Ordering::Acquire);
                        match try_http_request(
                            "GET",
                            &addr,
                            path,
                            &[("Authorization", &header)],
                            b"",
                            Duration::from_secs(10),
                        ) {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if after_mark {
                                    ok_after_mark.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(r) => failures
                                .lock()
                                .unwrap()
                                .push(format!("status {}", r.status)),
                            Err(e) => failures.lock().unwrap().push(format!("error {e}")),
                        }
                    }
                })
            })
            .collect();
        Load { clients, ..load }
    }

    /// From now on, 200s also count as "after the mark" (after SIGTERM).
    fn mark(&self) {
        self.marked.store(true, Ordering::Release);
    }

    /// Stops the clients: (200s, 200s after the mark, everything else).
    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        for c in self.clients {
            c.join().unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (
            self.ok.load(Ordering::Relaxed),
            self.ok_after_mark.load(Ordering::Relaxed),
            failures,
        )
    }
}

fn session(data_dir: &str) -> String {
    cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--data-dir",
        data_dir,
        "--sub",
        "load",
    ]))
}

#[test]
fn sigterm_under_load_fails_no_request() {
    let data = TempDir::new("data");
    let d = data.path().to_str().unwrap().to_string();
    let mut gh = Gatehouse::spawn(&args(&["--data-dir", &d, "--shutdown-delay", "1s"]));
    let load = Load::start(gh.addr().to_string(), "/auth", &session(&d));

    std::thread::sleep(Duration::from_millis(300));
    gh.sigterm();
    load.mark();
    // The load balancer's view: stop sending once readiness says so.
    let admin = gh.admin_addr().to_string();
    loop {
        match try_http_request("GET", &admin, "/readyz", &[], b"", Duration::from_secs(5)) {
            Ok(r) if r.status == 503 => break,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("admin listener gone before readiness turned 503: {e}"),
        }
    }
    // Keep the load on for part of the delay: the server must still answer.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, ok_after_term, failures) = load.finish();
    assert_eq!(
        gh.wait_exit(Duration::from_secs(15)),
        Some(0),
        "clean exit:\n{}",
        gh.logs()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 0);
    assert!(
        ok_after_term > 0,
        "requests were served after SIGTERM, during the delay"
    );
    println!("{ok} requests, {ok_after_term} after SIGTERM, 0 failed");
}

/// gatehouse beside nginx (as a sidecar, or on one host): on SIGTERM the readiness turns 503,
/// but nginx may go on sending auth subrequests for a while, through the moment where
/// `--shutdown-delay` has passed. While it does, gatehouse keeps its listener, so nginx sees
/// no 5xx; once the traffic has stopped, gatehouse closes and exits 0.
#[test]
fn sigterm_beside_nginx_fails_no_request_while_nginx_still_sends() {
    let data = TempDir::new("data");
    let d = data.path().to_str().unwrap().to_string();
    let mut gh = Gatehouse::spawn(&args(&["--data-dir", &d, "--shutdown-delay", "300ms"]));
    let app = EchoServer::start();
    let nginx = protected_site(gh.addr().port(), app.port());
    let load = Load::start(nginx.addr().to_string(), "/app/x", &session(&d));
    std::thread::sleep(Duration::from_millis(300));
    gh.sigterm();
    load.mark();
    // nginx keeps sending well past --shutdown-delay (300 ms).
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, ok_after_term, failures) = load.finish();
    assert_eq!(
        gh.wait_exit(Duration::from_secs(15)),
        Some(0),
        "clean exit once nginx stopped sending:\n{}",
        gh.logs()
    );
    assert!(
        failures.is_empty(),
        "{} requests failed through nginx during the shutdown: {:?}\n{}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        gh.logs(),
        nginx.error_log()
    );
    assert!(ok_after_term > 0);
    println!("beside nginx: {ok} requests, {ok_after_term} after SIGTERM, 0 failed");
}
