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
use crate::accounts::pages::{date, Errors, Page};
use crate::accounts::web::{self, Ctx};

pub fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/account/tokens", get(tokens_page).post(tokens))
        .route("/account/apps", get(apps_page).post(apps))
        .route("/account/clients", get(clients_page).post(clients_post))
        .route("/api", get(super::catalog::catalog))
}

/// A posted form whose fields may repeat (`scope`), read as pairs.
struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of `name`, trimmed; "" when absent.
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }

    /// Every value of `name`.
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A POST from this site with its CSRF token, by a signed-in user: the user, or the answer
/// (403, or off to sign in and back to `here`).
async fn poster(reg: &Registry, ctx: &Ctx, csrf: &str, here: &str) -> Result<User, Response> {
    if !web::post_allowed(&reg.accounts, ctx, csrf) {
        return Err(web::forbidden(&reg.accounts, ctx));
    }
    web::signed_in(&reg.accounts, ctx, here).await
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
    let (_, scopes) = match reg.accounts.roles().await {
        Ok(r) => r.of(&user.roles),
        Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
    };
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

/// Creates or revokes a personal access token.
async fn tokens(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let form = Fields(pairs);
    let field = |name: &str| form.get(name);
    let user = match poster(&reg, &ctx, field("csrf"), "/account/tokens").await {
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
    let scopes = form.all("scope");
    let name = field("name").to_owned();
    let roles = match reg.accounts.roles().await {
        Ok(r) => r,
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    };
    match personal::create(&sessions, &roles, &user, &name, &scopes, ttl).await {
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
        // A client of a metadata document is listed even when its document cannot be
        // fetched now: its access must stay removable.
        let (name, homepage) = match reg.find_client(&client_id).await {
            Ok(Some(c)) => (c.name, c.homepage),
            Ok(None) if super::cimd::is_document_url(&client_id) => {
                (client_id.clone(), String::new())
            }
            Ok(None) => continue,
            Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
        };
        apps.push(AppRow {
            client_id,
            name,
            homepage,
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
    let user = match poster(&reg, &ctx, &f.csrf, "/account/apps").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let sessions = reg.accounts.gateway.sessions();
    match grants::withdraw(&reg.accounts.db, &sessions, &user.id, &f.client_id).await {
        Ok(n) => {
            tracing::info!(target: "gatehouse::audit", event = "access_withdrawn", user = %user.id, client_id = %crate::untrusted::Untrusted(&f.client_id), tokens_revoked = n, "audit");
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

// ---------------------------------------------------------------------------------------
// /account/clients: applications a user registers (an admin sees and manages all)

#[derive(Default)]
struct ClientForm {
    name: String,
    homepage: String,
    redirect_uri: String,
    post_logout_redirect_uri: String,
    backchannel_logout_uri: String,
    id_token_alg: String,
    access_token_format: String,
}

#[derive(Template)]
#[template(path = "clients.html")]
struct ClientsPage {
    page: Page,
    admin: bool,
    clients: Vec<clients::Client>,
    created: Option<(String, Option<String>)>,
    notice: String,
    form: ClientForm,
    errors: Errors,
    scopes: Vec<String>,
    /// The id_token algorithms with a key here.
    algs: Vec<&'static str>,
}

/// What a clients page shows besides the list.
#[derive(Default)]
struct ClientsView {
    created: Option<(String, Option<String>)>,
    notice: String,
    form: ClientForm,
    errors: Errors,
}

fn is_admin(user: &User) -> bool {
    user.roles.iter().any(|r| r == "admin")
}

async fn render_clients(
    reg: &Registry,
    ctx: &Ctx,
    user: &User,
    status: StatusCode,
    view: ClientsView,
) -> Response {
    let admin = is_admin(user);
    let owner = (!admin).then_some(user.id.as_str());
    let scopes = match reg.accounts.roles().await {
        Ok(r) => r.of(&user.roles).1,
        Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
    };
    let list = match clients::list_clients(&reg.accounts.db, owner).await {
        Ok(l) => l,
        Err(e) => return web::unavailable(&reg.accounts, ctx, &e),
    };
    web::html(
        &reg.accounts,
        ctx,
        status,
        ClientsPage {
            page: ctx.page("clients"),
            admin,
            clients: list,
            created: view.created,
            notice: view.notice,
            form: view.form,
            errors: view.errors,
            scopes,
            algs: reg.id_token_algs(),
        },
    )
}

async fn clients_page(State(reg): State<Arc<Registry>>, ctx: Ctx) -> Response {
    match web::signed_in(&reg.accounts, &ctx, "/account/clients").await {
        Ok(user) => render_clients(&reg, &ctx, &user, StatusCode::OK, ClientsView::default()).await,
        Err(r) => r,
    }
}

/// Enables, disables (its tokens end) or re-keys (its tokens end) `client`: the new secret
/// if any, and what happened in words; `None` for an unknown action. The owner's page and
/// the admin console's.
pub(super) async fn client_action(
    reg: &Registry,
    client: &clients::Client,
    action: &str,
) -> Option<Result<(Option<crate::secret::Secret<String>>, String), String>> {
    let db = &reg.accounts.db;
    let sessions = reg.accounts.gateway.sessions();
    let id = client.client_id.as_str();
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    Some(match action {
        "enable" => clients::set_disabled(db, id, false)
            .await
            .map(|_| (None, "enabled".to_string()))
            .map_err(|e| fail(&e)),
        "disable" => match clients::set_disabled(db, id, true).await {
            Ok(_) => grants::end_client_tokens(db, &sessions, id)
                .await
                .map(|n| (None, format!("disabled; {n} tokens ended")))
                .map_err(|e| fail(&e)),
            Err(e) => Err(fail(&e)),
        },
        "rotate" if client.confidential => match clients::rotate_secret(db, id).await {
            Ok(secret) => grants::end_client_tokens(db, &sessions, id)
                .await
                .map(|n| {
                    (
                        Some(secret),
                        format!("has a new secret; the old one is refused and {n} tokens ended"),
                    )
                })
                .map_err(|e| fail(&e)),
            Err(e) => Err(fail(&e)),
        },
        _ => return None,
    })
}

/// Registers, disables, enables or re-keys a client.
async fn clients_post(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let posted = Fields(pairs);
    let field = |name: &str| posted.get(name);
    let user = match poster(&reg, &ctx, field("csrf"), "/account/clients").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let db = &reg.accounts.db;
    if field("action") != "create" {
        let client = match clients::find(db, field("client_id")).await {
            Ok(Some(c)) if is_admin(&user) || c.owner.as_deref() == Some(user.id.as_str()) => c,
            Ok(_) => return web::forbidden(&reg.accounts, &ctx),
            Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
        };
        let id = client.client_id.as_str();
        let Some(outcome) = client_action(&reg, &client, field("action")).await else {
            return web::forbidden(&reg.accounts, &ctx);
        };
        return match outcome {
            Ok((secret, what)) => {
                tracing::info!(target: "gatehouse::audit", event = "client_changed", action = %crate::untrusted::Untrusted(field("action")), user = %user.id, client_id = %crate::untrusted::Untrusted(id), "audit");
                let view = ClientsView {
                    created: secret.map(|s| (id.to_owned(), Some(s.expose().clone()))),
                    notice: format!("{} {what}.", client.name),
                    ..ClientsView::default()
                };
                render_clients(&reg, &ctx, &user, StatusCode::OK, view).await
            }
            Err(e) => web::unavailable(&reg.accounts, &ctx, &e),
        };
    }

    let form = ClientForm {
        name: field("name").to_owned(),
        homepage: field("homepage").to_owned(),
        redirect_uri: field("redirect_uri").to_owned(),
        post_logout_redirect_uri: field("post_logout_redirect_uri").trim().to_owned(),
        backchannel_logout_uri: field("backchannel_logout_uri").trim().to_owned(),
        id_token_alg: field("id_token_alg").to_owned(),
        access_token_format: field("access_token_format").to_owned(),
    };
    let mut errors = Errors::default();
    if form.name.is_empty() || form.name.chars().count() > 100 {
        errors.add("name", "Give it a name of up to 100 characters.");
    }
    if let Err(e) = clients::check_redirect_uri(&form.redirect_uri) {
        errors.add(
            "redirect_uri",
            format!("{}{}", e[..1].to_uppercase(), &e[1..]) + ".",
        );
    }
    if !form.post_logout_redirect_uri.is_empty() {
        if let Err(e) = clients::check_redirect_uri(&form.post_logout_redirect_uri) {
            errors.add(
                "post_logout_redirect_uri",
                format!("{}{}", e[..1].to_uppercase(), &e[1..]) + ".",
            );
        }
    }
    // A user's URL is held to the outbound policy: https, public addresses (checked when used).
    if !form.backchannel_logout_uri.is_empty() {
        if let Err(e) = crate::accounts::outbound::check_supplied(&form.backchannel_logout_uri) {
            errors.add(
                "backchannel_logout_uri",
                format!("Use an https address on the internet ({e})."),
            );
        }
    }
    let id_token_alg = clients::IdTokenAlg::ALL
        .into_iter()
        .find(|a| a.name() == form.id_token_alg && reg.id_token_algs().contains(&a.name()))
        .unwrap_or(clients::IdTokenAlg::Rs256);
    let oidc = clients::OidcSettings {
        post_logout_redirect_uris: Some(form.post_logout_redirect_uri.clone())
            .filter(|u| !u.is_empty())
            .into_iter()
            .collect(),
        backchannel_logout_uri: Some(form.backchannel_logout_uri.clone()).filter(|u| !u.is_empty()),
        id_token_alg,
        access_token_format: if form.access_token_format == "jwt" {
            clients::AccessTokenFormat::Jwt
        } else {
            clients::AccessTokenFormat::Opaque
        },
        audience: None,
    };
    let mine = match reg.accounts.roles().await {
        Ok(r) => r.of(&user.roles).1,
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    };
    let scopes: Vec<String> = posted
        .all("scope")
        .into_iter()
        .filter(|s| mine.contains(s))
        .collect();
    if !errors.is_empty() {
        let view = ClientsView {
            form,
            errors,
            ..ClientsView::default()
        };
        return render_clients(&reg, &ctx, &user, StatusCode::BAD_REQUEST, view).await;
    }
    let public = field("public") == "yes";
    // Users register applications that act for people; client_credentials (a program acting
    // for itself) is for administrators, from the CLI.
    let grants = [
        "authorization_code".to_string(),
        "refresh_token".to_string(),
    ];
    let homepage = if form.homepage.starts_with("https://") || form.homepage.starts_with("http://")
    {
        form.homepage.as_str()
    } else {
        ""
    };
    let made = clients::create(
        db,
        &clients::NewClient {
            name: &form.name,
            description: "",
            homepage,
            owner: Some(&user.id),
            confidential: !public,
            redirect_uris: std::slice::from_ref(&form.redirect_uri),
            grants: &grants,
            scopes: &scopes,
            oidc: &oidc,
            self_registered: false,
        },
    )
    .await;
    match made {
        Ok((c, secret)) => {
            tracing::info!(target: "gatehouse::audit", event = "client_created", user = %user.id, client_id = %c.client_id, "audit");
            let view = ClientsView {
                created: Some((c.client_id, secret.map(|s| s.expose().clone()))),
                ..ClientsView::default()
            };
            render_clients(&reg, &ctx, &user, StatusCode::OK, view).await
        }
        Err(e) => web::unavailable(&reg.accounts, &ctx, &e),
    }
}
