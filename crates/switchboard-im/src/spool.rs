//! The CDR spool: a local, append-only, fsync'd file holding the CDR writes the database
//! could not take, in order, until they are replayed into it (issue 13: losing the
//! database loses no acknowledged write, and no restart by hand is needed).
//!
//! Format: one record per line, JSON, `{"run":{..},"write":{..}}`. Each record carries
//! the [`Run`] that made the write, so a replay after a restart records a session under
//! the run that started it (and the new run's `close_open_sessions` can close it).
//!
//! Durability: a write is safe once [`Spool::append`] returns: its bytes are written and
//! `sync_data`'d, and when the append created the file the directory is synced too, so
//! the file itself survives a crash. A crash mid-append leaves a torn last line: the next
//! append starts on a fresh line, and reading skips the torn one with a warning.
//! Removing the file after a replay syncs the directory before the caller goes on.
//!
//! Bounded: an append that would take the file past its limit is refused
//! ([`SpoolError::Full`]), as if the database were down, rather than filling the disk.
//!
//! Every method blocks on the file system: callers run them on `spawn_blocking`. One task
//! at a time uses a spool (the service's start, then the CDR writer), so nothing appends
//! while a replay reads.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchboard_core::Run;

use crate::cdr::CdrWrite;

/// The largest spool file: beyond it, writes are refused rather than filling the disk.
pub(crate) const SPOOL_LIMIT: u64 = 256 * 1024 * 1024;

/// One spooled write and the run it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) run: Run,
    pub(crate) write: CdrWrite,
}

/// Why the spool could not take or give records.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpoolError {
    #[error("the CDR spool is full ({limit} bytes)")]
    Full { limit: u64 },
    #[error("CDR spool I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode a CDR spool record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Records read from the spool, and where reading stopped.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// Each record with the offset just past it (where a replay stopped after it goes on).
    pub(crate) records: Vec<(u64, Record)>,
    /// The offset the next read starts at.
    pub(crate) next: u64,
    /// Whether the file was read to its end.
    pub(crate) end: bool,
}

/// The spool file (see the module header).
#[derive(Debug)]
pub(crate) struct Spool {
    path: PathBuf,
    limit: u64,
}

impl Spool {
    pub(crate) fn new(path: PathBuf) -> Spool {
        Spool::with_limit(path, SPOOL_LIMIT)
    }

    pub(crate) fn with_limit(path: PathBuf, limit: u64) -> Spool {
        Spool { path, limit }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds nothing (or is not there).
    pub(crate) fn is_empty(&self) -> Result<bool, SpoolError> {
        match std::fs::metadata(&self.path) {
            // Something else in its place (a directory) is no spool: an error.
            Ok(m) if !m.is_file() => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the spool's path is not a file",
            )
            .into()),
            Ok(m) => Ok(m.len() == 0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends `records` in order and syncs them to disk; only then are they safe.
    pub(crate) fn append(&self, records: &[Record]) -> Result<(), SpoolError> {
        let mut bytes = Vec::new();
        for r in records {
            serde_json::to_writer(&mut bytes, r)?;
            bytes.push(b'\n');
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let len = file.metadata()?.len();
        // A line torn by a crash (or a failed write) must not swallow the next record.
        let torn = len > 0 && {
            let mut last = [0u8];
            file.read_exact_at(&mut last, len - 1)?;
            last[0] != b'\n'
        };
        if torn {
            bytes.insert(0, b'\n');
        }
        if len + bytes.len() as u64 > self.limit {
            return Err(SpoolError::Full { limit: self.limit });
        }
        file.write_all(&bytes)?;
        file.sync_data()?;
        if len == 0 {
            // The file may be new: its directory entry must survive a crash too.
            sync_dir(&self.path)?;
        }
        Ok(())
    }

    /// Up to `max` records from byte `from` on. A torn or damaged line is skipped with a
    /// warning (what it held was never acknowledged, or cannot be read back anyway).
    pub(crate) fn read_from(&self, from: u64, max: usize) -> Result<Chunk, SpoolError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Chunk {
                    records: Vec::new(),
                    next: from,
                    end: true,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        // Past the end, the file is not the one read before (it was removed and made
        // again): read it whole; re-applying a record is harmless, skipping one is not.
        let from = if from > len {
            tracing::warn!(path = %self.path.display(), "the CDR spool is shorter than what was read of it; reading it from the start");
            0
        } else {
            from
        };
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(from))?;
        let mut records = Vec::new();
        let mut next = from;
        let mut line = Vec::new();
        while records.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(Chunk {
                    records,
                    next,
                    end: true,
                });
            }
            let at = next;
            next += n as u64;
            if line.last() != Some(&b'\n') {
                tracing::warn!(path = %self.path.display(), offset = at, "torn last line of the CDR spool skipped (a crash while writing it)");
                continue;
            }
            let text = &line[..n - 1];
            if text.iter().all(u8::is_ascii_whitespace) {
                // The fresh line an append started after a torn one.
                continue;
            }
            match serde_json::from_slice::<Record>(text) {
                Ok(r) => records.push((next, r)),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), offset = at, error = %e, "damaged CDR spool record skipped")
                }
            }
        }
        Ok(Chunk {
            records,
            next,
            end: false,
        })
    }

    /// Removes the file once everything in it is applied, syncing the directory so a
    /// crash afterwards cannot bring it back (and replay it over later writes).
    pub(crate) fn remove(&self) -> Result<(), SpoolError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // The file is gone either way: the caller must go on as if it were, or it would
        // read a new file at the old one's offsets. At worst a crash brings it back and
        // its records are applied again.
        if let Err(e) = sync_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot sync the directory of the removed CDR spool");
        }
        Ok(())
    }
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(n: i64) -> Record {
        Record {
            run: Run {
                owner: "fe1".into(),
                epoch: n,
            },
            write: CdrWrite::Escalated {
                id: format!("s{n}"),
                from: "p".into(),
            },
        }
    }

    fn epochs(c: &Chunk) -> Vec<i64> {
        c.records.iter().map(|(_, r)| r.run.epoch).collect()
    }

    #[test]
    fn appends_are_read_back_in_order_from_an_owner_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("cdr-spool"));
        assert!(spool.is_empty().unwrap());
        spool.append(&[record(1), record(2)]).unwrap();
        spool.append(&[record(3)]).unwrap();
        let mode = std::fs::metadata(spool.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let all = spool.read_from(0, 10).unwrap();
        assert_eq!(epochs(&all), [1, 2, 3]);
        assert!(all.end);
        // Read in pieces, resuming where the last read stopped.
        let first = spool.read_from(0, 2).unwrap();
        assert_eq!(epochs(&first), [1, 2]);
        assert!(!first.end);
        let rest = spool.read_from(first.next, 2).unwrap();
        assert_eq!(epochs(&rest), [3]);
        assert!(rest.end);
        spool.remove().unwrap();
        assert!(spool.is_empty().unwrap());
        assert!(!spool.path().exists());
    }

    /// A crash mid-append leaves half a line: reading skips it, and the next append does
    /// not glue its record onto it.
    #[test]
    fn a_torn_line_is_skipped_and_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("cdr-spool"));
        spool.append(&[record(1)]).unwrap();
        let whole = serde_json::to_string(&record(2)).unwrap();
        let mut f = OpenOptions::new().append(true).open(spool.path()).unwrap();
        f.write_all(&whole.as_bytes()[..whole.len() / 2]).unwrap();
        drop(f);
        assert_eq!(epochs(&spool.read_from(0, 10).unwrap()), [1]);
        spool.append(&[record(3)]).unwrap();
        assert_eq!(epochs(&spool.read_from(0, 10).unwrap()), [1, 3]);
    }

    #[test]
    fn an_append_past_the_limit_is_refused_and_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&record(1)).unwrap().len() as u64 + 1;
        let spool = Spool::with_limit(dir.path().join("cdr-spool"), one * 2);
        spool.append(&[record(1), record(2)]).unwrap();
        assert!(matches!(
            spool.append(&[record(3)]),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(epochs(&spool.read_from(0, 10).unwrap()), [1, 2]);
    }
}
