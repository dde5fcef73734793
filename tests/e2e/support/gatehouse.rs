//! The `gatehouse` binary: `serve` processes and CLI runs.

use super::*;

// gatehouse

/// The binary under test, built by cargo for integration tests.
pub fn gatehouse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"))
}

/// A `Command` for the gatehouse binary with every `GATEHOUSE_*` variable of the test
/// runner's environment removed (each flag also reads one; a developer's shell must not
/// change what a test sees), e.g. `GATEHOUSE_LOG_FORMAT`.
pub(crate) fn gatehouse_command(cwd: &Path) -> Command {
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
    gatehouse_cli_with(args, &[], None)
}

/// `gatehouse_cli` with `input` on stdin: how secrets reach the CLI, e.g.
/// `gatehouse_cli_stdin(&["session", "revoke", "--redis-url", &url], &token)`.
pub fn gatehouse_cli_stdin(args: &[&str], input: &str) -> Output {
    gatehouse_cli_with(args, &[], Some(input))
}

/// `gatehouse_cli` with environment variables (the other way secrets reach the CLI, e.g.
/// `GATEHOUSE_DATABASE_URL`) and optional stdin.
pub fn gatehouse_cli_with(args: &[&str], env: &[(&str, &str)], input: Option<&str>) -> Output {
    let dir = TempDir::new("cli");
    let mut cmd = gatehouse_command(dir.path());
    cmd.args(args).envs(env.iter().copied());
    run_with_input(cmd, dir.path(), Duration::from_secs(60), input)
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

    // Used by the companion modules' tests.
    #[cfg(feature = "accounts")]
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

    /// Waits until the logs contain `needle` (they are written by the process, so a test
    /// that saw an effect may still be ahead of its log line).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: begins a graceful shutdown. Follow with `wait_exit`.
    pub fn sigterm(&mut self) {
        let child = self.child.as_mut().expect("not started");
        assert!(
            signal_child(child, libc::SIGTERM),
            "gatehouse is not running"
        );
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
    #[cfg(feature = "accounts")]
    /// Restarts it on the same ports with other arguments (what it learned after it started,
    /// such as the port of the nginx in front of it).
    pub fn restart_with(&mut self, extra_args: &[String]) {
        self.extra_args = extra_args.to_vec();
        self.restart();
    }

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
