//! The request examples of the OpenAPI document work: driven from the
//! generated spec (so it cannot drift), every documented request body is sent,
//! in the spec's order, to a fresh instance loaded with `agora demo`'s
//! catalogue, and answers the documented success status.

use std::collections::BTreeMap;

use agora_kernel::Role;
use serde_json::Value;

use crate::helpers::spawn_app_with_rate_limit;

/// The generated OpenAPI document.
fn spec() -> Value {
    serde_json::to_value(agora::openapi::spec()).unwrap()
}

/// Every operation of `spec`: its path, its method and the operation.
fn operations(spec: &Value) -> impl Iterator<Item = (&String, &String, &Value)> {
    spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let ops = item.as_object().unwrap();
            ops.iter().map(move |(method, op)| (path, method, op))
        })
}

/// The example of a request body: on the media type, or on the schema it
/// refers to (also through `oneOf` / `allOf`, as `Option<T>` bodies have).
fn request_example(spec: &Value, content: &Value) -> Option<Value> {
    if let Some(e) = content.get("example") {
        return Some(e.clone());
    }
    fn find_ref(schema: &Value) -> Option<&str> {
        if let Some(r) = schema["$ref"].as_str() {
            return Some(r);
        }
        ["oneOf", "allOf", "anyOf"]
            .iter()
            .filter_map(|k| schema[*k].as_array())
            .flatten()
            .find_map(find_ref)
    }
    let name = find_ref(&content["schema"])?.rsplit('/').next()?;
    spec["components"]["schemas"][name].get("example").cloned()
}

#[tokio::test]
async fn every_documented_request_example_succeeds_against_demo_data() {
    let app = spawn_app_with_rate_limit(10_000, 10_000).await;
    let demo =
        agora::demo::Tokens::mint(&app.settings, std::time::Duration::from_secs(600)).unwrap();
    agora::demo::load(&app.address, &demo.staff).await.unwrap();
    // One caller who may do everything the examples show (the demo's customer,
    // who is also staff, admin and a service).
    let anyone = app.token(
        "alice",
        &[Role::Customer, Role::Staff, Role::Admin, Role::Service],
    );
    let spec = spec();

    // The latest resource each collection created (`{id}` of later paths).
    let mut created: BTreeMap<String, Value> = BTreeMap::new();
    let mut tried = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in ["post", "put", "patch", "delete"] {
            let Some(op) = item.get(method) else { continue };
            let Some(body) = op.get("requestBody") else {
                continue;
            };
            let what = format!("{} {path}", method.to_uppercase());
            let content = &body["content"]["application/json"];
            let example = request_example(&spec, content)
                .unwrap_or_else(|| panic!("{what} documents no request example"));
            let mut url = path.clone();
            let mut headers = Vec::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                match (p["in"].as_str().unwrap(), name) {
                    ("path", "id") => {
                        let collection = &path[..path.find("/{id}").unwrap()];
                        let id = created
                            .get(collection)
                            .and_then(|r| r["id"].as_str())
                            .unwrap_or_else(|| {
                                panic!("{what}: nothing created at {collection} before")
                            })
                            .to_owned();
                        url = url.replace("{id}", &id);
                    }
                    ("path", _) => {
                        let value = p["example"].as_str().unwrap_or_else(|| {
                            panic!("{what}: path parameter {name} has no example")
                        });
                        url = url.replace(&format!("{{{name}}}"), value);
                    }
                    ("header", "Idempotency-Key") => {
                        headers
                            .push((name.to_owned(), format!("example-{}", uuid::Uuid::now_v7())));
                    }
                    ("header", "If-Match") => {
                        let current = app.get_as(&url, &anyone).await;
                        let etag = current.headers()["etag"].to_str().unwrap().to_owned();
                        headers.push((name.to_owned(), etag));
                    }
                    (_, _) => {}
                }
            }
            let responses = op["responses"].as_object().unwrap();
            let expected: u16 = if responses.contains_key("201") {
                201
            } else {
                200
            };
            assert!(
                responses.contains_key(&expected.to_string()),
                "{what}: no 2xx documented"
            );
            let mut req = app
                .client
                .request(method.to_uppercase().parse().unwrap(), app.url(&url))
                .bearer_auth(&anyone)
                .json(&example);
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let answer: Value = res.json().await.unwrap_or(Value::Null);
            assert_eq!(
                status, expected,
                "{what} with its example {example} answered {answer}"
            );
            if status == 201 {
                created.insert(path.clone(), answer.clone());
            }
            if what == "POST /api/v1/orders" {
                assert_eq!(answer["status"], "confirmed", "{answer}");
            }
            tried.push(what);
        }
    }
    for must in [
        "POST /api/v1/orders",
        "PATCH /api/v1/orders/{id}",
        "POST /api/v1/orders/{id}/cancel",
        "POST /api/v1/products",
        "PATCH /api/v1/products/{sku}",
        "POST /api/v1/warehouses",
        "POST /api/v1/stock/receipts",
        "POST /api/v1/stock/adjustments",
        "POST /api/v1/reservations",
        "POST /api/v1/payments",
        "POST /api/v1/payments/{id}/refunds",
        "PUT /api/v1/notifications/preferences",
    ] {
        assert!(
            tried.iter().any(|t| t == must),
            "{must} was not tried: {tried:?}"
        );
    }
}

/// What Swagger UI shows for an error is an example of that very status.
#[test]
fn each_error_response_shows_an_example_of_its_own_status() {
    let spec = spec();
    let mut seen = std::collections::BTreeSet::new();
    for (path, method, op) in operations(&spec) {
        for (status, response) in op["responses"].as_object().unwrap() {
            assert!(
                !response["description"].as_str().unwrap_or("").is_empty(),
                "{method} {path} {status} has no description"
            );
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let example = &response["content"]["application/problem+json"]["example"];
            assert_eq!(
                example["status"].as_u64().map(|s| s.to_string()).as_deref(),
                Some(status.as_str()),
                "{method} {path} {status}: {example}"
            );
            assert!(
                example["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("urn:agora:problem:"))
            );
            seen.insert(status.clone());
        }
    }
    assert!(seen.len() >= 8, "{seen:?}");
    let placed = &spec["paths"]["/api/v1/orders"]["post"]["responses"]["201"]["content"]["application/json"]
        ["example"];
    assert_eq!(placed["status"], "confirmed");
}

#[test]
fn operation_ids_are_unique_and_the_spec_names_its_server() {
    let spec = spec();
    let mut ids = std::collections::BTreeMap::new();
    for (path, method, op) in operations(&spec) {
        let id = op["operationId"].as_str().unwrap().to_owned();
        if let Some(other) = ids.insert(id.clone(), format!("{method} {path}")) {
            panic!("operationId {id} is used by {other} and {method} {path}");
        }
    }
    assert!(spec["servers"][0]["url"].is_string());
    let limit = spec["paths"]["/api/v1/orders"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["type"], "integer", "{limit}");
    let tokens = &spec["components"]["schemas"]["PlaceOrderBody"]["properties"]["payment_method"]["description"];
    for token in [
        "tok_visa",
        "tok_mastercard",
        "tok_chargeDeclined",
        "tok_insufficient_funds",
        "tok_processing_error",
    ] {
        assert!(
            tokens.as_str().unwrap().contains(token),
            "{token} not in {tokens}"
        );
    }
}
