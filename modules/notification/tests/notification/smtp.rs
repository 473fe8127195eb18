//! E-mail through a REAL SMTP server (`tests/smtp_server.py`, PyPI `aiosmtpd`,
//! on a free loopback port): an event's e-mail arrives with the right
//! recipient, subject and order id; 451 then 250 is retried then sent; 550 is
//! dead at once with the server's error recorded. The module is built from
//! its settings, as the host builds it, and runs its own delivery worker.
//! Needs the Python at `AGORA_TEST_PYTHON` (default: the workspace's
//! `venv/bin/python`); skipped with a message outside CI when it is missing.

use std::time::Duration;

use agora_notification::domain::models::{AttemptOutcome, Status};
use uuid::Uuid;

use crate::helpers::{Backend, SmtpServer, TestModule, all, eventually};

/// A server in `mode` (see [`SmtpServer::start`]) and the module sending to
/// it with its own delivery worker, or `None` (skip) without the server's Python.
async fn server_and_module(mode: &str, failures: u32) -> Option<(SmtpServer, TestModule)> {
    let server = SmtpServer::start(mode, failures)?;
    let url = server.url();
    let mut m = TestModule::from_settings(Backend::Sqlite, |s| {
        s.smtp.url = url.into();
        s.smtp.from = "agora shop <shop@agora.test>".into();
        s.smtp.timeout_ms = 5000;
    })
    .await
    .unwrap();
    m.start_worker();
    Some((server, m))
}

#[tokio::test]
async fn smtp_an_order_event_produces_an_email_the_server_receives() {
    let Some((server, m)) = server_and_module("record", 0).await else {
        return;
    };
    let order_id = Uuid::now_v7();
    m.publish_order("order.confirmed.v1", order_id, "alice")
        .await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            !server.received().is_empty()
        })
        .await,
        "the server received nothing: {:?}",
        server.records()
    );
    let mail = &server.received()[0];
    assert_eq!(mail["rcpt_tos"], serde_json::json!(["alice@example.com"]));
    assert_eq!(mail["mail_from"], "shop@agora.test");
    assert_eq!(
        mail["subject"],
        format!("Your order {order_id} is confirmed").as_str()
    );
    let text = mail["text"].as_str().unwrap();
    assert!(text.contains(&format!("Order: {order_id}")), "{text}");
    assert!(
        text.contains("2 x MUG-BLUE at 12.50 EUR = 25.00 EUR"),
        "{text}"
    );
    assert!(text.contains("Total: 29.99 EUR"), "{text}");
    let html = mail["html"].as_str().unwrap();
    assert!(html.contains(&order_id.to_string()), "{html}");

    assert!(m.newest_reaches(Status::Sent, Duration::from_secs(5)).await);
    let n = m.newest().await;
    assert_eq!(n.attempts, 1);
    assert!(n.sent_at.is_some());
}

#[tokio::test]
async fn smtp_a_451_then_250_is_retried_then_sent() {
    let Some((server, m)) = server_and_module("flaky", 1).await else {
        return;
    };
    let order_id = Uuid::now_v7();
    m.publish_order("order.shipped.v1", order_id, "bob").await;
    let store = m.store();
    assert!(
        m.newest_reaches(Status::Sent, Duration::from_secs(20))
            .await,
        "not sent: {:?} / server: {:?}",
        store.list(&all()).await.unwrap(),
        server.records()
    );
    let n = m.newest().await;
    assert_eq!(n.attempts, 2);
    let attempts = store.attempts(n.id).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        vec![AttemptOutcome::Failed, AttemptOutcome::Sent]
    );
    assert!(
        attempts[0].error.as_deref().unwrap().contains("451"),
        "{:?}",
        attempts[0].error
    );
    let events: Vec<_> = server
        .records()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, vec!["451", "250"]);
    assert!(
        server.received()[0]["text"]
            .as_str()
            .unwrap()
            .contains(&order_id.to_string())
    );
}

#[tokio::test]
async fn smtp_a_550_is_dead_at_once_with_the_error_recorded() {
    let Some((server, m)) = server_and_module("reject", 0).await else {
        return;
    };
    m.publish_order("order.delivered.v1", Uuid::now_v7(), "carol")
        .await;
    let store = m.store();
    assert!(
        m.newest_reaches(Status::Dead, Duration::from_secs(15))
            .await,
        "not dead: {:?}",
        store.list(&all()).await.unwrap()
    );
    // Give a wrong retry the time to happen, then check it did not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = m.newest().await;
    assert_eq!(n.attempts, 1, "a permanent error is not retried");
    let error = n.last_error.unwrap();
    assert!(error.contains("550"), "{error}");
    let attempts = store.attempts(n.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Rejected);
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("mailbox unavailable")
    );
    assert!(server.received().is_empty());
}
