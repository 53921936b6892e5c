//! End-to-end tests: the `imagesync` CLI against real registries (stdout contract, exit
//! codes, error messages, safe delete).

use std::process::Output;

use imagesync_e2e::fixtures::{self, FixtureSpec};
use imagesync_e2e::registry::{Registry, RegistryOptions};

async fn imagesync(args: &[&str]) -> Output {
    let out = tokio::process::Command::new(imagesync_e2e::bin("imagesync"))
        .args(args)
        .arg("--no-progress")
        .arg("--no-blob-cache")
        .env_remove("IMAGESYNC_CREDS")
        .env("DOCKER_CONFIG", "/nonexistent-imagesync-test")
        .output()
        .await
        .expect("run imagesync");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn cli_copy_prints_the_id_and_digest_prints_the_digest() {
    let a = Registry::start().await;
    let b = Registry::start().await;
    let src = fixtures::push_index(a.addr(), "src/app", "1", 701).await;
    let out = imagesync(&[
        "copy",
        &a.reference("src/app:1"),
        &b.reference("dst/app:1"),
        "--insecure-registry",
        a.addr(),
        "--insecure-registry",
        b.addr(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{}/dst/app@{}\n", b.addr(), src.digest)
    );
    // Not a terminal: plain progress lines, not a bar.
    assert!(stderr(&out).contains("copying "), "{}", stderr(&out));

    let out = imagesync(&[
        "digest",
        &b.reference("dst/app:1"),
        "--insecure-registry",
        b.addr(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), src.digest);

    // A second copy is a no-op and still prints the id.
    let out = imagesync(&[
        "copy",
        &a.reference("src/app:1"),
        &b.reference("dst/app:1"),
        "--insecure-registry",
        &format!("{},{}", a.addr(), b.addr()),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already up to date"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&out),
        format!("{}/dst/app@{}\n", b.addr(), src.digest)
    );
}

#[tokio::test]
async fn cli_exit_codes_tell_not_found_auth_and_bad_input_apart() {
    let a = Registry::start().await;
    let out = imagesync(&[
        "digest",
        &a.reference("nothing/here:1"),
        "--insecure-registry",
        a.addr(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    let out = imagesync(&["copy", "Upper/Case:1", &a.reference("x:1")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"Upper/Case:1\"") && err.contains("lowercase"),
        "{err}"
    );

    let secured = Registry::start_with(RegistryOptions {
        tls: true,
        htpasswd: Some(("alice".into(), "right-password".into())),
        ..RegistryOptions::default()
    })
    .await;
    let ca = secured
        .ca_pem_path()
        .expect("ca")
        .to_str()
        .expect("utf8")
        .to_string();
    let out = imagesync(&[
        "digest",
        &secured.reference("any/repo:1"),
        "--ca-file",
        &ca,
        "--creds",
        "alice:wrong-password",
    ])
    .await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("wrong-password"),
        "the password must never be printed"
    );

    // TLS verification is on by default: without the CA the registry is not trusted.
    let out = imagesync(&[
        "digest",
        &secured.reference("any/repo:1"),
        "--creds",
        "alice:right-password",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[tokio::test]
async fn cli_delete_refuses_what_it_does_not_own_then_deletes() {
    let a = Registry::start().await;
    let first = fixtures::push_image(a.addr(), "app", "v1", FixtureSpec::seeded(711)).await;
    let other = fixtures::push_image(a.addr(), "other", "v1", FixtureSpec::seeded(712)).await;
    let wrong = other.digest.clone();
    let out = imagesync(&[
        "delete",
        &a.reference("app:v1"),
        "--expect-digest",
        &wrong,
        "--insecure-registry",
        a.addr(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("refusing"), "{}", stderr(&out));
    assert_eq!(fixtures::manifest_status(a.addr(), "app", "v1").await, 200);

    let out = imagesync(&[
        "delete",
        &a.reference("app:v1"),
        "--expect-digest",
        &first.digest,
        "--insecure-registry",
        a.addr(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fixtures::manifest_status(a.addr(), "app", "v1").await, 404);
    for layer in &first.layers {
        assert_eq!(
            fixtures::blob_status(a.addr(), "app", layer).await,
            404,
            "layer {layer} should be gone"
        );
    }

    // Already gone is success.
    let out = imagesync(&[
        "delete",
        &a.reference("app:v1"),
        "--insecure-registry",
        a.addr(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("already gone"), "{}", stderr(&out));
}

/// Issue 12, item 3: numeric IPv4 shorthand for a loopback registry is refused before any
/// request (it used to reach the registry), while the other spellings of the same host
/// reach it under their one canonical name.
#[tokio::test]
async fn cli_refuses_numeric_ipv4_shorthand_and_canonicalises_other_spellings() {
    let reg = Registry::start().await;
    let pushed = fixtures::push_image(reg.addr(), "app", "1", FixtureSpec::seeded(191)).await;
    let port = reg.addr().rsplit_once(':').unwrap().1.to_string();
    reg.access_log_settled().await;
    reg.clear_access_log();
    for host in ["127.1", "2130706433", "0x7f.0.0.1", "0x7f.1", "0177.0.0.1"] {
        let r = format!("{host}:{port}/app:1");
        let insecure = format!("{host}:{port}");
        let out = imagesync(&["digest", &r, "--insecure-registry", &insecure]).await;
        assert_eq!(out.status.code(), Some(1), "{r}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("numeric IPv4"),
            "{r}: {}",
            stderr(&out)
        );
    }
    assert!(
        reg.access_log_settled().await.is_empty(),
        "no request may reach the registry: {:?}",
        reg.access_log()
    );
    // A trailing dot and a zero-padded port are the same registry, under its one name
    // (the insecure-registry entry in the canonical spelling matches them).
    for r in [
        format!("127.0.0.1.:{port}/app:1"),
        format!("127.0.0.1:0{port}/app:1"),
    ] {
        let out = imagesync(&["digest", &r, "--insecure-registry", reg.addr()]).await;
        assert_eq!(out.status.code(), Some(0), "{r}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), pushed.digest, "{r}");
    }
}
