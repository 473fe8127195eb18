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

/// Each of `counts` (a count, a period, a size) is at least 1; the first
/// that is not, refused.
///
/// # Errors
/// The first zero.
pub fn at_least_one(counts: &[(&'static str, u64)]) -> Result<(), InvalidSetting> {
    match counts.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(InvalidSetting::new(key, "must be at least 1")),
        None => Ok(()),
    }
}

/// A setting that names one of a closed set: the value `raw` names, or why
/// not, naming the values it takes ("must be json or pretty, not `fancy`";
/// serde's own enum message names none).
///
/// # Errors
/// `raw` is none of the names.
pub fn one_of<T: Copy>(raw: &str, named: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, value)) = named.iter().find(|(name, _)| *name == raw) {
        return Ok(*value);
    }
    let names: Vec<&str> = named.iter().map(|(name, _)| *name).collect();
    let listed = match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "nothing".to_owned(),
    };
    Err(format!("must be {listed}, not `{raw}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_one_refuses_the_first_zero() {
        assert_eq!(at_least_one(&[("a.b", 1), ("a.c", 5)]), Ok(()));
        assert_eq!(
            at_least_one(&[("a.b", 1), ("a.c", 0), ("a.d", 0)]),
            Err(InvalidSetting::new("a.c", "must be at least 1"))
        );
    }

    #[test]
    fn one_of_takes_a_name_and_lists_them_all_when_refusing() {
        let named = [("a", 1), ("b", 2), ("c", 3)];
        assert_eq!(one_of("b", &named), Ok(2));
        assert_eq!(
            one_of("d", &named),
            Err("must be a, b or c, not `d`".to_owned())
        );
        assert_eq!(
            one_of("x", &named[..1]),
            Err("must be a, not `x`".to_owned())
        );
    }

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
