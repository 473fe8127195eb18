//! The order flow with integration events on NATS JetStream (a `nats-server`
//! of each test's own): one process end to end, the broker stopped and started
//! again in the middle of a load, and agora SIGKILLed in the middle of one.
//! In every case each order's notification exists exactly once in the end.

use std::collections::BTreeMap;
use std::time::Duration;

use agora_kernel::Role;
use agora_kernel::testing::{NatsServer, nats_namespace};
use serde_json::Value;

use crate::helpers::spawn_app_with;
use crate::process::{Agora, Api, in_flight, metric_sum, template_of, token};

/// Notification templates per customer, over every notification.
async fn notifications_by_customer(api: &Api) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in api.all("/api/v1/notifications").await {
        by.entry(n["customer_id"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(n["template"].as_str().unwrap_or_default().to_owned());
    }
    by
}

/// Wait until each order (one per customer) has exactly the notification its
/// status causes, then check that nothing more arrives.
async fn assert_each_order_notified_once(api: &Api, orders: &[Value]) {
    let expected: BTreeMap<String, Vec<String>> = orders
        .iter()
        .filter_map(|o| {
            let template = template_of(o["status"].as_str()?)?;
            Some((
                o["customer_id"].as_str()?.to_owned(),
                vec![template.to_owned()],
            ))
        })
        .collect();
    assert!(!expected.is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut seen = notifications_by_customer(api).await;
    while seen != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        seen = notifications_by_customer(api).await;
    }
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(c, t)| seen.get(*c) != Some(t))
        .map(|(c, t)| format!("{c}: expected {t:?}, got {:?}", seen.get(c)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} customers wrong: {wrong:?}",
        wrong.len()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        notifications_by_customer(api).await,
        expected,
        "and nothing arrives twice later"
    );
}

/// Scrape `agora` every 200 ms until `done` holds for its metrics; that
/// scrape. After `within`, fail saying `what`, with the last scrape.
async fn metrics_until(
    agora: &Agora,
    what: &str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = agora.metrics().await;
        if done(&m) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_backlog_zero(agora: &Agora) {
    metrics_until(
        agora,
        "the outbox backlog is still not 0",
        Duration::from_secs(60),
        |m| metric_sum(m, "agora_outbox_backlog", &[]) == 0.0 && m.contains("agora_outbox_backlog"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_over_jetstream_is_confirmed_and_notified_exactly_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let app = spawn_app_with(|s| {
        s.bus.url = url.into();
        s.bus.namespace = nats_namespace("flow");
    })
    .await;
    let api = Api::new(&app.address);
    api.seed(&["MUG"], 10).await;
    let alice = token("alice", &[Role::Customer]);
    let (status, order) = api.order(&alice, "MUG", 2, "tok_visa", "k1").await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["status"], "confirmed");

    let (status, ready) = api.get(&alice, "/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["bus"]["kind"], "jetstream");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sent = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let (_, page) = api.get(&alice, "/api/v1/notifications").await;
        sent = page["items"].as_array().cloned().unwrap_or_default();
        if sent.iter().any(|n| n["status"] == "sent") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["template"], "order_confirmed");
    assert_eq!(sent[0]["status"], "sent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, page) = api.get(&alice, "/api/v1/notifications").await;
    assert_eq!(
        page["items"].as_array().map(Vec::len),
        Some(1),
        "exactly once"
    );
}

/// Orders from `customers`, one each, all at once.
async fn place(api: &Api, customers: std::ops::Range<usize>, decline_every: usize) {
    let mut tasks = Vec::new();
    for i in customers {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let customer = token(&format!("c{i}"), &[Role::Customer]);
            let pm = if decline_every > 0 && i % decline_every == 0 {
                "tok_chargeDeclined"
            } else {
                "tok_visa"
            };
            api.order(&customer, "MUG", 1, pm, &format!("k{i}")).await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_mid_load_delays_events_but_loses_and_repeats_none() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agora = Agora::start(
        "mono",
        dir.path(),
        &[
            ("AGORA__BUS__URL", nats.url()),
            ("AGORA__BUS__NAMESPACE", nats_namespace("outage")),
        ],
    );
    let api = Api::new(&agora.base);
    api.seed(&["MUG"], 1000).await;
    place(&api, 0..30, 0).await;

    nats.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = api.get(&api.staff, "/health/ready").await;
        if status == 503 {
            assert!(
                body["detail"].as_str().unwrap_or_default().contains("bus"),
                "{body}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness did not report the outage within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Orders still go through: the saga needs no broker; events wait.
    place(&api, 30..60, 0).await;
    // The gauge is refreshed by the relays, which may be waiting on a
    // publish's acknowledgement when the outage begins: poll, don't sleep.
    metrics_until(
        &agora,
        "events wait in the outboxes while NATS is down",
        Duration::from_secs(15),
        |m| metric_sum(m, "agora_outbox_backlog", &[]) > 0.0,
    )
    .await;

    nats.restart();
    let orders = api
        .orders_until(Duration::from_secs(30), |os| {
            os.len() == 60 && !os.iter().any(in_flight)
        })
        .await;
    assert_eq!(orders.len(), 60);
    assert!(orders.iter().all(|o| o["status"] == "confirmed"));
    assert_each_order_notified_once(&api, &orders).await;
    wait_for_backlog_zero(&agora).await;
    let (status, _) = api.get(&api.staff, "/health/ready").await;
    assert_eq!(status, 200, "ready again without a restart");

    let m = agora.metrics().await;
    let published = metric_sum(
        &m,
        "agora_events_published_total",
        &[r#"module="order""#, r#"type="order.confirmed.v1""#],
    );
    let consumed = metric_sum(
        &m,
        "agora_events_consumed_total",
        &[r#"module="notification""#, r#"type="order.confirmed.v1""#],
    );
    assert!(
        published >= 60.0 && consumed >= 60.0,
        "{published} / {consumed}"
    );
    let lag = r#"agora_bus_consumer_pending{consumer="notification@order"}"#;
    metrics_until(
        &agora,
        "consumer lag is not 0",
        Duration::from_secs(15),
        |m| m.lines().any(|l| l.starts_with(lag) && l.ends_with(" 0")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_load_with_jetstream_loses_no_event_and_handles_none_twice() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut agora = Agora::start(
        "mono",
        dir.path(),
        &[
            ("AGORA__BUS__URL", nats.url()),
            ("AGORA__BUS__NAMESPACE", nats_namespace("crash")),
            ("AGORA__PAYMENT__SIMULATED_LATENCY_MS", "200".into()),
            ("AGORA__ORDER__LEASE_SECS", "2".into()),
        ],
    );
    let api = Api::new(&agora.base);
    api.seed(&["MUG"], 60).await;
    let load = {
        let api = api.clone();
        tokio::spawn(async move { place(&api, 0..120, 3).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let orders = api.all("/api/v1/orders").await;
        let settled = orders.iter().filter(|o| !in_flight(o)).count();
        if settled >= 10 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agora.kill();
    let _ = load.await;

    agora.restart();
    let orders = api
        .orders_until(Duration::from_secs(60), |os| !os.iter().any(in_flight))
        .await;
    assert!(!orders.is_empty(), "no order survived the crash");
    assert!(
        !orders.iter().any(in_flight),
        "orders left in flight: {:?}",
        orders.iter().filter(|o| in_flight(o)).collect::<Vec<_>>()
    );
    assert_each_order_notified_once(&api, &orders).await;
    wait_for_backlog_zero(&agora).await;
}
