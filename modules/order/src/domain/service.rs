//! The order service and the order saga.
//!
//! Placing an order: `pending` → reserve stock → `awaiting_payment` → charge →
//! `confirmed`; short of stock → `rejected`; declined → `payment_failed` with the
//! stock released; provider unavailable → stays `awaiting_payment`, retried with
//! exponential back-off until the payment deadline, then `payment_failed`.
//!
//! Every step is idempotent (the reservation id and the charge key derive from
//! the order id), every state change is a compare-and-swap on `version` written
//! with its history row and events in one transaction, and a per-order lease
//! keeps the request, the recovery worker and a cancel from stepping on each
//! other. No transaction is held across a call to another module.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_kernel::{CallContext, Clock, EventEnvelope, Principal, Role, SystemClock};

use crate::events;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::models::{
    Order, OrderFilter, OrderId, OrderLine, OrderRequest, OrderStatus, ShippingAddress, Sku,
    Transition, price_lines,
};
use super::ports::{
    Catalogue, Change, ChargeOutcome, ChargeRequest, CustomerRef, Lease, OrderStore, PaymentRef,
    PaymentState, Payments, PortError, RefundOutcome, ReserveOutcome, StockReservations,
    StoreError,
};

/// Saga tuning.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// After this an unpaid order becomes `payment_failed`.
    pub payment_deadline: Duration,
    /// Reservations are asked for this long (longer than the payment deadline).
    pub reservation_ttl: Duration,
    /// How long one step may hold an order.
    pub lease: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            payment_deadline: Duration::from_secs(900),
            reservation_ttl: Duration::from_secs(1200),
            lease: Duration::from_secs(3),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// Errors of reading and changing orders.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Not there, or not the caller's (the same answer, on purpose).
    #[error("no such order")]
    NotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("an order that is {from} cannot become {to}")]
    IllegalTransition { from: OrderStatus, to: OrderStatus },
    /// `If-Match` named an older version.
    #[error("the order is at version {current}, not {expected}")]
    VersionMismatch { expected: i64, current: i64 },
    /// Another step holds the order; retry shortly.
    #[error("the order is being processed; retry shortly")]
    Busy,
    /// What is wrong, per request field (HTTP renders the fields as paths).
    #[error("the request is invalid")]
    Validation(BTreeMap<RequestField, Vec<String>>),
    /// A module this needs is unavailable; nothing changed.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// The part of an order request a validation error points at, as data: the
/// HTTP edge renders it as the body's path (`items`, `items[1].sku`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestField {
    /// The lines as a whole.
    Items,
    /// The sku of line `i` (0-based, in the request's order).
    ItemSku(usize),
}

/// Validation errors as the domain collects them.
#[derive(Debug, Default)]
struct Invalid(BTreeMap<RequestField, Vec<String>>);

impl Invalid {
    fn add(&mut self, field: RequestField, message: impl Into<String>) {
        self.0.entry(field).or_default().push(message.into());
    }

    fn one(field: RequestField, message: impl Into<String>) -> OrderError {
        let mut e = Self::default();
        e.add(field, message);
        OrderError::Validation(e.0)
    }
}

/// A page of orders, newest first: `next` is the last item's id when more follow.
#[derive(Debug, Clone)]
pub struct OrderListPage {
    pub items: Vec<Order>,
    pub next: Option<OrderId>,
}

impl From<StoreError> for OrderError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => OrderError::NotFound,
            StoreError::Conflict | StoreError::DuplicateKey => OrderError::Busy,
            StoreError::Unexpected(e) => OrderError::Unexpected(e),
        }
    }
}

pub struct OrderService {
    store: Arc<dyn OrderStore>,
    catalogue: Arc<dyn Catalogue>,
    stock: Arc<dyn StockReservations>,
    payments: Arc<dyn Payments>,
    config: SagaConfig,
    clock: Arc<dyn Clock>,
    relay: Option<Arc<Notify>>,
    /// This instance's name on the leases it takes (several instances may
    /// serve one database).
    owner: String,
}

const SYSTEM: &str = "system";

/// How many orders one recovery pass resumes at once.
const RECOVERY_CONCURRENCY: usize = 16;

/// `order`'s `event_type` event, as the saga writes it to the outbox.
fn event(
    order: &Order,
    event_type: &str,
    correlation_id: &str,
    reason: Option<&str>,
) -> Result<EventEnvelope, OrderError> {
    events::envelope(order, event_type, correlation_id, reason).map_err(OrderError::Unexpected)
}

/// Log a transition a write stored for an earlier step (see [`Change::earlier`]).
fn log_earlier(order: &Order, change: &Change) {
    if let Some(t) = &change.earlier {
        let from = t.from.map_or("", OrderStatus::as_str);
        tracing::info!(order_id = %order.id, from, to = %t.to, "order transition");
    }
}

/// Whether cancelling `order` has anything left to do: `false` when it is
/// cancelled already, an error when it has gone past the point of cancelling.
fn needs_cancelling(order: &Order) -> Result<bool, OrderError> {
    if order.status == OrderStatus::Cancelled {
        return Ok(false);
    }
    if !order.status.can_become(OrderStatus::Cancelled) {
        return Err(OrderError::IllegalTransition {
            from: order.status,
            to: OrderStatus::Cancelled,
        });
    }
    Ok(true)
}

fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    agora_kernel::outbox::backoff(attempts, base, max)
}

impl OrderService {
    pub fn new(
        store: Arc<dyn OrderStore>,
        catalogue: Arc<dyn Catalogue>,
        stock: Arc<dyn StockReservations>,
        payments: Arc<dyn Payments>,
        config: SagaConfig,
    ) -> Self {
        Self {
            store,
            catalogue,
            stock,
            payments,
            config,
            clock: Arc::new(SystemClock),
            relay: None,
            owner: format!("order-{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// This instance's lease owner name.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Use another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Wake this outbox relay after commits that wrote events.
    pub fn with_relay(mut self, relay: Arc<Notify>) -> Self {
        self.relay = Some(relay);
        self
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn lease_until(&self) -> DateTime<Utc> {
        self.now() + chrono::Duration::from_std(self.config.lease).unwrap_or_default()
    }

    fn lease(&self) -> Lease {
        Lease {
            owner: self.owner.clone(),
            until: self.lease_until(),
        }
    }

    /// Run `work` (the caller holds order `id`'s lease) while renewing the
    /// lease every third of its length, so a slow step keeps it and a crashed
    /// instance's orders are free again a lease after its last renewal.
    async fn renewing<T>(&self, id: OrderId, work: impl std::future::Future<Output = T>) -> T {
        let every = (self.config.lease / 3).max(Duration::from_millis(50));
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                match self.store.renew_lease(id, &self.lease()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(order_id = %id, "lost the order's lease; its changes will not apply");
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        tracing::warn!(order_id = %id, error = %e, "failed to renew an order lease")
                    }
                }
            }
        };
        tokio::pin!(work);
        tokio::select! {
            biased;
            out = &mut work => out,
            () = renew => unreachable!("the renewal loop never ends"),
        }
    }

    async fn release(&self, id: OrderId) {
        if let Err(e) = self.store.release_lease(id, &self.owner).await {
            tracing::warn!(order_id = %id, error = %e, "failed to release an order lease; it expires by itself");
        }
    }

    fn may_see(principal: &Principal, order: &Order) -> bool {
        principal.is_staff() || principal.subject == order.customer_id
    }

    /// Place an order and run its first saga step inside the request.
    #[tracing::instrument(skip_all, fields(customer = %ctx.principal.subject))]
    pub async fn place(
        &self,
        ctx: &CallContext,
        request: OrderRequest,
    ) -> Result<Order, OrderError> {
        ctx.principal
            .require(&[Role::Customer])
            .map_err(|d| OrderError::Forbidden(d.to_string()))?;
        // A replay of a placed order is caught by the idempotency layer and, past
        // it, by the unique key on insert; only a replay that would now fail
        // validation (a sku retired since) needs the lookup.
        let priced = match self.price(ctx, &request).await {
            Ok(priced) => priced,
            Err(e) => {
                if let Some(key) = &request.idempotency_key
                    && let Some(existing) =
                        self.store.find_by_key(&ctx.principal.subject, key).await?
                {
                    return Ok(existing);
                }
                return Err(e);
            }
        };
        let now = self.now();
        let deadline =
            now + chrono::Duration::from_std(self.config.payment_deadline).unwrap_or_default();
        let mut order = Order::placed(ctx, request, priced, now, deadline);
        let transition = Transition {
            from: None,
            to: OrderStatus::Pending,
            at: now,
            actor: ctx.principal.subject.clone(),
            reason: None,
            correlation_id: ctx.correlation_id.clone(),
        };
        let placed = event(&order, events::PLACED, &ctx.correlation_id, None)?;
        match self
            .store
            .insert(&order, &transition, &[placed], &self.lease())
            .await
        {
            Ok(()) => {}
            Err(StoreError::DuplicateKey) => return self.placed_before(ctx, &order).await,
            Err(e) => return Err(e.into()),
        }
        self.wake_relay();
        let id = order.id;
        order = self
            .renewing(id, self.advance(order, &ctx.correlation_id))
            .await;
        if order.status.in_flight() {
            // A settled order's last transition freed the lease already.
            self.release(id).await;
        }
        Ok(order)
    }

    /// Price the request's lines from the catalogue: the order's items and
    /// total, or why they cannot be sold.
    async fn price(
        &self,
        ctx: &CallContext,
        request: &OrderRequest,
    ) -> Result<(Vec<OrderLine>, agora_kernel::Money), OrderError> {
        let skus: Vec<Sku> = request
            .lines
            .iter()
            .map(|l| l.sku.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let quotes = self
            .catalogue
            .quote(ctx, &skus)
            .await
            .map_err(|e| match e {
                e @ (PortError::Unavailable(_) | PortError::Refused(_)) => {
                    tracing::warn!(error = %e, "the catalogue did not quote");
                    OrderError::Unavailable("the catalogue is unavailable".to_owned())
                }
                PortError::Unexpected(e) => OrderError::Unexpected(e),
            })?;
        let mut errors = Invalid::default();
        let mut priced = Vec::with_capacity(request.lines.len());
        let currency = request
            .lines
            .iter()
            .find_map(|l| quotes.get(l.sku.as_str()).map(|q| q.price.currency()));
        for (i, line) in request.lines.iter().enumerate() {
            let field = RequestField::ItemSku(i);
            match quotes.get(line.sku.as_str()) {
                None => errors.add(field, format!("unknown sku `{}`", line.sku.as_str())),
                Some(q) if !q.active => errors.add(
                    field,
                    format!("sku `{}` is not for sale", line.sku.as_str()),
                ),
                Some(q) if Some(q.price.currency()) != currency => errors.add(
                    field,
                    format!(
                        "sku `{}` is priced in {}, the order in {}",
                        line.sku.as_str(),
                        q.price.currency(),
                        currency.map(|c| c.to_string()).unwrap_or_default()
                    ),
                ),
                Some(q) => priced.push((line.clone(), q.price)),
            }
        }
        if !errors.0.is_empty() {
            return Err(OrderError::Validation(errors.0));
        }
        let (items, total) =
            price_lines(&priced).map_err(|m| Invalid::one(RequestField::Items, m))?;
        if total.minor() <= 0 {
            return Err(Invalid::one(
                RequestField::Items,
                "the order total must be more than zero",
            ));
        }
        Ok((items, total))
    }

    /// The order this customer already placed with the same idempotency key.
    async fn placed_before(&self, ctx: &CallContext, order: &Order) -> Result<Order, OrderError> {
        let key = order.idempotency_key.as_deref().unwrap_or_default();
        self.store
            .find_by_key(&ctx.principal.subject, key)
            .await?
            .ok_or(OrderError::Busy)
    }

    fn wake_relay(&self) {
        if let Some(r) = &self.relay {
            r.notify_one();
        }
    }

    /// Apply a status change (with its event) by compare-and-swap.
    async fn transition(
        &self,
        order: &Order,
        to: OrderStatus,
        actor: &str,
        reason: Option<&str>,
        correlation_id: &str,
        mut change: Change,
    ) -> Result<Order, OrderError> {
        if !order.status.can_become(to) {
            return Err(OrderError::IllegalTransition {
                from: order.status,
                to,
            });
        }
        let now = self.now();
        let mut next = order.clone();
        next.status = to;
        if let Some(p) = &change.payment_id {
            next.payment_id = Some(p.clone());
        }
        if let Some(r) = &change.failure_reason {
            next.failure_reason = Some(r.clone());
        }
        if let Some(t) = events::type_of(to) {
            change.events.push(event(&next, t, correlation_id, reason)?);
        }
        change.status = Some((
            to,
            Transition {
                from: Some(order.status),
                to,
                at: now,
                actor: actor.to_owned(),
                reason: reason.map(str::to_owned),
                correlation_id: correlation_id.to_owned(),
            },
        ));
        if to.is_final() || to == OrderStatus::Confirmed {
            change.next_attempt_at = Some(None);
            // Nothing is left to do for the saga: the lease goes in the same write.
            change.release_lease = true;
        }
        // Every transition happens under this instance's lease.
        change.lease_owner = Some(self.owner.clone());
        let saved = self.store.apply(order, &change).await?;
        if !change.events.is_empty() {
            self.wake_relay();
        }
        if to.is_final() || to == OrderStatus::Confirmed {
            metrics::counter!("agora_saga_outcomes_total", "status" => to.as_str()).increment(1);
        }
        log_earlier(order, &change);
        tracing::info!(order_id = %order.id, from = %order.status, to = %to, "order transition");
        Ok(saved)
    }

    async fn schedule_retry(&self, order: &Order, why: &str) -> Order {
        self.retry_with(order, why, Change::default()).await
    }

    /// Schedule a retry, storing what the step carried on the way (a payment
    /// it took, a transition it made in memory).
    async fn retry_with(&self, order: &Order, why: &str, carried: Change) -> Order {
        let attempts = order.attempts + 1;
        let delay = backoff(attempts, self.config.retry_base, self.config.retry_max);
        let mut at = self.now() + chrono::Duration::from_std(delay).unwrap_or_default();
        if order.status.in_flight()
            && at > order.payment_deadline
            && self.now() < order.payment_deadline
        {
            // Do not sleep past the deadline: the next attempt settles the order.
            at = order.payment_deadline;
        }
        tracing::warn!(order_id = %order.id, attempts, retry_in_ms = delay.as_millis() as u64, reason = why, "saga step will be retried");
        let change = Change {
            attempts: Some(attempts),
            next_attempt_at: Some(Some(at)),
            lease_owner: Some(self.owner.clone()),
            ..carried
        };
        match self.store.apply(order, &change).await {
            Ok(o) => {
                log_earlier(order, &change);
                o
            }
            Err(e) => {
                tracing::warn!(order_id = %order.id, error = %e, "failed to record a retry; the recovery worker picks it up");
                order.clone()
            }
        }
    }

    /// Give back `amount` of a payment, or what is left of it when staff
    /// refunded part already: a refund of the remainder under a key derived
    /// from `key` and the remainder, so every retry asks for the same thing.
    async fn refund_rest(
        &self,
        ctx: &CallContext,
        payment_id: &PaymentRef,
        amount: agora_kernel::Money,
        key: &str,
    ) -> Result<(), PortError> {
        let mut ask = (amount, key.to_owned());
        for _ in 0..3 {
            match self.payments.refund(ctx, payment_id, ask.0, &ask.1).await? {
                RefundOutcome::Refunded | RefundOutcome::NothingLeft => return Ok(()),
                RefundOutcome::OnlyLeft(left) if left.minor() <= 0 => return Ok(()),
                RefundOutcome::OnlyLeft(left) => {
                    ask = (left, format!("{key}-rest-{}", left.minor()));
                }
            }
        }
        Err(PortError::Unavailable(
            "the refundable amount kept changing; retry".into(),
        ))
    }

    async fn release_stock(&self, order: &Order, correlation_id: &str) -> Result<(), PortError> {
        let ctx = CallContext::service(crate::NAME, correlation_id);
        self.stock.release(&ctx, &order.reservation_id()).await
    }

    /// Run saga steps until the order waits (retry scheduled) or settles.
    /// The caller holds the order's lease.
    pub async fn advance(&self, mut order: Order, correlation_id: &str) -> Order {
        // The reserve's `awaiting_payment`, made in memory: the charge's write
        // (whatever it is) stores it, one write fewer per order.
        let mut earlier = None;
        for _ in 0..8 {
            let started = Instant::now();
            let step = order.status;
            let result = match order.status {
                OrderStatus::Pending => self.step_reserve(&order, correlation_id).await,
                OrderStatus::AwaitingPayment => {
                    self.step_charge(&order, correlation_id, earlier.take())
                        .await
                }
                _ => return order,
            };
            metrics::histogram!("agora_saga_step_duration_seconds", "step" => step.as_str())
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(Next::Continue(next)) => order = next,
                Ok(Next::Reserved(next, t)) => {
                    order = next;
                    earlier = Some(t);
                }
                Ok(Next::Settled(settled)) => return settled,
                Err(Step::Retry(next)) => return *next,
                Err(Step::Failed(e)) => {
                    tracing::error!(order_id = %order.id, error = %e, "saga step failed; the recovery worker retries it");
                    return match self.store.get(order.id).await {
                        Ok(Some(o)) => o,
                        _ => order,
                    };
                }
            }
        }
        order
    }

    async fn step_reserve(&self, order: &Order, corr: &str) -> Result<Next, Step> {
        let ctx = CallContext::service(crate::NAME, corr);
        let lines: Vec<(Sku, u32)> = order
            .items
            .iter()
            .map(|l| (l.sku.clone(), l.quantity))
            .collect();
        match self
            .stock
            .reserve(
                &ctx,
                &order.reservation_id(),
                order.id,
                &lines,
                self.config.reservation_ttl,
            )
            .await
        {
            Ok(ReserveOutcome::Reserved) => {
                // Not stored on its own: the charge, which always follows, stores
                // it with its own write (a crash before that leaves the order
                // `pending`, and its recovery replays the reservation).
                let to = OrderStatus::AwaitingPayment;
                debug_assert!(order.status.can_become(to) && events::type_of(to).is_none());
                let now = self.now();
                let t = Transition {
                    from: Some(order.status),
                    to,
                    at: now,
                    actor: SYSTEM.to_owned(),
                    reason: None,
                    correlation_id: corr.to_owned(),
                };
                let mut next = order.clone();
                next.status = to;
                next.attempts = 0;
                next.next_attempt_at = Some(now);
                Ok(Next::Reserved(next, t))
            }
            Ok(ReserveOutcome::Ended) => {
                // A replay after the reservation ran out: it holds no stock, and
                // this order, still unpaid, will never be paid for in time.
                let reason = "the stock reservation ended before the order was paid".to_owned();
                self.reject(order, corr, reason).await
            }
            Ok(ReserveOutcome::Insufficient(skus)) => {
                let reason = format!("out of stock: {}", skus.join(", "));
                self.reject(order, corr, reason).await
            }
            Err(PortError::Refused(said)) => {
                tracing::warn!(order_id = %order.id, %said, "inventory refused the reservation");
                let reason = "stock could not be reserved".to_owned();
                self.reject(order, corr, reason).await
            }
            Err(e) if self.now() >= order.payment_deadline => {
                // The reservation may have been made even though the call failed.
                if let Err(re) = self.release_stock(order, corr).await {
                    return Err(Step::retry(
                        self.schedule_retry(order, &format!("releasing stock failed: {re}"))
                            .await,
                    ));
                }
                tracing::warn!(order_id = %order.id, error = %e, "no reservation by the deadline");
                let reason = "stock could not be reserved before the deadline".to_owned();
                self.reject(order, corr, reason).await
            }
            Err(e) => Err(Step::retry(
                self.schedule_retry(order, &e.to_string()).await,
            )),
        }
    }

    /// Settle the order `rejected` for `reason`; nothing is reserved.
    async fn reject(&self, order: &Order, corr: &str, reason: String) -> Result<Next, Step> {
        self.settle_failed(
            order,
            corr,
            OrderStatus::Rejected,
            Change::default(),
            reason,
        )
        .await
    }

    /// Settle the order in the failed status `to` for `reason`, storing what
    /// the step carried.
    async fn settle_failed(
        &self,
        order: &Order,
        corr: &str,
        to: OrderStatus,
        carried: Change,
        reason: String,
    ) -> Result<Next, Step> {
        let change = Change {
            failure_reason: Some(reason.clone()),
            ..carried
        };
        let settled = self
            .transition(order, to, SYSTEM, Some(&reason), corr, change)
            .await?;
        Ok(Next::Settled(settled))
    }

    async fn fail_payment(
        &self,
        order: &Order,
        corr: &str,
        carried: Change,
        reason: String,
    ) -> Result<Next, Step> {
        if let Err(e) = self.release_stock(order, corr).await {
            // Stock must not stay reserved for a failed order: retry the whole
            // step (the payment is found again by its key).
            let carried = Change {
                payment_id: None,
                ..carried
            };
            return Err(Step::retry(
                self.retry_with(order, &format!("releasing stock failed: {e}"), carried)
                    .await,
            ));
        }
        self.settle_failed(order, corr, OrderStatus::PaymentFailed, carried, reason)
            .await
    }

    /// Charge for the order; `earlier` is the reserve's transition when it
    /// was made in memory, stored by whichever write this step ends with.
    async fn step_charge(
        &self,
        order: &Order,
        corr: &str,
        earlier: Option<Transition>,
    ) -> Result<Next, Step> {
        let ctx = CallContext::service(crate::NAME, corr);
        // What every write of this step carries: the payment it took, if any.
        let carried = |payment_id: Option<PaymentRef>| Change {
            payment_id,
            earlier: earlier.clone(),
            ..Change::default()
        };
        if self.now() >= order.payment_deadline && order.payment_id.is_none() {
            // Past the deadline with no payment recorded: fail, unless a charge
            // took money before a crash kept it from being recorded; then the
            // charge below replays it (same key) and the money goes back.
            let taken = matches!(
                self.payments.find(&ctx, order.id).await,
                Ok(Some((_, PaymentState::Captured)))
            );
            if !taken {
                return self
                    .fail_payment(
                        order,
                        corr,
                        carried(None),
                        "the payment deadline passed".into(),
                    )
                    .await;
            }
        }
        let request = ChargeRequest {
            order_id: order.id,
            customer_id: CustomerRef::new(order.customer_id.clone()),
            amount: order.total,
            payment_method: order.payment_method.clone(),
            idempotency_key: order.charge_key(),
        };
        match self.payments.charge(&ctx, &request).await {
            Ok(ChargeOutcome::Succeeded { payment_id }) => {
                // Paid: the reservation must stop expiring before the order is
                // confirmed. The payment is recorded with whatever happens next
                // (confirmed, failed with a refund, or a retry), in that write;
                // a crash before it is caught by the replayed charge (same key).
                match self.stock.confirm(&ctx, &order.reservation_id()).await {
                    Ok(()) => {
                        let change = carried(Some(payment_id));
                        Ok(Next::Continue(
                            self.transition(
                                order,
                                OrderStatus::Confirmed,
                                SYSTEM,
                                None,
                                corr,
                                change,
                            )
                            .await?,
                        ))
                    }
                    Err(PortError::Refused(said)) => {
                        // The stock is gone (reservation expired): give the money back.
                        tracing::warn!(order_id = %order.id, %said, "inventory refused to confirm");
                        let refund = self
                            .refund_rest(&ctx, &payment_id, order.total, &order.refund_key())
                            .await;
                        if let Err(e) = refund {
                            return Err(Step::retry(
                                self.retry_with(
                                    order,
                                    &format!("refund failed: {e}"),
                                    carried(Some(payment_id)),
                                )
                                .await,
                            ));
                        }
                        self.fail_payment(
                            order,
                            corr,
                            carried(Some(payment_id)),
                            "the stock reservation ended before the payment".to_owned(),
                        )
                        .await
                    }
                    Err(e) => Err(Step::retry(
                        self.retry_with(
                            order,
                            &format!("confirming stock failed: {e}"),
                            carried(Some(payment_id)),
                        )
                        .await,
                    )),
                }
            }
            Ok(ChargeOutcome::Declined { payment_id, code }) => {
                self.fail_payment(
                    order,
                    corr,
                    carried(Some(payment_id)),
                    format!("payment declined: {code}"),
                )
                .await
            }
            Err(PortError::Refused(said)) => {
                tracing::warn!(order_id = %order.id, %said, "payment refused the charge");
                self.fail_payment(order, corr, carried(None), "payment refused".to_owned())
                    .await
            }
            Err(e) if self.now() >= order.payment_deadline => {
                // Never fail an order whose charge may still land: only an
                // order with no started, or a settled, payment fails here.
                match self.payments.find(&ctx, order.id).await {
                    Ok(None | Some((_, PaymentState::Settled))) => {
                        self.fail_payment(
                            order,
                            corr,
                            carried(None),
                            "the payment deadline passed".to_owned(),
                        )
                        .await
                    }
                    _ => Err(Step::retry(
                        self.retry_with(
                            order,
                            &format!("past the deadline with a charge in flight: {e}"),
                            carried(None),
                        )
                        .await,
                    )),
                }
            }
            Err(e) => Err(Step::retry(
                self.retry_with(order, &e.to_string(), carried(None)).await,
            )),
        }
    }

    /// Resume an order the recovery worker leased.
    pub async fn resume(&self, id: OrderId) {
        let order = match self.store.get(id).await {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(order_id = %id, error = %e, "failed to load an order to resume");
                return;
            }
        };
        if order.status.in_flight() {
            let corr = if order.correlation_id.is_empty() {
                format!("recovery-{id}")
            } else {
                order.correlation_id.clone()
            };
            let order = self.renewing(id, self.advance(order, &corr)).await;
            if !order.status.in_flight() {
                return;
            }
        }
        self.release(id).await;
    }

    /// One pass of the recovery worker; returns how many orders it resumed.
    ///
    /// # Errors
    /// Store failures.
    pub async fn recover_due(&self, limit: u32) -> Result<usize, OrderError> {
        let ids = self
            .store
            .claim_due(self.now(), &self.lease(), limit)
            .await?;
        // Resume them side by side: each may wait on a slow provider.
        futures_util::stream::iter(ids.iter().copied())
            .for_each_concurrent(RECOVERY_CONCURRENCY, |id| self.resume(id))
            .await;
        if let Ok(awaiting) = self
            .store
            .count_in_status(OrderStatus::AwaitingPayment)
            .await
        {
            metrics::gauge!("agora_orders_awaiting_payment").set(awaiting as f64);
        }
        Ok(ids.len())
    }

    /// Read one order: the owner, staff or admin; anyone else gets `NotFound`.
    pub async fn get(&self, ctx: &CallContext, id: OrderId) -> Result<Order, OrderError> {
        let order = self.store.get(id).await?.ok_or(OrderError::NotFound)?;
        if Self::may_see(&ctx.principal, &order) {
            Ok(order)
        } else {
            Err(OrderError::NotFound)
        }
    }

    /// List orders: customers see their own, staff everyone's.
    pub async fn list(
        &self,
        ctx: &CallContext,
        mut filter: OrderFilter,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, OrderError> {
        if !ctx.principal.is_staff() {
            ctx.principal
                .require(&[Role::Customer, Role::Service])
                .map_err(|d| OrderError::Forbidden(d.to_string()))?;
            if !ctx.principal.has_any(&[Role::Service]) {
                filter.customer_id = Some(ctx.principal.subject.clone());
            }
        }
        Ok(self.store.list(&filter, before, limit).await?)
    }

    /// One page of [`OrderService::list`]: up to `limit` orders older than
    /// `before`, and where the next page starts when more follow.
    ///
    /// # Errors
    /// As [`OrderService::list`].
    pub async fn page(
        &self,
        ctx: &CallContext,
        filter: OrderFilter,
        before: Option<OrderId>,
        limit: u32,
    ) -> Result<OrderListPage, OrderError> {
        let items = self.list(ctx, filter, before, limit + 1).await?;
        let (items, next) = agora_kernel::pagination::cut(items, limit, |o| o.id);
        Ok(OrderListPage { items, next })
    }

    pub async fn history(
        &self,
        ctx: &CallContext,
        id: OrderId,
    ) -> Result<Vec<Transition>, OrderError> {
        self.get(ctx, id).await?;
        Ok(self.store.history(id).await?)
    }

    /// Hold the order's lease for `f`, waiting briefly while a saga step holds it.
    async fn with_lease<T, F, Fut>(&self, id: OrderId, f: F) -> Result<T, OrderError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, OrderError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.store.try_lease(id, self.now(), &self.lease()).await? {
                break;
            }
            if Instant::now() >= deadline {
                return Err(OrderError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let result = self.renewing(id, f()).await;
        self.release(id).await;
        result
    }

    /// Cancel before shipping (owner or staff): stock released, payment refunded
    /// in full. Cancelling a cancelled order returns it unchanged.
    #[tracing::instrument(skip_all, fields(order_id = %id))]
    pub async fn cancel(
        &self,
        ctx: &CallContext,
        id: OrderId,
        reason: Option<String>,
    ) -> Result<Order, OrderError> {
        let order = self.get(ctx, id).await?;
        if !needs_cancelling(&order)? {
            return Ok(order);
        }
        self.with_lease(id, || async {
            let order = self.store.get(id).await?.ok_or(OrderError::NotFound)?;
            if !needs_cancelling(&order)? {
                return Ok(order);
            }
            let svc = CallContext::service(crate::NAME, &ctx.correlation_id);
            // Compensate first (every call is idempotent); a failure leaves the
            // order as it was, so the client can simply retry. Money first:
            // the provider is what most likely fails, and stock released for
            // an order that stays confirmed could be sold twice.
            let unavailable = |what: &str, e: PortError| match e {
                PortError::Unexpected(e) => OrderError::Unexpected(e),
                other => {
                    tracing::warn!(order_id = %order.id, error = %other, "cancelling: {what}");
                    OrderError::Unavailable(format!("{what}; retry shortly"))
                }
            };
            let payment = match &order.payment_id {
                Some(id) => Some((id.clone(), PaymentState::Captured)),
                None => self
                    .payments
                    .find(&svc, order.id)
                    .await
                    .map_err(|e| unavailable("the payment could not be looked up", e))?,
            };
            match payment {
                Some((_, PaymentState::Pending)) => {
                    return Err(OrderError::Unavailable(
                        "a charge of this order is still in progress; retry shortly".into(),
                    ));
                }
                Some((payment_id, PaymentState::Captured)) => {
                    self.refund_rest(&svc, &payment_id, order.total, &order.refund_key())
                        .await
                        .map_err(|e| unavailable("the payment could not be refunded", e))?;
                }
                Some((_, PaymentState::Settled)) | None => {}
            }
            self.stock
                .release(&svc, &order.reservation_id())
                .await
                .map_err(|e| unavailable("stock could not be released", e))?;
            let reason = reason
                .clone()
                .unwrap_or_else(|| format!("cancelled by {}", ctx.principal.subject));
            let change = Change {
                failure_reason: None,
                ..Change::default()
            };
            self.transition(
                &order,
                OrderStatus::Cancelled,
                &ctx.principal.subject,
                Some(&reason),
                &ctx.correlation_id,
                change,
            )
            .await
        })
        .await
    }

    /// Staff move a confirmed order to `shipped` (the reservation is committed)
    /// and a shipped one to `delivered`.
    pub async fn advance_fulfilment(
        &self,
        ctx: &CallContext,
        id: OrderId,
        to: OrderStatus,
    ) -> Result<Order, OrderError> {
        ctx.principal
            .require(&[Role::Staff])
            .map_err(|d| OrderError::Forbidden(d.to_string()))?;
        self.store.get(id).await?.ok_or(OrderError::NotFound)?;
        self.with_lease(id, || async {
            let order = self.store.get(id).await?.ok_or(OrderError::NotFound)?;
            if !order.status.can_become(to) {
                return Err(OrderError::IllegalTransition {
                    from: order.status,
                    to,
                });
            }
            if to == OrderStatus::Shipped {
                let svc = CallContext::service(crate::NAME, &ctx.correlation_id);
                self.stock
                    .commit(&svc, &order.reservation_id())
                    .await
                    .map_err(|e| match e {
                        PortError::Unexpected(e) => OrderError::Unexpected(e),
                        other => OrderError::Unavailable(format!(
                            "the stock reservation could not be committed: {other}"
                        )),
                    })?;
            }
            self.transition(
                &order,
                to,
                &ctx.principal.subject,
                None,
                &ctx.correlation_id,
                Change::default(),
            )
            .await
        })
        .await
    }

    /// The owner changes the shipping address before shipping, at `expected_version`.
    pub async fn update_address(
        &self,
        ctx: &CallContext,
        id: OrderId,
        expected_version: i64,
        address: ShippingAddress,
    ) -> Result<Order, OrderError> {
        let order = self.get(ctx, id).await?;
        if order.customer_id != ctx.principal.subject && !ctx.principal.is_staff() {
            return Err(OrderError::NotFound);
        }
        if order.version != expected_version {
            return Err(OrderError::VersionMismatch {
                expected: expected_version,
                current: order.version,
            });
        }
        if !matches!(
            order.status,
            OrderStatus::Pending | OrderStatus::AwaitingPayment | OrderStatus::Confirmed
        ) {
            return Err(OrderError::IllegalTransition {
                from: order.status,
                to: order.status,
            });
        }
        let change = Change {
            shipping_address: Some(address),
            ..Change::default()
        };
        match self.store.apply(&order, &change).await {
            Ok(o) => Ok(o),
            Err(StoreError::Conflict) => {
                let current = self
                    .store
                    .get(id)
                    .await?
                    .map(|o| o.version)
                    .unwrap_or(expected_version);
                Err(OrderError::VersionMismatch {
                    expected: expected_version,
                    current,
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A step that moved the order: on to the next step, or settled for now.
enum Next {
    Continue(Order),
    /// Stock reserved: the order as it is in memory, `awaiting_payment`, and
    /// the transition that the charge's write stores.
    Reserved(Order, Transition),
    Settled(Order),
}

/// How a saga step ended when it did not move the order on.
enum Step {
    /// Waiting for a retry at `next_attempt_at`.
    Retry(Box<Order>),
    Failed(OrderError),
}

impl Step {
    fn retry(order: Order) -> Self {
        Step::Retry(Box::new(order))
    }
}

impl From<OrderError> for Step {
    fn from(e: OrderError) -> Self {
        Step::Failed(e)
    }
}
