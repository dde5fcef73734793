//! The registry's pages for a signed-in user: `/account/tokens` (personal access tokens) and
//! `/account/apps` (the applications they allowed). Same layout, CSRF and sign-in as the
//! accounts pages.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use super::{clients, grants, personal, Registry};
use crate::accounts::db::User;
use crate::accounts::pages::{date, Page};
use crate::accounts::web::{self, Ctx};

pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/account/tokens", get(tokens_page).post(tokens))
        .route("/account/apps", get(apps_page).post(apps))
        .route("/api", get(super::catalog::catalog))
}

pub struct TokenRow {
    sid: String,
    name: String,
    scopes: String,
    created: String,
    expires: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct Tokens {
    page: Page,
    tokens: Vec<TokenRow>,
    scopes: Vec<String>,
    created: Option<String>,
    name: String,
    error: String,
    notice: String,
    never_allowed: bool,
}

pub struct AppRow {
    client_id: String,
    name: String,
    homepage: String,
    scopes: String,
    since: String,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct Apps {
    page: Page,
    apps: Vec<AppRow>,
    notice: String,
}

/// What a tokens page shows besides the list: a token made just now, the form's state.
#[derive(Default)]
struct TokensView {
    created: Option<String>,
    name: String,
    error: String,
    notice: String,
}

async fn render_tokens(
    reg: &Registry,
    ctx: &Ctx,
    user: &User,
    status: StatusCode,
    view: TokensView,
) -> Response {
    let sessions = reg.accounts.gateway.sessions();
    let listed = match personal::list(&sessions, &user.id).await {
        Ok(l) => l,
        Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
    };
    let never = personal::NEVER.as_secs() / 2;
    let tokens = listed
        .into_iter()
        .map(|l| {
            let s = &l.session;
            TokenRow {
                name: s.label.clone().unwrap_or_default(),
                scopes: s.scopes.join(" "),
                created: date(s.created_at),
                expires: if s.expires_at.saturating_sub(s.created_at) > never {
                    "never".into()
                } else {
                    date(s.expires_at)
                },
                last_used: s.last_seen.map_or_else(|| "never".into(), date),
                sid: l.sid,
            }
        })
        .collect();
    let (_, scopes) = reg.accounts.roles.of(&user.roles);
    web::html(
        &reg.accounts,
        ctx,
        status,
        Tokens {
            page: ctx.page("tokens"),
            tokens,
            scopes,
            created: view.created,
            name: view.name,
            error: view.error,
            notice: view.notice,
            never_allowed: reg.allow_non_expiring,
        },
    )
}

async fn tokens_page(State(reg): State<Arc<Registry>>, ctx: Ctx) -> Response {
    match web::signed_in(&reg.accounts, &ctx, "/account/tokens").await {
        Ok(user) => render_tokens(&reg, &ctx, &user, StatusCode::OK, TokensView::default()).await,
        Err(r) => r,
    }
}

/// The tokens form; `scope` repeats, so the body is read as pairs.
async fn tokens(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    if !web::post_allowed(&reg.accounts, &ctx, field("csrf")) {
        return web::forbidden(&reg.accounts, &ctx);
    }
    let user = match web::signed_in(&reg.accounts, &ctx, "/account/tokens").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let sessions = reg.accounts.gateway.sessions();
    if field("action") == "revoke" {
        let notice = match personal::revoke(&sessions, &user.id, field("sid")).await {
            Ok(true) => "The token was revoked.",
            Ok(false) => "That token was already gone.",
            Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
        };
        let view = TokensView {
            notice: notice.into(),
            ..TokensView::default()
        };
        return render_tokens(&reg, &ctx, &user, StatusCode::OK, view).await;
    }
    let ttl = match field("expires") {
        "never" if reg.allow_non_expiring => personal::NEVER,
        days => match days.parse::<u64>() {
            Ok(d @ 1..=366) => Duration::from_secs(d * 86_400),
            _ => Duration::from_secs(90 * 86_400),
        },
    };
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let name = field("name").to_owned();
    match personal::create(&sessions, &reg.accounts.roles, &user, &name, &scopes, ttl).await {
        Ok(issued) => {
            let view = TokensView {
                created: Some(issued.token.expose().clone()),
                ..TokensView::default()
            };
            render_tokens(&reg, &ctx, &user, StatusCode::OK, view).await
        }
        Err(personal::PatError::Sessions(e)) => web::unavailable(&reg.accounts, &ctx, &e),
        Err(e) => {
            let view = TokensView {
                name,
                error: e.to_string(),
                ..TokensView::default()
            };
            render_tokens(&reg, &ctx, &user, StatusCode::BAD_REQUEST, view).await
        }
    }
}

async fn render_apps(reg: &Registry, ctx: &Ctx, user: &User, notice: &str) -> Response {
    let consents = match grants::consents_of(&reg.accounts.db, &user.id).await {
        Ok(c) => c,
        Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
    };
    let mut apps = Vec::new();
    for (client_id, scopes, since) in consents {
        let client = match clients::find(&reg.accounts.db, &client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
        };
        apps.push(AppRow {
            client_id,
            name: client.name,
            homepage: client.homepage,
            scopes: scopes.join(" "),
            since: date(since),
        });
    }
    web::html(
        &reg.accounts,
        ctx,
        StatusCode::OK,
        Apps {
            page: ctx.page("apps"),
            apps,
            notice: notice.into(),
        },
    )
}

async fn apps_page(State(reg): State<Arc<Registry>>, ctx: Ctx) -> Response {
    match web::signed_in(&reg.accounts, &ctx, "/account/apps").await {
        Ok(user) => render_apps(&reg, &ctx, &user, "").await,
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AppForm {
    csrf: String,
    client_id: String,
}

async fn apps(State(reg): State<Arc<Registry>>, ctx: Ctx, Form(f): Form<AppForm>) -> Response {
    if !web::post_allowed(&reg.accounts, &ctx, &f.csrf) {
        return web::forbidden(&reg.accounts, &ctx);
    }
    let user = match web::signed_in(&reg.accounts, &ctx, "/account/apps").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let sessions = reg.accounts.gateway.sessions();
    match grants::withdraw(&reg.accounts.db, &sessions, &user.id, &f.client_id).await {
        Ok(n) => {
            tracing::info!(target: "gatehouse::audit", event = "access_withdrawn", user = %user.id, client_id = %f.client_id, tokens_revoked = n, "audit");
            render_apps(
                &reg,
                &ctx,
                &user,
                "Access withdrawn: the application's tokens have ended.",
            )
            .await
        }
        Err(e) => web::unavailable(&reg.accounts, &ctx, &e),
    }
}
