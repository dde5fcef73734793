//! A receiver of POSTed forms: what a client's back-channel logout endpoint is.

use super::*;

/// Answers every request with 200 and keeps each request's body (a form). It can be
/// stopped and started again on the same port, to play a receiver that was down.
pub struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    /// When each body arrived (Unix ms), in the same order (the outbox bench's lag).
    arrivals: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        loop {
            if let Some(r) = Receiver::start_on(free_port()) {
                return r;
            }
        }
    }

    /// A receiver on `port`; None when the port is taken.
    pub fn start_on(port: u16) -> Option<Receiver> {
        let listener = TcpListener::bind(("127.0.0.1", port)).ok()?;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, when, stopping) = (bodies.clone(), arrivals.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                receive_one(stream, &seen, &when);
            }
        });
        Some(Receiver {
            port,
            bodies,
            arrivals,
            stop,
            thread: Some(thread),
        })
    }

    /// When each body arrived, Unix milliseconds, in the order of [`Receiver::wait_bodies`]
    /// (the outbox bench's lag; no test reads it).
    #[allow(dead_code)]
    pub fn arrivals_ms(&self) -> Vec<u64> {
        self.arrivals.lock().unwrap().clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until at least `n` bodies have arrived (at most `timeout`); those that did.
    pub fn wait_bodies(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.bodies.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the blocking accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn receive_one(mut stream: TcpStream, seen: &Mutex<Vec<String>>, when: &Mutex<Vec<u64>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let want = parse_head_headers(&head)
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < want {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let mut seen = seen.lock().unwrap();
    seen.push(String::from_utf8_lossy(&body).into_owned());
    when.lock().unwrap().push(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    );
    drop(seen);
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.shutdown(Shutdown::Write);
}
