//! `--site-name`, `--theme DIR` and `--mail-templates DIR` on a real server: the pages carry
//! the name and link the theme's files (served at /_theme/, allowed by the CSP), mail uses the
//! operator's template where there is one and the built-in text elsewhere, and a template that
//! does not parse exits 64 naming the flag.

use serde_json::json;

use crate::accounts::{Backend, Site, PW};
use crate::support::*;

/// A theme (an orange accent, a logo) and a confirmation template, in `dir`.
pub(crate) fn theme_and_templates(dir: &TempDir) -> (String, String) {
    let theme = dir.join("theme");
    std::fs::create_dir_all(&theme).unwrap();
    std::fs::write(
        format!("{theme}/style.css"),
        ":root{--accent:#b31b1b;--accent-dark:#8a1414}\n",
    )
    .unwrap();
    std::fs::write(
        format!("{theme}/logo.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\"><circle cx=\"12\" cy=\"12\" r=\"10\" fill=\"#b31b1b\"/></svg>\n",
    )
    .unwrap();
    let mail = dir.join("mail-templates");
    std::fs::create_dir_all(&mail).unwrap();
    std::fs::write(
        format!("{mail}/confirm.subject.txt"),
        "Welcome to {{ site_name }}, {{ username }}: one more step\n",
    )
    .unwrap();
    std::fs::write(
        format!("{mail}/confirm.txt"),
        "Dear {{ username }},\n\nconfirm your address for {{ site_name }}:\n{{ link }}\n",
    )
    .unwrap();
    (theme, mail)
}

#[test]
fn site_name_theme_and_mail_templates() {
    let dir = TempDir::new("look");
    let (theme, mail) = theme_and_templates(&dir);
    let site = Site::start(
        "look",
        Backend::Sqlite,
        &[
            "--site-name",
            "Example Archive",
            "--theme",
            &theme,
            "--mail-templates",
            &mail,
        ],
    );
    let mut b = Browser::new(site.gh.addr());
    let login = b.get("/login");
    assert!(
        login
            .body
            .contains("<title>Sign in · Example Archive</title>"),
        "{}",
        login.body
    );
    assert!(login.body.contains("href=\"/_theme/style.css\""));
    assert!(login.body.contains("src=\"/_theme/logo.svg\""));
    let csp = login.header("content-security-policy").unwrap();
    assert!(csp.contains("style-src 'self'"), "{csp}");
    let css = b.get("/_theme/style.css");
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    assert!(css.body.contains("--accent:#b31b1b"));
    let logo = b.get("/_theme/logo.svg");
    assert_eq!(logo.header("content-type"), Some("image/svg+xml"));
    assert!(logo
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));

    // The confirmation uses the template; the reset keeps the built-in text.
    let (r, _) = b.json(
        "POST",
        "/api/register",
        &json!({"username": "tess", "email": "tess@example.org", "name": "Tess", "password": PW}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let data = std::path::PathBuf::from(site.data());
    let confirm = decode_quoted_printable(&wait_mail_with(&data, "one more step"));
    assert!(
        confirm.contains("Subject: Welcome to Example Archive, tess: one more step"),
        "{confirm}"
    );
    assert!(confirm.contains("Dear tess,"), "{confirm}");
    assert!(confirm.contains("/email/confirm?token"), "{confirm}");
    site.create_user("uli", "uli@example.org", PW);
    let (r, _) = b.json(
        "POST",
        "/api/password/forgot",
        &json!({"email": "uli@example.org"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let reset = wait_mail_with(&data, "Reset your password");
    assert!(
        reset.contains("open this link to choose a new password"),
        "{reset}"
    );
}

#[test]
fn bad_look_flags_exit_64_naming_the_flag() {
    let dir = TempDir::new("look-bad");
    let mail = dir.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    std::fs::write(format!("{mail}/reset.txt"), "{% for x in %}\n").unwrap();
    let empty = dir.join("empty-theme");
    std::fs::create_dir_all(&empty).unwrap();
    let data = dir.join("data");
    for (flag, value, says) in [
        ("--mail-templates", mail.as_str(), "reset.txt: line 1"),
        ("--theme", empty.as_str(), "neither style.css nor logo.svg"),
        ("--site-name", "   ", "1 to 80 characters"),
    ] {
        let out = gatehouse_cli(&["serve", flag, value, "--data-dir", &data]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag}: {err}");
        assert!(err.contains(flag) && err.contains(says), "{flag}: {err}");
    }
}
