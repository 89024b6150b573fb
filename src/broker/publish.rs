//! PUBLISH from a client, routing to the matching sessions, and delivery: straight into the
//! subscriber's output buffer when it can take it, else into its queue.
//!
//! A message is copied out of the read buffer into the pool only when something must hold it
//! (a retained slot, an in-flight window, a queue) or it carries MQTT 5 properties; a QoS 0
//! message to subscribers that can take it at once is encoded from the read buffer and never
//! stored. Each subscriber gets its own QoS, flags, packet id and, for MQTT 5, Message Expiry
//! (the remaining lifetime), Subscription Identifiers and Topic Alias; everything else is
//! written from the one stored copy.

use super::bridge::{to_local, to_remote, NO_BRIDGE};
use super::message::{MessagePool, MsgId};
use super::session::{Awaiting, Inflight, Queued, Session, SubIds};
use super::subs::{Match, SubEntry};
use super::{persist, Broker, ConnId, SessionId};
use super::{BrokerConfig, Conn};
use crate::auth::acl::Access;
use crate::devices::Observed;
use crate::wire::properties::{id, Property};
use crate::wire::{
    self, encode_publish_header_v5, publish_len, varint_len, DecodeError, Properties, Publish,
};
use std::time::{Duration, Instant};

/// PUBACK/PUBREC reason codes (MQTT 5).
const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
const NOT_AUTHORIZED: u8 = 0x87;

pub(super) fn handle(b: &mut Broker, id: ConnId, sid: SessionId, mut p: Publish<'_>, now: Instant) {
    b.stats.publish_received += 1;
    let v5 = b.conns[id].as_ref().is_some_and(|c| c.v5);
    // From upstream over a bridge: its subscriptions ask for no more than max_qos, and a
    // retained message is taken as a plain one when retain is off here (upstream is not told
    // off for what it may send).
    let bridge = b.conns[id].as_ref().map_or(NO_BRIDGE, |c| c.bridge);
    if bridge != NO_BRIDGE && p.retain && !b.cfg.retain_available {
        p.retain = false;
    }
    if p.qos > b.cfg.max_qos {
        return b.protocol_error(
            id,
            DecodeError {
                code: 0x9B,
                reason: "QoS not supported",
            },
            now,
        );
    }
    if p.retain && !b.cfg.retain_available {
        return b.protocol_error(
            id,
            DecodeError {
                code: 0x9A,
                reason: "retain not supported",
            },
            now,
        );
    }
    // MQTT 5 Topic Alias (spec 3.3.2.3.4): a topic and an alias set the alias; an empty topic
    // uses it. The topic is copied to a reused buffer, so a publish by alias allocates nothing.
    let mut topic = std::mem::take(&mut b.topic_scratch);
    topic.clear();
    let alias = p.properties.u16(id::TOPIC_ALIAS);
    match (alias, p.topic.is_empty()) {
        (None, true) => {
            b.topic_scratch = topic;
            return b.protocol_error(
                id,
                DecodeError::protocol("empty topic without a topic alias"),
                now,
            );
        }
        (None, false) => topic.push_str(p.topic),
        (Some(a), _) if a > b.cfg.max_topic_alias => {
            b.topic_scratch = topic;
            return b.protocol_error(
                id,
                DecodeError {
                    code: 0x94,
                    reason: "topic alias above the maximum",
                },
                now,
            );
        }
        (Some(a), false) => {
            let conn = b.conns[id].as_mut().expect("open");
            let aliases = &mut conn.aliases.get_or_insert_with(Default::default).inbound;
            if aliases.len() < a as usize {
                aliases.resize_with(a as usize, String::new);
            }
            let slot = &mut aliases[a as usize - 1];
            slot.clear();
            slot.push_str(p.topic);
            topic.push_str(p.topic);
        }
        (Some(a), true) => {
            let empty = Vec::new();
            let conn = b.conns[id].as_ref().expect("open");
            let aliases = conn.aliases.as_ref().map_or(&empty, |a| &a.inbound);
            match aliases.get(a as usize - 1).filter(|t| !t.is_empty()) {
                Some(t) => topic.push_str(t),
                None => {
                    b.topic_scratch = topic;
                    return b.protocol_error(
                        id,
                        DecodeError::protocol("topic alias not defined"),
                        now,
                    );
                }
            }
        }
    }
    // From upstream over a bridge: the topic's local name, if one of its `in` topics has it.
    let unmapped = bridge != NO_BRIDGE && !to_local(&b.cfg.bridges[bridge as usize], &mut topic);
    if !b.topic_within_limits(&topic) {
        b.topic_scratch = topic;
        let err = DecodeError {
            code: 0x90,
            reason: "topic longer or deeper than the limits",
        };
        return b.protocol_error(id, err, now);
    }
    let reason = accept_checks(b, sid, &p, &topic);
    let oversized = b.cfg.message_size_limit > 0 && p.payload.len() > b.cfg.message_size_limit;
    if oversized {
        log::debug!(
            "Dropped a {}-byte message on {topic} from {}: above message_size_limit",
            p.payload.len(),
            b.sessions[sid].client_id
        );
        b.stats.publish_dropped += 1;
        b.stats.dropped.size_limit += 1;
    }
    let deliverable = reason.is_none() && !oversized && !unmapped;
    match p.qos {
        0 => {
            if deliverable {
                accept(b, id, &p, &topic, now);
            }
        }
        1 => {
            let matched = if deliverable {
                accept(b, id, &p, &topic, now)
            } else {
                true
            };
            ack(b, id, v5, wire::kind::PUBACK, p.packet_id, reason, matched);
        }
        _ => {
            // Exactly once (spec 4.3.3, method B): deliver now, remember the packet id until
            // PUBREL, and treat any PUBLISH with that id until then as a resend.
            let seen = b.sessions[sid].qos2_incoming.contains(&p.packet_id);
            let mut matched = true;
            if !seen {
                // The broker's Receive Maximum (MQTT 5, spec 3.3.4): QoS 2 messages not yet
                // released. 3.1.x has no such limit.
                if v5 && b.sessions[sid].qos2_incoming.len() >= receive_maximum(&b.cfg) as usize {
                    b.topic_scratch = topic;
                    return b.protocol_error(
                        id,
                        DecodeError {
                            code: 0x93,
                            reason: "receive maximum exceeded",
                        },
                        now,
                    );
                }
                if deliverable {
                    matched = accept(b, id, &p, &topic, now);
                }
                if reason.is_none() {
                    b.sessions[sid].qos2_incoming.push(p.packet_id);
                    b.journal_ack(sid, persist::AckStep::Qos2In(p.packet_id));
                }
            }
            ack(b, id, v5, wire::kind::PUBREC, p.packet_id, reason, matched);
        }
    }
    b.topic_scratch = topic;
}

/// The broker's Receive Maximum: `max_inflight_messages`, 0 meaning 65535.
pub(super) fn receive_maximum(cfg: &BrokerConfig) -> u16 {
    match cfg.max_inflight_messages {
        0 => u16::MAX,
        n => n,
    }
}

/// Checks that refuse one message (MQTT 5 reason code) without closing the connection.
fn accept_checks(b: &Broker, sid: SessionId, p: &Publish<'_>, topic: &str) -> Option<u8> {
    // The ACL: 3.1.x drops a denied publish silently (it is still acknowledged), MQTT 5 says
    // 0x87, as Mosquitto does.
    if !b.acl_allows(sid, topic, Access::Write) {
        log::debug!(
            "{}: publish to {topic} denied by the ACL",
            b.sessions[sid].client_id
        );
        return Some(NOT_AUTHORIZED);
    }
    // Payload Format Indicator 1 promises UTF-8 (spec 3.3.2.3.2).
    if p.properties.byte(id::PAYLOAD_FORMAT_INDICATOR) == Some(1)
        && std::str::from_utf8(p.payload).is_err()
    {
        log::debug!(
            "{}: payload on {topic} is not the UTF-8 its format indicator says",
            b.sessions[sid].client_id
        );
        return Some(PAYLOAD_FORMAT_INVALID);
    }
    None
}

fn ack(
    b: &mut Broker,
    id: ConnId,
    v5: bool,
    kind: u8,
    packet_id: u16,
    reason: Option<u8>,
    matched: bool,
) {
    let out = b.out(id);
    if v5 {
        let code = reason.unwrap_or(if matched { 0 } else { NO_MATCHING_SUBSCRIBERS });
        wire::encode_ack_v5(out, kind, packet_id, code, None);
    } else {
        wire::encode_ack(out, kind, packet_id);
    }
    b.stats.messages_sent += 1;
}

/// A client's message is in: route it to subscribers and, on a device topic, to the executor
/// (a command message reaches subscribers too unless `devices_route_commands` is off).
/// Returns whether anything took it (for MQTT 5's "no matching subscribers").
fn accept(b: &mut Broker, id: ConnId, p: &Publish<'_>, topic: &str, now: Instant) -> bool {
    let observed = super::devices::observed(b, topic);
    let mut matched = 0;
    if observed != Observed::Command || super::devices::route_commands(b) {
        matched = route(
            b,
            topic,
            p.payload,
            p.qos,
            p.retain,
            Some(id),
            Some(&p.properties),
        );
    }
    if observed != Observed::No {
        let reply = p
            .properties
            .str(id::RESPONSE_TOPIC)
            .map(|t| (t, p.properties.binary(id::CORRELATION_DATA)));
        super::devices::on_publish(b, topic, p.payload, now, Some(id), reply);
    }
    matched > 0 || observed == Observed::Command
}

/// The MQTT 5 properties forwarded with a message: all but Topic Alias, Message Expiry (kept
/// as a deadline) and Subscription Identifier (per subscriber).
fn forwarded<'a>(props: &Properties<'a>) -> impl Iterator<Item = &'a [u8]> + Clone + 'a {
    props.iter().filter_map(|(p, raw)| match p {
        Property::U16(id::TOPIC_ALIAS, _) | Property::U32(id::MESSAGE_EXPIRY_INTERVAL, _) => None,
        Property::VarInt(id::SUBSCRIPTION_IDENTIFIER, _) => None,
        _ => Some(raw),
    })
}

/// Route a message to every matching session and update the retained store. Used for client
/// publishes (`from` is the publisher's connection), wills, `$SYS` and the device executor.
/// Returns the number of sessions it went to.
pub(super) fn route(
    b: &mut Broker,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    from: Option<ConnId>,
    props: Option<&Properties<'_>>,
) -> usize {
    let expiry = props
        .and_then(|p| p.u32(id::MESSAGE_EXPIRY_INTERVAL))
        .map(|s| b.now + Duration::from_secs(s as u64));
    let has_props = props.is_some_and(|p| forwarded(p).next().is_some());
    if has_props || expiry.is_some() {
        let fwd = props.map(forwarded);
        let m = b.pool.store_iter(
            topic,
            fwd.into_iter().flatten(),
            payload,
            qos,
            retain,
            expiry,
        );
        let n = route_stored(b, topic, m, from);
        b.pool.release(m);
        return n;
    }
    let mut slot: Option<MsgId> = None;
    if retain {
        update_retained(
            b,
            topic,
            payload.is_empty(),
            &mut || None,
            &mut slot,
            payload,
            qos,
        );
    }
    let n = match_sessions(b, topic, from);
    for i in 0..n {
        let (sid, q, keep_retain, sub_ids) = matched(b, i, qos, retain);
        if !b.acl_allows(sid, topic, Access::Read) {
            continue;
        }
        deliver(
            b,
            sid,
            Source::View {
                topic,
                payload,
                slot: &mut slot,
            },
            q,
            keep_retain,
            from,
            sub_ids,
        );
    }
    if let Some(m) = slot {
        b.pool.release(m);
    }
    n
}

/// Route a message already in the pool (`topic` is its topic, passed separately so the pool
/// may change while routing).
pub(super) fn route_stored(b: &mut Broker, topic: &str, m: MsgId, from: Option<ConnId>) -> usize {
    let (qos, retain, empty) = {
        let msg = b.pool.get(m);
        (msg.qos, msg.retain, msg.payload().is_empty())
    };
    if retain {
        let mut none = None;
        update_retained(b, topic, empty, &mut || Some(m), &mut none, &[], qos);
    }
    let n = match_sessions(b, topic, from);
    for i in 0..n {
        let (sid, q, keep_retain, sub_ids) = matched(b, i, qos, retain);
        if !b.acl_allows(sid, topic, Access::Read) {
            continue;
        }
        deliver(b, sid, Source::Stored(m), q, keep_retain, from, sub_ids);
    }
    n
}

/// Set or delete the retained message of `topic`: `stored` gives a pooled copy if there is
/// one, else the payload is stored into `slot`.
fn update_retained(
    b: &mut Broker,
    topic: &str,
    empty: bool,
    stored: &mut dyn FnMut() -> Option<MsgId>,
    slot: &mut Option<MsgId>,
    payload: &[u8],
    qos: u8,
) {
    let (old, new) = if empty {
        (b.retained.remove(topic), None)
    } else {
        let m = match stored() {
            Some(m) => m,
            None => *slot.get_or_insert_with(|| b.pool.store(topic, payload, qos, true)),
        };
        b.pool.retain(m);
        (b.retained.set(topic, m), Some(m))
    };
    if old.is_some() || new.is_some() {
        b.journal_retained(topic, new);
    }
    if let Some(old) = old {
        b.pool.release(old);
    }
}

/// Collect each matching session once, at the highest QoS its subscriptions grant, with all
/// their Subscription Identifiers; one member of each matching shared group. Returns the
/// number of sessions, listed in `b.matches`.
fn match_sessions(b: &mut Broker, topic: &str, from: Option<ConnId>) -> usize {
    b.match_epoch += 1;
    let epoch = b.match_epoch;
    let from_session = from.and_then(|c| b.conns.get(c)?.as_ref()?.session);
    let Broker {
        subs,
        sessions,
        matches,
        shared_matches,
        ..
    } = b;
    matches.clear();
    shared_matches.clear();
    subs.for_each_match(topic, &mut |m| match m {
        Match::Entry(e) => {
            if !(e.no_local() && Some(e.session) == from_session) {
                add_match(sessions, matches, epoch, e);
            }
        }
        Match::Shared { node, group } => shared_matches.push((node, group)),
    });
    for &(node, group) in shared_matches.iter() {
        let online = |s: SessionId| sessions.get(s).is_some_and(|s| s.conn.is_some());
        if let Some(e) = subs.pick_shared(node, group, online) {
            add_match(sessions, matches, epoch, e);
        }
    }
    matches.len()
}

fn add_match(
    sessions: &mut slab::Slab<Session>,
    matches: &mut Vec<SessionId>,
    epoch: u64,
    e: SubEntry,
) {
    let s = &mut sessions[e.session];
    if s.match_epoch != epoch {
        s.match_epoch = epoch;
        s.match_qos = e.qos;
        s.match_rap = e.retain_as_published();
        s.match_sub_ids.clear();
        matches.push(e.session);
    } else {
        s.match_qos = s.match_qos.max(e.qos);
        s.match_rap |= e.retain_as_published();
    }
    if e.sub_id != 0 && !s.match_sub_ids.contains(&e.sub_id) {
        let _ = s.match_sub_ids.push(e.sub_id);
    }
}

/// The i-th matched session: (session, QoS to deliver at, RETAIN flag, identifiers).
fn matched(b: &Broker, i: usize, qos: u8, retain: bool) -> (SessionId, u8, bool, SubIds) {
    let sid = b.matches[i];
    let s = &b.sessions[sid];
    // RETAIN is cleared on forwarding (spec 3.3.1.3) unless Retain As Published asks to keep it.
    (
        sid,
        qos.min(s.match_qos),
        retain && s.match_rap,
        s.match_sub_ids.clone(),
    )
}

/// A message being delivered: a view still in the read buffer (stored into `slot` on first
/// need and shared by every session of this routing pass), or a message already in the pool.
pub(super) enum Source<'a, 's> {
    View {
        topic: &'a str,
        payload: &'a [u8],
        slot: &'s mut Option<MsgId>,
    },
    Stored(MsgId),
}

impl Source<'_, '_> {
    fn payload_len(&self, pool: &MessagePool) -> usize {
        match self {
            Source::View { payload, .. } => payload.len(),
            Source::Stored(m) => pool.get(*m).payload().len(),
        }
    }

    /// The message in the pool, with one more reference taken for the caller.
    fn hold(&mut self, pool: &mut MessagePool, qos: u8) -> MsgId {
        let m = match self {
            Source::View {
                topic,
                payload,
                slot,
            } => *slot.get_or_insert_with(|| pool.store(topic, payload, qos, false)),
            Source::Stored(m) => *m,
        };
        pool.retain(m);
        m
    }
}

/// What one delivery of a message to one connection looks like.
pub(super) struct Delivery<'a> {
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
    pub sub_ids: &'a SubIds,
}

/// Encode a PUBLISH for `conn` (3.1.x or MQTT 5) from a view or a stored message. Returns
/// false, writing nothing, if it exceeds the client's Maximum Packet Size.
fn write(
    conn: &mut Conn,
    src: &Source<'_, '_>,
    pool: &MessagePool,
    d: &Delivery<'_>,
    now: Instant,
    cfg: &BrokerConfig,
) -> bool {
    let alias_cap = cfg.max_topic_alias;
    let (topic, props, payload, expiry): (&[u8], &[u8], &[u8], _) = match src {
        Source::View { topic, payload, .. } => (topic.as_bytes(), &[], payload, None),
        Source::Stored(m) => {
            let m = pool.get(*m);
            (m.topic(), m.properties(), m.payload(), m.expiry)
        }
    };
    // To upstream over a bridge: the topic's remote name (no topic aliases: the bridge sets
    // none, so the name is written in its two parts), and RETAIN only if upstream has it.
    if let Some(spec) = cfg.bridges.get(conn.bridge as usize) {
        let remote = to_remote(spec, topic);
        let props_len = conn.v5.then(|| {
            props.len()
                + expiry.map_or(0, |_| 5)
                + d.sub_ids
                    .iter()
                    .map(|&s| 1 + varint_len(s as usize))
                    .sum::<usize>()
        });
        let len = publish_len(
            remote.0.len() + remote.1.len(),
            d.qos,
            props_len,
            payload.len(),
        );
        if len > conn.max_packet {
            return false;
        }
        wire::encode_publish_header_split(
            &mut conn.out,
            remote,
            d.qos,
            d.retain && conn.retain_out,
            d.dup,
            d.packet_id,
            props_len,
            payload.len(),
        );
        if conn.v5 {
            write_expiry(&mut conn.out, expiry, now);
            conn.out.extend_from_slice(props);
            for &s in d.sub_ids.iter() {
                conn.out.push(id::SUBSCRIPTION_IDENTIFIER);
                wire::put_varint(&mut conn.out, s as usize);
            }
        }
        conn.out.extend_from_slice(payload);
        return true;
    }
    if !conn.v5 {
        wire::encode_publish_header(
            &mut conn.out,
            topic,
            d.qos,
            d.retain,
            d.dup,
            d.packet_id,
            payload.len(),
        );
        conn.out.extend_from_slice(payload);
        return true;
    }
    // Outbound Topic Alias: the first message on a topic carries the topic and a new alias,
    // later ones only the alias (an empty topic), while the client's maximum allows.
    let topic_str = std::str::from_utf8(topic).unwrap_or("");
    let cap = conn.alias_max_out.min(alias_cap);
    let out_aliases = match (&mut conn.aliases, cap) {
        (_, 0) => None,
        (slot, _) => Some(&mut slot.get_or_insert_with(Default::default).outbound),
    };
    let (alias, send_topic) = match out_aliases.as_ref().and_then(|m| m.get(topic_str)) {
        Some(&a) => (Some(a), false),
        None if out_aliases.as_ref().is_some_and(|m| (m.len() as u16) < cap) => {
            let m = out_aliases.expect("aliases");
            let a = m.len() as u16 + 1;
            m.insert(topic_str.into(), a);
            (Some(a), true)
        }
        None => (None, true),
    };
    let mut props_len =
        props.len() + if alias.is_some() { 3 } else { 0 } + if expiry.is_some() { 5 } else { 0 };
    for &s in d.sub_ids.iter() {
        props_len += 1 + varint_len(s as usize);
    }
    let wire_topic: &[u8] = if send_topic { topic } else { &[] };
    if publish_len(wire_topic.len(), d.qos, Some(props_len), payload.len()) > conn.max_packet {
        if let Some(a) = alias.filter(|_| send_topic) {
            // The alias was never sent: forget it.
            if let Some(al) = conn.aliases.as_mut() {
                al.outbound.retain(|_, v| *v != a);
            }
        }
        return false;
    }
    let out = &mut conn.out;
    encode_publish_header_v5(
        out,
        wire_topic,
        d.qos,
        d.retain,
        d.dup,
        d.packet_id,
        Some(props_len),
        payload.len(),
    );
    if let Some(a) = alias {
        out.push(id::TOPIC_ALIAS);
        wire::put_u16(out, a);
    }
    write_expiry(out, expiry, now);
    out.extend_from_slice(props);
    for &s in d.sub_ids.iter() {
        out.push(id::SUBSCRIPTION_IDENTIFIER);
        wire::put_varint(out, s as usize);
    }
    out.extend_from_slice(payload);
    true
}

/// The Message Expiry Interval property: the message's remaining lifetime.
fn write_expiry(out: &mut Vec<u8>, expiry: Option<Instant>, now: Instant) {
    if let Some(e) = expiry {
        let remaining = e.saturating_duration_since(now).as_secs_f64().ceil() as u32;
        out.push(id::MESSAGE_EXPIRY_INTERVAL);
        out.extend_from_slice(&remaining.to_be_bytes());
    }
}

/// Would this delivery fit the client's Maximum Packet Size? (Checked before a packet id is
/// spent on it.) The full topic is counted (an alias only makes it smaller), as a bridge's
/// upstream sees it.
fn fits(
    conn: &Conn,
    src: &Source<'_, '_>,
    pool: &MessagePool,
    qos: u8,
    sub_ids: &SubIds,
    cfg: &BrokerConfig,
) -> bool {
    if conn.max_packet == usize::MAX {
        return true;
    }
    let (topic, props, payload, expiry) = match src {
        Source::View { topic, payload, .. } => (topic.as_bytes(), 0, payload.len(), false),
        Source::Stored(m) => {
            let m = pool.get(*m);
            (
                m.topic(),
                m.properties().len(),
                m.payload().len(),
                m.expiry.is_some(),
            )
        }
    };
    let topic = match cfg.bridges.get(conn.bridge as usize) {
        Some(spec) => {
            let (prefix, rest) = to_remote(spec, topic);
            prefix.len() + rest.len()
        }
        None => topic.len(),
    };
    let mut props_len = props + 3 + if expiry { 5 } else { 0 };
    for &s in sub_ids.iter() {
        props_len += 1 + varint_len(s as usize);
    }
    publish_len(topic, qos, conn.v5.then_some(props_len), payload) <= conn.max_packet
}

/// Deliver one message to one session at QoS `qos`: into its output buffer if nothing is
/// queued ahead of it and the buffer and in-flight window allow, else into its queue.
///
/// A full queue (DESIGN.md contract 2): QoS 0, and anything for an offline session, is dropped
/// and counted. A QoS 1/2 message for an online session is queued anyway and its publisher
/// `from` is paused (not read from) until this queue drains below its limit, so reliable
/// messages slow the publisher down instead of being lost. A publisher is only paused on a
/// session whose own connection is not paused: a paused connection's acknowledgements wait
/// behind its unread publishes, so a cycle of pauses would never clear, and refusing to close
/// one keeps it impossible. When the pause is refused, the message is dropped and counted.
pub(super) fn deliver(
    b: &mut Broker,
    sid: SessionId,
    mut src: Source<'_, '_>,
    qos: u8,
    retain: bool,
    from: Option<ConnId>,
    sub_ids: SubIds,
) {
    let now = b.now;
    let Broker {
        sessions,
        conns,
        pool,
        cfg,
        dirty,
        stats,
        journal,
        next_store_id,
        ..
    } = b;
    let s = &mut sessions[sid];
    if let Source::Stored(m) = src {
        if pool.get(m).is_expired(now) {
            return;
        }
    }
    let conn = s.conn.and_then(|c| conns[c].as_mut().map(|conn| (c, conn)));
    if let Some((cid, conn)) = conn {
        // An upstream broker's Maximum QoS (a bridge's link) caps what is sent now; a queued
        // message is capped when `pump` sends it.
        let qos = qos.min(conn.max_qos_out);
        if !fits(conn, &src, pool, qos, &sub_ids, cfg) {
            stats.publish_dropped += 1;
            stats.dropped.too_large += 1;
            log::debug!(
                "{}: message larger than its Maximum Packet Size, dropped",
                s.client_id
            );
            return;
        }
        let can_send_now = !conn.closing
            && !conn.asleep
            && s.queue.is_empty()
            && conn.out.len() < cfg.output_buffer_soft
            && (qos == 0 || s.inflight.len() < window(cfg, conn));
        if can_send_now {
            let packet_id = if qos > 0 {
                let m = src.hold(pool, qos);
                let (packet_id, seq) = s.next_packet_id();
                persist::journal_hold(
                    journal,
                    next_store_id,
                    pool,
                    s,
                    m,
                    qos,
                    retain,
                    packet_id,
                    &sub_ids,
                    now,
                );
                s.inflight.push_back(Inflight {
                    packet_id,
                    seq,
                    msg: Some(m),
                    qos,
                    retain,
                    awaiting: awaiting(qos),
                    sub_ids: sub_ids.clone(),
                });
                packet_id
            } else {
                0
            };
            let d = Delivery {
                qos,
                retain,
                dup: false,
                packet_id,
                sub_ids: &sub_ids,
            };
            write(conn, &src, pool, &d, now, cfg);
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(cid);
            }
            stats.publish_sent += 1;
            stats.messages_sent += 1;
            return;
        }
    } else if !s.persistent() || (qos == 0 && !cfg.queue_qos0_messages) {
        // Offline: only a lasting session keeps messages, and QoS 0 only if configured. A
        // bridge counts what it could not forward (its `$SYS` dropped count).
        if s.bridge {
            s.dropped += 1;
            stats.publish_dropped += 1;
            stats.dropped.link_down += 1;
        }
        return;
    }
    let len = src.payload_len(pool);
    let full = (cfg.max_queued_messages > 0 && s.queue.len() >= cfg.max_queued_messages)
        || (cfg.max_queued_bytes > 0 && s.queued_bytes + len > cfg.max_queued_bytes);
    let paused =
        full && qos > 0 && s.conn.is_some() && from.is_some_and(|p| pause(conns, s, sid, p));
    if full && !paused {
        s.dropped += 1;
        stats.publish_dropped += 1;
        stats.dropped.queue_full += 1;
        if s.dropped.is_power_of_two() {
            // Rate-limited: one line per doubling, so a flood does not become a log flood.
            log::warn!(
                "Client {}: queue full, {} messages dropped so far",
                s.client_id,
                s.dropped
            );
        }
        return;
    }
    let m = src.hold(pool, qos);
    persist::journal_hold(
        journal,
        next_store_id,
        pool,
        s,
        m,
        qos,
        retain,
        0,
        &sub_ids,
        now,
    );
    s.queued_bytes += len;
    s.queue.push_back(Queued {
        msg: m,
        qos,
        retain,
        sub_ids,
    });
}

/// Pause reading from publisher `p` until session `s` (`sid`) drains; false if not allowed.
fn pause(conns: &mut [Option<Conn>], s: &mut Session, sid: SessionId, p: ConnId) -> bool {
    // A sleeping MQTT-SN client drains only when it wakes: nobody waits on it.
    let target_paused = s
        .conn
        .and_then(|c| conns[c].as_ref())
        .is_none_or(|c| c.paused_on.is_some() || c.asleep);
    if target_paused || s.conn == Some(p) {
        return false;
    }
    let Some(publisher) = conns[p].as_mut() else {
        return false;
    };
    if publisher.paused_on.is_none() {
        publisher.paused_on = Some(sid);
        s.paused_publishers.push(p);
    }
    publisher.paused_on == Some(sid)
}

/// Resume the publishers paused on session `s` once its queue is below its limits again, or
/// once it is offline (from then on its full queue drops, and pauses nobody).
pub(super) fn resume_publishers(
    conns: &mut [Option<Conn>],
    resumed: &mut Vec<ConnId>,
    s: &mut Session,
    sid: SessionId,
    cfg: &BrokerConfig,
) {
    if s.paused_publishers.is_empty() {
        return;
    }
    let below = (cfg.max_queued_messages == 0 || s.queue.len() < cfg.max_queued_messages)
        && (cfg.max_queued_bytes == 0 || s.queued_bytes < cfg.max_queued_bytes);
    if !below && s.conn.is_some() {
        return;
    }
    for &p in &s.paused_publishers {
        if let Some(c) = conns.get_mut(p).and_then(|c| c.as_mut()) {
            if c.paused_on == Some(sid) {
                c.paused_on = None;
                resumed.push(p);
            }
        }
    }
    s.paused_publishers.clear();
}

/// The outgoing in-flight window: `max_inflight_messages` (0 = 65535), and for MQTT 5 no more
/// than the client's Receive Maximum.
fn window(cfg: &BrokerConfig, conn: &Conn) -> usize {
    let ours = match cfg.max_inflight_messages {
        0 => u16::MAX,
        n => n,
    };
    ours.min(conn.receive_max) as usize
}

fn awaiting(qos: u8) -> Awaiting {
    if qos == 1 {
        Awaiting::PubAck
    } else {
        Awaiting::PubRec
    }
}

/// Move queued messages into the output buffer while the buffer and in-flight window allow.
/// Called when output drained, an acknowledgement freed the window, or a session resumed.
pub(super) fn pump(b: &mut Broker, sid: SessionId) {
    let now = b.now;
    let Broker {
        sessions,
        conns,
        pool,
        cfg,
        dirty,
        stats,
        resumed,
        journal,
        ..
    } = b;
    let s = &mut sessions[sid];
    let Some(cid) = s.conn else { return };
    let Some(conn) = conns[cid].as_mut() else {
        return;
    };
    let window = window(cfg, conn);
    let mut wrote = false;
    while let Some(q) = s.queue.front() {
        if conn.closing
            || conn.asleep
            || conn.out.len() >= cfg.output_buffer_soft
            || (q.qos > 0 && s.inflight.len() >= window)
        {
            break;
        }
        let mut q = s.queue.pop_front().expect("front");
        q.qos = q.qos.min(conn.max_qos_out);
        let msg = pool.get(q.msg);
        s.queued_bytes -= msg.payload().len();
        let src = Source::Stored(q.msg);
        let expired = msg.is_expired(now);
        if expired || !fits(conn, &src, pool, q.qos, &q.sub_ids, cfg) {
            // Expired while queued (never delivered, spec 3.3.2.3.3) or too large for the client.
            persist::journal_unqueue(journal, pool, s, q.msg, 0);
            pool.release(q.msg);
            stats.publish_dropped += 1;
            match expired {
                true => stats.dropped.expired += 1,
                false => stats.dropped.too_large += 1,
            }
            wrote = true;
            continue;
        }
        let (packet_id, seq) = if q.qos > 0 {
            s.next_packet_id()
        } else {
            (0, 0)
        };
        let d = Delivery {
            qos: q.qos,
            retain: q.retain,
            dup: false,
            packet_id,
            sub_ids: &q.sub_ids,
        };
        write(conn, &src, pool, &d, now, cfg);
        persist::journal_unqueue(journal, pool, s, q.msg, packet_id);
        if q.qos > 0 {
            // The queue's reference moves to the in-flight entry.
            s.inflight.push_back(Inflight {
                packet_id,
                seq,
                msg: Some(q.msg),
                qos: q.qos,
                retain: q.retain,
                awaiting: awaiting(q.qos),
                sub_ids: q.sub_ids,
            });
        } else {
            pool.release(q.msg);
        }
        stats.publish_sent += 1;
        stats.messages_sent += 1;
        wrote = true;
    }
    if wrote && !conn.dirty {
        conn.dirty = true;
        dirty.push(cid);
    }
    if wrote {
        resume_publishers(conns, resumed, s, sid, cfg);
    }
}

/// Resend an in-flight message after reconnect (spec 4.4): same packet id, DUP set.
pub(super) fn resend(
    conn: &mut Conn,
    pool: &MessagePool,
    i: &Inflight,
    m: MsgId,
    now: Instant,
    cfg: &BrokerConfig,
) {
    let d = Delivery {
        qos: i.qos,
        retain: i.retain,
        // (QoS 0 only for a bridge's upstream that takes no more: no DUP, no packet id.)
        dup: i.qos > 0,
        packet_id: if i.qos > 0 { i.packet_id } else { 0 },
        sub_ids: &i.sub_ids,
    };
    write(conn, &Source::Stored(m), pool, &d, now, cfg);
}
