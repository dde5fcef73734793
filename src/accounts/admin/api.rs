//! The admin console's JSON API (`/api/admin/…`): the pages' checks and operations, answered
//! as JSON: 401 signed out, 403 not an admin (or not signed in recently enough, or a write
//! from another site), 404 unknown, 409 refused by a rule, 503 the store.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    audit_filter, check, event_of, kind_name, outbox_status, set_roles, status_of, user_do,
    AuditQuery, Closed, OutboxQuery, Outcome, UsersQuery, PAGE,
};
use crate::accounts::db::User;
use crate::accounts::roles::{self, RoleError};
use crate::accounts::web::Ctx;
use crate::accounts::{audit, outbox, userdata, Accounts};

type App = State<Arc<Accounts>>;

pub(super) fn routes() -> Router<Arc<Accounts>> {
    Router::new()
        .route("/api/admin/users", get(api_users))
        .route(
            "/api/admin/users/{id}",
            get(api_user).patch(api_user_patch).delete(api_user_delete),
        )
        .route("/api/admin/roles", get(api_roles).post(api_role_create))
        .route(
            "/api/admin/roles/{name}",
            axum::routing::patch(api_role_patch).delete(api_role_delete),
        )
        .route("/api/admin/audit", get(api_audit))
        .route("/api/admin/outbox", get(api_outbox))
        .route("/api/admin/outbox/{id}/retry", post(api_outbox_retry))
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = (status, Json(json!({"error": code, "message": message}))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_ok(body: Value) -> Response {
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_unavailable(e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "admin API: the store did not answer");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Try again in a moment.",
    )
}

fn json_role_error(e: RoleError) -> Response {
    match e {
        RoleError::Refused(why) => json_error(StatusCode::CONFLICT, "refused", &why),
        RoleError::Unknown(n) => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no role {n:?}"),
        ),
        e => json_unavailable(&e),
    }
}

/// The admin of an API request (a write also from this site: the Origin check the JSON API
/// makes).
async fn api_admin(app: &Accounts, ctx: &Ctx, write: bool) -> Result<User, Response> {
    if write
        && crate::accounts::guard::cross_site(ctx.headers(), &app.settings.allowed_redirect_hosts)
    {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "cross_site",
            "Requests must come from this site.",
        ));
    }
    check(app, ctx, "/admin").await.map_err(|c| match c {
        Closed::SignIn(to) if ctx.session().is_none() => {
            let _ = to;
            json_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Sign in first.",
            )
        }
        Closed::SignIn(_) => json_error(
            StatusCode::FORBIDDEN,
            "reauthenticate",
            "Sign in again (within the last 15 minutes, with your second factor when required).",
        ),
        Closed::Forbidden => json_error(StatusCode::FORBIDDEN, "forbidden", "Administrators only."),
        Closed::Page(_) => json_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Sign in first.",
        ),
    })
}

/// A write's admin and its JSON body (`shape` says what to send when it does not parse).
async fn api_write<T>(
    app: &Accounts,
    ctx: &Ctx,
    body: Result<Json<T>, JsonRejection>,
    shape: &str,
) -> Result<(User, T), Response> {
    let by = api_admin(app, ctx, true).await?;
    match body {
        Ok(Json(b)) => Ok((by, b)),
        Err(_) => Err(json_error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            &format!("Send JSON: {shape}."),
        )),
    }
}

fn user_json(u: &User) -> Value {
    let (status, _) = status_of(u);
    json!({
        "id": u.id, "username": u.username, "email": u.email, "name": u.name,
        "affiliation": u.affiliation, "country": u.country, "status": status,
        "active": u.active, "email_confirmed": u.email_confirmed_at.is_some(),
        "roles": crate::accounts::config::role_names(&u.roles), "created_at": u.created_at,
        "login_at": u.login_at, "login_count": u.login_count,
    })
}

async fn api_users(
    State(app): App,
    ctx: Ctx,
    q: Result<Query<UsersQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    if let Err(r) = api_admin(&app, &ctx, false).await {
        return r;
    }
    match app.db.search_users(&q.to_db()).await {
        Ok((users, total)) => json_ok(json!({
            "total": total, "page": q.page.max(1), "per_page": PAGE,
            "users": users.iter().map(user_json).collect::<Vec<_>>(),
        })),
        Err(e) => json_unavailable(&e),
    }
}

async fn api_user_of(app: &Accounts, id: &str) -> Result<User, Response> {
    match app.db.user(id).await {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such user.",
        )),
        Err(e) => Err(json_unavailable(&e)),
    }
}

async fn api_user(State(app): App, ctx: Ctx, Path(id): Path<String>) -> Response {
    if let Err(r) = api_admin(&app, &ctx, false).await {
        return r;
    }
    let user = match api_user_of(&app, &id).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let sessions = match app.gateway.sessions().list(&user.id).await {
        Ok(l) => l,
        Err(e) => return json_unavailable(&e),
    };
    let mut body = user_json(&user);
    body["sessions"] = sessions
        .iter()
        .map(|l| {
            json!({"sid": l.sid, "kind": kind_name(l.session.kind), "ip": l.session.ip,
                "user_agent": l.session.user_agent, "created_at": l.session.created_at,
                "last_seen": l.session.last_seen, "name": l.session.label})
        })
        .collect();
    json_ok(body)
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UserPatch {
    active: Option<bool>,
    roles: Option<Vec<String>>,
    /// `reset_link`, `resend_confirmation`, `reset_second_factors`, `revoke_sessions`.
    action: Option<String>,
}

async fn api_user_patch(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Result<Json<UserPatch>, JsonRejection>,
) -> Response {
    let (by, patch) = match api_write(&app, &ctx, body, "{\"active\", \"roles\", \"action\"}").await
    {
        Ok(both) => both,
        Err(r) => return r,
    };
    let mut user = match api_user_of(&app, &id).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut steps: Vec<(&str, Outcome)> = Vec::new();
    if let Some(active) = patch.active {
        let action = if active { "activate" } else { "deactivate" };
        if let Some(o) = user_do(&app, &user, action).await {
            steps.push((event_of(action), o));
        }
    }
    if let Some(roles) = &patch.roles {
        user = match api_user_of(&app, &id).await {
            Ok(u) => u,
            Err(r) => return r,
        };
        steps.push(("user_roles_set", set_roles(&app, &user, roles).await));
    }
    if let Some(action) = &patch.action {
        let Some(outcome) = user_do(&app, &user, action).await else {
            return json_error(StatusCode::BAD_REQUEST, "invalid_action", "Unknown action.");
        };
        steps.push((event_of(action), outcome));
    }
    let mut done = Vec::new();
    for (event, outcome) in steps {
        match outcome {
            Ok(what) => {
                crate::audit!(event, by.id, ctx.ip(), target = user.id.as_str());
                done.push(what);
            }
            Err(e) => return json_role_error(e),
        }
    }
    match api_user_of(&app, &id).await {
        Ok(u) => json_ok(json!({"user": user_json(&u), "done": done})),
        Err(r) => r,
    }
}

async fn api_user_delete(State(app): App, ctx: Ctx, Path(id): Path<String>) -> Response {
    let by = match api_admin(&app, &ctx, true).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let user = match api_user_of(&app, &id).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match userdata::delete_account_of(&app, ctx.ip(), Some(&by), &user).await {
        Ok(n) => json_ok(
            json!({"deleted": user.id, "sessions_ended": n.sessions, "grants_ended": n.grants}),
        ),
        Err(e) => json_role_error(e),
    }
}

async fn api_roles(State(app): App, ctx: Ctx) -> Response {
    if let Err(r) = api_admin(&app, &ctx, false).await {
        return r;
    }
    match roles::list(&app.db).await {
        Ok(list) => json_ok(json!({"roles": list})),
        Err(e) => json_unavailable(&e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RoleBody {
    name: String,
    scopes: Option<Vec<String>>,
    description: Option<String>,
}

async fn api_role_create(
    State(app): App,
    ctx: Ctx,
    body: Result<Json<RoleBody>, JsonRejection>,
) -> Response {
    let (by, b) = match api_write(&app, &ctx, body, "{\"name\", \"scopes\", \"description\"}").await
    {
        Ok(both) => both,
        Err(r) => return r,
    };
    let scopes = b.scopes.unwrap_or_default();
    let description = b.description.unwrap_or_default();
    match roles::create(&app.db, &b.name, &description, &scopes).await {
        Ok(()) => {
            crate::audit!("role_created", by.id, ctx.ip(), target = b.name.as_str());
            match roles::get(&app.db, &b.name).await {
                Ok(r) => {
                    let mut resp = json_ok(json!(r));
                    *resp.status_mut() = StatusCode::CREATED;
                    resp
                }
                Err(e) => json_role_error(e),
            }
        }
        Err(e) => json_role_error(e),
    }
}

async fn api_role_patch(
    State(app): App,
    ctx: Ctx,
    Path(name): Path<String>,
    body: Result<Json<RoleBody>, JsonRejection>,
) -> Response {
    let (by, b) = match api_write(&app, &ctx, body, "{\"scopes\", \"description\"}").await {
        Ok(both) => both,
        Err(r) => return r,
    };
    let sessions = app.gateway.sessions();
    match roles::update(
        &app.db,
        &sessions,
        &name,
        b.description.as_deref(),
        b.scopes.as_deref(),
    )
    .await
    {
        Ok(n) => {
            crate::audit!(
                "role_updated",
                by.id,
                ctx.ip(),
                target = name.as_str(),
                sessions_ended = n
            );
            match roles::get(&app.db, &name).await {
                Ok(r) => json_ok(json!({"role": r, "sessions_ended": n})),
                Err(e) => json_role_error(e),
            }
        }
        Err(e) => json_role_error(e),
    }
}

async fn api_role_delete(State(app): App, ctx: Ctx, Path(name): Path<String>) -> Response {
    let by = match api_admin(&app, &ctx, true).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match roles::delete(&app.db, &app.gateway.sessions(), &name).await {
        Ok(n) => {
            crate::audit!(
                "role_deleted",
                by.id,
                ctx.ip(),
                target = name.as_str(),
                users = n
            );
            json_ok(json!({"deleted": name, "users": n}))
        }
        Err(e) => json_role_error(e),
    }
}

async fn api_audit(
    State(app): App,
    ctx: Ctx,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    if let Err(r) = api_admin(&app, &ctx, false).await {
        return r;
    }
    let filter = match audit_filter(&app, &q).await {
        Ok(f) => f,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, "invalid_since", &why),
    };
    match audit::list(&app.db, &filter).await {
        Ok(events) => {
            json_ok(json!({"events": events.iter().map(audit::json).collect::<Vec<_>>()}))
        }
        Err(e) => json_unavailable(&e),
    }
}

async fn api_outbox(
    State(app): App,
    ctx: Ctx,
    q: Result<Query<OutboxQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    if let Err(r) = api_admin(&app, &ctx, false).await {
        return r;
    }
    match outbox::list(&app.db, outbox_status(&q.status)).await {
        Ok(items) => json_ok(json!({"items": items})),
        Err(e) => json_unavailable(&e),
    }
}

async fn api_outbox_retry(State(app): App, ctx: Ctx, Path(id): Path<String>) -> Response {
    let by = match api_admin(&app, &ctx, true).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match outbox::retry(&app.db, &id).await {
        Ok(true) => {
            crate::audit!("outbox_retried", by.id, ctx.ip(), target = id.as_str());
            json_ok(json!({"retried": id}))
        }
        Ok(false) => json_error(StatusCode::NOT_FOUND, "not_found", "No such item waiting."),
        Err(e) => json_unavailable(&e),
    }
}
