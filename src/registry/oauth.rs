//! The OAuth2 endpoints for programs: token (RFC 6749), revocation (RFC 7009), introspection
//! (RFC 7662) and the server's metadata (RFC 8414). Every answer is JSON with
//! `Cache-Control: no-store`; errors are RFC 6749 §5.2's.
//!
//! Access tokens are sessions of kind `client` (prefix `gtc_`) whose `client_id` is the
//! client's, so `/auth` turns them into JWTs on the same cache hit as a browser session.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use super::clients::{self, Client};
use super::grants::{self, SignedIn};
use super::Registry;
use crate::accounts::db::User;
use crate::accounts::db::{token_hash, DbError};
use crate::session::{unix_now, SessionKind};
use crate::sessions::Sessions;
use sqlx::Row;

/// The OAuth endpoints for programs (the browser's `/oauth/authorize` is `authorize.rs`'s;
/// `Registry::router` joins them).
pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/oauth/token", post(token).layer(body_limit()))
        .route("/oauth/revoke", post(revoke).layer(body_limit()))
        .route("/oauth/introspect", post(introspect).layer(body_limit()))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .route(
            "/oauth/userinfo",
            get(super::oidc::userinfo).post(super::oidc::userinfo),
        )
}

/// The largest form the token, revocation and introspection endpoints read (413 beyond), and
/// the most parameters they decode: a few dozen bytes and a handful of parameters is what a
/// client sends, and the cap holds before client authentication.
const MAX_BODY: usize = 64 * 1024;
const MAX_PARAMS: usize = 100;

pub(super) fn body_limit() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(MAX_BODY)
}

/// An RFC 6749 §5.2 error.
#[derive(Debug)]
pub(super) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    pub(super) fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }

    pub(super) fn request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// Client authentication failed: 401 with a `WWW-Authenticate` challenge.
    fn client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }

    /// The store or database did not answer: fail closed.
    pub(super) fn unavailable(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "oauth: store or database unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "try again shortly",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = no_store(
            self.status,
            json!({"error": self.error, "error_description": self.description}),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"gatehouse\""),
            );
        }
        r
    }
}

/// JSON that no cache keeps (RFC 6749 §5.1).
pub(super) fn no_store(status: StatusCode, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// The form parameters of a request: `application/x-www-form-urlencoded`, each at most once
/// (RFC 6749 §3.2), empty values treated as absent.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';').next().is_some_and(|t| {
                    t.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                })
            });
        if !form {
            return Err(OAuthError::request(
                "send the parameters as application/x-www-form-urlencoded",
            ));
        }
        // Counted before anything is decoded (the body is at most MAX_BODY, by the router).
        if body.split(|&b| b == b'&').count() > MAX_PARAMS {
            return Err(OAuthError::request(format!(
                "at most {MAX_PARAMS} parameters"
            )));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| OAuthError::request("the form is not valid"))?;
        let mut seen = std::collections::HashSet::with_capacity(pairs.len());
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            return Err(OAuthError::request(format!("{k} is given more than once")));
        }
        Ok(Params(pairs))
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// One value of RFC 6749 §2.3.1's Basic credentials, form-decoded.
fn form_decode(s: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={s}")).ok()?;
    match pairs.as_slice() {
        [(_, v)] => Some(v.clone()),
        _ => None,
    }
}

/// The calling client, authenticated by `client_secret_basic` or `client_secret_post`; a
/// public client is named by `client_id` alone. Anything else is `invalid_client`, at the
/// same cost whether the client exists or not.
pub(super) async fn authenticate(
    reg: &Registry,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Client, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| OAuthError::client())?;
            let (scheme, rest) = v.split_once(' ').ok_or_else(OAuthError::client)?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(OAuthError::client());
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map_err(|_| OAuthError::client())?;
            let raw = String::from_utf8(raw).map_err(|_| OAuthError::client())?;
            let (id, secret) = raw.split_once(':').ok_or_else(OAuthError::client)?;
            Some((
                form_decode(id).ok_or_else(OAuthError::client)?,
                form_decode(secret).ok_or_else(OAuthError::client)?,
            ))
        }
    };
    let body = params.get("client_id").map(|id| {
        (
            id.to_owned(),
            params.get("client_secret").map(str::to_owned),
        )
    });
    let (id, secret) = match (basic, body) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::request(
                "use one client authentication method, not two",
            ))
        }
        (Some((id, secret)), None) => (id, Some(secret)),
        (None, Some(pair)) => pair,
        (None, None) => return Err(OAuthError::client()),
    };
    let client = reg
        .find_client(&id)
        .await
        .map_err(OAuthError::unavailable)?;
    let ok = match (&client, &secret) {
        (Some(c), Some(secret)) => c.confidential && c.secret_matches(secret),
        (Some(c), None) => !c.confidential,
        // The same work as for a known client: one hash, one constant-time comparison.
        (None, secret) => clients::no_client_matches(secret.as_deref().unwrap_or("")),
    };
    match client {
        Some(c) if ok && !c.disabled => Ok(c),
        other => {
            // Only a registered id is logged: what a caller typed may be anything, a secret
            // pasted in the wrong field included.
            let known = other.as_ref().map_or("unknown", |c| c.client_id.as_str());
            tracing::info!(target: "gatehouse::audit", event = "client_auth_failed", client_id = %known, "audit");
            Err(OAuthError::client())
        }
    }
}

async fn token(State(reg): State<Arc<Registry>>, headers: HeaderMap, body: Bytes) -> Response {
    match token_inner(&reg, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn token_inner(
    reg: &Registry,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OAuthError> {
    let params = Params::parse(headers, body)?;
    let client = authenticate(reg, headers, &params).await?;
    match params.get("grant_type") {
        None => Err(OAuthError::request("grant_type is missing")),
        Some("client_credentials") => client_credentials(reg, &client, &params).await,
        Some("authorization_code") => authorization_code(reg, &client, &params).await,
        Some("refresh_token") => refresh(reg, &client, &params).await,
        Some(super::clients::DEVICE_GRANT_TYPE) => device_code(reg, &client, &params).await,
        Some(other) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("{other:?} is not a grant this server offers"),
        )),
    }
}

/// The scopes asked for, each one of `allowed`; all of `allowed` when none are named.
fn granted_scopes(asked: Option<&str>, allowed: &[String]) -> Result<Vec<String>, OAuthError> {
    let Some(asked) = asked else {
        return Ok(allowed.to_vec());
    };
    let scopes = grants::scope_list(asked);
    if let Some(s) = scopes.iter().find(|s| !allowed.contains(s)) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("scope {s:?} is not allowed here"),
        ));
    }
    Ok(scopes)
}

pub(super) fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn unauthorized_client(grant: &str) -> OAuthError {
    OAuthError::new(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        format!("this client may not use {grant}"),
    )
}

/// PKCE S256 (RFC 7636 §4.6): BASE64URL(SHA-256(verifier)) is the challenge.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let shaped = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    shaped
        && aws_lc_rs::constant_time::verify_slices_are_equal(
            crate::accounts::db::token_hash(verifier).as_bytes(),
            challenge.as_bytes(),
        )
        .is_ok()
}

/// Ends a grant's tokens after a replay or a reuse; the answer is `invalid_grant` whatever
/// happens here, so a failure is logged, not returned.
async fn revoke_after_replay(reg: &Registry, grant_id: &str, what: &'static str) {
    let sessions = reg.accounts.gateway.sessions();
    match grants::revoke_grant(&reg.accounts.db, &sessions, grant_id).await {
        Ok(n) => {
            tracing::warn!(target: "gatehouse::audit", event = what, grant = %grant_id, tokens_revoked = n, "audit")
        }
        Err(e) => {
            tracing::error!(event = what, grant = %grant_id, error = %e, "a replayed grant could not be revoked")
        }
    }
}

/// The live user behind a grant, or `invalid_grant` (deactivated or gone).
pub(super) async fn grant_user(reg: &Registry, user_id: &str) -> Result<User, OAuthError> {
    match reg.accounts.db.user(user_id).await {
        Ok(Some(u)) if u.active => Ok(u),
        Ok(_) => Err(invalid_grant(
            "the user of this grant can no longer sign in",
        )),
        Err(e) => Err(OAuthError::unavailable(e)),
    }
}

async fn authorization_code(
    reg: &Registry,
    client: &Client,
    params: &Params,
) -> Result<Response, OAuthError> {
    if !client.allows_grant("authorization_code") {
        return Err(unauthorized_client("authorization_code"));
    }
    let code = params
        .get("code")
        .ok_or_else(|| OAuthError::request("code is missing"))?;
    let db = &reg.accounts.db;
    let Some(found) = grants::find_code(db, code)
        .await
        .map_err(OAuthError::unavailable)?
    else {
        return Err(invalid_grant("unknown code"));
    };
    if found.used {
        if let Some(grant) = &found.grant_id {
            revoke_after_replay(reg, grant, "code_replayed").await;
        }
        return Err(invalid_grant("this code was used before"));
    }
    if found.expired {
        return Err(invalid_grant("this code has expired"));
    }
    let bound = found.client_id == client.client_id
        && params.get("redirect_uri") == Some(found.redirect_uri.as_str())
        && params
            .get("code_verifier")
            .is_some_and(|v| pkce_matches(v, &found.challenge));
    if !bound {
        // Burnt: a code presented with the wrong client, URI or verifier never works again.
        grants::use_code(db, code, None)
            .await
            .map_err(OAuthError::unavailable)?;
        return Err(invalid_grant(
            "the code does not match this client, redirect_uri or code_verifier",
        ));
    }
    same_resource(reg, params, &found.signed_in.resource)?;
    let user = grant_user(reg, &found.user_id).await?;
    let grant = grants::create_grant(
        db,
        &client.client_id,
        &user.id,
        &found.scopes,
        &found.signed_in,
    )
    .await
    .map_err(OAuthError::unavailable)?;
    if !grants::use_code(db, code, Some(&grant))
        .await
        .map_err(OAuthError::unavailable)?
    {
        revoke_after_replay(reg, &grant, "code_replayed").await;
        return Err(invalid_grant("this code was used before"));
    }
    user_tokens(
        reg,
        client,
        &user,
        (&grant, &found.signed_in),
        (&found.scopes, &found.scopes),
        &found.nonce,
    )
    .await
}

async fn refresh(reg: &Registry, client: &Client, params: &Params) -> Result<Response, OAuthError> {
    if !client.allows_grant("refresh_token") {
        return Err(unauthorized_client("refresh_token"));
    }
    let token = params
        .get("refresh_token")
        .ok_or_else(|| OAuthError::request("refresh_token is missing"))?;
    let db = &reg.accounts.db;
    let found = grants::find_refresh(db, token)
        .await
        .map_err(OAuthError::unavailable)?
        .filter(|r| r.client_id == client.client_id)
        .ok_or_else(|| invalid_grant("unknown refresh token"))?;
    if found.used && !found.grant_revoked {
        revoke_after_replay(reg, &found.grant_id, "refresh_reused").await;
    }
    if found.used || found.grant_revoked || found.expired {
        return Err(invalid_grant("this refresh token is no longer valid"));
    }
    let scopes = granted_scopes(params.get("scope"), &found.scopes)?;
    same_resource(reg, params, &found.signed_in.resource)?;
    let user = grant_user(reg, &found.user_id).await?;
    // An OpenID Connect grant without offline_access ends with the browser session it was
    // made in (expired or signed out): its refresh token works only while that session
    // lives. (A plain OAuth2 grant is the app's until revoked, as before.)
    if super::oidc::ends_with_session(&found.scopes) && !found.signed_in.sid.is_empty() {
        let live = reg
            .accounts
            .gateway
            .sessions()
            .find_sid(&user.id, &found.signed_in.sid)
            .await
            .map_err(OAuthError::unavailable)?
            .is_some();
        if !live {
            return Err(invalid_grant(
                "the sign-in this grant came from has ended; without offline_access its refresh tokens end with it",
            ));
        }
    }
    if !grants::use_refresh(db, token)
        .await
        .map_err(OAuthError::unavailable)?
    {
        revoke_after_replay(reg, &found.grant_id, "refresh_reused").await;
        return Err(invalid_grant("this refresh token is no longer valid"));
    }
    user_tokens(
        reg,
        client,
        &user,
        (&found.grant_id, &found.signed_in),
        (&scopes, &found.scopes),
        "",
    )
    .await
}

/// The token response of a user's grant: an access token of `scopes` (the user's current
/// scopes permitting) that says how the user signed in when they consented, recorded under
/// the grant, a new refresh token of `grant_scopes` when the client may refresh, and an
/// id_token when `openid` was granted (with the request's `nonce` on the code's).
pub(super) async fn user_tokens(
    reg: &Registry,
    client: &Client,
    user: &User,
    (grant, signed_in): (&str, &grants::SignedIn),
    (scopes, grant_scopes): (&[String], &[String]),
    nonce: &str,
) -> Result<Response, OAuthError> {
    let (_, mine) = reg
        .accounts
        .roles()
        .await
        .map_err(OAuthError::unavailable)?
        .of(&user.roles);
    let scopes: Vec<String> = scopes
        .iter()
        .filter(|s| mine.contains(s) || super::oidc::is_oidc_scope(s))
        .cloned()
        .collect();
    let session = crate::session::Session {
        kind: SessionKind::Client,
        client_id: Some(client.client_id.clone()),
        username: Some(user.username.clone()),
        email: Some(user.email.clone()),
        name: Some(user.name.clone()).filter(|n| !n.is_empty()),
        scopes: scopes.clone(),
        amr: signed_in.amr.clone(),
        auth_time: (signed_in.auth_time > 0).then_some(signed_in.auth_time),
        audience: Some(signed_in.resource.clone()).filter(|r| !r.is_empty()),
        ..Sessions::draft(user.id.clone(), reg.access_ttl)
    };
    let access = issue_access(reg, client, &session, Some(grant)).await?;
    let mut body = json!({
        "access_token": access.token.expose(),
        "token_type": "Bearer",
        "expires_in": access.ttl,
        "scope": scopes.join(" "),
    });
    if client.allows_grant("refresh_token") {
        let refresh = grants::issue_refresh(
            &reg.accounts.db,
            grant,
            grant_scopes,
            reg.refresh_ttl.as_secs(),
        )
        .await
        .map_err(OAuthError::unavailable)?;
        body["refresh_token"] = json!(refresh.expose());
    }
    if scopes.iter().any(|s| s == super::oidc::OPENID) {
        let id_token = reg
            .id_token(
                client,
                user,
                &super::oidc::IdTokenFor {
                    signed_in,
                    nonce,
                    access_token: access.token.expose(),
                    scopes: &scopes,
                },
            )
            .map_err(|e| {
                tracing::error!(client_id = %client.client_id, alg = client.oidc.id_token_alg.name(), error = %e, "cannot sign an id_token: is there a key of the client's --id-token-alg in --keys-dir?");
                OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the id_token cannot be signed")
            })?;
        body["id_token"] = json!(id_token);
    }
    tracing::info!(target: "gatehouse::audit", event = "token_issued", grant = %grant, client_id = %client.client_id, user = %user.id, sid = %access.sid, "audit");
    Ok(no_store(StatusCode::OK, body))
}

async fn client_credentials(
    reg: &Registry,
    client: &Client,
    params: &Params,
) -> Result<Response, OAuthError> {
    if !client.confidential || !client.allows_grant("client_credentials") {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "this client may not use client_credentials",
        ));
    }
    let scopes = granted_scopes(params.get("scope"), &client.scopes)?;
    let session = crate::session::Session {
        kind: SessionKind::Client,
        client_id: Some(client.client_id.clone()),
        name: Some(client.name.clone()),
        scopes: scopes.clone(),
        audience: resource(reg, params.get("resource"))?,
        ..Sessions::draft(client.client_id.clone(), reg.access_ttl)
    };
    let access = issue_access(reg, client, &session, None).await?;
    tracing::info!(
        target: "gatehouse::audit",
        event = "token_issued",
        grant = "client_credentials",
        client_id = %client.client_id,
        sid = %access.sid,
        "audit"
    );
    Ok(no_store(
        StatusCode::OK,
        json!({
            "access_token": access.token.expose(),
            "token_type": "Bearer",
            "expires_in": access.ttl,
            "scope": scopes.join(" "),
        }),
    ))
}

/// An access token handed out: the token, its lifetime, and its session's handle ("" for a
/// JWT, which has no session).
struct Access {
    token: crate::secret::Secret<String>,
    ttl: u64,
    sid: String,
}

/// The access token of `session`, in the client's format: a session in the store (recorded
/// under `grant` and capped, for a user's grant), or an RFC 9068 JWT that nothing stores and
/// so nothing revokes, hence at most [`super::oidc::JWT_ACCESS_TTL`].
async fn issue_access(
    reg: &Registry,
    client: &Client,
    session: &crate::session::Session,
    grant: Option<&str>,
) -> Result<Access, OAuthError> {
    if client.oidc.access_token_format == super::clients::AccessTokenFormat::Jwt {
        let ttl = reg.access_ttl.as_secs().min(super::oidc::JWT_ACCESS_TTL);
        let jwt = reg.access_jwt(client, session, ttl).map_err(|e| {
            tracing::error!(client_id = %client.client_id, error = %e, "cannot sign a JWT access token");
            OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the access token cannot be signed")
        })?;
        return Ok(Access {
            token: crate::secret::Secret::new(jwt),
            ttl,
            sid: String::new(),
        });
    }
    let sessions = reg.accounts.gateway.sessions();
    let issued = sessions
        .issue(session)
        .await
        .map_err(OAuthError::unavailable)?;
    if let Some(grant) = grant {
        grants::record_access(
            &reg.accounts.db,
            grant,
            &issued.sid,
            &session.sub,
            session.expires_at,
        )
        .await
        .map_err(OAuthError::unavailable)?;
        grants::cap_access(&reg.accounts.db, &sessions, grant)
            .await
            .map_err(OAuthError::unavailable)?;
    }
    Ok(Access {
        token: issued.token,
        ttl: reg.access_ttl.as_secs(),
        sid: issued.sid,
    })
}

/// A token request's `resource`, if any, must be the one its code or grant was asked for.
fn same_resource(reg: &Registry, params: &Params, granted: &str) -> Result<(), OAuthError> {
    match resource(reg, params.get("resource"))? {
        Some(r) if r != granted => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "resource differs from the authorization request's",
        )),
        _ => Ok(()),
    }
}

/// A `resource` parameter (RFC 8707): one of the APIs of `--api-catalog`, by its base URL;
/// `invalid_target` for any other.
pub(super) fn resource(reg: &Registry, given: Option<&str>) -> Result<Option<String>, OAuthError> {
    match given {
        None => Ok(None),
        Some(r) => reg.resource(r).map(Some).ok_or_else(|| {
            OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                format!("{r:?} is not an API of this server"),
            )
        }),
    }
}

/// The live session of `token` if it was issued to `client`; None for anything else (unknown,
/// expired, revoked, a browser session, another client's).
async fn owned_token(
    reg: &Registry,
    client: &Client,
    token: &str,
) -> Result<Option<crate::sessions::Listed>, OAuthError> {
    let found = reg
        .accounts
        .gateway
        .sessions()
        .find(token)
        .await
        .map_err(OAuthError::unavailable)?;
    Ok(found.filter(|l| {
        l.session.kind != SessionKind::User
            && l.session.client_id.as_deref() == Some(client.client_id.as_str())
    }))
}

/// RFC 7009: 200 whether or not the token existed; only the client's own tokens end.
async fn revoke(State(reg): State<Arc<Registry>>, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let params = Params::parse(&headers, &body)?;
        let client = authenticate(&reg, &headers, &params).await?;
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::request("token is missing"))?;
        if token.starts_with("grt_") {
            let found = grants::find_refresh(&reg.accounts.db, token)
                .await
                .map_err(OAuthError::unavailable)?;
            if let Some(r) = found.filter(|r| r.client_id == client.client_id) {
                let sessions = reg.accounts.gateway.sessions();
                let n = grants::revoke_grant(&reg.accounts.db, &sessions, &r.grant_id)
                    .await
                    .map_err(OAuthError::unavailable)?;
                tracing::info!(target: "gatehouse::audit", event = "grant_revoked", client_id = %client.client_id, grant = %r.grant_id, tokens_revoked = n, "audit");
            }
        } else if let Some(l) = owned_token(&reg, &client, token).await? {
            reg.accounts
                .gateway
                .sessions()
                .revoke(token)
                .await
                .map_err(OAuthError::unavailable)?;
            tracing::info!(target: "gatehouse::audit", event = "token_revoked", client_id = %client.client_id, sid = %l.sid, "audit");
        }
        Ok::<_, OAuthError>(no_store(StatusCode::OK, json!({})))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// RFC 7662: what a token is, for the client it was issued to; `{"active": false}` otherwise.
async fn introspect(State(reg): State<Arc<Registry>>, headers: HeaderMap, body: Bytes) -> Response {
    let run = async {
        let params = Params::parse(&headers, &body)?;
        let client = authenticate(&reg, &headers, &params).await?;
        if !client.confidential {
            return Err(OAuthError::client());
        }
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::request("token is missing"))?;
        let answer = match owned_token(&reg, &client, token).await? {
            None => json!({"active": false}),
            Some(l) => {
                let s = &l.session;
                let mut v = json!({
                    "active": s.is_live(unix_now()),
                    "scope": s.scopes.join(" "),
                    "client_id": s.client_id,
                    "sub": s.sub,
                    "token_type": "Bearer",
                    "exp": s.expires_at,
                    "iat": s.created_at,
                    "iss": reg.issuer(),
                });
                if let Some(u) = &s.username {
                    v["username"] = json!(u);
                }
                v
            }
        };
        Ok(no_store(StatusCode::OK, answer))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// RFC 8414 and OpenID Connect Discovery: what this server offers, at the issuer's
/// well-known addresses.
async fn metadata(State(reg): State<Arc<Registry>>) -> Response {
    let roles = match reg.accounts.roles().await {
        Ok(r) => r,
        Err(e) => return OAuthError::unavailable(e).into_response(),
    };
    let mut r = axum::Json(super::oidc::metadata(&reg, &roles)).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

// ---------------------------------------------------------------------------------------
// The device grant's token half (RFC 8628 §3.4–3.5); `device.rs` holds its endpoint and page.

/// The first polling interval, and what `slow_down` adds to it.
pub(super) const DEVICE_INTERVAL_SECS: u64 = 5;

/// A device code's record.
pub(super) struct DeviceCode {
    pub(super) user_code: String,
    pub(super) client_id: String,
    pub(super) scopes: Vec<String>,
    pub(super) expired: bool,
    pub(super) interval: u64,
    pub(super) last_poll: u64,
    pub(super) status: String,
    pub(super) user_id: String,
    pub(super) signed_in: SignedIn,
}

pub(super) fn device_record(r: &sqlx::any::AnyRow) -> Result<DeviceCode, sqlx::Error> {
    Ok(DeviceCode {
        user_code: r.try_get("user_code")?,
        client_id: r.try_get("client_id")?,
        scopes: grants::scope_list(&r.try_get::<String, _>("scopes")?),
        expired: r.try_get::<i64, _>("expires_at")? <= unix_now() as i64,
        interval: r.try_get::<i64, _>("interval_secs")?.max(0) as u64,
        last_poll: r.try_get::<i64, _>("last_poll")?.max(0) as u64,
        status: r.try_get("status")?,
        user_id: r.try_get("user_id")?,
        signed_in: SignedIn {
            amr: r
                .try_get::<String, _>("amr")?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            auth_time: r.try_get::<i64, _>("auth_time")?.max(0) as u64,
            sid: r.try_get("sid")?,
            resource: String::new(),
        },
    })
}

/// The token endpoint's device grant (§3.4–3.5): pending, slow down, denied, expired, or the
/// tokens, once.
async fn device_code(
    reg: &Registry,
    client: &Client,
    params: &Params,
) -> Result<Response, OAuthError> {
    if !client.allows_grant("device_code") {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "this client may not use the device authorization grant",
        ));
    }
    let code = params
        .get("device_code")
        .ok_or_else(|| OAuthError::request("device_code is missing"))?;
    let db = &reg.accounts.db;
    let hash = token_hash(code);
    let row = sqlx::query("SELECT * FROM oauth_device_codes WHERE hash = $1")
        .bind(&hash)
        .fetch_optional(db.pool())
        .await
        .map_err(|e| OAuthError::unavailable(DbError::from(e)))?;
    let found = row
        .as_ref()
        .map(device_record)
        .transpose()
        .map_err(|e| OAuthError::unavailable(DbError::from(e)))?
        .filter(|d| d.client_id == client.client_id)
        .ok_or_else(|| invalid_grant("unknown device_code"))?;
    let error = |e: &'static str, d: &str| OAuthError::new(StatusCode::BAD_REQUEST, e, d);
    let now = unix_now();
    match found.status.as_str() {
        "used" => return Err(invalid_grant("this device_code was used before")),
        _ if found.expired => return Err(error("expired_token", "the device_code has expired")),
        "denied" => return Err(error("access_denied", "the user denied access")),
        "pending" => {
            let too_soon = now < found.last_poll + found.interval;
            let interval = if too_soon {
                found.interval + DEVICE_INTERVAL_SECS
            } else {
                found.interval
            };
            sqlx::query(
                "UPDATE oauth_device_codes SET last_poll = $1, interval_secs = $2 WHERE hash = $3",
            )
            .bind(now as i64)
            .bind(interval as i64)
            .bind(&hash)
            .execute(db.pool())
            .await
            .map_err(|e| OAuthError::unavailable(DbError::from(e)))?;
            return Err(if too_soon {
                error("slow_down", "poll less often")
            } else {
                error("authorization_pending", "the user has not answered yet")
            });
        }
        _ => {}
    }
    // Approved: used once, by whichever request marks it first.
    let taken = sqlx::query(
        "UPDATE oauth_device_codes SET status = 'used' WHERE hash = $1 AND status = 'approved'",
    )
    .bind(&hash)
    .execute(db.pool())
    .await
    .map_err(|e| OAuthError::unavailable(DbError::from(e)))?;
    if taken.rows_affected() != 1 {
        return Err(invalid_grant("this device_code was used before"));
    }
    let user = grant_user(reg, &found.user_id).await?;
    let grant = grants::create_grant(
        db,
        &client.client_id,
        &user.id,
        &found.scopes,
        &found.signed_in,
    )
    .await
    .map_err(OAuthError::unavailable)?;
    tracing::info!(target: "gatehouse::audit", event = "device_code_redeemed", client_id = %client.client_id, user = %user.id, user_code = %found.user_code, "audit");
    user_tokens(
        reg,
        client,
        &user,
        (&grant, &found.signed_in),
        (&found.scopes, &found.scopes),
        "",
    )
    .await
}
