//! The route policy: a TOML policy text, a NUL, a path, a NUL, then proxy headers (see
//! `gatehouse_fuzz::headers`: `0` X-Original-URI, `1` X-Original-Host, `2`
//! X-Original-Method, `3` X-Original-URL, `4` X-Forwarded-Uri, `5` X-Forwarded-Host, `6`
//! X-Forwarded-Method). Parsing, reading the target (in every `--original-request` mode) and
//! matching must never panic; an accepted target is canonical; in `auto` mode, headers of two
//! families are never accepted; no requirement is both anonymous and demanding.

#![no_main]

use gatehouse::policy::{
    canonical_host, canonical_path, target, OriginalRequest, Policy, Requirement, Target,
    TargetError,
};
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
    let h = headers(header_bytes, &names);
    let mut targets = Vec::new();
    for mode in OriginalRequest::NAMES.map(|n| OriginalRequest::parse(n).unwrap()) {
        let from_headers = target(&h, mode);
        if let Ok(t) = &from_headers {
            assert_eq!(canonical_path(&t.path).as_ref(), Ok(&t.path), "{t:?}");
            if let Some(host) = &t.host {
                assert_eq!(canonical_host(host).as_ref(), Ok(host), "{t:?}");
            }
            assert!(
                !t.method.is_empty() && t.method.bytes().all(|b| b.is_ascii_uppercase()),
                "{t:?}"
            );
        }
        if mode == OriginalRequest::Auto {
            let nginx = h.contains_key("x-original-uri") || h.contains_key("x-original-host");
            let ingress = h.contains_key("x-original-url");
            let forwarded =
                h.contains_key("x-forwarded-uri") || h.contains_key("x-forwarded-method");
            if [nginx, ingress, forwarded].iter().filter(|x| **x).count() > 1 {
                assert_eq!(from_headers, Err(TargetError::Ambiguous), "{h:?}");
            }
        }
        targets.push(from_headers);
    }

    let Some(policy) = policy else { return };
    for t in targets.iter().flatten() {
        if let Ok(r) = policy.requirement(t) {
            sound(r);
        }
    }
    if let Ok(Ok(path)) = std::str::from_utf8(path).map(canonical_path) {
        let t = Target {
            host: Some("app.example.org".into()),
            path,
            method: "GET".into(),
        };
        sound(policy.requirement(&t).expect("a target with a host"));
    }
});

fn sound(r: &Requirement) {
    assert!(
        !(r.anonymous && (!r.scopes.is_empty() || !r.roles.is_empty())),
        "{r:?}"
    );
}
