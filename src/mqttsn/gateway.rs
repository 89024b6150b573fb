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
use topics::{forget_topic, Reg, Topics};

mod connect;
mod output;
mod publish;
mod retransmit;
mod sleep;
mod subscribe;
mod topics;

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
/// Topic ids one client may have registered (both ways), within `mqttsn_max_topic_bytes` of
/// names: a REGISTER beyond gets CONGESTION, a message on a topic beyond is not sent to the
/// client (and counted). With `max_connections` clients, this bounds what topic tables hold.
pub const MAX_TOPICS_PER_CLIENT: usize = 1024;
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

impl Will {
    /// As the broker takes a will: (topic, message, QoS, retain).
    fn parts(&self) -> (&str, &[u8], u8, bool) {
        (&self.topic, &self.msg, self.qos, self.retain)
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
    /// When a datagram of its own came last (for `idle_evict`).
    heard: Instant,
    topics: Topics,
    will: Option<Will>,
    /// The will being given in the dialogue: WILLTOPIC's part.
    will_topic: Option<(Box<str>, u8, bool)>,
    /// Connected once already (a dialogue that only changes the will of a waking client).
    waking: bool,
    /// Our REGISTER waiting for REGACK (output stops behind it): (topic id, message id).
    register: Option<(u16, u16)>,
    /// The client answered that REGISTER with CONGESTION: it goes again, with a new message
    /// id, when the retransmission timer fires (spec 6.13's T_wait, here T_retry).
    congested: bool,
    /// CONGESTION answers to the REGISTER of this topic so far: past `retry_count`, the
    /// message waiting for it is dropped (the client is not taken as lost for being busy).
    busy: u32,
    /// The topic id whose REGISTER was given up: the PUBLISH waiting for it, at the head of
    /// the client's output, is dropped when it is next translated.
    give_up: Option<u16>,
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
    fn new(peer: Peer, client_id: &str, now: Instant) -> Client {
        Client {
            peer,
            ctrl: 0,
            client_id: client_id.into(),
            state: State::Disconnected,
            conn: None,
            clean: true,
            duration: 0,
            heard: now,
            topics: Topics::default(),
            will: None,
            will_topic: None,
            waking: false,
            register: None,
            congested: false,
            busy: 0,
            give_up: None,
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

    /// Nothing waits for an acknowledgement any more (a new connection, or none).
    fn clear_pending(&mut self) {
        self.register = None;
        self.congested = false;
        self.busy = 0;
        self.give_up = None;
        self.inflight = None;
        self.retry_at = None;
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

impl Gateway {
    pub fn new(opts: Options, listener: u16, now: Instant) -> Gateway {
        let (predefined, predefined_ids) = predefined_maps(&opts);
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
        (self.predefined, self.predefined_ids) = predefined_maps(&opts);
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
        t.register_congestion += s.register_congestion;
        t.will_too_large += s.will_too_large;
        t.evicted_idle += s.evicted_idle;
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
            // QoS -1 from a source that is no connected client: anonymous. From a connected
            // client's address (or forwarder node) it is that client's QoS 0 publish, under
            // its client id's ACL rules (the arm for known clients below).
            Message::Publish {
                flags,
                topic_id,
                data,
                ..
            } if flags.qos() == -1
                && !self
                    .by_peer
                    .get(&peer)
                    .is_some_and(|&i| self.clients[i].connected()) =>
            {
                self.publish_minus1(b, flags, topic_id, data, now)
            }
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
                    self.clients[idx].heard = now;
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

    /// A datagram from a known client: the will dialogue of one connecting, or a message of
    /// its session.
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
        let waking = self.clients[idx].waking;
        match (m, state) {
            (Message::WillTopic { flags, topic }, _) if state == State::WillTopic || waking => {
                self.will_topic(b, host, idx, flags, topic, now)
            }
            (Message::WillTopic { .. }, State::WillMsg) => {
                // Sent again: our WILLMSGREQ was lost.
                self.send_client(host, idx, &Message::WillMsgReq);
            }
            (Message::WillMsg { msg }, _)
                if state == State::WillMsg
                    || (waking && self.clients[idx].will_topic.is_some()) =>
            {
                self.will_msg(b, host, idx, msg, now)
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

    /// A message of a connected client's session, to the file that handles its kind.
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
            } => self.puback(b, idx, conn, topic_id, msg_id, code, now),
            Message::PubRec { msg_id } => self.pubrec(b, idx, conn, msg_id, now),
            Message::PubRel { msg_id } => {
                ack_to_broker(b, &mut self.frame, conn, mqtt::kind::PUBREL, msg_id, now)
            }
            Message::PubComp { msg_id } => self.pubcomp(b, idx, conn, msg_id, now),
            Message::Subscribe {
                flags,
                msg_id,
                topic: t,
            } => self.subscribe(b, host, idx, conn, flags, msg_id, t, now),
            Message::Unsubscribe {
                msg_id, topic: t, ..
            } => self.unsubscribe(b, host, idx, conn, msg_id, t, now),
            Message::Register { msg_id, topic, .. } => self.register(b, host, idx, msg_id, topic),
            Message::RegAck {
                msg_id, rc: code, ..
            } => self.regack(b, idx, conn, msg_id, code, now),
            Message::PingReq { .. } => self.pingreq(b, host, idx, conn, now),
            Message::Disconnect { duration } => self.disconnect(b, host, idx, conn, duration, now),
            Message::WillTopicUpd { flags, topic } => {
                self.will_topic_update(b, host, idx, conn, flags, topic)
            }
            Message::WillMsgUpd { msg } => self.will_msg_update(b, host, idx, conn, msg),
            _ => self.stats.unexpected += 1,
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
        c.clear_pending();
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

    /// A new client record, if the limits allow. Room is made at a full table (the source's,
    /// then the listener's) by the oldest record kept for a `clean session 0` reconnect, else
    /// by evicting the client silent the longest of those that nothing else would ever end
    /// (see [`Gateway::idle_victim`]). `except` is not evicted (the record of the same client
    /// id, which the broker takes over).
    fn new_client<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        peer: Peer,
        client_id: &str,
        except: Option<usize>,
        now: Instant,
    ) -> Option<usize> {
        let ip = peer.addr.ip();
        while self.per_source.get(&ip).copied().unwrap_or(0) >= self.opts.max_clients_per_source {
            let kept = self.kept.iter().copied().find(|&k| {
                self.clients
                    .get(k)
                    .is_some_and(|c| c.peer.addr.ip() == ip && c.conn.is_none())
            });
            match kept {
                Some(k) => self.remove(k),
                None => {
                    let victim = self.idle_victim(b, Some(ip), except, now)?;
                    self.evict(b, host, victim, now);
                }
            }
        }
        while self.clients.len() >= self.opts.max_clients {
            match self.kept.pop_front() {
                Some(k) => {
                    if self
                        .clients
                        .get(k)
                        .is_some_and(|c| c.state == State::Disconnected && c.conn.is_none())
                    {
                        self.remove(k);
                    }
                }
                None => {
                    let victim = self.idle_victim(b, None, except, now)?;
                    self.evict(b, host, victim, now);
                }
            }
        }
        self.next_gen += 1;
        // Its forwarder's Ctrl byte is set by the caller, as for a record reused.
        let mut c = Client::new(peer, client_id, now);
        c.timer_gen = self.next_gen;
        let idx = self.clients.insert(c);
        self.by_peer.insert(peer, idx);
        *self.per_source.entry(ip).or_default() += 1;
        Some(idx)
    }

    /// The client to evict for a new one: connected with keep-alive 0 and not asleep (no
    /// keep-alive or sleep timer will ever end it: UDP has no TCP keepalive to notice a
    /// sensor that lost power), nothing in flight to it (retransmission would find it lost),
    /// silent for at least `idle_evict`; of those, the one silent the longest. From source
    /// `ip` only, if given. A linear scan, at a full table only: at most `max_connections`
    /// records, without allocating.
    fn idle_victim(
        &self,
        b: &Broker,
        ip: Option<IpAddr>,
        except: Option<usize>,
        now: Instant,
    ) -> Option<usize> {
        let min = self.opts.idle_evict;
        if min.is_zero() {
            return None;
        }
        self.clients
            .iter()
            .filter(|&(i, c)| {
                Some(i) != except
                    && c.state == State::Active
                    && c.duration == 0
                    && c.register.is_none()
                    && c.inflight.is_none()
                    && c.conn.is_some_and(|conn| b.held_for(conn).1 == 0)
                    && ip.is_none_or(|ip| c.peer.addr.ip() == ip)
                    && now.saturating_duration_since(c.heard) >= min
            })
            .min_by_key(|(_, c)| c.heard)
            .map(|(i, _)| i)
    }

    /// End client `idx` to make room: it is told with DISCONNECT, and taken as lost (the
    /// broker publishes its will, as for a client that stopped answering).
    fn evict<H: Host>(&mut self, b: &mut Broker, host: &mut H, idx: usize, now: Instant) {
        let c = &self.clients[idx];
        log::info!(
            "MQTT-SN client {} evicted to make room for a new client: keep-alive 0 and silent for {} s",
            c.client_id,
            now.saturating_duration_since(c.heard).as_secs()
        );
        self.stats.evicted_idle += 1;
        let conn = c.conn;
        self.send_client(host, idx, &Message::Disconnect { duration: None });
        self.detach(idx);
        if let Some(conn) = conn {
            b.end(conn, "evicted: keep-alive 0 and silent", true, now);
        }
        self.remove(idx);
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
        c.clear_pending();
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

/// The predefined topics (`mqttsn_topic`) both ways: name by id, id by name.
type Predefined = (FxHashMap<u16, Box<str>>, FxHashMap<Box<str>, u16>);

fn predefined_maps(opts: &Options) -> Predefined {
    let by_id = opts.topics.iter().map(|(id, n)| (*id, n.as_str().into()));
    let by_name = opts.topics.iter().map(|(id, n)| (n.as_str().into(), *id));
    (by_id.collect(), by_name.collect())
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
