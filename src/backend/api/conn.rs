//! The timed request's own connection. A client with keep-alive pays DNS, TCP and (for https) the
//! TLS handshake once, not per request, so by default the connection is opened *before* the clock
//! starts and its setup time is recorded apart as `connect_ms`; `--fresh-connection` opens it
//! inside the clock instead (what a client without keep-alive pays). Either way every timed
//! request gets a connection of its own, opened just before it and closed after it: llama-server
//! closes a connection after a streamed answer, and reusing a pooled one races with that close
//! ("connection closed before message completed").
//!
//! Built on hyper's low-level HTTP/1.1 client so that connecting and sending are separate steps
//! (reqwest connects inside `send`). The untimed helper requests (probe, tokenize, template) keep
//! reqwest.

use crate::secret::Secret;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Why the server's address or its TLS trust could not be set up (at open, before any run).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--api-url {0}: expected http://host[:port][/path] or https://...")]
    Url(String),
    #[error("--api-ca-cert {0}: {1}")]
    CaCert(String, String),
    #[error("--api-ca-cert {0}: the file has no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCert(String),
    #[error(
        "TLS: no trusted root certificates (none in the system store; pass --api-ca-cert FILE)"
    )]
    NoRoots,
    #[error("TLS: {0}")]
    Tls(String),
}

/// Why one connection or request failed (a failed row, never a crash).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connect to {addr}: no answer after {secs:.0} s (--connect-timeout)")]
    ConnectTimeout { addr: String, secs: f64 },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(hyper::Error),
    #[error("sending the request: {0}")]
    Send(hyper::Error),
    #[error("the API key has characters an HTTP header cannot carry")]
    BadKey,
    #[error("building the request: {0}")]
    Request(hyper::http::Error),
}

/// Where timed requests go: host, port, path prefix and, for https, the TLS client.
pub(super) struct Target {
    host: String,
    port: u16,
    /// The `Host` header (host, and the port when the URL names one).
    authority: String,
    /// The URL's path before the endpoint's (`/proxy` in `https://h/proxy`), without a trailing `/`.
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// One open connection, ready for exactly one request. Dropping it closes the connection.
pub(super) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
    /// DNS + TCP connect (+ TLS handshake), ms.
    pub connect_ms: f64,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The driver task owns the socket: ending it closes the connection now, not whenever
        // the runtime next polls it (possibly inside the next run's clock).
        self.driver.abort();
    }
}

impl Target {
    /// Parse `base` (`http[s]://host[:port][/prefix]`); for https build the TLS client from the
    /// system's roots plus `ca_cert` (a PEM file, e.g. a self-signed server's certificate).
    pub fn new(base: &str, ca_cert: Option<&Path>) -> Result<Self, TargetError> {
        let uri: Uri = base.parse().map_err(|_| TargetError::Url(base.into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(TargetError::Url(base.into())),
        };
        let auth = uri
            .authority()
            .ok_or_else(|| TargetError::Url(base.into()))?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| TargetError::Url(base.into()))?;
            Some((TlsConnector::from(Arc::new(tls_config(ca_cert)?)), name))
        } else {
            None
        };
        Ok(Target {
            host: host.to_string(),
            port,
            authority: match auth.port() {
                Some(p) => format!("{}:{p}", auth.host()),
                None => auth.host().to_string(),
            },
            prefix: uri.path().trim_end_matches('/').to_string(),
            tls,
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Open a connection (resolve, connect, TLS handshake, HTTP/1.1 ready) within `timeout`.
    pub async fn open(&self, timeout: Duration) -> Result<Conn, ConnError> {
        let t = Instant::now();
        let (sender, driver) = tokio::time::timeout(timeout, self.connect())
            .await
            .map_err(|_| ConnError::ConnectTimeout {
                addr: self.addr(),
                secs: timeout.as_secs_f64(),
            })??;
        Ok(Conn {
            sender,
            driver,
            connect_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    async fn connect(
        &self,
    ) -> Result<(SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>), ConnError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ConnError::Connect {
                addr: self.addr(),
                source,
            })?;
        // Small writes (the request) go out at once.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => http1(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| ConnError::Tls {
                        addr: self.addr(),
                        source,
                    })?;
                http1(tls).await
            }
        }
    }

    /// A POST of `body` (JSON) to the endpoint `path` below the URL's prefix.
    pub fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        key: Option<&Secret>,
    ) -> Result<Request<Full<Bytes>>, ConnError> {
        let mut req = Request::post(format!("{}{path}", self.prefix))
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/json");
        if let Some(k) = key {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose()))
                .map_err(|_| ConnError::BadKey)?;
            v.set_sensitive(true);
            req = req.header(AUTHORIZATION, v);
        }
        req.body(Full::new(Bytes::from(body)))
            .map_err(ConnError::Request)
    }
}

/// HTTP/1.1 over an open transport; the connection is driven by a task of the runtime.
async fn http1<T>(
    io: T,
) -> Result<(SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>), ConnError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ConnError::Handshake)?;
    let driver = tokio::spawn(async move {
        // Its errors surface through the request or the body stream.
        let _ = conn.await;
    });
    sender.ready().await.map_err(ConnError::Handshake)?;
    Ok((sender, driver))
}

impl Conn {
    /// Send the request; resolves when the response headers are in.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ConnError> {
        self.sender.send_request(req).await.map_err(ConnError::Send)
    }
}

/// The response body as a stream of byte chunks (trailers, if any, are skipped).
pub(super) fn body_stream(
    resp: Response<Incoming>,
) -> impl Stream<Item = Result<Bytes, hyper::Error>> + Unpin {
    resp.into_body().into_data_stream()
}

/// The TLS client: system roots plus the `--api-ca-cert` file; HTTP/1.1 only.
fn tls_config(ca_cert: Option<&Path>) -> Result<ClientConfig, TargetError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped, like reqwest does; an empty store is refused.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(f) = ca_cert {
        let shown = f.display().to_string();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(f)
            .map_err(|e| TargetError::CaCert(shown.clone(), e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| TargetError::CaCert(shown.clone(), e.to_string()))?;
        if certs.is_empty() {
            return Err(TargetError::NoCert(shown));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| TargetError::CaCert(shown.clone(), e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(TargetError::NoRoots);
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TargetError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Read at most `limit` bytes of a body as text (an error page can be anything).
pub(super) async fn read_bounded(resp: Response<Incoming>, limit: usize) -> String {
    let mut buf = Vec::new();
    let mut stream = body_stream(resp);
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await
    {
        buf.extend_from_slice(&chunk);
        if buf.len() >= limit {
            buf.truncate(limit);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_gives_host_port_prefix_and_host_header() {
        let t = Target::new("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert!(t.tls.is_none());
        let t = Target::new("http://user:pw@example.com/proxy/", None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("example.com", 80, "/proxy")
        );
        // No credentials in the Host header.
        assert_eq!(t.authority, "example.com");
        let t = Target::new("http://[::1]:9000", None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority.as_str()),
            ("::1", "[::1]:9000")
        );
        let req = t.post("/completion", b"{}".to_vec(), None).unwrap();
        assert_eq!(req.uri(), "/completion");
        assert_eq!(req.headers()[HOST], "[::1]:9000");
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn bad_urls_and_certificate_files_name_the_flag() {
        for bad in ["ftp://h", "127.0.0.1:8080", "http://"] {
            let e = Target::new(bad, None).err().unwrap().to_string();
            assert!(e.starts_with("--api-url"), "{bad}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ca.pem");
        std::fs::write(&f, "no pem here\n").unwrap();
        let e = Target::new("https://h", Some(&f))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("--api-ca-cert") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = Target::new("https://h", Some(&d.path().join("missing.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("--api-ca-cert"), "{e}");
    }

    #[test]
    fn the_key_is_a_sensitive_bearer_header() {
        let t = Target::new("http://h:1", None).unwrap();
        let key = crate::secret::Secret::new("sk-123").unwrap();
        let req = t.post("/v1/completions", Vec::new(), Some(&key)).unwrap();
        let v = &req.headers()[AUTHORIZATION];
        assert_eq!(v, "Bearer sk-123");
        assert!(v.is_sensitive());
        let bad = crate::secret::Secret::new("sk\n1").unwrap();
        assert!(matches!(
            t.post("/x", Vec::new(), Some(&bad)),
            Err(ConnError::BadKey)
        ));
    }
}
