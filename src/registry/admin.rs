//! The registry's part of the admin console: the Applications tab (every client with its
//! grants; enable, disable, new secret) and, on each user's page, the applications they
//! authorized with a button to revoke each.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sqlx::Row;

use super::{clients, grants, Registry};
use crate::accounts::admin::{self, nav};
use crate::accounts::db::{DbError, User};
use crate::accounts::pages::{self, AdminNav, AdminSection, AdminSectionRow, Page};
use crate::accounts::web::{self, Ctx};
use crate::accounts::Accounts;

const TAB: &str = "/admin/clients";

/// Adds the tab and the user-page section.
pub fn install() {
    admin::panel(TAB, "Applications");
    admin::user_sections("registry", |app, user| Box::pin(authorized(app, user)));
}

pub fn routes() -> axum::Router<Arc<Registry>> {
    axum::Router::new()
        .route(TAB, axum::routing::get(clients_page).post(client_post))
        .route(
            "/admin/users/{id}/apps/{client}",
            axum::routing::post(revoke_app),
        )
}

struct GrantRow {
    user_id: String,
    username: String,
    scopes: String,
    created: String,
    revoked: bool,
}

struct ClientRow {
    client_id: String,
    name: String,
    owner: String,
    confidential: bool,
    self_registered: bool,
    disabled: bool,
    grants: Vec<GrantRow>,
}

#[derive(Template)]
#[template(path = "admin_clients.html")]
struct ClientsPage {
    page: Page,
    nav: AdminNav,
    secret: Option<String>,
    clients: Vec<ClientRow>,
}

async fn rows(reg: &Registry) -> Result<Vec<ClientRow>, DbError> {
    let db = &reg.accounts.db;
    let list = clients::list_clients(db, None).await?;
    let grants = sqlx::query(
        "SELECT g.client_id, g.user_id, u.username, g.scopes, g.created_at, g.revoked
         FROM oauth_grants g LEFT JOIN users u ON u.id = g.user_id
         ORDER BY g.created_at DESC",
    )
    .fetch_all(db.pool())
    .await?;
    let users: std::collections::BTreeMap<String, String> = db
        .list()
        .await?
        .into_iter()
        .map(|u| (u.id, u.username))
        .collect();
    let mut out = Vec::new();
    for c in list {
        let mut rows = Vec::new();
        for g in grants.iter().filter(|g| {
            g.try_get::<String, _>("client_id")
                .is_ok_and(|id| id == c.client_id)
        }) {
            let user_id: String = g.try_get("user_id")?;
            rows.push(GrantRow {
                username: g
                    .try_get::<Option<String>, _>("username")?
                    .unwrap_or_else(|| "(deleted)".into()),
                user_id,
                scopes: g.try_get("scopes")?,
                created: pages::date(g.try_get::<i64, _>("created_at")?.max(0) as u64),
                revoked: g.try_get::<i64, _>("revoked")? != 0,
            });
        }
        out.push(ClientRow {
            owner: c
                .owner
                .as_ref()
                .and_then(|o| users.get(o).cloned())
                .unwrap_or_else(|| "none".into()),
            client_id: c.client_id,
            name: c.name,
            confidential: c.confidential,
            self_registered: c.self_registered,
            disabled: c.disabled,
            grants: rows,
        });
    }
    Ok(out)
}

async fn render(reg: &Registry, ctx: &Ctx, nav: AdminNav, secret: Option<String>) -> Response {
    match rows(reg).await {
        Ok(clients) => web::html(
            &reg.accounts,
            ctx,
            StatusCode::OK,
            ClientsPage {
                page: ctx.page("admin"),
                nav,
                secret,
                clients,
            },
        ),
        Err(e) => web::unavailable(&reg.accounts, ctx, &e),
    }
}

async fn clients_page(State(reg): State<Arc<Registry>>, ctx: Ctx) -> Response {
    if let Err(r) = admin::admin(&reg.accounts, &ctx, TAB).await {
        return r;
    }
    render(&reg, &ctx, nav(TAB, "", ""), None).await
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ClientForm {
    csrf: String,
    client_id: String,
    action: String,
}

async fn client_post(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Form(f): Form<ClientForm>,
) -> Response {
    let by = match admin::admin_post(&reg.accounts, &ctx, &f.csrf, TAB).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let client = match clients::find(&reg.accounts.db, &f.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return render(&reg, &ctx, nav(TAB, "", "No such application."), None).await,
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    };
    match super::pages::client_action(&reg, &client, &f.action).await {
        Some(Ok((secret, what))) => {
            let event = match f.action.as_str() {
                "enable" => "client_enabled",
                "disable" => "client_disabled",
                _ => "client_secret_rotated",
            };
            crate::audit!(event, by.id, ctx.ip(), target = client.client_id.as_str());
            let notice = format!("{} {what}.", client.name);
            render(
                &reg,
                &ctx,
                nav(TAB, &notice, ""),
                secret.map(|s| s.expose().clone()),
            )
            .await
        }
        Some(Err(e)) => web::unavailable(&reg.accounts, &ctx, &e),
        None => web::forbidden(&reg.accounts, &ctx),
    }
}

/// The applications `user` authorized, each with its revoke button.
async fn authorized(app: &Accounts, user: &User) -> Result<Vec<AdminSection>, DbError> {
    let mut rows = Vec::new();
    for (client_id, scopes, at) in grants::consents_of(&app.db, &user.id).await? {
        let name = clients::find(&app.db, &client_id)
            .await?
            .map_or_else(|| client_id.clone(), |c| c.name);
        rows.push(AdminSectionRow {
            text: name,
            detail: format!(
                "{} · since {}",
                if scopes.is_empty() {
                    "no scope".to_owned()
                } else {
                    scopes.join(" ")
                },
                pages::date(at)
            ),
            action: format!("/admin/users/{}/apps/{client_id}", user.id),
            label: "Revoke".into(),
        });
    }
    Ok(vec![AdminSection {
        title: "Authorized applications".into(),
        rows,
    }])
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct CsrfOnly {
    csrf: String,
}

async fn revoke_app(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Path((id, client)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let here = format!("/admin/users/{id}");
    let by = match admin::admin_post(&reg.accounts, &ctx, &f.csrf, &here).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let sessions = reg.accounts.gateway.sessions();
    match grants::withdraw(&reg.accounts.db, &sessions, &id, &client).await {
        Ok(n) => {
            crate::audit!(
                "grant_revoked_by_admin",
                by.id,
                ctx.ip(),
                target = id.as_str(),
                client_id = client.as_str(),
                tokens_ended = n
            );
            web::see_other(&here)
        }
        Err(e) => web::unavailable(&reg.accounts, &ctx, &e),
    }
}
