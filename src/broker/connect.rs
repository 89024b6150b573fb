//! CONNECT: check the protocol level, client id and credentials, take over or resume the
//! session, answer CONNACK, and resend what was in flight for a resumed session.

use super::session::{Awaiting, Session};
use super::{publish, topic, Broker, ConnId};
use crate::wire::{self, ConnAck, Connect, DecodeError, LEVEL_31};
use std::time::Instant;

pub(super) fn handle(b: &mut Broker, id: ConnId, c: Connect<'_>, now: Instant) {
    let who = super::peer(&b.conns[id].as_ref().and_then(|c| c.peer));
    if !c.is_supported_level() {
        log::info!(
            "Connection from {who} refused: unsupported protocol {} level {}",
            c.protocol_name,
            c.level
        );
        return refuse(b, id, ConnAck::UnacceptableProtocolVersion, now);
    }
    if let Some(w) = &c.will {
        if !topic::valid_name(w.topic) {
            return b.protocol_error(id, DecodeError::protocol("invalid will topic"), now);
        }
        if w.retain && !b.cfg.retain_available {
            return b.protocol_error(
                id,
                DecodeError::protocol("retained will, but retain is not available"),
                now,
            );
        }
    }
    // Client identifier rules (3.1.1 section 3.1.3.1; 3.1 requires 1 to 23 characters).
    let assigned;
    let client_id = if c.client_id.is_empty() {
        if c.level == LEVEL_31 || !c.clean_session {
            log::info!("Connection from {who} refused: empty client id without clean session");
            return refuse(b, id, ConnAck::IdentifierRejected, now);
        }
        assigned = b.assign_client_id();
        assigned.as_str()
    } else {
        c.client_id
    };
    if c.level == LEVEL_31 && client_id.len() > 23 {
        log::info!("Connection from {who} refused: MQTT 3.1 client id longer than 23 characters");
        return refuse(b, id, ConnAck::IdentifierRejected, now);
    }
    // Mosquitto's rule: with a max_keepalive set, 3.1.x clients asking for more, or for 0 (no
    // keep-alive at all), are refused, since there is no way to tell them the limit.
    // max_keepalive 0 means no limit.
    let max = b.cfg.max_keepalive;
    if max > 0 && (c.keep_alive > max || c.keep_alive == 0) {
        log::info!(
            "Client {client_id} refused: keep-alive {} is not within max_keepalive {max}",
            c.keep_alive
        );
        return refuse(b, id, ConnAck::IdentifierRejected, now);
    }
    if c.username.is_none() && !b.cfg.allow_anonymous {
        log::info!("Client {client_id} refused: anonymous clients are not allowed");
        return refuse(b, id, ConnAck::NotAuthorized, now);
    }

    // Takeover: a connection already using this client id is closed, with its will.
    let existing = b.by_client_id.get(client_id).copied();
    if let Some(old_conn) = existing.and_then(|sid| b.sessions[sid].conn) {
        log::info!("Client {client_id} already connected, closing the old connection");
        b.end_connection(old_conn, "session taken over", true, now);
    }
    // The old connection's end may have removed a non-persistent session.
    let existing = b.by_client_id.get(client_id).copied();
    let (sid, session_present) = match existing {
        Some(sid) if !c.clean_session => (sid, true),
        other => {
            if let Some(sid) = other {
                b.remove_session(sid);
            }
            let sid = b.sessions.insert(Session::new(client_id, !c.clean_session));
            b.by_client_id.insert(client_id.into(), sid);
            (sid, false)
        }
    };
    b.sessions[sid].persistent = !c.clean_session;
    b.sessions[sid].conn = Some(id);

    let will = c
        .will
        .map(|w| b.pool.store(w.topic, w.payload, w.qos, w.retain));
    let conn = b.conns[id].as_mut().expect("connection is open");
    conn.session = Some(sid);
    conn.client_id = client_id.into();
    conn.level = c.level;
    conn.keep_alive = c.keep_alive;
    conn.will = will;
    b.arm_keep_alive(id, now);
    b.stats.clients_connected += 1;
    b.stats.clients_maximum = b.stats.clients_maximum.max(b.stats.clients_connected);
    log::info!(
        "New client connected from {who} as {client_id} (p{}, c{}, k{}{}).",
        c.level,
        c.clean_session as u8,
        c.keep_alive,
        c.username.map(|u| format!(", u'{u}'")).unwrap_or_default()
    );
    ConnAck::Accepted.encode(b.out(id), session_present);
    b.stats.messages_sent += 1;
    if session_present {
        resend_inflight(b, id, sid);
        publish::pump(b, sid);
    }
}

/// Refuse with a return code, then close. No will: the client never connected.
fn refuse(b: &mut Broker, id: ConnId, code: ConnAck, now: Instant) {
    code.encode(b.out(id), false);
    b.stats.messages_sent += 1;
    b.end_connection(id, "connection refused", false, now);
}

/// Spec 4.4: on reconnect with a kept session, resend unacknowledged PUBLISH packets with DUP
/// set and unacknowledged PUBRELs, in their original order.
fn resend_inflight(b: &mut Broker, id: ConnId, sid: usize) {
    let Broker {
        sessions,
        conns,
        pool,
        dirty,
        stats,
        ..
    } = b;
    let session = &sessions[sid];
    let conn = conns[id].as_mut().expect("connection is open");
    for i in &session.inflight {
        match (i.awaiting, i.msg) {
            (Awaiting::PubComp, _) => {
                wire::encode_ack(&mut conn.out, wire::kind::PUBREL, i.packet_id)
            }
            (_, Some(m)) => {
                publish::write_publish(
                    &mut conn.out,
                    pool.get(m),
                    i.qos,
                    i.retain,
                    true,
                    i.packet_id,
                );
                stats.publish_sent += 1;
            }
            (_, None) => continue,
        }
        stats.messages_sent += 1;
    }
    if !session.inflight.is_empty() && !conn.dirty {
        conn.dirty = true;
        dirty.push(id);
    }
}
