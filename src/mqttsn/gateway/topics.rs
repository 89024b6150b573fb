//! Topic ids (spec 6.5): a client's table, dense from 1, of names it registered, got in a
//! SUBACK or was sent in our REGISTER; and REGISTER/REGACK from the client.

use super::*;

/// A client's topic ids: ids handed out by the gateway (to REGISTER, SUBSCRIBE, and its own
/// REGISTERs) are dense from 1, so an id is an index; names are found through a table of ids.
///
/// The names are kept one after another in one buffer, so what a client's table costs is
/// what its budget says (`mqttsn_max_topic_bytes` of names, never more capacity than that)
/// plus 8 bytes an id and the index: no allocation, and no allocator overhead, per name.
#[derive(Default)]
pub(super) struct Topics {
    /// The names, in the order of their ids (forgotten ones stay until room is needed).
    names: String,
    /// Per id (`id - 1`): where its name is in `names`.
    ids: Vec<Entry>,
    by_name: hashbrown::HashTable<u16>,
    /// Bytes of `names` that belong to forgotten ids.
    dead: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: u32,
    /// 0: forgotten (a topic name is never empty).
    len: u16,
    reg: Reg,
}

/// What the client knows of a topic id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reg {
    /// It knows it (it asked for it, it got it in a SUBACK, or it acknowledged our REGISTER).
    Known,
    /// Our REGISTER is on its way (or is to be sent again).
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

fn name_of<'a>(names: &'a str, ids: &[Entry], id: u16) -> &'a str {
    ids.get((id as usize).wrapping_sub(1))
        .and_then(|e| names.get(e.at as usize..e.at as usize + e.len as usize))
        .unwrap_or("")
}

impl Topics {
    pub(super) fn id(&self, name: &str) -> Option<u16> {
        let (names, ids) = (&self.names, &self.ids);
        self.by_name
            .find(name_hash(name), |&id| name_of(names, ids, id) == name)
            .copied()
    }
    pub(super) fn get(&self, id: u16) -> Option<(&str, Reg)> {
        let e = self.ids.get((id as usize).checked_sub(1)?)?;
        (e.len > 0).then(|| (name_of(&self.names, &self.ids, id), e.reg))
    }
    /// The id of `name`, registered now if new, with what the client now knows of it (`reg`):
    /// `None` when the client has its most ids ([`MAX_TOPICS_PER_CLIENT`]) or its names would
    /// pass `budget` bytes.
    pub(super) fn add(&mut self, name: &str, reg: Reg, budget: usize) -> Option<u16> {
        if let Some(id) = self.id(name) {
            self.set(id, reg);
            return Some(id);
        }
        let n = name.len();
        if self.ids.len() >= MAX_TOPICS_PER_CLIENT || n == 0 || n > u16::MAX as usize {
            return None;
        }
        if self.names.len() + n > budget {
            if self.names.len() - self.dead + n > budget {
                return None;
            }
            self.compact();
        }
        if self.names.capacity() < self.names.len() + n {
            // Grow as a Vec does, but never past the budget.
            let want = (self.names.capacity() * 2)
                .max(64)
                .min(budget)
                .max(self.names.len() + n);
            self.names.reserve_exact(want - self.names.len());
        }
        let at = self.names.len() as u32;
        self.names.push_str(name);
        self.ids.push(Entry {
            at,
            len: n as u16,
            reg,
        });
        let id = self.ids.len() as u16;
        let (names, ids) = (&self.names, &self.ids);
        self.by_name
            .insert_unique(name_hash(name), id, |&i| name_hash(name_of(names, ids, i)));
        Some(id)
    }
    pub(super) fn set(&mut self, id: u16, reg: Reg) {
        if let Some(e) = self.ids.get_mut((id as usize).wrapping_sub(1)) {
            e.reg = reg;
        }
    }
    pub(super) fn clear(&mut self) {
        self.names.clear();
        self.ids.clear();
        self.by_name.clear();
        self.dead = 0;
    }
    /// Bytes of names held (forgotten ones included until the next compaction).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> (usize, usize) {
        (self.names.len(), self.names.capacity())
    }

    /// Close the gaps forgotten names left, in place: names keep their order, so each moves
    /// down to where the one before it ends.
    fn compact(&mut self) {
        let mut bytes = std::mem::take(&mut self.names).into_bytes();
        let mut to = 0;
        for e in self.ids.iter_mut().filter(|e| e.len > 0) {
            let from = e.at as usize;
            bytes.copy_within(from..from + e.len as usize, to);
            e.at = to as u32;
            to += e.len as usize;
        }
        bytes.truncate(to);
        self.dead = 0;
        // Whole names moved to where whole names were: still UTF-8 (checked all the same;
        // were it not, the client would register its topics again).
        match String::from_utf8(bytes) {
            Ok(names) => self.names = names,
            Err(_) => self.clear(),
        }
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
            Some(n) => match self.clients[idx]
                .topics
                .add(n, Reg::Known, self.opts.max_topic_bytes)
            {
                Some(id) => (id, rc::ACCEPTED),
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
    if let Some(e) = t.ids.get_mut(id as usize - 1) {
        // The slot stays (ids are positions) but matches no name; its bytes go at the next
        // compaction.
        t.dead += e.len as usize;
        e.len = 0;
        e.reg = Reg::Refused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_within_the_budget_and_forgotten_ones_make_room() {
        let mut t = Topics::default();
        let name = |i: usize| format!("{i:03}/{}", "n".repeat(96)); // 100 bytes
        for i in 0..10 {
            assert_eq!(t.add(&name(i), Reg::Known, 1000), Some(i as u16 + 1));
        }
        assert_eq!(t.add(&name(10), Reg::Known, 1000), None);
        assert_eq!(t.add(&name(3), Reg::Known, 1000), Some(4), "known: its id");
        assert_eq!(t.add(&name(3), Reg::Sent, 1000), Some(4));
        assert_eq!(
            t.get(4).map(|(_, r)| r),
            Some(Reg::Sent),
            "and what it knows of it now"
        );
        // Never more capacity than the budget, however it grew.
        assert_eq!(t.bytes(), (1000, 1000));
        // Forgotten: id 4 stays a slot that matches nothing; its bytes are reused.
        forget_topic(&mut t, 4);
        assert_eq!((t.get(4), t.id(&name(3))), (None, None));
        assert_eq!(t.add(&name(10), Reg::Sent, 1000), Some(11));
        assert_eq!(t.bytes(), (1000, 1000));
        for i in (0..3).chain(4..11) {
            let id = t.id(&name(i)).unwrap();
            assert_eq!(t.get(id).map(|(n, _)| n.to_string()), Some(name(i)));
        }
        assert_eq!(t.get(11).map(|(_, r)| r), Some(Reg::Sent));
        // And ids are bounded whatever the names.
        let mut t = Topics::default();
        for i in 0..MAX_TOPICS_PER_CLIENT {
            assert!(t.add(&format!("{i}"), Reg::Known, 1 << 20).is_some());
        }
        assert_eq!(t.add("x", Reg::Known, 1 << 20), None);
    }
}
