//! Readiness follows the stores: 503 naming the failing module while its
//! database is unreachable, 200 again once it is back, without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::helpers::{assert_problem, each, fresh_postgres_database, spawn_app, spawn_app_with};

/// A TCP proxy to PostgreSQL that the test can cut and restore.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().await.push(task);
            }
        });
        Proxy { port, up, conns }
    }

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.conns.lock().await.drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn liveness_and_readiness_answer_on_the_embedded_default() {
    let app = spawn_app().await;
    let live: serde_json::Value = app.get("/health/live").await.json().await.unwrap();
    assert_eq!(live["status"], "up");
    let res = app.get("/health/ready").await;
    assert_eq!(res.status(), 200);
    let ready: serde_json::Value = res.json().await.unwrap();
    assert_eq!(ready["modules"]["order"], "up");
    assert_eq!(ready["modules"]["notification"], "up");
}

#[tokio::test]
async fn readiness_names_a_module_whose_postgres_is_gone_and_recovers_without_restart() {
    let Some(db_url) = fresh_postgres_database().await else {
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let via_proxy = db_url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let app = spawn_app_with(|s| s.payment.database_url = via_proxy.into()).await;

    assert_eq!(app.get("/health/ready").await.status(), 200);

    proxy.cut().await;
    let body = assert_problem(app.get("/health/ready").await, 503).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("payment") && !detail.contains("order"),
        "{detail}"
    );

    proxy.restore();
    let mut recovered = false;
    for _ in 0..20 {
        if app.get("/health/ready").await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(recovered, "readiness did not recover");
}

#[tokio::test]
async fn modules_run_on_postgres_when_configured() {
    let Some(order) = fresh_postgres_database().await else {
        return;
    };
    let Some(payment) = fresh_postgres_database().await else {
        return;
    };
    let Some(notification) = fresh_postgres_database().await else {
        return;
    };
    let app = spawn_app_with(|s| {
        s.order.database_url = order.into();
        s.payment.database_url = payment.into();
        s.notification.database_url = notification.into();
    })
    .await;
    let admin = app.token("root", &[agora_kernel::Role::Admin]);
    let body = app.get_json_as("/api/v1/system/modules", &admin).await;
    assert_eq!(
        each(&body, "store"),
        ["postgres", "sqlite", "postgres", "postgres"]
    );
    assert_eq!(app.get("/health/ready").await.status(), 200);
}
