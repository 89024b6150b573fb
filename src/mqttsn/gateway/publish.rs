//! PUBLISH both ways: from a client (a registered, predefined or short topic id resolved to
//! its name and handed to the broker; QoS -1 without a connection) with its acknowledgements,
//! and from the broker to a client (a topic id it knows, or a REGISTER first).

use super::output::Out;
use super::*;

impl Gateway {
    /// QoS -1 from a source that is not a connected client: to a predefined or short topic,
    /// under the listener's anonymous rules.
    pub(super) fn publish_minus1(
        &mut self,
        b: &mut Broker,
        flags: Flags,
        topic_id: u16,
        data: &[u8],
        now: Instant,
    ) {
        let short;
        let name: &str = match flags.topic_type() {
            topic_type::PREDEFINED => match self.predefined.get(&topic_id) {
                Some(n) => n,
                None => {
                    self.stats.qos_minus1_dropped += 1;
                    return;
                }
            },
            topic_type::SHORT => {
                short = topic_id.to_be_bytes();
                match std::str::from_utf8(&short) {
                    Ok(n) => n,
                    Err(_) => {
                        self.stats.qos_minus1_dropped += 1;
                        return;
                    }
                }
            }
            _ => {
                // A normal topic id means nothing without a connection.
                self.stats.qos_minus1_dropped += 1;
                return;
            }
        };
        match b.publish_unconnected(self.listener, name, data, flags.retain(), now) {
            Ok(()) => self.stats.qos_minus1 += 1,
            Err(why) => {
                self.stats.qos_minus1_dropped += 1;
                log::debug!("MQTT-SN: QoS -1 publish to {name} dropped: {why:?}");
            }
        }
    }

    /// A PUBLISH from a connected client: QoS 0, 1, 2, or -1 (taken as its QoS 0 publish:
    /// its client id, its ACL rules, its keep-alive).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        data: &[u8],
        now: Instant,
    ) {
        let qos = flags.qos().max(0) as u8;
        let Gateway {
            clients,
            predefined,
            frame,
            dgram,
            stats,
            ..
        } = self;
        let c = &mut clients[idx];
        let (peer, ctrl) = (c.peer, c.ctrl);
        if qos == 1 && flags.dup() && c.acked.get(msg_id).is_some() {
            // Sent again because our PUBACK was lost: answer it, do not route it twice.
            stats.duplicates += 1;
            let m = Message::PubAck {
                topic_id,
                msg_id,
                rc: rc::ACCEPTED,
            };
            return send(dgram, stats, host, &peer, ctrl, &m);
        }
        if qos == 1 {
            c.pub_topics.push(msg_id, topic_id);
        }
        let short;
        let name: Option<&str> = match flags.topic_type() {
            topic_type::NORMAL => c.topics.get(topic_id).map(|(n, _)| n),
            topic_type::PREDEFINED => predefined.get(&topic_id).map(|n| &**n),
            topic_type::SHORT => {
                short = topic_id.to_be_bytes();
                std::str::from_utf8(&short).ok()
            }
            _ => None,
        };
        let Some(name) = name else {
            if flags.qos() == -1 {
                // QoS -1 gets no answer, whoever sends it.
                stats.qos_minus1_dropped += 1;
                return;
            }
            let m = Message::PubAck {
                topic_id,
                msg_id,
                rc: rc::INVALID_TOPIC_ID,
            };
            return send(dgram, stats, host, &peer, ctrl, &m);
        };
        frame.clear();
        mqtt::encode_publish_header(
            frame,
            name.as_bytes(),
            qos,
            flags.retain(),
            // MQTT has no DUP at QoS 0 (a QoS -1 or 0 datagram with it set is taken as sent
            // once, not as a malformed packet that ends the connection).
            flags.dup() && qos > 0,
            msg_id,
            data.len(),
        );
        frame.extend_from_slice(data);
        to_broker(b, conn, frame, now);
    }

    /// A PUBLISH from the broker to the client: with a topic id it knows (its registration,
    /// a predefined id, a short name), or after our REGISTER of one.
    pub(super) fn deliver<H: Host>(
        &mut self,
        host: &mut H,
        idx: usize,
        p: &mqtt::Publish<'_>,
        now: Instant,
    ) -> Out {
        let c = &mut self.clients[idx];
        let name = p.topic;
        let registered = c
            .topics
            .id(name)
            .and_then(|id| Some((id, c.topics.get(id)?.1)));
        // Only the PUBLISH at the head of the output, the one that waited for it, goes with a
        // REGISTER given up.
        let give_up = c.give_up.take();
        let (kind_of, topic_id) = match registered {
            Some((id, Reg::Sent)) if give_up == Some(id) && c.register.is_none() => {
                self.stats.register_congestion += 1;
                return drop_out(p);
            }
            Some((id, Reg::Known)) => (topic_type::NORMAL, id),
            Some((_, Reg::Sent)) if c.register.is_some() => return Out::Stall,
            Some((_, Reg::Refused)) => return self.undeliverable(p),
            _ => match self.predefined_ids.get(name) {
                Some(&id) => (topic_type::PREDEFINED, id),
                None if name.len() == 2 => (
                    topic_type::SHORT,
                    u16::from_be_bytes([name.as_bytes()[0], name.as_bytes()[1]]),
                ),
                None => {
                    if c.register.is_some() {
                        return Out::Stall;
                    }
                    // REGISTER carries the name: one too long for a datagram (MQTT allows
                    // 65535 bytes) cannot be registered, and sending it would only fail until
                    // the client is taken as lost.
                    let register = 8 + c.peer.node_id().map_or(0, |n| 3 + n.len());
                    if name.len() + register > MAX_DATAGRAM {
                        return self.undeliverable(p);
                    }
                    let Some(id) = c.topics.add(name, Reg::Sent, self.opts.max_topic_bytes) else {
                        return self.undeliverable(p);
                    };
                    let msg_id = c.msg_id();
                    c.register = Some((id, msg_id));
                    c.tries = 1;
                    c.busy = 0;
                    let m = Message::Register {
                        topic_id: id,
                        msg_id,
                        topic: name.as_bytes(),
                    };
                    self.send_client(host, idx, &m);
                    self.arm(idx, now);
                    return Out::Stall;
                }
            },
        };
        // MQTT-SN's own header is 7 bytes (long form), a forwarder's adds its own.
        let overhead = 7 + c.peer.node_id().map_or(0, |n| 3 + n.len());
        if p.payload.len() + overhead > MAX_DATAGRAM {
            return self.undeliverable(p);
        }
        if p.qos > 0 {
            if c.inflight != Some(p.packet_id) {
                c.tries = 1;
            }
            c.inflight = Some(p.packet_id);
        }
        let m = Message::Publish {
            flags: Flags::new(p.qos as i8, p.retain, p.dup, kind_of),
            topic_id,
            msg_id: if p.qos > 0 { p.packet_id } else { 0 },
            data: p.payload,
        };
        self.send_client(host, idx, &m);
        if p.qos > 0 {
            self.arm(idx, now);
        }
        Out::Done
    }

    pub(super) fn undeliverable(&mut self, p: &mqtt::Publish<'_>) -> Out {
        self.stats.dropped += 1;
        drop_out(p)
    }

    /// PUBACK from the client for our PUBLISH (QoS 1).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn puback(
        &mut self,
        b: &mut Broker,
        idx: usize,
        conn: ConnId,
        topic_id: u16,
        msg_id: u16,
        code: u8,
        now: Instant,
    ) {
        match code {
            rc::ACCEPTED => self.delivered(b, idx, conn, mqtt::kind::PUBACK, msg_id, now),
            rc::INVALID_TOPIC_ID => {
                // It does not know the id (its registration was lost): forget it, so the
                // message sent again registers it first (within the retries).
                let c = &mut self.clients[idx];
                forget_topic(&mut c.topics, topic_id);
                if c.inflight == Some(msg_id) {
                    c.inflight = None;
                    b.retransmit(conn, now);
                }
            }
            _ => {
                // Congestion: the retransmission timer sends it again later.
            }
        }
    }

    /// PUBREC from the client for our PUBLISH (QoS 2).
    pub(super) fn pubrec(
        &mut self,
        b: &mut Broker,
        idx: usize,
        conn: ConnId,
        msg_id: u16,
        now: Instant,
    ) {
        // The PUBREL the broker answers with is the next thing in flight.
        self.acknowledged(idx, msg_id, now);
        ack_to_broker(b, &mut self.frame, conn, mqtt::kind::PUBREC, msg_id, now);
    }

    /// PUBCOMP from the client for our PUBREL: the QoS 2 exchange is over.
    pub(super) fn pubcomp(
        &mut self,
        b: &mut Broker,
        idx: usize,
        conn: ConnId,
        msg_id: u16,
        now: Instant,
    ) {
        self.delivered(b, idx, conn, mqtt::kind::PUBCOMP, msg_id, now);
    }

    /// The client has a message of ours for good (PUBACK, or PUBCOMP): its wait is over, and
    /// a woken sleeper's connection is looked at again, as it may have been the last thing
    /// it was woken for (PINGRESP follows: see `output.rs`).
    fn delivered(
        &mut self,
        b: &mut Broker,
        idx: usize,
        conn: ConnId,
        kind: u8,
        msg_id: u16,
        now: Instant,
    ) {
        self.acknowledged(idx, msg_id, now);
        if self.clients[idx].state == State::Awake {
            b.mark_writable(conn);
        }
        ack_to_broker(b, &mut self.frame, conn, kind, msg_id, now);
    }
}

/// A PUBLISH not sent to the client: gone from its output (QoS 0), or acknowledged to the
/// broker in its place (QoS 1/2).
fn drop_out(p: &mqtt::Publish<'_>) -> Out {
    match p.qos {
        0 => Out::Done,
        q => Out::DropAck(q, p.packet_id),
    }
}
