//! The order store on SQLite and PostgreSQL: the same tables and the same
//! statements' parts (numbered parameters, epoch-millisecond times).
//! PostgreSQL runs on sqlx, and each write is one statement (a data-modifying
//! CTE: the guarded change, its history row and its events), atomic without
//! `BEGIN`/`COMMIT` and one round trip; SQLite runs the same parts as the
//! statements of one transaction, in place on `agora_kernel::sqlite`'s single
//! writer, where a statement costs no round trip. PostgreSQL instances claim
//! due orders with `SKIP LOCKED` so they do not wait on each other.
//! A change is one version-guarded `UPDATE` (no read first): the caller's copy
//! of the order is the stored one exactly when the version still matches.

use std::sync::Arc;

use agora_kernel::db::{SqlDatabase, epoch_ms, from_epoch_ms};
use agora_kernel::{Currency, EventEnvelope, Money};
use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::models::{Order, OrderFilter, OrderId, OrderStatus, PaymentRef, Transition};
use crate::domain::ports::{Change, Lease, OrderStore, StoreError};

/// The module's own migrations, run after the kernel's. Versions start at 100.
///
/// # Errors
/// A failed migration.
pub async fn migrate(db: &SqlDatabase) -> anyhow::Result<()> {
    db.migrate(
        sqlx::migrate!("../../migrations/order/sqlite"),
        sqlx::migrate!("../../migrations/order/postgres"),
    )
    .await
}

/// The store for a migrated database.
pub fn store_for(db: &SqlDatabase) -> Arc<dyn OrderStore> {
    match db {
        SqlDatabase::Sqlite(db) => Arc::new(sqlite::Store::new(db.clone())),
        SqlDatabase::Postgres(pool) => Arc::new(postgres::Store::new(pool.clone())),
    }
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: String,
    customer_id: String,
    customer_email: Option<String>,
    status: String,
    items: String,
    total_minor: i64,
    currency: String,
    shipping_address: String,
    payment_method: String,
    payment_id: Option<String>,
    failure_reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    version: i64,
    attempts: i64,
    next_attempt_at: Option<i64>,
    payment_deadline: i64,
    correlation_id: Option<String>,
    idempotency_key: Option<String>,
}

/// The order columns, as a literal so SQLite's statements are built at compile
/// time (`concat!`) rather than formatted on every call.
macro_rules! columns {
    () => {
        "id, customer_id, customer_email, status, items, total_minor, currency, shipping_address, \
         payment_method, payment_id, failure_reason, created_at, updated_at, version, attempts, next_attempt_at, \
         payment_deadline, correlation_id, idempotency_key"
    };
}

const COLUMNS: &str = columns!();

impl OrderRow {
    fn into_order(self) -> anyhow::Result<Order> {
        Ok(Order {
            id: OrderId::parse(&self.id).context("a stored order id is not a UUID")?,
            customer_id: self.customer_id,
            customer_email: self.customer_email,
            correlation_id: self.correlation_id.unwrap_or_default(),
            idempotency_key: self.idempotency_key,
            status: OrderStatus::parse(&self.status)
                .with_context(|| format!("unknown stored status {}", self.status))?,
            items: serde_json::from_str(&self.items)
                .context("stored order items are unreadable")?,
            total: Money::new(
                self.total_minor,
                Currency::parse(&self.currency).context("stored currency")?,
            ),
            shipping_address: serde_json::from_str(&self.shipping_address)
                .context("stored address is unreadable")?,
            payment_method: self.payment_method,
            payment_id: self.payment_id.map(PaymentRef::new),
            failure_reason: self.failure_reason,
            created_at: from_epoch_ms(self.created_at),
            updated_at: from_epoch_ms(self.updated_at),
            version: self.version,
            attempts: self.attempts.max(0) as u32,
            next_attempt_at: self.next_attempt_at.map(from_epoch_ms),
            payment_deadline: from_epoch_ms(self.payment_deadline),
        })
    }
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    from_status: Option<String>,
    to_status: String,
    at: i64,
    actor: String,
    reason: Option<String>,
    correlation_id: String,
}

impl HistoryRow {
    fn into_transition(self) -> Result<Transition, StoreError> {
        Ok(Transition {
            from: self.from_status.as_deref().map(parse_status).transpose()?,
            to: parse_status(&self.to_status)?,
            at: from_epoch_ms(self.at),
            actor: self.actor,
            reason: self.reason,
            correlation_id: self.correlation_id,
        })
    }
}

fn parse_status(s: &str) -> Result<OrderStatus, StoreError> {
    OrderStatus::parse(s)
        .ok_or_else(|| StoreError::Unexpected(anyhow::anyhow!("unknown stored status {s}")))
}

/// Apply `change` to `order` in memory (the store then writes the result).
fn changed(order: &Order, change: &Change, now: DateTime<Utc>) -> Order {
    let mut next = order.clone();
    if let Some((status, _)) = &change.status {
        next.status = *status;
    }
    if let Some(p) = &change.payment_id {
        next.payment_id = Some(p.clone());
    }
    if let Some(r) = &change.failure_reason {
        next.failure_reason = Some(r.clone());
    }
    if let Some(a) = change.attempts {
        next.attempts = a;
    }
    if let Some(n) = change.next_attempt_at {
        next.next_attempt_at = n;
    }
    if let Some(addr) = &change.shipping_address {
        next.shipping_address = addr.clone();
    }
    next.version = order.version + 1;
    // Stored in milliseconds: answer what a later read returns.
    next.updated_at = from_epoch_ms(epoch_ms(now));
    next
}

macro_rules! sql_order_store {
    ($module:ident, $db:ty, $pool:ty, lock_skip = $lock_skip:literal) => {
        pub mod $module {
            use super::*;

            /// The order store on this backend.
            #[derive(Clone)]
            pub struct Store {
                pool: $pool,
            }

            impl Store {
                pub fn new(pool: $pool) -> Self {
                    Self { pool }
                }
            }

            /// `insert` in one statement: the order, its first history row and
            /// its events (a unique violation fails the whole statement).
            static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                format!(
                    "WITH o AS (INSERT INTO orders ({COLUMNS}, lease_until, lease_owner) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
                     RETURNING id), \
                     h AS (INSERT INTO order_history (order_id, from_status, to_status, at, actor, reason, correlation_id) \
                     SELECT id, $22, $23, $24, $25, $26, $27 FROM o), \
                     e AS ({}) \
                     SELECT COUNT(*) FROM o",
                    agora_kernel::outbox::$module::insert_from("o", 28, 29)
                )
            });

            /// `apply` in one statement: the version-guarded update, and only
            /// when it matched, the history row (if the status changes) and the
            /// events; then whether it matched and whether the order exists.
            static APPLY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                format!(
                    "WITH u AS (UPDATE orders SET status = $1, payment_id = $2, failure_reason = $3, attempts = $4, \
                     next_attempt_at = $5, shipping_address = $6, version = $7, updated_at = $8, \
                     lease_until = CASE WHEN $12 THEN 0 ELSE lease_until END \
                     WHERE id = $9 AND version = $10 AND ($11::text IS NULL OR lease_owner = $11) RETURNING id), \
                     h AS (INSERT INTO order_history (order_id, from_status, to_status, at, actor, reason, correlation_id) \
                     SELECT u.id, v.f, v.t, v.at, v.actor, v.reason, v.corr FROM u, (VALUES \
                     (1, $23::text, $24::text, $25::bigint, $26::text, $27::text, $28::text), \
                     (2, $13::text, $14::text, $15::bigint, $16::text, $17::text, $18::text)) \
                     AS v(n, f, t, at, actor, reason, corr) WHERE v.t IS NOT NULL ORDER BY v.n), \
                     e AS ({}) \
                     SELECT (SELECT COUNT(*) FROM u), EXISTS (SELECT 1 FROM orders WHERE id = $9)",
                    agora_kernel::outbox::$module::insert_from("u", 19, 20)
                )
            });

            #[async_trait]
            impl OrderStore for Store {
                async fn insert(&self, o: &Order, t: &Transition, events: &[EventEnvelope], lease: &Lease) -> Result<(), StoreError> {
                    let batch = agora_kernel::outbox::$module::Batch::of(events)?;
                    sqlx::query(&INSERT)
                        .bind(o.id.to_string())
                        .bind(&o.customer_id)
                        .bind(&o.customer_email)
                        .bind(o.status.as_str())
                        .bind(serde_json::to_string(&o.items).context("items")?)
                        .bind(o.total.minor())
                        .bind(o.total.currency().to_string())
                        .bind(serde_json::to_string(&o.shipping_address).context("address")?)
                        .bind(&o.payment_method)
                        .bind(o.payment_id.as_ref().map(PaymentRef::as_str))
                        .bind(&o.failure_reason)
                        .bind(epoch_ms(o.created_at))
                        .bind(epoch_ms(o.updated_at))
                        .bind(o.version)
                        .bind(i64::from(o.attempts))
                        .bind(o.next_attempt_at.map(epoch_ms))
                        .bind(epoch_ms(o.payment_deadline))
                        .bind(&o.correlation_id)
                        .bind(&o.idempotency_key)
                        .bind(epoch_ms(lease.until))
                        .bind(&lease.owner)
                        .bind(t.from.map(|s| s.as_str()))
                        .bind(t.to.as_str())
                        .bind(epoch_ms(t.at))
                        .bind(&t.actor)
                        .bind(&t.reason)
                        .bind(&t.correlation_id)
                        .bind(epoch_ms(Utc::now()))
                        .bind(batch.ids)
                        .bind(batch.types)
                        .bind(batch.envelopes)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| match e.as_database_error() {
                            // The order's own keys: its id, or the customer's idempotency key.
                            Some(db) if db.is_unique_violation() && db.constraint().is_some_and(|c| c.starts_with("orders")) => {
                                StoreError::DuplicateKey
                            }
                            _ => StoreError::Unexpected(anyhow::Error::new(e).context("failed to insert an order")),
                        })?;
                    Ok(())
                }

                async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
                    let row: Option<OrderRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await
                        .context("failed to read an order")?;
                    Ok(row.map(OrderRow::into_order).transpose()?)
                }

                async fn find_by_key(&self, customer_id: &str, key: &str) -> Result<Option<Order>, StoreError> {
                    let row: Option<OrderRow> = sqlx::query_as(&format!(
                        "SELECT {COLUMNS} FROM orders WHERE customer_id = $1 AND idempotency_key = $2"
                    ))
                    .bind(customer_id)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await
                    .context("failed to find an order by idempotency key")?;
                    Ok(row.map(OrderRow::into_order).transpose()?)
                }

                async fn list(&self, f: &OrderFilter, before: Option<OrderId>, limit: u32) -> Result<Vec<Order>, StoreError> {
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM orders WHERE 1 = 1"));
                    if let Some(c) = &f.customer_id {
                        q.push(" AND customer_id = ").push_bind(c.clone());
                    }
                    if let Some(s) = f.status {
                        q.push(" AND status = ").push_bind(s.as_str());
                    }
                    if let Some(t) = f.created_after {
                        q.push(" AND created_at > ").push_bind(epoch_ms(t));
                    }
                    if let Some(t) = f.created_before {
                        q.push(" AND created_at < ").push_bind(epoch_ms(t));
                    }
                    if let Some(b) = before {
                        q.push(" AND id < ").push_bind(b.to_string());
                    }
                    q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
                    let rows: Vec<OrderRow> = q.build_query_as().fetch_all(&self.pool).await.context("failed to list orders")?;
                    rows.into_iter().map(|r| r.into_order().map_err(StoreError::from)).collect()
                }

                async fn apply(&self, current: &Order, change: &Change) -> Result<Order, StoreError> {
                    let id = current.id;
                    let now = Utc::now();
                    let next = changed(current, change, now);
                    let t = change.status.as_ref().map(|(_, t)| t);
                    let e = change.earlier.as_ref();
                    let batch = agora_kernel::outbox::$module::Batch::of(&change.events)?;
                    let (matched, exists): (i64, bool) = sqlx::query_as(&APPLY)
                        .bind(next.status.as_str())
                        .bind(next.payment_id.as_ref().map(PaymentRef::as_str))
                        .bind(&next.failure_reason)
                        .bind(i64::from(next.attempts))
                        .bind(next.next_attempt_at.map(epoch_ms))
                        .bind(serde_json::to_string(&next.shipping_address).context("address")?)
                        .bind(next.version)
                        .bind(epoch_ms(next.updated_at))
                        .bind(id.to_string())
                        .bind(current.version)
                        .bind(&change.lease_owner)
                        .bind(change.release_lease)
                        .bind(t.and_then(|t| t.from).map(|s| s.as_str()))
                        .bind(t.map(|t| t.to.as_str()))
                        .bind(t.map(|t| epoch_ms(t.at)))
                        .bind(t.map(|t| t.actor.as_str()))
                        .bind(t.and_then(|t| t.reason.as_deref()))
                        .bind(t.map(|t| t.correlation_id.as_str()))
                        .bind(epoch_ms(now))
                        .bind(batch.ids)
                        .bind(batch.types)
                        .bind(batch.envelopes)
                        .bind(e.and_then(|t| t.from).map(|s| s.as_str()))
                        .bind(e.map(|t| t.to.as_str()))
                        .bind(e.map(|t| epoch_ms(t.at)))
                        .bind(e.map(|t| t.actor.as_str()))
                        .bind(e.and_then(|t| t.reason.as_deref()))
                        .bind(e.map(|t| t.correlation_id.as_str()))
                        .fetch_one(&self.pool)
                        .await
                        .context("failed to update an order")?;
                    match (matched, exists) {
                        (1, _) => Ok(next),
                        (_, false) => Err(StoreError::NotFound),
                        _ => Err(StoreError::Conflict),
                    }
                }

                async fn history(&self, id: OrderId) -> Result<Vec<Transition>, StoreError> {
                    let rows: Vec<HistoryRow> = sqlx::query_as(
                        "SELECT from_status, to_status, at, actor, reason, correlation_id FROM order_history \
                         WHERE order_id = $1 ORDER BY seq",
                    )
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await
                    .context("failed to read order history")?;
                    rows.into_iter().map(HistoryRow::into_transition).collect()
                }

                async fn try_lease(&self, id: OrderId, now: DateTime<Utc>, lease: &Lease) -> Result<bool, StoreError> {
                    let done = sqlx::query("UPDATE orders SET lease_until = $1, lease_owner = $2 WHERE id = $3 AND lease_until < $4")
                        .bind(epoch_ms(lease.until))
                        .bind(&lease.owner)
                        .bind(id.to_string())
                        .bind(epoch_ms(now))
                        .execute(&self.pool)
                        .await
                        .context("failed to lease an order")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn renew_lease(&self, id: OrderId, lease: &Lease) -> Result<bool, StoreError> {
                    let done = sqlx::query("UPDATE orders SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND lease_until > 0")
                        .bind(epoch_ms(lease.until))
                        .bind(id.to_string())
                        .bind(&lease.owner)
                        .execute(&self.pool)
                        .await
                        .context("failed to renew an order lease")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn release_lease(&self, id: OrderId, owner: &str) -> Result<(), StoreError> {
                    sqlx::query("UPDATE orders SET lease_until = 0 WHERE id = $1 AND lease_owner = $2")
                        .bind(id.to_string())
                        .bind(owner)
                        .execute(&self.pool)
                        .await
                        .context("failed to release an order lease")?;
                    Ok(())
                }

                async fn claim_due(&self, now: DateTime<Utc>, lease: &Lease, limit: u32) -> Result<Vec<OrderId>, StoreError> {
                    let ids: Vec<(String,)> = sqlx::query_as(&format!(
                        "UPDATE orders SET lease_until = $1, lease_owner = $4 WHERE lease_until < $2 AND id IN (\
                         SELECT id FROM orders WHERE status IN ('pending', 'awaiting_payment') \
                         AND next_attempt_at <= $2 AND lease_until < $2 ORDER BY next_attempt_at LIMIT $3 {}) RETURNING id",
                        $lock_skip
                    ))
                    .bind(epoch_ms(lease.until))
                    .bind(epoch_ms(now))
                    .bind(i64::from(limit))
                    .bind(&lease.owner)
                    .fetch_all(&self.pool)
                    .await
                    .context("failed to claim due orders")?;
                    ids.into_iter()
                        .map(|(id,)| OrderId::parse(&id).map_err(|e| StoreError::Unexpected(anyhow::anyhow!(e))))
                        .collect()
                }

                async fn count_in_status(&self, status: OrderStatus) -> Result<i64, StoreError> {
                    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders WHERE status = $1")
                        .bind(status.as_str())
                        .fetch_one(&self.pool)
                        .await
                        .context("failed to count orders")?;
                    Ok(n)
                }
            }
        }
    };
}

/// The order store on SQLite ([`agora_kernel::sqlite::Sqlite`]): the same
/// statements as PostgreSQL's, each write one transaction run in place on the
/// single writer (which also serialises the claims: no `SKIP LOCKED` needed).
pub mod sqlite {
    use super::*;
    use agora_kernel::outbox::sqlite::enqueue_all;
    use agora_kernel::sqlite::{Sqlite, is_unique_violation, rusqlite};
    use rusqlite::OptionalExtension;

    /// The order store on SQLite.
    #[derive(Clone)]
    pub struct Store {
        db: Sqlite,
    }

    impl Store {
        pub fn new(db: Sqlite) -> Self {
            Self { db }
        }
    }

    fn order_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OrderRow> {
        Ok(OrderRow {
            id: r.get(0)?,
            customer_id: r.get(1)?,
            customer_email: r.get(2)?,
            status: r.get(3)?,
            items: r.get(4)?,
            total_minor: r.get(5)?,
            currency: r.get(6)?,
            shipping_address: r.get(7)?,
            payment_method: r.get(8)?,
            payment_id: r.get(9)?,
            failure_reason: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
            version: r.get(13)?,
            attempts: r.get(14)?,
            next_attempt_at: r.get(15)?,
            payment_deadline: r.get(16)?,
            correlation_id: r.get(17)?,
            idempotency_key: r.get(18)?,
        })
    }

    fn insert_history(
        tx: &rusqlite::Connection,
        id: OrderId,
        t: &Transition,
    ) -> anyhow::Result<()> {
        tx.prepare_cached(
            "INSERT INTO order_history (order_id, from_status, to_status, at, actor, reason, correlation_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(rusqlite::params![
            id.to_string(),
            t.from.map(|s| s.as_str()),
            t.to.as_str(),
            epoch_ms(t.at),
            t.actor,
            t.reason,
            t.correlation_id
        ])
        .context("failed to write order history")?;
        Ok(())
    }

    /// The database's own failures inside a write are unexpected ones.
    impl From<rusqlite::Error> for StoreError {
        fn from(e: rusqlite::Error) -> Self {
            StoreError::Unexpected(e.into())
        }
    }

    fn unexpected(e: rusqlite::Error, what: &'static str) -> StoreError {
        StoreError::Unexpected(anyhow::Error::new(e).context(what))
    }

    #[async_trait]
    impl OrderStore for Store {
        async fn insert(
            &self,
            o: &Order,
            t: &Transition,
            events: &[EventEnvelope],
            lease: &Lease,
        ) -> Result<(), StoreError> {
            let items = serde_json::to_string(&o.items).context("items")?;
            let address = serde_json::to_string(&o.shipping_address).context("address")?;
            let (o, t, events, lease) = (o.clone(), t.clone(), events.to_vec(), lease.clone());
            self.db
                .write(move |tx| {
                    let (o, t, events, lease) = (&o, &t, events.as_slice(), &lease);
                    tx.prepare_cached(concat!(
                        "INSERT INTO orders (",
                        columns!(),
                        ", lease_until, lease_owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
                         ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
                    ))
                    .and_then(|mut s| {
                        s.execute(rusqlite::params![
                            o.id.to_string(),
                            o.customer_id,
                            o.customer_email,
                            o.status.as_str(),
                            items,
                            o.total.minor(),
                            o.total.currency().to_string(),
                            address,
                            o.payment_method,
                            o.payment_id.as_ref().map(PaymentRef::as_str),
                            o.failure_reason,
                            epoch_ms(o.created_at),
                            epoch_ms(o.updated_at),
                            o.version,
                            i64::from(o.attempts),
                            o.next_attempt_at.map(epoch_ms),
                            epoch_ms(o.payment_deadline),
                            o.correlation_id,
                            o.idempotency_key,
                            epoch_ms(lease.until),
                            lease.owner
                        ])
                    })
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            StoreError::DuplicateKey
                        } else {
                            unexpected(e, "failed to insert an order")
                        }
                    })?;
                    insert_history(tx, o.id, t)?;
                    enqueue_all(tx, events)?;
                    Ok(())
                })
                .await
        }

        async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
            let row = self
                .db
                .read(|c| {
                    c.prepare_cached(concat!("SELECT ", columns!(), " FROM orders WHERE id = ?1"))?
                        .query_row([id.to_string()], order_row)
                        .optional()
                })
                .await
                .context("failed to read an order")?;
            Ok(row.map(OrderRow::into_order).transpose()?)
        }

        async fn find_by_key(
            &self,
            customer_id: &str,
            key: &str,
        ) -> Result<Option<Order>, StoreError> {
            let row = self
                .db
                .read(|c| {
                    c.prepare_cached(concat!(
                        "SELECT ",
                        columns!(),
                        " FROM orders WHERE customer_id = ?1 AND idempotency_key = ?2"
                    ))?
                    .query_row([customer_id, key], order_row)
                    .optional()
                })
                .await
                .context("failed to find an order by idempotency key")?;
            Ok(row.map(OrderRow::into_order).transpose()?)
        }

        async fn list(
            &self,
            f: &OrderFilter,
            before: Option<OrderId>,
            limit: u32,
        ) -> Result<Vec<Order>, StoreError> {
            let mut sql = format!("SELECT {COLUMNS} FROM orders WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
                args.push(v);
                sql.push_str(&format!(" AND {clause} ?{}", args.len()));
            };
            if let Some(c) = &f.customer_id {
                arg(&mut sql, "customer_id =", c.clone().into());
            }
            if let Some(s) = f.status {
                arg(&mut sql, "status =", s.as_str().to_string().into());
            }
            if let Some(t) = f.created_after {
                arg(&mut sql, "created_at >", epoch_ms(t).into());
            }
            if let Some(t) = f.created_before {
                arg(&mut sql, "created_at <", epoch_ms(t).into());
            }
            if let Some(b) = before {
                arg(&mut sql, "id <", b.to_string().into());
            }
            args.push(i64::from(limit).into());
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
            let rows = self
                .db
                .read(|c| {
                    c.prepare_cached(&sql)?
                        .query_map(rusqlite::params_from_iter(args.iter()), order_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .await
                .context("failed to list orders")?;
            rows.into_iter()
                .map(|r| r.into_order().map_err(StoreError::from))
                .collect()
        }

        async fn apply(&self, current: &Order, change: &Change) -> Result<Order, StoreError> {
            let id = current.id;
            let address = serde_json::to_string(
                change
                    .shipping_address
                    .as_ref()
                    .unwrap_or(&current.shipping_address),
            )
            .context("address")?;
            let (current, change) = (current.clone(), change.clone());
            self.db
                .write(move |tx| {
                    let (current, change) = (&current, &change);
                    // Stamped once the writer is ours, so `updated_at` follows commit order.
                    let next = changed(current, change, Utc::now());
                    let done = tx
                        .prepare_cached(
                            "UPDATE orders SET status = ?1, payment_id = ?2, failure_reason = ?3, attempts = ?4, \
                             next_attempt_at = ?5, shipping_address = ?6, version = ?7, updated_at = ?8, \
                             lease_until = CASE WHEN ?12 THEN 0 ELSE lease_until END \
                             WHERE id = ?9 AND version = ?10 AND (?11 IS NULL OR lease_owner = ?11)",
                        )?
                        .execute(rusqlite::params![
                            next.status.as_str(),
                            next.payment_id.as_ref().map(PaymentRef::as_str),
                            next.failure_reason,
                            i64::from(next.attempts),
                            next.next_attempt_at.map(epoch_ms),
                            address,
                            next.version,
                            epoch_ms(next.updated_at),
                            id.to_string(),
                            current.version,
                            change.lease_owner,
                            change.release_lease
                        ])
                        .map_err(|e| unexpected(e, "failed to update an order"))?;
                    if done != 1 {
                        // Only on this (rare) path: is it gone, or did it move on?
                        let n: i64 = tx
                            .prepare_cached("SELECT COUNT(*) FROM orders WHERE id = ?1")?
                            .query_row([id.to_string()], |r| r.get(0))
                            .map_err(|e| unexpected(e, "failed to read an order"))?;
                        return Err(if n == 0 { StoreError::NotFound } else { StoreError::Conflict });
                    }
                    for t in change.earlier.iter().chain(change.status.as_ref().map(|(_, t)| t)) {
                        insert_history(tx, id, t)?;
                    }
                    enqueue_all(tx, &change.events)?;
                    Ok(next)
                })
                .await
        }

        async fn history(&self, id: OrderId) -> Result<Vec<Transition>, StoreError> {
            let rows = self
                .db
                .read(|c| {
                    c.prepare_cached(
                        "SELECT from_status, to_status, at, actor, reason, correlation_id FROM order_history \
                         WHERE order_id = ?1 ORDER BY seq",
                    )?
                    .query_map([id.to_string()], |r| {
                        Ok(HistoryRow {
                            from_status: r.get(0)?,
                            to_status: r.get(1)?,
                            at: r.get(2)?,
                            actor: r.get(3)?,
                            reason: r.get(4)?,
                            correlation_id: r.get(5)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .await
                .context("failed to read order history")?;
            rows.into_iter().map(HistoryRow::into_transition).collect()
        }

        async fn try_lease(
            &self,
            id: OrderId,
            now: DateTime<Utc>,
            lease: &Lease,
        ) -> Result<bool, StoreError> {
            let lease = lease.clone();
            let n = self
                .db
                .write(move |tx| {
                    tx.prepare_cached("UPDATE orders SET lease_until = ?1, lease_owner = ?2 WHERE id = ?3 AND lease_until < ?4")?
                        .execute(rusqlite::params![epoch_ms(lease.until), lease.owner, id.to_string(), epoch_ms(now)])
                })
                .await
                .context("failed to lease an order")?;
            Ok(n == 1)
        }

        async fn renew_lease(&self, id: OrderId, lease: &Lease) -> Result<bool, StoreError> {
            let lease = lease.clone();
            let n = self
                .db
                .write(move |tx| {
                    tx.prepare_cached(
                        "UPDATE orders SET lease_until = ?1 WHERE id = ?2 AND lease_owner = ?3 AND lease_until > 0",
                    )?
                    .execute(rusqlite::params![epoch_ms(lease.until), id.to_string(), lease.owner])
                })
                .await
                .context("failed to renew an order lease")?;
            Ok(n == 1)
        }

        async fn release_lease(&self, id: OrderId, owner: &str) -> Result<(), StoreError> {
            let owner = owner.to_owned();
            self.db
                .write(move |tx| {
                    tx.prepare_cached(
                        "UPDATE orders SET lease_until = 0 WHERE id = ?1 AND lease_owner = ?2",
                    )?
                    .execute(rusqlite::params![id.to_string(), owner])
                })
                .await
                .context("failed to release an order lease")?;
            Ok(())
        }

        async fn claim_due(
            &self,
            now: DateTime<Utc>,
            lease: &Lease,
            limit: u32,
        ) -> Result<Vec<OrderId>, StoreError> {
            let lease = lease.clone();
            let ids = self
                .db
                .write(move |tx| {
                    tx.prepare_cached(
                        "UPDATE orders SET lease_until = ?1, lease_owner = ?4 WHERE lease_until < ?2 AND id IN (\
                         SELECT id FROM orders WHERE status IN ('pending', 'awaiting_payment') \
                         AND next_attempt_at <= ?2 AND lease_until < ?2 ORDER BY next_attempt_at LIMIT ?3) RETURNING id",
                    )?
                    .query_map(
                        rusqlite::params![epoch_ms(lease.until), epoch_ms(now), i64::from(limit), lease.owner],
                        |r| r.get::<_, String>(0),
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .await
                .context("failed to claim due orders")?;
            ids.into_iter()
                .map(|id| {
                    OrderId::parse(&id).map_err(|e| StoreError::Unexpected(anyhow::anyhow!(e)))
                })
                .collect()
        }

        async fn count_in_status(&self, status: OrderStatus) -> Result<i64, StoreError> {
            let n = self
                .db
                .read(|c| {
                    c.prepare_cached("SELECT COUNT(*) FROM orders WHERE status = ?1")?
                        .query_row([status.as_str()], |r| r.get(0))
                })
                .await
                .context("failed to count orders")?;
            Ok(n)
        }
    }
}

sql_order_store!(
    postgres,
    sqlx::Postgres,
    sqlx::PgPool,
    lock_skip = "FOR UPDATE SKIP LOCKED"
);
