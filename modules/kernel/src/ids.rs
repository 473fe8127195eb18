//! Typed ids: a UUID v7 (time-ordered) wrapped per entity, so an `OrderId` can
//! never be passed where a `PaymentId` is expected.

/// Declare a typed id: `typed_id!(OrderId, "order");`.
#[macro_export]
macro_rules! typed_id {
    ($name:ident, $what:literal) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A new time-ordered id.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> uuid::Uuid {
                self.0
            }

            /// Parse from the canonical text form.
            pub fn parse(s: &str) -> Result<Self, $crate::ids::IdError> {
                uuid::Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| $crate::ids::IdError { what: $what })
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ids::IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

/// A string that is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {what} id (expected a UUID)")]
pub struct IdError {
    pub what: &'static str,
}

typed_id!(EventId, "event");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_time() {
        let a = EventId::new();
        let b = EventId::new();
        assert!(a < b);
    }

    #[test]
    fn garbage_is_not_an_id() {
        assert_eq!(EventId::parse("nope"), Err(IdError { what: "event" }));
        let id = EventId::new();
        assert_eq!(EventId::parse(&id.to_string()), Ok(id));
    }
}
