//! [`RemotePayments`]: the [`PaymentApi`] of a payment module in another
//! process — a client of this module's own REST API (`/api/v1/payments`),
//! sent through the host's [`Transport`] (instance choice, service token,
//! time-out, retries, circuit breaker). Every answer the REST API documents
//! maps back to the same result the in-process service gives.

use std::sync::Arc;

use agora_kernel::CallContext;
use agora_kernel::remote::{RemoteRequest, RemoteResponse, Transport};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::api::{PaymentApi, PaymentSummary, RefundSummary};
use crate::domain::models::{
    ChargeRequest, OrderId, PaymentId, PaymentStatus, RefundId, RefundRequest, RefundStatus,
};
use crate::domain::service::{ChargeError, GetPaymentError, RefundError};

/// The payment module over HTTP.
pub struct RemotePayments {
    transport: Arc<dyn Transport>,
}

impl RemotePayments {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self { transport }
    }
}

#[derive(Deserialize)]
struct PaymentView {
    id: uuid::Uuid,
    status: String,
    amount_minor: i64,
    refunded_minor: i64,
    #[serde(default)]
    failure_code: Option<String>,
}

impl PaymentView {
    fn summary(self) -> anyhow::Result<PaymentSummary> {
        Ok(PaymentSummary {
            id: PaymentId(self.id),
            status: PaymentStatus::parse(&self.status).map_err(|e| anyhow::anyhow!("{e}"))?,
            amount_minor: self.amount_minor,
            refunded_minor: self.refunded_minor,
            failure_code: self.failure_code,
        })
    }
}

#[derive(Deserialize)]
struct PaymentPage {
    items: Vec<PaymentView>,
}

#[derive(Deserialize)]
struct RefundView {
    id: uuid::Uuid,
    payment_id: uuid::Uuid,
    status: String,
    amount_minor: i64,
}

/// What an answer the API does not document for this call means.
fn unexpected(what: &str, r: &RemoteResponse) -> anyhow::Error {
    r.unexpected("payment", what)
}

fn extension_i64(r: &RemoteResponse, key: &str) -> Option<i64> {
    r.problem()?.extensions.get(key)?.as_i64()
}

fn extension_str(r: &RemoteResponse, key: &str) -> Option<String> {
    r.problem()?
        .extensions
        .get(key)?
        .as_str()
        .map(str::to_owned)
}

fn extension_id(r: &RemoteResponse, key: &str) -> uuid::Uuid {
    extension_str(r, key)
        .and_then(|s| uuid::Uuid::parse_str(&s).ok())
        .unwrap_or_default()
}

fn retry_after_secs(r: &RemoteResponse) -> u64 {
    r.retry_after.map_or(1, |d| d.as_secs().max(1))
}

#[async_trait]
impl PaymentApi for RemotePayments {
    async fn find_by_order(
        &self,
        ctx: &CallContext,
        order_id: OrderId,
    ) -> Result<PaymentSummary, GetPaymentError> {
        let request = RemoteRequest::get(format!("/payments?order_id={}&limit=1", order_id.0))
            .affinity(order_id.0.to_string());
        let r = self.transport.call(ctx, request).await?;
        if !r.is_success() {
            return Err(GetPaymentError::Unexpected(unexpected(
                "a payment lookup",
                &r,
            )));
        }
        let page: PaymentPage = r.json()?;
        page.items
            .into_iter()
            .next()
            .ok_or(GetPaymentError::NotFound)?
            .summary()
            .map_err(GetPaymentError::Unexpected)
    }

    async fn charge(
        &self,
        ctx: &CallContext,
        c: ChargeRequest,
        idempotency_key: &str,
    ) -> Result<PaymentSummary, ChargeError> {
        let body = json!({
            "order_id": c.order_id.0,
            "customer_id": c.customer_id.as_str(),
            "amount_minor": c.amount.minor(),
            "currency": c.amount.currency().code(),
            "payment_method": c.payment_method.as_str(),
        });
        let request = RemoteRequest::post("/payments", body)
            .idempotency_key(idempotency_key)
            .affinity(c.order_id.0.to_string());
        // No answer: the outcome is unknown; the same request again resolves it.
        let r = self.transport.call(ctx, request).await?;
        if r.is_success() {
            return r
                .json::<PaymentView>()?
                .summary()
                .map_err(ChargeError::Unexpected);
        }
        let payment_id = PaymentId(extension_id(&r, "payment_id"));
        match (r.status, r.problem_type().as_deref()) {
            (403, _) => Err(ChargeError::Forbidden),
            (409, Some("order-already-charged")) => Err(ChargeError::OrderAlreadyCharged {
                order_id: c.order_id.0,
                payment_id,
            }),
            // A charge of this order (or a request with this key) is in flight.
            (409, _) => Err(ChargeError::InProgress { payment_id }),
            (503, _) => Err(ChargeError::ProviderUnavailable {
                payment_id,
                retry_after_secs: retry_after_secs(&r),
            }),
            _ => Err(ChargeError::Unexpected(unexpected("a charge", &r))),
        }
    }

    async fn refund(
        &self,
        ctx: &CallContext,
        req: RefundRequest,
    ) -> Result<RefundSummary, RefundError> {
        let mut body = json!({"amount_minor": req.amount_minor});
        if let Some(reason) = &req.reason {
            body["reason"] = json!(reason.as_str());
        }
        if let Some(currency) = req.currency {
            body["currency"] = json!(currency.code());
        }
        let request = RemoteRequest::post(format!("/payments/{}/refunds", req.payment_id.0), body)
            .idempotency_key(req.key.as_str())
            .affinity(req.payment_id.0.to_string());
        let r = self.transport.call(ctx, request).await?;
        if r.is_success() {
            let v: RefundView = r.json()?;
            return Ok(RefundSummary {
                id: RefundId(v.id),
                payment_id: PaymentId(v.payment_id),
                status: RefundStatus::parse(&v.status)
                    .map_err(|e| RefundError::Unexpected(anyhow::anyhow!("{e}")))?,
                amount_minor: v.amount_minor,
            });
        }
        let refund_id = RefundId(extension_id(&r, "refund_id"));
        match (r.status, r.problem_type().as_deref()) {
            (403, _) => Err(RefundError::Forbidden),
            (404, _) => Err(RefundError::NotFound),
            (409, Some("refund-exceeds-payment")) => Err(RefundError::ExceedsRefundable {
                refundable_minor: extension_i64(&r, "refundable_minor").ok_or_else(|| {
                    RefundError::Unexpected(unexpected("a refund (no refundable_minor)", &r))
                })?,
            }),
            (409, Some("payment-not-refundable")) => {
                let status = extension_str(&r, "payment_status")
                    .and_then(|s| PaymentStatus::parse(&s).ok())
                    .ok_or_else(|| {
                        RefundError::Unexpected(unexpected("a refund (no payment_status)", &r))
                    })?;
                Err(RefundError::NotRefundable(status))
            }
            (409, Some("refund-rejected")) => Err(RefundError::Rejected {
                refund_id,
                code: extension_str(&r, "code").unwrap_or_default(),
            }),
            (409, _) => Err(RefundError::InProgress { refund_id }),
            (422, Some("idempotency-key-reused")) => Err(RefundError::KeyReused),
            (422, _)
                if r.problem()
                    .is_some_and(|p| p.errors.contains_key("currency")) =>
            {
                match (
                    extension_str(&r, "payment_currency")
                        .and_then(|c| agora_kernel::Currency::parse(&c).ok()),
                    req.currency,
                ) {
                    (Some(payment), Some(requested)) => {
                        Err(RefundError::CurrencyMismatch { payment, requested })
                    }
                    _ => Err(RefundError::Unexpected(unexpected("a refund", &r))),
                }
            }
            (503, _) => Err(RefundError::ProviderUnavailable {
                refund_id,
                retry_after_secs: retry_after_secs(&r),
            }),
            _ => Err(RefundError::Unexpected(unexpected("a refund", &r))),
        }
    }
}
