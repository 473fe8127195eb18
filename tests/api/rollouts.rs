//! Health-checked pools, canary releases and blue-green switches, with real
//! agora processes: a shop process (order, inventory, notification) calling
//! payment instances on one PostgreSQL database, driven through the shop's
//! admin API while orders flow.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agora_kernel::Role;
use agora_kernel::testing::{NatsServer, nats_namespace};
use serde_json::{Value, json};

use crate::helpers::fresh_postgres_database;
use crate::process::{Agora, Api, in_flight, metric_sum, token};

struct Shop {
    shop: Agora,
    payments: Vec<Agora>,
    _nats: NatsServer,
    _dir: tempfile::TempDir,
}

/// Quick analysis for tests: steps judged every 200 ms on a few samples,
/// with latency thresholds a debug build on a loaded machine meets (the
/// latency rule itself is tested with a paused clock in the unit tests).
fn fast_rollouts() -> Vec<(&'static str, String)> {
    vec![
        ("AGORA__ROLLOUT__EVALUATE_EVERY_MS", "200".into()),
        ("AGORA__ROLLOUT__MIN_SAMPLES", "3".into()),
        ("AGORA__ROLLOUT__ROLLBACK_MIN_SAMPLES", "3".into()),
        ("AGORA__ROLLOUT__PROMOTE_MAX_P99_MS", "5000".into()),
        ("AGORA__ROLLOUT__ROLLBACK_P99_MS", "20000".into()),
        ("AGORA__UPSTREAM__HEALTH_INTERVAL_MS", "200".into()),
        ("AGORA__UPSTREAM__TIMEOUT_MS", "5000".into()),
        // Orders a failing canary left waiting are retried within seconds, not
        // after the default back-off of up to a minute.
        ("AGORA__ORDER__RETRY_BASE_MS", "200".into()),
        ("AGORA__ORDER__RETRY_MAX_SECS", "2".into()),
    ]
}

/// A shop and `n` payment instances; `routed` of them in the shop's pool;
/// `payment_env[i]` extra settings of instance i. `local_payment`: the shop
/// hosts payment itself (on the same database) and routes it locally.
async fn shop(
    n: usize,
    routed: usize,
    payment_env: &[Vec<(&'static str, String)>],
    local_payment: bool,
) -> Option<Shop> {
    let payment_db = fresh_postgres_database().await?;
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir().unwrap();
    let ns = nats_namespace("rollout");
    let common = |p: &mut Agora| {
        p.set("AGORA__BUS__URL", &nats.url());
        p.set("AGORA__BUS__NAMESPACE", &ns);
        p.set("AGORA__PAYMENT__DATABASE_URL", &payment_db);
        for (k, v) in fast_rollouts() {
            p.set(k, &v);
        }
    };
    let mut shop = Agora::prepare("shop", dir.path());
    let mut payments: Vec<Agora> = (0..n)
        .map(|i| Agora::prepare(&format!("payment{i}"), dir.path()))
        .collect();
    common(&mut shop);
    if local_payment {
        shop.set("AGORA__MODULES", "order,inventory,payment,notification");
    } else {
        shop.set("AGORA__MODULES", "order,inventory,notification");
        let urls: Vec<String> = payments[..routed].iter().map(|p| p.base.clone()).collect();
        shop.set("AGORA__REMOTE__PAYMENT__URLS", &urls.join(","));
    }
    for (i, p) in payments.iter_mut().enumerate() {
        common(p);
        p.set("AGORA__MODULES", "payment");
        for m in ["ORDER", "INVENTORY", "NOTIFICATION"] {
            p.set(&format!("AGORA__REMOTE__{m}__URLS"), &shop.base);
        }
        for (k, v) in payment_env.get(i).into_iter().flatten() {
            p.set(k, v);
        }
    }
    for p in &mut payments {
        p.restart();
    }
    shop.restart();
    Some(Shop {
        shop,
        payments,
        _nats: nats,
        _dir: dir,
    })
}

/// `workers` tasks, each running `step(worker, i)` for i = 0, 1, … until
/// told to stop; all their results.
fn until_stopped<T, F, Fut>(
    workers: usize,
    stop: Arc<AtomicBool>,
    step: F,
) -> tokio::task::JoinHandle<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let (step, stop) = (step.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        done.push(step(w, done.len()).await);
                    }
                    done
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    })
}

/// Forwarded reads of the payment API by many callers (each its own `sub`,
/// so they spread over the split), four at a time, until told to stop; one
/// entry per read.
fn keep_reading(api: &Api, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<()>> {
    let api = api.clone();
    until_stopped(4, stop, move |w, n| {
        let api = api.clone();
        async move {
            let c = token(&format!("reader{w}-{n}"), &[Role::Customer]);
            let (s, b) = api.get(&c, "/api/v1/payments?limit=1").await;
            assert_eq!(s, 200, "{b}");
        }
    })
}

/// Place orders (one per customer, eight at a time) until told to stop;
/// their statuses at placement.
fn keep_ordering(api: &Api, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    let api = api.clone();
    until_stopped(8, stop, move |w, i| {
        let api = api.clone();
        async move {
            let (s, body) = api.one_mug_for(&format!("flow{w}-{i}")).await;
            if s == 201 {
                body["status"].as_str().unwrap_or("?").to_owned()
            } else {
                format!("http {s}")
            }
        }
    })
}

fn admin() -> String {
    token("root", &[Role::Admin])
}

async fn admin_post(shop: &Agora, path: &str, body: Value) -> (u16, Value) {
    let api = Api::new(&shop.admin);
    api.post(&admin(), path, body).await
}

async fn rollout_of(shop: &Agora, module: &str) -> Value {
    let api = Api::new(&shop.admin);
    let (s, v) = api
        .get(&admin(), &format!("/admin/rollouts/{module}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Poll the rollout until it leaves `progressing`.
async fn settled(shop: &Agora, module: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = rollout_of(shop, module).await;
        if v["state"] != "progressing" || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn charges_served(p: &Agora) -> f64 {
    metric_sum(
        &p.metrics().await,
        "agora_http_requests_total",
        &[r#"route="/api/v1/payments""#, r#"method="POST""#],
    )
}

async fn all_confirmed(api: &Api, within: Duration) -> Vec<Value> {
    let orders = api
        .orders_until(within, |os| {
            !os.iter().any(in_flight) && os.iter().all(|o| o["status"] == "confirmed")
        })
        .await;
    assert!(
        orders.iter().all(|o| o["status"] == "confirmed"),
        "{:?}",
        orders.iter().map(|o| &o["status"]).collect::<Vec<_>>()
    );
    orders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_an_admin_and_a_well_formed_rollout() {
    let Some(s) = shop(1, 1, &[], false).await else {
        return;
    };
    let api = Api::new(&s.shop.admin);
    let body =
        json!({"module": "payment", "strategy": "canary", "canary_urls": ["http://127.0.0.1:9"]});
    let res = api
        .client
        .post(format!("{}/admin/rollouts", s.shop.admin))
        .json(&body)
        .send()
        .await
        .unwrap();
    crate::helpers::assert_problem(res, 401).await;
    let (st, _) = api
        .post(&token("sam", &[Role::Staff]), "/admin/rollouts", body)
        .await;
    assert_eq!(st, 403);
    for bad in [
        json!({"module": "shipping", "strategy": "canary", "canary_urls": ["http://x:1"]}),
        json!({"module": "payment", "strategy": "linear", "canary_urls": ["http://x:1"]}),
        json!({"module": "payment", "strategy": "canary"}),
        json!({"module": "payment", "strategy": "canary", "canary_urls": ["ftp://x"]}),
        json!({"module": "payment", "strategy": "canary", "canary_urls": ["http://x:1"], "steps": [50, 25]}),
        json!({"module": "payment", "strategy": "canary", "canary_urls": ["http://x:1"], "step_secs": 0}),
        json!({"module": "payment", "strategy": "blue_green", "canary_urls": ["http://x:1"]}),
        json!({"module": "payment", "strategy": "canary", "canary_urls": ["http://x:1"], "weight": 5}),
    ] {
        let (st, b) = api.post(&admin(), "/admin/rollouts", bad.clone()).await;
        assert_eq!(st, 422, "{bad} → {b}");
    }
    let (st, _) = api.get(&admin(), "/admin/rollouts/payment").await;
    assert_eq!(st, 404, "none yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_step_by_step_and_its_pool_becomes_stable() {
    let Some(mut s) = shop(2, 1, &[], false).await else {
        return;
    };
    let api = Api::new(&s.shop.base);
    api.seed(&["MUG"], 100_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_ordering(&api, stop.clone());
    let reads = keep_reading(&api, stop.clone());
    let canary = s.payments[1].base.clone();
    let (st, started) = admin_post(
        &s.shop,
        "/admin/rollouts",
        json!({"module": "payment", "strategy": "canary", "canary_urls": [canary],
               "steps": [5, 25, 50, 100], "step_secs": 2}),
    )
    .await;
    assert_eq!(st, 201, "{started}");
    assert_eq!(
        (started["state"].as_str(), started["weight"].as_u64()),
        (Some("progressing"), Some(5))
    );
    let (st, _) = admin_post(
        &s.shop,
        "/admin/rollouts",
        json!({"module": "payment", "strategy": "canary", "canary_urls": [canary]}),
    )
    .await;
    assert_eq!(st, 409, "one progressing rollout per module");

    let done = settled(&s.shop, "payment", Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert!(!reads.await.unwrap().is_empty());
    assert_eq!(done["state"], "promoted", "{done}");
    assert_eq!(done["weight"], 100);
    assert_eq!(done["canary_urls"], json!([canary]), "echoed as given");
    assert_eq!(done["stable_urls"], json!([s.payments[0].base]));
    let verdicts: Vec<&str> = done["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["verdict"].as_str())
        .filter(|v| *v != "hold")
        .collect();
    assert_eq!(verdicts, ["advance", "advance", "advance", "promote"]);
    let weights: Vec<u64> = done["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["verdict"] != "hold")
        .filter_map(|d| d["weight"].as_u64())
        .collect();
    assert_eq!(weights, [5, 25, 50, 100]);
    assert!(statuses.iter().all(|st| st == "confirmed"), "{statuses:?}");

    // The canary's pool is the stable one now: the old instance can go.
    s.payments[0].kill();
    let before = charges_served(&s.payments[1]).await;
    let (st, o) = api.one_mug_for("after").await;
    assert_eq!((st, o["status"].as_str()), (201, Some("confirmed")), "{o}");
    assert!(charges_served(&s.payments[1]).await > before);
    let m = s.shop.metrics().await;
    assert_eq!(
        metric_sum(&m, "agora_rollout_weight", &[r#"module="payment""#]),
        0.0
    );
    assert_eq!(
        metric_sum(&m, "agora_rollout_state", &[r#"module="payment""#]),
        2.0
    );
    assert!(
        metric_sum(
            &m,
            "agora_rollout_decisions_total",
            &[r#"module="payment""#, r#"verdict="advance""#]
        ) >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_every_order_still_confirms_through_stable() {
    // The canary cannot reach its payment provider: every charge there fails.
    let broken = vec![
        ("AGORA__PAYMENT__PROVIDER", "http".into()),
        ("AGORA__PAYMENT__PROVIDER_URL", "http://127.0.0.1:9".into()),
        ("AGORA__PAYMENT__PROVIDER_TIMEOUT_MS", "200".into()),
    ];
    let Some(s) = shop(2, 1, &[vec![], broken], false).await else {
        return;
    };
    let api = Api::new(&s.shop.base);
    api.seed(&["MUG"], 100_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_ordering(&api, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, b) = admin_post(
        &s.shop,
        "/admin/rollouts",
        // A first step of 20 % (not the default 5 %) and 5 s steps, so the
        // canary sees enough calls to be judged even on a loaded machine.
        json!({"module": "payment", "strategy": "canary",
               "canary_urls": [s.payments[1].base], "steps": [20, 50, 100], "step_secs": 5}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let done = settled(&s.shop, "payment", Duration::from_secs(90)).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert_eq!(done["weight"], 0);
    let last = done["decisions"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last["verdict"], "rollback", "{last}");
    assert!(last["error_rate"].as_f64().unwrap() > 0.01, "{last}");
    // Only the canary's share (20 %) saw failed charges.
    let waiting = statuses.iter().filter(|s| *s != "confirmed").count();
    assert!(
        waiting * 100 <= statuses.len() * 35 + 300,
        "{waiting} of {} orders were not confirmed at once",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| !s.starts_with("http")),
        "{statuses:?}"
    );
    // The saga retried them through the stable pool.
    all_confirmed(&api, Duration::from_secs(30)).await;
    let m = s.shop.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "agora_circuit_breaker_state",
            &[r#"breaker="payment_service""#]
        ),
        0.0,
        "the rollback caught it, not the module's breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_all_traffic_rolls_back_and_refuses_a_green_that_fails_its_smoke_test()
{
    let Some(s) = shop(2, 1, &[], false).await else {
        return;
    };
    let api = Api::new(&s.shop.base);
    api.seed(&["MUG"], 1000).await;
    let (blue, green) = (&s.payments[0], &s.payments[1]);
    let order = |n: &str| {
        let api = api.clone();
        let n = n.to_owned();
        async move {
            let (st, o) = api.one_mug_for(&n).await;
            assert_eq!((st, o["status"].as_str()), (201, Some("confirmed")), "{o}");
        }
    };

    // A green pool nobody answers: rolled back, traffic untouched.
    let nowhere = format!("http://127.0.0.1:{}", crate::process::free_port());
    let (st, _) = admin_post(
        &s.shop,
        "/admin/rollouts",
        json!({"module": "payment", "strategy": "blue_green", "green_urls": [nowhere]}),
    )
    .await;
    assert_eq!(st, 201);
    let v = settled(&s.shop, "payment", Duration::from_secs(20)).await;
    assert_eq!(v["state"], "rolled_back", "{v}");
    let reason = v["decisions"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("smoke test failed"), "{reason}");
    let before = charges_served(blue).await;
    order("bg-1").await;
    assert!(charges_served(blue).await > before, "still on blue");

    // A healthy green: everything switches at once.
    let (st, _) = admin_post(
        &s.shop,
        "/admin/rollouts",
        json!({"module": "payment", "strategy": "blue_green", "green_urls": [green.base]}),
    )
    .await;
    assert_eq!(st, 201);
    let v = settled(&s.shop, "payment", Duration::from_secs(20)).await;
    assert_eq!(
        (v["state"].as_str(), v["weight"].as_u64()),
        (Some("promoted"), Some(100))
    );
    let (b0, g0) = (charges_served(blue).await, charges_served(green).await);
    for i in 0..5 {
        order(&format!("bg-green-{i}")).await;
    }
    assert_eq!(charges_served(blue).await, b0, "blue takes nothing");
    assert!(charges_served(green).await >= g0 + 5.0);

    // Rollback: blue again, at once.
    let (st, v) = admin_post(&s.shop, "/admin/rollouts/payment/rollback", json!({})).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("rolled_back")), "{v}");
    let g1 = charges_served(green).await;
    for i in 0..3 {
        order(&format!("bg-blue-{i}")).await;
    }
    assert_eq!(charges_served(green).await, g1, "green takes nothing");
    let (st, _) = admin_post(&s.shop, "/admin/rollouts/payment/rollback", json!({})).await;
    assert_eq!(st, 409, "nothing left to roll back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_instances_under_load_fails_almost_nothing_and_nothing_once_it_is_down()
{
    let Some(mut s) = shop(2, 2, &[], false).await else {
        return;
    };
    let api = Api::new(&s.shop.base);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // Reads forwarded to the payment pool, ten at a time.
    let workers: Vec<_> = (0..10)
        .map(|_| {
            let api = api.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (st, _) = api.get(&api.staff, "/api/v1/payments?limit=1").await;
                    seen.push((started.elapsed(), st));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = started.elapsed();
    s.payments[1].kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    let dying: Vec<u16> = seen
        .iter()
        .filter(|(t, _)| *t >= killed_at && *t < killed_at + Duration::from_secs(3))
        .map(|(_, s)| *s)
        .collect();
    let after: Vec<u16> = seen
        .iter()
        .filter(|(t, _)| *t >= killed_at + Duration::from_secs(3))
        .map(|(_, s)| *s)
        .collect();
    let failed = dying.iter().filter(|s| **s != 200).count();
    assert!(
        failed * 100 <= dying.len(),
        "{failed} of {} failed while it died",
        dying.len()
    );
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|s| *s == 200),
        "failures after it was marked down"
    );
    let m = s.shop.metrics().await;
    let down = format!(r#"url="{}""#, s.payments[1].base);
    assert_eq!(
        metric_sum(&m, "agora_upstream_healthy", &[&down]),
        0.0,
        "marked down"
    );
    let up = format!(r#"url="{}""#, s.payments[0].base);
    assert_eq!(metric_sum(&m, "agora_upstream_healthy", &[&up]), 1.0);
    assert!(
        metric_sum(
            &m,
            "agora_upstream_requests_total",
            &[&up, r#"outcome="ok""#]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_hosted_here_is_canaried_to_remote_instances_and_extracted() {
    let Some(s) = shop(1, 0, &[], true).await else {
        return;
    };
    let api = Api::new(&s.shop.base);
    api.seed(&["MUG"], 100_000).await;
    let remote = &s.payments[0];
    let stop = Arc::new(AtomicBool::new(false));
    let load = keep_ordering(&api, stop.clone());
    let reads = keep_reading(&api, stop.clone());
    let (st, b) = admin_post(
        &s.shop,
        "/admin/rollouts",
        json!({"module": "payment", "strategy": "canary", "canary_urls": [remote.base],
               "steps": [25, 100], "step_secs": 2}),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["stable_urls"], json!([]), "this process itself");
    let done = settled(&s.shop, "payment", Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert!(!reads.await.unwrap().is_empty());
    assert_eq!(done["state"], "promoted", "{done}");
    assert!(statuses.iter().all(|st| st == "confirmed"), "{statuses:?}");
    // Served remotely now: charges and forwarded reads both go there.
    let before = charges_served(remote).await;
    let (st, o) = api.one_mug_for("extracted").await;
    assert_eq!((st, o["status"].as_str()), (201, Some("confirmed")));
    assert!(charges_served(remote).await > before);
    let reads = |m: String| {
        metric_sum(
            &m,
            "agora_http_requests_total",
            &[r#"route="/api/v1/payments""#, r#"method="GET""#],
        )
    };
    let r0 = reads(remote.metrics().await);
    let (st, _) = api.get(&api.staff, "/api/v1/payments?limit=1").await;
    assert_eq!(st, 200);
    assert!(reads(remote.metrics().await) > r0, "the read was forwarded");
    // And back.
    let (st, v) = admin_post(&s.shop, "/admin/rollouts/payment/rollback", json!({})).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("rolled_back")));
    let before = charges_served(remote).await;
    let (_, o) = api.one_mug_for("back").await;
    assert_eq!(o["status"], "confirmed");
    assert_eq!(charges_served(remote).await, before, "local again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_command_drives_the_admin_api_of_each_process_given() {
    let Some(s) = shop(2, 1, &[], false).await else {
        return;
    };
    let agora = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agora"))
            .arg("rollout")
            .args(args)
            .env_remove("AGORA__HTTP__ADDR")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let admin = s.shop.admin.as_str();
    let (ok, out) = agora(&["status", "--module", "payment", "--admin", admin]);
    assert!(!ok, "no rollout yet: {out}");
    assert!(out.contains("404"), "{out}");
    let green = s.payments[1].base.as_str();
    let (ok, out) = agora(&[
        "start",
        "--module",
        "payment",
        "--strategy",
        "blue-green",
        "--url",
        green,
        "--admin",
        admin,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("201"), "{out}");
    settled(&s.shop, "payment", Duration::from_secs(20)).await;
    let (ok, out) = agora(&[
        "status", "--module", "payment", "--admin", admin, "--admin", admin,
    ]);
    assert!(ok, "{out}");
    assert_eq!(out.matches(r#""state":"promoted""#).count(), 2, "{out}");
    let (ok, out) = agora(&["rollback", "--module", "payment", "--admin", admin]);
    assert!(ok && out.contains(r#""state":"rolled_back""#), "{out}");
}
