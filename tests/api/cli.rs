//! The binary itself: settings errors stop start-up with one line naming the
//! key, `agora token` mints usable tokens, SIGTERM shuts down cleanly.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{AgoraProcess, agora_command, run_ok};

/// Serve with `cmd` (its stdout discarded) until it listens.
fn serve(mut cmd: Command) -> AgoraProcess {
    cmd.stdout(Stdio::null());
    AgoraProcess::start(cmd)
}

/// Starting with `env` (in a fresh directory) fails with one line on stderr
/// naming each of `keys` and not showing `secret`.
fn fails_naming(env: &[(&str, &str)], keys: &[&str], secret: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let out = agora_command(dir.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{env:?} should be refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    for key in keys {
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    if let Some(secret) = secret {
        assert!(!stderr.contains(secret), "secret leaked: {stderr}");
    }
}

#[test]
fn invalid_settings_stop_start_up_with_a_message_naming_the_key() {
    for (key, value) in [
        ("AGORA__RATE_LIMIT__PER_SECOND", "abc"),
        ("AGORA__RATE_LIMIT__BURST", "0"),
        ("AGORA__HTTP__ADDR", "localhost"),
        ("AGORA__AUTH__ALGORITHM", "HS512"),
        ("AGORA__ORDER__DATABASE_URL", "mysql://x/y"),
    ] {
        fails_naming(&[(key, value)], &[key], None);
    }
    fails_naming(&[("AGORA__LOG__FORMAT", "xml")], &["log"], None);
    fails_naming(
        &[("AGORA__AUTH__HS256_SECRET", "tiny-secret")],
        &["AGORA__AUTH__HS256_SECRET"],
        Some("tiny-secret"),
    );
    fails_naming(
        &[
            ("AGORA__AUTH__ALGORITHM", "RS256"),
            ("AGORA__AUTH__PUBLIC_KEY_PEM", "not a pem"),
        ],
        &["AGORA__AUTH__PUBLIC_KEY_PEM"],
        None,
    );
}

#[test]
fn serving_the_development_secret_beyond_loopback_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // What the Docker image does: 0.0.0.0 with the secret from the repository.
    fails_naming(
        &[("AGORA__HTTP__ADDR", "0.0.0.0:0")],
        &["AGORA__AUTH__HS256_SECRET"],
        Some(agora::settings::DEFAULT_HS256_SECRET),
    );
    // A demo says so explicitly, and then it serves.
    let mut cmd = agora_command(dir.path());
    cmd.env("AGORA__HTTP__ADDR", "0.0.0.0:0")
        .env("AGORA__AUTH__ALLOW_DEVELOPMENT_SECRET", "true");
    let mut agora = serve(cmd);
    assert_eq!(agora.get_live(), 200);
    assert!(agora.stop().success());
}

#[test]
fn two_modules_on_one_database_are_refused_without_leaking_the_password() {
    fails_naming(
        &[
            (
                "AGORA__ORDER__DATABASE_URL",
                "postgres://app:pa55word@127.0.0.1:5432/shop",
            ),
            (
                "AGORA__NOTIFICATION__DATABASE_URL",
                "postgres://app:pa55word@localhost/shop",
            ),
        ],
        &[
            "AGORA__ORDER__DATABASE_URL",
            "AGORA__NOTIFICATION__DATABASE_URL",
        ],
        Some("pa55word"),
    );
    fails_naming(
        &[("AGORA__PAYMENT__DATABASE_URL", "sqlite://./data/order.db")],
        &["AGORA__ORDER__DATABASE_URL", "AGORA__PAYMENT__DATABASE_URL"],
        None,
    );
}

#[test]
fn the_token_command_mints_a_token_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(agora_command(dir.path()).args([
        "token",
        "--sub",
        "alice",
        "--role",
        "customer",
        "--role",
        "staff",
        "--email",
        "alice@example.com",
        "--ttl",
        "2h",
    ]));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let settings = crate::helpers::test_settings(dir.path());
    let principal = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(agora::gateway::auth::Authenticator::from_settings(
            &settings.auth,
        ))
        .unwrap()
        .authenticate(&token)
        .unwrap();
    assert_eq!(principal.subject, "alice");
    assert_eq!(principal.email.as_deref(), Some("alice@example.com"));
    assert!(principal.roles.contains(&agora_kernel::Role::Staff));

    for bad in [
        vec!["token", "--sub", "alice"],
        vec!["token", "--sub", "alice", "--role", "root"],
        vec![
            "token", "--sub", "alice", "--role", "customer", "--ttl", "forever",
        ],
    ] {
        let out = agora_command(dir.path()).args(&bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} should fail");
    }
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut agora = serve(agora_command(dir.path()));
    assert_eq!(agora.get_live(), 200);
    assert!(
        dir.path().join("data/order.db").exists(),
        "the SQLite default was not created"
    );
    let status = agora.stop();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn with_an_otlp_endpoint_set_spans_are_exported_over_http() {
    use std::sync::{Arc, Mutex};
    // A real OTLP/HTTP receiver stand-in: records what it is sent.
    let received: Arc<Mutex<Vec<(String, String, usize)>>> = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector_port = listener.local_addr().unwrap().port();
    let sink = received.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            actix_web::HttpServer::new(move || {
                let sink = sink.clone();
                actix_web::App::new().default_service(actix_web::web::to(
                    move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                        let sink = sink.clone();
                        async move {
                            let ct = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            sink.lock()
                                .unwrap()
                                .push((req.path().to_owned(), ct, body.len()));
                            actix_web::HttpResponse::Ok().finish()
                        }
                    },
                ))
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = agora_command(dir.path());
    cmd.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{collector_port}"),
    );
    let mut agora = serve(cmd);
    assert_eq!(agora.get_live(), 200);
    assert!(agora.stop().success());
    let got = received.lock().unwrap().clone();
    assert!(
        got.iter().any(|(path, ct, len)| path == "/v1/traces"
            && ct == "application/x-protobuf"
            && *len > 0),
        "no spans exported: {got:?}"
    );
}

#[test]
fn a_malformed_or_unreachable_bus_url_stops_start_up_naming_it() {
    fails_naming(
        &[("AGORA__BUS__URL", "http://127.0.0.1:4222")],
        &["AGORA__BUS__URL"],
        None,
    );
    // Nothing listens there: agora waits 10 s for it, then gives up.
    let port = crate::process::free_port();
    let url = format!("nats://agora:s3cret@127.0.0.1:{port}");
    let started = std::time::Instant::now();
    fails_naming(
        &[("AGORA__BUS__URL", &url)],
        &["AGORA__BUS__URL", "unreachable"],
        Some("s3cret"),
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "it gave up before waiting 10 s"
    );
}
