//! The audit log (SPEC §3.6): durable before acknowledged, group-committed, tamper-evident.
//!
//! Requests hand events to [`AuditLog::record`] and wait. One writer thread takes everything
//! queued, chains it (seq, prev_hash, hash), writes the JSONL lines (and, depending on
//! [`Acknowledge`], commits the database rows), then answers every waiter at once: a burst of N
//! requests costs one write, not N. If the batch cannot be written, every waiter gets
//! [`AuditUnavailable`] and the caller refuses its request (503) before changing anything.
//!
//! This crate must never acknowledge an event before it is in the durable log: the JSONL file
//! (embedded, where the database is a query index rebuilt from the files) or the database
//! (scale-out).
#![forbid(unsafe_code)]

mod jsonl;
mod lane;
mod verify;
mod writer;

pub use ed25519_dalek::VerifyingKey;
pub use jsonl::JsonlSink;
pub use verify::{FileSources, VerifyReport, verify, verify_sources};
pub use writer::{Acknowledge, AuditConfig, AuditLog, AuditUnavailable};
