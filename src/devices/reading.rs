//! Readings at run time: values gatemq reads itself, every `every_s` seconds, published
//! retained on `<prefix>/<device>/<reading>` when they change (beyond `deadband`) and in the
//! device's state.
//!
//! Nothing here blocks the loop. A file read can take long (a 1-wire thermometer's
//! `temperature` takes about 750 ms; a FIFO or a dead NFS mount, for ever), so each file
//! reading has a small thread of its own that does the blocking `open` and `read` when asked
//! and wakes the loop through the `mio::Waker` with the result (the bridge's host name lookup
//! does the same); a hung read holds up that reading only. A reload hands a reading's thread,
//! with its read in flight, to a reading of the same file declared now; a thread whose reading
//! is gone while its read hangs cannot be stopped, so at most [`ABANDONED_MAX`] of them are
//! left before no new thread is started. A program reading runs as `exec`
//! does: started without waiting, its exit comes back as SIGCHLD, its output is read without
//! blocking once it has exited, and it is killed at its timeout. When the next reading is due
//! is one more deadline of the loop: an idle broker does not poll.
//!
//! A read that fails (no file, not a number, a program that fails or times out) is counted
//! and logged, at most once a minute per reading; the last good value stays.

use super::decl::{Reading, ReadingKind, Source};
use super::{Executor, Outbox};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of a file read (its first line is the reading).
const FILE_BYTES: usize = 256;
/// Bytes of a program's output kept (its first line is the reading).
const OUTPUT_BYTES: usize = 4096;
/// Home Assistant's limit for a state.
const STRING_MAX: usize = 255;
/// A failing reading is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Threads of readings no longer declared, still blocked in a read, beyond which no new
/// reading thread is started (each holds a stack and an open file until its read ends).
pub(super) const ABANDONED_MAX: usize = 16;

/// A file read's result, sent by its thread.
#[derive(Clone, Copy)]
struct Done {
    serial: u64,
    /// 0: read `len` bytes into `buf`; else the OS error code (-1: no code).
    err: i32,
    len: usize,
    buf: [u8; FILE_BYTES],
}

/// The channel file-reading threads answer on, and how they wake the loop. It outlives a
/// reload (readings kept over it have reads in flight).
pub(super) struct Reader {
    done_tx: SyncSender<Done>,
    done_rx: Receiver<Done>,
    pub(super) waker: Option<Arc<mio::Waker>>,
    next_serial: u64,
    /// Threads whose reading went (at a reload) while their read was in flight: they end when
    /// it answers, and their answer is the only one no reading is waiting for.
    abandoned: usize,
    /// A program's output, read once it has exited (capacity kept).
    output: Vec<u8>,
}

/// A file reading's thread, and its read in flight, as a reload hands it over.
pub(super) struct Worker {
    path: PathBuf,
    tx: SyncSender<u64>,
    pending: Option<Pending>,
}

impl Reader {
    pub(super) fn new() -> Reader {
        let (done_tx, done_rx) = sync_channel(32);
        Reader {
            done_tx,
            done_rx,
            waker: None,
            next_serial: 1,
            abandoned: 0,
            output: Vec::with_capacity(OUTPUT_BYTES),
        }
    }
}

/// One reading's state.
pub(super) struct ReadingState {
    /// The value as last published (its normal form), and as a number for the deadband.
    pub value: String,
    pub known: bool,
    number: f64,
    /// When the next read is due.
    next: Instant,
    pending: Pending,
    /// A file reading's thread: it reads when sent a serial.
    worker: Option<SyncSender<u64>>,
    pub ok: u64,
    pub failed: u64,
    /// Failures since the last one logged, and when that was.
    unlogged: u64,
    logged_at: Option<Instant>,
}

enum Pending {
    Idle,
    File {
        serial: u64,
        started: Instant,
        /// Counted as failed at its timeout; the thread still holds the read.
        overdue: bool,
    },
    Program {
        child: Child,
        output: Option<mio::unix::pipe::Receiver>,
        deadline: Instant,
    },
}

impl ReadingState {
    pub(super) fn new(r: &Reading, now: Instant) -> ReadingState {
        ReadingState {
            value: String::with_capacity(match r.kind {
                ReadingKind::Str => STRING_MAX + 1,
                _ => 32,
            }),
            known: false,
            number: 0.0,
            next: now,
            pending: Pending::Idle,
            worker: None,
            ok: 0,
            failed: 0,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// When this reading next needs the loop: its next read, or its read's timeout.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        match &self.pending {
            Pending::Idle => Some(self.next),
            Pending::File {
                started, overdue, ..
            } => (!overdue).then_some(*started + timeout),
            Pending::Program { deadline, .. } => Some(*deadline),
        }
    }

    /// The thread of this reading as declared by `decl` (a file reading that has one), with
    /// its read in flight: a reload hands it to a reading of the same file.
    pub(super) fn take_worker(&mut self, decl: &Reading) -> Option<Worker> {
        let (Source::File(path), Some(tx)) = (&decl.source, self.worker.take()) else {
            return None;
        };
        let pending = match std::mem::replace(&mut self.pending, Pending::Idle) {
            p @ Pending::File { .. } => Some(p),
            _ => None,
        };
        Some(Worker {
            path: path.clone(),
            tx,
            pending,
        })
    }

    /// A reading no longer declared: its program is stopped (its thread ends by itself once
    /// its channel is gone).
    pub(super) fn stop(&mut self) {
        if let Pending::Program { child, .. } = &mut self.pending {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pending = Pending::Idle;
    }
}

impl Executor {
    /// Wake the loop through `waker` when a file reading's thread has a result.
    pub fn with_waker(mut self, waker: Arc<mio::Waker>) -> Executor {
        self.reader.waker = Some(waker);
        self
    }

    /// At a reload, once the devices are taken over: each file reading of a new or changed
    /// device takes the thread of an old reading of the same file, if there is one left in
    /// `workers`, with its read in flight (a hung file keeps one thread, however often its
    /// device is edited). The threads left over end, at once or when their read answers.
    pub(super) fn hand_over_workers(&mut self, mut workers: Vec<Worker>) {
        for dev in self.devices.iter_mut().filter(|d| !d.announced) {
            for (r, decl) in dev.readings.iter_mut().zip(&dev.decl.readings) {
                let Source::File(path) = &decl.source else {
                    continue;
                };
                if let Some(k) = workers.iter().position(|w| w.path == *path) {
                    let w = workers.swap_remove(k);
                    r.worker = Some(w.tx);
                    if let Some(p) = w.pending {
                        r.pending = p;
                    }
                }
            }
        }
        self.reader.abandoned += workers.iter().filter(|w| w.pending.is_some()).count();
    }

    /// When a reading next needs [`Executor::on_timeout`].
    pub(super) fn readings_deadline(&self) -> Option<Instant> {
        self.devices
            .iter()
            .flat_map(|d| {
                d.readings
                    .iter()
                    .zip(&d.decl.readings)
                    .filter_map(|(r, decl)| r.deadline(decl.timeout))
            })
            .min()
    }

    /// Readings that are due are started; reads past their timeout fail.
    pub(super) fn readings_due(&mut self, now: Instant, out: &mut Outbox) {
        self.readings_done(now, out);
        for d in 0..self.devices.len() {
            for i in 0..self.devices[d].readings.len() {
                let timeout = self.devices[d].decl.readings[i].timeout;
                let r = &mut self.devices[d].readings[i];
                if r.deadline(timeout).is_none_or(|t| t > now) {
                    continue;
                }
                let ms = timeout.as_millis();
                match &mut r.pending {
                    Pending::Idle => self.start_read(d, i, now),
                    Pending::File { overdue, .. } => {
                        *overdue = true;
                        self.read_failed(d, i, now, |w| {
                            let _ = write!(w, "no answer after {ms} ms (the read goes on; no other starts until it ends)");
                        });
                    }
                    Pending::Program { child, output, .. } => {
                        let _ = child.kill();
                        let _ = child.wait();
                        // Its output is read once it exits: one that prints more than its
                        // pipe holds waits until it is killed. Say so, as that is the fix.
                        let mut buf = std::mem::take(&mut self.reader.output);
                        buf.clear();
                        if let Some(o) = output {
                            read_available(o, &mut buf);
                        }
                        let printed = buf.len();
                        self.reader.output = buf;
                        r.pending = Pending::Idle;
                        self.read_failed(d, i, now, |w| {
                            let _ = write!(w, "timed out after {ms} ms and was killed");
                            if printed >= OUTPUT_BYTES {
                                let _ = write!(w, " (it had printed more than {OUTPUT_BYTES} bytes: a reading's program prints its value and exits; one that prints more than its pipe holds waits for ever)");
                            }
                        });
                    }
                }
            }
        }
        self.reap_readings(now, out);
    }

    /// Start reading `i` of device `d`.
    fn start_read(&mut self, d: usize, i: usize, now: Instant) {
        let dev = &mut self.devices[d];
        let (decl, r) = (&dev.decl.readings[i], &mut dev.readings[i]);
        r.next += decl.every;
        if r.next <= now {
            r.next = now + decl.every;
        }
        match &decl.source {
            Source::File(path) => {
                if r.worker.is_none() && self.reader.abandoned >= ABANDONED_MAX {
                    let n = self.reader.abandoned;
                    return self.read_failed(d, i, now, |w| {
                        let _ = write!(w, "cannot start its reading thread: {n} threads of readings no longer declared are still blocked in a read (none starts until one ends)");
                    });
                }
                if r.worker.is_none() {
                    match spawn_worker(path.clone(), &self.reader) {
                        Ok(w) => r.worker = Some(w),
                        Err(e) => {
                            return self.read_failed(d, i, now, |w| {
                                let reason = crate::config::io_reason(&e);
                                let _ = write!(w, "cannot start its reading thread: {reason}");
                            });
                        }
                    }
                }
                let serial = self.reader.next_serial;
                self.reader.next_serial += 1;
                let r = &mut self.devices[d].readings[i];
                let sent = r
                    .worker
                    .as_ref()
                    .is_some_and(|w| w.try_send(serial).is_ok());
                if sent {
                    r.pending = Pending::File {
                        serial,
                        started: now,
                        overdue: false,
                    };
                } else {
                    // Its thread is gone (it cannot be busy: one read at a time).
                    r.worker = None;
                    self.read_failed(d, i, now, |w| w.push_str("its reading thread ended"));
                }
            }
            Source::Program { program, args } => {
                let mut p = std::process::Command::new(program);
                p.args(args.iter().map(|a| &**a))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                match p.spawn() {
                    Ok(mut child) => {
                        let output = child.stdout.take().map(mio::unix::pipe::Receiver::from);
                        if let Some(o) = &output {
                            let _ = o.set_nonblocking(true);
                        }
                        r.pending = Pending::Program {
                            child,
                            output,
                            deadline: now + decl.timeout,
                        };
                        self.next_poll.get_or_insert(now + Duration::from_secs(1));
                    }
                    Err(e) => {
                        let reason = crate::config::io_reason(&e);
                        self.read_failed(d, i, now, |w| {
                            let _ = write!(w, "cannot run: {reason}");
                        });
                    }
                }
            }
        }
    }

    /// The loop was woken: finished file reads.
    pub fn on_wake(&mut self, now: Instant, out: &mut Outbox) {
        self.readings_done(now, out);
        self.flush_states(out);
    }

    /// Take the results of finished file reads.
    fn readings_done(&mut self, now: Instant, out: &mut Outbox) {
        while let Ok(done) = self.reader.done_rx.try_recv() {
            let Some((d, i)) = self.pending_file(done.serial) else {
                // A reading no longer declared: its thread ends now.
                self.reader.abandoned = self.reader.abandoned.saturating_sub(1);
                continue;
            };
            self.devices[d].readings[i].pending = Pending::Idle;
            if done.err != 0 {
                let e = match done.err {
                    -1 => std::io::Error::other("read failed"),
                    code => std::io::Error::from_raw_os_error(code),
                };
                self.read_failed(d, i, now, |w| {
                    let _ = write!(w, "cannot read: {}", crate::config::io_reason(&e));
                });
                continue;
            }
            let text = first_line(&done.buf[..done.len]);
            self.read_text(d, i, &text, now, out);
        }
    }

    fn pending_file(&self, serial: u64) -> Option<(usize, usize)> {
        for (d, dev) in self.devices.iter().enumerate() {
            for (i, r) in dev.readings.iter().enumerate() {
                if matches!(r.pending, Pending::File { serial: s, .. } if s == serial) {
                    return Some((d, i));
                }
            }
        }
        None
    }

    /// Programs of readings that exited (SIGCHLD): their output is the reading. Returns
    /// whether one still runs.
    pub(super) fn reap_readings(&mut self, now: Instant, out: &mut Outbox) -> bool {
        let mut running = false;
        for d in 0..self.devices.len() {
            for i in 0..self.devices[d].readings.len() {
                let r = &mut self.devices[d].readings[i];
                let Pending::Program { child, output, .. } = &mut r.pending else {
                    continue;
                };
                let status = match child.try_wait() {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        running = true;
                        continue;
                    }
                    Err(_) => continue,
                };
                let mut buf = std::mem::take(&mut self.reader.output);
                buf.clear();
                if let Some(o) = output {
                    read_available(o, &mut buf);
                }
                self.devices[d].readings[i].pending = Pending::Idle;
                if status.success() {
                    let text = first_line(&buf);
                    self.read_text(d, i, &text, now, out);
                } else {
                    self.read_failed(d, i, now, |w| {
                        let _ = match status.code() {
                            Some(code) => write!(w, "the program exited with status {code}"),
                            None => write!(w, "the program was killed by a signal"),
                        };
                    });
                }
                self.reader.output = buf;
            }
        }
        running
    }

    /// A reading read `text`: its value, published if it changed (beyond the deadband).
    fn read_text(&mut self, d: usize, i: usize, text: &str, now: Instant, out: &mut Outbox) {
        let mut v = std::mem::take(&mut self.value);
        let dev = &mut self.devices[d];
        let (decl, r) = (&dev.decl.readings[i], &mut dev.readings[i]);
        let Some(number) = value(decl, text, &mut v) else {
            self.read_failed(d, i, now, |w| {
                let shown: String = text.chars().take(32).collect();
                let _ = write!(w, "read {shown:?}: {v}");
            });
            self.value = v;
            return;
        };
        r.ok += 1;
        if r.unlogged > 0 || r.logged_at.is_some() {
            log::info!(
                "{}/{}: read again ({} reads failed before)",
                dev.decl.id,
                decl.name,
                r.failed
            );
            r.unlogged = 0;
            r.logged_at = None;
        }
        let numeric = matches!(decl.kind, ReadingKind::Float | ReadingKind::Int);
        let same = r.known
            && (r.value == v
                || (numeric
                    && decl.deadband > 0.0
                    && (number - r.number).abs() <= decl.deadband * (1.0 + 1e-9)));
        if !same {
            r.value.clear();
            r.value.push_str(&v);
            r.number = number;
            r.known = true;
            self.publish_reading(d, i, out);
            self.devices[d].state_dirty = true;
        }
        self.value = v;
    }

    /// A read failed, for the reason `why` writes: counted; logged at most once a minute
    /// (the reason is only written then: a failing reading allocates nothing in between).
    fn read_failed(&mut self, d: usize, i: usize, now: Instant, why: impl FnOnce(&mut String)) {
        let dev = &mut self.devices[d];
        let r = &mut dev.readings[i];
        r.failed += 1;
        if r.logged_at
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            r.unlogged += 1;
            return;
        }
        let what = match &dev.decl.readings[i].source {
            Source::File(p) => p.display().to_string(),
            Source::Program { program, .. } => program.display().to_string(),
        };
        self.text.clear();
        why(&mut self.text);
        let more = match r.unlogged {
            0 => String::new(),
            n => format!(" ({n} more failed reads since the last message)"),
        };
        log::warn!(
            "{}/{}: {what}: {}; the last value stays{more}",
            dev.decl.id,
            dev.decl.readings[i].name,
            self.text
        );
        r.unlogged = 0;
        r.logged_at = Some(now);
    }

    pub(super) fn publish_reading(&self, d: usize, i: usize, out: &mut Outbox) {
        let dev = &self.devices[d];
        let t = out.topic(&[&self.opts.prefix, &dev.decl.id, &dev.decl.readings[i].name]);
        let p = out.bytes.len();
        out.bytes
            .extend_from_slice(dev.readings[i].value.as_bytes());
        out.end(t, p, true);
    }

    /// Reads per reading: (device, reading, good reads, failed reads).
    pub fn reading_counts(&self) -> impl Iterator<Item = (&str, &str, u64, u64)> {
        self.devices.iter().flat_map(|d| {
            d.readings
                .iter()
                .zip(&d.decl.readings)
                .map(move |(r, decl)| (&*d.decl.id, &*decl.name, r.ok, r.failed))
        })
    }

    /// Each reading's last value from `last(device, reading)` (the retained status a restart
    /// or reload kept), if it is a valid value of its type.
    pub(super) fn adopt_readings(&mut self, last: &mut impl FnMut(&str, &str) -> Option<String>) {
        let mut v = String::new();
        for d in &mut self.devices {
            for (i, decl) in d.decl.readings.iter().enumerate() {
                let Some(text) = last(&d.decl.id, &decl.name) else {
                    continue;
                };
                let r = &mut d.readings[i];
                // What gatemq published is in its normal form; anything else (a client's
                // retained `NaN` or `+5`) is normalised or refused, as it goes into the
                // state JSON as written.
                v.clear();
                let number = match decl.kind {
                    ReadingKind::Float => text
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .and_then(|x| float_text(decl, x, &mut v)),
                    ReadingKind::Int => text
                        .parse::<i64>()
                        .ok()
                        .filter(|n| {
                            !text.starts_with('+') && n.unsigned_abs() < 9_000_000_000_000_000
                        })
                        .map(|n| {
                            let _ = write!(v, "{n}");
                            n as f64
                        }),
                    ReadingKind::Bool => matches!(&*text, "ON" | "OFF").then(|| {
                        v.push_str(&text);
                        0.0
                    }),
                    // Cut to Home Assistant's limit, as a read is.
                    ReadingKind::Str => value(decl, &text, &mut v),
                };
                if let Some(n) = number {
                    r.value.clone_from(&v);
                    r.number = n;
                    r.known = true;
                }
            }
        }
    }
}

/// A file reading's thread: reads `path` each time it is sent a serial, answers on the
/// reader's channel and wakes the loop. It ends when its reading is gone (its sender
/// dropped).
fn spawn_worker(path: PathBuf, reader: &Reader) -> std::io::Result<SyncSender<u64>> {
    let (tx, rx) = sync_channel::<u64>(1);
    let done = reader.done_tx.clone();
    let waker = reader.waker.clone();
    std::thread::Builder::new()
        .name("gatemq-read".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut res = Done {
                serial: 0,
                err: 0,
                len: 0,
                buf: [0; FILE_BYTES],
            };
            while let Ok(serial) = rx.recv() {
                res.serial = serial;
                match read_start(&path, &mut res.buf) {
                    Ok(n) => (res.err, res.len) = (0, n),
                    Err(e) => {
                        (res.err, res.len) = (e.raw_os_error().filter(|c| *c != 0).unwrap_or(-1), 0)
                    }
                }
                if done.send(res).is_err() {
                    return;
                }
                if let Some(w) = &waker {
                    let _ = w.wake();
                }
            }
        })?;
    Ok(tx)
}

/// The start of file `path`, up to its first line or `buf`'s size.
fn read_start(path: &std::path::Path, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if buf[..n].contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What an exited program left in its pipe (without waiting for more).
fn read_available(pipe: &mut mio::unix::pipe::Receiver, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 512];
    while buf.len() < OUTPUT_BYTES {
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n.min(OUTPUT_BYTES - buf.len())]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// The first line of what was read, trimmed. Only that line is decoded: the read stops at a
/// fixed size, which may fall inside a character of a later line (or of a first line without
/// an end, whose cut half is dropped). Bytes that are not UTF-8 become U+FFFD (allocating,
/// for such input only).
fn first_line(bytes: &[u8]) -> Cow<'_, str> {
    let mut line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    if let Err(e) = std::str::from_utf8(line) {
        if e.error_len().is_none() {
            line = &line[..e.valid_up_to()];
        }
    }
    match String::from_utf8_lossy(line) {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
    }
}

/// Float reading `r`'s number `x` (scaled) rounded, in its normal form into `out` (empty);
/// on failure, `out` holds why.
fn float_text(r: &Reading, x: f64, out: &mut String) -> Option<f64> {
    // Without `round`, 9 decimals: enough, and no binary noise (45312 * 0.001).
    let decimals = r.round.unwrap_or(9) as i32;
    let p = 10f64.powi(decimals);
    let x = (x * p).round() / p + 0.0;
    // A finite number scaled (or rounded) past f64's range.
    if !x.is_finite() {
        out.push_str("out of range");
        return None;
    }
    match r.round {
        Some(n) => write!(out, "{x:.*}", n as usize),
        None => write!(out, "{x}"),
    }
    .ok()?;
    Some(x)
}

/// The value of reading `r` from the text read into `out` (its normal form), and its number
/// (for the deadband); on failure, `out` holds why.
fn value(r: &Reading, text: &str, out: &mut String) -> Option<f64> {
    out.clear();
    match r.kind {
        ReadingKind::Float => {
            let Some(x) = text.parse::<f64>().ok().filter(|x| x.is_finite()) else {
                out.push_str("not a number");
                return None;
            };
            float_text(r, x * r.scale, out)
        }
        ReadingKind::Int => {
            let x = match (text.parse::<i64>(), r.scale == 1.0) {
                (Ok(n), true) => n as f64,
                _ => match text.parse::<f64>().ok().filter(|x| x.is_finite()) {
                    Some(x) => (x * r.scale).round(),
                    None => {
                        out.push_str("not a number");
                        return None;
                    }
                },
            };
            if x.abs() >= 9.0e15 {
                out.push_str("out of range");
                return None;
            }
            let _ = write!(out, "{}", x as i64);
            Some(x)
        }
        ReadingKind::Bool => {
            let on = match (&r.payload_on, &r.payload_off) {
                (Some(on), Some(off)) => {
                    if text == &**on {
                        Some(true)
                    } else if text == &**off {
                        Some(false)
                    } else {
                        None
                    }
                }
                _ => {
                    let t = text;
                    if t.eq_ignore_ascii_case("on") || t.eq_ignore_ascii_case("true") || t == "1" {
                        Some(true)
                    } else if t.eq_ignore_ascii_case("off")
                        || t.eq_ignore_ascii_case("false")
                        || t == "0"
                    {
                        Some(false)
                    } else {
                        None
                    }
                }
            };
            match on {
                Some(on) => {
                    out.push_str(if on { "ON" } else { "OFF" });
                    Some(on as u8 as f64)
                }
                None => {
                    match (&r.payload_on, &r.payload_off) {
                        (Some(on), Some(off)) => {
                            let _ =
                                write!(out, "neither payload_on {on:?} nor payload_off {off:?}");
                        }
                        _ => out.push_str("not ON or OFF (nor on/off, true/false, 1/0)"),
                    }
                    None
                }
            }
        }
        ReadingKind::Str => {
            let end = text
                .char_indices()
                .nth(STRING_MAX)
                .map_or(text.len(), |(i, _)| i);
            out.push_str(&text[..end]);
            Some(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::decl::Devices;

    fn reading(spec: &str) -> Reading {
        let toml = format!("[d]\nreadings.r = {{ {spec} }}\n");
        Devices::parse(&toml, "d.toml", std::path::Path::new("/"))
            .unwrap()
            .devices
            .remove(0)
            .readings
            .remove(0)
    }

    fn read(r: &Reading, text: &str) -> Result<String, String> {
        let mut out = String::new();
        match value(r, text, &mut out) {
            Some(_) => Ok(out),
            None => Err(out),
        }
    }

    #[test]
    fn values_of_each_type() {
        let cpu = reading("type = \"float\", path = \"t\", scale = 0.001, round = 1");
        assert_eq!(read(&cpu, "45312").as_deref(), Ok("45.3"));
        assert_eq!(read(&cpu, "-50").as_deref(), Ok("-0.1"));
        assert_eq!(read(&cpu, "hot"), Err("not a number".to_string()));
        let plain = reading("type = \"float\", path = \"t\", scale = 0.001");
        assert_eq!(read(&plain, "45312").as_deref(), Ok("45.312"));
        let int = reading("type = \"int\", path = \"t\", scale = 0.5");
        assert_eq!(read(&int, "7").as_deref(), Ok("4"));
        let big = reading("type = \"int\", path = \"t\"");
        assert_eq!(read(&big, "123456789012").as_deref(), Ok("123456789012"));
        let door =
            reading("type = \"bool\", path = \"t\", payload_on = \"1\", payload_off = \"0\"");
        assert_eq!(read(&door, "1").as_deref(), Ok("ON"));
        assert_eq!(read(&door, "0").as_deref(), Ok("OFF"));
        assert!(read(&door, "on").is_err());
        let flag = reading("type = \"bool\", program = \"p\"");
        assert_eq!(read(&flag, "True").as_deref(), Ok("ON"));
        let s = reading("type = \"string\", path = \"t\"");
        assert_eq!(read(&s, &"é".repeat(300)).unwrap().chars().count(), 255);
        // Past f64's range once scaled (or rounded): a failed read, not "inf".
        assert_eq!(read(&plain, "1e306"), Err("out of range".to_string()));
        assert_eq!(read(&big, "1e300"), Err("out of range".to_string()));
    }

    /// What an executor takes up as reading `spec`'s value from a retained `text` (a restart
    /// or reload), and the state JSON it then announces.
    fn adopted(spec: &str, text: &str) -> (Option<String>, String) {
        let toml = format!("[d]\nreadings.r = {{ {spec} }}\n");
        let decl = Devices::parse(&toml, "d.toml", std::path::Path::new("/")).unwrap();
        let mut ex = Executor::new(decl, crate::devices::Options::default());
        ex.adopt_values(|_, _| Some(text.to_string()));
        let r = &ex.devices[0].readings[0];
        let value = r.known.then(|| r.value.clone());
        let mut out = Outbox::default();
        ex.start(&mut out);
        let state = out
            .iter()
            .find(|(t, ..)| *t == "devices/d/state")
            .map_or(String::new(), |(_, p, ..)| {
                String::from_utf8_lossy(p).into_owned()
            });
        (value, state)
    }

    #[test]
    fn an_adopted_value_is_a_value_of_its_type_in_its_normal_form() {
        let float = "type = \"float\", path = \"t\", round = 1";
        assert_eq!(adopted(float, "45.3").0.as_deref(), Some("45.3"));
        assert_eq!(adopted(float, "45.3").1, r#"{"r":45.3}"#);
        assert_eq!(
            adopted("type = \"float\", path = \"t\"", "45.312")
                .0
                .as_deref(),
            Some("45.312")
        );
        // Not JSON numbers as written: in the state JSON they would make it invalid.
        assert_eq!(adopted(float, "+5").0.as_deref(), Some("5.0"));
        assert_eq!(adopted(float, ".5").0.as_deref(), Some("0.5"));
        for bad in ["NaN", "inf", "-infinity", "hot"] {
            assert_eq!(adopted(float, bad), (None, String::new()), "{bad}");
        }
        let int = "type = \"int\", path = \"t\"";
        assert_eq!(adopted(int, "-12").0.as_deref(), Some("-12"));
        for bad in ["NaN", "4.5", "+7", "1e3"] {
            assert_eq!(adopted(int, bad).0, None, "{bad}");
        }
        let flag = "type = \"bool\", path = \"t\", payload_on = \"1\", payload_off = \"0\"";
        assert_eq!(adopted(flag, "ON").0.as_deref(), Some("ON"));
        assert_eq!(adopted(flag, "1").0, None);
        let s = "type = \"string\", path = \"t\"";
        assert_eq!(
            adopted(s, &"é".repeat(300)).0.unwrap().chars().count(),
            STRING_MAX
        );
    }

    #[test]
    fn the_first_line_of_what_was_read() {
        assert_eq!(first_line(b" 45312\r\nmore\n"), "45312");
        // A read of FILE_BYTES may end inside a character of a later line: the first line is
        // still what it says.
        let mut file = "K\u{fc}che\n".as_bytes().to_vec();
        file.resize(FILE_BYTES - 1, b'a');
        file.extend_from_slice("\u{fc}".as_bytes());
        assert_eq!(first_line(&file[..FILE_BYTES]), "K\u{fc}che");
        // A first line cut inside a character loses that half.
        assert_eq!(first_line(&"ab\u{fc}".as_bytes()[..3]), "ab");
        // Not UTF-8: replaced, not refused.
        assert_eq!(first_line(b"4\xff5\n"), "4\u{fffd}5");
        assert_eq!(first_line(b""), "");
    }

    #[test]
    fn declaration_defaults() {
        // As the README's table says: read every 60 s, a 5 s timeout, nothing scaled.
        let r = reading("type = \"int\", path = \"t\"");
        assert_eq!(
            (r.every, r.timeout),
            (Duration::from_secs(60), Duration::from_secs(5))
        );
        assert_eq!((r.scale, r.round, r.deadband), (1.0, None, 0.0));
        assert_eq!(r.source, Source::File("/t".into()));
        let fast = reading("type = \"int\", path = \"t\", every_s = 0.1, timeout_ms = 250");
        assert_eq!(
            (fast.every, fast.timeout),
            (Duration::from_millis(100), Duration::from_millis(250))
        );
    }

    #[test]
    fn declaration_errors() {
        let bad = |spec: &str| {
            let toml = format!("[d]\nreadings.r = {{ {spec} }}\n");
            Devices::parse(&toml, "d.toml", std::path::Path::new("/")).unwrap_err()
        };
        assert_eq!(
            bad("type = \"float\""),
            "d.toml:2: d.readings.r: a reading needs either 'path' (a file) or 'program'"
        );
        assert_eq!(
            bad("type = \"bool\", path = \"x\", round = 1"),
            "d.toml:2: d.readings.r.round: only for float readings"
        );
        assert_eq!(
            bad("type = \"int\", path = \"x\", every_s = 0"),
            "d.toml:2: d.readings.r.every_s: expected 0.1 to 31536000 seconds"
        );
        assert_eq!(
            bad("type = \"float\", path = \"x\", entity_category = \"config\""),
            "d.toml:2: d.readings.r.entity_category: expected diagnostic"
        );
        assert_eq!(
            bad("type = \"bool\", path = \"x\", payload_on = \"1\""),
            "d.toml:2: d.readings.r: payload_on and payload_off go together"
        );
    }
}
