//! The path canonicaliser on arbitrary strings. Whatever it accepts must come out in the
//! one form that policy rules are matched against: rooted, no dot segments, no empty
//! segments, no query, fragment, backslash or control character, escapes only for what is
//! not unreserved (upper-case hex), and canonical already (idempotent).

#![no_main]

use gatehouse::policy::canonical_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = canonical_path(raw) else {
        return;
    };
    assert!(c.starts_with('/'), "{raw:?} -> {c:?}: not rooted");
    assert!(!c.contains("//"), "{raw:?} -> {c:?}: empty segment");
    assert!(
        !c.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} -> {c:?}: dot segment"
    );
    assert!(
        !c.contains(['?', '#', '\\']),
        "{raw:?} -> {c:?}: query, fragment or backslash"
    );
    assert!(
        c.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "{raw:?} -> {c:?}: control or non-ASCII byte"
    );
    let b = c.as_bytes();
    for (i, _) in c.match_indices('%') {
        let hex = |j: usize| {
            b.get(j)
                .copied()
                .filter(|x| x.is_ascii_digit() || (b'A'..=b'F').contains(x))
        };
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            panic!("{raw:?} -> {c:?}: bad escape at {i}");
        };
        let byte = u8::from_str_radix(std::str::from_utf8(&[hi, lo]).unwrap(), 16).unwrap();
        assert!(
            !(byte.is_ascii_alphanumeric() || b"-._~/\\".contains(&byte) || byte < 0x20),
            "{raw:?} -> {c:?}: escape of {byte:#04x} left in"
        );
    }
    assert_eq!(canonical_path(&c), Ok(c.clone()), "{raw:?}: not idempotent");
});
