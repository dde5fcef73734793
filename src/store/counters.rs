//! Counters for throttles: failed attempts with the time of the last one, and fixed-window
//! request counts. With Redis they live there, so that every instance counts the same
//! attempts (N replicas must not give an attacker N times the tries): each operation is one
//! round trip (a small Lua script, one key, so Redis Cluster takes it). With the embedded
//! store there is one instance, and the counters live in its memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::redis::RedisStore;
use super::{Store, StoreError};

/// Failures of a key: how many, and when the last one was (Unix milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub last_ms: u64,
}

pub enum Counters {
    Local(Mutex<HashMap<String, Local>>),
    Redis(RedisStore),
}

/// One key's counter in memory; forgotten at `until`.
pub struct Local {
    count: u32,
    last_ms: u64,
    until: Instant,
}

/// Keys kept in memory at most; past it, the expired ones go first.
const LOCAL_KEYS: usize = 100_000;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Counters {
    /// In Redis when `store` is Redis; in this process's memory otherwise.
    pub fn for_store(store: &Store) -> Counters {
        match store.redis() {
            Some(r) => Counters::Redis(r.clone()),
            None => Counters::Local(Mutex::new(HashMap::new())),
        }
    }

    /// In this process's memory (tests, the embedded store).
    pub fn local() -> Counters {
        Counters::Local(Mutex::new(HashMap::new()))
    }

    fn map(m: &Mutex<HashMap<String, Local>>) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        let mut map = m.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > LOCAL_KEYS {
            let now = Instant::now();
            map.retain(|_, e| e.until > now);
        }
        map
    }

    /// Counts one failure of `key` now; the count is forgotten `keep` after the last one.
    pub async fn fail(&self, key: &str, keep: Duration) -> Result<(), StoreError> {
        let now = now_ms();
        match self {
            Counters::Local(m) => {
                let mut map = Self::map(m);
                let until = Instant::now() + keep;
                let e = map.entry(key.to_owned()).or_insert(Local {
                    count: 0,
                    last_ms: now,
                    until,
                });
                if e.until <= Instant::now() {
                    e.count = 0;
                }
                e.count = e.count.saturating_add(1);
                e.last_ms = now;
                e.until = until;
                Ok(())
            }
            Counters::Redis(r) => r.counter_fail(key, now, keep).await,
        }
    }

    /// The failures of `key` still counted.
    pub async fn failures(&self, key: &str) -> Result<Failures, StoreError> {
        match self {
            Counters::Local(m) => {
                let map = Self::map(m);
                Ok(map.get(key).filter(|e| e.until > Instant::now()).map_or(
                    Failures::default(),
                    |e| Failures {
                        count: e.count,
                        last_ms: e.last_ms,
                    },
                ))
            }
            Counters::Redis(r) => {
                let (count, last_ms) = r.counter_failures(key).await?;
                Ok(Failures { count, last_ms })
            }
        }
    }

    /// Forgets `key`'s failures (a success).
    pub async fn clear(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Counters::Local(m) => {
                Self::map(m).remove(key);
                Ok(())
            }
            Counters::Redis(r) => r.counter_clear(key).await,
        }
    }

    /// Counts one event of `key` in a fixed window of `window` that starts at its first
    /// event: the count so far (this one included) and how long the window still runs.
    pub async fn hit(&self, key: &str, window: Duration) -> Result<(u32, Duration), StoreError> {
        match self {
            Counters::Local(m) => {
                let mut map = Self::map(m);
                let now = Instant::now();
                let e = map.entry(key.to_owned()).or_insert(Local {
                    count: 0,
                    last_ms: 0,
                    until: now + window,
                });
                if e.until <= now {
                    e.count = 0;
                    e.until = now + window;
                }
                e.count = e.count.saturating_add(1);
                Ok((e.count, e.until - now))
            }
            Counters::Redis(r) => r.counter_hit(key, window).await,
        }
    }
}

/// The key under which an address is counted: IPv4 as it is, IPv6 by its /64 (one host
/// usually holds a whole /64, and rotating through it must not buy fresh attempts).
pub fn address_key(ip: std::net::IpAddr) -> String {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_failures_count_and_clear() {
        let c = Counters::local();
        assert_eq!(c.failures("a").await.unwrap().count, 0);
        c.fail("a", Duration::from_secs(60)).await.unwrap();
        c.fail("a", Duration::from_secs(60)).await.unwrap();
        let f = c.failures("a").await.unwrap();
        assert_eq!(f.count, 2);
        assert!(now_ms() - f.last_ms < 5_000);
        c.clear("a").await.unwrap();
        assert_eq!(c.failures("a").await.unwrap().count, 0);
        c.fail("b", Duration::ZERO).await.unwrap();
        assert_eq!(
            c.failures("b").await.unwrap().count,
            0,
            "kept past its time"
        );
    }

    #[tokio::test]
    async fn local_hits_count_in_a_window() {
        let c = Counters::local();
        let w = Duration::from_secs(60);
        assert_eq!(c.hit("ip", w).await.unwrap().0, 1);
        let (n, left) = c.hit("ip", w).await.unwrap();
        assert_eq!(n, 2);
        assert!(left > Duration::from_secs(50));
        assert_eq!(c.hit("other", w).await.unwrap().0, 1);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:ffff:1:2:3".parse().unwrap());
        let c = address_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(address_key("10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(address_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
    }
}
