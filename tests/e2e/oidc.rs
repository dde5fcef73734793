//! OpenID Connect, end to end: real `gatehouse serve` processes, clients registered with the
//! CLI, and an independent relying party (the `openidconnect` crate) that discovers the
//! provider, runs the code flow with nonce and PKCE, validates every id_token (signature
//! against the JWKS, `iss`, `aud`, `nonce`, `at_hash`), calls UserInfo and refreshes. Sign-out
//! everywhere: RP-initiated logout, and back-channel logout tokens received by a listener in
//! the test and checked against the JWKS, through the durable outbox (across a restart while
//! the receiver is down). On SQLite with the embedded store, and on PostgreSQL with Redis.

use std::time::Duration;

use crate::registry::{
    answer_consent, bearer, callback, claims, http, on_both_backends, open_authorize, signed_in,
    Backend, Site, CALLBACK,
};
use crate::support::*;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};

/// Where clients may be sent after signing out: nothing listens, the test reads `Location`.
const AFTER_LOGOUT: &str = "http://127.0.0.1:9/signed-out";

on_both_backends!(
    an_independent_relying_party_signs_in_with_the_code_flow,
    backchannel_logout_reaches_every_client_and_survives_a_restart,
    rp_initiated_logout_returns_only_to_registered_addresses,
    device_grant_polls_until_the_user_allows_and_works_once,
    jwt_access_tokens_and_resource_indicators,
    clients_register_themselves_only_as_the_operator_allows,
    prompt_max_age_and_login_hint_are_honoured,
    a_certified_relying_party_runs_every_flow,
    client_metadata_documents_sign_in_without_registration,
);

/// A confidential OpenID Connect client with refresh, returning to CALLBACK, allowed to send
/// the browser to AFTER_LOGOUT; `extra` flags added.
fn oidc_client(site: &Site, name: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "--name",
        name,
        "--grant",
        "authorization_code",
        "--grant",
        "refresh_token",
        "--redirect-uri",
        CALLBACK,
        "--scope",
        "papers:read",
        "--post-logout-redirect-uri",
        AFTER_LOGOUT,
    ];
    args.extend_from_slice(extra);
    let (id, secret) = site.client(&args);
    (id, secret.unwrap())
}

/// The relying party, from discovery.
fn relying_party(
    site: &Site,
    id: &str,
    secret: &str,
) -> openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
> {
    let issuer = IssuerUrl::new(site.gh.url()).unwrap();
    let meta = CoreProviderMetadata::discover(&issuer, &http).expect("discovery");
    CoreClient::from_provider_metadata(
        meta,
        ClientId::new(id.to_string()),
        Some(ClientSecret::new(secret.to_string())),
    )
    .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).unwrap())
}

/// The JSON of a GET.
fn get_json(site: &Site, path: &str) -> serde_json::Value {
    let r = http_get(site.gh.addr(), path, &[]);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// The claims of a JWT of this site after checking its signature against the site's JWKS,
/// and its header.
fn verified(site: &Site, jwt: &str) -> (serde_json::Value, jsonwebtoken::Header) {
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&http_get(site.gh.addr(), "/.well-known/jwks.json", &[]).body)
            .unwrap();
    let key =
        jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap())
            .unwrap();
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.validate_aud = false;
    v.set_required_spec_claims(&["iss", "exp"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v).expect("a valid signature");
    (data.claims, header)
}

fn an_independent_relying_party_signs_in_with_the_code_flow(backend: Backend) {
    let site = Site::start("oidc-flow", backend);
    site.create_user("ines");
    let (id, secret) = oidc_client(&site, "Wiki", &[]);

    // Discovery: one issuer, every endpoint, RS256 always, back-channel logout offered.
    let d = get_json(&site, "/.well-known/openid-configuration");
    assert_eq!(d["issuer"], site.gh.url());
    for (k, path) in [
        ("authorization_endpoint", "/oauth/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("userinfo_endpoint", "/oauth/userinfo"),
        ("end_session_endpoint", "/oauth/logout"),
        ("jwks_uri", "/.well-known/jwks.json"),
    ] {
        assert_eq!(d[k], site.url(path), "{k}");
    }
    assert!(d["id_token_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("RS256")));
    for s in [
        "openid",
        "profile",
        "email",
        "offline_access",
        "papers:read",
    ] {
        assert!(
            d["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(s)),
            "{s} not in {d}"
        );
    }
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(d["backchannel_logout_supported"], true);
    assert_eq!(d["backchannel_logout_session_supported"], true);

    let rp = relying_party(&site, &id, &secret);
    let authorize = || {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = rp
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("profile".into()))
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge)
            .url();
        (url.to_string(), state, nonce, verifier)
    };

    // The code flow: sign in, consent in words, a code at the callback with iss.
    let mut b = Browser::new(site.gh.addr());
    let (url, state, nonce, verifier) = authorize();
    let page = open_authorize(&mut b, &url, "ines");
    for words in [
        "Know who you are when you sign in",
        "See your name and username",
        "See your email address",
    ] {
        assert!(page.body.contains(words), "{words} missing: {}", page.body);
    }
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    assert_eq!(back["state"], *state.secret());
    assert_eq!(back["iss"], site.gh.url());
    let tokens = rp
        .exchange_code(AuthorizationCode::new(back["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request(&http)
        .unwrap();

    // The id_token, as the relying party checks it: signature from the JWKS, iss, aud, exp,
    // nonce; and at_hash binds the access token.
    let id_token = tokens.id_token().expect("an id_token");
    let checker = rp.id_token_verifier();
    let c = id_token.claims(&checker, &nonce).expect("a valid id_token");
    let at_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&checker).unwrap(),
    )
    .unwrap();
    assert_eq!(c.access_token_hash(), Some(&at_hash));
    assert!(
        id_token
            .claims(&checker, &Nonce::new("another request's nonce".into()))
            .is_err(),
        "a wrong nonce passed"
    );
    // Its claims: the same sub and sid as the browser session's own JWT at /auth.
    let browser_jwt = claims(&b.get("/auth"));
    let (raw, header) = verified(&site, &id_token.to_string());
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(raw["sub"], browser_jwt["sub"], "{raw}");
    assert_eq!(raw["sid"], browser_jwt["sid"], "{raw}");
    assert_eq!(raw["aud"], id.as_str());
    assert_eq!(raw["amr"], serde_json::json!(["pwd"]));
    assert_eq!(raw["auth_time"], browser_jwt["auth_time"]);
    assert_eq!(raw["preferred_username"], "ines");
    assert_eq!(raw["email"], "ines@example.org");
    assert_eq!(raw["email_verified"], true);
    assert!(raw["updated_at"].as_u64().is_some(), "{raw}");
    // The access token works at /auth, and carries the OIDC scopes with the granted one.
    let r = bearer(&site.gh, tokens.access_token().secret());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(claims(&r)["scope"], "email openid profile");

    // UserInfo, GET (the crate) and POST: the claims the scopes allow.
    let info: CoreUserInfoClaims = rp
        .user_info(tokens.access_token().clone(), None)
        .unwrap()
        .request(&http)
        .unwrap();
    assert_eq!(info.subject().as_str(), raw["sub"].as_str().unwrap());
    assert_eq!(info.email().map(|e| e.as_str()), Some("ines@example.org"));
    assert_eq!(info.preferred_username().map(|u| u.as_str()), Some("ines"));
    let bearer_header = format!("Bearer {}", tokens.access_token().secret());
    let r = http_request(
        "POST",
        site.gh.addr(),
        "/oauth/userinfo",
        &[("Authorization", &bearer_header)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http_get(
        site.gh.addr(),
        "/oauth/userinfo",
        &[("Authorization", "Bearer gtc_not-a-token")],
    );
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));

    // A refresh returns a fresh id_token: same sub and auth_time, no nonce.
    let refreshed = rp
        .exchange_refresh_token(tokens.refresh_token().unwrap())
        .unwrap()
        .request(&http)
        .unwrap();
    let again = refreshed.id_token().expect("a refreshed id_token");
    let c2 = again
        .claims(&checker, |n: Option<&Nonce>| {
            n.is_none()
                .then_some(())
                .ok_or_else(|| "a refreshed id_token carries a nonce".to_string())
        })
        .unwrap();
    assert_eq!(c2.subject(), c.subject());
    assert_eq!(c2.auth_time(), c.auth_time());

    // A token without openid has no UserInfo.
    let plain = crate::registry::authorize_path(&id, "papers:read");
    let page = open_authorize(&mut b, &site.url(&plain.0), "ines");
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    let v = crate::registry::redeem(&site, &id, &secret, &back["code"], &plain.1);
    assert!(v.get("id_token").is_none(), "{v}");
    let r = http_get(
        site.gh.addr(),
        "/oauth/userinfo",
        &[(
            "Authorization",
            &format!("Bearer {}", v["access_token"].as_str().unwrap()),
        )],
    );
    assert_eq!(r.status, 403, "{}", r.body);
}

/// `prompt`, `max_age` and `login_hint`: what a client may ask of the sign-in.
fn prompt_max_age_and_login_hint_are_honoured(backend: Backend) {
    let site = Site::start("oidc-prompt", backend);
    site.create_user("jon");
    let (id, _) = oidc_client(&site, "Board", &[]);
    let path = |extra: &[(&str, &str)]| {
        let (challenge, _) = PkceCodeChallenge::new_random_sha256();
        let mut q = vec![
            ("response_type", "code"),
            ("client_id", id.as_str()),
            ("redirect_uri", CALLBACK),
            ("scope", "openid profile"),
            ("state", "st"),
            ("nonce", "n-1"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        q.extend_from_slice(extra);
        format!("/oauth/authorize?{}", form_encode(&q))
    };

    // prompt=none while signed out: login_required at the redirect URI, never a page.
    let mut out = Browser::new(site.gh.addr());
    let back = callback(&out.get(&path(&[("prompt", "none")])));
    assert_eq!(back["error"], "login_required");
    assert_eq!(back["state"], "st");
    assert_eq!(back["iss"], site.gh.url());
    // login_hint fills in the username on the way to /login.
    let r = out.get(&path(&[("login_hint", "jon")]));
    let login = r.header("location").unwrap().to_string();
    assert!(login.starts_with("/login?"), "{login}");
    let page = out.get(&login);
    assert!(page.body.contains("value=\"jon\""), "{}", page.body);

    // Signed in but never consented: prompt=none is consent_required.
    let mut b = signed_in(&site, "jon");
    let back = callback(&b.get(&path(&[("prompt", "none")])));
    assert_eq!(back["error"], "consent_required");
    // Consent once; then prompt=none comes straight back with a code.
    let page = b.get(&path(&[]));
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    assert!(back.contains_key("code"));
    let back = callback(&b.get(&path(&[("prompt", "none")])));
    assert!(back.contains_key("code"), "{back:?}");
    // prompt=consent asks again though consent is recorded.
    let r = b.get(&path(&[("prompt", "consent")]));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Allow Board"), "{}", r.body);

    // prompt=login and max_age=0 send a signed-in browser to sign in again, and back
    // without asking once more.
    for extra in [("prompt", "login"), ("max_age", "0")] {
        let r = b.get(&path(&[extra]));
        let login = r.header("location").unwrap_or("").to_string();
        assert!(
            login.starts_with("/login?"),
            "{extra:?}: {} {login}",
            r.status
        );
        let page = b.get(&login);
        assert!(page.body.contains("sign in again"), "{}", page.body);
        let rd = hidden(&page.body, "rd").unwrap();
        assert!(!rd.contains("prompt=") && !rd.contains("max_age="), "{rd}");
        // With prompt=none, the same need is login_required.
        let none = [extra, ("prompt", "none")];
        let none: Vec<(&str, &str)> = if extra.0 == "prompt" {
            vec![("prompt", "none"), ("max_age", "0")]
        } else {
            none.to_vec()
        };
        let back = callback(&b.get(&path(&none)));
        assert_eq!(back["error"], "login_required", "{none:?}");
    }
    // Nonsense is refused at the redirect URI.
    for bad in [
        ("prompt", "none login"),
        ("max_age", "soon"),
        ("response_mode", "fragment"),
    ] {
        let back = callback(&b.get(&path(&[bad])));
        assert_eq!(back["error"], "invalid_request", "{bad:?}");
    }
}

/// RP-initiated logout: a valid hint signs out at once and returns to a registered URI;
/// without one a page asks; nothing unregistered or foreign is followed.
fn rp_initiated_logout_returns_only_to_registered_addresses(backend: Backend) {
    let site = Site::start("oidc-logout", backend);
    site.create_user("kai");
    let (id, secret) = oidc_client(&site, "Notes", &[]);
    let (other, _) = oidc_client(&site, "Other", &[]);

    let sign_in = || {
        let mut b = signed_in(&site, "kai");
        let (path, verifier) = crate::registry::authorize_path(&id, "openid");
        let r = b.get(&path);
        let r = if r.status == 200 {
            answer_consent(&mut b, &r, "allow")
        } else {
            r
        };
        let back = callback(&r);
        let v = crate::registry::redeem(&site, &id, &secret, &back["code"], &verifier);
        (b, v["id_token"].as_str().unwrap().to_string())
    };
    let logout = |params: &[(&str, &str)]| format!("/oauth/logout?{}", form_encode(params));

    // A valid hint: signed out at once, sent to the registered URI with state.
    let (mut b, hint) = sign_in();
    assert_eq!(b.get("/auth").status, 200);
    let r = b.get(&logout(&[
        ("id_token_hint", &hint),
        ("post_logout_redirect_uri", AFTER_LOGOUT),
        ("state", "bye"),
    ]));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some(&*format!("{AFTER_LOGOUT}?state=bye"))
    );
    assert_eq!(b.get("/auth").status, 401, "still signed in");

    // Without a hint: a page asks, and signing out there returns to the client.
    let (mut b, _) = sign_in();
    let ask = logout(&[
        ("client_id", &id),
        ("post_logout_redirect_uri", AFTER_LOGOUT),
    ]);
    let page = b.get(&ask);
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Notes asks you to sign out"),
        "{}",
        page.body
    );
    assert_eq!(b.get("/auth").status, 200, "signed out without asking");
    let r = answer_logout(&mut b, &page.body, "stay");
    assert_eq!(r.status, 303);
    assert_eq!(b.get("/auth").status, 200, "'stay' signed out");
    let page = b.get(&ask);
    let r = answer_logout(&mut b, &page.body, "logout");
    assert_eq!(r.header("location"), Some(AFTER_LOGOUT));
    assert_eq!(b.get("/auth").status, 401);

    // Refused with a page, never redirected: an unregistered URI, another client's hint,
    // a hint this site did not sign.
    let (mut b, hint) = sign_in();
    let foreign = {
        let key = jsonwebtoken::EncodingKey::from_secret(b"someone else");
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"iss": "https://elsewhere.example", "sub": "x", "aud": id}),
            &key,
        )
        .unwrap()
    };
    for params in [
        vec![
            ("id_token_hint", hint.as_str()),
            ("post_logout_redirect_uri", "https://evil.example/"),
        ],
        vec![
            ("client_id", id.as_str()),
            ("post_logout_redirect_uri", "https://evil.example/"),
        ],
        // Exact: the registered one with another path or a query is another URI.
        vec![
            ("client_id", id.as_str()),
            (
                "post_logout_redirect_uri",
                "http://127.0.0.1:9/signed-out/../elsewhere",
            ),
        ],
        vec![
            ("client_id", id.as_str()),
            (
                "post_logout_redirect_uri",
                "http://127.0.0.1:9/signed-out?next=https://evil.example",
            ),
        ],
        vec![("post_logout_redirect_uri", AFTER_LOGOUT)],
        vec![
            ("id_token_hint", hint.as_str()),
            ("client_id", other.as_str()),
        ],
        vec![("id_token_hint", foreign.as_str())],
    ] {
        let r = b.get(&logout(&params));
        assert_eq!(r.status, 400, "{params:?}: {}", r.body);
        assert!(r.header("location").is_none());
        assert!(r.body.contains("This sign-out request cannot be used"));
    }
    assert_eq!(b.get("/auth").status, 200, "a refused request signed out");
}

/// Answers the logout confirmation page as its buttons would.
fn answer_logout(b: &mut Browser, html: &str, decision: &str) -> Response {
    let mut fields: Vec<(&str, String)> = [
        "csrf",
        "id_token_hint",
        "client_id",
        "post_logout_redirect_uri",
        "state",
    ]
    .into_iter()
    .filter_map(|n| hidden(html, n).map(|v| (n, v)))
    .collect();
    fields.push(("decision", decision.to_string()));
    let borrowed: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    b.post("/oauth/logout", &borrowed)
}

/// A listener's logout_tokens, each checked: signed by a key of the JWKS with `typ`
/// logout+jwt, for `aud`, with the back-channel event and no nonce. Their (sub, sid) pairs.
fn logout_tokens(site: &Site, bodies: &[String], aud: &str) -> Vec<(String, String)> {
    bodies
        .iter()
        .map(|body| {
            let form: std::collections::HashMap<String, String> =
                oauth2::url::form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
            let (c, header) = verified(site, &form["logout_token"]);
            assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
            assert_eq!(c["iss"], site.gh.url());
            assert_eq!(c["aud"], aud);
            assert!(c["iat"].is_u64() && c["jti"].is_string(), "{c}");
            assert_eq!(
                c["events"],
                serde_json::json!({"http://schemas.openid.net/event/backchannel-logout": {}})
            );
            assert!(c.get("nonce").is_none(), "{c}");
            (
                c["sub"].as_str().unwrap().to_string(),
                c["sid"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn backchannel_logout_reaches_every_client_and_survives_a_restart(backend: Backend) {
    let receiver = Receiver::start();
    let port = receiver.port();
    let mut site = Site::start("oidc-backchannel", backend);
    site.create_user("lea");
    let (id, secret) = oidc_client(
        &site,
        "Dashboards",
        &["--backchannel-logout-uri", &receiver.url("/bc")],
    );
    let sign_in = |b: &mut Browser, scope: &str| {
        let (path, verifier) = crate::registry::authorize_path(&id, scope);
        let r = b.get(&path);
        let r = if r.status == 200 {
            answer_consent(b, &r, "allow")
        } else {
            r
        };
        let back = callback(&r);
        crate::registry::redeem(&site, &id, &secret, &back["code"], &verifier)
    };

    // Sign out at /logout: the client that got an id_token for that session hears of it.
    let mut b = signed_in(&site, "lea");
    let tokens = sign_in(&mut b, "openid");
    let jwt = claims(&b.get("/auth"));
    let (sub, sid) = (
        jwt["sub"].as_str().unwrap().to_string(),
        jwt["sid"].as_str().unwrap().to_string(),
    );
    let r = b.submit("/logout", "/logout", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let got = receiver.wait_bodies(1, Duration::from_secs(10));
    assert_eq!(logout_tokens(&site, &got, &id), vec![(sub.clone(), sid)]);
    // Its refresh token ended with the session (no offline_access).
    let (status, error) = crate::registry::refresh_status(
        &site,
        &id,
        &secret,
        tokens["refresh_token"].as_str().unwrap(),
    );
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));

    // With offline_access the refresh token outlives the session, as consented; the logout
    // is still sent.
    let mut b = signed_in(&site, "lea");
    let offline = sign_in(&mut b, "openid offline_access");
    b.submit("/logout", "/logout", &[]);
    assert_eq!(receiver.wait_bodies(2, Duration::from_secs(10)).len(), 2);
    let (r, v) = crate::registry::refresh_raw(
        &site,
        &id,
        &secret,
        offline["refresh_token"].as_str().unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(v["id_token"].is_string());

    // `gatehouse user sign-out` ends every session from the command line, and the client
    // hears of it as from a sign-out in the browser.
    let mut b = signed_in(&site, "lea");
    sign_in(&mut b, "openid");
    let jwt = claims(&b.get("/auth"));
    let out = site.cli(&["user", "sign-out", "lea"]);
    assert!(out.status.success(), "{out:?}");
    let cookie = b.cookie(crate::accounts::COOKIE).unwrap().to_owned();
    assert!(crate::accounts::refused_soon(&site.gh, &cookie));
    let got = receiver.wait_bodies(3, Duration::from_secs(10));
    assert_eq!(
        logout_tokens(&site, got.get(2..).unwrap_or(&[]), &id),
        vec![(sub.clone(), jwt["sid"].as_str().unwrap().to_string())]
    );

    // The receiver is down when the session ends, and gatehouse restarts before it is back:
    // the logout waits in the outbox and arrives once the receiver listens again.
    let mut b = signed_in(&site, "lea");
    sign_in(&mut b, "openid");
    let jwt = claims(&b.get("/auth"));
    drop(receiver);
    let out = site.cli(&["user", "deactivate", "lea"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        site.gh
            .wait_for_log("will be tried again", Duration::from_secs(10)),
        "no failed attempt: {}",
        site.gh.logs()
    );
    site.gh.restart();
    let receiver = Receiver::start_on(port).expect("the receiver's port again");
    let got = receiver.wait_bodies(1, Duration::from_secs(20));
    let pairs = logout_tokens(&site, &got, &id);
    assert!(
        pairs.contains(&(sub, jwt["sid"].as_str().unwrap().to_string())),
        "{pairs:?}"
    );
}

/// The device authorization grant (RFC 8628): a command-line tool polls while the user
/// allows it in a browser; the code works once; guessing codes at `/device` is limited.
fn device_grant_polls_until_the_user_allows_and_works_once(backend: Backend) {
    let site = Site::start("oidc-device", backend);
    site.create_user("noor");
    let (id, _) = site.client(&[
        "--name",
        "papers-cli",
        "--public",
        "--grant",
        "device_code",
        "--grant",
        "refresh_token",
        "--scope",
        "papers:read",
    ]);
    let post = |path: &str, form: &[(&str, &str)]| {
        let r = http_request(
            "POST",
            site.gh.addr(),
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form_encode(form).as_bytes(),
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        (r.status, v)
    };
    let start = || {
        let (status, v) = post(
            "/oauth/device_authorization",
            &[("client_id", &id), ("scope", "openid papers:read")],
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["verification_uri"], site.url("/device"));
        assert_eq!(v["interval"], 5);
        (
            v["device_code"].as_str().unwrap().to_string(),
            v["user_code"].as_str().unwrap().to_string(),
        )
    };
    let poll = |device_code: &str| {
        post(
            "/oauth/token",
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
                ("client_id", &id),
            ],
        )
    };
    let (device_code, user_code) = start();
    assert_eq!(poll(&device_code).1["error"], "authorization_pending");
    assert_eq!(
        poll(&device_code).1["error"],
        "slow_down",
        "polled at once again"
    );

    // The user types the code (any case, spaces for the dash), sees the tool and allows it.
    let mut b = signed_in(&site, "noor");
    let page = b.get(&format!("/device?user_code={user_code}"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&user_code), "{}", page.body);
    let typed = user_code.to_lowercase().replace('-', " ");
    let confirm = b.post_with_csrf_of(&page.body, "/device", &[("user_code", &typed)]);
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(confirm.body.contains("Allow papers-cli on your device?"));
    assert!(confirm.body.contains("Read your papers"));
    let done = b.post_with_csrf_of(
        &confirm.body,
        "/device",
        &[("user_code", &user_code), ("decision", "allow")],
    );
    assert!(done.body.contains("Device connected"), "{}", done.body);

    let (status, tokens) = poll(&device_code);
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["id_token"].is_string(), "{tokens}");
    let r = bearer(&site.gh, tokens["access_token"].as_str().unwrap());
    assert_eq!(r.status, 200);
    assert_eq!(claims(&r)["scope"], "openid papers:read");
    // A replayed device code is refused, and its code no longer opens a confirmation.
    let (status, v) = poll(&device_code);
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    let again = b.submit("/device", "/device", &[("user_code", &user_code)]);
    assert_eq!(again.status, 400);
    assert!(again.body.contains("not valid"), "{}", again.body);

    // Denied: the tool hears access_denied.
    let (device_code, user_code) = start();
    let confirm = b.submit("/device", "/device", &[("user_code", &user_code)]);
    b.post_with_csrf_of(
        &confirm.body,
        "/device",
        &[("user_code", &user_code), ("decision", "deny")],
    );
    assert_eq!(poll(&device_code).1["error"], "access_denied");

    // A client without the grant cannot start; guessing codes is cut off after 20 a minute.
    let (other, _) = site.client(&["--name", "web", "--public", "--redirect-uri", CALLBACK]);
    let (status, v) = post("/oauth/device_authorization", &[("client_id", &other)]);
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(
            b.submit("/device", "/device", &[("user_code", "BCDF-GHJK")])
                .status,
        );
    }
    assert!(
        statuses.iter().all(|s| *s == 400 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        b.submit("/device", "/device", &[("user_code", "BCDF-GHJK")])
            .status,
        429
    );
}

/// `--api-catalog` with one API, Papers at `base_url` (scope papers:read), in `dir`.
fn papers_api(dir: &TempDir, base_url: &str) -> Vec<String> {
    let catalog = dir.join("apis.toml");
    std::fs::write(
        &catalog,
        format!(
            "[[api]]\nname = \"Papers\"\nbase_url = \"{base_url}\"\nscopes = [\"papers:read\"]\ndocs = \"https://docs.example.test/papers\"\n"
        ),
    )
    .unwrap();
    vec!["--api-catalog".into(), catalog]
}

/// RFC 9068 access tokens for clients that ask for them, and RFC 8707 resources: a token is
/// for one API of the catalog, whatever its format.
fn jwt_access_tokens_and_resource_indicators(backend: Backend) {
    const API: &str = "https://papers.example.org/api";
    let site = Site::start_with("oidc-at-jwt", backend, |dir| papers_api(dir, API));
    site.create_user("omar");
    let basic = |id: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{id}:{secret}")
            )
        )
    };
    let (machine, machine_secret) = {
        let (id, secret) = site.client(&[
            "--name",
            "indexer",
            "--scope",
            "papers:read",
            "--access-token-format",
            "jwt",
        ]);
        (id, secret.unwrap())
    };
    let cc = |resource: &str| {
        let mut form = vec![("grant_type", "client_credentials")];
        if !resource.is_empty() {
            form.push(("resource", resource));
        }
        site.token_raw(
            &[("Authorization", &basic(&machine, &machine_secret))],
            &form_encode(&form),
        )
    };
    // A JWT for the API named, checked against the JWKS; /auth does not take it.
    let (r, v) = cc(&format!("{API}/"));
    assert_eq!(r.status, 200, "{}", r.body);
    let at = v["access_token"].as_str().unwrap();
    let (c, header) = verified(&site, at);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(c["aud"], API);
    assert_eq!(c["client_id"], machine.as_str());
    assert_eq!(c["scope"], "papers:read");
    assert!(c["jti"].is_string());
    let lifetime = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
    assert!(lifetime <= 300, "{lifetime}");
    assert_eq!(v["expires_in"].as_u64(), Some(lifetime));
    assert_eq!(
        bearer(&site.gh, at).status,
        401,
        "/auth took a JWT access token"
    );
    // Without a resource: the issuer. An API that is not in the catalog: invalid_target.
    let (_, v) = cc("");
    assert_eq!(
        verified(&site, v["access_token"].as_str().unwrap()).0["aud"],
        site.gh.url()
    );
    let (r, v) = cc("https://elsewhere.example/api");
    assert_eq!(
        (r.status, v["error"].as_str()),
        (400, Some("invalid_target"))
    );

    // An opaque token with a resource: its JWT at /auth is for that API.
    let (web, web_secret) = oidc_client(&site, "Reader", &[]);
    let mut b = signed_in(&site, "omar");
    let (path, verifier) = crate::registry::authorize_path(&web, "openid papers:read");
    let path = format!("{path}&resource={}", url_encode(API));
    let page = b.get(&path);
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    let v = crate::registry::redeem(&site, &web, &web_secret, &back["code"], &verifier);
    let r = bearer(&site.gh, v["access_token"].as_str().unwrap());
    assert_eq!(claims(&r)["aud"], API);
    let (path, _) = crate::registry::authorize_path(&web, "openid");
    let back = callback(&b.get(&format!("{path}&resource=https%3A%2F%2Fevil.example")));
    assert_eq!(back["error"], "invalid_target");

    // A JWT-format client of a user: UserInfo takes its JWT access token.
    let (jwt_web, jwt_secret) = oidc_client(&site, "Jotter", &["--access-token-format", "jwt"]);
    let (path, verifier) = crate::registry::authorize_path(&jwt_web, "openid email");
    let page = b.get(&path);
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    let v = crate::registry::redeem(&site, &jwt_web, &jwt_secret, &back["code"], &verifier);
    let at = v["access_token"].as_str().unwrap();
    assert_eq!(
        verified(&site, at).0["sub"],
        verified(&site, v["id_token"].as_str().unwrap()).0["sub"]
    );
    let r = http_get(
        site.gh.addr(),
        "/oauth/userinfo",
        &[("Authorization", &format!("Bearer {at}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("omar@example.org"), "{}", r.body);
}

/// Through nginx with the shipped snippets: every new path reaches gatehouse, an API host's
/// Protected Resource Metadata (RFC 9728) is served, and a refused bearer client is told
/// where it is.
#[test]
fn the_snippets_route_every_oidc_path_and_protected_resource_metadata() {
    const API: &str = "http://api.example.test/api/papers";
    let site = Site::start_with("oidc-nginx", Backend::Sqlite, |dir| papers_api(dir, API));
    let app = EchoServer::start();
    let nginx = signin_site(site.gh.addr().port(), app.port());
    let on_api = [("Host", "api.example.test")];

    let r = http_get(
        nginx.addr(),
        "/.well-known/oauth-protected-resource/api/papers",
        &on_api,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let m: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(m["resource"], API);
    assert_eq!(
        m["authorization_servers"],
        serde_json::json!([site.gh.url()])
    );
    assert_eq!(m["scopes_supported"], serde_json::json!(["papers:read"]));
    assert_eq!(
        m["resource_documentation"],
        "https://docs.example.test/papers"
    );
    let r = http_get(
        nginx.addr(),
        "/.well-known/oauth-protected-resource/api/elsewhere",
        &on_api,
    );
    assert_eq!(r.status, 404);

    // A bearer client refused under the API hears where its metadata is; elsewhere not.
    let r = http_get(
        nginx.addr(),
        "/api/papers/1",
        &[
            ("Host", "api.example.test"),
            ("Authorization", "Bearer gtc_nope"),
        ],
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse\", error=\"invalid_token\", resource_metadata=\"http://api.example.test/.well-known/oauth-protected-resource/api/papers\""),
    );
    let r = http_get(
        nginx.addr(),
        "/api/papersmith",
        &[
            ("Host", "api.example.test"),
            ("Authorization", "Bearer gtc_nope"),
        ],
    );
    assert!(!r
        .header("www-authenticate")
        .unwrap()
        .contains("resource_metadata"));

    // The OpenID Connect paths are gatehouse's, not the application's.
    let d = http_get(nginx.addr(), "/.well-known/openid-configuration", &[]);
    assert_eq!(d.status, 200);
    assert!(d.body.contains("end_session_endpoint"), "{}", d.body);
    assert!(http_get(nginx.addr(), "/.well-known/jwks.json", &[])
        .body
        .contains("\"keys\""));
    let r = http_get(nginx.addr(), "/oauth/userinfo", &[]);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("invalid_request"), "{}", r.body);
    assert_eq!(http_get(nginx.addr(), "/oauth/logout", &[]).status, 200);
    let r = http_get(nginx.addr(), "/device", &[]);
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/login?rd=%2Fdevice"))
    );
    let r = http_request(
        "POST",
        nginx.addr(),
        "/oauth/device_authorization",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"client_id=nobody",
    );
    assert_eq!(r.status, 401);
    assert!(r.body.contains("invalid_client"), "{}", r.body);
    assert!(
        app.requests().is_empty(),
        "reached the application: {:?}",
        app.requests()
    );
}

/// panva's openid-client (OpenID Certified), run by Node, is the relying party: discovery,
/// the code flow with nonce and PKCE and its id_token checks, UserInfo, refresh,
/// RP-initiated logout and the device grant, all over real HTTP; the browser's part is
/// played here.
fn a_certified_relying_party_runs_every_flow(backend: Backend) {
    let site = Site::start("oidc-node", backend);
    site.create_user("pia");
    let (id, secret) = oidc_client(&site, "Node app", &["--grant", "device_code"]);
    let script = node_tools("oidc_rp.mjs");
    let issuer = site.gh.url();
    let mut rp = NodeScript::start(&script, &[&issuer, &id, &secret, CALLBACK, AFTER_LOGOUT]);
    let wait = Duration::from_secs(30);

    let url = rp.expect("authorize", wait)["url"]
        .as_str()
        .unwrap()
        .to_string();
    let mut b = Browser::new(site.gh.addr());
    let page = open_authorize(&mut b, &url, "pia");
    let r = answer_consent(&mut b, &page, "allow");
    rp.send(r.header("location").unwrap());

    let t = rp.expect("tokens", wait);
    let browser_jwt = claims(&b.get("/auth"));
    assert_eq!(t["claims"]["sub"], browser_jwt["sub"]);
    assert_eq!(t["claims"]["sid"], browser_jwt["sid"]);
    assert_eq!(t["userinfo"]["email"], "pia@example.org");
    assert_eq!(t["userinfo"]["preferred_username"], "pia");
    assert!(t["refreshed"].get("nonce").is_none(), "{t}");

    let logout = rp.expect("logout", wait)["url"]
        .as_str()
        .unwrap()
        .to_string();
    let path = logout.strip_prefix(&issuer).unwrap();
    let r = b.get(path);
    assert_eq!(r.status, 303, "{}", r.body);
    rp.send(r.header("location").unwrap());
    assert_eq!(b.get("/auth").status, 401, "still signed in after logout");

    let device = rp.expect("device", wait);
    assert_eq!(device["verification_uri"], site.url("/device"));
    let mut b = signed_in(&site, "pia");
    let code = device["user_code"].as_str().unwrap();
    let confirm = b.submit("/device", "/device", &[("user_code", code)]);
    b.post_with_csrf_of(
        &confirm.body,
        "/device",
        &[("user_code", code), ("decision", "allow")],
    );
    let d = rp.expect("device_tokens", wait);
    assert_eq!(d["claims"]["sub"], browser_jwt["sub"]);
    rp.expect("done", wait);
    assert!(rp.wait(wait).is_some_and(|s| s.success()));
}

/// Dynamic client registration (RFC 7591): closed by default; with initial access tokens; or
/// open and limited per address. A registered client gets only the self-registered scopes
/// and URLs the outbound policy accepts.
fn clients_register_themselves_only_as_the_operator_allows(backend: Backend) {
    let register = |site: &Site, token: Option<&str>, body: serde_json::Value| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let r = http_request(
            "POST",
            site.gh.addr(),
            "/oauth/register",
            &headers,
            body.to_string().as_bytes(),
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        (r.status, v)
    };
    let app = serde_json::json!({
        "client_name": "Claude Desktop",
        "redirect_uris": ["http://127.0.0.1:9/cb"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
        "scope": "openid papers:read admin",
    });

    // Closed by default: refused, and discovery names no endpoint.
    let closed = Site::start("oidc-dcr-closed", Backend::Sqlite);
    let (status, v) = register(&closed, None, app.clone());
    assert_eq!((status, v["error"].as_str()), (403, Some("access_denied")));
    assert!(get_json(&closed, "/.well-known/openid-configuration")
        .get("registration_endpoint")
        .is_none());
    drop(closed);

    let site = Site::start_with("oidc-dcr", backend, |_| {
        vec![
            "--client-registration".into(),
            "token".into(),
            "--self-registered-scopes".into(),
            "papers:read".into(),
        ]
    });
    site.create_user("quinn");
    assert_eq!(
        get_json(&site, "/.well-known/openid-configuration")["registration_endpoint"],
        site.url("/oauth/register")
    );
    let token = |expires: &str| {
        let v: serde_json::Value = serde_json::from_str(&cli_stdout(&site.cli(&[
            "client",
            "registration-token",
            "create",
            "--json",
            "--expires",
            expires,
        ])))
        .unwrap();
        v["registration_token"].as_str().unwrap().to_string()
    };
    let expired = token("1s");
    let current = token("1h");
    assert_eq!(register(&site, None, app.clone()).0, 401);
    assert_eq!(register(&site, Some("gri_made-up"), app.clone()).0, 401);
    std::thread::sleep(Duration::from_millis(2100));
    let (status, v) = register(&site, Some(&expired), app.clone());
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_token")));

    // Registered: public, only the self-registered scope, listed as self-registered.
    let (status, v) = register(&site, Some(&current), app.clone());
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["token_endpoint_auth_method"], "none");
    assert!(v.get("client_secret").is_none());
    assert_eq!(v["scope"], "papers:read");
    let id = v["client_id"].as_str().unwrap().to_string();
    let listed = cli_stdout(&site.cli(&["client", "list"]));
    assert!(
        listed.contains(&format!("{id}  Claude Desktop  public (self-registered)")),
        "{listed}"
    );
    // Its users consent to it, and it signs them in.
    let mut b = signed_in(&site, "quinn");
    let (path, verifier) = crate::registry::authorize_path(&id, "openid papers:read");
    let page = b.get(&path);
    assert!(page.body.contains("Allow Claude Desktop"), "{}", page.body);
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    let (r, v) = site.token_raw(
        &[],
        &form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", &back["code"]),
            ("redirect_uri", CALLBACK),
            ("code_verifier", &verifier),
            ("client_id", &id),
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(v["id_token"].is_string());

    // A confidential one gets its secret once.
    let mut confidential = app.clone();
    confidential["token_endpoint_auth_method"] = "client_secret_basic".into();
    let (status, v) = register(&site, Some(&current), confidential);
    assert_eq!(status, 201, "{v}");
    assert!(v["client_secret"].as_str().unwrap().starts_with("gcs_"));

    // Bad metadata is refused with RFC 7591's errors.
    for (field, value, error) in [
        (
            "redirect_uris",
            serde_json::json!(["http://app.example.org/cb"]),
            "invalid_redirect_uri",
        ),
        (
            "backchannel_logout_uri",
            serde_json::json!("http://app.example.org/bc"),
            "invalid_client_metadata",
        ),
        (
            "grant_types",
            serde_json::json!(["client_credentials"]),
            "invalid_client_metadata",
        ),
        (
            "id_token_signed_response_alg",
            serde_json::json!("HS256"),
            "invalid_client_metadata",
        ),
        (
            "token_endpoint_auth_method",
            serde_json::json!("private_key_jwt"),
            "invalid_client_metadata",
        ),
    ] {
        let mut bad = app.clone();
        bad[field] = value;
        let (status, v) = register(&site, Some(&current), bad);
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some(error)),
            "{field}: {v}"
        );
    }
    drop(b);
    drop(site);

    // Open: anyone, 20 an hour per address.
    let open = Site::start_with("oidc-dcr-open", Backend::Sqlite, |_| {
        vec!["--client-registration".into(), "open".into()]
    });
    for _ in 0..20 {
        assert_eq!(register(&open, None, app.clone()).0, 201);
    }
    let (status, v) = register(&open, None, app.clone());
    assert_eq!((status, v["error"].as_str()), (429, Some("rate_limited")));
}

/// Client ID Metadata Documents: with open registration, an https `client_id` names its own
/// metadata, fetched with the outbound client's caps; a document that redirects, is too
/// large, lies about itself or sits on a private address is refused.
fn client_metadata_documents_sign_in_without_registration(backend: Backend) {
    let docs = TlsServer::start();
    let json = |v: serde_json::Value| {
        (
            200,
            vec![("Content-Type".to_string(), "application/json".to_string())],
            v.to_string().into_bytes(),
        )
    };
    let good = docs.url("/client.json");
    docs.serve(
        "/client.json",
        json(serde_json::json!({
            "client_id": good,
            "client_name": "Inspector",
            "redirect_uris": [CALLBACK],
            "scope": "openid papers:read admin",
            "token_endpoint_auth_method": "none",
        })),
    );
    let redirects = docs.url("/moved.json");
    docs.serve(
        "/moved.json",
        (302, vec![("Location".into(), good.clone())], Vec::new()),
    );
    let big = docs.url("/big.json");
    docs.serve(
        "/big.json",
        json(serde_json::json!({
            "client_id": big, "redirect_uris": [CALLBACK], "client_name": "x".repeat(6000),
        })),
    );
    let liar = docs.url("/liar.json");
    docs.serve(
        "/liar.json",
        json(serde_json::json!({"client_id": good, "redirect_uris": [CALLBACK]})),
    );
    let secretive = docs.url("/secret.json");
    docs.serve(
        "/secret.json",
        json(serde_json::json!({
            "client_id": secretive, "redirect_uris": [CALLBACK], "client_secret": "s3cret",
        })),
    );
    let ca = docs.ca_file();
    let site = Site::start_with("oidc-cimd", backend, |_| {
        args(&[
            "--client-registration",
            "open",
            "--self-registered-scopes",
            "papers:read",
            "--outbound-ca",
            &ca,
            "--outbound-allow-private",
        ])
    });
    site.create_user("rui");
    let mut b = signed_in(&site, "rui");

    let (path, verifier) = crate::registry::authorize_path(&good, "openid papers:read");
    let page = b.get(&path);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Allow Inspector"), "{}", page.body);
    assert!(
        page.body.contains("its publisher at localhost:"),
        "{}",
        page.body
    );
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    let (r, v) = site.token_raw(
        &[],
        &form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", &back["code"]),
            ("redirect_uri", CALLBACK),
            ("code_verifier", &verifier),
            ("client_id", &good),
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        verified(&site, v["id_token"].as_str().unwrap()).0["aud"],
        good.as_str()
    );
    assert_eq!(
        v["scope"], "openid papers:read",
        "admin is not a self-registered scope"
    );
    // The user sees it among their apps, and can remove it.
    let apps = b.get("/account/apps");
    assert!(apps.body.contains("Inspector"), "{}", apps.body);

    let refused = |b: &mut Browser, client_id: &str| {
        let (path, _) = crate::registry::authorize_path(client_id, "openid");
        let r = b.get(&path);
        assert_eq!(r.status, 400, "{client_id}: {}", r.body);
        assert!(r.header("location").is_none());
        assert!(r.body.contains("not registered here"), "{}", r.body);
    };
    for bad in [&redirects, &big, &liar, &secretive] {
        refused(&mut b, bad);
    }
    assert!(site.gh.logs().contains("client metadata document refused"));
    drop(b);
    drop(site);

    // Without --outbound-allow-private, a document on loopback or a private address is never
    // fetched.
    let strict = Site::start_with("oidc-cimd-strict", Backend::Sqlite, |_| {
        args(&["--client-registration", "open", "--outbound-ca", &ca])
    });
    strict.create_user("rui");
    let mut b = signed_in(&strict, "rui");
    refused(&mut b, &good);
    refused(&mut b, "https://10.1.2.3/client.json");
    assert!(
        strict.gh.logs().contains("not a public address"),
        "{}",
        strict.gh.logs()
    );
}

/// A client chooses its id_token algorithm among those with a key: one without a key exits
/// 64 naming the flag; HS256 and `none` are not choices at all.
#[test]
fn each_client_signs_its_id_tokens_with_its_own_algorithm() {
    let site = Site::start("oidc-alg", Backend::Sqlite);
    site.create_user("sol");
    let create = |alg: &str| {
        site.cli(&[
            "client",
            "create",
            "--json",
            "--name",
            "Alg",
            "--grant",
            "authorization_code",
            "--redirect-uri",
            CALLBACK,
            "--id-token-alg",
            alg,
        ])
    };
    let out = create("ES256");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--id-token-alg") && stderr.contains("keys generate"),
        "{stderr}"
    );
    for never in ["HS256", "none"] {
        let out = create(never);
        assert_eq!(out.status.code(), Some(64), "{never} was taken: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--id-token-alg"));
    }
    let data = site.dir.join("data");
    let out = gatehouse_cli(&[
        "keys",
        "generate",
        "--data-dir",
        &data,
        "--alg",
        "ES256",
        "--activate-in",
        "0s",
    ]);
    assert!(out.status.success(), "{out:?}");
    let made: serde_json::Value = serde_json::from_str(&cli_stdout(&create("ES256"))).unwrap();
    let (id, secret) = (
        made["client_id"].as_str().unwrap(),
        made["client_secret"].as_str().unwrap(),
    );
    // The server reads the new key on SIGHUP, as after any `keys generate`.
    assert!(send_signal(site.gh.pid(), libc::SIGHUP));
    assert!(site
        .gh
        .wait_for_log("keys reloaded", Duration::from_secs(5)));
    let mut b = signed_in(&site, "sol");
    let (path, verifier) = crate::registry::authorize_path(id, "openid");
    let page = b.get(&path);
    let back = callback(&answer_consent(&mut b, &page, "allow"));
    let v = crate::registry::redeem(&site, id, secret, &back["code"], &verifier);
    let (_, header) = verified(&site, v["id_token"].as_str().unwrap());
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    // The CLI changes it back, and the next id_token follows.
    let out = site.cli(&["client", "update", id, "--id-token-alg", "RS256"]);
    assert!(out.status.success(), "{out:?}");
    let (path, verifier) = crate::registry::authorize_path(id, "openid");
    let back = callback(&b.get(&path));
    let v = crate::registry::redeem(&site, id, secret, &back["code"], &verifier);
    assert_eq!(
        verified(&site, v["id_token"].as_str().unwrap()).1.alg,
        jsonwebtoken::Algorithm::RS256
    );
}
