//! Certificates for test servers: a throw-away CA and a server certificate for
//! `127.0.0.1`/`localhost`, and a self-signed signing certificate for the token server.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// PEM files of a CA and a server certificate it signed.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate (what clients trust, e.g. `--ca-file`).
    pub ca_pem: PathBuf,
    /// The server certificate chain (leaf, then CA).
    pub cert_pem: PathBuf,
    /// The server's private key (PKCS#8).
    pub key_pem: PathBuf,
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir`.
pub fn write_server_tls(dir: &Path) -> Result<TlsFiles> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "imagesync e2e test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("self-signing the CA")?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().context("generating the server key")?;
    let mut params =
        CertificateParams::new(vec!["localhost".to_string()]).context("server params")?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;

    let files = TlsFiles {
        ca_pem: dir.join("ca.pem"),
        cert_pem: dir.join("server.pem"),
        key_pem: dir.join("server.key"),
    };
    std::fs::write(&files.ca_pem, ca_cert.pem()).context("writing ca.pem")?;
    std::fs::write(&files.cert_pem, format!("{}{}", cert.pem(), ca_cert.pem()))
        .context("writing server.pem")?;
    std::fs::write(&files.key_pem, key.serialize_pem()).context("writing server.key")?;
    Ok(files)
}

/// A self-signed P-256 certificate and its PKCS#8 key, for signing registry tokens.
pub struct SigningCert {
    /// DER of the certificate (goes into the JWT `x5c` header).
    pub cert_der: Vec<u8>,
    /// PEM of the certificate (the registry's `rootcertbundle`).
    pub cert_pem: String,
    /// PKCS#8 DER of the private key.
    pub key_pkcs8: Vec<u8>,
}

/// Generates the token server's signing certificate.
pub fn signing_cert() -> Result<SigningCert> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the signing key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("signing cert params")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "imagesync e2e token signer");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .self_signed(&key)
        .context("self-signing the token certificate")?;
    Ok(SigningCert {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_pkcs8: key.serialize_der(),
    })
}
