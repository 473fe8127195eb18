//! Small hand-written fakes of the ports the order module owns.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agora_kernel::{CallContext, Currency, Money};
use async_trait::async_trait;

use crate::domain::models::{OrderId, PaymentRef, Sku};
use crate::domain::ports::{
    Catalogue, ChargeOutcome, ChargeRequest, PaymentState, Payments, PortError, Quote,
    RefundOutcome, Refusal, ReserveOutcome, StockReservations,
};

pub fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}

pub struct FakeCatalogue(pub BTreeMap<String, Quote>);

impl FakeCatalogue {
    pub fn standard() -> Self {
        let mut m = BTreeMap::new();
        m.insert(
            "TSHIRT".into(),
            Quote {
                price: eur(1999),
                active: true,
            },
        );
        m.insert(
            "MUG".into(),
            Quote {
                price: eur(850),
                active: true,
            },
        );
        m.insert(
            "OLD".into(),
            Quote {
                price: eur(100),
                active: false,
            },
        );
        m.insert(
            "USD-HAT".into(),
            Quote {
                price: Money::new(500, Currency::parse("USD").unwrap()),
                active: true,
            },
        );
        Self(m)
    }
}

#[async_trait]
impl Catalogue for FakeCatalogue {
    async fn quote(
        &self,
        _: &CallContext,
        skus: &[Sku],
    ) -> Result<BTreeMap<String, Quote>, PortError> {
        Ok(skus
            .iter()
            .filter_map(|s| {
                self.0
                    .get(s.as_str())
                    .map(|q| (s.as_str().to_owned(), q.clone()))
            })
            .collect())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Reserved,
    Committed,
    Released,
}

type Reservations = HashMap<String, (Vec<(String, u32)>, Held)>;

#[derive(Default)]
pub struct FakeStock {
    pub available: Mutex<HashMap<String, u32>>,
    pub reservations: Mutex<Reservations>,
    pub down: AtomicBool,
}

impl FakeStock {
    pub fn with(stock: &[(&str, u32)]) -> Self {
        let s = Self::default();
        *s.available.lock().unwrap() = stock.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        s
    }

    pub fn available(&self, sku: &str) -> u32 {
        self.available
            .lock()
            .unwrap()
            .get(sku)
            .copied()
            .unwrap_or(0)
    }

    pub fn state(&self, id: &str) -> Option<Held> {
        self.reservations
            .lock()
            .unwrap()
            .get(id)
            .map(|(_, h)| h.clone())
    }
}

#[async_trait]
impl StockReservations for FakeStock {
    async fn reserve(
        &self,
        _: &CallContext,
        id: &str,
        _: OrderId,
        lines: &[(Sku, u32)],
        _: Duration,
    ) -> Result<ReserveOutcome, PortError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable("inventory down".into()));
        }
        let mut res = self.reservations.lock().unwrap();
        if res.contains_key(id) {
            return Ok(ReserveOutcome::Reserved);
        }
        let mut avail = self.available.lock().unwrap();
        let short: Vec<String> = lines
            .iter()
            .filter(|(s, q)| avail.get(s.as_str()).copied().unwrap_or(0) < *q)
            .map(|(s, _)| s.as_str().to_owned())
            .collect();
        if !short.is_empty() {
            return Ok(ReserveOutcome::Insufficient(short));
        }
        for (s, q) in lines {
            *avail.get_mut(s.as_str()).unwrap() -= q;
        }
        res.insert(
            id.to_owned(),
            (
                lines
                    .iter()
                    .map(|(s, q)| (s.as_str().to_owned(), *q))
                    .collect(),
                Held::Reserved,
            ),
        );
        Ok(ReserveOutcome::Reserved)
    }

    async fn confirm(&self, _: &CallContext, id: &str) -> Result<(), PortError> {
        match self.reservations.lock().unwrap().get(id) {
            Some((_, Held::Reserved | Held::Committed)) => Ok(()),
            _ => Err(PortError::Refused(Refusal::new("reservation expired"))),
        }
    }

    async fn commit(&self, _: &CallContext, id: &str) -> Result<(), PortError> {
        let mut res = self.reservations.lock().unwrap();
        match res.get_mut(id) {
            Some((_, h)) if *h == Held::Reserved || *h == Held::Committed => {
                *h = Held::Committed;
                Ok(())
            }
            _ => Err(PortError::Refused(Refusal::new("not held"))),
        }
    }

    async fn release(&self, _: &CallContext, id: &str) -> Result<(), PortError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::Unavailable("inventory down".into()));
        }
        let mut res = self.reservations.lock().unwrap();
        if let Some((lines, h)) = res.get_mut(id).filter(|(_, h)| *h == Held::Reserved) {
            {
                let mut avail = self.available.lock().unwrap();
                for (s, q) in lines.iter() {
                    *avail.entry(s.clone()).or_default() += q;
                }
                *h = Held::Released;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayMode {
    Approve,
    Decline,
    Down,
}

pub struct FakePayments {
    pub mode: Mutex<PayMode>,
    /// idempotency key → payment id: one charge per key.
    pub charges: Mutex<HashMap<String, String>>,
    pub charge_calls: AtomicUsize,
    pub refunds: Mutex<Vec<(String, i64, String)>>,
}

impl FakePayments {
    pub fn new(mode: PayMode) -> Self {
        Self {
            mode: Mutex::new(mode),
            charges: Mutex::default(),
            charge_calls: AtomicUsize::new(0),
            refunds: Mutex::default(),
        }
    }

    pub fn set(&self, mode: PayMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn captured(&self) -> usize {
        self.charges.lock().unwrap().len()
    }
}

#[async_trait]
impl Payments for FakePayments {
    async fn find(
        &self,
        _: &CallContext,
        order_id: OrderId,
    ) -> Result<Option<(PaymentRef, PaymentState)>, PortError> {
        let id = format!("pay-{order_id}");
        let refunded = self
            .refunds
            .lock()
            .unwrap()
            .iter()
            .any(|(p, _, _)| *p == id);
        let captured = self.charges.lock().unwrap().values().any(|p| *p == id);
        let id = PaymentRef::new(id);
        Ok(match (captured, refunded) {
            (true, false) => Some((id, PaymentState::Captured)),
            (true, true) => Some((id, PaymentState::Settled)),
            _ => None,
        })
    }

    async fn charge(&self, _: &CallContext, r: &ChargeRequest) -> Result<ChargeOutcome, PortError> {
        self.charge_calls.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().unwrap();
        match mode {
            PayMode::Down => Err(PortError::Unavailable("breaker open".into())),
            PayMode::Decline => Ok(ChargeOutcome::Declined {
                payment_id: PaymentRef::new(format!("pay-{}", r.order_id)),
                code: "card_declined".into(),
            }),
            PayMode::Approve => {
                let mut charges = self.charges.lock().unwrap();
                let id = charges
                    .entry(r.idempotency_key.clone())
                    .or_insert_with(|| format!("pay-{}", r.order_id))
                    .clone();
                Ok(ChargeOutcome::Succeeded {
                    payment_id: PaymentRef::new(id),
                })
            }
        }
    }

    async fn refund(
        &self,
        _: &CallContext,
        payment_id: &PaymentRef,
        amount: Money,
        key: &str,
    ) -> Result<RefundOutcome, PortError> {
        let mut refunds = self.refunds.lock().unwrap();
        if !refunds.iter().any(|(_, _, k)| k == key) {
            refunds.push((
                payment_id.as_str().to_owned(),
                amount.minor(),
                key.to_owned(),
            ));
        }
        Ok(RefundOutcome::Refunded)
    }
}

/// Tests name validation fields as the API shows them (`items[1].sku`).
impl PartialEq<&str> for crate::domain::service::RequestField {
    fn eq(&self, other: &&str) -> bool {
        self.to_string().as_str() == *other
    }
}
