//! [`RemoteInventory`]: the [`InventoryApi`] of an inventory module in another
//! process — a client of this module's own REST API (`/api/v1/products`,
//! `/api/v1/reservations`), sent through the host's [`Transport`]. Every
//! answer the REST API documents maps back to the result the in-process
//! service gives.

use std::sync::Arc;

use agora_kernel::remote::{RemoteRequest, RemoteResponse, Transport};
use agora_kernel::{CallContext, Currency, Money};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::api::{InventoryApi, Quote, ReservationState};
use crate::domain::models::{NewReservation, ReservationId, ReservationStatus, Shortage, Sku};
use crate::domain::ports::{ReadError, ReservationError, ReservationStep, ReserveError};

/// The inventory module over HTTP.
pub struct RemoteInventory {
    transport: Arc<dyn Transport>,
}

impl RemoteInventory {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self { transport }
    }
}

#[derive(Deserialize)]
struct ProductView {
    sku: String,
    price_minor: i64,
    currency: String,
    active: bool,
}

#[derive(Deserialize)]
struct ProductPage {
    items: Vec<ProductView>,
}

#[derive(Deserialize)]
struct ReservationView {
    reservation_id: uuid::Uuid,
    status: String,
}

#[derive(Deserialize)]
struct ShortageView {
    line: usize,
    sku: String,
    requested: i64,
    available: i64,
}

/// What an answer the API does not document for this call means.
fn unexpected(what: &str, r: &RemoteResponse) -> anyhow::Error {
    r.unexpected("inventory", what)
}

fn state(r: &RemoteResponse, created: bool) -> anyhow::Result<ReservationState> {
    let v: ReservationView = r.json()?;
    Ok(ReservationState {
        id: ReservationId(v.reservation_id),
        status: ReservationStatus::parse(&v.status)
            .ok_or_else(|| anyhow::anyhow!("unknown reservation status `{}`", v.status))?,
        created,
    })
}

#[async_trait]
impl InventoryApi for RemoteInventory {
    async fn quote(&self, ctx: &CallContext, skus: &[Sku]) -> Result<Vec<Quote>, ReadError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let request = RemoteRequest::get(format!("/products?skus={}", list.join(",")));
        let r = self.transport.call(ctx, request).await?;
        if !r.is_success() {
            return Err(ReadError::Unexpected(unexpected("a quote", &r)));
        }
        let page: ProductPage = r.json()?;
        page.items
            .into_iter()
            .map(|p| {
                Ok(Quote {
                    sku: Sku::parse(&p.sku).map_err(|e| anyhow::anyhow!("{e}"))?,
                    price: Money::new(
                        p.price_minor,
                        Currency::parse(&p.currency).map_err(|e| anyhow::anyhow!("{e}"))?,
                    ),
                    active: p.active,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(ReadError::Unexpected)
    }

    async fn reserve(
        &self,
        ctx: &CallContext,
        r: NewReservation,
    ) -> Result<ReservationState, ReserveError> {
        let lines: Vec<_> = r
            .lines
            .iter()
            .map(|l| json!({"sku": l.sku.as_str(), "quantity": l.quantity.get()}))
            .collect();
        let body = json!({
            "reservation_id": r.id.0,
            "order_id": r.order_id.as_str(),
            "lines": lines,
            "ttl_secs": r.ttl.map(|t| t.secs()),
        });
        let request =
            RemoteRequest::post("/reservations", body).affinity(r.order_id.as_str().to_owned());
        let res = self.transport.call(ctx, request).await?;
        if res.is_success() {
            return state(&res, res.status == 201).map_err(ReserveError::Unexpected);
        }
        let problem = res.problem();
        match (res.status, res.problem_type().as_deref()) {
            (403, _) => Err(ReserveError::Forbidden(
                problem.map(|p| p.detail).unwrap_or_default(),
            )),
            (409, Some("insufficient-stock")) => {
                let views: Vec<ShortageView> = problem
                    .and_then(|p| p.extensions.get("shortages").cloned())
                    .and_then(|v| serde_json::from_value(v).ok())
                    .ok_or_else(|| {
                        ReserveError::Unexpected(unexpected("a reservation (no shortages)", &res))
                    })?;
                let short = views
                    .into_iter()
                    .map(|s| {
                        Ok(Shortage {
                            line: s.line,
                            sku: Sku::parse(&s.sku).map_err(|e| anyhow::anyhow!("{e}"))?,
                            requested: s.requested,
                            available: s.available,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
                    .map_err(ReserveError::Unexpected)?;
                Err(ReserveError::Insufficient(short))
            }
            (409, _) => Err(ReserveError::IdConflict(r.id)),
            (422, _) => {
                // Unknown or inactive skus name their line (`lines[i].sku`).
                let unknown: Vec<(usize, Sku)> = problem
                    .iter()
                    .flat_map(|p| p.errors.keys())
                    .filter_map(|k| {
                        let i: usize = k
                            .strip_prefix("lines[")?
                            .strip_suffix("].sku")?
                            .parse()
                            .ok()?;
                        Some((i, r.lines.get(i)?.sku.clone()))
                    })
                    .collect();
                if unknown.is_empty() {
                    Err(ReserveError::InvalidLines(
                        res.problem().map(|p| p.detail).unwrap_or_default(),
                    ))
                } else {
                    Err(ReserveError::UnknownProducts(unknown))
                }
            }
            _ => Err(ReserveError::Unexpected(unexpected("a reservation", &res))),
        }
    }

    async fn transition(
        &self,
        ctx: &CallContext,
        id: ReservationId,
        step: ReservationStep,
    ) -> Result<ReservationState, ReservationError> {
        let path = format!("/reservations/{}/{}", id.0, step.as_str());
        let request = RemoteRequest::post(path, json!({})).affinity(id.0.to_string());
        let r = self.transport.call(ctx, request).await?;
        if r.is_success() {
            return state(&r, false).map_err(ReservationError::Unexpected);
        }
        match (r.status, r.problem_type().as_deref()) {
            (403, _) => Err(ReservationError::Forbidden(
                r.problem().map(|p| p.detail).unwrap_or_default(),
            )),
            (404, _) => Err(ReservationError::NotFound(id)),
            (409, Some("reservation-expired")) => Err(ReservationError::Expired(id)),
            (409, _) => {
                let from = r
                    .problem()
                    .and_then(|p| {
                        p.extensions
                            .get("reservation_status")?
                            .as_str()
                            .and_then(ReservationStatus::parse)
                    })
                    .ok_or_else(|| {
                        ReservationError::Unexpected(unexpected(
                            "a transition (no reservation_status)",
                            &r,
                        ))
                    })?;
                Err(ReservationError::InvalidTransition {
                    id,
                    from: from.as_str(),
                    to: step.target().as_str(),
                })
            }
            _ => Err(ReservationError::Unexpected(unexpected("a transition", &r))),
        }
    }
}
