//! An API that never acts on bad input: every route with an optional body, no
//! body or optional query parameters refuses what it cannot read (400 / 415 /
//! 422 problem+json), and nothing changes.

use agora_kernel::Role;
use serde_json::json;

use crate::helpers::assert_problem;
use crate::orders::{Shop, address, payment_path};

const JSON: &str = "application/json";

impl Shop {
    /// Each of `bodies` (content type, body, status) sent to `path` is
    /// refused with its status.
    async fn refuses(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        bodies: &[(&str, &str, u16)],
    ) {
        for &(content_type, body, status) in bodies {
            let res = self
                .raw(token, method.clone(), path, Some((content_type, body)))
                .await;
            assert_problem(res, status).await;
        }
    }
}

/// Bodies a reader cannot act on, and the status each is refused with.
const UNREADABLE: [(&str, &str, u16); 5] = [
    (JSON, r#"{"reason":"#, 400),
    (JSON, r#"{"reason":5}"#, 422),
    (JSON, r#"{"reason":"too slow","refund":false}"#, 422),
    (JSON, r#""too slow""#, 422),
    ("text/plain", "please cancel", 415),
];

#[tokio::test]
async fn a_cancel_with_a_body_it_cannot_read_is_refused_and_the_order_stays_confirmed() {
    let (shop, alice, order) = Shop::with_an_order(2).await;
    let id = order["id"].as_str().unwrap();
    let path = format!("/api/v1/orders/{id}/cancel");
    shop.refuses(&alice, reqwest::Method::POST, &path, &UNREADABLE)
        .await;
    let (_, now) = shop.get(&alice, &format!("/api/v1/orders/{id}")).await;
    assert_eq!(now["status"], "confirmed", "{now}");
    assert_eq!(now["version"], order["version"]);
    assert_eq!(shop.available("MUG").await, 3, "the stock stays reserved");
    let (_, payment) = shop.get(&shop.staff, &payment_path(&order)).await;
    assert_eq!(payment["status"], "succeeded", "nothing was refunded");
    // No body at all is still a cancel.
    let res = shop.raw(&alice, reqwest::Method::POST, &path, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(shop.available("MUG").await, 5);
}

#[tokio::test]
async fn ship_and_deliver_take_no_body_and_refuse_one_they_cannot_read() {
    let (shop, _, order) = Shop::with_an_order(1).await;
    let id = order["id"].as_str().unwrap();
    for step in ["ship", "deliver"] {
        let path = format!("/api/v1/orders/{id}/{step}");
        let unreadable = [
            (JSON, "{", 400),
            (JSON, r#"{"carrier":"dhl"}"#, 422),
            ("text/plain", "now", 415),
        ];
        shop.refuses(&shop.staff, reqwest::Method::POST, &path, &unreadable)
            .await;
        let (_, now) = shop.get(&shop.staff, &format!("/api/v1/orders/{id}")).await;
        let before = if step == "ship" {
            "confirmed"
        } else {
            "shipped"
        };
        assert_eq!(now["status"], before, "{step}: {now}");
        // `{}` or nothing moves it.
        let body = (step == "ship").then_some((JSON, "{}"));
        let res = shop
            .raw(&shop.staff, reqwest::Method::POST, &path, body)
            .await;
        assert_eq!(res.status(), 200, "{step}");
    }
    let (_, done) = shop.get(&shop.staff, &format!("/api/v1/orders/{id}")).await;
    assert_eq!(done["status"], "delivered");
}

#[tokio::test]
async fn deleting_a_product_with_a_body_it_cannot_read_leaves_it_active() {
    let shop = Shop::with_mugs(5).await;
    shop.refuses(
        &shop.staff,
        reqwest::Method::DELETE,
        "/api/v1/products/MUG",
        &[(JSON, "{", 400), (JSON, r#"{"hard":true}"#, 422)],
    )
    .await;
    let (_, product) = shop.get(&shop.staff, "/api/v1/products/MUG").await;
    assert_eq!(product["active"], true, "{product}");
}

#[tokio::test]
async fn reservation_actions_refuse_bodies_they_cannot_read() {
    let shop = Shop::with_mugs(5).await;
    let service = shop.app.token("service:order", &[Role::Service]);
    let id = uuid::Uuid::now_v7().to_string();
    let reservation = json!({"reservation_id": id, "order_id": uuid::Uuid::now_v7().to_string(), "lines": [{"sku": "MUG", "quantity": 2}]});
    shop.post(&service, "/api/v1/reservations", reservation, 201)
        .await;
    for action in ["confirm", "commit", "release"] {
        let path = format!("/api/v1/reservations/{id}/{action}");
        let unreadable = [(JSON, "{", 400), (JSON, r#"{"force":true}"#, 422)];
        shop.refuses(&service, reqwest::Method::POST, &path, &unreadable)
            .await;
    }
    let (_, now) = shop
        .get(&service, &format!("/api/v1/reservations/{id}"))
        .await;
    assert_eq!(now["status"], "held", "{now}");
    assert_eq!(shop.available("MUG").await, 3);
    let res = shop
        .raw(
            &service,
            reqwest::Method::POST,
            &format!("/api/v1/reservations/{id}/release"),
            None,
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(shop.available("MUG").await, 5);
}

#[tokio::test]
async fn retrying_a_notification_with_a_body_it_cannot_read_changes_nothing() {
    let (shop, alice, _) = Shop::with_an_order(1).await;
    // Wait until the (log channel) delivery is done, so nothing else moves it.
    let notification = shop.notification(&alice, |n| n["status"] == "sent").await;
    let id = notification["id"]
        .as_str()
        .expect("no notification was sent");
    let path = format!("/api/v1/notifications/{id}/retry");
    let unreadable = [(JSON, "{", 400), (JSON, r#"{"now":true}"#, 422)];
    shop.refuses(&shop.staff, reqwest::Method::POST, &path, &unreadable)
        .await;
    let (_, after) = shop
        .get(&shop.staff, &format!("/api/v1/notifications/{id}"))
        .await;
    assert_eq!(
        (&after["status"], &after["attempts"]),
        (&notification["status"], &notification["attempts"]),
        "{after}"
    );
    // A readable retry reaches the service, which refuses a live notification.
    let res = shop
        .raw(&shop.staff, reqwest::Method::POST, &path, None)
        .await;
    assert_problem(res, 409).await;
}

#[tokio::test]
async fn list_endpoints_refuse_unknown_or_repeated_query_parameters() {
    let shop = Shop::with_mugs(5).await;
    for (path, field) in [
        ("/api/v1/orders?stauts=confirmed", "stauts"),
        ("/api/v1/orders?limit=5&limit=6", "limit"),
        ("/api/v1/products?page=2", "page"),
        ("/api/v1/warehouses?limit=1&sort=name", "sort"),
        ("/api/v1/stock/MUG/movements?kind=receipt", "kind"),
        ("/api/v1/payments?order=1", "order"),
        ("/api/v1/notifications?state=sent", "state"),
    ] {
        let res = shop.app.get_as(path, &shop.staff).await;
        let body = assert_problem(res, 422).await;
        assert!(body["errors"][field].is_array(), "{path}: {body}");
    }
    let (status, _) = shop
        .get(&shop.staff, "/api/v1/orders?status=confirmed&limit=5")
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn request_bodies_with_an_unknown_field_are_refused_and_change_nothing() {
    let shop = Shop::with_mugs(5).await;
    let alice = shop.customer("alice");
    let (_, prefs_before) = shop.get(&alice, "/api/v1/notifications/preferences").await;
    let cases = [
        (
            &shop.staff,
            reqwest::Method::POST,
            "/api/v1/products",
            json!({"sku": "LAMP", "name": "Lamp", "price_minor": 100, "currency": "EUR", "colour": "red"}),
            "colour",
        ),
        (
            &shop.staff,
            reqwest::Method::PATCH,
            "/api/v1/products/MUG",
            json!({"price_minor": 1, "currency": "EUR", "discount": 50}),
            "discount",
        ),
        (
            &shop.staff,
            reqwest::Method::POST,
            "/api/v1/stock/receipts",
            json!({"sku": "MUG", "warehouse": "BER", "quantity": 5, "qty": 5}),
            "qty",
        ),
        (
            &alice,
            reqwest::Method::PUT,
            "/api/v1/notifications/preferences",
            json!({"emial": "a@example.com"}),
            "emial",
        ),
    ];
    for (token, method, path, body, field) in cases {
        let res = shop
            .app
            .client
            .request(method, shop.app.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(res, 422).await;
        assert!(problem["errors"][field].is_array(), "{path}: {problem}");
    }
    let coupon = json!({
        "items": [{"sku": "MUG", "quantity": 1}],
        "shipping_address": address(),
        "payment_method": "tok_visa",
        "coupon": "FREE",
    });
    let res = shop
        .order_request(&alice, "k-coupon", &coupon)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, 422).await;
    assert!(problem["errors"]["coupon"].is_array(), "{problem}");
    let (_, product) = shop.get(&shop.staff, "/api/v1/products/MUG").await;
    assert_eq!(product["price_minor"], 850);
    let (status, _) = shop.get(&shop.staff, "/api/v1/products/LAMP").await;
    assert_eq!(status, 404);
    assert_eq!(shop.available("MUG").await, 5);
    let (_, prefs) = shop.get(&alice, "/api/v1/notifications/preferences").await;
    assert_eq!(prefs, prefs_before);
    let (_, orders) = shop.get(&alice, "/api/v1/orders").await;
    assert_eq!(orders["items"], json!([]));
}

#[tokio::test]
async fn a_payment_method_that_is_neither_a_test_token_nor_a_payment_method_id_is_refused_before_anything_is_reserved()
 {
    let shop = Shop::with_mugs(5).await;
    let alice = shop.customer("alice");
    for method in ["visa", "tok_", "pm_", "card_4242"] {
        let res = shop
            .place(&alice, json!([{"sku": "MUG", "quantity": 2}]), method)
            .await;
        let body = assert_problem(res, 422).await;
        assert!(
            body["errors"]["payment_method"].is_array(),
            "{method}: {body}"
        );
        assert_eq!(
            body["errors"].as_object().map(|e| e.len()),
            Some(1),
            "{body}"
        );
    }
    assert_eq!(shop.available("MUG").await, 5, "nothing was reserved");
    let (_, orders) = shop.get(&alice, "/api/v1/orders").await;
    assert_eq!(orders["items"], json!([]));
    let (_, payments) = shop.get(&shop.staff, "/api/v1/payments").await;
    assert_eq!(payments["items"], json!([]));
    let (_, movements) = shop.get(&shop.staff, "/api/v1/stock/MUG/movements").await;
    assert_eq!(
        movements["items"].as_array().map(Vec::len),
        Some(1),
        "only the receipt"
    );
}
