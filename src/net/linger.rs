//! Lingering close: the last words of a connection the broker ended (a DISCONNECT with its
//! reason, a refusing CONNACK) must reach a client that is still sending.
//!
//! Closing a socket whose receive queue holds unread bytes makes the kernel answer with a
//! reset, and a reset throws away what the socket had not sent yet: the client never reads
//! why it was disconnected (the Paho MQTT 5 interop test for Receive Maximum, 0x93, fails on
//! this). So a closed connection's socket is kept a little longer, as HTTP servers do: its
//! last bytes are written, its write side is shut down (the client reads them, then EOF), and
//! what the client still sends is read and thrown away until it closes too or [`TIME`] is up.
//!
//! It is bounded so it cannot hold connections open: at most [`SLOTS`] sockets linger (a
//! close beyond that is immediate, as without lingering), each for at most [`TIME`], and at
//! most [`TAIL_MAX`] unsent bytes go along. A lingering socket is no longer a client: the
//! broker has released it and it counts against no connection limit.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// Sockets lingering at once.
pub const SLOTS: usize = 64;
/// How long one lingers at most.
pub const TIME: Duration = Duration::from_secs(2);
/// Unsent output a lingering socket takes along (a socket with more is closed at once).
pub const TAIL_MAX: usize = 16 * 1024;
/// Bytes thrown away per readiness event before others get their turn.
const DISCARD_BUDGET: usize = 256 * 1024;

struct Lingering {
    stream: TcpStream,
    /// Output not written yet; the write side is shut down once it is.
    tail: Vec<u8>,
    shut: bool,
    until: Instant,
}

/// The lingering sockets; their tokens are `base + slot`.
pub struct Linger {
    slots: Slab<Lingering>,
    base: usize,
}

impl Linger {
    pub fn new(base: usize) -> Linger {
        Linger {
            slots: Slab::new(),
            base,
        }
    }

    /// Whether `tail` unsent bytes could go along with a socket now.
    pub fn has_room(&self, tail: usize) -> bool {
        self.slots.len() < SLOTS && tail <= TAIL_MAX
    }

    /// Linger on `stream` (no longer registered with the poll), which still has `tail` to
    /// write. Without room (see [`Linger::has_room`]) the stream is dropped: closed at once.
    pub fn take(&mut self, registry: &Registry, stream: TcpStream, tail: Vec<u8>, now: Instant) {
        if !self.has_room(tail.len()) {
            return;
        }
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        let mut l = Lingering {
            stream,
            tail,
            shut: false,
            until: now + TIME,
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if registry
            .register(&mut l.stream, Token(self.base + key), interest)
            .is_ok()
        {
            entry.insert(l);
            self.service(registry, key);
        }
    }

    /// The token `t` is a lingering socket's.
    pub fn owns(&self, t: usize) -> bool {
        t >= self.base && t < self.base + SLOTS
    }

    /// The lingering socket of token `t` is readable or writable.
    pub fn ready(&mut self, registry: &Registry, t: usize) {
        self.service(registry, t - self.base);
    }

    /// Write slot `key`'s tail, then read and discard; it is closed at the peer's EOF or an
    /// error.
    fn service(&mut self, registry: &Registry, key: usize) {
        let Some(l) = self.slots.get_mut(key) else {
            return;
        };
        if !flush_tail(l) || !discard(&mut l.stream) {
            self.remove(registry, key);
        }
    }

    /// Close every socket whose time is up.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        while let Some(key) = self
            .slots
            .iter()
            .find(|(_, l)| l.until <= now)
            .map(|(k, _)| k)
        {
            self.remove(registry, key);
        }
    }

    /// When the next lingering socket's time is up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().map(|(_, l)| l.until).min()
    }

    fn remove(&mut self, registry: &Registry, key: usize) {
        if let Some(mut l) = self.slots.try_remove(key) {
            let _ = registry.deregister(&mut l.stream);
        }
    }
}

/// Write what is left of the tail; once it is all out, shut the write side down (the peer
/// reads EOF after the last packet). `false`: the socket failed.
fn flush_tail(l: &mut Lingering) -> bool {
    while !l.tail.is_empty() {
        match l.stream.write(&l.tail) {
            Ok(0) => return false,
            Ok(n) => {
                l.tail.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if !l.shut {
        l.shut = true;
        l.tail = Vec::new();
        let _ = l.stream.shutdown(Shutdown::Write);
    }
    true
}

/// Read and throw away what the peer sends. `false`: it closed (or failed), so linger no more.
fn discard(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut budget = DISCARD_BUDGET;
    while budget > 0 {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => budget = budget.saturating_sub(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
