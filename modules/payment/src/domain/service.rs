//! The payment service: charge, refund, read. Role rules live here, so HTTP
//! and in-process callers (the order module's adapter) meet the same ones.
//!
//! Provider calls never run inside a database transaction: a charge reserves a
//! `pending` row (one per order) with a lease, calls the provider, then
//! finalises; a refund reserves its amount the same way. A provider fault or an
//! open breaker leaves the row `pending` with its lease released, so a retry
//! (same order, or same refund key) resumes it under the same provider
//! idempotency key and never charges or refunds twice.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::{CallContext, Clock, Role, SystemClock};
use chrono::Utc;
use tokio::sync::Notify;

use super::models::{
    ChargeRequest, ChargeResult, NewPayment, NewRefund, Payment, PaymentFilter, PaymentId,
    PaymentStatus, Refund, RefundId, RefundRequest, RefundStatus,
};
use super::ports::{
    PaymentProvider, PaymentStore, ProviderChargeRequest, ProviderError, ProviderRefundRequest,
    Reservation, ReserveRefundError,
};

/// How long a client should wait before retrying after a provider fault.
const FAULT_RETRY_AFTER_SECS: u64 = 1;

fn retry_after_secs(e: &ProviderError) -> u64 {
    match e {
        ProviderError::Unavailable { retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            secs.max(1)
        }
        ProviderError::Fault { .. } => FAULT_RETRY_AFTER_SECS,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    #[error("only the service and admin roles may charge")]
    Forbidden,
    #[error("order {order_id} already has payment {payment_id} with other details")]
    OrderAlreadyCharged {
        order_id: uuid::Uuid,
        payment_id: PaymentId,
    },
    #[error("a charge of this order is in progress; retry shortly")]
    InProgress { payment_id: PaymentId },
    /// The payment stays `pending`; retrying resumes it without charging twice.
    #[error("the payment provider is unavailable; retry in {retry_after_secs} s")]
    ProviderUnavailable {
        payment_id: PaymentId,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("only the staff, admin and service roles may refund")]
    Forbidden,
    #[error("no such payment")]
    NotFound,
    #[error("a {0} payment cannot be refunded")]
    NotRefundable(PaymentStatus),
    #[error("the refund exceeds what is left to refund ({refundable_minor} minor units)")]
    ExceedsRefundable { refundable_minor: i64 },
    #[error("this idempotency key was already used for another refund of this payment")]
    KeyReused,
    #[error("the payment is in {payment}, not {requested}")]
    CurrencyMismatch {
        payment: agora_kernel::Currency,
        requested: agora_kernel::Currency,
    },
    #[error("a refund with this key is in progress; retry shortly")]
    InProgress { refund_id: RefundId },
    #[error("the payment provider refused the refund ({code})")]
    Rejected { refund_id: RefundId, code: String },
    /// The refund stays `pending` (its amount reserved); retrying with the same
    /// key resumes it without refunding twice.
    #[error("the payment provider is unavailable; retry in {retry_after_secs} s")]
    ProviderUnavailable {
        refund_id: RefundId,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum GetPaymentError {
    /// Also what a customer gets for another customer's payment.
    #[error("no such payment")]
    NotFound,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ListPaymentsError {
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A charge's result.
#[derive(Debug, Clone)]
pub struct Charged {
    /// `succeeded` or `failed` (a decline), or an earlier final state.
    pub payment: Payment,
    /// Whether this call asked the provider (`false`: an earlier call already
    /// finished this order's payment, which is returned as it is).
    pub charged_now: bool,
}

/// A refund's result.
#[derive(Debug, Clone)]
pub struct Refunded {
    pub payment: Payment,
    pub refund: Refund,
    /// Whether this call asked the provider (`false`: a replay of a finished refund).
    pub refunded_now: bool,
}

/// A page of payments.
#[derive(Debug, Clone)]
pub struct PaymentPage {
    pub items: Vec<Payment>,
    /// The last item's id when more may follow.
    pub next: Option<PaymentId>,
}

/// The payment module's `api` handle: what its HTTP handlers and, in the
/// monolith, the order module's adapter call. Cheap to clone.
#[derive(Clone)]
pub struct PaymentService {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
}

struct Inner {
    store: Arc<dyn PaymentStore>,
    provider: Arc<dyn PaymentProvider>,
    /// After this, a provider call's lease counts as abandoned.
    lease: Duration,
    relay: Option<Arc<Notify>>,
}

/// Staff, admin and service see every payment; anyone else only their own.
fn sees_everything(ctx: &CallContext) -> bool {
    ctx.principal.has_any(&[Role::Staff, Role::Service])
}

impl PaymentService {
    /// `provider` should already be wrapped in the circuit breaker. `relay` is
    /// woken after each commit that wrote an event.
    pub fn new(
        store: Arc<dyn PaymentStore>,
        provider: Arc<dyn PaymentProvider>,
        lease: Duration,
        relay: Option<Arc<Notify>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                provider,
                lease,
                relay,
            }),
            clock: Arc::new(SystemClock),
        }
    }

    /// Use another clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> chrono::DateTime<Utc> {
        self.clock.now()
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    fn stale_before(&self) -> chrono::DateTime<Utc> {
        self.now() - chrono::Duration::from_std(self.inner.lease).unwrap_or_default()
    }

    fn wake_relay(&self) {
        if let Some(n) = &self.inner.relay {
            n.notify_one();
        }
    }

    /// Whether the caller may charge (service, admin).
    ///
    /// # Errors
    /// [`ChargeError::Forbidden`].
    pub fn authorize_charge(&self, ctx: &CallContext) -> Result<(), ChargeError> {
        if ctx.principal.has_any(&[Role::Service]) {
            Ok(())
        } else {
            Err(ChargeError::Forbidden)
        }
    }

    /// Whether the caller may refund (staff, admin, service).
    ///
    /// # Errors
    /// [`RefundError::Forbidden`].
    pub fn authorize_refund(&self, ctx: &CallContext) -> Result<(), RefundError> {
        if ctx.principal.has_any(&[Role::Staff, Role::Service]) {
            Ok(())
        } else {
            Err(RefundError::Forbidden)
        }
    }

    /// Charge an order (service, admin). One order is charged at most once:
    /// the same request again returns its payment; a pending one (unknown
    /// outcome) is resumed under the same provider idempotency key.
    ///
    /// # Errors
    /// [`ChargeError`]. A decline is not an error: the payment is `failed`.
    #[tracing::instrument(skip_all, fields(order_id = %req.order_id, correlation_id = %ctx.correlation_id))]
    pub async fn charge(
        &self,
        ctx: &CallContext,
        req: ChargeRequest,
    ) -> Result<Charged, ChargeError> {
        self.authorize_charge(ctx)?;
        let new = NewPayment {
            id: PaymentId::new(),
            request: req.clone(),
            provider: self.inner.provider.name().to_owned(),
        };
        let payment = match self.inner.store.reserve_charge(&new, self.now()).await? {
            Reservation::Created(p) => p,
            Reservation::Existing(p) => {
                if !p.matches(&req) {
                    return Err(ChargeError::OrderAlreadyCharged {
                        order_id: req.order_id.as_uuid(),
                        payment_id: p.id,
                    });
                }
                if p.status != PaymentStatus::Pending {
                    return Ok(Charged {
                        payment: p,
                        charged_now: false,
                    });
                }
                let leased = self
                    .inner
                    .store
                    .lease_charge(p.id, self.now(), self.stale_before())
                    .await?;
                if !leased {
                    return Err(ChargeError::InProgress { payment_id: p.id });
                }
                tracing::info!(payment_id = %p.id, "resuming a pending charge");
                p
            }
        };
        self.run_charge(ctx, payment).await
    }

    async fn run_charge(&self, ctx: &CallContext, p: Payment) -> Result<Charged, ChargeError> {
        let call = ProviderChargeRequest {
            idempotency_key: format!("agora-payment-{}", p.id),
            payment_id: p.id,
            order_id: p.order_id,
            customer_id: p.customer_id.clone(),
            amount: p.amount,
            payment_method: p.payment_method.clone(),
        };
        let result = match self.inner.provider.charge(&call).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(payment_id = %p.id, error = %e, "charge not completed; the payment stays pending");
                if let Err(re) = self.inner.store.release_charge(p.id).await {
                    tracing::error!(payment_id = %p.id, error = %format!("{re:#}"), "failed to release a charge lease");
                }
                return Err(ChargeError::ProviderUnavailable {
                    payment_id: p.id,
                    retry_after_secs: retry_after_secs(&e),
                });
            }
        };
        let finished = self
            .inner
            .store
            .finish_charge(&p, &result, &ctx.correlation_id, self.now())
            .await?;
        match finished {
            Some(payment) => {
                self.wake_relay();
                match &result {
                    ChargeResult::Succeeded { .. } => {
                        tracing::info!(payment_id = %payment.id, "payment succeeded");
                    }
                    ChargeResult::Declined { code, .. } => {
                        tracing::info!(payment_id = %payment.id, failure_code = %code, "payment declined");
                    }
                }
                Ok(Charged {
                    payment,
                    charged_now: true,
                })
            }
            None => {
                // Another caller finished it meanwhile; theirs is the record.
                let payment = self.load(p.id).await?;
                Ok(Charged {
                    payment,
                    charged_now: false,
                })
            }
        }
    }

    /// Refund (part of) a payment (staff, admin, service). The sum of refunds
    /// never exceeds the captured amount; the same key resumes the same refund.
    ///
    /// # Errors
    /// [`RefundError`].
    #[tracing::instrument(skip_all, fields(payment_id = %req.payment_id, correlation_id = %ctx.correlation_id))]
    pub async fn refund(
        &self,
        ctx: &CallContext,
        req: RefundRequest,
    ) -> Result<Refunded, RefundError> {
        self.authorize_refund(ctx)?;
        if let Some(requested) = req.currency {
            let payment = self
                .inner
                .store
                .get(req.payment_id)
                .await?
                .ok_or(RefundError::NotFound)?;
            if payment.currency() != requested {
                return Err(RefundError::CurrencyMismatch {
                    payment: payment.currency(),
                    requested,
                });
            }
        }
        let new = NewRefund {
            id: RefundId::new(),
            request: req.clone(),
        };
        let refund = match self.inner.store.reserve_refund(&new, self.now()).await {
            Ok(Reservation::Created(r)) => r,
            Ok(Reservation::Existing(r)) => {
                let same_reason = r.reason.as_deref() == req.reason.as_ref().map(|x| x.as_str());
                if r.amount.minor() != req.amount_minor || !same_reason {
                    return Err(RefundError::KeyReused);
                }
                match r.status {
                    RefundStatus::Succeeded => {
                        let payment = self.load(req.payment_id).await?;
                        return Ok(Refunded {
                            payment,
                            refund: r,
                            refunded_now: false,
                        });
                    }
                    RefundStatus::Failed => {
                        return Err(RefundError::Rejected {
                            refund_id: r.id,
                            code: r.failure_code.unwrap_or_default(),
                        });
                    }
                    RefundStatus::Pending => {}
                }
                let leased = self
                    .inner
                    .store
                    .lease_refund(r.id, self.now(), self.stale_before())
                    .await?;
                if !leased {
                    return Err(RefundError::InProgress { refund_id: r.id });
                }
                tracing::info!(refund_id = %r.id, "resuming a pending refund");
                r
            }
            Err(ReserveRefundError::NotFound) => return Err(RefundError::NotFound),
            Err(ReserveRefundError::NotRefundable(s)) => return Err(RefundError::NotRefundable(s)),
            Err(ReserveRefundError::ExceedsRefundable { refundable_minor }) => {
                return Err(RefundError::ExceedsRefundable { refundable_minor });
            }
            Err(ReserveRefundError::Unexpected(e)) => return Err(e.into()),
        };
        self.run_refund(ctx, refund).await
    }

    async fn load(&self, id: PaymentId) -> anyhow::Result<Payment> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("payment {id} vanished"))
    }

    async fn run_refund(&self, ctx: &CallContext, r: Refund) -> Result<Refunded, RefundError> {
        let payment = self.load(r.payment_id).await?;
        let call = ProviderRefundRequest {
            idempotency_key: format!("agora-refund-{}", r.id),
            refund_id: r.id,
            payment_id: r.payment_id,
            charge_ref: payment.provider_ref.clone().unwrap_or_default(),
            amount: r.amount,
            reason: r.reason.clone(),
        };
        let result = match self.inner.provider.refund(&call).await {
            Ok(result) => result,
            Err(e) => {
                tracing::warn!(refund_id = %r.id, error = %e, "refund not completed; it stays pending");
                if let Err(re) = self.inner.store.release_refund(r.id).await {
                    tracing::error!(refund_id = %r.id, error = %format!("{re:#}"), "failed to release a refund lease");
                }
                return Err(RefundError::ProviderUnavailable {
                    refund_id: r.id,
                    retry_after_secs: retry_after_secs(&e),
                });
            }
        };
        let finished = self
            .inner
            .store
            .finish_refund(r.id, &result, &ctx.correlation_id, self.now())
            .await?;
        let (payment, refund, refunded_now) = match finished {
            Some((p, refund)) => {
                self.wake_relay();
                (p, refund, true)
            }
            None => {
                let p = self.load(r.payment_id).await?;
                let refund = p
                    .refunds
                    .iter()
                    .find(|x| x.id == r.id)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("refund {} vanished", r.id))?;
                (p, refund, false)
            }
        };
        match refund.status {
            RefundStatus::Failed => Err(RefundError::Rejected {
                refund_id: refund.id,
                code: refund.failure_code.unwrap_or_default(),
            }),
            _ => {
                if refunded_now {
                    tracing::info!(refund_id = %refund.id, amount_minor = refund.amount.minor(), "payment refunded");
                }
                Ok(Refunded {
                    payment,
                    refund,
                    refunded_now,
                })
            }
        }
    }

    /// One payment: staff, admin and service see all, anyone else only their
    /// own (another customer's answers `NotFound`, as if it did not exist).
    ///
    /// # Errors
    /// [`GetPaymentError`].
    #[tracing::instrument(skip_all, fields(payment_id = %id))]
    pub async fn get(&self, ctx: &CallContext, id: PaymentId) -> Result<Payment, GetPaymentError> {
        let payment = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or(GetPaymentError::NotFound)?;
        if sees_everything(ctx) || payment.customer_id.as_str() == ctx.principal.subject {
            Ok(payment)
        } else {
            Err(GetPaymentError::NotFound)
        }
    }

    /// Payments, newest first; customers see only their own whatever the filter.
    ///
    /// # Errors
    /// [`ListPaymentsError`].
    #[tracing::instrument(skip_all)]
    pub async fn list(
        &self,
        ctx: &CallContext,
        mut filter: PaymentFilter,
        after: Option<PaymentId>,
        limit: u32,
    ) -> Result<PaymentPage, ListPaymentsError> {
        if !sees_everything(ctx) {
            let own = ctx.principal.subject.as_str();
            match &filter.customer_id {
                Some(c) if c.as_str() != own => {
                    return Ok(PaymentPage {
                        items: vec![],
                        next: None,
                    });
                }
                _ => {}
            }
            match super::models::CustomerId::parse(own) {
                Ok(c) => filter.customer_id = Some(c),
                Err(_) => {
                    return Ok(PaymentPage {
                        items: vec![],
                        next: None,
                    });
                }
            }
        }
        let limit = limit.clamp(1, 100);
        let items = self.inner.store.list(&filter, after, limit + 1).await?;
        let (items, next) = agora_kernel::pagination::cut(items, limit, |p| p.id);
        Ok(PaymentPage { items, next })
    }

    /// The payment of an order, if any, under the same visibility rule as [`PaymentService::get`].
    ///
    /// # Errors
    /// [`GetPaymentError`].
    pub async fn find_by_order(
        &self,
        ctx: &CallContext,
        order_id: super::models::OrderId,
    ) -> Result<Payment, GetPaymentError> {
        let filter = PaymentFilter {
            order_id: Some(order_id),
            customer_id: None,
        };
        let page = self
            .list(ctx, filter, None, 1)
            .await
            .map_err(|ListPaymentsError::Unexpected(e)| GetPaymentError::Unexpected(e))?;
        page.items
            .into_iter()
            .next()
            .ok_or(GetPaymentError::NotFound)
    }

    /// The payment's ledger (staff, admin, service; others get `NotFound`).
    ///
    /// # Errors
    /// [`GetPaymentError`].
    pub async fn ledger(
        &self,
        ctx: &CallContext,
        id: PaymentId,
    ) -> Result<Vec<super::models::LedgerEntry>, GetPaymentError> {
        if !sees_everything(ctx) {
            return Err(GetPaymentError::NotFound);
        }
        Ok(self.inner.store.ledger(id).await?)
    }
}
