//! `accounts`: the people behind the cookies. Registration, login and logout, profile,
//! password change and reset, email confirmation and "your sessions", as server-rendered
//! pages behind the main listener, with users in SQL ([`db`]).
//!
//! A room of its own: it uses the core (the sessions API to issue and revoke sessions, the
//! gateway's metrics and client address) and the core never uses it. The login flow has a
//! seam between "password accepted" and "session issued" ([`web::Step`]), where a second
//! factor will sit.

pub mod admin;
mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod db;
pub mod factors;
pub mod federation;
pub mod followers;
pub mod guard;
pub mod hashes;
pub mod identities;
pub mod import;
pub mod legacy;
pub mod look;
pub mod mail;
pub mod manage;
mod ops;
pub mod outbound;
pub mod outbox;
pub mod pages;
pub mod passkeys;
pub mod password;
pub mod providers;
pub mod roles;
mod second;
mod security;
pub mod userdata;
pub(crate) mod web;
pub mod webhooks;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::ServiceExt;

use crate::auth::Gateway;
use crate::error::ConfigError;
use crate::server::{ModuleBody, Modules};

pub use config::{AccountsArgs, DatabaseArgs, Registration, Roles};

/// One-time tokens (confirmation, reset, invitation) live this long.
pub const TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
/// Invitations live longer: a person may read their mail days later.
pub const INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The values of `gatehouse_logins_total{result}`.
pub const LOGIN_RESULTS: [&str; 6] = [
    "ok",
    "failed",
    "throttled",
    "inactive",
    "unconfirmed",
    "busy",
];

/// The methods of `gatehouse_second_factor_total{method,result}`.
pub const SECOND_FACTOR_METHODS: [&str; 3] = ["passkey", "totp", "recovery"];
/// Its results.
pub const SECOND_FACTOR_RESULTS: [&str; 3] = ["ok", "failed", "throttled"];

/// The module's counters, exposed beside the core's on /metrics.
pub struct AccountMetrics {
    logins: Family<[(&'static str, &'static str); 1], Counter>,
    second_factors: Family<[(&'static str, &'static str); 2], Counter>,
    pub registrations: Counter,
    pub password_resets: Counter,
    pub throttled: Counter,
}

impl AccountMetrics {
    fn new() -> (AccountMetrics, Registry) {
        let mut registry = Registry::with_prefix("gatehouse");
        let m = AccountMetrics {
            logins: Family::default(),
            second_factors: Family::default(),
            registrations: Counter::default(),
            password_resets: Counter::default(),
            throttled: Counter::default(),
        };
        // Every result from the start, at 0: a series that appears only at its first event
        // makes rate() and alerts miss it.
        for result in LOGIN_RESULTS {
            let _ = m.logins.get_or_create(&[("result", result)]);
        }
        registry.register(
            "logins",
            "Login attempts by result (ok, failed, throttled, inactive, unconfirmed, busy)",
            m.logins.clone(),
        );
        for method in SECOND_FACTOR_METHODS {
            for result in SECOND_FACTOR_RESULTS {
                let _ = m
                    .second_factors
                    .get_or_create(&[("method", method), ("result", result)]);
            }
        }
        registry.register(
            "second_factor",
            "Second steps of sign-in and step-up, and passkey sign-ins, by method (passkey, totp, recovery) and result (ok, failed, throttled)",
            m.second_factors.clone(),
        );
        registry.register(
            "registrations",
            "Accounts registered",
            m.registrations.clone(),
        );
        registry.register(
            "password_resets",
            "Passwords reset through an emailed link",
            m.password_resets.clone(),
        );
        registry.register(
            "throttled_requests",
            "Requests refused by a login delay or a per-IP rate limit",
            m.throttled.clone(),
        );
        outbox::register_metrics(&mut registry);
        (m, registry)
    }

    /// Counts a second step; `method` and `result` are of [`SECOND_FACTOR_METHODS`] and
    /// [`SECOND_FACTOR_RESULTS`].
    pub fn second_factor(&self, method: &'static str, result: &'static str) {
        debug_assert!(SECOND_FACTOR_METHODS.contains(&method), "{method}");
        debug_assert!(SECOND_FACTOR_RESULTS.contains(&result), "{result}");
        self.second_factors
            .get_or_create(&[("method", method), ("result", result)])
            .inc();
    }

    /// Counts a login attempt; `result` is one of [`LOGIN_RESULTS`].
    pub fn login(&self, result: &'static str) {
        debug_assert!(LOGIN_RESULTS.contains(&result), "{result}");
        self.logins.get_or_create(&[("result", result)]).inc();
    }
}

/// What the module takes from the server's own flags.
pub struct Host {
    /// `--data-dir`: the SQLite database and the mail files, by default.
    pub data_dir: std::path::PathBuf,
    /// `--listen`: where links point without `--public-url`.
    pub listen: std::net::SocketAddr,
}

/// The module's settings: what the pages read on every request, and what its background
/// work reads when it starts (`outbox_retention`).
pub struct Settings {
    pub cookie_name: String,
    pub csrf_cookie: String,
    pub secure: bool,
    pub cookie_domain: Option<String>,
    pub session_ttl: Duration,
    pub registration: Registration,
    pub registration_domains: Vec<String>,
    pub blocked_domains: Vec<String>,
    pub allowed_redirect_hosts: Vec<String>,
    pub public_url: String,
    pub min_password: usize,
    pub require_second_factor: config::RequireSecondFactor,
    /// `--outbox-retention`: how long an item is tried, and kept once finished.
    pub outbox_retention: Duration,
}

pub struct Accounts {
    pub gateway: Arc<Gateway>,
    pub db: db::Db,
    pub passwords: password::Passwords,
    pub mailer: mail::Mailer,
    pub settings: Settings,
    /// Failed logins per account and per IP.
    pub throttle: guard::Throttle,
    /// Registrations and reset requests per IP.
    pub rate: guard::RateLimit,
    /// Passkey ceremonies begun per IP: each keeps a row until it is used or expires.
    pub ceremonies: guard::RateLimit,
    /// The throttles' counters (shared through Redis when it is the store).
    pub counters: Arc<crate::store::counters::Counters>,
    /// `--server-secret-file`: the known-device cookie's MAC key.
    pub secret: Arc<crate::secret::ServerSecret>,
    pub metrics: AccountMetrics,
    /// The WebAuthn relying party; `None`: passkeys are off (no domain name to bind them to).
    pub passkeys: Option<passkeys::RelyingParty>,
    /// The outbound HTTP client, for what the modules send out.
    pub outbound: Arc<outbound::Outbound>,
    /// `--legacy-password-hook`: the old system checks imported users' first passwords.
    pub legacy_hook: Option<legacy::LegacyHook>,
    /// `--identity-providers`: the other providers people may sign in with.
    pub providers: Vec<Arc<providers::Provider>>,
}

/// Writes an audit line: who did what from where. Never a password, token or hash; the user
/// is escaped and truncated ([`crate::untrusted::Untrusted`]).
#[macro_export]
macro_rules! audit {
    ($event:expr, $user:expr, $ip:expr $(, $k:ident = $v:expr)*) => {
        tracing::info!(target: "gatehouse::audit", event = $event, user = %$crate::untrusted::Untrusted(&$user), ip = %$ip $(, $k = $v)*, "audit")
    };
}

impl Accounts {
    /// The roles as they are now (`accounts::roles`): what a sign-in or a grant carries.
    pub async fn roles(&self) -> Result<Roles, db::DbError> {
        roles::table(&self.db).await
    }

    /// Opens the database and builds the module from `serve`'s flags.
    pub async fn open(
        a: &AccountsArgs,
        host: &Host,
        gateway: Arc<Gateway>,
        secret: Arc<crate::secret::ServerSecret>,
    ) -> Result<Arc<Accounts>, ConfigError> {
        a.validate()?;
        look::Look::load(
            &a.site_name,
            a.theme.as_deref(),
            a.mail_templates.as_deref(),
        )?
        .install();
        audit::install();
        let data_dir = &host.data_dir;
        let db = a.database.open(data_dir).await?;
        let role_file = Roles::load(a.database.roles.as_deref())?;
        let mailer = mail::Mailer::new(a.smtp_url.as_ref(), &a.mail_from, data_dir)?;
        mailer.use_outbox(&db, secret.clone());
        let outbound = Arc::new(outbound::Outbound::new(
            a.outbound_ca.as_deref(),
            a.outbound_allow_private,
        )?);
        webhooks::deliver_with(outbound.clone());
        let providers = providers::load(a.identity_providers.as_deref())?;
        let legacy_hook = legacy::LegacyHook::from_flags(
            a.legacy_password_hook.as_deref(),
            a.legacy_password_hook_secret_file.as_deref(),
        )?;
        let mut allowed: Vec<String> = a
            .allowed_redirect_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(d) = &a.cookie_domain {
            allowed.push(format!(
                ".{}",
                d.trim_start_matches('.').to_ascii_lowercase()
            ));
        }
        if a.public_url.is_none() {
            tracing::warn!(
                public_url = %format!("http://{}", host.listen),
                "links in mail point at --listen; set --public-url to the address people use"
            );
        }
        let (metrics, registry) = AccountMetrics::new();
        gateway.metrics.add_module(registry);
        let settings = Settings {
            cookie_name: gateway.cookie_name().to_owned(),
            // __Host-: only this host, over https, for the whole site (no --cookie-domain);
            // a sibling subdomain cannot plant it.
            csrf_cookie: if !a.insecure_cookies && a.cookie_domain.is_none() {
                format!("__Host-{}_csrf", gateway.cookie_name())
            } else {
                format!("{}_csrf", gateway.cookie_name())
            },
            secure: !a.insecure_cookies,
            cookie_domain: a.cookie_domain.clone(),
            session_ttl: a.session_ttl,
            outbox_retention: a.outbox_retention,
            registration: a.registration,
            registration_domains: domains(&a.registration_domains),
            blocked_domains: domains(&a.blocked_domains),
            allowed_redirect_hosts: allowed,
            public_url: a
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", host.listen))
                .trim_end_matches('/')
                .to_owned(),
            min_password: a.password_min_length,
            require_second_factor: a.require_second_factor,
        };
        tracing::info!(
            database = db.backend(),
            registration = ?a.registration,
            mail = if a.smtp_url.is_some() { "smtp" } else { "files" },
            "accounts ready"
        );
        let passkeys = passkeys::relying_party(a.webauthn_rp_id.as_deref(), &settings.public_url)?;
        let counters = Arc::new(crate::store::counters::Counters::for_store(&gateway.store));
        let app = Arc::new(Accounts {
            gateway,
            db,
            passwords: password::Passwords::new(
                password::OWASP_M_KIB,
                password::OWASP_T,
                password::OWASP_P,
                a.password_min_length,
            ),
            mailer,
            settings,
            throttle: guard::Throttle::new(3, Duration::from_secs(60), counters.clone()),
            rate: guard::RateLimit::new(
                "rate",
                a.ip_rate_limit,
                Duration::from_secs(3600),
                counters.clone(),
            ),
            ceremonies: guard::RateLimit::new(
                "ceremony",
                passkeys::CEREMONIES_PER_MINUTE,
                Duration::from_secs(60),
                counters.clone(),
            ),
            counters,
            secret,
            metrics,
            passkeys,
            outbound,
            legacy_hook,
            providers,
        });
        tokio::spawn(seed_roles(app.clone(), role_file));
        hourly("expired one-time tokens", &app.db, |db, now| async move {
            db.purge_expired_tokens(now).await
        });
        audit::keep(&app.db, a.audit_retention);
        let ttl = app.settings.session_ttl.as_secs();
        hourly(
            "ended federated sessions",
            &app.db,
            move |db, now| async move { db.purge_federated_sessions(now.saturating_sub(ttl)).await },
        );
        Ok(app)
    }

    /// The module as the main listener calls it, with `extra` routes (the registry's) beside
    /// the pages, once every module is open: the outbox's worker starts here, when every kind
    /// has its deliverer (a round before the registry's would hold a back-channel logout for
    /// a claim's length).
    pub fn modules(self: &Arc<Self>, extra: axum::Router) -> Arc<dyn Modules> {
        outbox::start(&self.db, self.settings.outbox_retention);
        let own = web::routes()
            .merge(security::routes())
            .merge(api::routes())
            .merge(federation::routes())
            .merge(userdata::routes())
            .merge(admin::routes())
            .merge(look::routes())
            .fallback(web::not_found)
            .with_state(self.clone());
        Arc::new(Routes(own.merge(extra)))
    }
}

/// Runs the database housekeeping `purge` on `db` at start and then every hour while the
/// server runs, with the time (Unix seconds) it runs at: `what` it deletes, for the log. A
/// failure is logged and tried again an hour later.
pub(crate) fn hourly<F, Fut>(what: &'static str, db: &db::Db, purge: F)
where
    F: Fn(db::Db, u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, db::DbError>> + Send,
{
    let db = db.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match purge(db.clone(), crate::session::unix_now()).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "purged {what}"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot purge {what}; trying again in an hour")
                }
            }
        }
    });
}

/// `--roles` at start: the file's roles are stored (read-only elsewhere), and the sessions
/// of every user holding a role whose scopes changed (or that appeared or went) end first, so
/// the next sign-in carries the new scopes. Retried until the session store answers (Redis may
/// come up after gatehouse).
async fn seed_roles(app: Arc<Accounts>, file: Option<Roles>) {
    let mut wait = Duration::from_secs(1);
    loop {
        let done = async {
            let plan = roles::plan(&app.db, file.as_ref()).await?;
            let users = roles::seed(&app.db, &app.gateway.sessions(), &plan).await?;
            if users > 0 {
                tracing::info!(
                    roles = ?plan.changed,
                    users,
                    "role scopes changed since the last start: their users' sessions ended"
                );
            }
            Ok::<(), roles::RoleError>(())
        };
        match done.await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "role change: sessions not yet ended");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn domains(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect()
}

/// The peer address of the connection, handed to the handlers.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub IpAddr);

struct Routes(axum::Router);

impl Modules for Routes {
    fn call(
        &self,
        mut request: Request<Incoming>,
        peer: IpAddr,
    ) -> Pin<Box<dyn std::future::Future<Output = Response<ModuleBody>> + Send>> {
        request.extensions_mut().insert(Peer(peer));
        let router = self.0.clone();
        Box::pin(async move {
            let response = match router.oneshot(request.map(axum::body::Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            response.map(|body| {
                body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                    .boxed_unsync()
            })
        })
    }
}
