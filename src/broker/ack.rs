//! PUBACK, PUBREC, PUBREL, PUBCOMP: the QoS 1 and 2 acknowledgement flows in both directions.

use super::persist::AckStep;
use super::session::Awaiting;
use super::{publish, Broker, ConnId, SessionId};
use crate::wire::{self, kind, Ack};

/// MQTT 5: Packet Identifier not found.
const PACKET_ID_NOT_FOUND: u8 = 0x92;

fn is_v5(b: &Broker, id: ConnId) -> bool {
    b.conns
        .get(id)
        .and_then(|c| c.as_ref())
        .is_some_and(|c| c.v5)
}

/// QoS 1 outgoing: the subscriber has the message (or, MQTT 5, refused it: done either way).
pub(super) fn puback(b: &mut Broker, sid: SessionId, a: Ack) {
    let s = &mut b.sessions[sid];
    // An unknown id is ignored: it may be a late ack of a message resent after reconnect.
    if let Some(i) = s.inflight_position(a.packet_id, Awaiting::PubAck) {
        if let Some(m) = s.inflight.remove(i).and_then(|e| e.msg) {
            b.pool.release(m);
        }
        b.journal_ack(sid, AckStep::Done(a.packet_id));
        publish::pump(b, sid);
    }
}

/// QoS 2 outgoing, step 1: the subscriber has the message; release it and answer PUBREL. An
/// MQTT 5 PUBREC with an error code (0x80 and up) ends the flow instead (spec 4.3.3).
pub(super) fn pubrec(b: &mut Broker, id: ConnId, sid: SessionId, a: Ack) {
    let v5 = is_v5(b, id);
    let s = &mut b.sessions[sid];
    let known = match s.inflight_position(a.packet_id, Awaiting::PubRec) {
        Some(i) if a.reason >= 0x80 => {
            if let Some(m) = s.inflight.remove(i).and_then(|e| e.msg) {
                b.pool.release(m);
            }
            b.journal_ack(sid, AckStep::Done(a.packet_id));
            publish::pump(b, sid);
            return;
        }
        Some(i) => {
            let e = &mut s.inflight[i];
            e.awaiting = Awaiting::PubComp;
            if let Some(m) = e.msg.take() {
                b.pool.release(m);
            }
            b.journal_ack(sid, AckStep::Released(a.packet_id));
            true
        }
        // A repeated PUBREC for a message already past it: PUBREL again.
        None => s
            .inflight_position(a.packet_id, Awaiting::PubComp)
            .is_some(),
    };
    if v5 {
        let code = if known { 0 } else { PACKET_ID_NOT_FOUND };
        wire::encode_ack_v5(b.out(id), kind::PUBREL, a.packet_id, code, None);
    } else if known {
        wire::encode_ack(b.out(id), kind::PUBREL, a.packet_id);
    } else {
        return;
    }
    b.stats.messages_sent += 1;
}

/// QoS 2 outgoing, step 2: done; the packet id is free.
pub(super) fn pubcomp(b: &mut Broker, _id: ConnId, sid: SessionId, a: Ack) {
    let s = &mut b.sessions[sid];
    if let Some(i) = s.inflight_position(a.packet_id, Awaiting::PubComp) {
        s.inflight.remove(i);
        b.journal_ack(sid, AckStep::Done(a.packet_id));
        publish::pump(b, sid);
    }
}

/// QoS 2 incoming: the publisher releases the packet id; answer PUBCOMP whether or not it
/// was known (the PUBREL may be a resend after our PUBCOMP was lost). MQTT 5 says which.
pub(super) fn pubrel(b: &mut Broker, id: ConnId, sid: SessionId, a: Ack) {
    let ids = &mut b.sessions[sid].qos2_incoming;
    let known = match ids.iter().position(|&p| p == a.packet_id) {
        Some(i) => {
            ids.swap_remove(i);
            true
        }
        None => false,
    };
    if known {
        b.journal_ack(sid, AckStep::Qos2InDone(a.packet_id));
    }
    if is_v5(b, id) {
        let code = if known { 0 } else { PACKET_ID_NOT_FOUND };
        wire::encode_ack_v5(b.out(id), kind::PUBCOMP, a.packet_id, code, None);
    } else {
        wire::encode_ack(b.out(id), kind::PUBCOMP, a.packet_id);
    }
    b.stats.messages_sent += 1;
}
