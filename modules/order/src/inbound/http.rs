//! The order API under `/api/v1/orders`: HTTP bodies, their parsing into domain
//! requests, the handlers and their OpenAPI annotations.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use agora_kernel::http::{NoBody, OptionalJson};
use agora_kernel::idempotency::{Idempotency, IdempotencyConfig, IdempotencyStore};
use agora_kernel::pagination::{self, parse_limit};
use agora_kernel::{CallContext, FieldErrors, Problem};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::models::{
    Order, OrderFilter, OrderId, OrderLine, OrderRequest, OrderStatus, Quantity, RequestedLine,
    ShippingAddress, Sku, Transition,
};
use crate::domain::service::{OrderError, OrderService, RequestField};

/// `POST /orders`. The example orders two of the skus `agora demo` loads.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"items": [{"sku": "TSHIRT-RED-M", "quantity": 2}, {"sku": "MUG-CERAMIC", "quantity": 1}], "shipping_address": {"name": "Alice", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}, "payment_method": "tok_visa"}))]
pub struct PlaceOrderBody {
    /// 1–100 lines, each sku once.
    pub items: Vec<ItemBody>,
    pub shipping_address: ShippingAddress,
    /// Handed to the payment provider unchanged: a `tok_…` test token or a
    /// PaymentMethod id `pm_…`; anything else is a 422 before stock is
    /// reserved. The simulated provider (the default) knows `tok_visa` and
    /// `tok_mastercard` (succeed), `tok_chargeDeclined` (declined:
    /// `card_declined`), `tok_insufficient_funds` (declined:
    /// `insufficient_funds`) and `tok_processing_error` (provider fault: the
    /// order waits in `awaiting_payment` and is retried); any other token is
    /// declined as `invalid_payment_method`. The `http` provider takes Stripe
    /// PaymentMethod ids such as `pm_card_visa`.
    #[schema(example = "tok_visa")]
    pub payment_method: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    pub sku: String,
    /// 1–1,000.
    pub quantity: i64,
}

impl PlaceOrderBody {
    /// Parse into a domain request, listing every bad field.
    pub fn try_into_domain(self) -> Result<OrderRequest, Problem> {
        let mut errors = FieldErrors::default();
        if self.items.is_empty() || self.items.len() > OrderRequest::MAX_LINES {
            errors.add(
                "items",
                format!("must hold 1–{} lines", OrderRequest::MAX_LINES),
            );
        }
        let mut lines = Vec::with_capacity(self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            let sku = errors.check(&format!("items[{i}].sku"), Sku::parse(&item.sku));
            let quantity = errors.check(
                &format!("items[{i}].quantity"),
                Quantity::parse(item.quantity),
            );
            if let (Some(sku), Some(quantity)) = (sku, quantity) {
                if lines.iter().any(|l: &RequestedLine| l.sku == sku) {
                    errors.add(
                        &format!("items[{i}].sku"),
                        "appears twice; put the quantity on one line",
                    );
                } else {
                    lines.push(RequestedLine { sku, quantity });
                }
            }
        }
        let address = ShippingAddress::parse(self.shipping_address, &mut errors);
        let pm = self.payment_method.trim();
        if !is_payment_method(pm) {
            errors.add(
                "payment_method",
                "must be a test token such as tok_visa (simulated provider) or a PaymentMethod id pm_... (http provider): up to 255 visible ASCII characters",
            );
        }
        errors.into_result()?;
        let shipping_address =
            address.ok_or_else(|| Problem::invalid_field("shipping_address", "is invalid"))?;
        Ok(OrderRequest {
            lines,
            shipping_address,
            payment_method: pm.to_owned(),
            idempotency_key: None,
        })
    }
}

/// What the payment provider can take: a `tok_…` test token or a `pm_…`
/// PaymentMethod id, at most 255 visible ASCII characters. Anything else is
/// refused before stock is reserved.
fn is_payment_method(pm: &str) -> bool {
    let rest = pm.strip_prefix("tok_").or_else(|| pm.strip_prefix("pm_"));
    pm.len() <= 255
        && rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_graphic()))
}

/// An order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: OrderId,
    pub customer_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderLine>,
    pub total_minor: i64,
    /// ISO 4217.
    pub currency: String,
    pub shipping_address: ShippingAddress,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// For `If-Match` on `PATCH`.
    pub version: i64,
}

impl From<Order> for OrderBody {
    fn from(o: Order) -> Self {
        Self {
            id: o.id,
            customer_id: o.customer_id,
            status: o.status,
            items: o.items,
            total_minor: o.total.minor(),
            currency: o.total.currency().to_string(),
            shipping_address: o.shipping_address,
            payment_id: o.payment_id.map(|p| p.as_str().to_owned()),
            failure_reason: o.failure_reason,
            created_at: o.created_at,
            updated_at: o.updated_at,
            version: o.version,
        }
    }
}

/// `PATCH /orders/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"shipping_address": {"name": "Alice", "line1": "2 Side St", "city": "Hamburg", "postal_code": "20095", "country": "DE"}}))]
pub struct UpdateOrderBody {
    pub shipping_address: ShippingAddress,
}

/// `POST /orders/{id}/cancel` (the body is optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "changed my mind"}))]
pub struct CancelBody {
    /// Why (kept on the order, at most 500 characters).
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only orders in this status.
    #[param(value_type = Option<OrderStatus>)]
    pub status: Option<String>,
    /// Only orders placed after this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub created_after: Option<String>,
    /// Only orders placed before this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub created_before: Option<String>,
    /// 1–100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderBody>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub items: Vec<Transition>,
    pub next_cursor: Option<String>,
}

/// The body path a domain validation error points at.
impl std::fmt::Display for RequestField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Items => f.write_str("items"),
            Self::ItemSku(i) => write!(f, "items[{i}].sku"),
        }
    }
}

impl From<OrderError> for Problem {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::NotFound => Problem::not_found("no such order"),
            OrderError::Forbidden(m) => Problem::forbidden(m),
            e @ OrderError::IllegalTransition { .. } => Problem::conflict(e.to_string()),
            e @ OrderError::VersionMismatch { .. } => Problem::precondition_failed(e.to_string()),
            e @ OrderError::Busy => Problem::conflict(e.to_string()).with_retry_after(1),
            OrderError::Validation(errors) => Problem::validation(
                errors
                    .into_iter()
                    .map(|(field, messages)| (field.to_string(), messages))
                    .collect(),
            ),
            OrderError::Unavailable(m) => Problem::unavailable(m, 5),
            OrderError::Unexpected(e) => Problem::unexpected(&e, "order"),
        }
    }
}

/// An order as the documented responses show it (skus from `agora demo`).
fn order_example(status: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "0190f3a2-5c1e-7d7a-9b1e-3f2a4c5d6e7f",
        "customer_id": "alice",
        "status": status,
        "items": [
            {"sku": "TSHIRT-RED-M", "quantity": 2, "unit_price_minor": 1999, "line_total_minor": 3998},
            {"sku": "MUG-CERAMIC", "quantity": 1, "unit_price_minor": 850, "line_total_minor": 850}
        ],
        "total_minor": 4848,
        "currency": "EUR",
        "shipping_address": {"name": "Alice", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "payment_id": "0190f3a2-5c20-7f11-8a2b-6c7d8e9f0a1b",
        "created_at": "2026-01-31T12:00:00.000Z",
        "updated_at": "2026-01-31T12:00:00.120Z",
        "version": 3
    })
}

fn order_id(raw: &str) -> Result<OrderId, Problem> {
    OrderId::parse(raw).map_err(|_| Problem::not_found("no such order"))
}

fn with_etag(mut res: HttpResponse, order: &OrderBody) -> HttpResponse {
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{}\"", order.version)) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// Place an order. Prices come from the catalogue; the customer and e-mail
/// from the token. A healthy order answers already `confirmed`.
#[utoipa::path(post, path = "/orders", tag = "orders", operation_id = "place_order", security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "required, 1–255 visible ASCII characters; the same key and body replay the first answer", example = "order-2026-01-31-0001")),
    request_body = PlaceOrderBody,
    responses(
        (status = 201, body = OrderBody, description = "Placed: `confirmed` when stock was reserved and the charge succeeded; `rejected` (no stock), `payment_failed` (declined) or `awaiting_payment` (provider down, retried) otherwise", example = json!(order_example("confirmed"))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "malformed JSON or no Idempotency-Key"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "same key still in flight"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn place(
    svc: web::Data<OrderService>,
    ctx: CallContext,
    req: HttpRequest,
    body: web::Json<PlaceOrderBody>,
) -> Result<HttpResponse, Problem> {
    let mut request = body.into_inner().try_into_domain()?;
    request.idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let order = OrderBody::from(svc.place(&ctx, request).await?);
    let res = HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/orders/{}", order.id)))
        .json(&order);
    Ok(with_etag(res, &order))
}

/// List orders, newest first: customers see their own, staff everyone's.
#[utoipa::path(get, path = "/orders", tag = "orders", operation_id = "list_orders", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = OrderPage),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    svc: web::Data<OrderService>,
    ctx: CallContext,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let q = query.into_inner();
    let mut errors = FieldErrors::default();
    let limit = match parse_limit(q.limit.as_deref()) {
        Ok(l) => l,
        Err(_) => {
            errors.add("limit", "must be an integer between 1 and 100");
            20
        }
    };
    let status = q.status.as_deref().and_then(|s| {
        let parsed = OrderStatus::parse(s);
        if parsed.is_none() {
            errors.add(
                "status",
                "must be one of the order statuses, e.g. confirmed",
            );
        }
        parsed
    });
    let mut time = |field: &str, raw: Option<&str>| {
        raw.and_then(|s| match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errors.add(
                    field,
                    "must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z",
                );
                None
            }
        })
    };
    let created_after = time("created_after", q.created_after.as_deref());
    let created_before = time("created_before", q.created_before.as_deref());
    let before = q.cursor.as_deref().and_then(|c| {
        let parsed = pagination::decode_cursor(c).and_then(|k| OrderId::parse(&k).ok());
        if parsed.is_none() {
            errors.add("cursor", "is not a cursor this API returned");
        }
        parsed
    });
    errors.into_result()?;
    let filter = OrderFilter {
        customer_id: None,
        status,
        created_after,
        created_before,
    };
    let page = svc.page(&ctx, filter, before, limit).await?;
    Ok(HttpResponse::Ok().json(OrderPage {
        items: page.items.into_iter().map(OrderBody::from).collect(),
        next_cursor: page
            .next
            .map(|id| pagination::encode_cursor(&id.to_string())),
    }))
}

/// One order: the owner, staff or admin (anyone else gets 404).
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", operation_id = "get_order", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The order's id")),
    responses(
        (status = 200, body = OrderBody, example = json!(order_example("confirmed"))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    svc: web::Data<OrderService>,
    ctx: CallContext,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let order = OrderBody::from(svc.get(&ctx, order_id(&id)?).await?);
    Ok(with_etag(HttpResponse::Ok().json(&order), &order))
}

/// Change the shipping address before shipping; `If-Match` carries the version.
#[utoipa::path(patch, path = "/orders/{id}", tag = "orders", operation_id = "update_order", security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The order's id"),
        ("If-Match" = String, Header, description = "the order's version (its `ETag`), e.g. \"3\"", example = "\"3\""),
    ),
    request_body = UpdateOrderBody,
    responses(
        (status = 200, body = OrderBody),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "already shipped"),
        (status = 412, body = Problem, content_type = "application/problem+json", description = "version mismatch"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 428, body = Problem, content_type = "application/problem+json", description = "no If-Match"),
    ))]
pub async fn update(
    svc: web::Data<OrderService>,
    ctx: CallContext,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<UpdateOrderBody>,
) -> Result<HttpResponse, Problem> {
    let id = order_id(&id)?;
    let if_match = req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_owned()
        });
    let Some(raw) = if_match else {
        return Err(Problem::for_status(
            actix_web::http::StatusCode::PRECONDITION_REQUIRED,
            "send If-Match with the order's version",
        ));
    };
    let Ok(version) = raw.parse::<i64>() else {
        return Err(Problem::precondition_failed(
            "If-Match must carry the order's version",
        ));
    };
    let mut errors = FieldErrors::default();
    let address = ShippingAddress::parse(body.into_inner().shipping_address, &mut errors);
    errors.into_result()?;
    let address =
        address.ok_or_else(|| Problem::invalid_field("shipping_address", "is invalid"))?;
    let order = OrderBody::from(svc.update_address(&ctx, id, version, address).await?);
    Ok(with_etag(HttpResponse::Ok().json(&order), &order))
}

/// Cancel before shipping: stock released, payment refunded. Idempotent.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", operation_id = "cancel_order", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The order's id")),
    request_body(content = Option<CancelBody>, description = "Optional (no body or `null` is fine); a malformed or unknown body is refused and nothing is cancelled", example = json!({"reason": "changed my mind"})),
    responses(
        (status = 200, body = OrderBody, example = json!(order_example("cancelled"))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "malformed JSON"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a body of the wrong shape or with an unknown field"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    svc: web::Data<OrderService>,
    ctx: CallContext,
    id: web::Path<String>,
    body: OptionalJson<CancelBody>,
) -> Result<HttpResponse, Problem> {
    let reason = body
        .into_inner()
        .and_then(|b| b.reason)
        .map(|r| r.chars().take(500).collect());
    let order = OrderBody::from(svc.cancel(&ctx, order_id(&id)?, reason).await?);
    Ok(HttpResponse::Ok().json(order))
}

/// Ship a confirmed order (staff): the stock reservation is committed.
#[utoipa::path(post, path = "/orders/{id}/ship", tag = "orders", operation_id = "ship_order", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The order's id")),
    responses(
        (status = 200, body = OrderBody, example = json!(order_example("shipped"))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "a body other than none or `{}`"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a body with fields"),
    ))]
pub async fn ship(
    svc: web::Data<OrderService>,
    ctx: CallContext,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, Problem> {
    let order = OrderBody::from(
        svc.advance_fulfilment(&ctx, order_id(&id)?, OrderStatus::Shipped)
            .await?,
    );
    Ok(HttpResponse::Ok().json(order))
}

/// Mark a shipped order delivered (staff).
#[utoipa::path(post, path = "/orders/{id}/deliver", tag = "orders", operation_id = "deliver_order", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The order's id")),
    responses(
        (status = 200, body = OrderBody, example = json!(order_example("delivered"))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "a body other than none or `{}`"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a body with fields"),
    ))]
pub async fn deliver(
    svc: web::Data<OrderService>,
    ctx: CallContext,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, Problem> {
    let order = OrderBody::from(
        svc.advance_fulfilment(&ctx, order_id(&id)?, OrderStatus::Delivered)
            .await?,
    );
    Ok(HttpResponse::Ok().json(order))
}

/// Every transition of an order, oldest first.
#[utoipa::path(get, path = "/orders/{id}/history", tag = "orders", operation_id = "get_order_history", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The order's id")),
    responses(
        (status = 200, body = HistoryPage),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn history(
    svc: web::Data<OrderService>,
    ctx: CallContext,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let items = svc.history(&ctx, order_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(HistoryPage {
        items,
        next_cursor: None,
    }))
}

/// Register the routes (the host mounts them under `/api/v1`), in one scope
/// per path prefix: the router tests a prefix once instead of every
/// resource's pattern in turn (a regex each, for patterns with segments).
pub fn configure(
    cfg: &mut web::ServiceConfig,
    service: Arc<OrderService>,
    idempotency: Arc<dyn IdempotencyStore>,
) {
    cfg.service(
        web::scope("/orders")
            .app_data(web::Data::from(service))
            .service(
                web::resource("").route(web::get().to(list)).route(
                    web::post()
                        .to(place)
                        .wrap(Idempotency::new(idempotency, IdempotencyConfig::default())),
                ),
            )
            .service(
                web::resource("/{id}")
                    .route(web::get().to(get))
                    .route(web::patch().to(update)),
            )
            .service(web::resource("/{id}/cancel").route(web::post().to(cancel)))
            .service(web::resource("/{id}/ship").route(web::post().to(ship)))
            .service(web::resource("/{id}/deliver").route(web::post().to(deliver)))
            .service(web::resource("/{id}/history").route(web::get().to(history))),
    );
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(place, list, get, update, cancel, ship, deliver, history),
    components(schemas(PlaceOrderBody, ItemBody, OrderBody, OrderLine, OrderStatus, ShippingAddress, UpdateOrderBody, CancelBody, OrderPage, HistoryPage, Transition)),
    tags((name = "orders", description = "Place, track and cancel orders (the order saga)"))
)]
pub struct OrderApiDoc;
