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

    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Assert a problem+json response with this status; returns the body.
pub async fn assert_problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status, "unexpected status");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(ct, "application/problem+json", "not a problem body");
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
