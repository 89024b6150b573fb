//! MQTT-SN 1.2 over UDP: the datagram codec ([`wire`]) and the gateway ([`Gateway`]) that puts
//! MQTT-SN clients on the same broker core as MQTT ones, in the same event loop.
//!
//! The gateway is part of the broker (no second hop, no second process): each MQTT-SN client
//! is a broker connection whose output the gateway translates into datagrams (see
//! `broker/gateway.rs` for the seam), so sessions, the topic table, retained messages, the ACL,
//! wills, persistence and the device executor are the ones MQTT clients have. The gateway's
//! own state is what MQTT-SN adds: clients keyed by source address (and a forwarder's node
//! id), topic ids per client, the will dialogue, sleeping clients, retransmission over a
//! transport that loses datagrams. Like `broker/`, it does no I/O: `net` hands it datagrams
//! and sends what it gives back, and tests drive it directly.

mod gateway;
pub mod wire;

pub use gateway::{Gateway, Host, Peer};

use std::net::SocketAddr;
use std::time::Duration;

/// An MQTT-SN listener's options (`protocol mqttsn` and the `mqttsn_*` lines of its section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Predefined topic ids (`mqttsn_topic ID NAME`), known to every client of the listener.
    pub topics: Vec<(u16, String)>,
    /// The GwId in GWINFO and ADVERTISE (`mqttsn_gateway_id`).
    pub gateway_id: u8,
    /// T_retry: how long an unacknowledged message, REGISTER or will request waits before it
    /// is sent again (`mqttsn_retry_interval`, seconds).
    pub retry_interval: Duration,
    /// N_retry: how often it is sent again before the client is taken as lost
    /// (`mqttsn_retry_count`); and how often a REGISTER the client answers with CONGESTION
    /// is sent again before the message waiting for it is dropped.
    pub retry_count: u32,
    /// ADVERTISE every so often (`mqttsn_advertise_interval`), to this address only
    /// (`mqttsn_advertise_address`): never a broadcast nobody asked for.
    pub advertise: Option<(Duration, SocketAddr)>,
    /// Clients the listener keeps at once: connected, asleep, in their will dialogue, or
    /// remembered for a `clean session 0` reconnect (`max_connections` in its section).
    pub max_clients: usize,
    /// Of those, from one IP address (`mqttsn_max_clients_per_source`; a radio forwarder
    /// brings all of its nodes from one address).
    pub max_clients_per_source: usize,
    /// A CONNECT that finds the client table (the listener's or the source's) full evicts the
    /// client silent the longest among those nothing else would ever end (keep-alive 0,
    /// awake, nothing in flight to it), if it has been silent this long
    /// (`mqttsn_idle_evict`; zero: never).
    pub idle_evict: Duration,
    /// Bytes of topic names one client's topic ids may hold (`mqttsn_max_topic_bytes`).
    pub max_topic_bytes: usize,
    /// Longest will topic, and longest will message, a client may give
    /// (`mqttsn_max_will_size`).
    pub max_will_size: usize,
}

/// Clients an MQTT-SN listener keeps without a `max_connections` of its own.
pub const DEFAULT_MAX_CLIENTS: usize = 1024;

impl Default for Options {
    fn default() -> Self {
        Options {
            topics: Vec::new(),
            gateway_id: 1,
            // The specification suggests T_retry 10 to 15 s and N_retry 3 to 5 (section 7.2).
            retry_interval: Duration::from_secs(10),
            retry_count: 3,
            advertise: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_clients_per_source: 64,
            idle_evict: Duration::from_secs(60),
            max_topic_bytes: 8 * 1024,
            max_will_size: 1024,
        }
    }
}

/// The gateways' counters, kept in the broker core beside its own (`$SYS/broker/mqttsn/...`
/// and `/metrics`). Gauges are kept up to date at each change of a client's state.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Clients connected (active, asleep or awake).
    pub clients_connected: u64,
    /// Of those, asleep.
    pub clients_asleep: u64,
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Datagrams that did not decode (dropped).
    pub malformed: u64,
    /// Datagrams from a source that is not a connected client (answered with DISCONNECT).
    pub not_connected: u64,
    /// Datagrams of a type a client does not send, or not at this point of its state.
    pub unexpected: u64,
    /// CONNECTs refused because the listener or the source had its most clients.
    pub refused_limit: u64,
    /// Datagrams dropped while the client's reading is paused (a subscriber's full queue):
    /// the client sends them again.
    pub paused: u64,
    /// Datagrams the socket would not take.
    pub send_failed: u64,
    /// QoS -1 publishes routed, and refused (no anonymous access, the ACL, an unknown topic).
    pub qos_minus1: u64,
    pub qos_minus1_dropped: u64,
    /// Messages, REGISTERs and will requests sent again for want of an acknowledgement.
    pub retransmissions: u64,
    /// Clients taken as lost after `retry_count` retransmissions.
    pub lost: u64,
    /// Clients with keep-alive 0 evicted after `idle_evict` of silence to make room for a new
    /// client (taken as lost: their will is published).
    pub evicted_idle: u64,
    /// Resent publishes and subscribes from clients, answered without handling them again.
    pub duplicates: u64,
    /// Messages for a client the gateway could not send it (too large for a datagram, a
    /// topic it refused to register, too many topics).
    pub dropped: u64,
    /// Messages for a client dropped because it answered the REGISTER of their topic with
    /// CONGESTION more than `retry_count` times.
    pub register_congestion: u64,
    /// Will topics and messages refused for being over `max_will_size`.
    pub will_too_large: u64,
}

#[cfg(test)]
mod tests;
