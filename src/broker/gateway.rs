//! The seam for connections whose transport is not a byte stream: the MQTT-SN gateway
//! (`crate::mqttsn`) puts each MQTT-SN client on the broker as a connection like any other,
//! hands in the MQTT packets its datagrams mean, and translates the connection's output (MQTT
//! 3.1.1 packets, as written for any client) into datagrams. Sessions, the topic table,
//! retained messages, QoS state, the ACL, wills, persistence and the device executor are the
//! ones every client has.
//!
//! What a datagram transport needs beyond that is here, each a named operation: one message
//! in flight at a time (UDP loses what a TCP stream would not, and the gateway retransmits
//! it), retransmission of what is in flight, a client asleep (its messages queue, and a
//! missed wake-up is a lost connection, as a missed keep-alive is), a keep-alive changed
//! without a CONNECT, the will changed without a CONNECT, and a publish from no connection at
//! all (MQTT-SN's QoS -1).

use super::{connect, publish, topic, Broker, ConnId};
use crate::auth::acl::Access;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a publish from no connection was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unconnected {
    /// The listener does not let anonymous clients in.
    NotAllowed,
    /// The ACL does not let an unidentified publisher write there.
    Denied,
    /// Not a valid topic name, or beyond `max_topic_length`/`max_topic_levels`.
    BadTopic,
    /// Retain is not available, or the payload is over `message_size_limit`.
    Refused,
}

impl Broker {
    /// A new connection for a gateway's client, in slot `id` on listener `listener`: as
    /// [`Broker::open`], with one QoS 1/2 message in flight to it at a time.
    pub fn open_gateway_client(
        &mut self,
        id: ConnId,
        peer: Option<SocketAddr>,
        listener: usize,
        now: Instant,
    ) {
        self.open(id, peer, listener, now);
        if let Some(c) = self.conns[id].as_mut() {
            c.gateway = true;
            c.receive_max = 1;
        }
    }

    /// The gateway's counters (made at the first call: a broker without an MQTT-SN listener
    /// has none, and publishes none in `$SYS`).
    pub fn mqttsn_stats_mut(&mut self) -> &mut crate::mqttsn::Stats {
        self.mqttsn.get_or_insert_with(Default::default)
    }

    pub fn mqttsn_stats(&self) -> Option<&crate::mqttsn::Stats> {
        self.mqttsn.as_deref()
    }

    /// The client was heard from (a datagram the gateway answers itself).
    pub fn touch(&mut self, id: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) {
            c.last_rx = now;
        }
    }

    /// The client's address changed (an MQTT-SN client that woke up from another one): what
    /// the status page and the logs show.
    pub fn set_peer(&mut self, id: ConnId, peer: SocketAddr) {
        if let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) {
            c.peer = Some(peer);
        }
    }

    /// A new keep-alive, counted from now: a client going to sleep for `secs` seconds is lost
    /// (its will published) if it is not heard from within one and a half times that.
    pub fn set_keep_alive(&mut self, id: ConnId, secs: u16, now: Instant) {
        let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
            return;
        };
        c.keep_alive = secs;
        c.last_rx = now;
        if secs > 0 {
            // A fresh entry: an older one may be later than the new deadline (it re-arms
            // itself from `last_rx` when it fires, and is stale once the generation moves on).
            self.next_gen += 1;
            c.timer_gen = self.next_gen as u32;
            let gen = c.timer_gen;
            self.push_timer(now + Duration::from_millis(secs as u64 * 1500), id, gen);
        }
    }

    /// Put the client to sleep (its messages queue, within `max_queued_messages`, QoS 0 ones
    /// too) or wake it (what queued moves into its output).
    pub fn set_asleep(&mut self, id: ConnId, asleep: bool) {
        let Some(c) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
            return;
        };
        c.asleep = asleep;
        let sid = c.session;
        if asleep {
            // Publishers paused on its queue would wait for a wake-up: they go on, and what
            // its queue cannot take is dropped and counted.
            if let Some(sid) = sid {
                let s = &mut self.sessions[sid];
                let was = s.conn.take();
                publish::resume_publishers(&mut self.conns, &mut self.resumed, s, sid, &self.cfg);
                self.sessions[sid].conn = was;
            }
        } else {
            self.mark_writable(id);
            if let Some(sid) = sid {
                publish::pump(self, sid);
            }
        }
    }

    /// Whether the client's publishes are not to be taken now: a subscriber's full queue
    /// paused it (see `publish::deliver`), or its acknowledgements wait for a journal that
    /// cannot be written. ([`Broker::wants_read`] also stops at a full output buffer, which
    /// for a gateway client is the gateway waiting for a REGACK, not the client.)
    pub fn publishes_paused(&self, id: ConnId) -> bool {
        self.conns
            .get(id)
            .and_then(|c| c.as_ref())
            .is_some_and(|c| c.paused_on.is_some() || (self.journal_failing && c.held.is_some()))
    }

    /// The transport can take output again (the gateway stopped translating to wait for an
    /// acknowledgement): the connection is flushed at the end of this loop turn.
    pub fn mark_writable(&mut self, id: ConnId) {
        if self.conns.get(id).is_some_and(|c| c.is_some()) {
            self.out(id);
        }
    }

    /// Messages the client's session holds for it: (queued, in flight).
    pub fn held_for(&self, id: ConnId) -> (usize, usize) {
        self.conns
            .get(id)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.session)
            .and_then(|s| self.sessions.get(s))
            .map_or((0, 0), |s| (s.queue.len(), s.inflight.len()))
    }

    /// Write again what is in flight to the client (PUBLISH with DUP set, or PUBREL), as at
    /// a reconnect: the datagram carrying it may have been lost.
    pub fn retransmit(&mut self, id: ConnId, now: Instant) {
        let sid = match self.conns.get(id).and_then(|c| c.as_ref()) {
            Some(c) if !c.closing => c.session,
            _ => None,
        };
        if let Some(sid) = sid {
            self.now = now;
            connect::resend_inflight(self, id, sid, now);
        }
    }

    /// End the connection for a reason its transport found (a client that stopped
    /// acknowledging, a reconnect from the same address), publishing the will if `send_will`.
    pub fn end(&mut self, id: ConnId, reason: &str, send_will: bool, now: Instant) {
        self.now = now;
        self.end_connection(id, reason, send_will, now);
    }

    /// Replace the connection's will (MQTT-SN WILLTOPICUPD, WILLMSGUPD, or a will given
    /// while waking): `None` removes it. A will on a topic the client may not publish to, or
    /// not a valid topic name, is refused (false) and the old one stays.
    pub fn set_will(&mut self, id: ConnId, will: Option<(&str, &[u8], u8, bool)>) -> bool {
        let Some(sid) = self
            .conns
            .get(id)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.session)
        else {
            return false;
        };
        let new = match will {
            Some((t, payload, qos, retain)) => {
                let bad = !topic::valid_name(t)
                    || !self.topic_within_limits(t)
                    || qos > self.cfg.max_qos
                    || (retain && !self.cfg.retain_available)
                    || !self.acl_allows(sid, t, Access::Write);
                if bad {
                    return false;
                }
                Some(self.pool.store(t, payload, qos, retain))
            }
            None => None,
        };
        let c = self.conns[id].as_mut().expect("checked above");
        c.will_delay = 0;
        c.will_expiry = None;
        if let Some(old) = std::mem::replace(&mut c.will, new) {
            self.pool.release(old);
        }
        true
    }

    /// A message from no connection and no client id: an MQTT-SN QoS -1 publish, taken with
    /// QoS 0 semantics under listener `listener`'s rules (anonymous clients must be allowed;
    /// the ACL's anonymous rules and its patterns without `%c`/`%u` apply). Routed to
    /// subscribers and the device executor like any publish.
    pub fn publish_unconnected(
        &mut self,
        listener: u16,
        topic_name: &str,
        payload: &[u8],
        retain: bool,
        now: Instant,
    ) -> Result<(), Unconnected> {
        let policy = self.policy(listener);
        if !policy.allow_anonymous {
            return Err(Unconnected::NotAllowed);
        }
        if !topic::valid_name(topic_name) || !self.topic_within_limits(topic_name) {
            return Err(Unconnected::BadTopic);
        }
        if let Some(acl) = &policy.acl {
            if !acl.check_unidentified(topic_name, Access::Write) {
                return Err(Unconnected::Denied);
            }
        }
        if (retain && !self.cfg.retain_available)
            || (self.cfg.message_size_limit > 0 && payload.len() > self.cfg.message_size_limit)
        {
            return Err(Unconnected::Refused);
        }
        self.now = now;
        self.stats.publish_received += 1;
        self.stats.messages_received += 1;
        let observed = super::devices::observed(self, topic_name);
        if observed != crate::devices::Observed::Command || super::devices::route_commands(self) {
            publish::route(self, topic_name, payload, 0, retain, None, None);
        }
        if observed != crate::devices::Observed::No {
            super::devices::on_publish(self, topic_name, payload, now, None, None);
        }
        Ok(())
    }
}
