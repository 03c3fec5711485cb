//! `portcullis audit verify`: proves the log whole or names the first broken link.
//!
//! Checked, in this order, and every problem reported with where it is:
//! 1. the database chain of every writer (contiguous seq from 1, prev_hash links, hash matches
//!    content, ends at the recorded head);
//! 2. every signed checkpoint (signature by the trusted key, and the chain still has that hash at
//!    that seq — catches a rewritten or truncated history even when hashes were recomputed);
//! 3. the JSONL files line by line with the same chain rules, and each record equal to the
//!    database's record at the same (writer, seq) — catches a file edited, reordered, truncated
//!    or deleted, and a database rewritten without the files.
//!
//! Embedded, the data dir's files are the whole log: every chain must be in them, whole. In the
//! scale-out shape each instance keeps its files in its own directory, possibly on another host,
//! and the CLI's chain is written from wherever the CLI runs; [`FileSources::complete`] names the
//! chains that must be whole in the directories given (the instances found there). Other
//! chains' lines that are found are still checked record by record against the database; a
//! chain with no lines here is listed as kept elsewhere, not reported as truncated.
use crate::jsonl::{audit_files, each_line};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use portcullis_core::audit::{AuditRecord, GENESIS_HASH, checkpoint_message};
use portcullis_store::{AuditStore, Checkpoint};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where the JSONL copies are, and which chains they must hold whole.
#[derive(Clone, Debug)]
pub struct FileSources {
    /// Audit directories, each with `audit-*.jsonl` files and `checkpoints.jsonl`.
    pub dirs: Vec<PathBuf>,
    /// `None`: every chain of the database (the embedded shape). `Some`: only these.
    pub complete: Option<BTreeSet<String>>,
}

#[derive(Debug, Serialize)]
pub struct WriterSummary {
    pub writer_id: String,
    pub records: u64,
    pub head_seq: u64,
    pub last_checkpoint_seq: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub writers: Vec<WriterSummary>,
    pub files: usize,
    pub file_records: u64,
    pub checkpoints: usize,
    /// File records past the database head that chain correctly: written and acknowledged, not
    /// yet in the query index (a running server indexes them within milliseconds; a server that
    /// died first imports them at its next start).
    pub unindexed: u64,
    /// Chains in the database whose files are not among the directories checked (instances on
    /// other hosts): verified in the database and against their checkpoints only.
    pub files_elsewhere: Vec<String>,
    /// Problems in the order found; the first is the first broken link.
    pub problems: Vec<String>,
}

struct ChainWalk {
    expected: u64,
    prev: String,
}

impl ChainWalk {
    fn new() -> Self {
        Self { expected: 1, prev: String::from(GENESIS_HASH) }
    }

    /// Returns a description of the break, if this record breaks the chain.
    fn step(&mut self, r: &AuditRecord) -> Option<String> {
        let problem = if r.seq != self.expected {
            Some(format!(
                "expected seq {}, found seq {} (a record was deleted, inserted or reordered)",
                self.expected, r.seq
            ))
        } else if r.prev_hash != self.prev {
            Some(format!("seq {}: prev_hash does not link to seq {} (chain rewritten)", r.seq, self.expected - 1))
        } else if r.compute_hash() != r.hash {
            Some(format!("seq {}: content does not match its hash (record edited)", r.seq))
        } else {
            None
        };
        // Continue from what the record claims, so one edit is reported once, not at every later link.
        self.expected = r.seq + 1;
        self.prev.clone_from(&r.hash);
        problem
    }
}

/// A database chain as the cross-checks need it: (seq, hash) of each record, sorted by seq. The
/// records themselves are walked once and dropped (a whole chain of full records for every
/// writer at once would hold the entire audit log in memory).
type SeqHashes = Vec<(u64, String)>;

/// The hash of the record with `seq` (found by seq, not position, so one deleted row does not make
/// every later record look different).
fn by_seq(chain: &[(u64, String)], seq: u64) -> Option<&str> {
    chain.binary_search_by_key(&seq, |r| r.0).ok().and_then(|i| chain.get(i)).map(|r| r.1.as_str())
}

/// Verifies the database log against the files of one audit directory that holds every chain.
pub async fn verify(store: &dyn AuditStore, dir: &Path, trusted_key: &VerifyingKey) -> Result<VerifyReport, String> {
    verify_sources(store, &FileSources { dirs: vec![dir.to_path_buf()], complete: None }, trusted_key).await
}

pub async fn verify_sources(
    store: &dyn AuditStore,
    sources: &FileSources,
    trusted_key: &VerifyingKey,
) -> Result<VerifyReport, String> {
    let must_be_whole = |w: &str| sources.complete.as_ref().is_none_or(|set| set.contains(w));
    let mut problems = Vec::new();
    let mut writers = Vec::new();
    let mut db: BTreeMap<String, SeqHashes> = BTreeMap::new();

    let heads = store.heads().await.map_err(|e| e.to_string())?;
    for head in &heads {
        let chain = store.chain(&head.writer_id).await.map_err(|e| e.to_string())?;
        let mut walk = ChainWalk::new();
        for r in &chain {
            if let Some(p) = walk.step(r) {
                problems.push(format!("database: writer `{}`: {p}", head.writer_id));
            }
        }
        let last = chain.last().map(|r| (r.seq, r.hash.clone())).unwrap_or((0, String::from(GENESIS_HASH)));
        if last.0 != head.seq || last.1 != head.hash {
            problems.push(format!(
                "database: writer `{}`: chain ends at seq {} but the head records seq {} (records truncated or head altered)",
                head.writer_id, last.0, head.seq
            ));
        }
        writers.push(WriterSummary {
            writer_id: head.writer_id.clone(),
            records: chain.len() as u64,
            head_seq: head.seq,
            last_checkpoint_seq: None,
        });
        db.insert(head.writer_id.clone(), chain.into_iter().map(|r| (r.seq, r.hash)).collect());
    }

    // Checkpoints from the database and from checkpoints.jsonl; either copy can expose a rewrite.
    let mut checkpoints: Vec<(String, Checkpoint)> = store
        .checkpoints()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|c| (String::from("database"), c))
        .collect();
    for dir in &sources.dirs {
        let cp_file = dir.join("checkpoints.jsonl");
        if let Ok(text) = std::fs::read_to_string(&cp_file) {
            for (i, line) in text.lines().enumerate() {
                match serde_json::from_str::<Checkpoint>(line) {
                    Ok(c) => checkpoints.push((format!("{} line {}", cp_file.display(), i + 1), c)),
                    Err(_) => problems.push(format!("{} line {}: not a valid checkpoint", cp_file.display(), i + 1)),
                }
            }
        }
    }
    let trusted_hex = hex::encode(trusted_key.to_bytes());
    for (origin, cp) in &checkpoints {
        let sig_ok = cp.public_key == trusted_hex
            && hex::decode(&cp.signature)
                .ok()
                .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
                .map(|b| Signature::from_bytes(&b))
                .is_some_and(|sig| {
                    trusted_key
                        .verify(&checkpoint_message(&cp.writer_id, cp.seq, &cp.hash, &cp.timestamp), &sig)
                        .is_ok()
                });
        if !sig_ok {
            problems.push(format!(
                "{origin}: checkpoint of writer `{}` at seq {} has no valid signature by the trusted audit key",
                cp.writer_id, cp.seq
            ));
            continue;
        }
        let chain = db.get(&cp.writer_id).map(Vec::as_slice).unwrap_or(&[]);
        let at = by_seq(chain, cp.seq);
        match at {
            None => problems.push(format!(
                "{origin}: checkpoint of writer `{}` covers seq {} but the database chain ends at seq {} (records truncated)",
                cp.writer_id,
                cp.seq,
                chain.last().map(|r| r.0).unwrap_or(0)
            )),
            Some(hash) if hash != cp.hash => problems.push(format!(
                "{origin}: checkpoint of writer `{}` at seq {} does not match the database record (history rewritten)",
                cp.writer_id, cp.seq
            )),
            Some(_) => {
                if let Some(w) = writers.iter_mut().find(|w| w.writer_id == cp.writer_id) {
                    w.last_checkpoint_seq = w.last_checkpoint_seq.max(Some(cp.seq));
                }
            }
        }
    }

    // The JSONL files.
    let mut files = Vec::new();
    for dir in &sources.dirs {
        files.extend(audit_files(dir).map_err(|e| format!("audit directory {}: {e}", dir.display()))?);
    }
    let mut seen_in_files: BTreeSet<String> = BTreeSet::new();
    let mut walks: BTreeMap<String, (ChainWalk, String)> = BTreeMap::new();
    let mut file_records = 0u64;
    let mut unindexed = 0u64;
    // Records a checkpoint signed must be in the database, whatever its head says.
    let signed_up_to =
        |w: &str| checkpoints.iter().filter(|(_, c)| c.writer_id == w).map(|(_, c)| c.seq).max().unwrap_or(0);
    let db_head = |w: &str| heads.iter().find(|h| h.writer_id == w).map_or(0, |h| h.seq).max(signed_up_to(w));
    for path in &files {
        each_line(path, |n, line| {
            let at = format!("{} line {n}", path.display());
            let Some(r) = line.and_then(|l| serde_json::from_str::<AuditRecord>(l).ok()) else {
                problems.push(format!("{at}: not a valid audit record (line edited or cut)"));
                return true;
            };
            file_records += 1;
            seen_in_files.insert(r.writer_id.clone());
            let linked = if must_be_whole(&r.writer_id) {
                let (walk, last_at) =
                    walks.entry(r.writer_id.clone()).or_insert_with(|| (ChainWalk::new(), String::new()));
                let broke = walk.step(&r);
                let linked = broke.is_none();
                if let Some(p) = broke {
                    problems.push(format!("{at}: writer `{}`: {p}", r.writer_id));
                }
                last_at.clone_from(&at);
                linked
            } else {
                // A chain written from several places (the CLI's): these files hold some of its
                // records, not necessarily in a row. Each must be intact and the database's own.
                let intact = r.compute_hash() == r.hash;
                if !intact {
                    problems.push(format!(
                        "{at}: writer `{}`: seq {}: content does not match its hash (record edited)",
                        r.writer_id, r.seq
                    ));
                }
                intact
            };
            let db_rec = db.get(&r.writer_id).and_then(|c| by_seq(c, r.seq));
            match db_rec {
                // The tail the query index has not taken yet: still chained, checked above.
                None if linked && r.seq > db_head(&r.writer_id) => unindexed += 1,
                None => problems.push(format!(
                    "{at}: writer `{}` seq {} is not in the database (database truncated, or line forged)",
                    r.writer_id, r.seq
                )),
                Some(hash) if hash != r.hash => problems
                    .push(format!("{at}: writer `{}` seq {} differs from the database record", r.writer_id, r.seq)),
                Some(_) => {}
            }
            true
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut files_elsewhere = Vec::new();
    for (writer, chain) in &db {
        if !must_be_whole(writer) {
            if !seen_in_files.contains(writer) {
                files_elsewhere.push(writer.clone());
            }
            continue;
        }
        let file_last = walks.get(writer).map(|(w, _)| w.expected - 1).unwrap_or(0);
        let db_last = chain.last().map(|r| r.0).unwrap_or(0);
        if file_last < db_last {
            let where_ = walks.get(writer).map(|(_, at)| format!(" after {at}")).unwrap_or_default();
            problems.push(format!(
                "files: writer `{writer}` ends at seq {file_last}{where_} but the database has seq {db_last} (file truncated or deleted)"
            ));
        }
    }

    Ok(VerifyReport {
        ok: problems.is_empty(),
        writers,
        files: files.len(),
        file_records,
        checkpoints: checkpoints.len(),
        unindexed,
        files_elsewhere,
        problems,
    })
}
