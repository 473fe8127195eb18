//! The one shape of a refused setting. Every module's `Settings::validate`
//! returns [`InvalidSetting`], naming the key as `module.name`; the host (and
//! a module building itself) reports it with the environment variable that
//! sets it, `AGORA__MODULE__NAME`.

/// A setting refused: `.0` the key (`order.lease_secs`), `.1` why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", message(.0, .1))]
pub struct InvalidSetting(pub &'static str, pub String);

impl InvalidSetting {
    pub fn new(key: &'static str, why: impl Into<String>) -> Self {
        Self(key, why.into())
    }
}

/// How a refused setting reads, for any key (the host's own keys too, some
/// of which it builds at run time, such as `remote.<module>.urls`).
pub fn message(key: &str, why: impl std::fmt::Display) -> String {
    format!("invalid setting {} ({key}): {why}", env_name(key))
}

/// `rate_limit.per_second` → `AGORA__RATE_LIMIT__PER_SECOND`.
pub fn env_name(key: &str) -> String {
    format!("AGORA__{}", key.replace('.', "__").to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_setting_names_its_key_and_environment_variable() {
        let e = InvalidSetting::new("payment.breaker.failure_threshold", "must be at least 1");
        assert_eq!(
            e.to_string(),
            "invalid setting AGORA__PAYMENT__BREAKER__FAILURE_THRESHOLD \
             (payment.breaker.failure_threshold): must be at least 1"
        );
    }
}
