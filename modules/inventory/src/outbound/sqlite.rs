//! The SQLite store: the embedded default. Every write runs in one
//! `BEGIN IMMEDIATE` transaction (SQLite's single writer), so reading levels,
//! allocating and updating cannot interleave with another writer; the updates
//! keep an availability guard anyway and the table CHECKs are the last fence.

use agora_kernel::db::{epoch_ms, from_epoch_ms};
use agora_kernel::outbox::sqlite::enqueue;
use agora_kernel::{Currency, EventEnvelope, Money};
use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::domain::models::{
    Adjustment, ChangeMeta, Movement, MovementKind, NewProduct, NewReservation, NewWarehouse,
    OrderRef, Product, ProductPatch, Receipt, Reservation, ReservationId, ReservationStatus,
    ReservedLine, Shortage, Sku, StockLevel, StockSummary, Warehouse, WarehouseCode, allocate,
};
use crate::domain::ports::{
    CatalogueError, InventoryStore, ReservationError, ReserveError, ReserveOutcome, StockError,
    Transition, WarehouseError,
};
use crate::events;

/// The module's migrations (versions ≥ 100; the kernel's are below).
///
/// # Errors
/// Failed migration.
pub async fn migrate(pool: &SqlitePool) -> anyhow::Result<()> {
    let mut migrator = sqlx::migrate!("../../migrations/inventory/sqlite");
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .context("failed to migrate the inventory tables")
}

#[derive(Clone)]
pub struct SqliteStore {
    /// The writer (and reads inside write transactions).
    pool: SqlitePool,
    /// Catalogue, stock and reservation reads: read-only connections, so a
    /// product page does not queue behind the writer.
    read: SqlitePool,
}

impl SqliteStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            read: pool.clone(),
            pool,
        }
    }

    /// Serve reads from `read` (read-only connections to the same file).
    pub fn with_readers(mut self, read: SqlitePool) -> Self {
        self.read = read;
        self
    }

    async fn begin(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        // Dropping the transaction on any error path rolls it back.
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("failed to start a write transaction")
    }
}

async fn commit(tx: sqlx::Transaction<'static, sqlx::Sqlite>) -> anyhow::Result<()> {
    tx.commit().await.context("failed to commit")
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    sku: String,
    name: String,
    description: Option<String>,
    price_minor: i64,
    currency: String,
    active: bool,
    low_stock_threshold: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ProductRow> for Product {
    type Error = anyhow::Error;
    fn try_from(r: ProductRow) -> anyhow::Result<Self> {
        Ok(Product {
            sku: Sku::parse(&r.sku).context("a stored sku does not parse")?,
            name: r.name,
            description: r.description,
            price: Money::new(
                r.price_minor,
                Currency::parse(&r.currency).context("a stored currency does not parse")?,
            ),
            active: r.active,
            low_stock_threshold: r.low_stock_threshold,
            created_at: from_epoch_ms(r.created_at),
            updated_at: from_epoch_ms(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
struct WarehouseRow {
    code: String,
    name: String,
    created_at: i64,
}

impl TryFrom<WarehouseRow> for Warehouse {
    type Error = anyhow::Error;
    fn try_from(r: WarehouseRow) -> anyhow::Result<Self> {
        Ok(Warehouse {
            code: WarehouseCode::parse(&r.code)
                .context("a stored warehouse code does not parse")?,
            name: r.name,
            created_at: from_epoch_ms(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
struct LevelRow {
    warehouse: String,
    on_hand: i64,
    reserved: i64,
}

impl TryFrom<LevelRow> for StockLevel {
    type Error = anyhow::Error;
    fn try_from(r: LevelRow) -> anyhow::Result<Self> {
        Ok(StockLevel {
            warehouse: WarehouseCode::parse(&r.warehouse)
                .context("a stored warehouse code does not parse")?,
            on_hand: r.on_hand,
            reserved: r.reserved,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MovementRow {
    id: String,
    sku: String,
    warehouse: String,
    kind: String,
    quantity: i64,
    on_hand: i64,
    reserved: i64,
    actor: String,
    reason: Option<String>,
    reference: Option<String>,
    reservation_id: Option<String>,
    correlation_id: String,
    at: i64,
}

impl TryFrom<MovementRow> for Movement {
    type Error = anyhow::Error;
    fn try_from(r: MovementRow) -> anyhow::Result<Self> {
        Ok(Movement {
            id: Uuid::parse_str(&r.id).context("a stored movement id does not parse")?,
            sku: Sku::parse(&r.sku).context("a stored sku does not parse")?,
            warehouse: WarehouseCode::parse(&r.warehouse)
                .context("a stored warehouse code does not parse")?,
            kind: MovementKind::parse(&r.kind).context("a stored movement kind does not parse")?,
            quantity: r.quantity,
            on_hand: r.on_hand,
            reserved: r.reserved,
            actor: r.actor,
            reason: r.reason,
            reference: r.reference,
            reservation_id: r
                .reservation_id
                .map(|s| Uuid::parse_str(&s).map(ReservationId))
                .transpose()
                .context("a stored reservation id does not parse")?,
            correlation_id: r.correlation_id,
            at: from_epoch_ms(r.at),
        })
    }
}

#[derive(sqlx::FromRow)]
struct ReservationRow {
    id: String,
    order_id: String,
    status: String,
    lines: String,
    expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ReservationRow> for Reservation {
    type Error = anyhow::Error;
    fn try_from(r: ReservationRow) -> anyhow::Result<Self> {
        Ok(Reservation {
            id: ReservationId(
                Uuid::parse_str(&r.id).context("a stored reservation id does not parse")?,
            ),
            order_id: OrderRef::parse(&r.order_id).context("a stored order id does not parse")?,
            status: ReservationStatus::parse(&r.status)
                .context("a stored status does not parse")?,
            lines: serde_json::from_str(&r.lines)
                .context("stored reservation lines do not parse")?,
            expires_at: r.expires_at.map(from_epoch_ms),
            created_at: from_epoch_ms(r.created_at),
            updated_at: from_epoch_ms(r.updated_at),
        })
    }
}

const PRODUCT_COLUMNS: &str = "sku, name, description, price_minor, currency, active, low_stock_threshold, created_at, updated_at";
const MOVEMENT_COLUMNS: &str = "id, sku, warehouse, kind, quantity, on_hand, reserved, actor, reason, reference, reservation_id, correlation_id, at";
const RESERVATION_COLUMNS: &str = "id, order_id, status, lines, expires_at, created_at, updated_at";

async fn load_product(conn: &mut SqliteConnection, sku: &Sku) -> anyhow::Result<Option<Product>> {
    let row: Option<ProductRow> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = $1"
    ))
    .bind(sku.as_str())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to read a product")?;
    row.map(Product::try_from).transpose()
}

async fn warehouse_exists(
    conn: &mut SqliteConnection,
    code: &WarehouseCode,
) -> anyhow::Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM warehouses WHERE code = $1")
        .bind(code.as_str())
        .fetch_optional(&mut *conn)
        .await
        .context("failed to read a warehouse")?;
    Ok(row.is_some())
}

async fn levels(conn: &mut SqliteConnection, sku: &Sku) -> anyhow::Result<Vec<StockLevel>> {
    let rows: Vec<LevelRow> = sqlx::query_as(
        "SELECT warehouse, on_hand, reserved FROM stock_levels WHERE sku = $1 ORDER BY warehouse",
    )
    .bind(sku.as_str())
    .fetch_all(&mut *conn)
    .await
    .context("failed to read stock levels")?;
    rows.into_iter().map(StockLevel::try_from).collect()
}

async fn available(conn: &mut SqliteConnection, sku: &Sku) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(on_hand - reserved), 0) FROM stock_levels WHERE sku = $1",
    )
    .bind(sku.as_str())
    .fetch_one(&mut *conn)
    .await
    .context("failed to sum available stock")?;
    Ok(n)
}

async fn insert_movement(conn: &mut SqliteConnection, m: &Movement) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO stock_movements ({MOVEMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(m.id.to_string())
    .bind(m.sku.as_str())
    .bind(m.warehouse.as_str())
    .bind(m.kind.as_str())
    .bind(m.quantity)
    .bind(m.on_hand)
    .bind(m.reserved)
    .bind(&m.actor)
    .bind(m.reason.as_deref())
    .bind(m.reference.as_deref())
    .bind(m.reservation_id.map(|r| r.0.to_string()))
    .bind(&m.correlation_id)
    .bind(epoch_ms(m.at))
    .execute(&mut *conn)
    .await
    .context("failed to record a stock movement")?;
    Ok(())
}

/// Move `reserved` by `d_reserved` and `on_hand` by `d_on_hand` for one
/// (sku, warehouse), guarded so neither goes below zero nor reserved above
/// on hand; `None` when the guard refused.
async fn shift_level(
    conn: &mut SqliteConnection,
    sku: &Sku,
    warehouse: &WarehouseCode,
    d_on_hand: i64,
    d_reserved: i64,
) -> anyhow::Result<Option<StockLevel>> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE stock_levels SET on_hand = on_hand + $1, reserved = reserved + $2 \
         WHERE sku = $3 AND warehouse = $4 \
           AND on_hand + $1 >= 0 AND reserved + $2 >= 0 AND reserved + $2 <= on_hand + $1 \
         RETURNING on_hand, reserved",
    )
    .bind(d_on_hand)
    .bind(d_reserved)
    .bind(sku.as_str())
    .bind(warehouse.as_str())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to update a stock level")?;
    Ok(row.map(|(on_hand, reserved)| StockLevel {
        warehouse: warehouse.clone(),
        on_hand,
        reserved,
    }))
}

async fn load_reservation(
    conn: &mut SqliteConnection,
    id: ReservationId,
) -> anyhow::Result<Option<Reservation>> {
    let row: Option<ReservationRow> = sqlx::query_as(&format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE id = $1"
    ))
    .bind(id.0.to_string())
    .fetch_optional(&mut *conn)
    .await
    .context("failed to read a reservation")?;
    row.map(Reservation::try_from).transpose()
}

async fn emit(conn: &mut SqliteConnection, event: &EventEnvelope) -> anyhow::Result<()> {
    enqueue(conn, event).await
}

#[async_trait]
impl InventoryStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    #[tracing::instrument(skip_all, fields(sku = %p.sku))]
    async fn create_product(
        &self,
        p: &NewProduct,
        at: DateTime<Utc>,
    ) -> Result<Product, CatalogueError> {
        let product = Product {
            sku: p.sku.clone(),
            name: p.name.as_str().to_owned(),
            description: p.description.as_ref().map(|d| d.as_str().to_owned()),
            price: p.price,
            active: true,
            low_stock_threshold: p.low_stock_threshold.get(),
            created_at: at,
            updated_at: at,
        };
        let result = sqlx::query(&format!(
            "INSERT INTO products ({PRODUCT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(product.sku.as_str())
        .bind(&product.name)
        .bind(product.description.as_deref())
        .bind(product.price.minor())
        .bind(product.price.currency().code())
        .bind(product.active)
        .bind(product.low_stock_threshold)
        .bind(epoch_ms(at))
        .bind(epoch_ms(at))
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(product),
            Err(e) if is_unique_violation(&e) => Err(CatalogueError::DuplicateSku(p.sku.clone())),
            Err(e) => Err(anyhow::Error::new(e)
                .context("failed to insert a product")
                .into()),
        }
    }

    async fn product(&self, sku: &Sku) -> anyhow::Result<Option<Product>> {
        let mut conn = self
            .read
            .acquire()
            .await
            .context("failed to get a connection")?;
        load_product(&mut conn, sku).await
    }

    async fn products(
        &self,
        after: Option<&Sku>,
        limit: u32,
        include_inactive: bool,
    ) -> anyhow::Result<Vec<Product>> {
        let rows: Vec<ProductRow> = sqlx::query_as(&format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE sku > $1 AND (active OR $2) ORDER BY sku LIMIT $3"
        ))
        .bind(after.map_or("", Sku::as_str))
        .bind(include_inactive)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .context("failed to list products")?;
        rows.into_iter().map(Product::try_from).collect()
    }

    #[tracing::instrument(skip_all, fields(sku = %sku))]
    async fn update_product(
        &self,
        sku: &Sku,
        patch: &ProductPatch,
        deactivate: bool,
        at: DateTime<Utc>,
    ) -> Result<Product, CatalogueError> {
        let mut tx = self.begin().await?;
        let current = load_product(&mut tx, sku)
            .await?
            .ok_or_else(|| CatalogueError::NotFound(sku.clone()))?;
        let mut updated = patch.apply(current, at);
        if deactivate {
            updated.active = false;
        }
        sqlx::query(
            "UPDATE products SET name = $1, description = $2, price_minor = $3, currency = $4, \
             active = $5, low_stock_threshold = $6, updated_at = $7 WHERE sku = $8",
        )
        .bind(&updated.name)
        .bind(updated.description.as_deref())
        .bind(updated.price.minor())
        .bind(updated.price.currency().code())
        .bind(updated.active)
        .bind(updated.low_stock_threshold)
        .bind(epoch_ms(at))
        .bind(sku.as_str())
        .execute(&mut *tx)
        .await
        .context("failed to update a product")?;
        commit(tx).await?;
        Ok(updated)
    }

    #[tracing::instrument(skip_all, fields(code = %w.code))]
    async fn create_warehouse(
        &self,
        w: &NewWarehouse,
        at: DateTime<Utc>,
    ) -> Result<Warehouse, WarehouseError> {
        let result =
            sqlx::query("INSERT INTO warehouses (code, name, created_at) VALUES ($1, $2, $3)")
                .bind(w.code.as_str())
                .bind(w.name.as_str())
                .bind(epoch_ms(at))
                .execute(&self.pool)
                .await;
        match result {
            Ok(_) => Ok(Warehouse {
                code: w.code.clone(),
                name: w.name.as_str().to_owned(),
                created_at: at,
            }),
            Err(e) if is_unique_violation(&e) => Err(WarehouseError::Duplicate(w.code.clone())),
            Err(e) => Err(anyhow::Error::new(e)
                .context("failed to insert a warehouse")
                .into()),
        }
    }

    async fn warehouses(
        &self,
        after: Option<&WarehouseCode>,
        limit: u32,
    ) -> anyhow::Result<Vec<Warehouse>> {
        let rows: Vec<WarehouseRow> = sqlx::query_as(
            "SELECT code, name, created_at FROM warehouses WHERE code > $1 ORDER BY code LIMIT $2",
        )
        .bind(after.map_or("", WarehouseCode::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .context("failed to list warehouses")?;
        rows.into_iter().map(Warehouse::try_from).collect()
    }

    #[tracing::instrument(skip_all, fields(sku = %r.sku, warehouse = %r.warehouse))]
    async fn receive(&self, r: &Receipt, meta: &ChangeMeta) -> Result<Movement, StockError> {
        let mut tx = self.begin().await?;
        if load_product(&mut tx, &r.sku).await?.is_none() {
            return Err(StockError::UnknownProduct(r.sku.clone()));
        }
        if !warehouse_exists(&mut tx, &r.warehouse).await? {
            return Err(StockError::UnknownWarehouse(r.warehouse.clone()));
        }
        let (on_hand, reserved): (i64, i64) = sqlx::query_as(
            "INSERT INTO stock_levels (sku, warehouse, on_hand, reserved) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (sku, warehouse) DO UPDATE SET on_hand = on_hand + excluded.on_hand \
             RETURNING on_hand, reserved",
        )
        .bind(r.sku.as_str())
        .bind(r.warehouse.as_str())
        .bind(r.quantity.get())
        .fetch_one(&mut *tx)
        .await
        .context("failed to add stock")?;
        let level = StockLevel {
            warehouse: r.warehouse.clone(),
            on_hand,
            reserved,
        };
        let m = meta.movement(
            &r.sku,
            &level,
            MovementKind::Receipt,
            r.quantity.get(),
            None,
            r.reference.as_ref().map(|n| n.as_str()),
            None,
        );
        insert_movement(&mut tx, &m).await?;
        commit(tx).await?;
        Ok(m)
    }

    #[tracing::instrument(skip_all, fields(sku = %a.sku, warehouse = %a.warehouse))]
    async fn adjust(&self, a: &Adjustment, meta: &ChangeMeta) -> Result<Movement, StockError> {
        let mut tx = self.begin().await?;
        let product = load_product(&mut tx, &a.sku)
            .await?
            .ok_or_else(|| StockError::UnknownProduct(a.sku.clone()))?;
        if !warehouse_exists(&mut tx, &a.warehouse).await? {
            return Err(StockError::UnknownWarehouse(a.warehouse.clone()));
        }
        let current: (i64, i64) = sqlx::query_as(
            "SELECT on_hand, reserved FROM stock_levels WHERE sku = $1 AND warehouse = $2",
        )
        .bind(a.sku.as_str())
        .bind(a.warehouse.as_str())
        .fetch_optional(&mut *tx)
        .await
        .context("failed to read a stock level")?
        .unwrap_or((0, 0));
        let (on_hand, reserved) = current;
        let delta = a.delta.get();
        if on_hand + delta < 0 || on_hand + delta < reserved {
            return Err(StockError::WouldUnderflow {
                on_hand,
                reserved,
                delta,
            });
        }
        let before = available(&mut tx, &a.sku).await?;
        sqlx::query(
            "INSERT INTO stock_levels (sku, warehouse, on_hand, reserved) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (sku, warehouse) DO UPDATE SET on_hand = excluded.on_hand",
        )
        .bind(a.sku.as_str())
        .bind(a.warehouse.as_str())
        .bind(on_hand + delta)
        .execute(&mut *tx)
        .await
        .context("failed to adjust stock")?;
        let level = StockLevel {
            warehouse: a.warehouse.clone(),
            on_hand: on_hand + delta,
            reserved,
        };
        let m = meta.movement(
            &a.sku,
            &level,
            MovementKind::Adjustment,
            delta,
            Some(a.reason.as_str()),
            None,
            None,
        );
        insert_movement(&mut tx, &m).await?;
        if let Some(e) = events::low_stock(
            &a.sku,
            product.low_stock_threshold,
            before,
            before + delta,
            &meta.correlation_id,
        )? {
            emit(&mut tx, &e).await?;
        }
        commit(tx).await?;
        Ok(m)
    }

    async fn stock(&self, sku: &Sku) -> anyhow::Result<Option<StockSummary>> {
        let mut conn = self
            .read
            .acquire()
            .await
            .context("failed to get a connection")?;
        if load_product(&mut conn, sku).await?.is_none() {
            return Ok(None);
        }
        let warehouses = levels(&mut conn, sku).await?;
        Ok(Some(StockSummary {
            sku: sku.clone(),
            warehouses,
        }))
    }

    async fn movements(
        &self,
        sku: &Sku,
        before: Option<Uuid>,
        limit: u32,
    ) -> anyhow::Result<Vec<Movement>> {
        // Hyphenated UUID v7 text sorts by time, as the uuids do.
        let before = before.map_or_else(|| "~".to_owned(), |u| u.to_string());
        let rows: Vec<MovementRow> = sqlx::query_as(&format!(
            "SELECT {MOVEMENT_COLUMNS} FROM stock_movements WHERE sku = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        ))
        .bind(sku.as_str())
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .context("failed to list movements")?;
        rows.into_iter().map(Movement::try_from).collect()
    }

    #[tracing::instrument(skip_all, fields(reservation_id = %r.id))]
    async fn reserve(
        &self,
        r: &NewReservation,
        expires_at: DateTime<Utc>,
        meta: &ChangeMeta,
    ) -> Result<ReserveOutcome, ReserveError> {
        let mut tx = self.begin().await?;
        if let Some(existing) = load_reservation(&mut tx, r.id).await? {
            return if existing.same_request(r) {
                Ok(ReserveOutcome {
                    reservation: existing,
                    created: false,
                })
            } else {
                Err(ReserveError::IdConflict(r.id))
            };
        }
        let mut unknown = Vec::new();
        let mut thresholds = Vec::with_capacity(r.lines.len());
        for (i, line) in r.lines.iter().enumerate() {
            match load_product(&mut tx, &line.sku).await? {
                Some(p) if p.active => thresholds.push(p.low_stock_threshold),
                _ => unknown.push((i, line.sku.clone())),
            }
        }
        if !unknown.is_empty() {
            return Err(ReserveError::UnknownProducts(unknown));
        }
        let mut plan = Vec::with_capacity(r.lines.len());
        let mut short = Vec::new();
        // What each sku has available before this reservation, from the levels
        // read here (no second read inside the same write transaction).
        let mut free: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for (i, line) in r.lines.iter().enumerate() {
            let levels = levels(&mut tx, &line.sku).await?;
            free.entry(line.sku.as_str())
                .or_insert_with(|| levels.iter().map(StockLevel::available).sum());
            match allocate(&levels, line.quantity.get()) {
                Some(allocations) => plan.push(ReservedLine {
                    sku: line.sku.clone(),
                    quantity: line.quantity.get(),
                    allocations,
                }),
                None => short.push(Shortage {
                    line: i,
                    sku: line.sku.clone(),
                    requested: line.quantity.get(),
                    available: levels.iter().map(StockLevel::available).sum(),
                }),
            }
        }
        if !short.is_empty() {
            return Err(ReserveError::Insufficient(short));
        }
        let reservation = Reservation {
            id: r.id,
            order_id: r.order_id.clone(),
            status: ReservationStatus::Held,
            lines: plan,
            expires_at: Some(expires_at),
            created_at: meta.at,
            updated_at: meta.at,
        };
        let mut low = Vec::new();
        for (line, threshold) in reservation.lines.iter().zip(thresholds) {
            let left = free
                .get_mut(line.sku.as_str())
                .context("a line's sku was not read")?;
            let before = *left;
            *left -= line.quantity;
            for alloc in &line.allocations {
                let level = shift_level(&mut tx, &line.sku, &alloc.warehouse, 0, alloc.quantity)
                    .await?
                    .context("a stock level changed inside its own write transaction")?;
                let m = meta.movement(
                    &line.sku,
                    &level,
                    MovementKind::Reservation,
                    alloc.quantity,
                    None,
                    None,
                    Some(r.id),
                );
                insert_movement(&mut tx, &m).await?;
            }
            low.extend(events::low_stock(
                &line.sku,
                threshold,
                before,
                before - line.quantity,
                &meta.correlation_id,
            )?);
        }
        sqlx::query(&format!(
            "INSERT INTO reservations ({RESERVATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(r.id.0.to_string())
        .bind(r.order_id.as_str())
        .bind(ReservationStatus::Held.as_str())
        .bind(serde_json::to_string(&reservation.lines).context("failed to serialise lines")?)
        .bind(epoch_ms(expires_at))
        .bind(epoch_ms(meta.at))
        .bind(epoch_ms(meta.at))
        .execute(&mut *tx)
        .await
        .context("failed to insert a reservation")?;
        emit(
            &mut tx,
            &events::reserved(&reservation, &meta.correlation_id)?,
        )
        .await?;
        for e in &low {
            emit(&mut tx, e).await?;
        }
        commit(tx).await?;
        Ok(ReserveOutcome {
            reservation,
            created: true,
        })
    }

    async fn reservation(&self, id: ReservationId) -> anyhow::Result<Option<Reservation>> {
        let mut conn = self
            .read
            .acquire()
            .await
            .context("failed to get a connection")?;
        load_reservation(&mut conn, id).await
    }

    #[tracing::instrument(skip_all, fields(reservation_id = %id, transition = ?t))]
    async fn transition(
        &self,
        id: ReservationId,
        t: Transition,
        meta: &ChangeMeta,
    ) -> Result<Reservation, ReservationError> {
        let mut tx = self.begin().await?;
        let current = load_reservation(&mut tx, id)
            .await?
            .ok_or(ReservationError::NotFound(id))?;
        if !t.check(&current, meta.at)? {
            return Ok(current);
        }
        let (d_on_hand, d_reserved, kind, reason) = match t {
            Transition::Confirm => (0, 0, None, None),
            Transition::Commit => (-1, -1, Some(MovementKind::Commit), None),
            Transition::Release(why) => (0, -1, Some(MovementKind::Release), Some(why.as_str())),
        };
        if let Some(kind) = kind {
            for line in &current.lines {
                for alloc in &line.allocations {
                    let level = shift_level(
                        &mut tx,
                        &line.sku,
                        &alloc.warehouse,
                        d_on_hand * alloc.quantity,
                        d_reserved * alloc.quantity,
                    )
                    .await?
                    .context("a reserved stock level no longer holds its reservation")?;
                    let m = meta.movement(
                        &line.sku,
                        &level,
                        kind,
                        alloc.quantity,
                        reason,
                        None,
                        Some(id),
                    );
                    insert_movement(&mut tx, &m).await?;
                }
            }
        }
        let updated = Reservation {
            status: t.target(),
            expires_at: None,
            updated_at: meta.at,
            ..current.clone()
        };
        let changed = sqlx::query(
            "UPDATE reservations SET status = $1, expires_at = NULL, updated_at = $2 WHERE id = $3 AND status = $4",
        )
        .bind(updated.status.as_str())
        .bind(epoch_ms(meta.at))
        .bind(id.0.to_string())
        .bind(current.status.as_str())
        .execute(&mut *tx)
        .await
        .context("failed to update a reservation")?
        .rows_affected();
        if changed != 1 {
            return Err(
                anyhow::anyhow!("a reservation changed inside its own write transaction").into(),
            );
        }
        match t {
            Transition::Confirm => {}
            Transition::Commit => {
                emit(&mut tx, &events::committed(&updated, &meta.correlation_id)?).await?
            }
            Transition::Release(why) => {
                emit(
                    &mut tx,
                    &events::released(&updated, why, &meta.correlation_id)?,
                )
                .await?;
            }
        }
        commit(tx).await?;
        Ok(updated)
    }

    async fn expired(&self, now: DateTime<Utc>, limit: u32) -> anyhow::Result<Vec<ReservationId>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM reservations WHERE status = 'held' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(epoch_ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("failed to list expired reservations")?;
        rows.into_iter()
            .map(|(id,)| {
                Uuid::parse_str(&id)
                    .map(ReservationId)
                    .context("a stored reservation id does not parse")
            })
            .collect()
    }

    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("the database refused a query")?;
        Ok(())
    }
}
