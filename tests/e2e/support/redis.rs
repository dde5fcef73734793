//! A std-only RESP client, `redis-server` and a local Redis Cluster.

use super::*;

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

pub(crate) fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
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
pub(crate) fn parse_commandstats(info: &str) -> HashMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_ascii_lowercase(), calls.trim().parse().ok()?))
        })
        .collect()
}

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
