//! Signing in with other providers, end to end: panva's oidc-provider (OpenID Certified, npm)
//! as the upstream OpenID provider, with its development sign-in pages; oauth2-mock-server
//! standing in for GitHub's OAuth endpoints, its user API answered here. Both run on loopback
//! from `tests/e2e/node`; the browser is the harness's cookie jar, one per host.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::accounts::{auth, claims, on_both_backends, refused_soon, Backend, Site, COOKIE, PW};
use crate::support::*;

const SECRET: &str = "upstream-client-secret-for-tests";

on_both_backends!(sign_in_creates_finds_links_and_logs_out_with_the_upstream_provider);

/// The upstream OpenID provider (oidc-provider), on `port`, with gatehouse (`gh`) as its
/// client `gatehouse`.
fn upstream(port: u16, gh: &Gatehouse) -> NodeScript {
    let script = node_tools("upstream_op.mjs");
    let base = format!("http://{}", gh.addr());
    let mut node = NodeScript::start(
        &script,
        &[
            &port.to_string(),
            "gatehouse",
            SECRET,
            &format!("{base}/login/with/up/callback"),
            &format!("{base}/login/with/up/backchannel-logout"),
        ],
    );
    node.expect("ready", Duration::from_secs(30));
    node
}

/// `--identity-providers`: `up` at the upstream provider's port, `down` at a port nothing
/// listens on, and `gh` (GitHub's kind) at `github` with its API at `api`.
fn providers_file(dir: &TempDir, up: u16, github: u16, api: u16) -> String {
    let secret = dir.join("client.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let down = free_port();
    let path = dir.join("providers.toml");
    std::fs::write(
        &path,
        format!(
            r#"[[provider]]
id = "up"
name = "Upstream"
kind = "oidc"
issuer = "http://127.0.0.1:{up}"
client_id = "gatehouse"
client_secret_file = "{secret}"
trust_mfa = true

[[provider]]
id = "down"
name = "Downstairs"
kind = "oidc"
issuer = "http://127.0.0.1:{down}"
client_id = "gatehouse"
client_secret_file = "{secret}"

[[provider]]
id = "gh"
name = "GitHub"
kind = "github"
authorize_url = "http://127.0.0.1:{github}/authorize"
token_url = "http://127.0.0.1:{github}/token"
api_url = "http://127.0.0.1:{api}"
client_id = "gatehouse-gh"
client_secret_file = "{secret}"
"#
        ),
    )
    .unwrap();
    path
}

/// A person's browser: one cookie jar per host, following redirects across them.
struct Journey {
    hosts: Vec<(String, Browser)>,
    /// Where the last answer came from (path and query).
    pub at: String,
}

impl Journey {
    fn new(gh: &Gatehouse) -> Journey {
        let addr = gh.addr().to_string();
        Journey {
            hosts: vec![(addr.clone(), Browser::new(&addr))],
            at: String::new(),
        }
    }

    fn gh(&mut self) -> &mut Browser {
        &mut self.hosts[0].1
    }

    /// (host, path) of `url`: absolute, or a path on gatehouse.
    fn split(&self, url: &str) -> (String, String) {
        match url.strip_prefix("http://") {
            Some(rest) => {
                let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                (
                    host.to_owned(),
                    if path.is_empty() {
                        "/".into()
                    } else {
                        path.to_owned()
                    },
                )
            }
            None => (self.hosts[0].0.clone(), url.to_owned()),
        }
    }

    fn browser(&mut self, host: &str) -> &mut Browser {
        if !self.hosts.iter().any(|(h, _)| h == host) {
            self.hosts.push((host.to_owned(), Browser::new(host)));
        }
        &mut self.hosts.iter_mut().find(|(h, _)| h == host).unwrap().1
    }

    /// GETs `url`, following redirects: the last answer.
    fn go(&mut self, url: &str) -> Response {
        let (host, path) = self.split(url);
        let r = self.browser(&host).get(&path);
        self.landed(&host, &path, r)
    }

    /// POSTs a form to `url` (with that host's Origin), following redirects.
    fn post(&mut self, url: &str, fields: &[(&str, &str)]) -> Response {
        let (host, path) = self.split(url);
        let r = self.browser(&host).post(&path, fields);
        self.landed(&host, &path, r)
    }

    fn landed(&mut self, host: &str, path: &str, mut r: Response) -> Response {
        let (mut host, mut path) = (host.to_owned(), path.to_owned());
        for _ in 0..10 {
            if !(300..400).contains(&r.status) {
                break;
            }
            let to = r.header("location").unwrap().to_owned();
            (host, path) = if to.starts_with('/') {
                (host, to)
            } else {
                self.split(&to)
            };
            r = self.browser(&host).get(&path);
        }
        self.at = path;
        r
    }

    /// The URL `url` redirects to (not followed).
    fn location(&mut self, url: &str) -> String {
        let (host, path) = self.split(url);
        let r = self.browser(&host).get(&path);
        assert!((300..400).contains(&r.status), "{url}: {r:?}");
        r.header("location").unwrap().to_owned()
    }

    /// The upstream provider's host (the first other than gatehouse's).
    fn upstream_host(&self) -> String {
        self.hosts[1].0.clone()
    }

    /// Forgets the provider's cookies: its next page asks who is signing in.
    fn forget_upstream(&mut self) {
        self.hosts.truncate(1);
    }

    /// At the upstream provider's sign-in page: signs in as `login`, consents when asked, and
    /// stops at the redirect back to gatehouse: that URL.
    fn until_callback(&mut self, page: Response, login: &str) -> String {
        assert!(
            page.body.contains("name=\"login\""),
            "not the provider's sign-in: {}",
            page.body
        );
        let upstream = self.upstream_host();
        let action = attr(&page.body, "action");
        let op = self.browser(&upstream);
        let mut r = op.post(
            &action,
            &[
                ("prompt", "login"),
                ("login", login),
                ("password", "anything"),
            ],
        );
        loop {
            if (300..400).contains(&r.status) {
                let to = r.header("location").unwrap().to_owned();
                if !to.starts_with('/') && !to.starts_with(&format!("http://{upstream}/")) {
                    return to;
                }
                let path = to
                    .trim_start_matches(&format!("http://{upstream}"))
                    .to_owned();
                r = self.browser(&upstream).get(&path);
            } else if r.body.contains("value=\"consent\"") {
                let action = attr(&r.body, "action");
                r = self
                    .browser(&upstream)
                    .post(&action, &[("prompt", "consent")]);
            } else {
                panic!("stuck at the provider: {r:?}");
            }
        }
    }

    /// [`Journey::until_callback`], then on at gatehouse: the answer there.
    fn upstream_sign_in(&mut self, page: Response, login: &str) -> Response {
        let back = self.until_callback(page, login);
        self.go(&back)
    }
}

/// The first `name="…"` attribute value in `html`.
fn attr(html: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    let start = html
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + key.len();
    html_unescape(&html[start..start + html[start..].find('"').unwrap()])
}

/// The query parameter `name` of `url`.
fn param(url: &str, name: &str) -> String {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .to_owned()
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let old = param(url, name);
    url.replace(&format!("{name}={old}"), &format!("{name}={value}"))
}

/// Signs in at gatehouse with the upstream provider as `login`: the journey, and where it
/// ended.
fn sign_in_upstream(gh: &Gatehouse, login: &str) -> (Journey, Response) {
    let mut j = Journey::new(gh);
    let page = j.go("/login/with/up");
    let r = j.upstream_sign_in(page, login);
    (j, r)
}

fn user_json(site: &Site, user: &str) -> Value {
    serde_json::from_str(&cli_stdout(
        &site.cli(&["user", "show", "--json", user], None),
    ))
    .unwrap()
}

fn sign_in_creates_finds_links_and_logs_out_with_the_upstream_provider(backend: Backend) {
    let dir = TempDir::new("federation");
    let port = free_port();
    let file = providers_file(&dir, port, free_port(), free_port());
    let site = Site::start("federation", backend, &["--identity-providers", &file]);
    let gh = &site.gh;
    let mut op = upstream(port, gh);

    // The login page offers each provider.
    let mut b = Browser::new(gh.addr());
    let login = b.get("/login").body;
    assert!(
        login.contains("Sign in with Upstream") && login.contains("href=\"/login/with/up\""),
        "{login}"
    );

    // First sign-in: the account is made, its email confirmed by the provider.
    let (mut j, r) = sign_in_upstream(gh, "carol");
    assert_eq!((r.status, j.at.as_str()), (200, "/account"), "{}", r.body);
    let c = claims(&auth(gh, j.gh().cookie(COOKIE).unwrap()));
    assert_eq!(
        (c["amr"].clone(), c["idp"].clone()),
        (json!(["fed"]), json!("up")),
        "{c}"
    );
    let carol = user_json(&site, "carol");
    assert_eq!(carol["email"], "carol@example.org");
    assert!(carol["email_confirmed_at"].is_u64());
    assert_eq!(carol["password_scheme"], "none");
    assert_eq!(
        cli_stdout(&site.cli(&["user", "identity", "list", "carol"], None)),
        "up\tcarol"
    );
    // The second finds it.
    let (mut j2, r) = sign_in_upstream(gh, "carol");
    assert_eq!(r.status, 200);
    assert_eq!(
        claims(&auth(gh, j2.gh().cookie(COOKIE).unwrap()))["sub"],
        carol["id"]
    );
    assert_eq!(
        cli_stdout(&site.cli(&["user", "list"], None))
            .lines()
            .count(),
        1
    );

    // Asked to sign in again (an application's prompt=login, the console's max_age), a
    // federated user signs in again at the provider: it is asked to (prompt=login, max_age=0)
    // though its session there is fresh, and must answer with a new auth_time.
    let (mut r3, _) = sign_in_upstream(gh, "carol");
    let page = r3.go("/login?prompt=login&rd=%2Faccount%2Fsecurity");
    assert!(
        page.body.contains("Please sign in again")
            && page
                .body
                .contains("href=\"/login/with/up?again=1&amp;rd=/account/security\""),
        "{}",
        page.body
    );
    let to = r3.location("/login/with/up?again=1&rd=%2Faccount%2Fsecurity");
    assert_eq!(
        (param(&to, "prompt"), param(&to, "max_age")),
        ("login".into(), "0".into())
    );
    let page = r3.go(&to);
    let r = r3.upstream_sign_in(page, "carol");
    assert_eq!(
        (r.status, r3.at.as_str()),
        (200, "/account/security"),
        "{}",
        r.body
    );

    // Tampered state: the callback refuses a state this browser did not leave with, and an
    // answer for one provider at another's callback.
    let mut t = Journey::new(gh);
    let page = t.go("/login/with/up");
    let back = t.until_callback(page, "carol");
    let path = back
        .trim_start_matches(&format!("http://{}", gh.addr()))
        .to_owned();
    assert!(path.starts_with("/login/with/up/callback?"), "{back}");
    let r = t.gh().get(&with_param(&path, "state", "forged"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("This sign-in has expired"));
    // The refused attempt ended the flow: the genuine answer is now refused too (used once).
    assert_eq!(t.gh().get(&path).status, 400);
    // Another flow in the same browser, and the first flow's code under its state: its PKCE
    // verifier and nonce are the other flow's, so it is refused.
    let state2 = param(&t.location("/login/with/up"), "state");
    let r = t.gh().get(&with_param(&path, "state", &state2));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("did not pass our checks"), "{}", r.body);
    // A response naming another issuer (RFC 9207), and one at another provider's callback.
    let state3 = param(&t.location("/login/with/up"), "state");
    let mixed = with_param(
        &with_param(&path, "state", &state3),
        "iss",
        "http%3A%2F%2Fevil.example",
    );
    assert_eq!(t.gh().get(&mixed).status, 401);
    let state4 = param(&t.location("/login/with/up"), "state");
    let elsewhere =
        with_param(&path, "state", &state4).replace("/login/with/up/", "/login/with/down/");
    assert_eq!(t.gh().get(&elsewhere).status, 400);
    assert!(gh.logs().contains("federated_login_refused"));

    // An email that already belongs to an account: never taken over, a page says what to do.
    site.create_user("erin", "erin@example.org", PW);
    let (_, r) = sign_in_upstream(gh, "erin");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body.contains("You already have an account") && r.body.contains("link"),
        "{}",
        r.body
    );
    assert_eq!(
        cli_stdout(&site.cli(&["user", "identity", "list", "erin"], None)),
        ""
    );

    // Linking while signed in: erin links her upstream account, then it signs her in.
    let mut e = Journey::new(gh);
    assert_eq!(crate::accounts::login(e.gh(), "erin", PW).status, 303);
    let security = e.go("/account/security");
    assert!(security.body.contains("Link Upstream"), "{}", security.body);
    let csrf = hidden(&security.body, "csrf").unwrap();
    let page = e.post("/account/security/identities/up/link", &[("csrf", &csrf)]);
    let r = e.upstream_sign_in(page, "erin");
    assert_eq!(
        (r.status, e.at.as_str()),
        (200, "/account/security?linked=up"),
        "{}",
        r.body
    );
    assert!(r.body.contains("Upstream is linked"), "{}", r.body);
    wait_mail_with(
        std::path::Path::new(&site.data()),
        "Upstream was linked to your account",
    );
    let (mut again, r) = sign_in_upstream(gh, "erin");
    assert_eq!(r.status, 200);
    assert_eq!(
        claims(&auth(gh, again.gh().cookie(COOKIE).unwrap()))["preferred_username"],
        "erin"
    );
    // An identity linked to someone else is refused (carol's, while erin is signed in).
    let security = e.go("/account/security");
    let csrf = hidden(&security.body, "csrf").unwrap();
    // (erin's is linked: unlink it first, then try to link carol's.)
    let r = e.post("/account/security/identities/up/unlink", &[("csrf", &csrf)]);
    assert!(r.body.contains("Upstream is unlinked"), "{}", r.body);
    wait_mail_with(std::path::Path::new(&site.data()), "Upstream was unlinked");
    let csrf = hidden(&r.body, "csrf").unwrap();
    e.forget_upstream();
    let page = e.post("/account/security/identities/up/link", &[("csrf", &csrf)]);
    let r = e.upstream_sign_in(page, "carol");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("Already linked to another account"));
    // The last way to sign in cannot be removed: carol has no password and no passkey.
    let security = j.go("/account/security");
    let csrf = hidden(&security.body, "csrf").unwrap();
    let r = j.post("/account/security/identities/up/unlink", &[("csrf", &csrf)]);
    assert!(r.body.contains("last way to sign in"), "{}", r.body);
    let (r, v) = j
        .gh()
        .json("DELETE", "/api/security/identities/up", &json!({}));
    assert_eq!(
        (r.status, v["error"].as_str()),
        (409, Some("last_way_to_sign_in"))
    );
    let (_, v) = j.gh().json("GET", "/api/security", &json!(null));
    assert_eq!(v["identities"][0]["provider"], "up");
    assert_eq!(v["identities"][0]["linked"], true);
    let out = site.cli(&["user", "identity", "remove", "carol", "up"], None);
    assert_eq!(out.status.code(), Some(64), "{out:?}");

    // A username that is taken: the user chooses another.
    site.create_user("frank", "frank@elsewhere.org", PW);
    let (mut f, r) = sign_in_upstream(gh, "frank");
    assert_eq!(
        (r.status, f.at.as_str()),
        (200, "/login/with/up/register"),
        "{}",
        r.body
    );
    assert!(r.body.contains("This username is taken"), "{}", r.body);
    let csrf = hidden(&r.body, "csrf").unwrap();
    let r = f.post(
        "/login/with/up/register",
        &[("csrf", &csrf), ("username", "frank-up")],
    );
    assert_eq!((r.status, f.at.as_str()), (200, "/account"), "{}", r.body);
    assert_eq!(user_json(&site, "frank-up")["email"], "frank@example.org");

    // A provider that gives no email: the user gives one, and confirms it first.
    let (mut g, r) = sign_in_upstream(gh, "nomail-gus");
    assert_eq!(g.at, "/login/with/up/register", "{}", r.body);
    let csrf = hidden(&r.body, "csrf").unwrap();
    let r = g.post(
        "/login/with/up/register",
        &[
            ("csrf", &csrf),
            ("username", "gus"),
            ("email", "gus@example.org"),
        ],
    );
    assert!(r.body.contains("Check your email"), "{}", r.body);
    let link = link_in(
        &wait_mail_with(std::path::Path::new(&site.data()), "To: gus@example.org"),
        "/email/confirm?token=",
    );
    assert_eq!(g.gh().get(&link).status, 200);
    let (mut g2, r) = sign_in_upstream(gh, "nomail-gus");
    assert_eq!((r.status, g2.at.as_str()), (200, "/account"), "{}", r.body);
    assert!(g2.gh().cookie(COOKIE).is_some());

    // A provider that is down: a clear page, never a failed start or a 500.
    let r = Browser::new(gh.addr()).get("/login/with/down");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("Downstairs is not answering"), "{}", r.body);
    assert_eq!(
        Browser::new(gh.addr()).get("/login/with/nosuch").status,
        404
    );

    // Back-channel logout: carol signs out at the provider, and the gatehouse sessions that
    // began with that upstream session end (the other browser's stays).
    let token = j.gh().cookie(COOKIE).unwrap().to_owned();
    let other = j2.gh().cookie(COOKIE).unwrap().to_owned();
    let upstream_host = j.upstream_host();
    let end = j.go(&format!("http://{upstream_host}/session/end"));
    let xsrf = attr(&end.body, "name=\"xsrf\" value");
    let action = attr(&end.body, "action");
    let r = j.post(&action, &[("xsrf", &xsrf), ("logout", "yes")]);
    assert!(r.status < 400, "{r:?}");
    assert!(
        refused_soon(gh, &token),
        "the session outlived the provider's logout\n{}",
        gh.logs()
    );
    assert_eq!(auth(gh, &other).status, 200);
    assert!(gh.logs().contains("backchannel_logout"));
    // The same logout token sent again (a replay) is refused: once carol signs in again, it
    // must not end her new session.
    let sent = op.expect("logout_token", Duration::from_secs(5))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut back, _) = sign_in_upstream(gh, "carol");
    let back = back.gh().cookie(COOKIE).unwrap().to_owned();
    let r = http_request(
        "POST",
        gh.addr(),
        "/login/with/up/backchannel-logout",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form_encode(&[("logout_token", &sent)]).as_bytes(),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(auth(gh, &back).status, 200);
    // A forged logout token is refused, with no CSRF or Origin check in the way.
    let r = http_request(
        "POST",
        gh.addr(),
        "/login/with/up/backchannel-logout",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"logout_token=eyJhbGciOiJub25lIn0.eyJzdWIiOiJjYXJvbCJ9.",
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(auth(gh, &other).status, 200);
    assert!(!gh.logs().contains(SECRET), "the client secret in the logs");
}

/// Registration closed: a page says so. A known identity signs in, and its user's own second
/// factor is asked for, unless the provider (with `trust_mfa`) reports one of its own.
#[test]
fn registration_closed_and_second_factors_with_and_without_trust_mfa() {
    let dir = TempDir::new("federation-closed");
    let port = free_port();
    let file = providers_file(&dir, port, free_port(), free_port());
    let site = Site::start(
        "federation-closed",
        Backend::Sqlite,
        &["--identity-providers", &file, "--registration", "closed"],
    );
    let _op = upstream(port, &site.gh);
    let (_, r) = sign_in_upstream(&site.gh, "hana");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("Registration is closed"), "{}", r.body);
    assert_eq!(cli_stdout(&site.cli(&["user", "list"], None)), "");

    // A known identity still signs in, and the user's own second factor still applies (the
    // provider reported none): an imported user with an authenticator app and an identity.
    let key = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let line = json!({"username": "ivy", "email": "ivy@example.org", "email_confirmed": true,
        "totp_secret": key, "identities": [{"provider": "up", "subject": "ivy"}]});
    let file = format!("{}/ivy.jsonl", site.data());
    std::fs::write(&file, format!("{line}\n")).unwrap();
    assert!(site.cli(&["user", "import", &file], None).status.success());
    let (mut j, r) = sign_in_upstream(&site.gh, "ivy");
    assert_eq!(j.at, "/login/second-factor", "{}", r.body);
    assert!(j.gh().cookie(COOKIE).is_none());
    let step = settled_totp_step();
    let r = j.gh().post_with_csrf_of(
        &r.body,
        "/login/second-factor",
        &[("method", "totp"), ("code", &totp_code(key, step))],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let c = claims(&auth(&site.gh, j.gh().cookie(COOKIE).unwrap()));
    assert_eq!(
        (c["amr"].clone(), c["idp"].clone()),
        (json!(["fed", "otp", "mfa"]), json!("up")),
        "{c}"
    );

    // The provider reports a second factor (`amr` pwd otp), and `up` has `trust_mfa`: no
    // second step here, and the session says mfa.
    let line = json!({"username": "zoe", "email": "zoe@example.org", "email_confirmed": true,
        "totp_secret": key, "identities": [{"provider": "up", "subject": "mfa-zoe"}]});
    std::fs::write(&file, format!("{line}\n")).unwrap();
    assert!(site.cli(&["user", "import", &file], None).status.success());
    let (mut j, r) = sign_in_upstream(&site.gh, "mfa-zoe");
    assert_eq!(j.at, "/account", "{}", r.body);
    let c = claims(&auth(&site.gh, j.gh().cookie(COOKIE).unwrap()));
    assert_eq!(c["amr"], json!(["fed", "mfa"]), "{c}");
}

#[test]
fn an_invitation_lets_a_provider_make_the_account() {
    let dir = TempDir::new("federation-invite");
    let port = free_port();
    let file = providers_file(&dir, port, free_port(), free_port());
    let site = Site::start(
        "federation-invite",
        Backend::Sqlite,
        &["--identity-providers", &file, "--registration", "invite"],
    );
    let _op = upstream(port, &site.gh);
    // Without an invitation: refused.
    let (_, r) = sign_in_upstream(&site.gh, "newbie");
    assert_eq!(r.status, 403, "{}", r.body);
    let out = site.cli(&["user", "invite", "--email", "newbie@uni.example"], None);
    let link = cli_stdout(&out);
    let path = &link[link.find("/register").unwrap()..];
    // The invitation's page offers the provider, and the account gets the invited address.
    let mut j = Journey::new(&site.gh);
    let page = j.go(path);
    let invite = param(path, "invite");
    assert!(
        page.body
            .contains(&format!("href=\"/login/with/up?invite={invite}\"")),
        "{}",
        page.body
    );
    let at_provider = j.go(&format!("/login/with/up?invite={invite}"));
    let r = j.upstream_sign_in(at_provider, "newbie");
    assert_eq!((r.status, j.at.as_str()), (200, "/account"), "{}", r.body);
    let made = user_json(&site, "newbie");
    assert_eq!(made["email"], "newbie@uni.example");
    assert!(made["email_confirmed_at"].is_u64());
    // Used once.
    assert_eq!(Browser::new(site.gh.addr()).get(path).status, 403);
}

/// GitHub's user API as the test answers it: `/user` and `/user/emails`, for the bearer
/// token the mock issued (any); it counts the calls.
fn github_api() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut bearer = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                bearer |= line
                    .to_ascii_lowercase()
                    .starts_with("authorization: bearer ");
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let path = first.split(' ').nth(1).unwrap_or("");
            let (status, body) = match (bearer, path) {
                (false, _) => (
                    "401 Unauthorized",
                    json!({"message": "Requires authentication"}),
                ),
                (true, "/user") => (
                    "200 OK",
                    json!({"id": 4242, "login": "octo", "name": "Octo Cat"}),
                ),
                (true, "/user/emails") => (
                    "200 OK",
                    json!([
                        {"email": "octo@users.noreply.github.com", "primary": false, "verified": true},
                        {"email": "octo@example.org", "primary": true, "verified": true},
                    ]),
                ),
                _ => ("404 Not Found", json!({"message": "Not Found"})),
            };
            let body = body.to_string();
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = reader.get_mut().read(&mut [0u8; 0]);
        }
    });
    (port, calls)
}

#[test]
fn the_github_kind_signs_in_with_the_verified_primary_email() {
    let dir = TempDir::new("federation-github");
    let github = free_port();
    let (api, calls) = github_api();
    let file = providers_file(&dir, free_port(), github, api);
    let site = Site::start(
        "federation-github",
        Backend::Sqlite,
        &["--identity-providers", &file],
    );
    let script = node_tools("github_mock.mjs");
    let mut mock = NodeScript::start(&script, &[&github.to_string()]);
    mock.expect("ready", Duration::from_secs(30));
    let mut j = Journey::new(&site.gh);
    let r = j.go("/login/with/gh");
    assert_eq!((r.status, j.at.as_str()), (200, "/account"), "{}", r.body);
    let c = claims(&auth(&site.gh, j.gh().cookie(COOKIE).unwrap()));
    assert_eq!(
        (c["idp"].as_str(), c["preferred_username"].as_str()),
        (Some("gh"), Some("octo"))
    );
    assert_eq!(user_json(&site, "octo")["email"], "octo@example.org");
    assert_eq!(
        cli_stdout(&site.cli(&["user", "identity", "list", "octo"], None)),
        "gh\t4242"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2);
}

#[test]
fn a_bad_providers_file_exits_64_naming_the_flag_and_the_line() {
    let dir = TempDir::new("federation-bad");
    let secret = dir.join("s");
    std::fs::write(&secret, "x\n").unwrap();
    for (text, line) in [
        ("[[provider]]\nid = \"a\"\nname = \"A\"\nkind = \"saml\"\n", "line 4"),
        (
            &*format!("[[provider]]\nid = \"a\"\nname = \"A\"\nkind = \"oidc\"\nclient_id = \"c\"\nclient_secret_file = \"{secret}\"\n"),
            "line 1",
        ),
        (
            &*format!("\n[[provider]]\nid = \"a b\"\nname = \"A\"\nkind = \"orcid\"\nclient_id = \"c\"\nclient_secret_file = \"{secret}\"\n"),
            "line 2",
        ),
    ] {
        let file = dir.join("p.toml");
        std::fs::write(&file, text).unwrap();
        let data = dir.join("data");
        let out = gatehouse_cli(&["serve", "--data-dir", &data, "--identity-providers", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("--identity-providers") && stderr.contains(line), "{line}: {stderr}");
    }
}
