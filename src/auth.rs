//! The `/auth` hot path, top to bottom: credential → checksum → cache → (miss: store, sign,
//! fill) → answer. docs/architecture.md's `/auth` contract is implemented here and nowhere else.
//!
//! Only 200, 401, 403 and 503 ever leave this module; identity headers only on 200. A store
//! failure is 503 (fail closed), never a 200. Nothing here logs per request above debug, and
//! nothing here ever logs a token.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE,
    WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use crate::arxiv::{Arxiv, ArxivError};
use crate::cache::{CacheKey, Entry, FillError, SessionCache};
use crate::credential::{self, CredentialError, Method, TokenHash};
use crate::metrics::{AuthMethod, Metrics, Outcome, StoreOp};
use crate::net::Cidr;
use crate::policy::{self, Grants, OriginalRequest, Policy, Requirement, StepUp, TargetError};
use crate::secret::Secret;
use crate::session::Session;
use crate::sessions::Sessions;
use crate::signer::JwtAlg;
use crate::signer::Signer;
use crate::store::{SessionStore, Store};

pub type Body = Full<Bytes>;

/// What `/auth` answers, before it is written. A cached session's 200 stays its entry until
/// then: hyper's path builds the response from it ([`Answer::into_response`]), the lean
/// path (`server/lean.rs`) writes the entry's headers straight to the connection.
pub enum Answer {
    Allow(Arc<Entry>),
    Response(Response<Body>),
}

impl Answer {
    pub fn into_response(self) -> Response<Body> {
        match self {
            Answer::Allow(entry) => {
                let mut r = allow_headers(
                    entry.authorization.clone(),
                    Some(entry.user.clone()),
                    entry.email.clone(),
                );
                if let Some(amr) = &entry.amr {
                    r.headers_mut().insert(X_AUTH_REQUEST_AMR, amr.clone());
                }
                r
            }
            Answer::Response(r) => r,
        }
    }
}

/// `last_seen` writes waiting for the background writer; more are dropped, not waited for.
const TOUCH_QUEUE: usize = 1024;

pub const X_AUTH_REQUEST_USER: HeaderName = HeaderName::from_static("x-auth-request-user");
pub const X_AUTH_REQUEST_EMAIL: HeaderName = HeaderName::from_static("x-auth-request-email");
/// On a 200: how the user signed in (RFC 8176 `amr` values, space-separated).
pub const X_AUTH_REQUEST_AMR: HeaderName = HeaderName::from_static("x-auth-request-amr");
/// On a 401 for a browser: the login location, `rd` encoded (nginx reads it with
/// `auth_request_set` and redirects there).
pub const X_GATEHOUSE_LOGIN: HeaderName = HeaderName::from_static("x-gatehouse-login");
/// From a trusted proxy: its login URL, when gatehouse has no `--login-url`.
pub const X_GATEHOUSE_LOGIN_URL: HeaderName = HeaderName::from_static("x-gatehouse-login-url");

const REALM: HeaderValue = HeaderValue::from_static("Bearer realm=\"gatehouse\"");
const REALM_INVALID: HeaderValue =
    HeaderValue::from_static("Bearer realm=\"gatehouse\", error=\"invalid_token\"");
pub(crate) const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Why a request was refused; each has a fixed JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    Scheme,
    Invalid,
    Unknown,
    Unavailable,
    /// With a policy: no usable original request (missing, untrusted peer, no canonical form).
    Target,
    /// The policy asks for scopes or roles the session lacks (403).
    Forbidden,
    /// The request carries another spelling of an identity header.
    Spoofed,
    /// The rule asks for a second factor or a recent sign-in that the session lacks: 401,
    /// and a new sign-in (a step-up) can give it.
    StepUp(StepUp),
}

impl Refusal {
    fn body(self) -> &'static [u8] {
        match self {
            Refusal::Missing => br#"{"reason":"missing credential"}"#,
            Refusal::Malformed => br#"{"reason":"malformed authorization header"}"#,
            Refusal::Scheme => br#"{"reason":"unsupported authorization scheme"}"#,
            Refusal::Invalid => br#"{"reason":"invalid token"}"#,
            Refusal::Unknown => br#"{"reason":"unknown, expired or revoked session"}"#,
            Refusal::Unavailable => br#"{"reason":"session store unavailable"}"#,
            Refusal::Target => br#"{"reason":"invalid original request"}"#,
            Refusal::Forbidden => br#"{"reason":"insufficient scope or role"}"#,
            Refusal::Spoofed => br#"{"reason":"identity header in another spelling"}"#,
            Refusal::StepUp(StepUp::SecondFactor) => br#"{"reason":"second factor required"}"#,
            Refusal::StepUp(StepUp::MaxAge(_)) => br#"{"reason":"authentication too old"}"#,
        }
    }
}

/// Everything `/auth` needs, built once at start and shared by every connection.
pub struct Gateway {
    pub store: Store,
    pub cache: SessionCache,
    /// Swapped whole on SIGHUP ([`Gateway::reload`]).
    pub signer: ArcSwap<Signer>,
    pub metrics: Metrics,
    cookie_name: String,
    anonymous: bool,
    /// `--compat arxiv`: arXiv's records instead of gatehouse's sessions.
    arxiv: Option<Arxiv>,
    /// `--login-url`, for `/auth/redirect`.
    login_url: Option<String>,
    /// `--policy`, loaded at start and swapped whole on SIGHUP.
    policy: ArcSwapOption<Policy>,
    policy_path: Option<PathBuf>,
    keys_dir: PathBuf,
    jwt_alg: JwtAlg,
    jwt_secret: Option<Secret<String>>,
    trusted_proxies: Vec<Cidr>,
    /// `--original-request`: which headers describe the request being authorised.
    original_request: OriginalRequest,
    cache_ttl: Duration,
    jwt_ttl: Duration,
    /// `--touch-interval`: `last_seen` is written at most this often per session.
    touch_interval: Duration,
    /// `--session-idle`: a session unused this long is over.
    session_idle: Option<Duration>,
    /// Sessions whose `last_seen` is to be written, for the background writer.
    touches: mpsc::Sender<(TokenHash, Session)>,
    touches_rx: std::sync::Mutex<Option<mpsc::Receiver<(TokenHash, Session)>>>,
    shutting_down: AtomicBool,
    /// The protected resources a module serves metadata for (RFC 9728): a 401 for a request
    /// to one of them names its metadata. Set once at start.
    protected: std::sync::OnceLock<Vec<ProtectedResource>>,
}

/// An API whose OAuth 2.0 Protected Resource Metadata (RFC 9728) is published.
#[derive(Debug, Clone)]
pub struct ProtectedResource {
    /// Its base URL, without a trailing slash: the requests under it are its.
    pub base_url: String,
    /// Where its metadata is.
    pub metadata_url: String,
}

/// What the gateway needs from the configuration, free of the command line (built by
/// `ServeArgs::gateway_settings`, or by hand in a test).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The session cookie's name.
    pub cookie_name: String,
    /// A request without a credential gets 200 (no identity) rather than 401.
    pub anonymous: bool,
    /// `--compat arxiv` with arXiv's JWT secret.
    pub arxiv_secret: Option<Secret<String>>,
    /// Where `/auth/redirect` sends refused browsers.
    pub login_url: Option<String>,
    /// The policy file, re-read on SIGHUP.
    pub policy_path: Option<PathBuf>,
    /// The keys directory, re-read on SIGHUP.
    pub keys_dir: PathBuf,
    pub jwt_alg: JwtAlg,
    pub jwt_secret: Option<Secret<String>>,
    pub jwt_ttl: Duration,
    /// Peers whose proxy headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    pub original_request: OriginalRequest,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    pub touch_interval: Duration,
    pub session_idle: Option<Duration>,
}

impl Gateway {
    pub fn new(
        settings: GatewaySettings,
        store: Store,
        signer: Signer,
        metrics: Metrics,
        policy: Option<Policy>,
    ) -> Arc<Gateway> {
        let (touches, touches_rx) = mpsc::channel(TOUCH_QUEUE);
        let s = settings;
        Arc::new(Gateway {
            signer: ArcSwap::from_pointee(signer),
            store,
            cache: SessionCache::new(s.cache_capacity),
            metrics,
            cookie_name: s.cookie_name,
            anonymous: s.anonymous,
            login_url: s.login_url,
            policy: ArcSwapOption::from(policy.map(Arc::new)),
            policy_path: s.policy_path,
            keys_dir: s.keys_dir,
            jwt_alg: s.jwt_alg,
            jwt_secret: s.jwt_secret,
            trusted_proxies: s.trusted_proxies,
            original_request: s.original_request,
            arxiv: s.arxiv_secret.as_ref().map(Arxiv::new),
            cache_ttl: s.cache_ttl,
            jwt_ttl: s.jwt_ttl,
            touch_interval: s.touch_interval,
            session_idle: s.session_idle,
            touches,
            touches_rx: std::sync::Mutex::new(Some(touches_rx)),
            shutting_down: AtomicBool::new(false),
            protected: std::sync::OnceLock::new(),
        })
    }

    /// Names the protected resources whose 401s carry `resource_metadata` (the registry's
    /// API catalog); the first call wins.
    pub fn set_protected_resources(&self, resources: Vec<ProtectedResource>) {
        let _ = self.protected.set(resources);
    }

    /// Re-reads the policy file and the keys directory (SIGHUP). Each is swapped in whole
    /// when it loads; when it does not, the error is logged and the old one stays. Requests
    /// in flight finish with what they started with.
    pub fn reload(&self) {
        if let Some(path) = &self.policy_path {
            match Policy::load(path) {
                Ok(p) => {
                    self.policy.store(Some(Arc::new(p)));
                    tracing::info!(path = %path.display(), "policy reloaded");
                }
                Err(why) => {
                    tracing::error!(path = %path.display(), error = %why, "policy not reloaded; the previous one stays");
                }
            }
        }
        let settings = self.signer.load().settings().clone();
        match Signer::load(
            &self.keys_dir,
            self.jwt_alg,
            self.jwt_secret.as_ref(),
            settings,
        ) {
            Ok(signer) => {
                let kid = signer.kid().to_string();
                let previous = self.signer.swap(Arc::new(signer));
                if previous.kid() == kid {
                    tracing::info!(kid, "keys reloaded");
                } else {
                    // Cached entries carry JWTs of the previous key, which may be on its way
                    // out of the directory: they are minted again on their next request.
                    self.cache.flush();
                    tracing::info!(
                        kid,
                        previous = previous.kid(),
                        "keys reloaded; a new key signs, cached tokens are minted again"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "keys not reloaded; the previous ones stay");
            }
        }
    }

    /// Follows the store's revocations, and writes `last_seen`, for as long as the gateway
    /// lives.
    pub fn start_background(self: &Arc<Self>) {
        let (tx, mut rx) = mpsc::channel(1024);
        self.store.watch_invalidations(tx);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(inv) = rx.recv().await {
                let Some(gw) = weak.upgrade() else { return };
                let n = gw.cache.apply(inv).await;
                gw.metrics.sessions_revoked.inc_by(n);
            }
        });
        let Some(mut touches) = self.touches_rx.lock().ok().and_then(|mut rx| rx.take()) else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some((hash, session)) = touches.recv().await {
                let Some(gw) = weak.upgrade() else { return };
                let start = Instant::now();
                let result = gw.store.touch(&hash, &session).await;
                gw.metrics
                    .store(StoreOp::Touch, result.is_ok(), start.elapsed());
                if let Err(e) = result {
                    tracing::debug!(error = %e, "last_seen not written");
                }
            }
        });
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Answers one `/auth` request from `peer` (whose proxy headers count only if it is in
    /// `--trusted-proxies`).
    pub async fn auth(&self, headers: &HeaderMap, peer: IpAddr) -> Response<Body> {
        self.answer(headers, peer).await.into_response()
    }

    /// [`Gateway::auth`]'s answer before it becomes a response (see [`Answer`]).
    pub async fn answer(&self, headers: &HeaderMap, peer: IpAddr) -> Answer {
        let start = Instant::now();
        let (mut answer, outcome, method) = self.decide(headers, peer).await;
        if let Answer::Response(r) = &mut answer {
            if r.status() == StatusCode::UNAUTHORIZED {
                self.add_login_location(r, headers, peer);
                self.add_resource_metadata(r, headers, peer);
            }
        }
        self.metrics.auth(outcome, method).inc();
        self.metrics.auth_duration.observe(start.elapsed());
        answer
    }

    /// On a 401 to a browser (no `Authorization`), where to send it to sign in, in
    /// [`X_GATEHOUSE_LOGIN`]: the login URL with `rd` set to the original request,
    /// percent-encoded, which a proxy cannot do itself (nginx's `$request_uri` is not encoded,
    /// so an `&` in the query ended `rd`). The login URL is `--login-url`, else the one a
    /// trusted proxy sends in `X-Gatehouse-Login-Url` (the nginx snippet sends its
    /// `$gatehouse_login_url`); with neither, nothing is added.
    #[cold]
    fn add_login_location(&self, r: &mut Response<Body>, headers: &HeaderMap, peer: IpAddr) {
        if headers.contains_key(AUTHORIZATION) {
            return;
        }
        let trusted = || self.trusted_proxies.iter().any(|c| c.contains(peer));
        let login = match &self.login_url {
            Some(url) => url.as_str(),
            None => match headers.get(X_GATEHOUSE_LOGIN_URL).map(|v| v.to_str()) {
                Some(Ok(url)) if trusted() && crate::forward::check_login_url(url).is_ok() => url,
                _ => return,
            },
        };
        let original = if trusted() {
            crate::forward::original_url(headers)
        } else {
            None
        };
        let need = r.extensions().get::<StepUp>().copied();
        let location = crate::forward::login_location(login, original.as_deref(), need);
        if let Ok(v) = HeaderValue::try_from(location) {
            r.headers_mut().insert(X_GATEHOUSE_LOGIN, v);
        }
    }

    /// On a 401 for a request to a protected resource (RFC 9728 §5.1), where its metadata is:
    /// `resource_metadata` in the Bearer challenge, so that a client (an MCP client) finds
    /// the authorization server from its first refused request.
    #[cold]
    fn add_resource_metadata(&self, r: &mut Response<Body>, headers: &HeaderMap, peer: IpAddr) {
        let Some(resources) = self.protected.get().filter(|r| !r.is_empty()) else {
            return;
        };
        if !self.trusted_proxies.iter().any(|c| c.contains(peer)) {
            return;
        }
        let Some(original) = crate::forward::original_url(headers) else {
            return;
        };
        let under = |base: &str| {
            original.len() >= base.len()
                && original[..base.len()].eq_ignore_ascii_case(base)
                && matches!(
                    original.as_bytes().get(base.len()),
                    None | Some(b'/' | b'?')
                )
        };
        let Some(resource) = resources.iter().find(|p| under(&p.base_url)) else {
            return;
        };
        let challenge = r
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("Bearer realm=\"gatehouse\"");
        let with = format!(
            "{challenge}, resource_metadata=\"{}\"",
            resource.metadata_url
        );
        if let Ok(v) = HeaderValue::try_from(with) {
            r.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
    }

    /// `/auth/redirect`, for proxies that hand any non-2xx answer to the client (Traefik,
    /// Caddy): `/auth`'s answer, except that a browser refused with 401 is sent to
    /// `--login-url` with `rd` set to the page it asked for.
    pub async fn auth_redirect(&self, headers: &HeaderMap, peer: IpAddr) -> Response<Body> {
        let response = self.auth(headers, peer).await;
        match &self.login_url {
            Some(login)
                if response.status() == StatusCode::UNAUTHORIZED
                    && crate::forward::wants_html(headers) =>
            {
                let location = crate::forward::login_location(
                    login,
                    crate::forward::original_url(headers).as_deref(),
                    response.extensions().get::<StepUp>().copied(),
                );
                let mut r = Response::new(Body::default());
                *r.status_mut() = StatusCode::FOUND;
                let h = r.headers_mut();
                h.insert(hyper::header::LOCATION, header_value(&location));
                h.insert(CACHE_CONTROL, NO_STORE);
                r
            }
            _ => response,
        }
    }

    async fn decide(&self, headers: &HeaderMap, peer: IpAddr) -> (Answer, Outcome, AuthMethod) {
        // Another spelling of an identity header (X_Auth_Request_User, X.Auth.Request.User…):
        // proxies pass it on, and CGI, WSGI and PHP upstreams read it as the real one.
        if has_identity_alias(headers) {
            return (
                refuse(Refusal::Spoofed, false),
                Outcome::Deny,
                AuthMethod::None,
            );
        }
        // With a policy, the rule of the original request; without the request, no answer.
        // Without --policy there is nothing to load: no atomics on the hot path for it.
        let policy = self.policy_path.as_ref().map(|_| self.policy.load());
        let rule = match policy.as_ref().and_then(|p| p.as_deref()) {
            None => None,
            Some(policy) => {
                let target = if self.trusted_proxies.iter().any(|c| c.contains(peer)) {
                    policy::target(headers, self.original_request)
                } else {
                    Err(TargetError::Missing)
                };
                match target.and_then(|t| policy.requirement(&t)) {
                    Ok(requirement) => Some(requirement),
                    Err(_) => {
                        return (
                            refuse(Refusal::Target, false),
                            Outcome::Deny,
                            AuthMethod::None,
                        )
                    }
                }
            }
        };
        let anonymous_ok = rule.map_or(self.anonymous, |r| r.anonymous);
        let (method, token) = match credential::extract(headers, &self.cookie_name) {
            Ok(Some(c)) => c,
            Ok(None) if anonymous_ok => {
                return (anonymous(), Outcome::Allow, AuthMethod::Anonymous)
            }
            Ok(None) => {
                return (
                    refuse(Refusal::Missing, false),
                    Outcome::Deny,
                    AuthMethod::None,
                )
            }
            Err(CredentialError::Malformed) => {
                return (
                    refuse(Refusal::Malformed, true),
                    Outcome::Deny,
                    AuthMethod::Bearer,
                )
            }
            Err(CredentialError::UnsupportedScheme) => {
                return (
                    refuse(Refusal::Scheme, false),
                    Outcome::Deny,
                    AuthMethod::None,
                )
            }
        };
        let label = match method {
            Method::Bearer => AuthMethod::Bearer,
            Method::Cookie => AuthMethod::Session,
        };
        let bearer = method == Method::Bearer;
        if let Some(arxiv) = &self.arxiv {
            // Boxed for the same reason as the miss below: keep the hit path's future small.
            let (response, outcome) = Box::pin(self.decide_arxiv(arxiv, method, token, rule)).await;
            return (response, outcome, label);
        }
        // Garbage is refused here, before any hashing, cache or store work.
        if credential::check(token).is_none() {
            return (refuse(Refusal::Invalid, bearer), Outcome::Deny, label);
        }
        let key = CacheKey {
            hash: TokenHash::of(token),
            method,
        };
        // Without the store's revocation channel nothing cached can be trusted: every
        // request reads the store until the channel is followed again.
        let following = self.cache.is_following();
        if following {
            if let Some(entry) = self.cache.get(&key).await {
                self.metrics.cache_hit.inc();
                return admit(rule, entry, label);
            }
            if self.cache.is_known_missing(&key.hash) {
                self.metrics.cache_negative.inc();
                return (refuse(Refusal::Unknown, bearer), Outcome::Deny, label);
            }
        }
        self.metrics.cache_miss.inc();
        // Boxed: the miss path's future (moka's loader around a store call) is many kilobytes,
        // and inline it would make every hit's future that large too, copied on each call.
        let filled = if following {
            Box::pin(self.cache.get_or_fill(key, |epoch| self.fill(key, epoch))).await
        } else {
            Box::pin(self.fill(key, self.cache.epoch()))
                .await
                .map_err(Arc::new)
        };
        match filled {
            Ok(entry) => admit(rule, entry, label),
            Err(e) => match *e {
                FillError::NotFound => (refuse(Refusal::Unknown, bearer), Outcome::Deny, label),
                FillError::Store(ref err) => {
                    tracing::warn!(error = %err, "session store failed; answering 503");
                    (refuse(Refusal::Unavailable, false), Outcome::Error, label)
                }
                FillError::Sign(ref err) => {
                    tracing::error!(error = %err, "signing failed; answering 503");
                    (refuse(Refusal::Unavailable, false), Outcome::Error, label)
                }
                FillError::Contended => {
                    tracing::warn!(
                        "session revoked again and again while being read; answering 503"
                    );
                    (refuse(Refusal::Unavailable, false), Outcome::Error, label)
                }
            },
        }
    }

    /// `--compat arxiv`: one store read per request, never cached (see `arxiv`).
    #[cold]
    async fn decide_arxiv(
        &self,
        arxiv: &Arxiv,
        method: Method,
        token: &str,
        rule: Option<&Requirement>,
    ) -> (Answer, Outcome) {
        let bearer = method == Method::Bearer;
        let Some(redis) = self.store.redis() else {
            // Refused at start by the configuration check; never a 200 if it were not.
            return (refuse(Refusal::Unavailable, false), Outcome::Error);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let start = Instant::now();
        let result = match method {
            Method::Cookie => arxiv.check_cookie(token, redis, now).await,
            Method::Bearer => arxiv.check_bearer(token, redis, now).await,
        };
        let store_ok = !matches!(result, Err(ArxivError::Store(_)));
        self.metrics.store(StoreOp::Get, store_ok, start.elapsed());
        match result {
            Ok(a)
                if rule.is_some_and(|r| {
                    !r.admits(&Grants {
                        scopes: &a.scopes,
                        roles: &[],
                    })
                }) =>
            {
                (refuse(Refusal::Forbidden, false), Outcome::Forbid)
            }
            Ok(a) => {
                let user = a.user.as_deref().map(header_value);
                let email = a.email.as_deref().map(header_value);
                let response = allow_headers(a.authorization, user, email);
                (Answer::Response(response), Outcome::Allow)
            }
            Err(ArxivError::Invalid) => (refuse(Refusal::Invalid, bearer), Outcome::Deny),
            Err(ArxivError::Unknown) => (refuse(Refusal::Unknown, bearer), Outcome::Deny),
            Err(ArxivError::Store(err)) => {
                tracing::warn!(error = %err, "session store failed; answering 503");
                (refuse(Refusal::Unavailable, false), Outcome::Error)
            }
        }
    }

    /// Records that a session was used now: queued for the background writer, dropped when
    /// the queue is full (the next fill tries again). Never waits.
    fn touch(&self, hash: TokenHash, session: &Session, now: u64) {
        let seen = Session {
            last_seen: Some(now),
            ..session.clone()
        };
        let _ = self.touches.try_send((hash, seen));
    }

    /// The client's address: `peer`, or when `peer` is a trusted proxy the address it
    /// reports (`X-Real-IP`, else the last `X-Forwarded-For` hop).
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.trusted_proxies.iter().any(|c| c.contains(peer)) {
            return peer;
        }
        let reported = headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .or_else(|| {
                headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .next_back()
                    .and_then(|v| v.trim().parse().ok())
            });
        reported.unwrap_or(peer)
    }

    /// When `session` stops being live (since the Unix epoch): at its expiry, or
    /// `--session-idle` after its last use, whichever comes first. The one rule that `/auth`,
    /// the pages, the API and the OAuth endpoints apply.
    pub fn live_until(&self, session: &Session) -> Duration {
        let expires = Duration::from_secs(session.expires_at);
        match self.session_idle {
            Some(idle) => {
                let last_active = session.last_seen.unwrap_or(session.created_at);
                expires.min(Duration::from_secs(last_active) + idle)
            }
            None => expires,
        }
    }

    /// Whether `session` is live now ([`Gateway::live_until`]).
    pub fn is_live(&self, session: &Session) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now < self.live_until(session)
    }

    /// Warns, once, when a page is asked by a peer that is not loopback while only loopback
    /// is trusted to report the client's address: behind an ingress that is not in
    /// `--trusted-proxies`, every client has the ingress's address, and three failures by
    /// anyone would slow everyone down.
    pub fn note_peer(&self, peer: IpAddr) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !peer.is_loopback()
            && !self.trusted_proxies.iter().any(|c| c.contains(peer))
            && self.trusted_proxies.iter().all(|c| c.is_loopback())
            && !WARNED.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                %peer,
                "a request came from a peer that is not loopback, and only loopback is in --trusted-proxies: if it is your ingress or load balancer, add it, or every client will share its address (and its login delays)"
            );
        }
    }

    /// The name of the session cookie (`--cookie-name`).
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The sessions API on this gateway's store; revocations reach this instance's cache at
    /// once.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions::new(&self.store, Some(&self.cache)).with_metrics(&self.metrics)
    }

    /// A cache miss: one store read, one signature. `epoch` is the cache's epoch before the
    /// read begins.
    async fn fill(&self, key: CacheKey, epoch: u64) -> Result<Arc<Entry>, FillError> {
        let start = Instant::now();
        let result = self.store.get(&key.hash).await;
        self.metrics
            .store(StoreOp::Get, result.is_ok(), start.elapsed());
        let session = result?.ok_or(FillError::NotFound)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Idle and last-seen are decided here, on fills only: an entry lives at most
        // --cache-ttl, so a session in use is filled (and seen) at least that often, and a
        // hit costs nothing for them.
        let live_until = self.live_until(&session);
        if live_until <= now {
            return Err(FillError::NotFound);
        }
        let last_active = Duration::from_secs(session.last_seen.unwrap_or(session.created_at));
        if now.saturating_sub(last_active) >= self.touch_interval {
            self.touch(key.hash, &session, now.as_secs());
        }
        let signer = self.signer.load();
        let minted = signer
            .mint(&session, &key.hash.sid(), key.method, now.as_secs())
            .map_err(|e| FillError::Sign(e.to_string()))?;
        self.metrics.jwt_signed(minted.kid);
        // Serve the JWT for 4/5 of its life, so the upstream always receives one with at least
        // a fifth of --jwt-ttl left; never past the session or --cache-ttl.
        let refresh = self.jwt_ttl.mul_f64(0.8);
        let ttl = refresh
            .min(live_until.saturating_sub(now))
            .min(self.cache_ttl);
        let authorization = HeaderValue::try_from(format!("Bearer {}", minted.jwt))
            .map_err(|e| FillError::Sign(e.to_string()))?;
        Ok(Arc::new(Entry {
            user: header_value(session.display_user()),
            email: session.email.as_deref().map(header_value),
            amr: (!session.amr.is_empty()).then(|| header_value(&session.amr.join(" "))),
            authorization,
            session,
            ttl,
            epoch,
        }))
    }
}

/// A header value from user data; bytes a header cannot carry become `?`.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let clean: String = s
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static("?"))
    })
}

/// Whether a header name means X-Auth-Request-User, -Email or -Amr to a CGI-style upstream
/// (upper-cased, every non-alphanumeric byte read as `_`) without being spelled that way.
/// Only names of those lengths are looked at, so the usual request costs a length
/// comparison per header.
fn has_identity_alias(headers: &HeaderMap) -> bool {
    const NAMES: [&[u8]; 3] = [
        b"x-auth-request-user",
        b"x-auth-request-email",
        b"x-auth-request-amr",
    ];
    headers.keys().any(|name| {
        let n = name.as_str().as_bytes(); // already lower-case
        NAMES.iter().any(|real| {
            n.len() == real.len()
                && n != *real
                && n.iter()
                    .zip(real.iter())
                    .all(|(&a, &b)| a == b || (b == b'-' && !a.is_ascii_alphanumeric()))
        })
    })
}

/// A valid session: allowed, unless the matching rule asks for scopes or roles it lacks
/// (403), or for a second factor or a recent sign-in (401, a step-up). Checked on every
/// request, hit or miss; no decision is cached.
fn admit(
    rule: Option<&Requirement>,
    entry: Arc<Entry>,
    label: AuthMethod,
) -> (Answer, Outcome, AuthMethod) {
    if let Some(rule) = rule {
        let grants = Grants {
            scopes: &entry.session.scopes,
            roles: entry.session.acting_roles(),
        };
        if !rule.admits(&grants) {
            return (refuse(Refusal::Forbidden, false), Outcome::Forbid, label);
        }
        if rule.asks_assurance() {
            if let Some(need) = rule.step_up(&entry.session, crate::session::unix_now()) {
                let bearer = label == AuthMethod::Bearer;
                return (refuse(Refusal::StepUp(need), bearer), Outcome::Deny, label);
            }
        }
    }
    (Answer::Allow(entry), Outcome::Allow, label)
}

fn allow_headers(
    authorization: HeaderValue,
    user: Option<HeaderValue>,
    email: Option<HeaderValue>,
) -> Response<Body> {
    let mut r = Response::new(Body::default());
    let h = r.headers_mut();
    // Sized once for the four headers rather than grown on the first insert.
    h.reserve(4);
    h.insert(AUTHORIZATION, authorization);
    if let Some(user) = user {
        h.insert(X_AUTH_REQUEST_USER, user);
    }
    if let Some(email) = email {
        h.insert(X_AUTH_REQUEST_EMAIL, email);
    }
    h.insert(CACHE_CONTROL, NO_STORE);
    r
}

fn anonymous() -> Answer {
    let mut r = Response::new(Body::default());
    r.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    Answer::Response(r)
}

fn refuse(why: Refusal, bearer: bool) -> Answer {
    let mut r = Response::new(Body::new(Bytes::from_static(why.body())));
    *r.status_mut() = match why {
        Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::Forbidden => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, JSON);
    h.insert(CACHE_CONTROL, NO_STORE);
    match why {
        Refusal::Unavailable | Refusal::Forbidden => {}
        Refusal::StepUp(need) => {
            if bearer {
                h.insert(WWW_AUTHENTICATE, step_up_challenge(need));
            } else {
                h.insert(WWW_AUTHENTICATE, REALM);
            }
            r.extensions_mut().insert(need);
        }
        _ => {
            h.insert(
                WWW_AUTHENTICATE,
                if bearer && why != Refusal::Missing {
                    REALM_INVALID
                } else {
                    REALM
                },
            );
        }
    }
    Answer::Response(r)
}

/// RFC 9470's challenge: what the bearer's user must do for this route.
#[cold]
fn step_up_challenge(need: StepUp) -> HeaderValue {
    let what = match need {
        StepUp::SecondFactor => format!(
            "error_description=\"A second factor is required\", acr_values=\"{}\"",
            crate::session::ACR_TWO_FACTORS
        ),
        StepUp::MaxAge(secs) => format!(
            "error_description=\"A more recent authentication is required\", max_age={secs}"
        ),
    };
    header_value(&format!(
        "Bearer realm=\"gatehouse\", error=\"insufficient_user_authentication\", {what}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderName;

    #[test]
    fn identity_aliases_are_spotted() {
        let with = |name: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("x"),
            );
            has_identity_alias(&h)
        };
        for alias in [
            "X_Auth_Request_User",
            "x.auth.request.email",
            "X~Auth~Request~Email",
            "X-Auth_Request-User",
            "X_Auth_Request_Amr",
        ] {
            assert!(with(alias), "{alias}");
        }
        for fine in [
            "X-Auth-Request-User",
            "X-Auth-Request-Email",
            "Cookie",
            "X-Auth-Request-Usex",
            "X_Auth_Request_Users",
        ] {
            assert!(!with(fine), "{fine}");
        }
    }
}
