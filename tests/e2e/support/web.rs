//! A browser-like client for the accounts pages: a cookie jar, forms, and the mail that
//! gatehouse writes as `.eml` files.

use super::*;

/// One browser: its cookies, sent to one address.
pub struct Browser {
    addr: String,
    pub cookies: Vec<(String, String)>,
    pub user_agent: String,
}

impl Browser {
    pub fn new(addr: impl Display) -> Browser {
        Browser {
            addr: addr.to_string(),
            cookies: Vec::new(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
                .into(),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a cookie as a browser holding it would send it.
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.retain(|(n, _)| n != name);
        self.cookies.push((name.to_string(), value.to_string()));
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Keeps what `Set-Cookie` says: a value, or a removal (`Max-Age=0`).
    fn remember(&mut self, r: &Response) {
        for set in r.header_all("set-cookie") {
            let first = set.split(';').next().unwrap_or("");
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            let gone = set.to_ascii_lowercase().contains("max-age=0");
            self.cookies.retain(|(n, _)| n != name);
            if !gone {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let cookie = self.cookie_header();
        let ua = self.user_agent.clone();
        let mut headers: Vec<(&str, &str)> = vec![("User-Agent", &ua)];
        if !cookie.is_empty() {
            headers.push(("Cookie", &cookie));
        }
        headers.extend_from_slice(extra);
        let r = http_request(method, &self.addr, path, &headers, body);
        self.remember(&r);
        r
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// POSTs a form as a browser on this site does (with `Origin`).
    pub fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let origin = format!("http://{}", self.addr);
        self.post_with(path, fields, &[("Origin", &origin)])
    }

    pub fn post_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Response {
        let body = form_encode(fields);
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        headers.extend_from_slice(extra);
        self.request("POST", path, &headers, body.as_bytes())
    }

    /// A JSON request as a single-page app on this site sends it; the parsed answer.
    pub fn json(
        &mut self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (Response, serde_json::Value) {
        let origin = format!("http://{}", self.addr);
        let text = body.to_string();
        let r = self.request(
            method,
            path,
            &[("Content-Type", "application/json"), ("Origin", &origin)],
            text.as_bytes(),
        );
        let v = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
        (r, v)
    }

    /// POSTs `fields` to `action` with the CSRF token of the page `html` (one just received).
    pub fn post_with_csrf_of(
        &mut self,
        html: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Response {
        let csrf = hidden(html, "csrf").unwrap_or_else(|| panic!("no csrf in: {html}"));
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all)
    }

    /// GETs `page`, then POSTs `fields` to `action` with the page's CSRF token.
    pub fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Response {
        let form = self.get(page);
        let csrf = hidden(&form.body, "csrf")
            .unwrap_or_else(|| panic!("no csrf on {page}: {}", form.body));
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all)
    }
}

/// `gatehouse user create` on the accounts database in `data_dir`, the password on stdin;
/// panics with the output when it fails.
pub fn create_user(data_dir: &str, username: &str, email: &str, password: &str) {
    let out = gatehouse_cli_stdin(
        &[
            "user",
            "create",
            "--data-dir",
            data_dir,
            "--username",
            username,
            "--email",
            email,
        ],
        password,
    );
    assert!(out.status.success(), "user create {username}: {out:?}");
}

/// `application/x-www-form-urlencoded`.
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of the hidden input `name` in an HTML page.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let start = html.find(&needle)? + needle.len();
    let end = html[start..].find('"')?;
    Some(html_unescape(&html[start..start + end]))
}

/// Undoes HTML escaping: the named entities askama writes and numeric ones (`&#38;`).
pub fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The mail gatehouse wrote under `<data_dir>/mail`, oldest first.
pub fn mails(data_dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = fs::read_dir(data_dir.join("mail"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                // Not a file still being written (gatehouse writes `.name.tmp`, then renames).
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|m| {
            if m.contains("Content-Transfer-Encoding: quoted-printable") {
                decode_quoted_printable(&m)
            } else {
                m
            }
        })
        .collect()
}

/// RFC 2045 quoted-printable: soft line breaks go, `=XX` becomes its byte.
pub fn decode_quoted_printable(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits for the `n`th mail (mail is written off the request) and returns it.
pub fn wait_mail(data_dir: &Path, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = mails(data_dir);
        if all.len() >= n {
            return all[n - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "mail {n} never came; have {}:\n{all:#?}",
            all.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a mail containing `needle` (mail is written off the request) and returns it.
pub fn wait_mail_with(data_dir: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = mails(data_dir).into_iter().find(|m| m.contains(needle)) {
            return m;
        }
        assert!(Instant::now() < deadline, "no mail with {needle:?} came");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path and query of the first link in `mail` containing `needle` (e.g.
/// `/password/reset?token=`).
pub fn link_in(mail: &str, needle: &str) -> String {
    let start = mail
        .find(needle)
        .unwrap_or_else(|| panic!("no {needle} in:\n{mail}"));
    let end = mail[start..]
        .find(|c: char| c.is_whitespace())
        .map_or(mail.len(), |e| start + e);
    mail[start..end].to_string()
}

#[cfg(feature = "accounts")]
/// The 6-digit code at 30-second `step` of an authenticator key as pages show it (base32,
/// spaces allowed), by gatehouse's own RFC 6238 code (checked against the RFC's vectors in its
/// unit tests).
pub fn totp_code(key: &str, step: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buffer, mut bits, mut raw) = (0u32, 0u32, Vec::new());
    for c in key.bytes().filter(|b| !b.is_ascii_whitespace()) {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base32: {key}"));
        buffer = (buffer << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            raw.push((buffer >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    format!("{:06}", ::gatehouse::accounts::factors::code_at(&raw, step))
}

#[cfg(feature = "accounts")]
/// The current 30-second step, once it has at least 8 s left (so that a code of it is still
/// current when the server checks it).
pub fn settled_totp_step() -> u64 {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() % 30 > 22 {
        std::thread::sleep(Duration::from_millis(200));
    }
    now() / 30
}
