//! The gateway's state: MQTT-SN clients by source address, their topic ids, the will
//! dialogue, sleep and wake, retransmission, and the translation between datagrams and the
//! MQTT packets of each client's broker connection. No I/O: the event loop hands in datagrams
//! and sends what comes out through [`Host`]; tests do the same without a socket.
//!
//! Follow one PUBLISH in: [`Gateway::datagram`] decodes a borrowed view (`wire::decode`),
//! finds the client by its address, resolves the topic id to the topic name (registered,
//! predefined or short), writes an MQTT PUBLISH into a reused buffer and hands it to the
//! broker, whose PUBACK goes into the client's output. Out: the broker writes a PUBLISH into
//! the output of each MQTT-SN subscriber like any other; at the end of the loop turn
//! [`Gateway::flush`] reads it, finds or registers a topic id for its topic (REGISTER first,
//! and nothing more for that client until REGACK), and sends one datagram. A warmed-up gateway
//! allocates nothing per message either way.

use super::wire::{self, kind, rc, topic_type, Encapsulation, Flags, Message, TopicRef};
use super::{Options, Stats};
use crate::broker::fxhash::FxHashMap;
use crate::broker::{topic, Broker, ConnId};
use crate::wire::client::{decode_server, encode_connect, encode_subscribe, ConnectOut};
use crate::wire::{self as mqtt, frame_len, Packet};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// What the gateway needs from the event loop: a way to send, and connection slots.
pub trait Host {
    /// Send one datagram (best effort: a full socket drops it, and retransmission covers
    /// what needs an acknowledgement). Returns false if it was not sent.
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) -> bool;
    /// A free connection slot for a new client's broker connection; `None` if there is none.
    fn open_slot(&mut self) -> Option<ConnId>;
}

/// Longest forwarder node id kept (ZigBee's 8-byte addresses fit four times over).
const MAX_NODE_ID: usize = 32;
/// Topic ids one client may have registered (both ways), and the bytes of their names: a
/// REGISTER beyond gets CONGESTION, a message on a topic beyond is not sent to the client (and
/// counted). With `max_connections` clients, this bounds what topic tables can hold.
pub const MAX_TOPICS_PER_CLIENT: usize = 1024;
pub const MAX_TOPIC_BYTES_PER_CLIENT: usize = 64 * 1024;
/// Longest client id accepted (the specification says 23; longer ones are common enough).
const MAX_CLIENT_ID: usize = 64;
/// A datagram's largest UDP payload (IPv4).
const MAX_DATAGRAM: usize = 65507;
/// Recent message ids remembered per client, to answer resent PUBLISHes and SUBSCRIBEs.
const RECENT: usize = 4;

/// A client's address: the source of its datagrams and, behind a radio forwarder, its node
/// id in the forwarder's encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    forwarded: bool,
    node_len: u8,
    node: [u8; MAX_NODE_ID],
}

impl Peer {
    pub fn direct(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            forwarded: false,
            node_len: 0,
            node: [0; MAX_NODE_ID],
        }
    }

    /// A client behind a forwarder at `addr`; `None` for a node id longer than kept.
    pub fn forwarded(addr: SocketAddr, node_id: &[u8]) -> Option<Peer> {
        let mut node = [0; MAX_NODE_ID];
        node.get_mut(..node_id.len())?.copy_from_slice(node_id);
        Some(Peer {
            addr,
            forwarded: true,
            node_len: node_id.len() as u8,
            node,
        })
    }

    pub fn node_id(&self) -> Option<&[u8]> {
        self.forwarded.then(|| &self.node[..self.node_len as usize])
    }
}

/// Where a client is in its life (spec 6.14, figure 4, plus the CONNECT dialogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// CONNECT with the Will flag: WILLTOPICREQ sent, waiting for WILLTOPIC.
    WillTopic,
    /// WILLMSGREQ sent, waiting for WILLMSG.
    WillMsg,
    /// The CONNECT is with the broker; CONNACK comes through the output.
    Connecting,
    Active,
    Asleep,
    /// Woken by PINGREQ: its queued messages go out, then PINGRESP, then asleep again.
    Awake,
    /// No connection: kept only for a `clean session 0` client's topic ids and will.
    Disconnected,
}

/// A will as MQTT-SN gives it: WILLTOPIC's flags and topic, WILLMSG's payload.
#[derive(Debug, Clone, Default)]
struct Will {
    topic: Box<str>,
    msg: Box<[u8]>,
    qos: u8,
    retain: bool,
}

/// A client's topic ids: ids handed out by the gateway (to REGISTER, SUBSCRIBE, and its own
/// REGISTERs) are dense from 1, so an id is an index; names are found through a table of ids.
#[derive(Default)]
struct Topics {
    names: Vec<(Box<str>, Reg)>,
    by_name: hashbrown::HashTable<u16>,
    /// Bytes of the names held.
    bytes: usize,
}

/// What the client knows of a topic id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    /// It knows it (it asked for it, it got it in a SUBACK, or it acknowledged our REGISTER).
    Known,
    /// Our REGISTER is on its way.
    Sent,
    /// It refused our REGISTER: messages on this topic are not sent to it.
    Refused,
}

fn name_hash(name: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = crate::broker::fxhash::FxHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

impl Topics {
    fn id(&self, name: &str) -> Option<u16> {
        self.by_name
            .find(name_hash(name), |&id| {
                &*self.names[id as usize - 1].0 == name
            })
            .copied()
    }
    fn get(&self, id: u16) -> Option<(&str, Reg)> {
        let (n, r) = self.names.get((id as usize).checked_sub(1)?)?;
        (!n.is_empty()).then_some((n, *r))
    }
    /// The id of `name`, registered now if new (`None` when the table is full).
    fn add(&mut self, name: &str, reg: Reg) -> Option<u16> {
        if let Some(id) = self.id(name) {
            return Some(id);
        }
        if self.names.len() >= MAX_TOPICS_PER_CLIENT
            || self.bytes + name.len() > MAX_TOPIC_BYTES_PER_CLIENT
        {
            return None;
        }
        self.bytes += name.len();
        self.names.push((name.into(), reg));
        let id = self.names.len() as u16;
        let names = &self.names;
        self.by_name.insert_unique(name_hash(name), id, |&i| {
            name_hash(&names[i as usize - 1].0)
        });
        Some(id)
    }
    fn set(&mut self, id: u16, reg: Reg) {
        if let Some(e) = self.names.get_mut((id as usize).wrapping_sub(1)) {
            e.1 = reg;
        }
    }
    fn clear(&mut self) {
        self.names.clear();
        self.by_name.clear();
        self.bytes = 0;
    }
}

/// A small ring of (message id, value) pairs: the last few of a kind.
#[derive(Debug, Clone, Copy, Default)]
struct Recent<T: Copy + Default> {
    items: [(u16, T); RECENT],
    next: usize,
}

impl<T: Copy + Default> Recent<T> {
    fn push(&mut self, msg_id: u16, v: T) {
        self.items[self.next % RECENT] = (msg_id, v);
        self.next += 1;
    }
    fn get(&self, msg_id: u16) -> Option<T> {
        self.items[..self.next.min(RECENT)]
            .iter()
            .rev()
            .find(|(m, _)| *m == msg_id)
            .map(|(_, v)| *v)
    }
}

struct Client {
    peer: Peer,
    /// The forwarder's Ctrl byte, echoed on what goes back through it.
    ctrl: u8,
    client_id: Box<str>,
    state: State,
    conn: Option<ConnId>,
    clean: bool,
    /// Keep-alive from CONNECT.
    duration: u16,
    topics: Topics,
    will: Option<Will>,
    /// The will being given in the dialogue: WILLTOPIC's part.
    will_topic: Option<(Box<str>, u8, bool)>,
    /// Connected once already (a dialogue that only changes the will of a waking client).
    waking: bool,
    /// Our REGISTER waiting for REGACK (output stops behind it).
    register: Option<(u16, u16)>,
    /// Our PUBLISH QoS 1/2 or PUBREL waiting for its acknowledgement.
    inflight: Option<u16>,
    /// Sends so far of what `register`, `inflight` or the will dialogue waits on.
    tries: u32,
    /// When to send it again, and the generation of its timer entry.
    retry_at: Option<Instant>,
    /// The client's one live entry in the timer heap: its time, and the generation that
    /// tells it from an entry of an earlier client in the same slot.
    timer_at: Option<Instant>,
    timer_gen: u64,
    next_msg_id: u16,
    /// The topic id of recent QoS 1 publishes (for PUBACK) and which were acknowledged.
    pub_topics: Recent<u16>,
    acked: Recent<()>,
    /// SUBSCRIBEs waiting for the broker's SUBACK: the topic id the SUBACK reports.
    subs: Recent<u16>,
    /// The last SUBACK: (message id, flags, topic id, return code), for a resent SUBSCRIBE.
    last_suback: Option<(u16, u8, u16, u8)>,
}

impl Client {
    fn new(peer: Peer, ctrl: u8, client_id: &str) -> Client {
        Client {
            peer,
            ctrl,
            client_id: client_id.into(),
            state: State::Disconnected,
            conn: None,
            clean: true,
            duration: 0,
            topics: Topics::default(),
            will: None,
            will_topic: None,
            waking: false,
            register: None,
            inflight: None,
            tries: 0,
            retry_at: None,
            timer_at: None,
            timer_gen: 0,
            next_msg_id: 0,
            pub_topics: Recent::default(),
            acked: Recent::default(),
            subs: Recent::default(),
            last_suback: None,
        }
    }

    fn connected(&self) -> bool {
        matches!(self.state, State::Active | State::Asleep | State::Awake)
    }

    fn msg_id(&mut self) -> u16 {
        self.next_msg_id = self.next_msg_id.wrapping_add(1).max(1);
        self.next_msg_id
    }
}

/// One MQTT-SN listener's gateway.
pub struct Gateway {
    opts: Options,
    /// Its index among the config's listeners: its clients' connections are on it.
    listener: u16,
    predefined: FxHashMap<u16, Box<str>>,
    predefined_ids: FxHashMap<Box<str>, u16>,
    clients: Slab<Client>,
    by_peer: FxHashMap<Peer, usize>,
    by_conn: FxHashMap<ConnId, usize>,
    by_client_id: FxHashMap<Box<str>, usize>,
    per_source: FxHashMap<IpAddr, usize>,
    /// Disconnected records kept for `clean session 0` clients, oldest first: the first to go
    /// when a new client needs room.
    kept: VecDeque<usize>,
    /// Retransmission deadlines: (when, client, generation).
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Generations of client records, for their timer entries.
    next_gen: u64,
    next_advertise: Option<Instant>,
    /// An MQTT packet for the broker, and a datagram for a client: reused buffers.
    frame: Vec<u8>,
    dgram: Vec<u8>,
    /// Counters since the last merge into the broker's, and the gauges as last merged.
    stats: Stats,
    merged_gauges: (u64, u64),
    connected: u64,
    asleep: u64,
}

/// How a frame of the client's output was dealt with.
enum Out {
    /// Sent (or dropped); go on.
    Done,
    /// Sent a REGISTER, or one is pending: stop here until REGACK.
    Stall,
    /// Dropped a QoS 1/2 PUBLISH that cannot be sent: acknowledge it to the broker so its
    /// in-flight window moves on (QoS, packet id).
    DropAck(u8, u16),
}

impl Gateway {
    pub fn new(opts: Options, listener: u16, now: Instant) -> Gateway {
        let predefined = opts
            .topics
            .iter()
            .map(|(id, n)| (*id, n.as_str().into()))
            .collect();
        let predefined_ids = opts
            .topics
            .iter()
            .map(|(id, n)| (n.as_str().into(), *id))
            .collect();
        let next_advertise = opts.advertise.map(|_| now);
        Gateway {
            opts,
            listener,
            predefined,
            predefined_ids,
            clients: Slab::new(),
            by_peer: FxHashMap::default(),
            by_conn: FxHashMap::default(),
            by_client_id: FxHashMap::default(),
            per_source: FxHashMap::default(),
            kept: VecDeque::new(),
            timers: BinaryHeap::new(),
            next_gen: 0,
            next_advertise,
            frame: Vec::with_capacity(256),
            dgram: Vec::with_capacity(256),
            stats: Stats::default(),
            merged_gauges: (0, 0),
            connected: 0,
            asleep: 0,
        }
    }

    /// A reload: new options (predefined topics, intervals, limits) for the clients kept.
    pub fn reconfigure(&mut self, opts: Options, listener: u16, now: Instant) {
        self.predefined = opts
            .topics
            .iter()
            .map(|(id, n)| (*id, n.as_str().into()))
            .collect();
        self.predefined_ids = opts
            .topics
            .iter()
            .map(|(id, n)| (n.as_str().into(), *id))
            .collect();
        if opts.advertise != self.opts.advertise {
            self.next_advertise = opts.advertise.map(|_| now);
        }
        self.opts = opts;
        self.listener = listener;
    }

    /// When [`Gateway::handle_timeout`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|Reverse((t, _, _))| *t);
        match (t, self.next_advertise) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Add this gateway's counters into the broker's.
    fn merge(&mut self, b: &mut Broker) {
        let s = std::mem::take(&mut self.stats);
        let (was_c, was_a) = self.merged_gauges;
        let t = b.mqttsn_stats_mut();
        t.clients_connected = (t.clients_connected + self.connected).saturating_sub(was_c);
        t.clients_asleep = (t.clients_asleep + self.asleep).saturating_sub(was_a);
        self.merged_gauges = (self.connected, self.asleep);
        t.datagrams_received += s.datagrams_received;
        t.datagrams_sent += s.datagrams_sent;
        t.bytes_received += s.bytes_received;
        t.bytes_sent += s.bytes_sent;
        t.malformed += s.malformed;
        t.not_connected += s.not_connected;
        t.unexpected += s.unexpected;
        t.refused_limit += s.refused_limit;
        t.paused += s.paused;
        t.send_failed += s.send_failed;
        t.qos_minus1 += s.qos_minus1;
        t.qos_minus1_dropped += s.qos_minus1_dropped;
        t.retransmissions += s.retransmissions;
        t.lost += s.lost;
        t.duplicates += s.duplicates;
        t.dropped += s.dropped;
    }

    /// Send `m` to `peer` (through its forwarder, if it has one).
    fn send_to<H: Host>(&mut self, host: &mut H, peer: &Peer, ctrl: u8, m: &Message<'_>) {
        send(&mut self.dgram, &mut self.stats, host, peer, ctrl, m);
    }

    fn send_client<H: Host>(&mut self, host: &mut H, idx: usize, m: &Message<'_>) {
        let c = &self.clients[idx];
        send(&mut self.dgram, &mut self.stats, host, &c.peer, c.ctrl, m);
    }

    /// One datagram from `from`.
    pub fn datagram<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += data.len() as u64;
        self.handle_datagram(b, host, from, data, now);
        self.merge(b);
    }

    fn handle_datagram<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) {
        let d = match wire::decode(data) {
            Ok(d) => d,
            Err(e) => {
                self.stats.malformed += 1;
                let n = b.mqttsn_stats().map_or(0, |s| s.malformed) + self.stats.malformed;
                if n.is_power_of_two() {
                    // Rate-limited: a source sending garbage does not become a log flood.
                    log::warn!("MQTT-SN: malformed datagram from {from} dropped ({e}); {n} so far");
                }
                return;
            }
        };
        let (peer, ctrl) = match d.encapsulation {
            None => (Peer::direct(from), 0),
            Some(e) => match Peer::forwarded(from, e.node_id) {
                Some(p) => (p, e.ctrl),
                None => {
                    self.stats.malformed += 1;
                    return;
                }
            },
        };
        match d.message {
            Message::SearchGw { .. } => {
                // Answered to the one who asked (spec 6.1): never a broadcast.
                let m = Message::GwInfo {
                    gw_id: self.opts.gateway_id,
                    address: &[],
                };
                self.send_to(host, &peer, ctrl, &m);
            }
            Message::Connect {
                flags,
                protocol_id,
                duration,
                client_id,
            } => self.connect(
                b,
                host,
                peer,
                ctrl,
                flags,
                protocol_id,
                duration,
                client_id,
                now,
            ),
            Message::Publish {
                flags,
                topic_id,
                data,
                ..
            } if flags.qos() == -1 => self.publish_minus1(b, flags, topic_id, data, now),
            Message::Advertise { .. } | Message::GwInfo { .. } => {
                // Another gateway's, or a client answering SEARCHGW for one: not for us.
            }
            m => match self
                .by_peer
                .get(&peer)
                .copied()
                .or_else(|| self.woken(b, peer, &m))
            {
                Some(idx) => {
                    self.clients[idx].ctrl = ctrl;
                    self.client_message(b, host, idx, m, now)
                }
                None => {
                    self.stats.not_connected += 1;
                    // Spec 5.4.21: a gateway that cannot map a message to a client says so
                    // with DISCONNECT. Not to what a client only receives (no ping-pong
                    // with another gateway), nor to a DISCONNECT.
                    if client_sends(m.kind()) && m.kind() != kind::DISCONNECT {
                        self.send_to(host, &peer, ctrl, &Message::Disconnect { duration: None });
                    }
                }
            },
        }
    }

    /// A PINGREQ naming a sleeping client from an address that is not its own: the client
    /// woke with a new source port (or a new forwarder) and is identified by its client id, as
    /// spec 6.14 has it; its record moves to the new address. `None` for anything else.
    fn woken(&mut self, b: &mut Broker, peer: Peer, m: &Message<'_>) -> Option<usize> {
        let Message::PingReq { client_id } = m else {
            return None;
        };
        let idx = self.asleep_elsewhere(std::str::from_utf8(client_id).ok()?)?;
        self.wake_at(b, idx, peer);
        Some(idx)
    }

    /// The record of client `client_id` if it is asleep or awake (it cannot answer at the
    /// address it had while it sleeps, so a wake-up from another one is its own).
    fn asleep_elsewhere(&self, client_id: &str) -> Option<usize> {
        let idx = *self.by_client_id.get(client_id)?;
        matches!(self.clients[idx].state, State::Asleep | State::Awake).then_some(idx)
    }

    /// Client `idx` is at `peer` from now on (the broker's view of its address too).
    fn wake_at(&mut self, b: &mut Broker, idx: usize, peer: Peer) {
        log::debug!(
            "MQTT-SN client {} woke up at {} (asleep at {})",
            self.clients[idx].client_id,
            peer.addr,
            self.clients[idx].peer.addr
        );
        self.move_peer(idx, peer);
        if let Some(conn) = self.clients[idx].conn {
            b.set_peer(conn, peer.addr);
        }
    }

    /// QoS -1: a PUBLISH from anyone, connected or not, to a predefined or short topic.
    fn publish_minus1(
        &mut self,
        b: &mut Broker,
        flags: Flags,
        topic_id: u16,
        data: &[u8],
        now: Instant,
    ) {
        let short;
        let name: &str = match flags.topic_type() {
            topic_type::PREDEFINED => match self.predefined.get(&topic_id) {
                Some(n) => n,
                None => {
                    self.stats.qos_minus1_dropped += 1;
                    return;
                }
            },
            topic_type::SHORT => {
                short = topic_id.to_be_bytes();
                match std::str::from_utf8(&short) {
                    Ok(n) => n,
                    Err(_) => {
                        self.stats.qos_minus1_dropped += 1;
                        return;
                    }
                }
            }
            _ => {
                // A normal topic id means nothing without a connection.
                self.stats.qos_minus1_dropped += 1;
                return;
            }
        };
        match b.publish_unconnected(self.listener, name, data, flags.retain(), now) {
            Ok(()) => self.stats.qos_minus1 += 1,
            Err(why) => {
                self.stats.qos_minus1_dropped += 1;
                log::debug!("MQTT-SN: QoS -1 publish to {name} dropped: {why:?}");
            }
        }
    }

    /// CONNECT: a new connection, a reconnect, or a sleeping client becoming active.
    #[allow(clippy::too_many_arguments)]
    fn connect<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        peer: Peer,
        ctrl: u8,
        flags: Flags,
        protocol_id: u8,
        duration: u16,
        client_id: &[u8],
        now: Instant,
    ) {
        let refuse = |g: &mut Gateway, host: &mut H, code: u8| {
            g.send_to(host, &peer, ctrl, &Message::ConnAck { rc: code });
        };
        let client_id = match std::str::from_utf8(client_id) {
            Ok(id) if protocol_id == wire::PROTOCOL_ID && !id.is_empty() => id,
            _ => return refuse(self, host, rc::NOT_SUPPORTED),
        };
        if client_id.len() > MAX_CLIENT_ID || client_id.contains('\0') {
            return refuse(self, host, rc::NOT_SUPPORTED);
        }
        if let Some(idx) = self.by_peer.get(&peer).copied() {
            let c = &self.clients[idx];
            let same = &*c.client_id == client_id;
            if same && matches!(c.state, State::Asleep | State::Awake) {
                self.clients[idx].ctrl = ctrl;
                return self.wake_by_connect(b, host, idx, flags, duration, now);
            }
            if let Some(conn) = c.conn {
                // A reconnect from the same address: the old connection ends here. Its will
                // is not sent when it is the same client (a CONNECT sent again because its
                // CONNACK was lost must not announce its death).
                let will = !same;
                log::info!("MQTT-SN client {} reconnects from {}", client_id, peer.addr);
                self.detach(idx);
                b.end(conn, "reconnected", will, now);
            }
            if !same {
                self.remove(idx);
            }
        }
        if !self.by_peer.contains_key(&peer) {
            // A sleeping client back from another address: it wakes, its session as it was.
            if let Some(idx) = self.asleep_elsewhere(client_id) {
                self.wake_at(b, idx, peer);
                self.clients[idx].ctrl = ctrl;
                return self.wake_by_connect(b, host, idx, flags, duration, now);
            }
        }
        // The record: this address's, this client id's (kept from an earlier connection, or
        // connected elsewhere: the broker takes that session over), or a new one.
        let idx = match self.by_peer.get(&peer).copied() {
            Some(idx) => idx,
            None => {
                let elsewhere = self.by_client_id.get(client_id).copied();
                match elsewhere {
                    Some(o) if self.clients[o].state == State::Disconnected => {
                        self.move_peer(o, peer);
                        o
                    }
                    _ => {
                        let Some(idx) = self.new_client(peer, ctrl, client_id) else {
                            self.stats.refused_limit += 1;
                            let n = b.mqttsn_stats().map_or(0, |s| s.refused_limit)
                                + self.stats.refused_limit;
                            if n.is_power_of_two() {
                                log::warn!(
                                    "MQTT-SN: client {client_id} from {} refused: too many clients (listener or source limit); {n} so far",
                                    peer.addr
                                );
                            }
                            return refuse(self, host, rc::CONGESTION);
                        };
                        if let Some(o) = elsewhere {
                            // Its topic ids go with it when its session does.
                            if !flags.clean_session() {
                                self.clients[idx].topics =
                                    std::mem::take(&mut self.clients[o].topics);
                                self.clients[idx].will = self.clients[o].will.take();
                            }
                        }
                        self.by_client_id.insert(client_id.into(), idx);
                        idx
                    }
                }
            }
        };
        self.unkeep(idx);
        let c = &mut self.clients[idx];
        c.ctrl = ctrl;
        c.clean = flags.clean_session();
        c.duration = duration;
        c.waking = false;
        c.register = None;
        c.inflight = None;
        c.retry_at = None;
        c.last_suback = None;
        if c.clean {
            // Spec 6.3: a clean session deletes the subscriptions, the topic ids and the will.
            c.topics.clear();
            c.will = None;
        }
        if flags.will() {
            self.will_dialogue(host, idx, now);
        } else {
            self.open_connection(b, host, idx, now);
        }
    }

    /// A CONNECT from a client asleep or awake: back to active (spec 6.14); the session goes
    /// on as it is. With the Will flag, the will is asked for again first.
    fn wake_by_connect<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        flags: Flags,
        duration: u16,
        now: Instant,
    ) {
        let c = &mut self.clients[idx];
        c.duration = duration;
        if flags.will() {
            c.waking = true;
            return self.will_dialogue(host, idx, now);
        }
        self.activate(b, host, idx, now);
    }

    /// A waking client is active again: keep-alive from its CONNECT, output resumed, CONNACK.
    fn activate<H: Host>(&mut self, b: &mut Broker, host: &mut H, idx: usize, now: Instant) {
        let Some(conn) = self.clients[idx].conn else {
            return;
        };
        self.set_state(idx, State::Active);
        let c = &mut self.clients[idx];
        c.waking = false;
        b.set_keep_alive(conn, c.duration, now);
        self.send_client(host, idx, &Message::ConnAck { rc: rc::ACCEPTED });
        b.set_asleep(conn, false);
        self.resume_pending(b, host, idx, conn, now);
    }

    /// A client back from sleep: what waited for its acknowledgement when it fell asleep (a
    /// REGISTER, a PUBLISH or PUBREL in flight) goes again, its retransmission timer armed.
    fn resume_pending<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        now: Instant,
    ) {
        let c = &self.clients[idx];
        if c.register.is_some() {
            self.register_again(host, idx);
            self.arm(idx, now);
        } else if c.inflight.is_some() {
            b.retransmit(conn, now);
            self.arm(idx, now);
        }
    }

    fn will_dialogue<H: Host>(&mut self, host: &mut H, idx: usize, now: Instant) {
        let c = &mut self.clients[idx];
        c.will_topic = None;
        c.tries = 1;
        if !c.connected() {
            c.state = State::WillTopic;
        }
        self.send_client(host, idx, &Message::WillTopicReq);
        self.arm(idx, now);
    }

    /// The CONNECT (with its will) goes to the broker as an MQTT 3.1.1 CONNECT.
    fn open_connection<H: Host>(&mut self, b: &mut Broker, host: &mut H, idx: usize, now: Instant) {
        let Some(conn) = host.open_slot() else {
            self.stats.refused_limit += 1;
            self.send_client(host, idx, &Message::ConnAck { rc: rc::CONGESTION });
            return self.forget(idx);
        };
        let c = &mut self.clients[idx];
        c.state = State::Connecting;
        c.conn = Some(conn);
        c.retry_at = None;
        self.by_conn.insert(conn, idx);
        let c = &self.clients[idx];
        b.open_gateway_client(conn, Some(c.peer.addr), self.listener as usize, now);
        self.frame.clear();
        let will = c
            .will
            .as_ref()
            .map(|w| (&*w.topic, &*w.msg, w.qos, w.retain));
        encode_connect(
            &mut self.frame,
            &ConnectOut {
                level: mqtt::LEVEL_311,
                clean_start: c.clean,
                keep_alive: c.duration,
                client_id: &c.client_id,
                will,
                username: None,
                password: None,
                session_expiry: 0,
                receive_max: u16::MAX,
                max_packet: 0,
            },
        );
        to_broker(b, conn, &self.frame, now);
    }

    /// A datagram from a known client.
    fn client_message<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        m: Message<'_>,
        now: Instant,
    ) {
        let state = self.clients[idx].state;
        let conn = self.clients[idx].conn;
        if let Some(conn) = conn.filter(|_| self.clients[idx].connected()) {
            if matches!(m, Message::Publish { .. }) && b.publishes_paused(conn) {
                // Its publishes wait for a subscriber's queue (or for the journal): dropped,
                // as an unread TCP socket would hold them; it sends QoS 1/2 ones again.
                // Acknowledgements and the rest are read: they hold nothing up.
                self.stats.paused += 1;
                return;
            }
            b.touch(conn, now);
        }
        match (m, state) {
            (Message::WillTopic { flags, topic }, State::WillTopic) => {
                if topic.is_empty() {
                    // An empty WILLTOPIC: no will after all.
                    self.clients[idx].will = None;
                    return self.dialogue_done(b, host, idx, now);
                }
                let Some(t) = std::str::from_utf8(topic)
                    .ok()
                    .filter(|t| topic::valid_name(t))
                else {
                    self.send_client(
                        host,
                        idx,
                        &Message::ConnAck {
                            rc: rc::NOT_SUPPORTED,
                        },
                    );
                    return self.forget(idx);
                };
                let qos = flags.qos().clamp(0, 2) as u8;
                let c = &mut self.clients[idx];
                c.will_topic = Some((t.into(), qos, flags.retain()));
                c.state = State::WillMsg;
                c.tries = 1;
                self.send_client(host, idx, &Message::WillMsgReq);
                self.arm(idx, now);
            }
            (Message::WillTopic { flags, topic }, _) if self.clients[idx].waking => {
                // The waking client's dialogue (it stays connected meanwhile).
                if topic.is_empty() {
                    self.clients[idx].will = None;
                    if let Some(conn) = conn {
                        b.set_will(conn, None);
                    }
                    return self.activate(b, host, idx, now);
                }
                if let Some(t) = std::str::from_utf8(topic)
                    .ok()
                    .filter(|t| topic::valid_name(t))
                {
                    let qos = flags.qos().clamp(0, 2) as u8;
                    self.clients[idx].will_topic = Some((t.into(), qos, flags.retain()));
                    self.clients[idx].tries = 1;
                    self.send_client(host, idx, &Message::WillMsgReq);
                    self.arm(idx, now);
                }
            }
            (Message::WillTopic { .. }, State::WillMsg) => {
                // Sent again: our WILLMSGREQ was lost.
                self.send_client(host, idx, &Message::WillMsgReq);
            }
            (Message::WillMsg { msg }, _)
                if state == State::WillMsg
                    || (self.clients[idx].waking && self.clients[idx].will_topic.is_some()) =>
            {
                let c = &mut self.clients[idx];
                if let Some((topic, qos, retain)) = c.will_topic.take() {
                    c.will = Some(Will {
                        topic,
                        msg: msg.into(),
                        qos,
                        retain,
                    });
                }
                self.dialogue_done(b, host, idx, now);
            }
            (Message::WillMsg { .. }, State::Connecting) => {
                // Sent again while the broker answers: CONNACK comes.
            }
            (_, State::WillTopic | State::WillMsg | State::Connecting | State::Disconnected) => {
                self.stats.unexpected += 1;
                if state == State::Disconnected && client_sends(m.kind()) {
                    self.send_client(host, idx, &Message::Disconnect { duration: None });
                }
            }
            (m, _) => {
                let Some(conn) = conn else { return };
                self.session_message(b, host, idx, conn, m, now)
            }
        }
    }

    /// The will dialogue is complete: connect, or (waking) update the will and go active.
    fn dialogue_done<H: Host>(&mut self, b: &mut Broker, host: &mut H, idx: usize, now: Instant) {
        let c = &mut self.clients[idx];
        c.retry_at = None;
        if c.waking {
            if let Some(conn) = c.conn {
                let will = c
                    .will
                    .as_ref()
                    .map(|w| (&*w.topic, &*w.msg, w.qos, w.retain));
                b.set_will(conn, will);
            }
            return self.activate(b, host, idx, now);
        }
        self.open_connection(b, host, idx, now);
    }

    /// A message of a connected client's session.
    fn session_message<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        m: Message<'_>,
        now: Instant,
    ) {
        match m {
            Message::Publish {
                flags,
                topic_id,
                msg_id,
                data,
            } => self.publish(b, host, idx, conn, flags, topic_id, msg_id, data, now),
            Message::PubAck {
                topic_id,
                msg_id,
                rc: code,
            } => {
                let c = &mut self.clients[idx];
                match code {
                    rc::ACCEPTED => {
                        if c.inflight == Some(msg_id) {
                            c.inflight = None;
                            c.retry_at = None;
                        }
                        if c.state == State::Awake {
                            // Maybe the last thing it was woken for: PINGRESP follows.
                            b.mark_writable(conn);
                        }
                        ack_to_broker(b, &mut self.frame, conn, mqtt::kind::PUBACK, msg_id, now);
                    }
                    rc::INVALID_TOPIC_ID => {
                        // It does not know the id (its registration was lost): forget it, so
                        // the message sent again registers it first (within the retries).
                        forget_topic(&mut c.topics, topic_id);
                        if c.inflight == Some(msg_id) {
                            c.inflight = None;
                            b.retransmit(conn, now);
                        }
                    }
                    _ => {
                        // Congestion: the retransmission timer sends it again later.
                    }
                }
            }
            Message::PubRec { msg_id } => {
                let c = &mut self.clients[idx];
                if c.inflight == Some(msg_id) {
                    // The PUBREL the broker answers with is the next thing in flight.
                    c.inflight = None;
                    c.retry_at = None;
                }
                ack_to_broker(b, &mut self.frame, conn, mqtt::kind::PUBREC, msg_id, now);
            }
            Message::PubRel { msg_id } => {
                ack_to_broker(b, &mut self.frame, conn, mqtt::kind::PUBREL, msg_id, now)
            }
            Message::PubComp { msg_id } => {
                let c = &mut self.clients[idx];
                if c.inflight == Some(msg_id) {
                    c.inflight = None;
                    c.retry_at = None;
                }
                if c.state == State::Awake {
                    b.mark_writable(conn);
                }
                ack_to_broker(b, &mut self.frame, conn, mqtt::kind::PUBCOMP, msg_id, now);
            }
            Message::Subscribe {
                flags,
                msg_id,
                topic: t,
            } => self.subscribe(b, host, idx, conn, flags, msg_id, t, now),
            Message::Unsubscribe {
                msg_id, topic: t, ..
            } => {
                let short;
                let filter: &str = match t {
                    TopicRef::Name(n) => match std::str::from_utf8(n) {
                        Ok(n) => n,
                        Err(_) => return self.stats.unexpected += 1,
                    },
                    TopicRef::Predefined(id) => match self.predefined.get(&id) {
                        Some(n) => n,
                        None => {
                            // Nothing to unsubscribe from: done.
                            return self.send_client(host, idx, &Message::UnsubAck { msg_id });
                        }
                    },
                    TopicRef::Short(s) => {
                        short = s;
                        match std::str::from_utf8(&short) {
                            Ok(n) => n,
                            Err(_) => return self.stats.unexpected += 1,
                        }
                    }
                };
                self.frame.clear();
                encode_unsubscribe(&mut self.frame, msg_id, filter);
                to_broker(b, conn, &self.frame, now);
            }
            Message::Register { msg_id, topic, .. } => {
                let max = b.config().max_topic_length;
                let name = std::str::from_utf8(topic)
                    .ok()
                    .filter(|t| topic::valid_name(t) && t.len() <= max);
                let answer = match name {
                    None => (0, rc::NOT_SUPPORTED),
                    Some(n) => match self.clients[idx].topics.add(n, Reg::Known) {
                        Some(id) => {
                            self.clients[idx].topics.set(id, Reg::Known);
                            (id, rc::ACCEPTED)
                        }
                        None => (0, rc::CONGESTION),
                    },
                };
                let m = Message::RegAck {
                    topic_id: answer.0,
                    msg_id,
                    rc: answer.1,
                };
                self.send_client(host, idx, &m);
            }
            Message::RegAck {
                topic_id,
                msg_id,
                rc: code,
            } => {
                let c = &mut self.clients[idx];
                if c.register.is_some_and(|(_, m)| m == msg_id) {
                    c.register = None;
                    c.retry_at = None;
                    let reg = if code == rc::ACCEPTED {
                        Reg::Known
                    } else {
                        Reg::Refused
                    };
                    c.topics.set(topic_id, reg);
                    // What waited behind the REGISTER goes on.
                    b.mark_writable(conn);
                }
            }
            Message::PingReq { .. } => match self.clients[idx].state {
                State::Asleep => {
                    // Awake: what was kept for it goes out, then PINGRESP (see `flush`).
                    self.set_state(idx, State::Awake);
                    b.set_asleep(conn, false);
                    self.resume_pending(b, host, idx, conn, now);
                    b.mark_writable(conn);
                }
                State::Awake => b.mark_writable(conn),
                _ => {
                    self.frame.clear();
                    crate::wire::client::encode_pingreq(&mut self.frame);
                    to_broker(b, conn, &self.frame, now);
                }
            },
            Message::Disconnect { duration } => match duration {
                Some(d) if d > 0 => {
                    // Asleep for `d` seconds (spec 6.14): its messages are kept; a client not
                    // heard from in 1.5 times that is lost and its will published.
                    self.set_state(idx, State::Asleep);
                    let c = &mut self.clients[idx];
                    c.retry_at = None;
                    b.set_asleep(conn, true);
                    b.set_keep_alive(conn, d, now);
                    self.send_client(host, idx, &Message::Disconnect { duration: None });
                    log::debug!(
                        "MQTT-SN client {} asleep for {d} s",
                        self.clients[idx].client_id
                    );
                }
                _ => {
                    self.set_state(idx, State::Disconnected);
                    self.frame.clear();
                    crate::wire::client::encode_disconnect(&mut self.frame);
                    to_broker(b, conn, &self.frame, now);
                    self.send_client(host, idx, &Message::Disconnect { duration: None });
                }
            },
            Message::WillTopicUpd { flags, topic } => {
                let code = if topic.is_empty() {
                    self.clients[idx].will = None;
                    b.set_will(conn, None);
                    rc::ACCEPTED
                } else {
                    match std::str::from_utf8(topic) {
                        Ok(t) => {
                            let c = &mut self.clients[idx];
                            let msg = c.will.as_ref().map_or(Box::default(), |w| w.msg.clone());
                            let w = Will {
                                topic: t.into(),
                                msg,
                                qos: flags.qos().clamp(0, 2) as u8,
                                retain: flags.retain(),
                            };
                            let ok = b.set_will(conn, Some((&w.topic, &w.msg, w.qos, w.retain)));
                            if ok {
                                c.will = Some(w);
                            }
                            if ok {
                                rc::ACCEPTED
                            } else {
                                rc::NOT_SUPPORTED
                            }
                        }
                        Err(_) => rc::NOT_SUPPORTED,
                    }
                };
                self.send_client(host, idx, &Message::WillTopicResp { rc: code });
            }
            Message::WillMsgUpd { msg } => {
                let c = &mut self.clients[idx];
                let code = match c.will.as_mut() {
                    Some(w) => {
                        w.msg = msg.into();
                        match b.set_will(conn, Some((&w.topic, &w.msg, w.qos, w.retain))) {
                            true => rc::ACCEPTED,
                            false => rc::NOT_SUPPORTED,
                        }
                    }
                    None => rc::NOT_SUPPORTED,
                };
                self.send_client(host, idx, &Message::WillMsgResp { rc: code });
            }
            _ => self.stats.unexpected += 1,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        data: &[u8],
        now: Instant,
    ) {
        let qos = flags.qos().max(0) as u8;
        let Gateway {
            clients,
            predefined,
            frame,
            dgram,
            stats,
            ..
        } = self;
        let c = &mut clients[idx];
        let (peer, ctrl) = (c.peer, c.ctrl);
        if qos == 1 && flags.dup() && c.acked.get(msg_id).is_some() {
            // Sent again because our PUBACK was lost: answer it, do not route it twice.
            stats.duplicates += 1;
            let m = Message::PubAck {
                topic_id,
                msg_id,
                rc: rc::ACCEPTED,
            };
            return send(dgram, stats, host, &peer, ctrl, &m);
        }
        if qos == 1 {
            c.pub_topics.push(msg_id, topic_id);
        }
        let short;
        let name: Option<&str> = match flags.topic_type() {
            topic_type::NORMAL => c.topics.get(topic_id).map(|(n, _)| n),
            topic_type::PREDEFINED => predefined.get(&topic_id).map(|n| &**n),
            topic_type::SHORT => {
                short = topic_id.to_be_bytes();
                std::str::from_utf8(&short).ok()
            }
            _ => None,
        };
        let Some(name) = name else {
            let m = Message::PubAck {
                topic_id,
                msg_id,
                rc: rc::INVALID_TOPIC_ID,
            };
            return send(dgram, stats, host, &peer, ctrl, &m);
        };
        frame.clear();
        mqtt::encode_publish_header(
            frame,
            name.as_bytes(),
            qos,
            flags.retain(),
            flags.dup(),
            msg_id,
            data.len(),
        );
        frame.extend_from_slice(data);
        to_broker(b, conn, frame, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        flags: Flags,
        msg_id: u16,
        t: TopicRef<'_>,
        now: Instant,
    ) {
        let c = &self.clients[idx];
        if let Some((m, f, id, code)) = c.last_suback.filter(|l| flags.dup() && l.0 == msg_id) {
            // Sent again because our SUBACK was lost.
            self.stats.duplicates += 1;
            let m = Message::SubAck {
                flags: Flags(f),
                topic_id: id,
                msg_id: m,
                rc: code,
            };
            return self.send_client(host, idx, &m);
        }
        let qos = flags.qos().clamp(0, 2) as u8;
        // The filter, and the topic id its SUBACK reports.
        let topic_id = match t {
            TopicRef::Name(n) => match std::str::from_utf8(n) {
                // A name without wildcards gets its topic id now: the SUBACK tells it, and
                // PUBLISHes on it need no REGISTER.
                Ok(f) if !f.contains(['+', '#']) && topic::valid_name(f) => {
                    let id = self.clients[idx].topics.add(f, Reg::Known).unwrap_or(0);
                    if id != 0 {
                        self.clients[idx].topics.set(id, Reg::Known);
                    }
                    Some(id)
                }
                Ok(_) => Some(0),
                Err(_) => None,
            },
            TopicRef::Predefined(id) => {
                if !self.predefined.contains_key(&id) {
                    let m = Message::SubAck {
                        flags: Flags::new(qos as i8, false, false, 0),
                        topic_id: id,
                        msg_id,
                        rc: rc::INVALID_TOPIC_ID,
                    };
                    return self.send_client(host, idx, &m);
                }
                Some(id)
            }
            TopicRef::Short(s) => std::str::from_utf8(&s).ok().map(|_| 0),
        };
        let Some(topic_id) = topic_id else {
            let m = Message::SubAck {
                flags: Flags::new(qos as i8, false, false, 0),
                topic_id: 0,
                msg_id,
                rc: rc::NOT_SUPPORTED,
            };
            return self.send_client(host, idx, &m);
        };
        self.clients[idx].subs.push(msg_id, topic_id);
        let Gateway {
            predefined, frame, ..
        } = self;
        let short;
        let filter: &str = match t {
            TopicRef::Name(n) => std::str::from_utf8(n).unwrap_or(""),
            TopicRef::Predefined(id) => predefined.get(&id).map_or("", |n| n),
            TopicRef::Short(s) => {
                short = s;
                std::str::from_utf8(&short).unwrap_or("")
            }
        };
        frame.clear();
        encode_subscribe(frame, msg_id, filter, qos, false);
        to_broker(b, conn, frame, now);
    }

    /// Translate the broker's output for connection `conn` into datagrams. Called at the end
    /// of each loop turn for connections with output (and after an acknowledgement lets more
    /// go). Stops at a PUBLISH whose topic needs a REGISTER first.
    pub fn flush<H: Host>(&mut self, b: &mut Broker, host: &mut H, conn: ConnId, now: Instant) {
        let Some(idx) = self.by_conn.get(&conn).copied() else {
            // Not (or no longer) a client of ours: nothing to translate it for.
            let n = b.output(conn).len();
            b.consume_output(conn, n);
            return;
        };
        for _ in 0..64 {
            let out = b.output(conn);
            if out.is_empty() {
                break;
            }
            let mut used = 0;
            let mut stalled = false;
            let mut drop_ack = None;
            while used < out.len() {
                let rest = &out[used..];
                let Ok(Some(f)) = frame_len(rest, usize::MAX) else {
                    break;
                };
                if f.total_len > rest.len() {
                    break;
                }
                match self.translate(host, idx, &rest[..f.total_len], f.header_len, now) {
                    Out::Done => used += f.total_len,
                    Out::Stall => {
                        stalled = true;
                        break;
                    }
                    Out::DropAck(q, id) => {
                        used += f.total_len;
                        drop_ack = Some((q, id));
                        break;
                    }
                }
            }
            b.consume_output(conn, used);
            if let Some((qos, id)) = drop_ack {
                // The broker's window moves on as if it had been acknowledged.
                let k = if qos == 1 {
                    mqtt::kind::PUBACK
                } else {
                    mqtt::kind::PUBREC
                };
                ack_to_broker(b, &mut self.frame, conn, k, id, now);
                if qos == 2 {
                    ack_to_broker(b, &mut self.frame, conn, mqtt::kind::PUBCOMP, id, now);
                }
                if let Some(c) = self.clients.get_mut(idx) {
                    if c.inflight == Some(id) {
                        c.inflight = None;
                    }
                }
                continue;
            }
            if stalled || used == 0 {
                break;
            }
        }
        // Awake: once everything kept for it is out and acknowledged, PINGRESP and back to
        // sleep (spec 6.14).
        let c = &self.clients[idx];
        if c.state == State::Awake
            && c.register.is_none()
            && c.inflight.is_none()
            && b.output(conn).is_empty()
            && b.held_for(conn) == (0, 0)
        {
            self.send_client(host, idx, &Message::PingResp);
            self.set_state(idx, State::Asleep);
            b.set_asleep(conn, true);
            b.touch(conn, now);
        }
        self.merge(b);
    }

    /// One MQTT packet of a client's output, as MQTT-SN.
    fn translate<H: Host>(
        &mut self,
        host: &mut H,
        idx: usize,
        frame: &[u8],
        header_len: usize,
        now: Instant,
    ) -> Out {
        let packet_type = frame[0] >> 4;
        match packet_type {
            mqtt::kind::PUBLISH => {
                let Ok(Packet::Publish(p)) = Packet::decode(frame, header_len, mqtt::LEVEL_311)
                else {
                    return Out::Done;
                };
                self.deliver(host, idx, &p, now)
            }
            mqtt::kind::CONNACK => {
                if let Ok(Some(mqtt::client::ServerPacket::ConnAck { code, .. })) =
                    decode_server(frame, header_len, false)
                {
                    let accepted = code == 0;
                    let m = Message::ConnAck {
                        rc: if accepted {
                            rc::ACCEPTED
                        } else {
                            rc::NOT_SUPPORTED
                        },
                    };
                    self.send_client(host, idx, &m);
                    if accepted && self.clients[idx].state == State::Connecting {
                        self.set_state(idx, State::Active);
                        let c = &self.clients[idx];
                        log::info!(
                            "MQTT-SN client {} connected from {}{}",
                            c.client_id,
                            c.peer.addr,
                            if c.peer.forwarded { " (forwarded)" } else { "" }
                        );
                    }
                }
                Out::Done
            }
            mqtt::kind::PUBACK | mqtt::kind::PUBREC | mqtt::kind::PUBREL | mqtt::kind::PUBCOMP => {
                let msg_id = match frame.get(header_len..header_len + 2) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                    _ => return Out::Done,
                };
                let c = &mut self.clients[idx];
                let m = match packet_type {
                    mqtt::kind::PUBACK => {
                        c.acked.push(msg_id, ());
                        Message::PubAck {
                            topic_id: c.pub_topics.get(msg_id).unwrap_or(0),
                            msg_id,
                            rc: rc::ACCEPTED,
                        }
                    }
                    mqtt::kind::PUBREC => Message::PubRec { msg_id },
                    mqtt::kind::PUBCOMP => Message::PubComp { msg_id },
                    _ => {
                        // Our PUBREL, after the client's PUBREC: in flight until PUBCOMP.
                        if c.inflight != Some(msg_id) {
                            c.tries = 1;
                        }
                        c.inflight = Some(msg_id);
                        self.arm(idx, now);
                        Message::PubRel { msg_id }
                    }
                };
                self.send_client(host, idx, &m);
                Out::Done
            }
            mqtt::kind::SUBACK => {
                if let Ok(Some(mqtt::client::ServerPacket::SubAck { packet_id, codes })) =
                    decode_server(frame, header_len, false)
                {
                    let c = &mut self.clients[idx];
                    let code = codes.first().copied().unwrap_or(0x80);
                    let topic_id = c.subs.get(packet_id).unwrap_or(0);
                    let (flags, r) = match code {
                        0..=2 => (Flags::new(code as i8, false, false, 0), rc::ACCEPTED),
                        _ => (Flags(0), rc::NOT_SUPPORTED),
                    };
                    c.last_suback = Some((packet_id, flags.0, topic_id, r));
                    let m = Message::SubAck {
                        flags,
                        topic_id,
                        msg_id: packet_id,
                        rc: r,
                    };
                    self.send_client(host, idx, &m);
                }
                Out::Done
            }
            mqtt::kind::UNSUBACK => {
                if let Ok(Some(mqtt::client::ServerPacket::UnsubAck { packet_id })) =
                    decode_server(frame, header_len, false)
                {
                    self.send_client(host, idx, &Message::UnsubAck { msg_id: packet_id });
                }
                Out::Done
            }
            mqtt::kind::PINGRESP => {
                self.send_client(host, idx, &Message::PingResp);
                Out::Done
            }
            _ => Out::Done,
        }
    }

    /// A PUBLISH from the broker to the client: with a topic id it knows (its registration,
    /// a predefined id, a short name), or after our REGISTER of one.
    fn deliver<H: Host>(
        &mut self,
        host: &mut H,
        idx: usize,
        p: &mqtt::Publish<'_>,
        now: Instant,
    ) -> Out {
        let c = &mut self.clients[idx];
        let name = p.topic;
        let registered = c
            .topics
            .id(name)
            .and_then(|id| Some((id, c.topics.get(id)?.1)));
        let (kind_of, topic_id) = match registered {
            Some((id, Reg::Known)) => (topic_type::NORMAL, id),
            Some((_, Reg::Sent)) if c.register.is_some() => return Out::Stall,
            Some((_, Reg::Refused)) => return self.undeliverable(p),
            _ => match self.predefined_ids.get(name) {
                Some(&id) => (topic_type::PREDEFINED, id),
                None if name.len() == 2 => (
                    topic_type::SHORT,
                    u16::from_be_bytes([name.as_bytes()[0], name.as_bytes()[1]]),
                ),
                None => {
                    if c.register.is_some() {
                        return Out::Stall;
                    }
                    // REGISTER carries the name: one too long for a datagram (MQTT allows
                    // 65535 bytes) cannot be registered, and sending it would only fail until
                    // the client is taken as lost.
                    let register = 8 + c.peer.node_id().map_or(0, |n| 3 + n.len());
                    if name.len() + register > MAX_DATAGRAM {
                        return self.undeliverable(p);
                    }
                    let Some(id) = c.topics.add(name, Reg::Sent) else {
                        return self.undeliverable(p);
                    };
                    c.topics.set(id, Reg::Sent);
                    let msg_id = c.msg_id();
                    c.register = Some((id, msg_id));
                    c.tries = 1;
                    let m = Message::Register {
                        topic_id: id,
                        msg_id,
                        topic: name.as_bytes(),
                    };
                    self.send_client(host, idx, &m);
                    self.arm(idx, now);
                    return Out::Stall;
                }
            },
        };
        // MQTT-SN's own header is 7 bytes (long form), a forwarder's adds its own.
        let overhead = 7 + c.peer.node_id().map_or(0, |n| 3 + n.len());
        if p.payload.len() + overhead > MAX_DATAGRAM {
            return self.undeliverable(p);
        }
        if p.qos > 0 {
            if c.inflight != Some(p.packet_id) {
                c.tries = 1;
            }
            c.inflight = Some(p.packet_id);
        }
        let m = Message::Publish {
            flags: Flags::new(p.qos as i8, p.retain, p.dup, kind_of),
            topic_id,
            msg_id: if p.qos > 0 { p.packet_id } else { 0 },
            data: p.payload,
        };
        self.send_client(host, idx, &m);
        if p.qos > 0 {
            self.arm(idx, now);
        }
        Out::Done
    }

    fn undeliverable(&mut self, p: &mqtt::Publish<'_>) -> Out {
        self.stats.dropped += 1;
        match p.qos {
            0 => Out::Done,
            q => Out::DropAck(q, p.packet_id),
        }
    }

    /// The broker ended connection `conn` (the client disconnected, was lost, refused, taken
    /// over, or revoked at a reload); the event loop has taken its slot back.
    pub fn closed<H: Host>(&mut self, b: &mut Broker, host: &mut H, conn: ConnId) {
        let Some(idx) = self.by_conn.remove(&conn) else {
            return;
        };
        let c = &self.clients[idx];
        if c.conn != Some(conn) {
            return;
        }
        // The broker ended it while the client thought itself connected: tell it (not for a
        // refused CONNECT, whose CONNACK said it, nor after its own DISCONNECT).
        if c.connected() {
            self.send_client(host, idx, &Message::Disconnect { duration: None });
            log::info!(
                "MQTT-SN client {} disconnected by the broker",
                self.clients[idx].client_id
            );
        }
        self.set_state(idx, State::Disconnected);
        let c = &mut self.clients[idx];
        c.conn = None;
        c.register = None;
        c.inflight = None;
        c.retry_at = None;
        // A `clean session 0` client's topic ids and will are kept for its reconnect (unless
        // its client id connected elsewhere since, which took them).
        let current = self.by_client_id.get(&*c.client_id) == Some(&idx);
        if !c.clean && current {
            self.kept.push_back(idx);
        } else {
            self.remove(idx);
        }
        self.merge(b);
    }

    /// Retransmissions due, will dialogues that gave up, ADVERTISE.
    pub fn handle_timeout<H: Host>(&mut self, b: &mut Broker, host: &mut H, now: Instant) {
        if let (Some(at), Some((every, addr))) = (self.next_advertise, self.opts.advertise) {
            if at <= now {
                let m = Message::Advertise {
                    gw_id: self.opts.gateway_id,
                    duration: every.as_secs().min(u16::MAX as u64) as u16,
                };
                self.send_to(host, &Peer::direct(addr), 0, &m);
                self.next_advertise = Some(now + every);
            }
        }
        while let Some(&Reverse((at, idx, gen))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.clients.get_mut(idx) else {
                continue;
            };
            if c.timer_gen != gen {
                continue;
            }
            c.timer_at = None;
            match c.retry_at {
                None => {}
                // Re-armed since this entry was made: it moves to the new time (one entry per
                // client, however many messages it acknowledges meanwhile).
                Some(t) if t > now => {
                    c.timer_at = Some(t);
                    self.timers.push(Reverse((t, idx, gen)));
                }
                Some(_) => self.retry(b, host, idx, now),
            }
        }
        self.merge(b);
    }

    /// Send again what client `idx` has not acknowledged, or give up on it.
    fn retry<H: Host>(&mut self, b: &mut Broker, host: &mut H, idx: usize, now: Instant) {
        let c = &mut self.clients[idx];
        c.retry_at = None;
        if c.tries > self.opts.retry_count {
            return self.give_up(b, host, idx, now);
        }
        c.tries += 1;
        self.stats.retransmissions += 1;
        match c.state {
            State::WillTopic => self.send_client(host, idx, &Message::WillTopicReq),
            State::WillMsg => self.send_client(host, idx, &Message::WillMsgReq),
            _ if c.waking => match c.will_topic {
                None => self.send_client(host, idx, &Message::WillTopicReq),
                Some(_) => self.send_client(host, idx, &Message::WillMsgReq),
            },
            State::Active | State::Awake => {
                let Some(conn) = c.conn else { return };
                if c.register.is_some() {
                    self.register_again(host, idx);
                } else if c.inflight.is_some() {
                    // The broker writes it again (PUBLISH with DUP, or PUBREL), and the
                    // translation sends it at the end of this turn.
                    b.retransmit(conn, now);
                    return self.arm(idx, now);
                } else {
                    return;
                }
            }
            _ => return,
        }
        self.arm(idx, now);
    }

    /// No acknowledgement after `retry_count` retransmissions: the client is lost (spec
    /// 6.13); its will is published. A will dialogue that stalls is dropped.
    fn give_up<H: Host>(&mut self, b: &mut Broker, host: &mut H, idx: usize, now: Instant) {
        let c = &self.clients[idx];
        self.stats.lost += 1;
        log::info!(
            "MQTT-SN client {} lost: no answer after {} retransmissions",
            c.client_id,
            self.opts.retry_count
        );
        match (c.state, c.conn) {
            (State::WillTopic | State::WillMsg, _) => self.forget(idx),
            (_, Some(conn)) => {
                let _ = host;
                b.end(conn, "no acknowledgement after retransmissions", true, now);
            }
            _ => {}
        }
    }

    /// Send client `idx`'s pending REGISTER again (its name borrowed from the topic table:
    /// a retransmission allocates nothing either).
    fn register_again<H: Host>(&mut self, host: &mut H, idx: usize) {
        let Gateway {
            clients,
            dgram,
            stats,
            ..
        } = self;
        let c = &clients[idx];
        let Some((topic_id, msg_id)) = c.register else {
            return;
        };
        let name = c.topics.get(topic_id).map_or("", |(n, _)| n);
        let m = Message::Register {
            topic_id,
            msg_id,
            topic: name.as_bytes(),
        };
        send(dgram, stats, host, &c.peer, c.ctrl, &m);
    }

    /// Arm client `idx`'s retransmission timer for one interval from now.
    fn arm(&mut self, idx: usize, now: Instant) {
        let at = now + self.opts.retry_interval;
        let c = &mut self.clients[idx];
        c.retry_at = Some(at);
        if c.timer_at.is_none() {
            c.timer_at = Some(at);
            self.timers.push(Reverse((at, idx, c.timer_gen)));
        }
    }

    fn set_state(&mut self, idx: usize, state: State) {
        let c = &mut self.clients[idx];
        let was = c.state;
        c.state = state;
        let connected = |s: State| matches!(s, State::Active | State::Asleep | State::Awake);
        match (connected(was), connected(state)) {
            (false, true) => self.connected += 1,
            (true, false) => self.connected -= 1,
            _ => {}
        }
        match (was == State::Asleep, state == State::Asleep) {
            (false, true) => self.asleep += 1,
            (true, false) => self.asleep -= 1,
            _ => {}
        }
    }

    /// A new client record, if the limits allow (the oldest kept record makes room).
    fn new_client(&mut self, peer: Peer, ctrl: u8, client_id: &str) -> Option<usize> {
        let ip = peer.addr.ip();
        if self.per_source.get(&ip).copied().unwrap_or(0) >= self.opts.max_clients_per_source {
            return None;
        }
        while self.clients.len() >= self.opts.max_clients {
            let idx = self.kept.pop_front()?;
            if self
                .clients
                .get(idx)
                .is_some_and(|c| c.state == State::Disconnected && c.conn.is_none())
            {
                self.remove(idx);
            }
        }
        self.next_gen += 1;
        let mut c = Client::new(peer, ctrl, client_id);
        c.timer_gen = self.next_gen;
        let idx = self.clients.insert(c);
        self.by_peer.insert(peer, idx);
        *self.per_source.entry(ip).or_default() += 1;
        Some(idx)
    }

    /// Move a kept record to a new address.
    fn move_peer(&mut self, idx: usize, peer: Peer) {
        let old = self.clients[idx].peer;
        if self.by_peer.get(&old) == Some(&idx) {
            self.by_peer.remove(&old);
        }
        self.count_source(old.addr.ip(), -1);
        self.clients[idx].peer = peer;
        self.by_peer.insert(peer, idx);
        self.count_source(peer.addr.ip(), 1);
    }

    fn count_source(&mut self, ip: IpAddr, d: isize) {
        let n = self.per_source.entry(ip).or_default();
        *n = n.saturating_add_signed(d);
        if *n == 0 {
            self.per_source.remove(&ip);
        }
    }

    /// No longer kept for a reconnect (it is in use again).
    fn unkeep(&mut self, idx: usize) {
        self.kept.retain(|&k| k != idx);
    }

    /// Detach client `idx` from its broker connection (which the caller ends).
    fn detach(&mut self, idx: usize) {
        self.set_state(idx, State::Disconnected);
        let c = &mut self.clients[idx];
        if let Some(conn) = c.conn.take() {
            self.by_conn.remove(&conn);
        }
        c.register = None;
        c.inflight = None;
        c.retry_at = None;
    }

    /// Drop a record that never got a connection (a dialogue given up, no slot).
    fn forget(&mut self, idx: usize) {
        self.detach(idx);
        self.remove(idx);
    }

    fn remove(&mut self, idx: usize) {
        if !self.clients.contains(idx) {
            return;
        }
        self.set_state(idx, State::Disconnected);
        let c = self.clients.remove(idx);
        if self.by_peer.get(&c.peer) == Some(&idx) {
            self.by_peer.remove(&c.peer);
        }
        if self.by_client_id.get(&*c.client_id) == Some(&idx) {
            self.by_client_id.remove(&*c.client_id);
        }
        if let Some(conn) = c.conn {
            if self.by_conn.get(&conn) == Some(&idx) {
                self.by_conn.remove(&conn);
            }
        }
        self.count_source(c.peer.addr.ip(), -1);
        self.unkeep(idx);
    }

    /// Clients kept now (connected, in a dialogue, or remembered).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }
}

/// Forget topic id `id` (the client lost it): the next message on its topic registers anew.
fn forget_topic(t: &mut Topics, id: u16) {
    let Some((name, _)) = t.get(id) else { return };
    let h = name_hash(name);
    if let Ok(e) = t.by_name.find_entry(h, |&i| i == id) {
        e.remove();
    }
    if let Some(e) = t.names.get_mut(id as usize - 1) {
        // The slot stays (ids are positions) but matches no name.
        t.bytes -= e.0.len();
        e.0 = "".into();
        e.1 = Reg::Refused;
    }
}

/// Whether clients send this type (a gateway answers those from unknown sources).
fn client_sends(k: u8) -> bool {
    matches!(
        k,
        kind::PUBLISH
            | kind::PUBACK
            | kind::PUBCOMP
            | kind::PUBREC
            | kind::PUBREL
            | kind::SUBSCRIBE
            | kind::UNSUBSCRIBE
            | kind::REGISTER
            | kind::REGACK
            | kind::PINGREQ
            | kind::DISCONNECT
            | kind::WILLTOPIC
            | kind::WILLMSG
            | kind::WILLTOPICUPD
            | kind::WILLMSGUPD
    )
}

fn send<H: Host>(
    dgram: &mut Vec<u8>,
    stats: &mut Stats,
    host: &mut H,
    peer: &Peer,
    ctrl: u8,
    m: &Message<'_>,
) {
    dgram.clear();
    if let Some(node_id) = peer.node_id() {
        wire::encode_encapsulation(dgram, &Encapsulation { ctrl, node_id });
    }
    m.encode(dgram);
    if host.send(peer.addr, dgram) {
        stats.datagrams_sent += 1;
        stats.bytes_sent += dgram.len() as u64;
    } else {
        stats.send_failed += 1;
    }
}

/// Hand one MQTT packet to the broker for connection `conn`.
fn to_broker(b: &mut Broker, conn: ConnId, frame: &[u8], now: Instant) {
    if let Ok(Some(f)) = frame_len(frame, usize::MAX) {
        b.handle_packet(conn, &frame[..f.total_len], f.header_len, now);
    }
}

fn ack_to_broker(b: &mut Broker, frame: &mut Vec<u8>, conn: ConnId, k: u8, id: u16, now: Instant) {
    frame.clear();
    mqtt::encode_ack(frame, k, id);
    to_broker(b, conn, frame, now);
}

/// UNSUBSCRIBE with one filter (MQTT 3.1.1).
fn encode_unsubscribe(out: &mut Vec<u8>, packet_id: u16, filter: &str) {
    out.push(mqtt::kind::UNSUBSCRIBE << 4 | 0b0010);
    mqtt::put_varint(out, 2 + 2 + filter.len());
    mqtt::put_u16(out, packet_id);
    mqtt::put_str(out, filter.as_bytes());
}
