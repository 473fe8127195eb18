//! The order saga end to end: the whole binary over HTTP, with inventory and
//! payment behind the order module's ports, on SQLite and on the production
//! stores (PostgreSQL + the MongoDB-wire server).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agora::Settings;
use agora_kernel::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, each, header, spawn_app_with};

fn generous(s: &mut Settings) {
    s.rate_limit.per_second = 100_000;
    s.rate_limit.burst = 100_000;
}

/// Where alice's orders go.
pub fn address() -> Value {
    json!({"name": "Alice", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"})
}

pub struct Shop {
    pub app: TestApp,
    pub staff: String,
}

impl Shop {
    pub async fn open(configure: impl FnOnce(&mut Settings)) -> Shop {
        let app = spawn_app_with(|s| {
            generous(s);
            configure(s);
        })
        .await;
        let staff = app.token("sam", &[Role::Staff]);
        let shop = Shop { app, staff };
        shop.post(
            &shop.staff,
            "/api/v1/warehouses",
            json!({"code": "BER", "name": "Berlin"}),
            201,
        )
        .await;
        shop
    }

    /// A shop of five MUGs where alice has a confirmed order of `quantity`:
    /// the shop, alice's token and the order.
    pub async fn with_an_order(quantity: i64) -> (Shop, String, Value) {
        let shop = Shop::with_mugs(5).await;
        let alice = shop.customer("alice");
        let order = shop.confirmed_order(&alice, quantity).await;
        (shop, alice, order)
    }

    /// A shop of `units` MUGs where alice placed an order of `quantity` paid
    /// with `method` (taken, whatever its outcome): the shop, alice's token
    /// and the order.
    pub async fn with_a_placed_order(
        units: i64,
        quantity: i64,
        method: &str,
    ) -> (Shop, String, Value) {
        let shop = Shop::with_mugs(units).await;
        let alice = shop.customer("alice");
        let order = shop.placed(&alice, "MUG", quantity, method).await;
        (shop, alice, order)
    }

    /// A shop with `units` MUGs (8.50 EUR) in stock.
    pub async fn with_mugs(units: i64) -> Shop {
        let shop = Shop::open(|_| {}).await;
        shop.stock_item("MUG", 850, units).await;
        shop
    }

    pub async fn post(&self, token: &str, path: &str, body: Value, status: u16) -> Value {
        let res = self
            .app
            .client
            .post(self.app.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let got = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!(got, status, "{path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A request with a raw body (`None`: no body at all).
    pub async fn raw(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> reqwest::Response {
        let mut req = self
            .app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(token);
        if let Some((content_type, body)) = body {
            req = req
                .header("content-type", content_type)
                .body(body.to_owned());
        }
        req.send().await.unwrap()
    }

    /// `action` (ship, deliver, cancel) on order `id` with an empty body,
    /// answered with `status`; the body.
    pub async fn act(&self, token: &str, id: &str, action: &str, status: u16) -> Value {
        let path = format!("/api/v1/orders/{id}/{action}");
        self.post(token, &path, json!({}), status).await
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let res = self.app.get_as(path, token).await;
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn stock_item(&self, sku: &str, price_minor: i64, quantity: i64) {
        let body = json!({"sku": sku, "name": sku, "price_minor": price_minor, "currency": "EUR"});
        self.post(&self.staff, "/api/v1/products", body, 201).await;
        let receipt = json!({"sku": sku, "warehouse": "BER", "quantity": quantity});
        self.post(&self.staff, "/api/v1/stock/receipts", receipt, 201)
            .await;
    }

    /// `sku`'s stock as (on hand, reserved, available).
    pub async fn levels(&self, sku: &str) -> (i64, i64, i64) {
        let stock = self.stock(sku).await;
        let level = |field: &str| stock[field].as_i64().unwrap();
        (level("on_hand"), level("reserved"), level("available"))
    }

    pub async fn available(&self, sku: &str) -> i64 {
        self.stock(sku).await["available"].as_i64().unwrap()
    }

    pub fn customer(&self, sub: &str) -> String {
        self.app.token(sub, &[Role::Customer])
    }

    pub async fn place(
        &self,
        token: &str,
        items: Value,
        payment_method: &str,
    ) -> reqwest::Response {
        self.place_with_key(
            token,
            items,
            payment_method,
            &uuid::Uuid::new_v4().to_string(),
        )
        .await
    }

    pub async fn place_with_key(
        &self,
        token: &str,
        items: Value,
        payment_method: &str,
        key: &str,
    ) -> reqwest::Response {
        let body = json!({
            "items": items,
            "shipping_address": address(),
            "payment_method": payment_method,
        });
        self.order_request(token, key, &body).send().await.unwrap()
    }

    /// `POST /api/v1/orders` as `token` with idempotency key `key`, not sent.
    pub fn order_request(&self, token: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.app
            .client
            .post(self.app.url("/api/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
    }

    /// `sku`'s stock levels, as staff.
    pub async fn stock(&self, sku: &str) -> Value {
        let (status, stock) = self.get(&self.staff, &format!("/api/v1/stock/{sku}")).await;
        assert_eq!(status, 200, "{stock}");
        stock
    }

    /// Place an order of one line that is taken (201, whatever its
    /// outcome); its body.
    pub async fn placed(&self, token: &str, sku: &str, quantity: i64, method: &str) -> Value {
        let items = json!([{"sku": sku, "quantity": quantity}]);
        let res = self.place(token, items, method).await;
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    /// A confirmed order of `quantity` MUGs for `token`; returns it.
    pub async fn confirmed_order(&self, token: &str, quantity: i64) -> Value {
        let order = self.placed(token, "MUG", quantity, "tok_visa").await;
        assert_eq!(order["status"], "confirmed");
        order
    }

    /// Poll `token`'s notifications until one is `wanted`; it, or `Null`.
    pub async fn notification(&self, token: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            let (_, list) = self.get(token, "/api/v1/notifications").await;
            if let Some(n) = list["items"]
                .as_array()
                .and_then(|items| items.iter().find(|n| wanted(n)))
            {
                return n.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Value::Null
    }

    /// Poll an order until `done` holds (the recovery worker runs every 50 ms in tests).
    pub async fn wait_for(&self, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            let (_, order) = self.get(token, &format!("/api/v1/orders/{id}")).await;
            if done(&order) {
                return order;
            }
            last = order;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("order {id} never reached the expected state: {last}");
    }
}

/// Where `order`'s payment is.
pub fn payment_path(order: &Value) -> String {
    format!("/api/v1/payments/{}", order["payment_id"].as_str().unwrap())
}

fn fast_saga(s: &mut Settings) {
    s.order.retry_base_ms = 50;
    s.order.retry_max_secs = 1;
    s.order.recovery_every_ms = 50;
}

async fn happy_path_to_delivered(shop: &Shop) {
    shop.stock_item("TSHIRT", 1999, 10).await;
    shop.stock_item("MUG", 850, 5).await;
    let alice = shop.customer("alice");
    let res = shop
        .place(
            &alice,
            json!([{"sku": "TSHIRT", "quantity": 2}, {"sku": "MUG", "quantity": 1}]),
            "tok_visa",
        )
        .await;
    assert_eq!(res.status(), 201);
    let location = header(&res, "location").to_owned();
    let order: Value = res.json().await.unwrap();
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["customer_id"], "alice");
    assert_eq!(order["total_minor"], 2 * 1999 + 850);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["items"][0]["unit_price_minor"], 1999);
    assert_eq!(order["items"][0]["line_total_minor"], 3998);
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/orders/{id}"));
    assert_eq!(shop.available("TSHIRT").await, 8);

    // The payment exists and is the order's.
    let (status, payment) = shop.get(&alice, &payment_path(&order)).await;
    assert_eq!(status, 200, "{payment}");
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(payment["amount_minor"], order["total_minor"]);

    shop.act(&alice, &id, "ship", 403).await;
    let shipped = shop.act(&shop.staff, &id, "ship", 200).await;
    assert_eq!(shipped["status"], "shipped");
    // Shipping twice is an illegal transition.
    shop.act(&shop.staff, &id, "ship", 409).await;
    shop.act(&alice, &id, "cancel", 409).await;
    let delivered = shop.act(&shop.staff, &id, "deliver", 200).await;
    assert_eq!(delivered["status"], "delivered");

    let (_, history) = shop
        .get(&alice, &format!("/api/v1/orders/{id}/history"))
        .await;
    assert_eq!(
        each(&history, "to"),
        [
            "pending",
            "awaiting_payment",
            "confirmed",
            "shipped",
            "delivered"
        ]
    );
    assert!(history["items"][0]["from"].is_null());
    assert_eq!(history["items"][3]["actor"], "sam");
    // Shipping committed the stock: on hand drops, nothing stays reserved.
    assert_eq!(shop.levels("TSHIRT").await, (8, 0, 8));
}

#[tokio::test]
async fn an_order_goes_from_placed_to_delivered() {
    let shop = Shop::open(|_| {}).await;
    happy_path_to_delivered(&shop).await;
}

#[tokio::test]
async fn an_order_goes_from_placed_to_delivered_on_the_production_stores() {
    let Some(order_db) = crate::helpers::fresh_postgres_database().await else {
        return;
    };
    let Some(payment_db) = crate::helpers::fresh_postgres_database().await else {
        return;
    };
    let Some(notification_db) = crate::helpers::fresh_postgres_database().await else {
        return;
    };
    let Some(mongo) = mongo_url() else { return };
    let shop = Shop::open(|s| {
        s.order.database_url = order_db.into();
        s.payment.database_url = payment_db.into();
        s.notification.database_url = notification_db.into();
        s.inventory.database_url = mongo.into();
    })
    .await;
    let admin = shop.app.token("root", &[Role::Admin]);
    let (_, modules) = shop.get(&admin, "/api/v1/system/modules").await;
    assert_eq!(
        each(&modules, "store"),
        ["order", "inventory", "payment", "notification"].map(|m| if m == "inventory" {
            "mongodb"
        } else {
            "postgres"
        })
    );
    happy_path_to_delivered(&shop).await;
}

/// `AGORA_TEST_MONGODB_URL` with a fresh database; `None` (skip) outside CI.
fn mongo_url() -> Option<String> {
    agora_kernel::testing::fresh_mongodb_url("agora_e2e")
}

#[tokio::test]
async fn a_declined_card_fails_the_order_and_gives_the_stock_back() {
    let (shop, _, order) = Shop::with_a_placed_order(5, 3, "tok_chargeDeclined").await;
    assert_eq!(order["status"], "payment_failed");
    assert!(
        order["failure_reason"]
            .as_str()
            .unwrap()
            .contains("declined"),
        "{order}"
    );
    assert_eq!(shop.available("MUG").await, 5);
}

#[tokio::test]
async fn an_order_short_of_stock_is_rejected() {
    let (shop, _, order) = Shop::with_a_placed_order(1, 2, "tok_visa").await;
    assert_eq!(order["status"], "rejected");
    assert!(order["payment_id"].is_null());
    assert_eq!(shop.available("MUG").await, 1);
}

#[tokio::test]
async fn bad_orders_are_422_with_field_errors_and_a_missing_key_is_400() {
    let shop = Shop::with_mugs(1).await;
    let alice = shop.customer("alice");
    // Each bad order is 422 naming (one of) the fields at fault; a payment
    // method the provider cannot take is refused up front.
    let bad_orders = [
        (
            json!([{"sku": "NOPE", "quantity": 1}, {"sku": "MUG", "quantity": 0}]),
            "tok_visa",
            &["items[0].sku", "items[1].quantity"][..],
        ),
        (json!([]), "tok_visa", &["items"]),
        (
            json!([{"sku": "MUG", "quantity": 1}]),
            "tok visa",
            &["payment_method"],
        ),
    ];
    for (items, method, fields) in bad_orders {
        let body = assert_problem(shop.place(&alice, items, method).await, 422).await;
        assert!(
            fields.iter().any(|f| body["errors"][f].is_array()),
            "{fields:?}: {body}"
        );
    }
    // Without an idempotency key it is 400.
    let res = shop
        .raw(
            &alice,
            reqwest::Method::POST,
            "/api/v1/orders",
            Some(("application/json", "{}")),
        )
        .await;
    assert_problem(res, 400).await;
    // Without a token it is 401, key or not.
    for key in [None, Some("k-anon")] {
        let mut req = shop
            .app
            .client
            .post(shop.app.url("/api/v1/orders"))
            .json(&json!({}));
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        assert_problem(req.send().await.unwrap(), 401).await;
    }
    // Only customers place orders.
    let res = shop
        .place(
            &shop.staff,
            json!([{"sku": "MUG", "quantity": 1}]),
            "tok_visa",
        )
        .await;
    assert_problem(res, 403).await;
    assert_eq!(shop.available("MUG").await, 1);
}

#[tokio::test]
async fn cancelling_a_confirmed_order_refunds_it_and_releases_the_stock() {
    let (shop, alice, order) = Shop::with_an_order(2).await;
    let id = order["id"].as_str().unwrap();
    assert_eq!(shop.available("MUG").await, 3);
    let cancelled = shop
        .post(
            &alice,
            &format!("/api/v1/orders/{id}/cancel"),
            json!({"reason": "changed my mind"}),
            200,
        )
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(shop.available("MUG").await, 5);
    let (_, payment) = shop.get(&shop.staff, &payment_path(&order)).await;
    assert_eq!(payment["status"], "refunded", "{payment}");
    assert_eq!(payment["refunded_minor"], order["total_minor"]);
    // Twice is a no-op.
    let again = shop.act(&alice, id, "cancel", 200).await;
    assert_eq!(again["version"], cancelled["version"]);
}

#[tokio::test]
async fn the_same_idempotency_key_replays_the_order_and_another_body_is_refused() {
    let shop = Shop::with_mugs(5).await;
    let alice = shop.customer("alice");
    let mugs = |quantity: i64| {
        let items = json!([{"sku": "MUG", "quantity": quantity}]);
        shop.place_with_key(&alice, items, "tok_visa", "key-1")
    };
    let first = mugs(1).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let replay = mugs(1).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["id"], first["id"]);
    assert_problem(mugs(2).await, 422).await;
    assert_eq!(shop.available("MUG").await, 4, "charged and reserved once");
    let (_, list) = shop.get(&alice, "/api/v1/orders").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn another_customer_cannot_read_cancel_or_list_an_order() {
    let (shop, alice, order) = Shop::with_an_order(1).await;
    let bob = shop.customer("bob");
    let id = order["id"].as_str().unwrap();
    for path in [
        format!("/api/v1/orders/{id}"),
        format!("/api/v1/orders/{id}/history"),
    ] {
        let res = shop.app.get_as(&path, &bob).await;
        assert_problem(res, 404).await;
    }
    let cancel = format!("/api/v1/orders/{id}/cancel");
    let res = shop.raw(&bob, reqwest::Method::POST, &cancel, None).await;
    assert_problem(res, 404).await;
    let (_, list) = shop.get(&bob, "/api/v1/orders").await;
    assert_eq!(list["items"], json!([]));
    let (_, mine) = shop.get(&alice, "/api/v1/orders").await;
    assert_eq!(mine["items"][0]["id"], order["id"]);
    let (_, all) = shop
        .get(&shop.staff, "/api/v1/orders?status=confirmed")
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    // And bob cannot see alice's payment either.
    let res = shop.app.get_as(&payment_path(&order), &bob).await;
    assert_problem(res, 404).await;
}

#[tokio::test]
async fn the_address_changes_with_if_match_and_a_stale_version_is_412() {
    let (shop, alice, order) = Shop::with_an_order(1).await;
    let id = order["id"].as_str().unwrap();
    let version = order["version"].as_i64().unwrap();
    let body = json!({"shipping_address": {"name": "Alice", "line1": "2 Side St", "city": "Hamburg", "postal_code": "20095", "country": "DE"}});
    let patch = |if_match: Option<String>| {
        let mut req = shop
            .app
            .client
            .patch(shop.app.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(&alice)
            .json(&body);
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        req.send()
    };
    assert_problem(
        patch(Some(format!("\"{}\"", version - 1))).await.unwrap(),
        412,
    )
    .await;
    assert_problem(patch(None).await.unwrap(), 428).await;
    let res = patch(Some(format!("\"{version}\""))).await.unwrap();
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["shipping_address"]["city"], "Hamburg");
    assert_eq!(updated["version"], version + 1);
}

/// A Stripe-compatible provider the test can take down and bring back.
struct Provider {
    url: String,
    up: Arc<AtomicBool>,
}

fn stripe_stub() -> Provider {
    let up = Arc::new(AtomicBool::new(false));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let flag = up.clone();
    let server = actix_web::HttpServer::new(move || {
        let flag = flag.clone();
        actix_web::App::new().default_service(actix_web::web::to(move |req: actix_web::HttpRequest| {
            let flag = flag.clone();
            async move {
                if !flag.load(Ordering::SeqCst) {
                    return actix_web::HttpResponse::ServiceUnavailable().json(json!({"error": {"type": "api_error"}}));
                }
                let id = format!("pi_{}", uuid::Uuid::new_v4().simple());
                if req.path().starts_with("/v1/refunds") {
                    return actix_web::HttpResponse::Ok().json(json!({"id": format!("re_{id}"), "object": "refund", "status": "succeeded"}));
                }
                actix_web::HttpResponse::Ok().json(json!({"id": id, "object": "payment_intent", "status": "succeeded"}))
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    Provider { url, up }
}

fn with_provider(s: &mut Settings, provider: &Provider) {
    s.payment.provider = agora_payment::ProviderKind::Http;
    s.payment.provider_url = provider.url.clone();
    s.payment.provider_secret_key = "sk_test_agora".to_owned().into();
    s.payment.breaker.failure_threshold = 2;
    s.payment.breaker.recovery_timeout_secs = 1;
}

#[tokio::test]
async fn with_the_provider_down_an_order_waits_and_is_confirmed_once_it_is_back() {
    let provider = stripe_stub();
    let shop = Shop::open(|s| {
        fast_saga(s);
        with_provider(s, &provider);
    })
    .await;
    shop.stock_item("MUG", 850, 5).await;
    let alice = shop.customer("alice");
    let body = json!({
        "items": [{"sku": "MUG", "quantity": 1}],
        "shipping_address": address(),
        "payment_method": "pm_card_visa",
    });
    let res = shop
        .order_request(&alice, "k-down", &body)
        .header("x-request-id", "req-provider-down")
        .send()
        .await
        .unwrap();
    let order: Value = res.json().await.unwrap();
    assert_eq!(order["status"], "awaiting_payment", "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    // The breaker opens on repeated faults (the metric says so).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = shop.app.metrics().await;
    assert!(
        m.contains("agora_circuit_breaker_state{breaker=\"payment_provider\"}"),
        "{m}"
    );
    provider.up.store(true, Ordering::SeqCst);
    let confirmed = shop
        .wait_for(&alice, &id, |o| o["status"] == "confirmed")
        .await;
    // The worker's transition carries the placing request's correlation id.
    let (_, history) = shop
        .get(&alice, &format!("/api/v1/orders/{id}/history"))
        .await;
    let last = history["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["to"].as_str(), last["correlation_id"].as_str()),
        (Some("confirmed"), Some("req-provider-down"))
    );
    assert_eq!(shop.available("MUG").await, 4);
    // Charged exactly once.
    let (_, payments) = shop
        .get(&shop.staff, &format!("/api/v1/payments?order_id={id}"))
        .await;
    assert_eq!(payments["items"].as_array().unwrap().len(), 1, "{payments}");
    assert_eq!(payments["items"][0]["id"], confirmed["payment_id"]);
}

#[tokio::test]
async fn past_the_payment_deadline_an_unpaid_order_fails_and_its_stock_comes_back() {
    let provider = stripe_stub();
    let shop = Shop::open(|s| {
        fast_saga(s);
        s.order.payment_deadline_secs = 1;
        with_provider(s, &provider);
    })
    .await;
    shop.stock_item("MUG", 850, 5).await;
    let alice = shop.customer("alice");
    let order = shop.placed(&alice, "MUG", 2, "pm_card_visa").await;
    assert_eq!(order["status"], "awaiting_payment");
    assert_eq!(shop.available("MUG").await, 3);
    let failed = shop
        .wait_for(&alice, order["id"].as_str().unwrap(), |o| {
            o["status"] == "payment_failed"
        })
        .await;
    assert!(
        failed["failure_reason"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{failed}"
    );
    assert_eq!(shop.available("MUG").await, 5);
}

#[tokio::test]
async fn two_hundred_concurrent_orders_for_fifty_units_never_oversell() {
    let shop = Arc::new(Shop::open(|_| {}).await);
    shop.stock_item("LIMITED", 1000, 50).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let shop = shop.clone();
        tasks.push(tokio::spawn(async move {
            let token = shop.customer(&format!("c{i}"));
            let order = shop.placed(&token, "LIMITED", 1, "tok_visa").await;
            order["status"].as_str().unwrap().to_owned()
        }));
    }
    let mut confirmed = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap().as_str() {
            "confirmed" => confirmed += 1,
            "rejected" => rejected += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((confirmed, rejected), (50, 150));
    assert_eq!(shop.levels("LIMITED").await, (50, 50, 0));
}

#[tokio::test]
async fn a_confirmed_order_notifies_its_customer() {
    let (shop, alice, _) = Shop::with_an_order(1).await;
    let found = shop
        .notification(&alice, |n| n["template"] == "order_confirmed")
        .await;
    assert_eq!(
        found["customer_id"], "alice",
        "no order_confirmed notification"
    );
    assert_eq!(found["recipient"], "alice@example.com");
    assert_eq!(found["channel"], "email");
    // Bob sees none of it.
    let (_, list) = shop
        .get(&shop.customer("bob"), "/api/v1/notifications")
        .await;
    assert_eq!(list["items"], json!([]));
}

/// The Python with `aiosmtpd` (see `.ci/run`), or `None` outside CI.
fn python_with_aiosmtpd() -> Option<String> {
    let python = std::env::var("AGORA_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/venv/bin/python").to_owned());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI needs a Python with aiosmtpd at {python}"
    );
    eprintln!("SKIPPED: no Python with aiosmtpd at {python}");
    None
}

#[tokio::test]
async fn an_order_placed_over_http_sends_an_email_that_a_real_smtp_server_receives() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let port = crate::process::free_port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mail.jsonl");
    let mut server = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/modules/notification/tests/smtp_server.py"
        ))
        .args(["--port", &port.to_string(), "--mode", "record", "--out"])
        .arg(&out)
        .arg("--watch-stdin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert!(ready.starts_with("READY"), "{ready}");

    let shop = Shop::open(|s| {
        s.notification.smtp.url = format!("smtp://127.0.0.1:{port}").into();
        s.notification.smtp.from = "shop@agora.test".into();
        s.notification.poll_interval_ms = 50;
    })
    .await;
    shop.stock_item("MUG", 850, 5).await;
    let order = shop.confirmed_order(&shop.customer("alice"), 2).await;
    let id = order["id"].as_str().unwrap().to_owned();
    let mut mails = Vec::new();
    for _ in 0..200 {
        mails = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["event"] == "250")
            .collect();
        if !mails.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    let mail = mails.first().expect("the SMTP server received no e-mail");
    assert_eq!(mail["rcpt_tos"], json!(["alice@example.com"]));
    assert_eq!(mail["mail_from"], "shop@agora.test");
    assert!(mail["subject"].as_str().unwrap().contains(&id), "{mail}");
    assert!(mail["text"].as_str().unwrap().contains(&id), "{mail}");
}
