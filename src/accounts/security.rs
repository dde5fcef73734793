//! The sign-in pages beyond the form (`/login` decides whether a signed-in browser steps
//! up), and the pages of second factors: the second step of a sign-in and the step-up
//! (`/login/second-factor`), and `/account/security` with enrolment, removal and recovery
//! codes. The operations are [`super::second`]'s, shared with the JSON API.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::Path;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::db::User;
use super::ops::Problem;
use super::pages;
use super::second::{self, Proof};
use super::web::{self, Ctx};
use super::Accounts;

type App = State<Arc<Accounts>>;

pub fn routes() -> Router<Arc<Accounts>> {
    Router::new()
        .route("/login", get(login_page).post(web::login))
        .route(
            "/login/second-factor",
            get(second_step_page).post(second_step),
        )
        .route("/account/security", get(security_page))
        .route("/account/security/totp", post(begin_totp))
        .route("/account/security/totp/confirm", post(confirm_totp))
        .route("/account/security/totp/remove", post(remove_totp))
        .route("/account/security/recovery", post(recovery_codes))
        .route("/login/passkey", post(passkey_login))
        .route("/login/passkeys.js", get(script))
        .route(
            "/login/passkey-offer",
            get(passkey_offer).post(decline_passkey_offer),
        )
        .route("/account/security/passkeys", post(add_passkey))
        .route(
            "/account/security/passkeys/{id}/rename",
            post(rename_passkey),
        )
        .route(
            "/account/security/passkeys/{id}/remove",
            post(remove_passkey),
        )
}

/// The pages' one script: the WebAuthn calls of passkeys (`script-src 'self'`).
async fn script() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("templates/passkeys.js"),
    )
        .into_response()
}

/// `/login`: the form; for a signed-in browser, `rd` at once, unless the route it came from
/// asks for more (a step-up): a second factor (`acr_values` names two factors), which it
/// asks for alone, or a recent sign-in (`max_age`), for which it signs in again.
async fn login_page(
    State(app): App,
    ctx: Ctx,
    q: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    // A query that does not parse (a field twice) is a bare /login, never a plain-text 400.
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let rd = web::redirect_target(&app, &ctx, &q.rd).unwrap_or_default();
    let Some(listed) = ctx.session() else {
        // An OpenID Connect client's login_hint fills in the username (a hint only).
        let hint: String = q.login_hint.chars().take(254).collect();
        return web::login_form(&app, &ctx, StatusCode::OK, &hint, &rd, "", "");
    };
    let session = &listed.session;
    let now = crate::session::unix_now();
    // A max_age that is no number is not gatehouse's (it writes the login location): it
    // asks for nothing, and the route's own rule sends the browser back with the right one.
    let max_age = q.max_age.parse::<u64>().ok();
    // `prompt=login`: an OpenID Connect client asks for a sign-in now, however recent the last.
    let again = q.prompt == "login";
    if again || max_age.is_some_and(|max| !session.authenticated_within(max, now)) {
        let username = session.username.clone().unwrap_or_default();
        return web::login_again(&app, &ctx, &username, &rd);
    }
    if q.acr_values.contains(crate::session::ACR_TWO_FACTORS) && !session.has_second_factor() {
        return step_up_page(&app, &ctx, &rd, "").await;
    }
    web::see_other(onward(&rd))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginQuery {
    rd: String,
    /// A step-up's need, in OpenID Connect's words (from `X-Gatehouse-Login`).
    acr_values: String,
    max_age: String,
    login_hint: String,
    prompt: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct StepQuery {
    rd: String,
    method: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct StepForm {
    csrf: String,
    rd: String,
    method: String,
    code: String,
}

fn step_form(
    app: &Accounts,
    ctx: &Ctx,
    status: StatusCode,
    (rd, method): (&str, &str),
    methods: &[&str],
    step_up: bool,
    error: &str,
) -> Response {
    // The way asked for when the user has it, else their first (a passkey before a code).
    let method = methods
        .iter()
        .copied()
        .find(|m| *m == method)
        .or(methods.first().copied())
        .unwrap_or("totp");
    web::html(
        app,
        ctx,
        status,
        pages::SecondFactor {
            page: web::passkey_page(app, ctx, "login"),
            rd: rd.into(),
            method: method.into(),
            can_passkey: methods.contains(&"passkey"),
            can_totp: methods.contains(&"totp"),
            can_recovery: methods.contains(&"recovery"),
            step_up,
            error: error.into(),
        },
    )
}

/// `/login?acr_values=…` for a signed-in user without a second factor: a code alone (of
/// `method`, `totp` or `recovery`), or enrolment when they have none.
pub(super) async fn step_up_page(app: &Accounts, ctx: &Ctx, rd: &str, method: &str) -> Response {
    let user = match web::signed_in(app, ctx, "/account/security").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match second::methods(app, &user.id).await {
        Ok(m) if m.is_empty() => security(app, ctx, &user, rd, "", "", "").await,
        Ok(m) => step_form(app, ctx, StatusCode::OK, (rd, method), &m, true, ""),
        Err(p) => web::problem_page(app, ctx, p),
    }
}

async fn second_step_page(State(app): App, ctx: Ctx, Query(q): Query<StepQuery>) -> Response {
    let rd = web::redirect_target(&app, &ctx, &q.rd).unwrap_or_default();
    if let Some(pending) = ctx.pending() {
        return match pending_methods(&app, pending).await {
            Ok(m) => step_form(&app, &ctx, StatusCode::OK, (&rd, &q.method), &m, false, ""),
            Err(p) => restart(&app, &ctx, p, &rd),
        };
    }
    if ctx.session().is_some() {
        return step_up_page(&app, &ctx, &rd, &q.method).await;
    }
    web::see_other("/login")
}

/// Where a finished sign-in, step-up or offer goes: `rd`, or the account page.
fn onward(rd: &str) -> &str {
    if rd.is_empty() {
        "/account"
    } else {
        rd
    }
}

/// What the user of a pending sign-in can finish it with (they gave their password).
async fn pending_methods(app: &Accounts, pending: &str) -> Result<Vec<&'static str>, Problem> {
    let user = second::pending_user(app, pending).await?;
    second::methods(app, &user.id).await
}

/// A pending sign-in that expired or was finished elsewhere: the sign-in form again.
fn restart(app: &Accounts, ctx: &Ctx, p: Problem, rd: &str) -> Response {
    if p.code != "second_step_expired" {
        return web::problem_page(app, ctx, p);
    }
    let mut r = web::login_form(app, ctx, p.status, "", rd, "", &p.message);
    web::set_pending_cookie(app, r.headers_mut(), "", Duration::ZERO);
    r
}

async fn second_step(State(app): App, ctx: Ctx, Form(f): Form<StepForm>) -> Response {
    if !web::post_allowed(&app, &ctx, &f.csrf) {
        return web::forbidden(&app, &ctx);
    }
    let rd = web::redirect_target(&app, &ctx, &f.rd).unwrap_or_default();
    let proof = Proof::Code {
        method: &f.method,
        code: &f.code,
    };
    finish_step(&app, &ctx, &rd, (&f.method, proof)).await
}

/// Finishes the browser's pending sign-in, or steps its session up, with `proof` (of
/// `method`): on to `rd`, or the form again with what was wrong.
async fn finish_step(
    app: &Accounts,
    ctx: &Ctx,
    rd: &str,
    (method, proof): (&str, Proof<'_>),
) -> Response {
    let to = onward(rd);
    let caller = ctx.caller();
    if let Some(pending) = ctx.pending() {
        let methods = match pending_methods(app, pending).await {
            Ok(m) => m,
            Err(p) => return restart(app, ctx, p, rd),
        };
        return match second::second_step(app, &caller, pending, proof).await {
            Ok(done) => {
                let mut r = web::see_other(to);
                web::completed_login_cookies(app, r.headers_mut(), &done);
                r
            }
            Err(p) if p.code == "second_step_expired" => restart(app, ctx, p, rd),
            Err(p) => refused(app, ctx, p, (rd, method), &methods, false),
        };
    }
    if ctx.session().is_none() {
        return web::see_other("/login");
    }
    let user = match web::signed_in(app, ctx, "/account/security").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let methods = match second::methods(app, &user.id).await {
        Ok(m) => m,
        Err(p) => return web::problem_page(app, ctx, p),
    };
    match second::step_up(app, &caller, &user, proof).await {
        Ok(issued) => {
            let mut r = web::see_other(to);
            web::set_session_cookie(
                app,
                r.headers_mut(),
                issued.token.expose(),
                app.settings.session_ttl,
            );
            r
        }
        Err(p) => refused(app, ctx, p, (rd, method), &methods, true),
    }
}

/// A refused code or passkey: the form again with the message; a delay or an outage as its
/// own page.
fn refused(
    app: &Accounts,
    ctx: &Ctx,
    p: Problem,
    form: (&str, &str),
    methods: &[&str],
    step_up: bool,
) -> Response {
    if matches!(
        p.code,
        "invalid_code" | "invalid_fields" | "passkey_refused" | "ceremony_expired"
    ) {
        step_form(app, ctx, p.status, form, methods, step_up, &p.message)
    } else {
        web::problem_page(app, ctx, p)
    }
}

/// The security page; `rd` is where a step-up that sent the user here goes once a factor is
/// set up. An `error` or `password_error` is a refused form (400).
async fn security(
    app: &Accounts,
    ctx: &Ctx,
    user: &User,
    rd: &str,
    notice: &str,
    error: &str,
    password_error: &str,
) -> Response {
    let status = if error.is_empty() && password_error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let f = match second::factors_of(app, &user.id).await {
        Ok(f) => f,
        Err(p) => return web::problem_page(app, ctx, p),
    };
    let passkeys = match super::passkeys::list(app, &user.id).await {
        Ok(list) => list,
        Err(p) => return web::problem_page(app, ctx, p),
    };
    let identities = match super::identities::rows(app, user).await {
        Ok(rows) => rows,
        Err(e) => return web::problem_page(app, ctx, e.into()),
    };
    // Why a user without a factor is here, when something sent them (shown as an error,
    // answered 200: it is guidance, not a refused form).
    let way = if app.passkeys.is_some() {
        "add a passkey or set up an authenticator app"
    } else {
        "set up an authenticator app"
    };
    let error = if !error.is_empty() || f.any() {
        error.to_owned()
    } else if !rd.is_empty() {
        format!("The page you asked for needs a second factor: {way}, then you will go on to it.")
    } else if app.settings.require_second_factor.covers(&user.roles) {
        format!("Your administrators ask for a second factor on this account: {way} to continue.")
    } else {
        String::new()
    };
    web::html(
        app,
        ctx,
        status,
        pages::Security {
            page: web::passkey_page(app, ctx, "security"),
            last_factor: !f.totp && passkeys.len() == 1,
            passkeys: passkeys
                .into_iter()
                .map(|k| pages::PasskeyRow {
                    id: k.id,
                    name: k.name,
                    created: pages::date(k.created_at),
                    last_used: k.last_used_at.map_or("never".into(), pages::date),
                    synced: k.backed_up,
                })
                .collect(),
            totp: f.totp,
            recovery_left: f.recovery_left,
            notice: notice.into(),
            error,
            password_error: password_error.into(),
            rd: rd.into(),
            identities,
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SecurityQuery {
    /// A provider just linked or unlinked (accounts::federation), for the notice.
    linked: String,
    unlinked: String,
}

async fn security_page(
    State(app): App,
    ctx: Ctx,
    q: Result<Query<SecurityQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let name = |id: &str| {
        app.providers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
    };
    let notice = match (name(&q.linked), name(&q.unlinked)) {
        (Some(n), _) => format!("{n} is linked: it signs you in from now on."),
        (None, Some(n)) => format!("{n} is unlinked: it no longer signs you in."),
        (None, None) => String::new(),
    };
    match web::signed_in(&app, &ctx, "/account/security").await {
        Ok(user) => security(&app, &ctx, &user, "", &notice, "", "").await,
        Err(r) => r,
    }
}

/// The security page with a notice or an error, for other modules' forms.
pub(super) async fn security_with(
    app: &Accounts,
    ctx: &Ctx,
    user: &User,
    notice: &str,
    error: &str,
) -> Response {
    security(app, ctx, user, "", notice, error, "").await
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
    /// Where to go once done (a step-up that sent the user to set up a factor).
    rd: String,
}

/// The signed-in user of a POST that passed the CSRF and same-site checks.
async fn poster(app: &Accounts, ctx: &Ctx, csrf: &str) -> Result<User, Response> {
    if !web::post_allowed(app, ctx, csrf) {
        return Err(web::forbidden(app, ctx));
    }
    web::signed_in(app, ctx, "/account/security").await
}

async fn begin_totp(State(app): App, ctx: Ctx, Form(f): Form<CsrfForm>) -> Response {
    let user = match poster(&app, &ctx, &f.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let rd = web::redirect_target(&app, &ctx, &f.rd).unwrap_or_default();
    match second::begin_totp(&app, &user).await {
        Ok(Some(e)) => enrol_page(&app, &ctx, StatusCode::OK, &e, &rd, ""),
        Ok(None) => {
            security(
                &app,
                &ctx,
                &user,
                "",
                "Your authenticator app is already on.",
                "",
                "",
            )
            .await
        }
        Err(p) => web::problem_page(&app, &ctx, p),
    }
}

fn enrol_page(
    app: &Accounts,
    ctx: &Ctx,
    status: StatusCode,
    e: &second::Enrolment,
    rd: &str,
    error: &str,
) -> Response {
    // The SVG goes inline: no XML declaration inside HTML.
    let svg = match e.qr_svg.find("<svg") {
        Some(i) => e.qr_svg[i..].to_owned(),
        None => String::new(),
    };
    web::html(
        app,
        ctx,
        status,
        pages::TotpEnrol {
            page: ctx.page("security"),
            // In groups of four, as apps show and take it.
            secret: e
                .secret
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            qr_svg: svg,
            rd: rd.into(),
            error: error.into(),
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CodeForm {
    csrf: String,
    code: String,
    rd: String,
}

async fn confirm_totp(State(app): App, ctx: Ctx, Form(f): Form<CodeForm>) -> Response {
    let user = match poster(&app, &ctx, &f.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let rd = web::redirect_target(&app, &ctx, &f.rd).unwrap_or_default();
    match second::confirm_totp(&app, &ctx.caller(), &user, &f.code).await {
        Ok(Some(codes)) => codes_page(
            &app,
            &ctx,
            codes,
            &rd,
            "Your authenticator app is on: signing in now asks for its code.",
        ),
        Ok(None) => {
            security(
                &app,
                &ctx,
                &user,
                "",
                "Your authenticator app is on.",
                "",
                "",
            )
            .await
        }
        Err(p) if p.code == "invalid_code" => match second::enrolment(&app, &user).await {
            Ok(Some(e)) => enrol_page(&app, &ctx, p.status, &e, &rd, &p.message),
            Ok(None) => security(&app, &ctx, &user, "", "", &p.message, "").await,
            Err(p) => web::problem_page(&app, &ctx, p),
        },
        Err(p) => web::problem_page(&app, &ctx, p),
    }
}

fn codes_page(app: &Accounts, ctx: &Ctx, codes: Vec<String>, rd: &str, notice: &str) -> Response {
    web::html(
        app,
        ctx,
        StatusCode::OK,
        pages::RecoveryCodes {
            page: ctx.page("security"),
            codes,
            next: if rd.is_empty() {
                "/account/security".into()
            } else {
                rd.into()
            },
            notice: notice.into(),
        },
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PasswordForm {
    csrf: String,
    password: String,
}

async fn remove_totp(State(app): App, ctx: Ctx, Form(f): Form<PasswordForm>) -> Response {
    let user = match poster(&app, &ctx, &f.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match second::remove_totp(&app, &ctx.caller(), &user, &f.password).await {
        Ok(()) => {
            security(
                &app,
                &ctx,
                &user,
                "",
                "Your authenticator app was removed: signing in asks for your password alone.",
                "",
                "",
            )
            .await
        }
        Err(p) if p.code == "invalid_credentials" => {
            security(&app, &ctx, &user, "", "", "", &p.message).await
        }
        Err(p) => web::problem_page(&app, &ctx, p),
    }
}

async fn recovery_codes(State(app): App, ctx: Ctx, Form(f): Form<CsrfForm>) -> Response {
    let user = match poster(&app, &ctx, &f.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match second::new_recovery_codes(&app, &ctx.caller(), &user).await {
        Ok(codes) => codes_page(
            &app,
            &ctx,
            codes,
            "",
            "A new set: the old codes no longer work.",
        ),
        Err(p) => security(&app, &ctx, &user, "", "", &p.message, "").await,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PasskeyForm {
    csrf: String,
    rd: String,
    /// `sign_in` (a passkey alone) or `second_factor` (after the password, or a step-up).
    purpose: String,
    /// The authenticator's answer, JSON (from the script).
    credential: String,
}

/// `POST /login/passkey`: the answer of the browser's passkey ceremony. Signs in with the
/// passkey alone, or finishes the pending sign-in or the step-up.
async fn passkey_login(State(app): App, ctx: Ctx, Form(f): Form<PasskeyForm>) -> Response {
    if !web::post_allowed(&app, &ctx, &f.csrf) {
        return web::forbidden(&app, &ctx);
    }
    let rd = web::redirect_target(&app, &ctx, &f.rd).unwrap_or_default();
    let ceremony = ctx.ceremony().unwrap_or_default();
    let mut r = if f.purpose == "second_factor" {
        let proof = Proof::Passkey {
            ceremony,
            credential: &f.credential,
        };
        finish_step(&app, &ctx, &rd, ("passkey", proof)).await
    } else {
        match second::passkey_sign_in(&app, &ctx.caller(), ceremony, &f.credential).await {
            Ok(done) => {
                let mut r = web::see_other(onward(&rd));
                web::completed_login_cookies(&app, r.headers_mut(), &done);
                r
            }
            Err(p) if matches!(p.code, "passkey_refused" | "ceremony_expired" | "inactive") => {
                web::login_form(&app, &ctx, p.status, "", &rd, &p.message, "")
            }
            Err(p) => web::problem_page(&app, &ctx, p),
        }
    };
    web::set_ceremony_cookie(&app, r.headers_mut(), "", Duration::ZERO);
    r
}

/// `/login/passkey-offer`: after a sign-in with a password alone, the offer to make a
/// passkey (the script goes straight on in a browser without passkeys).
async fn passkey_offer(State(app): App, ctx: Ctx, Query(q): Query<StepQuery>) -> Response {
    let rd = web::redirect_target(&app, &ctx, &q.rd).unwrap_or_default();
    if ctx.session().is_none() || app.passkeys.is_none() {
        return web::see_other(onward(&rd));
    }
    web::html(
        &app,
        &ctx,
        StatusCode::OK,
        pages::PasskeyOffer {
            page: web::passkey_page(&app, &ctx, "security"),
            rd: onward(&rd).into(),
        },
    )
}

/// "Not now": remembered, and the offer is not made again.
async fn decline_passkey_offer(State(app): App, ctx: Ctx, Form(f): Form<CsrfForm>) -> Response {
    let user = match poster(&app, &ctx, &f.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(e) = app.db.decline_passkey_offer(&user.id).await {
        return web::problem_page(&app, &ctx, e.into());
    }
    let rd = web::redirect_target(&app, &ctx, &f.rd).unwrap_or_default();
    web::see_other(onward(&rd))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NewPasskeyForm {
    csrf: String,
    rd: String,
    name: String,
    credential: String,
}

/// `POST /account/security/passkeys`: the new passkey from the browser's ceremony. A first
/// second factor comes with recovery codes, shown once.
async fn add_passkey(State(app): App, ctx: Ctx, Form(f): Form<NewPasskeyForm>) -> Response {
    let user = match poster(&app, &ctx, &f.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let rd = web::redirect_target(&app, &ctx, &f.rd).unwrap_or_default();
    let ceremony = ctx.ceremony().unwrap_or_default();
    let added =
        second::add_passkey(&app, &ctx.caller(), &user, ceremony, &f.name, &f.credential).await;
    let mut r = match added {
        Ok(Some(codes)) => codes_page(
            &app,
            &ctx,
            codes,
            &rd,
            "Your passkey is saved: you can sign in with it alone.",
        ),
        Ok(None) if !rd.is_empty() => web::see_other(&rd),
        Ok(None) => {
            security(
                &app,
                &ctx,
                &user,
                "",
                "Your passkey is saved: you can sign in with it alone.",
                "",
                "",
            )
            .await
        }
        Err(p) if p.status.is_client_error() => {
            security(&app, &ctx, &user, &rd, "", &p.message, "").await
        }
        Err(p) => web::problem_page(&app, &ctx, p),
    };
    web::set_ceremony_cookie(&app, r.headers_mut(), "", Duration::ZERO);
    r
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RenameForm {
    csrf: String,
    name: String,
}

async fn rename_passkey(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<RenameForm>,
) -> Response {
    let user = match poster(&app, &ctx, &f.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match second::rename_passkey(&app, &user, &id, &f.name).await {
        Ok(()) => security(&app, &ctx, &user, "", "The passkey is renamed.", "", "").await,
        Err(p) if p.status.is_client_error() => {
            security(&app, &ctx, &user, "", "", &p.message, "").await
        }
        Err(p) => web::problem_page(&app, &ctx, p),
    }
}

async fn remove_passkey(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<PasswordForm>,
) -> Response {
    let user = match poster(&app, &ctx, &f.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match second::remove_passkey(&app, &ctx.caller(), &user, &id, &f.password).await {
        Ok(()) => security(&app, &ctx, &user, "", "The passkey is removed.", "", "").await,
        Err(p) if p.code == "invalid_credentials" => {
            security(&app, &ctx, &user, "", "", "", &p.message).await
        }
        Err(p) if p.status.is_client_error() => {
            security(&app, &ctx, &user, "", "", &p.message, "").await
        }
        Err(p) => web::problem_page(&app, &ctx, p),
    }
}
