//! Redis store through `fred`: one pooled, reconnecting client created at start (never a
//! connection per request), a deadline on every call, and revocations broadcast on a pub/sub
//! channel so that every instance drops its cached copy.
//!
//! Layout (prefix `--redis-prefix`, default `gh:`):
//! - `gh:s:<hash>` — the session record (JSON), TTL = its remaining lifetime;
//! - `gh:u:<sub>` — the set of a user's session hashes ("log out everywhere");
//! - channel `gh:revoked` — one message per revoked hash, `*` for "drop everything".
//!
//! Every command touches one key, so the layout works unchanged on Redis Cluster (no
//! cross-slot command is ever sent, so no hash tags are needed) and on Sentinel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{Expiration, ExpireOptions, SetOptions};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::StoreSettings;
use super::{decode, encode, Invalidation, SessionStore, StoreError};
use crate::credential::TokenHash;
use crate::error::ConfigError;
use crate::session::{unix_now, Session};

const POOL_SIZE: usize = 4;

#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    builder: Arc<Builder>,
    prefix: Arc<str>,
    timeout: Duration,
}

/// Turns gatehouse's URL forms into a fred configuration.
///
/// `redis+cluster://[auth@]h:p,h:p` and `redis+sentinel://[auth@]h:p,h:p/service[/db]` list
/// their nodes with commas, as docs/architecture.md says; fred wants `?node=` parameters instead.
pub fn parse_url(url: &str) -> Result<Config, ConfigError> {
    let bad = |why: &str| ConfigError::new("--redis-url", why.to_string());
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("is not a URL (expected redis://host:port)"))?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (format!("{auth}@"), rest),
        None => (String::new(), rest),
    };
    let (hosts, path) = match rest.split_once('/') {
        Some((h, p)) => (h, p),
        None => (rest, ""),
    };
    let mut nodes = hosts.split(',').filter(|n| !n.is_empty());
    let first = nodes.next().ok_or_else(|| bad("names no host"))?;
    let others: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
    let fred_url = match scheme {
        "redis" | "rediss" => {
            if !others.is_empty() {
                return Err(bad("lists several hosts; use redis+cluster:// or redis+sentinel://"));
            }
            url.to_string()
        }
        "redis+cluster" | "rediss+cluster" => {
            let base = scheme.trim_end_matches("+cluster");
            format!("{base}-cluster://{auth}{first}?{}", others.join("&"))
        }
        "redis+sentinel" | "rediss+sentinel" => {
            let base = scheme.trim_end_matches("+sentinel");
            let (service, db) = match path.split_once('/') {
                Some((s, d)) => (s, d),
                None => (path, ""),
            };
            if service.is_empty() {
                return Err(bad("redis+sentinel:// needs a service name: redis+sentinel://h:p,h:p/service"));
            }
            let mut query = others;
            query.push(format!("sentinelServiceName={service}"));
            format!("{base}-sentinel://{auth}{first}/{db}?{}", query.join("&"))
        }
        _ => return Err(bad("has an unsupported scheme (use redis://, rediss://, redis+sentinel://, redis+cluster://)")),
    };
    // fred's error text describes the syntax problem; it does not echo the URL (which may hold
    // a password).
    Config::from_url(&fred_url)
        .map_err(|e| bad(&format!("is not a valid Redis URL: {}", e.details())))
}

/// The Redis key layout under a prefix (`--redis-prefix`): the one place that spells it, for
/// the store and for tests and benchmarks that look into Redis.
pub struct Layout<'a>(pub &'a str);

impl Layout<'_> {
    /// A session's record.
    pub fn session(&self, key: &TokenHash) -> String {
        format!("{}s:{}", self.0, key.encode())
    }

    /// The set of a user's session keys.
    pub fn user(&self, sub: &str) -> String {
        format!("{}u:{}", self.0, sub)
    }

    /// The revocation channel: one message per revoked key, `*` for "drop everything".
    pub fn channel(&self) -> String {
        format!("{}revoked", self.0)
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Builds the pool and starts connecting. With `wait`, waits that long for the first
    /// connection and fails if it does not come (the CLI); without, returns at once and lets
    /// the pool keep reconnecting in the background (the server, which reports readiness).
    pub async fn connect(
        settings: &StoreSettings,
        url: &str,
        wait: Option<Duration>,
    ) -> Result<Self, super::OpenError> {
        let mut config = parse_url(url)?;
        // Keep trying when Redis is not up yet (fred's default gives up on the first
        // failure, for good): in Kubernetes, Redis and gatehouse start in any order.
        config.fail_fast = false;
        let timeout = settings.timeout;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .with_connection_config(|c| {
                c.connection_timeout = timeout.max(Duration::from_secs(1));
                c.internal_command_timeout = timeout.max(Duration::from_secs(1));
                // One attempt: a failed command is answered at once with 503, not retried
                // behind the caller's back past its deadline.
                c.max_command_attempts = 1;
            })
            .set_policy({
                // Reconnect forever with backoff (50 ms doubling to 2 s, jittered), so that a
                // Redis restart is a short blip and never a connection storm.
                let mut p = ReconnectPolicy::new_exponential(0, 50, 2_000, 2);
                p.set_jitter(50);
                p
            });
        let pool = builder.build_pool(POOL_SIZE).map_err(unavailable)?;
        pool.connect_pool();
        let store = RedisStore {
            pool,
            builder: Arc::new(builder),
            prefix: settings.redis_prefix.clone().into(),
            timeout,
        };
        if let Some(wait) = wait {
            match tokio::time::timeout(wait, store.pool.wait_for_connect()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(unavailable(e).into()),
                Err(_) => return Err(unavailable(format!("no connection within {wait:?}")).into()),
            }
        }
        Ok(store)
    }

    fn session_key(&self, key: &TokenHash) -> String {
        Layout(&self.prefix).session(key)
    }

    fn user_key(&self, sub: &str) -> String {
        Layout(&self.prefix).user(sub)
    }

    fn channel(&self) -> String {
        Layout(&self.prefix).channel()
    }

    /// Runs one command under the store deadline.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// A throttle counter's key: `<prefix>c:<key>` (the callers' keys are bounded: hashes
    /// and addresses).
    fn counter_key(&self, key: &str) -> String {
        format!("{}c:{key}", self.prefix)
    }

    /// One failure of `key` at `now_ms`, in one round trip; forgotten `keep` after it.
    pub async fn counter_fail(
        &self,
        key: &str,
        now_ms: u64,
        keep: Duration,
    ) -> Result<(), StoreError> {
        const FAIL: &str = "redis.call('HINCRBY', KEYS[1], 'n', 1) \
            redis.call('HSET', KEYS[1], 't', ARGV[1]) \
            redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1";
        let _: i64 = self
            .call(self.pool.eval(
                FAIL,
                self.counter_key(key),
                vec![now_ms.to_string(), keep.as_millis().max(1).to_string()],
            ))
            .await?;
        Ok(())
    }

    /// The failures of `key`: how many, and when the last one was (Unix milliseconds).
    pub async fn counter_failures(&self, key: &str) -> Result<(u32, u64), StoreError> {
        let (n, t): (Option<u64>, Option<u64>) = self
            .call(self.pool.eval(
                "return redis.call('HMGET', KEYS[1], 'n', 't')",
                self.counter_key(key),
                Vec::<String>::new(),
            ))
            .await?;
        Ok((n.unwrap_or(0).min(u32::MAX as u64) as u32, t.unwrap_or(0)))
    }

    pub async fn counter_clear(&self, key: &str) -> Result<(), StoreError> {
        let _: i64 = self.call(self.pool.del(self.counter_key(key))).await?;
        Ok(())
    }

    /// One event of `key` in a fixed window (INCR, with the expiry set by the first), in one
    /// round trip: the count and the time the window still runs.
    pub async fn counter_hit(
        &self,
        key: &str,
        window: Duration,
    ) -> Result<(u32, Duration), StoreError> {
        const HIT: &str = "local n = redis.call('INCR', KEYS[1]) \
            if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
            return {n, redis.call('PTTL', KEYS[1])}";
        let (n, ttl): (u64, i64) = self
            .call(self.pool.eval(
                HIT,
                self.counter_key(key),
                vec![window.as_millis().max(1).to_string()],
            ))
            .await?;
        Ok((
            n.min(u32::MAX as u64) as u32,
            Duration::from_millis(ttl.max(0) as u64),
        ))
    }

    /// `GET key` verbatim, with no prefix: for reading another system's records (`--compat`).
    pub async fn get_raw(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.call(self.pool.get(key)).await
    }

    async fn load(&self, key: &TokenHash) -> Result<Option<Session>, StoreError> {
        let raw: Option<Bytes> = self.call(self.pool.get(self.session_key(key))).await?;
        match raw {
            None => Ok(None),
            Some(raw) => Ok(Some(decode(&raw)?)),
        }
    }

    async fn delete_and_publish(&self, key: &TokenHash) -> Result<bool, StoreError> {
        let deleted: i64 = self.call(self.pool.del(self.session_key(key))).await?;
        let _: i64 = self
            .call(self.pool.next().publish(self.channel(), key.encode()))
            .await?;
        Ok(deleted > 0)
    }
}

impl SessionStore for RedisStore {
    async fn get(&self, key: &TokenHash) -> Result<Option<Session>, StoreError> {
        let now = unix_now();
        Ok(self.load(key).await?.filter(|s| s.is_live(now)))
    }

    async fn put(&self, key: &TokenHash, session: &Session) -> Result<(), StoreError> {
        let ttl = session.expires_at.saturating_sub(unix_now()) as i64;
        if ttl <= 0 {
            return Ok(());
        }
        // The index entry first, the session last: a crash in between leaves an index entry
        // naming no session (harmless, skipped when read), never a session that "log out
        // everywhere" cannot find.
        let user_key = self.user_key(&session.sub);
        let _: i64 = self.call(self.pool.sadd(&user_key, key.encode())).await?;
        // The index lives as long as its longest session: set a TTL if it has none, and
        // lengthen it if this session outlives it.
        let _: i64 = self
            .call(self.pool.expire(&user_key, ttl, Some(ExpireOptions::NX)))
            .await?;
        let _: i64 = self
            .call(self.pool.expire(&user_key, ttl, Some(ExpireOptions::GT)))
            .await?;
        let _: () = self
            .call(self.pool.set(
                self.session_key(key),
                encode(session),
                Some(Expiration::EX(ttl)),
                None,
                false,
            ))
            .await?;
        Ok(())
    }

    async fn revoke(&self, key: &TokenHash) -> Result<bool, StoreError> {
        let session = self.load(key).await.ok().flatten();
        let existed = self.delete_and_publish(key).await?;
        if let Some(s) = session {
            let _: i64 = self
                .call(self.pool.srem(self.user_key(&s.sub), key.encode()))
                .await?;
        }
        Ok(existed)
    }

    async fn revoke_user(
        &self,
        sub: &str,
        except: Option<&TokenHash>,
    ) -> Result<Vec<TokenHash>, StoreError> {
        let user_key = self.user_key(sub);
        let members: Vec<String> = self.call(self.pool.smembers(&user_key)).await?;
        let mut revoked = Vec::new();
        for m in &members {
            let Some(hash) = TokenHash::decode(m) else {
                continue;
            };
            if Some(&hash) == except {
                continue;
            }
            // Only what was read and deleted leaves the index. A session indexed meanwhile
            // keeps its entry (never `DEL` the whole set), and so does one whose `put` has
            // indexed it but not yet written it: its record may land after this `DEL`. An
            // entry of an expired session stays until the index expires; reads skip it.
            if self.delete_and_publish(&hash).await? {
                let _: i64 = self.call(self.pool.srem(&user_key, m.as_str())).await?;
                revoked.push(hash);
            }
        }
        Ok(revoked)
    }

    async fn touch(&self, key: &TokenHash, session: &Session) -> Result<(), StoreError> {
        // XX: only if the session is still there; KEEPTTL: its expiry stays.
        let _: Option<String> = self
            .call(self.pool.set(
                self.session_key(key),
                encode(session),
                Some(Expiration::KEEPTTL),
                Some(SetOptions::XX),
                false,
            ))
            .await?;
        Ok(())
    }

    async fn list_user(&self, sub: &str) -> Result<Vec<(TokenHash, Session)>, StoreError> {
        let members: Vec<String> = self.call(self.pool.smembers(self.user_key(sub))).await?;
        let now = unix_now();
        let mut out = Vec::new();
        for m in members.iter().filter_map(|m| TokenHash::decode(m)) {
            if let Some(s) = self.load(&m).await?.filter(|s| s.is_live(now)) {
                out.push((m, s));
            }
        }
        out.sort_by_key(|(_, s)| s.created_at);
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(self.pool.ping::<()>(None)).await
    }

    fn watch_invalidations(&self, tx: mpsc::Sender<Invalidation>) {
        let builder = self.builder.clone();
        let channel = self.channel();
        let pool = self.pool.clone();
        tokio::spawn(async move {
            // Never gives up: Redis may come up after gatehouse, or an operator may fix the
            // ACL that refuses SUBSCRIBE. Until the channel is followed, nothing is cached.
            let mut delay = WATCH_BACKOFF_MIN;
            loop {
                match watch(&builder, &pool, &channel, &tx).await {
                    Ok(()) => return, // the gateway is gone
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "revocation channel not followed; sessions are read from the store, uncached, until it is");
                        if tx.send(Invalidation::NotFollowed).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(WATCH_BACKOFF_MAX);
            }
        });
    }
}

const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why following the channel stopped; the caller retries.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("cannot connect: {0}")]
    Connect(Error),
    #[error("cannot subscribe: {0}")]
    Subscribe(Error),
    #[error("subscribed, but a message published on the channel did not arrive within {0:?} (does the ACL grant the channel?)")]
    Unconfirmed(Duration),
}

/// The subscriber client's channels closed under us: start a fresh client.
fn closed() -> WatchError {
    WatchError::Connect(Error::new(ErrorKind::Canceled, "subscriber closed"))
}

/// How long a probe message may take to come back.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Subscribes and proves it: Redis may refuse a subscription without fred reporting it (an
/// ACL without channel rights answers NOPERM, and fred 10's subscribe still returns `Ok`), so
/// a message of our own is published and must come back. Other messages received meanwhile
/// are dropped: the caller flushes the cache once this returns.
async fn subscribe_confirmed(
    subscriber: &fred::clients::SubscriberClient,
    messages: &mut tokio::sync::broadcast::Receiver<fred::types::Message>,
    pool: &Pool,
    channel: &str,
) -> Result<(), WatchError> {
    subscriber
        .subscribe(channel)
        .await
        .map_err(WatchError::Subscribe)?;
    let probe = format!(
        "probe:{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let _: i64 = pool
        .next()
        .publish(channel, probe.as_str())
        .await
        .map_err(WatchError::Subscribe)?;
    let arrived = tokio::time::timeout(PROBE_TIMEOUT, async {
        loop {
            match messages.recv().await {
                Ok(m) if m.value.as_bytes() == Some(probe.as_bytes()) => return true,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return false,
            }
        }
    })
    .await;
    match arrived {
        Ok(true) => Ok(()),
        _ => Err(WatchError::Unconfirmed(PROBE_TIMEOUT)),
    }
}

/// Follows the revocation channel until the gateway is gone (`Ok`) or the channel cannot be
/// followed (`Err`: the caller says so to the cache and tries again).
///
/// When the subscriber connection breaks, cached sessions are still served until their
/// entries expire (at most `--cache-ttl`): while Redis is unreachable nobody can revoke
/// through it, and a Redis outage should not log everyone out. When the connection comes
/// back, revocations may have been missed in between, so the channel is subscribed again
/// and only then the whole cache is flushed: nothing cached before the gap is trusted after
/// it. (A partition that cuts this instance off while others still reach Redis is the one
/// case where a revoked session can be served, for at most `--cache-ttl`.) When Redis
/// answers but refuses the subscription, nothing is cached at all until it accepts.
async fn watch(
    builder: &Builder,
    pool: &Pool,
    channel: &str,
    tx: &mpsc::Sender<Invalidation>,
) -> Result<(), WatchError> {
    let subscriber = builder
        .build_subscriber_client()
        .map_err(WatchError::Connect)?;
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let mut errors = subscriber.error_rx();
    subscriber.connect();
    let result = async {
        // Waits as long as Redis is down (the client reconnects with backoff).
        subscriber
            .wait_for_connect()
            .await
            .map_err(WatchError::Connect)?;
        subscribe_confirmed(&subscriber, &mut messages, pool, channel).await?;
        tracing::info!(%channel, "following the revocation channel");
        if tx.send(Invalidation::Followed).await.is_err() {
            return Ok(());
        }
        loop {
            let event = tokio::select! {
                m = messages.recv() => match m {
                    Ok(m) => match m.value.as_bytes().and_then(|b| std::str::from_utf8(b).ok()) {
                        Some("*") => Invalidation::All,
                        Some(s) => match TokenHash::decode(s) {
                            Some(h) => Invalidation::Key(h),
                            None => continue,
                        },
                        None => continue,
                    },
                    // Lagging behind the broadcast buffer means messages were lost.
                    Err(RecvError::Lagged(_)) => Invalidation::All,
                    Err(RecvError::Closed) => return Err(closed()),
                },
                r = reconnects.recv() => {
                    if matches!(r, Err(RecvError::Closed)) {
                        return Err(closed());
                    }
                    // Listening again before flushing, so that no revocation falls between.
                    subscribe_confirmed(&subscriber, &mut messages, pool, channel).await?;
                    tracing::info!("revocation channel reconnected; cache flushed");
                    Invalidation::Followed
                }
                e = errors.recv() => match e {
                    Ok((e, _)) => {
                        tracing::warn!(error = %e, "revocation channel broke; cached sessions are served until they expire, the cache is flushed when it is back");
                        continue;
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return Err(closed()),
                },
            };
            if tx.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
    .await;
    // Stops this client's own reconnection loop; the caller starts a fresh one.
    let _ = subscriber.quit().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        assert!(parse_url("redis://127.0.0.1:6379")
            .unwrap()
            .server
            .is_centralized());
        let c = parse_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002").unwrap();
        assert!(c.server.is_clustered());
        assert_eq!(c.server.hosts().len(), 3);
        let s = parse_url("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster").unwrap();
        assert!(s.server.is_sentinel());
        assert_eq!(parse_url("http://x").unwrap_err().flag, "--redis-url");
        assert!(parse_url("redis+sentinel://127.0.0.1:26379").is_err());
        assert!(parse_url("nonsense").is_err());
        assert!(parse_url("redis://a:1,b:2").is_err());
    }
}
