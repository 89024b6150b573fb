//! PUBACK, PUBREC, PUBREL, PUBCOMP: the QoS 1 and 2 acknowledgement flows in both directions.

use super::session::Awaiting;
use super::{publish, Broker, ConnId, SessionId};
use crate::wire::{self, kind};

/// QoS 1 outgoing: the subscriber has the message.
pub(super) fn puback(b: &mut Broker, sid: SessionId, packet_id: u16) {
    let s = &mut b.sessions[sid];
    // An unknown id is ignored: it may be a late ack of a message resent after reconnect.
    if let Some(i) = s.inflight_position(packet_id, Awaiting::PubAck) {
        if let Some(m) = s.inflight.remove(i).and_then(|e| e.msg) {
            b.pool.release(m);
        }
        publish::pump(b, sid);
    }
}

/// QoS 2 outgoing, step 1: the subscriber has the message; release it and answer PUBREL.
pub(super) fn pubrec(b: &mut Broker, id: ConnId, sid: SessionId, packet_id: u16) {
    let s = &mut b.sessions[sid];
    let known = match s.inflight_position(packet_id, Awaiting::PubRec) {
        Some(i) => {
            let e = &mut s.inflight[i];
            e.awaiting = Awaiting::PubComp;
            if let Some(m) = e.msg.take() {
                b.pool.release(m);
            }
            true
        }
        // A repeated PUBREC for a message already past it: PUBREL again.
        None => s.inflight_position(packet_id, Awaiting::PubComp).is_some(),
    };
    if known {
        wire::encode_ack(b.out(id), kind::PUBREL, packet_id);
        b.stats.messages_sent += 1;
    }
}

/// QoS 2 outgoing, step 2: done; the packet id is free.
pub(super) fn pubcomp(b: &mut Broker, sid: SessionId, packet_id: u16) {
    let s = &mut b.sessions[sid];
    if let Some(i) = s.inflight_position(packet_id, Awaiting::PubComp) {
        s.inflight.remove(i);
        publish::pump(b, sid);
    }
}

/// QoS 2 incoming: the publisher releases the packet id; answer PUBCOMP whether or not it
/// was known (the PUBREL may be a resend after our PUBCOMP was lost).
pub(super) fn pubrel(b: &mut Broker, id: ConnId, sid: SessionId, packet_id: u16) {
    let ids = &mut b.sessions[sid].qos2_incoming;
    if let Some(i) = ids.iter().position(|&p| p == packet_id) {
        ids.swap_remove(i);
    }
    wire::encode_ack(b.out(id), kind::PUBCOMP, packet_id);
    b.stats.messages_sent += 1;
}
