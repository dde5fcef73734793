//! What stands between the pages and abuse: safe redirect targets, CSRF tokens and origin
//! checks, growing login delays (never a hard lock), and per-IP rate limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::header::HeaderMap;

// ---------------------------------------------------------------------------------------
// Redirect targets

/// `rd` when it is safe to send a browser to: a path on this site, or an absolute http(s)
/// URL on one of `allowed` hosts (an entry starting with `.` allows that domain and its
/// subdomains). Everything else (`//evil`, `/\evil`, `https://good@evil`, `javascript:`,
/// control characters, and the same hidden behind percent-encoding) is `None`.
pub fn safe_redirect(rd: &str, allowed: &[String]) -> Option<String> {
    let decoded = percent_decode(rd)?;
    // The decoded form's query may hold what its escapes stand for (`scope=a%20b` is a space):
    // only where it goes (before `?` and `#`) must be plain, and no part a control character.
    let decoded_target = decoded.split(['?', '#']).next().unwrap_or("");
    if !plain(rd) || !plain(decoded_target) || decoded.chars().any(char::is_control) {
        return None;
    }
    // Both the URL and its decoded form must pass: a server or browser behind us may decode.
    let ok = |s: &str| {
        if s.starts_with('/') {
            return !s.starts_with("//");
        }
        let lower = s.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        let Some(rest) = rest else { return false };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') || authority.is_empty() {
            return false;
        }
        let host = crate::policy::canonical_host(authority).ok();
        host.is_some_and(|h| host_allowed(&h, allowed))
    };
    (ok(rd) && ok(&decoded)).then(|| rd.to_owned())
}

/// No control characters, no backslashes, no spaces: nothing a browser would normalise.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_control() || c == '\\' || c.is_whitespace())
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| match a.strip_prefix('.') {
        Some(domain) => host == domain || host.ends_with(a.as_str()),
        None => host == a,
    })
}

/// One round of percent-decoding; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------
// Cross-site requests

/// Whether a state-changing request comes from another site: `Sec-Fetch-Site: cross-site`,
/// or an `Origin` whose host is neither the request's own nor an allowed one.
pub fn cross_site(headers: &HeaderMap, allowed: &[String]) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return true;
    }
    let Some(origin) = headers.get("origin") else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    if origin == "null" {
        return true;
    }
    let own = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| crate::policy::canonical_host(h).ok());
    let host = origin
        .split_once("://")
        .and_then(|(_, rest)| crate::policy::canonical_host(rest).ok());
    match host {
        Some(h) => own.as_deref() != Some(h.as_str()) && !host_allowed(&h, allowed),
        None => true,
    }
}

/// Whether the form's CSRF token matches the pre-session cookie's, in constant time.
pub fn csrf_ok(cookie: Option<&str>, field: Option<&str>) -> bool {
    match (cookie, field) {
        (Some(c), Some(f)) if c.len() >= 32 => {
            aws_lc_rs::constant_time::verify_slices_are_equal(c.as_bytes(), f.as_bytes()).is_ok()
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Login delays and rate limits

/// Failed logins per key (an account, an IP) and the delay they earn: after `free` failures,
/// 1 s, doubling up to `max`. A correct password after the delay always works, so an
/// attacker can slow a real user down but never lock them out.
pub struct Throttle {
    free: u32,
    max: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    pub fn new(free: u32, max: Duration) -> Throttle {
        Throttle {
            free,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn delay(&self, failures: u32) -> Duration {
        if failures < self.free {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free).min(20);
        Duration::from_secs(1u64 << doublings).min(self.max)
    }

    /// How long `key` must still wait before its next try.
    pub fn wait(&self, key: &str) -> Duration {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).map_or(Duration::ZERO, |(n, last)| {
            self.delay(*n).saturating_sub(last.elapsed())
        })
    }

    pub fn fail(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // Bounded memory under a spray of keys: forget those that no longer wait.
            let max = self.max;
            map.retain(|_, (_, last)| last.elapsed() < max);
        }
        let e = map.entry(key.to_owned()).or_insert((0, Instant::now()));
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
    }

    pub fn succeed(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// At most `limit` requests per IP in each `window` (registration, forgot-password).
pub struct RateLimit {
    limit: u32,
    window: Duration,
    counts: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl RateLimit {
    pub fn new(limit: u32, window: Duration) -> RateLimit {
        RateLimit {
            limit,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request; `Err(retry_after)` when over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, (_, start)| start.elapsed() < window);
        }
        let e = map.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, Instant::now());
        }
        if e.0 >= self.limit {
            return Err(self
                .window
                .saturating_sub(e.1.elapsed())
                .max(Duration::from_secs(1)));
        }
        e.0 += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Devices in words

/// "Firefox on Linux" from a User-Agent, for the sessions page.
pub fn device(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent else {
        return "Unknown device".into();
    };
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chromium/", "Chromium"),
        ("HeadlessChrome/", "Chrome (headless)"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
        ("gatehouse", "gatehouse CLI"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map_or("Unknown browser", |(_, name)| name);
    let os = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    match os {
        Some(os) => format!("{browser} on {os}"),
        None => browser.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_only_to_this_site_or_allowed_hosts() {
        let allowed = vec!["app.example.org".to_string(), ".example.net".to_string()];
        for good in [
            "/",
            "/admin/x?y=1#z",
            "https://app.example.org/x",
            "http://APP.example.org:8443/x",
            "https://example.net/",
            "https://a.b.example.net/x",
            // Issue 17, 1.9: an authorization request's escaped spaces survive sign-in.
            "/oauth/authorize?scope=papers%3Aread%20papers%3Awrite&state=a%2Bb",
            "/x?q=%5C%20%23",
        ] {
            assert_eq!(
                safe_redirect(good, &allowed).as_deref(),
                Some(good),
                "{good}"
            );
        }
        for bad in [
            "",
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "/\t/evil.com",
            "/%09/evil.com",
            "/%2F/evil.com",
            "/%5Cevil.com",
            "%2F%2Fevil.com",
            "/x\r\nSet-Cookie: a=b",
            "/x%0d%0aSet-Cookie:a=b",
            "https://app.example.org@evil.com/",
            "https://evil.com/",
            "https://evil.com\\@app.example.org/",
            "https://notexample.net/",
            "https://app.example.org.evil.com/",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "evil.com",
            "%",
            "/%zz",
            "/%20/evil.com",
            "/x?y=%0aSet-Cookie:a=b",
            "%2F%2Fevil.com%3Fx%20y",
        ] {
            assert_eq!(safe_redirect(bad, &allowed), None, "{bad:?}");
        }
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let h = |pairs: &[(&str, &str)]| crate::test_util::headers(pairs);
        assert!(!cross_site(&h(&[("host", "a.org")]), &[]));
        assert!(!cross_site(
            &h(&[("host", "a.org"), ("origin", "https://a.org")]),
            &[]
        ));
        assert!(!cross_site(
            &h(&[("host", "a.org:8080"), ("origin", "http://a.org:8080")]),
            &[]
        ));
        assert!(cross_site(
            &h(&[("host", "a.org"), ("origin", "https://evil.org")]),
            &[]
        ));
        assert!(cross_site(
            &h(&[("host", "a.org"), ("origin", "null")]),
            &[]
        ));
        assert!(cross_site(
            &h(&[("host", "a.org"), ("sec-fetch-site", "cross-site")]),
            &[]
        ));
        assert!(!cross_site(
            &h(&[("host", "a.org"), ("sec-fetch-site", "same-site")]),
            &[]
        ));
        assert!(!cross_site(
            &h(&[("host", "login.a.org"), ("origin", "https://app.a.org")]),
            &[".a.org".to_string()]
        ));
    }

    #[test]
    fn csrf_tokens_must_match_and_be_long() {
        let t = "x".repeat(32);
        assert!(csrf_ok(Some(&t), Some(&t)));
        assert!(!csrf_ok(Some(&t), Some(&"y".repeat(32))));
        assert!(!csrf_ok(Some(&t), None));
        assert!(!csrf_ok(None, Some(&t)));
        assert!(!csrf_ok(Some("short"), Some("short")));
    }

    #[test]
    fn delays_grow_and_never_lock() {
        let t = Throttle::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(t.wait("u:alice"), Duration::ZERO);
            t.fail("u:alice");
        }
        let w = t.wait("u:alice");
        assert!(
            w > Duration::from_millis(500) && w <= Duration::from_secs(1),
            "{w:?}"
        );
        assert_eq!(t.delay(4), Duration::from_secs(2));
        assert_eq!(t.delay(100), Duration::from_secs(60));
        t.succeed("u:alice");
        assert_eq!(t.wait("u:alice"), Duration::ZERO);
    }

    #[test]
    fn rate_limit_counts_per_ip() {
        let r = RateLimit::new(2, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(r.check(a).is_ok());
        assert!(r.check(a).is_ok());
        assert!(r.check(a).unwrap_err() > Duration::from_secs(50));
        assert!(r.check("10.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn devices_in_words() {
        assert_eq!(
            device(Some(
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
            )),
            "Firefox on Linux"
        );
        assert_eq!(
            device(Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36 Edg/130.0")),
            "Edge on Windows"
        );
        assert_eq!(
            device(Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1")),
            "Safari on iOS"
        );
        assert_eq!(device(None), "Unknown device");
    }
}
