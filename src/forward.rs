//! Forward auth for proxies that show the client whatever the auth server answers (Traefik,
//! Caddy): the login redirect of `/auth/redirect`.
//!
//! nginx turns a 401 into a login redirect itself (`error_page 401`); Traefik and Caddy
//! pass any non-2xx answer to the client as it is, so the redirect has to come from here.
//! It always points at `--login-url`, never at a place named by the request: the original
//! URL only travels, percent-encoded, as `rd`, which the login page must check before it
//! redirects back (the accounts module does).

use hyper::header::{HeaderMap, ACCEPT};

use crate::policy::StepUp;
use crate::session::ACR_TWO_FACTORS;

/// `--login-url` must be an absolute `http(s)` URL or a path on the same host.
pub fn check_login_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{why}: {url:?}"));
    if url.is_empty() || url.bytes().any(|b| !b.is_ascii_graphic()) {
        return bad("must be a URL without spaces or control characters");
    }
    if url.contains('#') {
        return bad("must not have a fragment");
    }
    if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let host = rest.split(['/', '?']).next().unwrap_or("");
        if host.is_empty() || host.contains('@') {
            return bad("must name a host (and no user info)");
        }
        return Ok(());
    }
    if url.starts_with('/') && !url.starts_with("//") {
        return Ok(());
    }
    bad("must be an absolute http(s) URL or a path starting with /")
}

/// A browser navigating, as opposed to an API client: it accepts HTML.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// A single, non-empty header value; `None` when absent, sent twice or not UTF-8. (A raw
/// non-ASCII byte in a URI is UTF-8 text here: `rd` carries it percent-encoded.)
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    std::str::from_utf8(v.as_bytes())
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn scheme(headers: &HeaderMap) -> Option<&str> {
    match header(headers, "x-forwarded-proto") {
        None => Some("http"),
        Some(p) if p.eq_ignore_ascii_case("https") => Some("https"),
        Some(p) if p.eq_ignore_ascii_case("http") => Some("http"),
        Some(_) => None,
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// The URL the client asked for, from the proxy's headers: `X-Forwarded-Proto/-Host/-Uri`
/// (Traefik, Caddy), else `X-Original-URL` (ingress-nginx), else `X-Original-Host/-URI`
/// (nginx). `None` when they are missing or do not make a URL.
pub fn original_url(headers: &HeaderMap) -> Option<String> {
    let from = |host: Option<&str>, uri: Option<&str>| -> Option<String> {
        let (host, uri) = (host?, uri?);
        if !valid_host(host) || !uri.starts_with('/') {
            return None;
        }
        Some(format!("{}://{host}{uri}", scheme(headers)?))
    };
    if let Some(url) = from(
        header(headers, "x-forwarded-host"),
        header(headers, "x-forwarded-uri"),
    ) {
        return Some(url);
    }
    if let Some(url) = header(headers, "x-original-url") {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            return Some(url.to_string());
        }
    }
    from(
        header(headers, "x-original-host"),
        header(headers, "x-original-uri"),
    )
}

/// `login?rd=<original, percent-encoded>` (or `&rd=` when the login URL has a query), and
/// what a step-up needs, in OpenID Connect's words: `acr_values` for a second factor,
/// `max_age` (seconds) for a recent sign-in.
pub fn login_location(login: &str, original: Option<&str>, need: Option<StepUp>) -> String {
    use std::fmt::Write;
    let mut out = login.to_string();
    let mut sep = if login.contains('?') { '&' } else { '?' };
    if let Some(url) = original {
        let _ = write!(out, "{sep}rd={}", percent_encode(url)); // into a String: cannot fail
        sep = '&';
    }
    match need {
        Some(StepUp::SecondFactor) => {
            let _ = write!(out, "{sep}acr_values={}", percent_encode(ACR_TWO_FACTORS));
        }
        Some(StepUp::MaxAge(secs)) => {
            let _ = write!(out, "{sep}max_age={secs}");
        }
        None => {}
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}"); // into a String: cannot fail
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    #[test]
    fn login_urls() {
        for ok in [
            "https://login.example.org/login",
            "http://127.0.0.1:8081/",
            "/login?next=1",
        ] {
            assert_eq!(check_login_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "login",
            "//evil.example",
            "https://",
            "https://u@evil/",
            "javascript:alert(1)",
            "/a b",
            "/a#b",
        ] {
            assert!(check_login_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn original_url_from_each_proxy() {
        let traefik = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example.org"),
            ("x-forwarded-uri", "/a/b?x=1&y=2"),
        ]);
        assert_eq!(
            original_url(&traefik).as_deref(),
            Some("https://app.example.org/a/b?x=1&y=2")
        );
        let ingress = headers(&[("x-original-url", "https://app.example.org/p?q")]);
        assert_eq!(
            original_url(&ingress).as_deref(),
            Some("https://app.example.org/p?q")
        );
        let nginx = headers(&[
            ("x-original-host", "app.example.org"),
            ("x-original-uri", "/p"),
        ]);
        assert_eq!(
            original_url(&nginx).as_deref(),
            Some("http://app.example.org/p")
        );
        for bad in [
            headers(&[]),
            headers(&[
                ("x-forwarded-host", "evil.example/x"),
                ("x-forwarded-uri", "/p"),
            ]),
            headers(&[("x-forwarded-host", "a.example"), ("x-forwarded-uri", "p")]),
            headers(&[
                ("x-forwarded-proto", "javascript"),
                ("x-forwarded-host", "a"),
                ("x-forwarded-uri", "/"),
            ]),
            headers(&[("x-original-url", "javascript:alert(1)")]),
            headers(&[
                ("x-forwarded-host", "a.example"),
                ("x-forwarded-host", "b.example"),
                ("x-forwarded-uri", "/"),
            ]),
        ] {
            assert_eq!(original_url(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn location_carries_rd_encoded() {
        assert_eq!(
            login_location(
                "https://login.example.org/login",
                Some("https://app.example.org/a?x=1&y=2"),
                None
            ),
            "https://login.example.org/login?rd=https%3A%2F%2Fapp.example.org%2Fa%3Fx%3D1%26y%3D2"
        );
        assert_eq!(
            login_location("/login?theme=dark", Some("http://a/"), None),
            "/login?theme=dark&rd=http%3A%2F%2Fa%2F"
        );
        assert_eq!(login_location("/login", None, None), "/login");
        assert_eq!(
            login_location("/login", Some("http://a/"), Some(StepUp::SecondFactor)),
            "/login?rd=http%3A%2F%2Fa%2F&acr_values=urn%3Agatehouse%3Aacr%3A2fa"
        );
        assert_eq!(
            login_location("/login", None, Some(StepUp::MaxAge(900))),
            "/login?max_age=900"
        );
    }

    #[test]
    fn browsers_want_html() {
        assert!(wants_html(&headers(&[(
            "accept",
            "text/html,application/xhtml+xml;q=0.9"
        )])));
        assert!(!wants_html(&headers(&[("accept", "application/json")])));
        assert!(!wants_html(&headers(&[])));
    }
}
