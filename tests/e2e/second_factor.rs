//! Second factors end to end (issue 18): an authenticator app enrolled on
//! `/account/security`, sign-in with password and code, recovery codes, the JSON API, the
//! step-up through real nginx, and the attacks on a pending sign-in. Codes are computed here
//! from the secret the page shows, with gatehouse's own RFC 6238 code (checked against the
//! RFC's vectors in its unit tests).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::accounts::{
    auth, claims, login, on_both_backends, refused_soon, Backend, Site, COOKIE, PW,
};
use crate::support::*;

on_both_backends!(authenticator_app_and_recovery_codes);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The secret an enrolment page shows.
fn shown_secret(html: &str) -> String {
    let start = html.find("id=\"totp-secret\">").expect("the secret") + 17;
    let end = start + html[start..].find('<').unwrap();
    html[start..end].to_owned()
}

fn codes_on(html: &str) -> Vec<String> {
    html.split("<li><code>")
        .skip(1)
        .map(|s| s[..s.find('<').unwrap()].to_owned())
        .collect()
}

fn authenticator_app_and_recovery_codes(backend: Backend) {
    let site = Site::start("second-factor", backend, &[]);
    let gh = &site.gh;
    let data = site.data();
    let data = std::path::Path::new(&data);
    site.create_user("ada", "ada@example.org", PW);
    let mut b = Browser::new(gh.addr());
    assert_eq!(login(&mut b, "ada", PW).status, 303);
    let r = b.get("/account/security");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Set up an authenticator app"), "{}", r.body);

    // Enrolment: the page shows the QR code and the key; a wrong first code changes nothing,
    // the right one turns the app on and shows ten recovery codes once.
    let r = b.submit("/account/security", "/account/security/totp", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("<svg") && !r.body.contains("<?xml"),
        "{}",
        r.body
    );
    let secret = shown_secret(&r.body);
    assert_eq!(secret.replace(' ', "").len(), 32, "160 bits in base32");
    let step = settled_totp_step();
    let r = b.post_with_csrf_of(
        &r.body,
        "/account/security/totp/confirm",
        &[("code", "000000")],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not right"), "{}", r.body);
    assert_eq!(
        shown_secret(&r.body),
        secret,
        "the same enrolment, shown again"
    );
    let r = b.post_with_csrf_of(
        &r.body,
        "/account/security/totp/confirm",
        &[("code", &totp_code(&secret, step - 1))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let recovery = codes_on(&r.body);
    assert_eq!(recovery.len(), 10, "{}", r.body);
    assert!(wait_mail(data, 1).contains("An authenticator app was added"));
    let r = b.get("/account/security");
    assert!(r.body.contains("10 of 10 left"), "{}", r.body);

    // Sign-in: the password leads to the second step; no session until it is done.
    let mut b = Browser::new(gh.addr());
    let r = login(&mut b, "ada", PW);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login/second-factor"));
    assert!(
        b.cookie(COOKIE).is_none_or(str::is_empty),
        "a session before the second step"
    );
    assert!(b.cookie("gatehouse_pending").is_some());
    assert_eq!(
        b.get("/account").status,
        303,
        "signed in without the second step"
    );
    // Another browser cannot finish it: the pending sign-in is in this one's cookie.
    let mut other = Browser::new(gh.addr());
    let form = other.get("/login");
    let csrf = hidden(&form.body, "csrf").unwrap();
    let r = other.post(
        "/login/second-factor",
        &[
            ("csrf", &csrf),
            ("method", "totp"),
            ("code", &totp_code(&secret, now() / 30)),
        ],
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    assert!(other.cookie(COOKIE).is_none());
    // A wrong code, then the code of the step already used at enrolment (a replay), then
    // the current one.
    let page = b.get("/login/second-factor");
    assert!(
        page.body.contains("autocomplete=\"one-time-code\""),
        "{}",
        page.body
    );
    let r = b.post_with_csrf_of(
        &page.body,
        "/login/second-factor",
        &[("method", "totp"), ("code", "123456")],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let step = settled_totp_step();
    let r = b.post_with_csrf_of(
        &r.body,
        "/login/second-factor",
        &[("method", "totp"), ("code", &totp_code(&secret, step - 1))],
    );
    assert_eq!(r.status, 401, "a used code was taken again: {}", r.body);
    let r = b.post_with_csrf_of(
        &r.body,
        "/login/second-factor",
        &[("method", "totp"), ("code", &totp_code(&secret, step))],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let token = b.cookie(COOKIE).unwrap().to_owned();
    let c = claims(&auth(gh, &token));
    assert_eq!(c["amr"], json!(["pwd", "otp", "mfa"]));
    assert_eq!(c["acr"], "urn:gatehouse:acr:2fa");
    assert_eq!(b.get("/account").status, 200);

    // A recovery code signs in once, and tells the owner by mail.
    let mut signed = Browser::new(gh.addr());
    let b = &mut signed;
    login(b, "ada", PW);
    let page = b.get("/login/second-factor?method=recovery");
    assert!(page.body.contains("Recovery code"), "{}", page.body);
    let r = b.post_with_csrf_of(
        &page.body,
        "/login/second-factor",
        &[
            ("method", "recovery"),
            ("code", &recovery[3].to_uppercase()),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        claims(&auth(gh, b.cookie(COOKIE).unwrap()))["amr"],
        json!(["pwd", "mfa"])
    );
    assert!(wait_mail(data, 2).contains("A recovery code was used"));
    let mut b = Browser::new(gh.addr());
    login(&mut b, "ada", PW);
    let page = b.get("/login/second-factor?method=recovery");
    let r = b.post_with_csrf_of(
        &page.body,
        "/login/second-factor",
        &[("method", "recovery"), ("code", &recovery[3])],
    );
    assert_eq!(r.status, 401, "a recovery code worked twice");

    // The JSON API: the password answers that a second factor is required, sets no session,
    // and /api/me stays closed until the second step.
    let mut a = Browser::new(gh.addr());
    let (r, v) = a.json(
        "POST",
        "/api/login",
        &json!({"username": "ada", "password": PW}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        v,
        json!({"second_factor_required": true, "methods": ["totp", "recovery"]})
    );
    assert!(a.cookie(COOKIE).is_none());
    assert!(
        !r.body.contains(a.cookie("gatehouse_pending").unwrap()),
        "the pending token in a body"
    );
    assert_eq!(a.json("GET", "/api/me", &json!(null)).0.status, 401);
    let (r, v) = a.json(
        "POST",
        "/api/login/second-factor",
        &json!({"method": "recovery", "code": recovery[5]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(v["user"]["username"], "ada");
    assert_eq!(a.json("GET", "/api/me", &json!(null)).0.status, 200);
    let (_, v) = a.json("GET", "/api/security", &json!(null));
    assert_eq!(
        v,
        json!({"passkeys_available": false, "passkeys": [], "totp": true, "recovery_codes_left": 8})
    );

    // A wrong code costs what a wrong password costs: the delay comes, then 429.
    let mut a = Browser::new(gh.addr());
    a.json(
        "POST",
        "/api/login",
        &json!({"username": "ada", "password": PW}),
    );
    let statuses: Vec<u16> = (0..6)
        .map(|_| {
            a.json(
                "POST",
                "/api/login/second-factor",
                &json!({"method": "totp", "code": "000000"}),
            )
            .0
            .status
        })
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    let metrics = http_get(gh.admin_addr(), "/metrics", &[]).body;
    for line in [
        "gatehouse_second_factor_total{method=\"totp\",result=\"ok\"} 1",
        "gatehouse_second_factor_total{method=\"recovery\",result=\"ok\"} 2",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }
    assert!(
        gh.logs().contains("event=\"second_factor_added\""),
        "{}",
        gh.logs()
    );

    // Removing the last factor asks for the password; then the password alone signs in.
    let b = &mut signed;
    let r = b.submit(
        "/account/security",
        "/account/security/totp/remove",
        &[("password", "not it")],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = b.submit(
        "/account/security",
        "/account/security/totp/remove",
        &[("password", PW)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("was removed"), "{}", r.body);
    let mut b = Browser::new(gh.addr());
    assert_eq!(
        login(&mut b, "ada", PW).header("location"),
        Some("/account")
    );
}

/// `--require-second-factor admins`: an admin without one is sent to set one up right after
/// the password and at every page until then; a password-only session of one who has a factor
/// steps up first. A pending sign-in is no session: it cannot enrol a factor. `user
/// reset-second-factors` (a lost phone) removes the factors and ends the sessions.
#[test]
fn a_required_second_factor_comes_before_anything_else() {
    let site = Site::start(
        "second-factor-required",
        Backend::Sqlite,
        &["--require-second-factor", "admins"],
    );
    let gh = &site.gh;
    site.create_admin("root");
    site.create_user("plain", "plain@example.org", PW);

    // Not covered: straight in.
    let mut b = Browser::new(gh.addr());
    assert_eq!(
        login(&mut b, "plain", PW).header("location"),
        Some("/account")
    );

    // Covered, no factor: to the security page, and back there from any other page.
    let mut b = Browser::new(gh.addr());
    let r = login(&mut b, "root", PW);
    assert_eq!(r.header("location"), Some("/account/security"), "{r:?}");
    let r = b.get("/account/security");
    assert!(r.body.contains("Your administrators ask"), "{}", r.body);
    let r = b.get("/account");
    assert_eq!(r.header("location"), Some("/account/security"));
    let mut a = Browser::new(gh.addr());
    let (_, v) = a.json(
        "POST",
        "/api/login",
        &json!({"username": "root", "password": PW}),
    );
    assert_eq!(v["second_factor_setup_required"], true, "{v}");

    // Enrolled: this session was signed in without it, so it steps up before /account.
    let r = b.submit("/account/security", "/account/security/totp", &[]);
    let secret = shown_secret(&r.body);
    let step = settled_totp_step();
    let r = b.post_with_csrf_of(
        &r.body,
        "/account/security/totp/confirm",
        &[("code", &totp_code(&secret, step - 1))],
    );
    let recovery = codes_on(&r.body);
    assert_eq!(recovery.len(), 10, "{}", r.body);
    let r = b.get("/account");
    assert_eq!(
        r.header("location"),
        Some("/login/second-factor?rd=%2Faccount"),
        "{r:?}"
    );
    // (With a recovery code: the step-up offers both, like the sign-in.)
    let page = b.get("/login/second-factor?method=recovery&rd=%2Faccount");
    assert!(page.body.contains("Recovery code"), "{}", page.body);
    let r = b.post_with_csrf_of(
        &page.body,
        "/login/second-factor",
        &[
            ("method", "recovery"),
            ("code", &recovery[0]),
            ("rd", "/account"),
        ],
    );
    assert_eq!(r.header("location"), Some("/account"), "{r:?}");
    assert_eq!(b.get("/account").status, 200);
    let stepped_up = b.cookie(COOKIE).unwrap().to_owned();
    assert_eq!(
        claims(&auth(gh, &stepped_up))["acr"],
        "urn:gatehouse:acr:2fa"
    );

    // A pending sign-in (password right, second step not done) is not signed in: it cannot
    // see or change the security page.
    let mut p = Browser::new(gh.addr());
    login(&mut p, "root", PW);
    assert!(p.cookie("gatehouse_pending").is_some());
    let r = p.get("/account/security");
    assert_eq!(r.status, 303);
    assert!(r.header("location").unwrap().starts_with("/login"), "{r:?}");
    let form = p.get("/login");
    let r = p.post_with_csrf_of(&form.body, "/account/security/totp", &[]);
    assert_eq!(r.status, 303, "{r:?}");
    let (r, _) = p.json("POST", "/api/security/totp", &json!({}));
    assert_eq!(r.status, 401);
    let (r, _) = p.json("POST", "/api/security/recovery-codes", &json!({}));
    assert_eq!(r.status, 401);

    // A lost phone: the operator resets the factors, which ends every session.
    let out = site.cli(&["user", "reset-second-factors", "root"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        refused_soon(gh, &stepped_up),
        "a session outlived the reset"
    );
    let mut b = Browser::new(gh.addr());
    assert_eq!(
        login(&mut b, "root", PW).header("location"),
        Some("/account/security"),
        "the password alone again, and enrolment first"
    );
}

/// `/login?max_age=…` (a route's `max_age`, from the login location): a signed-in browser
/// whose sign-in is older signs in again, and gets a new session that says so; a recent one
/// goes straight on.
#[test]
fn an_old_sign_in_signs_in_again_for_max_age() {
    let site = Site::start("second-factor-max-age", Backend::Sqlite, &[]);
    let gh = &site.gh;
    site.create_user("cai", "cai@example.org", PW);
    let mut b = Browser::new(gh.addr());
    login(&mut b, "cai", PW);
    let first = b.cookie(COOKIE).unwrap().to_owned();
    let r = b.get("/login?rd=%2Faccount&max_age=60");
    assert_eq!(
        r.header("location"),
        Some("/account"),
        "a recent sign-in: {r:?}"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let before = now();
    let r = b.get("/login?rd=%2Faccount&max_age=1");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("signed in recently"), "{}", r.body);
    assert!(
        r.body.contains("value=\"cai\""),
        "the username is filled in: {}",
        r.body
    );
    let r = b.post_with_csrf_of(
        &r.body,
        "/login",
        &[("username", "cai"), ("password", PW), ("rd", "/account")],
    );
    assert_eq!(r.header("location"), Some("/account"), "{r:?}");
    let second = b.cookie(COOKIE).unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(auth(gh, &first).status, 401, "the older session lives on");
    let c = claims(&auth(gh, &second));
    assert!(c["auth_time"].as_u64().unwrap() >= before, "{c}");

    // A max_age that is no number, or a field twice: the page, never a bare 400.
    for bad in ["/login?rd=%2Faccount&max_age=abc", "/login?rd=a&rd=b"] {
        let r = b.get(bad);
        assert!(matches!(r.status, 200 | 303), "{bad}: {r:?}");
    }
    let mut signed_out = Browser::new(gh.addr());
    let r = signed_out.get("/login?max_age=abc&max_age=1");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("<form"), "{}", r.body);
}
