//! Helpers shared by the fuzz targets in `fuzz_targets/`: turning fuzz bytes into the
//! request headers gatehouse reads. Never used outside fuzzing.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// Headers from fuzz bytes: one header per `\n`-separated line, whose first byte picks the
/// name (`'0'` is `names[0]`, `'1'` is `names[1]`, ..., wrapping around) and whose rest is
/// the value. Lines that `HeaderValue::from_bytes` refuses are dropped, as hyper would never
/// hand gatehouse such a value. Names may repeat: duplicates are part of what is fuzzed.
pub fn headers(data: &[u8], names: &[HeaderName]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let name = &names[usize::from(pick.wrapping_sub(b'0')) % names.len()];
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.append(name.clone(), value);
        }
    }
    map
}

/// `data` split at its first NUL: text before, the rest after (empty without a NUL).
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
