//! The operations behind both the pages and the JSON API, with the same rules for both:
//! each returns what happened or a [`Problem`] (a stable code, a message for people, field
//! errors), and the caller renders it as a page or as JSON.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::StatusCode;

use super::db::{self, DbError, NewUser, Purpose, User};
use super::followers::{end_credentials, EndError, Reason};
use super::guard;
use super::pages::Errors;
use super::{Accounts, Registration};
use crate::audit;
use crate::secret::Secret;
use crate::session::SessionKind;
use crate::sessions::Issued;
use crate::store::counters::address_key;

/// Why an operation did not happen.
pub struct Problem {
    pub status: StatusCode,
    /// Stable, for programs: `invalid_credentials`, `throttled`, `rate_limited`, `inactive`,
    /// `unconfirmed`, `invalid_fields`, `username_taken`, `registration_closed`,
    /// `invalid_token`, `unavailable`.
    pub code: &'static str,
    /// For people.
    pub message: String,
    pub fields: Errors,
    pub retry_after: Option<Duration>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            message: message.into(),
            fields: Errors::default(),
            retry_after: None,
        }
    }

    /// A dependency failed (database, store, or every password permit taken): 503.
    pub fn unavailable(why: &dyn std::fmt::Display) -> Problem {
        tracing::warn!(error = %why, "accounts: a dependency failed; answering 503");
        Problem {
            retry_after: Some(Duration::from_secs(5)),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "We could not complete this just now. Nothing was changed; please try again in a moment.",
            )
        }
    }

    fn fields(fields: Errors) -> Problem {
        Problem {
            fields,
            ..Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_fields",
                "Some fields need another look.",
            )
        }
    }

    pub(super) fn wait(app: &Accounts, code: &'static str, wait: Duration) -> Problem {
        app.metrics.throttled.inc();
        let secs = wait.as_secs().max(1);
        Problem {
            retry_after: Some(Duration::from_secs(secs)),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                code,
                format!("Too many attempts. Please wait {secs} seconds and try again."),
            )
        }
    }

    fn expired() -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "This link has expired: links work once, for 30 minutes, and only the newest one.",
        )
    }
}

impl From<DbError> for Problem {
    fn from(e: DbError) -> Problem {
        Problem::unavailable(&e)
    }
}

impl From<crate::sessions::SessionsError> for Problem {
    fn from(e: crate::sessions::SessionsError) -> Problem {
        Problem::unavailable(&e)
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Problem {
        Problem::unavailable(&e)
    }
}

impl From<EndError> for Problem {
    fn from(e: EndError) -> Problem {
        Problem::unavailable(&e)
    }
}

impl From<super::password::Busy> for Problem {
    fn from(e: super::password::Busy) -> Problem {
        Problem::unavailable(&e)
    }
}

/// Who is asking, as the operations need it.
pub struct Caller<'a> {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
    /// The session token the caller already holds, if any.
    pub token: Option<&'a str>,
    /// The caller's known-device cookie, if any (unchecked).
    pub device: Option<&'a str>,
}

/// What follows an accepted password: the session, or first a second step when the user
/// has a second factor.
enum Step {
    IssueSession,
    SecondFactor { methods: Vec<&'static str> },
}

async fn next_step(app: &Accounts, user: &User) -> Result<Step, Problem> {
    let methods = app.db.factors(&user.id).await?.methods();
    Ok(if methods.is_empty() {
        Step::IssueSession
    } else {
        Step::SecondFactor { methods }
    })
}

/// The user behind a live session, when they still exist and are active.
pub async fn active_user(
    app: &Accounts,
    listed: &crate::sessions::Listed,
) -> Result<Option<User>, Problem> {
    Ok(app.db.user(&listed.session.sub).await?.filter(|u| u.active))
}

/// The longest name a login takes: an email address's limit (RFC 3696 errata).
pub const MAX_LOGIN: usize = 320;

/// A login name as a tag for throttles and logs: `login:` and 16 hex digits of the SHA-256 of
/// its key, so that every spelling of one account shares one tag and nothing typed is kept.
pub fn login_tag(login: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, db::key(login).as_bytes());
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("login:{hex}")
}

/// A completed login: the session, its user, and the known-device cookie's new value.
pub struct LoggedIn {
    pub issued: Issued,
    pub user: User,
    pub device: String,
    /// `--require-second-factor` covers the user, who signed in without one: they are to
    /// set one up before anything else.
    pub must_enrol: bool,
}

/// What a right password leads to.
pub enum LoginOutcome {
    Done(Box<LoggedIn>),
    /// The second step is pending: `pending` goes into the browser's HttpOnly pending cookie,
    /// `methods` are what the user can finish it with (`totp`, `recovery`).
    SecondStep {
        pending: Secret<String>,
        methods: Vec<&'static str>,
    },
}

/// How long a pending sign-in waits for its second step.
pub const PENDING_TTL: Duration = Duration::from_secs(5 * 60);

/// Checks a username-or-email and password, with the login delays; on success the session.
///
/// The delays follow OWASP's device cookies: a browser that signed into this account before
/// carries a known-device cookie (MAC'd with the server secret), and its failures count
/// against that device alone, so an attacker rotating addresses can slow the account down
/// for every other browser but never for the owner's own. Other browsers are delayed by the
/// account's failures and their address's (IPv6 by its /64), counted in the shared store.
pub async fn login(
    app: &Accounts,
    caller: &Caller<'_>,
    login: &str,
    password: Secret<String>,
) -> Result<LoginOutcome, Problem> {
    // Refused before anything else: a longer name is no user's, and must cost no memory, no
    // hash and no log line.
    if login.len() > MAX_LOGIN {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_fields",
            "A username or email address has at most 320 characters.",
        ));
    }
    // The name as a bounded, unreadable tag: the throttle's key and what the log shows of a
    // name that matched no one (it may be a password typed into the wrong field).
    let tag = login_tag(login);
    let user = app.db.find(login).await?;
    let device = caller
        .device
        .and_then(|c| guard::Device::parse(&app.secret, c))
        .filter(|d| user.as_ref().is_some_and(|u| u.id == d.user_id));
    let keys: Vec<String> = match &device {
        Some(d) => vec![d.throttle_key()],
        None => vec![format!("u:{tag}"), format!("ip:{}", address_key(caller.ip))],
    };
    let mut wait = Duration::ZERO;
    for key in &keys {
        wait = wait.max(app.throttle.wait(key).await?);
    }
    if !wait.is_zero() {
        app.metrics.login("throttled");
        audit!(
            "login_throttled",
            tag,
            caller.ip,
            known_device = device.is_some()
        );
        return Err(Problem::wait(app, "throttled", wait));
    }
    // Unknown users verify a dummy hash: the same work, the same time, the same answer.
    let verified = match verify_password(app, user.as_ref(), &password).await {
        Ok(v) => v,
        Err(busy) => {
            app.metrics.login("busy");
            return Err(busy);
        }
    };
    let user = match user {
        Some(u) if verified.ok => u,
        other => {
            for key in &keys {
                app.throttle.fail(key).await?;
            }
            app.metrics.login("failed");
            audit!(
                "login_failed",
                other.map_or(tag, |u| u.id),
                caller.ip,
                known_device = device.is_some()
            );
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "Wrong username or password.",
            ));
        }
    };
    for key in &keys {
        app.throttle.succeed(key).await?;
    }
    may_sign_in(app, caller, &user).await?;
    if verified.rehash {
        if let Ok(h) = app.passwords.hash(&password).await {
            if let Err(e) = app.db.rehash_password(&user.id, &h).await {
                tracing::warn!(user = user.id, error = %e, "password rehash not stored");
            }
        }
    }
    match next_step(app, &user).await? {
        Step::IssueSession => Ok(LoginOutcome::Done(Box::new(
            finish_login(app, caller, user, &["pwd"]).await?,
        ))),
        Step::SecondFactor { methods } => {
            let pending = app
                .db
                .issue_token(&user.id, Purpose::SecondStep, "", PENDING_TTL)
                .await?;
            audit!("login_second_step", user.id, caller.ip);
            Ok(LoginOutcome::SecondStep { pending, methods })
        }
    }
}

/// Whether `password` is `user`'s (a dummy hash is verified for no user): their stored hash,
/// or for a user imported with `legacy-hook`, the old system's answer. Err: busy, or the
/// hook down (503, "try again later": never an accept, and no failure to count).
async fn verify_password(
    app: &Accounts,
    user: Option<&User>,
    password: &Secret<String>,
) -> Result<super::password::Verified, Problem> {
    let stored = user.and_then(|u| u.password_hash.as_ref());
    let hooked = stored.and_then(|h| super::hashes::scheme(h.expose()))
        == Some(super::hashes::Scheme::LegacyHook);
    if let (true, Some(user)) = (hooked, user) {
        let Some(hook) = &app.legacy_hook else {
            tracing::error!(
                user = user.id,
                "an imported user's password needs --legacy-password-hook"
            );
            return Err(legacy_hook_down());
        };
        return match hook.check(&app.outbound, &user.username, password).await {
            Ok(ok) => Ok(super::password::Verified { ok, rehash: ok }),
            Err(e) => {
                tracing::warn!(user = user.id, error = %e, "legacy password hook");
                Err(legacy_hook_down())
            }
        };
    }
    Ok(app.passwords.verify(password, stored).await?)
}

fn legacy_hook_down() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Your password cannot be checked right now. Please try again in a few minutes.",
    )
}

/// An "if this wasn't you" mail to the user's address, about `what` (a sentence).
pub(super) fn notify(app: &Accounts, user: &User, subject: &str, what: &str) {
    let url = &app.settings.public_url;
    let advice = if user.password_hash.is_some() {
        format!("reset your password now at {url}/password/forgot")
    } else {
        format!("review the ways you sign in at {url}/account/security")
    };
    let body = format!(
        "Hello {},\n\n{what}.\n\nIf this wasn't you, {advice} and tell the administrators.\n",
        user.username
    );
    let vars = serde_json::json!({"subject": subject, "what": what, "advice": advice});
    mail(
        app,
        user,
        &user.email,
        "security_notice",
        vars,
        (subject.to_owned(), body),
    );
}

/// Mails message `name` (one of [`super::look::MESSAGES`]) to `to`: the operator's
/// template with `vars` (and the user's name) when `--mail-templates` has one, else
/// `default`'s subject and body.
pub(super) fn mail(
    app: &Accounts,
    user: &User,
    to: &str,
    name: &str,
    vars: serde_json::Value,
    default: (String, String),
) {
    let mut vars = match vars {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    vars.insert("username".into(), user.username.clone().into());
    let (subject, body) =
        super::look::get().message(name, &vars, &app.settings.public_url, default);
    app.mailer.send(&user.id, to, &subject, body);
}

/// Whether a user whose credential was right may have a session: active, and with a
/// confirmed address (a new link is sent otherwise).
async fn may_sign_in(app: &Accounts, caller: &Caller<'_>, user: &User) -> Result<(), Problem> {
    if !user.active {
        return Err(inactive(app, caller, user));
    }
    if user.email_confirmed_at.is_none() {
        app.metrics.login("unconfirmed");
        send_confirmation(app, user, &user.email).await;
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "unconfirmed",
            "Confirm your email address first: we have sent you a new link.",
        ));
    }
    Ok(())
}

/// A deactivated user's right password or passkey: counted, audited, refused.
pub(super) fn inactive(app: &Accounts, caller: &Caller<'_>, user: &User) -> Problem {
    app.metrics.login("inactive");
    audit!("login_inactive", user.id, caller.ip);
    Problem::new(
        StatusCode::FORBIDDEN,
        "inactive",
        "This account is deactivated. Contact the administrators.",
    )
}

/// A sign-in through another provider (accounts::federation): which, and the provider's own
/// session, whose back-channel logout ends this one. It rides in a pending second step.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Via {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_sid: Option<String>,
}

/// The pending token's `email` field for a sign-in through a provider: `fed:` and the JSON
/// of its [`Via`] (a password sign-in leaves it empty).
const VIA_PREFIX: &str = "fed:";

impl Via {
    pub(super) fn from_pending(field: &str) -> Option<Via> {
        serde_json::from_str(field.strip_prefix(VIA_PREFIX)?).ok()
    }
}

/// Signs `user` in through a provider that vouched for them: `amr` `fed` (and `mfa` when
/// the provider reported one and is trusted to), then the user's own second factor unless
/// the provider's counted.
pub async fn federated_login(
    app: &Accounts,
    caller: &Caller<'_>,
    user: User,
    via: Via,
    upstream_mfa: bool,
) -> Result<LoginOutcome, Problem> {
    may_sign_in(app, caller, &user).await?;
    if upstream_mfa {
        let done = finish_login_via(app, caller, user, &["fed", "mfa"], Some(&via)).await?;
        return Ok(LoginOutcome::Done(Box::new(done)));
    }
    match next_step(app, &user).await? {
        Step::IssueSession => Ok(LoginOutcome::Done(Box::new(
            finish_login_via(app, caller, user, &["fed"], Some(&via)).await?,
        ))),
        Step::SecondFactor { methods } => {
            let field = format!(
                "{VIA_PREFIX}{}",
                serde_json::to_string(&via).unwrap_or_default()
            );
            let pending = app
                .db
                .issue_token(&user.id, Purpose::SecondStep, &field, PENDING_TTL)
                .await?;
            audit!(
                "login_second_step",
                user.id,
                caller.ip,
                idp = via.provider.as_str()
            );
            Ok(LoginOutcome::SecondStep { pending, methods })
        }
    }
}

/// The session of a completed sign-in, signed in with `amr`, and the device cookie.
pub(super) async fn finish_login(
    app: &Accounts,
    caller: &Caller<'_>,
    user: User,
    amr: &[&str],
) -> Result<LoggedIn, Problem> {
    finish_login_via(app, caller, user, amr, None).await
}

/// [`finish_login`], through a provider.
pub(super) async fn finish_login_via(
    app: &Accounts,
    caller: &Caller<'_>,
    user: User,
    amr: &[&str],
    via: Option<&Via>,
) -> Result<LoggedIn, Problem> {
    let issued = issue_session_via(app, caller, &user, amr, via).await?;
    // A device that signed in is known from now on (a new nonce each time).
    let device = guard::Device::issue(&app.secret, &user.id);
    let must_enrol =
        app.settings.require_second_factor.covers(&user.roles) && !amr.contains(&"mfa");
    Ok(LoggedIn {
        issued,
        user,
        device,
        must_enrol,
    })
}

/// The session for a user whose login is complete, who signed in with `amr` just now. Any
/// session the caller carried is ended (no fixation; a step-up replaces its session).
pub(super) async fn issue_session(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    amr: &[&str],
) -> Result<Issued, Problem> {
    issue_session_via(app, caller, user, amr, None).await
}

/// [`issue_session`], through a provider: the JWT says which (`idp`), and the provider's
/// session is recorded beside it for its back-channel logout.
async fn issue_session_via(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    amr: &[&str],
    via: Option<&Via>,
) -> Result<Issued, Problem> {
    let sessions = app.gateway.sessions();
    // Never reuse what the caller had: a session it carried before is ended, and the new one
    // has a new token (no fixation).
    if let Some(old) = caller.token {
        let _ = sessions.revoke(old).await;
    }
    let (roles, scopes) = app.roles().await?.of(&user.roles);
    let session = crate::session::Session {
        username: Some(user.username.clone()),
        email: Some(user.email.clone()),
        name: (!user.name.is_empty()).then(|| user.name.clone()),
        roles,
        scopes,
        ip: Some(caller.ip.to_string()),
        user_agent: caller.user_agent.clone(),
        amr: amr.iter().map(|m| m.to_string()).collect(),
        auth_time: Some(crate::session::unix_now()),
        idp: via.map(|v| v.provider.clone()),
        ..crate::sessions::Sessions::draft(user.id.clone(), app.settings.session_ttl)
    };
    let issued = sessions.issue(&session).await?;
    super::webhooks::session_created(&app.db, &user.id, &issued.sid, amr).await;
    if let Some(v) = via {
        app.db
            .record_federated_session(
                &v.provider,
                v.upstream_sid.as_deref(),
                &issued.sid,
                &user.id,
            )
            .await?;
    }
    if let Err(e) = app.db.record_login(&user.id, &caller.ip.to_string()).await {
        tracing::warn!(user = user.id, error = %e, "login not recorded");
    }
    app.metrics.login("ok");
    audit!("login", user.id, caller.ip, sid = issued.sid.as_str());
    Ok(issued)
}

/// Ends the session of `token`. `sub` is its user, for the audit line.
pub async fn logout(
    app: &Accounts,
    caller: &Caller<'_>,
    token: &str,
    sub: &str,
    sid: &str,
) -> Result<(), Problem> {
    app.gateway.sessions().revoke(token).await?;
    audit!("logout", sub, caller.ip, sid = sid);
    Ok(())
}

pub struct Registering<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub password: &'a str,
    pub invite: &'a str,
}

/// What a registration led to.
pub enum Registered {
    /// A confirmation link went out (or, for a taken address, a note to its owner: the
    /// caller cannot tell which).
    CheckMail,
    /// Invited: the address is confirmed already; the user may sign in.
    Ready(String),
}

/// The invitation's address when registration needs one; `Err` when registration is closed
/// to this caller.
pub async fn registration_open(app: &Accounts, invite: &str) -> Result<Option<String>, Problem> {
    let closed = || {
        Problem::new(
            StatusCode::FORBIDDEN,
            "registration_closed",
            if app.settings.registration == Registration::Invite {
                "New accounts need an invitation. Ask the administrators for one; the link in it opens this page."
            } else {
                "New accounts are created by the administrators."
            },
        )
    };
    match app.settings.registration {
        Registration::Open => Ok(None),
        Registration::Closed => Err(closed()),
        Registration::Invite => match app.db.peek_token(invite, Purpose::Invite).await? {
            Some((_, email)) => Ok(Some(email)),
            None => Err(closed()),
        },
    }
}

fn username_taken() -> Problem {
    let mut errors = Errors::default();
    errors.add("username", "This username is taken. Choose another.");
    Problem {
        status: StatusCode::CONFLICT,
        code: "username_taken",
        ..Problem::fields(errors)
    }
}

pub async fn register(
    app: &Accounts,
    caller: &Caller<'_>,
    r: &Registering<'_>,
) -> Result<Registered, Problem> {
    let invite_email = registration_open(app, r.invite).await?;
    if let Some(wait) = app.rate.check(caller.ip).await? {
        return Err(Problem::wait(app, "rate_limited", wait));
    }
    let mut errors = Errors::default();
    if let Some(p) = username_problem(r.username.trim()) {
        errors.add("username", p);
    }
    if let Some(p) = email_problem(r.email.trim()) {
        errors.add("email", p);
    } else if !domain_allowed(app, r.email.trim()) {
        errors.add("email", "Addresses of this domain cannot register here.");
    } else if invite_email
        .as_deref()
        .is_some_and(|e| db::key(e) != db::key(r.email))
    {
        errors.add("email", "Use the address the invitation was sent to.");
    }
    if r.name.trim().is_empty() {
        errors.add("name", "Enter your name.");
    } else if r.name.chars().count() > 200 {
        errors.add("name", "Use at most 200 characters.");
    }
    if let Some(p) = app
        .passwords
        .refuse(r.password, &[r.username, r.email, r.name])
    {
        errors.add("password", p);
    }
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    let hash = app
        .passwords
        .hash(&Secret::new(r.password.to_owned()))
        .await?;
    let created = app
        .db
        .create_user(&NewUser {
            username: r.username,
            email: r.email,
            name: r.name,
            password_hash: Some(&hash),
            active: true,
            confirmed: false,
            roles: &[],
        })
        .await;
    match created {
        Ok(user) => {
            app.metrics.registrations.inc();
            audit!("register", user.id, caller.ip);
            if invite_email.is_some() {
                // The invitation went to this address: it is confirmed already.
                let _ = app.db.take_token(r.invite, Purpose::Invite).await;
                app.db.confirm_email(&user.id, &user.email).await?;
                return Ok(Registered::Ready(user.username));
            }
            send_confirmation(app, &user, &user.email).await;
            Ok(Registered::CheckMail)
        }
        Err(DbError::Taken("email")) => {
            // A taken username gets the same answer whatever the address: which constraint
            // the database checked first must not tell whether the address has an account.
            let name_owner = app.db.find(r.username).await?;
            if name_owner.is_some_and(|u| db::key(&u.username) == db::key(r.username)) {
                return Err(username_taken());
            }
            // The same answer as a new registration: whether an address has an account is
            // told only to its owner, by mail.
            if let Ok(Some(owner)) = app.db.find(r.email).await {
                let body = format!(
                    "Hello {},\n\nsomeone tried to create an account with this email address, which already has one (username {}).\nIf it was you, sign in or reset your password at {}/password/forgot.\nIf not, you can ignore this message.\n",
                    owner.username, owner.username, app.settings.public_url
                );
                let subject = "Someone tried to register with your address".to_owned();
                let to = owner.email.clone();
                mail(
                    app,
                    &owner,
                    &to,
                    "registered_again",
                    serde_json::json!({}),
                    (subject, body),
                );
            }
            Ok(Registered::CheckMail)
        }
        Err(DbError::Taken(_)) => Err(username_taken()),
        Err(e) => Err(e.into()),
    }
}

/// Why a username cannot be used, or `None`.
pub fn username_problem(u: &str) -> Option<&'static str> {
    let n = u.chars().count();
    if !(3..=64).contains(&n) {
        return Some("Use 3 to 64 characters.");
    }
    if !u.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Some("Start with a letter.");
    }
    if !u
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some("Use only letters, digits, - and _.");
    }
    None
}

/// Whether `e` looks like a deliverable address (the confirmation mail proves it).
pub fn email_problem(e: &str) -> Option<&'static str> {
    let Some((local, domain)) = e.rsplit_once('@') else {
        return Some("Enter an email address like name@example.org.");
    };
    if local.is_empty()
        || e.len() > 254
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || e.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"\\".contains(c))
    {
        return Some("Enter an email address like name@example.org.");
    }
    None
}

pub(super) fn domain_allowed(app: &Accounts, email: &str) -> bool {
    let domain = email
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase();
    let matches = |list: &[String]| {
        list.iter().any(|d| match d.strip_prefix('.') {
            Some(base) => domain == base || domain.ends_with(d.as_str()),
            None => domain == *d,
        })
    };
    (app.settings.registration_domains.is_empty() || matches(&app.settings.registration_domains))
        && !matches(&app.settings.blocked_domains)
}

pub async fn send_confirmation(app: &Accounts, user: &User, email: &str) {
    let subject = "Confirm your email address";
    let what = "open this link to confirm your email address";
    let after = "The link works for 30 minutes. If you did not ask for it, ignore this message.";
    let link = ("confirm", Purpose::Confirm, "/email/confirm");
    mail_link(app, user, email, link, subject, what, after).await;
}

/// Mails `to` a new one-time link of `purpose` at `path` as message `name`: `what` to do with
/// it, then the link, then `after`.
async fn mail_link(
    app: &Accounts,
    user: &User,
    to: &str,
    (name, purpose, path): (&str, Purpose, &str),
    subject: &str,
    what: &str,
    after: &str,
) {
    match app
        .db
        .issue_token(&user.id, purpose, to, super::TOKEN_TTL)
        .await
    {
        Ok(token) => {
            let link = format!("{}{path}?token={}", app.settings.public_url, token.expose());
            let body = format!("Hello {},\n\n{what}:\n\n{link}\n\n{after}\n", user.username);
            let vars = serde_json::json!({ "link": link });
            mail(app, user, to, name, vars, (subject.to_owned(), body));
        }
        Err(e) => tracing::warn!(user = user.id, error = %e, message = name, "mail not sent"),
    }
}

/// Reset mails one recipient gets at most in [`RESET_MAIL_WINDOW`].
pub const RESET_MAILS: u32 = 5;
pub const RESET_MAIL_WINDOW: Duration = Duration::from_secs(3600);

/// Sends a reset link to `email` if it is an active user's. The answer is the same either
/// way, and comes before the lookup: known and unknown addresses take the same time.
pub async fn forgot(
    app: &std::sync::Arc<Accounts>,
    caller: &Caller<'_>,
    email: &str,
) -> Result<(), Problem> {
    if let Some(wait) = app.rate.check(caller.ip).await? {
        return Err(Problem::wait(app, "rate_limited", wait));
    }
    if let Some(p) = email_problem(email.trim()) {
        let mut errors = Errors::default();
        errors.add("email", p);
        return Err(Problem::fields(errors));
    }
    let worker = app.clone();
    let ip = caller.ip;
    let email = email.trim().to_owned();
    tokio::spawn(async move {
        let user = match worker.db.find(&email).await {
            Ok(Some(u)) if u.active && db::key(&u.email) == db::key(&email) => u,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "password reset not sent");
                return;
            }
        };
        // Per recipient as well as per address: rotating addresses must not fill a mailbox.
        let key = format!("mail:{}", login_tag(&user.id));
        match worker.counters.hit(&key, RESET_MAIL_WINDOW).await {
            Ok((n, _)) if n <= RESET_MAILS => {}
            Ok(_) => {
                tracing::info!(target: "gatehouse::audit", event = "password_reset_limited", user = %user.id, "audit");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "password reset not sent");
                return;
            }
        }
        audit!("password_reset_requested", user.id, ip);
        send_reset_link(&worker, &user).await;
    });
    Ok(())
}

/// Mails `user` a link to choose a new password (`/password/forgot`, and an admin's).
pub async fn send_reset_link(app: &Accounts, user: &User) {
    let what = "open this link to choose a new password";
    let after = "The link works once, for 30 minutes. Every device signed in to your account will be signed out.\nIf you did not ask for this, ignore this message: your password stays as it is.";
    let link = ("reset", Purpose::Reset, "/password/reset");
    mail_link(
        app,
        user,
        &user.email,
        link,
        "Reset your password",
        what,
        after,
    )
    .await;
}

/// The user a live reset token belongs to, without using it.
pub async fn reset_user(app: &Accounts, token: &str) -> Result<User, Problem> {
    match app.db.peek_token(token, Purpose::Reset).await? {
        Some((id, _)) => app.db.user(&id).await?.ok_or_else(Problem::expired),
        None => Err(Problem::expired()),
    }
}

/// Sets a new password with a reset token, and ends every session of the user.
pub async fn reset(
    app: &Accounts,
    caller: &Caller<'_>,
    token: &str,
    password: &str,
) -> Result<User, Problem> {
    let user = reset_user(app, token).await?;
    if let Some(p) = app
        .passwords
        .refuse(password, &[&user.username, &user.email, &user.name])
    {
        let mut errors = Errors::default();
        errors.add("password", p);
        return Err(Problem::fields(errors));
    }
    let hash = app
        .passwords
        .hash(&Secret::new(password.to_owned()))
        .await?;
    // Used up before anything changes: of two racing requests, one sets the password.
    if app.db.take_token(token, Purpose::Reset).await?.is_none() {
        return Err(Problem::expired());
    }
    app.db.set_password(&user.id, &hash).await?;
    // The link proved the mailbox: an unconfirmed address is confirmed now.
    if user.email_confirmed_at.is_none() {
        let _ = app.db.confirm_email(&user.id, &user.email).await;
    }
    let sessions = app.gateway.sessions();
    let ended = end_credentials(&app.db, &sessions, &user.id, None, Reason::NewPassword).await?;
    app.metrics.password_resets.inc();
    audit!(
        "password_reset",
        user.id,
        caller.ip,
        sessions_ended = ended.sessions,
        grants_ended = ended.grants
    );
    password_changed_mail(app, &user);
    Ok(user)
}

/// After the identity a session carries changed (a confirmed new email address, a new name):
/// every session and token of the user that still carries the old one ends, so no upstream
/// sees two users with one address. The caller's own browser session (`caller`'s token, when
/// it is one of the user's) is re-issued with the new identity instead: the new token, for
/// its cookie.
pub async fn identity_changed(
    app: &Accounts,
    caller: Option<&str>,
    user: &User,
) -> Result<Option<Issued>, Problem> {
    let sessions = app.gateway.sessions();
    let own = match caller {
        Some(t) => sessions
            .find(t)
            .await?
            .filter(|l| l.session.sub == user.id && l.session.kind == SessionKind::User),
        None => None,
    };
    let keep = own.as_ref().and(caller);
    let ended = sessions.revoke_user(&user.id, keep).await?;
    let mut issued = None;
    if let (Some(old), Some(token)) = (own, caller) {
        let session = crate::session::Session {
            username: Some(user.username.clone()),
            email: Some(user.email.clone()),
            name: Some(user.name.clone()).filter(|n| !n.is_empty()),
            last_seen: None,
            ..old.session
        };
        issued = Some(sessions.issue(&session).await?);
        sessions.revoke(token).await?;
    }
    tracing::info!(target: "gatehouse::audit", event = "identity_changed", user = %user.id, sessions_ended = ended, "audit");
    Ok(issued)
}

/// Whether `current` is the signed-in `user`'s password, with the login delays: a stolen
/// session must not become a free password oracle. Failures count against the user.
pub async fn current_password_ok(
    app: &Accounts,
    user: &User,
    current: &str,
) -> Result<bool, Problem> {
    let key = format!("pw:{}", user.id);
    let wait = app.throttle.wait(&key).await?;
    if !wait.is_zero() {
        return Err(Problem::wait(app, "throttled", wait));
    }
    let ok = verify_password(app, Some(user), &Secret::new(current.to_owned()))
        .await?
        .ok;
    if ok {
        app.throttle.succeed(&key).await?;
    } else {
        app.throttle.fail(&key).await?;
        audit!("current_password_failed", user.id, "-");
    }
    Ok(ok)
}

/// Changes a signed-in user's password; every session but the caller's ends.
pub async fn change_password(
    app: &Accounts,
    caller: &Caller<'_>,
    user: &User,
    current: &str,
    new: &str,
) -> Result<(), Problem> {
    let mut errors = Errors::default();
    if !current_password_ok(app, user, current).await? {
        errors.add("current_password", "This is not your current password.");
    }
    if let Some(p) = app
        .passwords
        .refuse(new, &[&user.username, &user.email, &user.name])
    {
        errors.add("password", p);
    }
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    let hash = app.passwords.hash(&Secret::new(new.to_owned())).await?;
    app.db.set_password(&user.id, &hash).await?;
    let sessions = app.gateway.sessions();
    let ended = end_credentials(
        &app.db,
        &sessions,
        &user.id,
        caller.token,
        Reason::NewPassword,
    )
    .await?;
    audit!(
        "password_changed",
        user.id,
        caller.ip,
        sessions_ended = ended.sessions,
        grants_ended = ended.grants
    );
    password_changed_mail(app, user);
    Ok(())
}

fn password_changed_mail(app: &Accounts, user: &User) {
    let body = format!(
        "Hello {},\n\nthe password of your account was just changed, and your other devices were signed out.\nIf you did not do this, reset your password at {}/password/forgot and contact the administrators.\n",
        user.username, app.settings.public_url
    );
    let subject = "Your password was changed".to_owned();
    mail(
        app,
        user,
        &user.email,
        "password_changed",
        serde_json::json!({}),
        (subject, body),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_emails() {
        for ok in ["abc", "alice_b-2", &"a".repeat(64)] {
            assert_eq!(username_problem(ok), None, "{ok}");
        }
        for bad in [
            "ab",
            "1abc",
            "-abc",
            "a b",
            "ali.ce",
            "alïce",
            &"a".repeat(65),
        ] {
            assert!(username_problem(bad).is_some(), "{bad}");
        }
        for ok in ["a@b.org", "first.last+tag@sub.example.org"] {
            assert_eq!(email_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.org",
            "a@.org",
            "a b@c.org",
            "a@b.org\r\nBcc: x@y.z",
            "<a@b.org>",
        ] {
            assert!(email_problem(bad).is_some(), "{bad:?}");
        }
    }
}
