//! A real browser (Debian's chromium through chromedriver and WebDriver) against real nginx
//! with the shipped configuration, gatehouse with accounts, and an application behind them.
//! Screenshots of the pages people see go to `target/screenshots/`.

mod support;

use std::path::PathBuf;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use support::*;

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
    c.find(Locator::Css("form button[type=submit]"))
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
    anon.find(Locator::Id("username"))
        .await
        .unwrap()
        .send_keys("9lives")
        .await
        .unwrap();
    anon.find(Locator::Id("email"))
        .await
        .unwrap()
        .send_keys("not-an-address")
        .await
        .unwrap();
    anon.find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys("password")
        .await
        .unwrap();
    anon.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
