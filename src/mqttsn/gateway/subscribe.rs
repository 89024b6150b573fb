//! SUBSCRIBE and UNSUBSCRIBE by topic name (wildcards allowed), predefined id or short name:
//! the SUBACK tells the topic id of a name without wildcards (spec 6.9).

use super::*;

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn subscribe<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        flags: Flags,
        msg_id: u16,
        t: TopicRef<'_>,
        now: Instant,
    ) {
        let c = &self.clients[idx];
        if let Some((m, f, id, code)) = c.last_suback.filter(|l| flags.dup() && l.0 == msg_id) {
            // Sent again because our SUBACK was lost.
            self.stats.duplicates += 1;
            let m = Message::SubAck {
                flags: Flags(f),
                topic_id: id,
                msg_id: m,
                rc: code,
            };
            return self.send_client(host, idx, &m);
        }
        let qos = flags.qos().clamp(0, 2) as u8;
        // The filter, and the topic id its SUBACK reports.
        let topic_id = match t {
            TopicRef::Name(n) => match std::str::from_utf8(n) {
                // A name without wildcards gets its topic id now: the SUBACK tells it, and
                // PUBLISHes on it need no REGISTER.
                Ok(f) if !f.contains(['+', '#']) && topic::valid_name(f) => {
                    let budget = self.opts.max_topic_bytes;
                    Some(
                        self.clients[idx]
                            .topics
                            .add(f, Reg::Known, budget)
                            .unwrap_or(0),
                    )
                }
                Ok(_) => Some(0),
                Err(_) => None,
            },
            TopicRef::Predefined(id) => {
                if !self.predefined.contains_key(&id) {
                    let m = Message::SubAck {
                        flags: Flags::new(qos as i8, false, false, 0),
                        topic_id: id,
                        msg_id,
                        rc: rc::INVALID_TOPIC_ID,
                    };
                    return self.send_client(host, idx, &m);
                }
                Some(id)
            }
            TopicRef::Short(s) => std::str::from_utf8(&s).ok().map(|_| 0),
        };
        let Some(topic_id) = topic_id else {
            let m = Message::SubAck {
                flags: Flags::new(qos as i8, false, false, 0),
                topic_id: 0,
                msg_id,
                rc: rc::NOT_SUPPORTED,
            };
            return self.send_client(host, idx, &m);
        };
        self.clients[idx].subs.push(msg_id, topic_id);
        let Gateway {
            predefined, frame, ..
        } = self;
        let short;
        let filter: &str = match t {
            TopicRef::Name(n) => std::str::from_utf8(n).unwrap_or(""),
            TopicRef::Predefined(id) => predefined.get(&id).map_or("", |n| n),
            TopicRef::Short(s) => {
                short = s;
                std::str::from_utf8(&short).unwrap_or("")
            }
        };
        frame.clear();
        encode_subscribe(frame, msg_id, filter, qos, false);
        to_broker(b, conn, frame, now);
    }

    /// UNSUBSCRIBE by topic name or filter, predefined id or short name.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn unsubscribe<H: Host>(
        &mut self,
        b: &mut Broker,
        host: &mut H,
        idx: usize,
        conn: ConnId,
        msg_id: u16,
        t: TopicRef<'_>,
        now: Instant,
    ) {
        let short;
        let filter: &str = match t {
            TopicRef::Name(n) => match std::str::from_utf8(n) {
                Ok(n) => n,
                Err(_) => return self.stats.unexpected += 1,
            },
            TopicRef::Predefined(id) => match self.predefined.get(&id) {
                Some(n) => n,
                None => {
                    // Nothing to unsubscribe from: done.
                    return self.send_client(host, idx, &Message::UnsubAck { msg_id });
                }
            },
            TopicRef::Short(s) => {
                short = s;
                match std::str::from_utf8(&short) {
                    Ok(n) => n,
                    Err(_) => return self.stats.unexpected += 1,
                }
            }
        };
        self.frame.clear();
        encode_unsubscribe(&mut self.frame, msg_id, filter);
        to_broker(b, conn, &self.frame, now);
    }
}

/// UNSUBSCRIBE with one filter (MQTT 3.1.1).
fn encode_unsubscribe(out: &mut Vec<u8>, packet_id: u16, filter: &str) {
    out.push(mqtt::kind::UNSUBSCRIBE << 4 | 0b0010);
    mqtt::put_varint(out, 2 + 2 + filter.len());
    mqtt::put_u16(out, packet_id);
    mqtt::put_str(out, filter.as_bytes());
}
