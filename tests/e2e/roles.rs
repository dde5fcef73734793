//! Roles in the database (`gatehouse role …`): created, changed and deleted at run time, each
//! change reaching live sessions; the roles of `--roles` read-only; `user` and `admin` kept;
//! the last active admin kept.

use crate::accounts::{
    auth, claims, login, on_both_backends, refused_soon, Backend, Site, COOKIE, PW,
};
use crate::support::*;

on_both_backends!(roles_change_at_run_time_and_reach_live_sessions);

fn ok(site: &Site, args: &[&str]) -> String {
    let out = site.cli(args, None);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit 64 with a line that says `says`.
fn refused(site: &Site, args: &[&str], says: &str) {
    let out = site.cli(args, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: {err}");
}

fn session(site: &Site, user: &str) -> String {
    let mut b = Browser::new(site.gh.addr());
    assert_eq!(login(&mut b, user, PW).status, 303);
    b.cookie(COOKIE).unwrap().to_string()
}

fn roles_change_at_run_time_and_reach_live_sessions(backend: Backend) {
    let site = Site::start("roles", backend, &[]);
    // The role file's roles are listed, and read-only.
    let list = ok(&site, &["role", "list"]);
    assert!(
        list.contains("editor\tpapers:write public:read\t0 user(s)\t--roles"),
        "{list}"
    );
    refused(
        &site,
        &["role", "update", "editor", "--scope", "x"],
        "comes from --roles",
    );
    refused(&site, &["role", "delete", "editor"], "comes from --roles");
    refused(&site, &["role", "delete", "user"], "cannot be deleted");
    refused(&site, &["role", "delete", "admin"], "cannot be deleted");
    refused(&site, &["role", "create", "bad name"], "a name is letters");

    // A new role, given to a signed-in user: their session ends, the next carries it.
    ok(
        &site,
        &[
            "role",
            "create",
            "reviewer",
            "--scope",
            "papers:review",
            "--description",
            "Reviews papers",
        ],
    );
    refused(&site, &["role", "create", "reviewer"], "exists");
    site.create_user("rita", "rita@example.org", PW);
    let first = session(&site, "rita");
    ok(&site, &["user", "role", "add", "rita", "reviewer"]);
    assert!(refused_soon(&site.gh, &first));
    let second = session(&site, "rita");
    assert_eq!(
        claims(&auth(&site.gh, &second))["scope"],
        "papers:review public:read"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&site, &["role", "show", "reviewer", "--json"])).unwrap();
    assert_eq!(shown["users"], 1);
    assert_eq!(shown["description"], "Reviews papers");

    // New scopes for the role: its holders sign in again and get them.
    ok(
        &site,
        &[
            "role",
            "update",
            "reviewer",
            "--scope",
            "papers:review",
            "--scope",
            "papers:comment",
        ],
    );
    assert!(refused_soon(&site.gh, &second));
    let third = session(&site, "rita");
    assert_eq!(
        claims(&auth(&site.gh, &third))["scope"],
        "papers:comment papers:review public:read"
    );
    // A new description alone changes no grant: the session stays.
    ok(
        &site,
        &["role", "update", "reviewer", "--description", "Reviewers"],
    );
    assert_eq!(auth(&site.gh, &third).status, 200);

    // Deleted: rita loses it and is signed out.
    ok(&site, &["role", "delete", "reviewer"]);
    assert!(refused_soon(&site.gh, &third));
    assert_eq!(
        site.sql("SELECT roles FROM users WHERE username = 'rita'"),
        ""
    );
    refused(
        &site,
        &["user", "role", "add", "rita", "reviewer"],
        "no role \"reviewer\"",
    );

    // The last active admin keeps the role, stays active and is not deleted.
    site.create_user("ada", "ada@example.org", PW);
    ok(&site, &["user", "role", "add", "ada", "admin"]);
    refused(
        &site,
        &["user", "role", "remove", "ada", "admin"],
        "last active admin",
    );
    refused(&site, &["user", "deactivate", "ada"], "last active admin");
    refused(&site, &["user", "delete", "ada"], "last active admin");
    ok(&site, &["user", "role", "add", "rita", "admin"]);
    ok(&site, &["user", "deactivate", "ada"]);
    refused(
        &site,
        &["user", "role", "remove", "rita", "admin"],
        "last active admin",
    );
}

/// Before any server ran, the command line given `--roles` seeds the file's roles: a first
/// user can hold one.
#[test]
fn the_command_line_seeds_the_role_file_before_any_server() {
    let dir = TempDir::new("roles-cli");
    let roles = dir.join("roles.toml");
    std::fs::write(&roles, "[roles.editor]\nscopes = [\"papers:write\"]\n").unwrap();
    let data = dir.join("data");
    let out = gatehouse_cli_stdin(
        &[
            "user",
            "create",
            "--username",
            "eve",
            "--email",
            "eve@example.org",
            "--role",
            "editor",
            "--roles",
            &roles,
            "--data-dir",
            &data,
        ],
        PW,
    );
    assert!(out.status.success(), "{out:?}");
    let out = gatehouse_cli(&["role", "list", "--data-dir", &data]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("editor\tpapers:write\t1 user(s)\t--roles"),
        "{list}"
    );
}
