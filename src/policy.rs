//! Route policy (`--policy FILE`): which requests need which scopes or roles, and which may
//! pass anonymously.
//!
//! ```toml
//! [[rule]]
//! host = "admin.example.org"   # optional: exact, or "*.example.org" for any subdomain
//! path = "/admin"              # prefix, on segment boundaries: /admin, /admin/x, not /adminx
//! methods = ["POST", "PUT"]    # optional
//! roles = ["staff"]            # any one of them
//! scopes = ["admin"]           # all of them
//! mfa = true                   # a second factor (else 401: step up)
//! max_age = "15m"              # an authentication at most this old (else 401: sign in again)
//!
//! [[rule]]
//! path = "/public"
//! anonymous = true             # no credential needed (a bad credential is still refused)
//!
//! [default]                    # every other request; default: a valid credential
//! anonymous = false
//! ```
//!
//! The first matching rule wins. Matching sees only the canonical form of the original
//! request (see [`canonical_path`]): host lower-cased without default port, path
//! percent-decoded where that is safe, dot segments and repeated slashes removed, query and
//! fragment dropped. Input that has no canonical form is refused before any rule is looked
//! at. The decision is made per request from the session; nothing caches it.

use std::collections::HashSet;
use std::path::Path;

use hyper::header::HeaderMap;
use serde::Deserialize;

/// What a rule asks of the caller.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// A second factor: the session's `amr` holds `mfa`.
    #[serde(default)]
    pub mfa: bool,
    /// A recent authentication: at most this many seconds ago (`max_age = "15m"`).
    #[serde(default, deserialize_with = "max_age")]
    pub max_age: Option<u64>,
}

fn max_age<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    match crate::duration::parse_duration(&text) {
        Ok(t) if t.as_secs() > 0 => Ok(Some(t.as_secs())),
        Ok(_) => Err(serde::de::Error::custom("max_age must be at least 1s")),
        Err(e) => Err(serde::de::Error::custom(format!("max_age: {e}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    host: Option<String>,
    path: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    mfa: bool,
    #[serde(default, deserialize_with = "max_age")]
    max_age: Option<u64>,
    /// Paths match case-insensitively unless a rule says otherwise: many upstreams
    /// (Windows, IIS, some Java and PHP stacks) serve `/ADMIN` as `/admin`.
    #[serde(default)]
    case_sensitive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    default: Requirement,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.org`: stored as `.example.org`.
    Suffix(String),
}

#[derive(Debug, Clone)]
struct Rule {
    host: Option<HostPattern>,
    /// Canonical, without trailing slash; "" matches everything.
    path: String,
    case_sensitive: bool,
    methods: Option<HashSet<String>>,
    requirement: Requirement,
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Requirement,
    /// Some rule names a host: a request without one cannot be matched safely.
    has_host_rules: bool,
}

/// The request being authorised, canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Without its port; `None` when the proxy sent no host.
    pub host: Option<String>,
    pub path: String,
    pub method: String,
}

/// Why the original request could not be read; the caller's fault (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no original request URI")]
    Missing,
    #[error("original request header sent twice")]
    Duplicate,
    #[error("original request URI has no canonical form")]
    Invalid,
    #[error("original request given by two header families")]
    Ambiguous,
    #[error("no original host, and the policy has host rules")]
    MissingHost,
}

/// What the caller has, for [`Requirement::admits`].
pub struct Grants<'a> {
    pub scopes: &'a [String],
    pub roles: &'a [String],
}

/// What a session lacks for a rule that a new sign-in can give it (401, not 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepUp {
    /// A second factor (`mfa = true`).
    SecondFactor,
    /// An authentication at most this many seconds old (`max_age`).
    MaxAge(u64),
}

impl Requirement {
    /// Whether an authenticated caller with `grants` may pass.
    pub fn admits(&self, grants: &Grants<'_>) -> bool {
        self.scopes.iter().all(|s| grants.scopes.contains(s))
            && (self.roles.is_empty() || self.roles.iter().any(|r| grants.roles.contains(r)))
    }

    /// Whether the rule asks how or when its caller authenticated.
    pub fn asks_assurance(&self) -> bool {
        self.mfa || self.max_age.is_some()
    }

    /// What `session` lacks of the rule's `mfa` and `max_age` at `now`, if anything.
    pub fn step_up(&self, session: &crate::session::Session, now: u64) -> Option<StepUp> {
        if self.mfa && !session.has_second_factor() {
            return Some(StepUp::SecondFactor);
        }
        match self.max_age {
            Some(max) if !session.authenticated_within(max, now) => Some(StepUp::MaxAge(max)),
            _ => None,
        }
    }

    /// Why a rule cannot be met as written.
    fn contradiction(&self) -> Option<&'static str> {
        if !self.anonymous {
            None
        } else if !self.scopes.is_empty() || !self.roles.is_empty() {
            Some("anonymous = true cannot also require scopes or roles")
        } else if self.mfa || self.max_age.is_some() {
            Some("anonymous = true cannot also require mfa or max_age")
        } else {
            None
        }
    }
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Policy::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| crate::error::line_at(text, s.start));
            format!("line {line}: {}", e.message().trim())
        })?;
        let mut rules = Vec::with_capacity(raw.rule.len());
        for (i, r) in raw.rule.into_iter().enumerate() {
            let n = i + 1;
            let requirement = Requirement {
                anonymous: r.anonymous,
                scopes: r.scopes,
                roles: r.roles,
                mfa: r.mfa,
                max_age: r.max_age,
            };
            let host = match r.host.as_deref() {
                None => None,
                Some(h) => {
                    let (wild, rest) = match h.strip_prefix("*.") {
                        Some(rest) => (true, rest),
                        None => (false, h),
                    };
                    let c = canonical_host(rest)
                        .map_err(|_| format!("rule {n}: invalid host {h:?}"))?;
                    if rest
                        .trim_end_matches('.')
                        .rsplit_once(':')
                        .is_some_and(|(_, p)| {
                            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                        })
                    {
                        return Err(format!(
                            "rule {n}: host {h:?} names a port; hosts are compared without their port"
                        ));
                    }
                    Some(if wild {
                        HostPattern::Suffix(format!(".{c}"))
                    } else {
                        HostPattern::Exact(c)
                    })
                }
            };
            let path = match r.path.as_deref() {
                None => String::new(),
                Some(p) => {
                    if !p.starts_with('/') || p.contains(['?', '#']) {
                        return Err(format!(
                            "rule {n}: path {p:?} must start with / and have no query"
                        ));
                    }
                    let c =
                        canonical_path(p).map_err(|_| format!("rule {n}: invalid path {p:?}"))?;
                    if c.trim_end_matches('/') != p.trim_end_matches('/') {
                        return Err(format!(
                            "rule {n}: path {p:?} is not canonical (write {c:?})"
                        ));
                    }
                    c.trim_end_matches('/').to_string()
                }
            };
            let methods = match r.methods {
                None => None,
                Some(m) if m.is_empty() => return Err(format!("rule {n}: methods is empty")),
                Some(m) => Some(
                    m.iter()
                        .map(|m| {
                            let u = m.to_ascii_uppercase();
                            if u.is_empty() || !u.bytes().all(|b| b.is_ascii_uppercase()) {
                                Err(format!("rule {n}: invalid method {m:?}"))
                            } else {
                                Ok(u)
                            }
                        })
                        .collect::<Result<HashSet<_>, _>>()?,
                ),
            };
            if let Some(why) = requirement.contradiction() {
                return Err(format!("rule {n}: {why}"));
            }
            rules.push(Rule {
                host,
                path,
                case_sensitive: r.case_sensitive,
                methods,
                requirement,
            });
        }
        if let Some(why) = raw.default.contradiction() {
            return Err(format!("default: {why}"));
        }
        Ok(Policy {
            has_host_rules: rules.iter().any(|r| r.host.is_some()),
            rules,
            default: raw.default,
        })
    }

    /// The requirement of the first rule that matches `t`, else the default. A request
    /// without a host is refused when any rule names one: it must not slip past that rule.
    pub fn requirement(&self, t: &Target) -> Result<&Requirement, TargetError> {
        if t.host.is_none() && self.has_host_rules {
            return Err(TargetError::MissingHost);
        }
        Ok(self
            .rules
            .iter()
            .find(|r| r.matches(t))
            .map_or(&self.default, |r| &r.requirement))
    }
}

impl Rule {
    fn matches(&self, t: &Target) -> bool {
        let host_ok = match (&self.host, &t.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(HostPattern::Exact(h)), Some(host)) => h == host,
            (Some(HostPattern::Suffix(s)), Some(host)) => {
                host.ends_with(s.as_str()) && host.len() > s.len()
            }
        };
        let (rule, path) = (self.path.as_bytes(), t.path.as_bytes());
        let path_ok = rule.is_empty()
            || (path.len() >= rule.len()
                && if self.case_sensitive {
                    path[..rule.len()] == *rule
                } else {
                    path[..rule.len()].eq_ignore_ascii_case(rule)
                }
                && matches!(path.get(rule.len()), None | Some(b'/')));
        let method_ok = self.methods.as_ref().is_none_or(|m| m.contains(&t.method));
        host_ok && path_ok && method_ok
    }
}

/// The value of a header that must appear at most once; `Duplicate` when it is sent twice
/// (which copy a proxy or upstream believes is anyone's guess).
pub(crate) fn one<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, TargetError> {
    let mut all = headers.get_all(name).iter();
    let Some(v) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(TargetError::Duplicate);
    }
    v.to_str().map(Some).map_err(|_| TargetError::Invalid)
}

/// Which headers carry the original request (`--original-request`). Proxies that copy the
/// client's headers into the auth request (Traefik, Caddy, ingress-nginx's snippets) pass on
/// whatever family the client made up, so only one family may speak for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OriginalRequest {
    /// `X-Original-URI`, `-Method`, `-Host`, as gatehouse's nginx snippet sets them.
    Nginx,
    /// `X-Original-URL` (and `X-Original-Method`), as ingress-nginx sets them.
    IngressNginx,
    /// `X-Forwarded-Uri`, `-Method`, `-Host`, as Traefik and Caddy set them.
    Forwarded,
    /// Whichever one family is present; a request that carries two is refused.
    #[default]
    Auto,
}

impl OriginalRequest {
    pub const NAMES: [&'static str; 4] = ["nginx", "ingress-nginx", "forwarded", "auto"];

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "nginx" => Ok(OriginalRequest::Nginx),
            "ingress-nginx" => Ok(OriginalRequest::IngressNginx),
            "forwarded" => Ok(OriginalRequest::Forwarded),
            "auto" => Ok(OriginalRequest::Auto),
            _ => Err(format!("{s:?} is not one of {}", Self::NAMES.join(", "))),
        }
    }

    /// The headers that say "this family describes the request". `X-Forwarded-Host` is not
    /// among them: load balancers in front of nginx set it on every request.
    fn markers(self) -> &'static [&'static str] {
        match self {
            OriginalRequest::Nginx => &["x-original-uri", "x-original-host"],
            OriginalRequest::IngressNginx => &["x-original-url"],
            OriginalRequest::Forwarded => &["x-forwarded-uri", "x-forwarded-method"],
            OriginalRequest::Auto => &[],
        }
    }

    /// The one family present in `headers`: `Ambiguous` when markers of two are.
    fn detect(headers: &HeaderMap) -> Result<OriginalRequest, TargetError> {
        let mut found = None;
        for family in [
            OriginalRequest::Nginx,
            OriginalRequest::IngressNginx,
            OriginalRequest::Forwarded,
        ] {
            if family.markers().iter().any(|m| headers.contains_key(*m)) {
                if found.is_some() {
                    return Err(TargetError::Ambiguous);
                }
                found = Some(family);
            }
        }
        found.ok_or(TargetError::Missing)
    }
}

/// The original request from the proxy's headers, read from one family only (see
/// [`OriginalRequest`]). Call only for requests from a trusted proxy.
pub fn target(headers: &HeaderMap, family: OriginalRequest) -> Result<Target, TargetError> {
    let family = match family {
        OriginalRequest::Auto => OriginalRequest::detect(headers)?,
        pinned => pinned,
    };
    let (uri, host, method) = match family {
        OriginalRequest::Nginx => (
            one(headers, "x-original-uri")?
                .ok_or(TargetError::Missing)?
                .to_string(),
            one(headers, "x-original-host")?,
            one(headers, "x-original-method")?,
        ),
        OriginalRequest::IngressNginx => {
            let url = one(headers, "x-original-url")?.ok_or(TargetError::Missing)?;
            let rest = strip_scheme(url).ok_or(TargetError::Invalid)?;
            let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (host, path) = rest.split_at(split);
            let path = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            };
            (path, Some(host), one(headers, "x-original-method")?)
        }
        OriginalRequest::Forwarded | OriginalRequest::Auto => (
            one(headers, "x-forwarded-uri")?
                .ok_or(TargetError::Missing)?
                .to_string(),
            one(headers, "x-forwarded-host")?,
            one(headers, "x-forwarded-method")?,
        ),
    };
    let host = match host {
        None => None,
        Some(h) => Some(canonical_host(h)?),
    };
    let method = method.unwrap_or("GET").trim().to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(TargetError::Invalid);
    }
    Ok(Target {
        host,
        path: canonical_path(&uri)?,
        method,
    })
}

fn strip_scheme(url: &str) -> Option<&str> {
    let lower = url
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if lower.starts_with("https://") {
        Some(&url[8..])
    } else if lower.starts_with("http://") {
        Some(&url[7..])
    } else {
        None
    }
}

/// Host lower-cased, without a trailing dot or any port: `admin.example.org:1` is
/// `admin.example.org`, so a port cannot take a request past a host rule.
pub fn canonical_host(raw: &str) -> Result<String, TargetError> {
    let lower = strip_port(raw.trim())?.to_ascii_lowercase();
    // Until nothing changes, so that the result is its own canonical form ("a.:80." is "a").
    if lower.contains("..") {
        return Err(TargetError::Invalid);
    }
    let mut h = lower.as_str();
    loop {
        let stripped = h.strip_suffix('.').unwrap_or(h);
        if stripped == h {
            break;
        }
        h = stripped;
    }
    if h.is_empty()
        || h.starts_with('.')
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
    {
        return Err(TargetError::Invalid);
    }
    Ok(h.to_string())
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`. A colon that is not a numeric port's (a bare
/// IPv6 address, `host:x`) has no reading every upstream shares: refused.
fn strip_port(h: &str) -> Result<&str, TargetError> {
    let (host, port) = if h.starts_with('[') {
        let end = h.find(']').ok_or(TargetError::Invalid)?;
        let (host, rest) = h.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if rest.is_empty() => (host, None),
            None => return Err(TargetError::Invalid),
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    match port {
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
            Err(TargetError::Invalid)
        }
        _ => Ok(host),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The canonical path of a request target: query and fragment dropped; percent-encoded
/// unreserved characters decoded and other escapes upper-cased (so `%2e%2e` is `..` and
/// `%2F` and `%5C` are refused); `;parameters` dropped from every segment;
/// repeated slashes merged; `.` and `..` segments resolved (never above the root).
/// Control characters, NUL (also as `%00`), non-ASCII, backslashes and escaped slashes, a
/// path that does not start with `/`, and invalid percent-encoding have no canonical form.
pub fn canonical_path(raw: &str) -> Result<String, TargetError> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let raw = &raw.as_bytes()[..end];
    if raw.first() != Some(&b'/') {
        return Err(TargetError::Invalid);
    }
    // Decode what is safe to decode; keep the rest escaped, in one spelling.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if !(0x20..0x7f).contains(&b) || b == b'\\' {
            return Err(TargetError::Invalid);
        }
        if b == b'%' {
            let (hi, lo) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            );
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(TargetError::Invalid);
            };
            let c = hi << 4 | lo;
            // Control characters, and escaped separators: upstreams disagree on whether
            // `%2F` or `%5C` split segments, so no reading of them is safe to match on.
            if c < 0x20 || c == 0x7f || c == b'/' || c == b'\\' {
                return Err(TargetError::Invalid);
            }
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                decoded.push(c);
            } else {
                decoded.extend_from_slice(format!("%{c:02X}").as_bytes());
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| TargetError::Invalid)?;
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    // A trailing slash is kept: /dir/ and /dir may be different resources upstream.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if path.is_empty() || (trailing && !out.is_empty()) {
        path.push('/');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;
    use proptest::prelude::*;

    #[test]
    fn canonical_paths() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//admin", "/admin"),
            ("/a/../admin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E%2E/%61dmin", "/admin"),
            ("/admin;jsessionid=1/x", "/admin/x"),
            ("/public;/../admin", "/admin"),
            ("/admin?x=/public", "/admin"),
            ("/public?/../admin", "/public"),
            ("/a/./b/../../../c", "/c"),
            ("/a#frag", "/a"),
            ("/a/..", "/"),
            ("/a%20b", "/a%20b"),
        ] {
            assert_eq!(canonical_path(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "",
            "admin",
            "/a%",
            "/a%zz",
            "/a%0",
            "/a%00",
            "/a\u{1}",
            "/a%0d%0a",
            "/\u{e9}",
            "*",
            "/public/..%2fadmin",
            "/a%5Cb",
            "/a\\..\\b",
        ] {
            assert_eq!(canonical_path(bad), Err(TargetError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            canonical_host("App.Example.ORG:443").as_deref(),
            Ok("app.example.org")
        );
        assert_eq!(
            canonical_host("app.example.org.:80").as_deref(),
            Ok("app.example.org")
        );
        // Any port, not only the default ones: `host = "admin.example.org"` must hold for
        // `admin.example.org:1` too.
        assert_eq!(
            canonical_host("admin.example.org:1").as_deref(),
            Ok("admin.example.org")
        );
        assert_eq!(canonical_host("[::1]:8443").as_deref(), Ok("[::1]"));
        assert_eq!(canonical_host("[::1]").as_deref(), Ok("[::1]"));
        for bad in ["a:", "a:x", "a:80:80", "::1", "[::1]x", "a:80."] {
            assert!(canonical_host(bad).is_err(), "{bad}");
        }
        assert!(canonical_host("a/b").is_err());
        // Its own canonical form, whatever the spelling (found by fuzzing).
        for raw in [
            "app..",
            "app.",
            "a:80.",
            "a.:443.",
            "A.Example.org.:80",
            "a:80:80",
        ] {
            if let Ok(c) = canonical_host(raw) {
                assert_eq!(canonical_host(&c).as_deref(), Ok(c.as_str()), "{raw}");
            }
        }
        assert!(canonical_host("app..").is_err());
        assert!(canonical_host("").is_err());
    }

    #[test]
    fn targets_from_each_proxy() {
        use OriginalRequest::*;
        let target = |h: &HeaderMap| super::target(h, Auto);
        let want = Target {
            host: Some("app.example.org".into()),
            path: "/admin".into(),
            method: "POST".into(),
        };
        let nginx = headers(&[
            ("x-original-uri", "/x/../admin?q"),
            ("x-original-host", "APP.example.org"),
            ("x-original-method", "post"),
        ]);
        assert_eq!(target(&nginx), Ok(want.clone()));
        let ingress = headers(&[
            ("x-original-url", "https://app.example.org:443//admin?q=1"),
            ("x-original-method", "POST"),
        ]);
        assert_eq!(target(&ingress), Ok(want.clone()));
        let traefik = headers(&[
            ("x-forwarded-uri", "/%61dmin"),
            ("x-forwarded-host", "app.example.org"),
            ("x-forwarded-method", "POST"),
        ]);
        assert_eq!(target(&traefik), Ok(want.clone()));
        assert_eq!(super::target(&traefik, Forwarded), Ok(want.clone()));
        assert_eq!(super::target(&nginx, Nginx), Ok(want.clone()));
        assert_eq!(super::target(&ingress, IngressNginx), Ok(want.clone()));
        // Pinned, the family the proxy does not set is not read at all.
        assert_eq!(super::target(&traefik, Nginx), Err(TargetError::Missing));
        assert_eq!(target(&headers(&[])), Err(TargetError::Missing));
        // Traefik and Caddy copy the client's headers: a client behind them that adds
        // another family's header must not choose the rule (the audit's bypass).
        for (name, value) in [
            ("x-original-uri", "/public/x"),
            ("x-original-host", "public.example.org"),
            ("x-original-url", "https://app.example.org/public/x"),
        ] {
            let mut h = traefik.clone();
            h.append(
                hyper::header::HeaderName::from_static(name),
                hyper::header::HeaderValue::from_static(value),
            );
            assert_eq!(target(&h), Err(TargetError::Ambiguous), "{name}");
            // Pinned to the proxy's own family, the client's extra header is ignored.
            assert_eq!(super::target(&h, Forwarded), Ok(want.clone()), "{name}");
        }
        let mixed = headers(&[("x-original-uri", "/public"), ("x-forwarded-method", "GET")]);
        assert_eq!(target(&mixed), Err(TargetError::Ambiguous));
        // A load balancer's X-Forwarded-Host in front of nginx is not another family.
        let mut behind_lb = nginx.clone();
        behind_lb.append("x-forwarded-host", "lb.example.org".parse().unwrap());
        assert_eq!(target(&behind_lb), Ok(want));
        let twice = headers(&[("x-original-uri", "/a"), ("x-original-uri", "/admin")]);
        assert_eq!(target(&twice), Err(TargetError::Duplicate));
        assert_eq!(
            target(&headers(&[("x-original-url", "javascript:x")])),
            Err(TargetError::Invalid)
        );
        assert_eq!(
            target(&headers(&[("x-original-uri", "/a%00")])),
            Err(TargetError::Invalid)
        );
    }

    const POLICY: &str = r#"
        [[rule]]
        host = "admin.example.org"
        roles = ["staff", "ops"]

        [[rule]]
        path = "/admin"
        scopes = ["admin", "write"]

        [[rule]]
        path = "/api"
        methods = ["POST", "delete"]
        scopes = ["write"]

        [[rule]]
        host = "*.public.example.org"
        anonymous = true

        [[rule]]
        path = "/public/"
        anonymous = true

        [default]
        scopes = ["read"]
    "#;

    fn t(host: &str, path: &str, method: &str) -> Target {
        Target {
            host: Some(host.into()),
            path: canonical_path(path).unwrap(),
            method: method.into(),
        }
    }

    #[test]
    fn first_match_wins_on_segment_boundaries() {
        let p = Policy::parse(POLICY).unwrap();
        let req = |host, path, method| p.requirement(&t(host, path, method)).unwrap().clone();
        assert_eq!(
            req("admin.example.org", "/public/x", "GET").roles,
            ["staff", "ops"]
        );
        assert_eq!(
            req("a.example.org", "/admin", "GET").scopes,
            ["admin", "write"]
        );
        assert_eq!(
            req("a.example.org", "/admin/users", "GET").scopes,
            ["admin", "write"]
        );
        assert_eq!(
            req("a.example.org", "/administrator", "GET").scopes,
            ["read"],
            "not a segment prefix"
        );
        assert_eq!(req("a.example.org", "/api/x", "POST").scopes, ["write"]);
        assert_eq!(req("a.example.org", "/api/x", "DELETE").scopes, ["write"]);
        assert_eq!(req("a.example.org", "/api/x", "GET").scopes, ["read"]);
        assert!(req("x.public.example.org", "/anything", "GET").anonymous);
        assert!(
            !req("public.example.org", "/anything", "GET").anonymous,
            "*. needs a subdomain"
        );
        assert!(req("a.example.org", "/public", "GET").anonymous);
        assert!(req("a.example.org", "/public/a", "GET").anonymous);
        // Every spelling of /admin gets /admin's rule.
        for spelling in [
            "/admin",
            "//admin",
            "/public/../admin",
            "/%2e%2e/admin",
            "/%61dmin",
            "/admin;x=1",
            "/./admin/",
        ] {
            assert_eq!(
                req("a.example.org", spelling, "GET").scopes,
                ["admin", "write"],
                "{spelling}"
            );
        }
    }

    #[test]
    fn paths_match_without_case_unless_a_rule_opts_out() {
        let p = Policy::parse(
            "[[rule]]\npath = \"/admin\"\nscopes = [\"admin\"]\n\
             [[rule]]\npath = \"/Docs\"\ncase_sensitive = true\nscopes = [\"docs\"]",
        )
        .unwrap();
        let req = |path| {
            p.requirement(&t("a.example.org", path, "GET"))
                .unwrap()
                .clone()
        };
        for spelling in ["/ADMIN", "/Admin/x", "/%41dmin", "/aDmIn/"] {
            assert_eq!(req(spelling).scopes, ["admin"], "{spelling}");
        }
        assert_eq!(req("/Docs/a").scopes, ["docs"]);
        assert!(req("/docs/a").scopes.is_empty(), "case_sensitive = true");
    }

    #[test]
    fn host_rules_hold_with_any_port_and_refuse_a_missing_host() {
        let p = Policy::parse(POLICY).unwrap();
        let admin = |host: &str| {
            let h = headers(&[("x-original-uri", "/x"), ("x-original-host", host)]);
            let t = target(&h, OriginalRequest::Auto).unwrap();
            p.requirement(&t).unwrap().clone()
        };
        for host in [
            "admin.example.org",
            "admin.example.org:1",
            "ADMIN.example.org.:8443",
        ] {
            assert_eq!(admin(host).roles, ["staff", "ops"], "{host}");
        }
        let no_host = target(&headers(&[("x-original-uri", "/x")]), OriginalRequest::Auto).unwrap();
        assert_eq!(p.requirement(&no_host), Err(TargetError::MissingHost));
        // A policy without host rules has nothing a missing host could slip past.
        let paths_only = Policy::parse("[[rule]]\npath = \"/a\"").unwrap();
        assert!(paths_only.requirement(&no_host).is_ok());
        assert!(Policy::parse("[[rule]]\nhost = \"a.example.org:8443\"")
            .unwrap_err()
            .contains("port"));
    }

    #[test]
    fn requirements_admit() {
        let r = Requirement {
            anonymous: false,
            scopes: vec!["a".into(), "b".into()],
            roles: vec!["x".into(), "y".into()],
            ..Requirement::default()
        };
        let g = |s: &[&str], r: &[&str]| {
            (
                s.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                r.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            )
        };
        let (s, ro) = g(&["a", "b", "c"], &["y"]);
        assert!(r.admits(&Grants {
            scopes: &s,
            roles: &ro
        }));
        let (s, ro) = g(&["a"], &["y"]);
        assert!(
            !r.admits(&Grants {
                scopes: &s,
                roles: &ro
            }),
            "all scopes"
        );
        let (s, ro) = g(&["a", "b"], &[]);
        assert!(
            !r.admits(&Grants {
                scopes: &s,
                roles: &ro
            }),
            "one role"
        );
        assert!(Requirement::default().admits(&Grants {
            scopes: &[],
            roles: &[]
        }));
    }

    #[test]
    fn bad_policies_are_refused_with_the_rule_named() {
        for (text, says) in [
            ("[[rule]]\npath = \"admin\"", "rule 1"),
            ("[[rule]]\npath = \"/a/../b\"", "not canonical"),
            ("[[rule]]\npath = \"/a?x\"", "rule 1"),
            ("[[rule]]\nhost = \"a/b\"", "invalid host"),
            ("[[rule]]\nmethods = []", "methods is empty"),
            ("[[rule]]\nmethods = [\"G T\"]", "invalid method"),
            ("[[rule]]\nanonymous = true\nscopes = [\"x\"]", "anonymous"),
            (
                "[[rule]]\nanonymous = true\nmfa = true",
                "cannot also require mfa",
            ),
            (
                "[default]\nanonymous = true\nmax_age = \"5m\"",
                "default: anonymous",
            ),
            ("[[rule]]\nmax_age = \"soon\"", "max_age"),
            ("[[rule]]\nmax_age = \"0s\"", "at least 1s"),
            ("[[rule]]\nscope = [\"x\"]", "unknown field"),
            ("[[rule]\n", ""),
        ] {
            let err = Policy::parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    proptest! {
        #[test]
        fn canonicalisation_is_idempotent_and_never_climbs(raw in "/[a-zA-Z0-9./%;_~-]{0,40}") {
            if let Ok(c) = canonical_path(&raw) {
                prop_assert_eq!(canonical_path(&c), Ok(c.clone()));
                prop_assert!(c.starts_with('/'));
                prop_assert!(!c.split('/').any(|s| s == ".." || s == "."));
                prop_assert!(!c.contains("//"));
            }
        }

        #[test]
        fn parsing_never_panics(raw in "\\PC{0,60}") {
            let _ = canonical_path(&raw);
            let _ = canonical_host(&raw);
        }
    }
}
