//! A session: what the broker keeps for a client id, across connections when the client asked
//! for a persistent session (clean session 0).

use super::message::MsgId;
use super::ConnId;
use std::collections::VecDeque;

/// A message waiting to be sent to this session.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    pub msg: MsgId,
    pub qos: u8,
    pub retain: bool,
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
#[derive(Debug, Clone, Copy)]
pub struct Inflight {
    pub packet_id: u16,
    pub msg: Option<MsgId>,
    pub qos: u8,
    pub retain: bool,
    pub awaiting: Awaiting,
}

pub struct Session {
    pub client_id: Box<str>,
    pub conn: Option<ConnId>,
    /// Clean session 0: the session outlives its connection.
    pub persistent: bool,
    /// Filters and granted QoS, so the session's subscriptions can be listed and removed.
    pub subscriptions: Vec<(Box<str>, u8)>,
    pub queue: VecDeque<Queued>,
    pub queued_bytes: usize,
    pub inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Incoming QoS 2 packet identifiers between PUBREC and PUBREL: a PUBLISH with one of
    /// these is a resend and is not delivered again.
    pub qos2_incoming: Vec<u16>,
    /// Matching scratch: the routing pass that last saw this session, and the highest QoS
    /// its matching subscriptions grant in that pass.
    pub match_epoch: u64,
    pub match_qos: u8,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Connections not read from until this session's queue drains (see `publish::deliver`).
    pub paused_publishers: Vec<ConnId>,
}

impl Session {
    pub fn new(client_id: &str, persistent: bool) -> Self {
        Session {
            client_id: client_id.into(),
            conn: None,
            persistent,
            subscriptions: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_packet_id: 0,
            qos2_incoming: Vec::new(),
            match_epoch: 0,
            match_qos: 0,
            dropped: 0,
            paused_publishers: Vec::new(),
        }
    }

    /// A packet identifier not used by any message in flight.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            let id = self.next_packet_id;
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    pub fn inflight_position(&self, packet_id: u16, awaiting: Awaiting) -> Option<usize> {
        self.inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.awaiting == awaiting)
    }
}
