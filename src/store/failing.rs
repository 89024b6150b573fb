//! What the store does while the storage refuses writes (a full SD card, a read-only remount,
//! an I/O error): keep what could not be written, retry with a backoff, and say so once.
//!
//! Records that failed to reach the journal are kept in order and written first when a retry
//! succeeds. When that cannot be trusted any more (an `fdatasync` failed, so the kernel may have
//! dropped the journal's dirty pages; a snapshot failed half way; the held records outgrew
//! their bound; the start itself could not write), the next write is a whole snapshot, which
//! holds everything the broker has, and a new journal after it.

use std::io;
use std::time::{Duration, Instant};

/// First retry after this long, doubling up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Records held beyond this are dropped for a snapshot at the next retry (memory stays bounded
/// whatever is published while the disk is full).
pub const PENDING_MAX: usize = 1024 * 1024;
/// While failing, one line at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Failing {
    since: Instant,
    pub retry_at: Instant,
    backoff: Duration,
    last_log: Instant,
    attempts: u64,
    /// Records not written yet, oldest first.
    pub pending: Vec<u8>,
    /// The next write must be a whole snapshot (and `pending` is not needed).
    pub snapshot: bool,
}

impl Failing {
    /// The first failure: one error line.
    pub fn start(now: Instant, what: &str, e: &io::Error, snapshot: bool) -> Failing {
        log::error!(
            "persistence: cannot write {what}: {}; acknowledgements of messages to keep are held, and their publishers not read, until it can (retrying)",
            crate::config::io_reason(e)
        );
        Failing {
            since: now,
            retry_at: now + BACKOFF_MIN,
            backoff: BACKOFF_MIN,
            last_log: now,
            attempts: 1,
            pending: Vec::new(),
            snapshot,
        }
    }

    /// Another failed attempt: back off; a line a minute at most.
    pub fn again(&mut self, now: Instant, what: &str, e: &io::Error, snapshot: bool) {
        self.attempts += 1;
        self.snapshot |= snapshot;
        if self.snapshot {
            self.pending = Vec::new();
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.retry_at = now + self.backoff;
        if now.duration_since(self.last_log) >= LOG_EVERY {
            self.last_log = now;
            log::warn!(
                "persistence: still cannot write {what}: {} ({} attempts in {} s)",
                crate::config::io_reason(e),
                self.attempts,
                now.duration_since(self.since).as_secs()
            );
        }
    }

    /// Hold `records` (this turn's) until the next retry.
    pub fn hold(&mut self, records: &[u8]) {
        if self.snapshot {
            return;
        }
        if self.pending.len() + records.len() > PENDING_MAX {
            self.pending = Vec::new();
            self.snapshot = true;
            return;
        }
        self.pending.extend_from_slice(records);
    }

    /// Writing works again: one line.
    pub fn end(self, now: Instant) {
        log::warn!(
            "persistence: writing again after {} s and {} failed attempts; held acknowledgements released",
            now.duration_since(self.since).as_secs(),
            self.attempts
        );
    }
}
