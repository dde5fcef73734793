//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, which the MCP
//! authorization spec prefers to dynamic registration): a `client_id` that is an https URL
//! names a JSON document at that URL describing the client. With `--client-registration
//! open`, such a client needs no registration: its document is fetched through the outbound
//! client (https, public addresses only unless allowed, no redirects, at most
//! [`MAX_DOCUMENT`] bytes, within the time cap), checked, and kept [`CACHE_FOR`].
//!
//! The document must name itself (`client_id` equal to its URL) and list exact
//! `redirect_uris`. Its client is public (no secret can be published), may use the code and
//! refresh grants, and gets only `--self-registered-scopes`. Its users consent to it as to
//! any other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::clients::{check_redirect_uri, Client};
use super::Registry;
use crate::accounts::outbound::Trust;

/// The largest document read.
pub const MAX_DOCUMENT: usize = 5 * 1024;
/// How long a fetched document is believed.
pub const CACHE_FOR: Duration = Duration::from_secs(300);
/// The most documents kept (a flood of made-up URLs cannot grow it without end).
const CACHE_ENTRIES: usize = 1000;

/// Whether `client_id` names a metadata document rather than a registered client.
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

#[derive(Deserialize)]
struct Document {
    client_id: String,
    #[serde(default)]
    client_name: String,
    #[serde(default)]
    client_uri: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

/// Fetched documents by URL, with when they were fetched.
#[derive(Default)]
pub struct Cache(Mutex<HashMap<String, (Instant, Client)>>);

impl Registry {
    /// The client of `url`'s metadata document: cached, or fetched and checked now. `Err`
    /// says why it cannot be used (for the log; the caller answers as for an unknown client).
    pub(super) async fn document_client(&self, url: &str) -> Result<Client, String> {
        if self.registration != super::clients::ClientRegistration::Open {
            return Err("client metadata documents need --client-registration open".into());
        }
        if let Some((at, c)) = self
            .documents
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
        {
            if at.elapsed() < CACHE_FOR {
                return Ok(c.clone());
            }
        }
        let client = self.fetch_document(url).await.inspect_err(|why| {
            tracing::info!(client_id = %crate::untrusted::Untrusted(url), why = %why, "client metadata document refused");
        })?;
        let mut cache = self.documents.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(url.to_owned(), (Instant::now(), client.clone()));
        Ok(client)
    }

    async fn fetch_document(&self, url: &str) -> Result<Client, String> {
        check_url(url)?;
        let answer = self
            .accounts
            .outbound
            .get(url, Trust::Supplied, MAX_DOCUMENT)
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != axum::http::StatusCode::OK {
            return Err(format!(
                "it answered {} (redirects are not followed)",
                answer.status
            ));
        }
        let doc: Document = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("not a metadata document: {e}"))?;
        if doc.client_id != url {
            return Err("its client_id is not its own URL".into());
        }
        if doc.client_secret.is_some()
            || doc
                .token_endpoint_auth_method
                .as_deref()
                .is_some_and(|m| m != "none" && m != "private_key_jwt")
        {
            return Err("a published document cannot hold a secret".into());
        }
        if doc.token_endpoint_auth_method.as_deref() == Some("private_key_jwt") {
            return Err(
                "private_key_jwt is not offered; use token_endpoint_auth_method none".into(),
            );
        }
        if doc.redirect_uris.is_empty() {
            return Err("it lists no redirect_uris".into());
        }
        for uri in doc
            .redirect_uris
            .iter()
            .chain(&doc.post_logout_redirect_uris)
        {
            check_redirect_uri(uri).map_err(|why| format!("{uri:?}: {why}"))?;
        }
        let scopes = match &doc.scope {
            Some(asked) => super::grants::scope_list(asked)
                .into_iter()
                .filter(|s| self.self_registered_scopes.contains(s))
                .collect(),
            None => self.self_registered_scopes.clone(),
        };
        let host = url
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_owned();
        Ok(Client::from_document(
            url,
            super::clients::display_name(&doc.client_name, host),
            if doc.client_uri.starts_with("https://") {
                doc.client_uri
            } else {
                String::new()
            },
            doc.redirect_uris,
            doc.post_logout_redirect_uris,
            scopes,
        ))
    }

    /// A client by id: a registered one, or (an https URL) the client of its metadata
    /// document. `Ok(None)` for neither.
    pub(super) async fn find_client(
        &self,
        id: &str,
    ) -> Result<Option<Client>, crate::accounts::db::DbError> {
        if is_document_url(id) {
            return Ok(self.document_client(id).await.ok());
        }
        super::clients::find(&self.accounts.db, id).await
    }
}

/// A document URL must be https with a path, and no fragment, credentials or dot segments.
fn check_url(url: &str) -> Result<(), String> {
    crate::accounts::outbound::check_supplied(url)?;
    let rest = url.trim_start_matches("https://");
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    if path.len() < 2 {
        return Err("a client_id URL has a path".into());
    }
    if url.contains('#') || path.split(['/', '?']).any(|s| s == "." || s == "..") {
        return Err("a client_id URL has no fragment and no dot segments".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_url_is_https_with_a_path() {
        assert!(check_url("https://app.example.org/client.json").is_ok());
        for bad in [
            "http://app.example.org/client.json",
            "https://app.example.org",
            "https://app.example.org/",
            "https://app.example.org/a/../client.json",
            "https://app.example.org/client.json#x",
            "https://user:pw@app.example.org/client.json",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
