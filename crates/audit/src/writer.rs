//! The writer thread, and the index task beside it.
//!
//! Events reach the log one of two ways. An edge thread bound with [`AuditLog::bind_thread`]
//! appends its own (see `lane.rs`). Everywhere else — background tasks, the CLI, the scale-out
//! shape — they go to one OS thread with its own single-threaded runtime: file writes and fsyncs
//! block only that thread.
//!
//! Two ways to acknowledge (see [`Acknowledge`]): after the JSONL write (embedded: the files are
//! the durable log and the database is the query index, filled in the background and rebuilt
//! from the files after a crash), or after the database commit (scale-out: the database is the log).
use crate::jsonl::{JsonlSink, audit_files};
use crate::lane::{self, ChainLog};
use ed25519_dalek::{Signer, SigningKey};
use portcullis_core::audit::{AuditEvent, AuditRecord, GENESIS_HASH, checkpoint_message};
use portcullis_store::{AuditStore, ChainSink, Checkpoint};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot, watch};

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
    /// When an event counts as durable. [`Acknowledge::FileWrite`] needs `exclusive`.
    pub acknowledge: Acknowledge,
}

/// When [`AuditLog::record`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acknowledge {
    /// Once the batch is in the JSONL file (and fsynced when `fsync`): the files are the log.
    /// The database rows follow off the request's path, in larger batches; a crash between the
    /// two is repaired from the files at the next start ([`recover`]), and a failing database
    /// is caught up from the files when it returns.
    FileWrite,
    /// Once the database transaction holding the batch has committed (the JSONL lines are written
    /// inside it and taken back if the commit fails).
    DatabaseCommit,
}

/// The longest acknowledged records wait before they are written into the query index (rows
/// gathered over this time go in as one batch).
const INDEX_DELAY: Duration = Duration::from_millis(20);

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
    shared: Arc<Shared>,
}

/// What the writer publishes to the request side.
struct Shared {
    /// Events waiting for the writer thread.
    queued: AtomicU64,
    /// Highest acknowledged seq (database-acknowledged shape; the file log keeps its own).
    durable: AtomicU64,
    /// Highest seq in the query index.
    indexed: AtomicU64,
    /// The file-acknowledged chain, when [`Acknowledge::FileWrite`].
    log: Option<Arc<ChainLog>>,
    /// Bumped after every index write, for [`AuditLog::index_caught_up`].
    index_epoch: watch::Sender<u64>,
}

impl Shared {
    fn durable(&self) -> u64 {
        match &self.log {
            Some(l) => l.durable.load(Ordering::Acquire),
            None => self.durable.load(Ordering::Acquire),
        }
    }
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
        if cfg.acknowledge == Acknowledge::FileWrite && !cfg.exclusive {
            return Err(String::from("audit: acknowledging at the file write needs an exclusive writer"));
        }
        let (tx, rx) = mpsc::channel::<Msg>(65_536);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<Arc<Shared>, String>>();
        let writer_id: Arc<str> = Arc::from(cfg.writer_id.as_str());
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
                    // A predecessor killed mid-commit may see its last transaction committed by
                    // PostgreSQL after we read the head: the import then collides with rows the
                    // database already has. Read the head again and catch up from there.
                    let mut tries = 0;
                    while let Err(e) = recover(store.as_ref(), &sink, &cfg.writer_id).await {
                        tries += 1;
                        if tries == RECOVER_TRIES {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                        tracing::warn!(error = %e, "audit catch-up failed; reading the database head again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let head = match store.head(&cfg.writer_id).await {
                        Ok(h) => h.map(|h| (h.seq, h.hash)).unwrap_or((0, String::from(GENESIS_HASH))),
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("audit database: {e}")));
                            return;
                        }
                    };
                    let index_wake = Arc::new(Notify::new());
                    let log = if cfg.acknowledge == Acknowledge::FileWrite {
                        match ChainLog::new(
                            cfg.writer_id.clone(),
                            cfg.dir.clone(),
                            cfg.fsync,
                            index_wake.clone(),
                            head.clone(),
                        ) {
                            Ok(l) => Some(l),
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        }
                    } else {
                        None
                    };
                    let shared = Arc::new(Shared {
                        queued: AtomicU64::new(0),
                        durable: AtomicU64::new(head.0),
                        indexed: AtomicU64::new(head.0),
                        log,
                        index_epoch: watch::Sender::new(0),
                    });
                    let _ = ready_tx.send(Ok(shared.clone()));
                    run(cfg, store, sink, rx, shared, index_wake, head).await;
                });
            })
            .map_err(|e| format!("cannot start audit writer: {e}"))?;
        let shared = ready_rx.await.map_err(|_| String::from("audit writer stopped during start"))??;
        Ok(AuditLog { tx, writer_id, shared })
    }

    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// Whether threads may append their own events ([`AuditLog::bind_thread`]).
    pub fn appends_in_place(&self) -> bool {
        self.shared.log.is_some()
    }

    /// Makes the calling thread append the events recorded on it itself, in batches, instead of
    /// handing them to the writer thread. For a thread that runs a current-thread runtime (an
    /// edge thread), once at its start.
    pub fn bind_thread(&self) -> Result<(), String> {
        let log =
            self.shared.log.as_ref().ok_or_else(|| String::from("this audit log is acknowledged by the database"))?;
        lane::bind(log.clone());
        Ok(())
    }

    /// Events waiting for the writer (a gauge for `/metrics`).
    pub fn queue_depth(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) until the query index holds every event acknowledged before this
    /// call, so a reader sees its own writes. Returns false if the index did not catch up in time
    /// (the database is failing; the events are safe in the files).
    pub async fn index_caught_up(&self, limit: Duration) -> bool {
        let target = self.shared.durable();
        let mut epoch = self.shared.index_epoch.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.shared.indexed.load(Ordering::Acquire) >= target {
                return true;
            }
            match tokio::time::timeout_at(deadline, epoch.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.shared.indexed.load(Ordering::Acquire) >= target,
            }
        }
    }

    /// Writes everything queued before it, indexes it, signs a final checkpoint of the head, and
    /// stops the writer. Call once at shutdown, after the edge threads have stopped, and await it
    /// before the process exits; later `record` calls fail with [`AuditUnavailable`].
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Returns once the event is durable (see [`Acknowledge`]).
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.record_all(vec![event]).await
    }

    pub async fn record_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditUnavailable> {
        let events = match lane::push(events) {
            Ok(wait) => {
                return wait.await.map_err(|_| AuditUnavailable(String::from("audit log stopped")))?;
            }
            Err(events) => events,
        };
        let (done, wait) = oneshot::channel();
        let n = events.len() as u64;
        self.shared.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(Msg::Append(Job { events, done })).await.is_err() {
            self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(AuditUnavailable(String::from("audit writer stopped")));
        }
        wait.await.map_err(|_| AuditUnavailable(String::from("audit writer stopped")))?
    }
}

/// What the log task tells the index task after each database-acknowledged batch.
enum IndexMsg {
    /// The new head (the database holds the records already).
    Committed { head_seq: u64, head_hash: String },
    /// Index everything, sign the head, then answer.
    Stop(oneshot::Sender<()>),
}

/// The log task: takes queued events, makes them durable, answers the waiters. It never waits
/// for the query index or a checkpoint — those run beside it in [`index_task`].
async fn run(
    cfg: AuditConfig,
    store: Arc<dyn AuditStore>,
    sink: JsonlSink,
    mut rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    index_wake: Arc<Notify>,
    head: (u64, String),
) {
    // The head as last committed by us (exclusive writers only; `None` = read it per batch).
    let mut known: Option<portcullis_store::ChainHead> = cfg.exclusive.then(|| portcullis_store::ChainHead {
        writer_id: cfg.writer_id.clone(),
        seq: head.0,
        hash: head.1.clone(),
    });
    let (index_tx, index_rx) = mpsc::unbounded_channel::<IndexMsg>();
    let cfg = Arc::new(cfg);
    let indexer = tokio::spawn(index_task(cfg.clone(), store.clone(), index_rx, index_wake, shared.clone(), head));
    let mut jobs: Vec<Job> = Vec::with_capacity(cfg.max_batch);
    let mut stopped: Option<oneshot::Sender<()>> = None;
    while stopped.is_none() {
        let Some(first) = rx.recv().await else { break };
        match first {
            Msg::Append(job) => jobs.push(job),
            Msg::Shutdown(done) => {
                stopped = Some(done);
                break;
            }
        }
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
        shared.queued.fetch_sub(events.len() as u64, Ordering::Relaxed);
        if let Some(log) = &shared.log {
            // One waiter per job; the log answers them (with fsync, from its syncer).
            log.append(events, jobs.drain(..).map(|j| j.done).collect());
            continue;
        }
        metrics::histogram!("portcullis_audit_batch_events").record(events.len() as f64);
        let answer = match store.append(&cfg.writer_id, known.as_ref(), events, &sink as &dyn ChainSink).await {
            Ok(records) => {
                if let (Some(last), Some(k)) = (records.last(), known.as_mut()) {
                    k.seq = last.seq;
                    k.hash.clone_from(&last.hash);
                }
                if let Some(last) = records.last() {
                    shared.durable.store(last.seq, Ordering::Release);
                    let _ = index_tx.send(IndexMsg::Committed { head_seq: last.seq, head_hash: last.hash.clone() });
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
    }
    rx.close();
    let (done_tx, done_rx) = oneshot::channel();
    if index_tx.send(IndexMsg::Stop(done_tx)).is_ok() {
        let _ = done_rx.await;
    }
    let _ = indexer.await;
    if let Some(log) = &shared.log {
        log.close();
    }
    if let Some(done) = stopped {
        let _ = done.send(());
    }
}

/// The index task: writes acknowledged records into the query index in large batches (at most
/// [`INDEX_DELAY`] behind the log), and signs checkpoints of heads the index holds (a checkpoint
/// is stored in the database too, so it may only name a seq the database has).
///
/// When the database fails, the pending rows are dropped from memory (they are in the files)
/// and the index is rebuilt from the files once the database answers again, exactly as after a
/// crash ([`recover`]).
async fn index_task(
    cfg: Arc<AuditConfig>,
    store: Arc<dyn AuditStore>,
    mut rx: mpsc::UnboundedReceiver<IndexMsg>,
    wake: Arc<Notify>,
    shared: Arc<Shared>,
    start: (u64, String),
) {
    let sink = JsonlSink::new(cfg.dir.clone(), cfg.fsync);
    let signer = SigningKey::from_bytes(&cfg.signing_key);
    let mut last_cp_seq = store
        .checkpoints()
        .await
        .ok()
        .and_then(|cps| cps.iter().filter(|c| c.writer_id == cfg.writer_id).map(|c| c.seq).max())
        .unwrap_or(0);
    let mut last_cp_at = Instant::now();
    let mut pending: Vec<AuditRecord> = Vec::new();
    let mut indexed_seq = start.0;
    // The newest acknowledged record this task knows of.
    let mut head = start;
    let mut broken = false;
    let mut due: Option<Instant> = None;
    let mut stop: Option<oneshot::Sender<()>> = None;
    loop {
        let wait = due.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(cfg.checkpoint_interval);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(IndexMsg::Committed { head_seq, head_hash }) => {
                    // The database committed them before they were acknowledged.
                    head = (head_seq, head_hash);
                    indexed_seq = head_seq;
                    shared.indexed.store(indexed_seq, Ordering::Release);
                    shared.index_epoch.send_modify(|e| *e = e.wrapping_add(1));
                    if due.is_none() {
                        due = Some(Instant::now() + INDEX_DELAY);
                    }
                    continue;
                }
                Some(IndexMsg::Stop(done)) => stop = Some(done),
                None => break,
            },
            () = wake.notified() => {
                if due.is_none() {
                    due = Some(Instant::now() + INDEX_DELAY);
                }
                continue;
            }
            () = tokio::time::sleep(wait) => {}
        }
        due = None;
        if let Some(log) = &shared.log {
            let records = std::mem::take(&mut *log.to_index.lock().unwrap_or_else(PoisonError::into_inner));
            if let Some(last) = records.last() {
                head = (last.seq, last.hash.clone());
            }
            if !broken {
                pending.extend(records.into_iter().filter(|r| r.seq > indexed_seq));
            }
            if broken {
                match recover(store.as_ref(), &sink, &cfg.writer_id).await {
                    Ok(()) => {
                        tracing::info!("audit query index caught up from the files");
                        broken = false;
                        pending.clear();
                        if let Ok(Some(h)) = store.head(&cfg.writer_id).await {
                            indexed_seq = h.seq;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "audit query index still behind the files"),
                }
            } else if !pending.is_empty() {
                let started = Instant::now();
                match store.import(&pending).await {
                    Ok(()) => {
                        indexed_seq = pending.last().map_or(indexed_seq, |r| r.seq);
                        pending.clear();
                        metrics::histogram!("portcullis_audit_index_seconds").record(started.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit query index not written; the files keep the events, the index is rebuilt from them");
                        metrics::counter!("portcullis_audit_index_failures_total").increment(1);
                        pending.clear();
                        broken = true;
                    }
                }
            }
            shared.indexed.store(indexed_seq, Ordering::Release);
            shared.index_epoch.send_modify(|e| *e = e.wrapping_add(1));
        }
        // Sign the head when enough records or enough time passed since the last checkpoint, and
        // always at stop — but only a head the database holds.
        let covered = indexed_seq == head.0 && head.0 > 0;
        let wanted = indexed_seq > last_cp_seq
            && (stop.is_some()
                || indexed_seq >= last_cp_seq + cfg.checkpoint_every
                || last_cp_at.elapsed() >= cfg.checkpoint_interval);
        if covered && wanted {
            if checkpoint(&cfg.writer_id, &signer, store.as_ref(), &sink, head.0, &head.1).await {
                last_cp_seq = head.0;
            }
            last_cp_at = Instant::now();
        }
        if broken || (wanted && !covered) {
            due = Some(Instant::now() + Duration::from_secs(1).min(cfg.checkpoint_interval));
        }
        if let Some(done) = stop.take() {
            let _ = done.send(());
            break;
        }
    }
}

async fn checkpoint(
    writer_id: &str,
    signer: &SigningKey,
    store: &dyn AuditStore,
    sink: &JsonlSink,
    seq: u64,
    hash: &str,
) -> bool {
    let timestamp = portcullis_core::timefmt::rfc3339_ms(now_ms());
    let sig = signer.sign(&checkpoint_message(writer_id, seq, hash, &timestamp));
    let cp = Checkpoint {
        writer_id: writer_id.to_owned(),
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

/// Writer and seq of a record's line, read off its start as the log writes it
/// (`{"writer_id":"…","seq":N,…`); `None` for a line of any other shape (parse it whole).
fn line_position(line: &str) -> Option<(&str, u64)> {
    let rest = line.strip_prefix("{\"writer_id\":\"")?;
    let (writer, rest) = rest.split_at(rest.find('"')?);
    if writer.contains('\\') {
        return None;
    }
    let rest = rest.strip_prefix("\",\"seq\":")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    if !rest[digits..].starts_with(',') {
        return None;
    }
    Some((writer, rest[..digits].parse().ok()?))
}

/// Attempts of the start-up catch-up, 200 ms apart.
const RECOVER_TRIES: u32 = 5;

/// Records imported per transaction while catching up (bounded statements and transactions,
/// progress kept between them).
const RECOVER_CHUNK: usize = 5_000;

/// A process killed between the file write and the database commit leaves records in the file
/// that the database lacks, and so does a database outage under `Acknowledge::FileWrite`. They are
/// real, chained records: bring them into the database so the chain continues from the true head
/// instead of forking.
///
/// Memory holds one daily file's records at a time, and the database takes them in chunks of
/// [`RECOVER_CHUNK`], each its own transaction: after a long outage a failure part-way keeps what
/// was imported, and the next attempt starts from the new head.
async fn recover(store: &dyn AuditStore, sink: &JsonlSink, writer_id: &str) -> Result<(), String> {
    let head = store.head(writer_id).await.map_err(|e| format!("audit database: {e}"))?;
    let (head_seq, head_hash) = head.map(|h| (h.seq, h.hash)).unwrap_or((0, String::from(GENESIS_HASH)));
    let files = audit_files(sink.dir()).map_err(|e| format!("audit directory {}: {e}", sink.dir().display()))?;
    // Runs before the first request is served, over files that grow with the day's traffic: they
    // are streamed (memory holds a line, not a file), each line is placed by its writer and seq
    // read off its first bytes, and only the records past the head are parsed whole.
    let holds_head = |line: &str| match line_position(line) {
        Some((w, seq)) => w == writer_id && seq <= head_seq,
        None => serde_json::from_str::<AuditRecord>(line).is_ok_and(|r| r.writer_id == writer_id && r.seq <= head_seq),
    };
    // The newest file that holds the database head (or the oldest file): the catch-up starts there.
    let mut first = 0;
    for (i, path) in files.iter().enumerate().rev() {
        let mut found = false;
        let _ = crate::jsonl::each_line(path, |_, line| {
            found = line.is_some_and(holds_head);
            !found
        });
        if found {
            first = i;
            break;
        }
    }
    let (mut expected, mut prev, mut imported) = (head_seq + 1, head_hash, 0usize);
    for path in files.iter().skip(first) {
        let mut ahead = Vec::new();
        let _ = crate::jsonl::each_line(path, |_, line| {
            let Some(line) = line else { return true };
            let past_head = match line_position(line) {
                Some((w, seq)) => w == writer_id && seq > head_seq,
                None => true,
            };
            if past_head
                && let Ok(r) = serde_json::from_str::<AuditRecord>(line)
                && r.writer_id == writer_id
                && r.seq > head_seq
            {
                ahead.push(r);
            }
            true
        });
        ahead.sort_by_key(|r| r.seq);
        for r in &ahead {
            if r.seq != expected || r.prev_hash != prev || r.compute_hash() != r.hash {
                return Err(format!(
                    "audit file has records of writer `{writer_id}` past the database head (seq {}) that do not chain; run `portcullis audit verify`",
                    expected - 1
                ));
            }
            prev.clone_from(&r.hash);
            expected += 1;
        }
        for chunk in ahead.chunks(RECOVER_CHUNK) {
            store.import(chunk).await.map_err(|e| format!("audit recovery: {e}"))?;
            imported += chunk.len();
        }
    }
    if imported > 0 {
        tracing::warn!(
            writer_id,
            records = imported,
            "recovered audit records written to file before a crash or a database outage"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::line_position;
    use portcullis_core::audit::{AuditEvent, AuditRecord, AuditResult, GENESIS_HASH};

    #[test]
    fn a_written_line_is_placed_by_its_start_and_any_other_shape_is_left_to_the_parser() {
        let event = AuditEvent {
            timestamp_ms: 1_764_000_000_000,
            tenant_id: Some(String::from("t")),
            user_id: None,
            action: String::from("conversation.send"),
            resource_type: None,
            resource_id: None,
            result: AuditResult::Success,
            reason: None,
            metadata: serde_json::json!({ "seq": 7, "writer_id": "other" }),
            ip_address: None,
            user_agent: None,
            request_id: None,
        };
        let (record, line) = AuditRecord::chain_line("w-1", 42, GENESIS_HASH, event);
        let line = String::from_utf8(line).unwrap();
        assert_eq!(line_position(&line), Some(("w-1", 42)));
        assert_eq!(serde_json::from_str::<AuditRecord>(&line).unwrap(), record);
        // Escapes, reordered fields, other spacing: parsed whole instead.
        assert_eq!(line_position(r#"{"writer_id":"w\"1","seq":3,"x":1}"#), None);
        assert_eq!(line_position(r#"{"seq":3,"writer_id":"w-1"}"#), None);
        assert_eq!(line_position(r#"{"writer_id": "w-1", "seq": 3}"#), None);
        assert_eq!(line_position(r#"{"writer_id":"w-1","seq":3}"#), None);
        assert_eq!(line_position(""), None);
    }
}
