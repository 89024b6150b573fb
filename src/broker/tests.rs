//! The broker core driven directly, without sockets, with synthetic time.

use super::*;
use crate::wire::{encode_publish_header, frame_len, put_str, put_u16, put_varint};

struct Harness {
    b: Broker,
    now: Instant,
    /// Packets that arrived with a CONNACK, kept for the next `recv`.
    stash: Vec<(ConnId, Out)>,
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    put_varint(&mut v, body.len());
    v.extend_from_slice(body);
    v
}

fn connect(
    id: &str,
    clean: bool,
    keep_alive: u16,
    will: Option<(&str, &[u8], u8, bool)>,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4);
    let mut flags = (clean as u8) << 1;
    if let Some((_, _, qos, retain)) = will {
        flags |= 0x04 | qos << 3 | (retain as u8) << 5;
    }
    body.push(flags);
    put_u16(&mut body, keep_alive);
    put_str(&mut body, id.as_bytes());
    if let Some((topic, payload, _, _)) = will {
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, payload);
    }
    packet(0x10, &body)
}

fn publish(topic: &str, payload: &[u8], qos: u8, retain: bool, dup: bool, id: u16) -> Vec<u8> {
    let mut v = Vec::new();
    encode_publish_header(
        &mut v,
        topic.as_bytes(),
        qos,
        retain,
        dup,
        id,
        payload.len(),
    );
    v.extend_from_slice(payload);
    v
}

fn subscribe(id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = Vec::new();
    put_u16(&mut body, id);
    for (f, q) in filters {
        put_str(&mut body, f.as_bytes());
        body.push(*q);
    }
    packet(0x82, &body)
}

fn ack(first: u8, id: u16) -> Vec<u8> {
    packet(first, &id.to_be_bytes())
}

/// A decoded outgoing packet: first byte and body.
type Out = (u8, Vec<u8>);

impl Harness {
    fn new(cfg: BrokerConfig) -> Self {
        let now = Instant::now();
        Harness {
            b: Broker::new(
                BrokerConfig {
                    sys_interval: 0,
                    ..cfg
                },
                now,
            ),
            now,
            stash: Vec::new(),
        }
    }

    fn open(&mut self, id: ConnId) {
        self.b.open(id, None, 0, self.now);
    }

    fn send(&mut self, id: ConnId, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(f) = frame_len(rest, usize::MAX).unwrap() {
            self.b
                .handle_packet(id, &rest[..f.total_len], f.header_len, self.now);
            rest = &rest[f.total_len..];
        }
        assert!(rest.is_empty());
    }

    /// Everything written to `id` since the last call, as packets.
    fn recv(&mut self, id: ConnId) -> Vec<Out> {
        let out = self.b.output(id).to_vec();
        self.b.consume_output(id, out.len());
        let mut packets: Vec<Out> = Vec::new();
        for (_, p) in self.stash.iter().filter(|(c, _)| *c == id) {
            packets.push(p.clone());
        }
        self.stash.retain(|(c, _)| *c != id);
        let mut rest = &out[..];
        while let Some(f) = frame_len(rest, usize::MAX).unwrap() {
            packets.push((rest[0], rest[f.header_len..f.total_len].to_vec()));
            rest = &rest[f.total_len..];
        }
        packets
    }

    fn connect(&mut self, id: ConnId, client: &str, clean: bool) -> Out {
        self.open(id);
        self.send(id, &connect(client, clean, 60, None));
        let mut p = self.recv(id);
        let connack = p.remove(0);
        self.stash.extend(p.into_iter().map(|p| (id, p)));
        connack
    }

    fn closing(&mut self) -> Vec<ConnId> {
        let mut v = Vec::new();
        self.b.take_closing(&mut v);
        for &id in &v {
            self.b.release(id, self.now);
        }
        v
    }
}

/// (qos, retain, dup, topic, packet id, payload) of a PUBLISH.
fn parse_publish(p: &Out) -> (u8, bool, bool, String, u16, Vec<u8>) {
    assert_eq!(p.0 >> 4, 3, "not a PUBLISH: {p:?}");
    let qos = (p.0 >> 1) & 3;
    let n = u16::from_be_bytes([p.1[0], p.1[1]]) as usize;
    let topic = String::from_utf8(p.1[2..2 + n].to_vec()).unwrap();
    let (id, start) = if qos > 0 {
        (u16::from_be_bytes([p.1[2 + n], p.1[3 + n]]), 4 + n)
    } else {
        (0, 2 + n)
    };
    (
        qos,
        p.0 & 1 == 1,
        p.0 & 8 == 8,
        topic,
        id,
        p.1[start..].to_vec(),
    )
}

#[test]
fn connack_and_session_present() {
    let mut h = Harness::new(BrokerConfig::default());
    assert_eq!(h.connect(1, "dev", false), (0x20, vec![0, 0]));
    h.send(1, &packet(0xe0, &[]));
    assert_eq!(h.closing(), vec![1]);
    assert_eq!(h.connect(2, "dev", false), (0x20, vec![1, 0]));
    assert_eq!(h.b.session_count(), 1);
}

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_highest_qos() {
    let mut h = Harness::new(BrokerConfig::default());
    h.connect(1, "sub", true);
    h.send(1, &subscribe(1, &[("a/#", 0), ("a/b", 2), ("+/b", 1)]));
    assert_eq!(h.recv(1), vec![(0x90, vec![0, 1, 0, 2, 1])]);
    h.connect(2, "pub", true);
    h.send(2, &publish("a/b", b"x", 2, false, false, 9));
    let got = h.recv(1);
    assert_eq!(got.len(), 1);
    let (qos, retain, _, topic, _, payload) = parse_publish(&got[0]);
    assert_eq!(
        (qos, retain, topic.as_str(), &payload[..]),
        (2, false, "a/b", &b"x"[..])
    );
}

#[test]
fn qos2_resend_before_pubrel_is_not_delivered_twice() {
    let mut h = Harness::new(BrokerConfig::default());
    h.connect(1, "sub", true);
    h.send(1, &subscribe(1, &[("t", 2)]));
    h.recv(1);
    h.connect(2, "pub", true);
    h.send(2, &publish("t", b"once", 2, false, false, 7));
    h.send(2, &publish("t", b"once", 2, false, true, 7));
    assert_eq!(h.recv(2), vec![(0x50, vec![0, 7]), (0x50, vec![0, 7])]);
    assert_eq!(h.recv(1).len(), 1);
    h.send(2, &ack(0x62, 7));
    assert_eq!(h.recv(2), vec![(0x70, vec![0, 7])]);
    // After PUBREL the id is free: the same id is a new message.
    h.send(2, &publish("t", b"again", 2, false, false, 7));
    assert_eq!(h.recv(1).len(), 1);
}

#[test]
fn inflight_window_then_queue_then_resend_with_dup() {
    let mut h = Harness::new(BrokerConfig {
        max_inflight_messages: 2,
        ..BrokerConfig::default()
    });
    h.connect(1, "sub", false);
    h.send(1, &subscribe(1, &[("t", 1)]));
    h.recv(1);
    h.connect(2, "pub", true);
    for i in 0..5u8 {
        h.send(2, &publish("t", &[i], 1, false, false, 100 + i as u16));
    }
    let first = h.recv(1);
    assert_eq!(first.len(), 2, "window of 2");
    let id0 = parse_publish(&first[0]).4;
    h.send(1, &ack(0x40, id0));
    let next = h.recv(1);
    assert_eq!(next.len(), 1);
    assert_eq!(parse_publish(&next[0]).5, vec![2]);
    // Drop the connection: two in flight, two queued. Reconnect: resent with DUP, in order.
    h.b.release(1, h.now);
    assert_eq!(h.connect(3, "sub", false), (0x20, vec![1, 0]));
    let again = h.recv(3);
    let payloads: Vec<(bool, Vec<u8>)> = again
        .iter()
        .map(|p| (parse_publish(p).2, parse_publish(p).5))
        .collect();
    assert_eq!(payloads, vec![(true, vec![1]), (true, vec![2])]);
    for p in &again {
        h.send(3, &ack(0x40, parse_publish(p).4));
    }
    let rest: Vec<Vec<u8>> = h.recv(3).iter().map(|p| parse_publish(p).5).collect();
    assert_eq!(rest, vec![vec![3], vec![4]]);
}

#[test]
fn retained_on_subscribe_with_retain_flag_and_deleted_by_empty_payload() {
    let mut h = Harness::new(BrokerConfig::default());
    h.connect(1, "pub", true);
    h.send(1, &publish("r/1", b"kept", 1, true, false, 1));
    h.send(1, &publish("r/2", b"gone", 0, true, false, 0));
    h.send(1, &publish("r/2", b"", 0, true, false, 0));
    assert_eq!(h.b.retained_count(), 1);
    h.connect(2, "sub", true);
    h.send(2, &subscribe(1, &[("r/+", 0)]));
    let got = h.recv(2);
    assert_eq!(got.len(), 2);
    let (qos, retain, _, topic, _, payload) = parse_publish(&got[1]);
    assert_eq!(
        (qos, retain, topic.as_str(), &payload[..]),
        (0, true, "r/1", &b"kept"[..])
    );
    // Forwarded live: RETAIN cleared (spec 3.3.1.3).
    h.send(1, &publish("r/1", b"new", 0, true, false, 0));
    assert!(!parse_publish(&h.recv(2)[0]).1);
}

#[test]
fn keep_alive_timeout_publishes_will_but_disconnect_does_not() {
    let mut h = Harness::new(BrokerConfig::default());
    h.connect(1, "watcher", true);
    h.send(1, &subscribe(1, &[("wills/#", 0)]));
    h.recv(1);
    h.open(2);
    h.send(
        2,
        &connect("quiet", true, 2, Some(("wills/quiet", b"gone", 0, false))),
    );
    h.recv(2);
    h.open(3);
    h.send(
        3,
        &connect("polite", true, 2, Some(("wills/polite", b"gone", 0, false))),
    );
    h.recv(3);
    h.send(3, &packet(0xe0, &[]));
    assert_eq!(h.closing(), vec![3]);
    // The watcher keeps pinging; "quiet" says nothing for 1.5 x 2 s.
    for _ in 0..4 {
        h.now += Duration::from_millis(900);
        h.send(1, &packet(0xc0, &[]));
        h.b.handle_timeout(h.now);
    }
    assert_eq!(h.closing(), vec![2]);
    let got: Vec<String> = h
        .recv(1)
        .iter()
        .filter(|p| p.0 >> 4 == 3)
        .map(|p| parse_publish(p).3)
        .collect();
    assert_eq!(got, vec!["wills/quiet".to_string()]);
    assert!(h.b.next_timeout(h.now).is_some());
}

#[test]
fn takeover_closes_old_connection_with_its_will() {
    let mut h = Harness::new(BrokerConfig::default());
    h.connect(1, "watcher", true);
    h.send(1, &subscribe(1, &[("w", 0)]));
    h.recv(1);
    h.open(2);
    h.send(
        2,
        &connect("dup", true, 60, Some(("w", b"old one gone", 0, false))),
    );
    h.recv(2);
    h.connect(3, "dup", true);
    assert_eq!(h.closing(), vec![2]);
    assert_eq!(parse_publish(&h.recv(1)[0]).5, b"old one gone");
}

#[test]
fn offline_queue_is_bounded_and_counts_drops() {
    let mut h = Harness::new(BrokerConfig {
        max_queued_messages: 3,
        ..BrokerConfig::default()
    });
    h.connect(1, "sub", false);
    h.send(1, &subscribe(1, &[("t", 1)]));
    h.recv(1);
    h.send(1, &packet(0xe0, &[]));
    h.closing();
    h.connect(2, "pub", true);
    for i in 0..10u16 {
        h.send(2, &publish("t", b"m", 1, false, false, i + 1));
        h.send(2, &publish("t", b"q0", 0, false, false, 0));
    }
    assert_eq!(h.b.stats().publish_dropped, 7);
    h.connect(3, "sub", false);
    assert_eq!(h.recv(3).len(), 3);
}

#[test]
fn clean_session_removes_everything() {
    let mut h = Harness::new(BrokerConfig::default());
    h.connect(1, "s", true);
    h.send(1, &subscribe(1, &[("a/b/c", 1), ("x/#", 0)]));
    assert_eq!(h.b.subscription_count(), 2);
    h.b.release(1, h.now);
    assert_eq!(h.b.subscription_count(), 0);
    assert_eq!(h.b.session_count(), 0);
    assert_eq!(h.b.stored_messages(), 0);
}

#[test]
fn protocol_errors_close_only_that_connection() {
    let mut h = Harness::new(BrokerConfig::default());
    h.connect(1, "good", true);
    h.open(2);
    h.send(2, &subscribe(1, &[("t", 0)])); // before CONNECT
    h.connect(3, "bad", true);
    h.send(3, &connect("bad", true, 60, None)); // second CONNECT
    assert_eq!(h.closing(), vec![2, 3]);
    h.send(1, &packet(0xc0, &[]));
    assert_eq!(h.recv(1), vec![(0xd0, vec![])]);
}

#[test]
fn sys_topics_are_retained_and_published_on_change() {
    let now = Instant::now();
    let mut b = Broker::new(
        BrokerConfig {
            sys_interval: 1,
            ..BrokerConfig::default()
        },
        now,
    );
    b.handle_timeout(now);
    assert!(b.retained_count() > 20);
    let before = b.retained_count();
    b.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(b.retained_count(), before);
    assert_eq!(
        b.next_timeout(now + Duration::from_secs(1)),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn full_queue_pauses_a_qos1_publisher_until_it_drains() {
    let mut h = Harness::new(BrokerConfig {
        max_inflight_messages: 1,
        max_queued_messages: 2,
        ..BrokerConfig::default()
    });
    h.connect(1, "slow", true);
    h.send(1, &subscribe(1, &[("x", 1)]));
    h.recv(1);
    h.connect(2, "pub", true);
    for i in 1..=4u16 {
        h.send(2, &publish("x", b"m", 1, false, false, i));
    }
    // One in flight, two queued, the fourth queued past the limit: the publisher is paused.
    assert!(!h.b.wants_read(2));
    assert_eq!(h.b.stats().publish_dropped, 0);
    let mut resumed = Vec::new();
    let first = h.recv(1);
    assert_eq!(first.len(), 1);
    h.send(1, &ack(0x40, parse_publish(&first[0]).4));
    let second = h.recv(1);
    h.send(1, &ack(0x40, parse_publish(&second[0]).4));
    h.b.take_resumed(&mut resumed);
    assert_eq!(resumed, vec![2]);
    assert!(h.b.wants_read(2));
    // QoS 0 to a full queue is dropped and counted, and pauses nobody.
    h.send(2, &publish("x", b"m", 1, false, false, 5));
    h.send(2, &publish("x", b"q0", 0, false, false, 0));
    assert_eq!(h.b.stats().publish_dropped, 1);
}

#[test]
fn publishers_never_pause_in_a_cycle() {
    let mut h = Harness::new(BrokerConfig {
        max_inflight_messages: 1,
        max_queued_messages: 1,
        ..BrokerConfig::default()
    });
    h.connect(1, "a", true);
    h.send(1, &subscribe(1, &[("to/a", 1)]));
    h.connect(2, "b", true);
    h.send(2, &subscribe(1, &[("to/b", 1)]));
    h.recv(1);
    h.recv(2);
    // a fills b's window and queue, then overflows it: a is paused on b.
    for i in 1..=3u16 {
        h.send(1, &publish("to/b", b"m", 1, false, false, i));
    }
    assert!(!h.b.wants_read(1));
    // b fills a's window and queue; pausing b on the paused a could never clear: drop instead.
    for i in 1..=3u16 {
        h.send(2, &publish("to/a", b"m", 1, false, false, i));
    }
    assert!(h.b.wants_read(2));
    assert_eq!(h.b.stats().publish_dropped, 1);
    // b acknowledging until its queue is below the limit ends a's pause.
    for round in 0..2 {
        assert!(!h.b.wants_read(1), "still paused before ack {round}");
        let got = h.recv(2);
        let id = got
            .iter()
            .find(|p| p.0 >> 4 == 3)
            .map(|p| parse_publish(p).4)
            .unwrap();
        h.send(2, &ack(0x40, id));
    }
    assert!(h.b.wants_read(1));
}

#[test]
fn packet_ids_skip_one_still_in_flight_after_a_full_cycle() {
    use session::{Awaiting, Inflight, Session};
    let mut s = Session::new("ids", 0);
    let entry = |packet_id, seq| Inflight {
        packet_id,
        seq,
        msg: None,
        qos: 1,
        retain: false,
        awaiting: Awaiting::PubAck,
        sub_ids: Default::default(),
    };
    // Id 1 stays unacknowledged while 65 534 others are handed out and acknowledged.
    let (first, seq) = s.next_packet_id();
    assert_eq!(first, 1);
    s.inflight.push_back(entry(first, seq));
    for expected in 2..=65535u32 {
        assert_eq!(s.next_packet_id().0 as u32, expected);
    }
    // The cycle comes round to 1, which is still in flight: skipped.
    let (id, seq) = s.next_packet_id();
    assert_eq!(id, 2);
    s.inflight.push_back(entry(id, seq));
    assert_eq!(s.next_packet_id().0, 3);
}

#[test]
fn reload_closes_who_is_no_longer_allowed_and_only_them() {
    let mut h = Harness::new(BrokerConfig::default());
    assert_eq!(h.connect(1, "anon", true).0, 0x20);
    assert_eq!(h.connect(2, "kept", true).0, 0x20);
    h.open(3); // no CONNECT yet
    h.send(2, &subscribe(1, &[("t/#", 0)]));
    h.recv(2);
    // Nothing changed: nobody goes.
    let cfg = h.b.config().clone();
    h.b.reconfigure(cfg.clone(), &[0], h.now);
    assert_eq!(h.b.recheck_access(&mut |_| CertCheck::Unchecked, h.now), 0);
    assert!(h.closing().is_empty());
    // 1's and 3's certificates fail now: they go (3.1.1: closed, nothing written), 2 stays
    // untouched and still receives.
    let mut cert = |id| match id {
        1 | 3 => CertCheck::Invalid("not signed by the cafile".into()),
        _ => CertCheck::Valid(None),
    };
    assert_eq!(h.b.recheck_access(&mut cert, h.now), 2);
    assert!(h.recv(1).is_empty() && h.recv(3).is_empty() && h.recv(2).is_empty());
    let mut closed = h.closing();
    closed.sort();
    assert_eq!(closed, [1, 3]);
    h.connect(4, "pub", true);
    h.send(4, &publish("t/x", b"1", 0, false, false, 0));
    assert_eq!(h.recv(2).len(), 1);
    // Anonymous clients are no longer allowed: 2 and 4 go.
    let mut strict = cfg;
    strict.listeners[0].allow_anonymous = false;
    h.b.reconfigure(strict, &[0], h.now);
    assert_eq!(h.b.recheck_access(&mut |_| CertCheck::Unchecked, h.now), 2);
    let mut closed = h.closing();
    closed.sort();
    assert_eq!(closed, [2, 4]);
    assert_eq!(h.b.stats().clients_connected, 0);
}

/// The discovery removals Home Assistant may not have seen go to the journal when made, come
/// back from it (and from the snapshot written from that) after a restart, go out again at
/// HA's birth, and are dropped once HA stayed online long enough after getting them (a
/// removal made while it listens too); HA's last will in between keeps them.
#[test]
fn discovery_removals_survive_restarts_until_home_assistant_had_them() {
    use crate::devices::{decl::Devices, removals::HEARD_AFTER, Executor, Options};
    use crate::store::record::{self, Frame, Record};
    let ex = |toml: &str| {
        let d = Devices::parse(toml, "d.toml", std::path::Path::new("/")).unwrap();
        let opts = Options {
            discovery: true,
            ..Options::default()
        };
        Executor::new(d, opts)
    };
    let removals = |records: &[u8]| {
        let mut rest = records;
        let mut v = Vec::new();
        while let Frame::Record(r, n) = record::decode(rest) {
            match r {
                Record::DiscoveryRemoval { topic, config, .. } => {
                    v.push((topic.to_string(), !config.is_empty()))
                }
                Record::DiscoveryRemovalDone { .. } => v.push(("done".into(), false)),
                _ => {}
            }
            rest = &rest[n..];
        }
        v
    };
    let restart = |records: &[u8]| {
        let mut h = Harness::new(BrokerConfig::default());
        h.b.enable_device_journal("devices", Some("homeassistant"));
        h.b.restore(records, h.now);
        h
    };
    let lamp = "[lamp]\ncommands.power = { type = \"bool\" }\n";
    let mut h = restart(&[]);
    h.b.set_devices(ex(&format!(
        "{lamp}[gone]\ncommands.power = {{ type = \"bool\" }}\n"
    )));
    // A reload while no Home Assistant listens: `gone` is removed.
    h.b.set_devices(ex(lamp));
    let mut journal = Vec::new();
    h.b.take_journal(&mut journal);
    let gone = "homeassistant/device/gone/config";
    assert_eq!(removals(&journal), [(gone.to_string(), true)]);
    // kill -9, then a restart from what the first one read (a snapshot).
    let mut snapshot = Vec::new();
    restart(&journal).b.snapshot(&mut snapshot);
    assert_eq!(removals(&snapshot), [(gone.to_string(), true)]);
    let mut h = restart(&snapshot);
    h.b.set_devices(ex(lamp));
    assert_eq!(h.b.discovery_removals().len(), 1);
    let ha = |h: &mut Harness, id: ConnId| {
        h.open(id);
        let will = Some(("homeassistant/status", &b"offline"[..], 0, false));
        // No keep-alive: its timeout would end it (with its will) while time jumps here.
        h.send(id, &connect("ha", true, 0, will));
        h.send(id, &subscribe(1, &[("homeassistant/device/#", 0)]));
        h.recv(id);
        h.send(
            id,
            &publish("homeassistant/status", b"online", 0, false, false, 0),
        );
        h.recv(id)
            .iter()
            .filter(|p| p.0 >> 4 == 3)
            .map(parse_publish)
            .map(|p| (p.3, p.5.is_empty()))
            .collect::<Vec<(String, bool)>>()
    };
    let lamp_config = "homeassistant/device/lamp/config";
    let again = [(gone, false), (lamp_config, false), (gone, true)].map(|(t, e)| (t.into(), e));
    assert_eq!(ha(&mut h, 1), again);
    // HA dies (its will) before its registry is surely written: the removal stays.
    h.now += Duration::from_secs(5);
    h.b.release(1, h.now);
    h.now += HEARD_AFTER;
    h.b.handle_timeout(h.now);
    assert_eq!(h.b.discovery_removals().len(), 1);
    // HA back, and it stays: dropped after the wait, and the store forgets it too.
    assert_eq!(ha(&mut h, 2), again);
    let due = h.b.devices().and_then(|ex| ex.next_deadline());
    assert_eq!(
        due,
        Some(h.now + HEARD_AFTER),
        "an idle broker wakes for it"
    );
    h.now += HEARD_AFTER - Duration::from_millis(1);
    h.b.handle_timeout(h.now);
    assert_eq!(h.b.discovery_removals().len(), 1);
    h.now += Duration::from_millis(1);
    h.b.handle_timeout(h.now);
    assert!(h.b.discovery_removals().is_empty());
    journal.clear();
    h.b.take_journal(&mut journal);
    assert_eq!(removals(&journal), [("done".to_string(), false)]);
    // A removal made while HA listens reaches it at once: no birth needed to drop it.
    h.b.set_devices(ex("[other]\ncommands.power = { type = \"bool\" }\n"));
    assert_eq!(h.b.discovery_removals().len(), 1);
    h.now += HEARD_AFTER;
    h.b.handle_timeout(h.now);
    assert!(h.b.discovery_removals().is_empty());
}

/// With the devices' journal only (`persistence false`), the retained messages kept are the
/// devices' own topics and the discovery configs gatemq itself announced: not another
/// integration's config under the same discovery prefix, nor any other retained message,
/// in the journal as in a snapshot. The clear of a config under the prefix is kept whoever
/// made it (a restart must not bring back gatemq's config someone cleared).
#[test]
fn the_devices_journal_keeps_our_discovery_configs_not_anyone_elses() {
    use crate::devices::{decl::Devices, Executor, Options};
    use crate::store::record::{self, Frame, Record};
    let retained = |records: &[u8]| {
        let mut rest = records;
        let mut v = Vec::new();
        while let Frame::Record(r, n) = record::decode(rest) {
            match r {
                Record::Retain(m) => v.push((m.topic.to_string(), true)),
                Record::Unretain { topic } => v.push((topic.to_string(), false)),
                _ => {}
            }
            rest = &rest[n..];
        }
        v
    };
    let mut h = Harness::new(BrokerConfig::default());
    h.b.enable_device_journal("devices", Some("homeassistant"));
    let d = Devices::parse(
        "[lamp]\ncommands.power = { type = \"bool\", initial = \"OFF\" }\n",
        "d.toml",
        std::path::Path::new("/"),
    )
    .unwrap();
    let opts = Options {
        discovery: true,
        ..Options::default()
    };
    h.b.set_devices(Executor::new(d, opts));
    h.connect(1, "z2m", true);
    let theirs = br#"{"dev":{"ids":["z2m_bulb"]},"o":{"name":"Zigbee2MQTT"},"cmps":{}}"#;
    for (topic, payload) in [
        ("homeassistant/device/bulb/config", &theirs[..]),
        ("homeassistant/light/bulb/light/config", b"{\"name\":null}"),
        ("zigbee2mqtt/bulb", b"{\"state\":\"ON\"}"),
    ] {
        h.send(1, &publish(topic, payload, 0, true, false, 0));
    }
    let mut journal = Vec::new();
    h.b.take_journal(&mut journal);
    let lamp = "homeassistant/device/lamp/config".to_string();
    let kept = retained(&journal);
    assert!(kept.contains(&(lamp.clone(), true)), "{kept:?}");
    assert!(
        kept.contains(&("devices/lamp/power".into(), true)),
        "{kept:?}"
    );
    assert!(
        kept.iter()
            .all(|(t, _)| t.starts_with("devices/lamp/") || *t == lamp),
        "{kept:?}"
    );
    let mut snapshot = Vec::new();
    h.b.snapshot(&mut snapshot);
    let mut in_snapshot = retained(&snapshot);
    in_snapshot.sort();
    in_snapshot.dedup();
    let mut in_journal = kept;
    in_journal.sort();
    in_journal.dedup();
    assert_eq!(in_snapshot, in_journal);
    h.send(1, &publish(&lamp, b"", 0, true, false, 0));
    journal.clear();
    h.b.take_journal(&mut journal);
    assert_eq!(retained(&journal), [(lamp, false)]);
}
