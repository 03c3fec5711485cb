//! Identifiers. Every id is a UUIDv7 rendered as text: sortable by creation, never sequential
//! guessable integers. Parsing validates strictly so ids from paths can never carry separators.
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($name:ident) => {
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Wraps a freshly made UUID (the caller supplies it: the core makes no randomness).
            pub fn from_uuid(u: uuid::Uuid) -> Self {
                Self(u.hyphenated().to_string())
            }
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                let u = uuid::Uuid::try_parse(s).map_err(|_| InvalidId(s.chars().take(64).collect()))?;
                // INVARIANT: only the canonical lowercase hyphenated form is accepted, so one id
                // has one spelling (no case or brace variants that could dodge a comparison).
                let canonical = u.hyphenated().to_string();
                if canonical != s {
                    return Err(InvalidId(s.chars().take(64).collect()));
                }
                Ok(Self(canonical))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

id_type!(TenantId);
id_type!(UserId);
id_type!(KeyId);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid id `{0}`: expected a lowercase hyphenated UUID")]
pub struct InvalidId(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rejects_non_canonical_and_traversal() {
        assert!(TenantId::parse("../etc/passwd").is_err());
        assert!(TenantId::parse("0190A0B0-0000-7000-8000-000000000000").is_err());
        assert!(TenantId::parse("{0190a0b0-0000-7000-8000-000000000000}").is_err());
        assert!(TenantId::parse("0190a0b0-0000-7000-8000-000000000000").is_ok());
    }
}
