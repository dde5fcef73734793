//! What stands between the pages and abuse: safe redirect targets, CSRF tokens and origin
//! checks, growing login delays (never a hard lock), and per-IP rate limits.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::secret::ServerSecret;
use crate::store::counters::{address_key, now_ms, Counters};
use crate::store::StoreError;

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

/// Failed attempts per key (an account, an address, a known device) and the delay they earn:
/// after `free` failures, 1 s, doubling up to `max`. A correct password after the delay
/// always works, so an attacker can slow a real user down but never lock them out. The
/// counts live in the shared store when there is one ([`Counters`]), so replicas add up.
pub struct Throttle {
    free: u32,
    max: Duration,
    counters: Arc<Counters>,
}

/// How long failures are remembered after the last one.
const KEEP_FAILURES: Duration = Duration::from_secs(15 * 60);

impl Throttle {
    pub fn new(free: u32, max: Duration, counters: Arc<Counters>) -> Throttle {
        Throttle {
            free,
            max,
            counters,
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
    pub async fn wait(&self, key: &str) -> Result<Duration, StoreError> {
        let f = self.counters.failures(key).await?;
        let since = Duration::from_millis(now_ms().saturating_sub(f.last_ms));
        Ok(self.delay(f.count).saturating_sub(since))
    }

    pub async fn fail(&self, key: &str) -> Result<(), StoreError> {
        self.counters.fail(key, KEEP_FAILURES).await
    }

    pub async fn succeed(&self, key: &str) -> Result<(), StoreError> {
        self.counters.clear(key).await
    }
}

/// At most `limit` requests per address in each `window` (registration and forgot-password;
/// passkey ceremonies, on their own counter), IPv6 by its /64.
pub struct RateLimit {
    /// The counters' key prefix: one per limit.
    name: &'static str,
    limit: u32,
    window: Duration,
    counters: Arc<Counters>,
}

impl RateLimit {
    pub fn new(
        name: &'static str,
        limit: u32,
        window: Duration,
        counters: Arc<Counters>,
    ) -> RateLimit {
        RateLimit {
            name,
            limit,
            window,
            counters,
        }
    }

    /// Counts one request from `ip`; `Some(retry_after)` when over the limit.
    pub async fn check(&self, ip: IpAddr) -> Result<Option<Duration>, StoreError> {
        let key = format!("{}:{}", self.name, address_key(ip));
        let (n, left) = self.counters.hit(&key, self.window).await?;
        Ok((n > self.limit).then(|| left.max(Duration::from_secs(1))))
    }
}

// ---------------------------------------------------------------------------------------
// Known devices (OWASP's device cookies)

/// The known-device cookie's name.
pub const DEVICE_COOKIE: &str = "gatehouse_device";
/// How long a browser stays known after signing in.
pub const DEVICE_TTL: Duration = Duration::from_secs(365 * 86_400);

/// A browser that signed into `user_id` before: `v1.<kid>.<user id>.<nonce>.<mac>`, the MAC
/// by the server secret, so that every replica can check it and nobody can make one.
#[derive(Debug, PartialEq, Eq)]
pub struct Device {
    pub user_id: String,
    nonce: String,
}

impl Device {
    const PURPOSE: &'static str = "known device";

    /// A new cookie value for `user_id`.
    pub fn issue(secret: &ServerSecret, user_id: &str) -> String {
        let data = format!("{user_id}.{}", crate::accounts::db::random_token(16));
        format!(
            "v1.{}.{data}.{}",
            secret.kid(),
            secret.mac(Self::PURPOSE, &data)
        )
    }

    /// The device a cookie value names, when its MAC is this secret's.
    pub fn parse(secret: &ServerSecret, value: &str) -> Option<Device> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(kid), Some(user_id), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        (kid == secret.kid() && secret.verify(Self::PURPOSE, &format!("{user_id}.{nonce}"), mac))
            .then(|| Device {
                user_id: user_id.to_owned(),
                nonce: nonce.to_owned(),
            })
    }

    /// Its own failure counter's key.
    pub fn throttle_key(&self) -> String {
        format!("dev:{}", self.nonce)
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
    fn device_cookies_are_bound_to_user_and_secret() {
        let secret = ServerSecret::from_bytes(&[7; 32]);
        let value = Device::issue(&secret, "user1");
        let d = Device::parse(&secret, &value).expect("its own cookie");
        assert_eq!(d.user_id, "user1");
        assert_ne!(
            Device::parse(&secret, &Device::issue(&secret, "user1")),
            Some(d),
            "a new nonce each time"
        );
        let other = ServerSecret::from_bytes(&[8; 32]);
        assert_eq!(Device::parse(&other, &value), None, "another secret");
        let forged = value.replace("user1", "admin");
        assert_eq!(Device::parse(&secret, &forged), None, "another user");
        for bad in ["", "v1", "v2.a.b.c.d", &format!("{value}.x")] {
            assert_eq!(Device::parse(&secret, bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn delays_grow_and_never_lock() {
        let t = Throttle::new(3, Duration::from_secs(60), Arc::new(Counters::local()));
        for _ in 0..3 {
            assert_eq!(t.wait("u:alice").await.unwrap(), Duration::ZERO);
            t.fail("u:alice").await.unwrap();
        }
        let w = t.wait("u:alice").await.unwrap();
        assert!(
            w > Duration::from_millis(500) && w <= Duration::from_secs(1),
            "{w:?}"
        );
        assert_eq!(t.delay(4), Duration::from_secs(2));
        assert_eq!(t.delay(100), Duration::from_secs(60));
        t.succeed("u:alice").await.unwrap();
        assert_eq!(t.wait("u:alice").await.unwrap(), Duration::ZERO);
    }

    #[tokio::test]
    async fn rate_limit_counts_per_address_and_ipv6_per_64() {
        let r = RateLimit::new(
            "rate",
            2,
            Duration::from_secs(60),
            Arc::new(Counters::local()),
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(r.check(a).await.unwrap(), None);
        assert_eq!(r.check(a).await.unwrap(), None);
        assert!(r.check(a).await.unwrap().unwrap() > Duration::from_secs(50));
        assert_eq!(r.check("10.0.0.2".parse().unwrap()).await.unwrap(), None);
        for host in ["2001:db8::1", "2001:db8::2"] {
            assert_eq!(r.check(host.parse().unwrap()).await.unwrap(), None);
        }
        assert!(
            r.check("2001:db8::ffff".parse().unwrap())
                .await
                .unwrap()
                .is_some(),
            "a new address in the same /64 bought a fresh limit"
        );
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
