//! TLS for the HTTP client: the rustls configuration, with a certificate verifier that loads
//! the system's CA roots only when a handshake first needs them.
//!
//! Loading the roots means reading and parsing every certificate in `/etc/ssl/certs` (145
//! on Debian, some files twice: the bundle and the directory), 2-4 ms of a process's start.
//! A call that only talks plain HTTP to registries listed as insecure never needs them, and
//! one that talks HTTPS needs them only when the first server certificate arrives, a TCP
//! and a TLS round trip after the first connect: [`LazyVerifier::prefetch`] loads them on a
//! thread of their own meanwhile. Verification itself is rustls-platform-verifier's, the
//! one reqwest uses by default, unchanged.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::Error;

type Built = Result<Arc<dyn ServerCertVerifier>, rustls::Error>;
type Build = Box<dyn Fn() -> Built + Send + Sync>;

/// A verifier built on first use (or by [`LazyVerifier::prefetch`]), then used for every
/// handshake. A failure to build (no CA roots on the system and no CA file) is kept and
/// fails each handshake with it; plain HTTP is unaffected.
pub(crate) struct LazyVerifier {
    build: Build,
    built: OnceLock<Built>,
    prefetching: AtomicBool,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for LazyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyVerifier")
            .field("built", &self.built.get().map(|b| b.is_ok()))
            .finish()
    }
}

impl LazyVerifier {
    /// The platform verifier: the system's roots plus `extra` (the user's CA file).
    pub(crate) fn platform(
        extra: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> LazyVerifier {
        let p = provider.clone();
        LazyVerifier::new(
            Box::new(move || {
                rustls_platform_verifier::Verifier::new_with_extra_roots(extra.clone(), p.clone())
                    .map(|v| Arc::new(v) as Arc<dyn ServerCertVerifier>)
            }),
            provider,
        )
    }

    fn new(build: Build, provider: Arc<CryptoProvider>) -> LazyVerifier {
        LazyVerifier {
            build,
            built: OnceLock::new(),
            prefetching: AtomicBool::new(false),
            provider,
        }
    }

    /// Starts building the verifier on a thread of its own, once; returns at once. A
    /// handshake that needs it before it is done waits for that build, never starts a
    /// second. If no thread can be started, the first handshake builds it.
    pub(crate) fn prefetch(self: &Arc<Self>) {
        if self.built.get().is_some() || self.prefetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("imagesync-ca-roots".into())
            .spawn(move || {
                me.get();
            });
        if let Err(error) = started {
            tracing::debug!(%error, "CA roots not loaded ahead: the first TLS handshake loads them");
        }
    }

    fn get(&self) -> &Built {
        self.built.get_or_init(|| {
            let built = (self.build)();
            if let Err(error) = &built {
                tracing::warn!(%error, "no TLS certificate verifier: HTTPS registries fail");
            }
            built
        })
    }

    fn inner(&self) -> Result<&Arc<dyn ServerCertVerifier>, rustls::Error> {
        self.get().as_ref().map_err(Clone::clone)
    }
}

impl ServerCertVerifier for LazyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    /// Asked for the ClientHello, before any certificate: answered from the crypto
    /// provider, as the platform verifier (WebPKI's) answers, without loading the roots.
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client's TLS configuration: TLS 1.2 and 1.3, the lazy platform verifier with the
/// certificates of `ca_file` (PEM) added to the system's roots, ALPN `http/1.1` only (see
/// `build_http` on why not HTTP/2). Fails on an unreadable CA file or one without valid
/// certificates.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
) -> crate::error::Result<(rustls::ClientConfig, Arc<LazyVerifier>)> {
    let extra_roots = match ca_file {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(LazyVerifier::platform(extra_roots, provider.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("building the TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, verifier))
}

fn read_ca_file(path: &Path) -> crate::error::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| Error::Io {
        context: format!("reading CA file {}", path.display()),
        source: e,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Config(format!(
                "CA file {}: not a PEM certificate bundle: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "CA file {} contains no PEM certificates",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    //! The laziness, with a counting fake in place of the platform verifier (the real
    //! one's verification is covered by the e2e TLS tests against real registries).
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counting(result: fn() -> Built) -> (Arc<LazyVerifier>, Arc<AtomicUsize>) {
        let builds = Arc::new(AtomicUsize::new(0));
        let b = builds.clone();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let v = LazyVerifier::new(
            Box::new(move || {
                b.fetch_add(1, Ordering::SeqCst);
                result()
            }),
            provider,
        );
        (Arc::new(v), builds)
    }

    fn platform_ok() -> Built {
        rustls_platform_verifier::Verifier::new_with_extra_roots(
            Vec::new(),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .map(|v| Arc::new(v) as Arc<dyn ServerCertVerifier>)
    }

    fn no_roots() -> Built {
        Err(rustls::Error::General("no CA roots (fake)".into()))
    }

    #[test]
    fn nothing_is_loaded_until_a_handshake_needs_it_and_then_once() {
        let (v, builds) = counting(platform_ok);
        // The ClientHello's question does not load the roots.
        assert!(!v.supported_verify_schemes().is_empty());
        assert_eq!(builds.load(Ordering::SeqCst), 0);
        let cert = CertificateDer::from(vec![0x30, 0x00]);
        let name = ServerName::try_from("registry.test").unwrap();
        // Garbage is refused by the real verifier behind it, built now.
        assert!(v
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .is_err());
        assert!(v
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .is_err());
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_prefetch_builds_once_however_often_it_is_asked() {
        let (v, builds) = counting(platform_ok);
        for _ in 0..8 {
            v.prefetch();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while v.built.get().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A handshake after (or during) the prefetch uses its result.
        let _ = v.inner();
        v.prefetch();
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_verifier_that_cannot_be_built_fails_every_handshake_with_its_reason() {
        let (v, builds) = counting(no_roots);
        let cert = CertificateDer::from(vec![0x30, 0x00]);
        let name = ServerName::try_from("registry.test").unwrap();
        for _ in 0..2 {
            let err = v
                .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .unwrap_err();
            assert!(err.to_string().contains("no CA roots"), "{err}");
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }
}
