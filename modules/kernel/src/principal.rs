//! Who is calling: the authenticated [`Principal`] and its [`Role`]s.
//!
//! The gateway puts a `Principal` in the request's extensions after checking the
//! bearer token; handlers take it as an extractor (401 when absent). Role rules
//! live in each module's service layer, so HTTP and in-process callers meet the
//! same rules.

use std::collections::BTreeSet;
use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problem::Problem;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and changes only their own orders and notifications.
    Customer,
    /// Catalogue, stock, shipping, refunds.
    Staff,
    /// Every right, including every `staff` right.
    Admin,
    /// Module-to-module calls once modules are extracted.
    Service,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Customer, Role::Staff, Role::Admin, Role::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Staff => "staff",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}` (expected customer, staff, admin or service)")
            })
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Principal {
    /// The token's `sub`: an opaque id of 1–255 characters, never parsed.
    pub subject: String,
    pub roles: BTreeSet<Role>,
    /// The token's `email` claim, when present.
    pub email: Option<String>,
}

impl Principal {
    pub fn new(subject: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Self {
        Self {
            subject: subject.into(),
            roles: roles.into_iter().collect(),
            email: None,
        }
    }

    /// The principal the host uses for in-process module-to-module calls.
    pub fn service(name: &str) -> Self {
        Self::new(format!("service:{name}"), [Role::Service])
    }

    /// `admin` passes every role check.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.contains(&Role::Admin) || roles.iter().any(|r| self.roles.contains(r))
    }

    /// Staff or admin: may see everyone's data.
    pub fn is_staff(&self) -> bool {
        self.has_any(&[Role::Staff])
    }

    /// `Err` unless the principal holds one of `roles` (admin holds every
    /// one): a domain error, which the HTTP edge answers with 403.
    ///
    /// # Errors
    /// [`Denied`], naming the roles.
    pub fn require(&self, roles: &[Role]) -> Result<(), Denied> {
        if self.has_any(roles) {
            Ok(())
        } else {
            Err(Denied {
                roles: roles.to_vec(),
            })
        }
    }

    /// [`Self::require`] for HTTP handlers: `Err(403)` problem+json.
    ///
    /// # Errors
    /// 403, naming the roles.
    pub fn require_any(&self, roles: &[Role]) -> Result<(), Problem> {
        self.require(roles).map_err(Problem::from)
    }
}

/// The caller holds none of the roles an action needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this action needs one of the roles: {}", list(.roles))]
pub struct Denied {
    pub roles: Vec<Role>,
}

fn list(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<Denied> for Problem {
    fn from(d: Denied) -> Self {
        Problem::forbidden(d.to_string())
    }
}

impl FromRequest for Principal {
    type Error = Problem;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .ok_or_else(Problem::missing_credentials),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_holds_every_role_right() {
        let admin = Principal::new("a", [Role::Admin]);
        assert!(admin.has_any(&[Role::Staff]));
        assert!(admin.has_any(&[Role::Service]));
    }

    #[test]
    fn a_customer_is_not_staff() {
        let c = Principal::new("c", [Role::Customer]);
        assert!(!c.is_staff());
        assert_eq!(
            c.require_any(&[Role::Staff]).err().map(|p| p.status),
            Some(403)
        );
    }

    #[test]
    fn a_denial_names_the_roles_and_is_a_403_at_the_edge() {
        let c = Principal::new("c", [Role::Customer]);
        let denied = c.require(&[Role::Staff, Role::Service]).err();
        assert_eq!(
            denied.as_ref().map(ToString::to_string).as_deref(),
            Some("this action needs one of the roles: staff, service")
        );
        let problem = denied.map(Problem::from);
        assert_eq!(problem.as_ref().map(|p| p.status), Some(403));
        assert_eq!(
            problem.map(|p| p.detail).as_deref(),
            Some("this action needs one of the roles: staff, service")
        );
        assert!(c.require(&[Role::Customer]).is_ok());
    }

    #[test]
    fn roles_parse_from_their_lowercase_names() {
        assert_eq!("staff".parse::<Role>(), Ok(Role::Staff));
        assert!("root".parse::<Role>().is_err());
    }
}
