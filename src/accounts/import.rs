//! `gatehouse user import` and `user export`: users as JSON Lines, with their password hashes
//! as the old system made them (accounts::hashes), their identities at other providers and
//! their authenticator apps. An import is all or nothing: every line is checked first, every
//! bad line is reported with its number, and nothing is written while one is bad.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::db::{key, Db, ImportedUser, User};
use super::factors::{self, TOTP_PURPOSE};
use super::hashes;
use super::ops::{email_problem, username_problem};
use super::Roles;
use crate::secret::ServerSecret;

/// One line of an import or an export.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub username: String,
    pub email: String,
    #[serde(default)]
    pub email_confirmed: bool,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub affiliation: String,
    #[serde(default)]
    pub country: String,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityLine {
    pub provider: String,
    pub subject: String,
}

/// What an import did, or would do (`--dry-run`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub created: u64,
    pub updated: u64,
    /// Existing usernames left alone (no `--update`).
    pub skipped: Vec<String>,
    /// The ids of the users updated: their sessions end.
    pub updated_ids: Vec<String>,
}

/// Bad lines: (line number, reason), in file order.
pub type Problems = Vec<(usize, String)>;

/// Reads and checks every line of `input`, then (unless `dry_run`) writes them in one
/// transaction. `secret` seals TOTP secrets; it is asked for only when a line has one.
pub async fn import(
    db: &Db,
    roles: &Roles,
    input: impl BufRead,
    update: bool,
    dry_run: bool,
    secret: &dyn Fn() -> Result<ServerSecret, String>,
) -> Result<Result<Report, Problems>, super::db::DbError> {
    let existing: HashMap<String, User> = db
        .list()
        .await?
        .into_iter()
        .map(|u| (key(&u.username), u))
        .collect();
    let email_owner: HashMap<String, String> = existing
        .values()
        .map(|u| (key(&u.email), u.id.clone()))
        .collect();
    let identity_owner: HashMap<(String, String), String> = db
        .all_identities()
        .await?
        .into_iter()
        .map(|i| ((i.provider, i.subject), i.user_id))
        .collect();
    let mut sealer: Option<ServerSecret> = None;
    let mut problems = Problems::new();
    let mut users = Vec::new();
    let mut report = Report::default();
    // What earlier lines of this file claim: username and email keys, identities.
    let (mut names, mut emails, mut idents) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (n, line) in input.lines().enumerate() {
        let number = n + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                problems.push((number, format!("cannot read it: {e}")));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut bad = |why: String| problems.push((number, why));
        let parsed: Line = match serde_json::from_str(&line) {
            Ok(l) => l,
            Err(e) => {
                bad(format!("not a user record: {e}"));
                continue;
            }
        };
        let user_key = key(&parsed.username);
        let email_key = key(&parsed.email);
        let current = existing.get(&user_key);
        let mut why = Vec::new();
        if let Some(p) = username_problem(parsed.username.trim()) {
            why.push(format!("username: {}", p.trim_end_matches('.')));
        }
        if let Some(p) = email_problem(parsed.email.trim()) {
            why.push(format!("email: {}", p.trim_end_matches('.')));
        }
        if !names.insert(user_key.clone()) {
            why.push("username: on an earlier line too".into());
        }
        if !emails.insert(email_key.clone()) {
            why.push("email: on an earlier line too".into());
        }
        if let Some(owner) = email_owner.get(&email_key) {
            if current.is_none_or(|c| &c.id != owner) {
                why.push("email: belongs to another user".into());
            }
        }
        for r in &parsed.roles {
            if r != "user" && !roles.exists(r) {
                why.push(format!("roles: unknown role {r:?}"));
            }
        }
        let created_at = match parsed.created_at.as_deref().map(parse_time).transpose() {
            Ok(t) => t,
            Err(e) => {
                why.push(format!("created_at: {e}"));
                None
            }
        };
        let password_hash = match parsed.password_hash.as_ref().map(hashes::from_import) {
            Some(Ok((stored, _))) => Some(stored),
            Some(Err(e)) => {
                why.push(format!("password_hash: {e}"));
                None
            }
            None => None,
        };
        for i in &parsed.identities {
            let pair = (i.provider.clone(), i.subject.clone());
            if !super::identities::valid_provider_id(&i.provider) || i.subject.is_empty() {
                why.push(format!(
                    "identities: {:?} needs a provider id (letters, digits, - and _) and a subject",
                    i.provider
                ));
            } else if !idents.insert(pair.clone()) {
                why.push(format!(
                    "identities: {}:{} on an earlier line too",
                    i.provider, i.subject
                ));
            } else if let Some(owner) = identity_owner.get(&pair) {
                if current.is_none_or(|c| &c.id != owner) {
                    why.push(format!(
                        "identities: {}:{} is linked to another user",
                        i.provider, i.subject
                    ));
                }
            }
        }
        let mut sealed_totp = None;
        if let Some(t) = &parsed.totp_secret {
            match factors::from_base32(t).filter(|b| b.len() >= 10) {
                None => why.push("totp_secret: expected base32 of at least 80 bits".into()),
                Some(bytes) => {
                    if sealer.is_none() {
                        match secret() {
                            Ok(s) => sealer = Some(s),
                            Err(e) => why.push(format!("totp_secret: {e}")),
                        }
                    }
                    sealed_totp = sealer.as_ref().map(|s| s.seal(TOTP_PURPOSE, &bytes));
                }
            }
        }
        if !why.is_empty() {
            bad(why.join("; "));
            continue;
        }
        if let Some(c) = current {
            if !update {
                report.skipped.push(parsed.username.trim().to_owned());
                continue;
            }
            report.updated_ids.push(c.id.clone());
        }
        users.push(ImportedUser {
            existing: current.map(|c| c.id.clone()),
            username: parsed.username,
            email: parsed.email,
            email_confirmed: parsed.email_confirmed,
            name: parsed.name,
            affiliation: parsed.affiliation,
            country: parsed.country,
            active: parsed.active,
            roles: parsed.roles.into_iter().filter(|r| r != "user").collect(),
            created_at,
            password_hash,
            identities: parsed
                .identities
                .into_iter()
                .map(|i| (i.provider, i.subject))
                .collect(),
            sealed_totp,
        });
    }
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    if dry_run {
        report.created = users.iter().filter(|u| u.existing.is_none()).count() as u64;
        report.updated = users.len() as u64 - report.created;
    } else {
        (report.created, report.updated) = db.import_users(&users).await?;
    }
    Ok(Ok(report))
}

/// Writes every user as one line, hashes included; TOTP secrets only with `secret`.
pub async fn export(
    db: &Db,
    out: &mut impl Write,
    secret: Option<&ServerSecret>,
) -> Result<u64, anyhow::Error> {
    let mut identities: HashMap<String, Vec<IdentityLine>> = HashMap::new();
    for i in db.all_identities().await? {
        identities.entry(i.user_id).or_default().push(IdentityLine {
            provider: i.provider,
            subject: i.subject,
        });
    }
    let totp = match secret {
        Some(_) => db.all_totp().await?,
        None => Default::default(),
    };
    let mut n = 0;
    for u in db.list().await? {
        let totp_secret = match (secret, totp.get(&u.id)) {
            (Some(s), Some(sealed)) => Some(factors::base32(
                &s.open(TOTP_PURPOSE, sealed).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: the TOTP secret is sealed under another server secret",
                        u.username
                    )
                })?,
            )),
            _ => None,
        };
        let line = Line {
            password_hash: u
                .password_hash
                .as_ref()
                .map(|h| stored_as_value(h.expose())),
            identities: identities.remove(&u.id).unwrap_or_default(),
            created_at: Some(format_time(u.created_at)),
            username: u.username,
            email: u.email,
            email_confirmed: u.email_confirmed_at.is_some(),
            name: u.name,
            affiliation: u.affiliation,
            country: u.country,
            active: u.active,
            roles: u.roles,
            totp_secret,
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    Ok(n)
}

/// A stored hash as an import takes it back: the object of a scheme without a string form.
fn stored_as_value(stored: &str) -> Value {
    if stored.starts_with('{') {
        if let Ok(v) = serde_json::from_str(stored) {
            return v;
        }
    }
    Value::String(stored.to_owned())
}

/// The name `password_scheme` reports for a stored hash; `none` without one.
pub fn password_scheme(u: &User) -> &'static str {
    match &u.password_hash {
        None => "none",
        Some(h) => hashes::scheme(h.expose()).map_or("unknown", hashes::Scheme::name),
    }
}

fn parse_time(s: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| format!("{s:?} is before 1970"))
}

fn format_time(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_and_write_as_rfc3339() {
        assert_eq!(parse_time("2019-05-01T12:00:00Z"), Ok(1_556_712_000));
        assert_eq!(parse_time("2019-05-01T14:00:00+02:00"), Ok(1_556_712_000));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(format_time(1_556_712_000), "2019-05-01T12:00:00Z");
    }

    #[test]
    fn base32_secrets_come_back_as_they_went() {
        let secret = factors::new_secret();
        let text = factors::base32(&secret);
        assert_eq!(factors::from_base32(&text), Some(secret.clone()));
        assert_eq!(factors::from_base32(&text.to_lowercase()), Some(secret));
        assert_eq!(factors::from_base32("not base32!"), None);
    }
}
