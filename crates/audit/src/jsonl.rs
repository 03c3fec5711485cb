//! Daily JSONL files `audit-YYYY-MM-DD.jsonl` (UTC date of the event) and `checkpoints.jsonl`.
use portcullis_core::audit::AuditRecord;
use portcullis_core::timefmt::utc_date;
use portcullis_store::{ChainSink, Checkpoint, SinkUndo};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct JsonlSink {
    dir: PathBuf,
    fsync: bool,
}

impl JsonlSink {
    pub fn new(dir: PathBuf, fsync: bool) -> Self {
        Self { dir, fsync }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn file_for_date(dir: &Path, date: &str) -> PathBuf {
        dir.join(format!("audit-{date}.jsonl"))
    }

    /// Appends `bytes` to `path`, returning the length before the write so it can be undone.
    /// The file is opened per batch on purpose: an audit directory that became unwritable or
    /// was removed is noticed at the next batch instead of writing into an unlinked inode.
    fn append(&self, path: &Path, bytes: &[u8]) -> Result<u64, String> {
        let existed = path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let before = f.metadata().map_err(|e| format!("stat {}: {e}", path.display()))?.len();
        if let Err(e) = f.write_all(bytes) {
            let _ = f.set_len(before);
            return Err(format!("write {}: {e}", path.display()));
        }
        if self.fsync
            && let Err(e) = f.sync_data()
        {
            // Not durable means not written: take the bytes back so no refused event stays.
            let _ = f.set_len(before);
            return Err(format!("fsync {}: {e}", path.display()));
        }
        if self.fsync {
            // A new file's directory entry must be durable too.
            if !existed && let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
        }
        Ok(before)
    }

    pub fn write_checkpoint(&self, cp: &Checkpoint) -> Result<(), String> {
        let mut line = serde_json::to_vec(cp).map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.append(&self.dir.join("checkpoints.jsonl"), &line).map(|_| ())
    }
}

impl ChainSink for JsonlSink {
    fn write(&self, records: &[AuditRecord]) -> Result<SinkUndo, String> {
        // One file per batch, named by the time of the write, not by each record's timestamp:
        // records are stamped when created but chained in queue order, so around midnight a
        // record stamped 23:59:59.999 can follow one stamped 00:00:00.000. Filing by write time
        // keeps every chain in seq order across the daily files.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let path = Self::file_for_date(&self.dir, &utc_date(now_ms));
        let mut buf = Vec::with_capacity(512 * records.len());
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|e| e.to_string())?;
            buf.push(b'\n');
        }
        let before = self.append(&path, &buf)?;
        Ok(SinkUndo(vec![(path, before)]))
    }

    fn undo(&self, undo: SinkUndo) {
        for (path, len) in undo.0 {
            if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                let _ = f.set_len(len);
            }
        }
    }
}

/// Every audit file in the directory, oldest first (the names sort by date).
pub fn audit_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Calls `f` with each line of `path` (without its line end) and its number from 1, until `f`
/// answers `false`; a line that is not UTF-8 comes as `None` (it cannot be a record). Read a line
/// at a time: a busy day's file may be larger than memory allows.
pub(crate) fn each_line(path: &Path, mut f: impl FnMut(usize, Option<&str>) -> bool) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        n += 1;
        let bytes = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if !f(n, std::str::from_utf8(bytes).ok()) {
            return Ok(());
        }
    }
}
