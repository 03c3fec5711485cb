//! The group-committing writer. One OS thread with its own single-threaded runtime owns the
//! chain: file writes and fsyncs block only this thread, never the request workers.
use crate::jsonl::{JsonlSink, audit_files};
use ed25519_dalek::{Signer, SigningKey};
use portcullis_core::audit::{AuditEvent, AuditRecord, GENESIS_HASH, checkpoint_message};
use portcullis_store::{AuditStore, ChainSink, Checkpoint};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The audit log could not durably write an event; the request that caused it must be refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditUnavailable(pub String);

/// Not `Send`: it runs on the writer thread's own runtime and never moves.
pub type StoreFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn AuditStore>, String>>>>;

pub struct AuditConfig {
    /// This process's chain. Stable across restarts of the same instance.
    pub writer_id: String,
    pub dir: PathBuf,
    pub fsync: bool,
    pub signing_key: [u8; 32],
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub max_batch: usize,
    /// This process is the only writer of its chain (guaranteed by the caller, e.g. the serve
    /// lock): the head is kept in memory instead of being read for every batch.
    pub exclusive: bool,
}

struct Job {
    events: Vec<AuditEvent>,
    done: oneshot::Sender<Result<(), AuditUnavailable>>,
}

enum Msg {
    Append(Job),
    /// Sign the head, then stop; answered when done so the process may exit.
    Shutdown(oneshot::Sender<()>),
}

/// Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    writer_id: Arc<str>,
    queued: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer thread. `open_store` runs on the writer's runtime (database pools are
    /// bound to the runtime that made them).
    pub async fn start(
        cfg: AuditConfig,
        open_store: impl FnOnce() -> StoreFuture + Send + 'static,
    ) -> Result<AuditLog, String> {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| format!("cannot create audit directory {}: {e}", cfg.dir.display()))?;
        let (tx, rx) = mpsc::channel::<Msg>(65_536);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let writer_id: Arc<str> = Arc::from(cfg.writer_id.as_str());
        let queued = Arc::new(AtomicU64::new(0));
        let q = queued.clone();
        std::thread::Builder::new()
            .name(String::from("audit-writer"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("audit runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let store = match open_store().await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let sink = JsonlSink::new(cfg.dir.clone(), cfg.fsync);
                    if let Err(e) = recover(store.as_ref(), &sink, &cfg.writer_id).await {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    let _ = ready_tx.send(Ok(()));
                    run(cfg, store, sink, rx, q).await;
                });
            })
            .map_err(|e| format!("cannot start audit writer: {e}"))?;
        ready_rx.await.map_err(|_| String::from("audit writer stopped during start"))??;
        Ok(AuditLog { tx, writer_id, queued })
    }

    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// Events waiting for the writer (a gauge for `/metrics`).
    pub fn queue_depth(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Returns once the event is durably in the database and the JSONL file.
    /// Writes everything queued before it, signs a final checkpoint of the head, and stops the
    /// writer. Call once at shutdown and await it before the process exits; later `record` calls
    /// fail with [`AuditUnavailable`].
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.record_all(vec![event]).await
    }

    pub async fn record_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditUnavailable> {
        let (done, wait) = oneshot::channel();
        let n = events.len() as u64;
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(Msg::Append(Job { events, done })).await.is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(AuditUnavailable(String::from("audit writer stopped")));
        }
        wait.await.map_err(|_| AuditUnavailable(String::from("audit writer stopped")))?
    }
}

async fn run(
    cfg: AuditConfig,
    store: Arc<dyn AuditStore>,
    sink: JsonlSink,
    mut rx: mpsc::Receiver<Msg>,
    queued: Arc<AtomicU64>,
) {
    let signer = SigningKey::from_bytes(&cfg.signing_key);
    let mut last_cp_seq = store
        .checkpoints()
        .await
        .ok()
        .and_then(|cps| cps.iter().filter(|c| c.writer_id == cfg.writer_id).map(|c| c.seq).max())
        .unwrap_or(0);
    let mut last_cp_at = Instant::now();
    let start_head = store.head(&cfg.writer_id).await.ok().flatten();
    let mut head_seq = start_head.as_ref().map(|h| h.seq).unwrap_or(0);
    let mut head_hash = start_head.as_ref().map(|h| h.hash.clone()).unwrap_or_default();
    // The head as last committed by us (exclusive writers only; `None` = read it per batch).
    let mut known: Option<portcullis_store::ChainHead> =
        if cfg.exclusive { Some(start_head.unwrap_or_else(|| genesis(&cfg.writer_id))) } else { None };
    let mut jobs: Vec<Job> = Vec::with_capacity(cfg.max_batch);
    let mut stopped: Option<oneshot::Sender<()>> = None;
    loop {
        let first = match tokio::time::timeout(cfg.checkpoint_interval, rx.recv()).await {
            Ok(Some(Msg::Append(job))) => Some(job),
            Ok(Some(Msg::Shutdown(done))) => {
                stopped = Some(done);
                None
            }
            Ok(None) => None,
            Err(_) => {
                // Idle: make sure the tail of the chain is covered by a signed checkpoint.
                if head_seq > last_cp_seq && !head_hash.is_empty() {
                    if checkpoint(&cfg, &signer, store.as_ref(), &sink, head_seq, &head_hash).await {
                        last_cp_seq = head_seq;
                    }
                    last_cp_at = Instant::now();
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        jobs.push(first);
        let mut n_events = jobs.iter().map(|j| j.events.len()).sum::<usize>();
        while n_events < cfg.max_batch && stopped.is_none() {
            match rx.try_recv() {
                Ok(Msg::Append(job)) => {
                    n_events += job.events.len();
                    jobs.push(job);
                }
                Ok(Msg::Shutdown(done)) => stopped = Some(done),
                Err(_) => break,
            }
        }
        let events: Vec<AuditEvent> = jobs.iter_mut().flat_map(|j| std::mem::take(&mut j.events)).collect();
        queued.fetch_sub(events.len() as u64, Ordering::Relaxed);
        let outcome = store.append(&cfg.writer_id, known.as_ref(), events, &sink as &dyn ChainSink).await;
        let answer = match &outcome {
            Ok(records) => {
                if let Some(last) = records.last() {
                    head_seq = last.seq;
                    head_hash.clone_from(&last.hash);
                    if let Some(k) = known.as_mut() {
                        k.seq = last.seq;
                        k.hash.clone_from(&last.hash);
                    }
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch not written; refusing the requests that caused it");
                Err(AuditUnavailable(e.to_string()))
            }
        };
        for job in jobs.drain(..) {
            let _ = job.done.send(answer.clone());
        }
        if answer.is_ok()
            && (head_seq >= last_cp_seq + cfg.checkpoint_every
                || (last_cp_at.elapsed() >= cfg.checkpoint_interval && head_seq > last_cp_seq))
        {
            if checkpoint(&cfg, &signer, store.as_ref(), &sink, head_seq, &head_hash).await {
                last_cp_seq = head_seq;
            }
            last_cp_at = Instant::now();
        }
        if stopped.is_some() {
            break;
        }
    }
    if head_seq > last_cp_seq && !head_hash.is_empty() {
        checkpoint(&cfg, &signer, store.as_ref(), &sink, head_seq, &head_hash).await;
    }
    rx.close();
    if let Some(done) = stopped {
        let _ = done.send(());
    }
}

fn genesis(writer_id: &str) -> portcullis_store::ChainHead {
    portcullis_store::ChainHead { writer_id: writer_id.to_owned(), seq: 0, hash: String::from(GENESIS_HASH) }
}

async fn checkpoint(
    cfg: &AuditConfig,
    signer: &SigningKey,
    store: &dyn AuditStore,
    sink: &JsonlSink,
    seq: u64,
    hash: &str,
) -> bool {
    let timestamp = portcullis_core::timefmt::rfc3339_ms(now_ms());
    let sig = signer.sign(&checkpoint_message(&cfg.writer_id, seq, hash, &timestamp));
    let cp = Checkpoint {
        writer_id: cfg.writer_id.clone(),
        seq,
        hash: hash.to_owned(),
        timestamp,
        signature: hex::encode(sig.to_bytes()),
        public_key: hex::encode(signer.verifying_key().to_bytes()),
    };
    if let Err(e) = sink.write_checkpoint(&cp) {
        tracing::warn!(error = %e, "audit checkpoint not written to file");
        return false;
    }
    if let Err(e) = store.insert_checkpoint(&cp).await {
        tracing::warn!(error = %e, "audit checkpoint not written to database");
        return false;
    }
    true
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A process killed between the file write and the database commit leaves records in the file
/// that the database lacks. They are real, chained records: bring them into the database so the
/// chain continues from the true head instead of forking.
async fn recover(store: &dyn AuditStore, sink: &JsonlSink, writer_id: &str) -> Result<(), String> {
    let head = store.head(writer_id).await.map_err(|e| format!("audit database: {e}"))?;
    let (head_seq, head_hash) = head.map(|h| (h.seq, h.hash)).unwrap_or((0, String::from(GENESIS_HASH)));
    let files = audit_files(sink.dir()).map_err(|e| format!("audit directory {}: {e}", sink.dir().display()))?;
    let mut ahead: Vec<AuditRecord> = Vec::new();
    for path in files.iter().rev() {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let mut reached_head = false;
        for line in text.lines() {
            let Ok(r) = serde_json::from_str::<AuditRecord>(line) else { continue };
            if r.writer_id != writer_id {
                continue;
            }
            if r.seq > head_seq {
                ahead.push(r);
            } else {
                reached_head = true;
            }
        }
        if reached_head {
            break;
        }
    }
    if ahead.is_empty() {
        return Ok(());
    }
    ahead.sort_by_key(|r| r.seq);
    let mut prev = head_hash;
    for (expected, r) in (head_seq + 1..).zip(ahead.iter()) {
        if r.seq != expected || r.prev_hash != prev || r.compute_hash() != r.hash {
            return Err(format!(
                "audit file has records of writer `{writer_id}` past the database head (seq {head_seq}) that do not chain; run `portcullis audit verify`"
            ));
        }
        prev.clone_from(&r.hash);
    }
    store.import(&ahead).await.map_err(|e| format!("audit recovery: {e}"))?;
    tracing::warn!(writer_id, records = ahead.len(), "recovered audit records written to file before a crash");
    Ok(())
}
