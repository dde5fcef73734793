//! Signing in with another provider (`--identity-providers`): `/login/with/{id}` sends the
//! browser there with `state`, `nonce` and PKCE, its own callback checks what comes back
//! (accounts::providers), and the identity found signs its user in, becomes a new account
//! (`--registration`), or is linked to the signed-in user (`/account/security`). A provider's
//! back-channel logout ends the sessions that began with its session.
//!
//! The flow's secrets live in one sealed, HttpOnly cookie of this browser (`SameSite=Lax`:
//! the callback is a top-level navigation from the provider), valid 10 minutes and used once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::db::{self, NewUser, Purpose, User};
use super::identities::{self, Linked, Unlinked};
use super::ops::{self, Problem, Via};
use super::pages;
use super::providers::{Provider, Upstream, UpstreamError};
use super::web::{self, Ctx};
use super::Accounts;
use crate::audit;

type App = State<Arc<Accounts>>;

/// The flow's cookie, on the callback's path alone.
const FLOW_COOKIE: &str = "gatehouse_federation";
const FLOW_PATH: &str = "/login/with/";
/// The server secret's purpose for the sealed flow.
const FLOW_PURPOSE: &str = "federation flow";
/// How long a flow (there and back, and choosing a username) may take.
const FLOW_TTL: Duration = Duration::from_secs(10 * 60);

pub fn routes() -> Router<Arc<Accounts>> {
    Router::new()
        .route("/login/with/{id}", get(start))
        .route("/login/with/{id}/callback", get(callback))
        .route(
            "/login/with/{id}/register",
            get(register_page).post(register),
        )
        .route(
            "/login/with/{id}/backchannel-logout",
            post(backchannel_logout),
        )
        .route("/account/security/identities/{id}/link", post(link))
        .route("/account/security/identities/{id}/unlink", post(unlink))
        .route(
            "/api/security/identities/{id}",
            post(api_link).delete(api_unlink),
        )
}

/// What the browser carries between leaving for the provider and coming back (sealed).
#[derive(Serialize, Deserialize, Default)]
struct Flow {
    provider: String,
    state: String,
    nonce: String,
    verifier: String,
    rd: String,
    /// Linking to this signed-in user, not signing in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    invite: String,
    /// A sign-in asked for again (`prompt=login`, `max_age`): the provider is asked too,
    /// and must have signed the person in after `at`.
    #[serde(default)]
    again: bool,
    /// Back from the provider, a new account waits for a username (or an email address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new: Option<NewAccount>,
    at: u64,
}

/// The person a provider vouched for, who has no account yet.
#[derive(Serialize, Deserialize, Clone)]
struct NewAccount {
    subject: String,
    email: String,
    email_verified: bool,
    name: String,
    username: String,
    upstream_sid: Option<String>,
    mfa: bool,
}

fn provider(app: &Accounts, id: &str) -> Option<Arc<Provider>> {
    app.providers.iter().find(|p| p.id == id).cloned()
}

fn redirect_uri(app: &Accounts, id: &str) -> String {
    format!("{}/login/with/{id}/callback", app.settings.public_url)
}

fn set_flow(app: &Accounts, h: &mut HeaderMap, flow: Option<&Flow>) {
    let value = flow
        .map(|f| {
            app.secret
                .seal(FLOW_PURPOSE, &serde_json::to_vec(f).unwrap_or_default())
        })
        .unwrap_or_default();
    let ttl = if flow.is_some() {
        FLOW_TTL
    } else {
        Duration::ZERO
    };
    let cookie = Cookie::build((FLOW_COOKIE, value))
        .path(FLOW_PATH)
        .http_only(true)
        .secure(app.settings.secure)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64))
        .build();
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        h.append(header::SET_COOKIE, v);
    }
}

/// This browser's flow for provider `id`, if it holds a live one.
fn flow_of(app: &Accounts, ctx: &Ctx, id: &str) -> Option<Flow> {
    let sealed = crate::credential::cookie(ctx.headers(), FLOW_COOKIE)?;
    let plain = app.secret.open(FLOW_PURPOSE, sealed)?;
    let flow: Flow = serde_json::from_slice(&plain).ok()?;
    let fresh = crate::session::unix_now() < flow.at + FLOW_TTL.as_secs();
    (flow.provider == id && fresh).then_some(flow)
}

/// A page that ends a flow, clearing its cookie.
fn ending(app: &Accounts, mut r: Response) -> Response {
    set_flow(app, r.headers_mut(), None);
    r
}

/// A page that ends a flow with a message, and a way on: to the sign-in page, or for someone
/// signed in (linking, or signing in again), back to where linked sign-ins are.
fn page(app: &Accounts, ctx: &Ctx, status: StatusCode, heading: &str, line: &str) -> Response {
    let link = match ctx.session() {
        Some(_) => ("/account/security", "Back to Security"),
        None => ("/login", "Go to sign in"),
    };
    web::message(app, ctx, status, heading, &[line], Some(link))
}

fn unknown(app: &Accounts, ctx: &Ctx) -> Response {
    page(
        app,
        ctx,
        StatusCode::NOT_FOUND,
        "Unknown provider",
        "There is no sign-in with this provider here.",
    )
}

/// The page of a provider that failed: down (503, try again) or refused (401).
fn upstream_failed(app: &Accounts, ctx: &Ctx, p: &Provider, e: &UpstreamError) -> Response {
    match e {
        UpstreamError::Down(why) => {
            tracing::warn!(provider = p.id, error = %why, "identity provider not answering");
            let mut r = page(
                app,
                ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{} is not answering", p.name),
                &format!(
                    "We could not reach {} to sign you in. Try again in a few minutes, or sign in another way.",
                    p.name
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            r
        }
        UpstreamError::Refused(why) => {
            tracing::warn!(provider = p.id, error = %why, "identity provider's answer refused");
            page(
                app,
                ctx,
                StatusCode::UNAUTHORIZED,
                "You are not signed in",
                &format!(
                    "The answer from {} did not pass our checks, so we did not sign you in. Start again from the sign-in page.",
                    p.name
                ),
            )
        }
    }
}

/// A new flow for `p`: its cookie and the provider's authorization URL.
async fn leave_for(
    app: &Accounts,
    ctx: &Ctx,
    p: &Provider,
    rd: String,
    link: Option<String>,
    invite: String,
    again: bool,
) -> Result<(Flow, String), Response> {
    let verifier = db::random_token(32);
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let flow = Flow {
        provider: p.id.clone(),
        state: db::random_token(24),
        nonce: db::random_token(24),
        verifier,
        rd,
        link,
        invite,
        again,
        new: None,
        at: crate::session::unix_now(),
    };
    let url = p
        .authorize_url(
            &app.outbound,
            &redirect_uri(app, &p.id),
            &flow.state,
            &flow.nonce,
            &challenge,
            again,
        )
        .await
        .map_err(|e| upstream_failed(app, ctx, p, &e))?;
    Ok((flow, url))
}

/// A new flow for `p` that links its identity to the signed-in `user`.
async fn leave_to_link(
    app: &Accounts,
    ctx: &Ctx,
    p: &Provider,
    user: String,
) -> Result<(Flow, String), Response> {
    leave_for(app, ctx, p, String::new(), Some(user), String::new(), false).await
}

/// The browser sent to the provider's `url`, carrying `flow`.
fn off_to(app: &Accounts, flow: &Flow, url: &str) -> Response {
    let mut r = web::see_other(url);
    set_flow(app, r.headers_mut(), Some(flow));
    r
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StartQuery {
    rd: String,
    invite: String,
    /// `1` from the sign-in page that asks for a sign-in again.
    again: String,
}

/// `/login/with/{id}`: off to the provider.
async fn start(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    q: Result<Query<StartQuery>, QueryRejection>,
) -> Response {
    let Some(p) = provider(&app, &id) else {
        return unknown(&app, &ctx);
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let rd = web::redirect_target(&app, &ctx, &q.rd).unwrap_or_default();
    let invite: String = q.invite.chars().take(128).collect();
    let again = q.again == "1";
    match leave_for(&app, &ctx, &p, rd, None, invite, again).await {
        Ok((flow, url)) => off_to(&app, &flow, &url),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Callback {
    code: String,
    state: String,
    iss: Option<String>,
    error: String,
    error_description: String,
}

/// `/login/with/{id}/callback`: the provider's answer.
async fn callback(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    q: Result<Query<Callback>, QueryRejection>,
) -> Response {
    let Some(p) = provider(&app, &id) else {
        return unknown(&app, &ctx);
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    // The state must be the one this browser left with, for this provider: a response meant
    // for another provider's callback, another browser's, or an old one goes no further.
    let flow = flow_of(&app, &ctx, &id).filter(|f| {
        !q.state.is_empty()
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                f.state.as_bytes(),
                q.state.as_bytes(),
            )
            .is_ok()
    });
    let Some(flow) = flow else {
        audit!(
            "federated_login_refused",
            "-",
            ctx.ip(),
            idp = id.as_str(),
            reason = "state"
        );
        return ending(
            &app,
            page(
                &app,
                &ctx,
                StatusCode::BAD_REQUEST,
                "This sign-in has expired",
                "It took too long, was finished already, or began in another browser. Start again from the sign-in page.",
            ),
        );
    };
    if !q.error.is_empty() {
        let said: String = q.error_description.chars().take(200).collect();
        tracing::info!(
            provider = id,
            error = q.error,
            description = said,
            "identity provider answered an error"
        );
        let line = if q.error == "access_denied" {
            format!("{} did not sign you in: the request was declined.", p.name)
        } else {
            format!(
                "{} did not sign you in ({}). Try again, or sign in another way.",
                p.name,
                q.error.chars().take(64).collect::<String>()
            )
        };
        return ending(
            &app,
            page(
                &app,
                &ctx,
                StatusCode::UNAUTHORIZED,
                "You are not signed in",
                &line,
            ),
        );
    }
    if q.code.is_empty() {
        return ending(
            &app,
            page(
                &app,
                &ctx,
                StatusCode::BAD_REQUEST,
                "You are not signed in",
                "The provider sent no answer we can use. Start again from the sign-in page.",
            ),
        );
    }
    let up = match p
        .finish(
            &app.outbound,
            &redirect_uri(&app, &id),
            &q.code,
            &flow.verifier,
            &flow.nonce,
            q.iss.as_deref(),
            flow.again.then_some(flow.at),
        )
        .await
    {
        Ok(up) => up,
        Err(e) => {
            if matches!(e, UpstreamError::Refused(_)) {
                audit!(
                    "federated_login_refused",
                    "-",
                    ctx.ip(),
                    idp = id.as_str(),
                    reason = "token"
                );
            }
            return ending(&app, upstream_failed(&app, &ctx, &p, &e));
        }
    };
    match &flow.link {
        Some(user_id) => finish_link(&app, &ctx, &p, user_id, &up).await,
        None => arrive(&app, &ctx, &p, flow, up).await,
    }
}

/// Back from the provider to link its identity to the signed-in user.
async fn finish_link(
    app: &Accounts,
    ctx: &Ctx,
    p: &Provider,
    user_id: &str,
    up: &Upstream,
) -> Response {
    let user = match web::signed_in(app, ctx, "/account/security").await {
        Ok(u) if u.id == user_id => u,
        Ok(_) | Err(_) => {
            return ending(
                app,
                page(app, ctx, StatusCode::FORBIDDEN, "Sign in again", "Linking began in another session. Sign in, then link the provider again from the Security page."),
            )
        }
    };
    let r = match identities::link(&app.db, &user, &p.id, &up.subject).await {
        Ok(Linked::Done) => {
            linked_notice(app, ctx, &user, p, "web");
            web::see_other(&format!("/account/security?linked={}", p.id))
        }
        Ok(Linked::Already) => web::see_other(&format!("/account/security?linked={}", p.id)),
        Ok(Linked::OtherUser) => {
            audit!(
                "identity_link_refused",
                user.id,
                ctx.ip(),
                idp = p.id.as_str(),
                reason = "linked_elsewhere"
            );
            web::message(
                app,
                ctx,
                StatusCode::CONFLICT,
                "Already linked to another account",
                &[&format!(
                    "This {} account signs in to another account here. Unlink it there first, or sign in with it to use that account.",
                    p.name
                )],
                Some(("/account/security", "Back to Security")),
            )
        }
        Err(e) => web::unavailable(app, ctx, &e),
    };
    ending(app, r)
}

/// Mails and audits a new link.
fn linked_notice(app: &Accounts, ctx: &Ctx, user: &User, p: &Provider, by: &str) {
    audit!(
        "identity_linked",
        user.id,
        ctx.ip(),
        idp = p.id.as_str(),
        by = by
    );
    ops::notify(
        app,
        user,
        &format!("{} was linked to your account", p.name),
        &format!("Your {} account can now sign you in", p.name),
    );
}

/// Back from the provider to sign in: a known identity signs its user in; an unknown one
/// becomes an account as `--registration` allows.
async fn arrive(app: &Accounts, ctx: &Ctx, p: &Provider, flow: Flow, up: Upstream) -> Response {
    let mfa = p.trust_mfa && up.reports_mfa();
    let via = Via {
        provider: p.id.clone(),
        upstream_sid: up.sid.clone(),
    };
    let known = match app.db.identity(&p.id, &up.subject).await {
        Ok(k) => k,
        Err(e) => return ending(app, web::unavailable(app, ctx, &e)),
    };
    if let Some(identity) = known {
        let user = match app.db.user(&identity.user_id).await {
            Ok(Some(u)) => u,
            Ok(None) => {
                return ending(
                    app,
                    page(
                        app,
                        ctx,
                        StatusCode::FORBIDDEN,
                        "You are not signed in",
                        "This identity belongs to no account any more.",
                    ),
                )
            }
            Err(e) => return ending(app, web::unavailable(app, ctx, &e)),
        };
        if let Err(e) = app.db.used_identity(&p.id, &up.subject).await {
            tracing::warn!(error = %e, "identity use not recorded");
        }
        return sign_in(app, ctx, user, via, mfa, &flow.rd).await;
    }
    // Unknown here. An account with the same email address is never taken over, unless the
    // operator said this provider's verified addresses may attach.
    let email = up.email.clone().unwrap_or_default();
    if !email.is_empty() {
        match app.db.find(&email).await {
            Ok(Some(owner)) if db::key(&owner.email) == db::key(&email) => {
                if p.link_by_verified_email && up.email_verified {
                    return match identities::link(&app.db, &owner, &p.id, &up.subject).await {
                        Ok(Linked::Done | Linked::Already) => {
                            linked_notice(app, ctx, &owner, p, "verified_email");
                            sign_in(app, ctx, owner, via, mfa, &flow.rd).await
                        }
                        Ok(Linked::OtherUser) => ending(
                            app,
                            page(
                                app,
                                ctx,
                                StatusCode::CONFLICT,
                                "Already linked to another account",
                                "This identity signs in to another account here.",
                            ),
                        ),
                        Err(e) => ending(app, web::unavailable(app, ctx, &e)),
                    };
                }
                audit!(
                    "federated_login_refused",
                    owner.id,
                    ctx.ip(),
                    idp = p.id.as_str(),
                    reason = "email_taken"
                );
                return ending(
                    app,
                    web::message(
                        app,
                        ctx,
                        StatusCode::CONFLICT,
                        "You already have an account",
                        &[
                            &format!("An account here already uses the email address your {} account gave us.", p.name),
                            &format!("Sign in to it, then link {} on its Security page: after that, either way signs you in.", p.name),
                        ],
                        Some(("/login?rd=%2Faccount%2Fsecurity", "Sign in, then link")),
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => return ending(app, web::unavailable(app, ctx, &e)),
        }
    }
    // A new account, as registration allows.
    let invited = match ops::registration_open(app, &flow.invite).await {
        Ok(i) => i,
        Err(p) => return ending(app, web::problem_page(app, ctx, p)),
    };
    let (email, email_verified) = match (&invited, up.email_verified && !email.is_empty()) {
        // An invitation is to one address: the account gets it, confirmed as a registration
        // by invitation is.
        (Some(address), _) => (address.clone(), true),
        (None, true) => (email, true),
        (None, false) => (String::new(), false),
    };
    let new = NewAccount {
        subject: up.subject.clone(),
        username: suggest_username(&up, &email),
        email,
        email_verified,
        name: up
            .name
            .clone()
            .unwrap_or_default()
            .chars()
            .take(128)
            .collect(),
        upstream_sid: up.sid.clone(),
        mfa,
    };
    // Ask for what is missing or taken; otherwise create it at once.
    let usable = ops::username_problem(&new.username).is_none()
        && matches!(app.db.find(&new.username).await, Ok(None))
        && !new.email.is_empty()
        && ops::domain_allowed(app, &new.email);
    if !usable {
        let flow = Flow {
            new: Some(new),
            ..flow
        };
        let mut r = web::see_other(&format!("/login/with/{}/register", p.id));
        set_flow(app, r.headers_mut(), Some(&flow));
        return r;
    }
    create(app, ctx, p, flow, new).await
}

/// A username from what the provider said: its username, else the email's local part, made
/// to fit the rules (it may still be taken: then the user chooses).
fn suggest_username(up: &Upstream, email: &str) -> String {
    let raw = up
        .username
        .clone()
        .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned());
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    s = s.trim_matches('-').to_owned();
    if !s.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        s.clear();
    }
    s
}

/// Makes the account, links the identity, and signs in (or, for an address the provider did
/// not vouch for, sends its confirmation first).
async fn create(app: &Accounts, ctx: &Ctx, p: &Provider, flow: Flow, new: NewAccount) -> Response {
    let made = app
        .db
        .create_user(&NewUser {
            username: &new.username,
            email: &new.email,
            name: &new.name,
            password_hash: None,
            active: true,
            confirmed: new.email_verified,
            roles: &[],
        })
        .await;
    let user = match made {
        Ok(u) => u,
        Err(db::DbError::Taken(what)) => {
            // Taken since it was checked: choose again.
            let flow = Flow {
                new: Some(new.clone()),
                ..flow
            };
            let mut r = register_form(
                app,
                ctx,
                p,
                &new,
                &format!("This {what} was taken a moment ago. Choose another."),
            );
            set_flow(app, r.headers_mut(), Some(&flow));
            return r;
        }
        Err(e) => return ending(app, web::unavailable(app, ctx, &e)),
    };
    if !flow.invite.is_empty() {
        let _ = app.db.take_token(&flow.invite, Purpose::Invite).await;
    }
    if let Err(e) = app.db.link_identity(&p.id, &new.subject, &user.id).await {
        return ending(app, web::unavailable(app, ctx, &e));
    }
    audit!("registered", user.id, ctx.ip(), idp = p.id.as_str());
    if user.email_confirmed_at.is_none() {
        ops::send_confirmation(app, &user, &user.email).await;
        return ending(
            app,
            web::message(
                app,
                ctx,
                StatusCode::OK,
                "Check your email",
                &[&format!("Your account is made. We have sent a link to {}: open it, then sign in with {}.", user.email, p.name)],
                None,
            ),
        );
    }
    let via = Via {
        provider: p.id.clone(),
        upstream_sid: new.upstream_sid,
    };
    sign_in(app, ctx, user, via, new.mfa, &flow.rd).await
}

async fn sign_in(app: &Accounts, ctx: &Ctx, user: User, via: Via, mfa: bool, rd: &str) -> Response {
    let outcome = ops::federated_login(app, &ctx.caller(), user, via, mfa).await;
    ending(app, web::login_answer(app, ctx, rd, outcome, "").await)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RegisterForm {
    csrf: String,
    username: String,
    email: String,
}

/// The form; `error` is guidance (the suggested username is taken), not a refused form.
fn register_form(
    app: &Accounts,
    ctx: &Ctx,
    p: &Provider,
    new: &NewAccount,
    error: &str,
) -> Response {
    web::html(
        app,
        ctx,
        StatusCode::OK,
        pages::FederatedRegister {
            page: ctx.page("register"),
            provider_id: p.id.clone(),
            provider_name: p.name.clone(),
            username: new.username.clone(),
            email: new.email.clone(),
            ask_email: !new.email_verified,
            error: error.into(),
            errors: pages::Errors::default(),
        },
    )
}

/// `/login/with/{id}/register`: a new account's username (and email address) to choose.
async fn register_page(State(app): App, ctx: Ctx, Path(id): Path<String>) -> Response {
    let Some(p) = provider(&app, &id) else {
        return unknown(&app, &ctx);
    };
    match flow_of(&app, &ctx, &id).and_then(|f| f.new) {
        Some(new) => {
            let taken = !new.username.is_empty() && ops::username_problem(&new.username).is_none();
            let hint = if taken {
                "This username is taken. Choose another."
            } else {
                ""
            };
            register_form(&app, &ctx, &p, &new, hint)
        }
        None => expired(&app, &ctx),
    }
}

fn expired(app: &Accounts, ctx: &Ctx) -> Response {
    ending(
        app,
        page(
            app,
            ctx,
            StatusCode::BAD_REQUEST,
            "This sign-in has expired",
            "Start again from the sign-in page.",
        ),
    )
}

async fn register(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<RegisterForm>,
) -> Response {
    if !web::post_allowed(&app, &ctx, &f.csrf) {
        return web::forbidden(&app, &ctx);
    }
    let Some(p) = provider(&app, &id) else {
        return unknown(&app, &ctx);
    };
    let Some(flow) = flow_of(&app, &ctx, &id) else {
        return expired(&app, &ctx);
    };
    let Some(mut new) = flow.new.clone() else {
        return expired(&app, &ctx);
    };
    new.username = f.username.trim().to_owned();
    if !new.email_verified {
        new.email = f.email.trim().to_owned();
    }
    let mut errors = pages::Errors::default();
    if let Some(problem) = ops::username_problem(&new.username) {
        errors.add("username", problem);
    } else if !matches!(app.db.find(&new.username).await, Ok(None)) {
        errors.add("username", "This username is taken. Choose another.");
    }
    if let Some(problem) = ops::email_problem(&new.email) {
        errors.add("email", problem);
    } else if !ops::domain_allowed(&app, &new.email) {
        errors.add(
            "email",
            "Accounts with this email domain cannot be made here.",
        );
    } else if !new.email_verified && matches!(app.db.email_taken(&new.email).await, Ok(true)) {
        errors.add("email", "An account already uses this address. Sign in to it, then link this provider on its Security page.");
    }
    if !errors.is_empty() {
        return web::html(
            &app,
            &ctx,
            StatusCode::BAD_REQUEST,
            pages::FederatedRegister {
                page: ctx.page("register"),
                provider_id: p.id.clone(),
                provider_name: p.name.clone(),
                username: new.username,
                email: new.email,
                ask_email: !new.email_verified,
                error: String::new(),
                errors,
            },
        );
    }
    create(&app, &ctx, &p, flow, new).await
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CsrfForm {
    csrf: String,
}

/// `/account/security/identities/{id}/link`: off to the provider to link it.
async fn link(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !web::post_allowed(&app, &ctx, &f.csrf) {
        return web::forbidden(&app, &ctx);
    }
    let user = match web::signed_in(&app, &ctx, "/account/security").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(p) = provider(&app, &id) else {
        return unknown(&app, &ctx);
    };
    match leave_to_link(&app, &ctx, &p, user.id).await {
        Ok((flow, url)) => off_to(&app, &flow, &url),
        Err(r) => r,
    }
}

/// Unlinks `provider` from `user` (every door's rule), mailing and auditing it.
async fn unlink_for(app: &Accounts, ctx: &Ctx, user: &User, id: &str) -> Result<(), Problem> {
    match identities::unlink(&app.db, user, id).await? {
        Unlinked::Done => {
            let name = provider(app, id).map_or(id.to_owned(), |p| p.name.clone());
            audit!("identity_unlinked", user.id, ctx.ip(), idp = id, by = "web");
            ops::notify(
                app,
                user,
                &format!("{name} was unlinked from your account"),
                &format!("Your {name} account no longer signs you in"),
            );
            Ok(())
        }
        Unlinked::NotLinked => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "This provider is not linked to your account.",
        )),
        Unlinked::LastWay => Err(Problem::new(
            StatusCode::CONFLICT,
            "last_way_to_sign_in",
            "This is your last way to sign in. Set a password or add a passkey first.",
        )),
    }
}

async fn unlink(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !web::post_allowed(&app, &ctx, &f.csrf) {
        return web::forbidden(&app, &ctx);
    }
    let user = match web::signed_in(&app, &ctx, "/account/security").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match unlink_for(&app, &ctx, &user, &id).await {
        Ok(()) => web::see_other(&format!("/account/security?unlinked={id}")),
        Err(p) if p.code == "last_way_to_sign_in" || p.code == "not_found" => {
            super::security::security_with(&app, &ctx, &user, "", &p.message).await
        }
        Err(p) => web::problem_page(&app, &ctx, p),
    }
}

/// JSON: `POST /api/security/identities/{id}` answers where to send the browser to link it.
async fn api_link(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    b: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let user = match super::api::writer(&app, &ctx, b).await {
        Ok((_, u)) => u,
        Err(r) => return r,
    };
    let Some(p) = provider(&app, &id) else {
        return super::api::problem(Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no such provider.",
        ));
    };
    match leave_to_link(&app, &ctx, &p, user.id).await {
        Ok((flow, url)) => {
            let mut r = Json(json!({ "location": url })).into_response();
            set_flow(&app, r.headers_mut(), Some(&flow));
            r
        }
        Err(_) => super::api::problem(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{} is not answering.", p.name),
        )),
    }
}

async fn api_unlink(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    b: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let user = match super::api::writer(&app, &ctx, b).await {
        Ok((_, u)) => u,
        Err(r) => return r,
    };
    match unlink_for(&app, &ctx, &user, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => super::api::problem(p),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LogoutForm {
    logout_token: String,
}

/// `/login/with/{id}/backchannel-logout`: the provider says its session ended; so do the
/// sessions that began with it. No CSRF or Origin check: the token's signature, issuer and
/// audience are the caller's authentication.
async fn backchannel_logout(
    State(app): App,
    Path(id): Path<String>,
    Form(f): Form<LogoutForm>,
) -> Response {
    let answer = |status: StatusCode, body: serde_json::Value| {
        let mut r = (status, Json(body)).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    let bad = |why: &str| {
        answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": why}),
        )
    };
    let Some(p) = provider(&app, &id) else {
        return bad("unknown provider");
    };
    let token = match p.verify_logout_token(&app.outbound, &f.logout_token).await {
        Ok(token) => token,
        Err(UpstreamError::Down(why)) => {
            tracing::warn!(provider = id, error = %why, "back-channel logout: identity provider not answering");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "temporarily_unavailable"}),
            );
        }
        Err(UpstreamError::Refused(why)) => {
            tracing::warn!(provider = id, error = %why, "back-channel logout token refused");
            return bad("invalid logout token");
        }
    };
    // Sent before (a replay, or a provider's retry of what was done): refused, nothing ends.
    // Remembered once done, so that a provider retrying after a failure here is heard.
    let unavailable = |e: String| {
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "temporarily_unavailable", "error_description": e}),
        )
    };
    match app.db.logout_token_seen(&p.id, &token.jti).await {
        Ok(false) => {}
        Ok(true) => {
            tracing::warn!(
                provider = id,
                "back-channel logout token sent again: refused"
            );
            return bad("invalid logout token");
        }
        Err(e) => return unavailable(e.to_string()),
    }
    if let Err(e) = end_upstream_sessions(&app, &p, token.sub, token.sid).await {
        return unavailable(e);
    }
    if let Err(e) = app
        .db
        .remember_logout_token(&p.id, &token.jti, token.until)
        .await
    {
        tracing::warn!(provider = id, error = %e, "back-channel logout token not remembered: it could be sent again");
    }
    answer(StatusCode::OK, json!({}))
}

/// Ends the sessions that began with the provider's session `sid`, or with any session of
/// its user `sub`; why not, if not.
async fn end_upstream_sessions(
    app: &Accounts,
    p: &Provider,
    sub: Option<String>,
    sid: Option<String>,
) -> Result<(), String> {
    let user = match &sub {
        Some(s) => app
            .db
            .identity(&p.id, s)
            .await
            .map_err(|e| e.to_string())?
            .map(|i| i.user_id),
        None => None,
    };
    if sub.is_some() && user.is_none() {
        // Nobody here has this identity: nothing to end.
        return Ok(());
    }
    let found = app
        .db
        .federated_sessions(&p.id, sid.as_deref(), user.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let mut by_user: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (user, sid) in found {
        by_user.entry(user).or_default().push(sid);
    }
    let sessions = app.gateway.sessions();
    for (user, sids) in by_user {
        let n = sessions
            .revoke_sids(&user, &sids)
            .await
            .map_err(|e| e.to_string())?;
        audit!(
            "backchannel_logout",
            user,
            "-",
            idp = p.id.as_str(),
            sessions_ended = n
        );
    }
    Ok(())
}
