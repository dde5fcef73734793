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
