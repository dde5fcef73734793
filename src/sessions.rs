//! The sessions API: the one way to issue, list and revoke sessions, for the CLI today and
//! for the `accounts` and `registry` modules.
//!
//! A token exists only twice: in the [`Issued`] handed out once by [`Sessions::issue`], and
//! in its holder's hands. Everything after that names a session by its token (the holder
//! revoking it) or by its `sid`, the short non-secret handle that also travels in the JWT
//! and in session lists. A revocation deletes the session in the store first, then drops it
//! from this instance's cache at once, and the store tells every other instance.
//!
//! Modules learn that sessions ended through [`on_end`]: sign-out, a revocation by sid,
//! `revoke_user` (reset, deactivation, "log out everywhere") call every hook registered, just
//! after the store call, with each ended session's `sub` and `sid`. Expiry calls nothing. The
//! core never names a module.
//!
//! This module must never log or return a token other than in [`Issued`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::cache::SessionCache;
use crate::credential::{self, TokenHash};
use crate::error::Fault;
use crate::metrics::{Metrics, StoreOp};
use crate::secret::Secret;
use crate::session::Session;
use crate::store::{Invalidation, SessionStore, Store, StoreError};

/// A new session's token, handed out once; and its handle.
#[derive(Debug)]
pub struct Issued {
    pub token: Secret<String>,
    pub sid: String,
}

/// A session as listed: its handle and its record, never its token.
#[derive(Debug, Clone)]
pub struct Listed {
    pub sid: String,
    pub session: Session,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    /// The caller's: not a gatehouse token (bad shape or checksum).
    #[error("not a gatehouse token")]
    NotAToken,
    /// The caller's: a lifetime of zero, or an expiry in the past.
    #[error("a session needs a lifetime of at least 1 s")]
    NoLifetime,
    /// The store's: unreachable (a dependency) or corrupt (a bug).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SessionsError {
    pub fn fault(&self) -> Fault {
        match self {
            SessionsError::NotAToken | SessionsError::NoLifetime => Fault::Caller,
            SessionsError::Store(e) => e.fault(),
        }
    }
}

/// A session that was ended (not one that expired): whose, and its handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub sub: String,
    pub sid: String,
}

/// What a module does when sessions end. It runs before the caller answers, so what it writes
/// (the registry: back-channel logouts in the outbox) is stored when a sign-out completes; its
/// own failures are its to log.
pub type EndHook =
    Arc<dyn Fn(Vec<Ended>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

static HOOKS: RwLock<Vec<(&'static str, EndHook)>> = RwLock::new(Vec::new());

/// Registers `hook` under `name`, replacing an earlier one of that name (a database opened
/// again registers its own).
pub fn on_end(name: &'static str, hook: EndHook) {
    let mut all = HOOKS.write().unwrap_or_else(|e| e.into_inner());
    all.retain(|(n, _)| *n != name);
    all.push((name, hook));
}

fn hooks() -> Vec<EndHook> {
    HOOKS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, h)| h.clone())
        .collect()
}

/// Tells every hook that `ended` ended.
async fn ended(ended: Vec<Ended>) {
    if ended.is_empty() {
        return;
    }
    for hook in hooks() {
        hook(ended.clone()).await;
    }
}

/// The sessions of one store, and (in a server) the cache in front of it.
pub struct Sessions<'a> {
    store: &'a Store,
    cache: Option<&'a SessionCache>,
    metrics: Option<&'a Metrics>,
}

impl<'a> Sessions<'a> {
    /// `cache`: this instance's cache, which revocations reach at once (the CLI has none).
    pub fn new(store: &'a Store, cache: Option<&'a SessionCache>) -> Self {
        Sessions {
            store,
            cache,
            metrics: None,
        }
    }

    /// Counts and times every store call in `metrics` (`store_requests_total{op}`).
    pub fn with_metrics(self, metrics: &'a Metrics) -> Self {
        Sessions {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Runs one store call, counted and timed when there are metrics.
    async fn timed<T>(
        &self,
        op: StoreOp,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = std::time::Instant::now();
        let result = call.await;
        if let Some(m) = self.metrics {
            m.store(op, result.is_ok(), start.elapsed());
        }
        result
    }

    /// Stores `session` and returns its new token, whose prefix follows `session.kind`.
    pub async fn issue(&self, session: &Session) -> Result<Issued, SessionsError> {
        if session.expires_at <= crate::session::unix_now() {
            return Err(SessionsError::NoLifetime);
        }
        let token = credential::generate(session.kind);
        let hash = TokenHash::of(token.expose());
        self.timed(StoreOp::Put, self.store.put(&hash, session))
            .await?;
        Ok(Issued {
            token,
            sid: hash.sid(),
        })
    }

    /// A session for `sub` of `ttl` from now, to fill in with struct update syntax.
    pub fn draft(sub: impl Into<String>, ttl: Duration) -> Session {
        let now = crate::session::unix_now();
        Session::new(sub, now, now.saturating_add(ttl.as_secs()))
    }

    /// Revokes the session of `token` (its holder logging out). `true` when it existed.
    pub async fn revoke(&self, token: &str) -> Result<bool, SessionsError> {
        if credential::check(token).is_none() {
            return Err(SessionsError::NotAToken);
        }
        let hash = TokenHash::of(token);
        // Whose it was, for the hooks: one more read, on a sign-out, only when a module listens.
        let sub = if hooks().is_empty() {
            None
        } else {
            self.timed(StoreOp::Get, self.store.get(&hash))
                .await?
                .map(|s| s.sub)
        };
        self.revoke_key(&hash, sub.as_deref()).await
    }

    /// Revokes one of `sub`'s sessions by its `sid` ("sign out that device"). `false` when
    /// `sub` has no such session, so one user cannot revoke another's.
    pub async fn revoke_sid(&self, sub: &str, sid: &str) -> Result<bool, SessionsError> {
        let found = self
            .timed(StoreOp::List, self.store.list_user(sub))
            .await?
            .into_iter()
            .find(|(hash, _)| hash.sid() == sid);
        match found {
            Some((hash, _)) => self.revoke_key(&hash, Some(sub)).await,
            None => Ok(false),
        }
    }

    /// `sub`'s live session of handle `sid`, if any.
    pub async fn find_sid(&self, sub: &str, sid: &str) -> Result<Option<Listed>, SessionsError> {
        let now = crate::session::unix_now();
        Ok(self
            .list(sub)
            .await?
            .into_iter()
            .find(|l| l.sid == sid && l.session.is_live(now)))
    }

    /// Revokes those of `sub`'s sessions whose `sid` is in `sids` (a grant's access tokens):
    /// one listing of the user's sessions, then one revocation each, so that ending many costs
    /// linear, not quadratic, work. How many were revoked.
    pub async fn revoke_sids(&self, sub: &str, sids: &[String]) -> Result<u64, SessionsError> {
        if sids.is_empty() {
            return Ok(0);
        }
        let listed = self.timed(StoreOp::List, self.store.list_user(sub)).await?;
        let mut revoked = 0;
        for (hash, _) in listed {
            if sids.contains(&hash.sid()) && self.revoke_key(&hash, Some(sub)).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Revokes every session of `sub` ("log out everywhere", deactivation), or every one
    /// but the session of `keep` ("log out other sessions", password change). The number
    /// revoked.
    pub async fn revoke_user(&self, sub: &str, keep: Option<&str>) -> Result<u64, SessionsError> {
        let keep = match keep {
            Some(token) if credential::check(token).is_none() => {
                return Err(SessionsError::NotAToken)
            }
            Some(token) => Some(TokenHash::of(token)),
            None => None,
        };
        let revoked = self
            .timed(
                StoreOp::RevokeUser,
                self.store.revoke_user(sub, keep.as_ref()),
            )
            .await?;
        for hash in &revoked {
            self.forget(hash).await;
        }
        ended(
            revoked
                .iter()
                .map(|h| Ended {
                    sub: sub.to_owned(),
                    sid: h.sid(),
                })
                .collect(),
        )
        .await;
        Ok(revoked.len() as u64)
    }

    /// The live session of `token`, read from the store (not the cache: the pages that ask
    /// act on it, and must see a revocation at once). `None` for anything not a live token.
    pub async fn find(&self, token: &str) -> Result<Option<Listed>, SessionsError> {
        if credential::check(token).is_none() {
            return Ok(None);
        }
        let hash = TokenHash::of(token);
        let session = self.timed(StoreOp::Get, self.store.get(&hash)).await?;
        Ok(session
            .filter(|s| s.expires_at > crate::session::unix_now())
            .map(|session| Listed {
                sid: hash.sid(),
                session,
            }))
    }

    /// `sub`'s live sessions, oldest first.
    pub async fn list(&self, sub: &str) -> Result<Vec<Listed>, SessionsError> {
        Ok(self
            .timed(StoreOp::List, self.store.list_user(sub))
            .await?
            .into_iter()
            .map(|(hash, session)| Listed {
                sid: hash.sid(),
                session,
            })
            .collect())
    }

    /// Revokes the session stored under `hash`, `sub`'s when known (then the hooks hear of it).
    async fn revoke_key(&self, hash: &TokenHash, sub: Option<&str>) -> Result<bool, SessionsError> {
        // The store first: a cache fill that begins after the local drop below reads the
        // store after the delete.
        let existed = self.timed(StoreOp::Revoke, self.store.revoke(hash)).await?;
        self.forget(hash).await;
        if let (true, Some(sub)) = (existed, sub) {
            ended(vec![Ended {
                sub: sub.to_owned(),
                sid: hash.sid(),
            }])
            .await;
        }
        Ok(existed)
    }

    async fn forget(&self, hash: &TokenHash) {
        if let Some(cache) = self.cache {
            cache.apply(Invalidation::Key(*hash)).await;
        }
    }
}
