//! One contract suite per module `api` trait, run against both of its
//! implementations: the in-process service, and the module's HTTP client
//! (`RemoteInventory`, `RemotePayments`) through the host's real transport
//! to a real agora process that hosts only that module.

use std::sync::Arc;

use agora::Settings;
use agora::upstream::Upstreams;
use agora_inventory::domain::models as inv;
use agora_inventory::domain::ports::{ReservationError, ReservationStep, ReserveError};
use agora_inventory::{InventoryApi, InventoryModule, InventoryService};
use agora_kernel::testing::{NatsServer, nats_namespace};
use agora_kernel::{CallContext, Currency, InMemoryBus, Money, Principal, Role, Wiring};
use agora_payment::domain::models as pay;
use agora_payment::domain::service::{ChargeError, GetPaymentError, RefundError};
use agora_payment::{PaymentApi, PaymentModule, PaymentService};
use async_trait::async_trait;
use serde_json::json;

use crate::process::{Agora, Api};

fn service() -> CallContext {
    CallContext::service("order", "contract")
}

fn staff() -> CallContext {
    CallContext::new(Principal::new("sam", [Role::Staff]), "contract")
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}

/// How a side puts products and stock in place (not part of the trait).
#[async_trait]
pub trait Catalogue: Send + Sync {
    async fn product(&self, sku: &str, price_minor: i64, units: i64);
    async fn deactivate(&self, sku: &str);
}

pub struct ServiceCatalogue(pub InventoryService);

#[async_trait]
impl Catalogue for ServiceCatalogue {
    async fn product(&self, sku: &str, price_minor: i64, units: i64) {
        let _ = self
            .0
            .create_warehouse(
                &staff(),
                inv::NewWarehouse {
                    code: inv::WarehouseCode::parse("BER").unwrap(),
                    name: inv::ProductName::parse("Berlin").unwrap(),
                },
            )
            .await;
        self.0
            .create_product(
                &staff(),
                inv::NewProduct {
                    sku: inv::Sku::parse(sku).unwrap(),
                    name: inv::ProductName::parse(sku).unwrap(),
                    description: None,
                    price: eur(price_minor),
                    low_stock_threshold: inv::Threshold::new(5).unwrap(),
                },
            )
            .await
            .unwrap();
        self.0
            .receive(
                &staff(),
                inv::Receipt {
                    sku: inv::Sku::parse(sku).unwrap(),
                    warehouse: inv::WarehouseCode::parse("BER").unwrap(),
                    quantity: inv::Quantity::new(units).unwrap(),
                    reference: None,
                },
            )
            .await
            .unwrap();
    }

    async fn deactivate(&self, sku: &str) {
        self.0
            .deactivate_product(&staff(), &inv::Sku::parse(sku).unwrap())
            .await
            .unwrap();
    }
}

struct RestCatalogue(Api);

#[async_trait]
impl Catalogue for RestCatalogue {
    async fn product(&self, sku: &str, price_minor: i64, units: i64) {
        let api = &self.0;
        let _ = api
            .post(
                &api.staff,
                "/api/v1/warehouses",
                json!({"code": "BER", "name": "Berlin"}),
            )
            .await;
        let (s, b) = api
            .post(
                &api.staff,
                "/api/v1/products",
                json!({"sku": sku, "name": sku, "price_minor": price_minor, "currency": "EUR"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        api.receive(sku, units).await;
    }

    async fn deactivate(&self, sku: &str) {
        let res = self
            .0
            .client
            .delete(format!("{}/api/v1/products/{sku}", self.0.base))
            .bearer_auth(&self.0.staff)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }
}

/// `module` built in process by `build` from its database URL and wiring: a
/// fresh SQLite file in a directory that lives as long as the returned guard,
/// and an in-memory bus.
async fn on_sqlite<M, F>(
    module: &str,
    build: impl FnOnce(String, Wiring) -> F,
) -> (tempfile::TempDir, M)
where
    F: Future<Output = anyhow::Result<M>>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/{module}.db", dir.path().display());
    let wiring = Wiring::new(&url, Arc::new(InMemoryBus::new()));
    let built = build(url, wiring).await.unwrap();
    (dir, built)
}

/// A process hosting only `module` (on a broker of its own), and the host's
/// transport to it.
struct Remote {
    process: Agora,
    upstreams: Arc<Upstreams>,
    _nats: NatsServer,
    _dir: tempfile::TempDir,
}

fn remote(module: &'static str) -> Option<Remote> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir().unwrap();
    let nowhere = "http://127.0.0.1:9".to_owned();
    let mut env = vec![
        ("AGORA__MODULES", module.to_owned()),
        ("AGORA__BUS__URL", nats.url()),
        ("AGORA__BUS__NAMESPACE", nats_namespace("api")),
    ];
    for other in ["order", "inventory", "payment", "notification"] {
        if other != module {
            let key: &'static str = match other {
                "order" => "AGORA__REMOTE__ORDER__URLS",
                "inventory" => "AGORA__REMOTE__INVENTORY__URLS",
                "payment" => "AGORA__REMOTE__PAYMENT__URLS",
                _ => "AGORA__REMOTE__NOTIFICATION__URLS",
            };
            env.push((key, nowhere.clone()));
        }
    }
    let process = Agora::start(module, dir.path(), &env);
    // The caller: a process that hosts nothing and calls `module` there.
    let mut caller: Settings = crate::helpers::test_settings(dir.path());
    caller.modules = String::new();
    for r in [
        &mut caller.remote.order,
        &mut caller.remote.inventory,
        &mut caller.remote.payment,
        &mut caller.remote.notification,
    ] {
        r.urls = process.base.clone();
    }
    let upstreams = Upstreams::from_settings(&caller).unwrap();
    Some(Remote {
        process,
        upstreams,
        _nats: nats,
        _dir: dir,
    })
}

// ---- inventory -------------------------------------------------------------------------------

async fn inventory_contract(api: &dyn InventoryApi, shop: &dyn Catalogue) {
    shop.product("MUG", 850, 10).await;
    shop.product("TEE", 1999, 3).await;
    shop.product("OLD", 500, 1).await;
    shop.deactivate("OLD").await;
    let sku = |s: &str| inv::Sku::parse(s).unwrap();

    // A quote: known skus in order, unknown ones absent, inactive ones flagged.
    let quotes = api
        .quote(
            &service(),
            &[sku("TEE"), sku("NOPE"), sku("MUG"), sku("OLD")],
        )
        .await
        .unwrap();
    let seen: Vec<(&str, i64, bool)> = quotes
        .iter()
        .map(|q| (q.sku.as_str(), q.price.minor(), q.active))
        .collect();
    assert_eq!(
        seen,
        vec![("TEE", 1999, true), ("MUG", 850, true), ("OLD", 500, false)]
    );
    assert!(api.quote(&service(), &[]).await.unwrap().is_empty());

    let order = |n: u32| inv::OrderRef::parse(&format!("order-{n}")).unwrap();
    let line = |s: &str, q: i64| inv::LineRequest::parse(s, q).unwrap();
    let request =
        |id: inv::ReservationId, n: u32, lines: Vec<inv::LineRequest>| inv::NewReservation {
            id,
            order_id: order(n),
            lines,
            ttl: Some(inv::Ttl::from_secs(600).unwrap()),
        };

    // Reserve, then the same request again: a replay.
    let id = inv::ReservationId(uuid::Uuid::now_v7());
    let made = api
        .reserve(&service(), request(id, 1, vec![line("MUG", 2)]))
        .await
        .unwrap();
    assert_eq!(
        (made.id, made.status, made.created),
        (id, inv::ReservationStatus::Held, true)
    );
    let again = api
        .reserve(&service(), request(id, 1, vec![line("MUG", 2)]))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.created),
        (inv::ReservationStatus::Held, false)
    );

    // Short of stock: nothing reserved, the short lines named.
    let short = api
        .reserve(
            &service(),
            request(
                inv::ReservationId(uuid::Uuid::now_v7()),
                2,
                vec![line("MUG", 1), line("TEE", 4)],
            ),
        )
        .await;
    match short {
        Err(ReserveError::Insufficient(lines)) => {
            let lines: Vec<(usize, &str, i64, i64)> = lines
                .iter()
                .map(|s| (s.line, s.sku.as_str(), s.requested, s.available))
                .collect();
            assert_eq!(lines, vec![(1, "TEE", 4, 3)]);
        }
        other => panic!("expected Insufficient, got {other:?}"),
    }
    // The id taken by another request.
    assert!(matches!(
        api.reserve(&service(), request(id, 9, vec![line("MUG", 1)]))
            .await,
        Err(ReserveError::IdConflict(_))
    ));
    // An unknown sku names its line.
    match api
        .reserve(
            &service(),
            request(
                inv::ReservationId(uuid::Uuid::now_v7()),
                3,
                vec![line("MUG", 1), line("NOPE", 1)],
            ),
        )
        .await
    {
        Err(ReserveError::UnknownProducts(lines)) => {
            assert_eq!(lines, vec![(1, sku("NOPE"))]);
        }
        other => panic!("expected UnknownProducts, got {other:?}"),
    }

    // Transitions: confirm (twice: idempotent), commit; release a held one;
    // what does not apply says where the reservation stands.
    use ReservationStep::{Commit, Confirm, Release};
    use inv::ReservationStatus::{Committed, Confirmed, Released};
    // The status `step` leaves a reservation in.
    let take =
        |id, step| async move { api.transition(&service(), id, step).await.map(|r| r.status) };
    assert_eq!(take(id, Confirm).await.unwrap(), Confirmed);
    assert_eq!(take(id, Confirm).await.unwrap(), Confirmed);
    assert_eq!(take(id, Commit).await.unwrap(), Committed);
    match take(id, Release).await {
        Err(ReservationError::InvalidTransition { from, to, .. }) => {
            assert_eq!((from, to), ("committed", "released"));
        }
        other => panic!("expected InvalidTransition, got {other:?}"),
    }
    let held = inv::ReservationId(uuid::Uuid::now_v7());
    api.reserve(&service(), request(held, 4, vec![line("TEE", 1)]))
        .await
        .unwrap();
    assert_eq!(take(held, Release).await.unwrap(), Released);
    match take(held, Confirm).await {
        Err(ReservationError::InvalidTransition { from, .. }) => assert_eq!(from, "released"),
        other => panic!("expected InvalidTransition, got {other:?}"),
    }
    // A replay of a released reservation reports it released.
    let replay = api
        .reserve(&service(), request(held, 4, vec![line("TEE", 1)]))
        .await
        .unwrap();
    assert_eq!(replay.status, Released);
    assert!(matches!(
        take(inv::ReservationId(uuid::Uuid::now_v7()), Confirm).await,
        Err(ReservationError::NotFound(_))
    ));
}

#[tokio::test]
async fn inventory_api_in_process() {
    let (_dir, module) = on_sqlite("inventory", |url, wiring| async move {
        InventoryModule::build(&agora_inventory::Settings::with_url(&url), wiring).await
    })
    .await;
    let service = module.api();
    inventory_contract(&service, &ServiceCatalogue(service.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_api_over_http() {
    let Some(r) = remote("inventory") else {
        return;
    };
    let client = agora_inventory::RemoteInventory::new(r.upstreams.transport("inventory").unwrap());
    inventory_contract(&client, &RestCatalogue(Api::new(&r.process.base))).await;
}

// ---- payment ---------------------------------------------------------------------------------

async fn payment_contract(api: &dyn PaymentApi) {
    let charge = |order: pay::OrderId, minor: i64, method: &str| {
        pay::ChargeRequest::new(
            order,
            pay::CustomerId::parse("alice").unwrap(),
            eur(minor),
            pay::PaymentMethod::parse(method).unwrap(),
        )
        .unwrap()
    };
    let order = pay::OrderId(uuid::Uuid::now_v7());
    let key = format!("charge-{}", order.0);

    assert!(matches!(
        api.find_by_order(&service(), order).await,
        Err(GetPaymentError::NotFound)
    ));
    let paid = api
        .charge(&service(), charge(order, 2500, "tok_visa"), &key)
        .await
        .unwrap();
    assert_eq!(paid.status, pay::PaymentStatus::Succeeded);
    assert_eq!((paid.amount_minor, paid.refunded_minor), (2500, 0));
    // The same charge again: the same payment.
    let again = api
        .charge(&service(), charge(order, 2500, "tok_visa"), &key)
        .await
        .unwrap();
    assert_eq!(again.id, paid.id);
    assert_eq!(api.find_by_order(&service(), order).await.unwrap(), paid);
    // Another amount for the same order: refused.
    let other_key = format!("{key}-b");
    assert!(matches!(
        api.charge(&service(), charge(order, 999, "tok_visa"), &other_key)
            .await,
        Err(ChargeError::OrderAlreadyCharged { payment_id, .. }) if payment_id == paid.id
    ));

    // A decline is an answer, not an error.
    let declined_order = pay::OrderId(uuid::Uuid::now_v7());
    let declined = api
        .charge(
            &service(),
            charge(declined_order, 1000, "tok_chargeDeclined"),
            &format!("charge-{}", declined_order.0),
        )
        .await
        .unwrap();
    assert_eq!(declined.status, pay::PaymentStatus::Failed);
    assert!(declined.failure_code.is_some());

    // Refunds: part, a replay of it, more than is left, the rest, then nothing.
    let refund = |minor: i64, key: &str| {
        pay::RefundRequest::of_money(
            paid.id,
            eur(minor),
            None,
            pay::RequestKey::parse(key).unwrap(),
        )
        .unwrap()
    };
    let first = api.refund(&service(), refund(1000, "r1")).await.unwrap();
    assert_eq!(first.amount_minor, 1000);
    assert_eq!(first.payment_id, paid.id);
    assert_eq!(first.status, pay::RefundStatus::Succeeded);
    assert_eq!(
        api.refund(&service(), refund(1000, "r1")).await.unwrap().id,
        first.id
    );
    assert!(matches!(
        api.refund(&service(), refund(2000, "r2")).await,
        Err(RefundError::ExceedsRefundable {
            refundable_minor: 1500
        })
    ));
    // A payment in another currency than the refund names.
    let usd = pay::RefundRequest::of_money(
        paid.id,
        Money::new(1, Currency::parse("USD").unwrap()),
        None,
        pay::RequestKey::parse("r5").unwrap(),
    )
    .unwrap();
    assert!(matches!(
        api.refund(&service(), usd).await,
        Err(RefundError::CurrencyMismatch { .. })
    ));
    api.refund(&service(), refund(1500, "r3")).await.unwrap();
    let after = api.find_by_order(&service(), order).await.unwrap();
    assert_eq!(
        (after.status, after.refunded_minor),
        (pay::PaymentStatus::Refunded, 2500)
    );
    assert!(matches!(
        api.refund(&service(), refund(1, "r4")).await,
        Err(RefundError::NotRefundable(pay::PaymentStatus::Refunded))
            | Err(RefundError::ExceedsRefundable {
                refundable_minor: 0
            })
    ));
    // A refund of a payment that does not exist.
    let nowhere = pay::RefundRequest::of_money(
        pay::PaymentId(uuid::Uuid::now_v7()),
        eur(1),
        None,
        pay::RequestKey::parse("r6").unwrap(),
    )
    .unwrap();
    assert!(matches!(
        api.refund(&service(), nowhere).await,
        Err(RefundError::NotFound)
    ));

    // The provider failing: the outcome is not known, retry later.
    let faulty = pay::OrderId(uuid::Uuid::now_v7());
    assert!(matches!(
        api.charge(
            &service(),
            charge(faulty, 1000, "tok_processing_error"),
            &format!("charge-{}", faulty.0)
        )
        .await,
        Err(ChargeError::ProviderUnavailable { .. })
    ));
}

#[tokio::test]
async fn payment_api_in_process() {
    let (_dir, module) = on_sqlite("payment", |url, wiring| async move {
        PaymentModule::build(&agora_payment::Settings::with_url(&url), wiring).await
    })
    .await;
    let service: PaymentService = module.api();
    payment_contract(&service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_api_over_http() {
    let Some(r) = remote("payment") else {
        return;
    };
    let client = agora_payment::RemotePayments::new(r.upstreams.transport("payment").unwrap());
    payment_contract(&client).await;
}
