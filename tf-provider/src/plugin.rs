//! go-plugin: the magic cookie, protocol negotiation, the handshake line, AutoMTLS and
//! the side services (health, controller, stdio, broker).
//!
//! TLS follows what works with Terraform's P-521 client certificates: rustls with the
//! aws-lc-rs provider (ring cannot verify P-521 signatures, so Terraform would send no
//! certificate), a self-signed P-256 server certificate, and the client certificate from
//! `PLUGIN_CLIENT_CERT` pinned byte for byte by a custom verifier (Terraform's certificate
//! is marked as a CA, which webpki refuses as an end-entity certificate).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use futures::Stream;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::proto::plugin::{
    self as gp, grpc_broker_server, grpc_controller_server, grpc_stdio_server,
};
use crate::proto::{tfplugin5, tfplugin6};
use crate::provider::{Core, ProviderService};

/// Environment variable holding the magic cookie.
pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
/// Terraform's magic cookie value.
pub const MAGIC_COOKIE_VALUE: &str =
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// go-plugin core protocol version.
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// Plugin protocols served, best first.
pub const PROTOCOLS: [u32; 2] = [6, 5];

/// Picks the highest protocol we serve from `PLUGIN_PROTOCOL_VERSIONS` (comma separated).
/// With no list, the newest protocol.
pub fn negotiate(offered: Option<&str>) -> Option<u32> {
    let Some(offered) = offered.filter(|s| !s.trim().is_empty()) else {
        return Some(PROTOCOLS[0]);
    };
    let offered: Vec<u32> = offered
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    PROTOCOLS.into_iter().find(|p| offered.contains(p))
}

/// The handshake line go-plugin expects on stdout: core protocol, plugin protocol,
/// network (`unix` or `tcp`), address, `grpc`, and the server certificate (base64 DER,
/// unpadded; empty without AutoMTLS).
pub fn handshake_line(
    protocol: u32,
    network: &str,
    addr: &str,
    server_cert_der: Option<&[u8]>,
) -> String {
    let cert = server_cert_der
        .map(|c| base64::engine::general_purpose::STANDARD_NO_PAD.encode(c))
        .unwrap_or_default();
    format!("{CORE_PROTOCOL_VERSION}|{protocol}|{network}|{addr}|grpc|{cert}")
}

/// go-plugin's variable naming the directory for plugin sockets.
pub const SOCKET_DIR_ENV: &str = "PLUGIN_UNIX_SOCKET_DIR";

/// A private directory (mode 0700) holding the plugin's Unix socket, as go-plugin
/// makes one: no other local user can reach the socket. Removed (with the socket) on
/// drop.
#[derive(Debug)]
pub struct SocketDir {
    dir: tempfile::TempDir,
}

impl SocketDir {
    /// Creates it in `PLUGIN_UNIX_SOCKET_DIR`, else the system temporary directory.
    pub fn create() -> anyhow::Result<SocketDir> {
        let base = std::env::var_os(SOCKET_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        SocketDir::create_in(&base)
    }

    /// Creates it in `base`.
    pub fn create_in(base: &std::path::Path) -> anyhow::Result<SocketDir> {
        let private = std::fs::Permissions::from_mode(0o700);
        let dir = tempfile::Builder::new()
            .prefix("imagesync-plugin-")
            .permissions(private.clone())
            .tempdir_in(base)
            .with_context(|| {
                format!("creating the plugin socket directory in {}", base.display())
            })?;
        // Whatever the umask did: owner only, before the socket exists.
        std::fs::set_permissions(dir.path(), private)
            .context("making the plugin socket directory private")?;
        Ok(SocketDir { dir })
    }

    /// The socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("plugin.sock")
    }
}

// === TLS ===

/// Accepts only the exact client certificate Terraform announced.
#[derive(Debug)]
struct PinnedClientCert {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!("rejected a TLS client whose certificate is not Terraform's");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's TLS setup: its certificate (DER, for the handshake line) and config.
pub struct Tls {
    /// The self-signed server certificate.
    pub cert_der: Vec<u8>,
    /// The rustls server configuration.
    pub config: Arc<rustls::ServerConfig>,
}

/// Builds the AutoMTLS server config for the PEM client certificate Terraform sent.
pub fn auto_mtls(client_cert_pem: &str) -> anyhow::Result<Tls> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pinned = CertificateDer::from_pem_slice(client_cert_pem.as_bytes())
        .context("PLUGIN_CLIENT_CERT is not a PEM certificate")?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the server key")?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .context("server certificate parameters")?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "HashiCorp");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(30)).into();
    params.not_after = (now + std::time::Duration::from_secs(60 * 60 * 24 * 365)).into();
    let cert = params
        .self_signed(&key)
        .context("signing the server certificate")?;
    let cert_der = cert.der().to_vec();

    let verifier = PinnedClientCert {
        pinned: pinned.into_owned(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(
            vec![CertificateDer::from(cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .context("TLS server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Tls {
        cert_der,
        config: Arc::new(config),
    })
}

// === go-plugin side services ===

/// Set once Terraform asks the plugin to exit (or SIGTERM arrives); every waiter sees it,
/// including those that start waiting afterwards.
#[derive(Debug, Clone)]
pub struct Stop(Arc<watch::Sender<bool>>);

impl Default for Stop {
    fn default() -> Stop {
        Stop(Arc::new(watch::Sender::new(false)))
    }
}

impl Stop {
    /// Asks everything waiting in [`Stop::requested`] to finish.
    pub fn request(&self) {
        self.0.send_replace(true);
    }

    /// Completes once [`Stop::request`] was called.
    pub async fn requested(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// `plugin.GRPCController`: Terraform asks the plugin to exit.
#[derive(Debug)]
struct Controller {
    stop: Stop,
}

#[tonic::async_trait]
impl grpc_controller_server::GrpcController for Controller {
    async fn shutdown(&self, _: Request<gp::Empty>) -> Result<Response<gp::Empty>, Status> {
        tracing::debug!("shutdown requested");
        self.stop.request();
        Ok(Response::new(gp::Empty {}))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A stream that stays empty and ends when the plugin is asked to stop. The graceful
/// shutdown waits for every open stream, so a stream that never ended kept the process
/// alive until Terraform dropped its connection (about 45 ms after `Shutdown`).
fn until_stopped<T: Send + 'static>(stop: &Stop) -> BoxStream<T> {
    let stop = stop.clone();
    let ended = futures::stream::once(async move { stop.requested().await });
    Box::pin(futures::StreamExt::filter_map(ended, |()| async { None }))
}

/// `plugin.GRPCStdio`: we log to stderr directly, so the stream stays empty until exit.
#[derive(Debug)]
struct Stdio {
    stop: Stop,
}

#[tonic::async_trait]
impl grpc_stdio_server::GrpcStdio for Stdio {
    type StreamStdioStream = BoxStream<gp::StdioData>;
    async fn stream_stdio(
        &self,
        _: Request<gp::Empty>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(until_stopped(&self.stop)))
    }
}

/// `plugin.GRPCBroker`: providers open no extra connections; the stream is kept open
/// until the client ends its side or the plugin stops.
#[derive(Debug)]
struct Broker {
    stop: Stop,
}

#[tonic::async_trait]
impl grpc_broker_server::GrpcBroker for Broker {
    type StartStreamStream = BoxStream<gp::ConnInfo>;
    async fn start_stream(
        &self,
        req: Request<Streaming<gp::ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut incoming = req.into_inner();
        // Drain what the client sends; our side ends when the client's does, or at stop.
        let (tx, rx) = mpsc::channel::<Result<gp::ConnInfo, Status>>(1);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = async { while let Ok(Some(_)) = incoming.message().await {} } => {}
                () = stop.requested() => {}
            }
            drop(tx);
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }
}

// === serving ===

/// Runs the plugin: checks the cookie, negotiates, prints the handshake and serves
/// until Terraform asks for shutdown (or closes our stdin side by killing us).
pub async fn serve() -> anyhow::Result<()> {
    if !cookie_ok(std::env::var(MAGIC_COOKIE_KEY).ok().as_deref()) {
        bail!(
            "This binary is a plugin. These are not meant to be executed directly.\n\
             Please execute the program that consumes these plugins (terraform), which will\n\
             load any plugins automatically"
        );
    }
    let protocol = negotiate(std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok().as_deref()).with_context(|| {
        format!(
            "Terraform offered plugin protocols {:?}; this provider speaks {PROTOCOLS:?} (Terraform 0.12 or later)",
            std::env::var("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default()
        )
    })?;
    let tls = match std::env::var("PLUGIN_CLIENT_CERT") {
        Ok(pem) if !pem.trim().is_empty() => Some(auto_mtls(&pem)?),
        _ => None,
    };

    // A Unix socket in a private directory, as go-plugin does: no TCP port, and only
    // this user can connect (with AutoMTLS, only Terraform's certificate on top).
    let socket_dir = SocketDir::create()?;
    let socket = socket_dir.socket();
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("binding the plugin socket {}", socket.display()))?;

    let core = Arc::new(Core::default());
    let stop = core.stop.clone();
    let router = router(protocol, core, stop.clone()).await;

    // Ctrl-C reaches the whole process group; Terraform itself decides when we stop.
    tokio::spawn(async {
        while tokio::signal::ctrl_c().await.is_ok() {
            tracing::debug!("interrupt received; waiting for Terraform to stop the provider");
        }
    });
    // SIGTERM stops serving, so the socket directory is removed.
    let on_term = stop.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    tokio::spawn(async move {
        if term.recv().await.is_some() {
            tracing::debug!("SIGTERM received; stopping");
            on_term.request();
        }
    });

    let line = handshake_line(
        protocol,
        "unix",
        &socket.display().to_string(),
        tls.as_ref().map(|t| t.cert_der.as_slice()),
    );
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").context("writing the handshake")?;
        stdout.flush().context("writing the handshake")?;
    }
    tracing::info!(socket = %socket.display(), protocol, tls = tls.is_some(), "serving");

    let signal = {
        let stop = stop.clone();
        async move { stop.requested().await }
    };
    let serving = async {
        match tls {
            Some(tls) => {
                let incoming = tls_incoming(listener, tokio_rustls::TlsAcceptor::from(tls.config));
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
            None => {
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
        }
    };
    // The graceful shutdown ends with the last open stream; should a connection keep one
    // open anyway, the process still exits shortly after the stop (Terraform waits up to
    // 2 s for it before killing it).
    let served = tokio::select! {
        served = serving => served,
        () = async { stop.requested().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::debug!("connections still open after the shutdown grace; exiting");
            Ok(())
        }
    };
    drop(socket_dir);
    served.context("serving gRPC")
}

/// How long in-flight responses may take to finish once the plugin is asked to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The gRPC services: health, go-plugin's controller, stdio and broker, and the provider
/// on the negotiated protocol.
async fn router(protocol: u32, core: Arc<Core>, stop: Stop) -> tonic::transport::server::Router {
    let service = ProviderService::new(core);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let mut builder = tonic::transport::Server::builder();
    let router = builder
        .add_service(health)
        .add_service(grpc_controller_server::GrpcControllerServer::new(
            Controller { stop: stop.clone() },
        ))
        .add_service(grpc_stdio_server::GrpcStdioServer::new(Stdio {
            stop: stop.clone(),
        }))
        .add_service(grpc_broker_server::GrpcBrokerServer::new(Broker { stop }));
    match protocol {
        6 => router.add_service(tfplugin6::provider_server::ProviderServer::new(service)),
        _ => router.add_service(tfplugin5::provider_server::ProviderServer::new(service)),
    }
}

/// Connections that completed the TLS handshake with Terraform's pinned certificate.
fn tls_incoming(
    listener: UnixListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::UnixStream>, std::io::Error>,
> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    // Terraform never mentions TLS in its own errors; say it here.
                    Err(e) => tracing::error!(error = %e, "TLS handshake with Terraform failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// True when go-plugin's magic cookie is Terraform's.
pub fn cookie_ok(value: Option<&str>) -> bool {
    value == Some(MAGIC_COOKIE_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_highest_common_protocol() {
        assert_eq!(negotiate(Some("5,6")), Some(6));
        assert_eq!(negotiate(Some("6")), Some(6));
        assert_eq!(negotiate(Some("4,5")), Some(5)); // Terraform 0.13
        assert_eq!(negotiate(Some("4")), None);
        assert_eq!(negotiate(None), Some(6));
    }

    #[test]
    fn handshake_line_has_six_fields_and_unpadded_cert() {
        let line = handshake_line(6, "unix", "/tmp/x/plugin.sock", Some(&[1, 2, 3, 4]));
        assert_eq!(line, "1|6|unix|/tmp/x/plugin.sock|grpc|AQIDBA");
        assert_eq!(
            handshake_line(5, "unix", "/tmp/x/plugin.sock", None),
            "1|5|unix|/tmp/x/plugin.sock|grpc|"
        );
    }

    #[test]
    fn the_socket_directory_is_private_and_removed_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let dir = SocketDir::create_in(base.path()).unwrap();
        let path = dir.dir.path().to_path_buf();
        assert_eq!(path.parent(), Some(base.path()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        assert_eq!(dir.socket(), path.join("plugin.sock"));
        let _listener = std::os::unix::net::UnixListener::bind(dir.socket()).unwrap();
        drop(dir);
        assert!(!path.exists(), "socket directory left behind");
    }

    #[test]
    fn pinned_verifier_accepts_only_the_announced_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let tls = auto_mtls(&cert.pem()).unwrap();
        assert!(!tls.cert_der.is_empty());
        assert_eq!(tls.config.alpn_protocols, vec![b"h2".to_vec()]);

        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let v = PinnedClientCert {
            pinned: cert.der().clone().into_owned(),
            algorithms: provider.signature_verification_algorithms,
        };
        let now = UnixTime::now();
        assert!(v.verify_client_cert(cert.der(), &[], now).is_ok());
        let other = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(v.verify_client_cert(other.der(), &[], now).is_err());
        // P-521 must be verifiable (Terraform's client certificates use it).
        assert!(v
            .supported_verify_schemes()
            .contains(&SignatureScheme::ECDSA_NISTP521_SHA512));
    }

    /// The long-lived go-plugin streams end once the plugin is asked to stop, so the
    /// graceful shutdown does not wait for Terraform to drop its connection.
    #[tokio::test]
    async fn open_streams_end_when_the_plugin_stops() {
        use futures::StreamExt as _;
        let stop = Stop::default();
        let mut stream = until_stopped::<gp::StdioData>(&stop);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), stream.next()).await;
        assert!(waited.is_err(), "the stream ended before the stop");
        stop.request();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await;
        assert!(
            matches!(ended, Ok(None)),
            "the stream did not end at the stop"
        );
        // A waiter that starts after the request sees it too.
        tokio::time::timeout(std::time::Duration::from_secs(5), stop.requested())
            .await
            .unwrap();
    }

    #[test]
    fn cookie_is_checked() {
        assert!(cookie_ok(Some(MAGIC_COOKIE_VALUE)));
        assert!(!cookie_ok(Some("nope")));
        assert!(!cookie_ok(None));
    }
}
