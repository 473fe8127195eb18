//! The HTTP surface through the module's own `configure()`: a stand-in gateway
//! (`agora_kernel::testing::principal_from_test_headers`) puts a principal with
//! the roles named in `x-test-roles` on the request, as the real one does after
//! checking the token. Every error is problem+json.

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::middleware::from_fn;
use actix_web::{App, test, web};
use agora_kernel::Module;
use agora_kernel::problem::PROBLEM_JSON;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::Harness;

/// The module's routes behind the stand-in gateway, and the calls the tests make.
struct Client<S> {
    app: S,
}

/// The module's routes on `h`, seeded by [`Client::seed`].
async fn app(
    h: &Harness,
) -> Client<
    impl Service<
        actix_http::Request,
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
    >,
> {
    let module = &h.module;
    let app = test::init_service(
        App::new()
            .wrap(from_fn(agora_kernel::testing::principal_from_test_headers))
            .configure(agora_kernel::http::extractors(64 * 1024))
            .service(web::scope("/api/v1").configure(|cfg| module.configure(cfg))),
    )
    .await;
    let client = Client { app };
    client.seed().await;
    client
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl<S, B> Client<S>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    async fn call(
        &self,
        method: &str,
        uri: &str,
        roles: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = match method {
            "GET" => test::TestRequest::get(),
            "POST" => test::TestRequest::post(),
            "PATCH" => test::TestRequest::patch(),
            "DELETE" => test::TestRequest::delete(),
            "PUT" => test::TestRequest::put(),
            other => panic!("no method {other}"),
        }
        .uri(uri);
        if let Some(r) = roles {
            req = req.insert_header(("x-test-roles", r));
        }
        if let Some(b) = body {
            req = req.set_json(b);
        }
        let resp = test::call_service(&self.app, req.to_request()).await;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = test::read_body(resp).await;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Reply {
            status,
            content_type,
            body,
        }
    }

    async fn get(&self, uri: &str, roles: Option<&str>) -> Reply {
        self.call("GET", uri, roles, None).await
    }

    async fn post(&self, uri: &str, roles: Option<&str>, body: Value) -> Reply {
        self.call("POST", uri, roles, Some(body)).await
    }

    async fn patch(&self, uri: &str, roles: Option<&str>, body: Value) -> Reply {
        self.call("PATCH", uri, roles, Some(body)).await
    }

    /// `POST /reservations/{id}/{action}` (no body).
    async fn transition(&self, id: Uuid, action: &str, roles: Option<&str>) -> Reply {
        let uri = format!("/api/v1/reservations/{id}/{action}");
        self.call("POST", &uri, roles, None).await
    }

    /// Product `TEE-1` (19.99 EUR), warehouse `BER`, 10 of it received there.
    async fn seed(&self) {
        let seed = [
            (
                "/api/v1/products",
                json!({"sku": "TEE-1", "name": "Tee", "price_minor": 1999, "currency": "EUR"}),
            ),
            (
                "/api/v1/warehouses",
                json!({"code": "BER", "name": "Berlin"}),
            ),
            (
                "/api/v1/stock/receipts",
                json!({"sku": "TEE-1", "warehouse": "BER", "quantity": 10, "reference": "PO-1"}),
            ),
        ];
        for (uri, body) in seed {
            let r = self.post(uri, STAFF, body).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        }
    }
}

fn assert_problem(r: &Reply, status: u16) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert_eq!(r.content_type, PROBLEM_JSON, "{}", r.body);
    assert_eq!(r.body["status"], status);
    for key in ["type", "title", "detail"] {
        assert!(r.body[key].is_string(), "{key} missing in {}", r.body);
    }
}

/// A 422 naming at least `fields`.
fn assert_invalid(r: &Reply, fields: &[&str]) {
    assert_problem(r, 422);
    for field in fields {
        assert!(r.body["errors"][field].is_array(), "{field} in {}", r.body);
    }
}

/// The fields a 422 names, in the order of its `errors` map.
fn error_fields(r: &Reply) -> Vec<&str> {
    r.body["errors"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

/// (on_hand, reserved) of `TEE-1`.
fn levels(stock: &Reply) -> (Option<i64>, Option<i64>) {
    (
        stock.body["on_hand"].as_i64(),
        stock.body["reserved"].as_i64(),
    )
}

const STAFF: Option<&str> = Some("staff");
const CUSTOMER: Option<&str> = Some("customer");
const SERVICE: Option<&str> = Some("service");

#[tokio::test]
async fn staff_manage_the_catalogue_and_stock_with_the_documented_field_names() {
    let h = Harness::sqlite().await;
    let app = app(&h).await;

    let p = app.get("/api/v1/products/TEE-1", CUSTOMER).await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.body["sku"], "TEE-1");
    assert_eq!(p.body["price_minor"], 1999);
    assert_eq!(p.body["currency"], "EUR");
    assert_eq!(p.body["active"], true);
    assert_eq!(p.body["description"], Value::Null);

    let patched = app.patch("/api/v1/products/TEE-1", STAFF, json!({"name": "Tee v2", "description": "cotton", "price_minor": 2100, "currency": "EUR"})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["name"], "Tee v2");
    assert_eq!(patched.body["description"], "cotton");
    let cleared = app
        .patch(
            "/api/v1/products/TEE-1",
            STAFF,
            json!({"description": null}),
        )
        .await;
    assert_eq!(cleared.body["description"], Value::Null);
    assert_eq!(cleared.body["name"], "Tee v2");

    let list = app.get("/api/v1/products?limit=1", CUSTOMER).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["next_cursor"], Value::Null);
    let wl = app.get("/api/v1/warehouses", CUSTOMER).await;
    assert_eq!(wl.body["items"][0]["code"], "BER");

    let adj = app
        .post(
            "/api/v1/stock/adjustments",
            STAFF,
            json!({"sku": "TEE-1", "warehouse": "BER", "delta": -2, "reason": "damaged"}),
        )
        .await;
    assert_eq!(adj.status, StatusCode::CREATED, "{}", adj.body);
    assert_eq!(adj.body["on_hand"], 8);
    assert_eq!(adj.body["kind"], "adjustment");

    let stock = app.get("/api/v1/stock/TEE-1", CUSTOMER).await;
    assert_eq!(stock.status, StatusCode::OK);
    assert_eq!(
        stock.body,
        json!({"sku": "TEE-1", "on_hand": 8, "reserved": 0, "available": 8,
               "warehouses": [{"warehouse": "BER", "on_hand": 8, "reserved": 0, "available": 8}]})
    );
    let moves = app.get("/api/v1/stock/TEE-1/movements", STAFF).await;
    assert_eq!(moves.status, StatusCode::OK);
    let items = moves.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["kind"], "adjustment");
    assert_eq!(items[0]["reason"], "damaged");
    assert_eq!(items[1]["reference"], "PO-1");
    assert_eq!(items[1]["actor"], "tester");
    for key in [
        "quantity",
        "on_hand",
        "reserved",
        "available",
        "correlation_id",
        "at",
    ] {
        assert!(!items[0][key].is_null(), "{key}");
    }

    let deleted = app
        .call("DELETE", "/api/v1/products/TEE-1", STAFF, None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.body["active"], false);
    assert_problem(&app.get("/api/v1/products/TEE-1", CUSTOMER).await, 404);
}

#[tokio::test]
async fn customers_read_but_never_change_and_only_services_reserve() {
    let h = Harness::sqlite().await;
    let app = app(&h).await;

    let writes = [
        (
            "POST",
            "/api/v1/products",
            json!({"sku": "X", "name": "X", "price_minor": 1, "currency": "EUR"}),
        ),
        ("PATCH", "/api/v1/products/TEE-1", json!({"name": "hacked"})),
        (
            "POST",
            "/api/v1/warehouses",
            json!({"code": "X", "name": "X"}),
        ),
        (
            "POST",
            "/api/v1/stock/receipts",
            json!({"sku": "TEE-1", "warehouse": "BER", "quantity": 1}),
        ),
        (
            "POST",
            "/api/v1/stock/adjustments",
            json!({"sku": "TEE-1", "warehouse": "BER", "delta": -1, "reason": "x"}),
        ),
    ];
    for (method, uri, body) in &writes {
        for roles in [CUSTOMER, SERVICE] {
            let r = app.call(method, uri, roles, Some(body.clone())).await;
            assert_problem(&r, 403);
        }
    }
    assert_problem(
        &app.call("DELETE", "/api/v1/products/TEE-1", CUSTOMER, None)
            .await,
        403,
    );
    assert_problem(
        &app.get("/api/v1/stock/TEE-1/movements", CUSTOMER).await,
        403,
    );

    let reserve = json!({"reservation_id": Uuid::now_v7(), "order_id": "order-1", "lines": [{"sku": "TEE-1", "quantity": 1}]});
    for roles in [CUSTOMER, STAFF] {
        let r = app
            .post("/api/v1/reservations", roles, reserve.clone())
            .await;
        assert_problem(&r, 403);
    }
    // no principal at all: 401
    assert_problem(&app.get("/api/v1/products", None).await, 401);
    let stock = app.get("/api/v1/stock/TEE-1", CUSTOMER).await;
    assert_eq!(stock.body["on_hand"], 10, "nothing changed");
    let product = app.get("/api/v1/products/TEE-1", CUSTOMER).await;
    assert_eq!(product.body["name"], "Tee");
}

#[tokio::test]
async fn a_reservation_round_trip_over_http() {
    let h = Harness::sqlite().await;
    let app = app(&h).await;
    let id = Uuid::now_v7();
    let body = json!({"reservation_id": id, "order_id": "order-1", "lines": [{"sku": "TEE-1", "quantity": 4}], "ttl_secs": 120});
    let r = app
        .post("/api/v1/reservations", SERVICE, body.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["reservation_id"], id.to_string());
    assert_eq!(r.body["status"], "held");
    assert_eq!(
        r.body["lines"][0]["allocations"],
        json!([{"warehouse": "BER", "quantity": 4}])
    );
    assert!(r.body["expires_at"].is_string());

    let again = app.post("/api/v1/reservations", SERVICE, body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, r.body);

    let got = app.get(&format!("/api/v1/reservations/{id}"), STAFF).await;
    assert_eq!(got.body, r.body);
    let confirmed = app.transition(id, "confirm", SERVICE).await;
    assert_eq!(confirmed.body["status"], "confirmed");
    assert_eq!(confirmed.body["expires_at"], Value::Null);
    let committed = app.transition(id, "commit", SERVICE).await;
    assert_eq!(committed.status, StatusCode::OK);
    assert_eq!(committed.body["status"], "committed");
    assert_problem(&app.transition(id, "release", SERVICE).await, 409);
    let stock = app.get("/api/v1/stock/TEE-1", CUSTOMER).await;
    assert_eq!(levels(&stock), (Some(6), Some(0)));

    let unknown = format!("/api/v1/reservations/{}", Uuid::now_v7());
    assert_problem(&app.get(&unknown, SERVICE).await, 404);
    assert_problem(
        &app.get("/api/v1/reservations/not-a-uuid", SERVICE).await,
        404,
    );
    assert_problem(&app.transition(id, "release", CUSTOMER).await, 403);
}

#[tokio::test]
async fn stock_shortfalls_and_conflicts_answer_409_naming_what_is_short() {
    let h = Harness::sqlite().await;
    let app = app(&h).await;
    let short = app.post("/api/v1/reservations", SERVICE, json!({"reservation_id": Uuid::now_v7(), "order_id": "o", "lines": [{"sku": "TEE-1", "quantity": 11}]})).await;
    assert_problem(&short, 409);
    assert_eq!(short.body["type"], "urn:agora:problem:insufficient-stock");
    assert!(short.body["detail"].as_str().unwrap().contains("TEE-1"));
    assert!(
        short.body["errors"]["lines[0].quantity"][0]
            .as_str()
            .unwrap()
            .contains("10 available")
    );

    // An adjustment below zero, a duplicate sku, a duplicate warehouse code.
    let conflicts = [
        (
            "/api/v1/stock/adjustments",
            json!({"sku": "TEE-1", "warehouse": "BER", "delta": -11, "reason": "lost"}),
        ),
        (
            "/api/v1/products",
            json!({"sku": "TEE-1", "name": "Tee", "price_minor": 1, "currency": "EUR"}),
        ),
        (
            "/api/v1/warehouses",
            json!({"code": "BER", "name": "again"}),
        ),
    ];
    for (uri, body) in conflicts {
        assert_problem(&app.post(uri, STAFF, body).await, 409);
    }
    let stock = app.get("/api/v1/stock/TEE-1", CUSTOMER).await;
    assert_eq!(stock.body["available"], 10, "nothing changed");
}

#[tokio::test]
async fn bad_input_answers_422_listing_every_field_and_changes_nothing() {
    let h = Harness::sqlite().await;
    let app = app(&h).await;

    let r = app.post("/api/v1/products", STAFF, json!({"sku": "bad sku!", "name": " ", "price_minor": -1, "currency": "eur", "low_stock_threshold": -3})).await;
    assert_problem(&r, 422);
    assert_eq!(
        error_fields(&r),
        vec![
            "currency",
            "low_stock_threshold",
            "name",
            "price_minor",
            "sku"
        ]
    );
    let r = app.post("/api/v1/reservations", SERVICE, json!({"reservation_id": "nope", "order_id": "", "lines": [{"sku": "TEE-1", "quantity": 0}, {"sku": "??", "quantity": 1}], "ttl_secs": 0})).await;
    assert_problem(&r, 422);
    assert_eq!(
        error_fields(&r),
        vec![
            "lines[0].quantity",
            "lines[1].sku",
            "order_id",
            "reservation_id",
            "ttl_secs"
        ]
    );

    // Each bad body, and the fields its 422 must name (at least).
    let receipts: [(Value, &[&str]); 5] = [
        (
            json!({"sku": "TEE-1", "warehouse": "BER", "quantity": 1_000_001}),
            &["quantity"],
        ),
        (
            json!({"sku": "TEE-1", "warehouse": "BER", "quantity": 0}),
            &[],
        ),
        (
            json!({"sku": "NOPE", "warehouse": "BER", "quantity": 1}),
            &["sku"],
        ),
        (
            json!({"sku": "TEE-1", "warehouse": "NOPE", "quantity": 1}),
            &["warehouse"],
        ),
        (
            json!({"sku": "TEE-1", "warehouse": "BER", "quantity": "ten"}),
            &[],
        ),
    ];
    for (body, fields) in receipts {
        assert_invalid(
            &app.post("/api/v1/stock/receipts", STAFF, body).await,
            fields,
        );
    }
    let adjustment = json!({"sku": "TEE-1", "warehouse": "BER", "delta": 0, "reason": ""});
    let r = app
        .post("/api/v1/stock/adjustments", STAFF, adjustment)
        .await;
    assert_invalid(&r, &["delta", "reason"]);
    let reservations: [(Value, &[&str]); 2] = [
        (
            json!({"reservation_id": Uuid::now_v7(), "order_id": "o", "lines": []}),
            &["lines"],
        ),
        (
            json!({"reservation_id": Uuid::now_v7(), "order_id": "o", "lines": [{"sku": "GHOST", "quantity": 1}]}),
            &["lines[0].sku"],
        ),
    ];
    for (body, fields) in reservations {
        assert_invalid(
            &app.post("/api/v1/reservations", SERVICE, body).await,
            fields,
        );
    }
    for query in ["limit=0", "limit=101", "cursor=zz"] {
        let r = app
            .get(&format!("/api/v1/products?{query}"), CUSTOMER)
            .await;
        assert_invalid(&r, &[]);
    }
    let empty_patch = app.patch("/api/v1/products/TEE-1", STAFF, json!({})).await;
    assert_invalid(&empty_patch, &[]);

    let stock = app.get("/api/v1/stock/TEE-1", CUSTOMER).await;
    assert_eq!(levels(&stock), (Some(10), Some(0)));
    let moves = app.get("/api/v1/stock/TEE-1/movements", STAFF).await;
    assert_eq!(
        moves.body["items"].as_array().unwrap().len(),
        1,
        "only the seed receipt"
    );
}

#[tokio::test]
async fn unknown_things_answer_404_and_wrong_methods_405() {
    let h = Harness::sqlite().await;
    let app = app(&h).await;
    let commit = format!("/api/v1/reservations/{}/commit", Uuid::now_v7());
    let unknown = [
        ("GET", "/api/v1/products/NOPE", CUSTOMER, None),
        ("GET", "/api/v1/stock/NOPE", CUSTOMER, None),
        ("GET", "/api/v1/stock/NOPE/movements", STAFF, None),
        (
            "PATCH",
            "/api/v1/products/NOPE",
            STAFF,
            Some(json!({"name": "x"})),
        ),
        ("DELETE", "/api/v1/products/NOPE", STAFF, None),
        ("POST", commit.as_str(), SERVICE, None),
    ];
    for (method, uri, roles, body) in unknown {
        assert_problem(&app.call(method, uri, roles, body).await, 404);
    }
    // 405 bodies are the gateway's job (it renders them as problem+json); here
    // the status is what the module's explicit registration decides.
    let wrong_methods = [
        ("PUT", "/api/v1/products/TEE-1", STAFF, Some(json!({}))),
        ("GET", "/api/v1/stock/receipts", STAFF, None),
        ("GET", "/api/v1/reservations", SERVICE, None),
    ];
    for (method, uri, roles, body) in wrong_methods {
        let r = app.call(method, uri, roles, body).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
    }
}

#[tokio::test]
async fn the_openapi_fragment_documents_every_route_relative_to_api_v1() {
    let doc = agora_inventory::openapi();
    let paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
    for p in [
        "/products",
        "/products/{sku}",
        "/warehouses",
        "/stock/receipts",
        "/stock/adjustments",
        "/stock/{sku}",
        "/stock/{sku}/movements",
        "/reservations",
        "/reservations/{id}",
        "/reservations/{id}/confirm",
        "/reservations/{id}/commit",
        "/reservations/{id}/release",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    let json = serde_json::to_value(&doc).unwrap();
    assert_eq!(
        json["paths"]["/reservations"]["post"]["security"],
        json!([{"bearer": []}])
    );
    for r in agora_inventory::ROUTES {
        assert!(paths.iter().any(|p| p.starts_with(r)), "{r}");
    }
}
