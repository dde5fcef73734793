//! How the deployment looks and speaks: `--site-name`, `--theme DIR` (its `style.css` and
//! `logo.svg`, served at `/_theme/…`) and `--mail-templates DIR` (each message's subject and
//! body, minijinja). Read once at start; a file that cannot be read or a template that does not
//! parse (or names a variable its message does not have) exits 64 naming the flag.

use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use axum::Router;
use serde_json::{Map, Value};

use crate::error::ConfigError;

/// Every message gatehouse mails, and the variables its templates may use beside those all
/// have (`username`, `site_name`, `public_url`).
pub const MESSAGES: [(&str, &[&str]); 7] = [
    ("confirm", &["link"]),
    ("reset", &["link"]),
    ("registered_again", &[]),
    ("password_changed", &[]),
    ("email_changed", &["email"]),
    ("security_notice", &["subject", "what", "advice"]),
    ("goodbye", &["by"]),
];

const COMMON: [&str; 3] = ["username", "site_name", "public_url"];

pub struct Look {
    pub site_name: String,
    style: Option<Vec<u8>>,
    logo: Option<Vec<u8>>,
    mail: minijinja::Environment<'static>,
}

/// The look of this process: the built-in one until the server installs its own.
static LOOK: std::sync::LazyLock<RwLock<Arc<Look>>> =
    std::sync::LazyLock::new(|| RwLock::new(Arc::new(Look::default())));

pub fn get() -> Arc<Look> {
    LOOK.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Default for Look {
    fn default() -> Look {
        Look {
            site_name: "gatehouse".into(),
            style: None,
            logo: None,
            mail: minijinja::Environment::new(),
        }
    }
}

impl Look {
    /// Reads the flags' files.
    pub fn load(
        site_name: &str,
        theme: Option<&Path>,
        mail_templates: Option<&Path>,
    ) -> Result<Look, ConfigError> {
        let site_name = site_name.trim();
        if site_name.is_empty() || site_name.chars().count() > 80 {
            return Err(ConfigError::new("--site-name", "give 1 to 80 characters"));
        }
        let mut look = Look {
            site_name: site_name.to_owned(),
            ..Look::default()
        };
        if let Some(dir) = theme {
            let read = |name: &str| -> Result<Option<Vec<u8>>, ConfigError> {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ConfigError::new(
                        "--theme",
                        format!("cannot read {}: {e}", path.display()),
                    )),
                }
            };
            if !dir.is_dir() {
                return Err(ConfigError::new(
                    "--theme",
                    format!("{} is not a directory", dir.display()),
                ));
            }
            look.style = read("style.css")?;
            look.logo = read("logo.svg")?;
            if look.style.is_none() && look.logo.is_none() {
                return Err(ConfigError::new(
                    "--theme",
                    format!("{} holds neither style.css nor logo.svg", dir.display()),
                ));
            }
        }
        if let Some(dir) = mail_templates {
            look.mail = mail_templates_in(dir)?;
        }
        Ok(look)
    }

    /// Makes this the look of the process's pages and mail.
    pub fn install(self) {
        *LOOK.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(self);
    }

    pub fn has_style(&self) -> bool {
        self.style.is_some()
    }

    pub fn has_logo(&self) -> bool {
        self.logo.is_some()
    }

    /// Message `name`'s subject and body from the operator's templates with `vars` (the
    /// common ones added here), each part falling back to `default`'s.
    pub fn message(
        &self,
        name: &str,
        vars: &Map<String, Value>,
        public_url: &str,
        default: (String, String),
    ) -> (String, String) {
        let mut all = vars.clone();
        all.insert("site_name".into(), Value::String(self.site_name.clone()));
        all.insert("public_url".into(), Value::String(public_url.to_owned()));
        let render = |file: String| -> Option<String> {
            let t = self.mail.get_template(&file).ok()?;
            match t.render(Value::Object(all.clone())) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(template = file, error = %e, "mail template failed; the built-in text is sent");
                    None
                }
            }
        };
        let subject = render(format!("{name}.subject.txt"))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .unwrap_or(default.0);
        let body = render(format!("{name}.txt")).unwrap_or(default.1);
        (subject, body)
    }
}

/// The templates of `dir`: `<message>.subject.txt` and `<message>.txt`, each parsed, and
/// rendered once with every variable its message has (strictly: a name it does not have is
/// an error).
fn mail_templates_in(dir: &Path) -> Result<minijinja::Environment<'static>, ConfigError> {
    let bad = |why: String| ConfigError::new("--mail-templates", why);
    let entries = std::fs::read_dir(dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // Plain text: nothing is escaped, and a body keeps its last line break.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    let known = || {
        MESSAGES
            .iter()
            .map(|(m, _)| *m)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with('.') {
            continue;
        }
        let message = file
            .strip_suffix(".subject.txt")
            .or_else(|| file.strip_suffix(".txt"));
        let Some((name, vars)) = message.and_then(|m| MESSAGES.iter().find(|(n, _)| *n == m))
        else {
            return Err(bad(format!(
                "{file}: not a message's template (<message>.subject.txt or <message>.txt; messages: {})",
                known()
            )));
        };
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| bad(format!("{}: {e}", entry.path().display())))?;
        env.add_template_owned(file.clone(), text)
            .map_err(|e| bad(format!("{}: {}", entry.path().display(), describe(&e))))?;
        let sample: Map<String, Value> = COMMON
            .iter()
            .chain(vars.iter())
            .map(|v| (v.to_string(), Value::String(format!("<{v}>"))))
            .collect();
        env.get_template(&file)
            .and_then(|t| t.render(Value::Object(sample)))
            .map_err(|e| {
                bad(format!(
                    "{}: {} (message {name} has: {})",
                    entry.path().display(),
                    describe(&e),
                    COMMON
                        .iter()
                        .chain(vars.iter())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
    }
    Ok(env)
}

/// A template error in one line: what, and where.
fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!(
            "line {line}: {}",
            e.detail().unwrap_or(&e.kind().to_string())
        ),
        None => e.to_string(),
    }
}

/// `/_theme/style.css` and `/_theme/logo.svg`, when the theme has them.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/_theme/style.css",
            axum::routing::get(|| async { asset("style.css") }),
        )
        .route(
            "/_theme/logo.svg",
            axum::routing::get(|| async { asset("logo.svg") }),
        )
}

fn asset(name: &str) -> Response {
    let look = get();
    let (body, kind) = match name {
        "style.css" => (look.style.clone(), "text/css; charset=utf-8"),
        _ => (look.logo.clone(), "image/svg+xml"),
    };
    let Some(body) = body else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // An SVG opened on its own runs no script.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_override_parse_and_name_only_their_variables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("confirm.subject.txt"),
            "Welcome to {{ site_name }}, {{ username }}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("confirm.txt"),
            "Open {{ link }} within 30 minutes.\n",
        )
        .unwrap();
        let look = Look::load("arXiv", None, Some(dir.path())).unwrap();
        let vars: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "username": "ann", "link": "https://x/confirm?token=t"
        }))
        .unwrap();
        let (subject, body) = look.message(
            "confirm",
            &vars,
            "https://x",
            ("built-in".into(), "built-in body".into()),
        );
        assert_eq!(subject, "Welcome to arXiv, ann");
        assert_eq!(body, "Open https://x/confirm?token=t within 30 minutes.\n");
        // A message without a template keeps the built-in text.
        let (s, b) = look.message("reset", &vars, "https://x", ("r".into(), "rb".into()));
        assert_eq!((s.as_str(), b.as_str()), ("r", "rb"));

        for (file, text, says) in [
            ("confirm.txt", "{% if %}", "line 1"),
            ("confirm.txt", "{{ password }}", "message confirm has"),
            ("welcome.txt", "hi", "not a message's template"),
        ] {
            let bad = tempfile::tempdir().unwrap();
            std::fs::write(bad.path().join(file), text).unwrap();
            let e = Look::load("x", None, Some(bad.path())).err().unwrap();
            assert_eq!(e.flag, "--mail-templates");
            assert!(e.reason.contains(says), "{}", e.reason);
        }
    }
}
