//! The in-process cache in front of the store (moka).
//!
//! A hit holds the session *and the headers already built for it* (the signed JWT among
//! them), so answering a hit costs no store call, no signing and no allocation beyond the
//! response. An entry lives until the earliest of: the JWT's refresh point, the session's
//! expiry, `--cache-ttl`. Concurrent misses for one key share one store call.
//!
//! The cache must never outlive a revocation: [`SessionCache::apply`] drops what the store
//! reports, and an entry whose store read began before a revocation of its token (or a
//! flush) is never served, however late it landed in the cache: each entry carries the
//! epoch at which its read began, and each revocation stamps its token's slot with the
//! epoch it created (see [`SessionCache::is_current`]). So after `revoke` returns, neither a
//! request that joined an older fill nor an entry left by a fill whose request went away
//! can answer for the revoked session. While the store's revocation channel is not
//! followed, nothing is cached at all. It never caches a decision, only the session.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// Slots of the revocation stamps: 4,096 × 8 B = 32 KiB, allocated once. A collision only
/// makes an unrelated entry read the store once more.
const REVOKED_SLOTS: usize = 1 << 12;
/// Fills that raced with a revocation are tried again this many times, then given up (503).
const FILL_ATTEMPTS: usize = 3;

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
    /// `X-Auth-Request-Amr`: the session's `amr`, space-separated, when it has one.
    pub amr: Option<HeaderValue>,
    /// How long this entry may be served from now on (set when it is built).
    pub ttl: Duration,
    /// The cache's epoch when the store read behind this entry began.
    pub epoch: u64,
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
    #[error("the session was revoked while it was being read, {FILL_ATTEMPTS} times")]
    Contended,
}

impl FillError {
    pub fn fault(&self) -> crate::error::Fault {
        use crate::error::Fault;
        match self {
            FillError::NotFound => Fault::Caller,
            FillError::Store(e) => e.fault(),
            FillError::Sign(_) => Fault::Bug,
            FillError::Contended => Fault::Dependency,
        }
    }
}

pub struct SessionCache {
    entries: Cache<CacheKey, Arc<Entry>>,
    negative: NegativeTable,
    /// Bumped by every invalidation.
    epoch: AtomicU64,
    /// Per slot of token hashes: the epoch created by the latest revocation of one of them.
    revoked: Box<[AtomicU64]>,
    /// The epoch created by the latest flush.
    flushed: AtomicU64,
    /// The store's revocation channel is followed: entries may be cached and served.
    following: AtomicBool,
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
            revoked: (0..REVOKED_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            flushed: AtomicU64::new(0),
            following: AtomicBool::new(false),
        }
    }

    /// Whether entries may be cached and served: the store's revocation channel is
    /// followed. Otherwise every request reads the store.
    #[inline]
    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }

    /// The current epoch, to be stored in an [`Entry`] whose store read begins now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn revoked_slot(&self, hash: &TokenHash) -> &AtomicU64 {
        let b = &hash.0;
        &self.revoked[u16::from_le_bytes([b[2], b[3]]) as usize & (REVOKED_SLOTS - 1)]
    }

    /// Whether `entry` was read from the store after the latest revocation of its token
    /// and the latest flush. An invalidation is applied after the store has deleted the
    /// session (locally, or as the store's broadcast), so a read that began after its epoch
    /// cannot have seen the session.
    #[inline]
    fn is_current(&self, entry: &Entry, hash: &TokenHash) -> bool {
        entry.epoch >= self.flushed.load(Ordering::Acquire)
            && entry.epoch >= self.revoked_slot(hash).load(Ordering::Acquire)
    }

    /// A cached entry that may be served, if any. An entry that predates a revocation of
    /// its token (a fill that landed late) reads as a miss; `get_or_fill` then replaces it.
    /// (Not dropped here: awaiting moka's invalidation would make every hit's future larger.)
    #[inline]
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.entries.get(key).await?;
        self.is_current(&entry, &key.hash).then_some(entry)
    }

    #[inline]
    pub fn is_known_missing(&self, hash: &TokenHash) -> bool {
        self.negative.contains(hash)
    }

    /// Loads `key` with `fill(epoch)` unless another request is already loading it, in which
    /// case this one waits for that result. A result whose read began before a revocation
    /// of its token (this request may have joined a fill started before the revocation) is
    /// dropped and read again. Unknown sessions are remembered in the negative cache.
    pub async fn get_or_fill<F, Fut>(
        &self,
        key: CacheKey,
        fill: F,
    ) -> Result<Arc<Entry>, Arc<FillError>>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<Arc<Entry>, FillError>>,
    {
        for _ in 0..FILL_ATTEMPTS {
            let result = self
                .entries
                .try_get_with(key, async { fill(self.epoch()).await })
                .await;
            match result {
                Ok(entry) if !self.is_current(&entry, &key.hash) => {
                    self.entries.invalidate(&key).await;
                }
                Err(e) if matches!(*e, FillError::NotFound) => {
                    self.negative.insert(&key.hash);
                    return Err(e);
                }
                result => return result,
            }
        }
        Err(Arc::new(FillError::Contended))
    }

    /// Applies an invalidation from the store; returns how many sessions it named.
    pub async fn apply(&self, inv: Invalidation) -> u64 {
        match inv {
            Invalidation::Key(hash) => {
                let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                self.revoked_slot(&hash).fetch_max(epoch, Ordering::AcqRel);
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
            Invalidation::Followed => {
                // Revocations may have been missed before: flush, then trust again.
                self.flush();
                self.following.store(true, Ordering::Release);
                0
            }
            Invalidation::NotFollowed => {
                self.following.store(false, Ordering::Release);
                self.flush();
                0
            }
        }
    }

    /// Drops every entry (each is filled again from the store on its next request).
    pub fn flush(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.flushed.fetch_max(epoch, Ordering::AcqRel);
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

    fn entry(epoch: u64) -> Arc<Entry> {
        Arc::new(Entry {
            session: Session::new("alice", 0, u64::MAX),
            authorization: HeaderValue::from_static("Bearer x"),
            user: HeaderValue::from_static("alice"),
            email: None,
            amr: None,
            ttl: Duration::from_secs(60),
            epoch,
        })
    }

    fn key(n: u8) -> CacheKey {
        CacheKey {
            hash: hash(n),
            method: Method::Cookie,
        }
    }

    fn following() -> Arc<SessionCache> {
        let cache = Arc::new(SessionCache::new(100));
        cache.following.store(true, Ordering::Release);
        cache
    }

    /// A store whose reads see the session as it is when they begin, and answer only when
    /// the test opens the gate: "hold the store read, revoke meanwhile, then release".
    struct HeldStore {
        exists: AtomicBool,
        gate: tokio::sync::Semaphore,
        reads: AtomicU64,
    }

    impl HeldStore {
        fn new() -> Arc<HeldStore> {
            Arc::new(HeldStore {
                exists: AtomicBool::new(true),
                gate: tokio::sync::Semaphore::new(0),
                reads: AtomicU64::new(0),
            })
        }

        async fn read(&self, epoch: u64) -> Result<Arc<Entry>, FillError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let existed = self.exists.load(Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
            if existed {
                Ok(entry(epoch))
            } else {
                Err(FillError::NotFound)
            }
        }
    }

    /// The audit's race: a request that joins a fill begun before a revocation must not be
    /// answered with the revoked session, nor may the fill leave it cached.
    #[tokio::test(start_paused = true)]
    async fn a_fill_begun_before_a_revocation_serves_no_one() {
        let cache = following();
        let store = HeldStore::new();
        let k = key(1);
        let fill = |cache: Arc<SessionCache>, store: Arc<HeldStore>| async move {
            cache
                .get_or_fill(k, |epoch| {
                    let store = store.clone();
                    async move { store.read(epoch).await }
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        // A's read begins while the session exists, and is held.
        let a = tokio::spawn(fill(cache.clone(), store.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        // Revoked: the store deletes, then the cache hears of it. `revoke` has returned.
        store.exists.store(false, Ordering::SeqCst);
        cache.apply(Invalidation::Key(k.hash)).await;
        // B arrives after the revocation and joins A's fill, still held.
        let b = tokio::spawn(fill(cache.clone(), store.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "B joined A's read");
        // Release: A's read answers with the session as it was before the revocation.
        store.gate.add_permits(10);
        for (name, r) in [("A", a.await.unwrap()), ("B", b.await.unwrap())] {
            assert_eq!(r, Err("no such session".to_string()), "{name}");
        }
        assert!(
            cache.get(&k).await.is_none(),
            "the stale entry stays cached"
        );
        assert!(store.reads.load(Ordering::SeqCst) >= 2, "read again");
    }

    /// An entry that lands in the cache after its revocation was applied (its request went
    /// away before checking it) is never served.
    #[tokio::test]
    async fn an_entry_that_landed_after_its_revocation_is_never_served() {
        let cache = following();
        let k = key(2);
        let before = cache.epoch();
        cache.apply(Invalidation::Key(k.hash)).await;
        cache.entries.insert(k, entry(before)).await;
        assert!(cache.get(&k).await.is_none());
        // One read after the revocation is served as usual, and so are other sessions.
        cache.entries.insert(k, entry(cache.epoch())).await;
        assert!(cache.get(&k).await.is_some());
        let other = key(3);
        cache.entries.insert(other, entry(before)).await;
        assert!(
            cache.get(&other).await.is_some(),
            "another token's entry stays"
        );
        // A flush makes every older entry stale.
        cache.flush();
        cache.entries.insert(other, entry(before)).await;
        assert!(cache.get(&other).await.is_none());
    }

    #[tokio::test]
    async fn nothing_is_served_while_the_channel_is_not_followed() {
        let cache = following();
        assert!(cache.is_following());
        cache.entries.insert(key(4), entry(cache.epoch())).await;
        cache.apply(Invalidation::NotFollowed).await;
        assert!(!cache.is_following());
        assert!(
            cache.get(&key(4)).await.is_none(),
            "entries from before the gap are flushed when it begins"
        );
        // Filled during the gap (read from the store, while revocations went unheard): the
        // flush when the channel is followed again is what must drop it.
        cache.entries.insert(key(5), entry(cache.epoch())).await;
        cache.apply(Invalidation::Followed).await;
        assert!(cache.is_following());
        assert!(
            cache.get(&key(5)).await.is_none(),
            "an entry filled while the channel was not followed survived the reconnect"
        );
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
