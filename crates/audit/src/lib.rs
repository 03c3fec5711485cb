//! The audit log (SPEC §3.6): durable before acknowledged, group-committed, tamper-evident.
//!
//! Requests hand events to [`AuditLog::record`] and wait. One writer thread takes everything
//! queued, chains it (seq, prev_hash, hash), writes the JSONL lines, inserts the rows and commits,
//! then answers every waiter at once: a burst of N requests costs one write and one commit, not N.
//! If the batch cannot be written, every waiter gets [`AuditUnavailable`] and the caller refuses
//! its request (503) before changing anything.
//!
//! This crate must never acknowledge an event it has not written to both sinks.
#![forbid(unsafe_code)]

mod jsonl;
mod verify;
mod writer;

pub use jsonl::JsonlSink;
pub use verify::{VerifyReport, verify};
pub use writer::{AuditConfig, AuditLog, AuditUnavailable};
