//! The `[payment]` section of `config/default.toml` and its `AGORA__PAYMENT__*`
//! overrides deserialise into [`Settings`], and bad values are refused naming
//! the variable to fix.

use agora_payment::{ProviderKind, Settings};
use secrecy::ExposeSecret;

fn load(env: &[(&str, &str)]) -> Settings {
    agora_kernel::testing::default_settings("payment", env)
}

#[test]
fn the_defaults_are_the_simulated_provider_and_a_breaker_of_five_faults_and_thirty_seconds() {
    let s = load(&[]);
    assert_eq!(s.provider, ProviderKind::Simulated);
    assert_eq!(s.provider_timeout_ms, 2000);
    assert_eq!(s.simulated_latency_ms, 0);
    assert_eq!(s.breaker.failure_threshold, 5);
    assert_eq!(s.breaker.recovery_timeout_secs, 30);
    assert!(s.validate().is_ok());
    // Keys missing from the file take the same defaults.
    let bare: Settings = serde_json::from_value(serde_json::json!({"database_url": ""})).unwrap();
    assert_eq!(bare.provider_timeout_ms, 2000);
    assert_eq!(bare.breaker.failure_threshold, 5);
}

#[test]
fn environment_variables_override_every_key() {
    let s = load(&[
        ("AGORA__PAYMENT__PROVIDER", "http"),
        ("AGORA__PAYMENT__PROVIDER_URL", "https://api.stripe.com"),
        ("AGORA__PAYMENT__PROVIDER_SECRET_KEY", "sk_test_abc"),
        ("AGORA__PAYMENT__PROVIDER_TIMEOUT_MS", "1500"),
        ("AGORA__PAYMENT__SIMULATED_LATENCY_MS", "25"),
        ("AGORA__PAYMENT__BREAKER__FAILURE_THRESHOLD", "3"),
        ("AGORA__PAYMENT__BREAKER__RECOVERY_TIMEOUT_SECS", "10"),
    ]);
    assert_eq!(s.provider, ProviderKind::Http);
    assert_eq!(s.provider_url, "https://api.stripe.com");
    assert_eq!(s.provider_secret_key.expose_secret(), "sk_test_abc");
    assert_eq!(s.provider_timeout_ms, 1500);
    assert_eq!(s.simulated_latency_ms, 25);
    assert_eq!(s.breaker.failure_threshold, 3);
    assert_eq!(s.breaker.recovery_timeout_secs, 10);
    assert!(s.validate().is_ok());
    assert!(
        !format!("{s:?}").contains("sk_test_abc"),
        "the secret never prints"
    );
}

#[test]
fn invalid_settings_name_the_variable_to_fix() {
    let cases = [
        (
            vec![("AGORA__PAYMENT__PROVIDER", "http")],
            "AGORA__PAYMENT__PROVIDER_URL",
        ),
        (
            vec![("AGORA__PAYMENT__PROVIDER_TIMEOUT_MS", "0")],
            "AGORA__PAYMENT__PROVIDER_TIMEOUT_MS",
        ),
        (
            vec![("AGORA__PAYMENT__BREAKER__FAILURE_THRESHOLD", "0")],
            "AGORA__PAYMENT__BREAKER__FAILURE_THRESHOLD",
        ),
        (
            vec![("AGORA__PAYMENT__BREAKER__RECOVERY_TIMEOUT_SECS", "0")],
            "AGORA__PAYMENT__BREAKER__RECOVERY_TIMEOUT_SECS",
        ),
    ];
    for (env, key) in cases {
        let err = load(&env).validate().unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}
