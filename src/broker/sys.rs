//! `$SYS/broker/...`: Mosquitto's status topics, retained, refreshed every `sys_interval`
//! seconds. A value is published only when it changed since the last refresh, so an idle
//! broker sends subscribers little more than its uptime.

use super::{publish, Broker};
use heapless::String as HString;
use std::fmt::Write;
use std::time::{Duration, Instant};

const LOAD_TOPICS: [[&str; 3]; 6] = [
    [
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/messages/received/5min",
        "$SYS/broker/load/messages/received/15min",
    ],
    [
        "$SYS/broker/load/messages/sent/1min",
        "$SYS/broker/load/messages/sent/5min",
        "$SYS/broker/load/messages/sent/15min",
    ],
    [
        "$SYS/broker/load/publish/received/1min",
        "$SYS/broker/load/publish/received/5min",
        "$SYS/broker/load/publish/received/15min",
    ],
    [
        "$SYS/broker/load/publish/sent/1min",
        "$SYS/broker/load/publish/sent/5min",
        "$SYS/broker/load/publish/sent/15min",
    ],
    [
        "$SYS/broker/load/bytes/received/1min",
        "$SYS/broker/load/bytes/received/5min",
        "$SYS/broker/load/bytes/received/15min",
    ],
    [
        "$SYS/broker/load/bytes/sent/1min",
        "$SYS/broker/load/bytes/sent/5min",
        "$SYS/broker/load/bytes/sent/15min",
    ],
];

const COUNT_TOPICS: [&str; 17] = [
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/disconnected",
    "$SYS/broker/clients/total",
    "$SYS/broker/clients/maximum",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/messages/stored",
    "$SYS/broker/store/messages/count",
    "$SYS/broker/store/messages/bytes",
    "$SYS/broker/publish/messages/received",
    "$SYS/broker/publish/messages/sent",
    "$SYS/broker/publish/messages/dropped",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
];

/// `$SYS/broker/mqttsn/...`, with an MQTT-SN listener: its clients and datagrams.
const MQTTSN_TOPICS: [&str; 11] = [
    "$SYS/broker/mqttsn/clients/connected",
    "$SYS/broker/mqttsn/clients/asleep",
    "$SYS/broker/mqttsn/clients/refused",
    "$SYS/broker/mqttsn/clients/lost",
    "$SYS/broker/mqttsn/clients/evicted",
    "$SYS/broker/mqttsn/datagrams/received",
    "$SYS/broker/mqttsn/datagrams/sent",
    "$SYS/broker/mqttsn/datagrams/malformed",
    "$SYS/broker/mqttsn/datagrams/not_connected",
    "$SYS/broker/mqttsn/retransmissions",
    "$SYS/broker/mqttsn/publish/qos-1",
];

type Value = HString<48>;

pub(super) struct SysState {
    /// When to refresh next; `None` when `$SYS` is off.
    pub next: Option<Instant>,
    interval: Duration,
    started: Instant,
    last_tick: Instant,
    version_sent: bool,
    /// Counter values at the last tick, for the load averages.
    last_counts: [u64; 6],
    /// Exponentially smoothed per-minute rates over 1, 5 and 15 minutes.
    load: [[f64; 3]; 6],
    last_values: [Value; 17 + 18 + MQTTSN_TOPICS.len()],
}

impl SysState {
    pub fn new(now: Instant, interval_secs: u32) -> Self {
        let interval = Duration::from_secs(interval_secs as u64);
        SysState {
            next: (interval_secs > 0).then_some(now),
            interval,
            started: now,
            last_tick: now,
            version_sent: false,
            last_counts: [0; 6],
            load: [[0.0; 3]; 6],
            last_values: core::array::from_fn(|_| Value::new()),
        }
    }
}

pub(super) fn publish(b: &mut Broker, now: Instant) {
    if !b.sys.version_sent {
        b.sys.version_sent = true;
        let version = concat!("gatemq version ", env!("CARGO_PKG_VERSION"));
        publish::route(
            b,
            "$SYS/broker/version",
            version.as_bytes(),
            0,
            true,
            None,
            None,
        );
        persistence(b);
    }
    let st = &b.stats;
    let connected = st.clients_connected as u64;
    let total = b.sessions.len() as u64;
    let counts: [u64; 17] = [
        now.duration_since(b.sys.started).as_secs(),
        connected,
        total.saturating_sub(connected),
        total,
        st.clients_maximum as u64,
        st.messages_received,
        st.messages_sent,
        b.pool.len() as u64,
        b.pool.len() as u64,
        b.pool.bytes() as u64,
        st.publish_received,
        st.publish_sent,
        st.publish_dropped,
        st.bytes_received,
        st.bytes_sent,
        b.subs.len() as u64,
        b.retained.len() as u64,
    ];
    let rates = [
        st.messages_received,
        st.messages_sent,
        st.publish_received,
        st.publish_sent,
        st.bytes_received,
        st.bytes_sent,
    ];
    let elapsed = now.duration_since(b.sys.last_tick).as_secs_f64();
    if elapsed > 0.0 {
        for (i, &count) in rates.iter().enumerate() {
            let per_minute = (count - b.sys.last_counts[i]) as f64 * 60.0 / elapsed;
            for (j, minutes) in [1.0f64, 5.0, 15.0].into_iter().enumerate() {
                let k = 1.0 - (-elapsed / (60.0 * minutes)).exp();
                b.sys.load[i][j] += (per_minute - b.sys.load[i][j]) * k;
            }
        }
    }
    b.sys.last_counts = rates;
    b.sys.last_tick = now;

    for (i, (topic, value)) in COUNT_TOPICS.iter().zip(counts).enumerate() {
        let mut v = Value::new();
        let _ = if i == 0 {
            write!(v, "{value} seconds")
        } else {
            write!(v, "{value}")
        };
        update(b, i, topic, v);
    }
    for (i, topics) in LOAD_TOPICS.iter().enumerate() {
        for (j, topic) in topics.iter().enumerate() {
            let mut v = Value::new();
            let _ = write!(v, "{:.2}", b.sys.load[i][j]);
            update(b, COUNT_TOPICS.len() + i * 3 + j, topic, v);
        }
    }
    if let Some(sn) = b.mqttsn.as_deref() {
        let values = [
            sn.clients_connected,
            sn.clients_asleep,
            sn.refused_limit,
            sn.lost,
            sn.evicted_idle,
            sn.datagrams_received,
            sn.datagrams_sent,
            sn.malformed,
            sn.not_connected,
            sn.retransmissions,
            sn.qos_minus1,
        ];
        let base = COUNT_TOPICS.len() + LOAD_TOPICS.len() * 3;
        for (i, (topic, value)) in MQTTSN_TOPICS.iter().zip(values).enumerate() {
            let mut v = Value::new();
            let _ = write!(v, "{value}");
            update(b, base + i, topic, v);
        }
    }
    super::bridge::publish_sys(b);
    b.sys.next = Some(now + b.sys.interval);
}

/// `$SYS/broker/persistence/failing` (with persistence on): `1` while the journal cannot be
/// written, `0` otherwise; retained, and sent when it changes.
pub(super) fn persistence(b: &mut Broker) {
    if b.sys.next.is_none() || b.journal.is_none() {
        return;
    }
    let value: &[u8] = if b.journal_failing { b"1" } else { b"0" };
    publish::route(
        b,
        "$SYS/broker/persistence/failing",
        value,
        0,
        true,
        None,
        None,
    );
}

fn update(b: &mut Broker, slot: usize, topic: &str, value: Value) {
    if b.sys.last_values[slot] != value {
        publish::route(b, topic, value.as_bytes(), 0, true, None, None);
        b.sys.last_values[slot] = value;
    }
}
