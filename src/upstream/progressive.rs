//! Progressive extraction: a module this process hosts, canaried to remote
//! instances of it. The rollout's weight moves calls from the module in this
//! process to the remote pool — module-to-module calls through [`Routed`]
//! (the order module's adapters call it instead of the services directly),
//! forwarded `/api/v1` requests through [`divert`]. A promotion leaves the
//! module served remotely; a rollback returns it here. Keys are the ones the
//! HTTP clients use as call affinity (the order id; the payment id for
//! refunds), so a call and the remote client's own choice agree.

use std::sync::Arc;

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use agora_inventory::domain::models as inv;
use agora_inventory::domain::ports::{ReadError, ReservationError, ReserveError};
use agora_inventory::{InventoryApi, Quote, ReservationState, ReservationStep};
use agora_kernel::CallContext;
use agora_payment::domain::models as pay;
use agora_payment::domain::service::{ChargeError, GetPaymentError, RefundError};
use agora_payment::{PaymentApi, PaymentSummary, RefundSummary};
use async_trait::async_trait;

use super::Upstreams;
use super::rollout::{Route, Target};
use crate::gateway::auth::Forwarded;
use crate::gateway::observe::RouteModules;

fn remote(route: &Route, key: Option<&str>) -> bool {
    matches!(route.pick(key).1, Target::Remote(_))
}

/// A module's `api` in this process, or — for the rollout's share — remote
/// (`Routed<dyn InventoryApi>`, `Routed<dyn PaymentApi>`).
pub struct Routed<A: ?Sized> {
    pub local: Arc<A>,
    pub remote: Arc<A>,
    pub route: Arc<Route>,
}

impl<A: ?Sized> Routed<A> {
    fn by(&self, key: Option<&str>) -> &A {
        if remote(&self.route, key) {
            self.remote.as_ref()
        } else {
            self.local.as_ref()
        }
    }
}

#[async_trait]
impl InventoryApi for Routed<dyn InventoryApi> {
    async fn quote(&self, ctx: &CallContext, skus: &[inv::Sku]) -> Result<Vec<Quote>, ReadError> {
        self.by(None).quote(ctx, skus).await
    }

    async fn reserve(
        &self,
        ctx: &CallContext,
        r: inv::NewReservation,
    ) -> Result<ReservationState, ReserveError> {
        let key = r.order_id.as_str().to_owned();
        self.by(Some(&key)).reserve(ctx, r).await
    }

    async fn transition(
        &self,
        ctx: &CallContext,
        id: inv::ReservationId,
        step: ReservationStep,
    ) -> Result<ReservationState, ReservationError> {
        self.by(Some(&id.0.to_string()))
            .transition(ctx, id, step)
            .await
    }
}

#[async_trait]
impl PaymentApi for Routed<dyn PaymentApi> {
    async fn find_by_order(
        &self,
        ctx: &CallContext,
        order_id: pay::OrderId,
    ) -> Result<PaymentSummary, GetPaymentError> {
        self.by(Some(&order_id.0.to_string()))
            .find_by_order(ctx, order_id)
            .await
    }

    async fn charge(
        &self,
        ctx: &CallContext,
        request: pay::ChargeRequest,
        idempotency_key: &str,
    ) -> Result<PaymentSummary, ChargeError> {
        self.by(Some(&request.order_id.0.to_string()))
            .charge(ctx, request, idempotency_key)
            .await
    }

    async fn refund(
        &self,
        ctx: &CallContext,
        request: pay::RefundRequest,
    ) -> Result<RefundSummary, RefundError> {
        self.by(Some(&request.payment_id.0.to_string()))
            .refund(ctx, request)
            .await
    }
}

/// Middleware on `/api/v1`: a request for a module this process hosts goes
/// to its remote instances instead when the module's route says so for the
/// caller (a canary to remote instances, or one promoted). A request another
/// process forwarded here is always served here.
pub async fn divert(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let route = match (
        req.app_data::<web::Data<Upstreams>>(),
        req.app_data::<web::Data<RouteModules>>(),
    ) {
        (Some(up), Some(modules)) if !req.extensions().contains::<Forwarded>() => {
            let path = req.path().strip_prefix("/api/v1").unwrap_or("");
            let module = modules.module_of(path);
            up.route(module)
                .filter(|r| !r.pools().is_empty())
                .map(|r| (up.clone(), r.clone(), r.module))
        }
        _ => None,
    };
    let Some((up, route, module)) = route else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let key = super::sticky_key(req.request());
    if !matches!(route.pick(Some(&key)).1, Target::Remote(_)) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let (http, payload) = req.into_parts();
    let res = up.forward(module, http.clone(), payload).await;
    Ok(ServiceResponse::new(http, res))
}
