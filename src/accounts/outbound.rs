//! The one outbound HTTP client: every request gatehouse makes to another system (a client's
//! back-channel logout, and what later work fetches) goes through [`Outbound::send`], with one
//! policy for URLs that someone other than the operator supplied.
//!
//! - [`Trust::Operator`]: a URL from the operator's own files or the admin CLI, taken as it
//!   is (http allowed, any address).
//! - [`Trust::Supplied`]: a URL a user or a self-registering client gave. It must be https,
//!   and every address its host resolves to must be public: never loopback, private,
//!   link-local, shared (CGNAT), multicast or unspecified (unless `--outbound-allow-private`).
//!   The host is resolved once and the connection goes to the address that was checked, so a
//!   second DNS answer cannot point it elsewhere (DNS rebinding).
//!
//! For both: no redirects are followed (a 3xx is an answer like any other), the answer's body
//! is capped at [`MAX_BODY`], and the whole exchange at [`TIME_CAP`]. TLS is rustls with the
//! system's roots plus `--outbound-ca`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

use crate::error::ConfigError;
use crate::secret::Secret;

/// The largest answer body read.
pub const MAX_BODY: usize = 256 * 1024;
/// The longest an exchange (resolution, connection, TLS, request, answer) may take.
pub const TIME_CAP: Duration = Duration::from_secs(10);

/// Who supplied a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Operator,
    Supplied,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The URL breaks the policy: never sent.
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {}s", TIME_CAP.as_secs())]
    TimedOut,
}

/// An answer: status, and the body (at most [`MAX_BODY`]).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

pub struct Outbound {
    tls: Arc<rustls::ClientConfig>,
    allow_private: bool,
}

impl Outbound {
    /// The client, trusting the system's roots and the certificates in `extra_ca` (PEM).
    pub fn new(extra_ca: Option<&Path>, allow_private: bool) -> Result<Outbound, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            let bad = |e: &dyn std::fmt::Display| {
                ConfigError::new("--outbound-ca", format!("{}: {e}", path.display()))
            };
            let mut added = 0;
            for cert in
                rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?
            {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                added += 1;
            }
            if added == 0 {
                return Err(bad(&"holds no certificate"));
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("--outbound-ca", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Outbound {
            tls: Arc::new(tls),
            allow_private,
        })
    }

    /// POSTs `body` (of `content_type`) to `url`.
    pub async fn post(
        &self,
        url: &str,
        trust: Trust,
        content_type: &str,
        body: String,
    ) -> Result<Answer, OutboundError> {
        self.send(
            Method::POST,
            url,
            trust,
            Some((content_type, body)),
            MAX_BODY,
        )
        .await
    }

    /// GETs `url`, reading at most `cap` bytes of the answer (at most [`MAX_BODY`]).
    pub async fn get(&self, url: &str, trust: Trust, cap: usize) -> Result<Answer, OutboundError> {
        self.send(Method::GET, url, trust, None, cap.min(MAX_BODY))
            .await
    }

    /// The same as [`Outbound::post`] and [`Outbound::get`], with an `Authorization` header
    /// (`Bearer …`, `Basic …`): `body` `None` is a GET.
    pub async fn authorized(
        &self,
        url: &str,
        trust: Trust,
        authorization: &Secret<String>,
        body: Option<(&str, String)>,
    ) -> Result<Answer, OutboundError> {
        let target = Target::parse(url, trust)?;
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let headers = [("authorization", authorization.expose().as_str())];
        tokio::time::timeout(
            TIME_CAP,
            self.exchange(method, &target, trust, &headers, body, MAX_BODY),
        )
        .await
        .map_err(|_| OutboundError::TimedOut)?
    }

    /// POSTs `body` (of `content_type`) to `url` with these extra headers (a webhook's
    /// signature).
    pub async fn post_with(
        &self,
        url: &str,
        trust: Trust,
        headers: &[(&str, String)],
        content_type: &str,
        body: String,
    ) -> Result<Answer, OutboundError> {
        let target = Target::parse(url, trust)?;
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = Some((content_type, body));
        tokio::time::timeout(
            TIME_CAP,
            self.exchange(Method::POST, &target, trust, &headers, body, MAX_BODY),
        )
        .await
        .map_err(|_| OutboundError::TimedOut)?
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        trust: Trust,
        body: Option<(&str, String)>,
        cap: usize,
    ) -> Result<Answer, OutboundError> {
        let target = Target::parse(url, trust)?;
        tokio::time::timeout(
            TIME_CAP,
            self.exchange(method, &target, trust, &[], body, cap),
        )
        .await
        .map_err(|_| OutboundError::TimedOut)?
    }

    async fn exchange(
        &self,
        method: Method,
        target: &Target,
        trust: Trust,
        headers: &[(&str, &str)],
        body: Option<(&str, String)>,
        cap: usize,
    ) -> Result<Answer, OutboundError> {
        let addr = self.resolve(target, trust).await?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| OutboundError::Failed(format!("cannot connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut request = Request::builder()
            .method(method)
            .uri(target.path_and_query.as_str())
            .header(hyper::header::HOST, target.authority.as_str())
            .header(hyper::header::USER_AGENT, "gatehouse")
            .header(hyper::header::ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some((content_type, body)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                Full::new(Bytes::from(body))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| OutboundError::Failed(e.to_string()))?;
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| OutboundError::Refused(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| OutboundError::Failed(format!("TLS with {}: {e}", target.host)))?;
            round_trip(TokioIo::new(tls), request, cap).await
        } else {
            round_trip(TokioIo::new(tcp), request, cap).await
        }
    }

    /// The one address the request goes to: for a supplied URL, every address of the host
    /// must pass the policy (a name with one private address among public ones is refused).
    async fn resolve(&self, target: &Target, trust: Trust) -> Result<SocketAddr, OutboundError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| OutboundError::Failed(format!("cannot resolve {}: {e}", target.host)))?
            .collect();
        if trust == Trust::Supplied && !self.allow_private {
            if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(OutboundError::Refused(format!(
                    "{} resolves to {}, which is not a public address",
                    target.host,
                    bad.ip()
                )));
            }
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| OutboundError::Failed(format!("{} has no address", target.host)))
    }
}

async fn round_trip<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
    cap: usize,
) -> Result<Answer, OutboundError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| OutboundError::Failed(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| OutboundError::Failed(e.to_string()))?;
    let status = answer.status();
    let body = Limited::new(answer.into_body(), cap)
        .collect()
        .await
        .map_err(|e| OutboundError::Failed(format!("the answer: {e}")))?
        .to_bytes();
    Ok(Answer { status, body })
}

/// Whether `url` may be supplied by a user or a client: https, with a host and no
/// credentials (its addresses are checked when it is used, as they may change).
pub fn check_supplied(url: &str) -> Result<(), String> {
    Target::parse(url, Trust::Supplied)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A URL taken apart.
#[derive(Debug)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str, trust: Trust) -> Result<Target, OutboundError> {
        let refused = |why: &str| OutboundError::Refused(format!("{url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| refused("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if trust == Trust::Operator => false,
            Some("http") => return Err(refused("must be https")),
            _ => return Err(refused("must be an http(s) URL")),
        };
        let authority = uri.authority().ok_or_else(|| refused("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(refused("must not carry credentials"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Target {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            host,
            path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        })
    }
}

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// shared, multicast, documentation or unspecified; an IPv4 address inside IPv6, mapped,
/// compatible or 6to4, is judged as IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            // IPv4-compatible (::a.b.c.d, deprecated) and 6to4 (2002:a.b.c.d::/48) carry an
            // IPv4 address that is judged as itself.
            if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return embedded(seg[6], seg[7]);
            }
            if seg[0] == 0x2002 {
                return embedded(seg[1], seg[2]);
            }
            let first = seg[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::169.254.169.254",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "fec0::1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad} passed");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(good.parse().unwrap()), "{good} refused");
        }
    }

    #[test]
    fn a_supplied_url_must_be_https_without_credentials() {
        assert!(Target::parse("http://example.org/x", Trust::Supplied).is_err());
        assert!(Target::parse("https://u:p@example.org/x", Trust::Supplied).is_err());
        assert!(Target::parse("ftp://example.org/x", Trust::Operator).is_err());
        let t = Target::parse("http://127.0.0.1:8080/logout?a=1", Trust::Operator).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.path_and_query, "/logout?a=1");
        let t = Target::parse("https://[::1]/x", Trust::Supplied).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
    }

    #[tokio::test]
    async fn a_supplied_url_to_loopback_is_never_sent() {
        let out = Outbound::new(None, false).unwrap();
        let e = out
            .get("https://localhost:1/x", Trust::Supplied, MAX_BODY)
            .await
            .unwrap_err();
        assert!(matches!(e, OutboundError::Refused(_)), "{e}");
    }
}
