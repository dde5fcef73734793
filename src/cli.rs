//! The administrative subcommands: `session create|revoke|list`, `keys generate`.
//!
//! They talk to the same store as the server, with the same flags, and may run while the
//! server runs. `session create` prints the token alone on stdout (scripts read it); all
//! other messages go to stderr. Tokens are shown only at creation, never again.

use std::io::Write;

use serde_json::json;

use crate::config::{KeysCommand, SessionCommand, StoreArgs};
use crate::credential::{self, TokenHash, TokenKind};
use crate::session::{unix_now, Session};
use crate::store::{SessionStore, Store};
use crate::Failure;

async fn open(args: &StoreArgs) -> Result<Store, Failure> {
    args.validate()?;
    let wait = args.store_timeout.max(std::time::Duration::from_secs(2));
    Ok(Store::open(args, Some(wait)).await?)
}

pub async fn session(cmd: SessionCommand) -> Result<(), Failure> {
    match cmd {
        SessionCommand::Create(a) => {
            let store = open(&a.store).await?;
            let now = unix_now();
            if a.ttl.as_secs() == 0 {
                return Err(crate::config::ConfigError::new("--ttl", "must be at least 1s").into());
            }
            let session = Session {
                username: a.username,
                email: a.email,
                name: a.name,
                scopes: a.scopes,
                roles: a.roles,
                user_agent: Some("gatehouse-cli".into()),
                ..Session::new(a.sub, now, now + a.ttl.as_secs())
            };
            let token = credential::generate(TokenKind::Session);
            let hash = TokenHash::of(token.expose());
            store.put(&hash, &session).await?;
            let mut out = std::io::stdout().lock();
            if a.json {
                let record =
                    json!({ "token": token.expose(), "sid": hash.sid(), "session": session });
                writeln!(out, "{record}")
            } else {
                writeln!(out, "{}", token.expose())
            }
            .map_err(|e| Failure::Other(e.into()))?;
            Ok(())
        }
        SessionCommand::Revoke(a) => {
            let store = open(&a.store).await?;
            if let Some(sub) = a.sub {
                let n = store.revoke_user(&sub).await?;
                eprintln!("revoked {n} session(s) of {sub}");
            } else if let Some(token) = a.token {
                if credential::check(token.expose()).is_none() {
                    return Err(crate::config::ConfigError::new(
                        "TOKEN",
                        "is not a gatehouse token",
                    )
                    .into());
                }
                let existed = store.revoke(&TokenHash::of(token.expose())).await?;
                eprintln!(
                    "{}",
                    if existed {
                        "revoked"
                    } else {
                        "no such session (already expired or revoked)"
                    }
                );
            }
            Ok(())
        }
        SessionCommand::List(a) => {
            let store = open(&a.store).await?;
            let mut out = std::io::stdout().lock();
            for (hash, s) in store.list_user(&a.sub).await? {
                let line = json!({
                    "sid": hash.sid(),
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

pub fn keys(cmd: KeysCommand) -> Result<(), Failure> {
    match cmd {
        KeysCommand::Generate(a) => {
            let dir = a.keys.dir(&a.data_dir);
            let name = crate::signer::key_name(a.alg, a.activate_in);
            let path = crate::signer::generate_into(&dir, a.alg, &name)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}
