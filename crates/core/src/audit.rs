//! Audit events and the hash chain over them (SPEC §3.6).
//!
//! An [`AuditEvent`] is what happened (the seed's fields). The writer turns it into an
//! [`AuditRecord`] by giving it the next `seq` of its chain and `prev_hash`, then
//! `hash = SHA-256(canonical(record without hash))`. The canonical encoding is JSON with the
//! fields in declaration order and object keys sorted (serde_json's default map), so the same
//! record always hashes the same wherever it is re-read from (database row or JSONL line).
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    Success,
    Denied,
    Failure,
}

impl AuditResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Success => "success",
            AuditResult::Denied => "denied",
            AuditResult::Failure => "failure",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(AuditResult::Success),
            "denied" => Some(AuditResult::Denied),
            "failure" => Some(AuditResult::Failure),
            _ => None,
        }
    }
}

/// One security-relevant action, before it is chained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub timestamp_ms: i64,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub result: AuditResult,
    pub reason: Option<String>,
    pub metadata: serde_json::Value,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl AuditEvent {
    /// Adds `key` to the metadata object (making it one if it is not).
    pub fn with_meta(&mut self, key: &str, value: serde_json::Value) -> &mut Self {
        if !self.metadata.is_object() {
            self.metadata = serde_json::Value::Object(serde_json::Map::new());
        }
        if let serde_json::Value::Object(m) = &mut self.metadata {
            m.insert(key.to_owned(), value);
        }
        self
    }

    pub fn new(timestamp_ms: i64, action: impl Into<String>, result: AuditResult) -> Self {
        Self {
            timestamp_ms,
            tenant_id: None,
            user_id: None,
            action: action.into(),
            resource_type: None,
            resource_id: None,
            result,
            reason: None,
            // Sized for what a proxied request's event holds (auth, role, method, path, policies
            // and a few more): no growing and re-hashing per event.
            metadata: serde_json::Value::Object(serde_json::Map::with_capacity(8)),
            ip_address: None,
            user_agent: None,
            request_id: None,
        }
    }
}

/// A chained event as written to the database and the JSONL files. Field order is the
/// canonical order; do not reorder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub writer_id: String,
    pub seq: u64,
    pub prev_hash: String,
    pub timestamp: String,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub result: AuditResult,
    pub reason: Option<String>,
    pub metadata: serde_json::Value,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub hash: String,
}

/// The record minus its hash, borrowed, in canonical order.
#[derive(Serialize)]
struct Canonical<'a> {
    writer_id: &'a str,
    seq: u64,
    prev_hash: &'a str,
    timestamp: &'a str,
    tenant_id: &'a Option<String>,
    user_id: &'a Option<String>,
    action: &'a str,
    resource_type: &'a Option<String>,
    resource_id: &'a Option<String>,
    result: AuditResult,
    reason: &'a Option<String>,
    metadata: &'a serde_json::Value,
    ip_address: &'a Option<String>,
    user_agent: &'a Option<String>,
    request_id: &'a Option<String>,
}

impl AuditRecord {
    /// Chains `event` after `(seq - 1, prev_hash)`.
    pub fn chain(writer_id: &str, seq: u64, prev_hash: &str, event: AuditEvent) -> AuditRecord {
        let mut r = AuditRecord::chain_unhashed(writer_id, seq, prev_hash, event);
        r.hash = r.compute_hash();
        r
    }

    /// [`AuditRecord::chain`], and the record's JSON line (no newline) written from the same
    /// serialisation the hash covers: the canonical object with `"hash"` added last. The log
    /// writes every record once, so serialising it once instead of twice is worth the care.
    pub fn chain_line(writer_id: &str, seq: u64, prev_hash: &str, event: AuditEvent) -> (AuditRecord, Vec<u8>) {
        let mut r = AuditRecord::chain_unhashed(writer_id, seq, prev_hash, event);
        let mut line = r.canonical_bytes();
        r.hash = hex::encode(Sha256::digest(&line));
        // INVARIANT: `line` is a JSON object, so it ends with `}`.
        if line.last() == Some(&b'}') {
            line.pop();
            line.extend_from_slice(b",\"hash\":\"");
            line.extend_from_slice(r.hash.as_bytes());
            line.extend_from_slice(b"\"}");
        } else {
            line = serde_json::to_vec(&r).unwrap_or_default();
        }
        (r, line)
    }

    fn chain_unhashed(writer_id: &str, seq: u64, prev_hash: &str, event: AuditEvent) -> AuditRecord {
        AuditRecord {
            writer_id: writer_id.to_owned(),
            seq,
            prev_hash: prev_hash.to_owned(),
            timestamp: crate::timefmt::rfc3339_ms(event.timestamp_ms),
            tenant_id: event.tenant_id,
            user_id: event.user_id,
            action: event.action,
            resource_type: event.resource_type,
            resource_id: event.resource_id,
            result: event.result,
            reason: event.reason,
            metadata: event.metadata,
            ip_address: event.ip_address,
            user_agent: event.user_agent,
            request_id: event.request_id,
            hash: String::new(),
        }
    }

    pub fn canonical_bytes(&self) -> Vec<u8> {
        let c = Canonical {
            writer_id: &self.writer_id,
            seq: self.seq,
            prev_hash: &self.prev_hash,
            timestamp: &self.timestamp,
            tenant_id: &self.tenant_id,
            user_id: &self.user_id,
            action: &self.action,
            resource_type: &self.resource_type,
            resource_id: &self.resource_id,
            result: self.result,
            reason: &self.reason,
            metadata: &self.metadata,
            ip_address: &self.ip_address,
            user_agent: &self.user_agent,
            request_id: &self.request_id,
        };
        serde_json::to_vec(&c).unwrap_or_default()
    }

    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }
}

/// The bytes an audit checkpoint signature covers.
pub fn checkpoint_message(writer_id: &str, seq: u64, hash: &str, timestamp: &str) -> Vec<u8> {
    format!("portcullis-audit-checkpoint/v1\n{writer_id}\n{seq}\n{hash}\n{timestamp}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_covers_every_field_and_survives_round_trip() {
        let mut e = AuditEvent::new(1_764_000_000_123, "key.create", AuditResult::Success);
        e.metadata = serde_json::json!({"z": 1, "a": [1.5, "x"]});
        let r1 = AuditRecord::chain("w", 1, GENESIS_HASH, e.clone());
        let line = serde_json::to_string(&r1).unwrap_or_default();
        let back: AuditRecord = serde_json::from_str(&line).unwrap_or_else(|_| r1.clone());
        assert_eq!(back.compute_hash(), r1.hash);
        let mut edited = back.clone();
        edited.result = AuditResult::Denied;
        assert_ne!(edited.compute_hash(), r1.hash);
        let r2 = AuditRecord::chain("w", 2, &r1.hash, e.clone());
        assert_eq!(r2.prev_hash, r1.hash);
        assert_ne!(r2.hash, r1.hash);
        // The log's one-pass line is the same record.
        let (r3, line) = AuditRecord::chain_line("w", 2, &r1.hash, e);
        assert_eq!(r3.hash, r2.hash);
        let parsed: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(parsed, serde_json::to_value(&r2).unwrap_or_default());
    }
}
