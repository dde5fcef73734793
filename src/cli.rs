//! The administrative subcommands: `session create|revoke|list`, `keys generate`.
//!
//! They talk to the same store as the server, with the same flags, and may run while the
//! server runs. `session create` prints the token alone on stdout (scripts read it); all
//! other messages go to stderr. Tokens are shown only at creation, never again.

use std::io::Write;

use serde_json::json;

use crate::config::{KeysCommand, SessionCommand, StoreArgs};
use crate::error::ConfigError;
use crate::secret::Secret;
use crate::session::Session;
use crate::sessions::{Listed, Sessions, SessionsError};
use crate::store::Store;
use crate::Failure;

/// Every administrative command's session store ([`Store::open_for_command`]).
pub(crate) async fn open(args: &StoreArgs) -> Result<Store, Failure> {
    Ok(Store::open_for_command(args).await?)
}

pub async fn session(cmd: SessionCommand) -> Result<(), Failure> {
    match cmd {
        SessionCommand::Create(a) => {
            let a = *a;
            let store = open(&a.store).await?;
            let session = Session {
                username: a.username,
                email: a.email,
                name: a.name,
                scopes: a.scopes,
                roles: a.roles,
                user_agent: Some("gatehouse-cli".into()),
                auth_time: a
                    .auth_age
                    .map(|age| crate::session::unix_now().saturating_sub(age.as_secs())),
                amr: a.amr,
                ..Sessions::draft(a.sub, a.ttl)
            };
            let issued = Sessions::new(&store, None)
                .issue(&session)
                .await
                .map_err(failure)?;
            let mut out = std::io::stdout().lock();
            if a.json {
                let record =
                    json!({ "token": issued.token.expose(), "sid": issued.sid, "session": session });
                writeln!(out, "{record}")
            } else {
                writeln!(out, "{}", issued.token.expose())
            }
            .map_err(|e| Failure::Other(e.into()))?;
            Ok(())
        }
        SessionCommand::Revoke(a) => {
            let store = open(&a.store).await?;
            let sessions = Sessions::new(&store, None);
            let existed = match (a.sub, a.sid) {
                (Some(sub), None) => {
                    let n = sessions.revoke_user(&sub, None).await.map_err(failure)?;
                    eprintln!("revoked {n} session(s) of {sub}");
                    return Ok(());
                }
                (Some(sub), Some(sid)) => sessions.revoke_sid(&sub, &sid).await,
                (None, _) => {
                    let token = match a.token {
                        Some(t) if t.expose() != "-" => t,
                        _ => token_from_stdin()?,
                    };
                    sessions.revoke(token.expose()).await
                }
            }
            .map_err(failure)?;
            eprintln!(
                "{}",
                if existed {
                    "revoked"
                } else {
                    "no such session (already expired or revoked)"
                }
            );
            Ok(())
        }
        SessionCommand::List(a) => {
            let store = open(&a.store).await?;
            let mut out = std::io::stdout().lock();
            for Listed { sid, session: s } in Sessions::new(&store, None)
                .list(&a.sub)
                .await
                .map_err(failure)?
            {
                let line = json!({
                    "sid": sid,
                    "kind": s.kind,
                    "created_at": s.created_at,
                    "expires_at": s.expires_at,
                    "last_seen": s.last_seen,
                    "ip": s.ip,
                    "user_agent": s.user_agent,
                });
                writeln!(out, "{line}").map_err(|e| Failure::Other(e.into()))?;
            }
            Ok(())
        }
    }
}

/// The exit code follows whose fault it is: the caller's input (64, naming the token), the
/// store (69).
fn failure(e: SessionsError) -> Failure {
    match e {
        SessionsError::Store(e) => Failure::Store(e),
        SessionsError::NotAToken => ConfigError::new("TOKEN", "is not a gatehouse token").into(),
        SessionsError::NoLifetime => ConfigError::new("--ttl", "must be at least 1s").into(),
    }
}

/// One token from stdin (`echo "$TOKEN" | gatehouse session revoke`), never from argv.
fn token_from_stdin() -> Result<Secret<String>, Failure> {
    let line = crate::secret::read_secret(
        "TOKEN",
        "paste the token and press Enter:",
        "give the token on stdin, or --sub",
    )?;
    Ok(Secret::new(line.expose().trim().to_string()))
}

pub fn keys(cmd: KeysCommand) -> Result<(), Failure> {
    match cmd {
        KeysCommand::Generate(a) => {
            let dir = a.keys.dir(&a.data_dir);
            let activate_in = a
                .activate_in
                .unwrap_or_else(|| crate::signer::default_activation(&dir, a.alg));
            let name = crate::signer::key_name(a.alg, activate_in);
            let path = crate::signer::generate_into(&dir, a.alg, &name)?;
            println!("{}", path.display());
            if activate_in.is_zero() {
                eprintln!("published; signs from now on");
            } else {
                eprintln!(
                    "published now (after a reload: SIGHUP or restart); signs from {}s from now",
                    activate_in.as_secs()
                );
            }
            Ok(())
        }
    }
}
