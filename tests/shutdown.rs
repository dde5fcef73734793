//! SIGTERM under load: readiness turns 503 first, requests keep being served during
//! --shutdown-delay, in-flight requests finish, the process exits 0, and no request fails.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

#[test]
fn sigterm_under_load_fails_no_request() {
    let data = TempDir::new("data");
    let d = data.path().to_str().unwrap().to_string();
    let mut gh = Gatehouse::spawn(&args(&["--data-dir", &d, "--shutdown-delay", "1s"]));
    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--data-dir",
        &d,
        "--sub",
        "load",
    ]));
    let header = Arc::new(format!("Bearer {token}"));
    let addr = gh.addr().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let termed = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let ok_after_term = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, termed, ok, ok_after_term, failures, header, addr) = (
                stop.clone(),
                termed.clone(),
                ok.clone(),
                ok_after_term.clone(),
                failures.clone(),
                header.clone(),
                addr.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let after_term = termed.load(Ordering::Acquire);
                    match try_http_request(
                        "GET",
                        &addr,
                        "/auth",
                        &[("Authorization", &header)],
                        b"",
                        Duration::from_secs(10),
                    ) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if after_term {
                                ok_after_term.fetch_add(1, Ordering::Relaxed);
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

    std::thread::sleep(Duration::from_millis(300));
    gh.sigterm();
    termed.store(true, Ordering::Release);
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
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        gh.wait_exit(Duration::from_secs(15)),
        Some(0),
        "clean exit:\n{}",
        gh.logs()
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert!(
        ok_after_term.load(Ordering::Relaxed) > 0,
        "requests were served after SIGTERM, during the delay"
    );
    println!(
        "{} requests, {} after SIGTERM, 0 failed",
        ok.load(Ordering::Relaxed),
        ok_after_term.load(Ordering::Relaxed)
    );
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
    let token = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--data-dir",
        &d,
        "--sub",
        "load",
    ]));
    let header = Arc::new(format!("Bearer {token}"));
    let addr = nginx.addr().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures, header, addr) = (
                stop.clone(),
                ok.clone(),
                failures.clone(),
                header.clone(),
                addr.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match try_http_request(
                        "GET",
                        &addr,
                        "/app/x",
                        &[("Authorization", &header)],
                        b"",
                        Duration::from_secs(10),
                    ) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
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
    std::thread::sleep(Duration::from_millis(300));
    gh.sigterm();
    // nginx keeps sending well past --shutdown-delay (300 ms).
    std::thread::sleep(Duration::from_millis(1500));
    let served_during_shutdown = ok.load(Ordering::Relaxed);
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        gh.wait_exit(Duration::from_secs(15)),
        Some(0),
        "clean exit once nginx stopped sending:\n{}",
        gh.logs()
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} requests failed through nginx during the shutdown: {:?}\n{}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        gh.logs(),
        nginx.error_log()
    );
    assert!(served_during_shutdown > 0);
    println!(
        "beside nginx: {} requests, 0 failed, through a shutdown with --shutdown-delay 300ms",
        ok.load(Ordering::Relaxed)
    );
}
