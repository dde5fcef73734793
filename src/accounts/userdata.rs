//! A user's own data: everything stored about them, as one JSON document (`/account/export`),
//! and its deletion (`/account/delete`, the admin console, `gatehouse user delete`), the same
//! for every caller.
//!
//! Deletion ends everything first (the modules' grants, every session and token), then in one
//! transaction deletes every row about the user (accounts' and each module's,
//! [`super::followers::keeps`]), leaves a tombstone so the id is never given to anyone else,
//! replaces the id in the audit trail by a random pseudonym, and writes `user.deleted`.
//! Sessions are ended once more after it: one signed in meanwhile cannot outlive its user.

use serde_json::{json, Value};

use super::audit;
use super::db::{self, commit_with, Db, DbError, Event, User};
use super::followers::{self, EndError, Ended, Reason};
use super::roles::RoleError;
use crate::session::SessionKind;
use crate::sessions::Sessions;

/// Everything stored about `user`: profile, sessions and tokens (never a token or hash),
/// identities, second factors, audit events about them, and each module's part.
pub async fn export(db: &Db, sessions: &Sessions<'_>, user: &User) -> Result<Value, EndError> {
    let listed = sessions.list(&user.id).await?;
    let sessions: Vec<Value> = listed
        .iter()
        .map(|l| {
            let s = &l.session;
            json!({
                "sid": l.sid,
                "kind": match s.kind {
                    SessionKind::User => "browser",
                    SessionKind::Client => "application",
                    SessionKind::Personal => "personal_token",
                },
                "name": s.label, "client_id": s.client_id, "scopes": s.scopes,
                "created_at": s.created_at, "expires_at": s.expires_at,
                "last_seen": s.last_seen, "ip": s.ip, "user_agent": s.user_agent,
                "amr": s.amr, "idp": s.idp,
            })
        })
        .collect();
    let identities: Vec<Value> = db
        .identities(&user.id)
        .await?
        .iter()
        .map(|i| {
            json!({"provider": i.provider, "subject": i.subject, "created_at": i.created_at,
                "last_used_at": i.last_used_at})
        })
        .collect();
    let passkeys: Vec<Value> = db
        .passkeys(&user.id)
        .await?
        .iter()
        .map(
            |p| json!({"name": p.name, "created_at": p.created_at, "last_used_at": p.last_used_at}),
        )
        .collect();
    let factors = db.factors(&user.id).await?;
    let events = audit::list(
        db,
        &audit::Filter {
            actor: Some(user.id.clone()),
            limit: 100_000,
            ..Default::default()
        },
    )
    .await?;
    let mut doc = json!({
        "exported_at": audit::rfc3339_ms(crate::store::counters::now_ms()),
        "profile": {
            "id": user.id, "username": user.username, "email": user.email,
            "email_confirmed_at": user.email_confirmed_at, "name": user.name,
            "affiliation": user.affiliation, "country": user.country, "roles": user.roles,
            "active": user.active, "created_at": user.created_at, "updated_at": user.updated_at,
            "login_at": user.login_at, "login_ip": user.login_ip,
            "previous_login_at": user.previous_login_at,
            "previous_login_ip": user.previous_login_ip, "login_count": user.login_count,
            "has_password": user.password_hash.is_some(),
        },
        "sessions": sessions,
        "identities": identities,
        "second_factors": {
            "authenticator_app": factors.totp,
            "passkeys": passkeys,
            "recovery_codes_left": factors.recovery_left,
        },
        "audit_events": events.iter().map(audit::json).collect::<Vec<_>>(),
    });
    if let Value::Object(map) = &mut doc {
        map.extend(followers::export(db, &user.id).await?);
    }
    Ok(doc)
}

/// Deletes `user` and what is stored about them (never the last active admin); what was
/// ended. The caller audits it, with [`pseudonym`]'s answer as the target.
pub async fn delete(
    db: &Db,
    sessions: &Sessions<'_>,
    user: &User,
    pseudonym: &str,
) -> Result<Ended, RoleError> {
    super::roles::keep_an_admin(db, user, false, false).await?;
    let mut ended =
        followers::end_credentials(db, sessions, &user.id, None, Reason::Deleted).await?;
    // Audit rows still on their way to the table are written before the ids are replaced.
    audit::settle().await;
    let mut tx = db.pool().begin().await.map_err(DbError::from)?;
    db::erase_user_rows(&mut tx, &user.id)
        .await
        .map_err(DbError::from)?;
    followers::forget(&mut tx, &user.id)
        .await
        .map_err(DbError::from)?;
    audit::pseudonymise(&mut tx, &user.id, pseudonym)
        .await
        .map_err(DbError::from)?;
    commit_with(tx, &[Event::new("user.deleted", json!({"user": user.id}))]).await?;
    ended.sessions += sessions.revoke_user(&user.id, None).await?;
    Ok(ended)
}

/// A deleted user's name in the audit trail: random, the same in every row of theirs, and
/// kept nowhere else.
pub fn pseudonym() -> String {
    format!("deleted:{}", db::random_token(9))
}

// ---------------------------------------------------------------------------------------
// The pages: `/account/export` and `/account/delete`

use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::web::{self, Ctx};
use super::{pages, Accounts};

/// How recent a sign-in deletion asks for: the admin console's re-authentication too.
pub const REAUTH_SECS: u64 = 15 * 60;

type App = State<Arc<Accounts>>;

pub fn routes() -> Router<Arc<Accounts>> {
    Router::new()
        .route("/account/export", get(export_download))
        .route("/account/delete", get(delete_page).post(delete_account))
}

/// Sends the browser to sign in again when its sign-in is older than [`REAUTH_SECS`]
/// (`/login?max_age=…`, which asks for the user's strongest way in), then back to `here`.
pub(crate) fn reauthenticate(ctx: &Ctx, here: &str) -> Option<Response> {
    let listed = ctx.session()?;
    let now = crate::session::unix_now();
    (!listed.session.authenticated_within(REAUTH_SECS, now)).then(|| {
        web::see_other(&format!(
            "/login?max_age={REAUTH_SECS}&rd={}",
            crate::forward::percent_encode(here)
        ))
    })
}

async fn export_download(State(app): App, ctx: Ctx) -> Response {
    let user = match web::signed_in(&app, &ctx, "/account/export").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let doc = match export(&app.db, &app.gateway.sessions(), &user).await {
        Ok(d) => d,
        Err(e) => return web::unavailable(&app, &ctx, &e),
    };
    crate::audit!("data_exported", user.id, ctx.ip());
    let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-data.json\"",
        user.username.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_"
        )
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn delete_form(
    app: &Accounts,
    ctx: &Ctx,
    status: StatusCode,
    user: &User,
    error: &str,
) -> Response {
    web::html(
        app,
        ctx,
        status,
        pages::AccountDelete {
            page: ctx.page("account"),
            username: user.username.clone(),
            email: user.email.clone(),
            error: error.to_owned(),
        },
    )
}

async fn delete_page(State(app): App, ctx: Ctx) -> Response {
    let user = match web::signed_in(&app, &ctx, "/account/delete").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Some(again) = reauthenticate(&ctx, "/account/delete") {
        return again;
    }
    delete_form(&app, &ctx, StatusCode::OK, &user, "")
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DeleteForm {
    csrf: String,
    confirm: String,
}

async fn delete_account(State(app): App, ctx: Ctx, Form(f): Form<DeleteForm>) -> Response {
    if !web::post_allowed(&app, &ctx, &f.csrf) {
        return web::forbidden(&app, &ctx);
    }
    let user = match web::signed_in(&app, &ctx, "/account/delete").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Some(again) = reauthenticate(&ctx, "/account/delete") {
        return again;
    }
    if !f.confirm.trim().eq_ignore_ascii_case(&user.username) {
        return delete_form(
            &app,
            &ctx,
            StatusCode::BAD_REQUEST,
            &user,
            "Type your username exactly as shown above.",
        );
    }
    match delete_account_of(&app, ctx.ip(), None, &user).await {
        Ok(_) => {}
        Err(RoleError::Refused(why)) => {
            return delete_form(&app, &ctx, StatusCode::CONFLICT, &user, &why)
        }
        Err(e) => return web::unavailable(&app, &ctx, &e),
    }
    let mut r = web::message(
        &app,
        &ctx.signed_out(),
        StatusCode::OK,
        "Your account is deleted",
        &[
            "Everything we kept about you is gone, and you are signed out everywhere.",
            "Thank you for having been with us.",
        ],
        Some(("/", "Go to the home page")),
    );
    web::set_session_cookie(&app, r.headers_mut(), "", std::time::Duration::ZERO);
    r
}

/// Deletes `user` for the pages and the admin console (`by`: the admin; `None`: the user
/// themselves): [`delete`], audited, and a goodbye mailed.
pub(crate) async fn delete_account_of(
    app: &Accounts,
    ip: std::net::IpAddr,
    by: Option<&User>,
    user: &User,
) -> Result<Ended, RoleError> {
    let name = pseudonym();
    let ended = delete(&app.db, &app.gateway.sessions(), user, &name).await?;
    let actor = by.map_or(name.as_str(), |a| a.id.as_str());
    crate::audit!(
        "user_deleted",
        actor,
        ip,
        target = name.as_str(),
        sessions_ended = ended.sessions,
        grants_ended = ended.grants
    );
    let who = if by.is_some() {
        "an administrator"
    } else {
        "you"
    };
    let body = format!(
        "Hello {},\n\nyour account at {} is deleted, as {who} asked: your profile and the ways \
         you signed in are gone, and every session and token has ended.\n\nIf you did not \
         ask for this, reply to this message.\n",
        user.username, app.settings.public_url,
    );
    let subject = "Your account is deleted".to_owned();
    let vars = serde_json::json!({"by": who});
    super::ops::mail(app, user, &user.email, "goodbye", vars, (subject, body));
    Ok(ended)
}
