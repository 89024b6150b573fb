//! The broker core: sessions, the subscription table, retained messages, QoS state, wills and
//! `$SYS`, with no sockets in it.
//!
//! The event loop (`net`) owns the sockets and drives this core: it opens a connection slot,
//! hands in each whole packet, asks for the bytes to write, and closes the connections the
//! core puts on its closing list. Tests drive the same calls without a socket. Time comes in
//! as an argument, and [`Broker::next_timeout`] says when the core next needs to be woken.
//!
//! One file per packet family says what happens on it: `connect.rs`, `publish.rs`
//! (routing and delivery), `ack.rs`, `subscribe.rs`, `disconnect.rs` (and wills), `sys.rs`.

mod access;
mod ack;
pub mod bridge;
mod connect;
mod devices;
mod disconnect;
pub(crate) mod fxhash;
mod gateway;
pub mod message;
mod persist;
mod publish;
pub mod retain;
pub mod session;
pub mod subs;
mod subscribe;
mod sys;
pub mod topic;

use crate::wire::{self, DecodeError, Packet};
pub use access::CertCheck;
use fxhash::FxHashMap;
use message::{MessagePool, MsgId};
use retain::RetainedStore;
use session::Session;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use subs::SubscriptionTree;

/// A connection's key: the same number as the event loop's slab key and mio token.
pub type ConnId = usize;
/// A session's key in the session slab; stable while the session lives.
pub type SessionId = usize;

/// The limits and switches the broker core runs by (the config file's broker options).
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Outgoing QoS 1/2 messages unacknowledged per client; 0 = no limit (65535).
    pub max_inflight_messages: u16,
    /// Messages queued per client beyond the in-flight window; 0 = no limit.
    pub max_queued_messages: usize,
    /// Payload bytes queued per client; 0 = no limit.
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for offline persistent sessions too.
    pub queue_qos0_messages: bool,
    /// Largest whole packet accepted from a client.
    pub max_packet_size: usize,
    /// Largest PUBLISH payload; larger ones are dropped. 0 = only `max_packet_size` applies.
    pub message_size_limit: usize,
    /// 3.1.1 clients asking for a longer keep-alive are refused (there is no way to tell
    /// them); MQTT 5 clients are told to use this one. 0 = no limit.
    pub max_keepalive: u16,
    /// Keep-alive 0 (none) is accepted, as MQTT allows; false is Mosquitto 2.0.12+'s rule
    /// (refused like a keep-alive above `max_keepalive`, when that is set).
    pub allow_zero_keepalive: bool,
    pub retain_available: bool,
    /// Seconds between `$SYS` updates; 0 = none.
    pub sys_interval: u32,
    /// A connection that sends no CONNECT within this time is closed.
    pub connect_timeout: Duration,
    /// Stop writing queued messages into a connection's output buffer past this many bytes
    /// (and stop reading from a connection whose unread output is this large).
    pub output_buffer_soft: usize,
    /// Topic aliases an MQTT 5 client may set (Topic Alias Maximum in CONNACK), and the most
    /// the broker uses towards a client.
    pub max_topic_alias: u16,
    /// Highest QoS granted and accepted (Maximum QoS in CONNACK).
    pub max_qos: u8,
    /// Sent as Response Information to MQTT 5 clients that request it.
    pub response_information: Option<String>,
    /// Who each listener lets in and what they may do, by listener index (the order of the
    /// config's listeners). A connection on a listener not in the list is treated as on the
    /// first.
    pub listeners: Vec<ListenerPolicy>,
    /// Longest topic name or filter accepted, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter (this also bounds the tries' recursion).
    pub max_topic_levels: usize,
    /// Subscriptions one client may hold; 0 = no limit.
    pub max_subscriptions_per_client: usize,
    /// Bridges to upstream brokers (Mosquitto's `connection` sections).
    pub bridges: Vec<bridge::BridgeSpec>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            queue_qos0_messages: false,
            max_packet_size: 1024 * 1024,
            message_size_limit: 0,
            max_keepalive: 65535,
            allow_zero_keepalive: true,
            retain_available: true,
            sys_interval: 10,
            connect_timeout: Duration::from_secs(10),
            output_buffer_soft: 64 * 1024,
            max_topic_alias: 10,
            max_qos: 2,
            response_information: None,
            listeners: vec![ListenerPolicy::default()],
            max_topic_length: 65535,
            max_topic_levels: 256,
            max_subscriptions_per_client: 0,
            bridges: Vec::new(),
        }
    }
}

/// What one listener lets in and allows: Mosquitto's security options (per listener with
/// `per_listener_settings true`, otherwise the same for every listener) and the listener
/// options that decide who a client is.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerPolicy {
    pub allow_anonymous: bool,
    /// Mosquitto's `password_file`: a client giving a username must give its password.
    pub passwords: Option<crate::auth::password::PasswordFile>,
    /// Mosquitto's `acl_file`: who may publish, subscribe and receive what.
    pub acl: Option<crate::auth::acl::AclFile>,
    /// The username becomes the client id (clients without a username are refused).
    pub use_username_as_clientid: bool,
    /// TLS with client certificates: the certificate's Common Name is the username and no
    /// password is asked for (the event loop passes it with [`Broker::set_identity`]).
    pub use_identity_as_username: bool,
}

impl Default for ListenerPolicy {
    fn default() -> Self {
        ListenerPolicy {
            allow_anonymous: true,
            passwords: None,
            acl: None,
            use_username_as_clientid: false,
            use_identity_as_username: false,
        }
    }
}

/// Counters for `$SYS` and the logs.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub clients_connected: usize,
    pub clients_maximum: usize,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub publish_received: u64,
    pub publish_sent: u64,
    pub publish_dropped: u64,
    /// `publish_dropped` by reason.
    pub dropped: Drops,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// Messages dropped, by reason (their sum is `Stats::publish_dropped`).
#[derive(Debug, Default, Clone)]
pub struct Drops {
    /// A subscriber's queue was full (`max_queued_messages`, `max_queued_bytes`).
    pub queue_full: u64,
    /// Larger than a subscriber's Maximum Packet Size.
    pub too_large: u64,
    /// Its Message Expiry Interval ran out while queued.
    pub expired: u64,
    /// Larger than `message_size_limit`.
    pub size_limit: u64,
    /// QoS 0 for a bridge whose link was down.
    pub link_down: u64,
}

/// One connected client, as listed on the status page.
#[derive(Debug, Clone)]
pub struct ClientInfo<'a> {
    pub client_id: &'a str,
    pub peer: Option<SocketAddr>,
    pub protocol: u8,
    pub listener: u16,
    pub bridge: bool,
    /// Messages queued for it and in flight.
    pub queued: usize,
    pub inflight: usize,
    /// An MQTT-SN client, through the gateway (its `protocol` is the MQTT level the gateway
    /// speaks for it).
    pub mqttsn: bool,
    /// A sleeping MQTT-SN client: its messages are kept until it wakes.
    pub asleep: bool,
}

/// A connection's MQTT 5 topic aliases.
#[derive(Default)]
struct Aliases {
    /// Set by the client (index = alias - 1).
    inbound: Vec<String>,
    /// Set by the broker towards the client.
    outbound: FxHashMap<Box<str>, u16>,
}

/// One connection's protocol state. The socket itself lives in the event loop.
struct Conn {
    peer: Option<SocketAddr>,
    /// Index of the listener it came in on (its [`ListenerPolicy`]).
    listener: u16,
    /// The bridge it is the upstream link of (`bridge::NO_BRIDGE`: a client).
    bridge: u16,
    session: Option<SessionId>,
    level: u8,
    keep_alive: u16,
    opened: Instant,
    last_rx: Instant,
    will: Option<MsgId>,
    out: Vec<u8>,
    /// Output from this offset on waits for the journal: it holds the acknowledgement of a
    /// message whose records are not written yet (see `persist::hold_output`).
    held: Option<usize>,
    dirty: bool,
    closing: bool,
    /// Timer entries carrying another generation are stale.
    timer_gen: u32,
    /// Not read from until this session's queue drains (its QoS 1/2 messages could not be queued).
    paused_on: Option<SessionId>,
    /// Another broker's bridge (Mosquitto's bridge mark in CONNECT): what it publishes is not
    /// sent back to it, and RETAIN reaches it as published.
    peer_bridge: bool,
    /// The highest QoS sent to it: 2, or an upstream broker's Maximum QoS (a bridge's link).
    max_qos_out: u8,
    /// RETAIN may be set on what is sent to it (false: an upstream without retain).
    retain_out: bool,
    /// MQTT 5 state (defaults for 3.1.x).
    v5: bool,
    /// The client's Receive Maximum: QoS 1/2 messages it takes unacknowledged.
    receive_max: u16,
    /// The client's Maximum Packet Size.
    max_packet: usize,
    /// MQTT 5 topic aliases, made on first use: most clients never use one, and every idle
    /// connection's bytes count.
    aliases: Option<Box<Aliases>>,
    /// How many topic aliases the broker may set towards the client.
    alias_max_out: u16,
    will_delay: u32,
    /// The will's Message Expiry Interval, counted from when it is published.
    will_expiry: Option<u32>,
    /// The Session Expiry Interval of the CONNECT (a DISCONNECT may not raise it from 0).
    connect_expiry: u32,
    /// How it proved who it is, for a reload to check again (`access.rs`).
    credential: access::Credential,
    /// Its transport is the MQTT-SN gateway, which translates its output into datagrams
    /// (see `gateway.rs`).
    gateway: bool,
    /// An MQTT-SN client asleep: nothing is written into its output, its messages queue.
    asleep: bool,
}

pub struct Broker {
    cfg: BrokerConfig,
    conns: Vec<Option<Conn>>,
    sessions: Slab<Session>,
    by_client_id: session::ClientIds,
    subs: SubscriptionTree,
    retained: RetainedStore,
    pool: MessagePool,
    /// Keep-alive and CONNECT deadlines: one live entry per connection; an entry is
    /// re-armed when it fires early, so activity never touches the heap.
    /// An entry is (milliseconds since `epoch`, connection, generation): 16 bytes, as every
    /// connection has one.
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    epoch: Instant,
    next_gen: u64,
    /// Session expiry and delayed-will deadlines: one live entry per offline session.
    session_timers: BinaryHeap<Reverse<(Instant, SessionId, u64)>>,
    /// The time of the event being handled.
    now: Instant,
    match_epoch: u64,
    /// Scratch for routing and retained delivery, reused so routing allocates nothing.
    matches: Vec<SessionId>,
    shared_matches: Vec<(usize, usize)>,
    retained_scratch: Vec<MsgId>,
    topic_scratch: String,
    dirty: Vec<ConnId>,
    closing: Vec<ConnId>,
    /// Connections whose pause ended: the event loop reads what they have buffered.
    resumed: Vec<ConnId>,
    /// Connections with output held for the journal.
    held: Vec<ConnId>,
    /// Persistence cannot write: connections with held output are not read.
    journal_failing: bool,
    stats: Stats,
    sys: sys::SysState,
    /// The device command executor, when a devices file is configured.
    devices: Option<Box<crate::devices::Executor>>,
    device_out: crate::devices::Outbox,
    /// The discovery removals Home Assistant may not have seen, while no executor holds them:
    /// read from the store at start (until the devices are set), or kept from an executor a
    /// reload ended.
    parked_removals: crate::devices::Removals,
    rng: u64,
    /// TLS client certificate identities of connections that have not sent CONNECT yet, on
    /// listeners that use them as usernames (kept here, not in every `Conn`).
    identities: FxHashMap<ConnId, Box<str>>,
    /// Records of this loop turn's changes, when persistence is on.
    journal: Option<Vec<u8>>,
    /// The journal keeps only retained messages under this prefix (the devices' status with
    /// `persistence false`).
    journal_only: Option<Box<str>>,
    /// With `journal_only`: gatemq's own Home Assistant discovery configs under this prefix
    /// are kept too (what was announced, to clear at start what is no longer declared).
    journal_discovery: Option<Box<str>>,
    /// The last store id given to a message written to the journal.
    next_store_id: u64,
    /// Bridges to upstream brokers, by their index in `cfg.bridges`.
    bridges: Vec<bridge::BridgeState>,
    /// The MQTT-SN gateways' counters, when a listener speaks MQTT-SN (for `$SYS` and
    /// `/metrics`).
    mqttsn: Option<Box<crate::mqttsn::Stats>>,
}

impl Broker {
    pub fn new(cfg: BrokerConfig, now: Instant) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (std::process::id() as u64) << 32;
        let sys = sys::SysState::new(now, cfg.sys_interval);
        Broker {
            cfg,
            conns: Vec::new(),
            sessions: Slab::new(),
            by_client_id: session::ClientIds::default(),
            subs: SubscriptionTree::default(),
            retained: RetainedStore::default(),
            pool: MessagePool::default(),
            timers: BinaryHeap::new(),
            epoch: now,
            next_gen: 0,
            session_timers: BinaryHeap::new(),
            now,
            match_epoch: 0,
            matches: Vec::new(),
            shared_matches: Vec::new(),
            retained_scratch: Vec::new(),
            topic_scratch: String::new(),
            dirty: Vec::new(),
            closing: Vec::new(),
            resumed: Vec::new(),
            held: Vec::new(),
            journal_failing: false,
            stats: Stats::default(),
            sys,
            devices: None,
            device_out: Default::default(),
            parked_removals: Default::default(),
            rng: seed | 1,
            identities: FxHashMap::default(),
            journal: None,
            journal_only: None,
            journal_discovery: None,
            next_store_id: 0,
            bridges: Vec::new(),
            mqttsn: None,
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Subscriptions in the table.
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Sessions kept, online or not.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Messages the sessions hold: queued, in flight, delayed wills, and QoS 2 ids received
    /// and not yet released (a persistence replay must arrive at the same count).
    pub fn session_holdings(&self) -> usize {
        self.sessions
            .iter()
            .map(|(_, s)| {
                s.queue.len()
                    + s.inflight.len()
                    + s.pending_will.is_some() as usize
                    + s.qos2_incoming.len()
            })
            .sum()
    }

    /// Messages held in the pool (queued, in flight, retained, wills).
    pub fn stored_messages(&self) -> usize {
        self.pool.len()
    }

    /// Every connected client (CONNECT accepted; bridges' upstream links included).
    pub fn for_each_client(&self, mut f: impl FnMut(ClientInfo<'_>)) {
        for c in self.conns.iter().flatten().filter(|c| !c.closing) {
            let Some(s) = c.session.and_then(|s| self.sessions.get(s)) else {
                continue;
            };
            f(ClientInfo {
                client_id: &s.client_id,
                peer: c.peer,
                protocol: c.level,
                listener: c.listener,
                bridge: c.bridge != bridge::NO_BRIDGE,
                queued: s.queue.len(),
                inflight: s.inflight.len(),
                mqttsn: c.gateway,
                asleep: c.asleep,
            });
        }
    }

    /// Messages held for sessions, online or not: (queued, in flight, queued payload bytes).
    pub fn queue_depths(&self) -> (usize, usize, usize) {
        self.sessions.iter().fold((0, 0, 0), |(q, i, b), (_, s)| {
            (q + s.queue.len(), i + s.inflight.len(), b + s.queued_bytes)
        })
    }

    /// The device executor, when devices are declared.
    pub fn devices(&self) -> Option<&crate::devices::Executor> {
        self.devices.as_deref()
    }

    /// The discovery removals Home Assistant may not have seen, kept for its next birth.
    pub fn discovery_removals(&self) -> &crate::devices::Removals {
        self.devices
            .as_deref()
            .map_or(&self.parked_removals, |ex| ex.removals())
    }

    /// Each bridge: (name, link up, messages held for upstream, dropped).
    pub fn for_each_bridge(&self, mut f: impl FnMut(&str, bool, usize, u64)) {
        for (i, spec) in self.cfg.bridges.iter().enumerate() {
            let (queued, inflight, dropped) = self.bridge_queue(i).unwrap_or((0, 0, 0));
            f(&spec.name, self.bridge_up(i), queued + inflight, dropped);
        }
    }

    /// A new connection in slot `id` (the event loop's key for it) on listener `listener`
    /// (an index into [`BrokerConfig::listeners`]).
    pub fn open(&mut self, id: ConnId, peer: Option<SocketAddr>, listener: usize, now: Instant) {
        if self.conns.len() <= id {
            self.conns.resize_with(id + 1, || None);
        }
        self.next_gen += 1;
        self.conns[id] = Some(Conn {
            peer,
            listener: listener.min(u16::MAX as usize) as u16,
            bridge: bridge::NO_BRIDGE,
            session: None,
            level: 0,
            keep_alive: 0,
            opened: now,
            last_rx: now,
            will: None,
            out: Vec::new(),
            held: None,
            dirty: false,
            closing: false,
            timer_gen: self.next_gen as u32,
            paused_on: None,
            peer_bridge: false,
            max_qos_out: 2,
            retain_out: true,
            v5: false,
            receive_max: u16::MAX,
            max_packet: usize::MAX,
            aliases: None,
            alias_max_out: 0,
            will_delay: 0,
            will_expiry: None,
            connect_expiry: 0,
            credential: access::Credential::Unchecked,
            gateway: false,
            asleep: false,
        });
        self.push_timer(now + self.cfg.connect_timeout, id, self.next_gen as u32);
        // Lists that hold each connection at most once per turn: sized when one opens, so a
        // turn that makes every connection dirty does not allocate.
        let n = self.conns.len();
        for list in [
            &mut self.dirty,
            &mut self.closing,
            &mut self.resumed,
            &mut self.held,
        ] {
            crate::net::room_for(list, n);
        }
    }

    /// Forget connection `id` once the event loop has closed its socket. If the broker did not
    /// decide the close itself, the connection was lost: the will is published.
    pub fn release(&mut self, id: ConnId, now: Instant) {
        if self
            .conns
            .get(id)
            .and_then(|c| c.as_ref())
            .is_some_and(|c| !c.closing)
        {
            self.end_connection(id, "connection lost", true, now);
            // The loop has closed it already; left on the closing list, the slot's next
            // connection (accepted in this same turn) would be closed in its place.
            self.closing.retain(|&c| c != id);
        }
        if let Some(slot) = self.conns.get_mut(id) {
            *slot = None;
        }
        self.identities.remove(&id);
    }

    /// A reload: new limits and listener policies. `map[old listener index]` is the index the
    /// listener has now (`u16::MAX`: removed; its offline sessions get the first listener's
    /// policy).
    pub fn reconfigure(&mut self, cfg: BrokerConfig, map: &[u16], now: Instant) {
        let remap = |l: u16| map.get(l as usize).copied().unwrap_or(u16::MAX);
        for c in self.conns.iter_mut().flatten() {
            c.listener = remap(c.listener);
        }
        for (_, s) in self.sessions.iter_mut() {
            s.listener = remap(s.listener);
        }
        if cfg.sys_interval != self.cfg.sys_interval {
            self.sys = sys::SysState::new(now, cfg.sys_interval);
        }
        // Bridges keep the configuration they started with (as in Mosquitto).
        let bridges = std::mem::take(&mut self.cfg.bridges);
        if cfg.bridges != bridges {
            log::warn!("bridge changes in the config take effect at the next start");
        }
        self.cfg = cfg;
        self.cfg.bridges = bridges;
    }

    /// The verified identity (certificate Common Name) of TLS connection `id`, for a listener
    /// with `use_identity_as_username`. Given before its CONNECT is handled.
    pub fn set_identity(&mut self, id: ConnId, identity: &str) {
        if self.conns.get(id).is_some_and(|c| c.is_some()) {
            self.identities.insert(id, identity.into());
        }
    }

    /// The policy of listener `listener` (the first listener's for an unknown index).
    fn policy(&self, listener: u16) -> &ListenerPolicy {
        let l = &self.cfg.listeners;
        l.get(listener as usize)
            .or(l.first())
            .unwrap_or(&OPEN_POLICY)
    }

    /// The event loop could not frame the input (bad or oversized fixed header).
    pub fn frame_error(&mut self, id: ConnId, err: DecodeError, now: Instant) {
        self.protocol_error(id, err, now);
    }

    /// Handle one whole packet (fixed header included) from connection `id`. A QoS 1/2
    /// PUBLISH whose message had to be journaled is acknowledged only once its records are
    /// written: the output it made waits for [`Broker::journal_written`].
    pub fn handle_packet(&mut self, id: ConnId, frame: &[u8], header_len: usize, now: Instant) {
        let acked_publish = frame.first().is_some_and(|&b| b >> 4 == 3 && b & 0x06 != 0);
        let before = match (&self.journal, acked_publish) {
            (Some(j), true) => Some((j.len(), self.output(id).len())),
            _ => None,
        };
        self.dispatch(id, frame, header_len, now);
        if let Some((journal_len, out_len)) = before {
            self.hold_output(id, journal_len, out_len);
        }
    }

    fn dispatch(&mut self, id: ConnId, frame: &[u8], header_len: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.last_rx = now;
        let session = conn.session;
        let level = conn.level;
        let bridge = conn.bridge;
        self.now = now;
        self.stats.messages_received += 1;
        if bridge != bridge::NO_BRIDGE
            && bridge::handle_packet(self, id, bridge as usize, frame, header_len, now)
        {
            return;
        }
        let packet = match Packet::decode(frame, header_len, level) {
            Ok(p) => p,
            Err(e) => {
                // A malformed MQTT 5 CONNECT is answered with a CONNACK carrying the reason
                // (spec 4.13.1; a DISCONNECT may not come before a CONNACK).
                if session.is_none() && is_v5_connect(frame, header_len) {
                    wire::encode_connack_v5(self.out(id), false, e.code, &wire::PropBuf::default());
                    self.stats.messages_sent += 1;
                }
                return self.protocol_error(id, e, now);
            }
        };
        let Some(sid) = session else {
            return match packet {
                Packet::Connect(c) => connect::handle(self, id, c, now),
                _ => self.protocol_error(
                    id,
                    DecodeError::protocol("first packet is not CONNECT"),
                    now,
                ),
            };
        };
        match packet {
            Packet::Connect(_) => {
                self.protocol_error(id, DecodeError::protocol("second CONNECT"), now)
            }
            Packet::Publish(p) => publish::handle(self, id, sid, p, now),
            Packet::PubAck(a) => ack::puback(self, sid, a),
            Packet::PubRec(a) => ack::pubrec(self, id, sid, a),
            Packet::PubRel(a) => ack::pubrel(self, id, sid, a),
            Packet::PubComp(a) => ack::pubcomp(self, id, sid, a),
            Packet::Subscribe(s) => subscribe::subscribe(self, id, sid, s, now),
            Packet::Unsubscribe(u) => subscribe::unsubscribe(self, id, sid, u),
            Packet::PingReq => {
                wire::encode_pingresp(self.out(id));
                self.stats.messages_sent += 1;
            }
            Packet::Disconnect(d) => disconnect::handle(self, id, sid, d, now),
            // No authentication method is offered, so no AUTH exchange can be under way.
            Packet::Auth(_) => {
                self.protocol_error(id, DecodeError::protocol("unexpected AUTH"), now)
            }
        }
    }

    /// Bytes waiting to be written to connection `id` (up to output held for the journal).
    pub fn output(&self, id: ConnId) -> &[u8] {
        match self.conns.get(id).and_then(|c| c.as_ref()) {
            Some(c) => &c.out[..c.held.unwrap_or(c.out.len())],
            None => &[],
        }
    }

    /// `n` bytes of connection `id`'s output were written. Once the buffer drains below its
    /// limit, queued messages are moved into it.
    pub fn consume_output(&mut self, id: ConnId, n: usize) {
        self.now = self.now.max(Instant::now());
        let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
            return;
        };
        c.out.drain(..n.min(c.out.len()));
        if let Some(h) = &mut c.held {
            *h -= n.min(*h);
        }
        self.stats.bytes_sent += n as u64;
        if c.bridge != bridge::NO_BRIDGE && n > 0 {
            // Upstream is taking what the bridge sends: it is alive (see bridge::keep_alive).
            if let Some(st) = self.bridges.get_mut(c.bridge as usize) {
                st.sent_at = Some(self.now);
            }
        }
        if c.out.is_empty() && c.out.capacity() > 4 * self.cfg.output_buffer_soft {
            // One burst must not pin a large buffer to an idle connection.
            c.out = Vec::new();
        }
        if let (Some(sid), false) = (c.session, c.closing) {
            publish::pump(self, sid);
        }
    }

    pub fn count_bytes_received(&mut self, n: usize) {
        self.stats.bytes_received += n as u64;
    }

    /// Whether the event loop should read more from connection `id`: not while it is closing,
    /// nor while it leaves a full output buffer unread (it is not reading its acknowledgements),
    /// nor while its acknowledgements wait for a journal that cannot be written.
    pub fn wants_read(&self, id: ConnId) -> bool {
        match self.conns.get(id).and_then(|c| c.as_ref()) {
            Some(c) => {
                !c.closing
                    && c.paused_on.is_none()
                    && c.out.len() < self.cfg.output_buffer_soft
                    && !(self.journal_failing && c.held.is_some())
            }
            None => false,
        }
    }

    /// Connections that may be read from again after a pause (see `publish::deliver`).
    pub fn take_resumed(&mut self, into: &mut Vec<ConnId>) {
        into.clear();
        into.extend_from_slice(&self.resumed);
        self.resumed.clear();
    }

    /// Whether connection `id` is open and not being closed: packets already read from it are
    /// still handled while its reading is paused.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns
            .get(id)
            .and_then(|c| c.as_ref())
            .is_some_and(|c| !c.closing)
    }

    /// Connections given new output since the last call (each once).
    /// (Copied, not swapped: each list keeps its own capacity, so none allocates once warm.)
    pub fn take_dirty(&mut self, into: &mut Vec<ConnId>) {
        into.clear();
        into.extend_from_slice(&self.dirty);
        self.dirty.clear();
        for &id in into.iter() {
            if let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) {
                c.dirty = false;
            }
        }
    }

    /// Connections the broker has ended: flush their output, close the socket, `release` them.
    pub fn take_closing(&mut self, into: &mut Vec<ConnId>) {
        into.clear();
        into.extend_from_slice(&self.closing);
        self.closing.clear();
    }

    /// How long the event loop may sleep before [`Broker::handle_timeout`] has work.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let timer = self
            .timers
            .peek()
            .map(|Reverse((t, _, _))| self.instant(*t));
        let session = self.session_timers.peek().map(|Reverse((t, _, _))| *t);
        let devices = self.devices.as_ref().and_then(|d| d.next_deadline());
        [timer, session, self.sys.next, devices]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    /// Fire every deadline that has passed: keep-alive and CONNECT timeouts, `$SYS`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some(&Reverse((at, id, gen))) = self.timers.peek() {
            if self.instant(at) > now {
                break;
            }
            self.timers.pop();
            let id = id as ConnId;
            let Some(c) = self.conns.get(id).and_then(|c| c.as_ref()) else {
                continue;
            };
            if c.timer_gen != gen || c.closing {
                continue;
            }
            let deadline = if c.session.is_none() {
                c.opened + self.cfg.connect_timeout
            } else if c.bridge != bridge::NO_BRIDGE {
                match bridge::keep_alive(self, id, now) {
                    Some(t) => t,
                    None => continue,
                }
            } else if c.keep_alive == 0 {
                continue;
            } else if c.paused_on.is_some() {
                // Not its fault: its packets wait unread while a subscriber drains.
                now + Duration::from_millis(c.keep_alive as u64 * 1500)
            } else {
                // Spec 3.1.2.10: one and a half times the keep-alive.
                c.last_rx + Duration::from_millis(c.keep_alive as u64 * 1500)
            };
            let c = self.conns[id].as_ref().expect("checked above");
            if deadline > now {
                self.push_timer(deadline, id, gen);
            } else if c.bridge != bridge::NO_BRIDGE {
                log::warn!("Bridge connection to {} timed out, closing", peer(&c.peer));
                self.end_connection(id, "upstream timed out", false, now);
            } else if c.session.is_none() {
                log::info!(
                    "Connection from {} sent no CONNECT in time, closing",
                    peer(&c.peer)
                );
                self.end_connection(id, "no CONNECT in time", false, now);
            } else {
                log::info!(
                    "Client {} has exceeded its keep-alive timeout, disconnecting",
                    self.who(id)
                );
                self.disconnect_v5(id, 0x8D, Some("keep alive timeout"));
                self.end_connection(id, "keep-alive timeout", true, now);
            }
        }
        disconnect::session_timers(self, now);
        if self.sys.next.is_some_and(|t| t <= now) {
            sys::publish(self, now);
        }
        devices::on_timeout(self, now);
    }

    /// Arm the keep-alive timer of a newly connected client. Its CONNECT-timeout entry is
    /// still in the heap and re-arms itself for the keep-alive when it fires; only a
    /// keep-alive shorter than that needs an entry of its own (a new generation, so one entry
    /// per connection stays live).
    fn arm_keep_alive(&mut self, id: ConnId, now: Instant) {
        let connect_deadline = self.cfg.connect_timeout;
        let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
            return;
        };
        let at = now + Duration::from_millis(c.keep_alive as u64 * 1500);
        if c.keep_alive > 0 && at < c.opened + connect_deadline {
            self.next_gen += 1;
            c.timer_gen = self.next_gen as u32;
            let gen = c.timer_gen;
            self.push_timer(at, id, gen);
        }
    }

    fn push_timer(&mut self, at: Instant, id: ConnId, gen: u32) {
        // Rounded up, so an entry never fires before its deadline.
        let d = at.saturating_duration_since(self.epoch);
        let ms = d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0);
        self.timers.push(Reverse((ms, id as u32, gen)));
    }

    /// The instant of a timer entry's milliseconds.
    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// The output buffer of `id`, marked for flushing this loop turn.
    fn out(&mut self, id: ConnId) -> &mut Vec<u8> {
        let c = self.conns[id]
            .as_mut()
            .expect("output for a live connection");
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
        &mut c.out
    }

    /// A protocol violation: 3.1.1 has no way to say why, so log it and close (with the will).
    fn protocol_error(&mut self, id: ConnId, err: DecodeError, now: Instant) {
        log::info!(
            "Client {} disconnected: protocol error: {}",
            self.who(id),
            err.reason
        );
        self.disconnect_v5(id, err.code, Some(err.reason));
        self.end_connection(id, err.reason, true, now);
    }

    /// Tell an MQTT 5 client why the broker closes its connection (DISCONNECT with a reason
    /// code, spec 4.13); nothing for 3.1.x, which has no way to say it.
    fn disconnect_v5(&mut self, id: ConnId, code: u8, reason: Option<&str>) {
        let v5 = self
            .conns
            .get(id)
            .and_then(|c| c.as_ref())
            .is_some_and(|c| c.v5 && c.session.is_some() && !c.closing);
        if v5 {
            wire::encode_disconnect_v5(self.out(id), code, reason);
            self.stats.messages_sent += 1;
        }
    }

    /// A client id for a client that sent an empty one (3.1.1 with clean session).
    fn assign_client_id(&mut self) -> String {
        loop {
            // xorshift64*: unpredictable enough to avoid collisions, no dependency.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let id = format!("auto-{:016x}", self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d));
            if self.by_client_id.get(&self.sessions, &id).is_none() {
                return id;
            }
        }
    }
}

/// Does this frame start like an MQTT 5 CONNECT ("MQTT", level 5)?
fn is_v5_connect(frame: &[u8], header_len: usize) -> bool {
    frame.first() == Some(&(wire::kind::CONNECT << 4))
        && frame.get(header_len..header_len + 7)
            == Some(&[0, 4, b'M', b'Q', b'T', b'T', wire::LEVEL_5][..])
}

impl Broker {
    /// Who connection `id` is, for a log line: its client id once connected, else its address.
    /// (Called only from log macros, so only when that line is logged.)
    fn who(&self, id: ConnId) -> String {
        match self.conns.get(id).and_then(|c| c.as_ref()) {
            Some(c) => match c.session.and_then(|s| self.sessions.get(s)) {
                Some(s) => s.client_id.to_string(),
                None => peer(&c.peer),
            },
            None => format!("(connection {id})"),
        }
    }

    /// Within `max_topic_length` and `max_topic_levels`?
    fn topic_within_limits(&self, topic: &str) -> bool {
        topic.len() <= self.cfg.max_topic_length
            && topic.bytes().filter(|&c| c == b'/').count() < self.cfg.max_topic_levels
    }

    /// May session `sid` receive (`Read`, checked at delivery) or publish (`Write`) `topic`?
    /// Always, without an ACL file.
    fn acl_allows(&self, sid: SessionId, topic: &str, access: crate::auth::acl::Access) -> bool {
        let s = &self.sessions[sid];
        if s.bridge {
            // Bridges are configured by the operator: their topics are their ACL.
            return true;
        }
        self.policy(s.listener)
            .acl
            .as_ref()
            .is_none_or(|acl| acl.check(s.username.as_deref(), &s.client_id, topic, access))
    }
}

/// Anyone may connect and do anything: the policy without a config.
static OPEN_POLICY: ListenerPolicy = ListenerPolicy {
    allow_anonymous: true,
    passwords: None,
    acl: None,
    use_username_as_clientid: false,
    use_identity_as_username: false,
};

fn peer(p: &Option<SocketAddr>) -> String {
    p.map_or_else(|| "(unknown)".to_string(), |a| a.to_string())
}

#[cfg(test)]
mod tests;
