//! The route policy: a TOML policy text, a NUL, a path, a NUL, then proxy headers (see
//! `gatehouse_fuzz::headers`: `0` X-Original-URI, `1` X-Original-Host, `2`
//! X-Original-Method, `3` X-Original-URL, `4` X-Forwarded-Uri, `5` X-Forwarded-Host, `6`
//! X-Forwarded-Method). Parsing, reading the target and matching must never panic; an
//! accepted target is canonical; no requirement is both anonymous and demanding.

#![no_main]

use gatehouse::policy::{canonical_path, target, Policy, Requirement, Target};
use gatehouse_fuzz::{headers, split_nul};
use hyper::header::HeaderName;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 7] = [
    "x-original-uri",
    "x-original-host",
    "x-original-method",
    "x-original-url",
    "x-forwarded-uri",
    "x-forwarded-host",
    "x-forwarded-method",
];

fuzz_target!(|data: &[u8]| {
    let (text, rest) = split_nul(data);
    let (path, header_bytes) = split_nul(rest);
    let policy = std::str::from_utf8(text)
        .ok()
        .and_then(|t| Policy::parse(t).ok());

    let names = NAMES.map(HeaderName::from_static);
    let from_headers = target(&headers(header_bytes, &names));
    if let Ok(t) = &from_headers {
        assert_eq!(canonical_path(&t.path).as_ref(), Ok(&t.path), "{t:?}");
        assert!(
            !t.method.is_empty() && t.method.bytes().all(|b| b.is_ascii_uppercase()),
            "{t:?}"
        );
    }

    let Some(policy) = policy else { return };
    if let Ok(t) = &from_headers {
        sound(policy.requirement(t));
    }
    if let Ok(path) = std::str::from_utf8(path).map(canonical_path) {
        if let Ok(path) = path {
            let t = Target {
                host: "app.example.org".into(),
                path,
                method: "GET".into(),
            };
            sound(policy.requirement(&t));
        }
    }
});

fn sound(r: &Requirement) {
    assert!(
        !(r.anonymous && (!r.scopes.is_empty() || !r.roles.is_empty())),
        "{r:?}"
    );
}
