//! Daily JSONL files `audit-YYYY-MM-DD.jsonl` (UTC date of the event) and `checkpoints.jsonl`.
use portcullis_core::audit::AuditRecord;
use portcullis_core::timefmt::{parse_rfc3339_ms, utc_date};
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
        if self.fsync {
            f.sync_data().map_err(|e| format!("fsync {}: {e}", path.display()))?;
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
        let mut undo = SinkUndo::default();
        // Records of one batch are nearly always of one day; group consecutive runs by date.
        let mut start = 0;
        while start < records.len() {
            let date = records
                .get(start)
                .and_then(|r| parse_rfc3339_ms(&r.timestamp))
                .map(utc_date)
                .unwrap_or_else(|| String::from("undated"));
            let mut end = start;
            let mut buf = Vec::with_capacity(512 * (records.len() - start));
            while let Some(r) = records.get(end) {
                let d = parse_rfc3339_ms(&r.timestamp).map(utc_date).unwrap_or_else(|| String::from("undated"));
                if d != date {
                    break;
                }
                if let Err(e) = serde_json::to_writer(&mut buf, r) {
                    self.undo(undo);
                    return Err(e.to_string());
                }
                buf.push(b'\n');
                end += 1;
            }
            let path = Self::file_for_date(&self.dir, &date);
            match self.append(&path, &buf) {
                Ok(before) => undo.0.push((path, before)),
                Err(e) => {
                    self.undo(undo);
                    return Err(e);
                }
            }
            start = end;
        }
        Ok(undo)
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
