//! The two listeners and their routes, and Kubernetes-shaped shutdown.
//!
//! Main listener: `/auth`, `/auth/redirect` and `/.well-known/jwks.json`, answered by a raw
//! match with an unboxed body; every other path falls through to the companion modules'
//! router ([`Modules`]), when one is given, so that `accounts` and `registry` add routes
//! without touching the hot path. Each main-listener connection starts on the lean path
//! (`server/lean.rs`), which answers nginx's keep-alive auth subrequests without hyper's
//! per-request machinery and hands the connection to hyper at the first request it does not
//! take. Admin listener: `/healthz`, `/readyz`, `/metrics` — kept apart so probes and
//! scrapes never share a port or a code path with authentication.
//! `serve` takes already-bound listeners, so tests bind port 0.
//!
//! Shutdown: `/readyz` turns 503 at once; requests are still served for `--shutdown-delay`
//! (load balancers need a moment to notice); then the main listener stays open for as long
//! as requests keep coming (a co-located nginx drains on its own schedule, and a closed
//! listener would turn its auth subrequests into 500s), until none came for [`QUIET`] or
//! `--shutdown-timeout` has passed; then it closes and in-flight requests get
//! `--shutdown-timeout` to finish; then the admin listener closes.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::auth::{Body, Gateway};
use crate::store::SessionStore;

mod lean;

/// The body of a module's answer: boxed, since modules answer pages and APIs, not the hot
/// path.
pub type ModuleBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the main listener answers with: `/auth`'s unboxed body, or a module's.
pub type MainBody = Either<Body, ModuleBody>;

/// The routes of the companion modules: everything on the main listener but `/auth`,
/// `/auth/redirect` and the JWKS. An axum `Router` fits behind this in a few lines; the
/// core names no module and no web framework.
pub trait Modules: Send + Sync + 'static {
    fn call(
        &self,
        request: Request<Incoming>,
        peer: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Response<ModuleBody>> + Send>>;
}

/// Largest request head accepted (hyper's read buffer); nginx's default for large headers is
/// 4 × 8 KiB, and `/auth` requests carry only headers.
const MAX_HEAD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Connections the main listener holds at once; more are closed at accept.
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
}

/// Serves until `shutdown` resolves, then drains and returns.
pub async fn serve(
    main: TcpListener,
    admin: TcpListener,
    gateway: Arc<Gateway>,
    modules: Option<Arc<dyn Modules>>,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD);

    let (stop_main, main_stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);

    let main_task = {
        let (gw, http) = (gateway.clone(), http.clone());
        let header_timeout = settings.header_timeout;
        tokio::spawn(accept_loop(
            main,
            main_stopped,
            settings.max_connections,
            settings.shutdown_timeout,
            move |stream, peer, watcher, stop| {
                let (gw, http, modules) = (gw.clone(), http.clone(), modules.clone());
                async move {
                    let lean = lean::serve(stream, peer, &gw, header_timeout, MAX_HEAD, stop);
                    let lean::Handover::Hyper(io) = lean.await else {
                        return;
                    };
                    let handler = move |req| {
                        let (gw, modules) = (gw.clone(), modules.clone());
                        async move {
                            Ok::<_, Infallible>(
                                route_main(&gw, modules.as_deref(), req, peer).await,
                            )
                        }
                    };
                    serve_hyper(&http, io, watcher, handler).await;
                }
            },
        ))
    };
    let gw = gateway.clone();
    let admin_task = tokio::spawn(accept_loop(
        admin,
        admin_stopped,
        ADMIN_MAX_CONNECTIONS,
        Duration::from_secs(1),
        move |stream, _peer, watcher, _stop| {
            let gw = gw.clone();
            let handler = move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(route_admin(&gw, req).await) }
            };
            serve_hyper(&http, stream, watcher, handler)
        },
    ));

    shutdown.await;
    gateway.begin_shutdown();
    tracing::info!(delay = ?settings.shutdown_delay, "shutting down: readiness is 503");
    tokio::time::sleep(settings.shutdown_delay).await;
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    let mut seen = gateway.metrics.auth_requests();
    loop {
        tokio::time::sleep(QUIET).await;
        let now = gateway.metrics.auth_requests();
        if now == seen {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(timeout = ?settings.shutdown_timeout, "requests still coming at --shutdown-timeout; closing the listener anyway");
            break;
        }
        seen = now;
    }
    tracing::info!("no more requests; closing the listener");
    let _ = stop_main.send(true);
    let _ = main_task.await;
    let _ = stop_admin.send(true);
    let _ = admin_task.await;
    tracing::info!("stopped");
}

/// During a shutdown, the main listener closes once no request has come for this long.
pub const QUIET: Duration = Duration::from_millis(250);

/// Probes and scrapes need few connections; a flood on the admin port must not starve the
/// process of file descriptors either.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Accepts connections until `stop` turns true and serves each with `serve_conn`, which is
/// given the connection's graceful-shutdown watcher (for hyper) and `stop` (for the lean
/// path); then waits up to `drain_deadline` for every connection to end.
async fn accept_loop<C, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    max_connections: usize,
    drain_deadline: Duration,
    serve_conn: C,
) where
    C: Fn(TcpStream, IpAddr, Watcher, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    // One permit per open connection. At the limit a new connection is closed at once: the
    // proxy sees a refused connection (nginx: 500, fail closed) instead of a request that
    // waits in a queue nobody bounds, and memory stays bounded whatever the flood.
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut refused_since_log = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        refused_since_log += 1;
                        if refused_since_log == 1 || refused_since_log.is_multiple_of(10_000) {
                            tracing::warn!(limit = max_connections, refused = refused_since_log, "connection limit reached; closing new connections (--max-connections)");
                        }
                        drop(stream);
                        continue;
                    };
                    refused_since_log = 0;
                    let _ = stream.set_nodelay(true);
                    // The watcher lives as long as the connection, so that the drain below
                    // waits for every connection, hyper's or the lean path's.
                    let conn = serve_conn(stream, peer.ip(), graceful.watcher(), stop.clone());
                    tokio::spawn(async move {
                        conn.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain_deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(deadline = ?drain_deadline, "connections still open at the drain deadline");
    }
}

/// Serves one connection with hyper until it ends or a graceful shutdown closes it.
fn serve_hyper<I, F, Fut, B>(
    http: &http1::Builder,
    io: I,
    watcher: Watcher,
    handler: F,
) -> impl Future<Output = ()> + Send + 'static
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = watcher.watch(http.serve_connection(TokioIo::new(io), service_fn(handler)));
    async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

async fn route_main(
    gw: &Gateway,
    modules: Option<&dyn Modules>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Response<MainBody> {
    match req.uri().path() {
        "/auth" => gw.auth(req.headers(), peer).await.map(Either::Left),
        // Boxed: every other route's future would otherwise make `/auth`'s as large.
        _ => Box::pin(route_rest(gw, modules, req, peer)).await,
    }
}

/// Everything but `/auth`: the core's other routes, then the modules (or 404).
async fn route_rest(
    gw: &Gateway,
    modules: Option<&dyn Modules>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Response<MainBody> {
    let response = match req.uri().path() {
        "/auth/redirect" => gw.auth_redirect(req.headers(), peer).await,
        "/.well-known/jwks.json" => jwks(gw, req.method()),
        _ => match modules {
            Some(modules) => return modules.call(req, peer).await.map(Either::Right),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    };
    response.map(Either::Left)
}

fn jwks(gw: &Gateway, method: &Method) -> Response<Body> {
    match *method {
        Method::GET | Method::HEAD => {
            let mut r = Response::new(Body::new(gw.signer.load().jwks()));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // Keep in step with signer::JWKS_MAX_AGE (keys generate waits past it).
            const _: () = assert!(crate::signer::JWKS_MAX_AGE.as_secs() == 300);
            r.headers_mut().insert(
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn route_admin(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if gw.is_shutting_down() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            let start = std::time::Instant::now();
            let ping = gw.store.ping().await;
            gw.metrics
                .store(crate::metrics::StoreOp::Ping, ping.is_ok(), start.elapsed());
            match ping {
                Ok(()) if gw.cache.is_following() => text(StatusCode::OK, "ready\n"),
                // Ready, slower: every request reads the store (see SessionCache).
                Ok(()) => text(
                    StatusCode::OK,
                    "ready; revocation channel not followed: sessions are read from the store, uncached\n",
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "not ready");
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "session store unavailable\n",
                    )
                }
            }
        }
        "/metrics" => {
            gw.metrics.cache_entries.set(gw.cache.entry_count() as i64);
            let mut r = Response::new(Body::new(Bytes::from(gw.metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
