//! The file-acknowledged log: one chain per process, appended by whichever thread has events.
//!
//! An edge thread (one runtime per core, see the HTTP server) gathers every event its ready tasks
//! record, and once they have run (one `yield_now`, which tokio defers until after its I/O poll)
//! appends the batch itself: under the chain's mutex it chains the records after the head and
//! writes them to the day's file with one `write`. No queue, no other thread, no scheduling
//! delay between a request and its durable event; the mutex is held for one batch and is rarely
//! contended. Events from other threads reach the same [`ChainLog`] through the writer thread.
//!
//! With `fsync`, the written batch goes to the syncer thread, which fsyncs and then answers the
//! waiters; batches written meanwhile are covered by the next fsync (group commit).
//!
//! Acknowledged records go to the query index through [`ChainLog::to_index`], drained by the
//! index task of the writer thread; nothing here waits for the database.
//!
//! Failure: a failed write takes its bytes back and refuses its batch. A failed fsync refuses its
//! batch and every batch written after it; once the syncer is idle the next append truncates the
//! file to the end of the last synced batch and continues from the last synced record, so
//! nothing refused stays in the file and nothing acknowledged is lost.
use crate::jsonl::JsonlSink;
use crate::writer::AuditUnavailable;
use portcullis_core::audit::{AuditEvent, AuditRecord};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Notify, oneshot};

pub(crate) type Waiter = oneshot::Sender<Result<(), AuditUnavailable>>;

/// The process's chain and its file, shared by every thread that appends.
pub(crate) struct ChainLog {
    pub writer_id: String,
    dir: PathBuf,
    fsync: bool,
    /// Highest acknowledged seq.
    pub durable: AtomicU64,
    /// Acknowledged records the index has not taken yet, in chain order.
    pub to_index: Mutex<Vec<AuditRecord>>,
    /// Wakes the index task when `to_index` stops being empty.
    index_wake: Arc<Notify>,
    inner: Mutex<Inner>,
    /// Set when `fsync`: receives written batches.
    syncer: Mutex<Option<std::sync::mpsc::Sender<SyncJob>>>,
}

struct Inner {
    head_seq: u64,
    head_hash: String,
    file: Option<OpenFile>,
    /// The end of the last synced batch: where the chain continues after a failed fsync.
    synced: (u64, String),
    /// An fsync failed: (file, length before the first refused batch in it), earliest first.
    undo: Vec<(PathBuf, u64)>,
    failed: bool,
    /// Batches handed to the syncer and not answered yet.
    in_flight: usize,
}

struct OpenFile {
    path: PathBuf,
    day: i64,
    file: Arc<File>,
    /// Identity of the file we hold, to notice the path now names another file (or none).
    id: (u64, u64),
}

struct SyncJob {
    file: Arc<File>,
    path: PathBuf,
    len_before: u64,
    records: Vec<AuditRecord>,
    waiters: Vec<Waiter>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn refuse(waiters: Vec<Waiter>, why: &str) {
    for w in waiters {
        let _ = w.send(Err(AuditUnavailable(why.to_owned())));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl ChainLog {
    pub(crate) fn new(
        writer_id: String,
        dir: PathBuf,
        fsync: bool,
        index_wake: Arc<Notify>,
        head: (u64, String),
    ) -> Result<Arc<Self>, String> {
        let log = Arc::new(Self {
            writer_id,
            dir,
            fsync,
            durable: AtomicU64::new(head.0),
            to_index: Mutex::new(Vec::new()),
            index_wake,
            inner: Mutex::new(Inner {
                head_seq: head.0,
                head_hash: head.1.clone(),
                file: None,
                synced: head,
                undo: Vec::new(),
                failed: false,
                in_flight: 0,
            }),
            syncer: Mutex::new(None),
        });
        if fsync {
            *lock(&log.syncer) = Some(start_syncer(log.clone())?);
        }
        Ok(log)
    }

    /// Stops the syncer thread (it ends once it has answered what it holds).
    pub(crate) fn close(&self) {
        lock(&self.syncer).take();
    }

    fn acknowledge(&self, records: Vec<AuditRecord>) {
        let Some(last) = records.last().map(|r| r.seq) else { return };
        let was_empty = {
            let mut q = lock(&self.to_index);
            let was_empty = q.is_empty();
            q.extend(records);
            was_empty
        };
        self.durable.fetch_max(last, Ordering::AcqRel);
        if was_empty {
            self.index_wake.notify_one();
        }
    }

    /// Chains `events`, appends them, and answers `waiters` once they are durable (at once, or
    /// from the syncer with `fsync`).
    pub(crate) fn append(&self, events: Vec<AuditEvent>, waiters: Vec<Waiter>) {
        if events.is_empty() {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
            return;
        }
        metrics::histogram!("portcullis_audit_batch_events").record(events.len() as f64);
        let mut inner = lock(&self.inner);
        if inner.failed && !inner.rewind(&self.writer_id) {
            drop(inner);
            refuse(waiters, "an audit fsync failed; waiting for the log to recover");
            return;
        }
        let mut records = Vec::with_capacity(events.len());
        let mut buf = Vec::with_capacity(600 * events.len());
        let (mut seq, mut prev) = (inner.head_seq, inner.head_hash.clone());
        for e in events {
            seq += 1;
            let (r, line) = AuditRecord::chain_line(&self.writer_id, seq, &prev, e);
            prev.clone_from(&r.hash);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            records.push(r);
        }
        let (file, path, len_before) = match inner.write(&self.dir, self.fsync, &buf) {
            Ok(w) => w,
            Err(e) => {
                drop(inner);
                tracing::error!(error = %e, "audit batch not written; refusing the requests that caused it");
                refuse(waiters, &e);
                return;
            }
        };
        inner.head_seq = seq;
        inner.head_hash = prev;
        if !self.fsync {
            // Acknowledged in chain order: still under the chain's lock.
            self.acknowledge(records);
            drop(inner);
            for w in waiters {
                let _ = w.send(Ok(()));
            }
            return;
        }
        inner.in_flight += 1;
        let job = SyncJob { file, path, len_before, records, waiters };
        let sent = match lock(&self.syncer).as_ref() {
            Some(s) => s.send(job).map_err(|std::sync::mpsc::SendError(job)| job),
            None => Err(job),
        };
        if let Err(job) = sent {
            inner.in_flight -= 1;
            inner.failed = true;
            inner.undo.push((job.path, job.len_before));
            drop(inner);
            refuse(job.waiters, "audit syncer stopped");
        }
    }
}

impl Inner {
    /// After a failed fsync, once every batch handed to the syncer has been answered: take the
    /// refused bytes back and continue from the last synced record.
    fn rewind(&mut self, writer_id: &str) -> bool {
        if self.in_flight > 0 {
            return false;
        }
        let mut done: Vec<PathBuf> = Vec::new();
        for (path, len) in &self.undo {
            // The first entry per file is the earliest refused byte in it.
            if done.contains(path) {
                continue;
            }
            done.push(path.clone());
            if let Err(e) =
                OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(*len).and_then(|()| f.sync_all()))
            {
                tracing::error!(error = %e, file = %path.display(), "audit file cannot be rewound after a failed fsync");
                return false;
            }
        }
        self.undo.clear();
        self.head_seq = self.synced.0;
        self.head_hash = self.synced.1.clone();
        self.file = None;
        self.failed = false;
        tracing::warn!(writer = writer_id, seq = self.head_seq, "audit chain rewound to its last synced record");
        true
    }

    /// Appends `bytes` to today's file in one write. The path is checked on every batch: an
    /// audit directory that was removed or replaced is noticed at once instead of writing into an
    /// unlinked file.
    fn write(&mut self, dir: &std::path::Path, fsync: bool, bytes: &[u8]) -> Result<(Arc<File>, PathBuf, u64), String> {
        use std::os::unix::fs::MetadataExt;
        let now = now_ms();
        let day = now.div_euclid(86_400_000);
        let current = self
            .file
            .as_ref()
            .filter(|f| f.day == day)
            .is_some_and(|f| std::fs::metadata(&f.path).is_ok_and(|m| (m.dev(), m.ino()) == f.id));
        if !current {
            self.file = None;
            // Filed by the time of the write, not each record's timestamp, so every chain stays
            // in seq order across the daily files.
            let path = JsonlSink::file_for_date(dir, &portcullis_core::timefmt::utc_date(now));
            let existed = path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            let m = file.metadata().map_err(|e| format!("stat {}: {e}", path.display()))?;
            if fsync
                && !existed
                && let Ok(d) = File::open(dir)
            {
                // A new file's directory entry must be durable too.
                let _ = d.sync_all();
            }
            self.file = Some(OpenFile { path, day, file: Arc::new(file), id: (m.dev(), m.ino()) });
        }
        let Some(open) = self.file.as_ref() else { return Err(String::from("audit file not open")) };
        let before = open.file.metadata().map_err(|e| format!("stat {}: {e}", open.path.display()))?.len();
        if let Err(e) = (&*open.file).write_all(bytes) {
            let _ = open.file.set_len(before);
            let path = open.path.display().to_string();
            self.file = None;
            return Err(format!("write {path}: {e}"));
        }
        Ok((open.file.clone(), open.path.clone(), before))
    }
}

fn start_syncer(log: Arc<ChainLog>) -> Result<std::sync::mpsc::Sender<SyncJob>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
    // The thread holds the log weakly: dropping the sender (at close) ends it.
    let log = Arc::downgrade(&log);
    std::thread::Builder::new()
        .name(String::from("audit-sync"))
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut jobs = vec![first];
                while let Ok(j) = rx.try_recv() {
                    jobs.push(j);
                }
                let Some(log) = log.upgrade() else { break };
                let failed_before = lock(&log.inner).failed;
                // One fsync per file covers every batch written to it so far.
                let mut ok = !failed_before;
                let mut synced_files: Vec<&PathBuf> = Vec::new();
                for job in &jobs {
                    if !ok {
                        break;
                    }
                    if synced_files.contains(&&job.path) {
                        continue;
                    }
                    synced_files.push(&job.path);
                    if let Err(e) = job.file.sync_data() {
                        tracing::error!(error = %e, file = %job.path.display(), "audit fsync failed; refusing the batches it covers");
                        ok = false;
                    }
                }
                let n = jobs.len();
                let mut inner = lock(&log.inner);
                if ok {
                    if let Some(last) = jobs.last().and_then(|j| j.records.last()) {
                        inner.synced = (last.seq, last.hash.clone());
                    }
                    inner.in_flight -= n;
                    let mut answers = Vec::with_capacity(n);
                    for job in jobs {
                        log.acknowledge(job.records);
                        answers.push(job.waiters);
                    }
                    drop(inner);
                    for w in answers.into_iter().flatten() {
                        let _ = w.send(Ok(()));
                    }
                } else {
                    inner.failed = true;
                    inner.in_flight -= n;
                    let mut refused = Vec::with_capacity(n);
                    for job in jobs {
                        inner.undo.push((job.path, job.len_before));
                        refused.push(job.waiters);
                    }
                    drop(inner);
                    for w in refused {
                        refuse(w, "audit fsync failed");
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start audit syncer: {e}"))?;
    Ok(tx)
}

/// A thread's own batch: events recorded on it since its last append.
struct Batch {
    log: Arc<ChainLog>,
    pending: Vec<AuditEvent>,
    waiters: Vec<Waiter>,
    flush_scheduled: bool,
}

thread_local! {
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Makes the calling thread append its own events to `log` (an edge thread, once at its start;
/// it must run a current-thread runtime, so the flush task runs on this same thread).
pub(crate) fn bind(log: Arc<ChainLog>) {
    BATCH.with(|b| {
        *b.borrow_mut() = Some(Batch { log, pending: Vec::new(), waiters: Vec::new(), flush_scheduled: false })
    });
}

fn flush_this_thread() {
    let taken = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let batch = b.as_mut()?;
        batch.flush_scheduled = false;
        Some((batch.log.clone(), std::mem::take(&mut batch.pending), std::mem::take(&mut batch.waiters)))
    });
    let Some((log, events, waiters)) = taken else { return };
    // With fsync the batch is answered from the syncer thread, and every answer sent from
    // another thread costs this thread's runtime a wake-up (an eventfd write) of its own: the
    // syncer answers the batch once, and its requests are answered here.
    if log.fsync
        && waiters.len() > 1
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        let (tx, rx) = oneshot::channel();
        log.append(events, vec![tx]);
        rt.spawn(async move {
            let answer = rx.await.unwrap_or_else(|_| Err(AuditUnavailable(String::from("audit log stopped"))));
            for w in waiters {
                let _ = w.send(answer.clone());
            }
        });
        return;
    }
    log.append(events, waiters);
}

/// Queues `events` on the calling thread's batch; the receiver answers once they are durable.
/// Gives the events back when the thread appends through the writer thread instead.
pub(crate) fn push(
    events: Vec<AuditEvent>,
) -> Result<oneshot::Receiver<Result<(), AuditUnavailable>>, Vec<AuditEvent>> {
    let (rx, flush_now) = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let Some(batch) = b.as_mut() else { return Err(events) };
        let (tx, rx) = oneshot::channel();
        batch.pending.extend(events);
        batch.waiters.push(tx);
        let mut flush_now = false;
        if !batch.flush_scheduled {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    batch.flush_scheduled = true;
                    // Append after the other ready tasks of this thread have run and added theirs.
                    rt.spawn(async {
                        tokio::task::yield_now().await;
                        flush_this_thread();
                    });
                }
                // Outside a runtime (the thread is shutting down): append at once.
                Err(_) => flush_now = true,
            }
        }
        Ok((rx, flush_now))
    })?;
    if flush_now {
        flush_this_thread();
    }
    Ok(rx)
}
