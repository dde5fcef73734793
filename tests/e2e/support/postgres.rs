//! A throw-away PostgreSQL cluster (Debian's `postgresql`) on a loopback port, with one
//! database `gatehouse`. PostgreSQL refuses to run as root, so as root the cluster is made
//! and run as the `postgres` user. Fast and unsafe settings (no fsync): it lives for one test.

use super::*;

pub struct Postgres {
    port: u16,
    /// The cluster's directory, removed when the server is gone.
    _dir: TempDir,
    child: Option<Child>,
}

/// The newest installed server's `bin` directory (`/usr/lib/postgresql/<major>/bin`).
fn pg_bin(program: &str) -> PathBuf {
    let mut majors: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    majors.sort_by_key(|p| {
        p.parent()
            .and_then(|m| m.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    match majors.last() {
        Some(bin) => bin.join(program),
        None => panic!("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program args…`, as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = TempDir::new("postgres");
        let data = dir.path().join("data");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {} to postgres", dir.path().display());
        }
        let out = as_postgres(&pg_bin("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for attempt in 1..=3 {
            let port = free_port();
            let log = File::create(dir.path().join("postgres.log")).expect("log file");
            let child = as_postgres(&pg_bin("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start postgres");
            let mut child = child;
            if wait_ready(&mut child, port) {
                let pg = Postgres {
                    port,
                    _dir: dir,
                    child: Some(child),
                };
                pg.psql("CREATE DATABASE gatehouse");
                return pg;
            }
            kill_and_reap(&mut child);
            let logs = fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default();
            if attempt < 3 && logs.contains("in use") {
                continue;
            }
            panic!("postgres did not start:\n{logs}");
        }
        unreachable!()
    }

    /// Runs one SQL statement with psql; panics with its error.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                if sql.starts_with("CREATE DATABASE") {
                    "postgres"
                } else {
                    "gatehouse"
                },
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The URL of the `gatehouse` database, for `--database-url`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/gatehouse", self.port)
    }
}

/// Waits until the server on `port` accepts connections, or `child` exits.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let ok = Command::new(pg_bin("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown; the postmaster ends its backends. As root
            // the child is runuser, which passes the signal on.
            signal_child(&mut c, libc::SIGINT);
            if wait_child(&mut c, Duration::from_secs(10)).is_none() {
                kill_and_reap(&mut c);
            }
        }
    }
}
