//! `registry`: an OAuth2 authorization server for API clients. Clients live in the accounts
//! database; the access tokens it issues are sessions of kind `client`, so `/auth` resolves
//! them on the same hot path as a browser's cookie, with exactly the granted scopes and the
//! `client_id` in the JWT.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::accounts::Accounts;
use crate::duration::parse_duration;
use crate::error::ConfigError;

mod admin;
mod authorize;
pub mod catalog;
mod cimd;
pub mod cli;
pub mod clients;
mod device;
pub mod grants;
mod logout;
mod oauth;
mod oidc;
mod pages;
pub mod personal;
pub mod register;
mod schema;

#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Lifetime of an access token: the `expires_in` of the token response and the stored
    /// session's, the same number.
    #[arg(long, env = "GATEHOUSE_ACCESS_TOKEN_TTL", default_value = "1h", value_parser = parse_duration)]
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token; each use rotates it (a new one, the old one spent).
    #[arg(long, env = "GATEHOUSE_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,
    /// Offer "never" as the expiry of personal access tokens.
    #[arg(long, env = "GATEHOUSE_ALLOW_NON_EXPIRING_TOKENS")]
    pub allow_non_expiring_tokens: bool,
    /// The APIs `GET /api` lists (TOML, `[[api]]` tables: name, description, base_url,
    /// scopes, docs).
    #[arg(long, env = "GATEHOUSE_API_CATALOG")]
    pub api_catalog: Option<std::path::PathBuf>,
    /// Who may register a client at /oauth/register (RFC 7591): nobody, the holder of an
    /// initial access token (`gatehouse client registration-token create`), or anyone
    /// (limited per address).
    #[arg(
        long,
        env = "GATEHOUSE_CLIENT_REGISTRATION",
        value_enum,
        default_value = "closed"
    )]
    pub client_registration: clients::ClientRegistration,
    /// The scopes a client that registers itself may have (comma-separated); OpenID
    /// Connect's (openid, profile, email, offline_access) need not be named.
    #[arg(long, env = "GATEHOUSE_SELF_REGISTERED_SCOPES", value_delimiter = ',')]
    pub self_registered_scopes: Vec<String>,
}

impl RegistryArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.access_token_ttl < Duration::from_secs(60) {
            return Err(ConfigError::new(
                "--access-token-ttl",
                "must be at least 60s",
            ));
        }
        if self.refresh_token_ttl < self.access_token_ttl {
            return Err(ConfigError::new(
                "--refresh-token-ttl",
                "must be at least --access-token-ttl",
            ));
        }
        Ok(())
    }
}

/// Makes accounts create and migrate the registry's tables with its own (`schema`), and end,
/// with a user's credentials, what the user granted (a reset, a password change,
/// `set-password`, deactivation) and, on deactivation, the clients they own. Called by the
/// server and the CLI before either opens the database.
pub fn install() {
    crate::accounts::db::add_schema(&schema::SCHEMA);
    crate::accounts::followers::follow("registry", |db, sessions, user, reason| {
        Box::pin(grants::user_ended(db, sessions, user, reason))
    });
    crate::accounts::followers::keeps(
        "registry",
        |db, user| Box::pin(grants::export_user(db, user)),
        |conn, user| Box::pin(grants::forget_user(conn, user)),
    );
    crate::accounts::db::on_open("registry", logout::listen);
    admin::install();
}

/// The module's state: the accounts module it stands on (database, gateway, public URL).
pub struct Registry {
    accounts: Arc<Accounts>,
    access_ttl: Duration,
    refresh_ttl: Duration,
    allow_non_expiring: bool,
    catalog: Vec<catalog::Api>,
    /// Codes typed at `/device` per address.
    device_tries: crate::accounts::guard::RateLimit,
    registration: clients::ClientRegistration,
    /// Open registrations per address.
    registrations: crate::accounts::guard::RateLimit,
    self_registered_scopes: Vec<String>,
    /// Client metadata documents fetched.
    documents: cimd::Cache,
}

impl crate::accounts::web::WithAccounts for Arc<Registry> {
    fn accounts(&self) -> &Accounts {
        &self.accounts
    }
}

impl Registry {
    pub fn new(args: &RegistryArgs, accounts: Arc<Accounts>) -> Result<Arc<Registry>, ConfigError> {
        args.validate()?;
        install();
        crate::accounts::hourly(
            "spent OAuth codes, tokens and grants",
            &accounts.db,
            |db, now| async move { grants::purge(&db, now).await },
        );
        let sweep = accounts.clone();
        tokio::spawn(async move {
            match grants::end_revoked_access(&sweep.db, &sweep.gateway.sessions()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(tokens = n, "ended the access tokens of revoked grants"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot end the access tokens of revoked grants")
                }
            }
        });
        crate::accounts::hourly("expired device codes", &accounts.db, |db, now| async move {
            device::purge(&db, now).await
        });
        let device_tries = crate::accounts::guard::RateLimit::new(
            "device",
            device::TRIES_PER_MINUTE,
            Duration::from_secs(60),
            accounts.counters.clone(),
        );
        let catalog = catalog::load(args.api_catalog.as_deref())?;
        accounts
            .gateway
            .set_protected_resources(catalog::protected(&catalog));
        let registrations = crate::accounts::guard::RateLimit::new(
            "register",
            register::OPEN_PER_HOUR,
            Duration::from_secs(3600),
            accounts.counters.clone(),
        );
        let reg = Arc::new(Registry {
            device_tries,
            registrations,
            registration: args.client_registration,
            documents: cimd::Cache::default(),
            self_registered_scopes: args
                .self_registered_scopes
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            accounts,
            access_ttl: args.access_token_ttl,
            refresh_ttl: args.refresh_token_ttl,
            allow_non_expiring: args.allow_non_expiring_tokens,
            catalog,
        });
        // This server delivers back-channel logouts, whoever wrote them (it, another
        // replica, the CLI).
        let weak = Arc::downgrade(&reg);
        crate::accounts::outbox::deliver_with(
            logout::KIND,
            Arc::new(move |item| {
                let reg = weak.upgrade();
                Box::pin(async move {
                    match reg {
                        Some(reg) => logout::deliver(reg, item).await,
                        None => Err("the server is stopping".into()),
                    }
                })
            }),
        );
        Ok(reg)
    }

    /// The authorization server's issuer identifier (RFC 8414): the public URL of the pages.
    fn issuer(&self) -> &str {
        &self.accounts.settings.public_url
    }

    /// The routes, to merge into the accounts router.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        oauth::routes()
            .route(
                "/oauth/authorize",
                axum::routing::get(authorize::authorize_page).post(authorize::authorize),
            )
            .route(
                "/.well-known/oauth-protected-resource",
                axum::routing::get(catalog::resource_metadata),
            )
            .route(
                "/.well-known/oauth-protected-resource/{*path}",
                axum::routing::get(catalog::resource_metadata),
            )
            .route(
                "/oauth/register",
                axum::routing::post(register::register)
                    .layer(axum::extract::DefaultBodyLimit::max(64 * 1024)),
            )
            .route(
                "/oauth/device_authorization",
                axum::routing::post(device::authorization).layer(oauth::body_limit()),
            )
            .route(
                "/device",
                axum::routing::get(device::page).post(device::submit),
            )
            .route(
                "/oauth/logout",
                axum::routing::get(logout::logout_page).post(logout::logout),
            )
            .merge(pages::routes())
            .merge(admin::routes())
            .with_state(self.clone())
    }
}
