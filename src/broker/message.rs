//! The message pool: a message is stored once and shared, by reference count, by every queue,
//! in-flight window, retained slot and will that holds it.
//!
//! A slot's byte buffer is kept when the message is freed and handed to the next message, so
//! once the pool has warmed up to the traffic's sizes, storing a message allocates nothing.
//! The payload is copied out of the connection's read buffer into the slot exactly once; no
//! stored message keeps a read buffer alive.

use slab::Slab;
use std::time::Instant;

pub type MsgId = u32;

pub struct Message {
    refs: u32,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 Message Expiry: after this instant the message is never delivered.
    pub expiry: Option<Instant>,
    /// Its id in the persistence journal once written there; 0 = not written.
    pub store_id: u64,
    topic_len: usize,
    props_len: usize,
    /// The topic's bytes, the MQTT 5 properties forwarded with it (encoded, without Message
    /// Expiry, Topic Alias and Subscription Identifiers, which are per delivery), the payload.
    data: Vec<u8>,
}

impl Message {
    pub fn topic(&self) -> &[u8] {
        &self.data[..self.topic_len]
    }
    pub fn properties(&self) -> &[u8] {
        &self.data[self.topic_len..self.topic_len + self.props_len]
    }
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
    pub fn topic_str(&self) -> &str {
        // Stored topics come from decoded (valid UTF-8) topics only.
        std::str::from_utf8(self.topic()).unwrap_or("")
    }
    pub fn payload(&self) -> &[u8] {
        &self.data[self.topic_len + self.props_len..]
    }
}

#[derive(Default)]
pub struct MessagePool {
    slots: Slab<Message>,
    spare: Vec<Vec<u8>>,
    /// Capacity held by `spare`.
    spare_bytes: usize,
    bytes: usize,
}

/// Spare buffers larger than this are freed rather than kept, so one huge message does not
/// pin its memory for ever.
const KEEP_SPARE_MAX: usize = 64 * 1024;
/// Freed buffers are kept for reuse up to this many bytes: what a burst of queued messages
/// leaves behind is what lets the next burst route without allocating, and this bounds it.
const SPARE_BYTES_MAX: usize = 16 * 1024 * 1024;

impl MessagePool {
    /// Store a message with one reference, which the caller owns.
    pub fn store(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> MsgId {
        self.store_with(topic, &[], payload, qos, retain, None)
    }

    /// Store a message with forwarded MQTT 5 properties (`props`: encoded property bytes, to
    /// be concatenated) and an expiry.
    pub fn store_with(
        &mut self,
        topic: &str,
        props: &[&[u8]],
        payload: &[u8],
        qos: u8,
        retain: bool,
        expiry: Option<Instant>,
    ) -> MsgId {
        self.store_iter(topic, props.iter().copied(), payload, qos, retain, expiry)
    }

    /// As [`MessagePool::store_with`], with the property pieces from an iterator.
    pub fn store_iter<'p>(
        &mut self,
        topic: &str,
        props: impl Iterator<Item = &'p [u8]> + Clone,
        payload: &[u8],
        qos: u8,
        retain: bool,
        expiry: Option<Instant>,
    ) -> MsgId {
        let props_len: usize = props.clone().map(|p| p.len()).sum();
        let mut data = self.spare.pop().unwrap_or_default();
        self.spare_bytes -= data.capacity();
        data.clear();
        // Power-of-two size classes: a recycled buffer fits the next message of a similar
        // size, so steady traffic of varying lengths stops allocating once warm.
        let need = topic.len() + props_len + payload.len();
        if data.capacity() < need {
            data.reserve_exact(need.next_power_of_two().max(64));
        }
        data.extend_from_slice(topic.as_bytes());
        for p in props {
            data.extend_from_slice(p);
        }
        data.extend_from_slice(payload);
        self.bytes += data.len();
        self.slots.insert(Message {
            refs: 1,
            qos,
            retain,
            expiry,
            store_id: 0,
            topic_len: topic.len(),
            props_len,
            data,
        }) as MsgId
    }

    pub fn get(&self, id: MsgId) -> &Message {
        &self.slots[id as usize]
    }

    /// Set a message's expiry (a will's, when it is published).
    pub fn set_expiry(&mut self, id: MsgId, expiry: Option<Instant>) {
        self.slots[id as usize].expiry = expiry;
    }

    /// Note the id the message was written to the journal under.
    pub fn set_store_id(&mut self, id: MsgId, store_id: u64) {
        self.slots[id as usize].store_id = store_id;
    }

    /// Take one more reference.
    pub fn retain(&mut self, id: MsgId) {
        self.slots[id as usize].refs += 1;
    }

    /// Drop one reference; the message is freed with its last one.
    pub fn release(&mut self, id: MsgId) {
        let m = &mut self.slots[id as usize];
        m.refs -= 1;
        if m.refs == 0 {
            let m = self.slots.remove(id as usize);
            self.bytes -= m.data.len();
            let cap = m.data.capacity();
            if cap <= KEEP_SPARE_MAX && self.spare_bytes + cap <= SPARE_BYTES_MAX {
                self.spare_bytes += cap;
                self.spare.push(m.data);
            }
        }
    }

    /// Messages stored.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Topic and payload bytes of the messages stored.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_and_reuse() {
        let mut p = MessagePool::default();
        let a = p.store("t", b"hello", 1, false);
        p.retain(a);
        assert_eq!(p.get(a).payload(), b"hello");
        assert_eq!(p.get(a).topic_str(), "t");
        p.release(a);
        assert_eq!(p.len(), 1);
        p.release(a);
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
        let b = p.store("u", b"x", 0, true);
        assert_eq!(p.get(b).payload(), b"x");
        assert!(p.get(b).retain);
    }
}
