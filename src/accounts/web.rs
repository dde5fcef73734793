//! The pages: handlers, forms, cookies, and the rules every POST passes first (same-site
//! origin, CSRF token).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use cookie::{Cookie, SameSite};
use serde::Deserialize;

use super::db::{self, DbError, Purpose, User};
use super::ops::{self, Caller, Problem};
use super::pages::{self, Errors, Page};
use super::{Accounts, Peer, Registration};
use crate::audit;
use crate::secret::Secret;
use crate::session::SessionKind;
use crate::sessions::{Listed, SessionsError};

type App = State<Arc<Accounts>>;

/// The pages' routes (the JSON API's are `api::routes`; `Accounts::modules` joins them).
pub fn routes() -> Router<Arc<Accounts>> {
    Router::new()
        .route("/logout", get(logout_page).post(logout))
        .route("/register", get(register_page).post(register))
        .route("/email/confirm", get(confirm_email))
        .route("/account", get(account_page).post(account))
        .route(
            "/account/password",
            get(password_page).post(change_password),
        )
        .route("/account/sessions", get(sessions_page).post(revoke_session))
        .route("/password/forgot", get(forgot_page).post(forgot))
        .route("/password/reset", get(reset_page).post(reset))
}

// ---------------------------------------------------------------------------------------
// What every request carries

/// The caller: address, headers, cookies, and their session when the cookie names a live one.
pub struct Ctx {
    ip: IpAddr,
    headers: HeaderMap,
    /// The CSRF cookie's token, or a new one to set with this response.
    csrf: String,
    new_csrf: bool,
    token: Option<Secret<String>>,
    session: Option<Listed>,
    /// The known-device cookie, as sent (checked by the login).
    device: Option<String>,
    /// The pending sign-in's cookie, as sent (checked by the second step).
    pending: Option<Secret<String>>,
    /// The passkey ceremony's cookie, as sent (checked when the ceremony ends).
    ceremony: Option<Secret<String>>,
}

/// An answer before any handler ran: the store failed (503).
pub struct Unavailable;

impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "The session store is unavailable; try again in a moment.",
        )
            .into_response()
    }
}

/// A router state that leads to the accounts module: its own, and the registry's, whose pages
/// use the same `Ctx`, layout and sign-in.
pub trait WithAccounts: Send + Sync {
    fn accounts(&self) -> &Accounts;
}

impl WithAccounts for Arc<Accounts> {
    fn accounts(&self) -> &Accounts {
        self
    }
}

impl<S: WithAccounts> FromRequestParts<S> for Ctx {
    type Rejection = Unavailable;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Ctx, Unavailable> {
        let app = state.accounts();
        // No peer address is a bug in the wiring, never a reason to trust the request as
        // loopback (a trusted proxy): fail closed.
        let Some(Peer(peer)) = parts.extensions.get::<Peer>().copied() else {
            tracing::error!("a request reached the accounts module without its peer address");
            return Err(Unavailable);
        };
        app.gateway.note_peer(peer);
        let ip = app.gateway.client_ip(&parts.headers, peer);
        let s = &app.settings;
        // Which of two cookies of one name counts is decided where /auth decides it.
        let cookie = |name: &str| crate::credential::cookie(&parts.headers, name);
        let csrf = cookie(&s.csrf_cookie)
            .filter(|v| v.len() >= 32)
            .map(str::to_owned);
        let token = cookie(&s.cookie_name).map(|v| Secret::new(v.to_owned()));
        let device = cookie(super::guard::DEVICE_COOKIE).map(str::to_owned);
        let pending = cookie(PENDING_COOKIE).map(|v| Secret::new(v.to_owned()));
        let ceremony = cookie(super::passkeys::CEREMONY_COOKIE).map(|v| Secret::new(v.to_owned()));
        let session = match &token {
            Some(t) => app
                .gateway
                .sessions()
                .find(t.expose())
                .await
                .map_err(|_| Unavailable)?
                .filter(|l| l.session.kind == SessionKind::User && app.gateway.is_live(&l.session)),
            None => None,
        };
        let new_csrf = csrf.is_none();
        Ok(Ctx {
            ip,
            headers: parts.headers.clone(),
            csrf: csrf.unwrap_or_else(|| db::random_token(32)),
            new_csrf,
            token,
            session,
            device,
            pending,
            ceremony,
        })
    }
}

impl Ctx {
    /// The same request, as the pages see it once its session ended.
    pub(crate) fn signed_out(self) -> Ctx {
        Ctx {
            session: None,
            ..self
        }
    }

    pub(super) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The caller's live session, if their cookie names one.
    pub(crate) fn session(&self) -> Option<&Listed> {
        self.session.as_ref()
    }

    pub(super) fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.expose().as_str())
    }

    /// The sign-in pending its second step in this browser, if any (unchecked).
    pub(super) fn pending(&self) -> Option<&str> {
        self.pending.as_ref().map(|t| t.expose().as_str())
    }

    /// The passkey ceremony of this browser, if any (unchecked).
    pub(super) fn ceremony(&self) -> Option<&str> {
        self.ceremony.as_ref().map(|t| t.expose().as_str())
    }

    pub(crate) fn page(&self, section: &'static str) -> Page {
        let look = super::look::get();
        Page {
            site_name: look.site_name.clone(),
            theme_style: look.has_style(),
            theme_logo: look.has_logo(),
            signed_in: self.session.as_ref().map(|l| {
                l.session
                    .username
                    .clone()
                    .unwrap_or_else(|| l.session.sub.clone())
            }),
            section,
            csrf: self.csrf.clone(),
            registry: cfg!(feature = "registry"),
            passkeys: false,
            admin: self
                .session
                .as_ref()
                .is_some_and(|l| l.session.roles.iter().any(|r| r == "admin")),
        }
    }

    fn user_agent(&self) -> Option<String> {
        self.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect())
    }

    fn host(&self) -> Option<String> {
        self.headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| crate::policy::canonical_host(h).ok())
    }
}

// ---------------------------------------------------------------------------------------
// Answers

/// An HTML page with the headers every page gets, and the CSRF cookie when it is new.
pub(crate) fn html(app: &Accounts, ctx: &Ctx, status: StatusCode, page: impl Template) -> Response {
    let body = match page.render() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "a page failed to render");
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
        }
    };
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    if ctx.new_csrf {
        set_csrf_cookie(app, h, &ctx.csrf);
    }
    response
}

/// The cookie of a sign-in whose second step is pending: HttpOnly, this site only, 5 minutes.
pub(super) const PENDING_COOKIE: &str = "gatehouse_pending";

/// Sets (or with an empty value and no lifetime, clears) the pending sign-in's cookie.
pub(super) fn set_pending_cookie(app: &Accounts, h: &mut HeaderMap, value: &str, ttl: Duration) {
    strict_cookie(app, h, PENDING_COOKIE, value, ttl);
}

/// Sets (or clears) the cookie of a passkey ceremony: like the pending sign-in's.
pub(super) fn set_ceremony_cookie(app: &Accounts, h: &mut HeaderMap, value: &str, ttl: Duration) {
    strict_cookie(app, h, super::passkeys::CEREMONY_COOKIE, value, ttl);
}

/// An HttpOnly cookie of this site alone (SameSite=Strict) that lives `ttl`.
fn strict_cookie(app: &Accounts, h: &mut HeaderMap, name: &str, value: &str, ttl: Duration) {
    let cookie = Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(app.settings.secure)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64))
        .build();
    add_cookie(h, &cookie);
}

/// Every cookie of a finished sign-in: the session, a new CSRF token, the known device, and
/// the pending sign-in's cleared.
pub(super) fn completed_login_cookies(app: &Accounts, h: &mut HeaderMap, done: &ops::LoggedIn) {
    set_session_cookie(app, h, done.issued.token.expose(), app.settings.session_ttl);
    signed_in_cookies(app, h, &done.device);
    set_pending_cookie(app, h, "", Duration::ZERO);
}

/// Sets the CSRF cookie (double submit) to `value`.
fn set_csrf_cookie(app: &Accounts, h: &mut HeaderMap, value: &str) {
    let cookie = Cookie::build((app.settings.csrf_cookie.clone(), value))
        .path("/")
        .http_only(true)
        .secure(app.settings.secure)
        .same_site(SameSite::Lax)
        .build();
    add_cookie(h, &cookie);
}

/// What a completed sign-in sets besides the session: a new CSRF token (the one used before
/// signing in may have been planted) and the known-device cookie.
pub(super) fn signed_in_cookies(app: &Accounts, h: &mut HeaderMap, device: &str) {
    set_csrf_cookie(app, h, &db::random_token(32));
    let cookie = Cookie::build((super::guard::DEVICE_COOKIE, device))
        .path("/")
        .http_only(true)
        .secure(app.settings.secure)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(
            super::guard::DEVICE_TTL.as_secs() as i64,
        ))
        .build();
    add_cookie(h, &cookie);
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

fn add_cookie(h: &mut HeaderMap, cookie: &Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        h.append(header::SET_COOKIE, v);
    }
}

pub(crate) fn message(
    app: &Accounts,
    ctx: &Ctx,
    status: StatusCode,
    heading: &str,
    lines: &[&str],
    link: Option<(&str, &str)>,
) -> Response {
    let (link_href, link_text) = link.unwrap_or(("", ""));
    html(
        app,
        ctx,
        status,
        pages::Message {
            page: ctx.page(""),
            heading: heading.into(),
            lines: lines.iter().map(|s| s.to_string()).collect(),
            link_href: link_href.into(),
            link_text: link_text.into(),
        },
    )
}

pub(crate) fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut());
    r
}

pub(crate) fn unavailable(app: &Accounts, ctx: &Ctx, why: &dyn std::fmt::Display) -> Response {
    problem_page(app, ctx, Problem::unavailable(why))
}

pub(crate) fn forbidden(app: &Accounts, ctx: &Ctx) -> Response {
    message(
        app,
        ctx,
        StatusCode::FORBIDDEN,
        "This form has expired",
        &["The page you sent it from was old or came from another site. Go back, reload the page and try again."],
        Some(("/login", "Go to sign in")),
    )
}

pub(super) async fn not_found(State(app): App, ctx: Ctx) -> Response {
    message(
        &app,
        &ctx,
        StatusCode::NOT_FOUND,
        "Page not found",
        &["There is nothing at this address."],
        Some(("/account", "Go to your account")),
    )
}

/// Every POST: from this site, with the form's CSRF token.
pub(crate) fn post_allowed(app: &Accounts, ctx: &Ctx, csrf: &str) -> bool {
    !ctx.new_csrf
        && super::guard::csrf_ok(Some(&ctx.csrf), Some(csrf))
        && !super::guard::cross_site(&ctx.headers, &app.settings.allowed_redirect_hosts)
}

/// Where `rd` may send the browser, or `None`.
pub(super) fn redirect_target(app: &Accounts, ctx: &Ctx, rd: &str) -> Option<String> {
    let mut allowed = app.settings.allowed_redirect_hosts.clone();
    allowed.extend(ctx.host());
    super::guard::safe_redirect(rd, &allowed)
}

/// The signed-in user, or the answer that sends the browser to sign in.
pub(crate) async fn signed_in(app: &Accounts, ctx: &Ctx, here: &str) -> Result<User, Response> {
    let Some(listed) = &ctx.session else {
        return Err(see_other(&format!(
            "/login?rd={}",
            crate::forward::percent_encode(here)
        )));
    };
    let user = match ops::active_user(app, listed).await {
        Ok(Some(u)) => u,
        Ok(None) => return Err(see_other("/login")),
        Err(p) => return Err(problem_page(app, ctx, p)),
    };
    // --require-second-factor: a covered user whose session was signed in without one sets
    // one up, or steps up with it, before any other page.
    if app.settings.require_second_factor.covers(&user.roles)
        && !listed.session.has_second_factor()
        && !here.starts_with("/account/security")
    {
        return Err(
            match super::second::methods(app, &user.id)
                .await
                .map(|m| m.is_empty())
            {
                Ok(true) => see_other("/account/security"),
                Ok(false) => see_other(&format!(
                    "/login/second-factor?rd={}",
                    crate::forward::percent_encode(here)
                )),
                Err(p) => problem_page(app, ctx, p),
            },
        );
    }
    Ok(user)
}

fn min_hint(app: &Accounts) -> String {
    format!(
        "At least {} characters. A few unrelated words make a strong password that is easy to remember.",
        app.settings.min_password
    )
}

// ---------------------------------------------------------------------------------------
// Login and logout

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    csrf: String,
    username: String,
    password: String,
    rd: String,
}

/// A page that loads the passkey script when passkeys are on.
pub(super) fn passkey_page(app: &Accounts, ctx: &Ctx, section: &'static str) -> Page {
    Page {
        passkeys: app.passkeys.is_some(),
        ..ctx.page(section)
    }
}

pub(super) fn login_form(
    app: &Accounts,
    ctx: &Ctx,
    status: StatusCode,
    username: &str,
    rd: &str,
    error: &str,
    notice: &str,
) -> Response {
    html(
        app,
        ctx,
        status,
        login_view(app, ctx, username, rd, error, notice),
    )
}

/// The sign-in form for a signed-in user asked to sign in again (`prompt=login`, a
/// `max_age` passed): their strongest way, whichever they have (a password, a passkey, or a
/// provider, which is asked to sign them in again too).
pub(super) fn login_again(app: &Accounts, ctx: &Ctx, username: &str, rd: &str) -> Response {
    let notice = "This page asks you to have signed in recently. Please sign in again.";
    html(
        app,
        ctx,
        StatusCode::OK,
        pages::Login {
            again: true,
            ..login_view(app, ctx, username, rd, "", notice)
        },
    )
}

fn login_view(
    app: &Accounts,
    ctx: &Ctx,
    username: &str,
    rd: &str,
    error: &str,
    notice: &str,
) -> pages::Login {
    pages::Login {
        page: passkey_page(app, ctx, "login"),
        username: username.into(),
        rd: rd.into(),
        error: error.into(),
        notice: notice.into(),
        registration_open: app.settings.registration == Registration::Open,
        providers: provider_buttons(app),
        again: false,
    }
}

/// A button per `--identity-providers` provider, for the login and registration pages.
fn provider_buttons(app: &Accounts) -> Vec<pages::ProviderButton> {
    app.providers
        .iter()
        .map(|p| pages::ProviderButton {
            id: p.id.clone(),
            name: p.name.clone(),
        })
        .collect()
}

impl Ctx {
    pub(super) fn caller(&self) -> Caller<'_> {
        Caller {
            ip: self.ip,
            user_agent: self.user_agent(),
            token: self.token(),
            device: self.device.as_deref(),
        }
    }
}

/// A problem as a page of its own (the forms render their field errors themselves).
pub(super) fn problem_page(app: &Accounts, ctx: &Ctx, p: Problem) -> Response {
    let (heading, link) = match p.code {
        "throttled" | "rate_limited" => ("Slow down", None),
        "registration_closed" => ("Registration is closed", Some(("/login", "Go to sign in"))),
        "invalid_token" => (
            "This link has expired",
            Some(("/password/forgot", "Ask for a new link")),
        ),
        _ => ("Temporarily unavailable", None),
    };
    let mut r = message(app, ctx, p.status, heading, &[&p.message], link);
    if let Some(wait) = p.retry_after {
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

pub(super) async fn login(State(app): App, ctx: Ctx, Form(f): Form<LoginForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    let rd = redirect_target(&app, &ctx, &f.rd).unwrap_or_default();
    let outcome = ops::login(&app, &ctx.caller(), &f.username, Secret::new(f.password)).await;
    let typed = if f.username.len() > ops::MAX_LOGIN {
        ""
    } else {
        &f.username
    };
    login_answer(&app, &ctx, &rd, outcome, typed).await
}

/// The answer to a sign-in (a password's, or another provider's): on to `rd` (or the
/// passkey offer, or setting up a second factor), the second step, or the form again with
/// why, `typed` in it.
pub(super) async fn login_answer(
    app: &Accounts,
    ctx: &Ctx,
    rd: &str,
    outcome: Result<ops::LoginOutcome, Problem>,
    typed: &str,
) -> Response {
    let rd = rd.to_owned();
    match outcome {
        Ok(ops::LoginOutcome::Done(done)) => {
            let to = if done.must_enrol {
                "/account/security".to_owned() // no second factor yet: set one up first
            } else if super::second::offer_passkey(app, &done.user).await {
                let mut to = "/login/passkey-offer".to_owned();
                if !rd.is_empty() {
                    to += &format!("?rd={}", crate::forward::percent_encode(&rd));
                }
                to
            } else if rd.is_empty() {
                "/account".to_owned()
            } else {
                rd
            };
            let mut r = see_other(&to);
            completed_login_cookies(app, r.headers_mut(), &done);
            r
        }
        Ok(ops::LoginOutcome::SecondStep { pending, .. }) => {
            let mut to = "/login/second-factor".to_owned();
            if !rd.is_empty() {
                to += &format!("?rd={}", crate::forward::percent_encode(&rd));
            }
            let mut r = see_other(&to);
            set_pending_cookie(app, r.headers_mut(), pending.expose(), ops::PENDING_TTL);
            r
        }
        Err(p)
            if matches!(
                p.code,
                "invalid_credentials" | "inactive" | "unconfirmed" | "invalid_fields"
            ) =>
        {
            login_form(app, ctx, p.status, typed, &rd, &p.message, "")
        }
        Err(p) => problem_page(app, ctx, p),
    }
}

/// The cookie of a session re-issued with a new identity ([`ops::identity_changed`]).
fn reissued_cookie(app: &Accounts, r: &mut Response, reissued: Option<crate::sessions::Issued>) {
    if let Some(issued) = reissued {
        set_session_cookie(
            app,
            r.headers_mut(),
            issued.token.expose(),
            app.settings.session_ttl,
        );
    }
}

/// Sets (or with an empty value and no lifetime, clears) the session cookie.
pub(super) fn set_session_cookie(app: &Accounts, h: &mut HeaderMap, value: &str, ttl: Duration) {
    add_cookie(h, &session_cookie(app, value, ttl));
}

fn session_cookie<'a>(app: &Accounts, value: &'a str, ttl: Duration) -> Cookie<'a> {
    let mut c = Cookie::build((app.settings.cookie_name.clone(), value))
        .path("/")
        .http_only(true)
        .secure(app.settings.secure)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64));
    if let Some(d) = &app.settings.cookie_domain {
        c = c.domain(d.clone());
    }
    c.build()
}

async fn logout_page(State(app): App, ctx: Ctx) -> Response {
    html(
        &app,
        &ctx,
        StatusCode::OK,
        pages::Logout {
            page: ctx.page("logout"),
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

async fn logout(State(app): App, ctx: Ctx, Form(f): Form<CsrfForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    sign_out(&app, ctx, None).await
}

/// Ends the browser's session (if any: the end-of-session hooks hear of it) and clears its
/// cookie; then sends the browser to `then`, or shows the sign-in page saying it is signed
/// out. `/logout`'s end, and an OpenID Connect client's (`/oauth/logout`).
pub(crate) async fn sign_out(app: &Accounts, ctx: Ctx, then: Option<&str>) -> Response {
    if let (Some(token), Some(listed)) = (&ctx.token, &ctx.session) {
        let done = ops::logout(
            app,
            &ctx.caller(),
            token.expose(),
            &listed.session.sub,
            &listed.sid,
        )
        .await;
        if let Err(p) = done {
            return problem_page(app, &ctx, p);
        }
    }
    let mut r = match then {
        Some(to) => see_other(to),
        None => login_form(
            app,
            &ctx.signed_out(),
            StatusCode::OK,
            "",
            "",
            "",
            "You are signed out.",
        ),
    };
    set_session_cookie(app, r.headers_mut(), "", Duration::ZERO);
    r
}

// ---------------------------------------------------------------------------------------
// Registration and email confirmation

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RegisterQuery {
    invite: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RegisterForm {
    csrf: String,
    username: String,
    email: String,
    name: String,
    password: String,
    invite: String,
}

async fn register_page(State(app): App, ctx: Ctx, Query(q): Query<RegisterQuery>) -> Response {
    let mut form = RegisterForm {
        invite: q.invite,
        ..Default::default()
    };
    match ops::registration_open(&app, &form.invite).await {
        Ok(invited) => form.email = invited.unwrap_or_default(),
        Err(p) => return problem_page(&app, &ctx, p),
    }
    register_form(&app, &ctx, StatusCode::OK, &form, Errors::default())
}

fn register_form(
    app: &Accounts,
    ctx: &Ctx,
    status: StatusCode,
    f: &RegisterForm,
    errors: Errors,
) -> Response {
    html(
        app,
        ctx,
        status,
        pages::Register {
            page: ctx.page("register"),
            username: f.username.clone(),
            email: f.email.clone(),
            name: f.name.clone(),
            invite: f.invite.clone(),
            min_hint: min_hint(app),
            error: String::new(),
            errors,
            providers: provider_buttons(app),
        },
    )
}

async fn register(State(app): App, ctx: Ctx, Form(f): Form<RegisterForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    let registering = ops::Registering {
        username: &f.username,
        email: &f.email,
        name: &f.name,
        password: &f.password,
        invite: &f.invite,
    };
    match ops::register(&app, &ctx.caller(), &registering).await {
        Ok(ops::Registered::CheckMail) => message(
            &app,
            &ctx,
            StatusCode::OK,
            "Check your email",
            &[
                "We have sent a link to the address you gave. Open it to confirm your address, then sign in.",
                "The link works for 30 minutes. Nothing arrived? Look in your spam folder, or register again.",
            ],
            Some(("/login", "Go to sign in")),
        ),
        Ok(ops::Registered::Ready(username)) => login_form(
            &app,
            &ctx,
            StatusCode::OK,
            &username,
            "",
            "",
            "Your account is ready. Sign in.",
        ),
        Err(p) if !p.fields.is_empty() => register_form(&app, &ctx, p.status, &f, p.fields),
        Err(p) => problem_page(&app, &ctx, p),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct TokenQuery {
    token: String,
}

async fn confirm_email(State(app): App, ctx: Ctx, Query(q): Query<TokenQuery>) -> Response {
    let taken = match app.db.take_token(&q.token, Purpose::Confirm).await {
        Ok(t) => t,
        Err(e) => return unavailable(&app, &ctx, &e),
    };
    let Some((user_id, email)) = taken else {
        return message(
            &app,
            &ctx,
            StatusCode::BAD_REQUEST,
            "This link has expired",
            &["Confirmation links work once, for 30 minutes, and only the newest one. Sign in to get a new one."],
            Some(("/login", "Go to sign in")),
        );
    };
    let old = app.db.user(&user_id).await.ok().flatten();
    match app.db.confirm_email(&user_id, &email).await {
        Ok(()) => {}
        Err(DbError::Taken(_)) => {
            return message(
                &app,
                &ctx,
                StatusCode::CONFLICT,
                "Address already in use",
                &["Another account has confirmed this address meanwhile."],
                Some(("/account", "Go to your account")),
            );
        }
        Err(e) => return unavailable(&app, &ctx, &e),
    }
    audit!("email_confirmed", user_id, ctx.ip);
    // A new address: what carries the old one ends (this browser's session is re-issued).
    let changed = old.as_ref().is_some_and(|o| o.email != email);
    let mut reissued = None;
    if changed {
        let now = match app.db.user(&user_id).await {
            Ok(Some(u)) => u,
            Ok(None) => return see_other("/login"),
            Err(e) => return unavailable(&app, &ctx, &e),
        };
        match ops::identity_changed(&app, ctx.token(), &now).await {
            Ok(r) => reissued = r,
            Err(p) => return problem_page(&app, &ctx, p),
        }
    }
    if let Some(old) =
        old.filter(|o| o.email_confirmed_at.is_some() && db::key(&o.email) != db::key(&email))
    {
        let body = format!(
            "Hello {},\n\nthe email address of your account is now {email}.\nIf you did not do this, reset your password at {}/password/forgot and contact the administrators.\n",
            old.username, app.settings.public_url
        );
        let subject = "Your email address was changed".to_owned();
        let vars = serde_json::json!({"email": email});
        ops::mail(
            &app,
            &old,
            &old.email,
            "email_changed",
            vars,
            (subject, body),
        );
    }
    let mut r = message(
        &app,
        &ctx,
        StatusCode::OK,
        "Email address confirmed",
        &["Thank you. Your address is confirmed."],
        Some(
            if reissued.is_some() || (ctx.session.is_some() && !changed) {
                ("/account", "Go to your account")
            } else {
                ("/login", "Sign in")
            },
        ),
    );
    reissued_cookie(&app, &mut r, reissued);
    r
}

// ---------------------------------------------------------------------------------------
// Forgotten password

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ForgotForm {
    csrf: String,
    email: String,
}

async fn forgot_page(State(app): App, ctx: Ctx) -> Response {
    html(
        &app,
        &ctx,
        StatusCode::OK,
        pages::Forgot {
            page: ctx.page("forgot"),
            email: String::new(),
            error: String::new(),
        },
    )
}

async fn forgot(State(app): App, ctx: Ctx, Form(f): Form<ForgotForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    match ops::forgot(&app, &ctx.caller(), &f.email).await {
        Ok(()) => message(
            &app,
            &ctx,
            StatusCode::OK,
            "Check your email",
            &["If an account uses that address, we have sent it a link to choose a new password. The link works for 30 minutes."],
            Some(("/login", "Back to sign in")),
        ),
        Err(p) if !p.fields.is_empty() => html(
            &app,
            &ctx,
            p.status,
            pages::Forgot {
                page: ctx.page("forgot"),
                email: f.email,
                error: p.fields.get("email").to_owned(),
            },
        ),
        Err(p) => problem_page(&app, &ctx, p),
    }
}

fn expired_reset(app: &Accounts, ctx: &Ctx) -> Response {
    message(
        app,
        ctx,
        StatusCode::BAD_REQUEST,
        "This link has expired",
        &["Reset links work once, for 30 minutes, and only the newest one. Ask for a new one."],
        Some(("/password/forgot", "Ask for a new link")),
    )
}

async fn reset_page(State(app): App, ctx: Ctx, Query(q): Query<TokenQuery>) -> Response {
    match app.db.peek_token(&q.token, Purpose::Reset).await {
        Ok(Some(_)) => html(
            &app,
            &ctx,
            StatusCode::OK,
            pages::Reset {
                page: ctx.page("reset"),
                token: q.token,
                min_hint: min_hint(&app),
                error: String::new(),
            },
        ),
        Ok(None) => expired_reset(&app, &ctx),
        Err(e) => unavailable(&app, &ctx, &e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ResetForm {
    csrf: String,
    token: String,
    password: String,
}

async fn reset(State(app): App, ctx: Ctx, Form(f): Form<ResetForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    match ops::reset(&app, &ctx.caller(), &f.token, &f.password).await {
        Ok(user) => login_form(
            &app,
            &ctx.signed_out(),
            StatusCode::OK,
            &user.username,
            "",
            "",
            "Your password is set, and every device was signed out. Sign in with the new password.",
        ),
        Err(p) if !p.fields.is_empty() => html(
            &app,
            &ctx,
            p.status,
            pages::Reset {
                page: ctx.page("reset"),
                token: f.token,
                min_hint: min_hint(&app),
                error: p.fields.get("password").to_owned(),
            },
        ),
        Err(p) => problem_page(&app, &ctx, p),
    }
}

// ---------------------------------------------------------------------------------------
// The signed-in user's pages

fn account_form(
    app: &Accounts,
    ctx: &Ctx,
    status: StatusCode,
    user: User,
    new_email: &str,
    notice: &str,
    errors: Errors,
) -> Response {
    let roles = super::config::role_names(&user.roles);
    html(
        app,
        ctx,
        status,
        pages::Account {
            page: ctx.page("account"),
            roles: roles.join(", "),
            created: pages::date(user.created_at),
            previous_login: match user.previous_login_at {
                Some(at) => format!(
                    "{} from {}",
                    pages::date(at),
                    user.previous_login_ip.as_deref().unwrap_or("?")
                ),
                None => "This is your first".into(),
            },
            user,
            new_email: new_email.into(),
            notice: notice.into(),
            errors,
        },
    )
}

async fn account_page(State(app): App, ctx: Ctx) -> Response {
    match signed_in(&app, &ctx, "/account").await {
        Ok(user) => account_form(&app, &ctx, StatusCode::OK, user, "", "", Errors::default()),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AccountForm {
    csrf: String,
    action: String,
    name: String,
    affiliation: String,
    country: String,
    email: String,
    current_password: String,
}

async fn account(State(app): App, ctx: Ctx, Form(f): Form<AccountForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    let user = match signed_in(&app, &ctx, "/account").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut errors = Errors::default();
    if f.action == "email" {
        if let Some(p) = ops::email_problem(f.email.trim()) {
            errors.add("email", p);
        } else if !ops::domain_allowed(&app, f.email.trim()) {
            // The rule registration obeys (--registration-domains, --blocked-domains).
            errors.add("email", "Addresses of this domain cannot be used here.");
        }
        let ok = match ops::current_password_ok(&app, &user, &f.current_password).await {
            Ok(ok) => ok,
            Err(p) => return problem_page(&app, &ctx, p),
        };
        if !ok {
            errors.add("current_password", "This is not your current password.");
        }
        if !errors.is_empty() {
            return account_form(
                &app,
                &ctx,
                StatusCode::BAD_REQUEST,
                user,
                &f.email,
                "",
                errors,
            );
        }
        // A taken address gets the same answer and no mail: who owns it is not told.
        if !matches!(app.db.email_taken(&f.email).await, Ok(true)) {
            ops::send_confirmation(&app, &user, f.email.trim()).await;
        }
        audit!("email_change_requested", user.id, ctx.ip);
        let notice = format!(
            "We have sent a confirmation link to {}. Your address changes when you open it.",
            f.email.trim()
        );
        return account_form(
            &app,
            &ctx,
            StatusCode::OK,
            user,
            "",
            &notice,
            Errors::default(),
        );
    }
    for (field, value) in [
        ("name", &f.name),
        ("affiliation", &f.affiliation),
        ("country", &f.country),
    ] {
        if value.chars().count() > 200 {
            errors.add(field, "Use at most 200 characters.");
        }
    }
    if f.name.trim().is_empty() {
        errors.add("name", "Enter your name.");
    }
    if !errors.is_empty() {
        return account_form(&app, &ctx, StatusCode::BAD_REQUEST, user, "", "", errors);
    }
    if let Err(e) = app
        .db
        .set_profile(&user.id, &f.name, &f.affiliation, &f.country)
        .await
    {
        return unavailable(&app, &ctx, &e);
    }
    let u = match app.db.user(&user.id).await {
        Ok(Some(u)) => u,
        Ok(None) => return see_other("/login"),
        Err(e) => return unavailable(&app, &ctx, &e),
    };
    // The name travels upstream in every session's JWT: those carrying the old one end, and
    // this browser's is re-issued.
    let reissued = if u.name != user.name {
        match ops::identity_changed(&app, ctx.token(), &u).await {
            Ok(r) => r,
            Err(p) => return problem_page(&app, &ctx, p),
        }
    } else {
        None
    };
    let mut r = account_form(
        &app,
        &ctx,
        StatusCode::OK,
        u,
        "",
        "Profile saved.",
        Errors::default(),
    );
    reissued_cookie(&app, &mut r, reissued);
    r
}

async fn password_page(State(app): App, ctx: Ctx) -> Response {
    match signed_in(&app, &ctx, "/account/password").await {
        Ok(_) => html(
            &app,
            &ctx,
            StatusCode::OK,
            pages::Password {
                page: ctx.page("password"),
                min_hint: min_hint(&app),
                notice: String::new(),
                errors: Errors::default(),
            },
        ),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PasswordForm {
    csrf: String,
    current_password: String,
    password: String,
}

async fn change_password(State(app): App, ctx: Ctx, Form(f): Form<PasswordForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    let user = match signed_in(&app, &ctx, "/account/password").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let done =
        ops::change_password(&app, &ctx.caller(), &user, &f.current_password, &f.password).await;
    let (status, notice, errors) = match done {
        Ok(()) => (
            StatusCode::OK,
            "Your password is changed. Your other devices are signed out.",
            Errors::default(),
        ),
        Err(p) if !p.fields.is_empty() => (p.status, "", p.fields),
        Err(p) => return problem_page(&app, &ctx, p),
    };
    html(
        &app,
        &ctx,
        status,
        pages::Password {
            page: ctx.page("password"),
            min_hint: min_hint(&app),
            notice: notice.into(),
            errors,
        },
    )
}

async fn sessions_page(State(app): App, ctx: Ctx) -> Response {
    match signed_in(&app, &ctx, "/account/sessions").await {
        Ok(user) => sessions_list(&app, &ctx, &user, "").await,
        Err(r) => r,
    }
}

async fn sessions_list(app: &Accounts, ctx: &Ctx, user: &User, notice: &str) -> Response {
    let listed = match app.gateway.sessions().list(&user.id).await {
        Ok(l) => l,
        Err(e) => return unavailable(app, ctx, &e),
    };
    let current = ctx.session.as_ref().map(|l| l.sid.as_str());
    let mut rows: Vec<pages::SessionRow> = listed
        .into_iter()
        .filter(|l| l.session.kind == SessionKind::User)
        .map(|l| pages::SessionRow {
            current: Some(l.sid.as_str()) == current,
            device: super::guard::device(l.session.user_agent.as_deref()),
            ip: l.session.ip.clone().unwrap_or_else(|| "unknown".into()),
            created: pages::date(l.session.created_at),
            last_seen: pages::date(l.session.last_seen.unwrap_or(l.session.created_at)),
            sid: l.sid,
        })
        .collect();
    rows.sort_by_key(|r| !r.current);
    html(
        app,
        ctx,
        StatusCode::OK,
        pages::Sessions {
            page: ctx.page("sessions"),
            sessions: rows,
            notice: notice.into(),
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RevokeForm {
    csrf: String,
    sid: String,
}

async fn revoke_session(State(app): App, ctx: Ctx, Form(f): Form<RevokeForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    let user = match signed_in(&app, &ctx, "/account/sessions").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let sessions = app.gateway.sessions();
    let result: Result<String, SessionsError> = if f.sid == "others" {
        let keep = ctx.token.as_ref().map(|t| t.expose().as_str());
        sessions.revoke_user(&user.id, keep).await.map(|n| {
            audit!("sessions_revoked", user.id, ctx.ip, count = n);
            format!(
                "Signed out {n} other session{}.",
                if n == 1 { "" } else { "s" }
            )
        })
    } else {
        sessions.revoke_sid(&user.id, &f.sid).await.map(|found| {
            if found {
                audit!("session_revoked", user.id, ctx.ip, sid = f.sid.as_str());
                "That session is signed out.".to_string()
            } else {
                "That session had already ended.".to_string()
            }
        })
    };
    match result {
        Ok(notice) => sessions_list(&app, &ctx, &user, &notice).await,
        Err(e) => unavailable(&app, &ctx, &e),
    }
}
