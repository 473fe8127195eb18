//! The `[notification]` section of `config/default.toml` and the
//! `AGORA__NOTIFICATION__*` variables deserialise into [`Settings`] the way the
//! host loads them (same `config` layering).

use agora_notification::Settings;
use secrecy::ExposeSecret;

fn load(env: &[(&str, &str)]) -> Settings {
    agora_kernel::testing::default_settings("notification", env)
}

#[test]
fn the_default_file_gives_the_log_channel_and_eight_attempts() {
    let s = load(&[]);
    assert_eq!(s.max_attempts, 8);
    assert!(s.smtp.url.expose_secret().is_empty());
    assert!(s.sms.url.is_empty() && s.push.url.is_empty());
    assert!(s.validate().is_ok());
}

#[test]
fn environment_variables_override_the_file() {
    let s = load(&[
        ("AGORA__NOTIFICATION__MAX_ATTEMPTS", "3"),
        ("AGORA__NOTIFICATION__SMTP__URL", "smtp://127.0.0.1:2525"),
        ("AGORA__NOTIFICATION__SMTP__FROM", "shop <shop@example.com>"),
        ("AGORA__NOTIFICATION__SMS__URL", "http://127.0.0.1:9000/sms"),
        ("AGORA__NOTIFICATION__SMS__API_KEY", "sk_live_1"),
        (
            "AGORA__NOTIFICATION__PUSH__URL",
            "https://push.example/send",
        ),
    ]);
    assert_eq!(s.max_attempts, 3);
    assert_eq!(s.smtp.url.expose_secret(), "smtp://127.0.0.1:2525");
    assert_eq!(s.smtp.from, "shop <shop@example.com>");
    assert_eq!(s.sms.url, "http://127.0.0.1:9000/sms");
    assert_eq!(s.sms.api_key.expose_secret(), "sk_live_1");
    assert_eq!(s.push.url, "https://push.example/send");
    assert!(s.validate().is_ok());
    assert!(
        !format!("{s:?}").contains("sk_live_1"),
        "secrets never print"
    );
}
