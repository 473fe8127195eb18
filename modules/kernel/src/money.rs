//! Money: integer minor units plus an ISO 4217 currency. Never floats.
//!
//! Arithmetic refuses to mix currencies and to overflow, so a total is either
//! right or an error.

use serde::{Deserialize, Serialize};

/// ISO 4217 codes agora accepts, with their number of minor-unit digits.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BGN", 2),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("PHP", 2),
    ("PLN", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// An ISO 4217 currency code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parse an ISO 4217 code (`"EUR"`); lower case is refused, as ISO writes them upper case.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, _)| {
                let b = c.as_bytes();
                Currency([b[0], b[1], b[2]])
            })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.chars().take(16).collect()))
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Digits after the decimal point (2 for EUR, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u8 {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == self.code())
            .map(|(_, e)| *e)
            .unwrap_or(2)
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Currency::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.code().to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency `{0}` (expected an ISO 4217 code such as EUR)")]
    UnknownCurrency(String),
    #[error("cannot combine {0} with {1}")]
    MixedCurrencies(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
    #[error("amount must not be negative")]
    Negative,
}

/// An amount in minor units (cents) of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// A non-negative amount, as prices and charges are.
    pub fn non_negative(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if minor < 0 {
            Err(MoneyError::Negative)
        } else {
            Ok(Self { minor, currency })
        }
    }

    pub fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.combine(other, i64::checked_add)
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.combine(other, i64::checked_sub)
    }

    /// `op` on two amounts of the same currency.
    fn combine(self, other: Money, op: fn(i64, i64) -> Option<i64>) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        let minor = op(self.minor, other.minor).ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        let minor = self.minor.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::MixedCurrencies(self.currency, other.currency))
        }
    }

    /// Human form for messages: `12.50 EUR`, `1200 JPY`.
    pub fn display(&self) -> String {
        let exp = u32::from(self.currency.exponent());
        if exp == 0 {
            return format!("{} {}", self.minor, self.currency);
        }
        let unit = 10i64.pow(exp);
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        let unit = unit.unsigned_abs();
        format!(
            "{sign}{}.{:0width$} {}",
            abs / unit,
            abs % unit,
            self.currency,
            width = exp as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: i64) -> Money {
        Money::new(
            minor,
            Currency::parse("EUR").unwrap_or(Currency([b'E', b'U', b'R'])),
        )
    }

    #[test]
    fn adding_the_same_currency_sums_minor_units() {
        assert_eq!(eur(150).checked_add(eur(250)), Ok(eur(400)));
    }

    #[test]
    fn mixing_currencies_is_refused() {
        let usd = Money::new(
            1,
            Currency::parse("USD").unwrap_or(Currency([b'U', b'S', b'D'])),
        );
        assert!(matches!(
            eur(1).checked_add(usd),
            Err(MoneyError::MixedCurrencies(_, _))
        ));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(eur(i64::MAX).checked_add(eur(1)), Err(MoneyError::Overflow));
        assert_eq!(eur(i64::MAX).checked_mul(2), Err(MoneyError::Overflow));
    }

    #[test]
    fn unknown_or_lower_case_currencies_are_refused() {
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("XYZ").is_err());
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
    }

    #[test]
    fn display_uses_the_currency_exponent() {
        assert_eq!(eur(1250).display(), "12.50 EUR");
        assert_eq!(eur(-5).display(), "-0.05 EUR");
        let jpy = Currency::parse("JPY").map(|c| Money::new(1200, c).display());
        assert_eq!(jpy.ok().as_deref(), Some("1200 JPY"));
    }
}
