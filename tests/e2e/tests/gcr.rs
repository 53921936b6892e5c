//! End-to-end test: `gcr.io` with Google application default credentials, through
//! `gcp_auth`'s own code. A generated RSA service-account key names a token endpoint on
//! loopback (`token_uri`); gcp_auth signs a JWT with it and exchanges it for an access
//! token; a real distribution registry serving TLS for the name `gcr.io` accepts exactly
//! `oauth2accesstoken` with that token. The CLI runs in a private mount namespace
//! (`unshare -m`) whose bind-mounted `/etc/hosts` maps `gcr.io` to 127.0.0.1, so nothing
//! leaves loopback and the machine's own `/etc/hosts` is untouched. (The registries listen on
//! random loopback ports of the host's network namespace, so the name is `gcr.io:PORT`; the
//! engine treats any port of `gcr.io` as Google's registry.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use imagesync_e2e::fixtures;
use imagesync_e2e::registry::{free_port, registry_binary, Registry};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "ya29.e2e-access-token-7f3a9c";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A token endpoint on loopback: records each request body, answers with [`TOKEN`].
async fn token_endpoint() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then as many body bytes as Content-Length says.
            let body = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(text[end + 4..end + 4 + len].to_owned());
                    }
                }
            };
            if let Some(body) = body {
                seen.lock().unwrap().push(body);
            }
            let json =
                format!(r#"{{"access_token":"{TOKEN}","expires_in":3600,"token_type":"Bearer"}}"#);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                json.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (url, bodies)
}

/// A TCP relay in front of `upstream` that keeps every byte the client sent (the source
/// registry is plain HTTP, so any credential would be visible in it).
async fn recording_relay(upstream: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            let _ = sw.shutdown().await;
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (addr, sent)
}

/// A distribution registry with TLS for `gcr.io` and htpasswd user `oauth2accesstoken`
/// whose password is [`TOKEN`]. Killed on drop.
struct GcrRegistry {
    child: Child,
    port: u16,
}

impl Drop for GcrRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gcr_registry(dir: &Path) -> GcrRegistry {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["gcr.io".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let hash = bcrypt::hash(TOKEN, 4).unwrap();
    std::fs::write(dir.join("htpasswd"), format!("oauth2accesstoken:{hash}\n")).unwrap();
    let port = free_port().unwrap();
    let d = dir.display();
    let config = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {d}/data}}}}\n\
         http:\n  addr: 127.0.0.1:{port}\n  tls: {{certificate: {d}/server.pem, key: {d}/server.key}}\n\
         auth:\n  htpasswd: {{realm: gcr-e2e, path: {d}/htpasswd}}\n"
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let child = Command::new(registry_binary())
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    GcrRegistry { child, port }
}

/// A service-account key for gcp_auth whose `token_uri` is `token_uri`; returns the
/// key file and the public key (PKCS#1 DER) to verify its JWTs with.
fn service_account(dir: &Path, token_uri: &str) -> (std::path::PathBuf, Vec<u8>) {
    let pem = dir.join("sa.pem");
    let der = dir.join("sa.pub.der");
    let ok = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let (p, d) = (pem.display().to_string(), der.display().to_string());
    ok(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p,
    ]);
    ok(&[
        "rsa",
        "-in",
        &p,
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        &d,
    ]);
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "e2e-project",
        "private_key_id": "e2e-key-1",
        "private_key": std::fs::read_to_string(&pem).unwrap(),
        "client_email": "mirror@e2e-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    });
    let file = dir.join("sa.json");
    std::fs::write(&file, key.to_string()).unwrap();
    (file, std::fs::read(&der).unwrap())
}

/// The JWT that gcp_auth posted: signed RS256 by the service-account key, for the token
/// endpoint, asking for the cloud-platform scope.
fn assert_signed_assertion(body: &str, public_key: &[u8], token_uri: &str) {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        "{body}"
    );
    let jwt = form.get("assertion").expect("assertion");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    // base64url, with or without padding.
    let b64 = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let signature = b64.decode(parts[2]).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(signed.as_bytes(), &signature)
    .expect("the JWT is signed by the service-account key");
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], "mirror@e2e-project.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], token_uri);
    assert!(
        claims["scope"].as_str().unwrap_or_default().contains(SCOPE),
        "{claims}"
    );
}

/// Copy from a plain loopback registry to `gcr.io` with application default credentials:
/// gcp_auth's real JWT exchange mints the token, gcr.io accepts it, the source never sees
/// it.
#[tokio::test]
async fn gcr_io_with_application_default_credentials_through_gcp_auth() {
    assert!(
        imagesync_e2e::is_root(),
        "this test needs root for unshare -m (as CI runs it)"
    );
    let work = tempfile::tempdir().unwrap();
    let (token_uri, bodies) = token_endpoint().await;
    let (key_file, public_key) = service_account(work.path(), &token_uri);
    let gcr = gcr_registry(work.path());
    let src = Registry::start().await;
    let (relay, sent_to_source) = recording_relay(src.addr().to_owned()).await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 171).await;

    let hosts = work.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 gcr.io\n").unwrap();
    let dest = format!("gcr.io:{}/e2e-project/app:1", gcr.port);
    let out = tokio::process::Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#,
            "sh",
        ])
        .arg(&hosts)
        .arg(imagesync_e2e::bin("imagesync"))
        .args(["copy", &format!("{relay}/app:1"), &dest, "--no-progress"])
        .args(["--insecure-registry", &relay])
        .arg("--ca-file")
        .arg(work.path().join("ca.pem"))
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key_file)
        .env("DOCKER_CONFIG", "/nonexistent-imagesync-test")
        .env_remove("IMAGESYNC_CREDS")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "copy to gcr.io failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("gcr.io:{}/e2e-project/app@{}", gcr.port, pushed.digest)
    );

    // gcp_auth's own exchange happened, with a JWT signed by the generated key.
    let bodies = bodies.lock().unwrap().clone();
    assert!(
        !bodies.is_empty(),
        "gcp_auth never asked the token endpoint"
    );
    assert_signed_assertion(&bodies[0], &public_key, &token_uri);
    // The source never saw the token, raw or as Basic credentials.
    let sent = String::from_utf8_lossy(&sent_to_source.lock().unwrap()).into_owned();
    assert!(
        sent.contains("/v2/app/manifests/1 HTTP/1.1"),
        "relay saw no manifest request: {sent}"
    );
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("oauth2accesstoken:{TOKEN}"));
    assert!(
        !sent.contains(TOKEN) && !sent.contains(&basic),
        "the Google token reached the source"
    );
    assert!(
        !sent.to_ascii_lowercase().contains("authorization:"),
        "credentials sent to the source"
    );
    // The machine's /etc/hosts does not know gcr.io.
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert!(!host_hosts.contains("gcr.io"), "/etc/hosts changed");
    // Without the token, gcr.io refuses: the credentials were needed.
    let anon = reqwest::Client::builder()
        .tls_certs_merge(
            reqwest::Certificate::from_pem_bundle(
                &std::fs::read(work.path().join("ca.pem")).unwrap(),
            )
            .unwrap(),
        )
        .resolve("gcr.io", format!("127.0.0.1:{}", gcr.port).parse().unwrap())
        .build()
        .unwrap();
    let status = anon
        .get(format!(
            "https://gcr.io:{}/v2/e2e-project/app/manifests/1",
            gcr.port
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);
}
