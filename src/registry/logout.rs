//! Signing out everywhere: OpenID Connect RP-Initiated Logout 1.0 (`/oauth/logout`, the
//! `end_session_endpoint`) and Back-Channel Logout 1.0.
//!
//! - **RP-initiated.** A client sends the browser here with `id_token_hint`, `client_id`,
//!   `post_logout_redirect_uri` and `state`. A valid hint for the signed-in user ends the
//!   session at once; otherwise a page asks first. The browser is sent on only to a URI the
//!   client registered, exactly; any other is refused with a page, never followed.
//! - **Back-channel.** When a browser session ends (sign-out here or at `/logout`, a revoke
//!   from "your sessions", `revoke_user`: a reset, a password change, deactivation), every
//!   client that received an id_token for that session and registered a
//!   `backchannel_logout_uri` is owed a `logout_token`. The registry hears of the end through
//!   the sessions API's hook ([`crate::sessions::on_end`]) and writes one outbox item per
//!   client before the sign-out answers; the outbox delivers it, signed at delivery (its
//!   `jti` is the item's stable id). Grants of that session without `offline_access` end
//!   with it. Expiry sends nothing.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

use super::clients::{self, Client};
use super::Registry;
use crate::accounts::db::{Db, DbError};
use crate::accounts::outbox;
use crate::accounts::pages::Page;
use crate::accounts::web::{self, Ctx};
use crate::session::unix_now;
use crate::sessions::Ended;

/// The outbox kind of a back-channel logout.
pub const KIND: &str = "backchannel_logout";
/// The event a logout_token carries (Back-Channel Logout §2.4).
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How long a logout_token is valid after it is signed (each attempt signs afresh).
const LOGOUT_TOKEN_TTL: u64 = 120;

/// Makes the registry hear of ended sessions on `db` (every database opened: the server's
/// and the CLI's, so `user deactivate` owes the same logouts as the pages).
pub fn listen(db: &Db) {
    let db = db.clone();
    crate::sessions::on_end(
        "registry",
        Arc::new(move |ended| {
            let db = db.clone();
            Box::pin(async move {
                for e in ended {
                    if let Err(err) = session_ended(&db, &e).await {
                        tracing::error!(sub = %e.sub, sid = %e.sid, error = %err, "cannot record the back-channel logouts of an ended session");
                    }
                }
            })
        }),
    );
}

/// What an ended browser session owes: a logout per client with a back-channel URI that got an
/// id_token for it, and the end of its OpenID Connect grants made without `offline_access`
/// ([`super::oidc::ends_with_session`]; the same rule as the token endpoint's).
async fn session_ended(db: &Db, e: &Ended) -> Result<(), DbError> {
    let rows = sqlx::query(
        "SELECT DISTINCT c.id, c.backchannel_logout_uri FROM oauth_grants g
         JOIN oauth_clients c ON c.id = g.client_id
         WHERE g.user_id = $1 AND g.sid = $2 AND c.backchannel_logout_uri <> ''
           AND (' ' || g.scopes || ' ') LIKE '% openid %'",
    )
    .bind(&e.sub)
    .bind(&e.sid)
    .fetch_all(db.pool())
    .await?;
    for r in rows {
        let client_id: String = r.try_get("id")?;
        let uri: String = r.try_get("backchannel_logout_uri")?;
        let id = outbox::enqueue(
            db,
            KIND,
            &uri,
            &json!({"client_id": client_id, "sub": e.sub, "sid": e.sid}),
        )
        .await?;
        tracing::info!(target: "gatehouse::audit", event = "backchannel_logout_queued", client_id = %client_id, user = %e.sub, sid = %e.sid, item = %id, "audit");
    }
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "UPDATE oauth_refresh SET used = 1 WHERE grant_id IN (
            SELECT id FROM oauth_grants WHERE user_id = $1 AND sid = $2 AND revoked = 0
            AND (' ' || scopes || ' ') LIKE '% openid %'
            AND (' ' || scopes || ' ') NOT LIKE '% offline_access %')",
    )
    .bind(&e.sub)
    .bind(&e.sid)
    .execute(&mut *tx)
    .await?;
    let ended = sqlx::query(
        "UPDATE oauth_grants SET revoked = 1 WHERE user_id = $1 AND sid = $2 AND revoked = 0
            AND (' ' || scopes || ' ') LIKE '% openid %'
            AND (' ' || scopes || ' ') NOT LIKE '% offline_access %'",
    )
    .bind(&e.sub)
    .bind(&e.sid)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if ended > 0 {
        tracing::info!(target: "gatehouse::audit", event = "grants_ended_with_session", user = %e.sub, sid = %e.sid, grants = ended, "audit");
    }
    Ok(())
}

#[derive(Serialize)]
struct LogoutToken<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
    sub: &'a str,
    sid: &'a str,
    events: serde_json::Value,
}

/// Delivers an outbox item of [`KIND`]: a logout_token POSTed as a form (§2.5); a 200 or 204
/// is delivery.
pub async fn deliver(reg: Arc<Registry>, item: outbox::Item) -> Result<(), String> {
    let field = |k: &str| item.payload[k].as_str().unwrap_or_default().to_owned();
    let (client_id, sub, sid) = (field("client_id"), field("sub"), field("sid"));
    let client: Client = match clients::find(&reg.accounts.db, &client_id).await {
        Ok(Some(c)) => c,
        // Gone: nothing left to tell.
        Ok(None) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let now = unix_now();
    let token = reg
        .accounts
        .gateway
        .signer
        .load()
        .sign(
            client.oidc.id_token_alg.algorithm(),
            "logout+jwt",
            &LogoutToken {
                iss: reg.issuer(),
                aud: &client.client_id,
                iat: now,
                exp: now + LOGOUT_TOKEN_TTL,
                jti: &item.id,
                sub: &sub,
                sid: &sid,
                events: json!({ EVENT: {} }),
            },
        )
        .map_err(|e| format!("cannot sign the logout_token: {e}"))?;
    let trust = client.url_trust();
    let body = serde_urlencoded::to_string([("logout_token", token.as_str())])
        .map_err(|e| e.to_string())?;
    let answer = reg
        .accounts
        .outbound
        .post(
            &item.target,
            trust,
            "application/x-www-form-urlencoded",
            body,
        )
        .await
        .map_err(|e| e.to_string())?;
    if answer.status == StatusCode::OK || answer.status == StatusCode::NO_CONTENT {
        tracing::info!(target: "gatehouse::audit", event = "backchannel_logout_delivered", client_id = %client.client_id, user = %sub, sid = %sid, "audit");
        Ok(())
    } else {
        Err(format!("{} answered {}", item.target, answer.status))
    }
}

// ---------------------------------------------------------------------------------------
// RP-initiated logout

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub struct Params {
    id_token_hint: String,
    client_id: String,
    post_logout_redirect_uri: String,
    state: String,
    // The confirmation form's.
    csrf: String,
    decision: String,
}

#[derive(Template)]
#[template(path = "end_session.html")]
struct Confirm {
    page: Page,
    client_name: Option<String>,
    hidden: Vec<(&'static str, String)>,
}

/// A request that passed the checks.
struct Checked {
    /// The `sub` of a valid hint.
    hinted: Option<String>,
    client: Option<Client>,
    /// Where to send the browser afterwards: a registered URI, with `state`.
    then: Option<String>,
}

/// The checks GET and POST make. An `Err` is the page that refuses.
async fn check(reg: &Registry, ctx: &Ctx, p: &Params) -> Result<Checked, Response> {
    let refuse = |why: &str| {
        web::message(
            &reg.accounts,
            ctx,
            StatusCode::BAD_REQUEST,
            "This sign-out request cannot be used",
            &[
                why,
                "You are still signed in here. Sign out from your account page if you meant to.",
            ],
            None,
        )
    };
    let hint = if p.id_token_hint.is_empty() {
        None
    } else {
        match reg.own_token(&p.id_token_hint) {
            Some(claims) => Some(claims),
            None => {
                return Err(refuse(
                    "The application sent an id_token this site did not issue.",
                ))
            }
        }
    };
    // The hint's audience names the client; a client_id beside it must agree.
    let hinted_client = hint.as_ref().and_then(|c| match &c["aud"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => a.first().and_then(|v| v.as_str()).map(str::to_owned),
        _ => None,
    });
    let client_id = match (&hinted_client, p.client_id.as_str()) {
        (Some(h), given) if !given.is_empty() && h != given => {
            return Err(refuse(
                "The application's id_token was issued to another application.",
            ))
        }
        (Some(h), _) => h.clone(),
        (None, given) => given.to_owned(),
    };
    let client = if client_id.is_empty() {
        None
    } else {
        match reg.find_client(&client_id).await {
            Ok(Some(c)) => Some(c),
            Ok(None) => return Err(refuse("The application is not registered here.")),
            Err(e) => return Err(web::unavailable(&reg.accounts, ctx, &e)),
        }
    };
    let then = match (p.post_logout_redirect_uri.as_str(), &client) {
        ("", _) => None,
        (uri, Some(c)) if c.oidc.post_logout_redirect_uris.iter().any(|u| u == uri) => {
            let mut params = Vec::new();
            if !p.state.is_empty() {
                params.push(("state", p.state.as_str()));
            }
            Some(if params.is_empty() {
                uri.to_owned()
            } else {
                super::authorize::answer_uri(uri, &params)
            })
        }
        _ => {
            return Err(refuse(
                "The application asked to send you to an address it has not registered for after signing out.",
            ))
        }
    };
    Ok(Checked {
        hinted: hint.and_then(|c| c["sub"].as_str().map(str::to_owned)),
        client,
        then,
    })
}

/// `GET /oauth/logout`: signs out at once with a hint for the signed-in user (or when no one
/// is signed in); otherwise asks.
pub async fn logout_page(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Query(p): Query<Params>,
) -> Response {
    let checked = match check(&reg, &ctx, &p).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let hint_is_mine = match (ctx.session(), &checked.hinted) {
        (None, _) => true,
        (Some(l), Some(sub)) => l.session.sub == *sub,
        (Some(_), None) => false,
    };
    if hint_is_mine {
        return web::sign_out(&reg.accounts, ctx, checked.then.as_deref()).await;
    }
    let hidden = [
        ("id_token_hint", &p.id_token_hint),
        ("client_id", &p.client_id),
        ("post_logout_redirect_uri", &p.post_logout_redirect_uri),
        ("state", &p.state),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k, v.clone()))
    .collect();
    web::html(
        &reg.accounts,
        &ctx,
        StatusCode::OK,
        Confirm {
            page: ctx.page("logout"),
            client_name: checked.client.map(|c| c.name),
            hidden,
        },
    )
}

/// `POST /oauth/logout`: the confirmation's answer.
pub async fn logout(State(reg): State<Arc<Registry>>, ctx: Ctx, Form(p): Form<Params>) -> Response {
    if !web::post_allowed(&reg.accounts, &ctx, &p.csrf) {
        return web::forbidden(&reg.accounts, &ctx);
    }
    let checked = match check(&reg, &ctx, &p).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if p.decision != "logout" {
        return web::see_other("/account");
    }
    web::sign_out(&reg.accounts, ctx, checked.then.as_deref()).await
}
