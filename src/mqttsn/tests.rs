//! The gateway's state driven directly, without a socket: datagrams in, the broker's
//! connections flushed and closed as the event loop would, datagrams out.

use super::wire::{self, rc, topic_type, Encapsulation, Flags, Message, TopicRef};
use super::{Gateway, Host, Options};
use crate::broker::{Broker, BrokerConfig, ConnId};
use crate::wire::client::{encode_connect, encode_subscribe, ConnectOut};
use crate::wire::{self as mqtt, frame_len};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Default)]
struct TestHost {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    next: usize,
}

impl Host for TestHost {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        self.sent.push((to, datagram.to_vec()));
        true
    }
    fn open_slot(&mut self) -> Option<ConnId> {
        self.next += 1;
        Some(self.next)
    }
}

struct Rig {
    b: Broker,
    gw: Gateway,
    host: TestHost,
    now: Instant,
    work: Vec<ConnId>,
}

/// The MQTT subscriber's connection slot (gateway clients get 1, 2, ...).
const MQTT: ConnId = 0;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn opts() -> Options {
    Options {
        topics: vec![
            (1, "sensors/hall/motion".into()),
            (2, "devices/lamp/power/set".into()),
        ],
        retry_interval: Duration::from_secs(10),
        retry_count: 2,
        max_clients: 8,
        max_clients_per_source: 4,
        ..Options::default()
    }
}

impl Rig {
    fn new() -> Rig {
        Rig::with(opts(), BrokerConfig::default())
    }

    fn with(o: Options, cfg: BrokerConfig) -> Rig {
        let now = Instant::now();
        Rig {
            b: Broker::new(cfg, now),
            gw: Gateway::new(o, 0, now),
            host: TestHost {
                next: 100,
                ..Default::default()
            },
            now,
            work: Vec::new(),
        }
    }

    fn raw(&mut self, port: u16, data: &[u8]) {
        let now = self.now;
        self.gw
            .datagram(&mut self.b, &mut self.host, addr(port), data, now);
        self.turn();
    }

    fn send(&mut self, port: u16, m: Message<'_>) {
        let mut d = Vec::new();
        m.encode(&mut d);
        self.raw(port, &d);
    }

    /// The end of a loop turn: flush what has output, close what the broker ended.
    fn turn(&mut self) {
        let now = self.now;
        loop {
            self.b.take_dirty(&mut self.work);
            let dirty = self.work.clone();
            for &id in &dirty {
                if id != MQTT {
                    self.gw.flush(&mut self.b, &mut self.host, id, now);
                }
            }
            self.b.take_closing(&mut self.work);
            let closing = self.work.clone();
            for &id in &closing {
                if id == MQTT {
                    continue;
                }
                self.gw.flush(&mut self.b, &mut self.host, id, now);
                self.gw.closed(&mut self.b, &mut self.host, id);
                self.b.release(id, now);
            }
            if dirty.is_empty() && closing.is_empty() {
                break;
            }
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        let now = self.now;
        self.b.handle_timeout(now);
        self.gw.handle_timeout(&mut self.b, &mut self.host, now);
        self.turn();
    }

    /// SUBSCRIBE from the client at `port`, the topic type following `topic`.
    fn subscribe(&mut self, port: u16, qos: i8, msg_id: u16, topic: TopicRef<'_>) {
        let kind = match topic {
            TopicRef::Name(_) => topic_type::NORMAL,
            TopicRef::Predefined(_) => topic_type::PREDEFINED,
            TopicRef::Short(_) => topic_type::SHORT,
        };
        self.send(
            port,
            Message::Subscribe {
                flags: Flags::new(qos, false, false, kind),
                msg_id,
                topic,
            },
        );
    }

    /// Datagrams sent to `port` since the last call.
    fn recv(&mut self, port: u16) -> Vec<Vec<u8>> {
        let (mine, rest) = std::mem::take(&mut self.host.sent)
            .into_iter()
            .partition(|(a, _)| *a == addr(port));
        self.host.sent = rest;
        mine.into_iter().map(|(_, d)| d).collect()
    }

    fn connect(&mut self, port: u16, id: &str, clean: bool) {
        self.send(
            port,
            Message::Connect {
                flags: Flags(if clean { 0x04 } else { 0 }),
                protocol_id: wire::PROTOCOL_ID,
                duration: 60,
                client_id: id.as_bytes(),
            },
        );
        assert_eq!(
            msgs(&self.recv(port)),
            vec![Message::ConnAck { rc: rc::ACCEPTED }]
        );
    }

    /// An MQTT 3.1.1 client on the same broker, subscribed to `filter` at QoS 1.
    fn mqtt_subscriber(&mut self, filter: &str) {
        let now = self.now;
        self.b.open(MQTT, None, 0, now);
        let mut f = Vec::new();
        encode_connect(
            &mut f,
            &ConnectOut {
                level: 4,
                clean_start: true,
                keep_alive: 0,
                client_id: "mqtt-sub",
                will: None,
                username: None,
                password: None,
                session_expiry: 0,
                receive_max: u16::MAX,
                max_packet: 0,
            },
        );
        encode_subscribe(&mut f, 1, filter, 1, false);
        self.mqtt_in(&f);
        self.mqtt_out();
    }

    fn mqtt_in(&mut self, bytes: &[u8]) {
        let now = self.now;
        let mut rest = bytes;
        while let Ok(Some(fr)) = frame_len(rest, usize::MAX) {
            self.b
                .handle_packet(MQTT, &rest[..fr.total_len], fr.header_len, now);
            rest = &rest[fr.total_len..];
        }
        self.turn();
    }

    /// PUBLISHes the MQTT subscriber got: (topic, payload, qos).
    fn mqtt_out(&mut self) -> Vec<(String, Vec<u8>, u8)> {
        let out = self.b.output(MQTT).to_vec();
        self.b.consume_output(MQTT, out.len());
        let mut got = Vec::new();
        let mut rest = &out[..];
        while let Ok(Some(fr)) = frame_len(rest, usize::MAX) {
            if let Ok(mqtt::Packet::Publish(p)) =
                mqtt::Packet::decode(&rest[..fr.total_len], fr.header_len, 4)
            {
                got.push((p.topic.to_string(), p.payload.to_vec(), p.qos));
            }
            rest = &rest[fr.total_len..];
        }
        got
    }

    fn mqtt_publish(&mut self, topic: &str, payload: &[u8], qos: u8) {
        let mut f = Vec::new();
        mqtt::encode_publish_header(
            &mut f,
            topic.as_bytes(),
            qos,
            false,
            false,
            7,
            payload.len(),
        );
        f.extend_from_slice(payload);
        self.mqtt_in(&f);
    }

    fn stats(&self) -> super::Stats {
        self.b.mqttsn_stats().cloned().unwrap_or_default()
    }
}

fn msgs(d: &[Vec<u8>]) -> Vec<Message<'_>> {
    d.iter().map(|d| wire::decode(d).unwrap().message).collect()
}

fn publish<'a>(qos: i8, tt: u8, topic_id: u16, msg_id: u16, data: &'a [u8]) -> Message<'a> {
    Message::Publish {
        flags: Flags::new(qos, false, false, tt),
        topic_id,
        msg_id,
        data,
    }
}

#[test]
fn register_then_publish_qos1_reaches_mqtt_and_is_acknowledged_once() {
    let mut r = Rig::new();
    r.mqtt_subscriber("sensors/#");
    r.connect(5000, "s1", true);
    r.send(
        5000,
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic: b"sensors/kitchen/temp",
        },
    );
    let got = r.recv(5000);
    let Message::RegAck {
        topic_id,
        msg_id: 1,
        rc: rc::ACCEPTED,
    } = msgs(&got)[0]
    else {
        panic!("{:?}", msgs(&got));
    };
    r.send(5000, publish(1, topic_type::NORMAL, topic_id, 9, b"21.5"));
    assert_eq!(
        msgs(&r.recv(5000)),
        vec![Message::PubAck {
            topic_id,
            msg_id: 9,
            rc: rc::ACCEPTED
        }]
    );
    assert_eq!(
        r.mqtt_out(),
        vec![("sensors/kitchen/temp".into(), b"21.5".to_vec(), 1)]
    );
    // Our PUBACK was lost: the client sends it again with DUP. Answered, not routed again.
    let mut dup = publish(1, topic_type::NORMAL, topic_id, 9, b"21.5");
    if let Message::Publish { flags, .. } = &mut dup {
        flags.0 |= 0x80;
    }
    r.send(5000, dup);
    assert_eq!(msgs(&r.recv(5000)).len(), 1);
    assert!(r.mqtt_out().is_empty());
    assert_eq!(r.stats().duplicates, 1);
    // An unknown topic id is refused.
    r.send(5000, publish(0, topic_type::NORMAL, 77, 0, b"x"));
    assert_eq!(
        msgs(&r.recv(5000)),
        vec![Message::PubAck {
            topic_id: 77,
            msg_id: 0,
            rc: rc::INVALID_TOPIC_ID
        }]
    );
}

#[test]
fn qos_minus_one_without_connecting_on_predefined_and_short_topics() {
    let mut r = Rig::new();
    r.mqtt_subscriber("#");
    r.send(5001, publish(-1, topic_type::PREDEFINED, 1, 0, b"motion"));
    r.send(
        5001,
        publish(-1, topic_type::SHORT, u16::from_be_bytes(*b"ab"), 0, b"s"),
    );
    // A normal topic id means nothing without a connection; an unknown predefined id neither.
    r.send(5001, publish(-1, topic_type::NORMAL, 1, 0, b"no"));
    r.send(5001, publish(-1, topic_type::PREDEFINED, 9, 0, b"no"));
    assert_eq!(
        r.mqtt_out(),
        vec![
            ("sensors/hall/motion".into(), b"motion".to_vec(), 0),
            ("ab".into(), b"s".to_vec(), 0)
        ]
    );
    assert!(r.recv(5001).is_empty());
    let s = r.stats();
    assert_eq!((s.qos_minus1, s.qos_minus1_dropped), (2, 2));
}

#[test]
fn subscribe_by_name_wildcard_register_and_predefined() {
    let mut r = Rig::new();
    r.connect(5002, "sub", true);
    r.subscribe(5002, 1, 1, TopicRef::Name(b"home/temp"));
    let got = r.recv(5002);
    let Message::SubAck {
        topic_id,
        msg_id: 1,
        rc: rc::ACCEPTED,
        flags,
    } = msgs(&got)[0]
    else {
        panic!("{:?}", msgs(&got));
    };
    assert!(topic_id > 0);
    assert_eq!(flags.qos(), 1);
    r.mqtt_subscriber("unused");
    r.mqtt_publish("home/temp", b"20", 1);
    let got = r.recv(5002);
    let Message::Publish {
        flags,
        topic_id: t,
        msg_id,
        data: b"20",
    } = msgs(&got)[0]
    else {
        panic!("{:?}", msgs(&got));
    };
    assert_eq!((t, flags.qos(), flags.topic_type()), (topic_id, 1, 0));
    r.send(
        5002,
        Message::PubAck {
            topic_id: t,
            msg_id,
            rc: rc::ACCEPTED,
        },
    );
    // A wildcard: the gateway registers each new topic before its first PUBLISH.
    r.subscribe(5002, 0, 2, TopicRef::Name(b"garden/#"));
    assert!(matches!(
        msgs(&r.recv(5002))[0],
        Message::SubAck {
            topic_id: 0,
            msg_id: 2,
            rc: rc::ACCEPTED,
            ..
        }
    ));
    r.mqtt_publish("garden/soil", b"dry", 0);
    r.mqtt_publish("garden/soil", b"wet", 0);
    let got = r.recv(5002);
    let m = msgs(&got);
    let Message::Register {
        topic_id: gid,
        msg_id: reg_id,
        topic: b"garden/soil",
    } = m[0]
    else {
        panic!("{m:?}");
    };
    // Nothing more until REGACK.
    assert_eq!(m.len(), 1);
    r.send(
        5002,
        Message::RegAck {
            topic_id: gid,
            msg_id: reg_id,
            rc: rc::ACCEPTED,
        },
    );
    let got = r.recv(5002);
    assert_eq!(
        msgs(&got),
        vec![
            publish(0, topic_type::NORMAL, gid, 0, b"dry"),
            publish(0, topic_type::NORMAL, gid, 0, b"wet")
        ]
    );
    // Predefined and short topics need no registration.
    r.subscribe(5002, 0, 3, TopicRef::Predefined(2));
    r.subscribe(5002, 0, 4, TopicRef::Short(*b"xy"));
    r.recv(5002);
    r.mqtt_publish("devices/lamp/power/set", b"ON", 0);
    r.mqtt_publish("xy", b"short", 0);
    assert_eq!(
        msgs(&r.recv(5002)),
        vec![
            publish(0, topic_type::PREDEFINED, 2, 0, b"ON"),
            publish(
                0,
                topic_type::SHORT,
                u16::from_be_bytes(*b"xy"),
                0,
                b"short"
            )
        ]
    );
}

#[test]
fn sleeping_client_gets_kept_messages_on_pingreq_then_pingresp() {
    let mut r = Rig::new();
    r.connect(5003, "sleepy", true);
    r.subscribe(5003, 1, 1, TopicRef::Predefined(2));
    r.recv(5003);
    r.send(
        5003,
        Message::Disconnect {
            duration: Some(100),
        },
    );
    assert_eq!(
        msgs(&r.recv(5003)),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(r.stats().clients_asleep, 1);
    r.mqtt_subscriber("none");
    r.mqtt_publish("devices/lamp/power/set", b"ON", 0);
    r.mqtt_publish("devices/lamp/power/set", b"OFF", 1);
    assert!(r.recv(5003).is_empty(), "nothing while asleep");
    r.advance(90);
    r.send(
        5003,
        Message::PingReq {
            client_id: b"sleepy",
        },
    );
    let got = r.recv(5003);
    let m = msgs(&got);
    assert_eq!(m[0], publish(0, topic_type::PREDEFINED, 2, 0, b"ON"));
    let Message::Publish { msg_id, .. } = m[1] else {
        panic!("{m:?}")
    };
    assert_eq!(m.len(), 2, "PINGRESP waits for the acknowledgement");
    r.send(
        5003,
        Message::PubAck {
            topic_id: 2,
            msg_id,
            rc: rc::ACCEPTED,
        },
    );
    assert_eq!(msgs(&r.recv(5003)), vec![Message::PingResp]);
    assert_eq!(r.stats().clients_asleep, 1);
    // Asleep again: still kept, and lost only after 1.5 times its duration.
    r.advance(140);
    assert_eq!(r.stats().clients_connected, 1);
    r.advance(20);
    assert_eq!(r.stats().clients_connected, 0);
}

#[test]
fn will_dialogue_and_will_of_a_lost_sleeper() {
    let mut r = Rig::new();
    r.mqtt_subscriber("wills/#");
    r.send(
        5004,
        Message::Connect {
            flags: Flags(0x04 | 0x08),
            protocol_id: wire::PROTOCOL_ID,
            duration: 30,
            client_id: b"willy",
        },
    );
    assert_eq!(msgs(&r.recv(5004)), vec![Message::WillTopicReq]);
    // Lost WILLTOPICREQ: sent again after the retry interval.
    r.advance(10);
    assert_eq!(msgs(&r.recv(5004)), vec![Message::WillTopicReq]);
    r.send(
        5004,
        Message::WillTopic {
            flags: Flags::new(1, true, false, 0),
            topic: b"wills/willy",
        },
    );
    assert_eq!(msgs(&r.recv(5004)), vec![Message::WillMsgReq]);
    r.send(5004, Message::WillMsg { msg: b"gone" });
    assert_eq!(
        msgs(&r.recv(5004)),
        vec![Message::ConnAck { rc: rc::ACCEPTED }]
    );
    r.send(5004, Message::Disconnect { duration: Some(20) });
    r.recv(5004);
    r.advance(29);
    assert!(r.mqtt_out().is_empty());
    r.advance(2);
    assert_eq!(
        r.mqtt_out(),
        vec![("wills/willy".into(), b"gone".to_vec(), 1)]
    );
}

#[test]
fn unacknowledged_publish_is_sent_again_with_dup_then_the_client_is_lost() {
    let mut r = Rig::new();
    r.connect(5005, "deaf", true);
    r.subscribe(5005, 1, 1, TopicRef::Short(*b"zz"));
    r.recv(5005);
    r.mqtt_subscriber("none");
    r.mqtt_publish("zz", b"1", 1);
    let first = r.recv(5005);
    let Message::Publish { flags, msg_id, .. } = msgs(&first)[0] else {
        panic!()
    };
    assert!(!flags.dup());
    for _ in 0..2 {
        r.advance(10);
        let again = r.recv(5005);
        let Message::Publish {
            flags, msg_id: m, ..
        } = msgs(&again)[0]
        else {
            panic!("{:?}", msgs(&again))
        };
        assert!(flags.dup());
        assert_eq!(m, msg_id);
    }
    r.advance(10);
    assert_eq!(
        msgs(&r.recv(5005)),
        vec![Message::Disconnect { duration: None }]
    );
    let s = r.stats();
    assert_eq!((s.retransmissions, s.lost, s.clients_connected), (2, 1, 0));
}

#[test]
fn forwarder_encapsulation_both_ways() {
    let mut r = Rig::new();
    let node = b"\x00\x12\x4b\x00\x01";
    let wrap = |m: Message<'_>| {
        let mut d = Vec::new();
        wire::encode_encapsulation(
            &mut d,
            &Encapsulation {
                ctrl: 0,
                node_id: node,
            },
        );
        m.encode(&mut d);
        d
    };
    r.raw(
        5006,
        &wrap(Message::Connect {
            flags: Flags(0x04),
            protocol_id: 1,
            duration: 60,
            client_id: b"radio-1",
        }),
    );
    let got = r.recv(5006);
    let d = wire::decode(&got[0]).unwrap();
    assert_eq!(d.encapsulation.unwrap().node_id, node);
    assert_eq!(d.message, Message::ConnAck { rc: rc::ACCEPTED });
    // Another node behind the same forwarder is another client.
    r.mqtt_subscriber("sensors/#");
    r.raw(5006, &wrap(publish(0, topic_type::PREDEFINED, 1, 0, b"1")));
    assert_eq!(r.mqtt_out().len(), 1);
    r.send(5006, publish(0, topic_type::PREDEFINED, 1, 0, b"1"));
    assert_eq!(
        msgs(&r.recv(5006)),
        vec![Message::Disconnect { duration: None }]
    );
}

#[test]
fn malformed_and_flooding_sources_cost_bounded_state() {
    let mut r = Rig::new();
    for bad in [&b""[..], &[1], &[9, 9, 9], &[2, 0x99]] {
        r.raw(5007, bad);
    }
    assert_eq!(r.stats().malformed, 4);
    assert!(r.host.sent.is_empty());
    // One source, many ports: at most 4 clients (max_clients_per_source), then CONGESTION.
    for i in 0..6u16 {
        r.send(
            6000 + i,
            Message::Connect {
                flags: Flags(0x04),
                protocol_id: 1,
                duration: 60,
                client_id: format!("c{i}").as_bytes(),
            },
        );
        let expect = if i < 4 { rc::ACCEPTED } else { rc::CONGESTION };
        assert_eq!(
            msgs(&r.recv(6000 + i)),
            vec![Message::ConnAck { rc: expect }]
        );
    }
    assert_eq!(r.gw.client_count(), 4);
    assert_eq!(r.stats().refused_limit, 2);
    // A client sent again its CONNECT (its CONNACK was lost): still one client, no will.
    r.send(
        6000,
        Message::Connect {
            flags: Flags(0x04),
            protocol_id: 1,
            duration: 60,
            client_id: b"c0",
        },
    );
    assert_eq!(r.gw.client_count(), 4);
    assert_eq!(r.stats().clients_connected, 4);
}

#[test]
fn clean_session_0_keeps_subscriptions_and_topic_ids_across_reconnect() {
    let mut r = Rig::new();
    r.connect(5008, "keeper", false);
    r.send(
        5008,
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic: b"k/a",
        },
    );
    let got = r.recv(5008);
    let Message::RegAck { topic_id, .. } = msgs(&got)[0] else {
        panic!()
    };
    r.subscribe(5008, 1, 2, TopicRef::Name(b"k/a"));
    r.recv(5008);
    r.send(5008, Message::Disconnect { duration: None });
    r.recv(5008);
    // Offline: a QoS 1 message is kept by its session.
    r.mqtt_subscriber("none");
    r.mqtt_publish("k/a", b"while away", 1);
    // Back from another port, clean session 0: the message, under the id it registered.
    r.send(
        5009,
        Message::Connect {
            flags: Flags(0),
            protocol_id: wire::PROTOCOL_ID,
            duration: 60,
            client_id: b"keeper",
        },
    );
    let got = r.recv(5009);
    assert_eq!(msgs(&got)[0], Message::ConnAck { rc: rc::ACCEPTED });
    assert!(
        msgs(&got).contains(&Message::Publish {
            flags: Flags::new(1, false, false, topic_type::NORMAL),
            topic_id,
            msg_id: 1,
            data: b"while away"
        }),
        "{:?}",
        msgs(&got)
    );
}

#[test]
fn not_connected_sources_are_told_and_searchgw_is_answered() {
    let mut r = Rig::new();
    r.send(5010, Message::PingReq { client_id: b"" });
    assert_eq!(
        msgs(&r.recv(5010)),
        vec![Message::Disconnect { duration: None }]
    );
    r.send(5010, Message::SearchGw { radius: 0 });
    assert_eq!(
        msgs(&r.recv(5010)),
        vec![Message::GwInfo {
            gw_id: 1,
            address: b""
        }]
    );
    // Nothing answers what only a gateway sends (no ping-pong with another gateway).
    r.send(5010, Message::PingResp);
    r.send(5010, Message::Disconnect { duration: None });
    assert!(r.recv(5010).is_empty());
    assert_eq!(r.stats().not_connected, 3);
}

#[test]
fn a_paused_publisher_has_its_publishes_dropped_but_its_acknowledgements_read() {
    // The MQTT subscriber reads nothing: its output fills (128 bytes), then its queue (2).
    let cfg = BrokerConfig {
        max_queued_messages: 2,
        output_buffer_soft: 128,
        ..BrokerConfig::default()
    };
    let mut r = Rig::with(opts(), cfg);
    r.mqtt_subscriber("p/#");
    r.connect(5011, "pub", true);
    r.send(
        5011,
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic: b"p/x",
        },
    );
    let got = r.recv(5011);
    let Message::RegAck { topic_id: tid, .. } = msgs(&got)[0] else {
        panic!("{:?}", msgs(&got))
    };
    let data = [7u8; 40];
    let mut acked = 0;
    for i in 1..=10u16 {
        r.send(5011, publish(1, topic_type::NORMAL, tid, i, &data));
        acked += msgs(&r.recv(5011)).len();
    }
    // Some went through (output, then queue); the rest found the client paused: dropped,
    // unacknowledged (it sends them again), counted.
    assert!((3..10).contains(&acked), "{acked} acknowledged");
    assert_eq!(r.stats().paused as usize, 10 - acked);
    // A PINGREQ is still answered: only publishes wait.
    r.send(5011, Message::PingReq { client_id: b"" });
    assert_eq!(msgs(&r.recv(5011)), vec![Message::PingResp]);
    // The subscriber reads: the client is taken again.
    while !r.mqtt_out().is_empty() {}
    r.send(5011, publish(1, topic_type::NORMAL, tid, 11, &data));
    assert_eq!(msgs(&r.recv(5011)).len(), 1);
}

#[test]
fn a_register_unanswered_at_sleep_goes_again_at_wake() {
    let mut r = Rig::new();
    r.connect(5012, "napper", true);
    r.subscribe(5012, 0, 1, TopicRef::Name(b"n/#"));
    r.recv(5012);
    r.mqtt_subscriber("none");
    r.mqtt_publish("n/a", b"1", 0);
    let got = r.recv(5012);
    assert!(matches!(msgs(&got)[0], Message::Register { .. }));
    // Asleep before answering it: nothing is sent while asleep, retransmissions included.
    r.send(
        5012,
        Message::Disconnect {
            duration: Some(600),
        },
    );
    r.recv(5012);
    r.advance(30);
    assert!(r.recv(5012).is_empty());
    r.send(5012, Message::PingReq { client_id: b"" });
    let got = r.recv(5012);
    let Message::Register {
        topic_id, msg_id, ..
    } = msgs(&got)[0]
    else {
        panic!("{:?}", msgs(&got))
    };
    r.send(
        5012,
        Message::RegAck {
            topic_id,
            msg_id,
            rc: rc::ACCEPTED,
        },
    );
    assert_eq!(
        msgs(&r.recv(5012)),
        vec![
            publish(0, topic_type::NORMAL, topic_id, 0, b"1"),
            Message::PingResp
        ]
    );
}

#[test]
fn topic_tables_are_bounded_per_client() {
    let mut r = Rig::new();
    r.connect(5013, "hoarder", true);
    let long = "t/".to_string() + &"x".repeat(3_000);
    let mut codes = Vec::new();
    for i in 0..4u16 {
        let name = format!("{long}/{i}");
        r.send(
            5013,
            Message::Register {
                topic_id: 0,
                msg_id: i + 1,
                topic: name.as_bytes(),
            },
        );
        let got = r.recv(5013);
        let Message::RegAck { rc, .. } = msgs(&got)[0] else {
            panic!()
        };
        codes.push(rc);
    }
    // 8 KiB of names (mqttsn_max_topic_bytes' default): two of 3 000 bytes fit, the next
    // ones are refused.
    assert_eq!(
        codes,
        vec![rc::ACCEPTED, rc::ACCEPTED, rc::CONGESTION, rc::CONGESTION]
    );
    // And 1024 ids, however short the names.
    r.connect(5014, "counter", true);
    for i in 0..1025u16 {
        let name = format!("n{i}");
        r.send(
            5014,
            Message::Register {
                topic_id: 0,
                msg_id: i + 1,
                topic: name.as_bytes(),
            },
        );
        let got = r.recv(5014);
        let Message::RegAck { topic_id, rc, .. } = msgs(&got)[0] else {
            panic!()
        };
        match i {
            1024 => assert_eq!((topic_id, rc), (0, rc::CONGESTION)),
            _ => assert_eq!((topic_id, rc), (i + 1, rc::ACCEPTED)),
        }
    }
}

#[test]
fn a_sleeper_waking_from_another_address_is_identified_by_its_client_id() {
    // A sensor that powers its radio down often comes back with a new source port: its
    // PINGREQ names it (spec 6.14), and so does a CONNECT. Neither is a new client: no second
    // record, no takeover, no will.
    let mut r = Rig::new();
    r.mqtt_subscriber("wills/#");
    r.send(
        5020,
        Message::Connect {
            flags: Flags(0x08),
            protocol_id: wire::PROTOCOL_ID,
            duration: 60,
            client_id: b"sleeper",
        },
    );
    r.send(
        5020,
        Message::WillTopic {
            flags: Flags::new(1, false, false, 0),
            topic: b"wills/sleeper",
        },
    );
    r.send(5020, Message::WillMsg { msg: b"dead" });
    r.subscribe(5020, 1, 1, TopicRef::Predefined(2));
    r.send(
        5020,
        Message::Disconnect {
            duration: Some(100),
        },
    );
    assert_eq!(
        msgs(&r.recv(5020)),
        vec![
            Message::WillTopicReq,
            Message::WillMsgReq,
            Message::ConnAck { rc: rc::ACCEPTED },
            Message::SubAck {
                flags: Flags::new(1, false, false, 0),
                topic_id: 2,
                msg_id: 1,
                rc: rc::ACCEPTED
            },
            Message::Disconnect { duration: None }
        ]
    );
    r.mqtt_publish("devices/lamp/power/set", b"ON", 1);
    // It wakes at another port: what was kept goes there, then PINGRESP.
    r.send(
        5021,
        Message::PingReq {
            client_id: b"sleeper",
        },
    );
    let got = r.recv(5021);
    let Message::Publish { msg_id, data, .. } = msgs(&got)[0] else {
        panic!("{:?}", msgs(&got))
    };
    assert_eq!((data, msgs(&got).len()), (&b"ON"[..], 1));
    r.send(
        5021,
        Message::PubAck {
            topic_id: 2,
            msg_id,
            rc: rc::ACCEPTED,
        },
    );
    assert_eq!(msgs(&r.recv(5021)), vec![Message::PingResp]);
    assert!(r.recv(5020).is_empty());
    // The old address is nobody's now.
    r.send(5020, Message::PingReq { client_id: b"" });
    assert_eq!(
        msgs(&r.recv(5020)),
        vec![Message::Disconnect { duration: None }]
    );
    // Asleep again; a CONNECT from a third port makes it active, its session as it was.
    r.send(
        5022,
        Message::Connect {
            flags: Flags(0),
            protocol_id: wire::PROTOCOL_ID,
            duration: 60,
            client_id: b"sleeper",
        },
    );
    assert_eq!(
        msgs(&r.recv(5022)),
        vec![Message::ConnAck { rc: rc::ACCEPTED }]
    );
    r.mqtt_publish("devices/lamp/power/set", b"OFF", 0);
    assert_eq!(
        msgs(&r.recv(5022)),
        vec![publish(0, topic_type::PREDEFINED, 2, 0, b"OFF")]
    );
    assert!(r.mqtt_out().is_empty(), "no will: it never died");
    assert_eq!(r.gw.client_count(), 1);
    assert_eq!(r.stats().clients_connected, 1);
    // An active client's id does not wake anything from elsewhere: that source is told it is
    // not connected, and the client stays where it is.
    r.send(
        5023,
        Message::PingReq {
            client_id: b"sleeper",
        },
    );
    assert_eq!(
        msgs(&r.recv(5023)),
        vec![Message::Disconnect { duration: None }]
    );
    r.mqtt_publish("devices/lamp/power/set", b"ON", 0);
    assert_eq!(r.recv(5022).len(), 1);
}

#[test]
fn a_connect_flood_from_many_sources_stops_at_the_listener_limit() {
    // Spoofed sources get past the per-source limit (4): the listener's (8) holds, and a
    // refused CONNECT costs no record and no broker connection.
    let mut r = Rig::new();
    let mut codes = Vec::new();
    for i in 0..12u8 {
        let from = SocketAddr::from(([127, 0, 1, i], 7000));
        let mut d = Vec::new();
        Message::Connect {
            flags: Flags(0x04),
            protocol_id: wire::PROTOCOL_ID,
            duration: 60,
            client_id: format!("flood-{i}").as_bytes(),
        }
        .encode(&mut d);
        let now = r.now;
        r.gw.datagram(&mut r.b, &mut r.host, from, &d, now);
        r.turn();
        let sent = std::mem::take(&mut r.host.sent);
        assert_eq!(sent.len(), 1);
        let Message::ConnAck { rc } = wire::decode(&sent[0].1).unwrap().message else {
            panic!()
        };
        codes.push(rc);
    }
    assert_eq!(codes[..8], [rc::ACCEPTED; 8]);
    assert_eq!(codes[8..], [rc::CONGESTION; 4]);
    assert_eq!(r.gw.client_count(), 8);
    assert_eq!(r.host.next - 100, 8, "broker connections opened");
    let s = r.stats();
    assert_eq!((s.clients_connected, s.refused_limit), (8, 4));
}

#[test]
fn a_sleepers_queue_is_bounded_by_max_queued_messages() {
    let cfg = BrokerConfig {
        max_queued_messages: 3,
        ..BrokerConfig::default()
    };
    let mut r = Rig::with(opts(), cfg);
    r.connect(5030, "dozer", true);
    r.subscribe(5030, 1, 1, TopicRef::Predefined(2));
    r.send(
        5030,
        Message::Disconnect {
            duration: Some(600),
        },
    );
    r.recv(5030);
    r.mqtt_subscriber("none");
    // Ten messages while it sleeps: three are kept, the rest dropped and counted; the
    // publisher is not held up waiting for a wake-up.
    for i in 0..10u8 {
        r.mqtt_publish("devices/lamp/power/set", &[b'0' + i], 1);
    }
    assert!(r.recv(5030).is_empty());
    assert_eq!(r.b.stats().publish_dropped, 7);
    r.send(
        5030,
        Message::PingReq {
            client_id: b"dozer",
        },
    );
    let mut got = Vec::new();
    loop {
        let out = r.recv(5030);
        match msgs(&out)[..] {
            [Message::Publish { msg_id, data, .. }] => {
                got.push(data.to_vec());
                r.send(
                    5030,
                    Message::PubAck {
                        topic_id: 2,
                        msg_id,
                        rc: rc::ACCEPTED,
                    },
                );
            }
            [Message::PingResp] => break,
            ref m => panic!("{m:?}"),
        }
    }
    assert_eq!(got, [b"0", b"1", b"2"]);
}

#[test]
fn a_topic_too_long_for_a_register_datagram_is_not_sent_and_does_not_stall() {
    let mut r = Rig::new();
    r.connect(5040, "wide", true);
    r.subscribe(5040, 1, 1, TopicRef::Name(b"big/#"));
    r.recv(5040);
    r.mqtt_subscriber("none");
    // A valid MQTT topic name whose REGISTER would not fit in one UDP datagram.
    let huge = format!("big/{}", "x".repeat(65_500));
    r.mqtt_publish(&huge, b"1", 1);
    assert!(r.recv(5040).is_empty());
    assert_eq!(r.stats().dropped, 1);
    // The next message is not stuck behind it, and nothing is retransmitted.
    r.mqtt_publish("big/small", b"2", 1);
    let got = r.recv(5040);
    let Message::Register { topic, .. } = msgs(&got)[0] else {
        panic!("{:?}", msgs(&got))
    };
    assert_eq!(topic, b"big/small");
    r.advance(60);
    assert_eq!(r.stats().lost, 0);
}

fn connect_msg(id: &[u8], duration: u16) -> Message<'_> {
    Message::Connect {
        flags: Flags(0x04),
        protocol_id: wire::PROTOCOL_ID,
        duration,
        client_id: id,
    }
}

#[test]
fn keep_alive_0_clients_make_room_after_idle_evict_and_never_with_0() {
    // The default: 60 s of silence.
    assert_eq!(Options::default().idle_evict, Duration::from_secs(60));
    let o = Options {
        idle_evict: Options::default().idle_evict,
        ..opts()
    };
    let mut r = Rig::with(o, BrokerConfig::default());
    for (i, port) in (6100..6104u16).enumerate() {
        r.send(port, connect_msg(format!("k{i}").as_bytes(), 0));
        r.recv(port);
        r.advance(1);
    }
    // k0 was silent 59 s: not yet.
    r.advance(55);
    r.send(6110, connect_msg(b"n0", 0));
    assert_eq!(
        msgs(&r.recv(6110)),
        vec![Message::ConnAck { rc: rc::CONGESTION }]
    );
    // k0 reconnects from another port: it is not evicted for itself (the broker takes its
    // session over); k1, silent the longest of the others, goes.
    r.advance(3);
    r.send(6111, connect_msg(b"k0", 0));
    assert_eq!(
        msgs(&r.recv(6111)),
        vec![Message::ConnAck { rc: rc::ACCEPTED }]
    );
    assert_eq!(
        msgs(&r.recv(6101)),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(
        msgs(&r.recv(6100)),
        vec![Message::Disconnect { duration: None }]
    );
    // k0's old record went with the takeover: k0, k2, k3.
    assert_eq!(r.gw.client_count(), 3);
    let s = r.stats();
    assert_eq!((s.evicted_idle, s.clients_connected), (1, 3));
    // mqttsn_idle_evict 0: never.
    let o = Options {
        idle_evict: Duration::ZERO,
        ..opts()
    };
    let mut r = Rig::with(o, BrokerConfig::default());
    for port in 6200..6204u16 {
        r.send(port, connect_msg(format!("z{port}").as_bytes(), 0));
    }
    r.advance(3600);
    r.send(6210, connect_msg(b"late", 0));
    assert_eq!(
        msgs(&r.recv(6210)),
        vec![Message::ConnAck { rc: rc::CONGESTION }]
    );
    assert_eq!(r.stats().evicted_idle, 0);
}

#[test]
fn an_in_flight_message_given_up_stops_its_retransmission_timer() {
    // A QoS 1 PUBLISH in flight whose topic the client forgets (INVALID_TOPIC_ID for another
    // message): sent again, it needs a REGISTER, which the client answers CONGESTION until
    // the gateway gives that message up. Nothing waits any more: nothing more is sent or
    // counted as a retransmission, and the client is not lost.
    let mut r = Rig::new();
    r.connect(5050, "forgetful", true);
    r.subscribe(5050, 1, 1, TopicRef::Name(b"f/a"));
    r.recv(5050);
    r.mqtt_subscriber("none");
    r.mqtt_publish("f/a", b"1", 1);
    let got = r.recv(5050);
    let Message::Publish {
        topic_id, msg_id, ..
    } = msgs(&got)[0]
    else {
        panic!("{:?}", msgs(&got))
    };
    r.send(
        5050,
        Message::PubAck {
            topic_id,
            msg_id: msg_id.wrapping_add(100),
            rc: rc::INVALID_TOPIC_ID,
        },
    );
    for _ in 0..3 {
        r.advance(10);
        let got = r.recv(5050);
        let Message::Register {
            topic_id, msg_id, ..
        } = msgs(&got)[0]
        else {
            panic!("{:?}", msgs(&got))
        };
        r.send(
            5050,
            Message::RegAck {
                topic_id,
                msg_id,
                rc: rc::CONGESTION,
            },
        );
    }
    assert_eq!(r.stats().register_congestion, 1);
    let before = r.stats().retransmissions;
    r.advance(10);
    r.advance(10);
    assert!(r.recv(5050).is_empty());
    let s = r.stats();
    assert_eq!((s.retransmissions, s.lost), (before, 0));
}
