//! Retransmission over a transport that loses datagrams (spec 6.13): one timer entry per
//! client, what waits for an acknowledgement sent again every T_retry, the client lost after
//! N_retry; and ADVERTISE when it is due.

use super::*;

impl Gateway {
    /// Retransmissions due, will dialogues that gave up, ADVERTISE.
    pub fn handle_timeout<H: Host>(&mut self, b: &mut Broker, host: &mut H, now: Instant) {
        if let (Some(at), Some((every, addr))) = (self.next_advertise, self.opts.advertise) {
            if at <= now {
                let m = Message::Advertise {
                    gw_id: self.opts.gateway_id,
                    duration: every.as_secs().min(u16::MAX as u64) as u16,
                };
                self.send_to(host, &Peer::direct(addr), 0, &m);
                self.next_advertise = Some(now + every);
            }
        }
        while let Some(&Reverse((at, idx, gen))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.clients.get_mut(idx) else {
                continue;
            };
            if c.timer_gen != gen {
                continue;
            }
            c.timer_at = None;
            match c.retry_at {
                None => {}
                // Re-armed since this entry was made: it moves to the new time (one entry per
                // client, however many messages it acknowledges meanwhile).
                Some(t) if t > now => {
                    c.timer_at = Some(t);
                    self.timers.push(Reverse((t, idx, gen)));
                }
                Some(_) => self.retry(b, host, idx, now),
            }
        }
        self.merge(b);
    }

    /// Send again what client `idx` has not acknowledged, or give up on it.
    pub(super) fn retry<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        now: Instant,
    ) {
        let c = &mut self.clients[idx];
        c.retry_at = None;
        if c.congested && matches!(c.state, State::Active | State::Awake) {
            // T_wait after a CONGESTION answer is over: a new REGISTER, whose own loss counts
            // from here (a client that then stops answering is lost as any other).
            self.stats.retransmissions += 1;
            self.register_anew(host, idx);
            return self.arm(idx, now);
        }
        if c.tries > self.opts.retry_count {
            return self.give_up(b, idx, now);
        }
        c.tries += 1;
        self.stats.retransmissions += 1;
        match c.state {
            State::WillTopic => self.send_client(host, idx, &Message::WillTopicReq),
            State::WillMsg => self.send_client(host, idx, &Message::WillMsgReq),
            _ if c.waking => match c.will_topic {
                None => self.send_client(host, idx, &Message::WillTopicReq),
                Some(_) => self.send_client(host, idx, &Message::WillMsgReq),
            },
            State::Active | State::Awake => {
                let Some(conn) = c.conn else { return };
                if c.register.is_some() {
                    self.register_again(host, idx);
                } else if c.inflight.is_some() {
                    // The broker writes it again (PUBLISH with DUP, or PUBREL), and the
                    // translation sends it at the end of this turn.
                    b.retransmit(conn, now);
                    return self.arm(idx, now);
                } else {
                    return;
                }
            }
            _ => return,
        }
        self.arm(idx, now);
    }

    /// No acknowledgement after `retry_count` retransmissions: the client is lost (spec
    /// 6.13); its will is published. A will dialogue that stalls is dropped.
    pub(super) fn give_up(&mut self, b: &mut Broker, idx: usize, now: Instant) {
        let c = &self.clients[idx];
        self.stats.lost += 1;
        log::info!(
            "MQTT-SN client {} lost: no answer after {} retransmissions",
            c.client_id,
            self.opts.retry_count
        );
        match (c.state, c.conn) {
            (State::WillTopic | State::WillMsg, _) => self.forget(idx),
            (_, Some(conn)) => b.end(conn, "no acknowledgement after retransmissions", true, now),
            _ => {}
        }
    }

    /// Send client `idx`'s pending REGISTER again (its name borrowed from the topic table:
    /// a retransmission allocates nothing either).
    pub(super) fn register_again<H: Host>(&mut self, host: &mut H, idx: usize) {
        let Gateway {
            clients,
            dgram,
            stats,
            ..
        } = self;
        let c = &clients[idx];
        let Some((topic_id, msg_id)) = c.register else {
            return;
        };
        let name = c.topics.get(topic_id).map_or("", |(n, _)| n);
        let m = Message::Register {
            topic_id,
            msg_id,
            topic: name.as_bytes(),
        };
        send(dgram, stats, host, &c.peer, c.ctrl, &m);
    }

    /// Send client `idx`'s pending REGISTER again as a new message (a new message id: the
    /// client answered the last one, with CONGESTION).
    pub(super) fn register_anew<H: Host>(&mut self, host: &mut H, idx: usize) {
        let c = &mut self.clients[idx];
        let Some((topic_id, _)) = c.register else {
            return;
        };
        let msg_id = c.msg_id();
        c.register = Some((topic_id, msg_id));
        c.congested = false;
        c.tries = 1;
        self.register_again(host, idx);
    }

    /// Client `idx` acknowledged `msg_id`: if that is what it had in flight, that wait is over.
    pub(super) fn acknowledged(&mut self, idx: usize, msg_id: u16, now: Instant) {
        let c = &mut self.clients[idx];
        if c.inflight == Some(msg_id) {
            c.inflight = None;
            self.settle(idx, now);
        }
    }

    /// One of the things client `idx` waits on was acknowledged: its timer stays for what
    /// still waits (a REGISTER and a PUBLISH can be out at once), or stops.
    pub(super) fn settle(&mut self, idx: usize, now: Instant) {
        let c = &mut self.clients[idx];
        if c.register.is_some() || c.inflight.is_some() {
            self.arm(idx, now);
        } else {
            c.retry_at = None;
        }
    }

    /// Arm client `idx`'s retransmission timer for one interval from now.
    pub(super) fn arm(&mut self, idx: usize, now: Instant) {
        let at = now + self.opts.retry_interval;
        let c = &mut self.clients[idx];
        c.retry_at = Some(at);
        if c.timer_at.is_none() {
            c.timer_at = Some(at);
            self.timers.push(Reverse((at, idx, c.timer_gen)));
        }
    }
}
