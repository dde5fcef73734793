//! The admin console (`/admin`, role `admin`) and its JSON API (`/api/admin/…`, [`api`]):
//! users, roles, the audit trail and the outbox, on the same operations as the command line
//! ([`super::manage`], [`super::roles`], [`super::userdata`]).
//!
//! - **Access.** Signed in, holding `admin`, within the last [`REAUTH_SECS`] (else off to
//!   sign in again and back), and with a second factor when `--require-second-factor`
//!   covers admins. Anyone else gets 403 everywhere under `/admin`.
//! - **Every form has CSRF; every action is audited** with the admin as the actor and the
//!   user, role or item as the target.
//! - **Modules** add their tabs ([`panel`]) and their part of a user's page
//!   ([`user_sections`]); the registry adds clients and authorized applications. accounts
//!   names none of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::Value;

use super::db::{DbError, User, UserQuery};
use super::pages::{self, AdminNav, AuditRow};
use super::roles::{self, RoleError};
use super::userdata::{self, REAUTH_SECS};
use super::web::{self, Ctx};
use super::{audit, manage, outbox, Accounts};
use crate::session::SessionKind;

mod api;

type App = State<Arc<Accounts>>;

/// Users per page of the list.
pub(super) const PAGE: i64 = 25;

// ---------------------------------------------------------------------------------------
// The modules' parts

/// A tab a module adds: its path (under `/admin/`) and title.
static PANELS: RwLock<Vec<(&'static str, &'static str)>> = RwLock::new(Vec::new());

/// Adds a module's tab (once per path); the module routes the path itself, behind [`admin`].
pub fn panel(path: &'static str, title: &'static str) {
    let mut all = PANELS.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|(p, _)| *p == path) {
        all.push((path, title));
    }
}

/// A module's sections of a user's page.
pub type UserSections = for<'a> fn(
    &'a Accounts,
    &'a User,
) -> Pin<
    Box<dyn Future<Output = Result<Vec<pages::AdminSection>, DbError>> + Send + 'a>,
>;
static SECTIONS: RwLock<Vec<(&'static str, UserSections)>> = RwLock::new(Vec::new());

/// Adds a module's sections to every user's page (once per name).
pub fn user_sections(name: &'static str, f: UserSections) {
    let mut all = SECTIONS.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|(n, _)| *n == name) {
        all.push((name, f));
    }
}

/// The navigation of a page in `section`.
pub fn nav(section: &str, notice: &str, error: &str) -> AdminNav {
    AdminNav {
        section: section.to_owned(),
        panels: PANELS
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect(),
        notice: notice.to_owned(),
        error: error.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Access

/// Why the console is closed to this request, as a page.
pub(super) enum Closed {
    /// Not signed in, or signed in too long ago, or without the second factor: go there.
    SignIn(String),
    /// Not an admin.
    Forbidden,
    /// The answer the pages already chose (an inactive user, the store down).
    Page(Response),
}

pub(super) async fn check(app: &Accounts, ctx: &Ctx, here: &str) -> Result<User, Closed> {
    let Some(listed) = ctx.session() else {
        return Err(Closed::SignIn(format!(
            "/login?rd={}",
            crate::forward::percent_encode(here)
        )));
    };
    let user = web::signed_in(app, ctx, here).await.map_err(Closed::Page)?;
    if !user.roles.iter().any(|r| r == "admin") {
        return Err(Closed::Forbidden);
    }
    let session = &listed.session;
    if !session.authenticated_within(REAUTH_SECS, crate::session::unix_now()) {
        return Err(Closed::SignIn(format!(
            "/login?max_age={REAUTH_SECS}&rd={}",
            crate::forward::percent_encode(here)
        )));
    }
    let roles = super::config::role_names(&user.roles);
    if app.settings.require_second_factor.covers(&roles) && !session.has_second_factor() {
        return Err(Closed::SignIn(format!(
            "/login?acr_values={}&rd={}",
            crate::session::ACR_TWO_FACTORS,
            crate::forward::percent_encode(here)
        )));
    }
    Ok(user)
}

/// The admin making this request, or the page that turns them away.
pub(crate) async fn admin(app: &Accounts, ctx: &Ctx, here: &str) -> Result<User, Response> {
    check(app, ctx, here).await.map_err(|c| match c {
        Closed::SignIn(to) => web::see_other(&to),
        Closed::Forbidden => web::message(
            app,
            ctx,
            StatusCode::FORBIDDEN,
            "Administrators only",
            &["This part of the site is for administrators. Your account does not have the admin role."],
            Some(("/account", "Go to your account")),
        ),
        Closed::Page(r) => r,
    })
}

/// [`admin`] for a form: from this site, with its CSRF token.
pub(crate) async fn admin_post(
    app: &Accounts,
    ctx: &Ctx,
    csrf: &str,
    here: &str,
) -> Result<User, Response> {
    if !web::post_allowed(app, ctx, csrf) {
        return Err(web::forbidden(app, ctx));
    }
    admin(app, ctx, here).await
}

// ---------------------------------------------------------------------------------------
// Routes

pub fn routes() -> Router<Arc<Accounts>> {
    Router::new()
        .route("/admin", get(home))
        .route("/admin/users", get(users_page))
        .route("/admin/users/{id}", get(user_page))
        .route("/admin/users/{id}/action", post(user_action))
        .route("/admin/users/{id}/roles", post(user_roles))
        .route("/admin/users/{id}/sessions", post(user_sessions))
        .route("/admin/users/{id}/delete", post(user_delete))
        .route("/admin/roles", get(roles_page).post(role_create))
        .route("/admin/roles/{name}", post(role_change))
        .route("/admin/audit", get(audit_page))
        .route("/admin/outbox", get(outbox_page))
        .route("/admin/outbox/{id}/retry", post(outbox_retry))
        .route("/admin/{*rest}", get(unknown).post(unknown))
        .merge(api::routes())
}

async fn home(State(app): App, ctx: Ctx) -> Response {
    match admin(&app, &ctx, "/admin").await {
        Ok(_) => web::see_other("/admin/users"),
        Err(r) => r,
    }
}

/// Any other path under `/admin`: 403 to non-admins like the rest, 404 to admins.
async fn unknown(State(app): App, ctx: Ctx) -> Response {
    match admin(&app, &ctx, "/admin").await {
        Ok(_) => web::message(
            &app,
            &ctx,
            StatusCode::NOT_FOUND,
            "Page not found",
            &["There is nothing at this address."],
            Some(("/admin", "Go to the admin console")),
        ),
        Err(r) => r,
    }
}

// ---------------------------------------------------------------------------------------
// Users

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct UsersQuery {
    q: String,
    status: String,
    role: String,
    sort: String,
    page: i64,
}

impl UsersQuery {
    pub(super) fn to_db(&self) -> UserQuery {
        UserQuery {
            text: self.q.chars().take(200).collect(),
            status: match self.status.as_str() {
                s @ ("active" | "inactive" | "unconfirmed") => s.to_owned(),
                _ => String::new(),
            },
            role: self.role.chars().take(64).collect(),
            by_login: self.sort == "login",
            limit: PAGE,
            offset: (self.page.max(1) - 1) * PAGE,
        }
    }

    fn link(&self, page: i64) -> String {
        let e = crate::forward::percent_encode;
        format!(
            "/admin/users?q={}&status={}&role={}&sort={}&page={page}",
            e(&self.q),
            e(&self.status),
            e(&self.role),
            e(&self.sort)
        )
    }
}

pub(super) fn status_of(u: &User) -> (&'static str, &'static str) {
    if !u.active {
        ("deactivated", "bad")
    } else if u.email_confirmed_at.is_none() {
        ("unconfirmed", "")
    } else {
        ("active", "ok")
    }
}

pub(super) fn kind_name(kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::User => "browser",
        SessionKind::Client => "application",
        SessionKind::Personal => "personal token",
    }
}

fn when(t: Option<u64>) -> String {
    t.map_or_else(|| "never".into(), pages::date)
}

async fn users_page(
    State(app): App,
    ctx: Ctx,
    q: Result<Query<UsersQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    if let Err(r) = admin(&app, &ctx, "/admin/users").await {
        return r;
    }
    render_users(&app, &ctx, q, "").await
}

async fn render_users(app: &Accounts, ctx: &Ctx, q: UsersQuery, notice: &str) -> Response {
    let (users, total) = match app.db.search_users(&q.to_db()).await {
        Ok(found) => found,
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    let roles = match roles::list(&app.db).await {
        Ok(r) => r
            .into_iter()
            .map(|r| r.name)
            .filter(|n| n != "user")
            .collect(),
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    let page_no = q.page.max(1);
    let pages = ((total + PAGE - 1) / PAGE).max(1);
    let rows = users
        .iter()
        .map(|u| {
            let (status, status_class) = status_of(u);
            pages::AdminUserRow {
                id: u.id.clone(),
                username: u.username.clone(),
                name: u.name.clone(),
                email: u.email.clone(),
                roles: super::config::role_names(&u.roles).join(", "),
                status,
                status_class,
                created: pages::date(u.created_at),
                last_login: when(u.login_at),
            }
        })
        .collect();
    web::html(
        app,
        ctx,
        StatusCode::OK,
        pages::AdminUsers {
            page: ctx.page("admin"),
            nav: nav("users", notice, ""),
            prev: (page_no > 1).then(|| q.link(page_no - 1)),
            next: (page_no < pages).then(|| q.link(page_no + 1)),
            q: q.q,
            status: q.status,
            role: q.role,
            sort: q.sort,
            roles,
            users: rows,
            total,
            page_no,
            pages,
        },
    )
}

/// The rows as the pages show them: a user's id as their username.
async fn audit_rows(app: &Accounts, events: &[audit::Event]) -> Result<Vec<AuditRow>, DbError> {
    let names: std::collections::BTreeMap<String, String> = app
        .db
        .list()
        .await?
        .into_iter()
        .map(|u| (u.id, u.username))
        .collect();
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
    Ok(events
        .iter()
        .map(|e| AuditRow {
            at: audit::rfc3339_ms(e.at_ms)
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_owned(),
            action: e.action.clone(),
            outcome: e.outcome.clone(),
            actor: name(&e.actor),
            target: name(&e.target),
            ip: e.ip.clone(),
            details: if e.details.is_empty() {
                String::new()
            } else {
                Value::Object(e.details.clone()).to_string()
            },
        })
        .collect())
}

async fn render_user(app: &Accounts, ctx: &Ctx, user: User, nav: AdminNav) -> Response {
    let sessions = app.gateway.sessions();
    let listed = match sessions.list(&user.id).await {
        Ok(l) => l,
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    let all_roles = match roles::list(&app.db).await {
        Ok(r) => r,
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    let (identities, factors, events) = match async {
        Ok::<_, DbError>((
            app.db.identities(&user.id).await?,
            app.db.factors(&user.id).await?,
            audit::list(
                &app.db,
                &audit::Filter {
                    actor: Some(user.id.clone()),
                    limit: 50,
                    ..Default::default()
                },
            )
            .await?,
        ))
    }
    .await
    {
        Ok(all) => all,
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    let events = match audit_rows(app, &events).await {
        Ok(rows) => rows,
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    let mut sections = Vec::new();
    let hooks: Vec<UserSections> = SECTIONS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, f)| *f)
        .collect();
    for f in hooks {
        match f(app, &user).await {
            Ok(s) => sections.extend(s),
            Err(e) => return web::unavailable(app, ctx, &e),
        }
    }
    let (status, status_class) = status_of(&user);
    let mut methods = Vec::new();
    if factors.totp {
        methods.push("authenticator app".to_owned());
    }
    if factors.passkeys > 0 {
        methods.push(format!("{} passkey(s)", factors.passkeys));
    }
    if factors.recovery_left > 0 {
        methods.push(format!("{} recovery code(s) left", factors.recovery_left));
    }
    web::html(
        app,
        ctx,
        StatusCode::OK,
        pages::AdminUser {
            page: ctx.page("admin"),
            nav,
            status,
            status_class,
            created: pages::date(user.created_at),
            last_login: match (&user.login_at, &user.login_ip) {
                (Some(t), Some(ip)) => format!("{} from {ip}", pages::date(*t)),
                (t, _) => when(*t),
            },
            factors: if methods.is_empty() {
                "none".into()
            } else {
                methods.join(", ")
            },
            roles: all_roles
                .iter()
                .map(|r| {
                    let held = r.name == "user" || user.roles.contains(&r.name);
                    (r.name.clone(), held)
                })
                .collect(),
            sessions: listed
                .iter()
                .map(|l| pages::AdminSessionRow {
                    sid: l.sid.clone(),
                    kind: kind_name(l.session.kind),
                    device: match &l.session.label {
                        Some(name) => name.clone(),
                        None => super::guard::device(l.session.user_agent.as_deref()),
                    },
                    ip: l.session.ip.clone().unwrap_or_else(|| "-".into()),
                    created: pages::date(l.session.created_at),
                    last_seen: pages::date(l.session.last_seen.unwrap_or(l.session.created_at)),
                })
                .collect(),
            identities: identities
                .iter()
                .map(|i| {
                    (
                        i.provider.clone(),
                        i.subject.clone(),
                        pages::date(i.created_at),
                    )
                })
                .collect(),
            sections,
            events,
            user,
        },
    )
}

/// A form about the user `id`: the admin posting it and the user, or the answer that turns
/// it away (403, sign in again, 404).
async fn posted_on(
    app: &Accounts,
    ctx: &Ctx,
    csrf: &str,
    id: &str,
) -> Result<(User, User), Response> {
    let by = admin_post(app, ctx, csrf, &format!("/admin/users/{id}")).await?;
    Ok((by, user_or_404(app, ctx, id).await?))
}

/// The user `id`, or the 404 page.
async fn user_or_404(app: &Accounts, ctx: &Ctx, id: &str) -> Result<User, Response> {
    match app.db.user(id).await {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(web::message(
            app,
            ctx,
            StatusCode::NOT_FOUND,
            "No such user",
            &["There is no user with this id: they may have been deleted."],
            Some(("/admin/users", "All users")),
        )),
        Err(e) => Err(web::unavailable(app, ctx, &e)),
    }
}

async fn user_page(State(app): App, ctx: Ctx, Path(id): Path<String>) -> Response {
    if let Err(r) = admin(&app, &ctx, &format!("/admin/users/{id}")).await {
        return r;
    }
    match user_or_404(&app, &ctx, &id).await {
        Ok(u) => render_user(&app, &ctx, u, nav("users", "", "")).await,
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ActionForm {
    csrf: String,
    action: String,
    /// The provider an `unlink` is about.
    provider: String,
    sid: String,
    confirm: String,
}

/// What an admin's action on a user said: the notice, or the refusal.
pub(super) type Outcome = Result<String, RoleError>;

/// Runs `action` on `user` for `by`, audited; the user page answers with its notice.
async fn act(
    app: &Accounts,
    ctx: &Ctx,
    by: &User,
    user: User,
    action: &str,
    outcome: Outcome,
) -> Response {
    let (notice, error) = match outcome {
        Ok(notice) => {
            crate::audit!(action, by.id, ctx.ip(), target = user.id.as_str());
            (notice, String::new())
        }
        Err(RoleError::Refused(why)) => (String::new(), why),
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    let fresh = match app.db.user(&user.id).await {
        Ok(Some(u)) => u,
        Ok(None) => return web::see_other("/admin/users"),
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    render_user(app, ctx, fresh, nav("users", &notice, &error)).await
}

/// What the actions do, for the pages and the API alike.
pub(super) async fn user_do(app: &Accounts, user: &User, action: &str) -> Option<Outcome> {
    let sessions = app.gateway.sessions();
    Some(match action {
        "deactivate" => manage::deactivate(&app.db, &sessions, user).await.map(|n| {
            format!(
                "{} is deactivated; {} session(s) and {} grant(s) ended.",
                user.username, n.sessions, n.grants
            )
        }),
        "activate" => manage::activate(&app.db, user)
            .await
            .map(|_| format!("{} is active again.", user.username)),
        "reset_second_factors" => manage::reset_second_factors(&app.db, &sessions, user)
            .await
            .map(|r| {
                format!(
                    "Second factors removed ({} passkey(s){}); {} session(s) ended.",
                    r.passkeys,
                    if r.authenticator_app {
                        ", the authenticator app"
                    } else {
                        ""
                    },
                    r.ended.sessions
                )
            }),
        "reset_link" => {
            super::ops::send_reset_link(app, user).await;
            Ok(format!("A reset link is on its way to {}.", user.email))
        }
        "revoke_sessions" => revoke_all(app, user).await,
        "resend_confirmation" => {
            super::ops::send_confirmation(app, user, &user.email).await;
            Ok(format!(
                "A confirmation link is on its way to {}.",
                user.email
            ))
        }
        _ => return None,
    })
}

/// Unlinks the user's identity at `provider` (never their last way to sign in), and tells
/// them, as the pages do.
async fn unlink(app: &Accounts, user: &User, provider: &str) -> Outcome {
    use super::identities::{self, Unlinked};
    match identities::unlink(&app.db, user, provider).await? {
        Unlinked::Done => {
            super::ops::notify(
                app,
                user,
                "A sign-in was unlinked from your account",
                &format!("an administrator unlinked your {provider} sign-in from your account"),
            );
            Ok(format!("{provider} unlinked from {}.", user.username))
        }
        Unlinked::NotLinked => Err(RoleError::Refused(format!(
            "{} has no {provider} sign-in.",
            user.username
        ))),
        Unlinked::LastWay => Err(RoleError::Refused(format!(
            "{provider} is {}'s last way to sign in: it stays.",
            user.username
        ))),
    }
}

/// Ends every session and token of `user`.
async fn revoke_all(app: &Accounts, user: &User) -> Outcome {
    let n = app.gateway.sessions().revoke_user(&user.id, None).await?;
    Ok(format!("{n} session(s) revoked."))
}

/// The audit event of an action.
pub(super) fn event_of(action: &str) -> &'static str {
    match action {
        "deactivate" => "user_deactivated",
        "activate" => "user_activated",
        "reset_second_factors" => "user_second_factors_reset",
        "reset_link" => "user_reset_link_sent",
        "resend_confirmation" => "user_confirmation_sent",
        "roles" => "user_roles_set",
        "revoke_sessions" => "session_revoked_by_admin",
        _ => "user_changed",
    }
}

async fn user_action(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let (by, user) = match posted_on(&app, &ctx, &f.csrf, &id).await {
        Ok(both) => both,
        Err(r) => return r,
    };
    if f.action == "unlink" {
        let outcome = unlink(&app, &user, &f.provider).await;
        return act(&app, &ctx, &by, user, "identity_unlinked_by_admin", outcome).await;
    }
    let Some(outcome) = user_do(&app, &user, &f.action).await else {
        return web::forbidden(&app, &ctx);
    };
    act(&app, &ctx, &by, user, event_of(&f.action), outcome).await
}

async fn user_roles(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| {
        pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let csrf = field("csrf").pop().unwrap_or_default();
    let (by, user) = match posted_on(&app, &ctx, &csrf, &id).await {
        Ok(both) => both,
        Err(r) => return r,
    };
    let wanted = field("role");
    let outcome = set_roles(&app, &user, &wanted).await;
    act(&app, &ctx, &by, user, "user_roles_set", outcome).await
}

pub(super) async fn set_roles(app: &Accounts, user: &User, wanted: &[String]) -> Outcome {
    roles::set_user_roles(&app.db, &app.gateway.sessions(), user, wanted)
        .await
        .map(|n| {
            format!(
                "{} now has the roles {}; {n} session(s) ended.",
                user.username,
                super::config::role_names(wanted).join(", ")
            )
        })
}

async fn user_sessions(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let (by, user) = match posted_on(&app, &ctx, &f.csrf, &id).await {
        Ok(both) => both,
        Err(r) => return r,
    };
    let outcome = if f.sid == "all" {
        revoke_all(&app, &user).await
    } else {
        app.gateway
            .sessions()
            .revoke_sid(&user.id, &f.sid)
            .await
            .map(|found| {
                if found {
                    "Session revoked.".into()
                } else {
                    "That session had already ended.".into()
                }
            })
            .map_err(RoleError::from)
    };
    act(&app, &ctx, &by, user, "session_revoked_by_admin", outcome).await
}

async fn user_delete(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let (by, user) = match posted_on(&app, &ctx, &f.csrf, &id).await {
        Ok(both) => both,
        Err(r) => return r,
    };
    if !f.confirm.trim().eq_ignore_ascii_case(&user.username) {
        let refusal = Err(RoleError::Refused(format!(
            "Type {} exactly to delete the account.",
            user.username
        )));
        return act(&app, &ctx, &by, user, "", refusal).await;
    }
    match userdata::delete_account_of(&app, ctx.ip(), Some(&by), &user).await {
        Ok(_) => {
            let notice = format!("{} is deleted.", user.username);
            render_users(&app, &ctx, UsersQuery::default(), &notice).await
        }
        Err(RoleError::Refused(why)) => render_user(&app, &ctx, user, nav("users", "", &why)).await,
        Err(e) => web::unavailable(&app, &ctx, &e),
    }
}

// ---------------------------------------------------------------------------------------
// Roles

async fn render_roles(
    app: &Accounts,
    ctx: &Ctx,
    nav: AdminNav,
    form: (&str, &str, &str),
) -> Response {
    match roles::list(&app.db).await {
        Ok(list) => web::html(
            app,
            ctx,
            StatusCode::OK,
            pages::AdminRoles {
                page: ctx.page("admin"),
                nav,
                roles: list,
                form_name: form.0.to_owned(),
                form_scopes: form.1.to_owned(),
                form_description: form.2.to_owned(),
            },
        ),
        Err(e) => web::unavailable(app, ctx, &e),
    }
}

async fn roles_page(State(app): App, ctx: Ctx) -> Response {
    if let Err(r) = admin(&app, &ctx, "/admin/roles").await {
        return r;
    }
    render_roles(&app, &ctx, nav("roles", "", ""), ("", "", "")).await
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RoleForm {
    csrf: String,
    action: String,
    name: String,
    scopes: String,
    description: String,
}

fn scope_list(s: &str) -> Vec<String> {
    s.split([' ', ','])
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn role_create(State(app): App, ctx: Ctx, Form(f): Form<RoleForm>) -> Response {
    let by = match admin_post(&app, &ctx, &f.csrf, "/admin/roles").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let name = f.name.trim();
    match roles::create(&app.db, name, &f.description, &scope_list(&f.scopes)).await {
        Ok(()) => {
            crate::audit!("role_created", by.id, ctx.ip(), target = name);
            let notice = format!("Role {name} created.");
            render_roles(&app, &ctx, nav("roles", &notice, ""), ("", "", "")).await
        }
        Err(RoleError::Refused(why)) => {
            let form = (name, f.scopes.as_str(), f.description.as_str());
            render_roles(&app, &ctx, nav("roles", "", &why), form).await
        }
        Err(e) => web::unavailable(&app, &ctx, &e),
    }
}

async fn role_change(
    State(app): App,
    ctx: Ctx,
    Path(name): Path<String>,
    Form(f): Form<RoleForm>,
) -> Response {
    let by = match admin_post(&app, &ctx, &f.csrf, "/admin/roles").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let sessions = app.gateway.sessions();
    let (event, outcome) = match f.action.as_str() {
        "delete" => (
            "role_deleted",
            roles::delete(&app.db, &sessions, &name)
                .await
                .map(|n| format!("Role {name} deleted; {n} user(s) lost it and were signed out.")),
        ),
        _ => (
            "role_updated",
            roles::update(
                &app.db,
                &sessions,
                &name,
                Some(&f.description),
                Some(&scope_list(&f.scopes)),
            )
            .await
            .map(|n| format!("Role {name} saved; {n} session(s) ended.")),
        ),
    };
    match outcome {
        Ok(notice) => {
            crate::audit!(event, by.id, ctx.ip(), target = name.as_str());
            render_roles(&app, &ctx, nav("roles", &notice, ""), ("", "", "")).await
        }
        Err(RoleError::Refused(why)) => {
            render_roles(&app, &ctx, nav("roles", "", &why), ("", "", "")).await
        }
        Err(RoleError::Unknown(n)) => {
            render_roles(
                &app,
                &ctx,
                nav("roles", "", &format!("There is no role {n}.")),
                ("", "", ""),
            )
            .await
        }
        Err(e) => web::unavailable(&app, &ctx, &e),
    }
}

// ---------------------------------------------------------------------------------------
// Audit trail

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AuditQuery {
    actor: String,
    action: String,
    since: String,
    format: String,
    limit: u32,
}

/// The filter of `q`, with a username or email read as the user's id; or why not.
pub(super) async fn audit_filter(app: &Accounts, q: &AuditQuery) -> Result<audit::Filter, String> {
    let since_ms = match q.since.trim() {
        "" => None,
        s => Some(super::cli::since_ms(s).map_err(|_| {
            format!(
                "Since: {s:?} is neither a duration (24h, 7d) nor a time (2026-12-01T00:00:00Z)."
            )
        })?),
    };
    let actor = match q.actor.trim() {
        "" => None,
        a => Some(match app.db.find(a).await {
            Ok(Some(u)) => u.id,
            _ => a.to_owned(),
        }),
    };
    let action = Some(q.action.trim().to_owned()).filter(|a| !a.is_empty());
    Ok(audit::Filter {
        since_ms,
        actor,
        action,
        limit: if q.limit == 0 {
            500
        } else {
            q.limit.min(100_000)
        },
    })
}

/// The rows as CSV: one header line, then a line per row, fields quoted where needed.
fn csv(events: &[audit::Event]) -> String {
    fn field(s: &str) -> String {
        // A leading =, +, - or @ would be a formula to a spreadsheet: quoted with a '.
        let s = if s.len() > 1 && s.starts_with(['=', '+', '-', '@']) {
            format!("'{s}")
        } else {
            s.to_owned()
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    }
    let mut out = String::from("at,action,outcome,actor,target,ip,details\r\n");
    for e in events {
        let cols = [
            audit::rfc3339_ms(e.at_ms),
            e.action.clone(),
            e.outcome.clone(),
            e.actor.clone(),
            e.target.clone(),
            e.ip.clone(),
            Value::Object(e.details.clone()).to_string(),
        ];
        out.push_str(&cols.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

fn download(body: String, content_type: &'static str, name: &str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn audit_page(
    State(app): App,
    ctx: Ctx,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let by = match admin(&app, &ctx, "/admin/audit").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (filter, error) = match audit_filter(&app, &q).await {
        Ok(f) => (f, String::new()),
        Err(why) => (
            audit::Filter {
                limit: 500,
                ..Default::default()
            },
            why,
        ),
    };
    let events = match audit::list(&app.db, &filter).await {
        Ok(e) => e,
        Err(e) => return web::unavailable(&app, &ctx, &e),
    };
    match q.format.as_str() {
        "csv" | "json" => {
            crate::audit!(
                "audit_exported",
                by.id,
                ctx.ip(),
                format = q.format.as_str(),
                rows = events.len()
            );
            return if q.format == "csv" {
                download(csv(&events), "text/csv; charset=utf-8", "audit.csv")
            } else {
                let all: Vec<Value> = events.iter().map(audit::json).collect();
                download(
                    serde_json::to_string_pretty(&all).unwrap_or_default(),
                    "application/json",
                    "audit.json",
                )
            };
        }
        _ => {}
    }
    let rows = match audit_rows(&app, &events).await {
        Ok(rows) => rows,
        Err(e) => return web::unavailable(&app, &ctx, &e),
    };
    let e = crate::forward::percent_encode;
    web::html(
        &app,
        &ctx,
        StatusCode::OK,
        pages::AdminAudit {
            page: ctx.page("admin"),
            nav: nav("audit", "", &error),
            query: format!(
                "actor={}&action={}&since={}",
                e(&q.actor),
                e(&q.action),
                e(&q.since)
            ),
            actor: q.actor,
            action: q.action,
            since: q.since,
            rows,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Outbox

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct OutboxQuery {
    status: String,
}

pub(super) fn outbox_status(s: &str) -> Option<&str> {
    matches!(s, "pending" | "failed" | "delivered").then_some(s)
}

async fn outbox_page(
    State(app): App,
    ctx: Ctx,
    q: Result<Query<OutboxQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    if let Err(r) = admin(&app, &ctx, "/admin/outbox").await {
        return r;
    }
    render_outbox(&app, &ctx, &q.status, "").await
}

async fn render_outbox(app: &Accounts, ctx: &Ctx, status: &str, notice: &str) -> Response {
    let items = match outbox::list(&app.db, outbox_status(status)).await {
        Ok(i) => i,
        Err(e) => return web::unavailable(app, ctx, &e),
    };
    web::html(
        app,
        ctx,
        StatusCode::OK,
        pages::AdminOutbox {
            page: ctx.page("admin"),
            nav: nav("outbox", notice, ""),
            status: status.to_owned(),
            items: items
                .into_iter()
                .rev()
                .map(|i| pages::OutboxRow {
                    id: i.id,
                    kind: i.kind,
                    target: i.target,
                    status: i.status,
                    attempts: i.attempts,
                    created: pages::date(i.created_at.max(0) as u64),
                    last_error: i.last_error,
                })
                .collect(),
        },
    )
}

async fn outbox_retry(
    State(app): App,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let by = match admin_post(&app, &ctx, &f.csrf, "/admin/outbox").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match outbox::retry(&app.db, &id).await {
        Ok(found) => {
            crate::audit!("outbox_retried", by.id, ctx.ip(), target = id.as_str());
            let notice = if found {
                "The item will be tried again now."
            } else {
                "That item was delivered, or is gone."
            };
            render_outbox(&app, &ctx, "", notice).await
        }
        Err(e) => web::unavailable(&app, &ctx, &e),
    }
}
