//! The device authorization grant (RFC 8628), for command-line tools and devices without a
//! browser: the tool asks `/oauth/device_authorization` for a code pair, shows the user code,
//! and polls the token endpoint; the user opens `/device` in a browser where they are signed
//! in, types the code, sees what the tool asks for and allows or denies it.
//!
//! The device code is 256 random bits, stored as its SHA-256 and redeemed once. The user
//! code is 8 letters from a 20-letter alphabet without vowels (about 34.6 bits; RFC 8628
//! §6.1), valid 10 minutes; `/device` counts every code typed per address, so guessing one
//! is out of reach. Polling faster than the interval is answered `slow_down`, and the
//! interval grows by 5 s each time (§3.5).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::json;

use super::clients::Client;
use super::grants::{self, SignedIn};
use super::oauth::{no_store, OAuthError, Params};
use super::oidc;
use super::Registry;
use crate::accounts::db::{random_token, token_hash, Db, DbError};
use crate::accounts::pages::Page;
use crate::accounts::web::{self, Ctx};
use crate::session::unix_now;

/// How long a code pair lives.
const TTL_SECS: u64 = 600;
/// Letters of user codes: no vowels (no words), none that look alike.
const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Codes typed at `/device` per address per minute.
pub const TRIES_PER_MINUTE: u32 = 20;

/// A new user code, `XXXX-XXXX`.
fn user_code() -> String {
    let mut raw = [0u8; 8];
    aws_lc_rs::rand::fill(&mut raw).expect("the OS random number generator failed");
    let letters: String = raw
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// A typed user code as stored: upper case, letters only, `XXXX-XXXX`; None when it cannot
/// be one.
fn normalise(typed: &str) -> Option<String> {
    let letters: String = typed
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (letters.len() == 8 && letters.bytes().all(|b| ALPHABET.contains(&b)))
        .then(|| format!("{}-{}", &letters[..4], &letters[4..]))
}

/// `POST /oauth/device_authorization` (§3.1–3.2).
pub async fn authorization(
    State(reg): State<Arc<Registry>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let run = async {
        let params = Params::parse(&headers, &body)?;
        let client = super::oauth::authenticate(&reg, &headers, &params).await?;
        if !client.allows_grant("device_code") {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "this client may not use the device authorization grant",
            ));
        }
        let scopes = asked_scopes(&client, params.get("scope"))?;
        let device_code = random_token(32);
        let code = user_code();
        sqlx::query(
            "INSERT INTO oauth_device_codes (hash, user_code, client_id, scopes, expires_at,
                interval_secs, last_poll, status, user_id, amr, auth_time, sid)
             VALUES ($1, $2, $3, $4, $5, $6, 0, 'pending', '', '', 0, '')",
        )
        .bind(token_hash(&device_code))
        .bind(&code)
        .bind(&client.client_id)
        .bind(scopes.join(" "))
        .bind((unix_now() + TTL_SECS) as i64)
        .bind(super::oauth::DEVICE_INTERVAL_SECS as i64)
        .execute(reg.accounts.db.pool())
        .await
        .map_err(|e| OAuthError::unavailable(DbError::from(e)))?;
        let uri = format!("{}/device", reg.issuer());
        Ok(no_store(
            StatusCode::OK,
            json!({
                "device_code": device_code,
                "user_code": code,
                "verification_uri": uri,
                "verification_uri_complete": format!("{uri}?user_code={code}"),
                "expires_in": TTL_SECS,
                "interval": super::oauth::DEVICE_INTERVAL_SECS,
            }),
        ))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The scopes a device request asks for: each the client's or an OpenID Connect one; the
/// client's when none are named.
fn asked_scopes(client: &Client, asked: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(asked) = asked else {
        return Ok(client.scopes.clone());
    };
    let scopes = grants::scope_list(asked);
    if let Some(s) = scopes
        .iter()
        .find(|s| !client.scopes.contains(s) && !oidc::is_oidc_scope(s))
    {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("scope {s:?} is not allowed for this client"),
        ));
    }
    Ok(scopes)
}

async fn by_user_code(db: &Db, code: &str) -> Result<Option<super::oauth::DeviceCode>, DbError> {
    let row = sqlx::query("SELECT * FROM oauth_device_codes WHERE user_code = $1")
        .bind(code)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.as_ref().map(super::oauth::device_record).transpose()?)
}

// ---------------------------------------------------------------------------------------
// The page

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DeviceForm {
    user_code: String,
    csrf: String,
    decision: String,
}

#[derive(Template)]
#[template(path = "device.html")]
struct Enter {
    page: Page,
    user_code: String,
    error: String,
}

#[derive(Template)]
#[template(path = "device_confirm.html")]
struct Confirm {
    page: Page,
    user_code: String,
    client_name: String,
    homepage: String,
    scopes: Vec<(String, String)>,
}

/// `GET /device`: the form (filled in from `verification_uri_complete`).
pub async fn page(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Query(q): Query<DeviceForm>,
) -> Response {
    let here = if q.user_code.is_empty() {
        "/device".to_owned()
    } else {
        format!(
            "/device?user_code={}",
            crate::forward::percent_encode(&q.user_code)
        )
    };
    if let Err(r) = web::signed_in(&reg.accounts, &ctx, &here).await {
        return r;
    }
    enter(&reg, &ctx, StatusCode::OK, &q.user_code, "")
}

fn enter(reg: &Registry, ctx: &Ctx, status: StatusCode, code: &str, error: &str) -> Response {
    web::html(
        &reg.accounts,
        ctx,
        status,
        Enter {
            page: ctx.page(""),
            user_code: code.chars().take(16).collect(),
            error: error.to_owned(),
        },
    )
}

/// `POST /device`: a code typed (the confirmation follows), or the confirmation's answer.
pub async fn submit(
    State(reg): State<Arc<Registry>>,
    ctx: Ctx,
    Form(f): Form<DeviceForm>,
) -> Response {
    if !web::post_allowed(&reg.accounts, &ctx, &f.csrf) {
        return web::forbidden(&reg.accounts, &ctx);
    }
    let user = match web::signed_in(&reg.accounts, &ctx, "/device").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match reg.device_tries.check(ctx.ip()).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            let mut r = web::message(
                &reg.accounts,
                &ctx,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many codes",
                &["Too many codes were typed from your network. Wait a minute, then try again."],
                None,
            );
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    }
    let not_valid = "That code is not valid, or it has expired. Check the code on your device; if it keeps failing, start again there.";
    let Some(code) = normalise(&f.user_code) else {
        return enter(&reg, &ctx, StatusCode::BAD_REQUEST, &f.user_code, not_valid);
    };
    let found = match by_user_code(&reg.accounts.db, &code).await {
        Ok(Some(d)) if d.status == "pending" && !d.expired => d,
        Ok(_) => return enter(&reg, &ctx, StatusCode::BAD_REQUEST, &f.user_code, not_valid),
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    };
    let client = match super::clients::find(&reg.accounts.db, &found.client_id).await {
        Ok(Some(c)) if !c.disabled => c,
        Ok(_) => return enter(&reg, &ctx, StatusCode::BAD_REQUEST, &f.user_code, not_valid),
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    };
    // What the user can grant: the scopes asked, narrowed to theirs (OIDC scopes always).
    let (_, mine) = match reg.accounts.roles().await {
        Ok(r) => r.of(&user.roles),
        Err(e) => return web::unavailable(&reg.accounts, &ctx, &e),
    };
    let granted: Vec<String> = found
        .scopes
        .iter()
        .filter(|s| mine.contains(s) || oidc::is_oidc_scope(s))
        .cloned()
        .collect();
    match f.decision.as_str() {
        "" => web::html(
            &reg.accounts,
            &ctx,
            StatusCode::OK,
            Confirm {
                page: ctx.page(""),
                user_code: code,
                client_name: client.name,
                homepage: client.homepage,
                scopes: super::authorize::for_people(&granted),
            },
        ),
        decision => {
            let allow = decision == "allow";
            let signed_in = ctx
                .session()
                .map(|l| SignedIn {
                    amr: l.session.amr.clone(),
                    auth_time: l.session.auth_time(),
                    sid: l.sid.clone(),
                    resource: String::new(),
                })
                .unwrap_or_default();
            let done = sqlx::query(
                "UPDATE oauth_device_codes SET status = $1, user_id = $2, scopes = $3, amr = $4,
                    auth_time = $5, sid = $6 WHERE user_code = $7 AND status = 'pending'",
            )
            .bind(if allow { "approved" } else { "denied" })
            .bind(&user.id)
            .bind(granted.join(" "))
            .bind(signed_in.amr.join(" "))
            .bind(signed_in.auth_time as i64)
            .bind(&signed_in.sid)
            .bind(&code)
            .execute(reg.accounts.db.pool())
            .await;
            if let Err(e) = done {
                return web::unavailable(&reg.accounts, &ctx, &e);
            }
            tracing::info!(target: "gatehouse::audit", event = if allow { "device_allowed" } else { "device_denied" }, user = %user.id, client_id = %client.client_id, user_code = %code, "audit");
            let (heading, line) = if allow {
                ("Device connected", format!("{} can now use your account. You can close this page and go back to your device.", client.name))
            } else {
                (
                    "Access denied",
                    format!(
                        "{} was not given access. You can close this page.",
                        client.name
                    ),
                )
            };
            web::message(
                &reg.accounts,
                &ctx,
                StatusCode::OK,
                heading,
                &[&line],
                Some(("/account", "Your account")),
            )
        }
    }
}

/// Forgets code pairs a day past their expiry.
pub async fn purge(db: &Db, now: u64) -> Result<u64, DbError> {
    let before = now.saturating_sub(grants::KEEP_SPENT_SECS) as i64;
    let done = sqlx::query("DELETE FROM oauth_device_codes WHERE expires_at < $1")
        .bind(before)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_eight_letters_and_typing_is_forgiven() {
        for _ in 0..100 {
            let c = user_code();
            assert_eq!(c.len(), 9);
            assert_eq!(normalise(&c), Some(c.clone()));
            assert_eq!(normalise(&c.to_lowercase().replace('-', " ")), Some(c));
        }
        assert_eq!(normalise("BCDF-GHJ"), None);
        assert_eq!(normalise("ABCD-EFGH"), None, "vowels are never in a code");
    }
}
