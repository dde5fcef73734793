//! The JSON API for single-page apps: the operations of the pages ([`super::ops`]) with the
//! same rules and field names, JSON in and out. Errors are `{"error": code, "message": …,
//! "fields": {name: message}}` with a stable `code`.
//!
//! Cross-site requests: every POST and DELETE must be `Content-Type: application/json`,
//! which a cross-site form cannot send and a cross-site script can only send after a CORS
//! preflight that gatehouse never grants, and is refused with a cross-site `Origin` or
//! `Sec-Fetch-Site`. No token is ever in a response: the session travels in its cookie.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::db::User;
use super::ops::{self, Problem};
use super::passkeys;
use super::second::{self, Proof};
use super::web::{self, Ctx};
use super::Accounts;
use crate::secret::Secret;
use crate::session::SessionKind;

type App = State<Arc<Accounts>>;

pub fn routes() -> Router<Arc<Accounts>> {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/login/second-factor", post(second_factor))
        .route("/api/security", get(security))
        .route("/api/security/totp", post(begin_totp).delete(remove_totp))
        .route("/api/security/totp/confirm", post(confirm_totp))
        .route("/api/security/recovery-codes", post(recovery_codes))
        // Passkeys. The options of a ceremony are JSON for the pages' script too, at the
        // pages' paths (which the nginx snippet routes; /api/ is the operator's to route).
        .route("/login/passkey/options", post(assertion_options))
        .route("/api/login/passkey/options", post(assertion_options))
        .route("/api/login/passkey", post(passkey_login))
        .route(
            "/account/security/passkeys/options",
            post(registration_options),
        )
        .route("/api/security/passkeys/options", post(registration_options))
        .route("/api/security/passkeys", post(add_passkey))
        .route(
            "/api/security/passkeys/{id}",
            axum::routing::patch(rename_passkey).delete(remove_passkey),
        )
        .route("/api/logout", post(logout))
        .route("/api/register", post(register))
        .route("/api/password/forgot", post(forgot))
        .route("/api/password/reset", post(reset))
        .route("/api/password/change", post(change))
        .route("/api/me", get(me))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{sid}", delete(revoke))
}

fn answer(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(p: Problem) -> Response {
    let fields: serde_json::Map<String, Value> = p
        .fields
        .0
        .iter()
        .map(|(f, m)| (f.to_string(), Value::String(m.clone())))
        .collect();
    let mut r = answer(
        p.status,
        json!({ "error": p.code, "message": p.message, "fields": fields }),
    );
    if let Some(wait) = p.retry_after {
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

fn refusal(status: StatusCode, code: &'static str, message: &str) -> Response {
    error(Problem::new(status, code, message))
}

/// The body, or the answer to a bad one; and the cross-site check every write passes.
// The Err is the finished answer, built once on a refused request: boxing buys nothing.
#[allow(clippy::result_large_err)]
fn body<T>(app: &Accounts, ctx: &Ctx, body: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    if super::guard::cross_site(ctx.headers(), &app.settings.allowed_redirect_hosts) {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "cross_site",
            "Cross-site requests are refused.",
        ));
    }
    body.map(|Json(b)| b).map_err(|e| {
        refusal(
            e.status(),
            "invalid_request",
            "Send a JSON object with Content-Type: application/json.",
        )
    })
}

/// The signed-in user, or 401.
async fn user(app: &Accounts, ctx: &Ctx) -> Result<User, Response> {
    let Some(listed) = ctx.session() else {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Sign in first.",
        ));
    };
    match ops::active_user(app, listed).await {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(refusal(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Sign in first.",
        )),
        Err(p) => Err(error(p)),
    }
}

/// A problem as the JSON API answers it.
pub(super) fn problem(p: Problem) -> Response {
    error(p)
}

/// The user as the API shows them, with the scopes their roles grant now.
async fn user_json(app: &Accounts, u: &User) -> Result<Value, Response> {
    let (roles, scopes) = app
        .roles()
        .await
        .map_err(|e| error(Problem::unavailable(&e)))?
        .of(&u.roles);
    Ok(json!({
        "id": u.id, "username": u.username, "email": u.email, "name": u.name,
        "affiliation": u.affiliation, "country": u.country,
        "email_confirmed": u.email_confirmed_at.is_some(), "roles": roles, "scopes": scopes,
        "created_at": u.created_at, "previous_login_at": u.previous_login_at,
        "previous_login_ip": u.previous_login_ip,
    }))
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(State(app): App, ctx: Ctx, b: Result<Json<LoginBody>, JsonRejection>) -> Response {
    let b = match body(&app, &ctx, b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match ops::login(&app, &ctx.caller(), &b.username, Secret::new(b.password)).await {
        Ok(ops::LoginOutcome::Done(done)) => logged_in(&app, *done).await,
        Ok(ops::LoginOutcome::SecondStep { pending, methods }) => {
            let mut r = answer(
                StatusCode::OK,
                json!({ "second_factor_required": true, "methods": methods }),
            );
            web::set_pending_cookie(&app, r.headers_mut(), pending.expose(), ops::PENDING_TTL);
            r
        }
        Err(p) => error(p),
    }
}

/// A finished sign-in: the user, and the cookies (the pending one cleared).
async fn logged_in(app: &Accounts, done: ops::LoggedIn) -> Response {
    let user = match user_json(app, &done.user).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut body = json!({ "user": user, "sid": done.issued.sid });
    if done.must_enrol {
        // --require-second-factor covers this user, who has none yet.
        body["second_factor_setup_required"] = json!(true);
    }
    let mut r = answer(StatusCode::OK, body);
    web::completed_login_cookies(app, r.headers_mut(), &done);
    r
}

#[derive(Deserialize)]
struct CodeBody {
    method: String,
    code: String,
}

/// `POST /api/login/second-factor`: finishes the sign-in pending in this browser's cookie
/// with the same answer as a finished `/api/login`; a signed-in caller steps up instead.
async fn second_factor(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<CodeBody>, JsonRejection>,
) -> Response {
    let b = match body(&app, &ctx, b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let proof = Proof::Code {
        method: &b.method,
        code: &b.code,
    };
    finish_step(&app, &ctx, proof).await
}

/// Finishes the sign-in pending in this browser's cookie with `proof`, or steps the
/// caller's session up with it.
async fn finish_step(app: &Accounts, ctx: &Ctx, proof: Proof<'_>) -> Response {
    let caller = ctx.caller();
    if let Some(pending) = ctx.pending() {
        return match second::second_step(app, &caller, pending, proof).await {
            Ok(done) => logged_in(app, done).await,
            Err(p) => error(p),
        };
    }
    let user = match user(app, ctx).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match second::step_up(app, &caller, &user, proof).await {
        Ok(issued) => {
            let shown = match user_json(app, &user).await {
                Ok(u) => u,
                Err(r) => return r,
            };
            let mut r = answer(StatusCode::OK, json!({ "user": shown, "sid": issued.sid }));
            web::set_session_cookie(
                app,
                r.headers_mut(),
                issued.token.expose(),
                app.settings.session_ttl,
            );
            r
        }
        Err(p) => error(p),
    }
}

/// `GET /api/security`: the caller's second factors.
async fn security(State(app): App, ctx: Ctx) -> Response {
    let user = match user(&app, &ctx).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let listed = match passkeys::list(&app, &user.id).await {
        Ok(l) => l,
        Err(p) => return error(p),
    };
    let identities = match super::identities::rows(&app, &user).await {
        Ok(rows) => rows,
        Err(e) => return error(e.into()),
    };
    match second::factors_of(&app, &user.id).await {
        Ok(f) => {
            let mut v = json!({
                "passkeys_available": app.passkeys.is_some(),
                "passkeys": listed,
                "totp": f.totp,
                "recovery_codes_left": f.recovery_left,
            });
            // With --identity-providers: each provider, and whether it signs this user in.
            if !app.providers.is_empty() {
                v["identities"] = identities
                    .iter()
                    .map(|r| json!({"provider": r.id, "name": r.name, "linked": r.linked, "linked_at": (r.linked).then_some(r.linked_at)}))
                    .collect();
            }
            answer(StatusCode::OK, v)
        }
        Err(p) => error(p),
    }
}

/// A ceremony's options, with its cookie (HttpOnly: the ceremony's token is never in a body).
fn challenge(app: &Accounts, c: passkeys::Challenge) -> Response {
    let mut r = answer(StatusCode::OK, c.options);
    web::set_ceremony_cookie(
        app,
        r.headers_mut(),
        c.ceremony.expose(),
        passkeys::CEREMONY_TTL,
    );
    r
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PurposeBody {
    /// `sign_in` (default: a passkey alone, discoverable) or `second_factor` (the user of
    /// the pending sign-in, or the signed-in user stepping up).
    purpose: String,
}

/// `POST /login/passkey/options` (and under /api/): the options of a passkey assertion.
async fn assertion_options(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<PurposeBody>, JsonRejection>,
) -> Response {
    let b = match body(&app, &ctx, b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let begun = match b.purpose.as_str() {
        "" | "sign_in" => passkeys::begin_assertion(&app, ctx.ip(), None).await,
        "second_factor" => match stepping_user(&app, &ctx).await {
            Ok(u) => passkeys::begin_assertion(&app, ctx.ip(), Some(&u)).await,
            Err(r) => return r,
        },
        _ => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid_fields",
                "purpose is sign_in or second_factor.",
            )
        }
    };
    match begun {
        Ok(c) => challenge(&app, c),
        Err(p) => error(p),
    }
}

/// Who a second factor is for: the user of the sign-in pending in this browser, else the
/// signed-in user (a step-up).
async fn stepping_user(app: &Accounts, ctx: &Ctx) -> Result<User, Response> {
    match ctx.pending() {
        Some(pending) => second::pending_user(app, pending).await.map_err(error),
        None => user(app, ctx).await,
    }
}

#[derive(Deserialize)]
struct AssertionBody {
    #[serde(default)]
    purpose: String,
    /// The authenticator's answer (`PublicKeyCredential`, binary fields in base64url).
    credential: Value,
}

/// `POST /api/login/passkey`: the answer to this browser's assertion: a sign-in with the
/// passkey alone (the same body as `/api/login`), or the second step or step-up.
async fn passkey_login(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<AssertionBody>, JsonRejection>,
) -> Response {
    let b = match body(&app, &ctx, b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ceremony = ctx.ceremony().unwrap_or_default();
    let credential = b.credential.to_string();
    let mut r = if b.purpose == "second_factor" {
        let proof = Proof::Passkey {
            ceremony,
            credential: &credential,
        };
        finish_step(&app, &ctx, proof).await
    } else {
        match second::passkey_sign_in(&app, &ctx.caller(), ceremony, &credential).await {
            Ok(done) => logged_in(&app, done).await,
            Err(p) => error(p),
        }
    };
    web::set_ceremony_cookie(&app, r.headers_mut(), "", std::time::Duration::ZERO);
    r
}

/// `POST /account/security/passkeys/options` (and under /api/): the options of a new
/// passkey for the signed-in user.
async fn registration_options(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<Value>, JsonRejection>,
) -> Response {
    let (_, user) = match writer(&app, &ctx, b).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match passkeys::begin_registration(&app, ctx.ip(), &user).await {
        Ok(c) => challenge(&app, c),
        Err(p) => error(p),
    }
}

#[derive(Deserialize)]
struct NewPasskeyBody {
    name: String,
    /// The authenticator's answer (`PublicKeyCredential` of a creation).
    credential: Value,
}

/// `POST /api/security/passkeys`: the new passkey; the first second factor's recovery
/// codes come back once (`null` when the user had some).
async fn add_passkey(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<NewPasskeyBody>, JsonRejection>,
) -> Response {
    let (b, user) = match writer(&app, &ctx, b).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ceremony = ctx.ceremony().unwrap_or_default();
    let credential = b.credential.to_string();
    let added =
        second::add_passkey(&app, &ctx.caller(), &user, ceremony, &b.name, &credential).await;
    let mut r = match added {
        Ok(codes) => answer(StatusCode::CREATED, json!({ "recovery_codes": codes })),
        Err(p) => error(p),
    };
    web::set_ceremony_cookie(&app, r.headers_mut(), "", std::time::Duration::ZERO);
    r
}

#[derive(Deserialize)]
struct RenameBody {
    name: String,
}

/// `PATCH /api/security/passkeys/{id}`: a new name.
async fn rename_passkey(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    b: Result<Json<RenameBody>, JsonRejection>,
) -> Response {
    let (b, user) = match writer(&app, &ctx, b).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match second::rename_passkey(&app, &user, &id, &b.name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => error(p),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MaybePasswordBody {
    /// Asked when the passkey is the user's last second factor.
    password: String,
}

/// `DELETE /api/security/passkeys/{id}`: removes it (the password first when it is the
/// last second factor).
async fn remove_passkey(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    b: Result<Json<MaybePasswordBody>, JsonRejection>,
) -> Response {
    let (b, user) = match writer(&app, &ctx, b).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match second::remove_passkey(&app, &ctx.caller(), &user, &id, &b.password).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => error(p),
    }
}

/// `POST /api/security/totp`: starts enrolling an authenticator app (409 when one is
/// confirmed): its secret and `otpauth://` URI, once.
async fn begin_totp(State(app): App, ctx: Ctx, b: Result<Json<Value>, JsonRejection>) -> Response {
    let (_, user) = match writer(&app, &ctx, b).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match second::begin_totp(&app, &user).await {
        Ok(Some(e)) => answer(StatusCode::OK, json!({ "secret": e.secret, "uri": e.uri })),
        Ok(None) => refusal(
            StatusCode::CONFLICT,
            "already_enrolled",
            "An authenticator app is already set up: remove it first.",
        ),
        Err(p) => error(p),
    }
}

#[derive(Deserialize)]
struct ConfirmBody {
    code: String,
}

/// `POST /api/security/totp/confirm`: the first code confirms the app; the first set of
/// recovery codes comes back once (`null` when the user had some).
async fn confirm_totp(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<ConfirmBody>, JsonRejection>,
) -> Response {
    let (b, user) = match writer(&app, &ctx, b).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match second::confirm_totp(&app, &ctx.caller(), &user, &b.code).await {
        Ok(codes) => answer(StatusCode::OK, json!({ "recovery_codes": codes })),
        Err(p) => error(p),
    }
}

#[derive(Deserialize)]
struct PasswordBody {
    password: String,
}

/// `DELETE /api/security/totp`: removes the app and the recovery codes; the password first.
async fn remove_totp(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<PasswordBody>, JsonRejection>,
) -> Response {
    let (b, user) = match writer(&app, &ctx, b).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match second::remove_totp(&app, &ctx.caller(), &user, &b.password).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => error(p),
    }
}

/// `POST /api/security/recovery-codes`: a new set, once; the old one is void.
async fn recovery_codes(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<Value>, JsonRejection>,
) -> Response {
    let (_, user) = match writer(&app, &ctx, b).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match second::new_recovery_codes(&app, &ctx.caller(), &user).await {
        Ok(codes) => answer(StatusCode::OK, json!({ "recovery_codes": codes })),
        Err(p) => error(p),
    }
}

/// A signed-in user's write: the body (after the cross-site check), then the user.
pub(super) async fn writer<T>(
    app: &Accounts,
    ctx: &Ctx,
    b: Result<Json<T>, JsonRejection>,
) -> Result<(T, User), Response> {
    let b = body(app, ctx, b)?;
    Ok((b, user(app, ctx).await?))
}

async fn logout(State(app): App, ctx: Ctx, b: Result<Json<Value>, JsonRejection>) -> Response {
    if let Err(r) = body(&app, &ctx, b) {
        return r;
    }
    if let (Some(token), Some(listed)) = (ctx.token(), ctx.session()) {
        if let Err(p) =
            ops::logout(&app, &ctx.caller(), token, &listed.session.sub, &listed.sid).await
        {
            return error(p);
        }
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    web::set_session_cookie(&app, r.headers_mut(), "", std::time::Duration::ZERO);
    r
}

#[derive(Deserialize)]
struct RegisterBody {
    username: String,
    email: String,
    #[serde(default)]
    name: String,
    password: String,
    #[serde(default)]
    invite: String,
}

async fn register(
    State(app): App,
    ctx: Ctx,
    b: Result<Json<RegisterBody>, JsonRejection>,
) -> Response {
    let b = match body(&app, &ctx, b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let registering = ops::Registering {
        username: &b.username,
        email: &b.email,
        name: &b.name,
        password: &b.password,
        invite: &b.invite,
    };
    match ops::register(&app, &ctx.caller(), &registering).await {
        Ok(ops::Registered::CheckMail) => {
            answer(StatusCode::ACCEPTED, json!({ "status": "check_mail" }))
        }
        Ok(ops::Registered::Ready(_)) => answer(StatusCode::CREATED, json!({ "status": "ready" })),
        Err(p) => error(p),
    }
}

#[derive(Deserialize)]
struct ForgotBody {
    email: String,
}

async fn forgot(State(app): App, ctx: Ctx, b: Result<Json<ForgotBody>, JsonRejection>) -> Response {
    let b = match body(&app, &ctx, b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match ops::forgot(&app, &ctx.caller(), &b.email).await {
        Ok(()) => answer(StatusCode::ACCEPTED, json!({ "status": "check_mail" })),
        Err(p) => error(p),
    }
}

#[derive(Deserialize)]
struct ResetBody {
    token: String,
    password: String,
}

async fn reset(State(app): App, ctx: Ctx, b: Result<Json<ResetBody>, JsonRejection>) -> Response {
    let b = match body(&app, &ctx, b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match ops::reset(&app, &ctx.caller(), &b.token, &b.password).await {
        Ok(_) => answer(StatusCode::OK, json!({ "status": "password_set" })),
        Err(p) => error(p),
    }
}

#[derive(Deserialize)]
struct ChangeBody {
    current_password: String,
    password: String,
}

async fn change(State(app): App, ctx: Ctx, b: Result<Json<ChangeBody>, JsonRejection>) -> Response {
    let b = match body(&app, &ctx, b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let user = match user(&app, &ctx).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match ops::change_password(&app, &ctx.caller(), &user, &b.current_password, &b.password).await {
        Ok(()) => answer(StatusCode::OK, json!({ "status": "password_changed" })),
        Err(p) => error(p),
    }
}

async fn me(State(app): App, ctx: Ctx) -> Response {
    match user(&app, &ctx).await {
        Ok(u) => match user_json(&app, &u).await {
            Ok(shown) => answer(StatusCode::OK, shown),
            Err(r) => r,
        },
        Err(r) => r,
    }
}

async fn sessions(State(app): App, ctx: Ctx) -> Response {
    let user = match user(&app, &ctx).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let current = ctx.session().map(|l| l.sid.clone());
    match app.gateway.sessions().list(&user.id).await {
        Ok(list) => {
            let items: Vec<Value> = list
                .into_iter()
                .filter(|l| l.session.kind == SessionKind::User)
                .map(|l| {
                    json!({
                        "sid": l.sid,
                        "current": current.as_deref() == Some(l.sid.as_str()),
                        "device": super::guard::device(l.session.user_agent.as_deref()),
                        "ip": l.session.ip,
                        "created_at": l.session.created_at,
                        "last_seen": l.session.last_seen.unwrap_or(l.session.created_at),
                        "expires_at": l.session.expires_at,
                    })
                })
                .collect();
            answer(StatusCode::OK, json!({ "sessions": items }))
        }
        Err(e) => error(e.into()),
    }
}

async fn revoke(State(app): App, ctx: Ctx, Path(sid): Path<String>) -> Response {
    if super::guard::cross_site(ctx.headers(), &app.settings.allowed_redirect_hosts) {
        return refusal(
            StatusCode::FORBIDDEN,
            "cross_site",
            "Cross-site requests are refused.",
        );
    }
    let user = match user(&app, &ctx).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match app.gateway.sessions().revoke_sid(&user.id, &sid).await {
        Ok(true) => {
            crate::audit!("session_revoked", user.id, ctx.ip(), sid = sid.as_str());
            StatusCode::NO_CONTENT.into_response()
        }
        // Another user's session, or none: the same 404.
        Ok(false) => refusal(StatusCode::NOT_FOUND, "not_found", "No such session."),
        Err(e) => error(e.into()),
    }
}
