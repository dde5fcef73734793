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

use super::db::{self, DbError, NewUser, Purpose, User};
use super::pages::{self, Errors, Page};
use super::{Accounts, Peer, Registration};
use crate::audit;
use crate::secret::Secret;
use crate::session::SessionKind;
use crate::sessions::{Listed, SessionsError};

type App = State<Arc<Accounts>>;

pub fn router(accounts: Arc<Accounts>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
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
        .fallback(not_found)
        .with_state(accounts)
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

impl FromRequestParts<Arc<Accounts>> for Ctx {
    type Rejection = Unavailable;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<Accounts>,
    ) -> Result<Ctx, Unavailable> {
        let peer = parts
            .extensions
            .get::<Peer>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |p| p.0);
        let ip = app.gateway.client_ip(&parts.headers, peer);
        let s = &app.settings;
        let mut csrf = None;
        let mut token = None;
        for value in parts.headers.get_all(header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for c in Cookie::split_parse(value).flatten() {
                if c.name() == s.csrf_cookie && c.value().len() >= 32 {
                    csrf = Some(c.value().to_owned());
                } else if c.name() == s.cookie_name {
                    token = Some(Secret::new(c.value().to_owned()));
                }
            }
        }
        let session = match &token {
            Some(t) => app
                .gateway
                .sessions()
                .find(t.expose())
                .await
                .map_err(|_| Unavailable)?
                .filter(|l| l.session.kind == SessionKind::User),
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
        })
    }
}

impl Ctx {
    fn page(&self, section: &'static str) -> Page {
        Page {
            signed_in: self.session.as_ref().map(|l| {
                l.session
                    .username
                    .clone()
                    .unwrap_or_else(|| l.session.sub.clone())
            }),
            section,
            csrf: self.csrf.clone(),
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
fn html(app: &Accounts, ctx: &Ctx, status: StatusCode, page: impl Template) -> Response {
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
        let cookie = Cookie::build((app.settings.csrf_cookie.clone(), ctx.csrf.clone()))
            .path("/")
            .http_only(true)
            .secure(app.settings.secure)
            .same_site(SameSite::Lax)
            .build();
        add_cookie(h, &cookie);
    }
    response
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
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

fn add_cookie(h: &mut HeaderMap, cookie: &Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        h.append(header::SET_COOKIE, v);
    }
}

fn message(
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

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut());
    r
}

fn unavailable(app: &Accounts, ctx: &Ctx, why: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %why, "accounts: a dependency failed; answering 503");
    let mut r = message(
        app,
        ctx,
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        &["We could not complete this just now. Nothing was changed; please try again in a moment."],
        None,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn too_many(app: &Accounts, ctx: &Ctx, wait: Duration) -> Response {
    app.metrics.throttled.inc();
    let secs = wait.as_secs().max(1);
    let line = format!("Too many attempts. Please wait {secs} seconds and try again.");
    let mut r = message(
        app,
        ctx,
        StatusCode::TOO_MANY_REQUESTS,
        "Slow down",
        &[&line],
        None,
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn forbidden(app: &Accounts, ctx: &Ctx) -> Response {
    message(
        app,
        ctx,
        StatusCode::FORBIDDEN,
        "This form has expired",
        &["The page you sent it from was old or came from another site. Go back, reload the page and try again."],
        Some(("/login", "Go to sign in")),
    )
}

async fn not_found(State(app): App, ctx: Ctx) -> Response {
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
fn post_allowed(app: &Accounts, ctx: &Ctx, csrf: &str) -> bool {
    !ctx.new_csrf
        && super::guard::csrf_ok(Some(&ctx.csrf), Some(csrf))
        && !super::guard::cross_site(&ctx.headers, &app.settings.allowed_redirect_hosts)
}

/// Where `rd` may send the browser, or `None`.
fn redirect_target(app: &Accounts, ctx: &Ctx, rd: &str) -> Option<String> {
    let mut allowed = app.settings.allowed_redirect_hosts.clone();
    allowed.extend(ctx.host());
    super::guard::safe_redirect(rd, &allowed)
}

/// The signed-in user, or the answer that sends the browser to sign in.
async fn signed_in(app: &Accounts, ctx: &Ctx, here: &str) -> Result<User, Response> {
    let Some(listed) = &ctx.session else {
        return Err(see_other(&format!("/login?rd={}", urlencode(here))));
    };
    match app.db.user(&listed.session.sub).await {
        Ok(Some(u)) if u.active => Ok(u),
        Ok(_) => Err(see_other("/login")),
        Err(e) => Err(unavailable(app, ctx, &e)),
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
pub struct RdQuery {
    rd: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    csrf: String,
    username: String,
    password: String,
    rd: String,
}

async fn login_page(State(app): App, ctx: Ctx, Query(q): Query<RdQuery>) -> Response {
    let rd = redirect_target(&app, &ctx, &q.rd).unwrap_or_default();
    if ctx.session.is_some() {
        return see_other(if rd.is_empty() { "/account" } else { &rd });
    }
    login_form(&app, &ctx, StatusCode::OK, "", &rd, "", "")
}

fn login_form(
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
        pages::Login {
            page: ctx.page("login"),
            username: username.into(),
            rd: rd.into(),
            error: error.into(),
            notice: notice.into(),
            registration_open: app.settings.registration == Registration::Open,
        },
    )
}

/// What follows an accepted password. Today always a session; a second factor (passkey,
/// TOTP) will be a step here, between the password and the session.
enum Step {
    IssueSession,
}

fn next_step(_user: &User) -> Step {
    Step::IssueSession
}

async fn login(State(app): App, ctx: Ctx, Form(f): Form<LoginForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    let rd = redirect_target(&app, &ctx, &f.rd).unwrap_or_default();
    let account_key = format!("u:{}", db::key(&f.username));
    let ip_key = format!("ip:{}", ctx.ip);
    let wait = app
        .throttle
        .wait(&account_key)
        .max(app.throttle.wait(&ip_key));
    if !wait.is_zero() {
        app.metrics.login("throttled");
        audit!("login_throttled", db::key(&f.username), ctx.ip);
        return too_many(&app, &ctx, wait);
    }
    let user = match app.db.find(&f.username).await {
        Ok(u) => u,
        Err(e) => return unavailable(&app, &ctx, &e),
    };
    let password = Secret::new(f.password);
    // Unknown users verify a dummy hash: the same work, the same time, the same answer.
    let verified = match app
        .passwords
        .verify(
            &password,
            user.as_ref().and_then(|u| u.password_hash.as_ref()),
        )
        .await
    {
        Ok(v) => v,
        Err(busy) => {
            app.metrics.login("busy");
            return unavailable(&app, &ctx, &busy);
        }
    };
    let user = match user {
        Some(u) if verified.ok => u,
        _ => {
            app.throttle.fail(&account_key);
            app.throttle.fail(&ip_key);
            app.metrics.login("failed");
            audit!("login_failed", db::key(&f.username), ctx.ip);
            return login_form(
                &app,
                &ctx,
                StatusCode::UNAUTHORIZED,
                &f.username,
                &rd,
                "Wrong username or password.",
                "",
            );
        }
    };
    app.throttle.succeed(&account_key);
    if !user.active {
        app.metrics.login("inactive");
        audit!("login_inactive", user.id, ctx.ip);
        return login_form(
            &app,
            &ctx,
            StatusCode::FORBIDDEN,
            &f.username,
            &rd,
            "This account is deactivated. Contact the administrators.",
            "",
        );
    }
    if user.email_confirmed_at.is_none() {
        app.metrics.login("unconfirmed");
        send_confirmation(&app, &user, &user.email).await;
        return login_form(
            &app,
            &ctx,
            StatusCode::FORBIDDEN,
            &f.username,
            &rd,
            "Confirm your email address first: we have sent you a new link.",
            "",
        );
    }
    if verified.rehash {
        if let Ok(h) = app.passwords.hash(&password).await {
            if let Err(e) = app.db.set_password(&user.id, &h).await {
                tracing::warn!(user = user.id, error = %e, "password rehash not stored");
            }
        }
    }
    match next_step(&user) {
        Step::IssueSession => issue_session(&app, &ctx, &user, &rd).await,
    }
}

/// The session for a user whose login is complete; the cookie, and the way on.
async fn issue_session(app: &Accounts, ctx: &Ctx, user: &User, rd: &str) -> Response {
    let sessions = app.gateway.sessions();
    // Never reuse what the browser had: a session it carried before is ended, and the new
    // one has a new token (no fixation).
    if let Some(old) = &ctx.token {
        let _ = sessions.revoke(old.expose()).await;
    }
    let (roles, scopes) = app.roles.of(&user.roles);
    let session = crate::session::Session {
        username: Some(user.username.clone()),
        email: Some(user.email.clone()),
        name: (!user.name.is_empty()).then(|| user.name.clone()),
        roles,
        scopes,
        ip: Some(ctx.ip.to_string()),
        user_agent: ctx.user_agent(),
        ..crate::sessions::Sessions::draft(user.id.clone(), app.settings.session_ttl)
    };
    let issued = match sessions.issue(&session).await {
        Ok(i) => i,
        Err(e) => return unavailable(app, ctx, &e),
    };
    if let Err(e) = app.db.record_login(&user.id, &ctx.ip.to_string()).await {
        tracing::warn!(user = user.id, error = %e, "login not recorded");
    }
    app.metrics.login("ok");
    audit!("login", user.id, ctx.ip, sid = issued.sid.as_str());
    let mut r = see_other(if rd.is_empty() { "/account" } else { rd });
    add_cookie(
        r.headers_mut(),
        &session_cookie(app, issued.token.expose(), app.settings.session_ttl),
    );
    r
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
    if let (Some(token), Some(listed)) = (&ctx.token, &ctx.session) {
        if let Err(e) = app.gateway.sessions().revoke(token.expose()).await {
            return unavailable(&app, &ctx, &e);
        }
        audit!(
            "logout",
            listed.session.sub,
            ctx.ip,
            sid = listed.sid.as_str()
        );
    }
    let mut r = login_form(
        &app,
        &Ctx {
            session: None,
            ..ctx
        },
        StatusCode::OK,
        "",
        "",
        "",
        "You are signed out.",
    );
    add_cookie(r.headers_mut(), &session_cookie(&app, "", Duration::ZERO));
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

fn registration_closed(app: &Accounts, ctx: &Ctx) -> Response {
    message(
        app,
        ctx,
        StatusCode::FORBIDDEN,
        "Registration is closed",
        &[if app.settings.registration == Registration::Invite {
            "New accounts need an invitation. Ask the administrators for one; the link in it opens this page."
        } else {
            "New accounts are created by the administrators."
        }],
        Some(("/login", "Go to sign in")),
    )
}

async fn register_page(State(app): App, ctx: Ctx, Query(q): Query<RegisterQuery>) -> Response {
    let mut form = RegisterForm {
        invite: q.invite,
        ..Default::default()
    };
    match app.settings.registration {
        Registration::Open => {}
        Registration::Closed => return registration_closed(&app, &ctx),
        Registration::Invite => match app.db.peek_token(&form.invite, Purpose::Invite).await {
            Ok(Some((_, email))) => form.email = email,
            Ok(None) => return registration_closed(&app, &ctx),
            Err(e) => return unavailable(&app, &ctx, &e),
        },
    }
    register_form(&app, &ctx, StatusCode::OK, &form, Errors::default(), "")
}

fn register_form(
    app: &Accounts,
    ctx: &Ctx,
    status: StatusCode,
    f: &RegisterForm,
    errors: Errors,
    error: &str,
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
            error: error.into(),
            errors,
        },
    )
}

/// Why a username cannot be used, or `None`.
pub fn username_problem(u: &str) -> Option<&'static str> {
    let n = u.chars().count();
    if !(3..=64).contains(&n) {
        return Some("Use 3 to 64 characters.");
    }
    if !u.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Some("Start with a letter.");
    }
    if !u
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some("Use only letters, digits, - and _.");
    }
    None
}

/// Whether `e` looks like a deliverable address (the confirmation mail proves it).
pub fn email_problem(e: &str) -> Option<&'static str> {
    let Some((local, domain)) = e.rsplit_once('@') else {
        return Some("Enter an email address like name@example.org.");
    };
    if local.is_empty()
        || e.len() > 254
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || e.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"\\".contains(c))
    {
        return Some("Enter an email address like name@example.org.");
    }
    None
}

fn domain_allowed(app: &Accounts, email: &str) -> bool {
    let domain = email
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase();
    let matches = |list: &[String]| {
        list.iter().any(|d| match d.strip_prefix('.') {
            Some(base) => domain == base || domain.ends_with(d.as_str()),
            None => domain == *d,
        })
    };
    (app.settings.registration_domains.is_empty() || matches(&app.settings.registration_domains))
        && !matches(&app.settings.blocked_domains)
}

async fn register(State(app): App, ctx: Ctx, Form(f): Form<RegisterForm>) -> Response {
    if !post_allowed(&app, &ctx, &f.csrf) {
        return forbidden(&app, &ctx);
    }
    let invite_email = match app.settings.registration {
        Registration::Open => None,
        Registration::Closed => return registration_closed(&app, &ctx),
        Registration::Invite => match app.db.peek_token(&f.invite, Purpose::Invite).await {
            Ok(Some((_, email))) => Some(email),
            Ok(None) => return registration_closed(&app, &ctx),
            Err(e) => return unavailable(&app, &ctx, &e),
        },
    };
    if let Err(wait) = app.rate.check(ctx.ip) {
        return too_many(&app, &ctx, wait);
    }
    let mut errors = Errors::default();
    if let Some(p) = username_problem(f.username.trim()) {
        errors.add("username", p);
    }
    if let Some(p) = email_problem(f.email.trim()) {
        errors.add("email", p);
    } else if !domain_allowed(&app, f.email.trim()) {
        errors.add("email", "Addresses of this domain cannot register here.");
    } else if invite_email
        .as_deref()
        .is_some_and(|e| db::key(e) != db::key(&f.email))
    {
        errors.add("email", "Use the address the invitation was sent to.");
    }
    if f.name.trim().is_empty() {
        errors.add("name", "Enter your name.");
    } else if f.name.chars().count() > 200 {
        errors.add("name", "Use at most 200 characters.");
    }
    if let Some(p) = app.passwords.refuse(
        &f.password,
        &[f.username.as_str(), f.email.as_str(), f.name.as_str()],
    ) {
        errors.add("password", p);
    }
    if !errors.is_empty() {
        return register_form(&app, &ctx, StatusCode::BAD_REQUEST, &f, errors, "");
    }
    let hash = match app.passwords.hash(&Secret::new(f.password.clone())).await {
        Ok(h) => h,
        Err(busy) => return unavailable(&app, &ctx, &busy),
    };
    let created = app
        .db
        .create_user(&NewUser {
            username: &f.username,
            email: &f.email,
            name: &f.name,
            password_hash: Some(&hash),
            active: true,
            confirmed: false,
            roles: &[],
        })
        .await;
    let check_mail = |app: &Accounts| {
        message(
            app,
            &ctx,
            StatusCode::OK,
            "Check your email",
            &[
                "We have sent a link to the address you gave. Open it to confirm your address, then sign in.",
                "The link works for 30 minutes. Nothing arrived? Look in your spam folder, or register again.",
            ],
            Some(("/login", "Go to sign in")),
        )
    };
    match created {
        Ok(user) => {
            app.metrics.registrations.inc();
            audit!("register", user.id, ctx.ip);
            if invite_email.is_some() {
                // The invitation went to this address: it is confirmed already.
                let _ = app.db.take_token(&f.invite, Purpose::Invite).await;
                if let Err(e) = app.db.confirm_email(&user.id, &user.email).await {
                    return unavailable(&app, &ctx, &e);
                }
                return login_form(
                    &app,
                    &ctx,
                    StatusCode::OK,
                    &user.username,
                    "",
                    "",
                    "Your account is ready. Sign in.",
                );
            }
            send_confirmation(&app, &user, &user.email).await;
            check_mail(&app)
        }
        Err(DbError::Taken("email")) => {
            // The same answer as a new registration: whether an address has an account is
            // told only to its owner, by mail.
            if let Ok(Some(owner)) = app.db.find(&f.email).await {
                app.mailer.send(
                    &owner.id,
                    &owner.email,
                    "Someone tried to register with your address",
                    format!(
                        "Hello {},\n\nsomeone tried to create an account with this email address, which already has one (username {}).\nIf it was you, sign in or reset your password at {}/password/forgot.\nIf not, you can ignore this message.\n",
                        owner.username, owner.username, app.settings.public_url
                    ),
                );
            }
            check_mail(&app)
        }
        Err(DbError::Taken(_)) => {
            let mut errors = Errors::default();
            errors.add("username", "This username is taken. Choose another.");
            register_form(&app, &ctx, StatusCode::CONFLICT, &f, errors, "")
        }
        Err(e) => unavailable(&app, &ctx, &e),
    }
}

async fn send_confirmation(app: &Accounts, user: &User, email: &str) {
    match app.db.issue_token(&user.id, Purpose::Confirm, email, super::TOKEN_TTL).await {
        Ok(token) => app.mailer.send(
            &user.id,
            email,
            "Confirm your email address",
            format!(
                "Hello {},\n\nopen this link to confirm your email address:\n\n{}/email/confirm?token={}\n\nThe link works for 30 minutes. If you did not ask for it, ignore this message.\n",
                user.username,
                app.settings.public_url,
                token.expose()
            ),
        ),
        Err(e) => tracing::warn!(user = user.id, error = %e, "confirmation not sent"),
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
    if let Some(old) =
        old.filter(|o| o.email_confirmed_at.is_some() && db::key(&o.email) != db::key(&email))
    {
        app.mailer.send(
            &old.id,
            &old.email,
            "Your email address was changed",
            format!(
                "Hello {},\n\nthe email address of your account is now {email}.\nIf you did not do this, reset your password at {}/password/forgot and contact the administrators.\n",
                old.username, app.settings.public_url
            ),
        );
    }
    message(
        &app,
        &ctx,
        StatusCode::OK,
        "Email address confirmed",
        &["Thank you. Your address is confirmed."],
        Some(if ctx.session.is_some() {
            ("/account", "Go to your account")
        } else {
            ("/login", "Sign in")
        }),
    )
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
    if let Err(wait) = app.rate.check(ctx.ip) {
        return too_many(&app, &ctx, wait);
    }
    if let Some(p) = email_problem(f.email.trim()) {
        return html(
            &app,
            &ctx,
            StatusCode::BAD_REQUEST,
            pages::Forgot {
                page: ctx.page("forgot"),
                email: f.email,
                error: p.into(),
            },
        );
    }
    // Looked up and mailed after the answer: known and unknown addresses get the same page
    // in the same time.
    let worker = app.clone();
    let ip = ctx.ip;
    tokio::spawn(async move {
        let user = match worker.db.find(&f.email).await {
            Ok(Some(u)) if u.active && db::key(&u.email) == db::key(&f.email) => u,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "password reset not sent");
                return;
            }
        };
        match worker
            .db
            .issue_token(&user.id, Purpose::Reset, &user.email, super::TOKEN_TTL)
            .await
        {
            Ok(token) => {
                audit!("password_reset_requested", user.id, ip);
                worker.mailer.send(
                    &user.id,
                    &user.email,
                    "Reset your password",
                    format!(
                        "Hello {},\n\nopen this link to choose a new password:\n\n{}/password/reset?token={}\n\nThe link works once, for 30 minutes. Every device signed in to your account will be signed out.\nIf you did not ask for this, ignore this message: your password stays as it is.\n",
                        user.username,
                        worker.settings.public_url,
                        token.expose()
                    ),
                );
            }
            Err(e) => tracing::warn!(user = user.id, error = %e, "password reset not sent"),
        }
    });
    message(
        &app,
        &ctx,
        StatusCode::OK,
        "Check your email",
        &["If an account uses that address, we have sent it a link to choose a new password. The link works for 30 minutes."],
        Some(("/login", "Back to sign in")),
    )
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
    let user = match app.db.peek_token(&f.token, Purpose::Reset).await {
        Ok(Some((id, _))) => match app.db.user(&id).await {
            Ok(Some(u)) => u,
            Ok(None) => return expired_reset(&app, &ctx),
            Err(e) => return unavailable(&app, &ctx, &e),
        },
        Ok(None) => return expired_reset(&app, &ctx),
        Err(e) => return unavailable(&app, &ctx, &e),
    };
    if let Some(p) = app.passwords.refuse(
        &f.password,
        &[
            user.username.as_str(),
            user.email.as_str(),
            user.name.as_str(),
        ],
    ) {
        return html(
            &app,
            &ctx,
            StatusCode::BAD_REQUEST,
            pages::Reset {
                page: ctx.page("reset"),
                token: f.token,
                min_hint: min_hint(&app),
                error: p,
            },
        );
    }
    let hash = match app.passwords.hash(&Secret::new(f.password)).await {
        Ok(h) => h,
        Err(busy) => return unavailable(&app, &ctx, &busy),
    };
    // Used up before anything changes: of two racing requests, one sets the password.
    match app.db.take_token(&f.token, Purpose::Reset).await {
        Ok(Some(_)) => {}
        Ok(None) => return expired_reset(&app, &ctx),
        Err(e) => return unavailable(&app, &ctx, &e),
    }
    if let Err(e) = app.db.set_password(&user.id, &hash).await {
        return unavailable(&app, &ctx, &e);
    }
    // The link proved the mailbox: an unconfirmed address is confirmed now.
    if user.email_confirmed_at.is_none() {
        let _ = app.db.confirm_email(&user.id, &user.email).await;
    }
    let ended = match app.gateway.sessions().revoke_user(&user.id, None).await {
        Ok(n) => n,
        Err(e) => return unavailable(&app, &ctx, &e),
    };
    app.metrics.password_resets.inc();
    audit!("password_reset", user.id, ctx.ip, sessions_ended = ended);
    password_changed_mail(&app, &user);
    login_form(
        &app,
        &Ctx {
            session: None,
            ..ctx
        },
        StatusCode::OK,
        &user.username,
        "",
        "",
        "Your password is set, and every device was signed out. Sign in with the new password.",
    )
}

fn password_changed_mail(app: &Accounts, user: &User) {
    app.mailer.send(
        &user.id,
        &user.email,
        "Your password was changed",
        format!(
            "Hello {},\n\nthe password of your account was just changed, and your other devices were signed out.\nIf you did not do this, reset your password at {}/password/forgot and contact the administrators.\n",
            user.username, app.settings.public_url
        ),
    );
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
    let (roles, _) = app.roles.of(&user.roles);
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
        if let Some(p) = email_problem(f.email.trim()) {
            errors.add("email", p);
        }
        let ok = match app
            .passwords
            .verify(
                &Secret::new(f.current_password),
                user.password_hash.as_ref(),
            )
            .await
        {
            Ok(v) => v.ok,
            Err(busy) => return unavailable(&app, &ctx, &busy),
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
            send_confirmation(&app, &user, f.email.trim()).await;
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
    match app.db.user(&user.id).await {
        Ok(Some(u)) => account_form(
            &app,
            &ctx,
            StatusCode::OK,
            u,
            "",
            "Profile saved.",
            Errors::default(),
        ),
        Ok(None) => see_other("/login"),
        Err(e) => unavailable(&app, &ctx, &e),
    }
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
    let mut errors = Errors::default();
    match app
        .passwords
        .verify(
            &Secret::new(f.current_password),
            user.password_hash.as_ref(),
        )
        .await
    {
        Ok(v) if v.ok => {}
        Ok(_) => errors.add("current_password", "This is not your current password."),
        Err(busy) => return unavailable(&app, &ctx, &busy),
    }
    if let Some(p) = app.passwords.refuse(
        &f.password,
        &[
            user.username.as_str(),
            user.email.as_str(),
            user.name.as_str(),
        ],
    ) {
        errors.add("password", p);
    }
    let page = |status, notice: &str, errors| {
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
    };
    if !errors.is_empty() {
        return page(StatusCode::BAD_REQUEST, "", errors);
    }
    let hash = match app.passwords.hash(&Secret::new(f.password)).await {
        Ok(h) => h,
        Err(busy) => return unavailable(&app, &ctx, &busy),
    };
    if let Err(e) = app.db.set_password(&user.id, &hash).await {
        return unavailable(&app, &ctx, &e);
    }
    let keep = ctx.token.as_ref().map(|t| t.expose().as_str());
    let ended = match app.gateway.sessions().revoke_user(&user.id, keep).await {
        Ok(n) => n,
        Err(e) => return unavailable(&app, &ctx, &e),
    };
    audit!("password_changed", user.id, ctx.ip, sessions_ended = ended);
    password_changed_mail(&app, &user);
    page(
        StatusCode::OK,
        "Your password is changed. Your other devices are signed out.",
        Errors::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_emails() {
        for ok in ["abc", "alice_b-2", &"a".repeat(64)] {
            assert_eq!(username_problem(ok), None, "{ok}");
        }
        for bad in [
            "ab",
            "1abc",
            "-abc",
            "a b",
            "ali.ce",
            "alïce",
            &"a".repeat(65),
        ] {
            assert!(username_problem(bad).is_some(), "{bad}");
        }
        for ok in ["a@b.org", "first.last+tag@sub.example.org"] {
            assert_eq!(email_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.org",
            "a@.org",
            "a b@c.org",
            "a@b.org\r\nBcc: x@y.z",
            "<a@b.org>",
        ] {
            assert!(email_problem(bad).is_some(), "{bad:?}");
        }
    }
}
