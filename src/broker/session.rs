//! A session: what the broker keeps for a client id, across connections when the client asked
//! for one that outlives its connection (3.1.x clean session 0, MQTT 5 Session Expiry > 0).

use super::message::MsgId;
use super::ConnId;
use std::collections::VecDeque;
use std::time::Instant;

/// The Subscription Identifiers a delivery carries (MQTT 5): a fixed-capacity list, so
/// queueing a message allocates nothing. More matching identifiers than fit are dropped.
pub type SubIds = heapless::Vec<u32, 4>;

/// Session Expiry Interval meaning "never" (spec 3.1.2.11.2), and the 3.1.x clean session 0.
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// A message waiting to be sent to this session.
#[derive(Debug, Clone)]
pub struct Queued {
    pub msg: MsgId,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: SubIds,
}

/// Where an outgoing QoS 1/2 message is in its acknowledgement flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    PubAck,
    PubRec,
    PubComp,
}

/// An outgoing QoS 1/2 message sent and not yet acknowledged. The message is released at
/// PUBREC: from then on only the packet identifier matters.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    /// The allocation number its packet id was given at (see `Session::next_packet_id`).
    pub seq: u64,
    pub msg: Option<MsgId>,
    pub qos: u8,
    pub retain: bool,
    pub awaiting: Awaiting,
    pub sub_ids: SubIds,
}

/// One of the session's subscriptions, as the client made it.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The filter as subscribed, `$share/<group>/` included.
    pub filter: Box<str>,
    pub options: u8,
    pub sub_id: u32,
}

pub struct Session {
    pub client_id: Box<str>,
    /// The username it connected with (for the ACL).
    pub username: Option<Box<str>>,
    /// The listener it last connected on: its ACL applies, online or not.
    pub listener: u16,
    /// Persistence holds a record of it.
    pub stored: bool,
    /// The session of a bridge to an upstream broker.
    pub bridge: bool,
    pub conn: Option<ConnId>,
    /// Seconds the session outlives its connection: 0 = not at all, NEVER_EXPIRES = for ever.
    pub expiry: u32,
    pub subscriptions: Vec<Subscription>,
    pub queue: VecDeque<Queued>,
    pub queued_bytes: usize,
    pub inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Packet ids handed out so far (skipped ones included).
    allocations: u64,
    /// Incoming QoS 2 packet identifiers between PUBREC and PUBREL: a PUBLISH with one of
    /// these is a resend and is not delivered again.
    pub qos2_incoming: Vec<u16>,
    /// Matching scratch: the routing pass that last saw this session, the highest QoS its
    /// matching subscriptions grant in that pass, their identifiers and Retain As Published.
    pub match_epoch: u64,
    pub match_qos: u8,
    pub match_sub_ids: SubIds,
    pub match_rap: bool,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Connections not read from until this session's queue drains (see `publish::deliver`).
    pub paused_publishers: Vec<ConnId>,
    /// A will waiting for its Will Delay Interval while the session is offline.
    pub pending_will: Option<(MsgId, Instant)>,
    /// When the offline session ends.
    pub expires_at: Option<Instant>,
    /// Session timer entries carrying another generation are stale.
    pub timer_gen: u64,
}

impl Session {
    pub fn new(client_id: &str, expiry: u32) -> Self {
        Session {
            client_id: client_id.into(),
            username: None,
            listener: 0,
            stored: false,
            bridge: false,
            conn: None,
            expiry,
            subscriptions: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_packet_id: 0,
            allocations: 0,
            qos2_incoming: Vec::new(),
            match_epoch: 0,
            match_qos: 0,
            match_sub_ids: SubIds::new(),
            match_rap: false,
            dropped: 0,
            paused_publishers: Vec::new(),
            pending_will: None,
            expires_at: None,
            timer_gen: 0,
        }
    }

    /// Whether the session outlives its connection (and so keeps messages while offline).
    pub fn persistent(&self) -> bool {
        self.expiry > 0
    }

    /// A packet identifier not used by any message in flight, and its allocation number (to
    /// store in the in-flight entry).
    ///
    /// Ids cycle through 1..=65535 and in-flight entries stay in allocation order, so the ids
    /// of the last 65 534 allocations all differ from the next one: only an entry older than
    /// that (the front is the oldest) can collide, and only then is the window scanned. This
    /// keeps a long in-flight window from costing a scan per message.
    pub fn next_packet_id(&mut self) -> (u16, u64) {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            self.allocations += 1;
            let (id, seq) = (self.next_packet_id, self.allocations);
            let old_enough = self.inflight.front().is_some_and(|f| seq - f.seq >= 65_535);
            if !old_enough || !self.inflight.iter().any(|i| i.packet_id == id) {
                return (id, seq);
            }
        }
    }

    /// After in-flight entries were restored with the packet ids they had: ids are not in
    /// allocation order any more, so every allocation checks for a collision until they are
    /// acknowledged (restored entries have allocation number 0).
    pub fn after_restore(&mut self) {
        self.allocations = self.allocations.max(65_535);
        if let Some(last) = self.inflight.back() {
            self.next_packet_id = last.packet_id;
        }
    }

    pub fn inflight_position(&self, packet_id: u16, awaiting: Awaiting) -> Option<usize> {
        self.inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.awaiting == awaiting)
    }
}

/// Sessions by client id. The table holds only session keys: the id is kept once, in the
/// session, instead of again as a map key (every client has a session, so every byte here
/// is paid per client).
#[derive(Default)]
pub struct ClientIds {
    table: hashbrown::HashTable<super::SessionId>,
}

fn id_hash(id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = super::fxhash::FxHasher::default();
    h.write(id.as_bytes());
    h.finish()
}

impl ClientIds {
    pub fn get(&self, sessions: &slab::Slab<Session>, id: &str) -> Option<super::SessionId> {
        self.table
            .find(id_hash(id), |&s| &*sessions[s].client_id == id)
            .copied()
    }

    /// Index session `sid` under its client id (which no other indexed session has).
    pub fn insert(&mut self, sessions: &slab::Slab<Session>, sid: super::SessionId) {
        let h = id_hash(&sessions[sid].client_id);
        self.table
            .insert_unique(h, sid, |&s| id_hash(&sessions[s].client_id));
    }

    /// Forget session `sid` (indexed under `id`), if it is the one indexed.
    pub fn remove(&mut self, id: &str, sid: super::SessionId) {
        if let Ok(entry) = self.table.find_entry(id_hash(id), |&s| s == sid) {
            entry.remove();
        }
    }
}
