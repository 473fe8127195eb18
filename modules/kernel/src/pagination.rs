//! Collections answer `{"items": [...], "next_cursor": ...}`; `limit` is 1–100
//! (default 20); cursors are opaque strings (base64url of a module-chosen key).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problem::Problem;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// A page of a collection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Parse the `limit` query parameter: absent → 20, 1–100 accepted, else 422.
pub fn parse_limit(raw: Option<&str>) -> Result<u32, Problem> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(Problem::invalid_field(
                "limit",
                format!("must be an integer between 1 and {MAX_LIMIT}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_to_twenty_and_refuses_out_of_range() {
        assert_eq!(parse_limit(None).ok(), Some(20));
        assert_eq!(parse_limit(Some("100")).ok(), Some(100));
        for bad in ["0", "101", "-1", "ten", ""] {
            assert_eq!(
                parse_limit(Some(bad)).err().map(|p| p.status),
                Some(422),
                "{bad}"
            );
        }
    }
}
