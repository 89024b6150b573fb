//! Persistence: a snapshot of the state plus an append-only journal of the changes since.
//!
//! The broker core writes [`record`]s of what changed into a buffer; once per loop turn, before
//! that turn's output (acknowledgements included) goes to any socket, the event loop appends
//! the buffer to the journal in one write (group commit) and, with `persistence_sync always`,
//! `fdatasync`s it. A process that is killed has therefore written everything it acknowledged;
//! a machine that loses power has too, with `always`.
//!
//! When the journal outgrows its limit, the broker's whole state is written as a new snapshot
//! (temporary file, fsync, rename) and a new, empty journal is started the same way. Both
//! files carry a generation number: a journal whose generation is not the snapshot's was left
//! by a crash in the middle of that switch and is already contained in the snapshot.
//!
//! Reading at start never stops the broker: a torn last record is dropped with a warning, and a
//! damaged record costs that record only (the reader resynchronises on the next intact frame,
//! [`record::scan`]); a damaged file is moved aside (`.damaged-<unix time>`) once every intact
//! record has been read. The state that was read is then written as a fresh snapshot.

pub mod failing;
pub mod record;

use failing::Failing;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SNAPSHOT_MAGIC: &[u8; 8] = b"GATEMQS1";
const JOURNAL_MAGIC: &[u8; 8] = b"GATEMQJ1";
const HEADER: usize = 16;
/// The journal is compacted into a snapshot when it is larger than this and than the last
/// snapshot (so a large state is not rewritten for every few changes).
const COMPACT_MIN: u64 = 4 * 1024 * 1024;

/// When the journal is forced to the storage (`persistence_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// After every loop turn's write, before that turn's acknowledgements leave.
    Always,
    /// At most this often; the OS writes in between.
    Interval(Duration),
    /// Never asked for: the OS writes when it likes (a process crash loses nothing; a power
    /// cut loses what the OS had not written).
    Never,
}

/// The files of one `persistence_location`.
pub struct Store {
    snapshot: PathBuf,
    journal_path: PathBuf,
    journal: File,
    generation: u64,
    /// The journal file's length: where its last whole record ends.
    journal_len: u64,
    snapshot_len: u64,
    sync: SyncPolicy,
    last_sync: Instant,
    unsynced: bool,
    /// Set while the storage refuses writes.
    failing: Option<Failing>,
    /// Bytes written to both files since start (for metrics and the wear figures).
    pub bytes_written: u64,
}

/// What was read at start.
pub struct Loaded {
    /// The intact records of the snapshot, then of the journal, as frames.
    pub records: Vec<u8>,
    /// What could not be read, one sentence each (logged by the caller).
    pub warnings: Vec<String>,
    generation: u64,
}

/// Read the snapshot and journal `file` (+ `.journal`) in `dir`; missing files are an empty
/// state. Only a directory that cannot be made or read is an error.
pub fn load(dir: &Path, file: &str) -> Result<Loaded, String> {
    fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create persistence_location {}: {}",
            dir.display(),
            crate::config::io_reason(&e)
        )
    })?;
    let snapshot = dir.join(file);
    let journal = journal_path(&snapshot);
    let mut loaded = Loaded {
        records: Vec::new(),
        warnings: Vec::new(),
        generation: 0,
    };
    if let Some(generation) = read_file(&snapshot, SNAPSHOT_MAGIC, None, &mut loaded)? {
        loaded.generation = generation;
    }
    let generation = loaded.generation;
    read_file(&journal, JOURNAL_MAGIC, Some(generation), &mut loaded)?;
    Ok(loaded)
}

fn journal_path(snapshot: &Path) -> PathBuf {
    let mut p = snapshot.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// Append the intact records of `path` to `loaded.records`. Returns the file's generation, or
/// `None` if there is no usable file. A journal of another generation than `want` is stale.
fn read_file(
    path: &Path,
    magic: &[u8; 8],
    want: Option<u64>,
    loaded: &mut Loaded,
) -> Result<Option<u64>, String> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read {}: {}",
                path.display(),
                crate::config::io_reason(&e)
            ))
        }
    };
    let name = path.display();
    if data.len() < HEADER || &data[..8] != magic {
        loaded.warnings.push(format!(
            "{name} is not a gatemq {} file; moved aside, not read",
            kind(magic)
        ));
        move_aside(path, &mut loaded.warnings);
        return Ok(None);
    }
    let generation = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
    if want.is_some_and(|g| g != generation) {
        // Left by a crash between writing a snapshot and starting its journal: its records
        // are in the snapshot.
        return Ok(None);
    }
    let records = &mut loaded.records;
    let s = record::scan(&data[HEADER..], |frame| records.extend_from_slice(frame));
    if s.torn > 0 {
        loaded.warnings.push(format!(
            "{name}: the last record was cut short ({} bytes, a write interrupted by a crash); dropped, the {} records before it were read",
            s.torn, s.records
        ));
    }
    if let Some(first) = s.first_damage {
        loaded.warnings.push(format!(
            "{name} is damaged: {} bytes in {} place{} skipped (the first at byte {}); the {} intact records around them were read (the file is moved aside)",
            s.skipped,
            s.damaged,
            if s.damaged == 1 { "" } else { "s" },
            HEADER + first,
            s.records
        ));
        move_aside(path, &mut loaded.warnings);
    }
    Ok(Some(generation))
}

fn kind(magic: &[u8; 8]) -> &'static str {
    if magic == SNAPSHOT_MAGIC {
        "snapshot"
    } else {
        "journal"
    }
}

/// Keep a damaged file for a person to look at, under a name that is never read again.
fn move_aside(path: &Path, warnings: &mut Vec<String>) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{secs}"));
    if let Err(e) = fs::rename(path, &aside) {
        warnings.push(format!(
            "cannot move {} aside: {}",
            path.display(),
            crate::config::io_reason(&e)
        ));
    }
}

impl Store {
    /// Start writing in `dir`: `state` (the records of the whole state, as read and applied)
    /// becomes a fresh snapshot and an empty journal follows it. A storage that refuses the
    /// write (full, read-only, failing) does not stop the start: the store begins failing and
    /// retries, and the files read stay as they are. Only what looks like a mistake in the
    /// config (no permission, not a folder) is an error.
    pub fn open(
        dir: &Path,
        file: &str,
        loaded: &Loaded,
        state: &[u8],
        sync: SyncPolicy,
    ) -> Result<Store, String> {
        let snapshot = dir.join(file);
        let journal_path = journal_path(&snapshot);
        let now = Instant::now();
        let mut store = Store {
            journal: File::open("/dev/null").map_err(|e| e.to_string())?,
            snapshot,
            journal_path,
            generation: loaded.generation,
            journal_len: 0,
            snapshot_len: 0,
            sync,
            last_sync: now,
            unsynced: false,
            failing: None,
            bytes_written: 0,
        };
        if let Err(e) = store.compact(state) {
            use io::ErrorKind::*;
            let what = store.snapshot.display();
            if matches!(
                e.kind(),
                PermissionDenied | NotFound | NotADirectory | IsADirectory
            ) {
                return Err(format!(
                    "cannot write {what}: {}",
                    crate::config::io_reason(&e)
                ));
            }
            store.failing = Some(Failing::start(now, &what.to_string(), &e, true));
        }
        Ok(store)
    }

    /// Write one loop turn's records (before that turn's output is written), syncing per the
    /// policy. What cannot be written is held and retried (see [`failing`]): [`Store::durable`]
    /// says whether everything so far is written.
    pub fn write(&mut self, records: &[u8], now: Instant) {
        if let Some(f) = &mut self.failing {
            f.hold(records);
            if f.snapshot || now < f.retry_at {
                return;
            }
            let pending = std::mem::take(&mut f.pending);
            match self.append(&pending) {
                Ok(()) => self.recovered(now),
                Err((e, untrusted)) => {
                    if let Some(f) = &mut self.failing {
                        f.pending = pending;
                    }
                    self.failed_journal(now, &e, untrusted);
                }
            }
            return;
        }
        if let Err((e, untrusted)) = self.append(records) {
            self.failed_journal(now, &e, untrusted);
            if let Some(f) = &mut self.failing {
                f.hold(records);
            }
            return;
        }
        if let SyncPolicy::Interval(every) = self.sync {
            if self.unsynced && now.duration_since(self.last_sync) >= every {
                if let Err(e) = self.sync_now() {
                    self.failed_journal(now, &e, true);
                }
            }
        }
    }

    /// Append `bytes` and sync per the policy. On an error the journal is cut back to its last
    /// whole record; `true` with it: the journal cannot be trusted (a sync failed, or the cut
    /// did), and only a new snapshot can follow.
    fn append(&mut self, bytes: &[u8]) -> Result<(), (io::Error, bool)> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.journal.write_all(bytes) {
            let cut = self.journal.set_len(self.journal_len).is_err();
            return Err((e, cut));
        }
        self.journal_len += bytes.len() as u64;
        self.bytes_written += bytes.len() as u64;
        self.unsynced = true;
        if self.sync == SyncPolicy::Always {
            // After a failed fdatasync the kernel may have dropped the pages it could not
            // write: retrying on the same file could report success for lost data.
            self.sync_now().map_err(|e| (e, true))?;
        }
        Ok(())
    }

    /// Write `state` as a new snapshot with an empty journal after it: when compaction is due
    /// ([`Store::wants_snapshot`]), when the journal cannot be trusted, and at shutdown.
    pub fn snapshot(&mut self, state: &[u8], now: Instant) {
        match self.compact(state) {
            Ok(()) => self.recovered(now),
            Err(e) => self.failed(now, &e, Some(&self.snapshot.clone())),
        }
    }

    /// Is every record handed to [`Store::write`] written (synced, per the policy)?
    pub fn durable(&self) -> bool {
        self.failing.is_none()
    }

    /// Should this turn write a whole snapshot instead of its records?
    pub fn wants_snapshot(&self, now: Instant) -> bool {
        match &self.failing {
            Some(f) => f.snapshot && now >= f.retry_at,
            None => self.journal_len > COMPACT_MIN.max(self.snapshot_len),
        }
    }

    /// When [`Store::write`] next has something to do on its own: an interval sync, a retry.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (&self.failing, self.sync) {
            (Some(f), _) => Some(f.retry_at),
            (None, SyncPolicy::Interval(every)) if self.unsynced => Some(self.last_sync + every),
            _ => None,
        }
    }

    /// Writing failed. `snapshot`: only a new snapshot may follow (a snapshot failed, naming
    /// its file, or the journal cannot be trusted).
    fn failed(&mut self, now: Instant, e: &io::Error, snapshot: Option<&Path>) {
        let what = snapshot.unwrap_or(&self.journal_path).display().to_string();
        let snapshot = snapshot.is_some();
        match &mut self.failing {
            Some(f) => f.again(now, &what, e, snapshot),
            None => self.failing = Some(Failing::start(now, &what, e, snapshot)),
        }
    }

    /// Writing the journal failed; `untrusted`: it cannot be appended to any more.
    fn failed_journal(&mut self, now: Instant, e: &io::Error, untrusted: bool) {
        if untrusted {
            let file = self.journal_path.clone();
            self.failed(now, e, Some(&file));
        } else {
            self.failed(now, e, None);
        }
    }

    fn recovered(&mut self, now: Instant) {
        if let Some(f) = self.failing.take() {
            f.end(now);
        }
    }

    /// Sync what is unsynced.
    fn sync_now(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.journal.sync_data()?;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Write `state` as the next generation's snapshot and start its empty journal.
    fn compact(&mut self, state: &[u8]) -> io::Result<()> {
        let generation = self.generation + 1;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(SNAPSHOT_MAGIC);
        header[8..].copy_from_slice(&generation.to_le_bytes());
        write_atomically(&self.snapshot, &[&header, state])?;
        header[..8].copy_from_slice(JOURNAL_MAGIC);
        write_atomically(&self.journal_path, &[&header])?;
        self.journal = OpenOptions::new().append(true).open(&self.journal_path)?;
        self.generation = generation;
        self.snapshot_len = (HEADER + state.len()) as u64;
        self.journal_len = HEADER as u64;
        self.bytes_written += (2 * HEADER + state.len()) as u64;
        self.unsynced = false;
        Ok(())
    }
}

/// Write `parts` to `path` so that `path` is always either the old file or the whole new one:
/// a temporary file, fsync, rename, fsync of the folder.
fn write_atomically(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = File::create(&tmp).and_then(|mut f| {
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        // A full disk gets its space back.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself must reach the disk.
    File::open(folder_of(path))?.sync_all()?;
    Ok(())
}

/// The folder a file is in: `.` for a bare file name, whose `parent()` is the empty path (which
/// `open` refuses: `gatemq -c gatemq.conf` in the config's own folder failed to start).
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}
