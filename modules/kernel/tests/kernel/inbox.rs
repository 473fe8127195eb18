//! The inbox remembers which events a consumer handled, per consumer.

use agora_kernel::inbox::{self, InboxStore};
use uuid::Uuid;

use crate::helpers::TestDb;

#[tokio::test]
async fn recording_the_same_event_twice_for_one_consumer_reports_a_duplicate() {
    let db = TestDb::new().await;
    let store = inbox::sqlite::Store::new(db.pool.clone());
    let event = Uuid::now_v7();

    assert!(store.record_once("notification", event).await.unwrap());
    assert!(!store.record_once("notification", event).await.unwrap());
}

#[tokio::test]
async fn each_consumer_has_its_own_inbox() {
    let db = TestDb::new().await;
    let store = inbox::sqlite::Store::new(db.pool.clone());
    let event = Uuid::now_v7();

    assert!(store.record_once("notification", event).await.unwrap());
    assert!(store.record_once("inventory", event).await.unwrap());
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
