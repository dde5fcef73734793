//! The client registry: OAuth2 clients in the accounts database (`oauth_clients`).
//!
//! A confidential client's secret is 256 random bits, shown once, stored as its SHA-256 (a
//! high-entropy secret needs no slow hash) and compared in constant time. Redirect URIs match
//! exactly; only https, or http on a loopback host, without a fragment or a wildcard.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::accounts::db::{commit_with, random_token, token_hash, Db, DbError, Event};
use crate::secret::Secret;
use crate::session::unix_now;

/// The device grant's name at the token endpoint (RFC 8628 §3.4); `device_code` in a client's
/// list of grants.
pub const DEVICE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Who may register a client at `/oauth/register` (and, when open, use a client metadata
/// document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientRegistration {
    Closed,
    Token,
    Open,
}

/// The grants a client may be allowed.
pub const GRANTS: &[&str] = &[
    "client_credentials",
    "authorization_code",
    "refresh_token",
    "device_code",
];

#[derive(Debug, Clone, Serialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub description: String,
    pub homepage: String,
    /// The user id of the owner, if a user registered it.
    pub owner: Option<String>,
    pub confidential: bool,
    pub redirect_uris: Vec<String>,
    pub grants: Vec<String>,
    pub scopes: Vec<String>,
    pub disabled: bool,
    pub created_at: u64,
    /// It registered itself (RFC 7591): its URLs are held to the outbound policy.
    pub self_registered: bool,
    #[serde(flatten)]
    pub oidc: OidcSettings,
    #[serde(skip)]
    secret_hash: Option<String>,
}

/// A client's OpenID Connect settings.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OidcSettings {
    /// Where `/oauth/logout` may send the browser afterwards (exact match).
    pub post_logout_redirect_uris: Vec<String>,
    /// Where a `logout_token` is POSTed when a session it received an id_token for ends.
    pub backchannel_logout_uri: Option<String>,
    /// What its id_tokens are signed with.
    pub id_token_alg: IdTokenAlg,
    /// What its access tokens are.
    pub access_token_format: AccessTokenFormat,
    /// The `aud` of its JWT access tokens when the request names no resource.
    pub audience: Option<String>,
}

impl Default for OidcSettings {
    fn default() -> Self {
        OidcSettings {
            post_logout_redirect_uris: Vec::new(),
            backchannel_logout_uri: None,
            id_token_alg: IdTokenAlg::Rs256,
            access_token_format: AccessTokenFormat::Opaque,
            audience: None,
        }
    }
}

/// The algorithms an id_token may be signed with: never HS256 (a client could forge tokens
/// with a shared secret) nor `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum IdTokenAlg {
    #[value(name = "RS256", alias = "rs256")]
    #[serde(rename = "RS256")]
    Rs256,
    #[value(name = "ES256", alias = "es256")]
    #[serde(rename = "ES256")]
    Es256,
    #[value(name = "EdDSA", alias = "eddsa")]
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl IdTokenAlg {
    pub const ALL: [IdTokenAlg; 3] = [IdTokenAlg::Rs256, IdTokenAlg::Es256, IdTokenAlg::EdDsa];

    pub fn name(self) -> &'static str {
        match self {
            IdTokenAlg::Rs256 => "RS256",
            IdTokenAlg::Es256 => "ES256",
            IdTokenAlg::EdDsa => "EdDSA",
        }
    }

    fn parse(s: &str) -> IdTokenAlg {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .unwrap_or(IdTokenAlg::Rs256)
    }

    pub fn algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            IdTokenAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
            IdTokenAlg::Es256 => jsonwebtoken::Algorithm::ES256,
            IdTokenAlg::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }

    pub fn jwt_alg(self) -> crate::signer::JwtAlg {
        match self {
            IdTokenAlg::Rs256 => crate::signer::JwtAlg::Rs256,
            IdTokenAlg::Es256 => crate::signer::JwtAlg::Es256,
            IdTokenAlg::EdDsa => crate::signer::JwtAlg::EdDsa,
        }
    }
}

/// An access token is an opaque session token `/auth` resolves, or an RFC 9068 JWT a resource
/// server verifies itself (which cannot be revoked, so it lives at most five minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessTokenFormat {
    Opaque,
    Jwt,
}

impl AccessTokenFormat {
    pub fn name(self) -> &'static str {
        match self {
            AccessTokenFormat::Opaque => "opaque",
            AccessTokenFormat::Jwt => "jwt",
        }
    }
}

impl Client {
    /// Whose its URLs are: an administrator's (the CLI), or a user's or its own, which the
    /// outbound policy holds to https and public addresses.
    pub fn url_trust(&self) -> crate::accounts::outbound::Trust {
        if self.owner.is_none() && !self.self_registered {
            crate::accounts::outbound::Trust::Operator
        } else {
            crate::accounts::outbound::Trust::Supplied
        }
    }

    /// The client a metadata document describes (`cimd`): public, the code and refresh
    /// grants, stored nowhere.
    pub fn from_document(
        url: &str,
        name: String,
        homepage: String,
        redirect_uris: Vec<String>,
        post_logout_redirect_uris: Vec<String>,
        scopes: Vec<String>,
    ) -> Client {
        Client {
            client_id: url.to_owned(),
            name,
            description: String::new(),
            homepage,
            owner: None,
            confidential: false,
            redirect_uris,
            grants: vec!["authorization_code".into(), "refresh_token".into()],
            scopes,
            disabled: false,
            created_at: unix_now(),
            self_registered: true,
            oidc: OidcSettings {
                post_logout_redirect_uris,
                ..OidcSettings::default()
            },
            secret_hash: None,
        }
    }

    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grants.iter().any(|g| g == grant)
    }

    /// Whether `presented` is this client's secret (constant time; a public client has none).
    pub fn secret_matches(&self, presented: &str) -> bool {
        // A public client compares against a hash that matches nothing, so every refusal
        // costs the same.
        hash_matches(presented, self.secret_hash.as_deref().unwrap_or(NO_SECRET))
    }
}

/// One SHA-256 of `presented` and a constant-time comparison with `stored`.
fn hash_matches(presented: &str, stored: &str) -> bool {
    let presented = std::hint::black_box(token_hash(presented));
    aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), stored.as_bytes())
        .is_ok()
}

/// A hash no secret has (not base64 of 32 bytes): what an unknown or public client's secret
/// is compared with.
const NO_SECRET: &str = "-------------------------------------------";

/// `Client::secret_matches` for a client that does not exist: the same work, always false.
pub fn no_client_matches(presented: &str) -> bool {
    hash_matches(presented, NO_SECRET)
}

/// What `create` needs.
pub struct NewClient<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub homepage: &'a str,
    pub owner: Option<&'a str>,
    pub confidential: bool,
    pub redirect_uris: &'a [String],
    pub grants: &'a [String],
    pub scopes: &'a [String],
    pub oidc: &'a OidcSettings,
    pub self_registered: bool,
}

/// A client secret: 256 bits, base64url, with a prefix secret scanners can find.
fn new_secret() -> Secret<String> {
    Secret::new(format!("gcs_{}", random_token(32)))
}

fn list(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn client_of(row: &AnyRow) -> Result<Client, sqlx::Error> {
    Ok(Client {
        client_id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        homepage: row.try_get("homepage")?,
        owner: row.try_get("owner")?,
        confidential: row.try_get::<i64, _>("confidential")? != 0,
        redirect_uris: list(&row.try_get::<String, _>("redirect_uris")?),
        grants: list(&row.try_get::<String, _>("grants")?),
        scopes: list(&row.try_get::<String, _>("scopes")?),
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: row.try_get::<i64, _>("created_at")?.max(0) as u64,
        self_registered: row.try_get::<i64, _>("self_registered")? != 0,
        oidc: OidcSettings {
            post_logout_redirect_uris: list(
                &row.try_get::<String, _>("post_logout_redirect_uris")?,
            ),
            backchannel_logout_uri: Some(row.try_get::<String, _>("backchannel_logout_uri")?)
                .filter(|u| !u.is_empty()),
            id_token_alg: IdTokenAlg::parse(&row.try_get::<String, _>("id_token_alg")?),
            access_token_format: if row.try_get::<String, _>("access_token_format")? == "jwt" {
                AccessTokenFormat::Jwt
            } else {
                AccessTokenFormat::Opaque
            },
            audience: Some(row.try_get::<String, _>("audience")?).filter(|a| !a.is_empty()),
        },
        secret_hash: row.try_get("secret_hash")?,
    })
}

/// A name a client gave itself (a registration, a metadata document), as the consent page
/// shows it: trimmed, no control characters, at most 100 characters; `fallback` when empty.
pub fn display_name(given: &str, fallback: impl Into<String>) -> String {
    let name: String = given
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    if name.is_empty() {
        fallback.into()
    } else {
        name
    }
}

/// Whether `uri` may be registered as a redirect URI, and why not.
pub fn check_redirect_uri(uri: &str) -> Result<(), &'static str> {
    if uri.contains('#') {
        return Err("a redirect URI has no fragment");
    }
    if uri.contains('*') || uri.contains(char::is_whitespace) {
        return Err("a redirect URI is exact: no wildcards or spaces");
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err("a redirect URI is absolute: https://host/path");
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err("a redirect URI needs a host and no user information");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("a redirect URI uses https (http only on a loopback host)"),
    }
}

/// A new client id: 128 random bits, base64url, never starting with `-` (the CLI takes client
/// ids as arguments, and `client show -x…` would read as a flag).
fn client_id() -> String {
    loop {
        let id = random_token(16);
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// Creates a client; its secret (confidential clients only) is returned this once.
pub async fn create(
    db: &Db,
    new: &NewClient<'_>,
) -> Result<(Client, Option<Secret<String>>), DbError> {
    let id = client_id();
    let secret = new.confidential.then(new_secret);
    let now = unix_now() as i64;
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO oauth_clients (id, secret_hash, name, description, homepage, owner,
            confidential, redirect_uris, grants, scopes, disabled, created_at, updated_at,
            post_logout_redirect_uris, backchannel_logout_uri, id_token_alg, access_token_format,
            audience, self_registered)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $11, $12, $13, $14, $15, $16,
            $17)",
    )
    .bind(&id)
    .bind(secret.as_ref().map(|s| token_hash(s.expose())))
    .bind(new.name)
    .bind(new.description)
    .bind(new.homepage)
    .bind(new.owner)
    .bind(i64::from(new.confidential))
    .bind(new.redirect_uris.join(" "))
    .bind(new.grants.join(" "))
    .bind(new.scopes.join(" "))
    .bind(now)
    .bind(new.oidc.post_logout_redirect_uris.join(" "))
    .bind(new.oidc.backchannel_logout_uri.as_deref().unwrap_or(""))
    .bind(new.oidc.id_token_alg.name())
    .bind(new.oidc.access_token_format.name())
    .bind(new.oidc.audience.as_deref().unwrap_or(""))
    .bind(i64::from(new.self_registered))
    .execute(&mut *tx)
    .await?;
    let event = Event::new(
        "client.created",
        serde_json::json!({"client_id": id, "name": new.name, "owner": new.owner,
            "self_registered": new.self_registered}),
    );
    commit_with(tx, &[event]).await?;
    let client = find(db, &id).await?.ok_or(DbError::Taken("client_id"))?;
    Ok((client, secret))
}

pub async fn find(db: &Db, id: &str) -> Result<Option<Client>, DbError> {
    let row = sqlx::query("SELECT * FROM oauth_clients WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.as_ref().map(client_of).transpose()?)
}

/// Every client, or those `owner` registered.
pub async fn list_clients(db: &Db, owner: Option<&str>) -> Result<Vec<Client>, DbError> {
    let rows = match owner {
        Some(owner) => {
            sqlx::query("SELECT * FROM oauth_clients WHERE owner = $1 ORDER BY created_at, id")
                .bind(owner)
                .fetch_all(db.pool())
                .await?
        }
        None => {
            sqlx::query("SELECT * FROM oauth_clients ORDER BY created_at, id")
                .fetch_all(db.pool())
                .await?
        }
    };
    Ok(rows.iter().map(client_of).collect::<Result<_, _>>()?)
}

/// Disables (`client.disabled`) or enables a client; whether there was one.
pub async fn set_disabled(db: &Db, id: &str, disabled: bool) -> Result<bool, DbError> {
    let mut tx = db.pool().begin().await?;
    let done = sqlx::query("UPDATE oauth_clients SET disabled = $1, updated_at = $2 WHERE id = $3")
        .bind(i64::from(disabled))
        .bind(unix_now() as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let found = done.rows_affected() == 1;
    let events = if found && disabled {
        vec![Event::new(
            "client.disabled",
            serde_json::json!({"client_id": id}),
        )]
    } else {
        vec![]
    };
    commit_with(tx, &events).await?;
    Ok(found)
}

/// Replaces a client's OpenID Connect settings (`client update`, the owner's page).
pub async fn set_oidc(db: &Db, id: &str, oidc: &OidcSettings) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE oauth_clients SET post_logout_redirect_uris = $1, backchannel_logout_uri = $2,
            id_token_alg = $3, access_token_format = $4, audience = $5, updated_at = $6
         WHERE id = $7",
    )
    .bind(oidc.post_logout_redirect_uris.join(" "))
    .bind(oidc.backchannel_logout_uri.as_deref().unwrap_or(""))
    .bind(oidc.id_token_alg.name())
    .bind(oidc.access_token_format.name())
    .bind(oidc.audience.as_deref().unwrap_or(""))
    .bind(unix_now() as i64)
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A new secret for a confidential client; the old one stops working now.
pub async fn rotate_secret(db: &Db, id: &str) -> Result<Secret<String>, DbError> {
    let secret = new_secret();
    sqlx::query(
        "UPDATE oauth_clients SET secret_hash = $1, updated_at = $2 WHERE id = $3 AND confidential = 1",
    )
    .bind(token_hash(secret.expose()))
    .bind(unix_now() as i64)
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_or_loopback_http_without_fragments_or_wildcards() {
        for ok in [
            "https://app.example.org/cb",
            "https://app.example.org:8443/cb?x=1",
            "http://127.0.0.1:9000/cb",
            "http://localhost/cb",
            "http://[::1]:8000/cb",
        ] {
            assert_eq!(check_redirect_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://app.example.org/cb",
            "https://app.example.org/cb#frag",
            "https://*.example.org/cb",
            "https://user@app.example.org/cb",
            "javascript://x/%0aalert(1)",
            "/relative",
            "https:///nohost",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_ids_never_read_as_flags() {
        assert!((0..2000).all(|_| !client_id().starts_with('-')));
    }

    #[test]
    fn secrets_match_only_themselves() {
        let c = Client {
            client_id: "c".into(),
            name: String::new(),
            description: String::new(),
            homepage: String::new(),
            owner: None,
            confidential: true,
            redirect_uris: vec![],
            grants: vec![],
            scopes: vec![],
            disabled: false,
            created_at: 0,
            self_registered: false,
            oidc: OidcSettings::default(),
            secret_hash: Some(token_hash("gcs_right")),
        };
        assert!(c.secret_matches("gcs_right"));
        assert!(!c.secret_matches("gcs_wrong"));
        let public = Client {
            secret_hash: None,
            ..c
        };
        assert!(!public.secret_matches(""));
        assert!(!public.secret_matches(NO_SECRET));
    }
}
