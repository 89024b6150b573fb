//! DISCONNECT, and every other way a connection ends: the will, the session's fate.

use super::{publish, Broker, ConnId, SessionId};
use std::time::Instant;

/// A clean DISCONNECT: the will is discarded (spec 3.14.4).
pub(super) fn handle(b: &mut Broker, id: ConnId, now: Instant) {
    if let Some(c) = b.conns[id].as_ref() {
        log::info!("Client {} disconnected.", c.client_id);
    }
    b.end_connection(id, "client disconnected", false, now);
}

impl Broker {
    /// End connection `id`: detach its session (removing it unless persistent), publish the
    /// will if `send_will`, and put the connection on the closing list for the event loop.
    pub(super) fn end_connection(
        &mut self,
        id: ConnId,
        reason: &str,
        send_will: bool,
        _now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(id).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        self.closing.push(id);
        let will = conn.will.take();
        let session = conn.session;
        if let Some(sid) = session {
            log::debug!("Connection of {} ended: {reason}", conn.client_id);
            self.stats.clients_connected -= 1;
            let s = &mut self.sessions[sid];
            if s.conn == Some(id) {
                s.conn = None;
                publish::resume_publishers(&mut self.conns, &mut self.resumed, s, sid, &self.cfg);
                if !s.persistent {
                    self.remove_session(sid);
                }
            }
        }
        if let Some(w) = will {
            if send_will {
                let m = self.pool.get(w);
                let (qos, retain) = (m.qos, m.retain);
                // Copy topic and payload out: routing may store them into the pool.
                let topic = m.topic_str().to_string();
                let payload = m.payload().to_vec();
                log::debug!(
                    "Publishing the will of {} on {topic}",
                    self.conns[id].as_ref().map_or("", |c| &c.client_id)
                );
                publish::route(self, &topic, &payload, qos, retain, None);
            }
            self.pool.release(w);
        }
    }

    /// Remove a session and everything it holds: subscriptions, queue, in-flight messages.
    pub(super) fn remove_session(&mut self, sid: SessionId) {
        let s = self.sessions.remove(sid);
        for (filter, _) in &s.subscriptions {
            self.subs.remove(filter, sid);
        }
        for q in &s.queue {
            self.pool.release(q.msg);
        }
        for m in s.inflight.iter().filter_map(|i| i.msg) {
            self.pool.release(m);
        }
        if self.by_client_id.get(&*s.client_id) == Some(&sid) {
            self.by_client_id.remove(&*s.client_id);
        }
    }
}
