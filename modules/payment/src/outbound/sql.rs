//! The payment store on SQLite and PostgreSQL (sqlx, `query_as` + `FromRow`).
//!
//! The SQL is written once and generated per backend by a macro; the only
//! difference is how a write transaction starts: `BEGIN IMMEDIATE` on SQLite
//! (take the write lock up front), plain `BEGIN` on PostgreSQL, where every
//! read-then-write is a guarded `UPDATE … WHERE <condition>` that re-checks its
//! condition after waiting for a concurrent writer's row lock.

use std::sync::Arc;

use agora_kernel::db::{SqlDatabase, from_epoch_ms};
use agora_kernel::{Currency, Money};
use anyhow::Context;

use crate::domain::models::{
    CustomerId, LedgerEntry, LedgerEntryId, LedgerKind, OrderId, Payment, PaymentId, PaymentMethod,
    PaymentStatus, Refund, RefundId, RefundStatus,
};
use crate::domain::ports::PaymentStore;

/// The module's own migrations, run after the kernel's. Versions start at 100.
///
/// # Errors
/// A failed migration.
pub async fn migrate(db: &SqlDatabase) -> anyhow::Result<()> {
    let mut sqlite = sqlx::migrate!("../../migrations/payment/sqlite");
    sqlite.set_ignore_missing(true);
    let mut postgres = sqlx::migrate!("../../migrations/payment/postgres");
    postgres.set_ignore_missing(true);
    db.migrate(&sqlite, &postgres).await
}

/// The store for a migrated database.
pub fn store_for(db: &SqlDatabase) -> Arc<dyn PaymentStore> {
    match db {
        SqlDatabase::Sqlite(pool) => Arc::new(sqlite::Store::new(pool.clone())),
        SqlDatabase::Postgres(pool) => Arc::new(postgres::Store::new(pool.clone())),
    }
}

const PAYMENT_COLUMNS: &str = "id, order_id, customer_id, status, amount_minor, currency, \
     refunded_minor, payment_method, provider, provider_ref, failure_code, created_at, updated_at";

const REFUND_COLUMNS: &str = "id, payment_id, amount_minor, currency, reason, status, \
     provider_ref, failure_code, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct PaymentRow {
    id: String,
    order_id: String,
    customer_id: String,
    status: String,
    amount_minor: i64,
    currency: String,
    refunded_minor: i64,
    payment_method: String,
    provider: String,
    provider_ref: Option<String>,
    failure_code: Option<String>,
    created_at: i64,
    updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct RefundRow {
    id: String,
    payment_id: String,
    amount_minor: i64,
    currency: String,
    reason: Option<String>,
    status: String,
    provider_ref: Option<String>,
    failure_code: Option<String>,
    created_at: i64,
    updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct LedgerRow {
    id: String,
    payment_id: String,
    refund_id: Option<String>,
    kind: String,
    amount_minor: i64,
    currency: String,
    provider_ref: Option<String>,
    created_at: i64,
}

/// Why `reserve_refund`'s guarded update touched nothing.
#[derive(sqlx::FromRow)]
struct RefundableRow {
    status: String,
    amount_minor: i64,
    refund_reserved_minor: i64,
}

fn currency(code: &str) -> anyhow::Result<Currency> {
    Currency::parse(code).with_context(|| format!("a stored row has an unknown currency `{code}`"))
}

impl RefundRow {
    fn into_domain(self) -> anyhow::Result<Refund> {
        Ok(Refund {
            id: RefundId::parse(&self.id).context("a stored refund has a bad id")?,
            payment_id: PaymentId::parse(&self.payment_id)
                .context("a stored refund has a bad payment id")?,
            amount: Money::new(self.amount_minor, currency(&self.currency)?),
            reason: self.reason,
            status: RefundStatus::parse(&self.status)?,
            provider_ref: self.provider_ref,
            failure_code: self.failure_code,
            created_at: from_epoch_ms(self.created_at),
            updated_at: from_epoch_ms(self.updated_at),
        })
    }
}

impl PaymentRow {
    fn into_domain(self, refunds: Vec<Refund>) -> anyhow::Result<Payment> {
        Ok(Payment {
            id: PaymentId::parse(&self.id).context("a stored payment has a bad id")?,
            order_id: OrderId::parse(&self.order_id)
                .context("a stored payment has a bad order id")?,
            customer_id: CustomerId::parse(&self.customer_id)?,
            status: PaymentStatus::parse(&self.status)?,
            amount: Money::new(self.amount_minor, currency(&self.currency)?),
            refunded_minor: self.refunded_minor,
            payment_method: PaymentMethod::parse(&self.payment_method)?,
            provider: self.provider,
            provider_ref: self.provider_ref,
            failure_code: self.failure_code,
            created_at: from_epoch_ms(self.created_at),
            updated_at: from_epoch_ms(self.updated_at),
            refunds,
        })
    }
}

impl LedgerRow {
    fn into_domain(self) -> anyhow::Result<LedgerEntry> {
        Ok(LedgerEntry {
            id: LedgerEntryId::parse(&self.id).context("a ledger row has a bad id")?,
            payment_id: PaymentId::parse(&self.payment_id)
                .context("a ledger row has a bad payment id")?,
            refund_id: self
                .refund_id
                .as_deref()
                .map(RefundId::parse)
                .transpose()
                .context("a ledger row has a bad refund id")?,
            kind: LedgerKind::parse(&self.kind)?,
            amount: Money::new(self.amount_minor, currency(&self.currency)?),
            provider_ref: self.provider_ref,
            created_at: from_epoch_ms(self.created_at),
        })
    }
}

macro_rules! sql_store {
    ($backend:ident, $pool:ty, $db:ty, $begin:literal) => {
        pub mod $backend {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};

            use super::*;
            use crate::domain::models::{
                ChargeResult, NewPayment, NewRefund, PaymentFilter, RefundResult,
            };
            use crate::domain::ports::{Reservation, ReserveRefundError};
            use agora_kernel::db::epoch_ms;

            type Conn = <$db as sqlx::Database>::Connection;

            /// The payment store of one database.
            #[derive(Clone)]
            pub struct Store {
                pool: $pool,
            }

            impl Store {
                pub fn new(pool: $pool) -> Self {
                    Self { pool }
                }

                async fn begin(&self) -> anyhow::Result<sqlx::Transaction<'static, $db>> {
                    self.pool
                        .begin_with($begin)
                        .await
                        .context("failed to start a transaction")
                }
            }

            async fn refunds_of(conn: &mut Conn, payment_id: &str) -> anyhow::Result<Vec<Refund>> {
                let rows: Vec<RefundRow> = sqlx::query_as(&format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY id"
                ))
                .bind(payment_id)
                .fetch_all(&mut *conn)
                .await
                .context("failed to read refunds")?;
                rows.into_iter().map(RefundRow::into_domain).collect()
            }

            async fn load(conn: &mut Conn, id: &str) -> anyhow::Result<Option<Payment>> {
                let row: Option<PaymentRow> = sqlx::query_as(&format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .context("failed to read a payment")?;
                match row {
                    None => Ok(None),
                    Some(row) => {
                        let refunds = refunds_of(conn, &row.id).await?;
                        Ok(Some(row.into_domain(refunds)?))
                    }
                }
            }

            async fn load_by_order(conn: &mut Conn, order_id: &str) -> anyhow::Result<Option<Payment>> {
                let id: Option<(String,)> =
                    sqlx::query_as("SELECT id FROM payments WHERE order_id = $1")
                        .bind(order_id)
                        .fetch_optional(&mut *conn)
                        .await
                        .context("failed to find an order's payment")?;
                match id {
                    Some((id,)) => load(conn, &id).await,
                    None => Ok(None),
                }
            }

            async fn load_refund(conn: &mut Conn, payment_id: &str, key: &str) -> anyhow::Result<Option<Refund>> {
                let row: Option<RefundRow> = sqlx::query_as(&format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 AND request_key = $2"
                ))
                .bind(payment_id)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .context("failed to read a refund")?;
                row.map(RefundRow::into_domain).transpose()
            }

            fn is_unique_violation(e: &sqlx::Error) -> bool {
                matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
            }

            #[async_trait]
            impl PaymentStore for Store {
                fn backend(&self) -> &'static str {
                    stringify!($backend)
                }

                #[tracing::instrument(skip_all, fields(payment_id = %new.id))]
                async fn reserve_charge(&self, new: &NewPayment, now: DateTime<Utc>) -> anyhow::Result<Reservation<Payment>> {
                    let now = epoch_ms(now);
                    let r = &new.request;
                    let inserted = sqlx::query(
                        "INSERT INTO payments (id, order_id, customer_id, status, amount_minor, currency, \
                         payment_method, provider, attempt_at, created_at, updated_at) \
                         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $8, $8) \
                         ON CONFLICT (order_id) DO NOTHING",
                    )
                    .bind(new.id.to_string())
                    .bind(r.order_id.to_string())
                    .bind(r.customer_id.as_str())
                    .bind(r.amount.minor())
                    .bind(r.amount.currency().code())
                    .bind(r.payment_method.as_str())
                    .bind(&new.provider)
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .context("failed to reserve a payment")?;
                    let mut conn = self.pool.acquire().await.context("failed to get a connection")?;
                    if inserted.rows_affected() == 1 {
                        let p = load(&mut conn, &new.id.to_string()).await?
                            .context("a reserved payment vanished")?;
                        Ok(Reservation::Created(p))
                    } else {
                        let p = load_by_order(&mut conn, &r.order_id.to_string()).await?
                            .context("the order's existing payment vanished")?;
                        Ok(Reservation::Existing(p))
                    }
                }

                async fn lease_charge(&self, id: PaymentId, now: DateTime<Utc>, stale_before: DateTime<Utc>) -> anyhow::Result<bool> {
                    let done = sqlx::query(
                        "UPDATE payments SET attempt_at = $1 WHERE id = $2 AND status = 'pending' \
                         AND (attempt_at IS NULL OR attempt_at < $3)",
                    )
                    .bind(epoch_ms(now))
                    .bind(id.to_string())
                    .bind(epoch_ms(stale_before))
                    .execute(&self.pool)
                    .await
                    .context("failed to lease a pending payment")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn release_charge(&self, id: PaymentId) -> anyhow::Result<()> {
                    sqlx::query("UPDATE payments SET attempt_at = NULL WHERE id = $1 AND status = 'pending'")
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await
                        .context("failed to release a payment's lease")?;
                    Ok(())
                }

                #[tracing::instrument(skip_all, fields(payment_id = %id))]
                async fn finish_charge(&self, id: PaymentId, result: &ChargeResult, correlation_id: &str, now: DateTime<Utc>) -> anyhow::Result<Option<Payment>> {
                    let now = epoch_ms(now);
                    let id = id.to_string();
                    let (status, provider_ref, failure_code) = match result {
                        ChargeResult::Succeeded { provider_ref } => (PaymentStatus::Succeeded, Some(provider_ref.as_str()), None),
                        ChargeResult::Declined { code, provider_ref } => (PaymentStatus::Failed, provider_ref.as_deref(), Some(code.as_str())),
                    };
                    let mut tx = self.begin().await?;
                    let done = sqlx::query(
                        "UPDATE payments SET status = $1, provider_ref = $2, failure_code = $3, attempt_at = NULL, \
                         updated_at = $4 WHERE id = $5 AND status = 'pending'",
                    )
                    .bind(status.as_str())
                    .bind(provider_ref)
                    .bind(failure_code)
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .context("failed to finish a payment")?;
                    if done.rows_affected() == 0 {
                        return Ok(None);
                    }
                    if status == PaymentStatus::Succeeded {
                        sqlx::query(
                            "INSERT INTO payment_ledger (id, payment_id, refund_id, kind, amount_minor, currency, provider_ref, created_at) \
                             SELECT $1, id, NULL, 'charge', amount_minor, currency, provider_ref, $2 FROM payments WHERE id = $3",
                        )
                        .bind(LedgerEntryId::new().to_string())
                        .bind(now)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await
                        .context("failed to append a charge to the ledger")?;
                    }
                    let payment = load(&mut tx, &id).await?.context("a finished payment vanished")?;
                    let event = crate::events::charge_finished(&payment, correlation_id)?;
                    agora_kernel::outbox::$backend::enqueue(&mut tx, &event).await?;
                    tx.commit().await.context("failed to commit a finished payment")?;
                    Ok(Some(payment))
                }

                async fn get(&self, id: PaymentId) -> anyhow::Result<Option<Payment>> {
                    let mut conn = self.pool.acquire().await.context("failed to get a connection")?;
                    load(&mut conn, &id.to_string()).await
                }

                async fn list(&self, filter: &PaymentFilter, after: Option<PaymentId>, limit: u32) -> anyhow::Result<Vec<Payment>> {
                    let mut conn = self.pool.acquire().await.context("failed to get a connection")?;
                    let rows: Vec<PaymentRow> = sqlx::query_as(&format!(
                        "SELECT {PAYMENT_COLUMNS} FROM payments \
                         WHERE ($1 IS NULL OR order_id = $1) AND ($2 IS NULL OR customer_id = $2) \
                         AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
                    ))
                    .bind(filter.order_id.map(|o| o.to_string()))
                    .bind(filter.customer_id.as_ref().map(|c| c.as_str().to_owned()))
                    .bind(after.map(|a| a.to_string()))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await
                    .context("failed to list payments")?;
                    let mut out = Vec::with_capacity(rows.len());
                    for row in rows {
                        let refunds = refunds_of(&mut conn, &row.id).await?;
                        out.push(row.into_domain(refunds)?);
                    }
                    Ok(out)
                }

                #[tracing::instrument(skip_all, fields(payment_id = %new.request.payment_id, refund_id = %new.id))]
                async fn reserve_refund(&self, new: &NewRefund, now: DateTime<Utc>) -> Result<Reservation<Refund>, ReserveRefundError> {
                    let now = epoch_ms(now);
                    let r = &new.request;
                    let payment_id = r.payment_id.to_string();
                    let mut tx = self.begin().await?;
                    if let Some(existing) = load_refund(&mut tx, &payment_id, r.key.as_str()).await? {
                        return Ok(Reservation::Existing(existing));
                    }
                    let reserved = sqlx::query(
                        "UPDATE payments SET refund_reserved_minor = refund_reserved_minor + $1 \
                         WHERE id = $2 AND status IN ('succeeded', 'partially_refunded') \
                         AND refund_reserved_minor + $1 <= amount_minor",
                    )
                    .bind(r.amount_minor)
                    .bind(&payment_id)
                    .execute(&mut *tx)
                    .await
                    .context("failed to reserve a refund amount")?;
                    if reserved.rows_affected() == 0 {
                        let row: Option<RefundableRow> = sqlx::query_as(
                            "SELECT status, amount_minor, refund_reserved_minor FROM payments WHERE id = $1",
                        )
                        .bind(&payment_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .context("failed to read a payment")?;
                        return Err(match row {
                            None => ReserveRefundError::NotFound,
                            Some(row) => {
                                let status = PaymentStatus::parse(&row.status).map_err(anyhow::Error::from)?;
                                if status.is_refundable() {
                                    ReserveRefundError::ExceedsRefundable {
                                        refundable_minor: row.amount_minor - row.refund_reserved_minor,
                                    }
                                } else {
                                    ReserveRefundError::NotRefundable(status)
                                }
                            }
                        });
                    }
                    let inserted = sqlx::query(
                        "INSERT INTO refunds (id, payment_id, request_key, amount_minor, currency, reason, status, \
                         attempt_at, created_at, updated_at) \
                         SELECT $1, id, $2, $3, currency, $4, 'pending', $5, $5, $5 FROM payments WHERE id = $6",
                    )
                    .bind(new.id.to_string())
                    .bind(r.key.as_str())
                    .bind(r.amount_minor)
                    .bind(r.reason.as_ref().map(|x| x.as_str()))
                    .bind(now)
                    .bind(&payment_id)
                    .execute(&mut *tx)
                    .await;
                    match inserted {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => {
                            // A concurrent request with the same key won: theirs is the refund.
                            drop(tx);
                            let mut conn = self.pool.acquire().await.context("failed to get a connection")?;
                            let existing = load_refund(&mut conn, &payment_id, r.key.as_str())
                                .await?
                                .context("a conflicting refund vanished")?;
                            return Ok(Reservation::Existing(existing));
                        }
                        Err(e) => return Err(anyhow::Error::from(e).context("failed to insert a refund").into()),
                    }
                    let refund = load_refund(&mut tx, &payment_id, r.key.as_str())
                        .await?
                        .context("a reserved refund vanished")?;
                    tx.commit().await.context("failed to commit a refund reservation")?;
                    Ok(Reservation::Created(refund))
                }

                async fn lease_refund(&self, id: RefundId, now: DateTime<Utc>, stale_before: DateTime<Utc>) -> anyhow::Result<bool> {
                    let done = sqlx::query(
                        "UPDATE refunds SET attempt_at = $1 WHERE id = $2 AND status = 'pending' \
                         AND (attempt_at IS NULL OR attempt_at < $3)",
                    )
                    .bind(epoch_ms(now))
                    .bind(id.to_string())
                    .bind(epoch_ms(stale_before))
                    .execute(&self.pool)
                    .await
                    .context("failed to lease a pending refund")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn release_refund(&self, id: RefundId) -> anyhow::Result<()> {
                    sqlx::query("UPDATE refunds SET attempt_at = NULL WHERE id = $1 AND status = 'pending'")
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await
                        .context("failed to release a refund's lease")?;
                    Ok(())
                }

                #[tracing::instrument(skip_all, fields(refund_id = %id))]
                async fn finish_refund(&self, id: RefundId, result: &RefundResult, correlation_id: &str, now: DateTime<Utc>) -> anyhow::Result<Option<(Payment, Refund)>> {
                    let now = epoch_ms(now);
                    let id = id.to_string();
                    let (status, provider_ref, failure_code) = match result {
                        RefundResult::Succeeded { provider_ref } => (RefundStatus::Succeeded, Some(provider_ref.as_str()), None),
                        RefundResult::Rejected { code } => (RefundStatus::Failed, None, Some(code.as_str())),
                    };
                    let mut tx = self.begin().await?;
                    let row: Option<(String, i64)> = sqlx::query_as(
                        "UPDATE refunds SET status = $1, provider_ref = $2, failure_code = $3, attempt_at = NULL, \
                         updated_at = $4 WHERE id = $5 AND status = 'pending' RETURNING payment_id, amount_minor",
                    )
                    .bind(status.as_str())
                    .bind(provider_ref)
                    .bind(failure_code)
                    .bind(now)
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await
                    .context("failed to finish a refund")?;
                    let Some((payment_id, amount)) = row else {
                        return Ok(None);
                    };
                    if status == RefundStatus::Succeeded {
                        sqlx::query(
                            "UPDATE payments SET refunded_minor = refunded_minor + $1, \
                             status = CASE WHEN refunded_minor + $1 >= amount_minor THEN 'refunded' ELSE 'partially_refunded' END, \
                             updated_at = $2 WHERE id = $3",
                        )
                        .bind(amount)
                        .bind(now)
                        .bind(&payment_id)
                        .execute(&mut *tx)
                        .await
                        .context("failed to add a refund to its payment")?;
                        sqlx::query(
                            "INSERT INTO payment_ledger (id, payment_id, refund_id, kind, amount_minor, currency, provider_ref, created_at) \
                             SELECT $1, payment_id, id, 'refund', -amount_minor, currency, provider_ref, $2 FROM refunds WHERE id = $3",
                        )
                        .bind(LedgerEntryId::new().to_string())
                        .bind(now)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await
                        .context("failed to append a refund to the ledger")?;
                    } else {
                        sqlx::query(
                            "UPDATE payments SET refund_reserved_minor = refund_reserved_minor - $1, updated_at = $2 WHERE id = $3",
                        )
                        .bind(amount)
                        .bind(now)
                        .bind(&payment_id)
                        .execute(&mut *tx)
                        .await
                        .context("failed to give a rejected refund's amount back")?;
                    }
                    let payment = load(&mut tx, &payment_id).await?.context("a refunded payment vanished")?;
                    let refund = payment
                        .refunds
                        .iter()
                        .find(|r| r.id.to_string() == id)
                        .cloned()
                        .context("a finished refund vanished")?;
                    if status == RefundStatus::Succeeded {
                        let event = crate::events::refunded(&payment, &refund, correlation_id)?;
                        agora_kernel::outbox::$backend::enqueue(&mut tx, &event).await?;
                    }
                    tx.commit().await.context("failed to commit a finished refund")?;
                    Ok(Some((payment, refund)))
                }

                async fn ledger(&self, payment_id: PaymentId) -> anyhow::Result<Vec<LedgerEntry>> {
                    let rows: Vec<LedgerRow> = sqlx::query_as(
                        "SELECT id, payment_id, refund_id, kind, amount_minor, currency, provider_ref, created_at \
                         FROM payment_ledger WHERE payment_id = $1 ORDER BY seq",
                    )
                    .bind(payment_id.to_string())
                    .fetch_all(&self.pool)
                    .await
                    .context("failed to read the ledger")?;
                    rows.into_iter().map(LedgerRow::into_domain).collect()
                }
            }
        }
    };
}

sql_store!(sqlite, sqlx::SqlitePool, sqlx::Sqlite, "BEGIN IMMEDIATE");
sql_store!(postgres, sqlx::PgPool, sqlx::Postgres, "BEGIN");
