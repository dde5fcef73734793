//! `GET/POST /oauth/authorize`: the authorization code grant's browser half (RFC 6749 §4.1,
//! PKCE S256 required as RFC 9700 asks, `iss` in the answer as RFC 9207 asks), and OpenID
//! Connect's authentication request (Core §3.1.2: `nonce`, `prompt`, `max_age`,
//! `login_hint`, `id_token_hint`, `response_mode=query`).
//!
//! An unknown client or a redirect URI that is not exactly a registered one gets an error
//! page and no redirect: the browser is never sent anywhere the client's owner did not
//! register. Every other error goes back to the registered URI. A signed-out user is sent to
//! `/login` and comes back here; consent is asked once per client and remembered until the
//! user withdraws it.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::clients::Client;
use super::grants::{self, NewCode};
use super::oidc;
use super::Registry;
use crate::accounts::pages::Page;
use crate::accounts::web::{self, Ctx};

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct Params {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: String,
    code_challenge: String,
    code_challenge_method: String,
    // OpenID Connect's.
    nonce: String,
    prompt: String,
    max_age: String,
    login_hint: String,
    id_token_hint: String,
    response_mode: String,
    resource: String,
    // The consent form's own fields.
    csrf: String,
    decision: String,
}

impl Params {
    /// The parameters the consent form carries back, as they came.
    fn hidden(&self) -> Vec<(&'static str, String)> {
        [
            ("response_type", &self.response_type),
            ("client_id", &self.client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.scope),
            ("state", &self.state),
            ("code_challenge", &self.code_challenge),
            ("code_challenge_method", &self.code_challenge_method),
            ("nonce", &self.nonce),
            ("response_mode", &self.response_mode),
            ("resource", &self.resource),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect()
    }
}

#[derive(Template)]
#[template(path = "consent.html")]
struct Consent {
    page: Page,
    client_name: String,
    homepage: String,
    owner: String,
    redirect_host: String,
    scopes: Vec<(String, String)>,
    hidden: Vec<(&'static str, String)>,
}

/// A request that passed the checks: the client, where to answer, what it asks for.
struct Valid {
    client: Client,
    redirect_uri: String,
    /// None: the client's scopes.
    asked: Option<Vec<String>>,
    prompt: Prompt,
    /// `max_age` in seconds.
    max_age: Option<u64>,
    /// The API the tokens are for (RFC 8707), "" for none.
    resource: String,
}

/// OpenID Connect's `prompt`: what the client wants shown.
#[derive(Debug, Default, Clone, Copy)]
struct Prompt {
    /// No page at all: an error at the redirect URI when one would be needed.
    none: bool,
    /// Sign in again, whatever the session.
    login: bool,
    /// Ask for consent, whatever was recorded.
    consent: bool,
}

/// Why a request is refused: on a page of ours, at the client's registered URI, or because
/// the database did not answer.
enum Refusal {
    Page(&'static str),
    Unavailable(String),
    Redirect {
        uri: String,
        error: &'static str,
        description: String,
        state: String,
    },
}

/// The checks both GET and POST make, in RFC 6749 §4.1.2.1's order: first whether the
/// client and redirect URI can be trusted with an answer at all.
async fn check(reg: &Registry, p: &Params) -> Result<Valid, Refusal> {
    let client = match reg.find_client(&p.client_id).await {
        Ok(Some(c)) if !c.disabled => c,
        Ok(_) => {
            return Err(Refusal::Page(
                "This application is not registered here, or it has been disabled.",
            ))
        }
        Err(e) => return Err(Refusal::Unavailable(e.to_string())),
    };
    let redirect_uri = if p.redirect_uri.is_empty() {
        match client.redirect_uris.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(Refusal::Page(
                    "The application did not say where to send you back.",
                ))
            }
        }
    } else if client.redirect_uris.contains(&p.redirect_uri) {
        p.redirect_uri.clone()
    } else {
        return Err(Refusal::Page(
            "The application asked to send you back to an address it has not registered.",
        ));
    };
    let refuse = |error, description: &str| {
        Err(Refusal::Redirect {
            uri: redirect_uri.clone(),
            error,
            description: description.to_owned(),
            state: p.state.clone(),
        })
    };
    if p.response_type != "code" {
        return refuse(
            "unsupported_response_type",
            "only response_type=code is offered",
        );
    }
    if !client.allows_grant("authorization_code") {
        return refuse(
            "unauthorized_client",
            "this client may not use the authorization code grant",
        );
    }
    if !matches!(p.response_mode.as_str(), "" | "query") {
        return refuse("invalid_request", "only response_mode=query is offered");
    }
    let mut prompt = Prompt::default();
    for word in p.prompt.split(' ').filter(|w| !w.is_empty()) {
        match word {
            "none" => prompt.none = true,
            "login" => prompt.login = true,
            "consent" => prompt.consent = true,
            // Nothing to choose among: one account per browser session.
            "select_account" => {}
            other => {
                return refuse(
                    "invalid_request",
                    &format!("prompt {other:?} is not offered"),
                )
            }
        }
    }
    if prompt.none && (prompt.login || prompt.consent || p.prompt.contains("select_account")) {
        return refuse("invalid_request", "prompt=none goes with no other value");
    }
    let max_age = match p.max_age.as_str() {
        "" => None,
        n => match n.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return refuse("invalid_request", "max_age is a number of seconds"),
        },
    };
    let resource = match p.resource.as_str() {
        "" => String::new(),
        r => match reg.resource(r) {
            Some(api) => api,
            None => {
                return refuse(
                    "invalid_target",
                    &format!("{r:?} is not an API of this server"),
                )
            }
        },
    };
    if p.code_challenge_method != "S256" || !valid_challenge(&p.code_challenge) {
        return refuse(
            "invalid_request",
            "PKCE is required: code_challenge with code_challenge_method=S256",
        );
    }
    let asked = (!p.scope.trim().is_empty()).then(|| grants::scope_list(&p.scope));
    if let Some(s) = asked
        .iter()
        .flatten()
        .find(|s| !client.scopes.contains(s) && !oidc::is_oidc_scope(s))
    {
        return refuse(
            "invalid_scope",
            &format!("scope {s:?} is not allowed for this client"),
        );
    }
    Ok(Valid {
        client,
        redirect_uri,
        asked,
        prompt,
        max_age,
        resource,
    })
}

impl Valid {
    /// An OpenID Connect request: `openid` asked for.
    fn openid(&self) -> bool {
        self.asked
            .as_ref()
            .is_some_and(|a| a.iter().any(|s| s == oidc::OPENID))
    }

    /// An error at the redirect URI.
    fn refusal(&self, p: &Params, error: &'static str, description: &str) -> Refusal {
        Refusal::Redirect {
            uri: self.redirect_uri.clone(),
            error,
            description: description.to_owned(),
            state: p.state.clone(),
        }
    }
}

/// A PKCE S256 challenge: BASE64URL(SHA-256(verifier)), 43 characters.
fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `uri` with the answer's parameters added to its query.
pub(super) fn answer_uri(uri: &str, params: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(params).unwrap_or_default();
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{query}")
}

fn refused(reg: &Registry, ctx: &Ctx, r: Refusal) -> Response {
    match r {
        Refusal::Unavailable(e) => web::unavailable(&reg.accounts, ctx, &e),
        Refusal::Page(why) => web::message(
            &reg.accounts,
            ctx,
            StatusCode::BAD_REQUEST,
            "This sign-in request cannot be used",
            &[why, "Go back to the application and try again; if it keeps happening, tell the application's owner."],
            None,
        ),
        Refusal::Redirect {
            uri,
            error,
            description,
            state,
        } => {
            let mut params = vec![("error", error), ("error_description", description.as_str())];
            if !state.is_empty() {
                params.push(("state", state.as_str()));
            }
            params.push(("iss", reg.issuer()));
            web::see_other(&answer_uri(&uri, &params))
        }
    }
}

/// Scopes as the consent pages list them: in words, in the order people read them.
pub(super) fn for_people(scopes: &[String]) -> Vec<(String, String)> {
    let mut listed: Vec<(String, String)> =
        scopes.iter().map(|s| (s.clone(), scope_words(s))).collect();
    oidc::sort_for_people(&mut listed);
    listed
}

/// The host (and port) of an absolute URL.
fn host_of(url: &str) -> &str {
    url.split_once("://")
        .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
}

/// In words, what a scope lets a client do.
fn scope_words(scope: &str) -> String {
    if let Some(words) = oidc::scope_words(scope) {
        return words.to_owned();
    }
    match scope.split_once(':') {
        _ if scope == "admin" => "Administer this service".into(),
        Some((what, "read")) => format!("Read your {what}"),
        Some((what, "write")) => format!("Change your {what}"),
        _ => format!("Use “{scope}”"),
    }
}

pub async fn authorize_page(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    uri: Uri,
    Query(p): Query<Params>,
) -> Response {
    let valid = match check(&reg, &p).await {
        Ok(v) => v,
        Err(refusal) => return refused(&reg, &ctx, refusal),
    };
    let here = uri
        .path_and_query()
        .map_or("/oauth/authorize", |p| p.as_str());
    // Whether the browser must sign in (again) first: not signed in, `prompt=login`, or a
    // sign-in older than `max_age`. With `prompt=none` that is an answer, not a page.
    let now = crate::session::unix_now();
    let must_sign_in = match ctx.session() {
        None => true,
        Some(l) => {
            valid.prompt.login
                || valid
                    .max_age
                    .is_some_and(|max| max == 0 || !l.session.authenticated_within(max, now))
                || !oidc::hint_matches(&reg, &p.id_token_hint, &l.session.sub)
        }
    };
    if must_sign_in {
        if valid.prompt.none {
            let r = valid.refusal(&p, "login_required", "the user must sign in");
            return refused(&reg, &ctx, r);
        }
        return sign_in_first(&p, &uri, ctx.session().is_some());
    }
    let user = match web::signed_in(&reg.accounts, &ctx, here).await {
        Ok(u) => u,
        Err(_) if valid.prompt.none => {
            let r = valid.refusal(&p, "interaction_required", "the user must act first");
            return refused(&reg, &ctx, r);
        }
        Err(r) => return r,
    };
    let granted = match reg.grantable(&valid, &user).await {
        Ok(g) => g,
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    };
    // Only a recorded consent that covers the request skips the page: an empty set of
    // scopes needs one as much as any other (it still hands the client the user's identity).
    match grants::consent(&reg.accounts.db, &user.id, &valid.client.client_id).await {
        Ok(Some(given)) if !valid.prompt.consent && granted.iter().all(|s| given.contains(s)) => {
            issue(&reg, &ctx, &p, &valid, &user.id, &granted).await
        }
        Ok(_) if valid.prompt.none => {
            let r = valid.refusal(&p, "consent_required", "the user has not consented");
            refused(&reg, &ctx, r)
        }
        Ok(_) => consent_page(&reg, &ctx, &p, &valid, &granted).await,
        Err(e) => web::unavailable(&reg.accounts, &ctx, &e),
    }
}

/// Sends the browser to `/login`, and back to this request once signed in. A sign-in asked
/// for again (`prompt=login`, `max_age`) comes back without those, so that it does not ask
/// once more; the id_token's `auth_time` tells the client when it happened.
fn sign_in_first(p: &Params, uri: &Uri, again: bool) -> Response {
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let back: Vec<(String, String)> = query
        .into_iter()
        .filter(|(k, _)| k != "prompt" && k != "max_age")
        .collect();
    let rd = format!(
        "/oauth/authorize?{}",
        serde_urlencoded::to_string(&back).unwrap_or_default()
    );
    let mut login = vec![("rd", rd.as_str())];
    if again {
        login.push(("prompt", "login"));
    }
    if !p.login_hint.is_empty() {
        login.push(("login_hint", p.login_hint.as_str()));
    }
    web::see_other(&format!(
        "/login?{}",
        serde_urlencoded::to_string(&login).unwrap_or_default()
    ))
}

async fn consent_page(
    reg: &Registry,
    ctx: &Ctx,
    p: &Params,
    valid: &Valid,
    granted: &[String],
) -> Response {
    let c = &valid.client;
    let owner = match &c.owner {
        Some(id) => match reg.accounts.db.user(id).await {
            Ok(Some(u)) => u.username,
            Ok(None) => "a former user".into(),
            Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
        },
        None if super::cimd::is_document_url(&c.client_id) => {
            format!("its publisher at {} (not this site)", host_of(&c.client_id))
        }
        None if c.self_registered => "itself, automatically (not this site)".into(),
        None => "the administrators of this site".into(),
    };
    let redirect_host = host_of(&valid.redirect_uri).to_owned();
    web::html(
        &reg.accounts,
        ctx,
        StatusCode::OK,
        Consent {
            page: ctx.page(""),
            client_name: c.name.clone(),
            homepage: c.homepage.clone(),
            owner,
            redirect_host,
            scopes: for_people(granted),
            hidden: p.hidden(),
        },
    )
}

pub async fn authorize(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Form(p): Form<Params>,
) -> Response {
    if !web::post_allowed(&reg.accounts, &ctx, &p.csrf) {
        return web::forbidden(&reg.accounts, &ctx);
    }
    let valid = match check(&reg, &p).await {
        Ok(v) => v,
        Err(refusal) => return refused(&reg, &ctx, refusal),
    };
    let user = match web::signed_in(&reg.accounts, &ctx, "/oauth/authorize").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if p.decision != "allow" {
        return refused(
            &reg,
            &ctx,
            Refusal::Redirect {
                uri: valid.redirect_uri,
                error: "access_denied",
                description: "the user denied access".into(),
                state: p.state.clone(),
            },
        );
    }
    let granted = match reg.grantable(&valid, &user).await {
        Ok(g) => g,
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    };
    if let Err(e) = grants::remember_consent(
        &reg.accounts.db,
        &user.id,
        &valid.client.client_id,
        &granted,
    )
    .await
    {
        return web::unavailable(&reg.accounts, &ctx, &e);
    }
    tracing::info!(target: "gatehouse::audit", event = "consent_given", user = %user.id, client_id = %valid.client.client_id, "audit");
    issue(&reg, &ctx, &p, &valid, &user.id, &granted).await
}

/// Issues the code and sends the browser back with it.
async fn issue(
    reg: &Registry,
    ctx: &Ctx,
    p: &Params,
    valid: &Valid,
    user_id: &str,
    granted: &[String],
) -> Response {
    // How the user signed in, for the grant's tokens (`mfa`, `max_age` at /auth).
    let signed_in = ctx
        .session()
        .map(|l| grants::SignedIn {
            amr: l.session.amr.clone(),
            auth_time: l.session.auth_time(),
            sid: l.sid.clone(),
            resource: valid.resource.clone(),
        })
        .unwrap_or_default();
    let code = match grants::issue_code(
        &reg.accounts.db,
        &NewCode {
            client_id: &valid.client.client_id,
            user_id,
            redirect_uri: &valid.redirect_uri,
            scopes: granted,
            challenge: &p.code_challenge,
            signed_in: &signed_in,
            nonce: if valid.openid() { &p.nonce } else { "" },
        },
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
    };
    let mut params = vec![("code", code.expose().as_str())];
    if !p.state.is_empty() {
        params.push(("state", p.state.as_str()));
    }
    params.push(("iss", reg.issuer()));
    web::see_other(&answer_uri(&valid.redirect_uri, &params))
}

impl Registry {
    /// What a grant may hold: the scopes asked for (or all the client's), narrowed to the
    /// user's own.
    async fn grantable(
        &self,
        valid: &Valid,
        user: &crate::accounts::db::User,
    ) -> Result<Vec<String>, crate::accounts::db::DbError> {
        let (_, mine) = self.accounts.roles().await?.of(&user.roles);
        Ok(valid
            .asked
            .as_ref()
            .unwrap_or(&valid.client.scopes)
            .iter()
            .filter(|s| mine.contains(s) || oidc::is_oidc_scope(s))
            .cloned()
            .collect())
    }
}
