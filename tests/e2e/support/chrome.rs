//! Debian's `chromedriver` on a loopback port, for WebDriver tests; killed on drop with the
//! browsers it started. The browser runs headless, with `--no-sandbox` (Chromium's sandbox
//! refuses root).

use super::*;
use std::os::unix::process::CommandExt;

pub struct ChromeDriver {
    port: u16,
    child: Child,
    dir: TempDir,
}

impl ChromeDriver {
    pub fn start() -> ChromeDriver {
        let dir = TempDir::new("chromedriver");
        for attempt in 1..=3 {
            let port = free_port();
            let log = File::create(dir.path().join("chromedriver.log")).expect("log file");
            // A process group of its own, which its browsers join: a test that panics never
            // closes its sessions, and chromedriver leaves their browsers running when it ends.
            let mut child = Command::new(find_program("chromedriver"))
                .process_group(0)
                .arg(format!("--port={port}"))
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("start chromedriver (apt-get install chromium-driver; .ci/run does)");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return ChromeDriver { port, child, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill_and_reap(&mut child);
            if attempt == 3 {
                panic!(
                    "chromedriver did not start:\n{}",
                    fs::read_to_string(dir.path().join("chromedriver.log")).unwrap_or_default()
                );
            }
        }
        unreachable!()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Capabilities of a headless Chromium that runs as root in a container.
    pub fn capabilities() -> serde_json::Map<String, serde_json::Value> {
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("/usr/bin/chromium");
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1200,900", "--lang=en-US"]
            }
        });
        caps.as_object().cloned().unwrap()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // SIGTERM lets chromedriver end the sessions it can; then the group goes, with any
        // browser left over (the group's id is chromedriver's pid).
        let group = self.child.id();
        signal_child(&mut self.child, libc::SIGTERM);
        wait_child(&mut self.child, Duration::from_secs(5));
        send_signal_to_group(group, libc::SIGKILL);
        kill_and_reap(&mut self.child);
        let _ = &self.dir;
    }
}
