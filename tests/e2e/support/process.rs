//! Temporary directories, child processes (killed and reaped on drop), signals.

use super::*;

// Temporary directories and processes

pub(crate) fn unique_suffix() -> u64 {
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

/// kill(2): the only `unsafe` in the harness. It takes two integers and touches none of our
/// memory.
fn kill(pid: libc::pid_t, sig: i32) -> bool {
    // SAFETY: plain syscall on integers; no pointers are involved.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Sends `sig` to `pid`. Callers only signal children they have not yet reaped, so the pid
/// cannot have been recycled for another process.
pub fn send_signal(pid: u32, sig: i32) -> bool {
    kill(pid as libc::pid_t, sig)
}

/// Sends `sig` to every process of group `pgid` (a child started with `process_group(0)`).
/// A group's id is not given to another process while the group has members.
#[cfg(feature = "accounts")]
pub fn send_signal_to_group(pgid: u32, sig: i32) -> bool {
    kill(-(pgid as libc::pid_t), sig)
}

/// Signals `child` only if it has not exited and been reaped (see `send_signal`).
pub(crate) fn signal_child(child: &mut Child, sig: i32) -> bool {
    matches!(child.try_wait(), Ok(None)) && send_signal(child.id(), sig)
}

/// SIGKILL and reap, so no zombie stays behind. Harmless if the child already exited.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Exit code of `status`, or 128 + signal number when a signal ended it (as shells report).
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Whether `ok` comes true within 2 s, asked every 20 ms: how a test checks a bound of the
/// contract (a revocation reaches every server within 1 s) with a margin for a busy machine.
#[cfg(feature = "accounts")]
pub fn soon(mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for `child` to exit; returns its exit code (128 + signal if killed).
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<i32> {
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
pub(crate) fn run_with_timeout(cmd: Command, dir: &Path, timeout: Duration) -> Output {
    run_with_input(cmd, dir, timeout, None)
}

/// Runs `cmd` with `input` (if any) as its stdin.
pub(crate) fn run_with_input(
    mut cmd: Command,
    dir: &Path,
    timeout: Duration,
    input: Option<&str>,
) -> Output {
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
pub(crate) fn read_tail(path: &Path, max: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(feature = "accounts")]
/// The Python of the tests' virtual environment, `target/ci-venv`, where `.ci/run` installs the
/// reference libraries (passlib, bcrypt, argon2-cffi, aiosmtpd, standardwebhooks).
pub fn venv_python() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python3");
    assert!(
        path.exists(),
        "no {}: run bash .ci/run once (it makes target/ci-venv and installs the pinned tools)",
        path.display()
    );
    path
}
