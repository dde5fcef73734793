//! OpenID Connect on the registry: the scopes it adds, the id_token, UserInfo, the discovery
//! document, and reading back an id_token of ours (`id_token_hint`).
//!
//! The id_token's `sub` is the user id, the `sub` of `/auth`'s JWT; its `sid` is the browser
//! session the user consented in, the `sid` of that session's JWT. It is signed with the
//! client's algorithm (`--id-token-alg`, RS256 by default, whose key the server always
//! keeps) by a key published in the one JWKS.

use std::sync::Arc;

use aws_lc_rs::digest;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};

use super::clients::{Client, IdTokenAlg};
use super::grants::SignedIn;
use super::Registry;
use crate::accounts::db::User;
use crate::session::{unix_now, SessionKind};

pub const OPENID: &str = "openid";
pub const OFFLINE_ACCESS: &str = "offline_access";

/// The scopes OpenID Connect defines that gatehouse offers: always grantable, never role
/// scopes (they name what the client learns of the user, not what it may do).
pub const OIDC_SCOPES: [&str; 4] = [OPENID, "profile", "email", OFFLINE_ACCESS];

pub fn is_oidc_scope(scope: &str) -> bool {
    OIDC_SCOPES.contains(&scope)
}

/// Whether a grant of `scopes` ends with the browser session it was made in: an OpenID
/// Connect sign-in (`openid`) without `offline_access`.
pub fn ends_with_session(scopes: &[String]) -> bool {
    scopes.iter().any(|s| s == OPENID) && !scopes.iter().any(|s| s == OFFLINE_ACCESS)
}

/// The order scopes are listed in for people: OpenID Connect's first, as they read (who
/// you are, your profile, your email, staying connected), then the rest by name.
pub fn sort_for_people(scopes: &mut [(String, String)]) {
    scopes.sort_by_key(|(s, _)| {
        (
            OIDC_SCOPES
                .iter()
                .position(|o| o == s)
                .unwrap_or(OIDC_SCOPES.len()),
            s.clone(),
        )
    });
}

/// What an OpenID Connect scope lets a client do, for the consent page.
pub fn scope_words(scope: &str) -> Option<&'static str> {
    Some(match scope {
        OPENID => "Know who you are when you sign in with this account",
        "profile" => "See your name and username",
        "email" => "See your email address",
        OFFLINE_ACCESS => "Stay connected after you sign out here, until you remove its access",
        _ => return None,
    })
}

/// The claims every id_token carries, beside those of the scopes.
const CLAIMS: [&str; 15] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "sid",
    "amr",
    "acr",
    "at_hash",
    "azp",
    "name",
    "preferred_username",
    "updated_at",
];

#[derive(Serialize)]
struct IdToken<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    azp: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    nonce: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    sid: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    amr: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    acr: Option<&'static str>,
    at_hash: String,
    #[serde(flatten)]
    user: Map,
}

type Map = serde_json::Map<String, Value>;

/// The user's claims that `scopes` allow: `profile` (name, preferred_username, updated_at)
/// and `email` (email, email_verified).
pub fn user_claims(user: &User, scopes: &[String]) -> Map {
    let mut m = Map::new();
    if scopes.iter().any(|s| s == "profile") {
        if !user.name.is_empty() {
            m.insert("name".into(), json!(user.name));
        }
        m.insert("preferred_username".into(), json!(user.username));
        m.insert("updated_at".into(), json!(user.updated_at));
    }
    if scopes.iter().any(|s| s == "email") {
        m.insert("email".into(), json!(user.email));
        m.insert(
            "email_verified".into(),
            json!(user.email_confirmed_at.is_some()),
        );
    }
    m
}

/// The left half of the access token's hash under the id_token's algorithm, base64url
/// (Core §3.1.3.6): SHA-256 for RS256 and ES256, SHA-512 for EdDSA (Ed25519).
fn at_hash(alg: IdTokenAlg, access_token: &str) -> String {
    let d = match alg {
        IdTokenAlg::EdDsa => digest::digest(&digest::SHA512, access_token.as_bytes()),
        IdTokenAlg::Rs256 | IdTokenAlg::Es256 => {
            digest::digest(&digest::SHA256, access_token.as_bytes())
        }
    };
    let half = &d.as_ref()[..d.as_ref().len() / 2];
    URL_SAFE_NO_PAD.encode(half)
}

/// The longest a JWT access token lives: nothing stores it, so nothing can revoke it.
pub const JWT_ACCESS_TTL: u64 = 300;

/// An RFC 9068 access token's claims.
#[derive(Serialize)]
struct AccessJwt<'a> {
    iss: &'a str,
    exp: u64,
    aud: &'a str,
    sub: &'a str,
    client_id: &'a str,
    iat: u64,
    jti: String,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acr: Option<&'static str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    amr: &'a [String],
}

/// What an id_token says beyond the user: the grant's sign-in, the request's nonce (the
/// first id_token only: a refreshed one has none), and the access token it comes with.
pub struct IdTokenFor<'a> {
    pub signed_in: &'a SignedIn,
    pub nonce: &'a str,
    pub access_token: &'a str,
    pub scopes: &'a [String],
}

impl Registry {
    /// An id_token for `user`, to `client`, signed with the client's algorithm.
    pub(super) fn id_token(
        &self,
        client: &Client,
        user: &User,
        what: &IdTokenFor<'_>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let alg = client.oidc.id_token_alg;
        let signed_in = what.signed_in;
        let acr = if signed_in.amr.is_empty() {
            None
        } else if signed_in.amr.iter().any(|m| m == "mfa") {
            Some(crate::session::ACR_TWO_FACTORS)
        } else {
            Some(crate::session::ACR_ONE_FACTOR)
        };
        let claims = IdToken {
            iss: self.issuer(),
            sub: &user.id,
            aud: &client.client_id,
            azp: &client.client_id,
            exp: now + self.access_ttl.as_secs(),
            iat: now,
            auth_time: (signed_in.auth_time > 0).then_some(signed_in.auth_time),
            nonce: what.nonce,
            sid: &signed_in.sid,
            amr: &signed_in.amr,
            acr,
            at_hash: at_hash(alg, what.access_token),
            user: user_claims(user, what.scopes),
        };
        self.accounts
            .gateway
            .signer
            .load()
            .sign(alg.algorithm(), "JWT", &claims)
    }

    /// An RFC 9068 JWT access token (`typ: at+jwt`) of `session`, for `ttl` seconds: `aud` is
    /// the session's resource, or the client's audience, or the issuer. Signed with the
    /// client's id_token algorithm (never HS256), by a key of the JWKS.
    pub(super) fn access_jwt(
        &self,
        client: &Client,
        session: &crate::session::Session,
        ttl: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).expect("the OS random number generator failed");
        let claims = AccessJwt {
            iss: self.issuer(),
            exp: now + ttl,
            aud: session
                .audience
                .as_deref()
                .or(client.oidc.audience.as_deref())
                .unwrap_or(self.issuer()),
            sub: &session.sub,
            client_id: &client.client_id,
            iat: now,
            jti: URL_SAFE_NO_PAD.encode(jti),
            scope: session.scopes.join(" "),
            auth_time: session.auth_time,
            acr: session.acr(),
            amr: &session.amr,
        };
        self.accounts.gateway.signer.load().sign(
            client.oidc.id_token_alg.algorithm(),
            "at+jwt",
            &claims,
        )
    }

    /// The API of `--api-catalog` whose base URL `given` is (a trailing slash aside).
    pub(super) fn resource(&self, given: &str) -> Option<String> {
        let want = given.trim_end_matches('/');
        self.catalog
            .iter()
            .find(|api| api.base_url.trim_end_matches('/') == want)
            .map(|api| api.base_url.clone())
    }

    /// The claims of an id_token (or logout token) this server signed, any algorithm of its
    /// JWKS, expired or not (an `id_token_hint` may be old); `None` for anything else: a
    /// token of another issuer, a bad signature, not a JWT.
    pub(super) fn own_token(&self, token: &str) -> Option<Value> {
        self.verify_own(token, None)
    }

    /// The claims of a live RFC 9068 access token this server signed.
    fn own_access_jwt(&self, token: &str) -> Option<Value> {
        self.verify_own(token, Some("at+jwt"))
    }

    /// `own_token`'s check; with `typ`, the header must say it and the token must be live.
    fn verify_own(&self, token: &str, typ: Option<&str>) -> Option<Value> {
        use jsonwebtoken::jwk::JwkSet;
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let header = jsonwebtoken::decode_header(token).ok()?;
        if typ.is_some() && header.typ.as_deref() != typ {
            return None;
        }
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return None;
        }
        let jwks: JwkSet =
            serde_json::from_slice(&self.accounts.gateway.signer.load().jwks()).ok()?;
        let jwk = jwks.find(header.kid.as_deref()?)?;
        let key = DecodingKey::from_jwk(jwk).ok()?;
        let mut v = Validation::new(header.alg);
        v.validate_exp = typ.is_some();
        v.validate_aud = false;
        v.set_issuer(&[self.issuer()]);
        v.set_required_spec_claims(&["iss", "sub"]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .ok()
            .map(|d| d.claims)
    }

    /// The algorithms id_tokens can be signed with here: those with a key.
    pub(super) fn id_token_algs(&self) -> Vec<&'static str> {
        let signer = self.accounts.gateway.signer.load();
        IdTokenAlg::ALL
            .into_iter()
            .filter(|a| signer.has(a.algorithm()))
            .map(IdTokenAlg::name)
            .collect()
    }
}

/// Whether `hint` (an `id_token_hint`) names the user `sub`; an absent hint names anyone. A
/// hint that is not an id_token of ours names no one.
pub(super) fn hint_matches(reg: &Registry, hint: &str, sub: &str) -> bool {
    hint.is_empty()
        || reg
            .own_token(hint)
            .is_some_and(|c| c["sub"].as_str() == Some(sub))
}

/// `GET|POST /oauth/userinfo` (Core §5.3): the claims the bearer token's scopes allow, for an
/// access token granted with `openid`.
pub async fn userinfo(State(reg): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let refuse = |status: StatusCode, error: &str, description: &str| {
        let mut r = (
            status,
            axum::Json(json!({"error": error, "error_description": description})),
        )
            .into_response();
        let challenge = format!("Bearer realm=\"gatehouse\", error=\"{error}\"");
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "send the access token as Authorization: Bearer",
        );
    };
    let found = match reg.accounts.gateway.sessions().find(token).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "userinfo: session store unavailable");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again shortly",
            );
        }
    };
    // A session of a client's (an opaque token), or a JWT access token of ours.
    let held = match found {
        Some(l) if l.session.kind == SessionKind::Client && l.session.is_live(unix_now()) => {
            Some((l.session.sub, l.session.scopes))
        }
        Some(_) => None,
        None => reg.own_access_jwt(token).map(|c| {
            let scopes = c["scope"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            (c["sub"].as_str().unwrap_or("").to_owned(), scopes)
        }),
    };
    let Some((sub, scopes)) = held else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the access token is not valid",
        );
    };
    if !scopes.iter().any(|x| x == OPENID) {
        return refuse(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "the access token was not granted openid",
        );
    }
    let user = match reg.accounts.db.user(&sub).await {
        Ok(Some(u)) if u.active => u,
        Ok(_) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the access token is not valid",
            )
        }
        Err(e) => return web_unavailable(e),
    };
    let mut claims = user_claims(&user, &scopes);
    claims.insert("sub".into(), json!(user.id));
    let mut r = axum::Json(Value::Object(claims)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn web_unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "userinfo: database unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": "temporarily_unavailable"})),
    )
        .into_response()
}

/// The server's metadata: RFC 8414's, which OpenID Connect Discovery 1.0 extends; one
/// document at both well-known addresses.
pub fn metadata(reg: &Registry, roles: &crate::accounts::Roles) -> Value {
    let base = reg.issuer();
    let auth_methods = json!(["client_secret_basic", "client_secret_post", "none"]);
    let mut scopes: Vec<String> = OIDC_SCOPES.iter().map(|s| s.to_string()).collect();
    scopes.extend(roles.of(&roles.names()).1);
    let mut claims: Vec<&str> = CLAIMS.to_vec();
    claims.extend(["email", "email_verified"]);
    let mut doc = json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "userinfo_endpoint": format!("{base}/oauth/userinfo"),
        "end_session_endpoint": format!("{base}/oauth/logout"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "device_authorization_endpoint": format!("{base}/oauth/device_authorization"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "scopes_supported": scopes,
        "claims_supported": claims,
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token", super::clients::DEVICE_GRANT_TYPE],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": reg.id_token_algs(),
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "frontchannel_logout_supported": false,
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
    });
    super::register::metadata(reg, &mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_the_algorithms_hash() {
        // OpenID Connect Core's example (§A.3): the access token and its at_hash (RS256).
        assert_eq!(
            at_hash(
                IdTokenAlg::Rs256,
                "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
            ),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
        assert_eq!(at_hash(IdTokenAlg::EdDsa, "x").len(), 43);
    }

    #[test]
    fn oidc_scopes_are_worded_and_nothing_else_is() {
        for s in OIDC_SCOPES {
            assert!(scope_words(s).is_some(), "{s}");
        }
        assert!(scope_words("papers:read").is_none());
    }
}
