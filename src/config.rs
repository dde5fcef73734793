//! Command line and environment: one clap-derive tree, every flag also `GATEHOUSE_<FLAG>`.
//!
//! Values are parsed and checked here, before any socket opens. A bad value is a
//! [`ConfigError`] naming the flag; `main` turns it into exit code 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::duration::parse_duration;
pub use crate::net::{parse_cidr, Cidr};
use crate::policy::OriginalRequest;
use crate::secret::Secret;
pub use crate::signer::{JwtAlg, KeyArgs};
pub use crate::store::StoreArgs;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Authentication gateway for NGINX auth_request"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(Box<ServeArgs>),
    /// Create, revoke and list sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage users (accounts).
    #[cfg(feature = "accounts")]
    #[command(subcommand)]
    User(crate::accounts::cli::UserCommand),
    /// Roles and the scopes they grant (accounts).
    #[cfg(feature = "accounts")]
    #[command(subcommand)]
    Role(crate::accounts::cli::RolesCommand),
    /// The audit trail (accounts).
    #[cfg(feature = "accounts")]
    #[command(subcommand)]
    Audit(crate::accounts::cli::AuditCommand),
    /// What waits to reach other systems (accounts).
    #[cfg(feature = "accounts")]
    #[command(subcommand)]
    Outbox(crate::accounts::cli::OutboxCommand),
    /// Manage OAuth2 clients (registry).
    #[cfg(feature = "registry")]
    #[command(subcommand)]
    Client(crate::registry::cli::ClientCommand),
    /// Personal access tokens (registry).
    #[cfg(feature = "registry")]
    #[command(subcommand)]
    Token(crate::registry::cli::TokenCommand),
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        env = "GATEHOUSE_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `gatehouse=debug`.
    #[arg(
        long,
        env = "GATEHOUSE_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Anonymous {
    Allow,
    Deny,
}

/// The default of `--cookie-name`.
pub const DEFAULT_COOKIE: &str = "gatehouse_session";

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Compat {
    /// arXiv's authenticator: `ARXIVNG_SESSION_ID` cookie, HS256 session records.
    Arxiv,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the main listener (/auth, JWKS).
    #[arg(long, env = "GATEHOUSE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "GATEHOUSE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Name of the session cookie.
    #[arg(
        long,
        env = "GATEHOUSE_COOKIE_NAME",
        default_value = DEFAULT_COOKIE
    )]
    pub cookie_name: String,
    /// The `iss` claim of minted JWTs.
    #[arg(long, env = "GATEHOUSE_ISSUER", default_value = "gatehouse")]
    pub issuer: String,
    /// The `aud` claim of minted JWTs (omitted when unset).
    #[arg(long, env = "GATEHOUSE_AUDIENCE")]
    pub audience: Option<String>,
    /// Signing algorithm.
    #[arg(long, env = "GATEHOUSE_JWT_ALG", value_enum, default_value = "EdDSA")]
    pub jwt_alg: JwtAlg,
    /// Lifetime of minted JWTs (never past the session's expiry).
    #[arg(long, env = "GATEHOUSE_JWT_TTL", default_value = "300s", value_parser = parse_duration)]
    pub jwt_ttl: Duration,
    /// Shared secret for HS256 (at least 32 bytes).
    #[arg(long, env = "GATEHOUSE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret<String>>,
    /// Longest time a session stays in the in-process cache.
    #[arg(long, env = "GATEHOUSE_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// A session's `last_seen` is written at most this often (off the request path).
    #[arg(long, env = "GATEHOUSE_TOUCH_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub touch_interval: Duration,
    /// End sessions unused for this long (e.g. `8h`); unset: only their expiry ends them.
    /// Must exceed --touch-interval plus --cache-ttl, the precision of `last_seen`.
    #[arg(long, env = "GATEHOUSE_SESSION_IDLE", value_parser = parse_duration)]
    pub session_idle: Option<Duration>,
    /// Most sessions held in the in-process cache.
    #[arg(long, env = "GATEHOUSE_CACHE_CAPACITY", default_value = "100000")]
    pub cache_capacity: u64,
    /// Answer requests without a credential with 200 (allow) or 401 (deny).
    #[arg(long, env = "GATEHOUSE_ANONYMOUS", value_enum, default_value = "deny")]
    pub anonymous: Anonymous,
    /// Connections the main listener holds open at once; beyond it new connections are
    /// closed at once (nginx's upstream keepalive needs only a few dozen per worker).
    #[arg(long, env = "GATEHOUSE_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: usize,
    /// A client that has not sent its request headers within this time is disconnected.
    #[arg(long, env = "GATEHOUSE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Route policy (TOML): rules by host, path prefix and method that require scopes or
    /// roles, or let requests through anonymously. See README, "Route policy".
    #[arg(long, env = "GATEHOUSE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Peers whose X-Original-* / X-Forwarded-* headers are believed (CIDRs, comma-separated).
    /// From any other peer they are ignored, and with --policy such a request is refused.
    #[arg(long, env = "GATEHOUSE_TRUSTED_PROXIES", value_delimiter = ',', default_value = "127.0.0.0/8,::1/128", value_parser = parse_cidr)]
    pub trusted_proxies: Vec<Cidr>,
    /// Which headers describe the request being authorised: `nginx` (X-Original-URI,
    /// -Method, -Host), `ingress-nginx` (X-Original-URL), `forwarded` (X-Forwarded-Uri,
    /// -Method, -Host: Traefik, Caddy), or `auto` (whichever one is present; a request that
    /// carries two families is refused). Pin it to what your proxy sets.
    #[arg(long, env = "GATEHOUSE_ORIGINAL_REQUEST", default_value = "auto",
          value_parser = clap::builder::PossibleValuesParser::new(OriginalRequest::NAMES)
              .map(|s| OriginalRequest::parse(&s).expect("one of NAMES")))]
    pub original_request: OriginalRequest,
    /// Login page for `/auth/redirect` (Traefik, Caddy forward auth): a browser that is
    /// refused there is sent to this URL with `rd` set to the page it asked for.
    #[arg(long, env = "GATEHOUSE_LOGIN_URL")]
    pub login_url: Option<String>,
    /// Drop-in compatibility with another system's sessions: `arxiv` reads arXiv's
    /// `ARXIVNG_SESSION_ID` cookie and session records in its Redis (needs --redis-url and
    /// --jwt-secret, arXiv's JWT secret).
    #[arg(long, env = "GATEHOUSE_COMPAT", value_enum)]
    pub compat: Option<Compat>,
    /// The secret every replica shares for what gatehouse signs for itself (the known-device
    /// cookie): a file of at least 32 bytes. Created (256 random bits, 0600) when absent;
    /// default `<data-dir>/server.secret`. Not a signing key: keep it out of --keys-dir.
    #[arg(long, env = "GATEHOUSE_SERVER_SECRET_FILE")]
    pub server_secret_file: Option<PathBuf>,
    /// The companion modules to run: `all`, `none`, or a list (`accounts`,
    /// `accounts,registry`). Default: every module compiled in (none with --compat arxiv).
    /// With `none`, gatehouse is the bare gateway: no pages, `/login` is 404.
    #[arg(long, env = "GATEHOUSE_MODULES", value_parser = parse_modules)]
    pub modules: Option<ModuleSet>,
    /// Runtime worker threads; 0 means one per CPU. On a small machine shared with nginx,
    /// fewer workers than cores can be faster (see README, Performance).
    #[arg(long, env = "GATEHOUSE_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// On SIGTERM, how long /readyz answers 503 while requests are still served, so that load
    /// balancers stop sending before the listener closes.
    #[arg(long, env = "GATEHOUSE_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// On SIGTERM, the deadline for in-flight requests once the listener has closed.
    #[arg(long, env = "GATEHOUSE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    #[cfg(feature = "accounts")]
    #[command(flatten)]
    pub accounts: crate::accounts::AccountsArgs,
    #[cfg(feature = "registry")]
    #[command(flatten)]
    pub registry: crate::registry::RegistryArgs,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session and print its token on stdout.
    Create(Box<SessionCreateArgs>),
    /// Revoke one session (by token) or all sessions of a user (--sub).
    Revoke(SessionRevokeArgs),
    /// List a user's sessions.
    List(SessionListArgs),
}

#[derive(Debug, Args)]
pub struct SessionCreateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// A granted scope; repeat for more.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// A role; repeat for more.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Lifetime of the session.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub ttl: Duration,
    /// How the user authenticated, when another system signed them in (RFC 8176: `pwd`,
    /// `otp`, `hwk`, `mfa`); repeat for more. `mfa` satisfies a policy's `mfa = true`.
    #[arg(long = "amr", value_parser = ["pwd", "otp", "hwk", "mfa"])]
    pub amr: Vec<String>,
    /// How long ago they authenticated (a policy's `max_age` counts from then); default now.
    #[arg(long, value_parser = parse_duration)]
    pub auth_age: Option<Duration>,
    /// Print the whole record as JSON (with the token) instead of the token alone.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SessionRevokeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The session token; `-` or nothing reads it from stdin, which is the safe way (a token
    /// in argv is visible in /proc and kept in shell history).
    #[arg(conflicts_with = "sub")]
    pub token: Option<Secret<String>>,
    /// Revoke every session of this user (or, with --sid, one of them).
    #[arg(long)]
    pub sub: Option<String>,
    /// Revoke the session of this handle (as `session list` shows it); needs --sub. A handle
    /// may start with `-` (it is base64url), so the value is taken as it is.
    #[arg(long, requires = "sub", allow_hyphen_values = true)]
    pub sid: Option<String>,
}

#[derive(Debug, Args)]
pub struct SessionListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long)]
    pub sub: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new signing key into --keys-dir.
    Generate(KeysGenerateArgs),
}

#[derive(Debug, Args)]
pub struct KeysGenerateArgs {
    #[arg(long, env = "GATEHOUSE_DATA_DIR", default_value = "./gatehouse-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[arg(long, value_enum, default_value = "EdDSA")]
    pub alg: JwtAlg,
    /// Publish the key at once but sign with it only from this long after now, so that every
    /// replica, and every consumer's cached JWKS (max-age 5 min), knows it before it signs.
    /// Default: 6m, or at once for the first key of its algorithm; `0s` signs at once.
    #[arg(long, env = "GATEHOUSE_ACTIVATE_IN", value_parser = parse_duration)]
    pub activate_in: Option<std::time::Duration>,
}

pub use crate::error::ConfigError;

impl ServeArgs {
    /// `--server-secret-file`, or its default in the data directory.
    pub fn server_secret_path(&self) -> PathBuf {
        self.server_secret_file
            .clone()
            .unwrap_or_else(|| self.store.data_dir.join("server.secret"))
    }

    /// The modules this server runs: `--modules`, else every one compiled in, and none with
    /// `--compat arxiv`.
    pub fn running_modules(&self) -> ModuleSet {
        match (self.modules, self.compat) {
            (Some(set), _) => set,
            (None, Some(Compat::Arxiv)) => ModuleSet::NONE,
            (None, None) => ModuleSet::COMPILED,
        }
    }

    /// The gateway's settings, free of the command line.
    pub fn gateway_settings(&self) -> crate::auth::GatewaySettings {
        let arxiv = self.compat == Some(Compat::Arxiv);
        crate::auth::GatewaySettings {
            // arXiv's cookie, unless another name was asked for.
            cookie_name: if arxiv && self.cookie_name == DEFAULT_COOKIE {
                crate::arxiv::COOKIE.to_string()
            } else {
                self.cookie_name.clone()
            },
            // arXiv's authenticator let requests without a credential through, anonymous.
            anonymous: self.anonymous == Anonymous::Allow || arxiv,
            arxiv_secret: self.jwt_secret.clone().filter(|_| arxiv),
            login_url: self.login_url.clone(),
            policy_path: self.policy.clone(),
            keys_dir: self.keys.dir(&self.store.data_dir),
            jwt_alg: self.jwt_alg,
            jwt_secret: self.jwt_secret.clone(),
            jwt_ttl: self.jwt_ttl,
            trusted_proxies: self.trusted_proxies.clone(),
            original_request: self.original_request,
            cache_ttl: self.cache_ttl,
            cache_capacity: self.cache_capacity,
            touch_interval: self.touch_interval,
            session_idle: self.session_idle,
        }
    }

    /// Checks what clap's per-value parsing cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cookie_name.is_empty()
            || !self
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(ConfigError::new(
                "--cookie-name",
                "must be a non-empty cookie token",
            ));
        }
        if self.issuer.is_empty() {
            return Err(ConfigError::new("--issuer", "must not be empty"));
        }
        if self.jwt_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new("--jwt-ttl", "must be at least 1s"));
        }
        if self.cache_ttl.is_zero() {
            return Err(ConfigError::new("--cache-ttl", "must be more than 0"));
        }
        if self.touch_interval < Duration::from_secs(1) {
            return Err(ConfigError::new("--touch-interval", "must be at least 1s"));
        }
        if let Some(idle) = self.session_idle {
            if idle <= self.touch_interval + self.cache_ttl {
                return Err(ConfigError::new(
                    "--session-idle",
                    "must exceed --touch-interval plus --cache-ttl (a session in use would look idle)",
                ));
            }
        }
        if self.cache_capacity == 0 {
            return Err(ConfigError::new("--cache-capacity", "must be more than 0"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("--max-connections", "must be more than 0"));
        }
        if self.header_timeout.is_zero() {
            return Err(ConfigError::new("--header-timeout", "must be more than 0"));
        }
        if self.policy.is_some() && self.anonymous == Anonymous::Allow {
            return Err(ConfigError::new(
                "--anonymous",
                "cannot be combined with --policy (say anonymous = true in the policy's rules or [default])",
            ));
        }
        if let Some(path) = &self.policy {
            crate::policy::Policy::load(path).map_err(|why| ConfigError::new("--policy", why))?;
        }
        if let Some(url) = &self.login_url {
            crate::forward::check_login_url(url)
                .map_err(|why| ConfigError::new("--login-url", why))?;
        }
        if let Some(set) = self.modules {
            set.check()?;
            if self.compat == Some(Compat::Arxiv) && set != ModuleSet::NONE {
                return Err(ConfigError::new(
                    "--modules",
                    "cannot name a module with --compat arxiv: accounts' pages would sign people into sessions that /auth ignores, and its tokens would be looked up as arXiv keys",
                ));
            }
        }
        if self.compat == Some(Compat::Arxiv) {
            if self.store.redis_url.is_none() {
                return Err(ConfigError::new(
                    "--compat",
                    "arxiv needs --redis-url (arXiv's Redis)",
                ));
            }
            if self
                .jwt_secret
                .as_ref()
                .is_none_or(|s| s.expose().is_empty())
            {
                return Err(ConfigError::new(
                    "--jwt-secret",
                    "is required with --compat arxiv (arXiv's JWT secret)",
                ));
            }
            return self.store.validate();
        }
        match (&self.jwt_alg, &self.jwt_secret) {
            (JwtAlg::Hs256, None) => {
                return Err(ConfigError::new(
                    "--jwt-secret",
                    "is required with --jwt-alg HS256",
                ))
            }
            (JwtAlg::Hs256, Some(s)) if s.expose().len() < 32 => {
                return Err(ConfigError::new(
                    "--jwt-secret",
                    "must be at least 32 bytes",
                ))
            }
            _ => {}
        }
        self.store.validate()
    }
}

/// Which companion modules run (`--modules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleSet {
    pub accounts: bool,
    pub registry: bool,
}

impl ModuleSet {
    pub const NONE: ModuleSet = ModuleSet {
        accounts: false,
        registry: false,
    };
    /// Every module compiled into this binary.
    pub const COMPILED: ModuleSet = ModuleSet {
        accounts: cfg!(feature = "accounts"),
        registry: cfg!(feature = "registry"),
    };

    /// Refuses a set this binary cannot run: a module not compiled in, or the registry
    /// without accounts (its clients, consent and sign-in live there).
    pub fn check(self) -> Result<(), ConfigError> {
        for (wanted, compiled, name) in [
            (self.accounts, cfg!(feature = "accounts"), "accounts"),
            (self.registry, cfg!(feature = "registry"), "registry"),
        ] {
            if wanted && !compiled {
                return Err(ConfigError::new(
                    "--modules",
                    format!("{name} is not compiled into this binary (cargo feature {name})"),
                ));
            }
        }
        if self.registry && !self.accounts {
            return Err(ConfigError::new(
                "--modules",
                "registry needs accounts: use accounts,registry",
            ));
        }
        Ok(())
    }
}

fn parse_modules(s: &str) -> Result<ModuleSet, String> {
    match s.trim() {
        "all" => return Ok(ModuleSet::COMPILED),
        "none" => return Ok(ModuleSet::NONE),
        _ => {}
    }
    let mut set = ModuleSet::NONE;
    for name in s.split(',').map(str::trim) {
        match name {
            "accounts" => set.accounts = true,
            "registry" => set.registry = true,
            other => {
                return Err(format!(
                    "unknown module {other:?}: say all, none, accounts or accounts,registry"
                ))
            }
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 years").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
