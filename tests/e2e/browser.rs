//! A real browser (Debian's chromium through chromedriver and WebDriver) against real nginx
//! with the shipped configuration, gatehouse with accounts, and an application behind them.
//! Screenshots of the pages people see go to `target/screenshots/`.

use std::path::PathBuf;

use crate::support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

const PW: &str = "tangerine kayak moonlit orbit";

async fn browser(driver: &ChromeDriver) -> Client {
    ClientBuilder::new(HttpConnector::new())
        .capabilities(ChromeDriver::capabilities())
        .connect(&driver.url())
        .await
        .expect("a chromium session")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn sign_in(c: &Client, username: &str, password: &str) {
    for (id, value) in [("username", username), ("password", password)] {
        let field = c.find(Locator::Id(id)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }
    click(c, "form button[type=submit]").await;
}

/// A policy file in `dir` whose `/vault` asks for a second factor (`/login` is open).
fn vault_policy(dir: &TempDir) -> String {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\npath = \"/vault\"\nmfa = true\n\n[[rule]]\npath = \"/login\"\nanonymous = true\n",
    )
    .unwrap();
    policy
}

/// Types `text` into the field with id `id`.
async fn fill(c: &Client, id: &str, text: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

/// Clicks the element `css` selects.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits (at most 10 s) until the browser is on `path`.
async fn wait_path(c: &Client, path: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let url = c.current_url().await.unwrap();
        if url.path() == path {
            return;
        }
        if std::time::Instant::now() > deadline {
            let page = c.source().await.unwrap_or_default();
            panic!("still on {url}, not {path}:\n{page}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits (at most 10 s) until the page holds `text`. After a click, the page a test reads may
/// still be the one clicked on: an element both pages have (an `h1`) proves nothing.
#[cfg_attr(not(feature = "registry"), allow(dead_code))]
async fn wait_text(c: &Client, text: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = c.source().await.unwrap_or_default();
        if page.contains(text) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let url = c.current_url().await.unwrap();
            panic!("no {text:?} on {url}:\n{page}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_through_nginx_and_revoke_from_another_browser() {
    let dir = TempDir::new("browser");
    let data = dir.join("data");
    // Plain http on loopback: cookies without Secure.
    let gh = Gatehouse::spawn(&args(&["--insecure-cookies", "--data-dir", &data]));
    let created = gatehouse_cli_stdin(
        &[
            "user",
            "create",
            "--data-dir",
            &data,
            "--username",
            "ann",
            "--email",
            "ann@example.org",
            "--name",
            "Ann Example",
        ],
        PW,
    );
    assert!(created.status.success(), "{created:?}");
    let app = EchoServer::start();
    let nginx = signin_site(gh.addr().port(), app.port());
    let site = format!("http://{}", nginx.addr());
    let driver = ChromeDriver::start();

    // A protected page sends a signed-out browser to the login page, and back after it.
    let first = browser(&driver).await;
    first
        .goto(&format!("{site}/papers/1?view=full"))
        .await
        .unwrap();
    let url = first.current_url().await.unwrap();
    assert_eq!(url.path(), "/login", "{url}");
    shoot(&first, "login").await;
    sign_in(&first, "ann", "not my password at all").await;
    first
        .wait()
        .for_element(Locator::Css("[role=alert]"))
        .await
        .unwrap();
    shoot(&first, "login-error").await;
    sign_in(&first, "ann", PW).await;
    wait_path(&first, "/papers/1").await;
    let page = first.source().await.unwrap();
    assert!(
        page.contains("X-Auth-Request-User: ann"),
        "the upstream did not see the user:\n{page}"
    );
    assert!(app
        .requests()
        .iter()
        .any(|r| r.contains("GET /papers/1?view=full")));

    // A second browser signs in, and signs the first one out from its sessions page.
    let second = browser(&driver).await;
    second.goto(&format!("{site}/login")).await.unwrap();
    sign_in(&second, "ann@example.org", PW).await;
    second
        .wait()
        .for_element(Locator::Css("dl.facts"))
        .await
        .unwrap();
    shoot(&second, "account").await;
    second
        .goto(&format!("{site}/account/sessions"))
        .await
        .unwrap();
    shoot(&second, "sessions").await;
    let rows = second.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 2, "two sessions listed");
    second
        .find(Locator::Css("tbody form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    second
        .wait()
        .for_element(Locator::Css("[role=status]"))
        .await
        .unwrap();
    assert_eq!(
        second
            .find_all(Locator::Css("tbody tr"))
            .await
            .unwrap()
            .len(),
        1
    );

    // The first browser's next request goes to login (revocation within 1 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        first.goto(&format!("{site}/papers/2")).await.unwrap();
        if first.current_url().await.unwrap().path() == "/login" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked browser still got in"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The other pages people see.
    second
        .goto(&format!("{site}/account/password"))
        .await
        .unwrap();
    shoot(&second, "password").await;
    let anon = browser(&driver).await;
    anon.goto(&format!("{site}/register")).await.unwrap();
    shoot(&anon, "register").await;
    fill(&anon, "username", "9lives").await;
    fill(&anon, "email", "not-an-address").await;
    fill(&anon, "password", "password").await;
    click(&anon, "form button[type=submit]").await;
    anon.wait()
        .for_element(Locator::Css(".error"))
        .await
        .unwrap();
    shoot(&anon, "register-errors").await;
    anon.goto(&format!("{site}/password/forgot")).await.unwrap();
    shoot(&anon, "forgot").await;
    anon.goto(&format!("{site}/password/reset?token=expired"))
        .await
        .unwrap();
    shoot(&anon, "error-expired-link").await;
    for c in [first, second, anon] {
        c.close().await.unwrap();
    }
}

/// An application asks a user for access (the authorization code grant, PKCE), the user signs
/// in and consents in the browser, the application calls the API through nginx with its
/// token; then the user makes a personal access token and withdraws the application's access.
#[cfg(feature = "registry")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_apps_and_tokens_through_nginx() {
    use base64::Engine;
    let dir = TempDir::new("browser-registry");
    let data = dir.join("data");
    let roles = dir.join("roles.toml");
    std::fs::write(
        &roles,
        "[roles.user]\nscopes = [\"papers:read\", \"papers:write\"]\n",
    )
    .unwrap();
    let app = EchoServer::start();
    let gh = Gatehouse::spawn(&args(&[
        "--insecure-cookies",
        "--data-dir",
        &data,
        "--roles",
        &roles,
    ]));
    let nginx = signin_site(gh.addr().port(), app.port());
    let site = format!("http://{}", nginx.addr());
    let cli = |a: &[&str], stdin: Option<&str>| {
        let mut all = a.to_vec();
        all.extend(["--data-dir", &data, "--roles", &roles]);
        gatehouse_cli_with(&all, &[], stdin)
    };
    assert!(cli(
        &[
            "user",
            "create",
            "--username",
            "bea",
            "--email",
            "bea@example.org"
        ],
        Some(PW)
    )
    .status
    .success());
    let callback = format!("{site}/callback");
    let made: serde_json::Value = serde_json::from_str(&cli_stdout(&cli(
        &[
            "client",
            "create",
            "--json",
            "--name",
            "Paper Shelf",
            "--homepage",
            "https://shelf.example.org",
            "--grant",
            "authorization_code",
            "--redirect-uri",
            &callback,
            "--scope",
            "papers:read",
            "--scope",
            "papers:write",
        ],
        None,
    )))
    .unwrap();
    let (id, secret) = (
        made["client_id"].as_str().unwrap(),
        made["client_secret"].as_str().unwrap(),
    );
    // PKCE: a verifier and its S256 challenge.
    let verifier = "a-verifier-of-enough-length-for-rfc-7636-section-4.1";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    let authorize = format!(
        "{site}/oauth/authorize?response_type=code&client_id={id}&redirect_uri={}&scope=papers%3Aread&state=xyz&code_challenge={challenge}&code_challenge_method=S256",
        url_encode(&callback)
    );

    let driver = ChromeDriver::start();
    let c = browser(&driver).await;
    c.goto(&authorize).await.unwrap();
    wait_path(&c, "/login").await;
    sign_in(&c, "bea", PW).await;
    wait_path(&c, "/oauth/authorize").await;
    let consent = c.source().await.unwrap();
    assert!(
        consent.contains("Paper Shelf") && consent.contains("Read your papers"),
        "{consent}"
    );
    shoot(&c, "consent").await;
    click(&c, "button[value=allow]").await;
    wait_path(&c, "/callback").await;
    let back = c.current_url().await.unwrap();
    let query: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(query["state"], "xyz");

    // The application redeems the code through nginx and calls the API with the token.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={verifier}",
        query["code"],
        url_encode(&callback)
    );
    let r = http_request(
        "POST",
        nginx.addr(),
        "/oauth/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &format!("Basic {basic}")),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let token: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let access = token["access_token"].as_str().unwrap().to_string();
    let call = |token: &str| {
        http_get(
            nginx.addr(),
            "/api/papers",
            &[("Authorization", &format!("Bearer {token}"))],
        )
    };
    let r = call(&access);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("X-Auth-Request-User: bea"), "{}", r.body);

    // A personal access token, made on the page.
    c.goto(&format!("{site}/account/tokens")).await.unwrap();
    fill(&c, "name", "nightly harvest").await;
    click(&c, "input[name=scope][value='papers:read']").await;
    click(&c, "form button[type=submit]:not(.quiet)").await;
    c.wait()
        .for_element(Locator::Css("input[readonly]"))
        .await
        .unwrap();
    shoot(&c, "tokens").await;
    let pat = c
        .find(Locator::Css("input[readonly]"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(pat.starts_with("gtp_"));
    assert_eq!(call(&pat).status, 200);

    // Authorized apps: withdraw, and the application's token stops working.
    c.goto(&format!("{site}/account/apps")).await.unwrap();
    shoot(&c, "apps").await;
    click(&c, "tbody form button").await;
    c.wait()
        .for_element(Locator::Css("[role=status]"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while call(&access).status != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "a withdrawn app's token still worked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        call(&pat).status,
        200,
        "the personal token went with the app"
    );
    c.close().await.unwrap();
}

/// The code of authenticator `key` at the current step plus `skip`, once the step has at
/// least 8 s left.
async fn totp_now(key: &str, skip: u64) -> String {
    let step = tokio::task::spawn_blocking(settled_totp_step)
        .await
        .unwrap();
    totp_code(key, step + skip)
}

/// Issue 18 in a browser, through real nginx: a route with `mfa = true` sends a password-only
/// session to the step-up; the user enrols an authenticator app from the page's key, steps
/// up with its code and lands back on the route; later sign-ins ask for password and code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_factor_enrolment_sign_in_and_step_up_through_nginx() {
    let dir = TempDir::new("browser-2fa");
    let data = dir.join("data");
    let policy = vault_policy(&dir);
    let gh = Gatehouse::spawn(&args(&[
        "--insecure-cookies",
        "--data-dir",
        &data,
        "--policy",
        &policy,
    ]));
    create_user(&data, "bea", "bea@example.org", PW);
    let app = EchoServer::start();
    let nginx = signin_site(gh.addr().port(), app.port());
    let site = format!("http://{}", nginx.addr());
    let driver = ChromeDriver::start();
    let c = browser(&driver).await;

    // Signed in with the password alone: the vault asks for a second factor, and with none
    // set up the page says so on the security page.
    c.goto(&format!("{site}/home")).await.unwrap();
    sign_in(&c, "bea", PW).await;
    wait_path(&c, "/home").await;
    c.goto(&format!("{site}/vault/box?k=1")).await.unwrap();
    wait_path(&c, "/login").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("needs a second factor"), "{page}");
    assert!(!app.requests().iter().any(|r| r.contains("/vault")));
    shoot(&c, "security-step-up-enrol").await;

    // Enrol right there: the key as text, the code from it; the recovery codes page then
    // leads back to the vault, which asks for the code alone, and the session that passes is a
    // new one.
    click(&c, "form[action='/account/security/totp'] button").await;
    wait_path(&c, "/account/security/totp").await;
    let key = c
        .find(Locator::Id("totp-secret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    shoot(&c, "security-totp-enrol").await;
    fill(&c, "code", &totp_now(&key, 0).await).await;
    click(&c, "form button[type=submit]").await;
    wait_path(&c, "/account/security/totp/confirm").await;
    let codes = c.find(Locator::Id("recovery-codes")).await.unwrap();
    assert_eq!(codes.find_all(Locator::Css("li")).await.unwrap().len(), 10);
    shoot(&c, "security-recovery-codes").await;
    let before = c.get_named_cookie("gatehouse_session").await.unwrap();
    click(&c, "#saved").await;
    wait_path(&c, "/login").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("Confirm it"), "{page}");
    assert!(
        !page.contains("id=\"password\""),
        "a step-up asks only for the code"
    );
    shoot(&c, "second-step-step-up").await;
    // (The code of the next step: the enrolment used this one, and codes are single use.)
    fill(&c, "code", &totp_now(&key, 1).await).await;
    click(&c, "form button[type=submit]").await;
    wait_path(&c, "/vault/box").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("X-Auth-Request-Amr: pwd otp mfa"), "{page}");
    assert!(
        page.contains("k=1"),
        "back to the page first asked for: {page}"
    );
    let after = c.get_named_cookie("gatehouse_session").await.unwrap();
    assert_ne!(
        before.value(),
        after.value(),
        "the step-up kept the old session"
    );
    let old = http_get(
        gh.addr(),
        "/auth",
        &[("Cookie", &format!("gatehouse_session={}", before.value()))],
    );
    assert_eq!(
        old.status, 401,
        "the session before the step-up still works"
    );

    c.goto(&format!("{site}/account/security")).await.unwrap();
    shoot(&c, "security").await;

    // Signing in again: password, then the second step.
    c.goto(&format!("{site}/logout")).await.unwrap();
    click(&c, "form button[type=submit]").await;
    c.delete_all_cookies().await.unwrap();
    c.goto(&format!("{site}/vault/box?k=3")).await.unwrap();
    wait_path(&c, "/login").await;
    sign_in(&c, "bea", PW).await;
    wait_path(&c, "/login/second-factor").await;
    assert!(c.get_named_cookie("gatehouse_session").await.is_err());
    shoot(&c, "second-step").await;
    // A code of a later step than the step-up's: wait for the step to turn.
    let used = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
        + 1;
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
        < used
    {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    fill(&c, "code", &totp_now(&key, 1).await).await;
    click(&c, "form button[type=submit]").await;
    wait_path(&c, "/vault/box").await;
    c.close().await.unwrap();
}

/// A command of chromedriver's own beyond what fantoccini wraps: `path` under the session.
#[derive(Debug)]
struct Chromedriver {
    path: &'static str,
    body: serde_json::Value,
}

impl Chromedriver {
    /// The virtual authenticator (the WebDriver extension of WebAuthn §11): a platform
    /// passkey provider with resident keys and user verification, which answers every
    /// ceremony of this browser session as if the user touched it.
    fn virtual_authenticator() -> Chromedriver {
        Chromedriver {
            path: "webauthn/authenticator",
            body: serde_json::json!({
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
                "automaticPresenceSimulation": true,
            }),
        }
    }

    /// Runs `source` in every page before its own scripts (DevTools, through chromedriver).
    fn before_each_page(source: &str) -> Chromedriver {
        Chromedriver {
            path: "goog/cdp/execute",
            body: serde_json::json!({
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": { "source": source },
            }),
        }
    }
}

impl fantoccini::wd::WebDriverCompatibleCommand for Chromedriver {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (hyper::Method::POST, Some(self.body.to_string()))
    }
}

/// Passkeys in a real browser: the offer after a password sign-in ("not now"), a passkey
/// added on the security page (with the first recovery codes), a sign-in with the passkey
/// alone and no username, which a `mfa = true` route behind nginx admits at once, and the
/// passkey as the second step after a password. The pages are on `localhost`: a passkey is
/// bound to a domain name, never to an IP address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkey_enrolment_and_sign_in_without_a_username_through_nginx() {
    let dir = TempDir::new("browser-passkeys");
    let data = dir.join("data");
    let policy = vault_policy(&dir);
    let base = [
        "--insecure-cookies",
        "--data-dir",
        &data,
        "--policy",
        &policy,
    ];
    let mut gh = Gatehouse::spawn(&args(&base));
    create_user(&data, "cleo", "cleo@example.org", PW);
    let app = EchoServer::start();
    let nginx = signin_site(gh.addr().port(), app.port());
    let site = format!("http://localhost:{}", nginx.addr().port());
    let mut with_url = base.to_vec();
    with_url.extend(["--public-url", &site]);
    gh.restart_with(&args(&with_url));
    assert!(gh.logs().contains("passkeys on"), "{}", gh.logs());

    let driver = ChromeDriver::start();
    let c = browser(&driver).await;
    c.issue_cmd(Chromedriver::virtual_authenticator())
        .await
        .expect("chromedriver's virtual authenticator");

    // A password sign-in offers a passkey once; "not now" goes on and is remembered.
    c.goto(&format!("{site}/home")).await.unwrap();
    wait_path(&c, "/login").await;
    let username = c.find(Locator::Id("username")).await.unwrap();
    assert_eq!(
        username.attr("autocomplete").await.unwrap().as_deref(),
        Some("username webauthn")
    );
    shoot(&c, "login-passkey").await;
    sign_in(&c, "cleo", PW).await;
    wait_path(&c, "/login/passkey-offer").await;
    shoot(&c, "passkey-offer").await;
    click(&c, "#passkey-not-now").await;
    wait_path(&c, "/home").await;

    // Added on the security page: the first second factor comes with recovery codes.
    c.goto(&format!("{site}/account/security")).await.unwrap();
    fill(&c, "passkey-name", "Laptop").await;
    click(&c, "#passkey-register button[type=submit]").await;
    wait_path(&c, "/account/security/passkeys").await;
    let codes = c.find(Locator::Id("recovery-codes")).await.unwrap();
    assert_eq!(codes.find_all(Locator::Css("li")).await.unwrap().len(), 10);
    click(&c, "#saved").await;
    wait_path(&c, "/account/security").await;
    let page = c.source().await.unwrap();
    assert!(
        page.contains("Laptop") && page.contains("Last used never"),
        "{page}"
    );
    shoot(&c, "security-passkeys").await;

    // Signed out, then in with the passkey alone, no username: the sign-in page asks the
    // browser for passkeys as autofill (conditional UI), which the virtual authenticator
    // answers at once; the vault (mfa = true) lets the session in without a step-up.
    let sign_out = || async {
        c.goto(&format!("{site}/logout")).await.unwrap();
        click(&c, "form button[type=submit]").await;
        c.delete_all_cookies().await.unwrap();
    };
    sign_out().await;
    c.goto(&format!("{site}/vault/box?k=1")).await.unwrap();
    wait_path(&c, "/vault/box").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("X-Auth-Request-Amr: hwk mfa"), "{page}");

    // A browser without autofill of passkeys: the "Sign in with a passkey" button.
    c.issue_cmd(Chromedriver::before_each_page(
        "PublicKeyCredential.isConditionalMediationAvailable = async () => false;",
    ))
    .await
    .expect("a script before each page");
    sign_out().await;
    c.goto(&format!("{site}/vault/box?k=2")).await.unwrap();
    wait_path(&c, "/login").await;
    click(&c, "#passkey-sign-in").await;
    wait_path(&c, "/vault/box").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("X-Auth-Request-Amr: hwk mfa"), "{page}");

    // Password first, then the passkey as the second step; no offer any more.
    sign_out().await;
    c.goto(&format!("{site}/vault/box?k=3")).await.unwrap();
    wait_path(&c, "/login").await;
    sign_in(&c, "cleo", PW).await;
    wait_path(&c, "/login/second-factor").await;
    assert!(c.get_named_cookie("gatehouse_session").await.is_err());
    shoot(&c, "second-step-passkey").await;
    click(&c, "#passkey-second-factor").await;
    wait_path(&c, "/vault/box").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("X-Auth-Request-Amr: pwd hwk mfa"), "{page}");
    c.close().await.unwrap();
}

/// OpenID Connect in a real browser through nginx: the consent page with OIDC scopes in
/// words, sign-out asked by the client (its confirmation page) with the client's back-channel
/// logout token arriving, and the device page where a command-line tool is allowed.
#[cfg(feature = "registry")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_connect_consent_logout_and_device_pages() {
    let dir = TempDir::new("browser-oidc");
    let data = dir.join("data");
    let gh = Gatehouse::spawn(&args(&["--insecure-cookies", "--data-dir", &data]));
    create_user(&data, "bea", "bea@example.org", PW);
    let app = EchoServer::start();
    let nginx = signin_site(gh.addr().port(), app.port());
    let site = format!("http://{}", nginx.addr());
    let receiver = Receiver::start();
    let callback = format!("{site}/cb");
    let signed_out = format!("{site}/signed-out");
    let made: serde_json::Value = serde_json::from_str(&cli_stdout(&gatehouse_cli(&[
        "client",
        "create",
        "--json",
        "--data-dir",
        &data,
        "--name",
        "Team Wiki",
        "--homepage",
        "https://wiki.example.org",
        "--grant",
        "authorization_code",
        "--grant",
        "refresh_token",
        "--grant",
        "device_code",
        "--redirect-uri",
        &callback,
        "--post-logout-redirect-uri",
        &signed_out,
        "--backchannel-logout-uri",
        &receiver.url("/backchannel"),
    ])))
    .unwrap();
    let id = made["client_id"].as_str().unwrap().to_string();
    let driver = ChromeDriver::start();
    let c = browser(&driver).await;

    // Sign in through the client: consent names the OpenID Connect scopes in words.
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let query = form_encode(&[
        ("response_type", "code"),
        ("client_id", &id),
        ("redirect_uri", &callback),
        ("scope", "openid profile email"),
        ("state", "st"),
        ("nonce", "n-1"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]);
    c.goto(&format!("{site}/oauth/authorize?{query}"))
        .await
        .unwrap();
    wait_path(&c, "/login").await;
    sign_in(&c, "bea", PW).await;
    wait_path(&c, "/oauth/authorize").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("See your email address"), "{page}");
    shoot(&c, "oidc-consent").await;
    click(&c, "button[value=allow]").await;
    wait_path(&c, "/cb").await;
    let back = c.current_url().await.unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{id}:{}", made["client_secret"].as_str().unwrap()),
    );
    let r = http_request(
        "POST",
        gh.addr(),
        "/oauth/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &format!("Basic {basic}")),
        ],
        form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &callback),
            (
                "code_verifier",
                "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            ),
        ])
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let tokens: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let id_token = jwt_claims(tokens["id_token"].as_str().unwrap());

    // The client asks to sign out without a hint: a page asks; signing out there sends the
    // browser back to the client, and the client's back channel hears of it.
    c.goto(&format!(
        "{site}/oauth/logout?{}",
        form_encode(&[
            ("client_id", &id),
            ("post_logout_redirect_uri", &signed_out)
        ])
    ))
    .await
    .unwrap();
    let page = c.source().await.unwrap();
    assert!(page.contains("Team Wiki asks you to sign out"), "{page}");
    shoot(&c, "oidc-logout-confirm").await;
    click(&c, "button[value=logout]").await;
    // /signed-out is the application's, behind auth: signed out, the browser lands on /login.
    wait_path(&c, "/login").await;
    let got = receiver.wait_bodies(1, std::time::Duration::from_secs(10));
    assert_eq!(got.len(), 1, "no logout_token arrived");
    let token = got[0].strip_prefix("logout_token=").unwrap();
    let logout = jwt_claims(token);
    assert_eq!(logout["sub"], id_token["sub"]);
    assert_eq!(logout["sid"], id_token["sid"]);
    assert_eq!(logout["aud"], id.as_str());

    // A command-line tool: the user types its code on /device and allows it.
    let started = http_request(
        "POST",
        gh.addr(),
        "/oauth/device_authorization",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &format!("Basic {basic}")),
        ],
        b"scope=openid+email",
    );
    let device: serde_json::Value = serde_json::from_str(&started.body).unwrap();
    sign_in(&c, "bea", PW).await;
    // Signed in (back on the page the login came from) before the next page is asked for.
    wait_path(&c, "/signed-out").await;
    c.goto(&format!("{site}/device")).await.unwrap();
    shoot(&c, "oidc-device").await;
    fill(&c, "user_code", device["user_code"].as_str().unwrap()).await;
    click(&c, "form button[type=submit]").await;
    c.wait()
        .for_element(Locator::Css("button[value=allow]"))
        .await
        .unwrap();
    shoot(&c, "oidc-device-confirm").await;
    click(&c, "button[value=allow]").await;
    wait_text(&c, "Device connected").await;
    shoot(&c, "oidc-device-done").await;
    c.goto(&format!("{site}/account/clients")).await.unwrap();
    c.execute(
        "document.getElementById('backchannel_logout_uri').scrollIntoView({block: 'center'})",
        vec![],
    )
    .await
    .unwrap();
    shoot(&c, "oidc-clients").await;
    c.close().await.unwrap();
}

/// Signing in with another provider through nginx: panva's oidc-provider upstream, its own
/// sign-in and consent pages, a new account, a username to choose, and an identity linked on
/// `/account/security`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_an_upstream_provider_and_link_it_through_nginx() {
    let dir = TempDir::new("browser-federation");
    let data = dir.join("data");
    let (port, upstream_port) = (free_port(), free_port());
    let site = format!("http://127.0.0.1:{port}");
    let secret = dir.join("client.secret");
    std::fs::write(&secret, "browser-upstream-secret\n").unwrap();
    let providers = dir.join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            "[[provider]]\nid = \"up\"\nname = \"Institution\"\nkind = \"oidc\"\nissuer = \"http://127.0.0.1:{upstream_port}\"\nclient_id = \"gatehouse\"\nclient_secret_file = \"{secret}\"\n\n[[provider]]\nid = \"orcid\"\nname = \"ORCID\"\nkind = \"orcid\"\nissuer = \"http://127.0.0.1:{}\"\nclient_id = \"APP-TEST\"\nclient_secret_file = \"{secret}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let gh = Gatehouse::spawn(&args(&[
        "--insecure-cookies",
        "--data-dir",
        &data,
        "--public-url",
        &site,
        "--identity-providers",
        &providers,
    ]));
    create_user(&data, "lia", "lia@example.org", PW);
    create_user(&data, "nico", "nico@elsewhere.org", PW);
    let app = EchoServer::start();
    let _nginx = signin_site_on(port, gh.addr().port(), app.port());
    let mut upstream = NodeScript::start(
        &node_tools("upstream_op.mjs"),
        &[
            &upstream_port.to_string(),
            "gatehouse",
            "browser-upstream-secret",
            &format!("{site}/login/with/up/callback"),
            &format!("{site}/login/with/up/backchannel-logout"),
        ],
    );
    upstream.expect("ready", std::time::Duration::from_secs(30));
    let driver = ChromeDriver::start();

    // The login page offers the providers; the upstream's own pages sign in and consent.
    let c = browser(&driver).await;
    c.goto(&format!("{site}/papers/7")).await.unwrap();
    wait_path(&c, "/login").await;
    shoot(&c, "federation-login").await;
    click(&c, "#with-up").await;
    let at_upstream = |c: &Client| {
        let c = c.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while c.find(Locator::Css("input[name=login]")).await.is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no upstream sign-in page"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    at_upstream(&c).await;
    let upstream_sign_in = |c: &Client, login: &'static str| {
        let c = c.clone();
        async move {
            c.find(Locator::Css("input[name=login]"))
                .await
                .unwrap()
                .send_keys(login)
                .await
                .unwrap();
            c.find(Locator::Css("input[name=password]"))
                .await
                .unwrap()
                .send_keys("anything")
                .await
                .unwrap();
            click(&c, "button[type=submit]").await;
            // Consent, once per browser, clicked once: until the browser has left it, the
            // consent page may still be the one read, and a second click would send its form
            // again.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut consented = false;
            loop {
                let url = c.current_url().await.unwrap();
                if url.port() != Some(upstream_port) {
                    break;
                }
                if !consented
                    && c.source()
                        .await
                        .unwrap_or_default()
                        .contains("value=\"consent\"")
                {
                    click(&c, "button[type=submit]").await;
                    consented = true;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "stuck at the upstream: {url}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    upstream_sign_in(&c, "mara").await;
    // Back through nginx, signed in, on the page first asked for.
    wait_path(&c, "/papers/7").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("X-Auth-Request-User: mara"), "{page}");
    // Signing out at the provider ends the session here: its back-channel logout comes in
    // through nginx.
    c.goto(&format!("http://127.0.0.1:{upstream_port}/session/end"))
        .await
        .unwrap();
    click(&c, "button[name=logout]").await;
    // (The provider shows its success page once it has called the back channel.)
    wait_path(&c, "/session/end/success").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        c.goto(&format!("{site}/papers/7")).await.unwrap();
        if c.current_url().await.unwrap().path() == "/login" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still signed in after the provider's logout"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A suggested username that is taken: the user chooses one.
    let c3 = browser(&driver).await;
    c3.goto(&format!("{site}/login/with/up")).await.unwrap();
    at_upstream(&c3).await;
    upstream_sign_in(&c3, "nico").await;
    wait_path(&c3, "/login/with/up/register").await;
    shoot(&c3, "federation-choose-username").await;
    let field = c3.find(Locator::Id("username")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys("nico-inst").await.unwrap();
    click(&c3, "form button[type=submit]").await;
    wait_path(&c3, "/account").await;

    // Linking while signed in with a password, on the security page.
    let c2 = browser(&driver).await;
    c2.goto(&format!("{site}/login")).await.unwrap();
    sign_in(&c2, "lia", PW).await;
    wait_path(&c2, "/account").await;
    c2.goto(&format!("{site}/account/security")).await.unwrap();
    shoot(&c2, "federation-security").await;
    click(&c2, "#link-up").await;
    at_upstream(&c2).await;
    upstream_sign_in(&c2, "lia-at-inst").await;
    wait_path(&c2, "/account/security").await;
    let page = c2.source().await.unwrap();
    assert!(page.contains("Institution is linked"), "{page}");
    assert!(page.contains("id=\"unlink-up\""), "{page}");
    shoot(&c2, "federation-linked").await;

    // A provider that does not answer: a clear page.
    c3.goto(&format!("{site}/login/with/orcid")).await.unwrap();
    let page = c3.source().await.unwrap();
    assert!(page.contains("ORCID is not answering"), "{page}");
    // (Signed in: the way on is the account's, not the sign-in page.)
    assert!(page.contains("Back to Security"), "{page}");
    shoot(&c3, "federation-provider-down").await;
    for c in [c, c2, c3] {
        c.close().await.unwrap();
    }
}

/// The admin console through nginx: an admin finds a user and deactivates them (their session
/// ends at `/auth`), creates a role and gives it, revokes a session, exports the audit trail;
/// a signed-in non-admin gets 403 everywhere under `/admin`. Screenshots of every admin page.
#[cfg(feature = "registry")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_through_nginx() {
    let dir = TempDir::new("browser-admin");
    let data = dir.join("data");
    // Themed, so that the screenshots show a deployment's own look.
    let (theme, _) = crate::look::theme_and_templates(&dir);
    let gh = Gatehouse::spawn(&args(&[
        "--insecure-cookies",
        "--data-dir",
        &data,
        "--site-name",
        "Example Archive",
        "--theme",
        &theme,
    ]));
    let cli = |a: &[&str], stdin: Option<&str>| {
        let mut all = a.to_vec();
        all.extend(["--data-dir", &data]);
        gatehouse_cli_with(&all, &[], stdin)
    };
    for (user, extra) in [("root", Some("admin")), ("olga", None), ("nina", None)] {
        let email = format!("{user}@example.org");
        let mut a = vec![
            "user",
            "create",
            "--username",
            user,
            "--email",
            &email,
            "--name",
        ];
        let name = format!("{} Example", user[..1].to_uppercase() + &user[1..]);
        a.push(&name);
        if let Some(role) = extra {
            a.extend(["--role", role]);
        }
        let out = cli(&a, Some(PW));
        assert!(out.status.success(), "{out:?}");
    }
    let id_of = |user: &str| -> String {
        let out = cli(&["user", "show", user, "--json"], None);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_owned()
    };
    let (olga_id, nina_id) = (id_of("olga"), id_of("nina"));
    let app = EchoServer::start();
    let nginx = signin_site(gh.addr().port(), app.port());
    let site = format!("http://{}", nginx.addr());
    let driver = ChromeDriver::start();
    // Signed-in sessions of olga and nina, straight at gatehouse (as any device would be).
    let session_of = |user: &str| {
        let mut b = Browser::new(gh.addr());
        let (r, _) = b.json(
            "POST",
            "/api/login",
            &serde_json::json!({"username": user, "password": PW}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        b
    };
    let olga = session_of("olga");
    let olga_token = olga.cookie("gatehouse_session").unwrap().to_owned();
    let nina = session_of("nina");
    let nina_token = nina.cookie("gatehouse_session").unwrap().to_owned();
    let auth_status = |token: &str| {
        let mut b = Browser::new(gh.addr());
        b.set_cookie("gatehouse_session", token);
        b.get("/auth").status
    };
    let ends_soon = |token: &str| soon(|| auth_status(token) == 401);
    assert_eq!(auth_status(&olga_token), 200);

    // The admin signs in on the way to /admin and finds olga.
    let c = browser(&driver).await;
    c.goto(&format!("{site}/admin")).await.unwrap();
    wait_path(&c, "/login").await;
    sign_in(&c, "root", PW).await;
    wait_path(&c, "/admin/users").await;
    shoot(&c, "admin-users").await;
    fill(&c, "q", "olg").await;
    click(&c, "form.toolbar button[type=submit]").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !c.current_url().await.unwrap().as_str().contains("q=olg") {
        assert!(
            std::time::Instant::now() < deadline,
            "the search did not run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let found = c.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(found.len(), 1, "the search found more than olga");
    shoot(&c, "admin-users-search").await;
    c.find(Locator::LinkText("olga"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, &format!("/admin/users/{olga_id}")).await;
    shoot(&c, "admin-user").await;
    // Deactivated: her session ends at /auth at once.
    click(&c, "form[action$='/action'] button.danger").await;
    wait_text(&c, "olga is deactivated").await;
    assert!(
        ends_soon(&olga_token),
        "a deactivated user's session lived on"
    );

    // A new role, given to nina.
    c.goto(&format!("{site}/admin/roles")).await.unwrap();
    fill(&c, "name", "curator").await;
    fill(&c, "scopes", "papers:curate").await;
    fill(&c, "description", "Curates the collection").await;
    click(&c, "form[action='/admin/roles'] button[type=submit]").await;
    wait_text(&c, "Role curator created").await;
    shoot(&c, "admin-roles").await;
    c.goto(&format!("{site}/admin/users/{nina_id}"))
        .await
        .unwrap();
    click(&c, "input[name=role][value=curator]").await;
    click(&c, "form[action$='/roles'] button[type=submit]").await;
    wait_text(&c, "nina now has the roles user, curator").await;
    let shown = cli(&["user", "show", "nina", "--json"], None);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["scopes"], serde_json::json!(["papers:curate"]));
    // Giving a role ended nina's session; she signs in again and the admin revokes it.
    assert!(ends_soon(&nina_token));
    let nina = session_of("nina");
    let nina_token = nina.cookie("gatehouse_session").unwrap().to_owned();
    c.goto(&format!("{site}/admin/users/{nina_id}"))
        .await
        .unwrap();
    click(
        &c,
        "form[action$='/sessions'] input[name=sid]:not([value=all]) + button",
    )
    .await;
    wait_text(&c, "Session revoked").await;
    assert!(ends_soon(&nina_token), "a revoked session lived on");

    // The audit trail, and its export.
    c.goto(&format!("{site}/admin/audit")).await.unwrap();
    shoot(&c, "admin-audit").await;
    let csv = c
        .execute(
            "return fetch('/admin/audit?format=csv').then(r => r.text())",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap().to_owned();
    assert!(
        csv.starts_with("at,action,outcome,actor,target,ip,details"),
        "{csv}"
    );
    for action in [
        "user.deactivated",
        "role.created",
        "user.roles_set",
        "session.revoked_by_admin",
    ] {
        assert!(csv.contains(action), "{action} not exported:\n{csv}");
    }
    let json = c
        .execute(
            "return fetch('/admin/audit?format=json&action=user.deactivated').then(r => r.json())",
            vec![],
        )
        .await
        .unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!(rows[0]["target"], olga_id.as_str());
    c.goto(&format!("{site}/admin/outbox")).await.unwrap();
    shoot(&c, "admin-outbox").await;
    c.goto(&format!("{site}/admin/clients")).await.unwrap();
    shoot(&c, "admin-clients").await;

    // nina is signed in but no admin: 403 everywhere under /admin.
    let mut nina_web = Browser::new(nginx.addr());
    let fresh = session_of("nina");
    nina_web.set_cookie(
        "gatehouse_session",
        fresh.cookie("gatehouse_session").unwrap(),
    );
    for path in [
        "/admin".to_owned(),
        "/admin/users".to_owned(),
        format!("/admin/users/{olga_id}"),
        "/admin/roles".to_owned(),
        "/admin/audit?format=csv".to_owned(),
        "/admin/outbox".to_owned(),
        "/admin/clients".to_owned(),
        "/admin/no-such-page".to_owned(),
        "/api/admin/users".to_owned(),
        "/api/admin/audit".to_owned(),
    ] {
        let r = nina_web.get(&path);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    // Her own data comes through nginx too.
    let export = nina_web.get("/account/export");
    assert_eq!(export.status, 200, "{}", export.body);
    let doc: serde_json::Value = serde_json::from_str(&export.body).unwrap();
    assert_eq!(doc["profile"]["username"], "nina");
    assert_eq!(nina_web.get("/account/delete").status, 200);
    let form = nina_web.get("/account");
    let csrf = hidden(&form.body, "csrf").unwrap();
    for path in [
        format!("/admin/users/{olga_id}/action"),
        format!("/admin/users/{olga_id}/delete"),
        "/admin/roles".to_owned(),
    ] {
        let r = nina_web.post(
            &path,
            &[
                ("csrf", &csrf),
                ("action", "activate"),
                ("confirm", "olga"),
                ("name", "x"),
            ],
        );
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    let n = browser(&driver).await;
    n.goto(&format!("{site}/login")).await.unwrap();
    sign_in(&n, "nina", PW).await;
    wait_path(&n, "/account").await;
    n.goto(&format!("{site}/admin/users")).await.unwrap();
    assert!(n.source().await.unwrap().contains("Administrators only"));
    shoot(&n, "admin-forbidden").await;
    // olga is still there, deactivated: the forbidden posts changed nothing.
    let shown = cli(&["user", "show", "olga", "--json"], None);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["active"], false);
    for c in [c, n] {
        c.close().await.unwrap();
    }
}
