//! The user's own data: `/account/export` holds what the pages show, and `/account/delete`
//! (and `gatehouse user delete`) removes every row about the user, checked in the database,
//! keeping the audit trail under a pseudonym and never giving the id again.

use serde_json::{json, Value};

use crate::accounts::{auth, on_both_backends, Backend, Site, COOKIE, PW};
use crate::support::*;

on_both_backends!(export_then_delete_leaves_no_row_about_the_user);

/// Every row of every table that names `id` (each table's text columns searched), as
/// `table: row` lines; the tombstone aside.
fn rows_naming(site: &Site, id: &str) -> Vec<String> {
    let tables = [
        ("users", "id"),
        ("user_tokens", "user_id"),
        ("user_totp", "user_id"),
        ("user_recovery_codes", "user_id"),
        ("user_passkeys", "user_id"),
        ("webauthn_ceremonies", "user_id"),
        ("passkey_offers_declined", "user_id"),
        ("user_identities", "user_id"),
        ("federated_sessions", "user_id"),
        ("oauth_grants", "user_id"),
        ("oauth_consents", "user_id"),
        ("oauth_codes", "user_id"),
        ("oauth_access", "sub"),
        ("oauth_clients", "owner"),
        ("audit_events", "actor"),
        ("audit_events", "target"),
    ];
    let mut found = Vec::new();
    for (table, column) in tables {
        let got = site.sql(&format!("SELECT * FROM {table} WHERE {column} = '{id}'"));
        if !got.is_empty() {
            found.push(format!("{table}: {got}"));
        }
    }
    let details = site.sql(&format!(
        "SELECT details FROM audit_events WHERE details LIKE '%{id}%'"
    ));
    if !details.is_empty() {
        found.push(format!("audit_events.details: {details}"));
    }
    found
}

fn export_then_delete_leaves_no_row_about_the_user(backend: Backend) {
    let site = Site::start("userdata", backend, &[]);
    site.create_user("vera", "vera@example.org", PW);
    site.create_user("walt", "walt@example.org", PW);
    let mut b = Browser::new(site.gh.addr());
    let (r, v) = b.json(
        "POST",
        "/api/login",
        &json!({"username": "vera", "password": PW}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sid = v["sid"].as_str().unwrap().to_owned();
    let token = b.cookie(COOKIE).unwrap().to_owned();
    // A second device, to see every session end.
    let mut phone = Browser::new(site.gh.addr());
    phone.json(
        "POST",
        "/api/login",
        &json!({"username": "vera", "password": PW}),
    );
    let phone_token = phone.cookie(COOKIE).unwrap().to_owned();

    // The export holds what the pages show: the profile of /api/me, the sessions of
    // /api/sessions, the audit trail of the sign-ins; never a token or hash.
    let r = b.get("/account/export");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-disposition")
            .is_some_and(|d| d.contains("attachment") && d.contains("vera-data.json")),
        "{:?}",
        r.headers
    );
    let doc: Value = serde_json::from_str(&r.body).unwrap();
    let (_, me) = b.json("GET", "/api/me", &json!(null));
    for field in ["username", "email", "name"] {
        assert_eq!(doc["profile"][field], me[field], "{field}");
    }
    let id = doc["profile"]["id"].as_str().unwrap().to_owned();
    let (_, listed) = b.json("GET", "/api/sessions", &json!(null));
    let mut shown: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["sid"].as_str())
        .collect();
    let mut exported: Vec<&str> = doc["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["sid"].as_str())
        .collect();
    shown.sort();
    exported.sort();
    assert_eq!(shown, exported);
    assert!(exported.contains(&sid.as_str()));
    assert!(
        doc["audit_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "user.login"),
        "{}",
        doc["audit_events"]
    );
    assert!(
        doc["registry"]["authorized_applications"].is_array(),
        "{doc}"
    );
    assert!(
        !r.body.contains(&token) && !r.body.contains("argon2") && !r.body.contains(PW),
        "the export holds a secret"
    );

    // Deletion: the username typed, with the form's CSRF token.
    let page = b.get("/account/delete");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Delete my account"));
    assert_eq!(
        b.post(
            "/account/delete",
            &[("csrf", "forged"), ("confirm", "vera")]
        )
        .status,
        403
    );
    let wrong = b.submit("/account/delete", "/account/delete", &[("confirm", "walt")]);
    assert_eq!(wrong.status, 400);
    assert!(wrong.body.contains("Type your username exactly"));
    assert_eq!(auth(&site.gh, &token).status, 200, "nothing happened yet");
    let done = b.submit("/account/delete", "/account/delete", &[("confirm", "vera")]);
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Your account is deleted"));
    assert!(b.cookie(COOKIE).is_none_or(str::is_empty), "cookie kept");
    assert_eq!(auth(&site.gh, &token).status, 401);
    assert_eq!(auth(&site.gh, &phone_token).status, 401);
    let goodbye = wait_mail_with(
        std::path::Path::new(&site.data()),
        "Your account is deleted",
    );
    assert!(goodbye.contains("vera@example.org"));

    // No row names vera: the audit trail kept her sign-ins under a pseudonym; the id is a
    // tombstone; the name is free again and a new vera gets another id.
    // (Audit rows are written off the request: a moment for any late one to land.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(rows_naming(&site, &id), Vec::<String>::new());
    let pseudonymous = site.sql(
        "SELECT actor FROM audit_events WHERE actor LIKE 'deleted:%' AND action = 'user.login'",
    );
    assert!(!pseudonymous.is_empty(), "the sign-ins were not kept");
    assert_eq!(
        site.sql(&format!(
            "SELECT COUNT(*) FROM user_tombstones WHERE id = '{id}'"
        )),
        "1"
    );
    let mut again = Browser::new(site.gh.addr());
    assert_eq!(
        again
            .json(
                "POST",
                "/api/login",
                &json!({"username": "vera", "password": PW})
            )
            .0
            .status,
        401
    );
    site.create_user("vera", "vera@example.org", PW);
    let new_id = site.sql("SELECT id FROM users WHERE username = 'vera'");
    assert!(!new_id.is_empty() && new_id != id);

    // The command line deletes the same way.
    let walt = site.sql("SELECT id FROM users WHERE username = 'walt'");
    let out = site.cli(&["user", "delete", "walt"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("walt is deleted"));
    assert_eq!(rows_naming(&site, &walt), Vec::<String>::new());
    let out = site.cli(&["user", "show", "walt"], None);
    assert!(!out.status.success());
}
