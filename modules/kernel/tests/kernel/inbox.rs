//! The inbox remembers which events a consumer handled, per consumer.

use agora_kernel::inbox::{self, InboxStore};
use uuid::Uuid;

use crate::helpers::TestDb;

/// Record one new event for each of `consumers` in turn, in a fresh inbox:
/// whether each recording was new.
async fn record_one_event_for(consumers: [&str; 2]) -> [bool; 2] {
    let db = TestDb::new().await;
    let store = inbox::sqlite::Store::new(db.pool.clone());
    let event = Uuid::now_v7();
    let mut new = [false; 2];
    for (consumer, new) in consumers.into_iter().zip(&mut new) {
        *new = store.record_once(consumer, event).await.unwrap();
    }
    new
}

#[tokio::test]
async fn recording_the_same_event_twice_for_one_consumer_reports_a_duplicate() {
    assert_eq!(
        record_one_event_for(["notification", "notification"]).await,
        [true, false]
    );
}

#[tokio::test]
async fn each_consumer_has_its_own_inbox() {
    assert_eq!(
        record_one_event_for(["notification", "inventory"]).await,
        [true, true]
    );
}

#[tokio::test]
async fn an_inbox_record_in_a_rolled_back_transaction_is_forgotten() {
    let db = TestDb::new().await;
    let event = Uuid::now_v7();

    let rolled_back: anyhow::Result<()> = db
        .pool
        .write(move |tx| {
            assert!(inbox::sqlite::record(tx, "notification", event)?);
            anyhow::bail!("the consumer's own write failed")
        })
        .await;
    assert!(rolled_back.is_err());

    let store = inbox::sqlite::Store::new(db.pool.clone());
    assert!(store.record_once("notification", event).await.unwrap());
}

/// Record two events with a moment between them, purge at that moment: the
/// first is forgotten (handling it again counts as new), the second is not.
async fn purging_forgets_only_what_was_handled_before_the_cutoff(store: &dyn InboxStore) {
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(store.record_once("notification", first).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(store.record_once("notification", second).await.unwrap());

    let an_hour_ago = cutoff - chrono::Duration::hours(1);
    assert_eq!(store.purge_handled_before(an_hour_ago).await.unwrap(), 0);
    assert_eq!(store.purge_handled_before(cutoff).await.unwrap(), 1);
    assert!(store.record_once("notification", first).await.unwrap());
    assert!(!store.record_once("notification", second).await.unwrap());
}

#[tokio::test]
async fn purging_forgets_only_what_was_handled_before_the_cutoff_on_sqlite() {
    let db = TestDb::new().await;
    purging_forgets_only_what_was_handled_before_the_cutoff(&inbox::sqlite::Store::new(
        db.pool.clone(),
    ))
    .await;
}

#[tokio::test]
async fn purging_forgets_only_what_was_handled_before_the_cutoff_on_postgres() {
    let Some(url) = agora_kernel::testing::fresh_postgres_url().await else {
        return;
    };
    let db = agora_kernel::db::SqlDatabase::connect(&url).await.unwrap();
    purging_forgets_only_what_was_handled_before_the_cutoff(&*db.inbox()).await;
    db.close().await;
}

#[tokio::test]
async fn the_purge_task_forgets_events_handled_longer_ago_than_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/n.db", dir.path().display());
    let bus = std::sync::Arc::new(agora_kernel::events::InMemoryBus::new());
    let base = agora_kernel::db::SqlModuleBase::connect(
        "notification",
        &agora_kernel::Wiring::new(&url, bus),
    )
    .await
    .unwrap();
    let agora_kernel::db::SqlDatabase::Sqlite(db) = base.db.clone() else {
        unreachable!("a sqlite: URL opens SQLite")
    };
    let old = chrono::Utc::now()
        - chrono::Duration::from_std(inbox::RETENTION).unwrap()
        - chrono::Duration::minutes(1);
    let old_ms = agora_kernel::db::epoch_ms(old);
    db.write(move |tx| {
        tx.execute(
            "INSERT INTO inbox (consumer, event_id, handled_at) VALUES ('notification', 'old', ?1)",
            [old_ms],
        )
    })
    .await
    .unwrap();
    assert!(
        base.db
            .inbox()
            .record_once("notification", Uuid::now_v7())
            .await
            .unwrap()
    );
    let count = |db: agora_kernel::sqlite::Sqlite| async move {
        db.read(|tx| tx.query_row("SELECT count(*) FROM inbox", [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap()
    };
    assert_eq!(count(db.clone()).await, 2);

    let task = base.inbox_purge_task();
    assert_eq!(task.name, "notification-inbox-purge");
    let token = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn((task.run)(token.clone()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while count(db.clone()).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old event is still in the inbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    token.cancel();
    running.await.unwrap();
}
