//! The event loop: one thread, one `mio::Poll`, every socket in one `slab::Slab`.
//!
//! Each turn: wait for readiness (no longer than the broker's next deadline), read from ready
//! connections into one shared scratch buffer and hand whole packets to the broker, fire the
//! broker's timers, then write each connection that got output once and close the ones the
//! broker ended. Reading is budgeted per connection per turn so one fast publisher cannot
//! starve the rest, and a connection that does not read its own output is not read from.

pub mod http;
mod linger;
mod reload;
mod systemd;
#[cfg(feature = "tls")]
pub mod tls;
pub mod ws;

use crate::broker::{Broker, ConnId};
use crate::config::{io_reason, Config, ListenerConfig};
use crate::wire::frame_len;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

const SIGNAL_TOKEN: Token = Token(usize::MAX);
/// A bridge's host name lookup finished.
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

struct Connection {
    stream: TcpStream,
    /// Bytes of a packet not yet whole; empty (and unallocated) between packets.
    partial: Vec<u8>,
    /// Readable data may be left unread (budget spent or reading paused).
    read_pending: bool,
    /// Index of the listener it came in on (`u16::MAX` for a bridge).
    listener: u16,
    /// The bridge whose upstream link this is.
    bridge: Option<u16>,
    /// The TLS session of a connection on a TLS listener, or of a bridge over TLS.
    #[cfg(feature = "tls")]
    tls: Option<Box<rustls::Connection>>,
    /// Its certificate identity has been given to the broker (or is not needed).
    #[cfg(feature = "tls")]
    identified: bool,
    /// MQTT over WebSocket: the upgrade and the frames around the MQTT bytes.
    ws: Option<Box<ws::WebSocket>>,
}

impl Connection {
    /// Read plain MQTT bytes (decrypted, on a TLS listener) into `buf`; `Ok(0)` at the end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return tls::read(tls, &mut self.stream, buf);
        }
        self.stream.read(buf)
    }

    /// Write MQTT bytes, in WebSocket frames on a WebSocket listener. Returns what was taken;
    /// 0 when nothing more fits now.
    fn write(&mut self, out: &[u8]) -> io::Result<usize> {
        if self.ws.is_none() {
            return self.write_raw(out);
        }
        // What is framed already goes first; then one more chunk is framed (the frames wait
        // in the codec while the socket is full: at most one chunk beyond the broker's limit).
        self.send_ws()?;
        let take = out.len().min(SCRATCH_SIZE);
        if let Some(ws) = &mut self.ws {
            ws.output(&out[..take]);
        }
        match self.send_ws() {
            Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
            _ => Ok(take),
        }
    }

    /// Send the WebSocket codec's bytes (upgrade answer, frames) until none are left
    /// (`Ok`) or the socket takes no more (`WouldBlock`).
    fn send_ws(&mut self) -> io::Result<()> {
        while let Some(ws) = self.ws.as_mut().filter(|ws| !ws.out.is_empty()) {
            let mut out = std::mem::take(&mut ws.out);
            let written = self.write_raw(&out);
            let ws = self.ws.as_mut().expect("checked above");
            match written {
                Ok(0) => {
                    ws.out = out;
                    return Err(ErrorKind::WouldBlock.into());
                }
                Ok(n) => {
                    out.drain(..n);
                    ws.out = out;
                }
                Err(e) => {
                    ws.out = out;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The WebSocket codec holds more than a chunk of unsent bytes (pongs a client asked for
    /// and does not read): not read from until they drain, as for MQTT output.
    fn ws_backlogged(&self) -> bool {
        self.ws
            .as_ref()
            .is_some_and(|ws| ws.out.len() > SCRATCH_SIZE)
    }

    /// Everything below the MQTT bytes that waits for the socket: WebSocket frames, TLS
    /// records.
    fn send_pending(&mut self) -> io::Result<()> {
        self.send_ws()?;
        self.send_tls()
    }

    /// Write bytes to the connection: straight to the socket, or into the TLS session (then
    /// sent by [`Connection::send_tls`]). Returns what was taken; 0 when nothing more fits.
    fn write_raw(&mut self, out: &[u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            self.send_tls()?;
            if let Some(tls) = &mut self.tls {
                return tls.writer().write(out);
            }
        }
        self.stream.write(out)
    }

    /// Neither TLS nor WebSocket: MQTT bytes go to the socket as they are.
    fn is_plain(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return false;
        }
        self.ws.is_none()
    }

    /// A TLS session has records (handshake, alerts) waiting to be sent.
    fn tls_wants_write(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.wants_write();
        }
        false
    }

    /// Tell the peer the connection ends: a WebSocket close frame, a TLS close_notify (best
    /// effort: what the socket takes now).
    fn close_notify(&mut self) {
        if let Some(ws) = self.ws.as_mut().filter(|ws| ws.upgraded()) {
            ws.close(1000);
            let _ = self.send_ws();
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = self.send_tls();
        }
    }

    /// Send what the TLS session has ready (records, handshake, alerts), until the socket is
    /// full (`WouldBlock`) or nothing is left. A no-op for plain connections.
    fn send_tls(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// One listening socket and what it needs to take a connection.
struct Listener {
    socket: TcpListener,
    /// Its own connection limit, and how many it holds.
    max_connections: Option<usize>,
    connections: usize,
    #[cfg(feature = "tls")]
    tls: Option<tls::Context>,
    /// TLS client certificate identities become usernames.
    #[cfg(feature = "tls")]
    identity: bool,
    /// `protocol websockets`.
    websockets: bool,
}

impl Listener {
    /// Say it listens, once nothing can fail any more (a start that fails says one sentence).
    fn announce(&self) {
        #[cfg(feature = "tls")]
        let tls_on = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls_on = false;
        let kind = match (tls_on, self.websockets) {
            (false, false) => "",
            (true, false) => " (TLS)",
            (false, true) => " (WebSocket)",
            (true, true) => " (WebSocket, TLS)",
        };
        if let Ok(local) = self.socket.local_addr() {
            log::info!("listening on {local}{kind}");
        }
    }
}

/// A running broker with its listeners open.
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Slab<Connection>,
    broker: Broker,
    signals: Signals,
    max_connections: Option<usize>,
    nodelay: bool,
    scratch: Box<[u8]>,
    spare_buffers: Vec<Vec<u8>>,
    pending_reads: Vec<ConnId>,
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
    /// The TLS setup of each bridge that uses TLS.
    #[cfg(feature = "tls")]
    bridge_tls: Vec<Option<tls::ClientContext>>,
    /// `http_listener`: its socket and connections.
    http: Option<TcpListener>,
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
                let store = open_store(p, &mut broker)?;
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

        if let Some(devices) = &config.devices {
            let ex = crate::devices::Executor::new(devices.clone(), config.device_options.clone());
            broker.set_devices(ex);
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
            false => Some(crate::bridge::Resolver::new(
                mio::Waker::new(poll.registry(), WAKER_TOKEN)
                    .map_err(|e| StartError(format!("cannot create the event loop: {e}")))?,
            )),
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
        let http = match &config.http_listener {
            Some((port, address)) => Some(open_http(&poll, *port, address.as_deref())?),
            None => None,
        };
        for l in &listeners {
            l.announce();
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
            #[cfg(feature = "tls")]
            bridge_tls,
            http,
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
        let timeout = if self.pending_reads.is_empty() && self.pending_writes.is_empty() {
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
                WAKER_TOKEN => {}
                HTTP_LISTENER_TOKEN => self.http_accept(now),
                Token(t) if (HTTP_BASE..LISTENER_BASE).contains(&t) => {
                    self.http_ready(t - HTTP_BASE)
                }
                Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE, now),
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
        self.bridges_due(now);
        self.http_timeouts(now);
        self.linger.expire(self.poll.registry(), now);
        self.broker.handle_timeout(now);
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

    /// Persistence is on and the broker has records not written yet.
    fn journal_waiting(&self) -> bool {
        self.store.is_some() && self.broker.journal_waiting()
    }

    /// Write the journal records of this turn (or, when due, the whole state as a snapshot,
    /// which holds them too). At shutdown (`last`) the whole state becomes the snapshot. What
    /// cannot be written is held by the store and retried; the broker holds the
    /// acknowledgements that depend on it until it is written.
    fn persist(&mut self, last: bool) {
        let Some(store) = &mut self.store else {
            return;
        };
        let now = Instant::now();
        self.records.clear();
        self.broker.take_journal(&mut self.records);
        if last || store.wants_snapshot(now) {
            self.records.clear();
            self.broker.snapshot(&mut self.records);
            store.snapshot(&self.records, now);
        } else {
            store.write(&self.records, now);
        }
        self.broker.journal_written(store.durable());
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

    /// What a reload needs from the command line: `-p`'s port, and whether the config's log
    /// level is the one in force (not when RUST_LOG or `-v` set it).
    pub fn set_command_line(&mut self, port_override: Option<u16>, log_level_from_config: bool) {
        self.port_override = port_override;
        self.log_level_from_config = log_level_from_config;
    }

    /// SIGHUP: read the config file (and the password, ACL and devices files it names) again.
    /// A file that does not load leaves everything as it is. Listeners are matched by port
    /// and address: kept ones keep their connections (and take new TLS files and limits),
    /// new ones are opened, and removed ones are closed with their connections.
    fn reload(&mut self) {
        let Some(path) = self.config.source.clone() else {
            log::info!("SIGHUP received: there is no config file to reload");
            return;
        };
        log::info!("SIGHUP received: reloading {}", path.display());
        let mut new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload failed, the running configuration stays: {e}");
                return;
            }
        };
        if let (Some(port), Some(l)) = (self.port_override, new.listeners.first_mut()) {
            l.port = port;
        }
        if new.persistence != self.config.persistence {
            log::warn!("reload: persistence settings change at the next start, not now");
            new.persistence = self.config.persistence.clone();
        }
        // Bridges keep running as started (the broker core says so if the file changed them),
        // and so does the HTTP listener.
        new.bridges = self.config.bridges.clone();
        if new.http_listener != self.config.http_listener {
            log::warn!("reload: http_listener changes at the next start, not now");
            new.http_listener = self.config.http_listener.clone();
        }
        // Match each new listener to a running one with the same port and address.
        let old = self.config.listeners.clone();
        let mut taken = vec![false; old.len()];
        let mut from: Vec<Option<usize>> = Vec::new();
        for l in &new.listeners {
            let j = (0..old.len())
                .find(|&j| !taken[j] && old[j].port == l.port && old[j].address == l.address);
            if let Some(j) = j {
                taken[j] = true;
            }
            from.push(j);
        }
        // Everything that can fail comes first: new sockets, TLS setups of kept listeners.
        enum Prepared {
            New(Listener),
            Kept(usize, TlsSetup),
        }
        let mut prepared = Vec::new();
        for (i, l) in new.listeners.iter().enumerate() {
            let result = match from[i] {
                None => open_listener(&self.poll, l, LISTENER_BASE + self.listeners.len() + i)
                    .map(Prepared::New),
                Some(j) => tls_setup(l).map(|t| Prepared::Kept(j, t)),
            };
            match result {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    for p in prepared {
                        if let Prepared::New(mut l) = p {
                            let _ = self.poll.registry().deregister(&mut l.socket);
                        }
                    }
                    log::error!("reload failed, the running configuration stays: {e}");
                    return;
                }
            }
        }
        // Commit. Connections of removed listeners are closed.
        let now = Instant::now();
        let gone: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.bridge.is_none() && !taken[c.listener as usize])
            .map(|(id, _)| id)
            .collect();
        for id in gone {
            self.close(id, now);
        }
        let mut map = vec![u16::MAX; old.len()];
        let mut old_listeners: Vec<Option<Listener>> = self.listeners.drain(..).map(Some).collect();
        for (i, p) in prepared.into_iter().enumerate() {
            let l = &new.listeners[i];
            let mut listener = match p {
                Prepared::New(fresh) => {
                    fresh.announce();
                    fresh
                }
                Prepared::Kept(j, _tls) => {
                    map[j] = i as u16;
                    let mut kept = old_listeners[j].take().expect("matched once");
                    kept.max_connections = l.max_connections;
                    kept.websockets = l.websockets;
                    #[cfg(feature = "tls")]
                    {
                        kept.tls = _tls;
                        kept.identity = l.tls.use_identity_as_username;
                    }
                    kept
                }
            };
            let _ = self.poll.registry().reregister(
                &mut listener.socket,
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            );
            self.listeners.push(listener);
        }
        for mut l in old_listeners.into_iter().flatten() {
            let _ = self.poll.registry().deregister(&mut l.socket);
            if let Ok(a) = l.socket.local_addr() {
                log::info!("no longer listening on {a}");
            }
        }
        for (_, c) in self.conns.iter_mut().filter(|(_, c)| c.bridge.is_none()) {
            c.listener = map[c.listener as usize];
        }
        self.broker.reconfigure(new.broker.clone(), &map, now);
        let revoked = self.recheck_access(now);
        match &new.devices {
            Some(devices) => {
                let ex = crate::devices::Executor::new(devices.clone(), new.device_options.clone());
                self.broker.set_devices(ex);
            }
            None => self.broker.clear_devices(),
        }
        self.max_connections = new.max_connections;
        self.nodelay = new.set_tcp_nodelay;
        if self.log_level_from_config {
            log::set_max_level(new.log_level);
        }
        log::info!(
            "configuration reloaded: {} listeners, {} connections kept",
            self.listeners.len(),
            self.conns.len() - revoked
        );
        self.config = new;
    }

    fn accept(&mut self, index: usize, now: Instant) {
        loop {
            let Some(listener) = self.listeners.get_mut(index) else {
                return;
            };
            let (stream, peer) = match listener.socket.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: try again on the next event.
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if self
                .max_connections
                .is_some_and(|max| self.conns.len() >= max)
            {
                log::info!("Connection from {peer} refused: max_connections reached");
                continue;
            }
            if listener
                .max_connections
                .is_some_and(|max| listener.connections >= max)
            {
                log::info!(
                    "Connection from {peer} refused: the listener's max_connections reached"
                );
                continue;
            }
            #[cfg(feature = "tls")]
            let tls = match &listener.tls {
                Some(ctx) => match tls::accept(ctx) {
                    Some(t) => Some(t),
                    None => {
                        log::warn!("cannot start TLS for {peer}");
                        continue;
                    }
                },
                None => None,
            };
            #[cfg(feature = "tls")]
            let identified = !listener.identity;
            if self.nodelay {
                let _ = stream.set_nodelay(true);
            }
            set_tcp_keepalive(&stream);
            let ws = listener.websockets.then(|| Box::new(ws::WebSocket::new()));
            let added = self.add_connection(Connection {
                stream,
                partial: Vec::new(),
                read_pending: false,
                listener: index as u16,
                bridge: None,
                #[cfg(feature = "tls")]
                tls,
                #[cfg(feature = "tls")]
                identified,
                ws,
            });
            let id = match added {
                Ok(id) => id,
                Err(e) => {
                    log::warn!("cannot watch connection from {peer}: {e}");
                    continue;
                }
            };
            self.listeners[index].connections += 1;
            self.broker.open(id, Some(peer), index, now);
            log::debug!("New connection from {peer} (slot {id})");
        }
    }

    /// Read what connection `id` has, up to its budget, and hand whole packets to the broker.
    /// Packets are handled only while the broker wants them: a paused connection keeps the
    /// rest in its partial buffer, handled first when it resumes.
    fn read(&mut self, id: ConnId, now: Instant) {
        let mut budget = READ_BUDGET;
        if self.conns.get(id).is_some_and(|c| !c.partial.is_empty()) {
            self.process(id, 0, now);
        }
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            if !self.broker.wants_read(id) || conn.ws_backlogged() {
                conn.read_pending = true;
                return;
            }
            if budget == 0 {
                conn.read_pending = true;
                self.pending_reads.push(id);
                return;
            }
            conn.read_pending = false;
            let n = match conn.read(&mut self.scratch[..]) {
                Ok(0) => return self.lost(id, "connection closed by peer", now),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // A TLS handshake may have something to answer now (its own records
                    // only: MQTT output, acknowledgements among it, waits for the end of the
                    // turn, after the journal).
                    if conn.tls_wants_write() {
                        if let Err(e) = conn.send_tls() {
                            if e.kind() != ErrorKind::WouldBlock {
                                return self.lost(id, &io_reason(&e), now);
                            }
                        }
                    }
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A TLS error's alert goes out before the close.
                    let _ = conn.send_tls();
                    return self.lost(id, &io_reason(&e), now);
                }
            };
            #[cfg(feature = "tls")]
            self.identify(id);
            budget = budget.saturating_sub(n);
            self.broker.count_bytes_received(n);
            let n = match self.websocket_input(id, n) {
                Ok(n) => n,
                Err(reason) => return self.lost(id, &reason, now),
            };
            self.process(id, n, now);
        }
    }

    /// On a WebSocket connection: the `n` bytes read into the scratch buffer are frames (or the
    /// upgrade request); returns how many MQTT bytes they held, moved to the buffer's front.
    /// Answers (the upgrade, pongs) are sent with the turn's output.
    fn websocket_input(&mut self, id: ConnId, n: usize) -> Result<usize, String> {
        let Some(ws) = self.conns.get_mut(id).and_then(|c| c.ws.as_mut()) else {
            return Ok(n);
        };
        let result = ws.input(&mut self.scratch[..n]);
        let answer = !ws.out.is_empty();
        if let Err(end) = &result {
            // Last words (a 400, a close frame) go out before the close, if the socket takes them.
            if let Some(conn) = self.conns.get_mut(id) {
                let _ = conn.send_pending();
            }
            return Err(match end {
                ws::End::BadRequest(why) => format!("WebSocket upgrade refused: {why}"),
                ws::End::Protocol(why) => format!("WebSocket protocol error: {why}"),
                ws::End::Closed => "WebSocket closed by peer".into(),
            });
        }
        if answer && !self.pending_writes.contains(&id) {
            self.pending_writes.push(id);
        }
        result.map_err(|_| String::new())
    }

    /// Give the broker the client certificate's identity before the first packet is handled,
    /// on a listener that uses it as the username.
    #[cfg(feature = "tls")]
    fn identify(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.identified {
            return;
        }
        conn.identified = true;
        if let Some(cn) = conn.tls.as_deref().and_then(tls::peer_common_name) {
            self.broker.set_identity(id, &cn);
        }
    }

    /// Frame and handle the `n` bytes just read into the scratch buffer, after any bytes the
    /// connection already holds.
    fn process(&mut self, id: ConnId, n: usize, now: Instant) {
        let Server {
            conns,
            broker,
            scratch,
            spare_buffers,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id) else {
            return;
        };
        let max = broker.config().max_packet_size;
        if conn.partial.is_empty() {
            // The common case: packets straight from the scratch buffer, no copy.
            let data = &scratch[..n];
            let used = handle_frames(broker, id, data, max, now);
            if used < n && broker.is_open(id) {
                if conn.partial.capacity() == 0 {
                    conn.partial = spare_buffers.pop().unwrap_or_default();
                }
                conn.partial.extend_from_slice(&data[used..]);
            }
        } else {
            conn.partial.extend_from_slice(&scratch[..n]);
            let used = handle_frames(broker, id, &conn.partial, max, now);
            conn.partial.drain(..used);
            if conn.partial.is_empty() {
                let buf = std::mem::take(&mut conn.partial);
                if spare_buffers.len() < SPARE_READ_BUFFERS && buf.capacity() <= 2 * SCRATCH_SIZE {
                    spare_buffers.push(buf);
                }
            }
        }
    }

    /// Write connection `id`'s output until it is empty or the socket is full.
    fn flush(&mut self, id: ConnId, now: Instant) {
        // Nothing leaves before the journal records made so far are written (persistence).
        if self.journal_waiting() {
            self.persist(false);
        }
        // Each write may let the broker move more queued messages in; bound the rounds (the
        // rest is flushed next turn, so one busy connection does not hold up the loop).
        let mut drained = false;
        for _ in 0..64 {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            let out = self.broker.output(id);
            let written = if out.is_empty() {
                // Nothing from the broker; WebSocket frames or TLS records may wait.
                conn.send_pending().map(|_| 0)
            } else {
                conn.write(out)
            };
            match written {
                Ok(0) if out.is_empty() => {
                    drained = true;
                    break;
                }
                // The TLS session's buffer is full and the socket takes no more.
                Ok(0) => return,
                Ok(n) => {
                    self.broker.consume_output(id, n);
                    // Queued messages moved into the output have records to write first:
                    // the rest goes next turn, after them (one sync per turn, not per write).
                    if self.journal_waiting() {
                        if !self.pending_writes.contains(&id) {
                            self.pending_writes.push(id);
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return self.lost(id, &io_reason(&e), now),
            }
        }
        // What the last round put into a TLS session goes out now.
        if let Some(conn) = self.conns.get_mut(id) {
            match conn.send_pending() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => return self.lost(id, &io_reason(&e), now),
            }
        }
        if !drained && !self.pending_writes.contains(&id) {
            self.pending_writes.push(id);
        }
        // Reading was paused while the client left its output unread; resume.
        self.resume(id);
    }

    /// Read connection `id` next turn if it has unread input and the broker wants it.
    fn resume(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get(id) {
            if conn.read_pending
                && self.broker.wants_read(id)
                && !conn.ws_backlogged()
                && !self.pending_reads.contains(&id)
            {
                self.pending_reads.push(id);
            }
        }
    }

    /// The socket failed or was closed by the peer.
    fn lost(&mut self, id: ConnId, reason: &str, now: Instant) {
        match self.conns.get(id).and_then(|c| c.bridge) {
            Some(b) => log::warn!("Bridge {}: {reason}", self.links[b as usize].cfg.name),
            None => log::debug!("connection {id}: {reason}"),
        }
        self.close(id, now);
    }

    /// The broker ended connection `id`. Its last words (a DISCONNECT with a reason, a
    /// refusing CONNACK) go out first, and the socket lingers so a client still sending reads
    /// them (see `linger`); one with TLS records or WebSocket frames still waiting, or more
    /// output than lingering takes, closes at once.
    fn end(&mut self, id: ConnId, now: Instant) {
        self.flush(id, now);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.close_notify();
        // The tail goes out after the records of what moved into it, as all output does.
        if self.journal_waiting() {
            self.persist(false);
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let tail = self.broker.output(id);
        let lingers = conn.bridge.is_none()
            && !conn.tls_wants_write()
            && conn.ws.as_ref().is_none_or(|ws| ws.out.is_empty())
            && (tail.is_empty() || conn.is_plain())
            && self.linger.has_room(tail.len());
        if !lingers {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            return self.close(id, now);
        }
        let tail = tail.to_vec();
        if let Some(conn) = self.remove(id, now) {
            self.linger
                .take(self.poll.registry(), conn.stream, tail, now);
        }
    }

    fn close(&mut self, id: ConnId, now: Instant) {
        self.remove(id, now);
    }

    /// Take connection `id` out of the loop and the broker; the caller has its socket.
    fn remove(&mut self, id: ConnId, now: Instant) -> Option<Connection> {
        let mut conn = self.conns.try_remove(id)?;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Some(l) = self.listeners.get_mut(conn.listener as usize) {
            l.connections -= 1;
        }
        self.broker.release(id, now);
        if let Some(b) = conn.bridge {
            let was_up = self.broker.bridge_was_up(b as usize);
            if let Some(link) = self.links.get_mut(b as usize) {
                if !self.stopping {
                    link.failed(now, was_up);
                }
            }
        }
        Some(conn)
    }

    /// Take what waits on the `http_listener`.
    fn http_accept(&mut self, now: Instant) {
        while self.http_conns.len() < MAX_HTTP_CONNECTIONS {
            let Some(l) = &self.http else { return };
            let mut stream = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let entry = self.http_conns.vacant_entry();
            let token = Token(HTTP_BASE + entry.key());
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_ok()
            {
                entry.insert(http::HttpConn::new(stream, now));
            }
        }
    }

    /// An HTTP connection can be read or written: answer it, close it when done.
    fn http_ready(&mut self, key: usize) {
        let page = self.page_config();
        let extra = http::Extra {
            persistence_bytes: self.store.as_ref().map(|s| s.bytes_written),
            persistence_failing: self.store.as_ref().map(|s| !s.durable()),
            uptime: self.started.elapsed(),
        };
        let broker = &self.broker;
        let Some(conn) = self.http_conns.get_mut(key) else {
            return;
        };
        let next = conn.ready(|method, path| http::answer(method, path, broker, &page, &extra));
        if next == http::Next::Close {
            let mut conn = self.http_conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
            // More may wait in the backlog now that a slot is free.
            self.http_accept(Instant::now());
        }
    }

    /// Close HTTP connections that have not been answered in time.
    fn http_timeouts(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .http_conns
            .iter()
            .filter(|(_, c)| c.opened + http::TIMEOUT <= now)
            .map(|(k, _)| k)
            .collect();
        let freed = !late.is_empty();
        for k in late {
            let mut conn = self.http_conns.remove(k);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        // The listener's readiness was used up at the cap: take what waits now.
        if freed {
            self.http_accept(now);
        }
    }

    /// What the status page is told: the first WebSocket listener, the devices' prefix.
    fn page_config(&self) -> http::PageConfig {
        let ws = self
            .config
            .listeners
            .iter()
            .zip(&self.listeners)
            .find(|(c, _)| c.websockets)
            .and_then(|(c, l)| Some((l.socket.local_addr().ok()?.port(), c.tls.enabled())));
        http::PageConfig {
            ws,
            prefix: self.config.device_options.prefix.clone(),
        }
    }

    /// Watch a new connection and give it a slot: its key, the mio token.
    fn add_connection(&mut self, mut conn: Connection) -> io::Result<ConnId> {
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        self.poll.registry().register(
            &mut conn.stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(conn);
        self.room_for_connections();
        Ok(id)
    }

    /// The per-turn lists hold each connection at most once: sized to the connection count
    /// when a connection opens, they never grow while routing (however many connections one
    /// turn happens to make ready).
    fn room_for_connections(&mut self) {
        let n = self.conns.len();
        for list in [
            &mut self.pending_reads,
            &mut self.pending_writes,
            &mut self.reading,
            &mut self.work,
        ] {
            room_for(list, n);
        }
    }

    /// Bridges: collect finished name lookups, and connect the links that are due.
    fn bridges_due(&mut self, now: Instant) {
        use crate::bridge::State;
        while let Some((i, result)) = self.resolver.as_ref().and_then(|r| r.take()) {
            if self.links[i].state != State::Resolving {
                continue;
            }
            match result {
                Ok(addr) => self.bridge_open(i, addr, now),
                Err(e) => {
                    log::warn!("Bridge {}: {e}", self.links[i].cfg.name);
                    self.links[i].failed(now, false);
                }
            }
        }
        if self.stopping {
            return;
        }
        for i in 0..self.links.len() {
            let State::Waiting(at) = self.links[i].state else {
                continue;
            };
            if at > now {
                continue;
            }
            let (host, port) = self.links[i].address().clone();
            match crate::bridge::literal(&host, port) {
                Some(addr) => self.bridge_open(i, addr, now),
                None => {
                    self.links[i].state = State::Resolving;
                    if let Some(r) = &self.resolver {
                        r.start(i, &host, port);
                    }
                }
            }
        }
    }

    /// Open bridge `i`'s socket to `addr` without waiting for it to connect; the broker puts
    /// the CONNECT in its output.
    fn bridge_open(&mut self, i: usize, addr: SocketAddr, now: Instant) {
        let link = &mut self.links[i];
        let name = link.cfg.name.clone();
        log::info!("Bridge {name}: connecting to {addr}");
        let stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("Bridge {name}: cannot connect to {addr}: {}", io_reason(&e));
                return link.failed(now, false);
            }
        };
        if self.nodelay {
            let _ = stream.set_nodelay(true);
        }
        #[cfg(feature = "tls")]
        let tls = match &self.bridge_tls[i] {
            None => None,
            Some(ctx) => match tls::connect(ctx, &link.address().0) {
                Ok(t) => Some(t),
                Err(e) => {
                    log::warn!("Bridge {name}: {e}");
                    return link.failed(now, false);
                }
            },
        };
        let added = self.add_connection(Connection {
            stream,
            partial: Vec::new(),
            read_pending: false,
            listener: u16::MAX,
            bridge: Some(i as u16),
            #[cfg(feature = "tls")]
            tls,
            #[cfg(feature = "tls")]
            identified: true,
            ws: None,
        });
        let link = &mut self.links[i];
        match added {
            Ok(id) => {
                link.state = crate::bridge::State::Open(id);
                self.broker.open_bridge(id, i, Some(addr), now);
            }
            Err(e) => {
                log::warn!("Bridge {name}: cannot watch the connection: {e}");
                link.failed(now, false);
            }
        }
    }

    /// Write every connection that got output, close every connection the broker ended.
    /// Closing may publish wills, which makes more output: repeat until both lists are empty.
    fn flush_and_close(&mut self, now: Instant) {
        loop {
            self.broker.take_dirty(&mut self.work);
            for i in 0..self.work.len() {
                self.flush(self.work[i], now);
            }
            self.broker.take_resumed(&mut self.work);
            for i in 0..self.work.len() {
                self.resume(self.work[i]);
            }
            self.broker.take_closing(&mut self.work);
            if self.work.is_empty() {
                break;
            }
            for i in 0..self.work.len() {
                self.end(self.work[i], now);
            }
        }
    }

    /// Stop accepting, write what is queued, close every connection.
    fn shutdown(&mut self) {
        self.notifier.notify("STOPPING=1");
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        let now = Instant::now();
        self.broker.stopping();
        let ids: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for &id in &ids {
            if let Some(conn) = self.conns.get(id) {
                let _ = conn.stream.set_nodelay(true);
            }
            self.flush(id, now);
        }
        for id in ids {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.close_notify();
            }
            self.close(id, now);
        }
        self.listeners.clear();
        self.persist(true);
        log::info!("gatemq stopped");
    }
}

/// A listener's TLS setup, built from its options (none for a plain listener, and nothing at
/// all in a build without TLS).
#[cfg(feature = "tls")]
type TlsSetup = Option<tls::Context>;
#[cfg(not(feature = "tls"))]
type TlsSetup = ();

fn tls_setup(l: &ListenerConfig) -> Result<TlsSetup, StartError> {
    #[cfg(feature = "tls")]
    {
        if !l.tls.enabled() {
            return Ok(None);
        }
        tls::context(&l.tls)
            .map(Some)
            .map_err(|e| StartError(format!("listener on port {}: {e}", l.port)))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = l;
        Ok(())
    }
}

/// Open, bind and watch (as `token`) the listener `l` describes.
fn open_listener(poll: &Poll, l: &ListenerConfig, token: usize) -> Result<Listener, StartError> {
    #[cfg(feature = "tls")]
    let tls = tls_setup(l)?;
    let host = l.address.as_deref().unwrap_or("0.0.0.0");
    let addrs: Vec<SocketAddr> = (host, l.port)
        .to_socket_addrs()
        .map_err(|e| StartError(format!("cannot resolve listener address {host}: {e}")))?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| StartError(format!("listener address {host} has no IP address")))?;
    let mut listener = TcpListener::bind(addr)
        .map_err(|e| StartError(format!("cannot listen on {addr}: {}", io_reason(&e))))?;
    poll.registry()
        .register(&mut listener, Token(token), Interest::READABLE)
        .map_err(|e| StartError(format!("cannot watch listener {addr}: {e}")))?;
    Ok(Listener {
        socket: listener,
        max_connections: l.max_connections,
        connections: 0,
        #[cfg(feature = "tls")]
        tls,
        #[cfg(feature = "tls")]
        identity: l.tls.use_identity_as_username,
        websockets: l.websockets,
    })
}

/// Open the `http_listener`.
fn open_http(poll: &Poll, port: u16, address: Option<&str>) -> Result<TcpListener, StartError> {
    let host = address.unwrap_or("0.0.0.0");
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| StartError(format!("cannot resolve http_listener address {host}")))?;
    let mut l = TcpListener::bind(addr).map_err(|e| {
        StartError(format!(
            "cannot listen on {addr} (http_listener): {}",
            io_reason(&e)
        ))
    })?;
    poll.registry()
        .register(&mut l, HTTP_LISTENER_TOKEN, Interest::READABLE)
        .map_err(|e| StartError(format!("cannot watch http_listener {addr}: {e}")))?;
    log::info!(
        "HTTP (status page, /metrics) on {}",
        l.local_addr().unwrap_or(addr)
    );
    Ok(l)
}

/// Read the persisted state into `broker` and start the files anew from it.
fn open_store(
    p: &crate::config::Persistence,
    broker: &mut Broker,
) -> Result<crate::store::Store, StartError> {
    let loaded = crate::store::load(&p.location, &p.file).map_err(StartError)?;
    for w in &loaded.warnings {
        log::warn!("persistence: {w}");
    }
    broker.enable_journal();
    let (retained, sessions) = broker.restore(&loaded.records, Instant::now());
    log::info!(
        "persistence: {} retained messages and {sessions} sessions restored from {}",
        retained,
        p.location.join(&p.file).display()
    );
    let mut state = Vec::new();
    broker.snapshot(&mut state);
    crate::store::Store::open(&p.location, &p.file, &loaded, &state, p.sync).map_err(StartError)
}

/// Capacity for `n` entries in `v`.
pub(crate) fn room_for<T>(v: &mut Vec<T>, n: usize) {
    if v.capacity() < n {
        v.reserve(n - v.len());
    }
}

/// A seed for a bridge's backoff jitter: links of gateways restarted together (a power cut)
/// should not all come back in the same second.
fn seed(i: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64) << 20 ^ i as u64
}

/// Hand every whole packet at the start of `data` to the broker; return the bytes used.
fn handle_frames(broker: &mut Broker, id: ConnId, data: &[u8], max: usize, now: Instant) -> usize {
    let mut used = 0;
    while broker.wants_read(id) {
        let rest = &data[used..];
        match frame_len(rest, max) {
            Ok(Some(f)) if f.total_len <= rest.len() => {
                broker.handle_packet(id, &rest[..f.total_len], f.header_len, now);
                used += f.total_len;
            }
            Ok(_) => break,
            Err(e) => {
                broker.frame_error(id, e, now);
                break;
            }
        }
    }
    used
}

/// TCP keepalive on a client's socket: a client with MQTT keep-alive 0 that vanishes (power cut,
/// Wi-Fi gone) is found dead by the kernel after `TCP_KEEPIDLE` + `TCP_KEEPCNT` unanswered
/// probes `TCP_KEEPINTVL` apart (120 s + 3 x 20 s), and its connection is closed like any lost
/// one (its will is published), instead of being kept for ever.
pub const TCP_KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(120), Duration::from_secs(20), 3);

fn set_tcp_keepalive(stream: &TcpStream) {
    let (idle, interval, count) = TCP_KEEPALIVE;
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(count);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        log::debug!("cannot set TCP keepalive: {e}");
    }
}
