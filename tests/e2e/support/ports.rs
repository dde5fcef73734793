//! Ephemeral loopback ports (below 55535: a Redis Cluster node also listens on port + 10000).

use super::*;

// Ports

/// Highest port (exclusive) the harness hands out: a cluster node at P also binds P + 10000.
pub const MAX_PORT: u16 = 55535;

/// Ports already handed out by this process. Binding `:0` and closing the socket does not
/// reserve the port, and the kernel may hand the same one to the next caller, so two tests in
/// parallel threads could otherwise be given the same "free" port.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A loopback TCP port that is free right now and that this process has not handed out before.
pub fn free_port() -> u16 {
    pick_port(|_| true)
}

/// A free port P whose cluster-bus port P + 10000 is free too.
pub(crate) fn free_cluster_port() -> u16 {
    let port = pick_port(|p| port_is_free(p + 10_000));
    HANDED_OUT.lock().unwrap().push(port + 10_000);
    port
}

pub(crate) fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Asks the kernel for an ephemeral port (`127.0.0.1:0`) until one lands below `MAX_PORT`.
/// If the ephemeral range lies entirely above it (it is 32768–60999 on stock Linux), falls
/// back to probing ports in 20000..MAX_PORT from a per-process starting point.
pub(crate) fn pick_port(accept: impl Fn(u16) -> bool) -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap();
    let ok = |port: u16, handed: &Vec<u16>| {
        port != 0 && port < MAX_PORT && !handed.contains(&port) && accept(port)
    };
    for _ in 0..200 {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        if ok(port, &handed) {
            handed.push(port);
            return port;
        }
    }
    let span = u64::from(MAX_PORT - 20_000);
    let seed = u64::from(std::process::id()) * 7919 + unique_suffix();
    for i in 0..span {
        let port = 20_000 + ((seed + i) % span) as u16;
        if ok(port, &handed) && port_is_free(port) {
            handed.push(port);
            return port;
        }
    }
    panic!("no free loopback port below {MAX_PORT}");
}

/// True once something accepts TCP connections on 127.0.0.1:`port`, false after `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
