//! Node scripts as independent implementations (panva's openid-client): installed from
//! `tests/e2e/node/package-lock.json` into `target/node-tools` on first use (`npm ci`, the
//! versions pinned there), run as a child that speaks JSON lines.

use super::*;

/// `target/node-tools`, with the pinned packages installed and `script` copied in; once per
/// test binary.
pub fn node_tools(script: &str) -> PathBuf {
    static READY: Mutex<bool> = Mutex::new(false);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/node");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/node-tools");
    let mut ready = READY.lock().unwrap();
    if !*ready {
        fs::create_dir_all(&dir).unwrap();
        for f in ["package.json", "package-lock.json"] {
            fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        // Installed from this lock file before (its copy is the stamp), or installed now.
        let lock = fs::read(src.join("package-lock.json")).unwrap();
        let stamp = dir.join("node_modules/.gatehouse-lock");
        if fs::read(&stamp).ok().as_deref() != Some(lock.as_slice()) {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir)
                .output()
                .expect("npm (Debian's nodejs and npm; .ci/run installs them)");
            assert!(out.status.success(), "npm ci: {out:?}");
            fs::write(&stamp, &lock).unwrap();
        }
        *ready = true;
    }
    fs::copy(src.join(script), dir.join(script)).unwrap();
    dir.join(script)
}

/// A running `node SCRIPT ARGS…`: JSON lines out, lines in; killed on drop.
pub struct NodeScript {
    child: Child,
    // Talked to by the registry's relying party alone (tests/e2e/oidc.rs).
    #[cfg_attr(not(feature = "registry"), allow(dead_code))]
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl NodeScript {
    pub fn start(script: &Path, args: &[&str]) -> NodeScript {
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Debian's nodejs; .ci/run installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        NodeScript {
            child,
            stdin,
            lines,
        }
    }

    /// The next JSON line, which must be step `step` (at most `timeout`). Other lines (the
    /// packages' own notices) are passed on to stderr.
    pub fn expect(&mut self, step: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                let status = self.child.try_wait();
                panic!(
                    "no {step:?} from node within {timeout:?} (exit: {status:?}; its stderr is above)"
                )
            });
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) if v.is_object() => {
                    assert_eq!(v["step"], step, "{v}");
                    return v;
                }
                _ => eprintln!("{line}"),
            }
        }
    }

    #[cfg_attr(not(feature = "registry"), allow(dead_code))]
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    /// Waits for the exit; its status.
    #[cfg_attr(not(feature = "registry"), allow(dead_code))]
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for NodeScript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
