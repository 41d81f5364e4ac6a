//! Fakes of services that require mutual TLS on every handshake (ADP does, token request
//! included): certificates made here (a CA, the server's and a client's), and an axum
//! router served behind rustls that refuses a handshake without a client certificate the
//! CA signed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::http::{HeaderMap, Uri};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tower::ServiceExt;

pub const HOST: &str = "mtls.probe.test";

/// A certificate authority, and a client certificate it signed.
pub struct Pki {
    /// The CA (PEM), for the client's trust store.
    pub ca_pem: String,
    /// A client certificate and its key (PEM) the server accepts.
    pub client_cert: String,
    pub client_key: String,
    ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.clone().self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let (client_cert, client_key) = Self::client_of(&issuer);
        Pki {
            ca_pem: ca.pem(),
            client_cert,
            client_key,
            ca: ca.der().clone(),
            issuer,
        }
    }

    fn client_of(issuer: &Issuer<'static, KeyPair>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["streamflow-app".to_string()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Serves `app` over TLS for `names` on an ephemeral loopback port, asking every
    /// client for a certificate this CA signed; returns the port. `handshakes` counts the
    /// connections that completed a handshake.
    pub async fn serve(&self, names: &[&str], app: Router, handshakes: Arc<AtomicU32>) -> u16 {
        let server_key = KeyPair::generate().unwrap();
        let server =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&server_key, &self.issuer)
                .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app, handshakes) =
                    (acceptor.clone(), app.clone(), handshakes.clone());
                tokio::spawn(async move {
                    // A handshake without an acceptable client certificate fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            app.clone().oneshot(request.map(axum::body::Body::new))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        port
    }
}

/// A client certificate and key no ADP CA signed (another authority's).
pub fn stranger_certificate() -> (String, String) {
    let other = Pki::new();
    (other.client_cert, other.client_key)
}

/// The probe's service: a token endpoint and an API that echoes the path and whether the
/// token came with the request.
pub struct MtlsFake {
    pub port: u16,
    pub ca_pem: String,
    pub client_cert: String,
    pub client_key: String,
    /// Requests served (each after a completed handshake).
    pub requests: Arc<AtomicU32>,
}

impl MtlsFake {
    pub async fn start() -> MtlsFake {
        let pki = Pki::new();
        let requests = Arc::new(AtomicU32::new(0));
        let counted = requests.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let path = uri.path().to_string();
                let body = if path == "/token" {
                    r#"{"access_token":"mtls-access-1","token_type":"bearer","expires_in":3600}"#
                        .to_string()
                } else {
                    let bearer = headers.get("authorization").is_some_and(|v| {
                        v.as_bytes().eq_ignore_ascii_case(b"bearer mtls-access-1")
                    });
                    format!(r#"{{"path":"{path}","bearer":{bearer}}}"#)
                };
                ([("content-type", "application/json")], body)
            }
        });
        let port = pki.serve(&[HOST], app, Arc::new(AtomicU32::new(0))).await;
        MtlsFake {
            port,
            ca_pem: pki.ca_pem,
            client_cert: pki.client_cert,
            client_key: pki.client_key,
            requests,
        }
    }
}
