//! The in-process cache in front of the store (moka).
//!
//! A hit holds the session *and the headers already built for it* (the signed JWT among
//! them), so answering a hit costs no store call, no signing and no allocation beyond the
//! response. An entry lives until the earliest of: the JWT's refresh point, the session's
//! expiry, `--cache-ttl`. Concurrent misses for one key share one store call.
//!
//! The cache must never outlive a revocation: [`SessionCache::apply`] drops what the store
//! reports, and a fill that raced with any invalidation is dropped after it lands (see
//! `epoch`). It never caches a decision, only the session.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use moka::future::Cache;
use moka::Expiry;

use crate::credential::{Method, TokenHash};
use crate::session::Session;
use crate::store::Invalidation;

/// Unknown tokens are remembered this long, so that replaying one costs no store call.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Slots of the negative table: 65,536 × 16 B = 1 MiB, allocated once.
const NEGATIVE_SLOTS: usize = 1 << 16;

/// The same token may arrive as a cookie or as a bearer token; the JWT says which
/// (`auth_method`), so the two are cached apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub hash: TokenHash,
    pub method: Method,
}

/// What a hit answers with.
pub struct Entry {
    pub session: Session,
    /// `Bearer <jwt>`.
    pub authorization: HeaderValue,
    pub user: HeaderValue,
    pub email: Option<HeaderValue>,
    /// How long this entry may be served from now on (set when it is built).
    pub ttl: Duration,
}

struct PerEntry;

impl Expiry<CacheKey, Arc<Entry>> for PerEntry {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Why a fill produced no entry.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("no such session")]
    NotFound,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("signing failed: {0}")]
    Sign(String),
}

pub struct SessionCache {
    entries: Cache<CacheKey, Arc<Entry>>,
    negative: NegativeTable,
    /// Bumped by every invalidation; a fill that saw it change may hold a revoked session.
    epoch: AtomicU64,
}

impl SessionCache {
    pub fn new(capacity: u64) -> Self {
        SessionCache {
            entries: Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntry)
                .build(),
            negative: NegativeTable::new(),
            epoch: AtomicU64::new(0),
        }
    }

    #[inline]
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key).await
    }

    #[inline]
    pub fn is_known_missing(&self, hash: &TokenHash) -> bool {
        self.negative.contains(hash)
    }

    /// Loads `key` with `fill` unless another request is already loading it, in which case
    /// this one waits for that result. Unknown sessions are remembered in the negative cache.
    pub async fn get_or_fill<F>(&self, key: CacheKey, fill: F) -> Result<Arc<Entry>, Arc<FillError>>
    where
        F: Future<Output = Result<Arc<Entry>, FillError>>,
    {
        let epoch = self.epoch.load(Ordering::Acquire);
        let result = self.entries.try_get_with(key, fill).await;
        if self.epoch.load(Ordering::Acquire) != epoch {
            // A revocation arrived while this fill was in flight: the entry may predate it.
            self.entries.invalidate(&key).await;
        }
        if let Err(e) = &result {
            if matches!(**e, FillError::NotFound) {
                self.negative.insert(&key.hash);
            }
        }
        result
    }

    /// Applies an invalidation from the store; returns how many sessions it named.
    pub async fn apply(&self, inv: Invalidation) -> u64 {
        match inv {
            Invalidation::Key(hash) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                for method in [Method::Bearer, Method::Cookie] {
                    self.entries.invalidate(&CacheKey { hash, method }).await;
                }
                self.negative.forget(&hash);
                1
            }
            Invalidation::All => {
                self.flush();
                0
            }
        }
    }

    /// Drops every entry (each is filled again from the store on its next request).
    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}

/// Tokens the store did not know, each remembered for [`NEGATIVE_TTL`]: a fixed table indexed
/// by 16 bits of the token hash, each slot holding 64 other bits of it and when it was
/// stored. Lossy on purpose: a newer unknown token takes the slot of an older one. So a flood
/// of random tokens allocates nothing, its memory is fixed (1 MiB) whatever the number of
/// tokens, and each token costs at most one store read.
///
/// Slots are two relaxed atomics, so a reader may see one slot's tag with its neighbour
/// write's time. Both belong to tokens the store reported missing within the last
/// `NEGATIVE_TTL` or so; the worst case is a missing token reported missing a little
/// longer, or a store read that could have been saved. A known session is never reported
/// missing unless its 80 bits collide with a missing token's (2^-80).
struct NegativeTable {
    slots: Box<[NegativeSlot]>,
    origin: Instant,
}

#[derive(Default)]
struct NegativeSlot {
    tag: AtomicU64,
    /// Milliseconds since `origin` when stored, plus one; 0 is an empty slot.
    at: AtomicU64,
}

impl NegativeTable {
    fn new() -> Self {
        NegativeTable {
            slots: (0..NEGATIVE_SLOTS)
                .map(|_| NegativeSlot::default())
                .collect(),
            origin: Instant::now(),
        }
    }

    /// The slot and tag of a hash: the bytes are uniformly distributed already.
    fn locate(&self, hash: &TokenHash) -> (&NegativeSlot, u64) {
        let b = &hash.0;
        let index = u16::from_le_bytes([b[0], b[1]]) as usize & (NEGATIVE_SLOTS - 1);
        let tag = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        (&self.slots[index], tag)
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    fn contains(&self, hash: &TokenHash) -> bool {
        let (slot, tag) = self.locate(hash);
        if slot.tag.load(Ordering::Relaxed) != tag {
            return false;
        }
        let at = slot.at.load(Ordering::Relaxed);
        at != 0 && self.now().saturating_sub(at) < NEGATIVE_TTL.as_millis() as u64
    }

    fn insert(&self, hash: &TokenHash) {
        let (slot, tag) = self.locate(hash);
        slot.at.store(self.now(), Ordering::Relaxed);
        slot.tag.store(tag, Ordering::Relaxed);
    }

    /// The store now knows this token: forget it was missing.
    fn forget(&self, hash: &TokenHash) {
        let (slot, tag) = self.locate(hash);
        if slot.tag.load(Ordering::Relaxed) == tag {
            slot.at.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> TokenHash {
        TokenHash::of(&format!("gts_token_{n}"))
    }

    #[test]
    fn the_negative_table_remembers_forgets_and_never_grows() {
        let table = NegativeTable::new();
        assert_eq!(table.slots.len(), NEGATIVE_SLOTS);
        let (a, b) = (hash(1), hash(2));
        assert!(!table.contains(&a));
        table.insert(&a);
        assert!(table.contains(&a));
        assert!(!table.contains(&b));
        table.forget(&b); // another tag: leaves a alone
        assert!(table.contains(&a));
        table.forget(&a);
        assert!(!table.contains(&a));
        // Two hashes sharing a slot: the newer one takes it, the older is simply unknown.
        let mut c = a;
        c.0[8] ^= 1; // same index bytes, another tag
        table.insert(&a);
        table.insert(&c);
        assert!(table.contains(&c));
        assert!(!table.contains(&a));
        for n in 0..=255 {
            table.insert(&hash(n));
        }
        assert_eq!(table.slots.len(), NEGATIVE_SLOTS);
    }

    #[test]
    fn a_negative_entry_expires() {
        let mut table = NegativeTable::new();
        let a = hash(3);
        table.insert(&a);
        // Move the origin back instead of sleeping: the entry is now older than the TTL.
        assert!(table.contains(&a));
        table.origin -= NEGATIVE_TTL;
        assert!(!table.contains(&a));
    }
}
