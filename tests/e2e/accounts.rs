//! accounts, end to end: real `gatehouse serve` processes, the pages driven over HTTP like a
//! browser, mail read from the `.eml` files, users in SQLite and in a real PostgreSQL.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) const PW: &str = "tangerine kayak moonlit orbit";
const PW2: &str = "violet harbour drum sixty";
const PW3: &str = "copper lantern quietly folds";
pub(crate) const COOKIE: &str = "gatehouse_session";

fn roles_file(dir: &TempDir) -> String {
    let path = dir.join("roles.toml");
    std::fs::write(
        &path,
        "[roles.user]\nscopes = [\"public:read\"]\n[roles.editor]\nscopes = [\"public:read\", \"papers:write\"]\n[roles.admin]\nscopes = [\"admin\"]\n",
    )
    .unwrap();
    path
}

/// gatehouse with accounts on plain http, its data in `dir/data`.
fn start(dir: &TempDir, extra: &[&str]) -> Gatehouse {
    let roles = roles_file(dir);
    let data = dir.join("data");
    let mut all = vec!["--insecure-cookies", "--roles", &roles, "--data-dir", &data];
    all.extend_from_slice(extra);
    Gatehouse::spawn(&args(&all))
}

/// Where a test's users live.
#[derive(Clone, Copy)]
pub(crate) enum Backend {
    /// `accounts.db` in the data directory.
    Sqlite,
    /// A throw-away PostgreSQL cluster.
    Postgres,
}

/// One test's deployment: the server, the users' database and a directory holding the role
/// file and the data directory (mail lands in `data/mail`). Fields drop in this order.
pub(crate) struct Site {
    pub(crate) gh: Gatehouse,
    pg: Option<Postgres>,
    dir: TempDir,
}

impl Site {
    pub(crate) fn start(name: &str, backend: Backend, extra: &[&str]) -> Site {
        let dir = TempDir::new(name);
        let pg = matches!(backend, Backend::Postgres).then(Postgres::start);
        let url = pg.as_ref().map(Postgres::url);
        let mut all = extra.to_vec();
        if let Some(url) = &url {
            all.extend(["--database-url", url]);
        }
        let gh = start(&dir, &all);
        let label = match backend {
            Backend::Sqlite => "backend=\"sqlite\"",
            Backend::Postgres => "backend=\"postgres\"",
        };
        assert!(gh.logs().contains(label), "{}", gh.logs());
        Site { gh, pg, dir }
    }

    pub(crate) fn data(&self) -> String {
        self.dir.join("data")
    }

    /// The users' database, as `Db::open` takes it (`None`: SQLite in the data directory).
    pub(crate) fn database_url(&self) -> Option<String> {
        self.pg.as_ref().map(Postgres::url)
    }

    /// `gatehouse <args>` on this site's users: its data directory and role file, and the
    /// PostgreSQL URL by environment, as the README tells operators to pass it.
    pub(crate) fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let (data, roles) = (self.data(), self.dir.join("roles.toml"));
        let mut all = args.to_vec();
        all.extend(["--data-dir", &data, "--roles", &roles]);
        let url = self.pg.as_ref().map(Postgres::url);
        let env: Vec<_> = url
            .iter()
            .map(|u| ("GATEHOUSE_DATABASE_URL", u.as_str()))
            .collect();
        gatehouse_cli_with(&all, &env, stdin)
    }

    /// One SQL statement on the users' database, its rows one per line, columns joined by
    /// `|` (psql's unaligned form, and the same from SQLite).
    pub(crate) fn sql(&self, sql: &str) -> String {
        match &self.pg {
            Some(pg) => pg.psql(sql),
            None => {
                let out = std::process::Command::new(venv_python())
                    .args([
                        "-c",
                        "import sqlite3, sys\nfor r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print('|'.join('' if v is None else str(v) for v in r))",
                        &format!("{}/accounts.db", self.data()),
                        sql,
                    ])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{sql}: {out:?}");
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
        }
    }

    /// `username` (`<username>@example.org`, password [`PW`]) with the role `admin`.
    pub(crate) fn create_admin(&self, username: &str) {
        let email = format!("{username}@example.org");
        let out = self.cli(
            &[
                "user",
                "create",
                "--username",
                username,
                "--email",
                &email,
                "--role",
                "admin",
            ],
            Some(PW),
        );
        assert!(out.status.success(), "user create {username}: {out:?}");
    }

    pub(crate) fn create_user(&self, username: &str, email: &str, password: &str) {
        let out = self.cli(
            &["user", "create", "--username", username, "--email", email],
            Some(password),
        );
        assert!(out.status.success(), "user create {username}: {out:?}");
    }
}

/// Each named `fn(Backend)` as two tests, `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Sqlite)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Postgres)
            })*
        }
    };
}
pub(crate) use on_both_backends;

on_both_backends!(
    json_api_full_flow,
    profile_and_email_change_need_the_password_and_a_confirmation,
    registration_by_invitation,
    cli_users_roles_and_deactivation_reach_live_sessions,
    a_role_file_change_ends_the_sessions_whose_scopes_it_changes,
);

/// `/auth` until it refuses `token`, for at most 2 s (the revocation bound is 1 s): a
/// revocation made by another process reaches the server through the store.
pub(crate) fn refused_soon(gh: &Gatehouse, token: &str) -> bool {
    soon(|| auth(gh, token).status == 401)
}

pub(crate) fn auth(gh: &Gatehouse, token: &str) -> Response {
    http_get(
        gh.addr(),
        "/auth",
        &[("Cookie", &format!("{COOKIE}={token}"))],
    )
}

/// The claims of the JWT in an `/auth` answer.
pub(crate) fn claims(r: &Response) -> serde_json::Value {
    jwt_claims(
        r.header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or_else(|| panic!("no JWT: {r:?}")),
    )
}

pub(crate) fn login(b: &mut Browser, username: &str, password: &str) -> Response {
    b.submit(
        "/login",
        "/login",
        &[("username", username), ("password", password)],
    )
}

/// The `token` query parameter of a link.
fn token_of(link: &str) -> String {
    link.split("token=").nth(1).unwrap().to_string()
}

/// Register → confirm → login → /auth with the role's scopes → change password (others end)
/// → forgot/reset (single use, newest only; all sessions end) → logout. Every secret the
/// flow handled is then looked for in the logs.
fn full_flow(gh: &Gatehouse, data: &Path) -> Vec<String> {
    let mut secrets = vec![PW.to_string(), PW2.to_string(), PW3.to_string()];
    let mut a = Browser::new(gh.addr());
    let r = a.submit(
        "/register",
        "/register",
        &[
            ("username", "alice"),
            ("email", "Alice@Example.org"),
            ("name", "Alice Liddell"),
            ("password", PW),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Check your email"), "{}", r.body);

    // Not confirmed yet: refused, and a new link is sent, which voids the first.
    let r = login(&mut a, "alice", PW);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("Confirm your email"), "{}", r.body);
    let first = link_in(&wait_mail(data, 1), "/email/confirm?token=");
    let second = link_in(&wait_mail(data, 2), "/email/confirm?token=");
    assert!(wait_mail(data, 2).contains("To: Alice@Example.org"));
    secrets.extend([token_of(&first), token_of(&second)]);
    assert_eq!(a.get(&first).status, 400, "a superseded link still worked");
    let r = a.get(&second);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("confirmed"));
    assert_eq!(
        a.get(&second).status,
        400,
        "a confirmation link worked twice"
    );

    // Login by email, any case; back to where the user was going.
    let form = a.get("/login?rd=/papers/1");
    let csrf = hidden(&form.body, "csrf").unwrap();
    assert_eq!(hidden(&form.body, "rd").as_deref(), Some("/papers/1"));
    let r = a.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("username", "ALICE@example.ORG"),
            ("password", PW),
            ("rd", "/papers/1"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/papers/1"));
    let set = r
        .header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(COOKIE))
        .unwrap()
        .to_string();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=604800"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    let token_a = a.cookie(COOKIE).unwrap().to_string();
    secrets.push(token_a.clone());
    let r = auth(gh, &token_a);
    assert_eq!(r.status, 200);
    let c = claims(&r);
    assert_eq!(c["preferred_username"], "alice");
    assert_eq!(c["scope"], "public:read", "{c}");
    assert_eq!(c["email"], "Alice@Example.org");

    // A second device.
    let mut b = Browser::new(gh.addr());
    b.user_agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36".into();
    assert_eq!(login(&mut b, "alice", PW).status, 303);
    let token_b = b.cookie(COOKIE).unwrap().to_string();
    secrets.push(token_b.clone());
    let sessions = a.get("/account/sessions");
    assert!(
        sessions.body.contains("Firefox on Linux"),
        "{}",
        sessions.body
    );
    assert!(
        sessions.body.contains("Chrome on Windows"),
        "{}",
        sessions.body
    );
    assert!(sessions.body.contains("this session"));

    // Change password: the other session ends, this one stays.
    let r = a.submit(
        "/account/password",
        "/account/password",
        &[("current_password", PW), ("password", PW2)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(auth(gh, &token_a).status, 200);
    assert_eq!(auth(gh, &token_b).status, 401);
    assert!(wait_mail(data, 3).contains("Your password was changed"));

    // Forgot: two requests, only the newest link works, once; every session ends.
    let mut c = Browser::new(gh.addr());
    for _ in 0..2 {
        let r = c.submit(
            "/password/forgot",
            "/password/forgot",
            &[("email", "alice@example.org")],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    wait_mail(data, 5);
    let links: Vec<String> = mails(data)
        .iter()
        .filter(|m| m.contains("/password/reset?token="))
        .map(|m| link_in(m, "/password/reset?token="))
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    secrets.extend(links.iter().map(|l| token_of(l)));
    // Mail files need not arrive in the order the links were issued: exactly one of the two
    // works, the newest, and the other is refused.
    let works: Vec<u16> = links.iter().map(|l| c.get(l).status).collect();
    let mut sorted = works.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [200, 400],
        "not exactly one live reset link: {works:?}"
    );
    let new = links[works.iter().position(|s| *s == 200).unwrap()].clone();
    let r = c.submit(
        &new,
        "/password/reset",
        &[("token", &token_of(&new)), ("password", PW3)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("Sign in with the new password"),
        "{}",
        r.body
    );
    assert_eq!(
        auth(gh, &token_a).status,
        401,
        "a reset left a session alive"
    );
    assert_eq!(c.get(&new).status, 400, "a reset link worked twice");
    let r = c.submit(
        "/password/forgot",
        "/password/reset",
        &[("token", &token_of(&new)), ("password", PW)],
    );
    assert_eq!(r.status, 400, "a used reset token set a password");
    assert_eq!(login(&mut c, "alice", PW2).status, 401);

    // Logout ends the session server-side and clears the cookie.
    assert_eq!(login(&mut c, "alice", PW3).status, 303);
    let token_c = c.cookie(COOKIE).unwrap().to_string();
    secrets.push(token_c.clone());
    assert_eq!(auth(gh, &token_c).status, 200);
    let r = c.submit("/logout", "/logout", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(c.cookie(COOKIE).is_none());
    assert_eq!(auth(gh, &token_c).status, 401);
    assert!(
        gh.wait_for_log("event=\"logout\"", Duration::from_secs(5))
            || gh.logs().contains("\"logout\"")
    );
    secrets
}

/// Nothing secret in any log line.
fn assert_no_secrets(logs: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a secret reached the logs: {s}\n{logs}"
        );
    }
    assert!(
        !logs.contains("$argon2"),
        "a password hash reached the logs:\n{logs}"
    );
}

#[test]
fn pages_full_flow_on_sqlite() {
    let dir = TempDir::new("accounts-sqlite");
    let gh = start(&dir, &[]);
    let secrets = full_flow(&gh, &dir.path().join("data"));
    assert!(gh.logs().contains("backend=\"sqlite\""), "{}", gh.logs());
    assert_no_secrets(&gh.logs(), &secrets);
}

#[test]
fn pages_full_flow_on_postgres_with_sessions_in_redis() {
    let pg = Postgres::start();
    let redis = RedisServer::start();
    let dir = TempDir::new("accounts-pg");
    let gh = start(
        &dir,
        &["--database-url", &pg.url(), "--redis-url", &redis.url()],
    );
    let secrets = full_flow(&gh, &dir.path().join("data"));
    assert!(gh.logs().contains("backend=\"postgres\""), "{}", gh.logs());
    assert_eq!(pg.psql("SELECT count(*) FROM users"), "1");
    assert!(!dir.path().join("data/accounts.db").exists());
    assert_no_secrets(&gh.logs(), &secrets);
    // No password, hash or token in Redis either: sessions are stored under token hashes.
    let keys = redis.cmd(&["KEYS", "*"]);
    let mut values = keys.clone();
    for key in keys.split_whitespace() {
        values += &redis.cmd(&["DUMP", key]);
    }
    assert_no_secrets(&values, &secrets);
}

#[test]
fn tokens_expire_are_single_use_and_only_the_newest_works_on_both_backends() {
    use gatehouse::accounts::db::{Db, NewUser, Purpose};
    let pg = Postgres::start();
    let dir = TempDir::new("accounts-db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = gatehouse::secret::Secret::new(pg.url());
        for db in [
            Db::open(None, dir.path()).await.unwrap(),
            Db::open(Some(&url), dir.path()).await.unwrap(),
        ] {
            let u = db
                .create_user(&NewUser {
                    username: "Bob",
                    email: "bob@example.org",
                    name: "Bob",
                    password_hash: None,
                    active: true,
                    confirmed: false,
                    roles: &[],
                })
                .await
                .unwrap();
            // Unique case-insensitively.
            for (username, email) in [("BOB", "other@example.org"), ("carol", "BOB@example.ORG")] {
                let again = db
                    .create_user(&NewUser {
                        username,
                        email,
                        name: "x",
                        password_hash: None,
                        active: true,
                        confirmed: false,
                        roles: &[],
                    })
                    .await;
                assert!(again.is_err(), "{} took {username}/{email}", db.backend());
            }
            assert_eq!(db.find("bob@EXAMPLE.org").await.unwrap().unwrap().id, u.id);
            let dead = db
                .issue_token(&u.id, Purpose::Reset, &u.email, Duration::ZERO)
                .await
                .unwrap();
            assert!(
                db.take_token(dead.expose(), Purpose::Reset)
                    .await
                    .unwrap()
                    .is_none(),
                "expired token taken"
            );
            let t1 = db
                .issue_token(&u.id, Purpose::Reset, &u.email, Duration::from_secs(1800))
                .await
                .unwrap();
            let t2 = db
                .issue_token(&u.id, Purpose::Reset, &u.email, Duration::from_secs(1800))
                .await
                .unwrap();
            assert!(
                db.take_token(t1.expose(), Purpose::Reset)
                    .await
                    .unwrap()
                    .is_none(),
                "superseded token taken"
            );
            assert!(
                db.take_token(t2.expose(), Purpose::Confirm)
                    .await
                    .unwrap()
                    .is_none(),
                "token of another purpose"
            );
            assert!(db
                .take_token(t2.expose(), Purpose::Reset)
                .await
                .unwrap()
                .is_some());
            assert!(
                db.take_token(t2.expose(), Purpose::Reset)
                    .await
                    .unwrap()
                    .is_none(),
                "token used twice"
            );
            // Overlapping issues (two quick "forgot password" requests): one link stays live,
            // whichever was issued last (issue 17, 4: PostgreSQL left two in 45 of 50 tries).
            for _ in 0..5 {
                let tasks: Vec<_> = (0..10)
                    .map(|_| {
                        let (db, id, email) = (db.clone(), u.id.clone(), u.email.clone());
                        tokio::spawn(async move {
                            db.issue_token(&id, Purpose::Reset, &email, Duration::from_secs(1800))
                                .await
                                .unwrap()
                        })
                    })
                    .collect();
                let mut tokens = Vec::new();
                for t in tasks {
                    tokens.push(t.await.unwrap());
                }
                let mut live = 0;
                for token in tokens {
                    if db
                        .peek_token(token.expose(), Purpose::Reset)
                        .await
                        .unwrap()
                        .is_some()
                    {
                        live += 1;
                    }
                }
                assert_eq!(
                    live,
                    1,
                    "{}: live links after overlapping issues",
                    db.backend()
                );
            }
        }
    });
    // Stored hashed: the database never holds a usable token.
    assert_eq!(
        pg.psql("SELECT count(*) FROM user_tokens WHERE length(hash) = 43"),
        pg.psql("SELECT count(*) FROM user_tokens")
    );
}

#[test]
fn csrf_cross_site_and_fixation() {
    let dir = TempDir::new("accounts-csrf");
    let gh = start(&dir, &[]);
    let data = dir.path().join("data");
    create_user(&data.display().to_string(), "dora", "dora@example.org", PW);
    let mut b = Browser::new(gh.addr());
    let page = b.get("/login");
    let csrf = hidden(&page.body, "csrf").unwrap();
    let fields = |csrf: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("username", "dora".to_string()),
            ("password", PW.to_string()),
        ]
    };
    let as_refs = |v: &Vec<(&'static str, String)>| {
        v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
    };
    let post = |b: &mut Browser, f: Vec<(&str, String)>, extra: &[(&str, &str)]| {
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        b.post_with("/login", &f, extra)
    };
    // Missing, wrong, cross-site Origin, Sec-Fetch-Site: cross-site.
    let r = post(&mut b, as_refs(&fields(""))[1..].to_vec(), &[]);
    assert_eq!(r.status, 403, "no token");
    let r = post(&mut b, as_refs(&fields(&"x".repeat(43))), &[]);
    assert_eq!(r.status, 403, "wrong token");
    let r = post(
        &mut b,
        as_refs(&fields(&csrf)),
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(r.status, 403, "cross-site origin");
    let r = post(
        &mut b,
        as_refs(&fields(&csrf)),
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(r.status, 403, "sec-fetch-site");
    // Without a cookie jar (a form posted from elsewhere, cookies blocked): refused.
    let mut stranger = Browser::new(gh.addr());
    let r = post(&mut stranger, as_refs(&fields(&csrf)), &[]);
    assert_eq!(r.status, 403, "token without its cookie");
    assert!(r.body.contains("This form has expired"));

    // Fixation: a session planted in the browser before login is ended, never reused.
    let planted = cli_stdout(&gatehouse_cli(&[
        "session",
        "create",
        "--data-dir",
        &data.display().to_string(),
        "--sub",
        "attacker",
    ]));
    b.cookies.push((COOKIE.into(), planted.clone()));
    let r = post(&mut b, as_refs(&fields(&csrf)), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    let mine = b.cookie(COOKIE).unwrap().to_string();
    assert_ne!(mine, planted);
    assert_eq!(
        auth(&gh, &planted).status,
        401,
        "the planted session survived the login"
    );
    assert_eq!(auth(&gh, &mine).status, 200);
}

#[test]
fn redirects_go_only_to_this_site() {
    let dir = TempDir::new("accounts-rd");
    let gh = start(&dir, &["--allowed-redirect-hosts", "app.example.org"]);
    let data = dir.join("data");
    create_user(&data, "erin", "erin@example.org", PW);
    let mut b = Browser::new(gh.addr());
    assert_eq!(login(&mut b, "erin", PW).status, 303);
    for bad in [
        "//evil.com/x",
        "/\\evil.com",
        "/\t/evil.com",
        "/%09/evil.com",
        "/%2F%2Fevil.com",
        "/%5Cevil.com",
        "https://app.example.org@evil.com/",
        "https://evil.com/",
        "javascript:alert(1)",
        "/x\r\nSet-Cookie:a=b",
        "/x%0d%0aSet-Cookie:a=b",
    ] {
        let r = b.get(&format!("/login?rd={}", url_encode(bad)));
        assert_eq!(r.status, 303, "{bad:?}");
        assert_eq!(r.header("location"), Some("/account"), "{bad:?}");
    }
    for good in ["/papers/1?x=y", "https://app.example.org/dash"] {
        let r = b.get(&format!("/login?rd={}", url_encode(good)));
        assert_eq!(r.header("location"), Some(good), "{good:?}");
    }
    // After a form login too.
    let mut c = Browser::new(gh.addr());
    let page = c.get("/login");
    let csrf = hidden(&page.body, "csrf").unwrap();
    let r = c.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("username", "erin"),
            ("password", PW),
            ("rd", "//evil.com"),
        ],
    );
    assert_eq!(r.header("location"), Some("/account"));
}

#[test]
fn login_delays_grow_but_the_real_user_gets_in() {
    let dir = TempDir::new("accounts-throttle");
    let gh = start(&dir, &[]);
    let data = dir.join("data");
    create_user(&data, "frank", "frank@example.org", PW);
    let mut attacker = Browser::new(gh.addr());
    for _ in 0..3 {
        assert_eq!(
            login(&mut attacker, "frank", "wrong password guess").status,
            401
        );
    }
    // Delayed now, even with the right password; the answer says for how long.
    let r = login(&mut attacker, "frank", PW);
    assert_eq!(r.status, 429, "{}", r.body);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(100));
    let mut user = Browser::new(gh.addr());
    assert_eq!(
        login(&mut user, "frank", PW).status,
        303,
        "locked out after the delay"
    );
    let metrics = http_get(gh.admin_addr(), "/metrics", &[]).body;
    assert!(
        metrics.contains("gatehouse_logins_total{result=\"failed\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_throttled_requests_total 1"),
        "{metrics}"
    );
}

#[test]
fn known_and_unknown_addresses_get_the_same_answers_and_limits_apply() {
    let dir = TempDir::new("accounts-enum");
    let gh = start(&dir, &["--ip-rate-limit", "4"]);
    let data = dir.join("data");
    create_user(&data, "gina", "gina@example.org", PW);
    let mut b = Browser::new(gh.addr());
    let strip = |r: &Response| {
        let csrf = hidden(&r.body, "csrf").unwrap_or_default();
        (r.status, r.body.replace(&csrf, ""))
    };
    let known = strip(&b.submit(
        "/password/forgot",
        "/password/forgot",
        &[("email", "gina@example.org")],
    ));
    let unknown = strip(&b.submit(
        "/password/forgot",
        "/password/forgot",
        &[("email", "nobody@example.org")],
    ));
    assert_eq!(known, unknown);
    // Registering a taken address answers as a new one does (the owner is told by mail).
    let taken = strip(&b.submit(
        "/register",
        "/register",
        &[
            ("username", "gina2"),
            ("email", "GINA@example.org"),
            ("name", "G"),
            ("password", PW),
        ],
    ));
    let fresh = strip(&b.submit(
        "/register",
        "/register",
        &[
            ("username", "gina3"),
            ("email", "someone.new@example.org"),
            ("name", "G"),
            ("password", PW),
        ],
    ));
    assert_eq!(taken.0, 200);
    assert_eq!(taken, fresh, "a taken address is answered unlike a new one");
    // Over the per-IP limit: 429 with Retry-After.
    let r = b.submit(
        "/password/forgot",
        "/password/forgot",
        &[("email", "gina@example.org")],
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    let r = b.submit(
        "/register",
        "/register",
        &[
            ("username", "hank"),
            ("email", "hank@example.org"),
            ("name", "H"),
            ("password", PW),
        ],
    );
    assert_eq!(r.status, 429);
    // The owner of the taken address got a note; the unknown address nothing.
    let all = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = mails(&dir.path().join("data"));
            if m.len() >= 3 || Instant::now() > deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The reset link, the note to the taken address's owner, the new address's confirmation.
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(all
        .iter()
        .any(|m| m.contains("To: someone.new@example.org")));
    assert!(all.iter().any(|m| m.contains("Reset your password")));
    assert!(all.iter().any(|m| m.contains("Someone tried to register")));
    assert!(all.iter().all(|m| !m.contains("nobody@")));
}

fn cli_users_roles_and_deactivation_reach_live_sessions(backend: Backend) {
    let site = Site::start("accounts-cli", backend, &[]);
    let gh = &site.gh;
    let cli = |a: &[&str]| site.cli(a, None);
    // The password never from argv: a bad one from stdin is refused with exit 64.
    let weak = site.cli(
        &[
            "user",
            "create",
            "--username",
            "ivan",
            "--email",
            "ivan@example.org",
        ],
        Some("password1234"),
    );
    assert_eq!(weak.status.code(), Some(64), "{weak:?}");
    let created = site.cli(
        &[
            "user",
            "create",
            "--username",
            "ivan",
            "--email",
            "ivan@example.org",
            "--name",
            "Ivan",
            "--json",
        ],
        Some(PW),
    );
    assert!(created.status.success(), "{created:?}");
    let record: serde_json::Value = serde_json::from_str(&cli_stdout(&created)).unwrap();
    assert_eq!(record["active"], true);
    assert!(record["email_confirmed_at"].is_number());
    let listed = cli_stdout(&cli(&["user", "list", "--json"]));
    assert_eq!(listed.lines().count(), 1);
    // The scheme is reported, never the hash.
    assert!(
        listed.contains("\"password_scheme\":\"argon2id\""),
        "{listed}"
    );
    assert!(!listed.contains("$argon2"));

    let mut b = Browser::new(gh.addr());
    assert_eq!(login(&mut b, "ivan", PW).status, 303);
    let t1 = b.cookie(COOKIE).unwrap().to_string();
    assert_eq!(claims(&auth(gh, &t1))["scope"], "public:read");
    // A role change ends the sessions; the next login carries the new scopes.
    assert!(cli(&["user", "role", "add", "ivan", "editor"])
        .status
        .success());
    assert!(refused_soon(gh, &t1), "a session kept its old scopes");
    assert_eq!(login(&mut b, "ivan", PW).status, 303);
    let t2 = b.cookie(COOKIE).unwrap().to_string();
    assert_eq!(claims(&auth(gh, &t2))["scope"], "papers:write public:read");
    assert_eq!(
        cli(&["user", "role", "add", "ivan", "nosuch"])
            .status
            .code(),
        Some(64)
    );
    // Deactivation ends every session at once and stops new logins.
    assert!(cli(&["user", "deactivate", "ivan@example.org"])
        .status
        .success());
    assert!(
        refused_soon(gh, &t2),
        "a deactivated user's session lived on"
    );
    assert_eq!(login(&mut b, "ivan", PW).status, 403);
    assert!(cli(&["user", "activate", "ivan"]).status.success());
    assert_eq!(login(&mut b, "ivan", PW).status, 303);
    let shown: serde_json::Value =
        serde_json::from_str(&cli_stdout(&cli(&["user", "show", "IVAN", "--json"]))).unwrap();
    assert_eq!(shown["login_count"], 3);
    assert_eq!(shown["roles"], serde_json::json!(["user", "editor"]));
}

fn a_role_file_change_ends_the_sessions_whose_scopes_it_changes(backend: Backend) {
    let mut site = Site::start("accounts-roles", backend, &[]);
    site.create_user("pat", "pat@example.org", PW);
    site.create_user("quin", "quin@example.org", PW);
    assert!(site
        .cli(&["user", "role", "add", "quin", "editor"], None)
        .status
        .success());
    let session = |site: &Site, user: &str| {
        let mut b = Browser::new(site.gh.addr());
        assert_eq!(login(&mut b, user, PW).status, 303);
        b.cookie(COOKIE).unwrap().to_string()
    };
    let (pat, quin) = (session(&site, "pat"), session(&site, "quin"));
    // Only the editors' scopes change.
    let roles = site.dir.path().join("roles.toml");
    let text = std::fs::read_to_string(&roles).unwrap().replace(
        "\"public:read\", \"papers:write\"",
        "\"public:read\", \"papers:write\", \"papers:review\"",
    );
    std::fs::write(&roles, text).unwrap();
    site.gh.restart();
    assert!(
        refused_soon(&site.gh, &quin),
        "an editor kept the old scopes"
    );
    assert_eq!(
        auth(&site.gh, &pat).status,
        200,
        "a plain user was logged out"
    );
    assert!(
        site.gh.logs().contains("role scopes changed"),
        "{}",
        site.gh.logs()
    );
    let quin = session(&site, "quin");
    assert_eq!(
        claims(&auth(&site.gh, &quin))["scope"],
        "papers:review papers:write public:read"
    );
    // Unchanged file, no change: a restart logs nobody out.
    site.gh.restart();
    assert_eq!(auth(&site.gh, &quin).status, 200);
    assert_eq!(auth(&site.gh, &pat).status, 200);
}

#[test]
fn a_burst_of_logins_stays_within_bounded_memory() {
    let dir = TempDir::new("accounts-burst");
    let gh = start(&dir, &[]);
    let data = dir.join("data");
    create_user(&data, "judy", "judy@example.org", PW);
    let before = gh.rss_kib();
    let addr = gh.addr();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|_| {
                s.spawn(move || {
                    let mut b = Browser::new(addr);
                    login(&mut b, "judy", PW).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = gh.rss_kib();
    eprintln!("200 concurrent logins: RSS {before} KiB before, {after} KiB after");
    let mut counts = std::collections::BTreeMap::new();
    for s in &statuses {
        *counts.entry(*s).or_insert(0) += 1;
    }
    assert!(
        statuses.iter().all(|s| *s == 303 || *s == 503),
        "{counts:?}\n{}",
        gh.logs()
    );
    assert!(statuses.contains(&303));
    // 200 unbounded Argon2 hashes would hold 200 × 19 MiB; the cap keeps a few at once.
    assert!(
        after < before + 160 * 1024,
        "RSS {before} KiB → {after} KiB"
    );
}

fn json_api_full_flow(backend: Backend) {
    use serde_json::json;
    let site = Site::start("accounts-api", backend, &[]);
    let (gh, data) = (&site.gh, site.dir.path().join("data"));
    let mut a = Browser::new(gh.addr());
    let (r, v) = a.json(
        "POST",
        "/api/register",
        &json!({"username": "kim", "email": "kim@example.org", "name": "Kim", "password": "short"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(v["error"], "invalid_fields");
    assert!(v["fields"]["password"]
        .as_str()
        .unwrap()
        .contains("at least 12"));
    let (r, v) = a.json(
        "POST",
        "/api/register",
        &json!({"username": "kim", "email": "kim@example.org", "name": "Kim", "password": PW}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(v["status"], "check_mail");
    let confirm = link_in(&wait_mail(&data, 1), "/email/confirm?token=");
    assert_eq!(a.get(&confirm).status, 200);

    let (r, v) = a.json(
        "POST",
        "/api/login",
        &json!({"username": "kim", "password": "not the password"}),
    );
    assert_eq!(
        (r.status, v["error"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (r, v) = a.json(
        "POST",
        "/api/login",
        &json!({"username": "kim", "password": PW}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(v["user"]["username"], "kim");
    assert_eq!(v["user"]["scopes"], json!(["public:read"]));
    let token = a.cookie(COOKIE).unwrap().to_string();
    assert!(!r.body.contains(&token), "the API exposed a token");
    let (r, me) = a.json("GET", "/api/me", &json!(null));
    assert_eq!(
        (r.status, me["email"].as_str()),
        (200, Some("kim@example.org"))
    );
    assert!(!r.body.contains("argon2"));

    // Sessions: list, revoke another device; another user's session is 404.
    let mut b = Browser::new(gh.addr());
    let (_, vb) = b.json(
        "POST",
        "/api/login",
        &json!({"username": "kim@example.org", "password": PW}),
    );
    let sid_b = vb["sid"].as_str().unwrap().to_string();
    let token_b = b.cookie(COOKIE).unwrap().to_string();
    let (_, list) = a.json("GET", "/api/sessions", &json!(null));
    let list = list["sessions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    assert!(list.iter().all(|s| !s.to_string().contains(&token_b)));
    site.create_user("lee", "lee@example.org", PW);
    let mut other = Browser::new(gh.addr());
    let (_, vo) = other.json(
        "POST",
        "/api/login",
        &json!({"username": "lee", "password": PW}),
    );
    let sid_other = vo["sid"].as_str().unwrap().to_string();
    let (r, v) = a.json(
        "DELETE",
        &format!("/api/sessions/{sid_other}"),
        &json!(null),
    );
    assert_eq!((r.status, v["error"].as_str()), (404, Some("not_found")));
    assert_eq!(auth(gh, other.cookie(COOKIE).unwrap()).status, 200);
    let (r, _) = a.json("DELETE", &format!("/api/sessions/{sid_b}"), &json!(null));
    assert_eq!(r.status, 204);
    assert_eq!(auth(gh, &token_b).status, 401);

    // Password change: field errors by name; then the other sessions end.
    assert_eq!(
        b.json(
            "POST",
            "/api/login",
            &json!({"username": "kim", "password": PW})
        )
        .0
        .status,
        200
    );
    let token_b = b.cookie(COOKIE).unwrap().to_string();
    let (r, v) = a.json(
        "POST",
        "/api/password/change",
        &json!({"current_password": "wrong wrong wrong", "password": PW2}),
    );
    assert_eq!(r.status, 400);
    assert!(v["fields"]["current_password"].is_string(), "{v}");
    let (r, _) = a.json(
        "POST",
        "/api/password/change",
        &json!({"current_password": PW, "password": PW2}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(auth(gh, &token).status, 200);
    assert_eq!(auth(gh, &token_b).status, 401);

    // Forgot and reset.
    let mut c = Browser::new(gh.addr());
    let (r, _) = c.json(
        "POST",
        "/api/password/forgot",
        &json!({"email": "kim@example.org"}),
    );
    assert_eq!(r.status, 202);
    let mail = (2..=5)
        .map(|n| wait_mail(&data, n))
        .find(|m| m.contains("/password/reset?token="))
        .unwrap();
    let reset = token_of(&link_in(&mail, "/password/reset?token="));
    let (r, _) = c.json(
        "POST",
        "/api/password/reset",
        &json!({"token": reset, "password": PW3}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(auth(gh, &token).status, 401, "a reset left a session alive");
    let (r, v) = c.json(
        "POST",
        "/api/password/reset",
        &json!({"token": reset, "password": PW}),
    );
    assert_eq!(
        (r.status, v["error"].as_str()),
        (400, Some("invalid_token"))
    );

    // Only JSON, only from this site.
    let r = c.post_with("/api/login", &[("username", "kim"), ("password", PW3)], &[]);
    assert_eq!(r.status, 415, "{}", r.body);
    let r = c.request(
        "POST",
        "/api/login",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "https://evil.example"),
        ],
        json!({"username": "kim", "password": PW3})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 403);
    // Logout.
    let (r, _) = c.json(
        "POST",
        "/api/login",
        &json!({"username": "kim", "password": PW3}),
    );
    assert_eq!(r.status, 200);
    let token_c = c.cookie(COOKIE).unwrap().to_string();
    let (r, _) = c.json("POST", "/api/logout", &json!({}));
    assert_eq!(r.status, 204);
    assert!(c.cookie(COOKIE).is_none());
    assert_eq!(auth(gh, &token_c).status, 401);
    let (r, v) = c.json("GET", "/api/me", &json!(null));
    assert_eq!(
        (r.status, v["error"].as_str()),
        (401, Some("unauthenticated"))
    );
}

fn profile_and_email_change_need_the_password_and_a_confirmation(backend: Backend) {
    use serde_json::json;
    let site = Site::start("accounts-email", backend, &[]);
    let (gh, data) = (&site.gh, site.dir.path().join("data"));
    site.create_user("mona", "mona@example.org", PW);
    let mut b = Browser::new(gh.addr());
    assert_eq!(login(&mut b, "mona", PW).status, 303);
    let r = b.submit(
        "/account",
        "/account",
        &[
            ("action", "profile"),
            ("name", "Mona L"),
            ("affiliation", "Louvre"),
            ("country", "France"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Profile saved") && r.body.contains("Louvre"));
    let r = b.submit(
        "/account",
        "/account",
        &[
            ("action", "email"),
            ("email", "mona@new.example"),
            ("current_password", "not it at all"),
        ],
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("This is not your current password"));
    let r = b.submit(
        "/account",
        "/account",
        &[
            ("action", "email"),
            ("email", "mona@new.example"),
            ("current_password", PW),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Unchanged until the new address is confirmed.
    assert_eq!(
        b.json("GET", "/api/me", &json!(null)).1["email"],
        "mona@example.org"
    );
    let mail = wait_mail(&data, 1);
    assert!(mail.contains("To: mona@new.example"), "{mail}");
    assert_eq!(b.get(&link_in(&mail, "/email/confirm?token=")).status, 200);
    let me = b.json("GET", "/api/me", &json!(null)).1;
    assert_eq!(
        (me["email"].as_str(), me["affiliation"].as_str()),
        (Some("mona@new.example"), Some("Louvre"))
    );
    // The old address is told.
    let notice = wait_mail(&data, 2);
    assert!(
        notice.contains("To: mona@example.org") && notice.contains("email address was changed"),
        "{notice}"
    );
    assert_eq!(
        login(&mut Browser::new(gh.addr()), "mona@new.example", PW).status,
        303
    );
}

#[test]
fn registration_closed() {
    let dir = TempDir::new("accounts-closed");
    let closed = start(&dir, &["--registration", "closed"]);
    let mut b = Browser::new(closed.addr());
    assert_eq!(b.get("/register").status, 403);
    let r = b.submit(
        "/login",
        "/register",
        &[
            ("username", "nick"),
            ("email", "nick@example.org"),
            ("name", "N"),
            ("password", PW),
        ],
    );
    assert_eq!(r.status, 403);
}

fn registration_by_invitation(backend: Backend) {
    let site = Site::start(
        "accounts-invite",
        backend,
        &[
            "--registration",
            "invite",
            "--registration-domains",
            "example.org",
        ],
    );
    let gh = &site.gh;
    let mut b = Browser::new(gh.addr());
    assert_eq!(b.get("/register").status, 403, "no invitation");
    let link = cli_stdout(&site.cli(
        &[
            "user",
            "invite",
            "--email",
            "olga@example.org",
            "--public-url",
            &gh.url(),
        ],
        None,
    ));
    let path = link.trim().strip_prefix(&gh.url()).unwrap().to_string();
    let page = b.get(&path);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("olga@example.org"));
    let invite = path.split("invite=").nth(1).unwrap().to_string();
    // Another address than the invited one is refused.
    let r = b.submit(
        &path,
        "/register",
        &[
            ("username", "olga"),
            ("email", "eve@example.org"),
            ("name", "Olga"),
            ("password", PW),
            ("invite", &invite),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = b.submit(
        &path,
        "/register",
        &[
            ("username", "olga"),
            ("email", "olga@example.org"),
            ("name", "Olga"),
            ("password", PW),
            ("invite", &invite),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Your account is ready"), "{}", r.body);
    assert_eq!(
        login(&mut b, "olga", PW).status,
        303,
        "an invited address needs no confirmation"
    );
    assert_eq!(
        Browser::new(gh.addr()).get(&path).status,
        403,
        "an invitation worked twice"
    );
}

/// Issue 17, 1.5: with a taken username, a registered address and an unknown one get the same
/// answer, on the pages and the API: which unique key the database checks first tells nothing.
#[test]
fn registration_with_a_taken_username_tells_nothing_of_the_address() {
    let dir = TempDir::new("accounts-enum-name");
    let gh = start(&dir, &[]);
    create_user(&dir.join("data"), "gina", "gina@example.org", PW);
    create_user(&dir.join("data"), "hugo", "hugo@example.org", PW);
    let mut b = Browser::new(gh.addr());
    let page = |b: &mut Browser, email: &str| {
        let r = b.submit(
            "/register",
            "/register",
            &[
                ("username", "gina"),
                ("email", email),
                ("name", "G"),
                ("password", PW2),
            ],
        );
        let csrf = hidden(&r.body, "csrf").unwrap_or_default();
        (r.status, r.body.replace(&csrf, "").replace(email, "EMAIL"))
    };
    let registered = page(&mut b, "hugo@example.org");
    let unknown = page(&mut b, "nobody@example.org");
    assert_eq!(registered.0, 409, "{}", registered.1);
    assert_eq!(registered, unknown);
    let api = |b: &mut Browser, email: &str| {
        let (r, v) = b.json(
            "POST",
            "/api/register",
            &serde_json::json!({"username": "GINA", "email": email, "name": "G", "password": PW2}),
        );
        (r.status, v["error"].clone())
    };
    let registered = api(&mut b, "hugo@example.org");
    assert_eq!(
        registered,
        (409, serde_json::json!("username_taken")),
        "a registered address"
    );
    assert_eq!(registered, api(&mut b, "nobody@example.org"));
}

/// Issue 17, 1.6: a login name over 320 bytes is refused (400) before anything else, on the
/// page and the API, and never reaches the log; a name that matched no one is logged as a
/// tag, so a newline cannot forge a line and a password typed as the name is not written.
#[test]
fn login_names_are_bounded_and_never_logged_as_typed() {
    let dir = TempDir::new("accounts-names");
    let gh = start(&dir, &[]);
    create_user(&dir.join("data"), "ivy", "ivy@example.org", PW);
    let mut b = Browser::new(gh.addr());
    let huge = "n".repeat(1_500_000);
    let r = login(&mut b, &huge, PW);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("at most 320 characters"), "{}", r.body);
    assert!(r.body.len() < 100_000, "the name was echoed back");
    let (r, v) = b.json(
        "POST",
        "/api/login",
        &serde_json::json!({"username": huge, "password": PW}),
    );
    assert_eq!(
        (r.status, v["error"].as_str()),
        (400, Some("invalid_fields"))
    );
    // 321 bytes are refused; 320 are an ordinary wrong name.
    assert_eq!(login(&mut b, &"n".repeat(321), PW).status, 400);
    assert_eq!(login(&mut b, &"n".repeat(320), PW).status, 401);

    let forged = "eve\nINFO audit event=\"login\" user=admin";
    assert_eq!(login(&mut b, forged, PW).status, 401);
    // The third failure from one address is the last without a delay.
    assert_eq!(login(&mut b, PW3, PW).status, 401);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gh.logs().matches("login_failed").count() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = gh.logs();
    assert_eq!(logs.matches("login_failed").count(), 3, "{logs}");
    assert!(!logs.contains("nnnnnnnnnnnnnnnn"), "a long name was logged");
    assert!(
        !logs.contains("user=admin"),
        "a name forged a log line:\n{logs}"
    );
    assert!(
        !logs.contains(PW3),
        "a password typed as the name was logged"
    );
    assert!(logs.contains("user=login:"), "{logs}");
    assert!(logs.len() < 100_000, "{} bytes of log", logs.len());
}

/// Issue 17, 1.11: one rule decides whether a session is live. An idle session is refused at
/// `/auth`, by the pages and by the API alike, and `/login` then shows its form instead of
/// sending the browser back where it came from (which looped).
#[test]
fn an_idle_session_is_over_everywhere_at_once() {
    let dir = TempDir::new("accounts-idle");
    let gh = start(
        &dir,
        &[
            "--touch-interval",
            "1s",
            "--cache-ttl",
            "1s",
            "--session-idle",
            "3s",
        ],
    );
    create_user(&dir.join("data"), "otto", "otto@example.org", PW);
    let mut b = Browser::new(gh.addr());
    assert_eq!(login(&mut b, "otto", PW).status, 303);
    let token = b.cookie(COOKIE).unwrap().to_string();
    assert_eq!(auth(&gh, &token).status, 200);
    assert_eq!(b.get("/account").status, 200);
    // Nothing uses it for longer than --session-idle (time itself is what is tested here).
    std::thread::sleep(Duration::from_millis(4_500));
    assert_eq!(auth(&gh, &token).status, 401, "/auth");
    let r = b.get("/account");
    assert_eq!(r.status, 303, "the pages still accept an idle session");
    assert!(r.header("location").unwrap().starts_with("/login"));
    let (r, _) = b.json("GET", "/api/me", &serde_json::Value::Null);
    assert_eq!(r.status, 401, "the API still accepts an idle session");
    let r = b.get("/login?rd=/account");
    assert_eq!(r.status, 200, "/login sent an idle session back to rd");
    assert!(r.body.contains("name=\"password\""), "{}", r.body);
}

/// Issue 17, 1.9: the data directory (sessions, users, keys, mail with live reset links) is
/// private: 0700, and what an older version left readable is tightened at start.
#[test]
fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("accounts-private");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("mail")).unwrap();
    let old_mail = data.join("mail").join("old-reset-link.eml");
    std::fs::write(&old_mail, "a live reset link").unwrap();
    for (path, mode) in [
        (&data, 0o755),
        (&data.join("mail"), 0o755),
        (&old_mail, 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let _gh = start(&dir, &[]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&data.join("mail")), 0o700, "the mail directory");
    assert_eq!(mode(&data.join("keys")), 0o700, "the keys directory");
    assert_eq!(mode(&old_mail), 0o600, "a mail file an older version wrote");
}

/// Issue 17, 1.7: a new name or a confirmed new address reaches upstreams at once. Every
/// other session carrying the old identity ends; the browser that made the change gets a
/// re-issued session carrying the new one (so no two users reach upstreams with one email).
#[test]
fn a_new_name_or_address_ends_what_carries_the_old_one() {
    let dir = TempDir::new("accounts-identity");
    let gh = start(&dir, &[]);
    let data = dir.path().join("data");
    create_user(&dir.join("data"), "pia", "pia@example.org", PW);
    let signed_in = || {
        let mut b = Browser::new(gh.addr());
        assert_eq!(login(&mut b, "pia", PW).status, 303);
        b
    };
    let (mut here, other) = (signed_in(), signed_in());
    let before = here.cookie(COOKIE).unwrap().to_string();
    let r = here.submit(
        "/account",
        "/account",
        &[
            ("action", "profile"),
            ("name", "Pia Neu"),
            ("affiliation", ""),
            ("country", ""),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let now = here.cookie(COOKIE).unwrap().to_string();
    assert_ne!(now, before, "this browser's session was not re-issued");
    assert!(refused_soon(&gh, &before), "the old token lived on");
    assert!(
        refused_soon(&gh, other.cookie(COOKIE).unwrap()),
        "another session kept the old name"
    );
    let r = auth(&gh, &now);
    assert_eq!(r.status, 200);
    assert_eq!(claims(&r)["name"], "Pia Neu");

    // A new address, confirmed in this browser: the same.
    let other = signed_in();
    let r = here.submit(
        "/account",
        "/account",
        &[
            ("action", "email"),
            ("email", "pia@new.example"),
            ("current_password", PW),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mail = wait_mail(&data, 1);
    assert_eq!(
        here.get(&link_in(&mail, "/email/confirm?token=")).status,
        200
    );
    let newest = here.cookie(COOKIE).unwrap().to_string();
    assert_ne!(newest, now);
    assert!(
        refused_soon(&gh, other.cookie(COOKIE).unwrap()),
        "another session kept the old address"
    );
    let r = auth(&gh, &newest);
    assert_eq!(r.status, 200);
    assert_eq!(claims(&r)["email"], "pia@new.example");
    assert_eq!(r.header("x-auth-request-email"), Some("pia@new.example"));
}

/// Issue 17, 1.8: login delays are counted in Redis, so two replicas add up; and a browser
/// that signed in before (the known-device cookie) gets in while an attacker keeps the
/// account delayed for everyone else, its own failures counted apart.
#[test]
fn login_delays_are_shared_by_replicas_and_spare_known_devices() {
    let dir = TempDir::new("accounts-shared-throttle");
    let redis = RedisServer::start();
    let url = redis.url();
    let a = start(&dir, &["--redis-url", &url]);
    let b = start(&dir, &["--redis-url", &url]);
    create_user(&dir.join("data"), "quinn", "quinn@example.org", PW);

    // The owner signs in once on replica a: the browser is known from now on.
    let mut owner = Browser::new(a.addr());
    assert_eq!(login(&mut owner, "quinn", PW).status, 303);
    let device = owner
        .cookie("gatehouse_device")
        .expect("a known-device cookie")
        .to_string();
    assert!(device.starts_with("v1."), "{device}");

    // An attacker fails three times on replica a; replica b delays the fourth.
    let mut attacker = Browser::new(a.addr());
    for _ in 0..3 {
        assert_eq!(login(&mut attacker, "quinn", PW2).status, 401);
    }
    let mut elsewhere = Browser::new(b.addr());
    let r = login(&mut elsewhere, "quinn", PW);
    assert_eq!(
        r.status, 429,
        "the other replica did not count a's failures"
    );
    assert!(r.header("retry-after").is_some());

    // The owner's known browser, on either replica, is not held up by them.
    let mut owner_b = Browser::new(b.addr());
    owner_b.set_cookie("gatehouse_device", &device);
    assert_eq!(
        login(&mut owner_b, "quinn", PW).status,
        303,
        "the account's delay held up its owner's known browser"
    );
    // A forged or another account's device cookie is no exemption.
    let mut forger = Browser::new(b.addr());
    forger.set_cookie("gatehouse_device", &device.replace("v1.", "v1.x"));
    for _ in 0..3 {
        let _ = login(&mut forger, "quinn", PW2);
    }
    assert_eq!(login(&mut forger, "quinn", PW).status, 429);

    // A known browser's own failures delay it, and only it.
    let mut careless = Browser::new(a.addr());
    careless.set_cookie("gatehouse_device", &device);
    for _ in 0..3 {
        assert_eq!(login(&mut careless, "quinn", PW3).status, 401);
    }
    assert_eq!(login(&mut careless, "quinn", PW).status, 429);
    let fresh = owner_b.cookie("gatehouse_device").unwrap().to_string();
    assert_ne!(fresh, device, "each sign-in gives a new device cookie");
    let mut owner_again = Browser::new(b.addr());
    owner_again.set_cookie("gatehouse_device", &fresh);
    assert_eq!(
        login(&mut owner_again, "quinn", PW).status,
        303,
        "another known browser was held up by this one's failures"
    );
}

/// Issue 17, 1.9: the CSRF cookie is `__Host-` when Secure and no --cookie-domain is set, and
/// a new CSRF token is set at sign-in; pages and /auth agree on which of two session cookies
/// counts; reset mails are limited per recipient; current-password checks are delayed; an
/// email change obeys --blocked-domains.
#[test]
fn cookies_csrf_resets_and_current_passwords_follow_the_rules() {
    // Secure cookies (no --insecure-cookies): the __Host- prefix.
    let dir = TempDir::new("accounts-host-csrf");
    let roles = roles_file(&dir);
    let data = dir.join("data");
    let secure = Gatehouse::spawn(&args(&["--roles", &roles, "--data-dir", &data]));
    let r = http_get(secure.addr(), "/login", &[]);
    let set = r.header_all("set-cookie").join("\n");
    assert!(set.contains("__Host-gatehouse_session_csrf="), "{set}");
    assert!(
        set.contains("Secure") && set.contains("Path=/") && !set.contains("Domain"),
        "{set}"
    );
    drop(secure);
    let with_domain = Gatehouse::spawn(&args(&[
        "--roles",
        &roles,
        "--data-dir",
        &data,
        "--cookie-domain",
        "example.org",
    ]));
    let set = http_get(with_domain.addr(), "/login", &[])
        .header_all("set-cookie")
        .join("\n");
    assert!(
        !set.contains("__Host-") && set.contains("gatehouse_session_csrf="),
        "{set}"
    );
    drop(with_domain);

    let dir = TempDir::new("accounts-rules");
    let gh = start(
        &dir,
        &[
            "--ip-rate-limit",
            "100",
            "--blocked-domains",
            "spam.example",
        ],
    );
    let data = dir.path().join("data");
    create_user(&dir.join("data"), "rhea", "rhea@example.org", PW);
    create_user(&dir.join("data"), "sven", "sven@example.org", PW);

    // A new CSRF token at sign-in.
    let mut b = Browser::new(gh.addr());
    b.get("/login");
    let before = b.cookie("gatehouse_session_csrf").unwrap().to_string();
    assert_eq!(login(&mut b, "rhea", PW).status, 303);
    assert_ne!(
        b.cookie("gatehouse_session_csrf").unwrap(),
        before,
        "not rotated"
    );

    // Two session cookies: the first one counts, for /auth and the pages alike.
    let rhea = b.cookie(COOKIE).unwrap().to_string();
    let mut s = Browser::new(gh.addr());
    assert_eq!(login(&mut s, "sven", PW).status, 303);
    let sven = s.cookie(COOKIE).unwrap().to_string();
    let both = format!("{COOKIE}={sven}; {COOKIE}={rhea}");
    let r = http_get(gh.addr(), "/auth", &[("Cookie", &both)]);
    assert_eq!(r.header("x-auth-request-user"), Some("sven"));
    let (_, me) = {
        let r = http_get(gh.addr(), "/api/me", &[("Cookie", &both)]);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        (r.status, v)
    };
    assert_eq!(
        me["username"], "sven",
        "the pages chose another cookie than /auth: {me}"
    );

    // An email change to a blocked domain is refused like a registration.
    let r = b.submit(
        "/account",
        "/account",
        &[
            ("action", "email"),
            ("email", "rhea@spam.example"),
            ("current_password", PW),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("cannot be used here"), "{}", r.body);

    // Wrong current passwords are delayed like logins.
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            b.submit(
                "/account/password",
                "/account/password",
                &[
                    ("current_password", "wrong wrong wrong"),
                    ("password", PW3),
                    ("confirm", PW3),
                ],
            )
            .status
        })
        .collect();
    assert_eq!(
        statuses,
        [400, 400, 400, 429],
        "current-password checks are not delayed"
    );

    // At most five reset mails per recipient an hour, whatever the addresses asking.
    let mut c = Browser::new(gh.addr());
    for _ in 0..7 {
        let r = c.submit(
            "/password/forgot",
            "/password/forgot",
            &[("email", "sven@example.org")],
        );
        assert_eq!(r.status, 200);
    }
    // Two refused (each logged), five sent (mail is written off the request).
    let resets = || {
        mails(&data)
            .iter()
            .filter(|m| m.contains("Reset your password"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (gh.logs().matches("password_reset_limited").count() < 2 || resets() < 5)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gh.logs().matches("password_reset_limited").count(), 2);
    assert_eq!(resets(), 5, "reset mails to one recipient");
}
