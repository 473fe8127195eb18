//! Extraction is a configuration change: one end-to-end suite, run unchanged
//! against real `agora` processes in three topologies —
//! 1. the monolith (today's default, in-process bus);
//! 2. two processes, `order,notification` | `inventory,payment`, JetStream;
//! 3. one process per module plus an edge (`AGORA__MODULES=`) that the suite
//!    talks to, order and payment on PostgreSQL, JetStream —
//!
//! and faults in topology 3: the payment process killed under load, the order
//! process killed under load, two order instances on one database.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agora_kernel::Role;
use agora_kernel::testing::{NatsServer, nats_namespace};
use serde_json::{Value, json};

use crate::helpers::fresh_postgres_database;
use crate::process::{Agora, Api, eventually, in_flight, metric_sum, token};

const MODULES: [&str; 4] = ["order", "inventory", "payment", "notification"];

/// Running processes and the URL the suite talks to.
pub struct Topology {
    pub procs: BTreeMap<&'static str, Agora>,
    pub entry: String,
    pub _nats: Option<NatsServer>,
    _dir: tempfile::TempDir,
}

impl Topology {
    pub fn api(&self) -> Api {
        Api::new(&self.entry)
    }

    pub fn proc(&mut self, name: &str) -> &mut Agora {
        self.procs
            .get_mut(name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }
}

/// Settings every process of a split topology shares: the bus, and short
/// breaker, retry and lease durations so faults settle quickly.
fn split_env(nats: &NatsServer, namespace: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AGORA__BUS__URL", nats.url()),
        ("AGORA__BUS__NAMESPACE", namespace.to_owned()),
        ("AGORA__BUS__RETRY_BASE_MS", "200".into()),
        ("AGORA__UPSTREAM__TIMEOUT_MS", "10000".into()),
        ("AGORA__UPSTREAM__BREAKER_OPEN_SECS", "2".into()),
        ("AGORA__ORDER__LEASE_SECS", "2".into()),
    ]
}

pub fn monolith() -> Topology {
    let dir = tempfile::tempdir().unwrap();
    let mono = Agora::start("monolith", dir.path(), &[]);
    Topology {
        entry: mono.base.clone(),
        procs: BTreeMap::from([("monolith", mono)]),
        _nats: None,
        _dir: dir,
    }
}

/// A process: its name, the modules it hosts, its own settings.
type Group<'a> = (&'static str, &'a [&'a str], Vec<(&'static str, String)>);

/// Processes hosting `groups` of modules, each told where the others run.
fn start_groups(
    dir: &std::path::Path,
    groups: &[Group<'_>],
    common: &[(&'static str, String)],
) -> BTreeMap<&'static str, Agora> {
    let mut procs: BTreeMap<&'static str, Agora> = groups
        .iter()
        .map(|(name, _, _)| (*name, Agora::prepare(name, dir)))
        .collect();
    let mut hosts: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, modules, _) in groups {
        for m in *modules {
            hosts.entry(m).or_default().push(procs[name].base.clone());
        }
    }
    for (name, modules, env) in groups {
        let p = procs.get_mut(name).unwrap();
        p.set("AGORA__MODULES", &modules.join(","));
        for m in MODULES {
            if !modules.contains(&m) {
                let key = format!("AGORA__REMOTE__{}__URLS", m.to_ascii_uppercase());
                p.set(&key, &hosts[m].join(","));
            }
        }
        for (k, v) in common.iter().chain(env) {
            p.set(k, v);
        }
    }
    for (name, _, _) in groups {
        procs.get_mut(name).unwrap().restart();
    }
    procs
}

pub fn two_processes() -> Option<Topology> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir().unwrap();
    let common = split_env(&nats, &nats_namespace("two"));
    let procs = start_groups(
        dir.path(),
        &[
            ("a", &["order", "notification"], vec![]),
            ("b", &["inventory", "payment"], vec![]),
        ],
        &common,
    );
    Some(Topology {
        entry: procs["a"].base.clone(),
        procs,
        _nats: Some(nats),
        _dir: dir,
    })
}

/// One process per module and an edge; order and payment on PostgreSQL.
/// `order_instances` processes host the order module on one database.
pub async fn split(order_instances: usize, extra: &[(&'static str, String)]) -> Option<Topology> {
    let order_db = fresh_postgres_database().await?;
    let payment_db = fresh_postgres_database().await?;
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir().unwrap();
    let mut common = split_env(&nats, &nats_namespace("split"));
    common.extend(extra.iter().cloned());
    let order_env = vec![("AGORA__ORDER__DATABASE_URL", order_db)];
    let mut groups: Vec<Group<'_>> = vec![("order", &["order"], order_env.clone())];
    if order_instances > 1 {
        groups.push(("order2", &["order"], order_env));
    }
    groups.extend([
        ("inventory", &["inventory"][..], vec![]),
        (
            "payment",
            &["payment"][..],
            vec![("AGORA__PAYMENT__DATABASE_URL", payment_db)],
        ),
        ("notification", &["notification"][..], vec![]),
        ("edge", &[][..], vec![]),
    ]);
    let procs = start_groups(dir.path(), &groups, &common);
    Some(Topology {
        entry: procs["edge"].base.clone(),
        procs,
        _nats: Some(nats),
        _dir: dir,
    })
}

async fn notified(api: &Api, customer: &str, template: &str) {
    eventually(
        &format!("{customer} is sent {template}"),
        Duration::from_secs(30),
        || async {
            let (_, page) = api.get(customer, "/api/v1/notifications").await;
            page["items"]
                .as_array()?
                .iter()
                .any(|n| n["template"] == template && n["status"] == "sent")
                .then_some(())
        },
    )
    .await;
}

async fn payment_of(api: &Api, order_id: &str) -> Vec<Value> {
    let (s, page) = api
        .get(&api.staff, &format!("/api/v1/payments?order_id={order_id}"))
        .await;
    assert_eq!(s, 200, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

/// The suite: what a shop must do, wherever its modules run.
pub async fn the_suite(api: &Api) {
    api.seed(&["MUG", "LIMITED", "RARE"], 0).await;
    for (sku, units) in [("MUG", 100), ("LIMITED", 50), ("RARE", 1)] {
        api.receive(sku, units).await;
    }

    // Placed → confirmed → notified.
    let alice = token("alice", &[Role::Customer]);
    let (s, placed) = api.order(&alice, "MUG", 2, "tok_visa", "alice-1").await;
    assert_eq!(s, 201, "{placed}");
    assert_eq!(placed["status"], "confirmed");
    notified(api, &alice, "order_confirmed").await;

    // The same key again: the same order, not a second one.
    let (s, replay) = api.order(&alice, "MUG", 2, "tok_visa", "alice-1").await;
    assert_eq!(s, 201, "{replay}");
    assert_eq!(replay["id"], placed["id"]);
    let (_, mine) = api.get(&alice, "/api/v1/orders").await;
    assert_eq!(mine["items"].as_array().map(Vec::len), Some(1));

    // A declined card: payment_failed, stock back.
    let bob = token("bob", &[Role::Customer]);
    let (s, declined) = api
        .order(&bob, "MUG", 3, "tok_chargeDeclined", "bob-1")
        .await;
    assert_eq!(s, 201, "{declined}");
    assert_eq!(declined["status"], "payment_failed");
    notified(api, &bob, "order_payment_failed").await;

    // Out of stock: rejected.
    let carol = token("carol", &[Role::Customer]);
    let (s, rejected) = api.order(&carol, "RARE", 5, "tok_visa", "carol-1").await;
    assert_eq!(s, 201, "{rejected}");
    assert_eq!(rejected["status"], "rejected");

    // Cancel with refund.
    let dave = token("dave", &[Role::Customer]);
    let (_, order) = api.order(&dave, "MUG", 1, "tok_visa", "dave-1").await;
    assert_eq!(order["status"], "confirmed", "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let (s, cancelled) = api
        .post(
            &dave,
            &format!("/api/v1/orders/{id}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(s, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let payments = payment_of(api, &id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["status"], "refunded", "{payments:?}");
    notified(api, &dave, "order_cancelled").await;

    // BOLA: another customer learns nothing and changes nothing.
    let eve = token("eve", &[Role::Customer]);
    let alice_order = format!("/api/v1/orders/{}", placed["id"].as_str().unwrap());
    let (s, _) = api.get(&eve, &alice_order).await;
    assert_eq!(s, 404);
    let (s, _) = api
        .post(&eve, &format!("{alice_order}/cancel"), json!({}))
        .await;
    assert_eq!(s, 404);
    let (_, still) = api.get(&alice, &alice_order).await;
    assert_eq!(still["status"], "confirmed");

    // MUG: 2 held by alice; bob's and dave's given back.
    let (_, mug) = api.get(&api.staff, "/api/v1/stock/MUG").await;
    assert_eq!(mug["on_hand"], 100, "{mug}");
    assert_eq!(mug["reserved"], 2, "{mug}");

    // 200 orders at once for 50 units: exactly 50 confirmed.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let c = token(&format!("rush{i}"), &[Role::Customer]);
            api.order(&c, "LIMITED", 1, "tok_visa", &format!("rush-{i}"))
                .await
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        let (s, body) = t.await.unwrap();
        assert_eq!(s, 201, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    // An answer carries as far as the saga got while the request waited; on a
    // loaded machine some are still pending, so count once all have settled.
    let rush = |os: &[Value]| -> Vec<Value> {
        os.iter()
            .filter(|o| o["id"].as_str().is_some_and(|id| ids.contains(id)))
            .cloned()
            .collect()
    };
    let orders = api
        .orders_until(Duration::from_secs(60), |os| {
            let r = rush(os);
            r.len() == 200 && !r.iter().any(in_flight)
        })
        .await;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for o in rush(&orders) {
        *by_status
            .entry(o["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_status.get("confirmed"), Some(&50), "{by_status:?}");
    assert_eq!(by_status.get("rejected"), Some(&150), "{by_status:?}");
    let (_, limited) = api.get(&api.staff, "/api/v1/stock/LIMITED").await;
    assert_eq!(limited["available"], 0, "{limited}");
    assert_eq!(limited["reserved"], 50, "{limited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_on_the_monolith() {
    let t = monolith();
    the_suite(&t.api()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_on_two_processes() {
    let Some(t) = two_processes() else {
        return;
    };
    the_suite(&t.api()).await;
    // And the other process answers the whole surface too.
    let other = Api::new(&t.procs["b"].base);
    let (s, orders) = other.get(&other.staff, "/api/v1/orders?limit=5").await;
    assert_eq!(s, 200, "{orders}");
    assert_eq!(orders["items"].as_array().map(Vec::len), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_on_one_process_per_module_behind_an_edge() {
    let Some(t) = split(1, &[]).await else {
        return;
    };
    the_suite(&t.api()).await;
    let admin = token("root", &[Role::Admin]);
    let (s, modules) = t.api().get(&admin, "/api/v1/system/modules").await;
    assert_eq!(s, 200);
    let placements: Vec<(&str, &str)> = modules["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["placement"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        placements,
        MODULES.iter().map(|m| (*m, "remote")).collect::<Vec<_>>()
    );
    assert_eq!(
        modules["items"][2]["instances"][0]["url"],
        t.procs["payment"].base.as_str()
    );
    dashboard_queries_name_only_exported_metrics(&t).await;
}

/// deploy/grafana/agora.json against what these processes export, live: every
/// metric a panel queries is in one of their scrapes.
async fn dashboard_queries_name_only_exported_metrics(t: &Topology) {
    let mut scrape = String::new();
    for p in t.procs.values() {
        scrape.push_str(&p.metrics().await);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &scrape).unwrap();
    let python = std::env::var("AGORA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(python)
        .arg(format!("{root}/deploy/checks/dashboard.py"))
        .arg("--metrics")
        .arg(file.path())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Orders from `range` customers, each of one MUG, all at once; the answers.
async fn load(api: &Api, range: std::ops::Range<usize>) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = range
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                let c = token(&format!("load{i}"), &[Role::Customer]);
                api.order(&c, "MUG", 1, "tok_visa", &format!("load-{i}"))
                    .await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Every order has at most one payment, and a confirmed one exactly one
/// that succeeded.
async fn none_charged_twice(api: &Api, orders: &[Value]) {
    for o in orders {
        let id = o["id"].as_str().unwrap();
        let payments = payment_of(api, id).await;
        assert!(payments.len() <= 1, "order {id}: {payments:?}");
        if o["status"] == "confirmed" {
            assert_eq!(payments[0]["status"], "succeeded", "order {id}");
            assert_eq!(payments[0]["id"], o["payment_id"], "order {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_payment_process_killed_orders_wait_and_are_confirmed_once_it_returns() {
    let Some(mut t) = split(1, &[]).await else {
        return;
    };
    let api = t.api();
    api.seed(&["MUG"], 500).await;
    let (s, _) = api.one_mug_for("warm").await;
    assert_eq!(s, 201);

    t.proc("payment").kill();
    let answers = load(&api, 0..40).await;
    for (s, body) in &answers {
        assert_eq!(*s, 201, "{body}");
        assert_eq!(body["status"], "awaiting_payment", "{body}");
    }
    let order_metrics = t.procs["order"].metrics().await;
    assert_eq!(
        metric_sum(
            &order_metrics,
            "agora_circuit_breaker_state",
            &[r#"breaker="payment_service""#]
        ),
        1.0,
        "the payment module's breaker is open"
    );

    t.proc("payment").restart();
    let orders = api
        .orders_until(Duration::from_secs(30), |os| {
            os.len() == 41 && os.iter().all(|o| o["status"] == "confirmed")
        })
        .await;
    assert!(
        orders.iter().all(|o| o["status"] == "confirmed"),
        "{:?}",
        orders.iter().map(|o| &o["status"]).collect::<Vec<_>>()
    );
    none_charged_twice(&api, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_order_process_killed_mid_load_every_order_settles_after_its_restart() {
    let Some(mut t) = split(1, &[("AGORA__PAYMENT__SIMULATED_LATENCY_MS", "300".into())]).await
    else {
        return;
    };
    let api = t.api();
    api.seed(&["MUG"], 500).await;
    let running = {
        let api = api.clone();
        tokio::spawn(async move { load(&api, 0..60).await })
    };
    // Kill it once some orders are stored and others are mid-saga.
    eventually("orders in flight", Duration::from_secs(20), || async {
        let (_, page) = api.get(&api.staff, "/api/v1/orders?limit=100").await;
        let orders = page["items"].as_array()?.clone();
        (orders.len() >= 10).then_some(())
    })
    .await;
    t.proc("order").kill();
    let _ = running.await;
    t.proc("order").restart();
    let restarted = tokio::time::Instant::now();
    let orders = api
        .orders_until(Duration::from_secs(15), |os| !os.iter().any(in_flight))
        .await;
    assert!(
        !orders.iter().any(in_flight),
        "not settled 15 s after the restart: {:?}",
        orders.iter().filter(|o| in_flight(o)).collect::<Vec<_>>()
    );
    eprintln!(
        "{} orders settled {:?} after the restart",
        orders.len(),
        restarted.elapsed()
    );
    assert!(orders.iter().all(|o| o["status"] == "confirmed"));
    none_charged_twice(&api, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_order_instances_on_one_database_charge_each_order_once() {
    let Some(t) = split(2, &[("AGORA__PAYMENT__SIMULATED_LATENCY_MS", "50".into())]).await else {
        return;
    };
    let api = t.api();
    api.seed(&["MUG"], 500).await;
    let answers = load(&api, 0..80).await;
    assert!(answers.iter().all(|(s, _)| *s == 201));
    let orders = api
        .orders_until(Duration::from_secs(15), |os| !os.iter().any(in_flight))
        .await;
    assert_eq!(orders.len(), 80);
    assert!(orders.iter().all(|o| o["status"] == "confirmed"));
    none_charged_twice(&api, &orders).await;
    // Both instances took orders.
    for name in ["order", "order2"] {
        let m = t.procs[name].metrics().await;
        let served = metric_sum(
            &m,
            "agora_http_requests_total",
            &[r#"route="/api/v1/orders""#, r#"method="POST""#],
        );
        assert!(served > 0.0, "{name} served no order");
    }
}
