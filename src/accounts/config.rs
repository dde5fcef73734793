//! The `accounts` flags of `serve` and of the `user` subcommands, and the role file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::duration::parse_duration;
use crate::error::ConfigError;
use crate::secret::Secret;

/// Where users live. The same for `serve` and `user`.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// The accounts database: postgres://user@host/db, or sqlite:PATH. Without it, the SQLite
    /// file accounts.db in --data-dir.
    #[arg(long, env = "GATEHOUSE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret<String>>,
    /// Role file (TOML): `[roles.NAME]` with `scopes = [...]`. Without it, `user` grants no
    /// scope and `admin` grants `admin`.
    #[arg(long, env = "GATEHOUSE_ROLES")]
    pub roles: Option<PathBuf>,
    /// Webhooks (TOML, `[[webhook]]` with url, events, secret_file holding `whsec_…`): other
    /// systems hear of registrations, deactivations, sessions … signed per Standard Webhooks
    /// (README, "Webhooks"). Read by the command line too, which reports what it changes.
    #[arg(long, env = "GATEHOUSE_WEBHOOKS")]
    pub webhooks: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The database, with `--webhooks` read first: every change made through it reports to
    /// them.
    pub async fn open(&self, data_dir: &Path) -> Result<super::db::Db, ConfigError> {
        super::webhooks::load(self.webhooks.as_deref())?;
        super::db::Db::open(self.database_url.as_ref(), data_dir).await
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Registration {
    /// Anyone may register.
    Open,
    /// Only `gatehouse user create` makes users.
    Closed,
    /// Registration needs an invitation link (`gatehouse user invite`).
    Invite,
}

/// Who must have a second factor (`--require-second-factor`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RequireSecondFactor {
    /// Nobody: a second factor is each user's choice.
    None,
    /// Users with the `admin` role.
    Admins,
    /// Every user.
    All,
}

impl RequireSecondFactor {
    /// Whether it covers a user with these roles (beyond `user`).
    pub fn covers(self, roles: &[String]) -> bool {
        match self {
            RequireSecondFactor::None => false,
            RequireSecondFactor::Admins => roles.iter().any(|r| r == "admin"),
            RequireSecondFactor::All => true,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct AccountsArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Who must have a second factor: `none`, `admins` (the `admin` role) or `all`. A
    /// covered user without one is sent to set one up right after the password, and at the
    /// next page view of a session signed in without one.
    #[arg(
        long,
        env = "GATEHOUSE_REQUIRE_SECOND_FACTOR",
        value_enum,
        default_value = "none"
    )]
    pub require_second_factor: RequireSecondFactor,
    /// Who may register.
    #[arg(
        long,
        env = "GATEHOUSE_REGISTRATION",
        value_enum,
        default_value = "open"
    )]
    pub registration: Registration,
    /// Only these email domains may register (comma-separated; `.example.org` includes
    /// subdomains).
    #[arg(long, env = "GATEHOUSE_REGISTRATION_DOMAINS", value_delimiter = ',')]
    pub registration_domains: Vec<String>,
    /// These email domains may not register.
    #[arg(long, env = "GATEHOUSE_BLOCKED_DOMAINS", value_delimiter = ',')]
    pub blocked_domains: Vec<String>,
    /// Lifetime of a login session (cookie Max-Age and the session's expiry).
    #[arg(long, env = "GATEHOUSE_SESSION_TTL", default_value = "7d", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// Cookies without `Secure`, for plain-http development only.
    #[arg(long, env = "GATEHOUSE_INSECURE_COOKIES")]
    pub insecure_cookies: bool,
    /// `Domain` of the session cookie, to share a login across subdomains (e.g. example.org).
    #[arg(long, env = "GATEHOUSE_COOKIE_DOMAIN")]
    pub cookie_domain: Option<String>,
    /// Hosts `rd` may send a browser to after login (comma-separated; `.example.org` includes
    /// subdomains). The request's own host and --cookie-domain are always allowed.
    #[arg(long, env = "GATEHOUSE_ALLOWED_REDIRECT_HOSTS", value_delimiter = ',')]
    pub allowed_redirect_hosts: Vec<String>,
    /// Shortest password accepted, in characters.
    #[arg(long, env = "GATEHOUSE_PASSWORD_MIN_LENGTH", default_value_t = 12)]
    pub password_min_length: usize,
    /// Registrations and password-reset requests per client IP per hour.
    #[arg(long, env = "GATEHOUSE_IP_RATE_LIMIT", default_value_t = 10)]
    pub ip_rate_limit: u32,
    /// Where links in mail point: the public URL of these pages, e.g. https://example.org.
    /// [default: http://<--listen>]
    #[arg(long, env = "GATEHOUSE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The WebAuthn relying party id of passkeys: the host of --public-url or a parent
    /// domain of it (example.org for https://login.example.org). Passkeys made under one id
    /// work only under it: changing it later loses them. An IP address is none: then
    /// passkeys are off. [default: the host of --public-url]
    #[arg(long, env = "GATEHOUSE_WEBAUTHN_RP_ID")]
    pub webauthn_rp_id: Option<String>,
    /// Send mail over SMTP: smtp://host:587 (STARTTLS), smtps://host (TLS), with
    /// user:password@ when the server needs them. Without it, mail is written as .eml files
    /// into <data-dir>/mail.
    #[arg(long, env = "GATEHOUSE_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<Secret<String>>,
    /// How long an outbox item (a back-channel logout) is tried before it is given up, and
    /// how long a finished one is kept.
    #[arg(long, env = "GATEHOUSE_OUTBOX_RETENTION", default_value = "3d", value_parser = parse_duration)]
    pub outbox_retention: Duration,
    /// More certificate authorities (PEM) the outbound HTTP client trusts, beside the
    /// system's: a private CA of the deployment's clients.
    #[arg(long, env = "GATEHOUSE_OUTBOUND_CA")]
    pub outbound_ca: Option<std::path::PathBuf>,
    /// Let URLs that users and self-registering clients supply reach loopback, private and
    /// link-local addresses (a test bed or a closed network; never on the internet).
    #[arg(long, env = "GATEHOUSE_OUTBOUND_ALLOW_PRIVATE")]
    pub outbound_allow_private: bool,
    /// For users imported with `{"scheme": "legacy-hook"}`: the old system's endpoint that
    /// says whether a password is right (POST `{"username", "password"}`, answer
    /// `{"valid": bool}`), asked at their first sign-in; the password is then stored as
    /// Argon2id. https, or http on loopback.
    #[arg(long, env = "GATEHOUSE_LEGACY_PASSWORD_HOOK")]
    pub legacy_password_hook: Option<String>,
    /// The bearer secret sent to --legacy-password-hook: a file.
    #[arg(long, env = "GATEHOUSE_LEGACY_PASSWORD_HOOK_SECRET_FILE")]
    pub legacy_password_hook_secret_file: Option<PathBuf>,
    /// Other providers people may sign in with (TOML, `[[provider]]` with id, name, kind =
    /// "oidc" | "orcid" | "github", issuer, client_id, client_secret_file, scopes, trust_mfa,
    /// link_by_verified_email; README, "Sign in with other providers").
    #[arg(long, env = "GATEHOUSE_IDENTITY_PROVIDERS")]
    pub identity_providers: Option<PathBuf>,
    /// How long audit events are kept in the database (the log keeps its own).
    #[arg(long, env = "GATEHOUSE_AUDIT_RETENTION", default_value = "400d", value_parser = parse_duration)]
    pub audit_retention: Duration,
    /// The name people see: page titles, the header, mail (`site_name` in templates).
    #[arg(long, env = "GATEHOUSE_SITE_NAME", default_value = "gatehouse")]
    pub site_name: String,
    /// A directory holding `style.css` (loaded after the built-in styles: set `--accent` and
    /// friends, or any rule) and/or `logo.svg` (the header's logo), served at /_theme/.
    #[arg(long, env = "GATEHOUSE_THEME")]
    pub theme: Option<PathBuf>,
    /// A directory of mail templates, `<message>.subject.txt` and `<message>.txt` (minijinja):
    /// they replace the built-in texts of those messages (README, "Mail").
    #[arg(long, env = "GATEHOUSE_MAIL_TEMPLATES")]
    pub mail_templates: Option<PathBuf>,
    /// The From of every mail.
    #[arg(
        long,
        env = "GATEHOUSE_MAIL_FROM",
        default_value = "gatehouse <gatehouse@localhost>"
    )]
    pub mail_from: String,
}

impl AccountsArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.password_min_length < 8 {
            return Err(ConfigError::new(
                "--password-min-length",
                "must be at least 8",
            ));
        }
        if self.session_ttl < Duration::from_secs(60) {
            return Err(ConfigError::new("--session-ttl", "must be at least 60s"));
        }
        if self.ip_rate_limit == 0 {
            return Err(ConfigError::new("--ip-rate-limit", "must be more than 0"));
        }
        if let Some(d) = &self.cookie_domain {
            if d.is_empty() || d.contains([':', '/', ' ', ';']) {
                return Err(ConfigError::new("--cookie-domain", "must be a domain name"));
            }
        }
        if let Some(u) = &self.public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(ConfigError::new(
                    "--public-url",
                    "must start with https:// or http://",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    #[serde(default)]
    roles: BTreeMap<String, RoleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDef {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    description: String,
}

/// A role: the scopes it grants and what it is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleSpec {
    /// Sorted, each once.
    pub scopes: Vec<String>,
    pub description: String,
}

/// Which scopes each role grants: the roles table as read at one moment (`roles::table`),
/// or a role file's.
#[derive(Debug, Clone, Default)]
pub struct Roles(BTreeMap<String, RoleSpec>);

impl Roles {
    /// The roles of `--roles FILE` (`None` without the flag); `user` always among them.
    pub fn load(path: Option<&Path>) -> Result<Option<Roles>, ConfigError> {
        let Some(path) = path else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--roles", format!("cannot read {}: {e}", path.display()))
        })?;
        let file: RoleFile = toml::from_str(&text).map_err(|e| {
            ConfigError::new("--roles", format!("{}: {}", path.display(), e.message()))
        })?;
        let mut roles = Roles::default();
        for (name, def) in file.roles {
            if !valid_role_name(&name) || !def.scopes.iter().all(|s| valid_scope(s)) {
                return Err(ConfigError::new(
                    "--roles",
                    format!("role {name:?}: names and scopes are words without spaces"),
                ));
            }
            roles.insert(name, def.scopes, def.description);
        }
        if !roles.exists("user") {
            roles.insert("user".into(), vec![], String::new());
        }
        Ok(Some(roles))
    }

    /// Adds (or replaces) a role.
    pub fn insert(&mut self, name: String, scopes: Vec<String>, description: String) {
        let scopes: BTreeSet<String> = scopes.into_iter().collect();
        self.0.insert(
            name,
            RoleSpec {
                scopes: scopes.into_iter().collect(),
                description,
            },
        );
    }

    pub fn exists(&self, role: &str) -> bool {
        self.0.contains_key(role)
    }

    pub fn get(&self, role: &str) -> Option<&RoleSpec> {
        self.0.get(role)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &RoleSpec)> {
        self.0.iter()
    }

    /// The role names.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// The roles a user has (always `user` first) and the scopes they grant, sorted.
    pub fn of(&self, extra: &[String]) -> (Vec<String>, Vec<String>) {
        let roles = role_names(extra);
        let scopes: BTreeSet<&String> = roles
            .iter()
            .filter_map(|r| self.0.get(r))
            .flat_map(|r| &r.scopes)
            .collect();
        (roles, scopes.into_iter().cloned().collect())
    }
}

/// The roles of a user holding `extra`: `user` first, then the others.
pub fn role_names(extra: &[String]) -> Vec<String> {
    let mut roles = vec!["user".to_string()];
    roles.extend(extra.iter().filter(|r| *r != "user").cloned());
    roles
}

/// A role's name: letters, digits and `-_:.`.
pub fn valid_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
}

/// A scope: a word without spaces.
pub fn valid_scope(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && !s.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_a_file() {
        assert!(Roles::load(None).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("roles.toml");
        std::fs::write(
            &p,
            "[roles.user]\nscopes = [\"public:read\"]\n[roles.editor]\nscopes = [\"public:read\", \"papers:write\"]\ndescription = \"Edits papers\"\n",
        )
        .unwrap();
        let r = Roles::load(Some(&p)).unwrap().unwrap();
        assert_eq!(
            r.of(&["editor".into()]).1,
            vec!["papers:write".to_string(), "public:read".to_string()]
        );
        assert_eq!(r.get("editor").unwrap().description, "Edits papers");
        assert!(!r.exists("admin"));
        std::fs::write(&p, "[roles.user]\nscope = []\n").unwrap();
        assert_eq!(Roles::load(Some(&p)).unwrap_err().flag, "--roles");
    }
}
