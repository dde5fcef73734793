//! End-to-end test harness: real `redis-server`, Redis Cluster, `nginx` and `gatehouse`
//! processes on 127.0.0.1 with ephemeral ports, plus tiny std-only RESP and HTTP/1.1 clients.
//!
//! Why std-only and synchronous: the harness must be obviously correct and must not share a
//! runtime (or a bug) with the code under test. Every process a helper starts is killed and
//! reaped when the helper is dropped — also while a failing test unwinds — and every
//! temporary directory is removed, so a test run leaves no stray servers, zombies or files.
//! (A test binary killed with SIGKILL cannot clean up; nothing can.)
//!
//! Ports stay below 55535 because a Redis Cluster node also listens on port + 10000.
//! Helpers never touch the process environment: tests run in parallel threads.
#![allow(dead_code)]
pub mod proxy;

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
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
fn free_cluster_port() -> u16 {
    let port = pick_port(|p| port_is_free(p + 10_000));
    HANDED_OUT.lock().unwrap().push(port + 10_000);
    port
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Asks the kernel for an ephemeral port (`127.0.0.1:0`) until one lands below `MAX_PORT`.
/// If the ephemeral range lies entirely above it (it is 32768–60999 on stock Linux), falls
/// back to probing ports in 20000..MAX_PORT from a per-process starting point.
fn pick_port(accept: impl Fn(u16) -> bool) -> u16 {
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

/// True if nothing accepts connections on 127.0.0.1:`port` right now.
pub fn port_closed(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
}

// ---------------------------------------------------------------------------------------------
// Temporary directories and processes

fn unique_suffix() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (COUNTER.fetch_add(1, Ordering::Relaxed) << 32) | u64::from(nanos)
}

/// A directory under `std::env::temp_dir()` with a unique name, removed (recursively) on drop.
/// (Deliberately not the `tempfile` crate: the harness depends on nothing but std and libc.)
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let name = format!(
            "gatehouse-test-{label}-{}-{:x}",
            std::process::id(),
            unique_suffix()
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`, as a String (handy for config files and flags).
    pub fn join(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Sends `sig` to `pid`. The only `unsafe` in the harness: kill(2) takes two integers and
/// touches none of our memory. Callers only signal children they have not yet reaped, so the
/// pid cannot have been recycled for another process.
pub fn send_signal(pid: u32, sig: i32) -> bool {
    // SAFETY: plain syscall on integers; no pointers are involved.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Signals `child` only if it has not exited and been reaped (see `send_signal`).
fn signal_child(child: &mut Child, sig: i32) -> bool {
    matches!(child.try_wait(), Ok(None)) && send_signal(child.id(), sig)
}

/// SIGKILL and reap, so no zombie stays behind. Harmless if the child already exited.
fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Exit code of `status`, or 128 + signal number when a signal ended it (as shells report).
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Waits up to `timeout` for `child` to exit; returns its exit code (128 + signal if killed).
fn wait_child(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(exit_code(status));
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion with stdout/stderr captured through files in `dir` (no pipes, so
/// no reader threads and no pipe-buffer deadlock); kills it and panics after `timeout`.
fn run_with_timeout(cmd: Command, dir: &Path, timeout: Duration) -> Output {
    run_with_input(cmd, dir, timeout, None)
}

/// Runs `cmd` with `input` (if any) as its stdin.
fn run_with_input(mut cmd: Command, dir: &Path, timeout: Duration, input: Option<&str>) -> Output {
    let out_path = dir.join(format!("run-{:x}.stdout", unique_suffix()));
    let err_path = dir.join(format!("run-{:x}.stderr", unique_suffix()));
    let stdin = match input {
        None => Stdio::null(),
        Some(text) => {
            let path = dir.join(format!("run-{:x}.stdin", unique_suffix()));
            std::fs::write(&path, text).unwrap();
            Stdio::from(File::open(&path).unwrap())
        }
    };
    cmd.stdin(stdin)
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    let program = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let Some(_) = wait_child(&mut child, timeout) else {
        kill_and_reap(&mut child);
        panic!("{program} did not finish within {timeout:?}");
    };
    let status = child.wait().unwrap();
    let output = Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    };
    let _ = fs::remove_file(out_path);
    let _ = fs::remove_file(err_path);
    output
}

/// Finds an executable: on PATH first, then in the sbin directories that a non-root PATH
/// usually lacks (Debian installs nginx as /usr/sbin/nginx).
pub fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/sbin",
        "/usr/local/sbin",
        "/sbin",
        "/usr/local/nginx/sbin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH or in /usr/sbin (apt-get install it)"))
}

/// The last `max` bytes of a file, lossily decoded; empty if it does not exist.
fn read_tail(path: &Path, max: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// RESP client

/// A Redis reply. RESP2 is what a connection speaks unless it sends HELLO 3; the few RESP3
/// types are mapped onto these in case a test switches protocols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    /// Flattens to text: status/bulk text, the error message (e.g. `ERR unknown command`),
    /// the integer in decimal, `""` for nil, and array items (recursively) joined by `\n`.
    pub fn to_text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) | Reply::Bulk(s) => s.clone(),
            Reply::Int(n) => n.to_string(),
            Reply::Nil => String::new(),
            Reply::Array(items) => items
                .iter()
                .map(Reply::to_text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// Sends one command to the Redis at `addr` over a fresh connection and reads one reply.
/// Times out (an `Err`) after 5 s, e.g. when the server is SIGSTOPped.
pub fn resp(addr: SocketAddr, args: &[&str]) -> io::Result<Reply> {
    resp_timeout(addr, args, Duration::from_secs(5))
}

/// `resp` with a custom timeout for connecting and for each read and write.
pub fn resp_timeout(addr: SocketAddr, args: &[&str], timeout: Duration) -> io::Result<Reply> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&request)?;
    read_reply(&mut BufReader::new(&stream))
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "truncated RESP reply",
        ));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let number = || {
        text.parse::<i64>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad RESP length {text:?}"),
            )
        })
    };
    let read_items = |r: &mut _, n: i64| {
        (0..n)
            .map(|_| read_reply(r))
            .collect::<io::Result<Vec<_>>>()
    };
    Ok(match line[0] {
        b'+' | b',' | b'(' => Reply::Status(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Int(number()?),
        b'#' => Reply::Int((text == "t") as i64),
        b'_' => Reply::Nil,
        b'$' | b'=' | b'!' => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            // A RESP3 verbatim string starts with a 4-byte "txt:" format tag.
            let body = if line[0] == b'=' && buf.len() >= 4 {
                &buf[4..]
            } else {
                &buf[..]
            };
            let s = String::from_utf8_lossy(body).into_owned();
            if line[0] == b'!' {
                Reply::Error(s)
            } else {
                Reply::Bulk(s)
            }
        }
        b'*' | b'~' | b'>' => match number()? {
            n if n < 0 => Reply::Nil,
            n => Reply::Array(read_items(r, n)?),
        },
        b'%' => Reply::Array(read_items(r, 2 * number()?)?),
        b'|' => {
            read_items(r, 2 * number()?)?; // attributes precede the real reply
            read_reply(r)?
        }
        other => {
            let msg = format!("unknown RESP type byte {:?}", other as char);
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
    })
}

/// `INFO commandstats` → command name (lowercase, subcommands as `config|resetstat`) → calls.
fn parse_commandstats(info: &str) -> HashMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_ascii_lowercase(), calls.trim().parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Redis

/// Anything gatehouse can use as its Redis store, so one test body runs against standalone
/// Redis and Redis Cluster alike: `fn check(store: &dyn Store)`.
pub trait Store {
    /// The `--redis-url` to give gatehouse.
    fn url(&self) -> String;
    /// Calls per command since the last reset, summed over all nodes.
    fn commandstats(&self) -> HashMap<String, u64>;
    /// `CONFIG RESETSTAT` everywhere. That command is itself counted afterwards, as
    /// `config|resetstat`; compare the commands you care about, not whole maps.
    fn config_resetstat(&self);
    /// "standalone" or "cluster", for assertion messages.
    fn kind(&self) -> &'static str;
    /// One command on whichever node holds its key; the reply as text.
    fn command(&self, args: &[&str]) -> String;
}

/// One `redis-server` process (no persistence, loopback only) in its own temp dir.
pub struct RedisServer {
    port: u16,
    extra_args: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server on a fresh port.
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// A standalone server with extra `redis-server` arguments, e.g. `["--requirepass", "x"]`.
    pub fn start_with_args(extra_args: &[&str]) -> RedisServer {
        Self::start_retrying(free_port, extra_args)
    }

    /// A standalone server on `port`, chosen earlier (e.g. a Redis that starts after
    /// gatehouse was pointed at it).
    pub fn start_on(port: u16, extra_args: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir: TempDir::new("redis"),
            child: None,
        };
        if let Err(why) = server.spawn_and_wait() {
            panic!("redis-server on {port} failed: {why}\n{}", server.logs());
        }
        server
    }

    /// Picks a port and starts; if another process grabbed the port in between (the only
    /// likely start failure), tries again on a new one.
    fn start_retrying(pick: fn() -> u16, extra_args: &[&str]) -> RedisServer {
        for attempt in 1..=3 {
            let mut server = RedisServer {
                port: pick(),
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                dir: TempDir::new("redis"),
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(why) if attempt < 3 && server.logs().contains("Address already in use") => {
                    eprintln!("redis-server on {} failed ({why}); retrying", server.port);
                }
                Err(why) => panic!(
                    "redis-server on {} failed: {why}\n{}",
                    server.port,
                    server.logs()
                ),
            }
        }
        unreachable!()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(find_program("redis-server"));
        cmd.args(["--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "no",
            ])
            .args([
                "--dir",
                &self.dir.path().display().to_string(),
                "--logfile",
                "",
            ])
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .map_err(|e| format!("spawn redis-server: {e}"))?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Reply::Status(pong)) = resp(self.addr(), &["PING"]) {
                if pong == "PONG" {
                    return Ok(());
                }
            }
            if let Some(code) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("exited with {}", exit_code(code)));
            }
            if Instant::now() >= deadline {
                return Err("no PONG within 10 s".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:P`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's own log (stdout/stderr), for failure messages.
    pub fn logs(&self) -> String {
        read_tail(&self.log_path(), 64 * 1024)
    }

    /// SIGKILL and reap: afterwards the port refuses connections. Data is gone (no persistence).
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
    }

    /// Kills the server if it runs, then starts it again on the same port with the same args
    /// (empty: nothing is persisted). A cluster node keeps its nodes.conf and so rejoins.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn_and_wait() {
            panic!(
                "redis-server restart on {} failed: {why}\n{}",
                self.port,
                self.logs()
            );
        }
    }

    /// SIGSTOP: the port still accepts connections (the kernel does that) but nothing is
    /// answered — the "hung server" case, unlike `kill` which refuses connections.
    pub fn stop_process(&mut self) {
        let child = self.child.as_mut().expect("redis-server not started");
        assert!(
            signal_child(child, libc::SIGSTOP),
            "SIGSTOP redis-server failed"
        );
    }

    /// SIGCONT after `stop_process`.
    pub fn cont_process(&mut self) {
        let child = self.child.as_mut().expect("redis-server not started");
        assert!(
            signal_child(child, libc::SIGCONT),
            "SIGCONT redis-server failed"
        );
    }

    /// Whether the process is alive (stopped counts as alive).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// One command, reply flattened to text (see `Reply::to_text`); panics on I/O errors.
    /// Error replies come back as their message, e.g. `"ERR unknown command ..."`.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.query(args).to_text()
    }

    /// One command, structured reply; panics on I/O errors (use `try_query` to expect them).
    pub fn query(&self, args: &[&str]) -> Reply {
        self.try_query(args)
            .unwrap_or_else(|e| panic!("redis {} {args:?}: {e}", self.port))
    }

    /// One command; I/O errors (refused, or no answer within 5 s) come back as `Err`.
    pub fn try_query(&self, args: &[&str]) -> io::Result<Reply> {
        resp(self.addr(), args)
    }

    /// `try_query` with a custom timeout, e.g. a short one to show a stopped server is mute.
    pub fn try_query_timeout(&self, args: &[&str], timeout: Duration) -> io::Result<Reply> {
        resp_timeout(self.addr(), args, timeout)
    }

    pub fn commandstats(&self) -> HashMap<String, u64> {
        parse_commandstats(&self.cmd(&["INFO", "commandstats"]))
    }

    pub fn config_resetstat(&self) {
        assert_eq!(self.cmd(&["CONFIG", "RESETSTAT"]), "OK");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Store for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn commandstats(&self) -> HashMap<String, u64> {
        RedisServer::commandstats(self)
    }
    fn config_resetstat(&self) {
        RedisServer::config_resetstat(self)
    }
    fn kind(&self) -> &'static str {
        "standalone"
    }
    fn command(&self, args: &[&str]) -> String {
        self.cmd(args)
    }
}

/// A 3-master Redis Cluster (no replicas), created with `redis-cli --cluster create` and
/// ready (`cluster_state:ok` with all slots and nodes known on every node) when returned.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_with_args(&[])
    }

    /// Extra `redis-server` arguments for every node, e.g. `["--cluster-node-timeout", "1000"]`.
    pub fn start_with_args(extra_args: &[&str]) -> RedisCluster {
        let nodes = (0..3)
            .map(|_| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ];
                args.extend_from_slice(extra_args);
                RedisServer::start_retrying(free_cluster_port, &args)
            })
            .collect::<Vec<_>>();
        let cluster = RedisCluster { nodes };
        let mut cmd = Command::new(find_program("redis-cli"));
        cmd.arg("--cluster").arg("create");
        cmd.args(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = run_with_timeout(cmd, cluster.nodes[0].dir(), Duration::from_secs(60));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every node reports the whole cluster healthy. `cluster_state:ok` on one
    /// node alone is not enough: a client may ask any node for the slot map.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let healthy = |info: &str| {
            [
                "cluster_state:ok",
                "cluster_slots_ok:16384",
                "cluster_known_nodes:3",
            ]
            .iter()
            .all(|want| info.lines().any(|l| l.trim() == *want))
        };
        loop {
            let infos: Vec<String> = self
                .nodes
                .iter()
                .map(|n| {
                    n.try_query(&["CLUSTER", "INFO"])
                        .map(|r| r.to_text())
                        .unwrap_or_default()
                })
                .collect();
            if infos.iter().all(|i| healthy(i)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "cluster not ok after {timeout:?}:\n{}",
                    infos.join("\n---\n")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The three master nodes, e.g. to `kill()` one or to send a command to a given node.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3` (gatehouse's own scheme).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Runs `redis-cli -c -p <first node> <args>` (`-c` follows MOVED redirections), so a
    /// test can read or write any key without knowing its slot. Returns trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(find_program("redis-cli"));
        cmd.args([
            "-c",
            "-h",
            "127.0.0.1",
            "-p",
            &self.nodes[0].port().to_string(),
        ])
        .args(args);
        let out = run_with_timeout(cmd, self.nodes[0].dir(), Duration::from_secs(10));
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn commandstats(&self) -> HashMap<String, u64> {
        let mut total = HashMap::new();
        for node in &self.nodes {
            for (name, calls) in node.commandstats() {
                *total.entry(name).or_insert(0) += calls;
            }
        }
        total
    }

    pub fn config_resetstat(&self) {
        self.nodes.iter().for_each(RedisServer::config_resetstat);
    }
}

impl Store for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
    fn commandstats(&self) -> HashMap<String, u64> {
        RedisCluster::commandstats(self)
    }
    fn config_resetstat(&self) {
        RedisCluster::config_resetstat(self)
    }
    fn kind(&self) -> &'static str {
        "cluster"
    }
    fn command(&self, args: &[&str]) -> String {
        self.cli(args)
    }
}

// ---------------------------------------------------------------------------------------------
// nginx

/// Replaces every `{{NAME}}` in `template` with its value; panics if a `{{…}}` placeholder
/// is left over (a typo would otherwise reach nginx as a confusing syntax error).
/// `{{DIR}}` is left alone: `Nginx::start` fills it with its own temp dir.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    let leftover = out.replace("{{DIR}}", "");
    if let Some(start) = leftover.find("{{") {
        let end = leftover[start..]
            .find("}}")
            .map_or(leftover.len(), |e| start + e + 2);
        panic!("unfilled placeholder {} in template", &leftover[start..end]);
    }
    out
}

/// The site every end-to-end test puts in front of an upstream: the shipped `nginx/`
/// snippets, unmodified, with gatehouse over a keepalive pool.
const PROTECTED_SITE: &str = r#"
upstream gatehouse {
    server 127.0.0.1:{{GATEHOUSE}};
    keepalive 8;
    keepalive_timeout 5s;
}
upstream app {
    server 127.0.0.1:{{APP}};
}
server {
    listen 127.0.0.1:{{PORT}};
    set $gatehouse_login_url https://login.example.test/login;
    include {{NGINX}}/gatehouse-auth.conf;
    location / {
        include {{NGINX}}/gatehouse-protect.conf;
        proxy_pass http://app;
    }
}
"#;

/// Real nginx serving `PROTECTED_SITE`: gatehouse on `gatehouse_port`, the application on
/// `app_port`, nginx itself on a free port.
pub fn protected_site(gatehouse_port: u16, app_port: u16) -> Nginx {
    Nginx::start(&render(
        PROTECTED_SITE,
        &[
            ("GATEHOUSE", gatehouse_port.to_string()),
            ("APP", app_port.to_string()),
            ("PORT", free_port().to_string()),
            ("NGINX", format!("{}/nginx", env!("CARGO_MANIFEST_DIR"))),
        ],
    ))
}

/// An `nginx` master + one worker, running from its own temp dir so it needs neither root
/// nor anything in /etc or /var.
pub struct Nginx {
    dir: TempDir,
    ports: Vec<u16>,
    child: Option<Child>,
}

impl Nginx {
    /// Starts nginx with `http_body` as the contents of its `http { }` block (servers,
    /// upstreams, maps…) and waits until every port named by a `listen` directive accepts.
    /// `{{DIR}}` in the body becomes the temp dir (for log files a test wants to read).
    /// The harness itself sets, so the body must not repeat them: `access_log` to
    /// `{{DIR}}/access.log` (more `access_log` lines are fine) and the five `*_temp_path`s.
    pub fn start(http_body: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let body = http_body.replace("{{DIR}}", &dir.path().display().to_string());
        fs::write(
            dir.path().join("nginx.conf"),
            full_nginx_conf(dir.path(), &body),
        )
        .unwrap();
        let mut nginx = Nginx {
            ports: listen_ports(&body),
            dir,
            child: None,
        };
        let log = File::create(nginx.dir.path().join("stderr.log")).unwrap();
        let conf = nginx.conf_path();
        let child = Command::new(find_program("nginx"))
            .arg("-p")
            .arg(nginx.dir.path())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nginx: {e}"));
        nginx.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in &nginx.ports.clone() {
            while !wait_for_port(port, Duration::from_millis(100)) {
                if let Some(status) = nginx.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("nginx exited with {status}:\n{}", nginx.logs());
                }
                if Instant::now() >= deadline {
                    panic!(
                        "nginx did not listen on {port} within 10 s:\n{}",
                        nginx.logs()
                    );
                }
            }
        }
        nginx
    }

    /// `nginx -t` on the config `start` would write; Ok or Err(nginx's complaint).
    pub fn check_config(http_body: &str) -> Result<(), String> {
        let dir = TempDir::new("nginx-t");
        let body = http_body.replace("{{DIR}}", &dir.path().display().to_string());
        let conf = dir.path().join("nginx.conf");
        fs::write(&conf, full_nginx_conf(dir.path(), &body)).unwrap();
        let mut cmd = Command::new(find_program("nginx"));
        cmd.arg("-t").arg("-p").arg(dir.path()).arg("-c").arg(&conf);
        let out = run_with_timeout(cmd, dir.path(), Duration::from_secs(20));
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &read_tail(&dir.path().join("error.log"), 16 * 1024);
        if out.status.success() {
            Ok(())
        } else {
            Err(text)
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// Ports found in `listen` directives, in order of appearance.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// 127.0.0.1 and the first `listen` port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[0]))
    }

    /// The master's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pids of the worker processes (children of the master), from /proc.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pid().map(children_of).unwrap_or_default()
    }

    /// nginx's error.log (level info) — e.g. "client sent invalid header line".
    pub fn error_log(&self) -> String {
        read_tail(&self.dir.path().join("error.log"), 256 * 1024)
    }

    pub fn access_log(&self) -> String {
        read_tail(&self.dir.path().join("access.log"), 256 * 1024)
    }

    /// Any file in the temp dir, e.g. a log written to `{{DIR}}/auth.log`.
    pub fn read_file(&self, name: &str) -> String {
        read_tail(&self.dir.path().join(name), usize::MAX)
    }

    /// stderr plus error.log, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- nginx stderr ---\n{}\n--- nginx error.log ---\n{}",
            read_tail(&self.dir.path().join("stderr.log"), 16 * 1024),
            read_tail(&self.dir.path().join("error.log"), 64 * 1024)
        )
    }

    /// Stops nginx and its worker. SIGTERM first (fast shutdown: the master stops its worker
    /// and exits). If that takes too long: SIGSTOP the master so it can neither respawn nor
    /// reap its workers (their pids therefore cannot be recycled), SIGKILL the workers, then
    /// the master, and reap it. (The killed workers are then reaped by init, not by us.)
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if signal_child(child, libc::SIGTERM) && wait_child(child, Duration::from_secs(5)).is_some()
        {
            return;
        }
        if signal_child(child, libc::SIGSTOP) {
            for worker in children_of(child.id()) {
                send_signal(worker, libc::SIGKILL);
            }
        }
        kill_and_reap(child);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.stop();
    }
}

/// Pids whose parent is `pid`, from /proc (field 4 of /proc/<pid>/stat, read after the
/// parenthesised command name, which may itself contain spaces or parentheses).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            let stat = fs::read_to_string(format!("/proc/{candidate}/stat")).unwrap_or_default();
            let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_comm.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
}

/// The whole nginx.conf around a test's `http { }` body. Everything nginx writes (pid, logs,
/// temp files) goes into `dir`, so no path outside it is touched.
fn full_nginx_conf(dir: &Path, http_body: &str) -> String {
    let d = dir.display();
    // As root, workers would drop to `nobody`, which may not be able to use files in a
    // root-owned temp dir; as non-root the `user` directive is meaningless. Who owns the dir
    // we just created is our effective uid — no libc call needed to find out.
    let is_root = fs::metadata(dir).map(|m| m.uid() == 0).unwrap_or(false);
    let user = if is_root { "user root;\n" } else { "" };
    format!(
        "# Written by tests/support for one test run.\n\
         {user}daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         lock_file {d}/nginx.lock;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         access_log {d}/access.log;\n\
         client_body_temp_path {d}/client_body_temp;\n\
         proxy_temp_path {d}/proxy_temp;\n\
         fastcgi_temp_path {d}/fastcgi_temp;\n\
         uwsgi_temp_path {d}/uwsgi_temp;\n\
         scgi_temp_path {d}/scgi_temp;\n\
         {http_body}\n\
         }}\n"
    )
}

/// Ports of `listen` directives: `listen 8080;`, `listen 127.0.0.1:8080 …;`, `listen [::1]:80;`.
fn listen_ports(conf: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or("");
        for statement in line.split(';') {
            let mut words = statement.split_whitespace();
            if words.next() != Some("listen") {
                continue;
            }
            let Some(target) = words.next() else { continue };
            if target.starts_with("unix:") {
                continue;
            }
            let port = target.rsplit(':').next().unwrap_or(target);
            if let Ok(port) = port.parse::<u16>() {
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
    }
    ports
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 client

/// A whole HTTP response (the client always sends `Connection: close` and reads to EOF).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// In received order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded from chunked if needed; lossy UTF-8.
    pub body: String,
}

impl Response {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// Every value of a repeated header (e.g. `Set-Cookie`), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
}

/// First value of `name` in `headers`, case-insensitively.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// All values of `name` in `headers`, case-insensitively, in order.
pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `GET path` at `addr` (anything that prints as `host:port`, e.g. a `SocketAddr`).
/// `headers` are sent verbatim (so tests can send odd spellings such as
/// `X_Auth_Request_User`); a `Host` among them replaces the default `Host: addr`.
/// Panics on connection or protocol errors.
pub fn http_get(addr: impl Display, path: &str, headers: &[(&str, &str)]) -> Response {
    http_request("GET", addr, path, headers, b"")
}

/// Any method, with an optional body (sent with `Content-Length`).
pub fn http_request(
    method: &str,
    addr: impl Display,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let addr = addr.to_string();
    try_http_request(method, &addr, path, headers, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// `http_request` that returns I/O and parse errors instead of panicking, with a timeout
/// for connecting and for each read.
pub fn try_http_request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let socket = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head += &format!("Host: {addr}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "Connection: close\r\n\r\n";
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// Sets the flag when dropped, also when a test panics: a load thread that loops until the
/// flag is set then ends, instead of keeping a panicking `thread::scope` open forever.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One keep-alive connection that pipelines requests: a batch is written at once and its
/// responses are read back in order. For driving many requests through a debug build
/// without paying a connection per request. Only for servers that answer with
/// `Content-Length` (gatehouse does).
pub struct KeepAlive {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> io::Result<KeepAlive> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// `GET path` once per entry of `headers` (each a list of header lines), pipelined;
    /// returns the statuses in request order.
    pub fn get_all(&mut self, path: &str, headers: &[Vec<(&str, &str)>]) -> io::Result<Vec<u16>> {
        let mut out = String::with_capacity(headers.len() * 160);
        for set in headers {
            out += &format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
            for (name, value) in set {
                out += &format!("{name}: {value}\r\n");
            }
            out += "\r\n";
        }
        self.stream.write_all(out.as_bytes())?;
        (0..headers.len()).map(|_| self.read_one()).collect()
    }

    fn read_one(&mut self) -> io::Result<u16> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| invalid(format!("bad status line in {head:?}")))?;
                let body: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .ok_or_else(|| invalid(format!("no content-length in {head:?}")))?;
                if self.buf.len() >= end + 4 + body {
                    self.buf.drain(..end + 4 + body);
                    return Ok(status);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-pipeline",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn parse_response(mut raw: &[u8], head_only: bool) -> io::Result<Response> {
    loop {
        let end = find(raw, b"\r\n\r\n").ok_or_else(|| {
            invalid(format!(
                "no header end in {:?}",
                String::from_utf8_lossy(raw)
            ))
        })?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let rest = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        if (100..200).contains(&status) {
            raw = rest; // an interim response (100 Continue); the real one follows
            continue;
        }
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if header_value(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            decode_chunked(rest)?
        } else if let Some(len) = header_value(&headers, "content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
            rest.get(..len)
                .ok_or_else(|| invalid("body shorter than content-length"))?
                .to_vec()
        } else {
            rest.to_vec()
        };
        return Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or_else(|| invalid("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_hex:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body); // trailers, if any, are ignored
        }
        body.extend_from_slice(data.get(..size).ok_or_else(|| invalid("truncated chunk"))?);
        data = data
            .get(size + 2..)
            .ok_or_else(|| invalid("truncated chunk"))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Echo upstream

/// A tiny upstream that answers every request with 200 and, as body, the exact request head
/// it received (request line and header lines, as sent). Tests put it behind nginx to see
/// precisely which headers reach an application — including odd spellings that an nginx
/// `$http_*` variable would fold together. One request per connection (`Connection: close`).
pub struct EchoServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let listener = loop {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", free_port())) {
                break l;
            }
        };
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (requests.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let seen = seen.clone();
                thread::spawn(move || echo_one(stream, &seen));
            }
        });
        EchoServer {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Request heads received so far, oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr()); // wakes the blocking accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn echo_one(mut stream: TcpStream, seen: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    // Drain a Content-Length body so the client is not reset before it reads our answer.
    let lines: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let want = header_value(&lines, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut have = raw.len() - head_end - 4;
    while have < want {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    seen.lock().unwrap().push(head.clone());
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        head.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// Header lines of a raw request head (as returned by `EchoServer`), request line skipped.
pub fn parse_head_headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// gatehouse

/// The binary under test, built by cargo for integration tests.
pub fn gatehouse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"))
}

/// A `Command` for the gatehouse binary with every `GATEHOUSE_*` variable of the test
/// runner's environment removed (each flag also reads one; a developer's shell must not
/// change what a test sees), e.g. `GATEHOUSE_LOG_FORMAT`.
fn gatehouse_command(cwd: &Path) -> Command {
    let mut cmd = Command::new(gatehouse_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GATEHOUSE_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

/// Runs `gatehouse <args>` to completion (60 s limit) and returns its output, e.g.
/// `gatehouse_cli(&["session", "create", "--sub", "alice", "--redis-url", &url])`.
/// Runs in a throwaway directory, so a default `./gatehouse-data` never lands in the repo;
/// pass `--data-dir` (or use `Gatehouse::cli`) to share an embedded store with a server.
pub fn gatehouse_cli(args: &[&str]) -> Output {
    let dir = TempDir::new("cli");
    let mut cmd = gatehouse_command(dir.path());
    cmd.args(args);
    run_with_timeout(cmd, dir.path(), Duration::from_secs(60))
}

/// `gatehouse_cli` with `input` on stdin: how secrets reach the CLI, e.g.
/// `gatehouse_cli_stdin(&["session", "revoke", "--redis-url", &url], &token)`.
pub fn gatehouse_cli_stdin(args: &[&str], input: &str) -> Output {
    let dir = TempDir::new("cli");
    let mut cmd = gatehouse_command(dir.path());
    cmd.args(args);
    run_with_input(cmd, dir.path(), Duration::from_secs(60), Some(input))
}

/// stdout of a successful CLI run, trimmed (e.g. the token from `session create`);
/// panics with stderr otherwise.
pub fn cli_stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "gatehouse exited with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Strings from string slices, for `Gatehouse::spawn(&args(&["--redis-url", &url]))`.
pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A `gatehouse serve` process on two fresh loopback ports, run in its own temp dir (which
/// is its working directory, so the default `./gatehouse-data` lives and dies with it).
/// stdout and stderr go to files there; `logs()` returns them and they are printed if the
/// test panics while this is alive.
pub struct Gatehouse {
    listen: SocketAddr,
    admin: SocketAddr,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
}

/// How long `spawn` and `restart` wait for `/readyz` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Gatehouse {
    /// `gatehouse serve --listen 127.0.0.1:P --admin-listen 127.0.0.1:Q <extra_args>`, then
    /// waits until `GET /readyz` on the admin port answers 200; panics with the logs if it
    /// does not within 20 s.
    pub fn spawn(extra_args: &[String]) -> Gatehouse {
        Self::spawn_with_env(extra_args, &[])
    }

    /// `spawn` with extra environment variables for the child (the test's own environment
    /// is never modified).
    pub fn spawn_with_env(extra_args: &[String], env: &[(&str, &str)]) -> Gatehouse {
        for attempt in 1..=3 {
            let mut gh = Self::spawn_no_wait_with_env(extra_args, env);
            if gh.wait_ready(READY_TIMEOUT) {
                return gh;
            }
            // Another process may have taken a port between free_port() and bind().
            let exited = !gh.is_running();
            if attempt < 3 && exited && gh.logs().to_ascii_lowercase().contains("in use") {
                continue;
            }
            let why = if exited {
                "exited"
            } else {
                "not ready after 20 s"
            };
            panic!(
                "gatehouse {why} (exit {:?}):\n{}",
                gh.wait_exit(Duration::ZERO),
                gh.logs()
            );
        }
        unreachable!()
    }

    /// Starts the process without waiting for readiness — for tests that expect it to fail
    /// (e.g. exit 64 on a bad flag) or to stay unready (store down). See `wait_ready`.
    pub fn spawn_no_wait(extra_args: &[String]) -> Gatehouse {
        Self::spawn_no_wait_with_env(extra_args, &[])
    }

    pub fn spawn_no_wait_with_env(extra_args: &[String], env: &[(&str, &str)]) -> Gatehouse {
        let mut gh = Gatehouse {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            extra_args: extra_args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir: TempDir::new("gatehouse"),
            child: None,
            starts: 0,
        };
        gh.start_process();
        gh
    }

    fn start_process(&mut self) {
        self.starts += 1;
        let open = |name: &str| {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .unwrap();
            if self.starts > 1 {
                let _ = writeln!(f, "=== harness: start #{} ===", self.starts);
            }
            f
        };
        let (stdout, stderr) = (open("stdout.log"), open("stderr.log"));
        let mut cmd = gatehouse_command(self.dir.path());
        cmd.arg("serve")
            .args([
                "--listen",
                &self.listen.to_string(),
                "--admin-listen",
                &self.admin.to_string(),
            ])
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(stdout)
            .stderr(stderr);
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", gatehouse_bin().display())),
        );
    }

    /// Polls `GET /readyz` on the admin port until it answers 200 (true), the process exits
    /// or `timeout` passes (false).
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let admin = self.admin.to_string();
        loop {
            if !self.is_running() {
                return false;
            }
            let poll = try_http_request("GET", &admin, "/readyz", &[], b"", Duration::from_secs(2));
            // "ready" alone: the store answers and its revocation channel is followed, so
            // the cache is in use (otherwise every request would read the store).
            if poll.is_ok_and(|r| r.status == 200 && r.body == "ready\n") {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The main listener (`/auth`, JWKS).
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://127.0.0.1:P`
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not started").id()
    }

    /// Resident memory of the process now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmRSS for the gatehouse process")
    }

    /// The process's temp dir and working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The arguments after `serve --listen … --admin-listen …`.
    pub fn extra_args(&self) -> &[String] {
        &self.extra_args
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything the process printed, over all its starts.
    pub fn logs(&self) -> String {
        format!(
            "--- gatehouse stdout ---\n{}\n--- gatehouse stderr ---\n{}",
            read_tail(&self.dir.path().join("stdout.log"), 64 * 1024),
            read_tail(&self.dir.path().join("stderr.log"), 64 * 1024)
        )
    }

    /// SIGTERM: begins a graceful shutdown. Follow with `wait_exit`.
    pub fn sigterm(&mut self) {
        let child = self.child.as_mut().expect("not started");
        assert!(
            signal_child(child, libc::SIGTERM),
            "gatehouse is not running"
        );
    }

    /// Sends any signal (e.g. `libc::SIGHUP` to reload keys); false if it is not running.
    pub fn signal(&mut self, sig: i32) -> bool {
        self.child.as_mut().is_some_and(|c| signal_child(c, sig))
    }

    /// SIGKILL and reap. `wait_exit` then reports 137.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
    }

    /// Waits up to `timeout` for the process to exit: its exit code, 128 + signal number if a
    /// signal ended it, or None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_child(self.child.as_mut()?, timeout)
    }

    /// Kills the process if it is running and starts it again with the same ports, args and
    /// environment in the same directory (so an embedded store and keys survive); waits for
    /// readiness like `spawn`.
    pub fn restart(&mut self) {
        self.kill();
        self.start_process();
        if !self.wait_ready(READY_TIMEOUT) {
            panic!(
                "gatehouse not ready after restart (exit {:?}):\n{}",
                self.wait_exit(Duration::ZERO),
                self.logs()
            );
        }
    }

    /// Runs `gatehouse <args>` like `gatehouse_cli`, but in this server's working directory
    /// and with its environment, so it sees the same default embedded store.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = gatehouse_command(self.dir.path());
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        run_with_timeout(cmd, self.dir.path(), Duration::from_secs(60))
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.kill();
    }
}
