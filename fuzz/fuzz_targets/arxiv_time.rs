//! Small parsers and encoders of request data: arXiv's ISO 8601 times, the login redirect's
//! original URL (from proxy headers, see `gatehouse_fuzz::headers`: `0` X-Forwarded-Proto,
//! `1` X-Forwarded-Host, `2` X-Forwarded-Uri, `3` X-Original-URL, `4` X-Original-Host, `5`
//! X-Original-URI, `6` Accept) and its percent-encoding. Never panics; `percent_encode`
//! leaves only unreserved characters and `%XX`, and decodes back to its input.

#![no_main]

use gatehouse::arxiv::{iso8601, time};
use gatehouse::forward::{
    check_login_url, login_location, original_url, percent_encode, wants_html,
};
use gatehouse_fuzz::headers;
use hyper::header::HeaderName;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 7] = [
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-original-url",
    "x-original-host",
    "x-original-uri",
    "accept",
];

fuzz_target!(|data: &[u8]| {
    let h = headers(data, &NAMES.map(HeaderName::from_static));
    let _ = wants_html(&h);
    let original = original_url(&h);
    if let Some(url) = &original {
        let lower = url.to_ascii_lowercase();
        assert!(
            lower.starts_with("http://") || lower.starts_with("https://"),
            "{url:?}"
        );
        assert!(!url.contains(['\r', '\n', '\0']), "{url:?}");
    }

    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(t) = iso8601(s) {
        assert!(t.is_finite(), "{s:?} -> {t}");
    }
    let _ = time(&serde_json::Value::String(s.to_string()));

    let encoded = percent_encode(s);
    assert_eq!(
        decode(&encoded).as_deref(),
        Some(s.as_bytes()),
        "{s:?} -> {encoded:?}"
    );
    if check_login_url(s).is_ok() {
        // With a step-up's need too: the login URL always stays the prefix.
        let need = match data.len() % 3 {
            0 => None,
            1 => Some(gatehouse::policy::StepUp::SecondFactor),
            _ => Some(gatehouse::policy::StepUp::MaxAge(data.len() as u64)),
        };
        let location = login_location(s, original.as_deref(), need);
        assert!(location.starts_with(s), "{location:?}");
    }
});

/// Inverse of `percent_encode`; `None` for anything it would not have written.
fn decode(e: &str) -> Option<Vec<u8>> {
    let b = e.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                if !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                {
                    return None;
                }
                let byte = u8::from_str_radix(hex, 16).ok()?;
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    return None; // unreserved: must not have been escaped
                }
                out.push(byte);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}
