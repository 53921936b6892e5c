//! End-to-end tests: the `imagesync` CLI against real registries (stdout contract, exit
//! codes, error messages, safe delete).

use std::process::Output;

use std::time::{Duration, Instant};

use imagesync_e2e::fixtures::{self, FixtureSpec};
use imagesync_e2e::proxy::{Fault, FaultPlan, FaultProxy, Mode, Target};
use imagesync_e2e::registry::{Registry, RegistryOptions};

async fn imagesync(args: &[&str]) -> Output {
    imagesync_env(args, &[]).await
}

/// `imagesync` with extra environment variables (`IMAGESYNC_LOG` and `NO_COLOR` are
/// removed unless given).
async fn imagesync_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = tokio::process::Command::new(imagesync_e2e::bin("imagesync"))
        .args(args)
        .arg("--no-progress")
        .arg("--no-blob-cache")
        .env_remove("IMAGESYNC_CREDS")
        .env_remove("IMAGESYNC_LOG")
        .env_remove("NO_COLOR")
        .env("DOCKER_CONFIG", "/nonexistent-imagesync-test")
        .envs(env.iter().copied())
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
    // Issue 20, item 13: what the registry said (a HEAD answer has no body), no
    // invented error code, and it is a registry.
    assert!(
        !stderr(&out).contains("MANIFEST_UNKNOWN") && !stderr(&out).contains("not a registry"),
        "{}",
        stderr(&out)
    );
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

/// Issue 20, items 11, 12 and 14: bad flag values exit with 2 (bad command line) and say
/// what is wrong; `--help` lists the exit codes; the usage line after a missing argument
/// does not make a flag look required; a tag with ':' is named as the problem.
#[tokio::test]
async fn cli_bad_flag_values_exit_2_with_precise_messages() {
    let d = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let cases: [(&[&str], &str); 6] = [
        (
            &["delete", "127.0.0.1:1/a:1", "--expect-digest", "663ffc93"],
            "not a digest",
        ),
        (
            &["digest", "127.0.0.1:1/a:1", "--creds", "nocolon"],
            "USER:PASSWORD",
        ),
        (&["digest", "127.0.0.1:1/a:1", "-j", "0"], "1..=256"),
        (
            &[
                "digest",
                "127.0.0.1:1/a:1",
                "--insecure-registry",
                "bad host",
            ],
            "not a registry address",
        ),
        (
            &[
                "digest",
                "127.0.0.1:1/a:1",
                "--insecure-registry",
                "http://127.0.0.1:5101",
            ],
            "no scheme",
        ),
        (
            &[
                "delete",
                "127.0.0.1:1/a:1",
                "--expect-digest",
                d,
                "--src-creds",
                "x",
            ],
            "--src-creds",
        ),
    ];
    for (args, says) in cases {
        let out = imagesync(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("invalid reference"),
            "{}",
            stderr(&out)
        );
    }
    // A credential typed without its user is never echoed.
    let out = imagesync(&["digest", "127.0.0.1:1/a:1", "--creds", "s3cr3t-token"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("s3cr3t"), "{}", stderr(&out));

    for args in [
        &["--help"][..],
        &["digest", "--help"],
        &["delete", "--help"],
    ] {
        let out = imagesync(args).await;
        assert!(out.status.success());
        let help = stdout(&out);
        assert!(
            help.contains("Exit codes:") && help.contains("2  bad command line"),
            "{help}"
        );
    }
    let help = stdout(&imagesync(&["digest", "--help"]).await);
    let (common, copy_only) = help
        .split_once("Options of copy only")
        .expect("copy-only flags under their own heading");
    for flag in ["--jobs", "--src-creds", "--blob-cache"] {
        assert!(!common.contains(flag) && copy_only.contains(flag), "{help}");
    }

    let out = imagesync(&["digest", "--insecure-registry", "127.0.0.1:5000"]).await;
    assert_eq!(out.status.code(), Some(2));
    let usage = stderr(&out);
    let usage = usage
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .expect("usage");
    assert!(!usage.contains("--insecure-registry"), "{usage}");

    let out = imagesync(&["digest", "127.0.0.1:1/x:bad:tag"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a tag may not contain ':'"),
        "{}",
        stderr(&out)
    );
}

/// Issue 20, items 6 and 7: a plain-HTTP registry reached over HTTPS fails at once (no
/// retries), with a hint naming `--insecure-registry HOST:PORT` as the reference writes
/// it, and the error says each context once.
#[tokio::test]
async fn cli_plain_http_over_https_fails_at_once_with_a_hint() {
    let reg = Registry::start().await;
    let port = reg.addr().rsplit_once(':').expect("port").1.to_string();
    let started = Instant::now();
    let out = imagesync(&["digest", &reg.reference("app:1")]).await;
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {err}");
    assert!(
        err.contains(&format!("--insecure-registry {}", reg.addr())),
        "{err}"
    );
    assert!(!err.contains("gave up after"), "{err}");
    assert_eq!(err.matches("HEAD manifest").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // localhost:PORT is another name than the listed 127.0.0.1:PORT: the hint names it.
    let out = imagesync(&[
        "digest",
        &format!("localhost:{port}/app:1"),
        "--insecure-registry",
        reg.addr(),
    ])
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("--insecure-registry localhost:{port}")),
        "{err}"
    );
}

/// Issue 20, item 10 (and 8): a 501 is not retried; a transient failure is retried and
/// printed once, with no engine WARN line by default.
#[tokio::test]
async fn cli_does_not_retry_501_and_prints_each_retry_once() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let image = fixtures::push_image(src.addr(), "app", "1", FixtureSpec::seeded(2001)).await;
    let blobs = image.layers.len() + 1;
    let proxy = FaultProxy::start(
        dst.addr(),
        FaultPlan {
            fault: Fault::Status(501),
            target: Target::Uploads,
            mode: Mode::Always,
        },
    )
    .await;
    let insecure = format!("{},{}", src.addr(), proxy.addr());
    let out = imagesync(&[
        "copy",
        &src.reference("app:1"),
        &format!("{}/app:1", proxy.addr()),
        "--insecure-registry",
        &insecure,
    ])
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("501"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(
        proxy.faults_injected() <= blobs,
        "{} upload requests answered 501 for {blobs} blobs: retried",
        proxy.faults_injected()
    );

    let before = proxy.faults_injected();
    proxy.set_plan(FaultPlan {
        fault: Fault::Status(503),
        target: Target::Uploads,
        mode: Mode::FirstN(1),
    });
    let out = imagesync(&[
        "copy",
        &src.reference("app:1"),
        &format!("{}/app:1", proxy.addr()),
        "--insecure-registry",
        &insecure,
    ])
    .await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(proxy.faults_injected() - before, 1);
    assert_eq!(err.matches("retrying").count(), 1, "{err}");
    assert!(!err.contains("WARN"), "{err}");
}

/// A plain-HTTP server that is not a registry: 404 for everything.
async fn not_a_registry() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let body = "<h1>Not Found</h1>";
                    let answer = format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Issue 20, item 13: `digest` against a web server that is not a registry says so,
/// invents no registry error code, and does not claim "not found" (exit 1, not 3).
#[tokio::test]
async fn cli_digest_says_not_a_registry() {
    let web = not_a_registry().await;
    let out = imagesync(&[
        "digest",
        &format!("{web}/app:1"),
        "--insecure-registry",
        &web,
    ])
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{web} is not a registry")), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(!err.contains("MANIFEST_UNKNOWN"), "{err}");
}

/// Issue 20, items 8 and 9: with `--log-format json` every stderr line is one JSON
/// object (steps, engine logs, the error); in text, no colour codes off a terminal.
#[tokio::test]
async fn cli_json_logs_are_json_on_every_line_and_text_has_no_colour() {
    let a = Registry::start().await;
    let b = Registry::start().await;
    let src = fixtures::push_image(a.addr(), "app", "1", FixtureSpec::seeded(2002)).await;
    let insecure = format!("{},{}", a.addr(), b.addr());
    let copy = [
        "copy",
        &a.reference("app:1"),
        &b.reference("app:1"),
        "--insecure-registry",
        &insecure,
    ];
    let json_lines = |out: &Output| {
        let err = stderr(out);
        assert!(!err.is_empty());
        for line in err.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}\n{err}"));
            assert!(v.get("level").is_some(), "{line}");
        }
        err
    };
    let mut args = copy.to_vec();
    args.extend(["--log-format", "json"]);
    let out = imagesync_env(&args, &[("IMAGESYNC_LOG", "debug")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}/app@{}\n", b.addr(), src.digest));
    let err = json_lines(&out);
    assert!(
        err.contains("copying ") && err.contains("imagesync_engine"),
        "{err}"
    );

    let out = imagesync(&[
        "digest",
        &a.reference("none:1"),
        "--insecure-registry",
        a.addr(),
        "--log-format",
        "json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(json_lines(&out).contains("\"ERROR\""));
    let out = imagesync(&["--log-format", "json", "digest", "-j", "0", "x"]).await;
    assert_eq!(out.status.code(), Some(2));
    json_lines(&out);

    let out = imagesync_env(&copy, &[("IMAGESYNC_LOG", "debug")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("DEBUG"), "{}", stderr(&out));
    assert!(!stderr(&out).contains('\x1b'), "{}", stderr(&out));
    // By default engine logs are off (the README: IMAGESYNC_LOG turns them on).
    let out = imagesync(&copy).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("DEBUG") && !stderr(&out).contains("INFO"),
        "{}",
        stderr(&out)
    );
}

/// The binaries that start once per call (the CLI, the Terraform provider) are built with
/// aws-lc's CPU-jitter entropy collector left out (`.cargo/config.toml`): it costs 40-70 ms
/// of CPU at each process's first random number. The collector's code, with its symbol
/// names, is absent from such a build; aws-lc itself (its RAND_bytes) is there.
#[test]
fn cli_and_provider_are_built_without_the_cpu_jitter_entropy_collector() {
    for name in ["imagesync", "terraform-provider-imagesync"] {
        let path = imagesync_e2e::bin(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Searched as text: std's string search is built optimised, a byte loop in a test
        // build is not (seconds for 100 MB). Symbol names are ASCII and survive the lossy
        // conversion.
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("RAND_bytes"),
            "{name}: aws-lc not found in the binary"
        );
        assert!(
            !text.contains("jent_read_entropy"),
            "{name} was built with aws-lc's CPU-jitter entropy (AWS_LC_SYS_NO_JITTER_ENTROPY unset)"
        );
    }
}
