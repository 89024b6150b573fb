//! CONNECT and DISCONNECT: a new client, a reconnect, the will dialogue (WILLTOPICREQ,
//! WILLTOPIC, WILLMSGREQ, WILLMSG, spec 6.3) and the will's updates (WILLTOPICUPD,
//! WILLMSGUPD, spec 6.4); the CONNECT the broker gets is MQTT 3.1.1's, with that will.

use super::*;

impl Gateway {
    /// CONNECT: a new connection, a reconnect, or a sleeping client becoming active.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        peer: Peer,
        ctrl: u8,
        flags: Flags,
        protocol_id: u8,
        duration: u16,
        client_id: &[u8],
        now: Instant,
    ) {
        let refuse = |g: &mut Gateway, host: &mut H, code: u8| {
            g.send_to(host, &peer, ctrl, &Message::ConnAck { rc: code });
        };
        let client_id = match std::str::from_utf8(client_id) {
            Ok(id) if protocol_id == wire::PROTOCOL_ID && !id.is_empty() => id,
            _ => return refuse(self, host, rc::NOT_SUPPORTED),
        };
        if client_id.len() > MAX_CLIENT_ID || client_id.contains('\0') {
            return refuse(self, host, rc::NOT_SUPPORTED);
        }
        if let Some(idx) = self.by_peer.get(&peer).copied() {
            let c = &self.clients[idx];
            let same = &*c.client_id == client_id;
            if same && matches!(c.state, State::Asleep | State::Awake) {
                self.clients[idx].ctrl = ctrl;
                return self.wake_by_connect(b, host, idx, flags, duration, now);
            }
            if let Some(conn) = c.conn {
                // A reconnect from the same address: the old connection ends here. Its will
                // is not sent when it is the same client (a CONNECT sent again because its
                // CONNACK was lost must not announce its death).
                let will = !same;
                log::info!("MQTT-SN client {} reconnects from {}", client_id, peer.addr);
                self.detach(idx);
                b.end(conn, "reconnected", will, now);
            }
            if !same {
                self.remove(idx);
            }
        }
        if !self.by_peer.contains_key(&peer) {
            // A sleeping client back from another address: it wakes, its session as it was.
            if let Some(idx) = self.asleep_elsewhere(client_id) {
                self.wake_at(b, idx, peer);
                self.clients[idx].ctrl = ctrl;
                return self.wake_by_connect(b, host, idx, flags, duration, now);
            }
        }
        // The record: this address's, this client id's (kept from an earlier connection, or
        // connected elsewhere: the broker takes that session over), or a new one.
        let idx = match self.by_peer.get(&peer).copied() {
            Some(idx) => idx,
            None => {
                let elsewhere = self.by_client_id.get(client_id).copied();
                match elsewhere {
                    Some(o) if self.clients[o].state == State::Disconnected => {
                        self.move_peer(o, peer);
                        o
                    }
                    _ => {
                        let Some(idx) = self.new_client(b, host, peer, client_id, elsewhere, now)
                        else {
                            self.stats.refused_limit += 1;
                            let n = b.mqttsn_stats().map_or(0, |s| s.refused_limit)
                                + self.stats.refused_limit;
                            if n.is_power_of_two() {
                                log::warn!(
                                    "MQTT-SN: client {client_id} from {} refused: too many clients (listener or source limit); {n} so far",
                                    peer.addr
                                );
                            }
                            return refuse(self, host, rc::CONGESTION);
                        };
                        if let Some(o) = elsewhere {
                            // Its topic ids go with it when its session does.
                            if !flags.clean_session() {
                                self.clients[idx].topics =
                                    std::mem::take(&mut self.clients[o].topics);
                                self.clients[idx].will = self.clients[o].will.take();
                            }
                        }
                        self.by_client_id.insert(client_id.into(), idx);
                        idx
                    }
                }
            }
        };
        self.unkeep(idx);
        let c = &mut self.clients[idx];
        c.ctrl = ctrl;
        c.heard = now;
        c.clean = flags.clean_session();
        c.duration = duration;
        c.waking = false;
        c.clear_pending();
        c.last_suback = None;
        if c.clean {
            // Spec 6.3: a clean session deletes the subscriptions, the topic ids and the will.
            c.topics.clear();
            c.will = None;
        }
        if flags.will() {
            self.will_dialogue(host, idx, now);
        } else {
            self.open_connection(b, host, idx, now);
        }
    }

    pub(super) fn will_dialogue<H: Host>(&mut self, host: &mut H, idx: usize, now: Instant) {
        let c = &mut self.clients[idx];
        c.will_topic = None;
        c.tries = 1;
        if !c.connected() {
            c.state = State::WillTopic;
        }
        self.send_client(host, idx, &Message::WillTopicReq);
        self.arm(idx, now);
    }

    /// The CONNECT (with its will) goes to the broker as an MQTT 3.1.1 CONNECT.
    pub(super) fn open_connection<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        now: Instant,
    ) {
        let Some(conn) = host.open_slot() else {
            self.stats.refused_limit += 1;
            self.send_client(host, idx, &Message::ConnAck { rc: rc::CONGESTION });
            return self.forget(idx);
        };
        let c = &mut self.clients[idx];
        c.state = State::Connecting;
        c.conn = Some(conn);
        c.retry_at = None;
        self.by_conn.insert(conn, idx);
        let c = &self.clients[idx];
        b.open_gateway_client(conn, Some(c.peer.addr), self.listener as usize, now);
        self.frame.clear();
        let will = c.will.as_ref().map(Will::parts);
        encode_connect(
            &mut self.frame,
            &ConnectOut {
                level: mqtt::LEVEL_311,
                clean_start: c.clean,
                keep_alive: c.duration,
                client_id: &c.client_id,
                will,
                username: None,
                password: None,
                session_expiry: 0,
                receive_max: u16::MAX,
                max_packet: 0,
            },
        );
        to_broker(b, conn, &self.frame, now);
    }

    /// The will dialogue is complete: connect, or (waking) update the will and go active.
    pub(super) fn dialogue_done<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        now: Instant,
    ) {
        let c = &mut self.clients[idx];
        c.retry_at = None;
        if c.waking {
            if let Some(conn) = c.conn {
                b.set_will(conn, c.will.as_ref().map(Will::parts));
            }
            return self.activate(b, host, idx, now);
        }
        self.open_connection(b, host, idx, now);
    }

    /// WILLTOPIC in the CONNECT dialogue: WILLMSGREQ next (an empty one: no will after all).
    /// A sleeping client that woke with a CONNECT asking to give its will again stays
    /// connected meanwhile, so only a new connection's state moves on to the will message.
    pub(super) fn will_topic<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        flags: Flags,
        topic: &[u8],
        now: Instant,
    ) {
        if topic.is_empty() {
            self.clients[idx].will = None;
            return self.dialogue_done(b, host, idx, now);
        }
        let Some(t) = self.will_topic_name(topic) else {
            return self.refuse_will(host, idx);
        };
        let qos = flags.qos().clamp(0, 2) as u8;
        let c = &mut self.clients[idx];
        c.will_topic = Some((t.into(), qos, flags.retain()));
        if !c.waking {
            c.state = State::WillMsg;
        }
        c.tries = 1;
        self.send_client(host, idx, &Message::WillMsgReq);
        self.arm(idx, now);
    }

    /// A will topic the gateway keeps: a topic name within `mqttsn_max_will_size` (a longer
    /// one is counted).
    fn will_topic_name<'t>(&mut self, topic: &'t [u8]) -> Option<&'t str> {
        if topic.len() > self.opts.max_will_size {
            self.stats.will_too_large += 1;
            return None;
        }
        std::str::from_utf8(topic)
            .ok()
            .filter(|t| topic::valid_name(t))
    }

    /// A will the dialogue cannot take (not a topic name, or over `mqttsn_max_will_size`):
    /// CONNACK "rejected: not supported". No connection is made; a sleeping client that woke
    /// with a CONNECT asking to give its will keeps its session and its old will, asleep.
    fn refuse_will<H: Host>(&mut self, host: &mut H, idx: usize) {
        let m = Message::ConnAck {
            rc: rc::NOT_SUPPORTED,
        };
        self.send_client(host, idx, &m);
        let c = &mut self.clients[idx];
        if c.waking {
            c.waking = false;
            c.will_topic = None;
            c.retry_at = None;
        } else {
            self.forget(idx);
        }
    }

    /// WILLMSG: the will is complete, and so is the dialogue.
    pub(super) fn will_msg<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        msg: &[u8],
        now: Instant,
    ) {
        if msg.len() > self.opts.max_will_size {
            self.stats.will_too_large += 1;
            return self.refuse_will(host, idx);
        }
        let c = &mut self.clients[idx];
        if let Some((topic, qos, retain)) = c.will_topic.take() {
            c.will = Some(Will {
                topic,
                msg: msg.into(),
                qos,
                retain,
            });
        }
        self.dialogue_done(b, host, idx, now);
    }

    /// WILLTOPICUPD: a new will topic (and QoS, retain) for the message it has, or no will
    /// at all (empty).
    pub(super) fn will_topic_update<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        flags: Flags,
        topic: &[u8],
    ) {
        let code = if topic.is_empty() {
            self.clients[idx].will = None;
            b.set_will(conn, None);
            rc::ACCEPTED
        } else if topic.len() > self.opts.max_will_size {
            self.stats.will_too_large += 1;
            rc::NOT_SUPPORTED
        } else {
            match std::str::from_utf8(topic) {
                Ok(t) => {
                    let c = &mut self.clients[idx];
                    let msg = c.will.as_ref().map_or(Box::default(), |w| w.msg.clone());
                    let w = Will {
                        topic: t.into(),
                        msg,
                        qos: flags.qos().clamp(0, 2) as u8,
                        retain: flags.retain(),
                    };
                    if b.set_will(conn, Some(w.parts())) {
                        c.will = Some(w);
                        rc::ACCEPTED
                    } else {
                        rc::NOT_SUPPORTED
                    }
                }
                Err(_) => rc::NOT_SUPPORTED,
            }
        };
        self.send_client(host, idx, &Message::WillTopicResp { rc: code });
    }

    /// WILLMSGUPD: a new will message for the will topic it has.
    pub(super) fn will_msg_update<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        msg: &[u8],
    ) {
        if msg.len() > self.opts.max_will_size {
            self.stats.will_too_large += 1;
            let m = Message::WillMsgResp {
                rc: rc::NOT_SUPPORTED,
            };
            return self.send_client(host, idx, &m);
        }
        let c = &mut self.clients[idx];
        let code = match c.will.as_mut() {
            // The broker takes it first: a refused one leaves both with the old message.
            Some(w) => match b.set_will(conn, Some((&w.topic, msg, w.qos, w.retain))) {
                true => {
                    w.msg = msg.into();
                    rc::ACCEPTED
                }
                false => rc::NOT_SUPPORTED,
            },
            None => rc::NOT_SUPPORTED,
        };
        self.send_client(host, idx, &Message::WillMsgResp { rc: code });
    }

    /// DISCONNECT: with a duration, the client goes to sleep (`sleep.rs`); without, its
    /// connection ends as an MQTT client's does (no will).
    pub(super) fn disconnect<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        duration: Option<u16>,
        now: Instant,
    ) {
        if let Some(secs) = duration.filter(|&d| d > 0) {
            return self.fall_asleep(b, host, idx, conn, secs, now);
        }
        self.set_state(idx, State::Disconnected);
        self.frame.clear();
        crate::wire::client::encode_disconnect(&mut self.frame);
        to_broker(b, conn, &self.frame, now);
        self.send_client(host, idx, &Message::Disconnect { duration: None });
    }
}
