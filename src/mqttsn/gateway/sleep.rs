//! Sleeping clients (spec 6.14): DISCONNECT with a duration, PINGREQ that wakes the client to
//! get what was kept for it, CONNECT that makes it active again, and a client that wakes from
//! a new address (found by the client id it names).

use super::*;

impl Gateway {
    /// A PINGREQ naming a sleeping client from an address that is not its own: the client
    /// woke with a new source port (or a new forwarder) and is identified by its client id, as
    /// spec 6.14 has it; its record moves to the new address. `None` for anything else.
    pub(super) fn woken(&mut self, b: &mut Broker, peer: Peer, m: &Message<'_>) -> Option<usize> {
        let Message::PingReq { client_id } = m else {
            return None;
        };
        let idx = self.asleep_elsewhere(std::str::from_utf8(client_id).ok()?)?;
        self.wake_at(b, idx, peer);
        Some(idx)
    }

    /// The record of client `client_id` if it is asleep or awake (it cannot answer at the
    /// address it had while it sleeps, so a wake-up from another one is its own).
    pub(super) fn asleep_elsewhere(&self, client_id: &str) -> Option<usize> {
        let idx = *self.by_client_id.get(client_id)?;
        matches!(self.clients[idx].state, State::Asleep | State::Awake).then_some(idx)
    }

    /// Client `idx` is at `peer` from now on (the broker's view of its address too).
    pub(super) fn wake_at(&mut self, b: &mut Broker, idx: usize, peer: Peer) {
        log::debug!(
            "MQTT-SN client {} woke up at {} (asleep at {})",
            self.clients[idx].client_id,
            peer.addr,
            self.clients[idx].peer.addr
        );
        self.move_peer(idx, peer);
        if let Some(conn) = self.clients[idx].conn {
            b.set_peer(conn, peer.addr);
        }
    }

    /// A CONNECT from a client asleep or awake: back to active (spec 6.14); the session goes
    /// on as it is. With the Will flag, the will is asked for again first.
    pub(super) fn wake_by_connect<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        flags: Flags,
        duration: u16,
        now: Instant,
    ) {
        let c = &mut self.clients[idx];
        c.duration = duration;
        c.heard = now;
        if flags.will() {
            c.waking = true;
            return self.will_dialogue(host, idx, now);
        }
        self.activate(b, host, idx, now);
    }

    /// A waking client is active again: keep-alive from its CONNECT, output resumed, CONNACK.
    pub(super) fn activate<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        now: Instant,
    ) {
        let Some(conn) = self.clients[idx].conn else {
            return;
        };
        self.set_state(idx, State::Active);
        let c = &mut self.clients[idx];
        c.waking = false;
        b.set_keep_alive(conn, c.duration, now);
        self.send_client(host, idx, &Message::ConnAck { rc: rc::ACCEPTED });
        b.set_asleep(conn, false);
        self.resume_pending(b, host, idx, conn, now);
    }

    /// A client back from sleep: what waited for its acknowledgement when it fell asleep (a
    /// REGISTER, a PUBLISH or PUBREL in flight) goes again, its retransmission timer armed.
    pub(super) fn resume_pending<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        now: Instant,
    ) {
        let c = &self.clients[idx];
        if c.register.is_some() {
            if c.congested {
                self.register_anew(host, idx);
            } else {
                self.register_again(host, idx);
            }
            self.arm(idx, now);
        } else if c.inflight.is_some() {
            b.retransmit(conn, now);
            self.arm(idx, now);
        }
    }

    /// PINGREQ: from a sleeping client, a wake-up (what was kept for it goes out, then
    /// PINGRESP: see `output.rs`); from an active one, a keep-alive for the broker.
    pub(super) fn pingreq<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        now: Instant,
    ) {
        match self.clients[idx].state {
            State::Asleep => {
                self.set_state(idx, State::Awake);
                b.set_asleep(conn, false);
                self.resume_pending(b, host, idx, conn, now);
                b.mark_writable(conn);
            }
            State::Awake => b.mark_writable(conn),
            _ => {
                self.frame.clear();
                crate::wire::client::encode_pingreq(&mut self.frame);
                to_broker(b, conn, &self.frame, now);
            }
        }
    }

    /// DISCONNECT with a duration: asleep for `secs` seconds (spec 6.14). Its messages are
    /// kept; a client not heard from in 1.5 times that is lost and its will published.
    pub(super) fn fall_asleep<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        secs: u16,
        now: Instant,
    ) {
        self.set_state(idx, State::Asleep);
        self.clients[idx].retry_at = None;
        b.set_asleep(conn, true);
        b.set_keep_alive(conn, secs, now);
        self.send_client(host, idx, &Message::Disconnect { duration: None });
        log::debug!(
            "MQTT-SN client {} asleep for {secs} s",
            self.clients[idx].client_id
        );
    }
}
