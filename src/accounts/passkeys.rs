//! Passkeys: WebAuthn credentials with user verification, made and checked by webauthn-rs
//! (kanidm's relying-party library). A passkey is a second factor after the password, and
//! a sign-in on its own (`amr` `hwk mfa`): discoverable, so no username is needed.
//!
//! A ceremony takes two requests: the options (a challenge) and the authenticator's answer.
//! Its state is kept in the database, used once, under a random token in the browser's
//! HttpOnly cookie ([`CEREMONY_COOKIE`]); a ceremony of a named user is bound to that user.
//! Attestation is not asked for (`none`): any authenticator that verifies its user will do.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::db::{NewPasskey, StoredPasskey, User};
use super::ops::Problem;
use super::Accounts;
use crate::error::ConfigError;

/// The cookie of a ceremony in progress: HttpOnly, this site only, [`CEREMONY_TTL`].
pub const CEREMONY_COOKIE: &str = "gatehouse_webauthn";
/// How long a ceremony waits for the authenticator (the user may have to find a key).
pub const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// Ceremonies one address may begin per minute: a sign-in page asks for one at every load
/// (autofill), and each keeps a row until it is used or expires.
pub const CEREMONIES_PER_MINUTE: u32 = 30;
/// The longest name of a passkey, in characters.
pub const MAX_NAME: usize = 64;

/// The relying party: webauthn-rs configured with the RP id and the origin of the pages.
pub struct RelyingParty {
    webauthn: Webauthn,
    pub rp_id: String,
}

/// The relying party of `--webauthn-rp-id` (by default the host of `public_url`), or `None`
/// when passkeys are off: an IP address is no RP id, which is said in a warning. An id that
/// is not the host of `public_url` or a parent domain of it exits 64.
pub fn relying_party(
    rp_id: Option<&str>,
    public_url: &str,
) -> Result<Option<RelyingParty>, ConfigError> {
    let origin = Url::parse(public_url)
        .map_err(|e| ConfigError::new("--public-url", format!("not a URL: {e}")))?;
    let id = match rp_id {
        Some(id) => id.trim().trim_end_matches('.').to_ascii_lowercase(),
        None => origin.host_str().unwrap_or_default().to_ascii_lowercase(),
    };
    let is_ip = id
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok();
    if is_ip || origin.domain().is_none() {
        tracing::warn!(
            rp_id = id,
            public_url,
            "passkeys are off: a WebAuthn relying party id is a domain name, never an IP address; set --public-url to the https:// name people use (or --webauthn-rp-id)"
        );
        return Ok(None);
    }
    let refused = || {
        ConfigError::new(
            "--webauthn-rp-id",
            format!(
                "{id:?} must be the host of --public-url ({}) or a parent domain of it",
                origin.host_str().unwrap_or_default()
            ),
        )
    };
    if id.is_empty() || id.contains(['/', ':', ' ']) {
        return Err(refused());
    }
    let webauthn = WebauthnBuilder::new(&id, &origin)
        .map_err(|_| refused())?
        .rp_name(&id)
        .build()
        .map_err(|_| refused())?;
    tracing::info!(rp_id = id, origin = %origin, "passkeys on");
    Ok(Some(RelyingParty {
        webauthn,
        rp_id: id,
    }))
}

fn off() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "passkeys_off",
        "Passkeys are not available on this server.",
    )
}

fn expired() -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "ceremony_expired",
        "This passkey request has expired. Please try again.",
    )
}

/// The answer of an authenticator that does not check out (any reason: the log says which).
pub fn refused() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "passkey_refused",
        "That passkey was not accepted. Try again, or use another way to sign in.",
    )
}

fn rp(app: &Accounts) -> Result<&RelyingParty, Problem> {
    app.passkeys.as_ref().ok_or_else(off)
}

/// The relying party, once `ip` is within its ceremonies per minute.
async fn begin(app: &Accounts, ip: IpAddr) -> Result<&RelyingParty, Problem> {
    let rp = rp(app)?;
    if let Some(wait) = app.ceremonies.check(ip).await? {
        return Err(Problem::wait(app, "rate_limited", wait));
    }
    Ok(rp)
}

/// What a ceremony's first request gives the browser: the options for
/// `navigator.credentials` (`{"publicKey": …}`), and the token for its cookie.
pub struct Challenge {
    pub options: Value,
    pub ceremony: crate::secret::Secret<String>,
}

/// A registration's state: the user handle the new passkey carries, and webauthn-rs' state.
#[derive(Serialize, Deserialize)]
struct Registering {
    handle: Uuid,
    state: PasskeyRegistration,
}

/// Starts registering a passkey for the signed-in `user`. The credential asked for is
/// discoverable (resident), so that it can sign in without a username; the user's passkeys
/// are excluded (one credential, one registration).
pub async fn begin_registration(
    app: &Accounts,
    ip: IpAddr,
    user: &User,
) -> Result<Challenge, Problem> {
    let rp = begin(app, ip).await?;
    let existing = app.db.passkeys(&user.id).await?;
    let handle = existing
        .first()
        .and_then(|p| Uuid::parse_str(&p.user_handle).ok())
        .unwrap_or_else(Uuid::new_v4);
    let exclude = existing
        .iter()
        .filter_map(|p| parse(p).ok())
        .map(|k| k.cred_id().clone())
        .collect();
    let display = if user.name.is_empty() {
        &user.username
    } else {
        &user.name
    };
    let (ccr, state) = rp
        .webauthn
        .start_passkey_registration(handle, &user.username, display, Some(exclude))
        .map_err(|e| unusable(&e))?;
    let mut options = serde_json::json!({ "publicKey": ccr.public_key });
    // webauthn-rs discourages a resident key (security keys have little room); a passkey
    // that signs in without a username needs one. The server's checks do not depend on it.
    options["publicKey"]["authenticatorSelection"]["residentKey"] = "required".into();
    options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = true.into();
    let state = serde_json::to_string(&Registering { handle, state }).map_err(|e| unusable(&e))?;
    let ceremony = app
        .db
        .begin_ceremony(&user.id, "register", &state, CEREMONY_TTL)
        .await?;
    Ok(Challenge { options, ceremony })
}

fn unusable(e: &dyn std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "a WebAuthn ceremony could not be built");
    Problem::unavailable(e)
}

/// A name for a passkey: trimmed, 1 to [`MAX_NAME`] characters, no control characters.
pub fn check_name(name: &str) -> Result<String, Problem> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!(
                "Give the passkey a name of 1 to {MAX_NAME} characters, such as \"Work laptop\"."
            ),
        ));
    }
    Ok(name.to_owned())
}

/// Finishes a registration: the authenticator's answer to the ceremony of the browser's
/// cookie, which must be this user's. The passkey's id on success.
pub async fn finish_registration(
    app: &Accounts,
    user: &User,
    ceremony: &str,
    name: &str,
    credential: &str,
) -> Result<String, Problem> {
    let rp = rp(app)?;
    let name = check_name(name)?;
    let credential: RegisterPublicKeyCredential =
        serde_json::from_str(credential).map_err(|_| refused())?;
    let Some((user_id, kind, state)) = app.db.take_ceremony(ceremony).await? else {
        return Err(expired());
    };
    if user_id != user.id || kind != "register" {
        return Err(expired());
    }
    let Registering { handle, state } = serde_json::from_str(&state).map_err(|_| expired())?;
    let passkey = rp
        .webauthn
        .finish_passkey_registration(&credential, &state)
        .map_err(|e| {
            tracing::info!(user = user.id, error = %e, "a passkey registration was refused");
            refused()
        })?;
    let record = serde_json::to_string(&passkey).map_err(|e| unusable(&e))?;
    let cred = Record::of(&passkey)?;
    let Some(id) = app
        .db
        .add_passkey(&NewPasskey {
            user_id: &user.id,
            credential_id: &URL_SAFE_NO_PAD.encode(passkey.cred_id()),
            user_handle: &handle.to_string(),
            name: &name,
            passkey: &record,
            counter: cred.counter,
            backup_eligible: cred.backup_eligible,
            backup_state: cred.backup_state,
        })
        .await?
    else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "passkey_exists",
            "This passkey is registered already.",
        ));
    };
    Ok(id)
}

/// The counter and backup flags of a passkey, read from webauthn-rs' record of it (which
/// keeps them to itself).
struct Record {
    counter: u32,
    backup_eligible: bool,
    backup_state: bool,
}

impl Record {
    fn of(passkey: &Passkey) -> Result<Record, Problem> {
        let v = serde_json::to_value(passkey).map_err(|e| unusable(&e))?;
        let cred = &v["cred"];
        Ok(Record {
            counter: cred["counter"].as_u64().unwrap_or(0) as u32,
            backup_eligible: cred["backup_eligible"].as_bool().unwrap_or(false),
            backup_state: cred["backup_state"].as_bool().unwrap_or(false),
        })
    }
}

fn parse(p: &StoredPasskey) -> Result<Passkey, Problem> {
    serde_json::from_str(&p.passkey).map_err(|e| {
        tracing::error!(passkey = p.id, error = %e, "a stored passkey does not parse");
        Problem::unavailable(&e)
    })
}

/// Starts a sign-in with a passkey: for `user` (a second step or a step-up: only their
/// passkeys are allowed), or, with `None`, for whoever's passkey the authenticator offers
/// (discoverable; the browser may offer it as autofill).
pub async fn begin_assertion(
    app: &Accounts,
    ip: IpAddr,
    user: Option<&User>,
) -> Result<Challenge, Problem> {
    let rp = begin(app, ip).await?;
    let (options, user_id, kind, state) = match user {
        None => {
            let (rcr, state) = rp
                .webauthn
                .start_discoverable_authentication()
                .map_err(|e| unusable(&e))?;
            let state = serde_json::to_string(&state).map_err(|e| unusable(&e))?;
            (rcr.public_key, String::new(), "discover", state)
        }
        Some(user) => {
            let keys = app
                .db
                .passkeys(&user.id)
                .await?
                .iter()
                .map(parse)
                .collect::<Result<Vec<_>, _>>()?;
            if keys.is_empty() {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "no_passkey",
                    "This account has no passkey.",
                ));
            }
            let (rcr, state) = rp
                .webauthn
                .start_passkey_authentication(&keys)
                .map_err(|e| unusable(&e))?;
            let state = serde_json::to_string(&state).map_err(|e| unusable(&e))?;
            (rcr.public_key, user.id.clone(), "user", state)
        }
    };
    let ceremony = app
        .db
        .begin_ceremony(&user_id, kind, &state, CEREMONY_TTL)
        .await?;
    Ok(Challenge {
        options: serde_json::json!({ "publicKey": options }),
        ceremony,
    })
}

/// Checks an authenticator's answer (`credential`, JSON) to the ceremony of `ceremony`:
/// the challenge, the origin and RP id, the signature, user verification, and a counter
/// that went up (a counter that did not is a cloned authenticator). `for_user` is who a
/// named ceremony must be for; the passkey must be theirs. On success the passkey's new
/// counter and last use are stored, and its owner's user id is returned.
pub async fn check_assertion(
    app: &Accounts,
    ceremony: &str,
    credential: &str,
    for_user: Option<&str>,
) -> Result<String, Problem> {
    let rp = rp(app)?;
    let credential: PublicKeyCredential =
        serde_json::from_str(credential).map_err(|_| refused())?;
    let Some((user_id, kind, state)) = app.db.take_ceremony(ceremony).await? else {
        return Err(expired());
    };
    let stored = app
        .db
        .passkey_by_credential(&URL_SAFE_NO_PAD.encode(&credential.raw_id))
        .await?;
    let Some(stored) = stored else {
        tracing::info!("a passkey assertion named no registered credential");
        return Err(refused());
    };
    let mut passkey = parse(&stored)?;
    let checked = match (kind.as_str(), for_user) {
        ("discover", None) => {
            let handle = rp
                .webauthn
                .identify_discoverable_authentication(&credential)
                .map(|(handle, _)| handle.to_string());
            if handle.ok().as_deref() != Some(stored.user_handle.as_str()) {
                tracing::info!(
                    user = stored.user_id,
                    "a passkey assertion carried another user handle than its credential's"
                );
                return Err(refused());
            }
            let state: DiscoverableAuthentication =
                serde_json::from_str(&state).map_err(|_| expired())?;
            rp.webauthn
                .finish_discoverable_authentication_v2(&credential, state, &passkey)
        }
        ("user", Some(expected)) if user_id == expected => {
            // A's passkey while B signs in: the ceremony allowed B's passkeys alone, and the
            // credential must be B's too.
            if stored.user_id != expected {
                tracing::info!(
                    user = expected,
                    "a passkey assertion presented another user's credential"
                );
                return Err(refused());
            }
            let state: PasskeyAuthentication =
                serde_json::from_str(&state).map_err(|_| expired())?;
            rp.webauthn
                .finish_passkey_authentication(&credential, &state)
        }
        _ => return Err(expired()),
    };
    let result = checked.map_err(|e| {
        tracing::info!(user = stored.user_id, error = %e, "a passkey assertion was refused");
        refused()
    })?;
    passkey.update_credential(&result);
    let record = serde_json::to_string(&passkey).map_err(|e| unusable(&e))?;
    if !app
        .db
        .used_passkey(
            &stored.id,
            &record,
            result.counter(),
            (result.backup_eligible(), result.backup_state()),
        )
        .await?
    {
        tracing::info!(
            user = stored.user_id,
            "a passkey's counter was used by another sign-in meanwhile"
        );
        return Err(refused());
    }
    Ok(stored.user_id)
}

/// A passkey as the pages and the API list it.
#[derive(Serialize)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    /// Whether it may be synced to the user's other devices (a passkey manager's), and is.
    pub backup_eligible: bool,
    pub backed_up: bool,
}

/// The user's passkeys, oldest first.
pub async fn list(app: &Accounts, user_id: &str) -> Result<Vec<Listed>, Problem> {
    Ok(app
        .db
        .passkeys(user_id)
        .await?
        .into_iter()
        .map(|p| Listed {
            id: p.id,
            name: p.name,
            created_at: p.created_at,
            last_used_at: p.last_used_at,
            backup_eligible: p.backup_eligible,
            backed_up: p.backup_state,
        })
        .collect())
}
