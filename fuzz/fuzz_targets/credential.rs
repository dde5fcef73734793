//! The credential reader: `Authorization` and `Cookie` headers from fuzz bytes (see
//! `gatehouse_fuzz::headers`: a line starting with `0` is an Authorization header, `1` a
//! Cookie header), then the token check on what was read and on the raw input.
//! Must never panic, and must keep its promises: a present Authorization header always
//! decides (never a fallback to the cookie); a bearer token is never empty or spaced.

#![no_main]

use gatehouse::credential::{check, extract, Method, TOKEN_LEN};
use gatehouse_fuzz::headers;
use hyper::header::{AUTHORIZATION, COOKIE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let h = headers(data, &[AUTHORIZATION, COOKIE]);
    let has_auth = h.contains_key(AUTHORIZATION);
    match extract(&h, "gatehouse_session") {
        Ok(Some((method, token))) => {
            match method {
                Method::Bearer => {
                    assert_eq!(h.get_all(AUTHORIZATION).iter().count(), 1);
                    assert!(!token.is_empty(), "empty bearer token");
                    assert!(
                        !token.contains([' ', '\t']),
                        "spaced bearer token {token:?}"
                    );
                }
                Method::Cookie => assert!(!has_auth, "fell back to the cookie"),
            }
            token_check(token);
        }
        Ok(None) => assert!(!has_auth, "Authorization present but no credential"),
        Err(_) => assert!(has_auth, "error without an Authorization header"),
    }
    if let Ok(raw) = std::str::from_utf8(data) {
        token_check(raw);
    }
});

fn token_check(token: &str) {
    if check(token).is_some() {
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "accepted token with bytes outside base64url: {token:?}"
        );
    }
}
