//! Dynamic client registration (RFC 7591) at `/oauth/register`, for clients that register
//! themselves, as MCP clients may. `--client-registration` says who may: nobody (`closed`,
//! the default), the holder of an initial access token made by `gatehouse client
//! registration-token create` (`token`), or anyone (`open`, limited per address).
//!
//! A registered client is public (`token_endpoint_auth_method: none`) or confidential (a
//! secret, shown in this answer only), as it asks. It gets only the scopes of
//! `--self-registered-scopes` (OpenID Connect's are always grantable), never
//! `client_credentials` without a secret, and its URLs are held to the outbound policy
//! (https; its addresses are checked when they are used). Its users still consent to it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::clients::{
    self, check_redirect_uri, AccessTokenFormat, ClientRegistration, IdTokenAlg, OidcSettings,
    DEVICE_GRANT_TYPE,
};
use super::Registry;
use crate::accounts::db::{random_token, token_hash, Db, DbError};
use crate::accounts::web::Ctx;
use crate::secret::Secret;
use crate::session::unix_now;

/// Open registrations per address per hour.
pub const OPEN_PER_HOUR: u32 = 20;

/// The metadata a client sends (RFC 7591 §2, with OpenID Connect's logout fields); what is
/// not named here is ignored, as §2 allows.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Metadata {
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    client_uri: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    scope: Option<String>,
    post_logout_redirect_uris: Vec<String>,
    backchannel_logout_uri: Option<String>,
    id_token_signed_response_alg: Option<String>,
}

fn error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    let mut r = (
        status,
        axum::Json(json!({"error": error, "error_description": description.into()})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gatehouse\", error=\"invalid_token\""),
        );
    }
    r
}

/// Metadata refused (RFC 7591 §3.2.2): its error code and why.
struct Refused(&'static str, String);

impl Refused {
    fn response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0, self.1)
    }
}

fn bad(description: impl Into<String>) -> Refused {
    Refused("invalid_client_metadata", description.into())
}

fn bad_uri(description: impl Into<String>) -> Refused {
    Refused("invalid_redirect_uri", description.into())
}

/// `POST /oauth/register`.
pub async fn register(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match reg.registration {
        ClientRegistration::Closed => {
            return error(
                StatusCode::FORBIDDEN,
                "access_denied",
                "clients are registered by the administrators of this server",
            )
        }
        ClientRegistration::Token => {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim());
            let valid = match presented {
                Some(t) => match token_valid(&reg.accounts.db, t).await {
                    Ok(v) => v,
                    Err(e) => return unavailable(e),
                },
                None => false,
            };
            if !valid {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "an initial access token is required (Authorization: Bearer), and it must be current",
                );
            }
        }
        ClientRegistration::Open => match reg.registrations.check(ctx.ip()).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many registrations from this address",
                );
                if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return r;
            }
            Err(e) => return unavailable(e),
        },
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json_body {
        return bad("send the metadata as application/json").response();
    }
    let meta: Metadata = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return bad(format!("the metadata is not valid: {e}")).response(),
    };
    let checked = match check(&reg, meta) {
        Ok(c) => c,
        Err(r) => return r.response(),
    };
    let made = clients::create(
        &reg.accounts.db,
        &clients::NewClient {
            name: &checked.name,
            description: "",
            homepage: &checked.homepage,
            owner: None,
            confidential: checked.confidential,
            redirect_uris: &checked.redirect_uris,
            grants: &checked.grants,
            scopes: &checked.scopes,
            oidc: &checked.oidc,
            self_registered: true,
        },
    )
    .await;
    let (client, secret) = match made {
        Ok(m) => m,
        Err(e) => return unavailable(e),
    };
    tracing::info!(target: "gatehouse::audit", event = "client_registered", client_id = %client.client_id, ip = %ctx.ip(), confidential = client.confidential, "audit");
    let mut answer = json!({
        "client_id": client.client_id,
        "client_id_issued_at": client.created_at,
        "client_name": client.name,
        "redirect_uris": client.redirect_uris,
        "grant_types": client.grants.iter().map(|g| if g == "device_code" { DEVICE_GRANT_TYPE } else { g.as_str() }).collect::<Vec<_>>(),
        "response_types": ["code"],
        "token_endpoint_auth_method": if client.confidential { checked.auth_method } else { "none" },
        "scope": client.scopes.join(" "),
        "post_logout_redirect_uris": client.oidc.post_logout_redirect_uris,
        "id_token_signed_response_alg": client.oidc.id_token_alg.name(),
    });
    if !client.homepage.is_empty() {
        answer["client_uri"] = json!(client.homepage);
    }
    if let Some(uri) = &client.oidc.backchannel_logout_uri {
        answer["backchannel_logout_uri"] = json!(uri);
        answer["backchannel_logout_session_required"] = json!(true);
    }
    if let Some(s) = &secret {
        answer["client_secret"] = json!(s.expose());
        answer["client_secret_expires_at"] = json!(0);
    }
    let mut r = (StatusCode::CREATED, axum::Json(answer)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "client registration: database or store unavailable");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "try again shortly",
    )
}

/// A request's metadata, checked.
struct Checked {
    name: String,
    homepage: String,
    confidential: bool,
    auth_method: &'static str,
    redirect_uris: Vec<String>,
    grants: Vec<String>,
    scopes: Vec<String>,
    oidc: OidcSettings,
}

fn check(reg: &Registry, m: Metadata) -> Result<Checked, Refused> {
    let (confidential, auth_method) = match m.token_endpoint_auth_method.as_deref() {
        None | Some("client_secret_basic") => (true, "client_secret_basic"),
        Some("client_secret_post") => (true, "client_secret_post"),
        Some("none") => (false, "none"),
        Some(other) => {
            return Err(bad(format!(
                "token_endpoint_auth_method {other:?} is not offered"
            )))
        }
    };
    let mut grants = Vec::new();
    for g in m
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into()])
    {
        let g = match g.as_str() {
            "authorization_code" | "refresh_token" => g,
            DEVICE_GRANT_TYPE | "device_code" => "device_code".into(),
            "client_credentials" if confidential => g,
            other => {
                return Err(bad(format!(
                    "grant type {other:?} is not offered to a client that registers itself"
                )))
            }
        };
        if !grants.contains(&g) {
            grants.push(g);
        }
    }
    if let Some(types) = &m.response_types {
        if types.iter().any(|t| t != "code") {
            return Err(bad("only response_types [\"code\"] is offered"));
        }
    }
    for uri in m.redirect_uris.iter().chain(&m.post_logout_redirect_uris) {
        if let Err(why) = check_redirect_uri(uri) {
            return Err(bad_uri(format!("{uri:?}: {why}")));
        }
    }
    if grants.iter().any(|g| g == "authorization_code") && m.redirect_uris.is_empty() {
        return Err(bad_uri(
            "authorization_code needs at least one redirect URI",
        ));
    }
    if let Some(uri) = m
        .backchannel_logout_uri
        .as_deref()
        .filter(|u| !u.is_empty())
    {
        crate::accounts::outbound::check_supplied(uri)
            .map_err(|why| bad(format!("backchannel_logout_uri: {why}")))?;
    }
    let homepage = m.client_uri.unwrap_or_default();
    if !homepage.is_empty() {
        crate::accounts::outbound::check_supplied(&homepage)
            .map_err(|why| bad(format!("client_uri: {why}")))?;
    }
    let id_token_alg = match m.id_token_signed_response_alg.as_deref() {
        None => IdTokenAlg::Rs256,
        Some(name) => IdTokenAlg::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .filter(|a| reg.accounts.gateway.signer.load().has(a.algorithm()))
            .ok_or_else(|| {
                bad(format!(
                    "id_token_signed_response_alg {name:?} is not offered"
                ))
            })?,
    };
    // Only what self-registered clients may have; asked for or not, the rest is dropped.
    let scopes: Vec<String> = match m.scope.as_deref() {
        Some(asked) => super::grants::scope_list(asked)
            .into_iter()
            .filter(|s| reg.self_registered_scopes.contains(s))
            .collect(),
        None => reg.self_registered_scopes.clone(),
    };
    Ok(Checked {
        name: clients::display_name(&m.client_name.unwrap_or_default(), "An application"),
        homepage,
        confidential,
        auth_method,
        redirect_uris: m.redirect_uris,
        grants,
        scopes,
        oidc: OidcSettings {
            post_logout_redirect_uris: m.post_logout_redirect_uris,
            backchannel_logout_uri: m.backchannel_logout_uri.filter(|u| !u.is_empty()),
            id_token_alg,
            access_token_format: AccessTokenFormat::Opaque,
            audience: None,
        },
    })
}

// ---------------------------------------------------------------------------------------
// Initial access tokens

/// A new initial access token, valid until `expires_at`; shown once.
pub async fn create_token(db: &Db, expires_at: u64) -> Result<Secret<String>, DbError> {
    let token = Secret::new(format!("gri_{}", random_token(32)));
    sqlx::query(
        "INSERT INTO oauth_registration_tokens (hash, created_at, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(token_hash(token.expose()))
    .bind(unix_now() as i64)
    .bind(expires_at as i64)
    .execute(db.pool())
    .await?;
    Ok(token)
}

/// Whether `token` is a current initial access token.
async fn token_valid(db: &Db, token: &str) -> Result<bool, DbError> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT expires_at FROM oauth_registration_tokens WHERE hash = $1")
            .bind(token_hash(token))
            .fetch_optional(db.pool())
            .await?;
    Ok(found.is_some_and(|exp| exp > unix_now() as i64))
}

/// The server's metadata about registration: its endpoint, when registration is not closed.
pub fn metadata(reg: &Registry, doc: &mut Value) {
    if reg.registration != ClientRegistration::Closed {
        doc["registration_endpoint"] = json!(format!("{}/oauth/register", reg.issuer()));
    }
}
