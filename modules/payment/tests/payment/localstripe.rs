//! The `http` provider against localstripe (PyPI `localstripe`, a fake but
//! stateful Stripe server), when `AGORA_TEST_LOCALSTRIPE_URL` names one, e.g.
//! `pip install localstripe && localstripe --port 8420` and
//! `AGORA_TEST_LOCALSTRIPE_URL=http://127.0.0.1:8420`. Opt-in: without the
//! variable the test says SKIPPED (CI does not start localstripe).

use agora_payment::ProviderKind;
use agora_payment::domain::models::{PaymentStatus, RefundRequest, RequestKey};
use agora_payment::testing::form_encode;
use secrecy::SecretString;

use crate::helpers::{Backend, Harness, assert_ref, payment, staff};

fn localstripe_url() -> Option<String> {
    match std::env::var("AGORA_TEST_LOCALSTRIPE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED: set AGORA_TEST_LOCALSTRIPE_URL to run against localstripe");
            None
        }
    }
}

/// A card PaymentMethod created on the server (localstripe has no `pm_card_*` ids).
async fn card(url: &str, number: &str) -> String {
    let body = form_encode(&[
        ("type", "card".to_owned()),
        ("card[number]", number.to_owned()),
        ("card[exp_month]", "12".to_owned()),
        ("card[exp_year]", "2034".to_owned()),
        ("card[cvc]", "123".to_owned()),
    ]);
    let res: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/v1/payment_methods"))
        .bearer_auth("sk_test_agora")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    res["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn against_localstripe_a_charge_succeeds_a_decline_fails_and_a_refund_is_recorded() {
    let Some(url) = localstripe_url() else { return };
    let provider_url = url.clone();
    let h = Harness::start_with(Backend::Sqlite, move |s| {
        s.provider = ProviderKind::Http;
        s.provider_url = provider_url;
        s.provider_secret_key = SecretString::from("sk_test_agora".to_owned());
        s.provider_timeout_ms = 5000;
    })
    .await
    .unwrap();

    let visa = card(&url, "4242424242424242").await;
    let ok = payment(&h.api, "alice", 2500, &visa).await;
    assert_eq!(ok.status, PaymentStatus::Succeeded, "{ok:?}");
    assert_ref(ok.provider_ref.as_deref(), "pi_");

    let declining = card(&url, "4000000000000341").await;
    let failed = payment(&h.api, "alice", 2500, &declining).await;
    assert_eq!(failed.status, PaymentStatus::Failed, "{failed:?}");
    assert!(failed.failure_code.is_some());

    let refund = RefundRequest::new(ok.id, 1000, None, RequestKey::parse("ls-1").unwrap()).unwrap();
    let refunded = h.api.refund(&staff(), refund).await.unwrap();
    assert_eq!(refunded.payment.status, PaymentStatus::PartiallyRefunded);
    assert_ref(refunded.refund.provider_ref.as_deref(), "re_");
}
