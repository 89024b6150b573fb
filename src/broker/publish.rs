//! PUBLISH from a client, routing to the matching sessions, and delivery: straight into the
//! subscriber's output buffer when it can take it, else into its queue.
//!
//! A message is copied out of the read buffer into the pool only when something must hold it
//! (a retained slot, an in-flight window, a queue); a QoS 0 message to subscribers that can
//! take it at once is encoded from the read buffer and never stored.

use super::message::{Message, MessagePool, MsgId};
use super::session::{Awaiting, Inflight, Queued};
use super::{Broker, ConnId, SessionId};
use crate::devices::Observed;
use crate::wire::{self, encode_publish_header, DecodeError, Publish};
use std::time::Instant;

pub(super) fn handle(b: &mut Broker, id: ConnId, sid: SessionId, p: Publish<'_>, now: Instant) {
    b.stats.publish_received += 1;
    if p.retain && !b.cfg.retain_available {
        return b.protocol_error(
            id,
            DecodeError::protocol("retained PUBLISH, but retain is not available"),
            now,
        );
    }
    let oversized = b.cfg.message_size_limit > 0 && p.payload.len() > b.cfg.message_size_limit;
    if oversized {
        log::debug!(
            "Dropped a {}-byte message on {} from {}: above message_size_limit",
            p.payload.len(),
            p.topic,
            b.sessions[sid].client_id
        );
        b.stats.publish_dropped += 1;
    }
    match p.qos {
        0 => {
            if !oversized {
                accept(b, id, &p, now);
            }
        }
        1 => {
            if !oversized {
                accept(b, id, &p, now);
            }
            wire::encode_ack(b.out(id), wire::kind::PUBACK, p.packet_id);
            b.stats.messages_sent += 1;
        }
        _ => {
            // Exactly once (spec 4.3.3, method B): deliver now, remember the packet id until
            // PUBREL, and treat any PUBLISH with that id until then as a resend.
            let seen = b.sessions[sid].qos2_incoming.contains(&p.packet_id);
            if !seen {
                if !oversized {
                    accept(b, id, &p, now);
                }
                b.sessions[sid].qos2_incoming.push(p.packet_id);
            }
            wire::encode_ack(b.out(id), wire::kind::PUBREC, p.packet_id);
            b.stats.messages_sent += 1;
        }
    }
}

/// A client's message is in: route it to subscribers and, on a device topic, to the executor
/// (a command message reaches subscribers too unless `devices_route_commands` is off).
fn accept(b: &mut Broker, id: ConnId, p: &Publish<'_>, now: Instant) {
    let observed = super::devices::observed(b, p.topic);
    if observed != Observed::Command || super::devices::route_commands(b) {
        route(b, p.topic, p.payload, p.qos, p.retain, Some(id));
    }
    if observed != Observed::No {
        super::devices::on_publish(b, p.topic, p.payload, now, id);
    }
}

/// Route a message to every matching session and update the retained store.
/// Used for client publishes (`from` is the publisher's connection), wills and `$SYS`.
pub(super) fn route(
    b: &mut Broker,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    from: Option<ConnId>,
) {
    let mut slot: Option<MsgId> = None;
    if retain {
        let old = if payload.is_empty() {
            b.retained.remove(topic)
        } else {
            let m = b.pool.store(topic, payload, qos, true);
            slot = Some(m);
            b.pool.retain(m);
            b.retained.set(topic, m)
        };
        if let Some(old) = old {
            b.pool.release(old);
        }
    }

    // Collect each matching session once, at the highest QoS its subscriptions grant.
    b.match_epoch += 1;
    let epoch = b.match_epoch;
    let Broker {
        subs,
        sessions,
        matches,
        ..
    } = b;
    matches.clear();
    subs.for_each_match(topic, &mut |e| {
        let s = &mut sessions[e.session];
        if s.match_epoch != epoch {
            s.match_epoch = epoch;
            s.match_qos = e.qos;
            matches.push(e.session);
        } else if e.qos > s.match_qos {
            s.match_qos = e.qos;
        }
    });

    for i in 0..b.matches.len() {
        let sid = b.matches[i];
        let q = qos.min(b.sessions[sid].match_qos);
        deliver(
            b,
            sid,
            Source::View {
                topic,
                payload,
                slot: &mut slot,
            },
            q,
            false,
            from,
        );
    }
    if let Some(m) = slot {
        b.pool.release(m);
    }
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

    fn write(&self, out: &mut Vec<u8>, pool: &MessagePool, qos: u8, retain: bool, packet_id: u16) {
        match self {
            Source::View { topic, payload, .. } => {
                encode_publish_header(
                    out,
                    topic.as_bytes(),
                    qos,
                    retain,
                    false,
                    packet_id,
                    payload.len(),
                );
                out.extend_from_slice(payload);
            }
            Source::Stored(m) => write_publish(out, pool.get(*m), qos, retain, false, packet_id),
        }
    }
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
) {
    let Broker {
        sessions,
        conns,
        pool,
        cfg,
        dirty,
        stats,
        ..
    } = b;
    let s = &mut sessions[sid];
    let conn = s.conn.and_then(|c| conns[c].as_mut().map(|conn| (c, conn)));
    if let Some((cid, conn)) = conn {
        let can_send_now = !conn.closing
            && s.queue.is_empty()
            && conn.out.len() < cfg.output_buffer_soft
            && (qos == 0 || s.inflight.len() < window(cfg));
        if can_send_now {
            let packet_id = if qos > 0 {
                let m = src.hold(pool, qos);
                let packet_id = s.next_packet_id();
                s.inflight.push_back(Inflight {
                    packet_id,
                    msg: Some(m),
                    qos,
                    retain,
                    awaiting: awaiting(qos),
                });
                packet_id
            } else {
                0
            };
            src.write(&mut conn.out, pool, qos, retain, packet_id);
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(cid);
            }
            stats.publish_sent += 1;
            stats.messages_sent += 1;
            return;
        }
    } else if !s.persistent || (qos == 0 && !cfg.queue_qos0_messages) {
        // Offline: only a persistent session keeps messages, and QoS 0 only if configured.
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
    s.queued_bytes += len;
    s.queue.push_back(Queued {
        msg: m,
        qos,
        retain,
    });
}

/// Pause reading from publisher `p` until session `s` (`sid`) drains; false if not allowed.
fn pause(
    conns: &mut [Option<super::Conn>],
    s: &mut super::session::Session,
    sid: SessionId,
    p: ConnId,
) -> bool {
    let target_paused = s
        .conn
        .and_then(|c| conns[c].as_ref())
        .is_none_or(|c| c.paused_on.is_some());
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
    conns: &mut [Option<super::Conn>],
    resumed: &mut Vec<ConnId>,
    s: &mut super::session::Session,
    sid: SessionId,
    cfg: &super::BrokerConfig,
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

fn window(cfg: &super::BrokerConfig) -> usize {
    match cfg.max_inflight_messages {
        0 => u16::MAX as usize,
        n => n as usize,
    }
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
    let Broker {
        sessions,
        conns,
        pool,
        cfg,
        dirty,
        stats,
        resumed,
        ..
    } = b;
    let s = &mut sessions[sid];
    let Some(cid) = s.conn else { return };
    let Some(conn) = conns[cid].as_mut() else {
        return;
    };
    let window = window(cfg);
    let mut wrote = false;
    while let Some(&q) = s.queue.front() {
        if conn.closing
            || conn.out.len() >= cfg.output_buffer_soft
            || (q.qos > 0 && s.inflight.len() >= window)
        {
            break;
        }
        s.queue.pop_front();
        let msg = pool.get(q.msg);
        s.queued_bytes -= msg.payload().len();
        let packet_id = if q.qos > 0 {
            let packet_id = s.next_packet_id();
            // The queue's reference moves to the in-flight entry.
            s.inflight.push_back(Inflight {
                packet_id,
                msg: Some(q.msg),
                qos: q.qos,
                retain: q.retain,
                awaiting: awaiting(q.qos),
            });
            packet_id
        } else {
            0
        };
        write_publish(
            &mut conn.out,
            pool.get(q.msg),
            q.qos,
            q.retain,
            false,
            packet_id,
        );
        if q.qos == 0 {
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

/// Encode a stored message as a PUBLISH with this subscriber's QoS, flags and packet id.
pub(super) fn write_publish(
    out: &mut Vec<u8>,
    m: &Message,
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
) {
    encode_publish_header(
        out,
        m.topic(),
        qos,
        retain,
        dup,
        packet_id,
        m.payload().len(),
    );
    out.extend_from_slice(m.payload());
}
