//! The payment module's HTTP endpoints (mounted under `/api/v1`), their bodies
//! and OpenAPI annotations, and how every domain error becomes problem+json
//! (`From<…Error> for Problem`, the one error path every module's edge shares).
//!
//! - `POST /payments` (service, admin; `Idempotency-Key`) — charge an order
//! - `GET /payments?order_id=&customer_id=&limit=&cursor=` — list
//! - `GET /payments/{id}` — one payment with its refunds
//! - `POST /payments/{id}/refunds` (staff, admin, service; `Idempotency-Key`)

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, guard, web};
use agora_kernel::idempotency::{Idempotency, IdempotencyConfig, IdempotencyStore};
use agora_kernel::pagination::{self, parse_limit};
use agora_kernel::{CallContext, Currency, FieldErrors, Money, Problem};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::domain::models::{
    ChargeRequest, CustomerId, OrderId, Payment, PaymentFilter, PaymentId, PaymentMethod,
    PaymentStatus, Refund, RefundReason, RefundRequest, RefundStatus, RequestKey, positive_amount,
};
use crate::domain::service::{
    ChargeError, GetPaymentError, ListPaymentsError, PaymentService, RefundError,
};

fn unexpected(e: &anyhow::Error) -> Problem {
    Problem::unexpected(e, "payment")
}

fn provider_unavailable(retry_after_secs: u64) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "payment-provider-unavailable",
        "Payment provider unavailable",
        format!("the payment provider is unavailable; retry in {retry_after_secs} s with the same request"),
    ).with_retry_after(retry_after_secs)
}

/// Charge problems carry what a client of the API needs to act on them (see
/// the spec): `payment_id` on `order-already-charged`, in-progress and
/// provider-unavailable answers.
impl From<ChargeError> for Problem {
    fn from(e: ChargeError) -> Self {
        let detail = e.to_string();
        match e {
            ChargeError::Forbidden => Problem::forbidden(detail),
            ChargeError::OrderAlreadyCharged { payment_id, .. } => Problem::new(
                StatusCode::CONFLICT,
                "order-already-charged",
                "Order already charged",
                detail,
            )
            .with_extension("payment_id", json!(payment_id)),
            ChargeError::InProgress { payment_id } => Problem::conflict(detail)
                .with_retry_after(1)
                .with_extension("payment_id", json!(payment_id)),
            ChargeError::ProviderUnavailable {
                retry_after_secs,
                payment_id,
            } => provider_unavailable(retry_after_secs)
                .with_extension("payment_id", json!(payment_id)),
            ChargeError::Unexpected(e) => unexpected(&e),
        }
    }
}

/// Refund problems carry `refundable_minor` (`refund-exceeds-payment`),
/// `payment_status` (`payment-not-refundable`), `refund_id` and `code`
/// (`refund-rejected`), `payment_currency` (a currency mismatch).
impl From<RefundError> for Problem {
    fn from(e: RefundError) -> Self {
        let detail = e.to_string();
        match e {
            RefundError::Forbidden => Problem::forbidden(detail),
            RefundError::NotFound => Problem::not_found(detail),
            RefundError::NotRefundable(status) => Problem::new(
                StatusCode::CONFLICT,
                "payment-not-refundable",
                "Payment not refundable",
                detail,
            )
            .with_extension("payment_status", json!(status.as_str())),
            RefundError::ExceedsRefundable { refundable_minor } => Problem::new(
                StatusCode::CONFLICT,
                "refund-exceeds-payment",
                "Refund exceeds the payment",
                detail,
            )
            .with_extension("refundable_minor", json!(refundable_minor)),
            RefundError::KeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
                detail,
            ),
            RefundError::CurrencyMismatch { payment, .. } => {
                Problem::invalid_field("currency", detail)
                    .with_extension("payment_currency", json!(payment.code()))
            }
            RefundError::InProgress { refund_id } => Problem::conflict(detail)
                .with_retry_after(1)
                .with_extension("refund_id", json!(refund_id)),
            RefundError::Rejected { refund_id, code } => Problem::new(
                StatusCode::CONFLICT,
                "refund-rejected",
                "Refund rejected",
                detail,
            )
            .with_extension("refund_id", json!(refund_id))
            .with_extension("code", json!(code)),
            RefundError::ProviderUnavailable {
                retry_after_secs,
                refund_id,
            } => {
                provider_unavailable(retry_after_secs).with_extension("refund_id", json!(refund_id))
            }
            RefundError::Unexpected(e) => unexpected(&e),
        }
    }
}

impl From<GetPaymentError> for Problem {
    fn from(e: GetPaymentError) -> Self {
        match e {
            GetPaymentError::NotFound => Problem::not_found(e.to_string()),
            GetPaymentError::Unexpected(e) => unexpected(&e),
        }
    }
}

impl From<ListPaymentsError> for Problem {
    fn from(e: ListPaymentsError) -> Self {
        match e {
            ListPaymentsError::Unexpected(e) => unexpected(&e),
        }
    }
}

/// A 409 of `POST /payments`: problem+json with the payment concerned.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChargeConflict {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The order's payment (`order-already-charged`, or the charge in progress).
    pub payment_id: Option<Uuid>,
}

/// A 409 of a refund: problem+json with what a client needs to act on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefundConflict {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// `refund-exceeds-payment`: what is left to refund, in minor units.
    pub refundable_minor: Option<i64>,
    /// `payment-not-refundable`: the payment's status.
    pub payment_status: Option<String>,
    /// `refund-rejected` and in progress: the refund concerned.
    pub refund_id: Option<Uuid>,
    /// `refund-rejected`: the provider's code.
    pub code: Option<String>,
}

/// `POST /payments`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"order_id": "0190c1d2-7b8e-7a3c-9f00-1a2b3c4d5e6f", "customer_id": "alice", "amount_minor": 4990, "currency": "EUR", "payment_method": "tok_visa"}))]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentBody {
    /// The order's id (a UUID).
    pub order_id: String,
    /// The paying customer (the token `sub` of the order's customer).
    pub customer_id: String,
    /// Positive, in minor units of `currency`.
    pub amount_minor: i64,
    /// ISO 4217, upper case.
    pub currency: String,
    /// A `tok_…` test token or a Stripe PaymentMethod id `pm_…` (anything
    /// else is a 422). The simulated provider (the default) knows `tok_visa`
    /// and `tok_mastercard` (succeed), `tok_chargeDeclined` (declined:
    /// `card_declined`), `tok_insufficient_funds` (declined:
    /// `insufficient_funds`) and `tok_processing_error` (provider fault:
    /// 503, counts toward the circuit breaker); any other token is declined
    /// as `invalid_payment_method`. The `http` provider takes `pm_…` ids
    /// such as `pm_card_visa`.
    #[schema(example = "tok_visa")]
    pub payment_method: String,
}

impl CreatePaymentBody {
    fn try_into_domain(self) -> Result<ChargeRequest, Problem> {
        let mut errors = FieldErrors::default();
        let order_id = errors.check("order_id", OrderId::parse(&self.order_id));
        let customer_id = errors.check("customer_id", CustomerId::parse(&self.customer_id));
        let amount = errors.check("amount_minor", positive_amount(self.amount_minor));
        let currency = errors.check("currency", Currency::parse(&self.currency));
        let method = errors.check(
            "payment_method",
            PaymentMethod::parse_requested(&self.payment_method),
        );
        errors.into_result()?;
        match (order_id, customer_id, amount, currency, method) {
            (Some(o), Some(c), Some(a), Some(cur), Some(m)) => {
                ChargeRequest::new(o, c, Money::new(a, cur), m)
                    .map_err(|e| Problem::invalid_field("amount_minor", e.to_string()))
            }
            _ => Err(Problem::internal()),
        }
    }
}

/// `POST /payments/{id}/refunds`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"amount_minor": 1000, "reason": "damaged in transit"}))]
#[serde(deny_unknown_fields)]
pub struct CreateRefundBody {
    /// Positive, in minor units of the payment's currency; at most what is left to refund.
    pub amount_minor: i64,
    /// Why (free text, at most 500 characters).
    #[serde(default)]
    pub reason: Option<String>,
    /// When given, the payment must be in this currency (ISO 4217), or 422.
    #[serde(default)]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatusBody {
    Pending,
    Succeeded,
    Failed,
    PartiallyRefunded,
    Refunded,
}

impl From<PaymentStatus> for PaymentStatusBody {
    fn from(s: PaymentStatus) -> Self {
        match s {
            PaymentStatus::Pending => Self::Pending,
            PaymentStatus::Succeeded => Self::Succeeded,
            PaymentStatus::Failed => Self::Failed,
            PaymentStatus::PartiallyRefunded => Self::PartiallyRefunded,
            PaymentStatus::Refunded => Self::Refunded,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatusBody {
    Pending,
    Succeeded,
    Failed,
}

impl From<RefundStatus> for RefundStatusBody {
    fn from(s: RefundStatus) -> Self {
        match s {
            RefundStatus::Pending => Self::Pending,
            RefundStatus::Succeeded => Self::Succeeded,
            RefundStatus::Failed => Self::Failed,
        }
    }
}

/// A refund as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefundBody {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub status: RefundStatusBody,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: Option<String>,
    pub provider_ref: Option<String>,
    /// The provider's code when it refused the refund.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Refund> for RefundBody {
    fn from(r: &Refund) -> Self {
        Self {
            id: r.id.as_uuid(),
            payment_id: r.payment_id.as_uuid(),
            status: r.status.into(),
            amount_minor: r.amount.minor(),
            currency: r.amount.currency().code().to_owned(),
            reason: r.reason.clone(),
            provider_ref: r.provider_ref.clone(),
            failure_code: r.failure_code.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A payment as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentBody {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: PaymentStatusBody,
    pub amount_minor: i64,
    /// Sum of succeeded refunds.
    pub refunded_minor: i64,
    pub currency: String,
    /// `simulated` or `http`.
    pub provider: String,
    /// The provider's reference (a PaymentIntent id); null until it answered.
    pub provider_ref: Option<String>,
    /// The decline code of a `failed` payment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Oldest first.
    pub refunds: Vec<RefundBody>,
}

impl From<&Payment> for PaymentBody {
    fn from(p: &Payment) -> Self {
        Self {
            id: p.id.as_uuid(),
            order_id: p.order_id.as_uuid(),
            customer_id: p.customer_id.as_str().to_owned(),
            status: p.status.into(),
            amount_minor: p.amount.minor(),
            refunded_minor: p.refunded_minor,
            currency: p.currency().code().to_owned(),
            provider: p.provider.clone(),
            provider_ref: p.provider_ref.clone(),
            failure_code: p.failure_code.clone(),
            created_at: p.created_at,
            updated_at: p.updated_at,
            refunds: p.refunds.iter().map(RefundBody::from).collect(),
        }
    }
}

/// A page of payments.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentList {
    pub items: Vec<PaymentBody>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only the payment of this order.
    pub order_id: Option<String>,
    /// Only this customer's payments (customers always see only their own).
    pub customer_id: Option<String>,
    /// 1–100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn encode_cursor(id: PaymentId) -> String {
    pagination::encode_cursor(&id.to_string())
}

fn decode_cursor(s: &str) -> Option<PaymentId> {
    PaymentId::parse(&pagination::decode_cursor(s)?).ok()
}

fn location(p: &Payment) -> String {
    format!("/api/v1/payments/{}", p.id)
}

/// 201 when this call did the work, 200 when an earlier one had; either way
/// with `body` and the payment's `Location`.
fn created_or_ok(now: bool, payment: &Payment, body: impl Serialize) -> HttpResponse {
    let mut res = if now {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::LOCATION, location(payment)))
        .json(body)
}

/// Charge an order (service, admin). A decline is a result: 201 with status
/// `failed` and its `failure_code`. The same order again returns its payment
/// (200); a pending one is resumed without charging twice.
#[utoipa::path(post, path = "/payments", tag = "payments", security(("bearer" = [])),
    request_body = CreatePaymentBody,
    params(("Idempotency-Key" = String, Header, description = "1–255 visible ASCII characters; the same key and body replay the first answer")),
    responses(
        (status = 201, description = "Charged now: `succeeded`, or `failed` on a decline", body = PaymentBody),
        (status = 200, description = "The order's existing payment", body = PaymentBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order has a payment with other details, or one is in progress", body = ChargeConflict, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Provider unavailable (breaker open, fault); `Retry-After` says when; the payment stays pending", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_payment(
    ctx: CallContext,
    api: web::Data<PaymentService>,
    body: web::Json<CreatePaymentBody>,
) -> Result<HttpResponse, Problem> {
    api.authorize_charge(&ctx)?;
    let req = body.into_inner().try_into_domain()?;
    let charged = api.charge(&ctx, req).await?;
    let body = PaymentBody::from(&charged.payment);
    Ok(created_or_ok(charged.charged_now, &charged.payment, body))
}

/// List payments, newest first. Customers see only their own; staff, admin
/// and service see all.
#[utoipa::path(get, path = "/payments", tag = "payments", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = PaymentList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_payments(
    ctx: CallContext,
    api: web::Data<PaymentService>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let q = query.into_inner();
    let mut errors = FieldErrors::default();
    let limit = match parse_limit(q.limit.as_deref()) {
        Ok(l) => Some(l),
        Err(_) => {
            errors.add("limit", "must be an integer between 1 and 100");
            None
        }
    };
    let order_id = q
        .order_id
        .as_deref()
        .and_then(|o| errors.check("order_id", OrderId::parse(o)));
    let customer_id = q
        .customer_id
        .as_deref()
        .and_then(|c| errors.check("customer_id", CustomerId::parse(c)));
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => match decode_cursor(c) {
            Some(id) => Some(id),
            None => {
                errors.add("cursor", "not a cursor this API issued");
                None
            }
        },
    };
    errors.into_result()?;
    let filter = PaymentFilter {
        order_id,
        customer_id,
    };
    let page = api.list(&ctx, filter, after, limit.unwrap_or(20)).await?;
    Ok(HttpResponse::Ok().json(PaymentList {
        items: page.items.iter().map(PaymentBody::from).collect(),
        next_cursor: page.next.map(encode_cursor),
    }))
}

/// One payment with its refunds. Another customer's payment answers 404.
#[utoipa::path(get, path = "/payments/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The payment's id")),
    responses(
        (status = 200, body = PaymentBody),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_payment(
    ctx: CallContext,
    api: web::Data<PaymentService>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Problem> {
    let payment = api.get(&ctx, PaymentId(id.into_inner())).await?;
    Ok(HttpResponse::Ok().json(PaymentBody::from(&payment)))
}

/// Refund (part of) a payment (staff, admin, service). Refunds never exceed
/// the captured amount, also under concurrent requests (409, nothing changes).
#[utoipa::path(post, path = "/payments/{id}/refunds", tag = "payments", security(("bearer" = [])),
    request_body = CreateRefundBody,
    params(
        ("id" = Uuid, Path, description = "The payment's id"),
        ("Idempotency-Key" = String, Header, description = "1–255 visible ASCII characters; a retry with it resumes the same refund"),
    ),
    responses(
        (status = 201, description = "Refunded", body = RefundBody),
        (status = 200, description = "This key's refund, already done", body = RefundBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Exceeds what is left to refund, payment not refundable, refused by the provider, or in progress", body = RefundConflict, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Provider unavailable; `Retry-After` says when; retry with the same key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_refund(
    ctx: CallContext,
    api: web::Data<PaymentService>,
    id: web::Path<Uuid>,
    req: actix_web::HttpRequest,
    body: web::Json<CreateRefundBody>,
) -> Result<HttpResponse, Problem> {
    api.authorize_refund(&ctx)?;
    let body = body.into_inner();
    let mut errors = FieldErrors::default();
    let amount = errors.check("amount_minor", positive_amount(body.amount_minor));
    let reason = match body.reason.as_deref() {
        None => None,
        Some(r) => errors.check("reason", RefundReason::parse(r)),
    };
    let currency = match body.currency.as_deref() {
        None => None,
        Some(c) => errors.check("currency", agora_kernel::Currency::parse(c)),
    };
    let key = req
        .headers()
        .get(agora_kernel::idempotency::IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(RequestKey::parse);
    let key = match key {
        Some(k) => errors.check("Idempotency-Key", k),
        None => {
            return Err(Problem::bad_request(
                "this request needs an Idempotency-Key header (1–255 visible ASCII characters)",
            ));
        }
    };
    errors.into_result()?;
    let (Some(amount), Some(key)) = (amount, key) else {
        return Err(Problem::internal());
    };
    let mut request = RefundRequest::new(PaymentId(id.into_inner()), amount, reason, key)
        .map_err(|e| Problem::invalid_field("amount_minor", e.to_string()))?;
    request.currency = currency;
    let refunded = api.refund(&ctx, request).await?;
    let body = RefundBody::from(&refunded.refund);
    Ok(created_or_ok(
        refunded.refunded_now,
        &refunded.payment,
        body,
    ))
}

/// The module's OpenAPI fragment (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create_payment, list_payments, get_payment, create_refund),
    components(schemas(
        CreatePaymentBody,
        CreateRefundBody,
        PaymentBody,
        RefundBody,
        PaymentList,
        PaymentStatusBody,
        RefundStatusBody,
        ChargeConflict,
        RefundConflict,
        Problem
    )),
    tags((name = "payments", description = "Charges and refunds through the payment provider"))
)]
pub struct PaymentDoc;

/// Register the routes. POSTs that move money sit behind the
/// `Idempotency-Key` middleware, with keys in the module's own database.
pub fn configure(
    cfg: &mut web::ServiceConfig,
    api: PaymentService,
    idempotency: Arc<dyn IdempotencyStore>,
    idempotency_config: IdempotencyConfig,
) {
    let idem = Idempotency::new(idempotency, idempotency_config);
    // One scope for the module's path prefix: the router tests the prefix
    // once instead of every resource's pattern in turn. Two resources share
    // `/payments`: the POST one (guarded, so GET falls through to the next)
    // carries the idempotency middleware; other methods reach the second and
    // answer 405.
    cfg.service(
        web::scope("/payments")
            .app_data(web::Data::new(api))
            .service(
                web::resource("")
                    .guard(guard::Post())
                    .wrap(idem.clone())
                    .route(web::post().to(create_payment)),
            )
            .service(web::resource("").route(web::get().to(list_payments)))
            .service(web::resource("/{id}").route(web::get().to(get_payment)))
            .service(
                web::resource("/{id}/refunds")
                    .guard(guard::Post())
                    .wrap(idem)
                    .route(web::post().to(create_refund)),
            )
            .service(web::resource("/{id}/refunds")),
    );
}
