//! SUBSCRIBE and UNSUBSCRIBE: update the subscription table and the session's list, answer,
//! then send the retained messages the new subscriptions match.

use super::publish::{deliver, Source};
use super::subs::SubEntry;
use super::{topic, Broker, ConnId, SessionId};
use crate::wire::{self, SubAck, Subscribe, Unsubscribe};

/// SUBACK return code for a filter that is refused.
const FAILURE: u8 = 0x80;

pub(super) fn subscribe(b: &mut Broker, id: ConnId, sid: SessionId, s: Subscribe<'_>) {
    let count = s.filters.clone().count();
    SubAck::encode_header(b.out(id), s.packet_id, count);
    for (filter, qos) in s.filters.clone() {
        let code = if topic::valid_filter(filter) {
            b.subs.insert(filter, SubEntry { session: sid, qos });
            let list = &mut b.sessions[sid].subscriptions;
            match list.iter_mut().find(|(f, _)| &**f == filter) {
                // Resubscribing replaces the QoS (spec 3.8.4).
                Some(entry) => entry.1 = qos,
                None => list.push((filter.into(), qos)),
            }
            log::debug!(
                "{} subscribed to {filter} (QoS {qos})",
                b.sessions[sid].client_id
            );
            qos
        } else {
            log::debug!(
                "{} sent an invalid filter {filter:?}",
                b.sessions[sid].client_id
            );
            FAILURE
        };
        b.out(id).push(code);
    }
    b.stats.messages_sent += 1;

    // Retained messages after the SUBACK, with RETAIN set (spec 3.3.1.3).
    for (filter, qos) in s.filters {
        if !topic::valid_filter(filter) {
            continue;
        }
        let mut found = std::mem::take(&mut b.retained_scratch);
        found.clear();
        b.retained.for_each_match(filter, &mut |m| found.push(m));
        for &m in &found {
            let q = qos.min(b.pool.get(m).qos);
            deliver(b, sid, Source::Stored(m), q, true, None);
        }
        b.retained_scratch = found;
    }
}

pub(super) fn unsubscribe(b: &mut Broker, id: ConnId, sid: SessionId, u: Unsubscribe<'_>) {
    for (filter, _) in u.filters {
        b.subs.remove(filter, sid);
        let list = &mut b.sessions[sid].subscriptions;
        if let Some(i) = list.iter().position(|(f, _)| &**f == filter) {
            list.swap_remove(i);
        }
        log::debug!("{} unsubscribed from {filter}", b.sessions[sid].client_id);
    }
    wire::encode_unsuback(b.out(id), u.packet_id);
    b.stats.messages_sent += 1;
}
