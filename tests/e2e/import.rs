//! `gatehouse user import` and `export`: users from other systems sign in with the password
//! hashes those systems made, which are then stored as Argon2id. The hashes are made by the
//! reference implementations (Python passlib, bcrypt and argon2-cffi in target/ci-venv), the
//! tapir and Keycloak ones from their documented formulas with Python's hashlib; the old
//! system's password hook is a small server here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::accounts::{auth, claims, on_both_backends, Backend, Site, COOKIE};
use crate::support::*;

const PW: &str = "correct horse battery staple";
const HOOK_SECRET: &str = "hook-bearer-secret-for-tests";

on_both_backends!(every_scheme_signs_in_once_then_is_argon2id);

/// One hash per scheme of `PW`, as `{"scheme name": password_hash}`, made by Python.
fn reference_hashes() -> Value {
    const SCRIPT: &str = r#"
import base64, hashlib, json, os
import bcrypt
from argon2.low_level import hash_secret, Type
from passlib.hash import pbkdf2_sha512, pbkdf2_sha256, django_pbkdf2_sha256, sha512_crypt
pw = os.environ["PW"]
b = pw.encode()
salt4 = os.urandom(4)
kc_salt = os.urandom(16)
kc_iter = 27500
print(json.dumps({
  "argon2id": hash_secret(b, os.urandom(16), time_cost=1, memory_cost=256, parallelism=1, hash_len=32, type=Type.ID).decode(),
  "argon2i": hash_secret(b, os.urandom(16), time_cost=2, memory_cost=256, parallelism=1, hash_len=32, type=Type.I).decode(),
  "bcrypt": bcrypt.hashpw(b, bcrypt.gensalt(5)).decode(),
  "bcrypt-2y": "$2y$" + bcrypt.hashpw(b, bcrypt.gensalt(5)).decode()[4:],
  "pbkdf2-sha512": pbkdf2_sha512.using(rounds=25000).hash(pw),
  "pbkdf2-sha256": pbkdf2_sha256.using(rounds=29000).hash(pw),
  "django-pbkdf2-sha256": django_pbkdf2_sha256.using(rounds=60000).hash(pw),
  "sha512-crypt": sha512_crypt.using(rounds=5000).hash(pw),
  "keycloak-pbkdf2-sha256": {"scheme": "keycloak-pbkdf2-sha256",
     "hash": base64.b64encode(hashlib.pbkdf2_hmac("sha256", b, kc_salt, kc_iter, 64)).decode(),
     "salt": base64.b64encode(kc_salt).decode(), "iterations": kc_iter},
  "arxiv-tapir": {"scheme": "arxiv-tapir",
     "hash": base64.b64encode(salt4 + hashlib.sha1(salt4 + b"-" + b).digest()).decode()},
  "legacy-hook": {"scheme": "legacy-hook"},
}))
"#;
    let out = std::process::Command::new(venv_python())
        .args(["-c", SCRIPT])
        .env("PW", PW)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The old system's password endpoint: `{"valid": bool}` for `PW`, behind a bearer secret;
/// it counts the calls, and answers nothing while `down`.
struct Hook {
    port: u16,
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl Hook {
    fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (c, d) = (calls.clone(), down.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if d.load(Ordering::SeqCst) {
                    // Down: the connection closes unanswered.
                    drop(stream);
                    continue;
                }
                c.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream);
                let (mut length, mut authorized) = (0usize, false);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line.trim_end() == format!("authorization: Bearer {HOOK_SECRET}")
                        || line.trim_end() == format!("Authorization: Bearer {HOOK_SECRET}")
                    {
                        authorized = true;
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (status, answer) = if !authorized {
                    ("401 Unauthorized", json!({"error": "who are you"}))
                } else {
                    let valid = v["username"] == "u_legacy-hook" && v["password"] == PW;
                    ("200 OK", json!({ "valid": valid }))
                };
                let answer = answer.to_string();
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Hook { port, calls, down }
    }
}

fn scheme_of(site: &Site, user: &str) -> String {
    let v: Value = serde_json::from_str(&cli_stdout(
        &site.cli(&["user", "show", "--json", user], None),
    ))
    .unwrap();
    v["password_scheme"].as_str().unwrap().to_owned()
}

fn sign_in(site: &Site, user: &str, password: &str) -> (u16, Value) {
    let mut b = Browser::new(site.gh.addr());
    let (r, v) = b.json(
        "POST",
        "/api/login",
        &json!({"username": user, "password": password}),
    );
    (r.status, v)
}

fn write_lines(dir: &str, name: &str, lines: &[Value]) -> String {
    let path = format!("{dir}/{name}");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn every_scheme_signs_in_once_then_is_argon2id(backend: Backend) {
    let hook = Hook::start();
    let secret_dir = TempDir::new("hook-secret");
    let secret_file = secret_dir.join("hook.secret");
    std::fs::write(&secret_file, format!("{HOOK_SECRET}\n")).unwrap();
    let hook_url = format!("http://127.0.0.1:{}/check", hook.port);
    let site = Site::start(
        "import",
        backend,
        &[
            "--legacy-password-hook",
            &hook_url,
            "--legacy-password-hook-secret-file",
            &secret_file,
        ],
    );
    let data = site.data();
    let hashes = reference_hashes();
    let schemes: Vec<String> = hashes.as_object().unwrap().keys().cloned().collect();
    let line = |scheme: &str| {
        json!({
            "username": format!("u_{scheme}"), "email": format!("{scheme}@example.org"),
            "email_confirmed": true, "name": format!("User {scheme}"),
            "affiliation": "Cornell", "country": "US", "roles": ["editor"],
            "created_at": "2011-03-04T05:06:07Z", "password_hash": hashes[scheme],
        })
    };
    let mut good: Vec<Value> = schemes.iter().map(|s| line(s)).collect();
    let totp_key = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    good.push(json!({
        "username": "tess", "email": "tess@example.org", "email_confirmed": true,
        "password_hash": hashes["pbkdf2-sha512"], "totp_secret": totp_key,
        "identities": [{"provider": "orcid", "subject": "0000-0002-1825-0097"}],
    }));

    // A file with bad lines: each is reported with its number, and nothing is written.
    let mut bad = good.clone();
    bad.insert(
        1,
        json!({"username": "bad1", "email": "bad1@example.org", "roles": ["wizard"]}),
    );
    bad.insert(
        3,
        json!({"username": "bad2", "email": "bad2@example.org", "password_hash": "md5$abc"}),
    );
    bad.insert(
        4,
        json!({"username": "bad3", "email": "bad3@example.org", "created_at": "last tuesday"}),
    );
    bad.push(json!({"username": "U_bcrypt", "email": "other@example.org"}));
    bad.push(
        json!({"username": "bad4", "email": "bad4@example.org", "password_hash": {"scheme": "md5"}}),
    );
    let path = write_lines(&data, "bad.jsonl", &bad);
    let out = site.cli(&["user", "import", &path], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("line 2: roles: unknown role \"wizard\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 4: password_hash: unknown password hash scheme"),
        "{stderr}"
    );
    assert!(stderr.contains("line 5: created_at:"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "line {}: username: on an earlier line too",
            bad.len() - 1
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "line {}: password_hash: unknown password scheme \"md5\"",
            bad.len()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("5 bad line(s); nothing was imported"),
        "{stderr}"
    );
    assert_eq!(cli_stdout(&site.cli(&["user", "list"], None)), "");

    // A dry run says what it would do, and writes nothing.
    let path = write_lines(&data, "users.jsonl", &good);
    let out = site.cli(&["user", "import", "--dry-run", &path], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("dry run, nothing written: {} created", good.len())),
        "{stderr}"
    );
    assert_eq!(cli_stdout(&site.cli(&["user", "list"], None)), "");

    let out = site.cli(&["user", "import", &path], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_str(&cli_stdout(
        &site.cli(&["user", "show", "--json", "u_bcrypt"], None),
    ))
    .unwrap();
    assert_eq!(shown["roles"], json!(["user", "editor"]));
    assert_eq!(shown["created_at"], 1_299_215_167);
    assert_eq!(
        (shown["affiliation"].as_str(), shown["country"].as_str()),
        (Some("Cornell"), Some("US"))
    );
    assert!(shown["email_confirmed_at"].is_u64());

    // Every scheme: reported as imported, a wrong password refused (and the hash kept), the
    // right one signs in, and the hash read back is Argon2id.
    for scheme in &schemes {
        let user = format!("u_{scheme}");
        let reported = scheme.strip_suffix("-2y").unwrap_or(scheme);
        assert_eq!(scheme_of(&site, &user), reported, "{user}");
        let (status, _) = sign_in(&site, &user, "not the password at all");
        assert_eq!(status, 401, "{user}: a wrong password");
        assert_eq!(scheme_of(&site, &user), reported, "{user}");
        let (status, v) = sign_in(&site, &user, PW);
        assert_eq!(status, 200, "{user}: {v}");
        assert_eq!(
            v["user"]["scopes"],
            json!(["papers:write", "public:read"]),
            "{user}"
        );
        assert_eq!(scheme_of(&site, &user), "argon2id", "{user}: not upgraded");
        let (status, _) = sign_in(&site, &user, PW);
        assert_eq!(status, 200, "{user}: the upgraded hash");
    }
    // The old system was asked twice (the wrong password, then the right one), then never.
    assert_eq!(hook.calls.load(Ordering::SeqCst), 2);

    // An imported authenticator app asks for its code, and the identity is linked.
    let mut b = Browser::new(site.gh.addr());
    let (_, v) = b.json(
        "POST",
        "/api/login",
        &json!({"username": "tess", "password": PW}),
    );
    assert_eq!(v["second_factor_required"], true, "{v}");
    let step = settled_totp_step();
    let (r, _) = b.json(
        "POST",
        "/api/login/second-factor",
        &json!({"method": "totp", "code": totp_code(totp_key, step)}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        claims(&auth(&site.gh, b.cookie(COOKIE).unwrap()))["amr"],
        json!(["pwd", "otp", "mfa"])
    );
    assert_eq!(
        cli_stdout(&site.cli(&["user", "identity", "list", "tess"], None)),
        "orcid\t0000-0002-1825-0097"
    );

    // Again: existing usernames are skipped, or changed with --update.
    let out = site.cli(&["user", "import", &path], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped u_bcrypt: the username exists"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("0 created, 0 updated, {} skipped", good.len())),
        "{stderr}"
    );
    let renamed = json!({"username": "u_bcrypt", "email": "bcrypt@example.org", "name": "Renamed", "email_confirmed": true});
    let path2 = write_lines(&data, "update.jsonl", &[renamed]);
    let out = site.cli(&["user", "import", "--update", &path2], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_str(&cli_stdout(
        &site.cli(&["user", "show", "--json", "u_bcrypt"], None),
    ))
    .unwrap();
    assert_eq!(
        (shown["name"].as_str(), shown["password_scheme"].as_str()),
        (Some("Renamed"), Some("argon2id"))
    );

    // Export: the same fields, hashes included; TOTP secrets only when asked for.
    let export = cli_stdout(&site.cli(&["user", "export"], None));
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), good.len());
    let tess = lines.iter().find(|l| l["username"] == "tess").unwrap();
    assert!(tess["password_hash"]
        .as_str()
        .unwrap()
        .starts_with("$argon2id$"));
    assert_eq!(
        tess["identities"],
        json!([{"provider": "orcid", "subject": "0000-0002-1825-0097"}])
    );
    assert!(tess.get("totp_secret").is_none());
    let export = cli_stdout(&site.cli(&["user", "export", "--include-secrets"], None));
    assert!(
        export.contains(&format!("\"totp_secret\":\"{totp_key}\"")),
        "{export}"
    );
    // What export wrote, import takes back (into an empty site).
    let other = Site::start("import-back", Backend::Sqlite, &[]);
    let back = format!("{}/back.jsonl", other.data());
    std::fs::write(&back, &export).unwrap();
    let out = other.cli(&["user", "import", &back], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sign_in(&other, "u_sha512-crypt", PW).0, 200);

    // The hook down: "try again later", never an accept, and no failure counted.
    let late = json!({"username": "late", "email": "late@example.org", "email_confirmed": true, "password_hash": {"scheme": "legacy-hook"}});
    let path3 = write_lines(&data, "late.jsonl", &[late]);
    assert!(site.cli(&["user", "import", &path3], None).status.success());
    hook.down.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        let (status, v) = sign_in(&site, "late", PW);
        assert_eq!(status, 503, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap_or_default()
                .contains("try again"),
            "{v}"
        );
    }
    assert_eq!(scheme_of(&site, "late"), "legacy-hook");
    assert!(
        site.gh.logs().contains("legacy password hook"),
        "{}",
        site.gh.logs()
    );
    assert!(!site.gh.logs().contains(PW), "a password in the logs");
    assert!(
        !site.gh.logs().contains(HOOK_SECRET),
        "the hook's secret in the logs"
    );
}
