//! Collections answer `{"items": [...], "next_cursor": ...}`; `limit` is 1–100
//! (default 20); cursors are opaque strings (base64url of a module-chosen key,
//! made and read only by [`encode_cursor`] and [`decode_cursor`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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

/// Cut `items`, fetched with one more than `limit`, down to a page: the page,
/// and the `key` of its last item when more follow (where the next page
/// starts).
pub fn cut<T, K>(mut items: Vec<T>, limit: u32, key: impl FnOnce(&T) -> K) -> (Vec<T>, Option<K>) {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = if more { items.last().map(key) } else { None };
    (items, next)
}

/// A cursor over `key` (the last item's sort key), opaque to callers.
pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// The key back from a cursor; `None` when it is not one this API handed out.
pub fn decode_cursor(cursor: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
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

    #[test]
    fn a_fetch_of_one_more_than_the_limit_is_cut_to_a_page_that_says_where_the_next_starts() {
        assert_eq!(cut(vec![1, 2, 3], 2, |n| n * 10), (vec![1, 2], Some(20)));
        assert_eq!(cut(vec![1, 2], 2, |n| n * 10), (vec![1, 2], None));
        assert_eq!(cut(Vec::<u8>::new(), 2, |n| *n), (vec![], None));
    }

    #[test]
    fn cursors_are_base64url_of_their_key_and_foreign_ones_are_refused() {
        let c = encode_cursor("SKU-1/ü");
        assert!(
            c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        );
        assert_eq!(decode_cursor(&c).as_deref(), Some("SKU-1/ü"));
        for foreign in ["zz", "zzz", "not a cursor", "//"] {
            assert_eq!(decode_cursor(foreign), None, "{foreign}");
        }
    }
}
