//! The MongoDB store: the production default, through the official driver.
//!
//! Every write that changes stock runs in a multi-document transaction (so the
//! stock change, its movements, the reservation and the outbox rows commit or
//! vanish together) and *also* keeps its availability guard in the update
//! filter (`available >= n`), so no interleaving can ever oversell. Write
//! conflicts (`TransientTransactionError`) retry the whole transaction with
//! jittered back-off. Server features relied on: transactions (a replica set;
//! a single-node one is enough), `findAndModify`, unique indexes.
//!
//! Collections, created with their indexes at start-up (idempotently):
//! `products` (unique `sku`), `warehouses` (unique `code`), `stock_levels`
//! (unique `(sku, warehouse)`), `reservations`, `stock_movements`, `outbox`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agora_kernel::outbox::{OutboxMessage, OutboxStore};
use agora_kernel::{Currency, EventEnvelope, Money};
use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use mongodb::bson::{self, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::models::{
    Adjustment, ChangeMeta, Movement, MovementKind, NewProduct, NewReservation, NewWarehouse,
    OrderRef, Product, ProductPatch, Receipt, Reservation, ReservationId, ReservationStatus,
    ReservedLine, Sku, StockLevel, StockSummary, Warehouse, WarehouseCode,
};
use crate::domain::ports::{
    CatalogueError, InventoryStore, ReservationError, ReserveError, ReserveOutcome, StockError,
    Transition, WarehouseError,
};
use crate::domain::stock::{self, Shift};

/// Most attempts at one transaction before giving up (write conflicts).
const MAX_ATTEMPTS: u32 = 200;

fn to_bson_time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

fn from_bson_time(t: bson::DateTime) -> DateTime<Utc> {
    agora_kernel::db::from_epoch_ms(t.timestamp_millis())
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

fn is_transient(e: &mongodb::error::Error) -> bool {
    e.contains_label("TransientTransactionError")
        || matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 112)
}

/// Connect to the database named in the URL, create collections and indexes.
///
/// # Errors
/// Bad URL, no database in it, unreachable server, index creation failure.
pub async fn connect(
    url: &str,
) -> anyhow::Result<(Client, Arc<dyn InventoryStore>, Arc<dyn OutboxStore>)> {
    let client = Client::with_uri_str(url)
        .await
        .context("invalid MongoDB URL")?;
    let db = client
        .default_database()
        .context("the MongoDB URL must name a database, e.g. mongodb://host:27017/inventory")?;
    let store = MongoStore::new(client.clone(), db.clone());
    store.create_indexes().await?;
    let outbox = MongoOutbox {
        coll: db.collection("outbox"),
    };
    Ok((client, Arc::new(store), Arc::new(outbox)))
}

#[derive(Debug, Serialize, Deserialize)]
struct ProductDoc {
    sku: String,
    name: String,
    description: Option<String>,
    price_minor: i64,
    currency: String,
    active: bool,
    low_stock_threshold: i64,
    created_at: bson::DateTime,
    updated_at: bson::DateTime,
}

impl TryFrom<ProductDoc> for Product {
    type Error = anyhow::Error;
    fn try_from(d: ProductDoc) -> anyhow::Result<Self> {
        Ok(Product {
            sku: Sku::parse(&d.sku).context("a stored sku does not parse")?,
            name: d.name,
            description: d.description,
            price: Money::new(
                d.price_minor,
                Currency::parse(&d.currency).context("a stored currency does not parse")?,
            ),
            active: d.active,
            low_stock_threshold: d.low_stock_threshold,
            created_at: from_bson_time(d.created_at),
            updated_at: from_bson_time(d.updated_at),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct WarehouseDoc {
    code: String,
    name: String,
    created_at: bson::DateTime,
}

#[derive(Debug, Serialize, Deserialize)]
struct LevelDoc {
    sku: String,
    warehouse: String,
    on_hand: i64,
    reserved: i64,
    /// Always `on_hand - reserved`: the field the availability guard filters on.
    available: i64,
}

impl TryFrom<LevelDoc> for StockLevel {
    type Error = anyhow::Error;
    fn try_from(d: LevelDoc) -> anyhow::Result<Self> {
        Ok(StockLevel {
            warehouse: WarehouseCode::parse(&d.warehouse)
                .context("a stored warehouse code does not parse")?,
            on_hand: d.on_hand,
            reserved: d.reserved,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ReservationDoc {
    #[serde(rename = "_id")]
    id: String,
    order_id: String,
    status: String,
    lines: Vec<ReservedLine>,
    expires_at: Option<bson::DateTime>,
    created_at: bson::DateTime,
    updated_at: bson::DateTime,
}

impl TryFrom<ReservationDoc> for Reservation {
    type Error = anyhow::Error;
    fn try_from(d: ReservationDoc) -> anyhow::Result<Self> {
        Ok(Reservation {
            id: ReservationId(
                Uuid::parse_str(&d.id).context("a stored reservation id does not parse")?,
            ),
            order_id: OrderRef::parse(&d.order_id).context("a stored order id does not parse")?,
            status: ReservationStatus::parse(&d.status)
                .context("a stored status does not parse")?,
            lines: d.lines,
            expires_at: d.expires_at.map(from_bson_time),
            created_at: from_bson_time(d.created_at),
            updated_at: from_bson_time(d.updated_at),
        })
    }
}

impl From<&Reservation> for ReservationDoc {
    fn from(r: &Reservation) -> Self {
        Self {
            id: r.id.0.to_string(),
            order_id: r.order_id.as_str().to_owned(),
            status: r.status.as_str().to_owned(),
            lines: r.lines.clone(),
            expires_at: r.expires_at.map(to_bson_time),
            created_at: to_bson_time(r.created_at),
            updated_at: to_bson_time(r.updated_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct MovementDoc {
    /// UUID v7 text: sorts by time.
    #[serde(rename = "_id")]
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
    at: bson::DateTime,
}

impl From<&Movement> for MovementDoc {
    fn from(m: &Movement) -> Self {
        Self {
            id: m.id.to_string(),
            sku: m.sku.as_str().to_owned(),
            warehouse: m.warehouse.as_str().to_owned(),
            kind: m.kind.as_str().to_owned(),
            quantity: m.quantity,
            on_hand: m.on_hand,
            reserved: m.reserved,
            actor: m.actor.clone(),
            reason: m.reason.clone(),
            reference: m.reference.clone(),
            reservation_id: m.reservation_id.map(|r| r.0.to_string()),
            correlation_id: m.correlation_id.clone(),
            at: to_bson_time(m.at),
        }
    }
}

impl TryFrom<MovementDoc> for Movement {
    type Error = anyhow::Error;
    fn try_from(d: MovementDoc) -> anyhow::Result<Self> {
        Ok(Movement {
            id: Uuid::parse_str(&d.id).context("a stored movement id does not parse")?,
            sku: Sku::parse(&d.sku).context("a stored sku does not parse")?,
            warehouse: WarehouseCode::parse(&d.warehouse)
                .context("a stored warehouse code does not parse")?,
            kind: MovementKind::parse(&d.kind).context("a stored movement kind does not parse")?,
            quantity: d.quantity,
            on_hand: d.on_hand,
            reserved: d.reserved,
            actor: d.actor,
            reason: d.reason,
            reference: d.reference,
            reservation_id: d
                .reservation_id
                .map(|s| Uuid::parse_str(&s).map(ReservationId))
                .transpose()
                .context("a stored reservation id does not parse")?,
            correlation_id: d.correlation_id,
            at: from_bson_time(d.at),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct OutboxDoc {
    /// The event id (UUID v7 text): publishing in `_id` order is oldest first.
    #[serde(rename = "_id")]
    id: String,
    event_type: String,
    envelope: String,
    created_at: i64,
    available_at: i64,
    attempts: i64,
    published_at: Option<i64>,
    last_error: Option<String>,
    /// Set when the relay gave up on the row (dead letter).
    #[serde(default)]
    dead_at: Option<i64>,
}

/// Why one attempt at a transaction ended.
enum TxError<E> {
    /// A business outcome: abort and return it.
    Domain(E),
    /// A write conflict or a guard that no longer held: run the transaction again.
    Retry(&'static str),
    Db(mongodb::error::Error),
    Other(anyhow::Error),
}

impl<E> From<mongodb::error::Error> for TxError<E> {
    fn from(e: mongodb::error::Error) -> Self {
        if is_transient(&e) {
            Self::Retry("write conflict")
        } else {
            Self::Db(e)
        }
    }
}

impl<E> From<anyhow::Error> for TxError<E> {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

type TxResult<T, E> = Result<T, TxError<E>>;

/// A duplicate key inside a transaction means another writer inserted the
/// same document first: retry (`why` says what raced), as for a conflict.
fn retry_if_duplicate<E>(why: &'static str) -> impl FnOnce(mongodb::error::Error) -> TxError<E> {
    move |e| {
        if is_duplicate_key(&e) {
            TxError::Retry(why)
        } else {
            e.into()
        }
    }
}

/// In-process per-sku write serialisation. Transactions touching the same
/// stock documents would otherwise mostly abort each other with write
/// conflicts under load; queueing them here first keeps retries for the
/// conflicts that come from other processes. Correctness never depends on
/// it: the guards in the update filters and the transactions do that.
struct Stripes(Vec<tokio::sync::Mutex<()>>);

impl Stripes {
    fn new(n: usize) -> Self {
        Self((0..n).map(|_| tokio::sync::Mutex::new(())).collect())
    }

    /// Lock the stripes of `skus`, in index order so two callers never deadlock.
    async fn lock<'a>(
        &self,
        skus: impl IntoIterator<Item = &'a Sku>,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        use std::hash::{Hash, Hasher};
        let mut idx: Vec<usize> = skus
            .into_iter()
            .map(|s| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                s.as_str().hash(&mut h);
                (h.finish() % self.0.len() as u64) as usize
            })
            .collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.0[i].lock().await);
        }
        guards
    }
}

#[derive(Clone)]
pub struct MongoStore {
    stripes: Arc<Stripes>,
    client: Client,
    products: Collection<ProductDoc>,
    warehouses: Collection<WarehouseDoc>,
    levels: Collection<LevelDoc>,
    reservations: Collection<ReservationDoc>,
    movements: Collection<MovementDoc>,
    outbox: Collection<OutboxDoc>,
    db: Database,
}

async fn collect<T: Send + Sync + serde::de::DeserializeOwned>(
    mut cursor: mongodb::SessionCursor<T>,
    s: &mut ClientSession,
) -> Result<Vec<T>, mongodb::error::Error> {
    let mut out = Vec::new();
    while let Some(d) = cursor.next(s).await {
        out.push(d?);
    }
    Ok(out)
}

/// Create the index on `keys` of `coll` (a no-op when it exists), `unique` or not.
async fn ensure_index<T: Send + Sync>(
    coll: &Collection<T>,
    keys: Document,
    unique: bool,
) -> anyhow::Result<()> {
    let what = format!("failed to create the index {keys} of {}", coll.name());
    let options = unique.then(|| IndexOptions::builder().unique(true).build());
    let index = IndexModel::builder().keys(keys).options(options).build();
    coll.create_index(index).await.context(what)?;
    Ok(())
}

/// Every document a `find` outside a transaction returns; `what` says what
/// failed in the error's context.
async fn find_all<T>(
    find: impl IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<T>>>,
    what: &'static str,
) -> anyhow::Result<Vec<T>>
where
    T: Send + Sync + Unpin + serde::de::DeserializeOwned,
{
    find.await.context(what)?.try_collect().await.context(what)
}

impl MongoStore {
    fn new(client: Client, db: Database) -> Self {
        Self {
            stripes: Arc::new(Stripes::new(256)),
            client,
            products: db.collection("products"),
            warehouses: db.collection("warehouses"),
            levels: db.collection("stock_levels"),
            reservations: db.collection("reservations"),
            movements: db.collection("stock_movements"),
            outbox: db.collection("outbox"),
            db,
        }
    }

    async fn create_indexes(&self) -> anyhow::Result<()> {
        ensure_index(&self.products, doc! {"sku": 1}, true).await?;
        ensure_index(&self.warehouses, doc! {"code": 1}, true).await?;
        ensure_index(&self.levels, doc! {"sku": 1, "warehouse": 1}, true).await?;
        ensure_index(
            &self.reservations,
            doc! {"status": 1, "expires_at": 1},
            false,
        )
        .await?;
        ensure_index(&self.movements, doc! {"sku": 1, "_id": -1}, false).await?;
        // The relay's due rows, and its head of line.
        ensure_index(
            &self.outbox,
            doc! {"published_at": 1, "available_at": 1},
            false,
        )
        .await?;
        ensure_index(
            &self.outbox,
            doc! {"published_at": 1, "dead_at": 1, "_id": 1},
            false,
        )
        .await?;
        Ok(())
    }

    /// Run `body` in a transaction, again on write conflicts, until it
    /// commits, returns a business error, or fails for good.
    async fn in_transaction<'a, T, E>(
        &'a self,
        what: &'static str,
        mut body: impl FnMut(ClientSession) -> BoxFuture<'a, (ClientSession, TxResult<T, E>)>,
    ) -> Result<T, E>
    where
        E: From<anyhow::Error>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut session = self
                .client
                .start_session()
                .await
                .with_context(|| format!("failed to start a session to {what}"))?;
            session
                .start_transaction()
                .await
                .with_context(|| format!("failed to start a transaction to {what}"))?;
            let (mut session, result) = body(session).await;
            let outcome = match result {
                Ok(v) => match commit(&mut session).await {
                    Ok(()) => return Ok(v),
                    Err(e) => e,
                },
                Err(e) => {
                    if let Err(abort) = session.abort_transaction().await {
                        tracing::debug!(error = %abort, "failed to abort a transaction");
                    }
                    e
                }
            };
            match outcome {
                TxError::Domain(e) => return Err(e),
                TxError::Retry(why) if attempt < MAX_ATTEMPTS => {
                    tracing::trace!(attempt, why, what, "retrying a transaction");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                TxError::Retry(why) => {
                    return Err(anyhow::anyhow!(
                        "gave up on a transaction to {what} after {attempt} attempts ({why})"
                    )
                    .into());
                }
                TxError::Db(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("failed to {what}"))
                        .into());
                }
                TxError::Other(e) => return Err(e.context(format!("failed to {what}")).into()),
            }
        }
    }

    async fn product_in<E>(
        &self,
        s: &mut ClientSession,
        sku: &Sku,
    ) -> TxResult<Option<Product>, E> {
        match self
            .products
            .find_one(doc! {"sku": sku.as_str()})
            .session(&mut *s)
            .await?
        {
            Some(d) => Ok(Some(Product::try_from(d)?)),
            None => Ok(None),
        }
    }

    async fn levels_in<E>(&self, s: &mut ClientSession, sku: &Sku) -> TxResult<Vec<StockLevel>, E> {
        let cursor = self
            .levels
            .find(doc! {"sku": sku.as_str()})
            .sort(doc! {"warehouse": 1})
            .session(&mut *s)
            .await?;
        let docs = collect(cursor, s).await?;
        Ok(docs
            .into_iter()
            .map(StockLevel::try_from)
            .collect::<anyhow::Result<_>>()?)
    }

    async fn insert_movement<E>(&self, s: &mut ClientSession, m: &Movement) -> TxResult<(), E> {
        self.movements
            .insert_one(MovementDoc::from(m))
            .session(&mut *s)
            .await?;
        Ok(())
    }

    async fn emit<E>(&self, s: &mut ClientSession, e: &EventEnvelope) -> TxResult<(), E> {
        let now = agora_kernel::db::epoch_ms(Utc::now());
        let d = OutboxDoc {
            id: e.id.to_string(),
            event_type: e.event_type.clone(),
            envelope: serde_json::to_string(e).context("failed to serialise an event")?,
            created_at: now,
            available_at: now,
            attempts: 0,
            published_at: None,
            last_error: None,
            dead_at: None,
        };
        self.outbox.insert_one(d).session(&mut *s).await?;
        Ok(())
    }

    /// `$inc` a level by the deltas, guarded so on hand and reserved stay
    /// within bounds; `None` when the guard refused.
    async fn shift_level<E>(
        &self,
        s: &mut ClientSession,
        shift: &Shift,
    ) -> TxResult<Option<StockLevel>, E> {
        let (d_on_hand, d_reserved) = (shift.on_hand, shift.reserved);
        let d_available = d_on_hand - d_reserved;
        let mut filter = doc! {"sku": shift.sku.as_str(), "warehouse": shift.warehouse.as_str()};
        if d_available < 0 {
            filter.insert("available", doc! {"$gte": -d_available});
        }
        if d_reserved < 0 {
            filter.insert("reserved", doc! {"$gte": -d_reserved});
        }
        if d_on_hand < 0 {
            filter.insert("on_hand", doc! {"$gte": -d_on_hand});
        }
        let updated = self
            .levels
            .find_one_and_update(filter, doc! {"$inc": {"on_hand": d_on_hand, "reserved": d_reserved, "available": d_available}})
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await?;
        Ok(updated.map(StockLevel::try_from).transpose()?)
    }

    async fn warehouse_exists<E>(
        &self,
        s: &mut ClientSession,
        code: &WarehouseCode,
    ) -> TxResult<bool, E> {
        Ok(self
            .warehouses
            .find_one(doc! {"code": code.as_str()})
            .session(&mut *s)
            .await?
            .is_some())
    }

    async fn reservation_in<E>(
        &self,
        s: &mut ClientSession,
        id: ReservationId,
    ) -> TxResult<Option<Reservation>, E> {
        match self
            .reservations
            .find_one(doc! {"_id": id.0.to_string()})
            .session(&mut *s)
            .await?
        {
            Some(d) => Ok(Some(Reservation::try_from(d)?)),
            None => Ok(None),
        }
    }

    async fn receive_in(
        &self,
        s: &mut ClientSession,
        r: &Receipt,
        meta: &ChangeMeta,
    ) -> TxResult<Movement, StockError> {
        let product = self.product_in(s, &r.sku).await?;
        let known = self.warehouse_exists(s, &r.warehouse).await?;
        let shift = stock::receive(r, product.as_ref(), known).map_err(TxError::Domain)?;
        let level = self.add_on_hand(s, &shift).await?;
        let m = shift.movement(&level, meta);
        self.insert_movement(s, &m).await?;
        Ok(m)
    }

    async fn adjust_in(
        &self,
        s: &mut ClientSession,
        a: &Adjustment,
        meta: &ChangeMeta,
    ) -> TxResult<Movement, StockError> {
        let product = self.product_in(s, &a.sku).await?;
        let known = self.warehouse_exists(s, &a.warehouse).await?;
        let levels = self.levels_in(s, &a.sku).await?;
        let write =
            stock::adjust(a, product.as_ref(), known, &levels, meta).map_err(TxError::Domain)?;
        let level = if write.shift.on_hand > 0 {
            self.add_on_hand(s, &write.shift).await?
        } else {
            self.shift_level(s, &write.shift)
                .await?
                .ok_or(TxError::Retry("stock changed during an adjustment"))?
        };
        let m = write.shift.movement(&level, meta);
        self.insert_movement(s, &m).await?;
        if let Some(e) = &write.event {
            self.emit(s, e).await?;
        }
        Ok(m)
    }

    /// Add a shift's (positive) on-hand delta, creating the level at the
    /// first receipt; a concurrent first insert of the same level retries.
    async fn add_on_hand<E>(
        &self,
        s: &mut ClientSession,
        shift: &Shift,
    ) -> TxResult<StockLevel, E> {
        let q = shift.on_hand;
        let level = self
            .levels
            .find_one_and_update(
                doc! {"sku": shift.sku.as_str(), "warehouse": shift.warehouse.as_str()},
                doc! {"$inc": {"on_hand": q, "available": q}, "$setOnInsert": {"reserved": 0_i64}},
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await
            .map_err(retry_if_duplicate(
                "concurrent first insert of a stock level",
            ))?
            .context("an upsert returned no document")?;
        Ok(StockLevel::try_from(level)?)
    }

    async fn reserve_in(
        &self,
        s: &mut ClientSession,
        r: &NewReservation,
        expires_at: DateTime<Utc>,
        meta: &ChangeMeta,
    ) -> TxResult<ReserveOutcome, ReserveError> {
        if let Some(existing) = self.reservation_in(s, r.id).await? {
            return stock::replay(existing, r).map_err(TxError::Domain);
        }
        let skus: Vec<&str> = r.lines.iter().map(|l| l.sku.as_str()).collect();
        let cursor = self
            .products
            .find(doc! {"sku": {"$in": skus}})
            .session(&mut *s)
            .await?;
        let mut found: BTreeMap<String, ProductDoc> = collect(cursor, s)
            .await?
            .into_iter()
            .map(|p| (p.sku.clone(), p))
            .collect();
        let mut products = Vec::with_capacity(r.lines.len());
        let mut levels = Vec::with_capacity(r.lines.len());
        for line in &r.lines {
            products.push(
                found
                    .remove(line.sku.as_str())
                    .map(Product::try_from)
                    .transpose()?,
            );
            levels.push(self.levels_in(s, &line.sku).await?);
        }
        let write =
            stock::hold(r, &products, &levels, expires_at, meta).map_err(TxError::Domain)?;
        self.apply_shifts(s, &write.shifts, meta).await?;
        self.reservations
            .insert_one(ReservationDoc::from(&write.reservation))
            .session(&mut *s)
            .await
            .map_err(retry_if_duplicate(
                "concurrent reservation with the same id",
            ))?;
        for e in &write.events {
            self.emit(s, e).await?;
        }
        Ok(ReserveOutcome {
            reservation: write.reservation,
            created: true,
        })
    }

    async fn transition_in(
        &self,
        s: &mut ClientSession,
        id: ReservationId,
        t: Transition,
        meta: &ChangeMeta,
    ) -> TxResult<Reservation, ReservationError> {
        let current = self
            .reservation_in(s, id)
            .await?
            .ok_or(TxError::Domain(ReservationError::NotFound(id)))?;
        let Some(write) = t.decide(&current, meta).map_err(TxError::Domain)? else {
            return Ok(current);
        };
        self.apply_shifts(s, &write.shifts, meta).await?;
        let updated = write.reservation;
        let result = self
            .reservations
            .update_one(
                doc! {"_id": id.0.to_string(), "status": current.status.as_str()},
                doc! {"$set": {
                    "status": updated.status.as_str(),
                    "expires_at": updated.expires_at.map(to_bson_time),
                    "updated_at": to_bson_time(updated.updated_at),
                }},
            )
            .session(&mut *s)
            .await?;
        if result.modified_count != 1 {
            return Err(TxError::Retry(
                "the reservation changed during a transition",
            ));
        }
        for e in &write.events {
            self.emit(s, e).await?;
        }
        Ok(updated)
    }

    /// Apply the domain's shifts, each with its movement; a guard that no
    /// longer holds (another process moved the level) retries the transaction.
    async fn apply_shifts<E>(
        &self,
        s: &mut ClientSession,
        shifts: &[Shift],
        meta: &ChangeMeta,
    ) -> TxResult<(), E> {
        for shift in shifts {
            let level = self
                .shift_level(s, shift)
                .await?
                .ok_or(TxError::Retry("stock changed during the transaction"))?;
            self.insert_movement(s, &shift.movement(&level, meta))
                .await?;
        }
        Ok(())
    }
}

/// Commit, retrying while the outcome is unknown.
async fn commit<E>(s: &mut ClientSession) -> TxResult<(), E> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match s.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e) if e.contains_label("UnknownTransactionCommitResult") && attempts < 5 => {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// 1 ms doubling to 64 ms, with full jitter.
fn backoff(attempt: u32) -> Duration {
    let cap = 1u64 << attempt.min(6);
    Duration::from_micros(fastrand::u64(0..=cap * 1000))
}

#[async_trait]
impl InventoryStore for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    #[tracing::instrument(skip_all, fields(sku = %p.sku))]
    async fn create_product(
        &self,
        p: &NewProduct,
        at: DateTime<Utc>,
    ) -> Result<Product, CatalogueError> {
        let d = ProductDoc {
            sku: p.sku.as_str().to_owned(),
            name: p.name.as_str().to_owned(),
            description: p.description.as_ref().map(|d| d.as_str().to_owned()),
            price_minor: p.price.minor(),
            currency: p.price.currency().code().to_owned(),
            active: true,
            low_stock_threshold: p.low_stock_threshold.get(),
            created_at: to_bson_time(at),
            updated_at: to_bson_time(at),
        };
        match self.products.insert_one(&d).await {
            Ok(_) => Ok(Product::try_from(d)?),
            Err(e) if is_duplicate_key(&e) => Err(CatalogueError::DuplicateSku(p.sku.clone())),
            Err(e) => Err(anyhow::Error::new(e)
                .context("failed to insert a product")
                .into()),
        }
    }

    async fn product(&self, sku: &Sku) -> anyhow::Result<Option<Product>> {
        self.products
            .find_one(doc! {"sku": sku.as_str()})
            .await
            .context("failed to read a product")?
            .map(Product::try_from)
            .transpose()
    }

    async fn products(
        &self,
        after: Option<&Sku>,
        limit: u32,
        include_inactive: bool,
    ) -> anyhow::Result<Vec<Product>> {
        let mut filter = doc! {"sku": {"$gt": after.map_or("", Sku::as_str)}};
        if !include_inactive {
            filter.insert("active", true);
        }
        let find = self
            .products
            .find(filter)
            .sort(doc! {"sku": 1})
            .limit(i64::from(limit));
        let docs = find_all(find, "failed to list products").await?;
        docs.into_iter().map(Product::try_from).collect()
    }

    #[tracing::instrument(skip_all, fields(sku = %sku))]
    async fn update_product(
        &self,
        sku: &Sku,
        patch: &ProductPatch,
        at: DateTime<Utc>,
    ) -> Result<Product, CatalogueError> {
        let mut set = doc! {"updated_at": to_bson_time(at)};
        if let Some(n) = &patch.name {
            set.insert("name", n.as_str());
        }
        if let Some(d) = &patch.description {
            set.insert("description", d.as_ref().map(|d| d.as_str()));
        }
        if let Some(p) = patch.price {
            set.insert("price_minor", p.minor());
            set.insert("currency", p.currency().code());
        }
        if let Some(t) = patch.low_stock_threshold {
            set.insert("low_stock_threshold", t.get());
        }
        if let Some(active) = patch.active {
            set.insert("active", active);
        }
        let updated = self
            .products
            .find_one_and_update(doc! {"sku": sku.as_str()}, doc! {"$set": set})
            .return_document(ReturnDocument::After)
            .await
            .context("failed to update a product")?
            .ok_or_else(|| CatalogueError::NotFound(sku.clone()))?;
        Ok(Product::try_from(updated)?)
    }

    #[tracing::instrument(skip_all, fields(code = %w.code))]
    async fn create_warehouse(
        &self,
        w: &NewWarehouse,
        at: DateTime<Utc>,
    ) -> Result<Warehouse, WarehouseError> {
        let d = WarehouseDoc {
            code: w.code.as_str().to_owned(),
            name: w.name.as_str().to_owned(),
            created_at: to_bson_time(at),
        };
        match self.warehouses.insert_one(&d).await {
            Ok(_) => Ok(Warehouse {
                code: w.code.clone(),
                name: d.name,
                created_at: at,
            }),
            Err(e) if is_duplicate_key(&e) => Err(WarehouseError::Duplicate(w.code.clone())),
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
        let find = self
            .warehouses
            .find(doc! {"code": {"$gt": after.map_or("", WarehouseCode::as_str)}})
            .sort(doc! {"code": 1})
            .limit(i64::from(limit));
        let docs = find_all(find, "failed to list warehouses").await?;
        docs.into_iter()
            .map(|d| {
                Ok(Warehouse {
                    code: WarehouseCode::parse(&d.code)
                        .context("a stored warehouse code does not parse")?,
                    name: d.name,
                    created_at: from_bson_time(d.created_at),
                })
            })
            .collect()
    }

    #[tracing::instrument(skip_all, fields(sku = %r.sku, warehouse = %r.warehouse))]
    async fn receive(&self, r: &Receipt, meta: &ChangeMeta) -> Result<Movement, StockError> {
        let _queue = self.stripes.lock([&r.sku]).await;
        self.in_transaction("receive stock", |mut s| {
            Box::pin(async move {
                let out = self.receive_in(&mut s, r, meta).await;
                (s, out)
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(sku = %a.sku, warehouse = %a.warehouse))]
    async fn adjust(&self, a: &Adjustment, meta: &ChangeMeta) -> Result<Movement, StockError> {
        let _queue = self.stripes.lock([&a.sku]).await;
        self.in_transaction("adjust stock", |mut s| {
            Box::pin(async move {
                let out = self.adjust_in(&mut s, a, meta).await;
                (s, out)
            })
        })
        .await
    }

    async fn stock(&self, sku: &Sku) -> anyhow::Result<Option<StockSummary>> {
        if self.product(sku).await?.is_none() {
            return Ok(None);
        }
        let find = self
            .levels
            .find(doc! {"sku": sku.as_str()})
            .sort(doc! {"warehouse": 1});
        let docs = find_all(find, "failed to read stock levels").await?;
        let warehouses = docs
            .into_iter()
            .map(StockLevel::try_from)
            .collect::<anyhow::Result<_>>()?;
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
        let before = before.map_or_else(|| "~".to_owned(), |u| u.to_string());
        let find = self
            .movements
            .find(doc! {"sku": sku.as_str(), "_id": {"$lt": before}})
            .sort(doc! {"_id": -1})
            .limit(i64::from(limit));
        let docs = find_all(find, "failed to list movements").await?;
        docs.into_iter().map(Movement::try_from).collect()
    }

    #[tracing::instrument(skip_all, fields(reservation_id = %r.id))]
    async fn reserve(
        &self,
        r: &NewReservation,
        expires_at: DateTime<Utc>,
        meta: &ChangeMeta,
    ) -> Result<ReserveOutcome, ReserveError> {
        let _queue = self.stripes.lock(r.lines.iter().map(|l| &l.sku)).await;
        self.in_transaction("reserve stock", |mut s| {
            Box::pin(async move {
                let out = self.reserve_in(&mut s, r, expires_at, meta).await;
                (s, out)
            })
        })
        .await
    }

    async fn reservation(&self, id: ReservationId) -> anyhow::Result<Option<Reservation>> {
        self.reservations
            .find_one(doc! {"_id": id.0.to_string()})
            .await
            .context("failed to read a reservation")?
            .map(Reservation::try_from)
            .transpose()
    }

    #[tracing::instrument(skip_all, fields(reservation_id = %id, transition = ?t))]
    async fn transition(
        &self,
        id: ReservationId,
        t: Transition,
        meta: &ChangeMeta,
    ) -> Result<Reservation, ReservationError> {
        // The skus to queue on come from a read outside the transaction; the
        // transaction reads the reservation again and decides on that.
        let skus: Vec<Sku> = self
            .reservation(id)
            .await?
            .map(|r| r.lines.into_iter().map(|l| l.sku).collect())
            .unwrap_or_default();
        let _queue = self.stripes.lock(skus.iter()).await;
        self.in_transaction("change a reservation", |mut s| {
            Box::pin(async move {
                let out = self.transition_in(&mut s, id, t, meta).await;
                (s, out)
            })
        })
        .await
    }

    async fn expired(&self, now: DateTime<Utc>, limit: u32) -> anyhow::Result<Vec<ReservationId>> {
        let find = self
            .reservations
            .find(doc! {"status": "held", "expires_at": {"$lte": to_bson_time(now)}})
            .sort(doc! {"expires_at": 1})
            .limit(i64::from(limit));
        let docs = find_all(find, "failed to list expired reservations").await?;
        docs.into_iter()
            .map(|d| {
                Uuid::parse_str(&d.id)
                    .map(ReservationId)
                    .context("a stored reservation id does not parse")
            })
            .collect()
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .context("MongoDB did not answer a ping")?;
        Ok(())
    }
}

/// The module's outbox in MongoDB, claimed head of line one row at a time:
/// the oldest pending row, only while it is due, by a `findAndModify`
/// guarded on the `available_at` just read — so a second relay finds the
/// head claimed and waits instead of publishing later rows first.
pub struct MongoOutbox {
    coll: Collection<OutboxDoc>,
}

fn pending() -> Document {
    doc! {"published_at": bson::Bson::Null, "dead_at": bson::Bson::Null}
}

fn ids(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

#[async_trait]
impl OutboxStore for MongoOutbox {
    async fn claim(
        &self,
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<OutboxMessage>> {
        let now_ms = agora_kernel::db::epoch_ms(now);
        let until = now_ms + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let mut out = Vec::new();
        for _ in 0..limit {
            let head = self
                .coll
                .find_one(pending())
                .sort(doc! {"_id": 1})
                .await
                .context("failed to read the outbox")?;
            let Some(head) = head.filter(|h| h.available_at <= now_ms) else {
                break;
            };
            let mut guard = pending();
            guard.insert("_id", &head.id);
            guard.insert("available_at", head.available_at);
            let claimed = self
                .coll
                .find_one_and_update(
                    guard,
                    doc! {"$set": {"available_at": until}, "$inc": {"attempts": 1_i64}},
                )
                .return_document(ReturnDocument::After)
                .await
                .context("failed to claim an outbox row")?;
            let Some(d) = claimed else { break };
            let envelope: EventEnvelope = serde_json::from_str(&d.envelope)
                .context("an outbox row holds an unreadable envelope")?;
            out.push(OutboxMessage {
                envelope,
                attempts: u32::try_from(d.attempts.max(0)).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }

    async fn mark_published(&self, done: &[Uuid], now: DateTime<Utc>) -> anyhow::Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        self.coll
            .update_many(
                doc! {"_id": {"$in": ids(done)}},
                doc! {"$set": {"published_at": agora_kernel::db::epoch_ms(now), "last_error": bson::Bson::Null}},
            )
            .await
            .context("failed to mark outbox rows published")?;
        Ok(())
    }

    async fn mark_failed(
        &self,
        id: Uuid,
        error: &str,
        retry_at: DateTime<Utc>,
        deferred: &[Uuid],
    ) -> anyhow::Result<()> {
        let error: String = error.chars().take(2000).collect();
        let at = agora_kernel::db::epoch_ms(retry_at);
        self.coll
            .update_one(
                doc! {"_id": id.to_string()},
                doc! {"$set": {"available_at": at, "last_error": error}},
            )
            .await
            .context("failed to record an outbox failure")?;
        if !deferred.is_empty() {
            self.coll
                .update_many(
                    doc! {"_id": {"$in": ids(deferred)}, "published_at": bson::Bson::Null},
                    doc! {"$set": {"available_at": at}, "$inc": {"attempts": -1_i64}},
                )
                .await
                .context("failed to defer outbox rows")?;
        }
        Ok(())
    }

    async fn mark_dead(&self, id: Uuid, error: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
        let error: String = error.chars().take(2000).collect();
        self.coll
            .update_one(
                doc! {"_id": id.to_string()},
                doc! {"$set": {"dead_at": agora_kernel::db::epoch_ms(now), "last_error": error}},
            )
            .await
            .context("failed to dead-letter an outbox row")?;
        Ok(())
    }

    async fn backlog(&self) -> anyhow::Result<u64> {
        self.coll
            .count_documents(pending())
            .await
            .context("failed to count the outbox backlog")
    }

    async fn purge_published(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
        let done = self
            .coll
            .delete_many(doc! {"published_at": {"$lt": agora_kernel::db::epoch_ms(cutoff)}})
            .await
            .context("failed to purge published outbox rows")?;
        Ok(done.deleted_count)
    }
}
