//! The second factors' operations, for the pages and the JSON API alike (as `ops`): which a
//! user has, the second step of a sign-in, the step-up of a signed-in session (both with a
//! code or a passkey), a sign-in with a passkey alone, enrolment of an authenticator app or
//! a passkey, recovery codes, and removal.
//!
//! A wrong code costs what a wrong password costs: the same throttle, keyed by the user
//! (`2fa:<id>`), and no device cookie exempts anyone from it.

use axum::http::StatusCode;

use super::db::{Factors, Purpose, User};
use super::factors::{self, TOTP_PURPOSE};
use super::ops::{self, Caller, LoggedIn, Problem};
use super::passkeys;
use super::Accounts;
use crate::audit;
use crate::sessions::Issued;

/// What the user can finish a second step with ([`super::db::Factors::methods`]).
pub async fn methods(app: &Accounts, user_id: &str) -> Result<Vec<&'static str>, Problem> {
    Ok(app.db.factors(user_id).await?.methods())
}

/// The user's second factors, for the security page and the API.
pub async fn factors_of(app: &Accounts, user_id: &str) -> Result<Factors, Problem> {
    Ok(app.db.factors(user_id).await?)
}

fn expired() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "second_step_expired",
        "This sign-in has expired or was finished elsewhere. Please sign in again.",
    )
}

/// What a second step is finished with.
pub enum Proof<'a> {
    /// A code of `method`: `totp` or `recovery`.
    Code { method: &'a str, code: &'a str },
    /// A passkey's answer (JSON) to the ceremony of the browser's cookie.
    Passkey {
        ceremony: &'a str,
        credential: &'a str,
    },
}

/// The user of the sign-in whose pending token the browser holds.
pub async fn pending_user(app: &Accounts, pending: &str) -> Result<User, Problem> {
    let Some((user_id, _)) = app.db.peek_token(pending, Purpose::SecondStep).await? else {
        return Err(expired());
    };
    app.db
        .user(&user_id)
        .await?
        .filter(|u| u.active)
        .ok_or_else(expired)
}

/// Finishes the sign-in whose pending token the browser holds, with `proof`.
pub async fn second_step(
    app: &Accounts,
    caller: &Caller<'_>,
    pending: &str,
    proof: Proof<'_>,
) -> Result<LoggedIn, Problem> {
    let user = pending_user(app, pending).await?;
    let amr = verify(app, caller, &user, proof).await?;
    // Used once: of two browsers racing with one pending token, one signs in.
    let Some((_, field)) = app.db.take_token(pending, Purpose::SecondStep).await? else {
        return Err(expired());
    };
    // Begun at another provider: `fed` in place of the password.
    let via = ops::Via::from_pending(&field);
    let amr: Vec<&str> = amr
        .iter()
        .map(|m| {
            if *m == "pwd" && via.is_some() {
                "fed"
            } else {
                *m
            }
        })
        .collect();
    ops::finish_login_via(app, caller, user, &amr, via.as_ref()).await
}

/// A signed-in user proves a second factor: their session is replaced by one that says so
/// (the old one ends), for a route that asks for `mfa`.
pub async fn step_up(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    proof: Proof<'_>,
) -> Result<Issued, Problem> {
    let amr = verify(app, caller, user, proof).await?;
    audit!("step_up", user.id, caller.ip);
    ops::issue_session(app, caller, user, amr).await
}

/// Checks `proof` for `user`, with the throttle; the session's `amr` on success.
async fn verify(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    proof: Proof<'_>,
) -> Result<&'static [&'static str], Problem> {
    let (method, amr): (&'static str, &'static [&'static str]) = match proof {
        Proof::Passkey { .. } => ("passkey", &["pwd", "hwk", "mfa"]),
        Proof::Code { method: "totp", .. } => ("totp", &["pwd", "otp", "mfa"]),
        Proof::Code {
            method: "recovery", ..
        } => ("recovery", &["pwd", "mfa"]),
        Proof::Code { .. } => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_fields",
                "Choose an authenticator-app code or a recovery code.",
            ))
        }
    };
    let key = format!("2fa:{}", user.id);
    let wait = app.throttle.wait(&key).await?;
    if !wait.is_zero() {
        app.metrics.second_factor(method, "throttled");
        audit!(
            "second_factor_throttled",
            user.id,
            caller.ip,
            method = method
        );
        return Err(Problem::wait(app, "throttled", wait));
    }
    let ok = match proof {
        Proof::Code { code, .. } if method == "totp" => totp_ok(app, user, code, false).await?,
        Proof::Code { code, .. } => {
            app.db
                .use_recovery_code(&user.id, &factors::recovery_hash(code))
                .await?
        }
        Proof::Passkey {
            ceremony,
            credential,
        } => match passkeys::check_assertion(app, ceremony, credential, Some(&user.id)).await {
            Ok(_) => true,
            Err(p) if p.code == "passkey_refused" => false,
            Err(p) => return Err(p),
        },
    };
    if !ok {
        app.throttle.fail(&key).await?;
        app.metrics.second_factor(method, "failed");
        audit!("second_factor_failed", user.id, caller.ip, method = method);
        if method == "passkey" {
            return Err(passkeys::refused());
        }
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid_code",
            "That code is not right. Check it and try again, or use another way.",
        ));
    }
    app.throttle.succeed(&key).await?;
    app.metrics.second_factor(method, "ok");
    audit!("second_factor", user.id, caller.ip, method = method);
    if method == "recovery" {
        let left = app.db.recovery_codes_left(&user.id).await.unwrap_or(0);
        ops::notify(
            app,
            user,
            "A recovery code was used",
            &format!("a recovery code was used to sign in to your account. {left} are left; you can make a new set on your security page"),
        );
    }
    Ok(amr)
}

/// Whether `code` is the current code of the user's authenticator app, never used before
/// (`confirm`: of the app being enrolled, which it then confirms).
async fn totp_ok(app: &Accounts, user: &User, code: &str, confirm: bool) -> Result<bool, Problem> {
    let Some(totp) = app.db.totp(&user.id).await? else {
        return Ok(false);
    };
    if totp.confirmed == confirm {
        return Ok(false);
    }
    let Some(secret) = app.secret.open(TOTP_PURPOSE, &totp.sealed_secret) else {
        tracing::error!(
            user = user.id,
            "an authenticator app's secret does not open with this server secret (was --server-secret-file replaced?)"
        );
        return Ok(false);
    };
    match factors::matching_step(&secret, code, crate::session::unix_now()) {
        Some(step) => Ok(app.db.use_totp_step(&user.id, step, confirm).await?),
        None => Ok(false),
    }
}

/// An authenticator app being enrolled: what the page shows once.
pub struct Enrolment {
    /// The secret in base32, for typing in.
    pub secret: String,
    /// The `otpauth://` URI the QR code holds.
    pub uri: String,
    pub qr_svg: String,
}

/// Starts (or starts again) enrolling an authenticator app; `None` when one is confirmed.
pub async fn begin_totp(app: &Accounts, user: &User) -> Result<Option<Enrolment>, Problem> {
    let secret = factors::new_secret();
    if !app
        .db
        .begin_totp(&user.id, &app.secret.seal(TOTP_PURPOSE, &secret))
        .await?
    {
        return Ok(None);
    }
    Ok(Some(enrolment_of(app, user, &secret)))
}

/// The app being enrolled, unconfirmed, shown again (after a wrong first code).
pub async fn enrolment(app: &Accounts, user: &User) -> Result<Option<Enrolment>, Problem> {
    let Some(totp) = app.db.totp(&user.id).await?.filter(|t| !t.confirmed) else {
        return Ok(None);
    };
    Ok(app
        .secret
        .open(TOTP_PURPOSE, &totp.sealed_secret)
        .map(|secret| enrolment_of(app, user, &secret)))
}

fn enrolment_of(app: &Accounts, user: &User, secret: &[u8]) -> Enrolment {
    let issuer = app
        .settings
        .public_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .filter(|h| !h.is_empty())
        .unwrap_or("gatehouse");
    let uri = factors::otpauth_uri(issuer, &user.username, secret);
    Enrolment {
        secret: factors::base32(secret),
        qr_svg: factors::qr_svg(&uri),
        uri,
    }
}

/// Confirms the app being enrolled with its first code. Returns a first set of recovery codes
/// (shown once) when the user had none.
pub async fn confirm_totp(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    code: &str,
) -> Result<Option<Vec<String>>, Problem> {
    let key = format!("2fa:{}", user.id);
    let wait = app.throttle.wait(&key).await?;
    if !wait.is_zero() {
        return Err(Problem::wait(app, "throttled", wait));
    }
    if !totp_ok(app, user, code, true).await? {
        app.throttle.fail(&key).await?;
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_code",
            "That code is not right. Check the time on your phone, and type the code your app shows now.",
        ));
    }
    app.throttle.succeed(&key).await?;
    audit!("second_factor_added", user.id, caller.ip, method = "totp");
    ops::notify(
        app,
        user,
        "An authenticator app was added",
        "an authenticator app was added to your account: signing in now asks for its code after your password",
    );
    first_recovery_codes(app, user).await
}

/// A new set of recovery codes (the old set is void), shown once. Only for a user with a
/// second factor: alone they are none.
pub async fn new_recovery_codes(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
) -> Result<Vec<String>, Problem> {
    if !factors_of(app, &user.id).await?.any() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "no_second_factor",
            "Add a passkey or an authenticator app first: recovery codes stand in for them.",
        ));
    }
    let codes = store_recovery_codes(app, user).await?;
    audit!("recovery_codes_renewed", user.id, caller.ip);
    ops::notify(
        app,
        user,
        "New recovery codes",
        "a new set of recovery codes was made for your account; the old ones no longer work",
    );
    Ok(codes)
}

/// The first set of recovery codes, with a user's first second factor; `None` when they
/// have some already.
async fn first_recovery_codes(app: &Accounts, user: &User) -> Result<Option<Vec<String>>, Problem> {
    if app.db.recovery_codes_left(&user.id).await? > 0 {
        return Ok(None);
    }
    Ok(Some(store_recovery_codes(app, user).await?))
}

async fn store_recovery_codes(app: &Accounts, user: &User) -> Result<Vec<String>, Problem> {
    let codes = factors::new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| factors::recovery_hash(c)).collect();
    app.db.replace_recovery_codes(&user.id, &hashes).await?;
    Ok(codes)
}

/// Removes the authenticator app, the password first; the recovery codes go with it when it
/// was the user's last second factor.
pub async fn remove_totp(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    password: &str,
) -> Result<(), Problem> {
    if !ops::current_password_ok(app, user, password).await? {
        return Err(wrong_password());
    }
    if app.db.remove_totp(&user.id).await? {
        let last = !app.db.factors(&user.id).await?.any();
        if last {
            app.db.replace_recovery_codes(&user.id, &[]).await?;
        }
        audit!("second_factor_removed", user.id, caller.ip, method = "totp");
        ops::notify(
            app,
            user,
            "An authenticator app was removed",
            if last {
                "the authenticator app of your account was removed, with its recovery codes: signing in asks for your password alone"
            } else {
                "the authenticator app of your account was removed"
            },
        );
    }
    Ok(())
}

fn wrong_password() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "That is not your current password.",
    )
}

/// Signs in with a passkey alone (discoverable: whoever's passkey it is). User verification
/// makes it two factors (`hwk mfa`). A refused passkey costs what a wrong password costs
/// from this address.
pub async fn passkey_sign_in(
    app: &Accounts,
    caller: &Caller<'_>,
    ceremony: &str,
    credential: &str,
) -> Result<LoggedIn, Problem> {
    let key = format!("ip:{}", crate::store::counters::address_key(caller.ip));
    let wait = app.throttle.wait(&key).await?;
    if !wait.is_zero() {
        app.metrics.second_factor("passkey", "throttled");
        return Err(Problem::wait(app, "throttled", wait));
    }
    let user_id = match passkeys::check_assertion(app, ceremony, credential, None).await {
        Ok(id) => id,
        Err(p) => {
            if p.code == "passkey_refused" {
                app.throttle.fail(&key).await?;
                app.metrics.second_factor("passkey", "failed");
                audit!("passkey_sign_in_failed", "", caller.ip);
            }
            return Err(p);
        }
    };
    let Some(user) = app.db.user(&user_id).await? else {
        return Err(passkeys::refused());
    };
    if !user.active {
        return Err(ops::inactive(app, caller, &user));
    }
    app.throttle.succeed(&key).await?;
    app.metrics.second_factor("passkey", "ok");
    audit!("passkey_sign_in", user.id, caller.ip);
    ops::finish_login(app, caller, user, &["hwk", "mfa"]).await
}

/// Whether to offer the user, just signed in with a password alone, to make a passkey:
/// passkeys are on, they have none, and they did not say "not now".
pub async fn offer_passkey(app: &Accounts, user: &User) -> bool {
    if app.passkeys.is_none() {
        return false;
    }
    match (
        app.db.factors(&user.id).await,
        app.db.passkey_offer_declined(&user.id).await,
    ) {
        (Ok(f), Ok(declined)) => f.passkeys == 0 && !declined,
        _ => false,
    }
}

/// Registers a passkey from the authenticator's answer to the browser's ceremony. Returns
/// a first set of recovery codes (shown once) when the user had none.
pub async fn add_passkey(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    ceremony: &str,
    name: &str,
    credential: &str,
) -> Result<Option<Vec<String>>, Problem> {
    let id = passkeys::finish_registration(app, user, ceremony, name, credential).await?;
    audit!(
        "second_factor_added",
        user.id,
        caller.ip,
        method = "passkey",
        passkey = id.as_str()
    );
    ops::notify(
        app,
        user,
        "A passkey was added",
        &format!(
            "a passkey named \"{}\" was added to your account: it signs you in on its own, and stands in for a code after your password",
            name.trim()
        ),
    );
    first_recovery_codes(app, user).await
}

/// Renames one of the user's passkeys.
pub async fn rename_passkey(
    app: &Accounts,
    user: &User,
    id: &str,
    name: &str,
) -> Result<(), Problem> {
    let name = passkeys::check_name(name)?;
    if !app.db.rename_passkey(&user.id, id, &name).await? {
        return Err(no_such_passkey());
    }
    Ok(())
}

fn no_such_passkey() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "No such passkey.")
}

/// Removes one of the user's passkeys. When it is their last second factor the recovery
/// codes go with it, and the password is asked first.
pub async fn remove_passkey(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    id: &str,
    password: &str,
) -> Result<(), Problem> {
    let f = app.db.factors(&user.id).await?;
    let last = !f.totp && f.passkeys <= 1;
    if last && !ops::current_password_ok(app, user, password).await? {
        return Err(wrong_password());
    }
    let Some(name) = app
        .db
        .passkeys(&user.id)
        .await?
        .into_iter()
        .find(|p| p.id == id)
        .map(|p| p.name)
    else {
        return Err(no_such_passkey());
    };
    if app.db.remove_passkeys(&user.id, Some(id)).await? == 0 {
        return Err(no_such_passkey());
    }
    if last {
        app.db.replace_recovery_codes(&user.id, &[]).await?;
    }
    audit!(
        "second_factor_removed",
        user.id,
        caller.ip,
        method = "passkey",
        passkey = id
    );
    ops::notify(
        app,
        user,
        "A passkey was removed",
        &format!("the passkey named \"{name}\" was removed from your account"),
    );
    Ok(())
}
