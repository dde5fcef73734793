//! The admin console's JSON API (`/api/admin/…`) and its forms' CSRF, on a real server: 401
//! signed out, 403 for a non-admin and for a cross-site write, every action audited, the
//! rules of roles and deletion answered 409.

use serde_json::{json, Value};

use crate::accounts::{auth, refused_soon, Backend, Site, COOKIE, PW};
use crate::support::*;

fn signed_in(site: &Site, user: &str) -> Browser {
    let mut b = Browser::new(site.gh.addr());
    let (r, _) = b.json(
        "POST",
        "/api/login",
        &json!({"username": user, "password": PW}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    b
}

#[test]
fn the_admin_api_answers_admins_only_and_keeps_the_rules() {
    let site = Site::start("admin-api", Backend::Sqlite, &[]);
    site.create_admin("root");
    site.create_user("nina", "nina@example.org", PW);

    // Signed out: 401. Signed in without the role: 403, for reads and writes alike.
    let mut anon = Browser::new(site.gh.addr());
    let (r, v) = anon.json("GET", "/api/admin/users", &Value::Null);
    assert_eq!(
        (r.status, v["error"].as_str()),
        (401, Some("unauthenticated"))
    );
    let mut nina = signed_in(&site, "nina");
    let nina_token = nina.cookie(COOKIE).unwrap().to_owned();
    for (method, path) in [
        ("GET", "/api/admin/users"),
        ("GET", "/api/admin/roles"),
        ("GET", "/api/admin/audit"),
        ("GET", "/api/admin/outbox"),
        ("POST", "/api/admin/roles"),
        ("DELETE", "/api/admin/users/x"),
    ] {
        let (r, v) = nina.json(method, path, &json!({"name": "x"}));
        assert_eq!(
            (r.status, v["error"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}"
        );
    }

    // The admin: search, one user with her sessions.
    let mut root = signed_in(&site, "root");
    let (r, v) = root.json("GET", "/api/admin/users?q=NIN&status=active", &Value::Null);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(v["total"], 1, "{v}");
    let nina_id = v["users"][0]["id"].as_str().unwrap().to_owned();
    let (_, v) = root.json("GET", &format!("/api/admin/users/{nina_id}"), &Value::Null);
    assert_eq!(v["username"], "nina");
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = root.json("GET", "/api/admin/users?role=admin", &Value::Null);
    assert_eq!(v["users"][0]["username"], "root");

    // A write from another site is refused before anything happens.
    let text = json!({"active": false}).to_string();
    let r = root.request(
        "PATCH",
        &format!("/api/admin/users/{nina_id}"),
        &[
            ("Content-Type", "application/json"),
            ("Origin", "https://evil.example"),
        ],
        text.as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(auth(&site.gh, &nina_token).status, 200);

    // Deactivated: her session ends; audited with the admin as the actor.
    let (r, v) = root.json(
        "PATCH",
        &format!("/api/admin/users/{nina_id}"),
        &json!({"active": false}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(v["user"]["active"], false);
    assert!(refused_soon(&site.gh, &nina_token));

    // Roles: created, changed, given; the built-in ones stay; the last admin keeps the role
    // and is not deleted.
    let (r, v) = root.json(
        "POST",
        "/api/admin/roles",
        &json!({"name": "curator", "scopes": ["papers:curate"], "description": "Curates"}),
    );
    assert_eq!(
        (r.status, v["name"].as_str()),
        (201, Some("curator")),
        "{}",
        r.body
    );
    let (r, _) = root.json("POST", "/api/admin/roles", &json!({"name": "curator"}));
    assert_eq!(r.status, 409);
    let (r, v) = root.json(
        "PATCH",
        "/api/admin/roles/curator",
        &json!({"scopes": ["papers:curate", "papers:read"]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(v["role"]["scopes"], json!(["papers:curate", "papers:read"]));
    let (r, _) = root.json(
        "PATCH",
        &format!("/api/admin/users/{nina_id}"),
        &json!({"roles": ["curator"], "active": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, v) = root.json("GET", "/api/admin/roles", &Value::Null);
    let curator = v["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "curator")
        .unwrap()
        .clone();
    assert_eq!(curator["users"], 1);
    let (r, v) = root.json("DELETE", "/api/admin/roles/admin", &Value::Null);
    assert_eq!((r.status, v["error"].as_str()), (409, Some("refused")));
    let (root_id, _) = {
        let (_, v) = root.json("GET", "/api/admin/users?q=root", &Value::Null);
        (v["users"][0]["id"].as_str().unwrap().to_owned(), ())
    };
    let (r, v) = root.json(
        "PATCH",
        &format!("/api/admin/users/{root_id}"),
        &json!({"roles": []}),
    );
    assert_eq!(r.status, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("last active admin"));
    let (r, _) = root.json(
        "DELETE",
        &format!("/api/admin/users/{root_id}"),
        &Value::Null,
    );
    assert_eq!(r.status, 409);

    // The forms need their CSRF token: a forged one changes nothing.
    let r = root.post(
        &format!("/admin/users/{nina_id}/action"),
        &[("csrf", "forged"), ("action", "deactivate")],
    );
    assert_eq!(r.status, 403);
    let (_, v) = root.json("GET", &format!("/api/admin/users/{nina_id}"), &Value::Null);
    assert_eq!(v["active"], true);

    // The audit trail holds each action, the admin as actor and nina as target.
    let (_, v) = root.json(
        "GET",
        "/api/admin/audit?action=user.deactivated",
        &Value::Null,
    );
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(
        (events[0]["actor"].as_str(), events[0]["target"].as_str()),
        (Some(root_id.as_str()), Some(nina_id.as_str()))
    );
    let (_, v) = root.json("GET", "/api/admin/audit?actor=root&since=1h", &Value::Null);
    let actions: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "role.created",
        "role.updated",
        "user.roles_set",
        "user.activated",
    ] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }
    let (r, _) = root.json("GET", "/api/admin/audit?since=yesterday", &Value::Null);
    assert_eq!(r.status, 400);
    let (r, v) = root.json("GET", "/api/admin/outbox", &Value::Null);
    assert_eq!(r.status, 200);
    assert!(v["items"].is_array());
    let (r, _) = root.json("POST", "/api/admin/outbox/no-such-item/retry", &Value::Null);
    assert_eq!(r.status, 404);

    // Linked sign-ins: unlinked from the user's page, never the last way in.
    let file = format!("{}/ivy.jsonl", site.data());
    std::fs::write(
        &file,
        "{\"username\": \"ivy\", \"email\": \"ivy@example.org\", \"identities\": [{\"provider\": \"orcid\", \"subject\": \"0000-0001\"}, {\"provider\": \"github\", \"subject\": \"42\"}]}\n",
    )
    .unwrap();
    let out = site.cli(&["user", "import", &file], None);
    assert!(out.status.success(), "{out:?}");
    let (_, v) = root.json("GET", "/api/admin/users?q=ivy", &Value::Null);
    let ivy_id = v["users"][0]["id"].as_str().unwrap().to_owned();
    let page = format!("/admin/users/{ivy_id}");
    let action = format!("{page}/action");
    let r = root.submit(
        &page,
        &action,
        &[("action", "unlink"), ("provider", "orcid")],
    );
    assert!(r.body.contains("orcid unlinked from ivy"), "{}", r.body);
    let r = root.submit(
        &page,
        &action,
        &[("action", "unlink"), ("provider", "github")],
    );
    assert!(r.body.contains("last way to sign in"), "{}", r.body);
    let linked = site.sql(&format!(
        "SELECT provider FROM user_identities WHERE user_id = '{ivy_id}'"
    ));
    assert_eq!(linked, "github");

    // Deleted by the admin: gone.
    let (r, _) = root.json(
        "DELETE",
        &format!("/api/admin/users/{nina_id}"),
        &Value::Null,
    );
    assert_eq!(r.status, 200);
    let (r, _) = root.json("GET", &format!("/api/admin/users/{nina_id}"), &Value::Null);
    assert_eq!(r.status, 404);
    let _ = nina.get("/account");
}
