//! `GET /api`: the landing page of the deployment's APIs (`--api-catalog FILE`, TOML): what
//! each is, where it lives, which scopes it needs and where its documentation is, as JSON for
//! programs and as a page for people (by `Accept`), with the ways to get a token.
//!
//! ```toml
//! [[api]]
//! name = "Papers"
//! description = "Search and fetch papers."
//! base_url = "https://example.org/api/papers"
//! scopes = ["papers:read"]
//! docs = "https://example.org/docs/papers"
//! ```

use std::path::Path;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Registry;
use crate::accounts::pages::Page;
use crate::accounts::web::{self, Ctx};
use crate::error::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub base_url: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub docs: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    api: Vec<Api>,
}

/// Reads the catalog; no file, no APIs.
pub fn load(path: Option<&Path>) -> Result<Vec<Api>, ConfigError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "--api-catalog",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let file: CatalogFile = toml::from_str(&text).map_err(|e| {
        ConfigError::new(
            "--api-catalog",
            format!("{}: {}", path.display(), e.message()),
        )
    })?;
    for api in &file.api {
        if api.name.trim().is_empty() || !api.base_url.starts_with("http") {
            return Err(ConfigError::new(
                "--api-catalog",
                format!(
                    "every [[api]] needs a name and an http(s) base_url ({:?})",
                    api.name
                ),
            ));
        }
    }
    Ok(file.api)
}

#[derive(Template)]
#[template(path = "catalog.html")]
struct CatalogPage<'a> {
    page: Page,
    apis: &'a [Api],
    issuer: &'a str,
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

pub async fn catalog(State(reg): State<Arc<Registry>>, ctx: Ctx, headers: HeaderMap) -> Response {
    let issuer = reg.issuer();
    let mut r = if wants_html(&headers) {
        web::html(
            &reg.accounts,
            &ctx,
            StatusCode::OK,
            CatalogPage {
                page: ctx.page("api"),
                apis: &reg.catalog,
                issuer,
            },
        )
    } else {
        axum::Json(serde_json::json!({
            "apis": reg.catalog,
            "authorization_server": format!("{issuer}/.well-known/oauth-authorization-server"),
            "token_endpoint": format!("{issuer}/oauth/token"),
            "personal_access_tokens": format!("{issuer}/account/tokens"),
        }))
        .into_response()
    };
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}
