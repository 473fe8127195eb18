//! Spawning the application and minting tokens for tests.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use agora::Settings;
use agora::gateway::auth;
use agora_kernel::Role;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub _data: tempfile::TempDir,
}

/// Default settings pointed at a fresh temp dir and free ports.
pub fn test_settings(data: &Path) -> Settings {
    let mut s =
        Settings::load_from(Path::new("config"), &HashMap::new()).expect("default settings load");
    s.data_dir = data.to_path_buf();
    s.http.addr = "127.0.0.1:0".into();
    s.admin.addr = "127.0.0.1:0".into();
    s.http.workers = 2;
    s.http.shutdown_timeout_secs = 5;
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app whose default rate limit admits `per_second` requests a second
/// per caller, after a burst of `burst`.
pub async fn spawn_app_with_rate_limit(per_second: u32, burst: u32) -> TestApp {
    spawn_app_with(|s| {
        s.rate_limit.per_second = per_second;
        s.rate_limit.burst = burst;
    })
    .await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    agora::telemetry::init_for_tests();
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(data.path());
    configure(&mut settings);
    let app = agora::Application::build(settings.clone())
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let stop = app.stop_token();
    let handle = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    TestApp {
        address,
        admin_address,
        client,
        settings,
        stop,
        handle,
        _data: data,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A valid development token for this app.
    pub fn token(&self, sub: &str, roles: &[Role]) -> String {
        auth::mint(
            &self.settings.auth,
            sub,
            roles,
            Some(&format!("{sub}@example.com")),
            Duration::from_secs(600),
        )
        .unwrap()
    }

    /// An anonymous GET.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A GET with one extra header.
    pub async fn get_with(&self, path: &str, (name, value): (&str, &str)) -> reqwest::Response {
        let req = self.client.get(self.url(path)).header(name, value);
        req.send().await.unwrap()
    }

    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// The JSON body of a GET as `token`, whatever its status.
    pub async fn get_json_as(&self, path: &str, token: &str) -> serde_json::Value {
        self.get_as(path, token).await.json().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        scrape(&self.client, &self.admin_address).await
    }
}

/// The Prometheus text an admin listener serves.
pub async fn scrape(client: &reqwest::Client, admin_address: &str) -> String {
    client
        .get(format!("{admin_address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A header of `res` that must be there, as text.
pub fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()[name].to_str().unwrap()
}

/// `field` of every item of a list page (`{"items": [...]}`).
pub fn each<'a>(page: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap())
        .collect()
}

/// Run `cmd` to completion; it must succeed (its stderr says why not).
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Assert a problem+json response with this status; returns the body.
pub async fn assert_problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status, "unexpected status");
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "not a problem body"
    );
    assert!(res.headers().contains_key("x-request-id"), "no request id");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:agora:problem:")),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

/// A fresh PostgreSQL database, or `None` (skip, with a message) outside CI.
pub async fn fresh_postgres_database() -> Option<String> {
    agora_kernel::testing::fresh_postgres_url().await
}

/// The built `agora` binary with a clean environment: no `AGORA__*` or
/// `AGORA_ENV` from the caller, loopback listeners on free ports, data in
/// `dir/data`, working directory `dir`.
pub fn agora_command(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agora"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AGORA__")) {
        cmd.env_remove(k);
    }
    cmd.current_dir(dir)
        .env_remove("AGORA_ENV")
        .env_remove("RUST_LOG")
        .env("AGORA__HTTP__ADDR", "127.0.0.1:0")
        .env("AGORA__ADMIN__ADDR", "127.0.0.1:0")
        .env("AGORA__DATA_DIR", dir.join("data"));
    cmd
}

/// A running `agora` process; SIGTERM (then SIGKILL) when dropped.
pub struct AgoraProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub admin_port: u16,
}

impl AgoraProcess {
    /// Spawn `cmd` (stderr is taken over) and wait for its "agora listening" line.
    pub fn start(cmd: std::process::Command) -> AgoraProcess {
        Self::start_with_stderr(cmd, |_| {})
    }

    /// [`AgoraProcess::start`], handing each later stderr line to `on_line`.
    pub fn start_with_stderr(
        mut cmd: std::process::Command,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> AgoraProcess {
        use std::io::BufRead;
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (port, admin_port) = loop {
            let line = lines
                .next()
                .expect("agora exited before listening")
                .unwrap();
            if let Some(rest) = line.split("agora listening on http://").nth(1) {
                let port = |s: &str| {
                    s.split_whitespace()
                        .next()
                        .and_then(|a| a.trim_end_matches([')', '/']).rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                        .unwrap()
                };
                let admin = rest.split("metrics: http://").nth(1).unwrap();
                break (port(rest), port(admin.trim_end_matches("/metrics)")));
            }
        };
        // Keep draining stderr so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                on_line(&line);
            }
        });
        AgoraProcess {
            child,
            port,
            admin_port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET /health/live` over a bare connection (no async runtime needed);
    /// the status code.
    pub fn get_live(&self) -> u16 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        scrape(client, &format!("http://127.0.0.1:{}", self.admin_port)).await
    }

    /// SIGTERM and wait (20 s at most); how it exited.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agora did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for AgoraProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
