//! Real nginx with the shipped snippets, in its own temp dir.

use super::*;

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

// Used by the companion modules' tests.
#[cfg(feature = "accounts")]
/// `PROTECTED_SITE` with gatehouse's own pages on the same server (`gatehouse-pages.conf`)
/// and the login page there: what a single-host deployment with accounts looks like.
pub fn signin_site(gatehouse_port: u16, app_port: u16) -> Nginx {
    signin_site_on(free_port(), gatehouse_port, app_port)
}

#[cfg(feature = "accounts")]
/// [`signin_site`] on `port`: for a gatehouse started first with `--public-url` naming it.
pub fn signin_site_on(port: u16, gatehouse_port: u16, app_port: u16) -> Nginx {
    let remote_login = "set $gatehouse_login_url https://login.example.test/login;\n    include {{NGINX}}/gatehouse-auth.conf;\n";
    assert!(PROTECTED_SITE.contains(remote_login));
    let template = PROTECTED_SITE.replace(
        remote_login,
        "set $gatehouse_login_url /login;\n    include {{NGINX}}/gatehouse-auth.conf;\n    include {{NGINX}}/gatehouse-pages.conf;\n",
    );
    site_on(&template, port, gatehouse_port, app_port)
}

/// Real nginx serving `template` with the shipped snippets, gatehouse and the application
/// filled in, on a free port.
fn site(template: &str, gatehouse_port: u16, app_port: u16) -> Nginx {
    site_on(template, free_port(), gatehouse_port, app_port)
}

fn site_on(template: &str, port: u16, gatehouse_port: u16, app_port: u16) -> Nginx {
    Nginx::start(&render(
        template,
        &[
            ("GATEHOUSE", gatehouse_port.to_string()),
            ("APP", app_port.to_string()),
            ("PORT", port.to_string()),
            ("NGINX", format!("{}/nginx", env!("CARGO_MANIFEST_DIR"))),
        ],
    ))
}

/// Real nginx serving `PROTECTED_SITE`: gatehouse on `gatehouse_port`, the application on
/// `app_port`, nginx itself on a free port.
pub fn protected_site(gatehouse_port: u16, app_port: u16) -> Nginx {
    site(PROTECTED_SITE, gatehouse_port, app_port)
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
        Nginx::start_with_main("", http_body)
    }

    /// `start` with `main` before the `http` block: `load_module` lines.
    pub fn start_with_main(main: &str, http_body: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let body = http_body.replace("{{DIR}}", &dir.path().display().to_string());
        fs::write(
            dir.path().join("nginx.conf"),
            main.to_owned() + &full_nginx_conf(dir.path(), &body),
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

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// 127.0.0.1 and the first `listen` port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[0]))
    }

    /// Pids of the worker processes (children of the master), from /proc. For
    /// benches/load.rs, which times nginx's own CPU.
    #[allow(dead_code)]
    pub fn worker_pids(&self) -> Vec<u32> {
        self.child
            .as_ref()
            .map(|c| children_of(c.id()))
            .unwrap_or_default()
    }

    /// nginx's error.log (level info) — e.g. "client sent invalid header line".
    pub fn error_log(&self) -> String {
        read_tail(&self.dir.path().join("error.log"), 256 * 1024)
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
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
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
pub(crate) fn full_nginx_conf(dir: &Path, http_body: &str) -> String {
    let d = dir.display();
    // As root, workers would drop to `nobody`, which may not be able to use files in a
    // root-owned temp dir; as non-root the `user` directive is meaningless. Who owns the dir
    // we just created is our effective uid — no libc call needed to find out.
    let is_root = fs::metadata(dir).map(|m| m.uid() == 0).unwrap_or(false);
    let user = if is_root { "user root;\n" } else { "" };
    format!(
        "# Written by tests/e2e/support for one test run.\n\
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
pub(crate) fn listen_ports(conf: &str) -> Vec<u16> {
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
