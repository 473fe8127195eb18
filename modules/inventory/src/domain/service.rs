//! The inventory service: role rules, clock and defaults in front of the store.
//! It is also the module's `api` handle ([`InventoryService`]), so HTTP callers and
//! in-process callers (the order module's adapter) meet the same rules.

use std::sync::Arc;

use agora_kernel::pagination::Page;
use agora_kernel::{CallContext, Role};
use uuid::Uuid;

use super::models::{
    Adjustment, ChangeMeta, Movement, NewProduct, NewReservation, NewWarehouse, Product,
    ProductPatch, Receipt, ReleaseReason, Reservation, ReservationId, Sku, StockSummary, Ttl,
    Warehouse, WarehouseCode, decode_cursor, encode_cursor,
};
use super::ports::{
    CatalogueError, Clock, InventoryStore, ReadError, ReservationError, ReservationStep,
    ReserveError, ReserveOutcome, StockError, Transition, WarehouseError,
};

/// Who may change the catalogue, warehouses and stock.
const STAFF: &[Role] = &[Role::Staff];
/// Who may reserve, confirm, commit and release.
const RESERVERS: &[Role] = &[Role::Service];
/// Who may read reservations and the movement audit trail.
const RESERVATION_READERS: &[Role] = &[Role::Service, Role::Staff];
const AUDITORS: &[Role] = &[Role::Staff];

fn deny(ctx: &CallContext, roles: &[Role]) -> Option<String> {
    ctx.principal.require(roles).err().map(|d| d.to_string())
}

struct Inner {
    store: Arc<dyn InventoryStore>,
    clock: Arc<dyn Clock>,
    default_ttl: Ttl,
}

/// The inventory module's operations. Cheap to clone.
///
/// Customers read products and stock; staff (and admin) change the catalogue,
/// warehouses and stock; service (and admin) reserve.
#[derive(Clone)]
pub struct InventoryService {
    inner: Arc<Inner>,
}

impl InventoryService {
    pub fn new(store: Arc<dyn InventoryStore>, clock: Arc<dyn Clock>, default_ttl: Ttl) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                default_ttl,
            }),
        }
    }

    /// `sqlite` or `mongodb`.
    pub fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    pub(crate) fn store(&self) -> &Arc<dyn InventoryStore> {
        &self.inner.store
    }

    fn meta(&self, ctx: &CallContext) -> ChangeMeta {
        ChangeMeta {
            actor: ctx.principal.subject.clone(),
            correlation_id: ctx.correlation_id.clone(),
            at: self.inner.clock.now(),
        }
    }

    // ---- catalogue ----------------------------------------------------------------

    /// # Errors
    /// [`CatalogueError::Forbidden`] unless staff; [`CatalogueError::DuplicateSku`].
    /// Whether the caller may change the catalogue (staff). Handlers ask
    /// before they validate a body, so that a caller who may not learns
    /// nothing from validation; every catalogue change asks again.
    ///
    /// # Errors
    /// [`CatalogueError::Forbidden`].
    pub fn authorize_catalogue(&self, ctx: &CallContext) -> Result<(), CatalogueError> {
        deny(ctx, STAFF).map_or(Ok(()), |why| Err(CatalogueError::Forbidden(why)))
    }

    /// Whether the caller may add warehouses (staff); as [`Self::authorize_catalogue`].
    ///
    /// # Errors
    /// [`WarehouseError::Forbidden`].
    pub fn authorize_warehouses(&self, ctx: &CallContext) -> Result<(), WarehouseError> {
        deny(ctx, STAFF).map_or(Ok(()), |why| Err(WarehouseError::Forbidden(why)))
    }

    /// Whether the caller may receive or adjust stock (staff); as
    /// [`Self::authorize_catalogue`].
    ///
    /// # Errors
    /// [`StockError::Forbidden`].
    pub fn authorize_stock(&self, ctx: &CallContext) -> Result<(), StockError> {
        deny(ctx, STAFF).map_or(Ok(()), |why| Err(StockError::Forbidden(why)))
    }

    /// Whether the caller may reserve stock (a service); as
    /// [`Self::authorize_catalogue`].
    ///
    /// # Errors
    /// [`ReserveError::Forbidden`].
    pub fn authorize_reserve(&self, ctx: &CallContext) -> Result<(), ReserveError> {
        deny(ctx, RESERVERS).map_or(Ok(()), |why| Err(ReserveError::Forbidden(why)))
    }

    #[tracing::instrument(skip_all, fields(sku = %p.sku))]
    pub async fn create_product(
        &self,
        ctx: &CallContext,
        p: NewProduct,
    ) -> Result<Product, CatalogueError> {
        self.authorize_catalogue(ctx)?;
        self.inner
            .store
            .create_product(&p, self.inner.clock.now())
            .await
    }

    /// A product; inactive ones only for staff.
    ///
    /// # Errors
    /// [`ReadError::NotFound`].
    #[tracing::instrument(skip_all, fields(sku = sku.as_str()))]
    pub async fn product(&self, ctx: &CallContext, sku: &Sku) -> Result<Product, ReadError> {
        match self.inner.store.product(sku).await? {
            Some(p) if p.active || ctx.principal.is_staff() => Ok(p),
            _ => Err(ReadError::NotFound(format!("no product with sku {sku}"))),
        }
    }

    /// The products of these skus, in their order (a price quote); unknown
    /// ones are left out, and so are inactive ones unless the caller is staff
    /// or a service (an order needs to say "not for sale").
    ///
    /// # Errors
    /// Store failures.
    #[tracing::instrument(skip_all, fields(skus = skus.len()))]
    pub async fn quote(&self, ctx: &CallContext, skus: &[Sku]) -> Result<Vec<Product>, ReadError> {
        let mut found = Vec::with_capacity(skus.len());
        for sku in skus {
            match self.inner.store.product(sku).await? {
                Some(p)
                    if p.active
                        || ctx.principal.is_staff()
                        || ctx.principal.has_any(&[Role::Service]) =>
                {
                    found.push(p)
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// Products by sku; inactive ones only for staff.
    ///
    /// # Errors
    /// [`ReadError::BadCursor`].
    #[tracing::instrument(skip_all)]
    pub async fn products(
        &self,
        ctx: &CallContext,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Product>, ReadError> {
        let after = parse_cursor(cursor, |s| Sku::parse(s).ok())?;
        let items = self
            .inner
            .store
            .products(after.as_ref(), limit + 1, ctx.principal.is_staff())
            .await?;
        Ok(page(items, limit, |p| encode_cursor(p.sku.as_str())))
    }

    /// # Errors
    /// [`CatalogueError::Forbidden`] unless staff; [`CatalogueError::NotFound`].
    #[tracing::instrument(skip_all, fields(sku = %sku))]
    pub async fn update_product(
        &self,
        ctx: &CallContext,
        sku: &Sku,
        patch: ProductPatch,
    ) -> Result<Product, CatalogueError> {
        self.authorize_catalogue(ctx)?;
        self.inner
            .store
            .update_product(sku, &patch, self.inner.clock.now())
            .await
    }

    /// Soft delete: the product stays, `active = false`; it can no longer be reserved.
    ///
    /// # Errors
    /// [`CatalogueError::Forbidden`] unless staff; [`CatalogueError::NotFound`].
    #[tracing::instrument(skip_all, fields(sku = %sku))]
    pub async fn deactivate_product(
        &self,
        ctx: &CallContext,
        sku: &Sku,
    ) -> Result<Product, CatalogueError> {
        self.authorize_catalogue(ctx)?;
        self.inner
            .store
            .update_product(sku, &ProductPatch::deactivate(), self.inner.clock.now())
            .await
    }

    // ---- warehouses -----------------------------------------------------------------

    /// # Errors
    /// [`WarehouseError::Forbidden`] unless staff; [`WarehouseError::Duplicate`].
    #[tracing::instrument(skip_all, fields(code = %w.code))]
    pub async fn create_warehouse(
        &self,
        ctx: &CallContext,
        w: NewWarehouse,
    ) -> Result<Warehouse, WarehouseError> {
        self.authorize_warehouses(ctx)?;
        self.inner
            .store
            .create_warehouse(&w, self.inner.clock.now())
            .await
    }

    /// Warehouses by code.
    ///
    /// # Errors
    /// Store failures.
    #[tracing::instrument(skip_all)]
    pub async fn warehouses(
        &self,
        _ctx: &CallContext,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Warehouse>, ReadError> {
        let after = parse_cursor(cursor, |s| WarehouseCode::parse(s).ok())?;
        let items = self
            .inner
            .store
            .warehouses(after.as_ref(), limit + 1)
            .await?;
        Ok(page(items, limit, |w| encode_cursor(w.code.as_str())))
    }

    // ---- stock -------------------------------------------------------------------------

    /// # Errors
    /// [`StockError::Forbidden`] unless staff; unknown sku or warehouse.
    #[tracing::instrument(skip_all, fields(sku = %r.sku, warehouse = %r.warehouse))]
    pub async fn receive(&self, ctx: &CallContext, r: Receipt) -> Result<Movement, StockError> {
        self.authorize_stock(ctx)?;
        self.inner.store.receive(&r, &self.meta(ctx)).await
    }

    /// # Errors
    /// [`StockError::Forbidden`] unless staff; unknown sku or warehouse;
    /// [`StockError::WouldUnderflow`].
    #[tracing::instrument(skip_all, fields(sku = %a.sku, warehouse = %a.warehouse))]
    pub async fn adjust(&self, ctx: &CallContext, a: Adjustment) -> Result<Movement, StockError> {
        self.authorize_stock(ctx)?;
        self.inner.store.adjust(&a, &self.meta(ctx)).await
    }

    /// Stock of a sku, per warehouse. Any authenticated caller.
    ///
    /// # Errors
    /// [`ReadError::NotFound`] for an unknown sku.
    #[tracing::instrument(skip_all, fields(sku = %sku))]
    pub async fn stock(&self, ctx: &CallContext, sku: &Sku) -> Result<StockSummary, ReadError> {
        // The product itself decides visibility (inactive ones only for staff).
        self.product(ctx, sku).await?;
        self.inner
            .store
            .stock(sku)
            .await?
            .ok_or_else(|| ReadError::NotFound(format!("no product with sku {sku}")))
    }

    /// The audit trail of a sku, newest first. Staff only.
    ///
    /// # Errors
    /// [`ReadError::Forbidden`]; [`ReadError::NotFound`] for an unknown sku.
    #[tracing::instrument(skip_all, fields(sku = %sku))]
    pub async fn movements(
        &self,
        ctx: &CallContext,
        sku: &Sku,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Movement>, ReadError> {
        if let Some(why) = deny(ctx, AUDITORS) {
            return Err(ReadError::Forbidden(why));
        }
        let before = parse_cursor(cursor, |s| Uuid::parse_str(s).ok())?;
        if self.inner.store.product(sku).await?.is_none() {
            return Err(ReadError::NotFound(format!("no product with sku {sku}")));
        }
        let items = self.inner.store.movements(sku, before, limit + 1).await?;
        Ok(page(items, limit, |m| encode_cursor(&m.id.to_string())))
    }

    // ---- reservations ------------------------------------------------------------------

    /// Reserve every line or none; idempotent on the reservation id.
    ///
    /// # Errors
    /// [`ReserveError::Forbidden`] unless service; see [`InventoryStore::reserve`].
    #[tracing::instrument(skip_all, fields(reservation_id = %r.id, order_id = r.order_id.as_str()))]
    pub async fn reserve(
        &self,
        ctx: &CallContext,
        r: NewReservation,
    ) -> Result<ReserveOutcome, ReserveError> {
        self.authorize_reserve(ctx)?;
        NewReservation::check_lines(&r.lines).map_err(|e| ReserveError::InvalidLines(e.0))?;
        let meta = self.meta(ctx);
        let ttl = r.ttl.unwrap_or(self.inner.default_ttl);
        let expires_at = meta.at + ttl.as_chrono();
        self.inner.store.reserve(&r, expires_at, &meta).await
    }

    /// # Errors
    /// [`ReadError::Forbidden`] unless service or staff; [`ReadError::NotFound`].
    #[tracing::instrument(skip_all, fields(reservation_id = %id))]
    pub async fn reservation(
        &self,
        ctx: &CallContext,
        id: ReservationId,
    ) -> Result<Reservation, ReadError> {
        if let Some(why) = deny(ctx, RESERVATION_READERS) {
            return Err(ReadError::Forbidden(why));
        }
        self.inner
            .store
            .reservation(id)
            .await?
            .ok_or_else(|| ReadError::NotFound(format!("no reservation {id}")))
    }

    /// Take `step` on a reservation (see [`ReservationStep`]); a step already
    /// taken answers the reservation as it stands (idempotent).
    ///
    /// # Errors
    /// [`ReservationError::Forbidden`] unless service; see [`Transition::check`].
    #[tracing::instrument(skip_all, fields(reservation_id = %id, transition = ?Transition::from(step)))]
    pub async fn transition(
        &self,
        ctx: &CallContext,
        id: ReservationId,
        step: ReservationStep,
    ) -> Result<Reservation, ReservationError> {
        if let Some(why) = deny(ctx, RESERVERS) {
            return Err(ReservationError::Forbidden(why));
        }
        self.inner
            .store
            .transition(id, step.into(), &self.meta(ctx))
            .await
    }

    /// Release up to `limit` held reservations whose TTL ran out; how many were released.
    ///
    /// # Errors
    /// Store failures while listing (a reservation that changed meanwhile is skipped).
    #[tracing::instrument(skip_all)]
    pub async fn sweep_expired(&self, limit: u32) -> anyhow::Result<usize> {
        let ctx = CallContext::service("inventory-sweeper", format!("sweep-{}", Uuid::now_v7()));
        let now = self.inner.clock.now();
        let ids = self.inner.store.expired(now, limit).await?;
        let mut released = 0;
        for id in ids {
            let meta = ChangeMeta {
                actor: ctx.principal.subject.clone(),
                correlation_id: ctx.correlation_id.clone(),
                at: now,
            };
            match self
                .inner
                .store
                .transition(id, Transition::Release(ReleaseReason::Expired), &meta)
                .await
            {
                Ok(_) => released += 1,
                Err(ReservationError::Unexpected(e)) => {
                    tracing::warn!(reservation_id = %id, error = %format!("{e:#}"), "failed to release an expired reservation");
                }
                Err(other) => {
                    tracing::debug!(reservation_id = %id, reason = %other, "reservation changed before it could expire")
                }
            }
        }
        Ok(released)
    }
}

/// The key of the item a page `cursor` (if any) continues after, read by
/// `parse`; [`ReadError::BadCursor`] for one this collection did not hand out.
fn parse_cursor<K>(
    cursor: Option<&str>,
    parse: impl FnOnce(&str) -> Option<K>,
) -> Result<Option<K>, ReadError> {
    cursor
        .map(|c| {
            decode_cursor(c)
                .and_then(|key| parse(&key))
                .ok_or(ReadError::BadCursor)
        })
        .transpose()
}

/// Cut a `limit + 1` fetch down to a page with a cursor after its last item.
fn page<T>(items: Vec<T>, limit: u32, key: impl FnOnce(&T) -> String) -> Page<T> {
    let (items, next_cursor) = agora_kernel::pagination::cut(items, limit, key);
    Page { items, next_cursor }
}
