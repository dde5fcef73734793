//! A database made before schemas were per module (issue 17, §3) upgrades in place, on SQLite
//! and PostgreSQL: today's gatehouse adopts its global migration record per module, applies
//! nothing twice, and its users sign in and its clients get tokens as before.

use crate::support::*;

/// `tests/e2e/fixtures/accounts-global-v6.sql`, made by the gatehouse of before.
const FIXTURE: &str = include_str!("fixtures/accounts-global-v6.sql");
/// Olga's password and the client's secret in the fixture.
const OLGA_PASSWORD: &str = "correct horse battery staple 42";
const CLIENT_ID: &str = "mbPe-ZBrQ2I5G1kYc9rlpQ";
const CLIENT_SECRET: &str = "gcs_J6vUEFByUxOioBt2IcBopFho4WWcJlns3d4u2pvwiEU";

/// Loads the fixture into the database at `url`.
fn load(url: &str) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.unwrap();
        sqlx::raw_sql(FIXTURE).execute(&pool).await.unwrap();
        pool.close().await;
    });
}

/// The rows of `gatehouse_schema`, as `module version` lines in order.
fn recorded(url: &str) -> Vec<String> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Row;
        let pool = sqlx::AnyPool::connect(url).await.unwrap();
        let rows =
            sqlx::query("SELECT module, version FROM gatehouse_schema ORDER BY module, version")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows.iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r.get::<String, _>("module"),
                    r.get::<i64, _>("version")
                )
            })
            .collect()
    })
}

fn upgrades_in_place(url: &str, extra: &[&str]) {
    load(url);
    let dir = TempDir::new("upgrade");
    let data = dir.join("data");
    let mut all = vec!["--insecure-cookies", "--data-dir", &data];
    all.extend_from_slice(extra);
    let mut gh = Gatehouse::spawn(&args(&all));
    assert!(
        gh.logs().contains("adopted the global migration record"),
        "{}",
        gh.logs()
    );
    // Adopted, nothing applied again (a second CREATE TABLE would have stopped the start):
    // only the migrations newer than the fixture ran.
    let newer = [
        "module=\"accounts\" version=3",
        "module=\"accounts\" version=4",
        "module=\"accounts\" version=5",
        "module=\"accounts\" version=6",
        "module=\"accounts\" version=7",
        "module=\"accounts\" version=8",
        "module=\"accounts\" version=9",
        "module=\"accounts\" version=10",
        "module=\"accounts\" version=11",
        "module=\"registry\" version=5",
        "module=\"registry\" version=6",
    ];
    for line in gh
        .logs()
        .lines()
        .filter(|l| l.contains("accounts database migrated"))
    {
        assert!(
            newer.iter().any(|n| line.contains(n)),
            "applied again: {line}"
        );
    }
    let expected = [
        "accounts 1",
        "accounts 2",
        "accounts 3",
        "accounts 4",
        "accounts 5",
        "accounts 6",
        "accounts 7",
        "accounts 8",
        "accounts 9",
        "accounts 10",
        "accounts 11",
        "registry 1",
        "registry 2",
        "registry 3",
        "registry 4",
        "registry 5",
        "registry 6",
    ];
    assert_eq!(recorded(url), expected);

    for _ in 0..2 {
        let mut b = Browser::new(gh.addr());
        let (r, v) = b.json(
            "POST",
            "/api/login",
            &serde_json::json!({"username": "olga", "password": OLGA_PASSWORD}),
        );
        assert_eq!(r.status, 200, "{}\n{}", r.body, gh.logs());
        assert_eq!(v["user"]["email"], "olga@example.org");

        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{CLIENT_ID}:{CLIENT_SECRET}"),
        );
        let r = http_request(
            "POST",
            gh.addr(),
            "/oauth/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &format!("Basic {basic}")),
            ],
            b"grant_type=client_credentials",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let token: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let access = token["access_token"].as_str().unwrap();
        let r = http_get(
            gh.addr(),
            "/auth",
            &[("Authorization", &format!("Bearer {access}"))],
        );
        assert_eq!(r.status, 200, "{r:?}");

        // A restart finds everything recorded and changes nothing.
        gh.restart();
        assert_eq!(recorded(url), expected);
    }
}

#[test]
fn a_database_from_before_per_module_schemas_upgrades_in_place_on_sqlite() {
    let dir = TempDir::new("upgrade-sqlite");
    let file = dir.join("accounts.db");
    let url = format!("sqlite://{file}?mode=rwc");
    upgrades_in_place(&url, &["--database-url", &url]);
}

#[test]
fn a_database_from_before_per_module_schemas_upgrades_in_place_on_postgres() {
    let pg = Postgres::start();
    upgrades_in_place(&pg.url(), &["--database-url", &pg.url()]);
}
