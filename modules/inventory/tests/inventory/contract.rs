//! The store contract: every backend must pass each of these, run through the
//! module's `api` handle (so the role rules are exercised too). Each test takes
//! a fresh [`Harness`]; the macro at the bottom runs the list per backend.

use std::collections::BTreeSet;
use std::sync::Arc;

use agora_inventory::domain::models::{
    Adjustment, Delta, Description, MovementKind, Note, ProductName, ProductPatch, Quantity,
    Receipt, ReservationId, ReservationStatus, Ttl,
};
use agora_inventory::domain::ports::{
    CatalogueError, ReadError, ReservationError, ReservationStep, ReserveError, StockError,
    WarehouseError,
};
use agora_inventory::events::{
    LOW_STOCK, LowStockPayload, ReleasedPayload, ReservationPayload, STOCK_COMMITTED,
    STOCK_RELEASED, STOCK_RESERVED,
};
use agora_kernel::Role;

use crate::helpers::*;

pub async fn creating_a_product_stores_it_and_a_duplicate_sku_is_refused(h: &Harness) {
    let mut p = new_product("TSHIRT-1", 5);
    p.description = Some(Description::parse("soft").unwrap());
    let created = h.api.create_product(&staff(), p.clone()).await.unwrap();
    assert_eq!(created.sku, sku("TSHIRT-1"));
    assert!(created.active);
    assert_eq!(created.price, eur(1999));
    assert_eq!(created.low_stock_threshold, 5);
    let read = h.api.product(&customer(), &sku("TSHIRT-1")).await.unwrap();
    assert_eq!(read, created);
    let dup = h.api.create_product(&admin(), p).await;
    assert!(
        matches!(dup, Err(CatalogueError::DuplicateSku(_))),
        "{dup:?}"
    );
    assert!(matches!(
        h.api.product(&customer(), &sku("NOPE")).await,
        Err(ReadError::NotFound(_))
    ));
}

pub async fn products_come_in_sku_order_one_page_at_a_time(h: &Harness) {
    let skus = ["E", "A", "D", "B", "C"];
    catalogue(&h.api, &skus, &[]).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = h
            .api
            .products(&customer(), cursor.as_deref(), 2)
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|p| p.sku.as_str().to_owned()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, vec!["A", "B", "C", "D", "E"]);
    assert_eq!(pages, 3);
    let bad = h.api.products(&customer(), Some("not-a-cursor"), 2).await;
    assert!(matches!(bad, Err(ReadError::BadCursor)), "{bad:?}");
}

pub async fn a_deleted_product_is_inactive_hidden_from_customers_and_not_reservable(h: &Harness) {
    catalogue(&h.api, &["A", "B"], &["W1"]).await;
    receive(&h.api, "B", "W1", 10).await;
    let patch = ProductPatch {
        name: Some(ProductName::parse("Better name").unwrap()),
        description: Some(Some(Description::parse("now with text").unwrap())),
        price: Some(eur(2500)),
        ..ProductPatch::default()
    };
    let updated = h
        .api
        .update_product(&staff(), &sku("B"), patch)
        .await
        .unwrap();
    assert_eq!(updated.name, "Better name");
    assert_eq!(updated.description.as_deref(), Some("now with text"));
    assert_eq!(updated.price, eur(2500));
    assert_eq!(
        h.api.product(&customer(), &sku("B")).await.unwrap(),
        updated
    );

    let gone = h.api.deactivate_product(&staff(), &sku("B")).await.unwrap();
    assert!(!gone.active);
    assert!(matches!(
        h.api.product(&customer(), &sku("B")).await,
        Err(ReadError::NotFound(_))
    ));
    assert!(!h.api.product(&staff(), &sku("B")).await.unwrap().active);
    let for_customers = h.api.products(&customer(), None, 10).await.unwrap();
    assert_eq!(for_customers.items.len(), 1);
    assert_eq!(
        h.api
            .products(&staff(), None, 10)
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    let r = h.api.reserve(&service(), reservation(&[("B", 1)])).await;
    assert!(
        matches!(r, Err(ReserveError::UnknownProducts(ref l)) if l == &vec![(0, sku("B"))]),
        "{r:?}"
    );
    let missing = h
        .api
        .update_product(&staff(), &sku("Z"), ProductPatch::default())
        .await;
    assert!(matches!(missing, Err(CatalogueError::NotFound(_))));
}

pub async fn warehouses_are_listed_by_code_and_codes_are_unique(h: &Harness) {
    catalogue(&h.api, &[], &["W2", "W1", "W3"]).await;
    let page = h.api.warehouses(&customer(), None, 2).await.unwrap();
    let codes: Vec<_> = page
        .items
        .iter()
        .map(|w| w.code.as_str().to_owned())
        .collect();
    assert_eq!(codes, vec!["W1", "W2"]);
    let rest = h
        .api
        .warehouses(&customer(), page.next_cursor.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next_cursor, None);
    let dup = h
        .api
        .create_warehouse(
            &staff(),
            agora_inventory::domain::models::NewWarehouse {
                code: wh("W1"),
                name: ProductName::parse("again").unwrap(),
            },
        )
        .await;
    assert!(matches!(dup, Err(WarehouseError::Duplicate(_))), "{dup:?}");
}

pub async fn receipts_add_stock_per_warehouse_and_record_a_movement(h: &Harness) {
    catalogue(&h.api, &["A"], &["W1", "W2"]).await;
    let with_reference = Receipt {
        reference: Some(Note::parse("PO-1", "reference").unwrap()),
        ..receipt("A", "W1", 7)
    };
    let m = h.api.receive(&staff(), with_reference).await.unwrap();
    assert_eq!(
        (m.kind, m.quantity, m.on_hand, m.reserved),
        (MovementKind::Receipt, 7, 7, 0)
    );
    assert_eq!(m.reference.as_deref(), Some("PO-1"));
    assert_eq!(m.actor, "stella");
    receive(&h.api, "A", "W1", 3).await;
    receive(&h.api, "A", "W2", 5).await;
    let st = h.api.stock(&customer(), &sku("A")).await.unwrap();
    let per: Vec<_> = st
        .warehouses
        .iter()
        .map(|l| (l.warehouse.as_str().to_owned(), l.on_hand, l.reserved))
        .collect();
    assert_eq!(per, vec![("W1".to_owned(), 10, 0), ("W2".to_owned(), 5, 0)]);
    assert_eq!(totals(&h.api, "A").await, (15, 0, 15));

    let unknown_sku = h.api.receive(&staff(), receipt("Z", "W1", 1)).await;
    assert!(
        matches!(unknown_sku, Err(StockError::UnknownProduct(_))),
        "{unknown_sku:?}"
    );
    let unknown_wh = h.api.receive(&staff(), receipt("A", "W9", 1)).await;
    assert!(
        matches!(unknown_wh, Err(StockError::UnknownWarehouse(_))),
        "{unknown_wh:?}"
    );
    let z = h.api.stock(&customer(), &sku("Z")).await;
    assert!(matches!(z, Err(ReadError::NotFound(_))), "{z:?}");
}

pub async fn an_adjustment_below_reserved_or_below_zero_is_refused_and_changes_nothing(
    h: &Harness,
) {
    catalogue(&h.api, &["A"], &["W1"]).await;
    receive(&h.api, "A", "W1", 10).await;
    reserve(&h.api, &service(), &[("A", 4)]).await;
    let adjust = |d: i64| Adjustment {
        sku: sku("A"),
        warehouse: wh("W1"),
        delta: Delta::new(d).unwrap(),
        reason: Note::parse("count", "reason").unwrap(),
    };
    let before = movements(&h.api, "A").await.len();
    for d in [-7, -11] {
        let r = h.api.adjust(&staff(), adjust(d)).await;
        assert!(
            matches!(
                r,
                Err(StockError::WouldUnderflow {
                    on_hand: 10,
                    reserved: 4,
                    ..
                })
            ),
            "{d}: {r:?}"
        );
    }
    assert_eq!(totals(&h.api, "A").await, (10, 4, 6));
    assert_eq!(movements(&h.api, "A").await.len(), before);

    let m = h.api.adjust(&staff(), adjust(-6)).await.unwrap();
    assert_eq!(
        (m.kind, m.quantity, m.on_hand, m.reserved),
        (MovementKind::Adjustment, -6, 4, 4)
    );
    assert_eq!(m.reason.as_deref(), Some("count"));
    assert_eq!(totals(&h.api, "A").await, (4, 4, 0));
    h.api.adjust(&staff(), adjust(2)).await.unwrap();
    assert_eq!(totals(&h.api, "A").await, (6, 4, 2));
}

pub async fn movements_list_every_change_newest_first_with_actor_and_correlation(h: &Harness) {
    catalogue(&h.api, &["A"], &["W1"]).await;
    receive(&h.api, "A", "W1", 10).await;
    let svc = service();
    let r = reserve(&h.api, &svc, &[("A", 3)]).await;
    h.api
        .transition(&service(), r.id, ReservationStep::Commit)
        .await
        .unwrap();
    let r2 = reserve(&h.api, &service(), &[("A", 2)]).await;
    h.api
        .transition(&service(), r2.id, ReservationStep::Release)
        .await
        .unwrap();

    let mut kinds = Vec::new();
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = h
            .api
            .movements(&staff(), &sku("A"), cursor.as_deref(), 2)
            .await
            .unwrap();
        kinds.extend(page.items.iter().map(|m| m.kind));
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    use MovementKind::*;
    assert_eq!(
        kinds,
        vec![Release, Reservation, Commit, Reservation, Receipt]
    );
    let reserved = &all[3];
    assert_eq!(
        (reserved.quantity, reserved.on_hand, reserved.reserved),
        (3, 10, 3)
    );
    assert_eq!(reserved.actor, "service:order");
    assert_eq!(reserved.correlation_id, svc.correlation_id);
    assert_eq!(reserved.reservation_id, Some(r.id));
    let committed = &all[2];
    assert_eq!((committed.on_hand, committed.reserved), (7, 0));
    assert_eq!(all[0].reason.as_deref(), Some("requested"));

    let denied = h.api.movements(&customer(), &sku("A"), None, 10).await;
    assert!(matches!(denied, Err(ReadError::Forbidden(_))));
}

pub async fn a_reservation_takes_the_warehouse_with_most_available_first_and_splits_lines(
    h: &Harness,
) {
    catalogue(&h.api, &["A"], &["W1", "W2", "W3"]).await;
    receive(&h.api, "A", "W1", 4).await;
    receive(&h.api, "A", "W2", 6).await;
    receive(&h.api, "A", "W3", 4).await;
    let r = h
        .api
        .reserve(&service(), reservation(&[("A", 9)]))
        .await
        .unwrap();
    assert!(r.created);
    let res = r.reservation;
    assert_eq!(res.status, ReservationStatus::Held);
    let alloc: Vec<_> = res.lines[0]
        .allocations
        .iter()
        .map(|a| (a.warehouse.as_str().to_owned(), a.quantity))
        .collect();
    // W2 has most; W1 and W3 tie at 4 and the tie goes by code.
    assert_eq!(alloc, vec![("W2".to_owned(), 6), ("W1".to_owned(), 3)]);
    assert_eq!(h.api.reservation(&service(), res.id).await.unwrap(), res);
    assert_eq!(totals(&h.api, "A").await, (14, 9, 5));
    let expected_expiry = h.clock_now() + chrono::Duration::seconds(900);
    assert_eq!(res.expires_at, Some(expected_expiry));
}

pub async fn a_multi_line_reservation_reserves_every_line_or_none(h: &Harness) {
    catalogue(&h.api, &["A", "B", "C"], &["W1"]).await;
    receive(&h.api, "A", "W1", 10).await;
    receive(&h.api, "B", "W1", 2).await;
    let r = h
        .api
        .reserve(&service(), reservation(&[("A", 5), ("B", 3), ("C", 1)]))
        .await;
    match r {
        Err(ReserveError::Insufficient(short)) => {
            let skus: Vec<_> = short
                .iter()
                .map(|s| (s.line, s.sku.as_str().to_owned(), s.requested, s.available))
                .collect();
            assert_eq!(
                skus,
                vec![(1, "B".to_owned(), 3, 2), (2, "C".to_owned(), 1, 0)]
            );
        }
        other => panic!("expected insufficient stock, got {other:?}"),
    }
    assert_eq!(totals(&h.api, "A").await, (10, 0, 10));
    assert_eq!(totals(&h.api, "B").await, (2, 0, 2));
    assert_eq!(movements(&h.api, "A").await.len(), 1, "only the receipt");
    h.publish_all().await;
    assert!(h.events.of_type(STOCK_RESERVED).is_empty());

    let unknown = h
        .api
        .reserve(&service(), reservation(&[("A", 1), ("NOPE", 1)]))
        .await;
    assert!(
        matches!(unknown, Err(ReserveError::UnknownProducts(ref l)) if l == &vec![(1, sku("NOPE"))]),
        "{unknown:?}"
    );
    let dup_lines = h
        .api
        .reserve(&service(), reservation(&[("A", 1), ("A", 1)]))
        .await;
    assert!(
        matches!(dup_lines, Err(ReserveError::InvalidLines(_))),
        "{dup_lines:?}"
    );

    let ok = h
        .api
        .reserve(&service(), reservation(&[("A", 5), ("B", 2)]))
        .await
        .unwrap();
    assert_eq!(ok.reservation.lines.len(), 2);
    assert_eq!(totals(&h.api, "B").await, (2, 2, 0));
}

pub async fn reserving_again_with_the_same_id_replays_and_a_different_request_conflicts(
    h: &Harness,
) {
    catalogue(&h.api, &["A"], &["W1"]).await;
    receive(&h.api, "A", "W1", 10).await;
    let req = reservation(&[("A", 3)]);
    let first = h.api.reserve(&service(), req.clone()).await.unwrap();
    h.clock.advance(chrono::Duration::seconds(5));
    let again = h.api.reserve(&service(), req.clone()).await.unwrap();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(again.reservation, first.reservation);
    assert_eq!(totals(&h.api, "A").await, (10, 3, 7));

    let mut other = req.clone();
    other.lines[0].quantity = Quantity::new(4).unwrap();
    let conflict = h.api.reserve(&service(), other).await;
    assert!(
        matches!(conflict, Err(ReserveError::IdConflict(_))),
        "{conflict:?}"
    );
    h.publish_all().await;
    assert_eq!(h.events.of_type(STOCK_RESERVED).len(), 1);
}

pub async fn commit_takes_stock_out_release_gives_it_back_and_both_are_idempotent(h: &Harness) {
    catalogue(&h.api, &["A"], &["W1", "W2"]).await;
    receive(&h.api, "A", "W1", 5).await;
    receive(&h.api, "A", "W2", 5).await;
    let r1 = reserve(&h.api, &service(), &[("A", 7)]).await;
    let r2 = reserve(&h.api, &service(), &[("A", 2)]).await;
    assert_eq!(totals(&h.api, "A").await, (10, 9, 1));

    let confirmed = h
        .api
        .transition(&service(), r1.id, ReservationStep::Confirm)
        .await
        .unwrap();
    assert_eq!(confirmed.status, ReservationStatus::Confirmed);
    assert_eq!(confirmed.expires_at, None);
    // (reservation, what happens to it twice, where that leaves it and the
    // stock, what may no longer happen to it)
    let cases = [
        (
            r1.id,
            ReservationStep::Commit,
            ReservationStatus::Committed,
            (3, 2, 1),
            ReservationStep::Release,
        ),
        (
            r2.id,
            ReservationStep::Release,
            ReservationStatus::Released,
            (3, 0, 3),
            ReservationStep::Commit,
        ),
    ];
    for (id, step, status, stock, refused) in cases {
        for _ in 0..2 {
            let r = h.api.transition(&service(), id, step).await;
            assert_eq!(r.map(|r| r.status).ok(), Some(status), "{step:?} of {id:?}");
            assert_eq!(totals(&h.api, "A").await, stock, "after {step:?}");
        }
        let late = h.api.transition(&service(), id, refused).await;
        assert!(
            matches!(late, Err(ReservationError::InvalidTransition { .. })),
            "{late:?}"
        );
    }
    let missing = h
        .api
        .transition(
            &service(),
            ReservationId(uuid::Uuid::now_v7()),
            ReservationStep::Commit,
        )
        .await;
    assert!(matches!(missing, Err(ReservationError::NotFound(_))));

    h.publish_all().await;
    assert_eq!(h.events.of_type(STOCK_COMMITTED).len(), 1);
    assert_eq!(h.events.of_type(STOCK_RELEASED).len(), 1);
}

pub async fn expired_reservations_are_released_by_the_sweeper_and_cannot_be_confirmed(h: &Harness) {
    catalogue(&h.api, &["A"], &["W1"]).await;
    receive(&h.api, "A", "W1", 10).await;
    let mut short = reservation(&[("A", 2)]);
    short.ttl = Some(Ttl::from_secs(60).unwrap());
    let short = h.api.reserve(&service(), short).await.unwrap().reservation;
    let default_ttl = reserve(&h.api, &service(), &[("A", 3)]).await;
    let confirmed = reserve(&h.api, &service(), &[("A", 1)]).await;
    h.api
        .transition(&service(), confirmed.id, ReservationStep::Confirm)
        .await
        .unwrap();
    assert_eq!(totals(&h.api, "A").await, (10, 6, 4));

    h.clock.advance(chrono::Duration::seconds(59));
    assert_eq!(h.module.sweep_expired().await.unwrap(), 0);
    h.clock.advance(chrono::Duration::seconds(1));
    let late_confirm = h
        .api
        .transition(&service(), short.id, ReservationStep::Confirm)
        .await;
    assert!(
        matches!(late_confirm, Err(ReservationError::Expired(_))),
        "{late_confirm:?}"
    );
    assert_eq!(h.module.sweep_expired().await.unwrap(), 1);
    assert_eq!(status(&h.api, short.id).await, ReservationStatus::Released);
    assert_eq!(totals(&h.api, "A").await, (10, 4, 6));

    h.clock.advance(chrono::Duration::seconds(900));
    assert_eq!(h.module.sweep_expired().await.unwrap(), 1);
    assert_eq!(
        status(&h.api, default_ttl.id).await,
        ReservationStatus::Released
    );
    assert_eq!(
        status(&h.api, confirmed.id).await,
        ReservationStatus::Confirmed
    );
    assert_eq!(totals(&h.api, "A").await, (10, 1, 9));
    assert_eq!(h.module.sweep_expired().await.unwrap(), 0);

    h.publish_all().await;
    let released = h.events.of_type(STOCK_RELEASED);
    assert_eq!(released.len(), 2);
    let p: ReleasedPayload = released[0].payload_as().unwrap();
    assert_eq!(p.reason, "expired");
    assert_eq!(p.reservation_id, short.id.0);
}

pub async fn every_change_writes_its_events_exactly_once(h: &Harness) {
    h.api
        .create_product(&staff(), new_product("A", 5))
        .await
        .unwrap();
    catalogue(&h.api, &[], &["W1"]).await;
    receive(&h.api, "A", "W1", 8).await;
    let svc = service();
    let r = reserve(&h.api, &svc, &[("A", 2)]).await; // 6 left: no low stock
    let r2 = reserve(&h.api, &service(), &[("A", 2)]).await; // 4 left: low stock
    reserve(&h.api, &service(), &[("A", 1)]).await; // 3 left: already low
    h.api
        .transition(&service(), r.id, ReservationStep::Commit)
        .await
        .unwrap();
    h.api
        .transition(&service(), r.id, ReservationStep::Commit)
        .await
        .unwrap();
    h.api
        .transition(&service(), r2.id, ReservationStep::Release)
        .await
        .unwrap(); // back to 5: not low
    h.api
        .adjust(
            &staff(),
            Adjustment {
                sku: sku("A"),
                warehouse: wh("W1"),
                delta: Delta::new(-1).unwrap(),
                reason: Note::parse("damaged", "reason").unwrap(),
            },
        )
        .await
        .unwrap(); // 4: low again
    h.publish_all().await;
    h.publish_all().await;

    let reserved = h.events.of_type(STOCK_RESERVED);
    assert_eq!(reserved.len(), 3);
    let first: ReservationPayload = reserved[0].payload_as().unwrap();
    assert_eq!(first.reservation_id, r.id.0);
    assert_eq!(first.order_id, r.order_id.as_str());
    assert_eq!(first.lines[0].allocations[0].warehouse, "W1");
    assert_eq!(reserved[0].correlation_id, svc.correlation_id);
    assert_eq!(reserved[0].source, "inventory");
    assert_eq!(h.events.of_type(STOCK_COMMITTED).len(), 1);
    assert_eq!(h.events.of_type(STOCK_RELEASED).len(), 1);
    let low = h.events.of_type(LOW_STOCK);
    let lows: Vec<LowStockPayload> = low.iter().map(|e| e.payload_as().unwrap()).collect();
    assert_eq!(
        lows.iter().map(|l| l.available).collect::<Vec<_>>(),
        vec![4, 4]
    );
    assert!(lows.iter().all(|l| l.sku == "A" && l.threshold == 5));
    let ids: BTreeSet<_> = h.events.events().iter().map(|e| e.id).collect();
    assert_eq!(
        ids.len(),
        h.events.events().len(),
        "no event delivered twice"
    );
}

pub async fn only_the_right_roles_change_the_catalogue_stock_and_reservations(h: &Harness) {
    catalogue(&h.api, &["A"], &["W1"]).await;
    receive(&h.api, "A", "W1", 5).await;
    for who in [customer(), service()] {
        let r = h.api.create_product(&who, new_product("X", 5)).await;
        assert!(
            matches!(r, Err(CatalogueError::Forbidden(_))),
            "{:?}",
            who.principal.roles
        );
        let r = h.api.receive(&who, receipt("A", "W1", 1)).await;
        assert!(matches!(r, Err(StockError::Forbidden(_))));
        let r = h.api.deactivate_product(&who, &sku("A")).await;
        assert!(matches!(r, Err(CatalogueError::Forbidden(_))));
    }
    for who in [customer(), staff()] {
        let r = h.api.reserve(&who, reservation(&[("A", 1)])).await;
        assert!(
            matches!(r, Err(ReserveError::Forbidden(_))),
            "{:?}",
            who.principal.roles
        );
    }
    assert!(matches!(
        h.api
            .reservation(&customer(), ReservationId(uuid::Uuid::now_v7()))
            .await,
        Err(ReadError::Forbidden(_))
    ));
    // admin holds every right
    h.api
        .create_product(&admin(), new_product("X", 5))
        .await
        .unwrap();
    let r = h
        .api
        .reserve(&admin(), reservation(&[("A", 1)]))
        .await
        .unwrap();
    h.api
        .transition(
            &ctx("ada", &[Role::Admin]),
            r.reservation.id,
            ReservationStep::Release,
        )
        .await
        .unwrap();
    assert_eq!(totals(&h.api, "A").await, (5, 0, 5));
}

pub async fn five_hundred_concurrent_single_unit_reservations_on_a_hundred_units_sell_exactly_a_hundred(
    h: &Harness,
) {
    catalogue(&h.api, &["HOT"], &["W1"]).await;
    receive(&h.api, "HOT", "W1", 100).await;
    // Half the callers go through a second instance on the same database, so
    // the store's own guards (not just one process's queueing) are what holds.
    let apis = [Arc::new(h.api.clone()), Arc::new(h.twin().await)];
    let mut tasks = Vec::new();
    for i in 0..500 {
        let api = apis[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            api.reserve(&service(), reservation(&[("HOT", 1)])).await
        }));
    }
    let (mut ok, mut short) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ReserveError::Insufficient(_)) => short += 1,
            Err(e) => panic!("unexpected failure: {e:?}"),
        }
    }
    assert_eq!((ok, short), (100, 400));
    assert_eq!(totals(&h.api, "HOT").await, (100, 100, 0));
    h.publish_all().await;
    assert_eq!(h.events.of_type(STOCK_RESERVED).len(), 100);
}

impl Harness {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use agora_inventory::Clock;
        self.clock.now()
    }
}

/// Run every contract test against each backend.
macro_rules! contract_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let h = crate::helpers::Harness::sqlite().await;
                    super::$name(&h).await;
                }
            )*
        }

        mod mongodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(h) = crate::helpers::Harness::mongo().await else { return };
                    super::$name(&h).await;
                }
            )*
        }
    };
}

contract_suite!(
    creating_a_product_stores_it_and_a_duplicate_sku_is_refused,
    products_come_in_sku_order_one_page_at_a_time,
    a_deleted_product_is_inactive_hidden_from_customers_and_not_reservable,
    warehouses_are_listed_by_code_and_codes_are_unique,
    receipts_add_stock_per_warehouse_and_record_a_movement,
    an_adjustment_below_reserved_or_below_zero_is_refused_and_changes_nothing,
    movements_list_every_change_newest_first_with_actor_and_correlation,
    a_reservation_takes_the_warehouse_with_most_available_first_and_splits_lines,
    a_multi_line_reservation_reserves_every_line_or_none,
    reserving_again_with_the_same_id_replays_and_a_different_request_conflicts,
    commit_takes_stock_out_release_gives_it_back_and_both_are_idempotent,
    expired_reservations_are_released_by_the_sweeper_and_cannot_be_confirmed,
    every_change_writes_its_events_exactly_once,
    only_the_right_roles_change_the_catalogue_stock_and_reservations,
    five_hundred_concurrent_single_unit_reservations_on_a_hundred_units_sell_exactly_a_hundred,
);
