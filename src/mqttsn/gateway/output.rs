//! The broker's output for a client (MQTT 3.1.1 packets, as written for any connection)
//! translated into datagrams at the end of a loop turn; PINGRESP for an awake client once all
//! that was kept for it is out.

use super::*;

/// How a frame of the client's output was dealt with.
pub(super) enum Out {
    /// Sent (or dropped); go on.
    Done,
    /// Sent a REGISTER, or one is pending: stop here until REGACK.
    Stall,
    /// Dropped a QoS 1/2 PUBLISH that cannot be sent: acknowledge it to the broker so its
    /// in-flight window moves on (QoS, packet id).
    DropAck(u8, u16),
}

impl Gateway {
    /// Translate the broker's output for connection `conn` into datagrams. Called at the end
    /// of each loop turn for connections with output (and after an acknowledgement lets more
    /// go). Stops at a PUBLISH whose topic needs a REGISTER first.
    pub fn flush<H: Host>(&mut self, b: &mut Broker, host: &mut H, conn: ConnId, now: Instant) {
        let Some(idx) = self.by_conn.get(&conn).copied() else {
            // Not (or no longer) a client of ours: nothing to translate it for.
            let n = b.output(conn).len();
            b.consume_output(conn, n);
            return;
        };
        for _ in 0..64 {
            let out = b.output(conn);
            if out.is_empty() {
                break;
            }
            let mut used = 0;
            let mut stalled = false;
            let mut drop_ack = None;
            while used < out.len() {
                let rest = &out[used..];
                let Ok(Some(f)) = frame_len(rest, usize::MAX) else {
                    break;
                };
                if f.total_len > rest.len() {
                    break;
                }
                match self.translate(host, idx, &rest[..f.total_len], f.header_len, now) {
                    Out::Done => used += f.total_len,
                    Out::Stall => {
                        stalled = true;
                        break;
                    }
                    Out::DropAck(q, id) => {
                        used += f.total_len;
                        drop_ack = Some((q, id));
                        break;
                    }
                }
            }
            b.consume_output(conn, used);
            if let Some((qos, id)) = drop_ack {
                // The broker's window moves on as if it had been acknowledged.
                let k = if qos == 1 {
                    mqtt::kind::PUBACK
                } else {
                    mqtt::kind::PUBREC
                };
                ack_to_broker(b, &mut self.frame, conn, k, id, now);
                if qos == 2 {
                    ack_to_broker(b, &mut self.frame, conn, mqtt::kind::PUBCOMP, id, now);
                }
                // Were it in flight (sent, then given up), that wait is over as for an
                // acknowledgement: the timer stays only for what still waits.
                self.acknowledged(idx, id, now);
                continue;
            }
            if stalled || used == 0 {
                break;
            }
        }
        // Awake: once everything kept for it is out and acknowledged, PINGRESP and back to
        // sleep (spec 6.14).
        let c = &self.clients[idx];
        if c.state == State::Awake
            && c.register.is_none()
            && c.inflight.is_none()
            && b.output(conn).is_empty()
            && b.held_for(conn) == (0, 0)
        {
            self.send_client(host, idx, &Message::PingResp);
            self.set_state(idx, State::Asleep);
            b.set_asleep(conn, true);
            b.touch(conn, now);
        }
        self.merge(b);
    }

    /// One MQTT packet of a client's output, as MQTT-SN.
    pub(super) fn translate<H: Host>(
        &mut self,
        host: &mut H,
        idx: usize,
        frame: &[u8],
        header_len: usize,
        now: Instant,
    ) -> Out {
        let packet_type = frame[0] >> 4;
        match packet_type {
            mqtt::kind::PUBLISH => {
                let Ok(Packet::Publish(p)) = Packet::decode(frame, header_len, mqtt::LEVEL_311)
                else {
                    return Out::Done;
                };
                self.deliver(host, idx, &p, now)
            }
            mqtt::kind::CONNACK => {
                if let Ok(Some(mqtt::client::ServerPacket::ConnAck { code, .. })) =
                    decode_server(frame, header_len, false)
                {
                    let accepted = code == 0;
                    let m = Message::ConnAck {
                        rc: if accepted {
                            rc::ACCEPTED
                        } else {
                            rc::NOT_SUPPORTED
                        },
                    };
                    self.send_client(host, idx, &m);
                    if accepted && self.clients[idx].state == State::Connecting {
                        self.set_state(idx, State::Active);
                        let c = &self.clients[idx];
                        log::info!(
                            "MQTT-SN client {} connected from {}{}",
                            c.client_id,
                            c.peer.addr,
                            if c.peer.forwarded { " (forwarded)" } else { "" }
                        );
                    }
                }
                Out::Done
            }
            mqtt::kind::PUBACK | mqtt::kind::PUBREC | mqtt::kind::PUBREL | mqtt::kind::PUBCOMP => {
                let msg_id = match frame.get(header_len..header_len + 2) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                    _ => return Out::Done,
                };
                let c = &mut self.clients[idx];
                let m = match packet_type {
                    mqtt::kind::PUBACK => {
                        c.acked.push(msg_id, ());
                        Message::PubAck {
                            topic_id: c.pub_topics.get(msg_id).unwrap_or(0),
                            msg_id,
                            rc: rc::ACCEPTED,
                        }
                    }
                    mqtt::kind::PUBREC => Message::PubRec { msg_id },
                    mqtt::kind::PUBCOMP => Message::PubComp { msg_id },
                    _ => {
                        // Our PUBREL, after the client's PUBREC: in flight until PUBCOMP.
                        if c.inflight != Some(msg_id) {
                            c.tries = 1;
                        }
                        c.inflight = Some(msg_id);
                        self.arm(idx, now);
                        Message::PubRel { msg_id }
                    }
                };
                self.send_client(host, idx, &m);
                Out::Done
            }
            mqtt::kind::SUBACK => {
                if let Ok(Some(mqtt::client::ServerPacket::SubAck { packet_id, codes })) =
                    decode_server(frame, header_len, false)
                {
                    let c = &mut self.clients[idx];
                    let code = codes.first().copied().unwrap_or(0x80);
                    let topic_id = c.subs.get(packet_id).unwrap_or(0);
                    let (flags, r) = match code {
                        0..=2 => (Flags::new(code as i8, false, false, 0), rc::ACCEPTED),
                        _ => (Flags(0), rc::NOT_SUPPORTED),
                    };
                    c.last_suback = Some((packet_id, flags.0, topic_id, r));
                    let m = Message::SubAck {
                        flags,
                        topic_id,
                        msg_id: packet_id,
                        rc: r,
                    };
                    self.send_client(host, idx, &m);
                }
                Out::Done
            }
            mqtt::kind::UNSUBACK => {
                if let Ok(Some(mqtt::client::ServerPacket::UnsubAck { packet_id })) =
                    decode_server(frame, header_len, false)
                {
                    self.send_client(host, idx, &Message::UnsubAck { msg_id: packet_id });
                }
                Out::Done
            }
            mqtt::kind::PINGRESP => {
                self.send_client(host, idx, &Message::PingResp);
                Out::Done
            }
            _ => Out::Done,
        }
    }
}
