//! `gatehouse client …`: registering and managing OAuth2 clients from the command line, on the
//! same database and session store as the server, while it runs. A new or rotated secret is
//! printed once, on stdout.

use clap::Subcommand;
use serde_json::json;

use super::clients::{
    self, check_redirect_uri, AccessTokenFormat, Client, IdTokenAlg, NewClient, OidcSettings,
    GRANTS,
};
use super::grants;
use crate::accounts::cli::{find, other, print, Common};
use crate::accounts::db::Db;
use crate::error::ConfigError;
use crate::sessions::{Sessions, SessionsError};
use crate::store::StoreArgs;
use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client; prints its client_id and (confidential clients) its secret, once.
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "")]
        homepage: String,
        /// An allowed grant (repeatable): client_credentials, authorization_code,
        /// refresh_token. Default: client_credentials, or authorization_code and
        /// refresh_token for a public client.
        #[arg(long = "grant", id = "grant")]
        grant: Vec<String>,
        /// An allowed scope (repeatable).
        #[arg(long = "scope", id = "scope")]
        scope: Vec<String>,
        /// An exact redirect URI (repeatable): https, or http on a loopback host.
        #[arg(long = "redirect-uri", id = "redirect_uri")]
        redirect_uri: Vec<String>,
        /// A public client (a browser or native app): no secret, no client_credentials.
        #[arg(long)]
        public: bool,
        /// The user (username or email) who owns it.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        oidc: OidcFlags,
    },
    /// Initial access tokens for /oauth/register (--client-registration token).
    RegistrationToken {
        #[command(subcommand)]
        command: RegistrationTokenCommand,
    },
    /// Change a client's OpenID Connect settings; flags not given keep their value.
    Update {
        #[command(flatten)]
        common: Common,
        /// The client's id (one made before ids avoided a leading `-` is taken as it is).
        #[arg(allow_hyphen_values = true)]
        client_id: String,
        #[command(flatten)]
        oidc: OidcFlags,
    },
    /// Every client.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// One client.
    Show {
        #[command(flatten)]
        common: Common,
        /// The client's id (one made before ids avoided a leading `-` is taken as it is).
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Refuse the client from now on and end every token it holds.
    Disable {
        #[command(flatten)]
        common: Common,
        /// The client's id (one made before ids avoided a leading `-` is taken as it is).
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Let a disabled client get tokens again.
    Enable {
        #[command(flatten)]
        common: Common,
        /// The client's id (one made before ids avoided a leading `-` is taken as it is).
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// A new secret, printed once; the old one is refused and the client's tokens end.
    RotateSecret {
        #[command(flatten)]
        common: Common,
        /// The client's id (one made before ids avoided a leading `-` is taken as it is).
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
}

impl ClientCommand {
    fn common(&self) -> &Common {
        match self {
            ClientCommand::Create { common, .. }
            | ClientCommand::List { common }
            | ClientCommand::Show { common, .. }
            | ClientCommand::Disable { common, .. }
            | ClientCommand::Enable { common, .. }
            | ClientCommand::RotateSecret { common, .. }
            | ClientCommand::Update { common, .. } => common,
            ClientCommand::RegistrationToken {
                command: RegistrationTokenCommand::Create { common, .. },
            } => common,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RegistrationTokenCommand {
    /// Make an initial access token; prints it once. Any number of clients may register
    /// with it until it expires.
    Create {
        #[command(flatten)]
        common: Common,
        /// How long it lasts.
        #[arg(long, default_value = "1d", value_parser = crate::duration::parse_duration)]
        expires: std::time::Duration,
    },
}

/// A client's OpenID Connect settings on the command line.
#[derive(Debug, clap::Args)]
pub struct OidcFlags {
    /// Where `/oauth/logout` may send the browser after signing out (repeatable, exact);
    /// `update` replaces the list, and one empty value clears it.
    #[arg(long = "post-logout-redirect-uri", id = "post_logout_redirect_uri")]
    post_logout_redirect_uri: Vec<String>,
    /// Where a logout_token is POSTed when a session the client received an id_token for
    /// ends (OpenID Connect Back-Channel Logout); empty clears it.
    #[arg(long)]
    backchannel_logout_uri: Option<String>,
    /// What the client's id_tokens are signed with; a key of it must be in --keys-dir
    /// (RS256's is made by the server). [default: RS256]
    #[arg(long, value_enum)]
    id_token_alg: Option<IdTokenAlg>,
    /// Opaque access tokens (resolved at /auth, revocable), or RFC 9068 JWTs that resource
    /// servers verify themselves (5 minutes at most). [default: opaque]
    #[arg(long, value_enum)]
    access_token_format: Option<AccessTokenFormat>,
    /// The `aud` of its JWT access tokens when a request names no resource; empty clears
    /// it. [default: the issuer]
    #[arg(long)]
    audience: Option<String>,
    #[command(flatten)]
    keys: crate::signer::KeyArgs,
}

impl OidcFlags {
    /// `base` with the flags given applied, checked.
    fn apply(
        self,
        mut base: OidcSettings,
        data_dir: &std::path::Path,
    ) -> Result<OidcSettings, Failure> {
        if !self.post_logout_redirect_uri.is_empty() {
            let uris: Vec<String> = self
                .post_logout_redirect_uri
                .into_iter()
                .filter(|u| !u.is_empty())
                .collect();
            if let Some(e) = uris.iter().find_map(|u| check_redirect_uri(u).err()) {
                return Err(ConfigError::new("--post-logout-redirect-uri", e).into());
            }
            base.post_logout_redirect_uris = uris;
        }
        if let Some(uri) = self.backchannel_logout_uri {
            if !uri.is_empty() {
                let absolute = uri.starts_with("https://") || uri.starts_with("http://");
                if !absolute || uri.contains('#') || uri.contains(char::is_whitespace) {
                    return Err(ConfigError::new(
                        "--backchannel-logout-uri",
                        "must be an absolute http(s) URL without a fragment",
                    )
                    .into());
                }
            }
            base.backchannel_logout_uri = Some(uri).filter(|u| !u.is_empty());
        }
        if let Some(alg) = self.id_token_alg {
            let dir = self.keys.dir(data_dir);
            if alg != IdTokenAlg::Rs256 && !crate::signer::has_key(&dir, alg.jwt_alg())? {
                return Err(ConfigError::new(
                    "--id-token-alg",
                    format!(
                        "no {} key in {}; make one with `gatehouse keys generate --alg {}`",
                        alg.name(),
                        dir.display(),
                        alg.name()
                    ),
                )
                .into());
            }
            base.id_token_alg = alg;
        }
        if let Some(format) = self.access_token_format {
            base.access_token_format = format;
        }
        if let Some(aud) = self.audience {
            base.audience = Some(aud.trim().to_owned()).filter(|a| !a.is_empty());
        }
        Ok(base)
    }
}

fn line(c: &Client) -> String {
    format!(
        "{}  {}  {}{}{}  grants={}  scopes={}",
        c.client_id,
        c.name,
        if c.confidential {
            "confidential"
        } else {
            "public"
        },
        if c.self_registered {
            " (self-registered)"
        } else {
            ""
        },
        if c.disabled { " (disabled)" } else { "" },
        c.grants.join(","),
        c.scopes.join(","),
    )
}

async fn existing(db: &Db, id: &str) -> Result<Client, Failure> {
    clients::find(db, id)
        .await
        .map_err(other)?
        .ok_or_else(|| ConfigError::new("CLIENT_ID", format!("no client {id:?}")).into())
}

/// `grants::end_client_tokens` from the command line, on the configured store.
async fn end_tokens(store: &StoreArgs, db: &Db, client_id: &str) -> Result<u64, Failure> {
    let store = crate::store::Store::open_for_command(store).await?;
    grants::end_client_tokens(db, &Sessions::new(&store, None), client_id)
        .await
        .map_err(|e| match e {
            grants::RevokeError::Sessions(SessionsError::Store(s)) => Failure::Store(s),
            other => Failure::Other(other.into()),
        })
}

pub async fn client(command: ClientCommand) -> Result<(), Failure> {
    let common = command.common();
    let db = common.database.open(&common.store.data_dir).await?;
    let json_out = common.json;
    let store = common.store.clone();
    match command {
        ClientCommand::Create {
            name,
            description,
            homepage,
            grant,
            scope,
            redirect_uri,
            public,
            owner,
            oidc,
            ..
        } => {
            let oidc = oidc.apply(OidcSettings::default(), &store.data_dir)?;
            let grants = if !grant.is_empty() {
                grant
            } else if public {
                vec!["authorization_code".into(), "refresh_token".into()]
            } else {
                vec!["client_credentials".into()]
            };
            if let Some(g) = grants.iter().find(|g| !GRANTS.contains(&g.as_str())) {
                return Err(ConfigError::new(
                    "--grant",
                    format!("{g:?} is not one of {}", GRANTS.join(", ")),
                )
                .into());
            }
            if public && grants.iter().any(|g| g == "client_credentials") {
                return Err(ConfigError::new(
                    "--grant",
                    "a public client cannot use client_credentials (it has no secret)",
                )
                .into());
            }
            if let Some(e) = redirect_uri
                .iter()
                .find_map(|u| check_redirect_uri(u).err())
            {
                return Err(ConfigError::new("--redirect-uri", e).into());
            }
            if grants.iter().any(|g| g == "authorization_code") && redirect_uri.is_empty() {
                return Err(ConfigError::new(
                    "--redirect-uri",
                    "authorization_code needs at least one redirect URI",
                )
                .into());
            }
            if scope
                .iter()
                .any(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                return Err(ConfigError::new("--scope", "a scope is a word without spaces").into());
            }
            if name.trim().is_empty() {
                return Err(ConfigError::new("--name", "a client needs a name").into());
            }
            let owner = match owner {
                Some(o) => Some(find(&db, &o).await?.id),
                None => None,
            };
            let (c, secret) = clients::create(
                &db,
                &NewClient {
                    name: name.trim(),
                    description: &description,
                    homepage: &homepage,
                    owner: owner.as_deref(),
                    confidential: !public,
                    redirect_uris: &redirect_uri,
                    grants: &grants,
                    scopes: &scope,
                    oidc: &oidc,
                    self_registered: false,
                },
            )
            .await
            .map_err(other)?;
            let secret = secret.as_ref().map(|s| s.expose().as_str());
            tracing::info!(target: "gatehouse::audit", event = "client_created", client_id = %c.client_id, "audit");
            print(
                json_out,
                &json!({"client_id": c.client_id, "client_secret": secret}),
                match secret {
                    Some(s) => format!(
                        "client_id: {}\nclient_secret: {s}\n(the secret is shown this once: store it now)",
                        c.client_id
                    ),
                    None => format!("client_id: {} (public: no secret)", c.client_id),
                },
            )
        }
        ClientCommand::List { .. } => {
            for c in clients::list_clients(&db, None).await.map_err(other)? {
                print(json_out, &json!(c), line(&c))?;
            }
            Ok(())
        }
        ClientCommand::Show { client_id, .. } => {
            let c = existing(&db, &client_id).await?;
            print(
                json_out,
                &json!(c),
                serde_json::to_string_pretty(&c).map_err(other)?,
            )
        }
        ClientCommand::Disable { client_id, .. } => {
            let c = existing(&db, &client_id).await?;
            clients::set_disabled(&db, &c.client_id, true)
                .await
                .map_err(other)?;
            let n = end_tokens(&store, &db, &c.client_id).await?;
            tracing::info!(target: "gatehouse::audit", event = "client_disabled", client_id = %c.client_id, tokens = n, "audit");
            print(
                json_out,
                &json!({"client_id": c.client_id, "disabled": true, "tokens_revoked": n}),
                format!("{} disabled; {n} tokens revoked", c.client_id),
            )
        }
        ClientCommand::RegistrationToken {
            command: RegistrationTokenCommand::Create { expires, .. },
        } => {
            let until = crate::session::unix_now() + expires.as_secs();
            let token = super::register::create_token(&db, until)
                .await
                .map_err(other)?;
            tracing::info!(target: "gatehouse::audit", event = "registration_token_created", expires_at = until, "audit");
            print(
                json_out,
                &json!({"registration_token": token.expose(), "expires_at": until}),
                format!(
                    "{}\n(an initial access token for /oauth/register, shown this once; it lasts until {until} Unix time)",
                    token.expose()
                ),
            )
        }
        ClientCommand::Update {
            client_id, oidc, ..
        } => {
            let c = existing(&db, &client_id).await?;
            let updated = oidc.apply(c.oidc.clone(), &store.data_dir)?;
            clients::set_oidc(&db, &c.client_id, &updated)
                .await
                .map_err(other)?;
            tracing::info!(target: "gatehouse::audit", event = "client_updated", client_id = %c.client_id, "audit");
            let c = existing(&db, &client_id).await?;
            print(
                json_out,
                &json!(c),
                serde_json::to_string_pretty(&c).map_err(other)?,
            )
        }
        ClientCommand::Enable { client_id, .. } => {
            let c = existing(&db, &client_id).await?;
            clients::set_disabled(&db, &c.client_id, false)
                .await
                .map_err(other)?;
            print(
                json_out,
                &json!({"client_id": c.client_id, "disabled": false}),
                format!("{} enabled", c.client_id),
            )
        }
        ClientCommand::RotateSecret { client_id, .. } => {
            let c = existing(&db, &client_id).await?;
            if !c.confidential {
                return Err(ConfigError::new("CLIENT_ID", "a public client has no secret").into());
            }
            let secret = clients::rotate_secret(&db, &c.client_id)
                .await
                .map_err(other)?;
            let n = end_tokens(&store, &db, &c.client_id).await?;
            tracing::info!(target: "gatehouse::audit", event = "client_secret_rotated", client_id = %c.client_id, tokens = n, "audit");
            print(
                json_out,
                &json!({"client_id": c.client_id, "client_secret": secret.expose(), "tokens_revoked": n}),
                format!(
                    "client_secret: {}\n(the old secret is refused from now on; {n} tokens revoked)",
                    secret.expose()
                ),
            )
        }
    }
}

/// `gatehouse token …`: personal access tokens, for administrators (users have
/// `/account/tokens`).
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for a user; prints it once.
    Create {
        #[command(flatten)]
        common: Common,
        /// The user (username or email).
        #[arg(long)]
        user: String,
        /// What it is for.
        #[arg(long)]
        name: String,
        /// A scope of the user's (repeatable).
        #[arg(long = "scope", id = "scope")]
        scope: Vec<String>,
        /// Lifetime.
        #[arg(long, default_value = "90d", value_parser = crate::duration::parse_duration)]
        expires_in: std::time::Duration,
    },
    /// A user's tokens.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        user: String,
    },
    /// Revoke one of a user's tokens by its sid (from `token list`).
    Revoke {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        user: String,
        /// The token's handle, as `token list` shows it (it may start with `-`).
        #[arg(long, allow_hyphen_values = true)]
        sid: String,
    },
}

pub async fn token(command: TokenCommand) -> Result<(), Failure> {
    let (TokenCommand::Create { common, user, .. }
    | TokenCommand::List { common, user }
    | TokenCommand::Revoke { common, user, .. }) = &command;
    let db = common.database.open(&common.store.data_dir).await?;
    let roles = crate::accounts::roles::table(&db)
        .await
        .map_err(crate::accounts::cli::other)?;
    let user = find(&db, user).await?;
    let store = crate::store::Store::open_for_command(&common.store).await?;
    let sessions = Sessions::new(&store, None);
    let store_failure = |e: SessionsError| match e {
        SessionsError::Store(s) => Failure::Store(s),
        other => Failure::Other(other.into()),
    };
    let json_out = common.json;
    match command {
        TokenCommand::Create {
            name,
            scope,
            expires_in,
            ..
        } => {
            let issued =
                super::personal::create(&sessions, &roles, &user, &name, &scope, expires_in)
                    .await
                    .map_err(|e| match e {
                        super::personal::PatError::Sessions(e) => store_failure(e),
                        super::personal::PatError::Name => {
                            ConfigError::new("--name", e.to_string()).into()
                        }
                        super::personal::PatError::Scope(_) => {
                            ConfigError::new("--scope", e.to_string()).into()
                        }
                    })?;
            print(
                json_out,
                &json!({"token": issued.token.expose(), "sid": issued.sid}),
                issued.token.expose().clone(),
            )
        }
        TokenCommand::List { .. } => {
            for l in super::personal::list(&sessions, &user.id)
                .await
                .map_err(store_failure)?
            {
                let s = &l.session;
                let name = s.label.clone().unwrap_or_default();
                print(
                    json_out,
                    &json!({"sid": l.sid, "name": name, "scopes": s.scopes,
                        "created_at": s.created_at, "expires_at": s.expires_at, "last_seen": s.last_seen}),
                    format!(
                        "{}  {name}  scopes={}  expires={}",
                        l.sid,
                        s.scopes.join(","),
                        crate::accounts::pages::date(s.expires_at)
                    ),
                )?;
            }
            Ok(())
        }
        TokenCommand::Revoke { sid, .. } => {
            if super::personal::revoke(&sessions, &user.id, &sid)
                .await
                .map_err(store_failure)?
            {
                print(json_out, &json!({"revoked": sid}), format!("{sid} revoked"))
            } else {
                Err(
                    ConfigError::new("--sid", format!("{} has no token {sid:?}", user.username))
                        .into(),
                )
            }
        }
    }
}
