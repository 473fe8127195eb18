//! The SQLite store: the embedded default, run in place on the kernel's
//! [`Sqlite`]. Every write runs in one `BEGIN IMMEDIATE` transaction on
//! SQLite's single writer, so reading levels, allocating and updating cannot
//! interleave with another writer; the updates keep an availability guard
//! anyway and the table CHECKs are the last fence. Catalogue, stock and
//! reservation reads go to read-only connections, so a product page does not
//! queue behind the writer.

use agora_kernel::db::{epoch_ms, from_epoch_ms};
use agora_kernel::outbox::sqlite::{enqueue, enqueue_all};
use agora_kernel::sqlite::rusqlite::{self, Connection, OptionalExtension, Row, params};
use agora_kernel::sqlite::{Sqlite, is_unique_violation};
use agora_kernel::{Currency, Money};
use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::models::{
    Adjustment, ChangeMeta, Movement, MovementKind, NewProduct, NewReservation, NewWarehouse,
    OrderRef, Product, ProductPatch, Receipt, Reservation, ReservationId, ReservationStatus, Sku,
    StockLevel, StockSummary, Warehouse, WarehouseCode,
};
use crate::domain::ports::{
    CatalogueError, InventoryStore, ReservationError, ReserveError, ReserveOutcome, StockError,
    Transition, WarehouseError,
};
use crate::domain::stock::{self, Shift};

/// The module's migrations (versions ≥ 100; the kernel's are below, in the
/// same bookkeeping table, and are left alone).
///
/// # Errors
/// Failed migration.
pub async fn migrate(db: &Sqlite) -> anyhow::Result<()> {
    db.migrate(&sqlx::migrate!("../../migrations/inventory/sqlite"))
        .await
        .context("failed to migrate the inventory tables")
}

#[derive(Clone)]
pub struct SqliteStore {
    /// The writer for writes (and the reads inside them), read-only
    /// connections for everything else.
    db: Sqlite,
}

/// Why a write failed: the port's own error, returned by the closure, or the
/// database's on `BEGIN` or `COMMIT`, the only errors [`Sqlite::write`] adds.
enum WriteFailure<E> {
    Port(E),
    Database(rusqlite::Error),
}

impl<E> From<rusqlite::Error> for WriteFailure<E> {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e)
    }
}

impl SqliteStore {
    pub fn new(db: Sqlite) -> Self {
        Self { db }
    }

    /// Run `f` in one write transaction: committed on `Ok`, rolled back on
    /// any `Err` (a business refusal included, so nothing it wrote before
    /// refusing survives).
    async fn write<R, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<anyhow::Error> + Send + 'static,
    {
        self.db
            .write(move |tx| f(tx).map_err(WriteFailure::Port))
            .await
            .map_err(|failure| match failure {
                WriteFailure::Port(e) => e,
                WriteFailure::Database(e) => anyhow::Error::new(e)
                    .context("failed to start or commit a write transaction")
                    .into(),
            })
    }
}

/// Every row `sql` returns for `params`, mapped by `f`.
fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.query_map(params, f)?.collect()
}

// Column lists as macros, so that `concat!` makes each statement one fixed
// string at compile time (`prepare_cached` finds statements by their text).
// The `from_row` functions read the columns in these orders.
macro_rules! product_columns {
    () => {
        "sku, name, description, price_minor, currency, active, low_stock_threshold, created_at, updated_at"
    };
}
macro_rules! movement_columns {
    () => {
        "id, sku, warehouse, kind, quantity, on_hand, reserved, actor, reason, reference, reservation_id, correlation_id, at"
    };
}
macro_rules! reservation_columns {
    () => {
        "id, order_id, status, lines, expires_at, created_at, updated_at"
    };
}

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

impl ProductRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            sku: r.get(0)?,
            name: r.get(1)?,
            description: r.get(2)?,
            price_minor: r.get(3)?,
            currency: r.get(4)?,
            active: r.get(5)?,
            low_stock_threshold: r.get(6)?,
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
        })
    }
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

struct WarehouseRow {
    code: String,
    name: String,
    created_at: i64,
}

impl WarehouseRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            code: r.get(0)?,
            name: r.get(1)?,
            created_at: r.get(2)?,
        })
    }
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

struct LevelRow {
    warehouse: String,
    on_hand: i64,
    reserved: i64,
}

impl LevelRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            warehouse: r.get(0)?,
            on_hand: r.get(1)?,
            reserved: r.get(2)?,
        })
    }
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

impl MovementRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            sku: r.get(1)?,
            warehouse: r.get(2)?,
            kind: r.get(3)?,
            quantity: r.get(4)?,
            on_hand: r.get(5)?,
            reserved: r.get(6)?,
            actor: r.get(7)?,
            reason: r.get(8)?,
            reference: r.get(9)?,
            reservation_id: r.get(10)?,
            correlation_id: r.get(11)?,
            at: r.get(12)?,
        })
    }
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

struct ReservationRow {
    id: String,
    order_id: String,
    status: String,
    lines: String,
    expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl ReservationRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            order_id: r.get(1)?,
            status: r.get(2)?,
            lines: r.get(3)?,
            expires_at: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
        })
    }
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

fn load_product(conn: &Connection, sku: &Sku) -> anyhow::Result<Option<Product>> {
    let row = conn
        .prepare_cached(concat!(
            "SELECT ",
            product_columns!(),
            " FROM products WHERE sku = ?1"
        ))
        .and_then(|mut s| s.query_row([sku.as_str()], ProductRow::from_row).optional())
        .context("failed to read a product")?;
    row.map(Product::try_from).transpose()
}

fn warehouse_exists(conn: &Connection, code: &WarehouseCode) -> anyhow::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM warehouses WHERE code = ?1")
        .and_then(|mut s| s.exists([code.as_str()]))
        .context("failed to read a warehouse")
}

fn levels(conn: &Connection, sku: &Sku) -> anyhow::Result<Vec<StockLevel>> {
    all(
        conn,
        "SELECT warehouse, on_hand, reserved FROM stock_levels WHERE sku = ?1 ORDER BY warehouse",
        [sku.as_str()],
        LevelRow::from_row,
    )
    .context("failed to read stock levels")?
    .into_iter()
    .map(StockLevel::try_from)
    .collect()
}

/// Add `quantity` (negative: take it away) to the on-hand stock of one
/// `(sku, warehouse)`, creating the level at the first receipt. (The row
/// inserted is checked even when it conflicts, hence `MAX`: a negative
/// quantity always finds its row, as the domain refuses one below zero.)
fn add_on_hand(
    conn: &Connection,
    sku: &Sku,
    warehouse: &WarehouseCode,
    quantity: i64,
) -> anyhow::Result<StockLevel> {
    let (on_hand, reserved) = conn
        .prepare_cached(
            "INSERT INTO stock_levels (sku, warehouse, on_hand, reserved) \
             VALUES (?1, ?2, MAX(?3, 0), 0) \
             ON CONFLICT (sku, warehouse) DO UPDATE SET on_hand = on_hand + ?3 \
             RETURNING on_hand, reserved",
        )
        .and_then(|mut s| {
            s.query_row(params![sku.as_str(), warehouse.as_str(), quantity], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
        })
        .context("failed to change on-hand stock")?;
    Ok(StockLevel {
        warehouse: warehouse.clone(),
        on_hand,
        reserved,
    })
}

/// Apply the domain's shifts, each with its movement. A refused guard is
/// unexpected here: the levels were read on this same writer.
fn apply_shifts(conn: &Connection, shifts: &[Shift], meta: &ChangeMeta) -> anyhow::Result<()> {
    for shift in shifts {
        let level = shift_level(
            conn,
            &shift.sku,
            &shift.warehouse,
            shift.on_hand,
            shift.reserved,
        )?
        .context("a stock level changed inside its own write transaction")?;
        insert_movement(conn, &shift.movement(&level, meta))?;
    }
    Ok(())
}

fn insert_movement(conn: &Connection, m: &Movement) -> anyhow::Result<()> {
    conn.prepare_cached(concat!(
        "INSERT INTO stock_movements (",
        movement_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            m.id.to_string(),
            m.sku.as_str(),
            m.warehouse.as_str(),
            m.kind.as_str(),
            m.quantity,
            m.on_hand,
            m.reserved,
            m.actor,
            m.reason,
            m.reference,
            m.reservation_id.map(|r| r.0.to_string()),
            m.correlation_id,
            epoch_ms(m.at),
        ])
    })
    .context("failed to record a stock movement")?;
    Ok(())
}

/// Move `reserved` by `d_reserved` and `on_hand` by `d_on_hand` for one
/// (sku, warehouse), guarded so neither goes below zero nor reserved above
/// on hand; `None` when the guard refused.
fn shift_level(
    conn: &Connection,
    sku: &Sku,
    warehouse: &WarehouseCode,
    d_on_hand: i64,
    d_reserved: i64,
) -> anyhow::Result<Option<StockLevel>> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached(
            "UPDATE stock_levels SET on_hand = on_hand + ?1, reserved = reserved + ?2 \
             WHERE sku = ?3 AND warehouse = ?4 \
               AND on_hand + ?1 >= 0 AND reserved + ?2 >= 0 AND reserved + ?2 <= on_hand + ?1 \
             RETURNING on_hand, reserved",
        )
        .and_then(|mut s| {
            s.query_row(
                params![d_on_hand, d_reserved, sku.as_str(), warehouse.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .context("failed to update a stock level")?;
    Ok(row.map(|(on_hand, reserved)| StockLevel {
        warehouse: warehouse.clone(),
        on_hand,
        reserved,
    }))
}

fn load_reservation(conn: &Connection, id: ReservationId) -> anyhow::Result<Option<Reservation>> {
    let row = conn
        .prepare_cached(concat!(
            "SELECT ",
            reservation_columns!(),
            " FROM reservations WHERE id = ?1"
        ))
        .and_then(|mut s| {
            s.query_row([id.0.to_string()], ReservationRow::from_row)
                .optional()
        })
        .context("failed to read a reservation")?;
    row.map(Reservation::try_from).transpose()
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
        let (p, row) = (p.clone(), product.clone());
        self.write(move |tx| {
            let (p, product) = (&p, &row);
            let result = tx
                .prepare_cached(concat!(
                    "INSERT INTO products (",
                    product_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        product.sku.as_str(),
                        product.name,
                        product.description,
                        product.price.minor(),
                        product.price.currency().code(),
                        product.active,
                        product.low_stock_threshold,
                        epoch_ms(at),
                        epoch_ms(at),
                    ])
                });
            match result {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => {
                    Err(CatalogueError::DuplicateSku(p.sku.clone()))
                }
                Err(e) => Err(anyhow::Error::new(e)
                    .context("failed to insert a product")
                    .into()),
            }
        })
        .await?;
        Ok(product)
    }

    async fn product(&self, sku: &Sku) -> anyhow::Result<Option<Product>> {
        self.db.read(|conn| load_product(conn, sku)).await
    }

    async fn products(
        &self,
        after: Option<&Sku>,
        limit: u32,
        include_inactive: bool,
    ) -> anyhow::Result<Vec<Product>> {
        let rows = self
            .db
            .read(|conn| {
                all(
                    conn,
                    concat!(
                        "SELECT ",
                        product_columns!(),
                        " FROM products WHERE sku > ?1 AND (active OR ?2) ORDER BY sku LIMIT ?3"
                    ),
                    params![
                        after.map_or("", Sku::as_str),
                        include_inactive,
                        i64::from(limit)
                    ],
                    ProductRow::from_row,
                )
            })
            .await
            .context("failed to list products")?;
        rows.into_iter().map(Product::try_from).collect()
    }

    #[tracing::instrument(skip_all, fields(sku = %sku))]
    async fn update_product(
        &self,
        sku: &Sku,
        patch: &ProductPatch,
        at: DateTime<Utc>,
    ) -> Result<Product, CatalogueError> {
        let (sku, patch) = (sku.clone(), patch.clone());
        self.write(move |tx| {
            let (sku, patch) = (&sku, &patch);
            let current =
                load_product(tx, sku)?.ok_or_else(|| CatalogueError::NotFound(sku.clone()))?;
            let updated = patch.apply(current, at);
            tx.prepare_cached(
                "UPDATE products SET name = ?1, description = ?2, price_minor = ?3, currency = ?4, \
                 active = ?5, low_stock_threshold = ?6, updated_at = ?7 WHERE sku = ?8",
            )
            .and_then(|mut s| {
                s.execute(params![
                    updated.name,
                    updated.description,
                    updated.price.minor(),
                    updated.price.currency().code(),
                    updated.active,
                    updated.low_stock_threshold,
                    epoch_ms(at),
                    sku.as_str(),
                ])
            })
            .context("failed to update a product")?;
            Ok(updated)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(code = %w.code))]
    async fn create_warehouse(
        &self,
        w: &NewWarehouse,
        at: DateTime<Utc>,
    ) -> Result<Warehouse, WarehouseError> {
        let w = w.clone();
        self.write(move |tx| {
            let w = &w;
            let result = tx
                .prepare_cached(
                    "INSERT INTO warehouses (code, name, created_at) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| {
                    s.execute(params![w.code.as_str(), w.name.as_str(), epoch_ms(at)])
                });
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
        })
        .await
    }

    async fn warehouses(
        &self,
        after: Option<&WarehouseCode>,
        limit: u32,
    ) -> anyhow::Result<Vec<Warehouse>> {
        let rows = self
            .db
            .read(|conn| {
                all(
                    conn,
                    "SELECT code, name, created_at FROM warehouses WHERE code > ?1 ORDER BY code LIMIT ?2",
                    params![after.map_or("", WarehouseCode::as_str), i64::from(limit)],
                    WarehouseRow::from_row,
                )
            })
            .await
            .context("failed to list warehouses")?;
        rows.into_iter().map(Warehouse::try_from).collect()
    }

    #[tracing::instrument(skip_all, fields(sku = %r.sku, warehouse = %r.warehouse))]
    async fn receive(&self, r: &Receipt, meta: &ChangeMeta) -> Result<Movement, StockError> {
        let (r, meta) = (r.clone(), meta.clone());
        self.write(move |tx| {
            let product = load_product(tx, &r.sku)?;
            let shift = stock::receive(&r, product.as_ref(), warehouse_exists(tx, &r.warehouse)?)?;
            let level = add_on_hand(tx, &shift.sku, &shift.warehouse, shift.on_hand)?;
            let m = shift.movement(&level, &meta);
            insert_movement(tx, &m)?;
            Ok(m)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(sku = %a.sku, warehouse = %a.warehouse))]
    async fn adjust(&self, a: &Adjustment, meta: &ChangeMeta) -> Result<Movement, StockError> {
        let (a, meta) = (a.clone(), meta.clone());
        self.write(move |tx| {
            let product = load_product(tx, &a.sku)?;
            let known = warehouse_exists(tx, &a.warehouse)?;
            let write = stock::adjust(&a, product.as_ref(), known, &levels(tx, &a.sku)?, &meta)?;
            let level = add_on_hand(tx, &a.sku, &a.warehouse, write.shift.on_hand)?;
            let m = write.shift.movement(&level, &meta);
            insert_movement(tx, &m)?;
            if let Some(e) = &write.event {
                enqueue(tx, e)?;
            }
            Ok(m)
        })
        .await
    }

    async fn stock(&self, sku: &Sku) -> anyhow::Result<Option<StockSummary>> {
        // Two statements without a common snapshot, as products are never
        // deleted: one that exists for the first still exists for the second.
        self.db
            .read(|conn| {
                if load_product(conn, sku)?.is_none() {
                    return Ok(None);
                }
                let warehouses = levels(conn, sku)?;
                Ok(Some(StockSummary {
                    sku: sku.clone(),
                    warehouses,
                }))
            })
            .await
    }

    async fn movements(
        &self,
        sku: &Sku,
        before: Option<Uuid>,
        limit: u32,
    ) -> anyhow::Result<Vec<Movement>> {
        // Hyphenated UUID v7 text sorts by time, as the uuids do.
        let before = before.map_or_else(|| "~".to_owned(), |u| u.to_string());
        let rows = self
            .db
            .read(|conn| {
                all(
                    conn,
                    concat!(
                        "SELECT ",
                        movement_columns!(),
                        " FROM stock_movements WHERE sku = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
                    ),
                    params![sku.as_str(), before, i64::from(limit)],
                    MovementRow::from_row,
                )
            })
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
        // One write transaction: the reads the domain decides on are on the
        // single writer, so no other reservation can move the levels in between.
        let (r, meta) = (r.clone(), meta.clone());
        self.write(move |tx| {
            let (r, meta) = (&r, &meta);
            if let Some(existing) = load_reservation(tx, r.id)? {
                return stock::replay(existing, r);
            }
            let mut products = Vec::with_capacity(r.lines.len());
            let mut stock_levels = Vec::with_capacity(r.lines.len());
            for line in &r.lines {
                products.push(load_product(tx, &line.sku)?);
                stock_levels.push(levels(tx, &line.sku)?);
            }
            let write = stock::hold(r, &products, &stock_levels, expires_at, meta)?;
            apply_shifts(tx, &write.shifts, meta)?;
            let reservation = &write.reservation;
            let lines =
                serde_json::to_string(&reservation.lines).context("failed to serialise lines")?;
            tx.prepare_cached(concat!(
                "INSERT INTO reservations (",
                reservation_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    reservation.id.0.to_string(),
                    reservation.order_id.as_str(),
                    reservation.status.as_str(),
                    lines,
                    reservation.expires_at.map(epoch_ms),
                    epoch_ms(reservation.created_at),
                    epoch_ms(reservation.updated_at),
                ])
            })
            .context("failed to insert a reservation")?;
            enqueue_all(tx, &write.events)?;
            Ok(ReserveOutcome {
                reservation: write.reservation,
                created: true,
            })
        })
        .await
    }

    async fn reservation(&self, id: ReservationId) -> anyhow::Result<Option<Reservation>> {
        self.db.read(|conn| load_reservation(conn, id)).await
    }

    #[tracing::instrument(skip_all, fields(reservation_id = %id, transition = ?t))]
    async fn transition(
        &self,
        id: ReservationId,
        t: Transition,
        meta: &ChangeMeta,
    ) -> Result<Reservation, ReservationError> {
        let meta = meta.clone();
        self.write(move |tx| {
            let meta = &meta;
            let current = load_reservation(tx, id)?.ok_or(ReservationError::NotFound(id))?;
            let Some(write) = t.decide(&current, meta)? else {
                return Ok(current);
            };
            apply_shifts(tx, &write.shifts, meta)?;
            let updated = write.reservation;
            let changed = tx
                .prepare_cached(
                    "UPDATE reservations SET status = ?1, expires_at = ?2, updated_at = ?3 \
                     WHERE id = ?4 AND status = ?5",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        updated.status.as_str(),
                        updated.expires_at.map(epoch_ms),
                        epoch_ms(updated.updated_at),
                        id.0.to_string(),
                        current.status.as_str(),
                    ])
                })
                .context("failed to update a reservation")?;
            if changed != 1 {
                return Err(anyhow::anyhow!(
                    "a reservation changed inside its own write transaction"
                )
                .into());
            }
            enqueue_all(tx, &write.events)?;
            Ok(updated)
        })
        .await
    }

    async fn expired(&self, now: DateTime<Utc>, limit: u32) -> anyhow::Result<Vec<ReservationId>> {
        // A read-only connection sees every commit; the sweeper's transition
        // checks each reservation again on the writer.
        let ids: Vec<String> = self
            .db
            .read(|conn| {
                all(
                    conn,
                    "SELECT id FROM reservations WHERE status = 'held' AND expires_at <= ?1 \
                     ORDER BY expires_at LIMIT ?2",
                    params![epoch_ms(now), i64::from(limit)],
                    |r| r.get(0),
                )
            })
            .await
            .context("failed to list expired reservations")?;
        ids.into_iter()
            .map(|id| {
                Uuid::parse_str(&id)
                    .map(ReservationId)
                    .context("a stored reservation id does not parse")
            })
            .collect()
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.db
            .read(|conn| {
                conn.prepare_cached("SELECT 1")
                    .and_then(|mut s| s.query_row([], |_| Ok(())))
            })
            .await
            .context("the database refused a query")
    }
}
