//! Domain core of Portcullis: identities, tiers, roles and the permission table, the API-key
//! format, principals and tenant scopes, and the audit record with its canonical hash.
//!
//! This crate owns the rules; it must never do I/O (no files, sockets, clocks or randomness):
//! time and random bytes come in as parameters so every rule is testable with fixed inputs.
#![forbid(unsafe_code)]

pub mod apikey;
pub mod audit;
pub mod histogram;
pub mod ids;
pub mod iplist;
pub mod limits;
pub mod principal;
pub mod rbac;
pub mod session;
pub mod tier;
pub mod timefmt;

pub use ids::{KeyId, TenantId, UserId};
pub use principal::{Principal, PrincipalKind, TenantScope};
pub use rbac::{Permission, Role};
pub use tier::{Tier, TierLimits};
