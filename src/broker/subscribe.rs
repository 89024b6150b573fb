//! SUBSCRIBE and UNSUBSCRIBE: update the subscription table and the session's list, answer,
//! then send the retained messages the new subscriptions match (as Retain Handling says).

use super::publish::{deliver, Source};
use super::session::{SubIds, Subscription};
use super::subs::SubEntry;
use super::{topic, Broker, ConnId, SessionId};
use crate::auth::acl::Access;
use crate::wire::properties::id;
use crate::wire::{self, DecodeError, SubAck, Subscribe, Unsubscribe};
use std::time::Instant;

/// SUBACK codes: 3.1.1 failure, MQTT 5 Topic Filter invalid.
const FAILURE_V3: u8 = 0x80;
const TOPIC_FILTER_INVALID: u8 = 0x8F;
/// SUBACK (MQTT 5): Quota exceeded.
const QUOTA_EXCEEDED: u8 = 0x97;
/// SUBACK (MQTT 5): Not authorized.
const NOT_AUTHORIZED: u8 = 0x87;
/// UNSUBACK (MQTT 5): No subscription existed.
const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;

/// Would the ACL ever let a message through this filter? (Shared: the filter inside.)
fn may_subscribe(b: &Broker, sid: SessionId, filter: &str) -> bool {
    let s = &b.sessions[sid];
    b.policy(s.listener).acl.as_ref().is_none_or(|acl| {
        acl.may_subscribe(s.username.as_deref(), &s.client_id, split_shared(filter).1)
    })
}

/// `$share/<group>/<filter>` → (Some(group), filter); anything else → (None, filter).
pub(super) fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((group, f)) => (Some(group), f),
        None => (None, filter),
    }
}

/// Whether a subscribed filter is valid, shared form included (spec 4.8.2: a share name is
/// not empty and has no wildcard).
fn valid(filter: &str) -> bool {
    if let Some(rest) = filter.strip_prefix("$share/") {
        return match rest.split_once('/') {
            Some((group, f)) => {
                !group.is_empty() && !group.contains(['+', '#']) && topic::valid_filter(f)
            }
            None => false,
        };
    }
    topic::valid_filter(filter)
}

pub(super) fn subscribe(
    b: &mut Broker,
    id: ConnId,
    sid: SessionId,
    s: Subscribe<'_>,
    now: Instant,
) {
    let v5 = b.conns[id].as_ref().is_some_and(|c| c.v5);
    // Another broker's bridge gets No Local and Retain As Published on every subscription
    // (what Mosquitto gives a bridge that connects with its mark).
    let bridge_options = match b.conns[id].as_ref().is_some_and(|c| c.peer_bridge) {
        true => 0x04 | 0x08,
        false => 0,
    };
    // Spec 3.8.3.1: No Local on a shared subscription is a protocol error.
    if s.filters
        .clone()
        .any(|(f, o)| o.no_local() && f.starts_with("$share/") && valid(f))
    {
        return b.protocol_error(
            id,
            DecodeError::protocol("No Local on a shared subscription"),
            now,
        );
    }
    let sub_id = s
        .properties
        .varint(id::SUBSCRIPTION_IDENTIFIER)
        .unwrap_or(0);
    let count = s.filters.clone().count();
    SubAck::encode_header(b.out(id), s.packet_id, count, v5);
    let mut new_flags: u64 = 0;
    for (i, (filter, options)) in s.filters.clone().enumerate() {
        let within = b.topic_within_limits(filter);
        let subs = &b.sessions[sid].subscriptions;
        let quota = b.cfg.max_subscriptions_per_client;
        let over_quota =
            quota > 0 && subs.len() >= quota && !subs.iter().any(|x| &*x.filter == filter);
        let allowed = valid(filter) && within && !over_quota && may_subscribe(b, sid, filter);
        let code = if allowed {
            let qos = options.qos().min(b.cfg.max_qos);
            let (share, f) = split_shared(filter);
            let entry = SubEntry {
                session: sid,
                qos,
                options: options.0 | bridge_options,
                sub_id,
            };
            if b.subs.insert(f, entry, share) && i < 64 {
                new_flags |= 1 << i;
            }
            let list = &mut b.sessions[sid].subscriptions;
            match list.iter_mut().find(|x| &*x.filter == filter) {
                // Resubscribing replaces the options (spec 3.8.4).
                Some(x) => {
                    x.options = options.0 | bridge_options;
                    x.sub_id = sub_id;
                }
                None => {
                    // Most clients hold a few subscriptions: grow one at a time from none.
                    if list.capacity() == list.len() {
                        list.reserve_exact(1.max(list.len() / 2));
                    }
                    list.push(Subscription {
                        filter: filter.into(),
                        options: options.0 | bridge_options,
                        sub_id,
                    });
                }
            }
            log::debug!(
                "{} subscribed to {filter} (QoS {qos})",
                b.sessions[sid].client_id
            );
            qos
        } else if over_quota && valid(filter) && within {
            log::debug!(
                "{}: subscription quota of {quota} reached",
                b.sessions[sid].client_id
            );
            if v5 {
                QUOTA_EXCEEDED
            } else {
                FAILURE_V3
            }
        } else if valid(filter) && within {
            log::debug!(
                "{}: subscription to {filter} denied by the ACL",
                b.sessions[sid].client_id
            );
            if v5 {
                NOT_AUTHORIZED
            } else {
                FAILURE_V3
            }
        } else {
            log::debug!(
                "{} sent an invalid filter {filter:?}",
                b.sessions[sid].client_id
            );
            if v5 {
                TOPIC_FILTER_INVALID
            } else {
                FAILURE_V3
            }
        };
        b.out(id).push(code);
    }
    b.stats.messages_sent += 1;
    // The session's record with its new subscriptions, before any retained message it holds.
    b.session_changed(sid);

    // Retained messages after the SUBACK, with RETAIN set (spec 3.3.1.3): not for shared
    // subscriptions, and as Retain Handling says (0 always, 1 only if new, 2 never).
    let mut ids = SubIds::new();
    if sub_id != 0 {
        let _ = ids.push(sub_id);
    }
    for (i, (filter, options)) in s.filters.enumerate() {
        let new = i < 64 && new_flags & (1 << i) != 0;
        let send = match options.retain_handling() {
            0 => true,
            1 => new,
            _ => false,
        };
        // Only for a subscription that was granted (valid, within the limits and the quota,
        // allowed by the ACL).
        let kept = b.sessions[sid]
            .subscriptions
            .iter()
            .any(|x| &*x.filter == filter);
        if !send || !kept || filter.starts_with("$share/") {
            continue;
        }
        let mut found = std::mem::take(&mut b.retained_scratch);
        found.clear();
        b.retained.for_each_match(filter, &mut |m| found.push(m));
        for &m in &found {
            if !b.acl_allows(sid, b.pool.get(m).topic_str(), Access::Read) {
                continue;
            }
            let q = options.qos().min(b.cfg.max_qos).min(b.pool.get(m).qos);
            deliver(b, sid, Source::Stored(m), q, true, None, ids.clone());
        }
        b.retained_scratch = found;
    }
}

pub(super) fn unsubscribe(b: &mut Broker, id: ConnId, sid: SessionId, u: Unsubscribe<'_>) {
    let v5 = b.conns[id].as_ref().is_some_and(|c| c.v5);
    if v5 {
        SubAck::encode_unsuback_header_v5(b.out(id), u.packet_id, u.filters.clone().count());
    }
    for (filter, _) in u.filters {
        let (share, f) = split_shared(filter);
        let existed = b.subs.remove(f, sid, share);
        let list = &mut b.sessions[sid].subscriptions;
        if let Some(i) = list.iter().position(|x| &*x.filter == filter) {
            list.swap_remove(i);
        }
        log::debug!("{} unsubscribed from {filter}", b.sessions[sid].client_id);
        if v5 {
            b.out(id)
                .push(if existed { 0 } else { NO_SUBSCRIPTION_EXISTED });
        }
    }
    if !v5 {
        wire::encode_unsuback(b.out(id), u.packet_id);
    }
    b.stats.messages_sent += 1;
    b.session_changed(sid);
}
