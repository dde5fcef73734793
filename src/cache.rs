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
const NEGATIVE_CAPACITY: u64 = 65_536;

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
    negative: Cache<TokenHash, ()>,
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
            negative: Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY.min(capacity))
                .time_to_live(NEGATIVE_TTL)
                .build(),
            epoch: AtomicU64::new(0),
        }
    }

    #[inline]
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key).await
    }

    pub async fn is_known_missing(&self, hash: &TokenHash) -> bool {
        self.negative.contains_key(hash)
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
                self.negative.insert(key.hash, ()).await;
            }
        }
        result
    }

    /// Applies an invalidation from the store; returns how many sessions it named.
    pub async fn apply(&self, inv: Invalidation) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match inv {
            Invalidation::Key(hash) => {
                for method in [Method::Bearer, Method::Cookie] {
                    self.entries.invalidate(&CacheKey { hash, method }).await;
                }
                self.negative.invalidate(&hash).await;
                1
            }
            Invalidation::All => {
                self.entries.invalidate_all();
                0
            }
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}
