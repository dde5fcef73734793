//! The registry's tables, in the accounts database: its migrations, numbered within the
//! module (global versions 3–6 before schemas were per module; `accounts::db` adopts those).

use crate::accounts::db::Schema;

pub static SCHEMA: Schema = Schema {
    module: "registry",
    migrations: MIGRATIONS,
};

/// Every change to the registry's tables, in order; never edit one that has shipped, append.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        // OAuth2 clients. Lists are space-separated (URIs and scopes hold no
        // spaces); the secret is stored as its SHA-256, none for a public client.
        &["CREATE TABLE oauth_clients (
            id TEXT PRIMARY KEY,
            secret_hash TEXT,
            name TEXT NOT NULL,
            description TEXT NOT NULL,
            homepage TEXT NOT NULL,
            owner TEXT,
            confidential BIGINT NOT NULL,
            redirect_uris TEXT NOT NULL,
            grants TEXT NOT NULL,
            scopes TEXT NOT NULL,
            disabled BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )"],
    ),
    (
        2,
        // what a user granted a client. A grant (one per authorization code
        // redeemed) is a token family: its refresh tokens rotate within it, and its access
        // tokens (sessions, by sid) all end when it is revoked. Codes and refresh tokens are
        // stored as SHA-256; a used one is kept (used = 1) to recognise a replay.
        &[
            "CREATE TABLE oauth_codes (
                hash TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                redirect_uri TEXT NOT NULL,
                scopes TEXT NOT NULL,
                challenge TEXT NOT NULL,
                expires_at BIGINT NOT NULL,
                used BIGINT NOT NULL,
                grant_id TEXT
            )",
            "CREATE TABLE oauth_grants (
                id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                scopes TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                revoked BIGINT NOT NULL
            )",
            "CREATE INDEX oauth_grants_user ON oauth_grants (user_id, client_id)",
            "CREATE INDEX oauth_grants_client ON oauth_grants (client_id)",
            "CREATE TABLE oauth_refresh (
                hash TEXT PRIMARY KEY,
                grant_id TEXT NOT NULL,
                scopes TEXT NOT NULL,
                expires_at BIGINT NOT NULL,
                used BIGINT NOT NULL
            )",
            "CREATE INDEX oauth_refresh_grant ON oauth_refresh (grant_id)",
            "CREATE TABLE oauth_access (
                sid TEXT NOT NULL,
                grant_id TEXT NOT NULL,
                sub TEXT NOT NULL,
                expires_at BIGINT NOT NULL,
                PRIMARY KEY (grant_id, sid)
            )",
            "CREATE TABLE oauth_consents (
                user_id TEXT NOT NULL,
                client_id TEXT NOT NULL,
                scopes TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (user_id, client_id)
            )",
        ],
    ),
    (
        3,
        // grants made without a recorded consent (the consent page was skipped when
        // the user could grant no scope) are ended; the registry ends their access tokens at
        // start (grants::end_revoked_access).
        &[
            "UPDATE oauth_refresh SET used = 1 WHERE grant_id IN (
                SELECT g.id FROM oauth_grants g WHERE NOT EXISTS (
                    SELECT 1 FROM oauth_consents c
                    WHERE c.user_id = g.user_id AND c.client_id = g.client_id))",
            "UPDATE oauth_grants SET revoked = 1 WHERE revoked = 0 AND NOT EXISTS (
                SELECT 1 FROM oauth_consents c
                WHERE c.user_id = oauth_grants.user_id AND c.client_id = oauth_grants.client_id)",
        ],
    ),
    (
        4,
        // when each access token was recorded (Unix microseconds), so that a grant
        // past its cap of live access tokens ends the oldest first.
        &["ALTER TABLE oauth_access ADD COLUMN created_us BIGINT NOT NULL DEFAULT 0"],
    ),
    (
        5,
        // how the consenting user signed in (amr, space-separated) and when: the access
        // tokens of the code's grant carry them, so that a route's `mfa` and `max_age` hold
        // for an app as for its user.
        &[
            "ALTER TABLE oauth_codes ADD COLUMN amr TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE oauth_codes ADD COLUMN auth_time BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE oauth_grants ADD COLUMN amr TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE oauth_grants ADD COLUMN auth_time BIGINT NOT NULL DEFAULT 0",
        ],
    ),
    (
        6,
        // OpenID Connect and the device grant. A code keeps the request's nonce and the browser session it was
        // consented in (`sid`); a grant keeps that sid, for the id_tokens it issues, for the
        // back-channel logouts owed when that session ends, and to end its refresh tokens
        // with the session unless offline_access was granted. A client has its logout URIs
        // (space-separated), its id_token algorithm and its access token format.
        &[
            "ALTER TABLE oauth_codes ADD COLUMN nonce TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE oauth_codes ADD COLUMN sid TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE oauth_grants ADD COLUMN sid TEXT NOT NULL DEFAULT ''",
            "CREATE INDEX oauth_grants_sid ON oauth_grants (sid)",
            "ALTER TABLE oauth_clients ADD COLUMN post_logout_redirect_uris TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE oauth_clients ADD COLUMN backchannel_logout_uri TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE oauth_clients ADD COLUMN id_token_alg TEXT NOT NULL DEFAULT 'RS256'",
            "ALTER TABLE oauth_clients ADD COLUMN access_token_format TEXT NOT NULL DEFAULT 'opaque'",
            // The audience of a client's JWT access tokens when no resource is named, and
            // the resource (RFC 8707) a code and its grant were asked for.
            "ALTER TABLE oauth_clients ADD COLUMN audience TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE oauth_codes ADD COLUMN resource TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE oauth_grants ADD COLUMN resource TEXT NOT NULL DEFAULT ''",
            // Dynamic client registration (RFC 7591): the initial access tokens of
            // --client-registration token (as SHA-256), and which clients registered
            // themselves.
            "CREATE TABLE oauth_registration_tokens (
                hash TEXT PRIMARY KEY,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL
            )",
            "ALTER TABLE oauth_clients ADD COLUMN self_registered BIGINT NOT NULL DEFAULT 0",
            // The device authorization grant (RFC 8628): a code pair per request, the device
            // code as SHA-256; status pending, approved, denied or used; the approving user's
            // sign-in as a code's.
            "CREATE TABLE oauth_device_codes (
                hash TEXT PRIMARY KEY,
                user_code TEXT NOT NULL UNIQUE,
                client_id TEXT NOT NULL,
                scopes TEXT NOT NULL,
                expires_at BIGINT NOT NULL,
                interval_secs BIGINT NOT NULL,
                last_poll BIGINT NOT NULL,
                status TEXT NOT NULL,
                user_id TEXT NOT NULL,
                amr TEXT NOT NULL,
                auth_time BIGINT NOT NULL,
                sid TEXT NOT NULL
            )",
        ],
    ),
];
