//! The event loop: one thread, one `mio::Poll`, every socket in one `slab::Slab`.
//!
//! Each turn: wait for readiness (no longer than the broker's next deadline), read from ready
//! connections into one shared scratch buffer and hand whole packets to the broker, fire the
//! broker's timers, then write each connection that got output once and close the ones the
//! broker ended. Reading is budgeted per connection per turn so one fast publisher cannot
//! starve the rest, and a connection that does not read its own output is not read from.

mod bridges;
mod connection;
pub mod http;
mod http_serve;
mod linger;
mod listen;
mod mqttsn;
mod persist;
mod reload;
mod systemd;
#[cfg(feature = "tls")]
pub mod tls;
pub mod ws;

use crate::broker::{Broker, ConnId};
use crate::config::{io_reason, Config, ListenerConfig};
use crate::wire::frame_len;
use bridges::seed;
use connection::Connection;
use http_serve::open_http;
use listen::{open_listener, tls_setup, Listener, TlsSetup};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use mqttsn::{ListenSocket, Slot, Streams};
use persist::open_store;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

const SIGNAL_TOKEN: Token = Token(usize::MAX);
/// A helper thread finished: a bridge's host name lookup, a device reading's file read.
const WAKER_TOKEN: Token = Token(usize::MAX - 1);
/// The `http_listener` socket, and its connections from `HTTP_BASE` on.
const HTTP_LISTENER_TOKEN: Token = Token(usize::MAX - 2);
const HTTP_BASE: usize = usize::MAX / 4;
/// Sockets of closed connections lingering (see `linger`), from `LINGER_BASE` on.
const LINGER_BASE: usize = usize::MAX / 8;
/// HTTP connections served at once; more wait in the listen backlog.
const MAX_HTTP_CONNECTIONS: usize = 32;
const LISTENER_BASE: usize = usize::MAX / 2;
/// Bytes read from one connection per loop turn before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
const SCRATCH_SIZE: usize = 64 * 1024;
/// Read buffers lent to connections holding a partial packet, kept for reuse.
const SPARE_READ_BUFFERS: usize = 64;

/// A running broker with its listeners open.
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    /// TCP connections, and the broker connections of MQTT-SN clients (one id space).
    conns: Slab<Slot>,
    broker: Broker,
    signals: Signals,
    max_connections: Option<usize>,
    nodelay: bool,
    scratch: Box<[u8]>,
    spare_buffers: Vec<Vec<u8>>,
    pending_reads: Vec<ConnId>,
    /// MQTT-SN listeners whose datagram budget ran out last turn.
    pending_datagrams: Vec<usize>,
    /// Connections whose output was not all written in their last flush although their
    /// socket took everything offered (the round limit): no writable event will come for
    /// them, so they are flushed again next turn.
    pending_writes: Vec<ConnId>,
    /// Scratch lists, reused every turn (never swapped with another list, so each keeps its
    /// capacity and a warm loop allocates nothing).
    reading: Vec<ConnId>,
    work: Vec<ConnId>,
    stopping: bool,
    /// systemd's notify socket (READY, STATUS, WATCHDOG), when run by systemd.
    notifier: systemd::Notifier,
    /// When to refresh STATUS= next, and the counters at the last refresh.
    next_status: Option<Instant>,
    status_from: (Instant, u64),
    /// Persistence: the files, and the records of the turn being written.
    store: Option<crate::store::Store>,
    records: Vec<u8>,
    /// The configuration running now (SIGHUP compares the file's new text with it).
    config: Config,
    /// `-p`: the first listener's port, kept over a reload.
    port_override: Option<u16>,
    /// The log level follows the config (not when RUST_LOG or -v decided it).
    log_level_from_config: bool,
    /// Bridges to upstream brokers: each link's state, by bridge index.
    links: Vec<crate::bridge::Link>,
    /// Host name lookups for them (made when there is a bridge).
    resolver: Option<crate::bridge::Resolver>,
    /// How helper threads wake the loop (`WAKER_TOKEN`; one per `Poll`).
    waker: std::sync::Arc<mio::Waker>,
    /// The TLS setup of each bridge that uses TLS.
    #[cfg(feature = "tls")]
    bridge_tls: Vec<Option<tls::ClientContext>>,
    /// `http_listener`: its socket and connections.
    http: Option<TcpListener>,
    /// The status page's address, for Home Assistant discovery.
    status_url: Option<String>,
    http_conns: Slab<http::HttpConn>,
    /// Closed connections' sockets kept a moment so their last packet is read.
    linger: linger::Linger,
    started: Instant,
}

/// How often STATUS= (clients, messages/s) is refreshed for `systemctl status`.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the server could not start, in one sentence for a person.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Server {
    /// Open the listeners named by the config. Nothing is served until [`Server::run`].
    pub fn bind(config: &Config) -> Result<Server, StartError> {
        let poll =
            Poll::new().map_err(|e| StartError(format!("cannot create the event loop: {e}")))?;
        // The kept state is read before any listener opens: a client never sees it half-read.
        let mut broker = Broker::new(config.broker.clone(), Instant::now());
        let store = match &config.persistence {
            Some(p) => {
                let store = open_store(p, &config.device_options, &mut broker)?;
                broker.journal_written(store.durable());
                Some(store)
            }
            None => None,
        };
        let mut listeners = Vec::new();
        for l in &config.listeners {
            listeners.push(open_listener(&poll, l, LISTENER_BASE + listeners.len())?);
        }
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGCHLD])
            .map_err(|e| StartError(format!("cannot handle signals: {e}")))?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
            .map_err(|e| StartError(format!("cannot watch signals: {e}")))?;

        let http = match &config.http_listener {
            Some((port, address)) => Some(open_http(&poll, *port, address.as_deref())?),
            None => None,
        };
        let status_url = http.as_ref().and_then(http_serve::status_url);
        let waker = std::sync::Arc::new(
            mio::Waker::new(poll.registry(), WAKER_TOKEN)
                .map_err(|e| StartError(format!("cannot create the event loop: {e}")))?,
        );
        if let Some(devices) = &config.devices {
            let mut options = config.device_options.clone();
            options.status_url = status_url.clone();
            broker.set_devices(
                crate::devices::Executor::new(devices.clone(), options).with_waker(waker.clone()),
            );
        }
        let now = Instant::now();
        let links: Vec<_> = config
            .bridges
            .iter()
            .enumerate()
            .map(|(i, l)| crate::bridge::Link::new(l.clone(), now, seed(i)))
            .collect();
        let resolver = match links.is_empty() {
            true => None,
            false => Some(crate::bridge::Resolver::new(waker.clone())),
        };
        #[cfg(feature = "tls")]
        let bridge_tls = config
            .bridges
            .iter()
            .map(|l| match l.tls.enabled() {
                false => Ok(None),
                true => tls::client_context(&l.tls)
                    .map(Some)
                    .map_err(|e| StartError(format!("bridge {}: {e}", l.name))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        broker.start_bridges();
        for l in &listeners {
            l.announce();
        }
        mqttsn_anonymous_warning(config);
        if config.listeners.iter().any(|l| l.mqttsn.is_some()) {
            // Its counters exist from the start: `$SYS` and `/metrics` show zeros, not nothing.
            broker.mqttsn_stats_mut();
        }
        if let Some(devices) = &config.devices {
            log::info!("{} devices declared", devices.devices.len());
        }
        Ok(Server {
            poll,
            listeners,
            conns: Slab::new(),
            broker,
            signals,
            max_connections: config.max_connections,
            nodelay: config.set_tcp_nodelay,
            scratch: vec![0u8; SCRATCH_SIZE].into_boxed_slice(),
            spare_buffers: Vec::new(),
            pending_reads: Vec::new(),
            pending_datagrams: Vec::new(),
            pending_writes: Vec::new(),
            reading: Vec::new(),
            work: Vec::new(),
            stopping: false,
            notifier: systemd::Notifier::from_env(),
            next_status: None,
            status_from: (Instant::now(), 0),
            store,
            records: Vec::new(),
            config: config.clone(),
            port_override: None,
            log_level_from_config: false,
            links,
            resolver,
            waker,
            #[cfg(feature = "tls")]
            bridge_tls,
            http,
            status_url,
            http_conns: Slab::new(),
            linger: linger::Linger::new(LINGER_BASE),
            started: now,
        })
    }

    /// The addresses the listeners are bound to (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Serve until SIGINT or SIGTERM.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // The listeners are open: systemd may start what depends on the broker.
        self.notifier.notify("READY=1");
        if self.notifier.enabled() {
            self.next_status = Some(Instant::now());
        }
        while !self.stopping {
            self.turn(&mut events)?;
        }
        self.shutdown();
        Ok(())
    }

    /// One turn of the loop. Public so tests and the bench can drive a server in-process.
    pub fn turn(&mut self, events: &mut Events) -> io::Result<()> {
        let now = Instant::now();
        let timeout = if self.pending_reads.is_empty()
            && self.pending_writes.is_empty()
            && self.pending_datagrams.is_empty()
        {
            let sync = self.store.as_ref().and_then(|s| s.next_deadline());
            let bridges = self.links.iter().filter_map(|l| l.deadline()).min();
            let http = self
                .http_conns
                .iter()
                .map(|(_, c)| c.opened + http::TIMEOUT)
                .min();
            let ours = [
                self.notifier.next_deadline(),
                self.next_status,
                sync,
                bridges,
                http,
                self.linger.next_deadline(),
                self.gateway_deadline(),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(now));
            match (self.broker.next_timeout(now), ours) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        } else {
            Some(std::time::Duration::ZERO)
        };
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        let now = Instant::now();
        for event in events.iter() {
            match event.token() {
                SIGNAL_TOKEN => self.handle_signals(),
                // Lookups are collected below, with the links that are due.
                WAKER_TOKEN => self.broker.devices_woken(now),
                HTTP_LISTENER_TOKEN => self.http_accept(now),
                Token(t) if (HTTP_BASE..LISTENER_BASE).contains(&t) => {
                    self.http_ready(t - HTTP_BASE)
                }
                Token(t) if t >= LISTENER_BASE => {
                    let i = t - LISTENER_BASE;
                    match self.listeners.get(i).is_some_and(|l| l.gateway.is_some()) {
                        true => self.datagrams(i, now),
                        false => self.accept(i, now),
                    }
                }
                Token(t) if self.linger.owns(t) => self.linger.ready(self.poll.registry(), t),
                Token(id) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(id, now);
                    }
                    // Written after this turn's journal records (persistence): output may
                    // hold acknowledgements made by the read just above.
                    if event.is_writable() && !self.pending_writes.contains(&id) {
                        self.pending_writes.push(id);
                    }
                }
            }
        }
        // Connections whose read budget ran out last turn get their next share.
        self.reading.clear();
        self.reading.extend_from_slice(&self.pending_reads);
        self.pending_reads.clear();
        for i in 0..self.reading.len() {
            self.read(self.reading[i], now);
        }
        for _ in 0..self.pending_datagrams.len() {
            let i = self.pending_datagrams.remove(0);
            self.datagrams(i, now);
        }
        self.bridges_due(now);
        self.http_timeouts(now);
        self.linger.expire(self.poll.registry(), now);
        self.broker.handle_timeout(now);
        self.gateway_timeouts(now);
        // Group commit: this turn's changes are in the journal before its acknowledgements
        // leave.
        self.persist(false);
        // Sockets that became writable, and output left over by the round limit of last
        // turn's flushes; then everything that got output this turn.
        self.reading.clear();
        self.reading.extend_from_slice(&self.pending_writes);
        self.pending_writes.clear();
        for i in 0..self.reading.len() {
            self.flush(self.reading[i], now);
        }
        self.flush_and_close(now);
        self.notifier.tick(now);
        if self.next_status.is_some_and(|t| t <= now) {
            self.status(now);
        }
        Ok(())
    }

    /// STATUS= for `systemctl status`: clients connected and messages per second.
    fn status(&mut self, now: Instant) {
        let st = self.broker.stats();
        let (since, count) = self.status_from;
        let secs = now.duration_since(since).as_secs_f64().max(0.001);
        let rate = (st.publish_received - count) as f64 / secs;
        self.notifier.notify(&format!(
            "STATUS={} clients, {:.0} msgs/s in",
            st.clients_connected, rate
        ));
        self.status_from = (now, st.publish_received);
        self.next_status = Some(now + STATUS_EVERY);
    }

    fn handle_signals(&mut self) {
        for signal in self.signals.pending() {
            match signal {
                SIGINT | SIGTERM => {
                    log::info!("signal {signal} received, shutting down");
                    self.stopping = true;
                }
                SIGHUP => {
                    self.notifier.notify("RELOADING=1");
                    self.reload();
                    self.notifier.notify("READY=1");
                }
                SIGCHLD => self.broker.children_exited(Instant::now()),
                _ => {}
            }
        }
    }

    /// Stop accepting, write what is queued, close every connection.
    fn shutdown(&mut self) {
        self.notifier.notify("STOPPING=1");
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(l.socket.source());
        }
        let now = Instant::now();
        self.broker.stopping();
        let ids: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for &id in &ids {
            if let Some(conn) = self.conns.stream(id) {
                let _ = conn.stream.set_nodelay(true);
            }
            self.flush(id, now);
        }
        for id in ids {
            if let Some(conn) = self.conns.stream_mut(id) {
                conn.close_notify();
            }
            self.close(id, now);
        }
        self.listeners.clear();
        self.persist(true);
        log::info!("gatemq stopped");
    }
}

/// MQTT-SN 1.2 has no credentials: its clients are anonymous, and a listener that refuses
/// anonymous clients refuses every one of them. Said once, at start (and at a reload).
fn mqttsn_anonymous_warning(config: &Config) {
    for (i, l) in config.listeners.iter().enumerate() {
        let refused = config
            .broker
            .listeners
            .get(i)
            .is_some_and(|p| !p.allow_anonymous);
        if l.mqttsn.is_some() && refused {
            log::warn!(
                "listener {}:{} (MQTT-SN): allow_anonymous is false, so every MQTT-SN client is refused: MQTT-SN 1.2 has no username or password. Set allow_anonymous true for it (with per_listener_settings true, in its own section, so MQTT listeners keep their passwords)",
                l.address.as_deref().unwrap_or("0.0.0.0"),
                l.port
            );
        }
    }
}

/// Capacity for `n` entries in `v`.
pub(crate) fn room_for<T>(v: &mut Vec<T>, n: usize) {
    if v.capacity() < n {
        v.reserve(n - v.len());
    }
}
