//! Bridges to upstream brokers, the protocol side (Mosquitto's `bridge.c`): the broker is the
//! client here. The event loop opens the socket (see `crate::bridge`); this file writes the
//! CONNECT, takes the CONNACK, subscribes upstream, keeps the link alive with PINGREQ and maps
//! topics between the local and remote prefixes.
//!
//! A bridge is a session of this broker like any client's, named by its local client id and
//! kept for ever (unless `local_cleansession`). Its subscriptions are the `out` topics, so a
//! message for upstream is routed, queued while the link is down, persisted and delivered in
//! order on reconnect by the same code that serves every client; once the link is up the
//! session's connection is the upstream socket. Messages from upstream are publishes of that
//! session. Loops are prevented both ways: the local subscriptions are No Local (what came in
//! over the bridge is not sent back over it), and upstream is asked the same (No Local with
//! MQTT 5, Mosquitto's bridge bit with `try_private` on 3.1.1).

use super::session::{Session, Subscription, NEVER_EXPIRES};
use super::subs::SubEntry;
use super::{connect, publish, topic, Broker, ConnId, SessionId};
use crate::wire::client::{self, ConnectOut, ServerPacket};
use crate::wire::properties::id;
use crate::wire::{self, DecodeError, LEVEL_311, LEVEL_5};
use std::time::{Duration, Instant};

/// `Conn::bridge` of a connection that is not a bridge.
pub(super) const NO_BRIDGE: u16 = u16::MAX;

/// Subscription options of a bridge's local subscriptions: No Local, Retain As Published, and
/// Retain Handling 2 (retained messages are not sent upstream when the bridge subscribes).
const LOCAL_OPTIONS: u8 = 0x04 | 0x08 | 0x20;

/// Which way a bridge topic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    Both,
}

/// One `topic` line of a bridge: pattern, direction, QoS and the two prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTopic {
    pub direction: Direction,
    pub qos: u8,
    pub local_prefix: String,
    pub remote_prefix: String,
    /// The prefixes with the pattern after them: the filters subscribed to on each side.
    pub local_filter: String,
    pub remote_filter: String,
}

impl BridgeTopic {
    pub fn new(
        pattern: &str,
        direction: Direction,
        qos: u8,
        local_prefix: &str,
        remote_prefix: &str,
    ) -> Self {
        BridgeTopic {
            direction,
            qos,
            local_prefix: local_prefix.into(),
            remote_prefix: remote_prefix.into(),
            local_filter: format!("{local_prefix}{pattern}"),
            remote_filter: format!("{remote_prefix}{pattern}"),
        }
    }
    fn goes_out(&self) -> bool {
        self.direction != Direction::In
    }
    fn comes_in(&self) -> bool {
        self.direction != Direction::Out
    }
}

/// What the broker core needs of one `connection` section (the socket side, addresses and
/// TLS, is the event loop's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub remote_clientid: String,
    pub local_clientid: String,
    pub topics: Vec<BridgeTopic>,
    /// `LEVEL_311` or `LEVEL_5`.
    pub protocol: u8,
    pub try_private: bool,
    /// Clean session towards upstream.
    pub cleansession: bool,
    /// The local session ends with each link (no store-and-forward); unset: as
    /// `cleansession`.
    pub local_cleansession: Option<bool>,
    pub keepalive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub notifications: bool,
    pub notifications_local_only: bool,
    pub notification_topic: String,
    /// Retained messages keep their RETAIN flag on the way up.
    pub outgoing_retain: bool,
}

impl BridgeSpec {
    fn local_clean(&self) -> bool {
        self.local_cleansession.unwrap_or(self.cleansession)
    }
}

/// A bridge's state in the core.
pub(super) struct BridgeState {
    pub session: SessionId,
    pub conn: Option<ConnId>,
    /// CONNACK accepted on the current connection.
    pub up: bool,
    /// Upstream refused the bridge bit once: 3.1.1 CONNECTs go without it from then on.
    pub private_refused: bool,
    /// When the last PINGREQ went out, and when the socket last took output.
    pub ping_at: Option<Instant>,
    pub sent_at: Option<Instant>,
    /// The `$SYS` values last published: messages held for upstream, and dropped.
    pub sys_sent: Option<(usize, u64)>,
}

impl Broker {
    /// Make each configured bridge's session (or take the one persistence restored) and give it
    /// the `out` topics as its subscriptions. Called once at start, after the restore.
    pub fn start_bridges(&mut self) {
        let specs = std::mem::take(&mut self.cfg.bridges);
        for spec in &specs {
            let sid = match self.by_client_id.get(&self.sessions, &spec.local_clientid) {
                Some(sid) => sid,
                None => {
                    let sid = self.sessions.insert(Session::new(&spec.local_clientid, 0));
                    self.by_client_id.insert(&self.sessions, sid);
                    sid
                }
            };
            // The configured topics replace whatever the kept session subscribed before.
            let old = std::mem::take(&mut self.sessions[sid].subscriptions);
            for sub in &old {
                self.subs.remove(&sub.filter, sid, None);
            }
            let mut subs = Vec::new();
            for t in spec.topics.iter().filter(|t| t.goes_out()) {
                let entry = SubEntry {
                    session: sid,
                    qos: t.qos.min(self.cfg.max_qos),
                    options: (LOCAL_OPTIONS | t.qos)
                        & if spec.outgoing_retain { 0xff } else { !0x08 },
                    sub_id: 0,
                };
                self.subs.insert(&t.local_filter, entry, None);
                subs.push(Subscription {
                    filter: t.local_filter.as_str().into(),
                    options: entry.options,
                    sub_id: 0,
                });
            }
            let s = &mut self.sessions[sid];
            s.subscriptions = subs;
            s.bridge = true;
            s.expiry = if spec.local_clean() { 0 } else { NEVER_EXPIRES };
            s.expires_at = None;
            self.session_changed(sid);
            self.bridges.push(BridgeState {
                session: sid,
                conn: None,
                up: false,
                private_refused: false,
                ping_at: None,
                sent_at: None,
                sys_sent: None,
            });
        }
        self.cfg.bridges = specs;
        for i in 0..self.bridges.len() {
            notify_local(self, i, false);
        }
    }

    /// The event loop opened (or is opening) connection `id` to bridge `bridge`'s upstream at
    /// `peer`: the CONNECT goes into its output, to be written once the socket connects.
    pub fn open_bridge(&mut self, id: ConnId, bridge: usize, peer: SocketAddrOpt, now: Instant) {
        self.open(id, peer, 0, now);
        let spec = &self.cfg.bridges[bridge];
        let st = &mut self.bridges[bridge];
        st.conn = Some(id);
        st.up = false;
        let v5 = spec.protocol == LEVEL_5;
        let private = spec.try_private && !st.private_refused && !v5;
        let notify = spec.notifications && !spec.notifications_local_only;
        let mut out = Vec::with_capacity(128);
        client::encode_connect(
            &mut out,
            &ConnectOut {
                level: spec.protocol | if private { 0x80 } else { 0 },
                clean_start: spec.cleansession,
                keep_alive: spec.keepalive,
                client_id: &spec.remote_clientid,
                will: notify.then_some((spec.notification_topic.as_str(), &b"0"[..], 1, true)),
                username: spec.username.as_deref(),
                password: spec.password.as_deref().map(str::as_bytes),
                session_expiry: if spec.cleansession { 0 } else { u32::MAX },
                receive_max: publish::receive_maximum(&self.cfg),
                max_packet: self.cfg.max_packet_size.min(u32::MAX as usize) as u32,
            },
        );
        let c = self.conns[id].as_mut().expect("just opened");
        c.bridge = bridge as u16;
        c.level = spec.protocol;
        c.v5 = v5;
        self.out(id).extend_from_slice(&out);
        self.stats.messages_sent += 1;
    }

    /// Whether bridge `bridge`'s link is up (its CONNACK accepted).
    pub fn bridge_up(&self, bridge: usize) -> bool {
        self.bridges
            .get(bridge)
            .is_some_and(|b| b.up && b.conn.is_some())
    }

    /// Whether bridge `bridge`'s last connection got as far as an accepted CONNACK.
    pub fn bridge_was_up(&self, bridge: usize) -> bool {
        self.bridges.get(bridge).is_some_and(|b| b.up)
    }

    /// The bridge's local session: messages queued for upstream (and in flight).
    pub fn bridge_queue(&self, bridge: usize) -> Option<(usize, usize, u64)> {
        let s = self.sessions.get(self.bridges.get(bridge)?.session)?;
        Some((s.queue.len(), s.inflight.len(), s.dropped))
    }
}

/// `Option<SocketAddr>`, named for the signature above.
type SocketAddrOpt = Option<std::net::SocketAddr>;

/// A packet from upstream on bridge connection `id`. Returns false for a packet the broker
/// handles as from any client (PUBLISH and the acknowledgements).
pub(super) fn handle_packet(
    b: &mut Broker,
    id: ConnId,
    bridge: usize,
    frame: &[u8],
    header_len: usize,
    now: Instant,
) -> bool {
    let Some(conn) = b.conns[id].as_ref() else {
        return true;
    };
    let (v5, attached) = (conn.v5, conn.session.is_some());
    let packet = match client::decode_server(frame, header_len, v5) {
        Ok(p) => p,
        Err(e) => {
            b.protocol_error(id, e, now);
            return true;
        }
    };
    let name = &b.cfg.bridges[bridge].name;
    match packet {
        Some(ServerPacket::ConnAck {
            session_present,
            code,
            properties,
        }) if !attached => connack(b, id, bridge, session_present, code, &properties, now),
        None if attached => {
            // PUBLISH, acknowledgements and DISCONNECT; nothing a client sends a server.
            let kind = frame.first().map_or(0, |f| f >> 4);
            match kind {
                wire::kind::DISCONNECT => {
                    log::warn!("Bridge {name}: upstream disconnected the bridge");
                    b.end_connection(id, "upstream disconnected", false, now);
                }
                wire::kind::PUBLISH
                | wire::kind::PUBACK
                | wire::kind::PUBREC
                | wire::kind::PUBREL
                | wire::kind::PUBCOMP => return false,
                _ => b.protocol_error(
                    id,
                    DecodeError::protocol("upstream sent a client packet"),
                    now,
                ),
            }
        }
        Some(ServerPacket::SubAck { codes, .. }) if attached => {
            if let Some(&c) = codes.iter().find(|&&c| c >= 0x80) {
                log::warn!("Bridge {name}: upstream refused a subscription (code {c:#04x})");
            }
        }
        Some(ServerPacket::UnsubAck { .. } | ServerPacket::PingResp) if attached => {}
        _ => b.protocol_error(
            id,
            DecodeError::protocol("upstream sent a packet out of order"),
            now,
        ),
    }
    true
}

/// CONNACK from upstream: refused (try again later, without the bridge bit if that was what
/// upstream refused), or accepted: the bridge's session takes this connection, subscribes
/// upstream, says it is up and sends what it held.
fn connack(
    b: &mut Broker,
    id: ConnId,
    bridge: usize,
    session_present: bool,
    code: u8,
    props: &wire::Properties<'_>,
    now: Instant,
) {
    let spec = &b.cfg.bridges[bridge];
    let peer = super::peer(&b.conns[id].as_ref().and_then(|c| c.peer));
    if code != 0 {
        let private = spec.try_private && spec.protocol == LEVEL_311;
        let st = &mut b.bridges[bridge];
        // 3.1.1 "unacceptable protocol version": the upstream does not know the bridge bit.
        if private && code == 1 && !st.private_refused {
            st.private_refused = true;
            log::info!(
                "Bridge {}: {peer} does not take Mosquitto's bridge mark (try_private); connecting without it",
                spec.name
            );
        } else {
            log::warn!(
                "Bridge {}: {peer} refused the connection (code {code:#04x})",
                spec.name
            );
        }
        return b.end_connection(id, "connection refused by upstream", false, now);
    }
    let v5 = spec.protocol == LEVEL_5;
    let keep_alive = props.u16(id::SERVER_KEEP_ALIVE).unwrap_or(spec.keepalive);
    log::info!(
        "Bridge {} connected to {peer} as {} (session present: {session_present})",
        spec.name,
        spec.remote_clientid
    );
    let st = &mut b.bridges[bridge];
    st.up = true;
    st.ping_at = Some(now);
    st.sent_at = None;
    let sid = st.session;
    let Some(s) = b.sessions.get_mut(sid) else {
        return b.end_connection(id, "bridge session gone", false, now);
    };
    s.conn = Some(id);
    s.expires_at = None;
    s.timer_gen += 1;
    // Upstream has no state of ours: QoS 2 ids it sent before are not resends any more (spec
    // 3.2.2-5, 4.3.3), or a new message with a reused id would be taken for one.
    let stale = if session_present {
        Vec::new()
    } else {
        std::mem::take(&mut s.qos2_incoming)
    };
    for packet_id in stale {
        b.journal_ack(sid, super::persist::AckStep::Qos2InDone(packet_id));
    }
    let c = b.conns[id].as_mut().expect("connection is open");
    c.session = Some(sid);
    c.keep_alive = keep_alive;
    if v5 {
        c.receive_max = props.u16(id::RECEIVE_MAXIMUM).unwrap_or(u16::MAX);
        c.max_packet = props
            .u32(id::MAXIMUM_PACKET_SIZE)
            .map_or(usize::MAX, |m| m as usize);
        c.max_qos_out = props.byte(id::MAXIMUM_QOS).unwrap_or(2).min(2);
        c.retain_out = props.byte(id::RETAIN_AVAILABLE) != Some(0);
    }
    // The first PINGREQ one keep-alive interval from now (the timer of a client connection
    // allows one and a half).
    if keep_alive > 0 {
        b.next_gen += 1;
        let gen = b.next_gen as u32;
        c.timer_gen = gen;
        b.push_timer(now + Duration::from_secs(keep_alive as u64), id, gen);
    }
    b.stats.clients_connected += 1;
    b.stats.clients_maximum = b.stats.clients_maximum.max(b.stats.clients_connected);

    // Upstream subscriptions for the `in` topics: No Local and Retain As Published with MQTT 5
    // (3.1.1 relies on the bridge bit, or on nothing when upstream refused it).
    let options_v5 = 0x04 | 0x08;
    let spec = &b.cfg.bridges[bridge];
    let mut out = std::mem::take(&mut b.conns[id].as_mut().expect("open").out);
    for t in spec.topics.iter().filter(|t| t.comes_in()) {
        let (packet_id, _) = b.sessions[sid].next_packet_id();
        let options = t.qos.min(b.cfg.max_qos) | if v5 { options_v5 } else { 0 };
        client::encode_subscribe(&mut out, packet_id, &t.remote_filter, options, v5);
        b.stats.messages_sent += 1;
    }
    if spec.notifications && !spec.notifications_local_only {
        let payload = b"1";
        let topic = spec.notification_topic.as_bytes();
        wire::encode_publish_header_v5(
            &mut out,
            topic,
            0,
            true,
            false,
            0,
            v5.then_some(0),
            payload.len(),
        );
        out.extend_from_slice(payload);
        b.stats.messages_sent += 1;
    }
    b.conns[id].as_mut().expect("open").out = out;
    b.out(id);
    notify_local(b, bridge, true);
    connect::resend_inflight(b, id, sid, now);
    publish::pump(b, sid);
}

/// The bridge's connection ended (any way): the session goes offline, keeping what it holds
/// unless the local session is clean.
pub(super) fn ended(b: &mut Broker, bridge: usize) {
    let st = &mut b.bridges[bridge];
    // `up` stays as it was until the next connection, for `bridge_was_up`.
    let was_up = st.conn.take().is_some() && st.up;
    st.ping_at = None;
    if b.cfg.bridges[bridge].local_clean() {
        let Some(s) = b.sessions.get_mut(st.session) else {
            return;
        };
        for q in s.queue.drain(..) {
            b.pool.release(q.msg);
        }
        for m in s.inflight.drain(..).filter_map(|i| i.msg) {
            b.pool.release(m);
        }
        s.queued_bytes = 0;
    }
    if was_up {
        log::warn!("Bridge {} is down", b.cfg.bridges[bridge].name);
        notify_local(b, bridge, false);
    }
}

/// Keep-alive of a bridge link: a PINGREQ every keep-alive interval; one not answered within
/// the next interval ends the link. Returns the next deadline (`now` or earlier: the link is
/// dead), or None without a keep-alive.
pub(super) fn keep_alive(b: &mut Broker, id: ConnId, now: Instant) -> Option<Instant> {
    let c = b.conns[id].as_ref()?;
    if c.keep_alive == 0 {
        return None;
    }
    let (ka, last_rx, bridge, paused, out_full) = (
        Duration::from_secs(c.keep_alive as u64),
        c.last_rx,
        c.bridge as usize,
        c.paused_on.is_some(),
        c.out.len() >= b.cfg.output_buffer_soft,
    );
    let st = b.bridges.get_mut(bridge)?;
    if let Some(p) = st.ping_at {
        if now < p + ka {
            return Some(p + ka);
        }
        // Unanswered: dead, unless the answer may wait unread because the link is not being
        // read: paused while a local subscriber drains, or while its output is full and
        // upstream is still taking it (a hung upstream takes nothing, and is dead).
        let answered = last_rx >= p;
        let taking = out_full && st.sent_at.is_some_and(|t| t >= p);
        if !answered && !paused && !taking {
            return Some(now);
        }
    }
    st.ping_at = Some(now);
    client::encode_pingreq(b.out(id));
    b.stats.messages_sent += 1;
    Some(now + ka)
}

/// `$SYS/broker/connection/<remote client id>/queued` (messages held for upstream: queued and
/// in flight) and `.../dropped` (messages it could not keep: QoS 0 while the link was down, or
/// a full queue), retained, when they changed.
pub(super) fn publish_sys(b: &mut Broker) {
    for i in 0..b.bridges.len() {
        let Some(s) = b.sessions.get(b.bridges[i].session) else {
            continue;
        };
        let now = (s.queue.len() + s.inflight.len(), s.dropped);
        if b.bridges[i].sys_sent == Some(now) {
            continue;
        }
        b.bridges[i].sys_sent = Some(now);
        let id = &b.cfg.bridges[i].remote_clientid;
        let (queued, dropped) = (
            format!("$SYS/broker/connection/{id}/queued"),
            format!("$SYS/broker/connection/{id}/dropped"),
        );
        publish::route(
            b,
            &queued,
            now.0.to_string().as_bytes(),
            0,
            true,
            None,
            None,
        );
        publish::route(
            b,
            &dropped,
            now.1.to_string().as_bytes(),
            0,
            true,
            None,
            None,
        );
    }
}

/// Publish the bridge's state (`1` up, `0` down) on its notification topic here, retained.
fn notify_local(b: &mut Broker, bridge: usize, up: bool) {
    let spec = &b.cfg.bridges[bridge];
    if !spec.notifications {
        return;
    }
    let topic = spec.notification_topic.clone();
    let payload: &[u8] = if up { b"1" } else { b"0" };
    publish::route(b, &topic, payload, 1, true, None, None);
}

/// The topic a local message has upstream, in two parts: its `out` topic's remote prefix, and
/// the local topic after the local prefix (no buffer is made for the joined topic).
pub(super) fn to_remote<'s, 't>(spec: &'s BridgeSpec, local: &'t [u8]) -> (&'s [u8], &'t [u8]) {
    let Ok(t) = std::str::from_utf8(local) else {
        return (&[], local);
    };
    match spec
        .topics
        .iter()
        .find(|x| x.goes_out() && topic::matches(&x.local_filter, t))
    {
        Some(x) => (
            x.remote_prefix.as_bytes(),
            local.get(x.local_prefix.len()..).unwrap_or(&[]),
        ),
        None => (&[], local),
    }
}

/// Map a topic from upstream to its local name, in place. False if no `in` topic of the
/// bridge matches it (the message is acknowledged and not routed).
pub(super) fn to_local(spec: &BridgeSpec, t: &mut String) -> bool {
    match spec
        .topics
        .iter()
        .find(|x| x.comes_in() && topic::matches(&x.remote_filter, t))
    {
        Some(x) => {
            if x.local_prefix != x.remote_prefix {
                t.replace_range(..x.remote_prefix.len().min(t.len()), &x.local_prefix);
            }
            !t.is_empty()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topics: Vec<BridgeTopic>) -> BridgeSpec {
        BridgeSpec {
            name: "up".into(),
            remote_clientid: "gw.up".into(),
            local_clientid: "local.gw.up".into(),
            topics,
            protocol: LEVEL_311,
            try_private: true,
            cleansession: false,
            local_cleansession: None,
            keepalive: 60,
            username: None,
            password: None,
            notifications: true,
            notifications_local_only: false,
            notification_topic: "$SYS/broker/connection/gw.up/state".into(),
            outgoing_retain: true,
        }
    }

    #[test]
    fn prefixes_map_both_ways() {
        let s = spec(vec![
            BridgeTopic::new("#", Direction::Out, 1, "sensors/", "site1/sensors/"),
            BridgeTopic::new("cmd/#", Direction::In, 1, "", "site1/"),
            BridgeTopic::new("shared/#", Direction::Both, 1, "", ""),
        ]);
        let joined = |(a, b): (&[u8], &[u8])| [a, b].concat();
        assert_eq!(joined(to_remote(&s, b"sensors/t1")), b"site1/sensors/t1");
        assert_eq!(joined(to_remote(&s, b"shared/x")), b"shared/x");
        let mut t = String::from("site1/cmd/lamp");
        assert!(to_local(&s, &mut t));
        assert_eq!(t, "cmd/lamp");
        let mut t = String::from("shared/y");
        assert!(to_local(&s, &mut t));
        assert_eq!(t, "shared/y");
        // Out only: a message from upstream on it is not taken.
        let mut t = String::from("site1/sensors/t1");
        assert!(!to_local(&s, &mut t));
    }
}
