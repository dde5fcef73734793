//! gatehouse: an authentication gateway for NGINX `auth_request` and forward-auth proxies.
//!
//! A request's way through the code: `main.rs` parses [`config`] and calls [`run`];
//! [`server`] accepts connections and routes `/auth` to [`auth::Gateway::auth`], which reads
//! the [`credential`], looks in the [`cache`], and on a miss asks the [`store`] and the
//! [`signer`]. [`metrics`] and [`telemetry`] observe; [`cli`] administers the same store.

#![forbid(unsafe_code)]

#[cfg(feature = "accounts")]
pub mod accounts;
pub mod arxiv;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod credential;
pub mod duration;
pub mod error;
pub mod files;
pub mod forward;
pub mod metrics;
pub mod net;
pub mod policy;
#[cfg(feature = "registry")]
pub mod registry;
pub mod secret;
pub mod server;
pub mod session;
pub mod sessions;
pub mod signer;
pub mod store;
pub mod telemetry;
pub mod untrusted;

/// Helpers for the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_util {
    use hyper::header::{HeaderMap, HeaderName, HeaderValue};

    /// A header map of `(name, value)` pairs, in order, repeats kept.
    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }
}

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Command, ConfigError, ServeArgs};
use crate::store::{OpenError, SessionStore, StoreError};

/// Why a command failed, classified by exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Exit 64: bad configuration; the message names the flag.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Exit 69: the session store cannot be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Exit 1: anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 64,
            Failure::Store(_) => 69,
            Failure::Other(_) => 1,
        }
    }
}

impl From<OpenError> for Failure {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Config(c) => Failure::Config(c),
            OpenError::Store(s) => Failure::Store(s),
        }
    }
}

/// Runs one subcommand to completion.
pub async fn run(command: Command) -> Result<(), Failure> {
    #[cfg(feature = "registry")]
    registry::install();
    #[cfg(feature = "accounts")]
    accounts::audit::install();
    let done = match command {
        Command::Serve(args) => serve_until_signal(*args).await,
        Command::Session(cmd) => cli::session(cmd).await,
        Command::Keys(cmd) => cli::keys(cmd),
        #[cfg(feature = "accounts")]
        Command::User(args) => accounts::cli::user(args).await,
        #[cfg(feature = "accounts")]
        Command::Audit(args) => accounts::cli::audit(args).await,
        #[cfg(feature = "accounts")]
        Command::Role(args) => accounts::cli::roles(args).await,
        #[cfg(feature = "accounts")]
        Command::Outbox(args) => accounts::cli::outbox(args).await,
        #[cfg(feature = "registry")]
        Command::Client(args) => registry::cli::client(args).await,
        #[cfg(feature = "registry")]
        Command::Token(args) => registry::cli::token(args).await,
    };
    // What a command audited is written before it exits.
    #[cfg(feature = "accounts")]
    accounts::audit::settle().await;
    done
}

/// The modules' part of logging: accounts' audit rows (`main` installs it with the log).
pub fn log_layer<S>() -> Option<Box<dyn tracing_subscriber::Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    #[cfg(feature = "accounts")]
    return Some(accounts::audit::layer());
    #[cfg(not(feature = "accounts"))]
    None
}

/// Builds everything `/auth` needs from the flags: store, keys, cache, metrics.
pub async fn build_gateway(args: &ServeArgs) -> Result<Arc<auth::Gateway>, Failure> {
    args.validate()?;
    // The data directory holds sessions, users, keys and mail: private, whatever an older
    // version or a umask left readable. (Created where something is stored in it.)
    if args.store.data_dir.is_dir() {
        files::private_dir(&args.store.data_dir, "--data-dir")?;
        files::tighten(&args.store.data_dir);
    }
    let store = store::Store::open(&args.store.settings(), None).await?;
    let keys_dir = args.keys.dir(&args.store.data_dir);
    // OpenID Connect requires RS256 (Core §15.1): with the registry running, id_tokens always
    // have an RS256 key, whatever --jwt-alg signs.
    if args.running_modules().registry {
        signer::ensure_key(&keys_dir, signer::JwtAlg::Rs256)?;
    }
    let signer = signer::Signer::load(
        &keys_dir,
        args.jwt_alg,
        args.jwt_secret.as_ref(),
        signer::TokenSettings {
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
            ttl_secs: args.jwt_ttl.as_secs(),
        },
    )?;
    let policy = match &args.policy {
        None => None,
        Some(path) => Some(
            policy::Policy::load(path).map_err(|why| config::ConfigError::new("--policy", why))?,
        ),
    };
    let gateway = auth::Gateway::new(
        args.gateway_settings(),
        store,
        signer,
        metrics::Metrics::new(),
        policy,
    );
    gateway.start_background();
    Ok(gateway)
}

/// The companion modules compiled in, behind the main listener.
#[allow(clippy::unused_async)]
pub async fn build_modules(
    args: &ServeArgs,
    gateway: &Arc<auth::Gateway>,
    secret: Option<Arc<secret::ServerSecret>>,
) -> Result<Option<Arc<dyn server::Modules>>, Failure> {
    let set = args.running_modules();
    #[cfg(feature = "accounts")]
    {
        let Some(secret) = secret.filter(|_| set.accounts) else {
            return Ok(None);
        };
        let host = accounts::Host {
            data_dir: args.store.data_dir.clone(),
            listen: args.listen,
        };
        let accounts =
            accounts::Accounts::open(&args.accounts, &host, gateway.clone(), secret).await?;
        #[cfg(feature = "registry")]
        let extra = if set.registry {
            registry::Registry::new(&args.registry, accounts.clone())?.router()
        } else {
            axum::Router::new()
        };
        #[cfg(not(feature = "registry"))]
        let extra = axum::Router::new();
        Ok(Some(accounts.modules(extra)))
    }
    #[cfg(not(feature = "accounts"))]
    {
        let _ = (set, gateway, secret);
        Ok(None)
    }
}

pub fn server_settings(args: &ServeArgs) -> server::ServerSettings {
    server::ServerSettings {
        max_connections: args.max_connections,
        header_timeout: args.header_timeout,
        shutdown_delay: args.shutdown_delay,
        shutdown_timeout: args.shutdown_timeout,
    }
}

async fn bind(addr: std::net::SocketAddr, flag: &'static str) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError::new(flag, format!("cannot listen on {addr}: {e}")).into())
}

async fn serve_until_signal(args: ServeArgs) -> Result<(), Failure> {
    args.validate()?;
    let main = bind(args.listen, "--listen").await?;
    let admin = bind(args.admin_listen, "--admin-listen").await?;
    // The server secret before anything is written or logged: a missing one that cannot be
    // made is a one-line configuration error. Only the modules use it today.
    let secret = if args.running_modules() == config::ModuleSet::NONE {
        None
    } else {
        Some(Arc::new(secret::ServerSecret::load_or_create(
            &args.server_secret_path(),
        )?))
    };
    let gateway = build_gateway(&args).await?;
    let modules = build_modules(&args, &gateway, secret).await?;
    if let Err(e) = gateway.store.ping().await {
        tracing::warn!(error = %e, "session store unreachable; /readyz answers 503 until it answers");
    }
    tracing::info!(
        listen = %args.listen,
        admin = %args.admin_listen,
        store = gateway.store.kind(),
        kid = gateway.signer.load().kid(),
        "gatehouse serving"
    );
    // SIGHUP: re-read the policy and the keys, off the request threads.
    let reloading = gateway.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let gw = reloading.clone();
            let _ = tokio::task::spawn_blocking(move || gw.reload()).await;
        }
    });
    server::serve(
        main,
        admin,
        gateway,
        modules,
        server_settings(&args),
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
