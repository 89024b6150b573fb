//! Topic ids (spec 6.5): a client's table, dense from 1, of names it registered, got in a
//! SUBACK or was sent in our REGISTER; and REGISTER/REGACK from the client.

use super::*;

/// A client's topic ids: ids handed out by the gateway (to REGISTER, SUBSCRIBE, and its own
/// REGISTERs) are dense from 1, so an id is an index; names are found through a table of ids.
#[derive(Default)]
pub(super) struct Topics {
    names: Vec<(Box<str>, Reg)>,
    by_name: hashbrown::HashTable<u16>,
    /// Bytes of the names held.
    bytes: usize,
}

/// What the client knows of a topic id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reg {
    /// It knows it (it asked for it, it got it in a SUBACK, or it acknowledged our REGISTER).
    Known,
    /// Our REGISTER is on its way.
    Sent,
    /// It refused our REGISTER: messages on this topic are not sent to it.
    Refused,
}

fn name_hash(name: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = crate::broker::fxhash::FxHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

impl Topics {
    pub(super) fn id(&self, name: &str) -> Option<u16> {
        self.by_name
            .find(name_hash(name), |&id| {
                &*self.names[id as usize - 1].0 == name
            })
            .copied()
    }
    pub(super) fn get(&self, id: u16) -> Option<(&str, Reg)> {
        let (n, r) = self.names.get((id as usize).checked_sub(1)?)?;
        (!n.is_empty()).then_some((n, *r))
    }
    /// The id of `name`, registered now if new (`None` when the table is full).
    pub(super) fn add(&mut self, name: &str, reg: Reg) -> Option<u16> {
        if let Some(id) = self.id(name) {
            return Some(id);
        }
        if self.names.len() >= MAX_TOPICS_PER_CLIENT
            || self.bytes + name.len() > MAX_TOPIC_BYTES_PER_CLIENT
        {
            return None;
        }
        self.bytes += name.len();
        self.names.push((name.into(), reg));
        let id = self.names.len() as u16;
        let names = &self.names;
        self.by_name.insert_unique(name_hash(name), id, |&i| {
            name_hash(&names[i as usize - 1].0)
        });
        Some(id)
    }
    pub(super) fn set(&mut self, id: u16, reg: Reg) {
        if let Some(e) = self.names.get_mut((id as usize).wrapping_sub(1)) {
            e.1 = reg;
        }
    }
    pub(super) fn clear(&mut self) {
        self.names.clear();
        self.by_name.clear();
        self.bytes = 0;
    }
}

impl Gateway {
    /// REGISTER from the client: the id of a topic name it will publish to (the same name
    /// gets the same id).
    pub(super) fn register<H: Host>(
        &mut self,
        b: &Broker,
        host: &mut H,
        idx: usize,
        msg_id: u16,
        topic: &[u8],
    ) {
        let max = b.config().max_topic_length;
        let name = std::str::from_utf8(topic)
            .ok()
            .filter(|t| topic::valid_name(t) && t.len() <= max);
        let (topic_id, code) = match name {
            None => (0, rc::NOT_SUPPORTED),
            Some(n) => match self.clients[idx].topics.add(n, Reg::Known) {
                Some(id) => {
                    self.clients[idx].topics.set(id, Reg::Known);
                    (id, rc::ACCEPTED)
                }
                None => (0, rc::CONGESTION),
            },
        };
        let m = Message::RegAck {
            topic_id,
            msg_id,
            rc: code,
        };
        self.send_client(host, idx, &m);
    }

    /// REGACK from the client for our REGISTER: what waited behind it goes on. CONGESTION
    /// means "busy, try later" (spec 6.13): the topic stays unregistered and the REGISTER
    /// goes again after `retry_interval`, up to `retry_count` times; then the message that
    /// waited for it is dropped (and counted), not the client. Any other refusal (invalid
    /// topic id, not supported) stands for the session: its messages are not sent to it.
    pub(super) fn regack(
        &mut self,
        b: &mut Broker,
        idx: usize,
        conn: ConnId,
        msg_id: u16,
        code: u8,
        now: Instant,
    ) {
        let retry_count = self.opts.retry_count;
        let c = &mut self.clients[idx];
        let Some((topic_id, _)) = c.register.filter(|&(_, m)| m == msg_id && !c.congested) else {
            // Not for the REGISTER we wait on (or a copy of its CONGESTION answer).
            return;
        };
        match code {
            rc::ACCEPTED => {
                c.register = None;
                c.busy = 0;
                c.topics.set(topic_id, Reg::Known);
            }
            rc::CONGESTION if c.busy < retry_count => {
                c.busy += 1;
                c.congested = true;
                return self.arm(idx, now);
            }
            rc::CONGESTION => {
                log::debug!(
                    "MQTT-SN client {} busy: REGISTER of topic id {topic_id} answered CONGESTION {} times; its message is dropped",
                    c.client_id,
                    c.busy + 1
                );
                c.register = None;
                c.busy = 0;
                c.give_up = Some(topic_id);
            }
            _ => {
                c.register = None;
                c.busy = 0;
                c.topics.set(topic_id, Reg::Refused);
            }
        }
        self.settle(idx, now);
        b.mark_writable(conn);
    }
}

/// Forget topic id `id` (the client lost it): the next message on its topic registers anew.
pub(super) fn forget_topic(t: &mut Topics, id: u16) {
    let Some((name, _)) = t.get(id) else { return };
    let h = name_hash(name);
    if let Ok(e) = t.by_name.find_entry(h, |&i| i == id) {
        e.remove();
    }
    if let Some(e) = t.names.get_mut(id as usize - 1) {
        // The slot stays (ids are positions) but matches no name.
        t.bytes -= e.0.len();
        e.0 = "".into();
        e.1 = Reg::Refused;
    }
}
