//! The OpenAPI document: the host's own paths merged with every module's
//! fragment, with bearer auth declared so Swagger UI's Authorize works.
//! `openapi/openapi.json` is this document, checked in; a test fails when it drifts
//! (regenerate with `cargo run -- openapi > openapi/openapi.json`), and CI
//! lints it and compiles a generated TypeScript client from it
//! (`.ci/openapi-checks`).
//!
//! Finishing touches the modules' annotations leave out: every error response
//! gets an example of its own status (a real [`Problem`], not the schema's
//! 422), and responses without a description get their status's reason.

use actix_web::http::StatusCode;
use agora_kernel::Problem;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{PathItem, RefOr};
use utoipa::{Modify, OpenApi};

use crate::api;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A JWT; in development mint one with `cargo run -- token --sub alice --role customer`"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "agora", description = "An e-commerce backend: a modular monolith designed for later extraction. Every error is RFC 9457 application/problem+json.\n\nTry it on demo data: run `agora demo` (`cargo run -- demo`), which loads a small catalogue and prints a customer, a staff and an admin token; press **Authorize** and paste one. The request examples use the demo's skus and warehouses, in the order a shop is used: place an order as the customer (`tok_visa` succeeds; the simulated provider's other test tokens are listed under `payment_method`), then ship and deliver it as staff."),
    servers((url = "/", description = "The agora serving this document (every path starts with /api/v1 or /health)")),
    paths(api::live, api::ready),
    components(schemas(agora_kernel::Problem)),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "system", description = "The caller and the hosted modules"),
    )
)]
struct HostDoc;

#[derive(OpenApi)]
#[openapi(paths(api::me, api::system_modules))]
struct HostApiV1;

/// The whole document.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = HostDoc::openapi();
    let mut v1 = HostApiV1::openapi();
    for module in [
        agora_order::openapi(),
        agora_inventory::openapi(),
        agora_payment::openapi(),
        agora_notification::openapi(),
    ] {
        v1.merge(module);
    }
    doc.merge(v1.nest_paths("/api/v1"));
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    for (path, item) in doc.paths.paths.iter_mut() {
        describe_responses(path, item);
    }
    doc
}

/// Give each response of `item` a description and each error its example.
fn describe_responses(path: &str, item: &mut PathItem) {
    let operations = [
        ("GET", &mut item.get),
        ("PUT", &mut item.put),
        ("POST", &mut item.post),
        ("DELETE", &mut item.delete),
        ("PATCH", &mut item.patch),
    ];
    for (method, operation) in operations {
        let Some(operation) = operation.as_mut() else {
            continue;
        };
        for (status, response) in operation.responses.responses.iter_mut() {
            let RefOr::T(response) = response else {
                continue;
            };
            let Some(code) = status
                .parse()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
            else {
                continue;
            };
            if response.description.is_empty() {
                response.description = code.canonical_reason().unwrap_or("").to_owned();
            }
            if let Some(content) = response
                .content
                .get_mut(agora_kernel::problem::PROBLEM_JSON)
                && content.example.is_none()
            {
                content.example = serde_json::to_value(error_example(method, path, code)).ok();
            }
        }
    }
}

/// A problem as agora answers it for `status` on this route.
pub fn error_example(method: &str, path: &str, status: StatusCode) -> Problem {
    let resource = path
        .strip_prefix("/api/v1/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    let field = |name: &str, why: &str| Problem::invalid_field(name, why);
    match status.as_u16() {
        400 if path.ends_with("/ship")
            || path.ends_with("/deliver")
            || path.ends_with("/retry")
            || path.contains("/reservations/") =>
        {
            Problem::bad_request("malformed JSON: EOF while parsing an object at line 1 column 1")
        }
        400 if method == "POST" && matches!(resource, "orders" | "payments") => {
            Problem::bad_request(
                "this request needs an Idempotency-Key header (1–255 visible ASCII characters)",
            )
        }
        400 => {
            Problem::bad_request("malformed JSON: EOF while parsing a string at line 1 column 11")
        }
        401 => Problem::missing_credentials(),
        403 => Problem::forbidden(match resource {
            "orders" if method == "POST" && path == "/api/v1/orders" => {
                "this action needs one of the roles: customer"
            }
            "payments" => "this action needs one of the roles: service, admin",
            "reservations" => "this action needs one of the roles: service",
            "system" => "this action needs one of the roles: admin",
            "notifications" if method == "POST" => "this action needs one of the roles: staff",
            "notifications" => "this action needs one of the roles: customer",
            _ => "this action needs one of the roles: staff",
        }),
        404 => Problem::not_found(match resource {
            "orders" => "no such order",
            "products" | "stock" => "no product with sku NOPE-1",
            "payments" => "no such payment",
            "notifications" => "no such notification",
            "reservations" => "no reservation 0191d0c4-8a47-7c3e-9b5e-2f1d8a3c4b5a",
            _ => "no such resource",
        }),
        409 => match resource {
            "orders" if path.ends_with("/ship") || path.ends_with("/deliver") => {
                Problem::conflict("an order in status delivered cannot become shipped")
            }
            "orders" if method == "POST" && path == "/api/v1/orders" => Problem::conflict(
                "a request with this Idempotency-Key is still in flight; retry shortly",
            ),
            "orders" => Problem::conflict("an order in status shipped cannot become cancelled"),
            "products" => Problem::conflict("a product with sku TSHIRT-RED-M already exists"),
            "warehouses" => Problem::conflict("a warehouse with code BER already exists"),
            "stock" => Problem::new(
                StatusCode::CONFLICT,
                "stock-underflow",
                "Stock would fall below zero or below what is reserved",
                "TSHIRT-RED-M in BER: on hand 3, reserved 2; a change of -2 would leave less than is reserved",
            ),
            "reservations" if method == "POST" && path == "/api/v1/reservations" => {
                let mut p = Problem::new(
                    StatusCode::CONFLICT,
                    "insufficient-stock",
                    "Insufficient stock",
                    "not enough stock for: TSHIRT-RED-M; nothing was reserved",
                );
                p.errors.insert(
                    "lines[0].quantity".to_owned(),
                    vec!["TSHIRT-RED-M of 500 requested, 65 available".to_owned()],
                );
                p.with_extension(
                    "shortages",
                    serde_json::json!([{"line": 0, "sku": "TSHIRT-RED-M", "requested": 500, "available": 65}]),
                )
            }
            "reservations" => Problem::conflict(
                "reservation 0191d0c4-8a47-7c3e-9b5e-2f1d8a3c4b5a is released and cannot be confirmed",
            )
            .with_extension("reservation_status", serde_json::json!("released")),
            "payments" if path.ends_with("/refunds") => Problem::new(
                StatusCode::CONFLICT,
                "refund-exceeds-payment",
                "Refund exceeds the payment",
                "the refund exceeds what is left to refund (3990 minor units)",
            )
            .with_extension("refundable_minor", serde_json::json!(3990)),
            "payments" => Problem::new(
                StatusCode::CONFLICT,
                "order-already-charged",
                "Order already charged",
                "order 0190c1d2-7b8e-7a3c-9f00-1a2b3c4d5e6f already has payment 0190c1d2-7b8e-7a3c-9f00-1a2b3c4d5e70 with other details",
            )
            .with_extension("payment_id", serde_json::json!("0190c1d2-7b8e-7a3c-9f00-1a2b3c4d5e70")),
            "notifications" => {
                Problem::conflict("only a dead notification can be retried; this one is sent")
            }
            _ => Problem::conflict("the request conflicts with the resource's state"),
        },
        412 => Problem::precondition_failed("the order is at version 4, not 3"),
        422 if method == "GET" => field("limit", "must be an integer between 1 and 100"),
        422 => match resource {
            "orders" if method == "POST" && path == "/api/v1/orders" => field(
                "payment_method",
                "must be a test token such as tok_visa (simulated provider) or a PaymentMethod id pm_... (http provider): up to 255 visible ASCII characters",
            ),
            "orders" if method == "PATCH" => field(
                "shipping_address.country",
                "must be an ISO 3166-1 alpha-2 code such as DE",
            ),
            "orders" | "reservations" | "notifications" if method == "POST" => {
                field("carrier", "unknown field `carrier`, there are no fields")
            }
            "products" if method == "DELETE" => {
                field("carrier", "unknown field `carrier`, there are no fields")
            }
            "products" => field("price_minor", "must not be negative"),
            "warehouses" => field(
                "code",
                "warehouse code must be 1–32 characters of A–Z, a–z, 0–9, '.', '_' or '-'",
            ),
            "stock" => field("warehouse", "no warehouse with code XYZ"),
            "reservations" => field(
                "lines[0].quantity",
                "must be an integer between 1 and 1000000",
            ),
            "payments" => field("amount_minor", "must be a positive number of minor units"),
            "notifications" => field(
                "phone",
                "must be a phone number in E.164 form, such as +4915123456789",
            ),
            _ => field("body", "is invalid"),
        },
        428 => Problem::for_status(status, "send If-Match with the order's version"),
        429 => Problem::too_many_requests(1),
        503 if resource.is_empty() => {
            Problem::unavailable("not ready: payment (store unreachable)", 5)
        }
        503 => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "payment-provider-unavailable",
            "Payment provider unavailable",
            "the payment provider is unavailable; retry in 5 s with the same request",
        ),
        500 => Problem::internal(),
        _ => Problem::for_status(status, status.canonical_reason().unwrap_or("error")),
    }
}

trait NestPaths {
    fn nest_paths(self, prefix: &str) -> Self;
}

impl NestPaths for utoipa::openapi::OpenApi {
    fn nest_paths(mut self, prefix: &str) -> Self {
        let paths = std::mem::take(&mut self.paths.paths);
        self.paths.paths = paths
            .into_iter()
            .map(|(p, item)| (format!("{prefix}{p}"), item))
            .collect();
        self
    }
}

/// Pretty JSON, as checked in.
pub fn spec_json() -> String {
    spec()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
