//! Passkeys end to end (issue 18) through the JSON API, with webauthn-rs' own software
//! authenticator (`webauthn-authenticator-rs`) as the user's device: registration, the
//! second step after a password, a sign-in with the passkey alone, and the attacks: a
//! cloned authenticator (its counter behind), another site's RP id, A's passkey while B
//! signs in, a ceremony used twice.
//!
//! The software authenticator keeps no resident keys and returns no user handle, so the
//! test plays that part of a real one: it asks for a non-resident credential (the server
//! does not depend on residency) and, for a sign-in that names no one, lists the credential
//! and adds the user handle the registration gave it (the handle is not signed in WebAuthn,
//! which is why the server checks it against the credential's owner).

use serde_json::{json, Value};
use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, RequestChallengeResponse, Url, WebauthnAuthenticator,
};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::accounts::{auth, claims, on_both_backends, Backend, Site, COOKIE, PW};
use crate::support::*;

on_both_backends!(register_second_step_and_sign_in_alone, attacks_are_refused);

/// The origin of the pages: `--public-url`.
const ORIGIN: &str = "http://localhost";

fn site(name: &str, backend: Backend) -> Site {
    Site::start(
        name,
        backend,
        &["--public-url", ORIGIN, "--registration", "closed"],
    )
}

/// A user's device: the software authenticator, with what it made.
struct Device {
    auth: SoftPasskey,
    /// The user handle and credential id (base64url) of its passkey.
    handle: String,
    credential_id: String,
}

impl Device {
    fn new() -> Device {
        Device {
            // `true`: it reports user verification (a PIN or fingerprint), as passkeys must.
            auth: SoftPasskey::new(true),
            handle: String::new(),
            credential_id: String::new(),
        }
    }

    /// Registers a passkey named `name` for the user signed in in `b`: the API's answer.
    fn register(&mut self, b: &mut Browser, name: &str) -> (Response, Value) {
        let (r, mut options) = b.json("POST", "/api/security/passkeys/options", &json!({}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.header_all("set-cookie")
                .iter()
                .any(|c| c.starts_with("gatehouse_webauthn=") && c.contains("HttpOnly")),
            "{r:?}"
        );
        let pk = &mut options["publicKey"];
        assert_eq!(pk["rp"]["id"], "localhost");
        assert_eq!(pk["authenticatorSelection"]["residentKey"], "required");
        assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
        assert_eq!(pk["attestation"], "none");
        self.handle = pk["user"]["id"].as_str().unwrap().to_owned();
        pk["authenticatorSelection"]["residentKey"] = "discouraged".into();
        pk["authenticatorSelection"]["requireResidentKey"] = false.into();
        let ccr: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let made = self
            .auth
            .do_registration(Url::parse(ORIGIN).unwrap(), ccr)
            .expect("the software authenticator made a credential");
        let made = serde_json::to_value(made).unwrap();
        self.credential_id = made["rawId"].as_str().unwrap().to_owned();
        b.json(
            "POST",
            "/api/security/passkeys",
            &json!({ "name": name, "credential": made }),
        )
    }

    /// Options for `purpose` from the server, then this device's answer (JSON). `tweak`
    /// changes the options first (what the device is asked), `origin` is the page's.
    fn answer(
        &mut self,
        b: &mut Browser,
        purpose: &str,
        origin: &str,
        tweak: impl FnOnce(&mut Value),
    ) -> Value {
        let (r, mut options) = b.json(
            "POST",
            "/api/login/passkey/options",
            &json!({ "purpose": purpose }),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        tweak(&mut options);
        let rcr: RequestChallengeResponse = serde_json::from_value(options).unwrap();
        let answer = self
            .auth
            .do_authentication(Url::parse(origin).unwrap(), rcr)
            .expect("the software authenticator signed");
        serde_json::to_value(answer).unwrap()
    }

    /// A sign-in that names no one (discoverable): the server's options list no credential.
    fn sign_in_answer(&mut self, b: &mut Browser) -> Value {
        let id = self.credential_id.clone();
        let mut answer = self.answer(b, "sign_in", ORIGIN, |o| {
            let pk = &mut o["publicKey"];
            assert!(
                pk["allowCredentials"]
                    .as_array()
                    .is_none_or(|a| a.is_empty()),
                "{pk}"
            );
            pk["allowCredentials"] = json!([{ "type": "public-key", "id": id }]);
        });
        answer["response"]["userHandle"] = self.handle.clone().into();
        answer
    }
}

/// Posts a device's answer to the browser's ceremony: a sign-in (`sign_in`) or a second
/// step (`second_factor`).
fn finish(b: &mut Browser, purpose: &str, answer: Value) -> (Response, Value) {
    b.json(
        "POST",
        "/api/login/passkey",
        &json!({ "purpose": purpose, "credential": answer }),
    )
}

fn json_login(b: &mut Browser, username: &str) -> Value {
    let (r, v) = b.json(
        "POST",
        "/api/login",
        &json!({ "username": username, "password": PW }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    v
}

fn amr(site: &Site, b: &Browser) -> Value {
    claims(&auth(&site.gh, b.cookie(COOKIE).expect("a session")))["amr"].clone()
}

fn register_second_step_and_sign_in_alone(backend: Backend) {
    let site = site("passkeys", backend);
    site.create_user("ada", "ada@example.org", PW);
    let data = site.data();
    let mail_dir = std::path::Path::new(&data);
    let mut b = Browser::new(site.gh.addr());
    assert!(json_login(&mut b, "ada")["user"].is_object());

    // Registration: the first second factor comes with ten recovery codes, and a mail.
    let mut phone = Device::new();
    let (r, v) = phone.register(&mut b, "  Phone  ");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(v["recovery_codes"].as_array().unwrap().len(), 10, "{v}");
    assert!(
        r.header_all("set-cookie")
            .iter()
            .any(|c| c.starts_with("gatehouse_webauthn=;") || c.contains("Max-Age=0")),
        "the ceremony's cookie is cleared: {r:?}"
    );
    assert!(wait_mail(mail_dir, 1).contains("A passkey was added"));
    let (_, security) = b.json("GET", "/api/security", &json!({}));
    assert_eq!(security["passkeys_available"], true);
    let listed = &security["passkeys"][0];
    assert_eq!(listed["name"], "Phone", "{security}");
    assert!(listed["last_used_at"].is_null());
    let id = listed["id"].as_str().unwrap().to_owned();

    // The same credential twice is refused (the authenticator would refuse too: the options
    // exclude it).
    let (_, options) = b.json("POST", "/api/security/passkeys/options", &json!({}));
    let excluded = options["publicKey"]["excludeCredentials"]
        .as_array()
        .unwrap();
    assert_eq!(excluded[0]["id"], phone.credential_id.as_str());

    // Renamed; a bad name is refused with the page's code.
    let (r, _) = b.json(
        "PATCH",
        &format!("/api/security/passkeys/{id}"),
        &json!({ "name": "Work phone" }),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let (r, v) = b.json(
        "PATCH",
        &format!("/api/security/passkeys/{id}"),
        &json!({ "name": "" }),
    );
    assert_eq!((r.status, v["error"].as_str()), (400, Some("invalid_name")));

    // Password first, then the passkey: the session says pwd, hwk and mfa.
    let mut b = Browser::new(site.gh.addr());
    let v = json_login(&mut b, "ada");
    assert_eq!(v["second_factor_required"], true);
    assert_eq!(v["methods"], json!(["passkey", "recovery"]));
    assert!(b.cookie(COOKIE).is_none());
    let phone_id = phone.credential_id.clone();
    let answer = phone.answer(&mut b, "second_factor", ORIGIN, |o| {
        assert_eq!(
            o["publicKey"]["allowCredentials"][0]["id"],
            phone_id.as_str()
        );
        assert_eq!(o["publicKey"]["userVerification"], "required");
    });
    let (r, v) = finish(&mut b, "second_factor", answer);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(v["user"]["username"], "ada");
    assert_eq!(amr(&site, &b), json!(["pwd", "hwk", "mfa"]));

    // The passkey alone, no username: two factors on its own.
    let mut b = Browser::new(site.gh.addr());
    let answer = phone.sign_in_answer(&mut b);
    let (r, v) = finish(&mut b, "sign_in", answer);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(v["user"]["username"], "ada");
    let c = claims(&auth(&site.gh, b.cookie(COOKIE).unwrap()));
    assert_eq!(c["amr"], json!(["hwk", "mfa"]));
    assert_eq!(c["acr"], "urn:gatehouse:acr:2fa");
    let (_, security) = b.json("GET", "/api/security", &json!({}));
    assert!(
        security["passkeys"][0]["last_used_at"].is_u64(),
        "{security}"
    );

    // Removing the last second factor asks for the password, and the recovery codes go too.
    let path = format!("/api/security/passkeys/{id}");
    let (r, v) = b.json("DELETE", &path, &json!({ "password": "wrong" }));
    assert_eq!(
        (r.status, v["error"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (r, _) = b.json("DELETE", &path, &json!({ "password": PW }));
    assert_eq!(r.status, 204, "{}", r.body);
    let (_, security) = b.json("GET", "/api/security", &json!({}));
    assert_eq!(security["passkeys"], json!([]));
    assert_eq!(security["recovery_codes_left"], 0);
    wait_mail_with(mail_dir, "A passkey was removed");
    // A removed passkey signs no one in.
    let mut b = Browser::new(site.gh.addr());
    let answer = phone.sign_in_answer(&mut b);
    let (r, v) = finish(&mut b, "sign_in", answer);
    assert_eq!(
        (r.status, v["error"].as_str()),
        (401, Some("passkey_refused"))
    );
    assert!(b.cookie(COOKIE).is_none());
}

fn attacks_are_refused(backend: Backend) {
    let site = site("passkey-attacks", backend);
    site.create_user("ada", "ada@example.org", PW);
    site.create_user("bob", "bob@example.org", PW);
    let (mut ada_key, mut bob_key) = (Device::new(), Device::new());
    for (who, key) in [("ada", &mut ada_key), ("bob", &mut bob_key)] {
        let mut b = Browser::new(site.gh.addr());
        json_login(&mut b, who);
        assert_eq!(key.register(&mut b, "Key").0.status, 201);
    }

    // Ada's passkey while Bob signs in: Bob's password, then an answer from Ada's device
    // (listing her credential, as a device that holds it would). Refused, no session.
    let mut b = Browser::new(site.gh.addr());
    json_login(&mut b, "bob");
    let ada_id = ada_key.credential_id.clone();
    let answer = ada_key.answer(&mut b, "second_factor", ORIGIN, |o| {
        o["publicKey"]["allowCredentials"] = json!([{ "type": "public-key", "id": ada_id }]);
    });
    let (r, v) = finish(&mut b, "second_factor", answer);
    assert_eq!(
        (r.status, v["error"].as_str()),
        (401, Some("passkey_refused"))
    );
    assert!(b.cookie(COOKIE).is_none());
    // Ada's handle on Bob's credential: refused too (the handle is not signed).
    let mut b = Browser::new(site.gh.addr());
    let mut answer = bob_key.sign_in_answer(&mut b);
    answer["response"]["userHandle"] = ada_key.handle.clone().into();
    let (r, _) = finish(&mut b, "sign_in", answer);
    assert_eq!(r.status, 401, "{}", r.body);

    // Another site's RP id: a phishing page that relays our challenge gets an answer bound
    // to its own name and origin, which the server refuses.
    let mut b = Browser::new(site.gh.addr());
    let id = ada_key.credential_id.clone();
    let answer = ada_key.answer(&mut b, "sign_in", "https://localhost.evil.example", |o| {
        o["publicKey"]["rpId"] = "localhost.evil.example".into();
        o["publicKey"]["allowCredentials"] = json!([{ "type": "public-key", "id": id }]);
    });
    let mut answer = answer;
    answer["response"]["userHandle"] = ada_key.handle.clone().into();
    let (r, _) = finish(&mut b, "sign_in", answer);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(b.cookie(COOKIE).is_none());

    // A ceremony answers once: the same answer again (its cookie kept) is refused.
    let mut b = Browser::new(site.gh.addr());
    let answer = ada_key.sign_in_answer(&mut b);
    let ceremony = b.cookie("gatehouse_webauthn").unwrap().to_owned();
    let body = json!({ "credential": answer });
    assert_eq!(b.json("POST", "/api/login/passkey", &body).0.status, 200);
    let mut replay = Browser::new(site.gh.addr());
    replay.set_cookie("gatehouse_webauthn", &ceremony);
    let (r, v) = replay.json("POST", "/api/login/passkey", &body);
    assert_eq!(
        (r.status, v["error"].as_str()),
        (400, Some("ceremony_expired"))
    );

    // A cloned authenticator: the original signed in since (its counter is ahead in the
    // database), and the clone's answer carries an older counter.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use gatehouse::accounts::db::Db;
        let url = site.database_url().map(gatehouse::secret::Secret::new);
        let db = Db::open(url.as_ref(), std::path::Path::new(&site.data()))
            .await
            .unwrap();
        let key = db
            .passkey_by_credential(&ada_key.credential_id)
            .await
            .unwrap()
            .unwrap();
        let mut record: Value = serde_json::from_str(&key.passkey).unwrap();
        record["cred"]["counter"] = 1000.into();
        sqlx::query("UPDATE user_passkeys SET passkey = $1, counter = 1000 WHERE id = $2")
            .bind(record.to_string())
            .bind(&key.id)
            .execute(db.pool())
            .await
            .unwrap();
    });
    let mut b = Browser::new(site.gh.addr());
    let answer = ada_key.sign_in_answer(&mut b);
    let (r, v) = finish(&mut b, "sign_in", answer);
    assert_eq!(
        (r.status, v["error"].as_str()),
        (401, Some("passkey_refused"))
    );
    assert!(b.cookie(COOKIE).is_none());
    // Beginning ceremonies is limited per address (each keeps a row until used or expired):
    // the 31st in a minute is refused, with when to try again.
    let mut b = Browser::new(site.gh.addr());
    let refused = (0..40).find_map(|_| {
        let (r, v) = b.json(
            "POST",
            "/api/login/passkey/options",
            &json!({ "purpose": "sign_in" }),
        );
        (r.status != 200).then_some((r, v))
    });
    let (r, v) = refused.expect("a limit on ceremonies");
    assert_eq!((r.status, v["error"].as_str()), (429, Some("rate_limited")));
    assert!(r.header("retry-after").is_some(), "{r:?}");

    assert!(
        site.gh.logs().contains("may have be compromised"),
        "{}",
        site.gh.logs()
    );
}

/// A public URL on an IP address has no name to bind passkeys to: they are off, with a
/// warning that says why, and the API says so. A wrong RP id exits 64 naming the flag.
#[test]
fn passkeys_are_off_on_an_ip_address_and_a_wrong_rp_id_exits_64() {
    let site = Site::start("passkeys-off", Backend::Sqlite, &[]);
    assert!(
        site.gh
            .logs()
            .contains("passkeys are off: a WebAuthn relying party id is a domain name"),
        "{}",
        site.gh.logs()
    );
    site.create_user("ada", "ada@example.org", PW);
    let mut b = Browser::new(site.gh.addr());
    json_login(&mut b, "ada");
    let (_, security) = b.json("GET", "/api/security", &json!({}));
    assert_eq!(security["passkeys_available"], false);
    let (r, v) = b.json("POST", "/api/security/passkeys/options", &json!({}));
    assert_eq!((r.status, v["error"].as_str()), (404, Some("passkeys_off")));
    let page = b.get("/login");
    assert!(!page.body.contains("passkeys.js"), "{}", page.body);

    let dir = TempDir::new("passkeys-bad-rp");
    let data = dir.join("data");
    let mut gh = Gatehouse::spawn_no_wait(&args(&[
        "--data-dir",
        &data,
        "--public-url",
        "https://login.example.org",
        "--webauthn-rp-id",
        "example.com",
    ]));
    assert_eq!(gh.wait_exit(std::time::Duration::from_secs(20)), Some(64));
    assert!(gh.logs().contains("--webauthn-rp-id"), "{}", gh.logs());
}
