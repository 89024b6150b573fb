//! DISCONNECT, and every other way a connection ends: the will (MQTT 5: possibly delayed), and
//! the session's fate: removed at once, or kept until its Session Expiry Interval runs out.

use super::session::NEVER_EXPIRES;
use super::{publish, subscribe, Broker, ConnId, SessionId};
use crate::devices::Observed;
use crate::wire::properties::id;
use crate::wire::{DecodeError, Disconnect};
use std::cmp::Reverse;
use std::time::{Duration, Instant};

/// DISCONNECT with reason 0x04 asks for the will to be sent (MQTT 5).
const DISCONNECT_WITH_WILL: u8 = 0x04;

/// A client's DISCONNECT: the will is discarded (spec 3.14.4), unless an MQTT 5 client asks
/// for it; an MQTT 5 client may change its Session Expiry Interval here.
pub(super) fn handle(b: &mut Broker, id: ConnId, sid: SessionId, d: Disconnect<'_>, now: Instant) {
    if let Some(expiry) = d.properties.u32(id::SESSION_EXPIRY_INTERVAL) {
        let was = b.conns[id].as_ref().map_or(0, |c| c.connect_expiry);
        if was == 0 && expiry != 0 {
            // Spec 3.14.2.2.2: a session that was to end with the connection cannot be revived.
            let err = DecodeError::protocol("session expiry set at DISCONNECT after 0 at CONNECT");
            return b.protocol_error(id, err, now);
        }
        b.sessions[sid].expiry = expiry;
        b.session_changed(sid);
    }
    log::info!("Client {} disconnected.", b.who(id));
    b.end_connection(
        id,
        "client disconnected",
        d.reason == DISCONNECT_WITH_WILL,
        now,
    );
}

impl Broker {
    /// End connection `id`: detach its session (ending it unless it outlives the connection),
    /// publish the will if `send_will` (now, or after its delay while the session lasts), and
    /// put the connection on the closing list for the event loop.
    pub(super) fn end_connection(
        &mut self,
        id: ConnId,
        reason: &str,
        send_will: bool,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        self.closing.push(id);
        let bridge = conn.bridge;
        let mut will = conn.will.take();
        let (delay, will_expiry) = (conn.will_delay, conn.will_expiry);
        if let Some(sid) = conn.session {
            log::debug!(
                "Connection of {} ended: {reason}",
                self.sessions[sid].client_id
            );
            self.stats.clients_connected -= 1;
            let s = &mut self.sessions[sid];
            if s.conn == Some(id) {
                s.conn = None;
                publish::resume_publishers(&mut self.conns, &mut self.resumed, s, sid, &self.cfg);
                if s.persistent() {
                    s.expires_at = (s.expiry != NEVER_EXPIRES)
                        .then(|| now + Duration::from_secs(s.expiry as u64));
                    if let (true, Some(w), true) = (send_will, will, delay > 0) {
                        // Spec 3.1.3.2.2: after the delay, or when the session ends if sooner.
                        let at = now + Duration::from_secs(delay as u64);
                        let at = s.expires_at.map_or(at, |e| e.min(at));
                        self.pool
                            .set_expiry(w, will_expiry.map(|e| at + Duration::from_secs(e as u64)));
                        s.pending_will = Some((w, at));
                        will = None;
                    }
                    self.arm_session_timer(sid);
                    self.journal_will(sid);
                }
            }
        }
        if let Some(w) = will {
            if send_will {
                self.pool
                    .set_expiry(w, will_expiry.map(|e| now + Duration::from_secs(e as u64)));
                publish_will(self, w);
            } else {
                self.pool.release(w);
            }
        }
        if bridge != super::bridge::NO_BRIDGE {
            super::bridge::ended(self, bridge as usize);
        }
        if let Some(sid) = self.conns[id].as_ref().and_then(|c| c.session) {
            if self
                .sessions
                .get(sid)
                .is_some_and(|s| s.conn.is_none() && !s.persistent() && !s.bridge)
            {
                self.remove_session(sid);
            }
        }
    }

    /// Arm the session's timer for its next deadline: a delayed will, or its expiry.
    pub(super) fn arm_session_timer(&mut self, sid: SessionId) {
        self.next_gen += 1;
        let gen = self.next_gen;
        let s = &mut self.sessions[sid];
        s.timer_gen = gen;
        let next = match (s.pending_will.map(|w| w.1), s.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            self.session_timers.push(Reverse((at, sid, gen)));
        }
    }

    /// Remove a session and everything it holds: subscriptions, queue, in-flight messages, a
    /// will still waiting (not sent).
    pub(super) fn remove_session(&mut self, sid: SessionId) {
        let s = self.sessions.remove(sid);
        for sub in &s.subscriptions {
            let (share, filter) = subscribe::split_shared(&sub.filter);
            self.subs.remove(filter, sid, share);
        }
        for q in &s.queue {
            self.pool.release(q.msg);
        }
        for m in s.inflight.iter().filter_map(|i| i.msg) {
            self.pool.release(m);
        }
        if let Some((w, _)) = s.pending_will {
            self.pool.release(w);
        }
        self.by_client_id.remove(&s.client_id, sid);
        self.journal_end_session(&s);
    }
}

/// Publish a will (and release it): routed like any message, its topic copied out first since
/// routing may change the pool.
fn publish_will(b: &mut Broker, w: super::message::MsgId) {
    let mut topic = std::mem::take(&mut b.topic_scratch);
    topic.clear();
    topic.push_str(b.pool.get(w).topic_str());
    log::debug!("Publishing a will on {topic}");
    // A will is a message like any other for the executor: a device's LWT (Tasmota's
    // `Offline`) is its availability, Home Assistant's (`offline`) says it went away; one on a
    // command topic is a command, routed only as `devices_route_commands` says.
    let observed = super::devices::observed(b, &topic);
    if observed != Observed::Command || super::devices::route_commands(b) {
        publish::route_stored(b, &topic, w, None);
    }
    if observed != Observed::No {
        super::devices::on_will(b, &topic, w);
    }
    b.topic_scratch = topic;
    b.pool.release(w);
}

/// Fire session deadlines that have passed: delayed wills, then session expiry.
pub(super) fn session_timers(b: &mut Broker, now: Instant) {
    while let Some(&Reverse((at, sid, gen))) = b.session_timers.peek() {
        if at > now {
            break;
        }
        b.session_timers.pop();
        let Some(s) = b.sessions.get_mut(sid) else {
            continue;
        };
        if s.timer_gen != gen || s.conn.is_some() {
            continue;
        }
        let expired = s.expires_at.is_some_and(|t| t <= now);
        if let Some((w, t)) = s.pending_will {
            if t <= now || expired {
                s.pending_will = None;
                b.journal_will(sid);
                publish_will(b, w);
            }
        }
        if expired {
            log::debug!("Session of {} expired", b.sessions[sid].client_id);
            b.remove_session(sid);
        } else {
            b.arm_session_timer(sid);
        }
    }
}
