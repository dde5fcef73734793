//! `--identity-providers`: the other providers people may sign in with (any OpenID provider,
//! ORCID, GitHub), and what gatehouse asks of them: discovery and JWKS (fetched when first
//! needed and cached, so a provider that is down never stops a start), the code exchange, the
//! id_token's checks, GitHub's user API, and the checks of a provider's back-channel
//! `logout_token`. The pages that use them are accounts::federation.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::outbound::{Outbound, Trust};
use crate::error::ConfigError;
use crate::forward::percent_encode;
use crate::secret::Secret;

const FLAG: &str = "--identity-providers";
/// How long discovery documents are kept before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// A JWKS is fetched again for an unknown `kid`, at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(10);
/// ORCID's issuer, the `orcid` kind's default.
pub const ORCID_ISSUER: &str = "https://orcid.org";
const GITHUB_AUTHORIZE: &str = "https://github.com/login/oauth/authorize";
const GITHUB_TOKEN: &str = "https://github.com/login/oauth/access_token";
const GITHUB_API: &str = "https://api.github.com";
/// The back-channel logout event (OpenID Back-Channel Logout 1.0, 2.4).
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Oidc,
    Orcid,
    Github,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    provider: Vec<toml::Spanned<Def>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Def {
    id: String,
    name: String,
    kind: Kind,
    issuer: Option<String>,
    authorize_url: Option<String>,
    token_url: Option<String>,
    api_url: Option<String>,
    client_id: String,
    client_secret_file: std::path::PathBuf,
    scopes: Option<Vec<String>>,
    #[serde(default)]
    trust_mfa: bool,
    #[serde(default)]
    link_by_verified_email: bool,
}

/// One provider, as configured, with what was fetched from it.
pub struct Provider {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    /// The issuer (`oidc`, `orcid`); GitHub has none.
    pub issuer: Option<String>,
    github: Option<GithubUrls>,
    client_id: String,
    client_secret: Secret<String>,
    scopes: Vec<String>,
    /// Whether the provider's `amr` may satisfy a second factor.
    pub trust_mfa: bool,
    /// Whether a new identity with a verified email attaches to the account with that email.
    pub link_by_verified_email: bool,
    metadata: Mutex<Option<(Arc<Metadata>, Instant)>>,
    jwks: Mutex<Option<(Arc<JwkSet>, Instant)>>,
}

struct GithubUrls {
    authorize: String,
    token: String,
    api: String,
}

/// The parts of a provider's discovery document gatehouse uses.
#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// How far a provider's clock may be from ours: in its tokens' times, and when it says when
/// someone signed in.
const SKEW_SECS: u64 = 60;

/// How long after it was issued a logout token is taken, at most, whatever its `exp` (which is
/// optional) says: and so how long its `jti` is remembered.
const LOGOUT_TOKEN_AGE: Duration = Duration::from_secs(300);

/// Until when a logout token issued at `iat` is taken, seen at `now`; none if no longer. (An
/// `exp` can only make it sooner, and is checked with the signature.)
fn logout_token_until(iat: u64, now: u64) -> Option<u64> {
    let until = iat + LOGOUT_TOKEN_AGE.as_secs() + SKEW_SECS;
    (now <= until).then_some(until)
}

/// A logout token that passed [`Provider::verify_logout_token`].
#[derive(Debug)]
pub struct LogoutToken {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// Unix seconds after which the token is refused anyway: its `jti` is remembered until
    /// then.
    pub until: u64,
}

/// Whether a provider's `auth_time` says the person signed in at `since` or later.
fn signed_in_since(auth_time: Option<u64>, since: u64) -> Result<(), &'static str> {
    match auth_time {
        Some(t) if t + SKEW_SECS >= since => Ok(()),
        Some(_) => Err("asked to sign in again, the provider reused an earlier sign-in"),
        None => Err("asked to sign in again, the provider sent no auth_time"),
    }
}

/// What a provider said about the person who signed in there.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    /// A username to suggest.
    pub username: Option<String>,
    /// The provider's `amr` (OpenID providers only).
    pub amr: Vec<String>,
    /// The provider's session (`sid`), for its back-channel logout.
    pub sid: Option<String>,
}

impl Upstream {
    /// Whether the provider reports a second factor (`mfa`, or a one-time code, a hardware
    /// key or biometrics beside something else).
    pub fn reports_mfa(&self) -> bool {
        self.amr.iter().any(|m| m == "mfa")
            || (self.amr.len() >= 2
                && self
                    .amr
                    .iter()
                    .any(|m| ["otp", "hwk", "swk", "fpt", "face", "sc"].contains(&m.as_str())))
    }
}

/// Why a provider could not sign someone in.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// It did not answer, or answered nothing usable: try again later.
    #[error("{0}")]
    Down(String),
    /// Its answer failed a check (signature, issuer, audience, nonce, expiry…): refused.
    #[error("{0}")]
    Refused(String),
}

fn down(what: &str, e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Down(format!("{what}: {e}"))
}

fn refused(why: impl Into<String>) -> UpstreamError {
    UpstreamError::Refused(why.into())
}

/// Every provider of `--identity-providers`; none without the flag.
pub fn load(path: Option<&Path>) -> Result<Vec<Arc<Provider>>, ConfigError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(FLAG, format!("{}: {e}", path.display())))?;
    let line_of = |offset: usize| crate::error::line_at(&text, offset);
    let file: File = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(s.start));
        ConfigError::new(
            FLAG,
            format!("{} line {line}: {}", path.display(), e.message()),
        )
    })?;
    let mut providers: Vec<Arc<Provider>> = Vec::new();
    for spanned in file.provider {
        let line = line_of(spanned.span().start);
        let bad =
            |why: String| ConfigError::new(FLAG, format!("{} line {line}: {why}", path.display()));
        let def = spanned.into_inner();
        if !super::identities::valid_provider_id(&def.id) {
            return Err(bad(format!(
                "id {:?}: letters, digits, - and _ only (it is part of the callback URL)",
                def.id
            )));
        }
        if providers.iter().any(|p| p.id == def.id) {
            return Err(bad(format!("id {:?} is used twice", def.id)));
        }
        if def.name.trim().is_empty() || def.client_id.trim().is_empty() {
            return Err(bad("name and client_id must not be empty".into()));
        }
        let issuer = match def.kind {
            Kind::Oidc => Some(
                def.issuer
                    .clone()
                    .ok_or_else(|| bad(format!("{}: kind \"oidc\" needs an issuer", def.id)))?,
            ),
            Kind::Orcid => Some(def.issuer.clone().unwrap_or_else(|| ORCID_ISSUER.into())),
            Kind::Github => {
                if def.issuer.is_some() {
                    return Err(bad(format!(
                        "{}: kind \"github\" takes authorize_url, token_url and api_url, not an issuer",
                        def.id
                    )));
                }
                None
            }
        };
        if def.kind != Kind::Github
            && (def.authorize_url.is_some() || def.token_url.is_some() || def.api_url.is_some())
        {
            return Err(bad(format!(
                "{}: authorize_url, token_url and api_url are for kind \"github\"; an OpenID provider is found from its issuer",
                def.id
            )));
        }
        for url in issuer
            .iter()
            .chain(&def.authorize_url)
            .chain(&def.token_url)
            .chain(&def.api_url)
        {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(bad(format!("{}: {url:?} is not an http(s) URL", def.id)));
            }
        }
        let client_secret = crate::secret::read_secret_file(&def.client_secret_file, FLAG)
            .map_err(|e| bad(format!("{}: client_secret_file {e}", def.id)))?;
        let scopes = def.scopes.unwrap_or_else(|| {
            match def.kind {
                Kind::Oidc => vec!["openid", "profile", "email"],
                Kind::Orcid => vec!["openid"],
                Kind::Github => vec!["read:user", "user:email"],
            }
            .into_iter()
            .map(str::to_owned)
            .collect()
        });
        if def.kind != Kind::Github && !scopes.iter().any(|s| s == "openid") {
            return Err(bad(format!("{}: scopes must include \"openid\"", def.id)));
        }
        let github = (def.kind == Kind::Github).then(|| GithubUrls {
            authorize: def.authorize_url.unwrap_or_else(|| GITHUB_AUTHORIZE.into()),
            token: def.token_url.unwrap_or_else(|| GITHUB_TOKEN.into()),
            api: def
                .api_url
                .unwrap_or_else(|| GITHUB_API.into())
                .trim_end_matches('/')
                .to_owned(),
        });
        providers.push(Arc::new(Provider {
            id: def.id,
            name: def.name,
            kind: def.kind,
            issuer: issuer.map(|i| i.trim_end_matches('/').to_owned()),
            github,
            client_id: def.client_id,
            client_secret,
            scopes,
            trust_mfa: def.trust_mfa,
            link_by_verified_email: def.link_by_verified_email,
            metadata: Mutex::new(None),
            jwks: Mutex::new(None),
        }));
    }
    Ok(providers)
}

/// `application/x-www-form-urlencoded` of `fields`.
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn json_of(what: &str, body: &[u8]) -> Result<Value, UpstreamError> {
    serde_json::from_slice(body).map_err(|e| down(what, format!("not JSON ({e})")))
}

impl Provider {
    /// The discovery document, from the cache or fetched now.
    async fn metadata(&self, outbound: &Outbound) -> Result<Arc<Metadata>, UpstreamError> {
        if let Some((m, at)) = &*self.metadata.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < METADATA_TTL {
                return Ok(m.clone());
            }
        }
        let issuer = self.issuer.as_deref().unwrap_or_default();
        let url = format!("{issuer}/.well-known/openid-configuration");
        let answer = outbound
            .get(&url, Trust::Operator, super::outbound::MAX_BODY)
            .await
            .map_err(|e| down("discovery", e))?;
        if !answer.status.is_success() {
            return Err(down("discovery", format!("status {}", answer.status)));
        }
        let m: Metadata = serde_json::from_slice(&answer.body)
            .map_err(|e| down("discovery", format!("not a discovery document ({e})")))?;
        // OpenID Connect Discovery 4.3: the issuer in it is the one it was fetched for.
        if m.issuer.trim_end_matches('/') != issuer {
            return Err(refused(format!(
                "the discovery document names issuer {:?}, not {issuer:?}",
                m.issuer
            )));
        }
        let m = Arc::new(m);
        *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((m.clone(), Instant::now()));
        Ok(m)
    }

    /// The key of `kid` from the provider's JWKS: cached, fetched again for a `kid` it does
    /// not hold (a rotation), at most every [`JWKS_REFETCH`].
    async fn key(
        &self,
        outbound: &Outbound,
        meta: &Metadata,
        kid: Option<&str>,
    ) -> Result<DecodingKey, UpstreamError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let cached = self.jwks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((set, at)) = &cached {
            if let Some(jwk) = find(set) {
                return DecodingKey::from_jwk(&jwk).map_err(|e| refused(format!("its key: {e}")));
            }
            if at.elapsed() < JWKS_REFETCH {
                return Err(refused("signed with a key its JWKS does not hold"));
            }
        }
        let answer = outbound
            .get(&meta.jwks_uri, Trust::Operator, super::outbound::MAX_BODY)
            .await
            .map_err(|e| down("JWKS", e))?;
        if !answer.status.is_success() {
            return Err(down("JWKS", format!("status {}", answer.status)));
        }
        let set: JwkSet = serde_json::from_slice(&answer.body)
            .map_err(|e| down("JWKS", format!("not a JWKS ({e})")))?;
        let set = Arc::new(set);
        *self.jwks.lock().unwrap_or_else(|e| e.into_inner()) = Some((set.clone(), Instant::now()));
        let jwk = find(&set).ok_or_else(|| refused("signed with a key its JWKS does not hold"))?;
        DecodingKey::from_jwk(&jwk).map_err(|e| refused(format!("its key: {e}")))
    }

    /// Checks a JWT the provider signed (`iss`, `aud`, `exp`, `iat`): its claims.
    async fn verify_jwt(
        &self,
        outbound: &Outbound,
        meta: &Metadata,
        token: &str,
        typ: Option<&str>,
    ) -> Result<Value, UpstreamError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| refused(format!("not a JWT: {e}")))?;
        // Asymmetric algorithms only: never `none`, never a MAC keyed with the client secret.
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(refused(format!("signed with {:?}", header.alg)));
        }
        if let (Some(want), Some(got)) = (typ, header.typ.as_deref()) {
            if !got.eq_ignore_ascii_case(want)
                && !got.eq_ignore_ascii_case(&format!("application/{want}"))
            {
                return Err(refused(format!("typ {got:?}, not {want:?}")));
            }
        }
        let key = self.key(outbound, meta, header.kid.as_deref()).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[meta.issuer.as_str()]);
        v.set_audience(&[self.client_id.as_str()]);
        if typ.is_none() {
            v.set_required_spec_claims(&["iss", "aud", "iat", "exp"]);
        } else {
            v.set_required_spec_claims(&["iss", "aud", "iat"]);
        }
        // `exp` checked whenever present (a logout token may predate its requirement).
        v.validate_exp = true;
        v.leeway = SKEW_SECS;
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| refused(format!("its token failed a check: {e}")))
    }

    /// Where the browser goes to sign in at the provider.
    pub async fn authorize_url(
        &self,
        outbound: &Outbound,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
        again: bool,
    ) -> Result<String, UpstreamError> {
        let scope = self.scopes.join(" ");
        let mut fields = vec![
            ("response_type", "code"),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", scope.as_str()),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ];
        let endpoint = match &self.github {
            Some(g) => g.authorize.clone(),
            None => {
                fields.push(("nonce", nonce));
                // A sign-in asked for again here is asked for again there (OIDC Core
                // 3.1.2.1); GitHub has no such request.
                if again {
                    fields.extend([("prompt", "login"), ("max_age", "0")]);
                }
                self.metadata(outbound)
                    .await?
                    .authorization_endpoint
                    .clone()
            }
        };
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{endpoint}{sep}{}", form(&fields)))
    }

    /// Finishes a sign-in: checks the response's `iss` (RFC 9207), exchanges `code`, checks
    /// the id_token (signature, `iss`, `aud`, `exp`, `nonce`, and `auth_time` no earlier than
    /// `fresh_since` when the sign-in was asked for again) and reads who it is.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        outbound: &Outbound,
        redirect_uri: &str,
        code: &str,
        verifier: &str,
        nonce: &str,
        iss: Option<&str>,
        fresh_since: Option<u64>,
    ) -> Result<Upstream, UpstreamError> {
        if let Some(g) = &self.github {
            if iss.is_some() {
                return Err(refused(
                    "an `iss` in the response of a provider that has none",
                ));
            }
            return self
                .finish_github(outbound, g, redirect_uri, code, verifier)
                .await;
        }
        let meta = self.metadata(outbound).await?;
        match iss {
            Some(i) if i != meta.issuer => {
                return Err(refused(format!(
                "the response names issuer {i:?}, not {:?} (a response meant for another provider)",
                meta.issuer
            )))
            }
            None if meta.authorization_response_iss_parameter_supported => {
                return Err(refused(
                    "the response has no `iss`, which this provider always sends",
                ))
            }
            _ => {}
        }
        let fields = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let tokens = self.token_request(outbound, &meta, &fields).await?;
        let id_token = tokens["id_token"]
            .as_str()
            .ok_or_else(|| refused("no id_token in the token response"))?;
        let claims = self.verify_jwt(outbound, &meta, id_token, None).await?;
        if claims["nonce"].as_str() != Some(nonce) {
            return Err(refused("the id_token's nonce is not the one sent"));
        }
        // Asked with max_age=0, the provider must say when the person signed in (OIDC Core
        // 3.1.2.1), and that must be now: an old session there is no sign-in again here.
        if let Some(since) = fresh_since {
            signed_in_since(claims["auth_time"].as_u64(), since).map_err(refused)?;
        }
        // Several audiences: the authorized party must be this client (OIDC Core 3.1.3.7).
        if claims["aud"].is_array() && claims["azp"].as_str() != Some(self.client_id.as_str()) {
            return Err(refused(
                "an id_token for several audiences, not authorized to this client",
            ));
        }
        let subject = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| refused("no sub in the id_token"))?
            .to_owned();
        let mut all = claims.clone();
        // Claims beyond `sub` often come from UserInfo alone (a conforming provider puts them
        // there when it issued an access token).
        if claims.get("email").is_none() || claims.get("name").is_none() {
            if let (Some(endpoint), Some(at)) =
                (&meta.userinfo_endpoint, tokens["access_token"].as_str())
            {
                let auth = Secret::new(format!("Bearer {at}"));
                let answer = outbound
                    .authorized(endpoint, Trust::Operator, &auth, None)
                    .await
                    .map_err(|e| down("userinfo", e))?;
                if answer.status.is_success() {
                    let info = json_of("userinfo", &answer.body)?;
                    // OIDC Core 5.3.2: UserInfo's sub must be the id_token's.
                    if info["sub"].as_str() != Some(subject.as_str()) {
                        return Err(refused("UserInfo answered for another sub"));
                    }
                    if let (Some(a), Some(i)) = (all.as_object_mut(), info.as_object()) {
                        for (k, v) in i {
                            a.entry(k.clone()).or_insert(v.clone());
                        }
                    }
                }
            }
        }
        let text = |k: &str| all[k].as_str().map(str::to_owned).filter(|s| !s.is_empty());
        let name = text("name").or_else(|| {
            let parts: Vec<String> = [text("given_name"), text("family_name")]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        });
        Ok(Upstream {
            subject,
            email: text("email"),
            email_verified: all["email_verified"].as_bool().unwrap_or(false)
                || all["email_verified"].as_str() == Some("true"),
            name,
            username: text("preferred_username").or_else(|| text("nickname")),
            amr: claims["amr"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            sid: text("sid"),
        })
    }

    /// The token endpoint, authenticated as the provider supports (Basic by default).
    async fn token_request(
        &self,
        outbound: &Outbound,
        meta: &Metadata,
        fields: &[(&str, &str)],
    ) -> Result<Value, UpstreamError> {
        let basic = meta
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == "client_secret_basic"));
        let answer = if basic {
            use base64::Engine;
            // RFC 6749 2.3.1: each part form-encoded, then Basic.
            let pair = format!(
                "{}:{}",
                percent_encode(&self.client_id),
                percent_encode(self.client_secret.expose())
            );
            let auth = Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ));
            outbound
                .authorized(
                    &meta.token_endpoint,
                    Trust::Operator,
                    &auth,
                    Some(("application/x-www-form-urlencoded", form(fields))),
                )
                .await
        } else {
            let mut all = fields.to_vec();
            all.push(("client_id", &self.client_id));
            all.push(("client_secret", self.client_secret.expose()));
            outbound
                .post(
                    &meta.token_endpoint,
                    Trust::Operator,
                    "application/x-www-form-urlencoded",
                    form(&all),
                )
                .await
        }
        .map_err(|e| down("token endpoint", e))?;
        let v = json_of("token endpoint", &answer.body)?;
        if !answer.status.is_success() {
            return Err(refused(format!(
                "the token endpoint refused the code: {}",
                v["error"].as_str().unwrap_or("no reason given")
            )));
        }
        Ok(v)
    }

    /// GitHub: plain OAuth2. The user's numeric id is the subject; the email is the verified
    /// primary one from its API.
    async fn finish_github(
        &self,
        outbound: &Outbound,
        g: &GithubUrls,
        redirect_uri: &str,
        code: &str,
        verifier: &str,
    ) -> Result<Upstream, UpstreamError> {
        let body = form(&[
            // GitHub needs no grant_type; RFC 6749's servers (GitHub Enterprise's proxies, the
            // tests' stand-in) do.
            ("grant_type", "authorization_code"),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose()),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ]);
        let answer = outbound
            .post(
                &g.token,
                Trust::Operator,
                "application/x-www-form-urlencoded",
                body,
            )
            .await
            .map_err(|e| down("token endpoint", e))?;
        let tokens = json_of("token endpoint", &answer.body)?;
        let Some(at) = tokens["access_token"]
            .as_str()
            .filter(|_| answer.status.is_success())
        else {
            return Err(refused(format!(
                "the token endpoint refused the code: {}",
                tokens["error"].as_str().unwrap_or("no reason given")
            )));
        };
        let auth = Secret::new(format!("Bearer {at}"));
        let get = |path: &'static str| {
            let url = format!("{}{path}", g.api);
            let auth = &auth;
            async move {
                let answer = outbound
                    .authorized(&url, Trust::Operator, auth, None)
                    .await
                    .map_err(|e| down("GitHub's API", e))?;
                if !answer.status.is_success() {
                    return Err(down(
                        "GitHub's API",
                        format!("{path}: status {}", answer.status),
                    ));
                }
                json_of("GitHub's API", &answer.body)
            }
        };
        let user = get("/user").await?;
        let subject = match &user["id"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) if !s.is_empty() => s.clone(),
            _ => return Err(down("GitHub's API", "/user has no id")),
        };
        let emails = get("/user/emails").await.unwrap_or(Value::Null);
        let primary = emails
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["primary"] == true && e["verified"] == true);
        Ok(Upstream {
            subject,
            email: primary.and_then(|e| e["email"].as_str().map(str::to_owned)),
            email_verified: primary.is_some(),
            name: user["name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            username: user["login"].as_str().map(str::to_owned),
            amr: Vec::new(),
            sid: None,
        })
    }

    /// Checks a back-channel `logout_token` (OpenID Back-Channel Logout 1.0, 2.6): signed by
    /// the provider for us, a logout event, a `jti`, issued at most [`LOGOUT_TOKEN_AGE`] ago,
    /// and `sub` or `sid`. Whether it was sent before is the caller's to ask.
    pub async fn verify_logout_token(
        &self,
        outbound: &Outbound,
        token: &str,
    ) -> Result<LogoutToken, UpstreamError> {
        if self.github.is_some() {
            return Err(refused("GitHub sends no logout tokens"));
        }
        let meta = self.metadata(outbound).await?;
        let claims = self
            .verify_jwt(outbound, &meta, token, Some("logout+jwt"))
            .await?;
        if claims["events"]
            .get(LOGOUT_EVENT)
            .is_none_or(|e| !e.is_object())
        {
            return Err(refused("no back-channel logout event"));
        }
        if claims.get("nonce").is_some() {
            return Err(refused("a logout token with a nonce"));
        }
        let text = |k: &str| {
            claims[k]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let (sub, sid) = (text("sub"), text("sid"));
        if sub.is_none() && sid.is_none() {
            return Err(refused("a logout token with neither sub nor sid"));
        }
        let jti = text("jti").ok_or_else(|| refused("a logout token without jti"))?;
        let until = logout_token_until(
            claims["iat"].as_u64().unwrap_or(0),
            crate::session::unix_now(),
        )
        .ok_or_else(|| refused("a logout token issued too long ago"))?;
        Ok(LogoutToken {
            sub,
            sid,
            jti,
            until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_asked_for_again_must_be_new_at_the_provider() {
        let since = 1_800_000_000;
        assert!(signed_in_since(Some(since), since).is_ok());
        assert!(signed_in_since(Some(since + 5), since).is_ok());
        // A provider's clock a little behind ours.
        assert!(signed_in_since(Some(since - SKEW_SECS), since).is_ok());
        // An earlier session reused, or no word of when.
        assert!(signed_in_since(Some(since - SKEW_SECS - 1), since).is_err());
        assert!(signed_in_since(Some(since - 3600), since).is_err());
        assert!(signed_in_since(None, since).is_err());
    }

    #[test]
    fn a_logout_token_is_taken_for_a_few_minutes_from_when_it_was_issued() {
        let iat = 1_800_000_000;
        let last = iat + LOGOUT_TOKEN_AGE.as_secs() + SKEW_SECS;
        assert_eq!(logout_token_until(iat, iat), Some(last));
        assert_eq!(logout_token_until(iat, last), Some(last));
        assert_eq!(logout_token_until(iat, last + 1), None);
    }

    #[test]
    fn mfa_is_reported_by_mfa_or_a_second_method_beside_another() {
        let up = |amr: &[&str]| Upstream {
            amr: amr.iter().map(|m| m.to_string()).collect(),
            ..Upstream::default()
        };
        assert!(up(&["pwd", "mfa"]).reports_mfa());
        assert!(up(&["pwd", "otp"]).reports_mfa());
        assert!(up(&["hwk", "pin"]).reports_mfa());
        assert!(!up(&["pwd"]).reports_mfa());
        assert!(!up(&["otp"]).reports_mfa());
        assert!(!up(&[]).reports_mfa());
    }

    #[test]
    fn bad_files_name_the_flag_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s");
        std::fs::write(&secret, "x").unwrap();
        let file = dir.path().join("p.toml");
        let check = |text: &str, want: &str| {
            std::fs::write(&file, text).unwrap();
            let e = load(Some(&file)).err().expect("refused").to_string();
            assert!(
                e.contains("--identity-providers") && e.contains(want),
                "{want}: {e}"
            );
        };
        let s = secret.display();
        check("[[provider]]\nid = \"a\"\nname = \"A\"\nkind = \"github\"\nissuer = \"https://x\"\nclient_id = \"c\"\nclient_secret_file = \"{s}\"\n".replace("{s}", &s.to_string()).as_str(), "line 1");
        check(&format!("[[provider]]\nid = \"a\"\nname = \"A\"\nkind = \"orcid\"\nclient_id = \"c\"\nclient_secret_file = \"{s}\"\n\n[[provider]]\nid = \"a\"\nname = \"B\"\nkind = \"orcid\"\nclient_id = \"c\"\nclient_secret_file = \"{s}\"\n"), "line 8");
        check(&format!("[[provider]]\nid = \"a\"\nname = \"A\"\nkind = \"oidc\"\nissuer = \"https://x\"\nscopes = [\"email\"]\nclient_id = \"c\"\nclient_secret_file = \"{s}\"\n"), "openid");
        check("[[provider]]\nid = \"a\"\nname = \"A\"\nkind = \"orcid\"\nclient_id = \"c\"\nclient_secret_file = \"/nonexistent\"\n", "client_secret_file");
        std::fs::write(&file, format!("[[provider]]\nid = \"orcid\"\nname = \"ORCID\"\nkind = \"orcid\"\nclient_id = \"c\"\nclient_secret_file = \"{s}\"\n")).unwrap();
        let loaded = load(Some(&file)).unwrap();
        assert_eq!(loaded[0].issuer.as_deref(), Some(ORCID_ISSUER));
        assert_eq!(loaded[0].scopes, ["openid"]);
    }
}
