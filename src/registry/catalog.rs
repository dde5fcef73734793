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

/// A base URL's scheme, host and path (without a trailing slash).
fn parts(base_url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = base_url.split_once("://")?;
    Some(match rest.find('/') {
        Some(i) => (scheme, &rest[..i], rest[i..].trim_end_matches('/')),
        None => (scheme, rest, ""),
    })
}

/// Where an API's Protected Resource Metadata is (RFC 9728 §3.1): the well-known name
/// inserted between the host and the path of its base URL.
pub fn metadata_url(base_url: &str) -> Option<String> {
    let (scheme, host, path) = parts(base_url)?;
    Some(format!(
        "{scheme}://{host}/.well-known/oauth-protected-resource{path}"
    ))
}

/// The APIs as the gateway's 401s name them.
pub fn protected(apis: &[Api]) -> Vec<crate::auth::ProtectedResource> {
    apis.iter()
        .filter_map(|api| {
            Some(crate::auth::ProtectedResource {
                base_url: api.base_url.trim_end_matches('/').to_owned(),
                metadata_url: metadata_url(&api.base_url)?,
            })
        })
        .collect()
}

/// `GET /.well-known/oauth-protected-resource/<path>` (RFC 9728 §3): the metadata of the API
/// whose base URL has that path (and this host, when several do): its resource identifier,
/// this server as its authorization server, its scopes. 404 for anything else.
pub async fn resource_metadata(
    State(reg): State<Arc<Registry>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let path = uri
        .path()
        .trim_start_matches("/.well-known/oauth-protected-resource")
        .trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let candidates: Vec<(&Api, &str)> = reg
        .catalog
        .iter()
        .filter_map(|api| parts(&api.base_url).map(|(_, h, p)| (api, h, p)))
        .filter(|(_, _, p)| *p == path)
        .map(|(api, h, _)| (api, h))
        .collect();
    let api = candidates
        .iter()
        .find(|(_, h)| h.eq_ignore_ascii_case(host))
        .or(candidates.first())
        .map(|(api, _)| *api);
    let Some(api) = api else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "not_found"})),
        )
            .into_response();
    };
    let mut body = serde_json::json!({
        "resource": api.base_url,
        "authorization_servers": [reg.issuer()],
        "scopes_supported": api.scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": api.name,
    });
    if !api.docs.is_empty() {
        body["resource_documentation"] = serde_json::json!(api.docs);
    }
    let mut r = axum::Json(body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_sits_between_host_and_path() {
        assert_eq!(
            metadata_url("https://example.org/api/papers/").as_deref(),
            Some("https://example.org/.well-known/oauth-protected-resource/api/papers")
        );
        assert_eq!(
            metadata_url("https://api.example.org").as_deref(),
            Some("https://api.example.org/.well-known/oauth-protected-resource")
        );
    }
}
