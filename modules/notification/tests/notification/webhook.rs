//! The SMS/push JSON webhook adapter against a local HTTP server (raw HTTP on a
//! loopback port): bearer key and body sent; 2xx delivered; 4xx permanent;
//! 5xx, 429 and time-outs transient.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_notification::domain::models::{Channel, NotificationId};
use agora_notification::domain::ports::{ChannelSender, DeliveryError, OutgoingMessage};
use agora_notification::testing::WebhookChannel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every request with `status` after `delay`; keeps the raw requests.
async fn provider(status: u16, delay: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/send", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(vec![]));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut req = Vec::new();
                // Read headers, then the body by Content-Length.
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&req).to_string());
                tokio::time::sleep(delay).await;
                let body = r#"{"error":"nope"}"#;
                let res = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(res.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

fn message() -> OutgoingMessage {
    OutgoingMessage {
        notification_id: NotificationId::new(),
        channel: Channel::Sms,
        template: "order_shipped".into(),
        recipient: "+4915123456789".into(),
        subject: None,
        text: "agora: order shipped.".into(),
        html: None,
        correlation_id: "req-7".into(),
    }
}

fn channel(url: &str, timeout: Duration) -> WebhookChannel {
    WebhookChannel::new(url, "sk-test-key".to_owned().into(), timeout).unwrap()
}

#[tokio::test]
async fn webhook_a_2xx_delivers_with_the_bearer_key_and_the_json_body() {
    let (url, seen) = provider(202, Duration::ZERO).await;
    let m = message();
    channel(&url, Duration::from_secs(5))
        .send(&m)
        .await
        .unwrap();
    let req = seen.lock().unwrap()[0].clone();
    assert!(req.starts_with("POST /send HTTP/1.1"), "{req}");
    let lower = req.to_ascii_lowercase();
    assert!(lower.contains("authorization: bearer sk-test-key"), "{req}");
    assert!(
        lower.contains(&format!("idempotency-key: {}", m.notification_id)),
        "{req}"
    );
    let body: serde_json::Value =
        serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["to"], "+4915123456789");
    assert_eq!(body["channel"], "sms");
    assert_eq!(body["template"], "order_shipped");
    assert_eq!(body["text"], "agora: order shipped.");
    assert_eq!(body["notification_id"], m.notification_id.to_string());
}

#[tokio::test]
async fn webhook_a_4xx_is_permanent_and_a_5xx_or_429_transient() {
    for (status, permanent) in [
        (400, true),
        (401, true),
        (404, true),
        (429, false),
        (500, false),
        (503, false),
    ] {
        let (url, _) = provider(status, Duration::ZERO).await;
        let err = channel(&url, Duration::from_secs(5))
            .send(&message())
            .await
            .unwrap_err();
        match err {
            DeliveryError::Permanent(e) => assert!(permanent, "{status}: {e}"),
            DeliveryError::Transient(e) => assert!(!permanent, "{status}: {e}"),
        }
    }
}

#[tokio::test]
async fn webhook_a_slow_or_absent_provider_is_transient() {
    let (url, _) = provider(200, Duration::from_secs(3)).await;
    let err = channel(&url, Duration::from_millis(200))
        .send(&message())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        DeliveryError::Transient("the provider did not answer in time".into())
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = channel(
        &format!("http://127.0.0.1:{port}/send"),
        Duration::from_secs(2),
    )
    .send(&message())
    .await
    .unwrap_err();
    assert!(
        matches!(err, DeliveryError::Transient(ref e) if e.starts_with("could not reach the provider")),
        "{err:?}"
    );
}
