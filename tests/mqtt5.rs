//! MQTT 5.0 black-box tests: rumqttc's v5 client for the ordinary flows, and hand-built
//! packets for property validation, Topic Aliases the broker sends, flow control (Receive
//! Maximum both ways) and Maximum Packet Size.
//!
//! Spec references are to MQTT Version 5.0, OASIS Standard, 7 March 2019.

mod common;
mod common_v5;

use common::{puback, pubrel, Raw, QUIET};
use common_v5::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Packet, PubAckReason, Publish, PublishProperties,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions, RecvTimeoutError};
use rumqttc::Outgoing;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// rumqttc v5
// ---------------------------------------------------------------------------------------

/// A rumqttc v5 client whose connection is driven by a thread forwarding every event.
struct Mq {
    client: Client,
    events: Receiver<Result<Event, String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn mq(b: &Broker5, id: &str, configure: impl FnOnce(&mut MqttOptions)) -> Mq {
    let mut opts = MqttOptions::new(id, "127.0.0.1", b.port);
    opts.set_keep_alive(Duration::from_secs(30));
    configure(&mut opts);
    let (client, mut connection) = Client::new(opts, 16);
    let (tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            match connection.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(ev)) => {
                    if tx.send(Ok(ev)).is_err() {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    // No reconnecting behind the test's back.
                    let _ = tx.send(Err(e.to_string()));
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    Mq {
        client,
        events,
        stop,
        thread: Some(thread),
    }
}

impl Mq {
    #[track_caller]
    fn wait<T>(&self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(ev)) => {
                    if let Some(t) = pick(&ev) {
                        return t;
                    }
                }
                Ok(Err(e)) => panic!("connection failed while waiting for {what}: {e}"),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("no {what} within {WAIT:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("event thread ended before {what}")
                }
            }
        }
    }

    #[track_caller]
    fn connack(&self) -> ConnAck {
        self.wait("CONNACK", |e| match e {
            Event::Incoming(Packet::ConnAck(a)) => Some(a.clone()),
            _ => None,
        })
    }

    #[track_caller]
    fn subscribe(&self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).unwrap();
        let codes = self.wait("SUBACK", |e| match e {
            Event::Incoming(Packet::SubAck(s)) => Some(s.return_codes.clone()),
            _ => None,
        });
        assert_eq!(codes, vec![SubscribeReasonCode::Success(qos)], "{filter}");
    }

    /// Publish and wait for the end of the flow; returns the PUBACK reason for QoS 1.
    #[track_caller]
    fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
        props: Option<PublishProperties>,
    ) -> Option<PubAckReason> {
        match props {
            Some(p) => self
                .client
                .publish_with_properties(topic, qos, retain, payload.to_vec(), p),
            None => self.client.publish(topic, qos, retain, payload.to_vec()),
        }
        .unwrap();
        match qos {
            QoS::AtMostOnce => {
                self.wait("outgoing PUBLISH", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Publish(_))).then_some(())
                });
                None
            }
            QoS::AtLeastOnce => Some(self.wait("PUBACK", |e| match e {
                Event::Incoming(Packet::PubAck(a)) => Some(a.reason),
                _ => None,
            })),
            QoS::ExactlyOnce => {
                self.wait("PUBCOMP", |e| {
                    matches!(e, Event::Incoming(Packet::PubComp(_))).then_some(())
                });
                None
            }
        }
    }

    #[track_caller]
    fn next_publish(&self) -> Publish {
        self.wait("PUBLISH", |e| match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
    }

    /// A clean DISCONNECT; returns once the broker closed the connection.
    fn disconnect(mut self) {
        self.client.disconnect().unwrap();
        self.wait("outgoing DISCONNECT", |e| {
            matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
        });
        let deadline = Instant::now() + WAIT;
        while !self.thread.as_ref().unwrap().is_finished() {
            assert!(
                Instant::now() < deadline,
                "connection still open after DISCONNECT"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Mq {
    fn drop(&mut self) {
        self.stop();
    }
}

#[track_caller]
fn connected(b: &Broker5, id: &str, configure: impl FnOnce(&mut MqttOptions)) -> (Mq, ConnAck) {
    let m = mq(b, id, configure);
    let ack = m.connack();
    assert_eq!(ack.code, ConnectReturnCode::Success, "CONNACK for {id}");
    (m, ack)
}

#[track_caller]
fn check(p: &Publish, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
    assert_eq!(&p.topic[..], topic.as_bytes());
    assert_eq!(&p.payload[..], payload, "payload on {topic}");
    assert_eq!(p.qos, qos, "QoS on {topic}");
    assert_eq!(p.retain, retain, "RETAIN on {topic}");
}

#[test]
fn rumqttc_v5_connack_and_qos_round_trips() {
    let b = Broker5::start(&[]);
    let (sub, ack) = connected(&b, "rq-sub", |_| {});
    let p = ack.properties.expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(20));
    assert_eq!(p.max_packet_size, Some(1_048_576));
    assert_eq!(p.topic_alias_max, Some(10));
    assert_eq!(p.max_qos, None);
    sub.subscribe("rq/#", QoS::ExactlyOnce);
    let (publ, _) = connected(&b, "rq-pub", |_| {});
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let topic = format!("rq/{i}");
        let reason = publ.publish(&topic, qos, false, format!("m{i}").as_bytes(), None);
        if qos == QoS::AtLeastOnce {
            assert_eq!(reason, Some(PubAckReason::Success));
        }
        check(
            &sub.next_publish(),
            &topic,
            format!("m{i}").as_bytes(),
            qos,
            false,
        );
    }
    // Nobody on this topic: PUBACK 0x10.
    assert_eq!(
        publ.publish("nobody/here", QoS::AtLeastOnce, false, b"x", None),
        Some(PubAckReason::NoMatchingSubscribers)
    );
}

#[test]
fn rumqttc_v5_retained_message() {
    let b = Broker5::start(&[]);
    let (publ, _) = connected(&b, "rr-pub", |_| {});
    publ.publish("rr/state", QoS::AtLeastOnce, true, b"on", None);
    let (sub, _) = connected(&b, "rr-sub", |_| {});
    sub.subscribe("rr/#", QoS::AtLeastOnce);
    check(
        &sub.next_publish(),
        "rr/state",
        b"on",
        QoS::AtLeastOnce,
        true,
    );
    // A live message on the same topic is forwarded with RETAIN 0 (Retain As Published 0).
    publ.publish("rr/state", QoS::AtLeastOnce, true, b"off", None);
    check(
        &sub.next_publish(),
        "rr/state",
        b"off",
        QoS::AtLeastOnce,
        false,
    );
}

#[test]
fn rumqttc_v5_persistent_session_with_session_expiry() {
    let b = Broker5::start(&[]);
    let persistent = |o: &mut MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let (first, ack) = connected(&b, "rp-sub", persistent);
    assert!(!ack.session_present);
    first.subscribe("rp/#", QoS::AtLeastOnce);
    first.disconnect();
    let (publ, _) = connected(&b, "rp-pub", |_| {});
    publ.publish("rp/a", QoS::AtLeastOnce, false, b"while away 1", None);
    publ.publish("rp/b", QoS::ExactlyOnce, false, b"while away 2", None);
    let (again, ack) = connected(&b, "rp-sub", persistent);
    assert!(ack.session_present, "[MQTT-3.2.2-2]: the session was kept");
    check(
        &again.next_publish(),
        "rp/a",
        b"while away 1",
        QoS::AtLeastOnce,
        false,
    );
    check(
        &again.next_publish(),
        "rp/b",
        b"while away 2",
        QoS::AtLeastOnce,
        false,
    );
}

#[test]
fn rumqttc_v5_publish_properties_pass_through() {
    let b = Broker5::start(&[]);
    let (sub, _) = connected(&b, "rpp-sub", |_| {});
    sub.subscribe("rpp/#", QoS::AtLeastOnce);
    let (publ, _) = connected(&b, "rpp-pub", |_| {});
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(100),
        response_topic: Some("rpp/reply".into()),
        correlation_data: Some(vec![0u8, 1, 2, 255].into()),
        user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publ.publish("rpp/x", QoS::AtLeastOnce, false, b"hi", Some(props));
    let got = sub.next_publish();
    check(&got, "rpp/x", b"hi", QoS::AtLeastOnce, false);
    let p = got.properties.expect("properties");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert!(matches!(p.message_expiry_interval, Some(99..=100)));
    assert_eq!(p.response_topic.as_deref(), Some("rpp/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert_eq!(
        p.user_properties,
        vec![("k".to_string(), "1".to_string()), ("k".into(), "2".into())]
    );
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.topic_alias, None);
    assert!(p.subscription_identifiers.is_empty());
}

// ---------------------------------------------------------------------------------------
// Property validation with raw packets (section 2.2.2, 4.13)
// ---------------------------------------------------------------------------------------

/// A v5 client connected before the misbehaving one, to prove the broker still serves.
struct Witness5 {
    c: Raw,
    n: u16,
}

impl Witness5 {
    fn new(b: &Broker5) -> Witness5 {
        let mut c = b.client("witness5", &Props::new());
        assert_eq!(
            subscribe_v5(&mut c, 1, &Props::new(), &[("witness/t", 1)]),
            vec![1]
        );
        Witness5 { c, n: 1 }
    }

    #[track_caller]
    fn round_trip(&mut self) {
        self.n += 1;
        let payload = format!("alive {}", self.n);
        self.c.send(&publish5(
            "witness/t",
            payload.as_bytes(),
            1,
            false,
            self.n,
            &Props::new(),
        ));
        let (mut acked, mut got) = (false, false);
        for _ in 0..2 {
            let p = self.c.read_packet();
            match p.kind() {
                4 => {
                    assert_eq!(parse_ack(&p).id, self.n);
                    acked = true;
                }
                3 => {
                    let m = parse_publish(&p);
                    assert_eq!(m.payload, payload.as_bytes());
                    self.c.send(&puback(m.id));
                    got = true;
                }
                _ => panic!("witness got {:02x?}", p.bytes()),
            }
        }
        assert!(acked && got);
    }
}

const MALFORMED_OR_PROTOCOL: &[u8] = &[0x81, 0x82];

/// After CONNECT, each packet must get DISCONNECT with one of the codes, then close.
fn bad_after_connect(cases: &[(&str, Vec<u8>, &[u8])]) {
    let mut b = Broker5::start(&[]);
    let mut w = Witness5::new(&b);
    for (name, bytes, codes) in cases {
        let mut c = b.client(&format!("bad-{}", name.replace(' ', "-")), &Props::new());
        c.send(bytes);
        eprintln!("case: {name}");
        expect_disconnect(&mut c, codes);
        b.assert_running();
        w.round_trip();
    }
}

/// PUBLISH with a hand-made property section (`props` is Property Length + properties).
fn publish_with_raw_props(props: &[u8], trailing: &[u8]) -> Vec<u8> {
    let mut body = common::field(b"v/t");
    body.extend(1u16.to_be_bytes());
    body.extend_from_slice(props);
    body.extend_from_slice(trailing);
    common::packet(0x32, &body)
}

#[test]
fn publish_property_errors_get_disconnect() {
    let p = |props: Props| publish5("v/t", b"x", 1, false, 1, &props);
    bad_after_connect(&[
        (
            "duplicate message expiry",
            p(Props::new().u32(MESSAGE_EXPIRY, 10).u32(MESSAGE_EXPIRY, 20)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "duplicate content type",
            p(Props::new().str(CONTENT_TYPE, "a").str(CONTENT_TYPE, "b")),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "session expiry in publish",
            p(Props::new().u32(SESSION_EXPIRY, 10)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            // [MQTT-3.3.4-6]
            "subscription identifier from client",
            p(Props::new().var(SUBSCRIPTION_ID, 1)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "payload format indicator 2",
            p(Props::new().byte(PAYLOAD_FORMAT, 2)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            // [MQTT-3.3.2-8]; section 3.3.4 names 0x94 for alias 0.
            "topic alias 0",
            p(Props::new().u16(TOPIC_ALIAS, 0)),
            &[0x94],
        ),
        (
            // Section 2.2.2.2: an identifier not valid for the packet: Malformed Packet.
            "unknown property id",
            p(Props::new().raw(&[0x7f, 0x00])),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            // Property Length 40, but only 5 bytes follow.
            "property length beyond the packet",
            publish_with_raw_props(&[40, MESSAGE_EXPIRY, 0, 0, 0, 5], b""),
            &[0x81],
        ),
        (
            // A string property whose length runs past the Property Length.
            "property overruns property length",
            publish_with_raw_props(&[3, CONTENT_TYPE, 0, 9, b'a'], b"payload..."),
            &[0x81],
        ),
    ]);
}

#[test]
fn subscribe_property_errors_get_disconnect() {
    bad_after_connect(&[
        (
            // Section 3.8.2.1.2: "It is a Protocol Error if the Subscription Identifier has a
            // value of 0."
            "subscription identifier 0",
            subscribe5(1, &Props::new().var(SUBSCRIPTION_ID, 0), &[("s/t", 0)]),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "duplicate subscription identifier",
            subscribe5(
                1,
                &Props::new().var(SUBSCRIPTION_ID, 1).var(SUBSCRIPTION_ID, 2),
                &[("s/t", 0)],
            ),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "message expiry in subscribe",
            subscribe5(1, &Props::new().u32(MESSAGE_EXPIRY, 1), &[("s/t", 0)]),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            // [MQTT-3.8.3-5]: reserved bits 6-7 of the subscription options.
            "reserved subscription option bits",
            subscribe5(1, &Props::new(), &[("s/t", 0xc0)]),
            &[0x81],
        ),
        (
            // Retain Handling 3 is a Protocol Error (section 3.8.3.1).
            "retain handling 3",
            subscribe5(1, &Props::new(), &[("s/t", 0x30)]),
            MALFORMED_OR_PROTOCOL,
        ),
    ]);
}

/// A bad CONNECT: the broker must not send DISCONNECT before a successful CONNACK
/// ([MQTT-3.14.0-1]); it answers CONNACK with one of `codes` (section 4.13.1) and closes.
#[track_caller]
fn bad_connect(b: &Broker5, name: &str, bytes: &[u8], codes: &[u8]) {
    let mut c = b.raw();
    c.send(bytes);
    let p = c.read_packet();
    assert_eq!(
        p.header,
        0x20,
        "{name}: expected CONNACK, got {:02x?}",
        p.bytes()
    );
    let ack = parse_connack(&p);
    assert!(
        codes.contains(&ack.reason),
        "{name}: CONNACK reason {:#04x}, expected one of {codes:02x?}",
        ack.reason
    );
    assert!(!ack.session_present, "{name}: [MQTT-3.2.2-6]");
    c.expect_closed();
}

#[test]
fn connect_property_errors_get_connack_error_and_close() {
    let mut b = Broker5::start(&[]);
    let mut w = Witness5::new(&b);
    let c = |props: Props| Connect5::new("badconn").props(props).encode();
    let cases: Vec<(&str, Vec<u8>, &[u8])> = vec![
        (
            // Section 3.1.2.11.3: "It is a Protocol Error to include the Receive Maximum value
            // more than once or for it to have the value 0."
            "receive maximum 0",
            c(Props::new().u16(RECEIVE_MAXIMUM, 0)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            // Section 3.1.2.11.4: Maximum Packet Size 0 is a Protocol Error.
            "maximum packet size 0",
            c(Props::new().u32(MAXIMUM_PACKET_SIZE, 0)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "duplicate session expiry",
            c(Props::new().u32(SESSION_EXPIRY, 1).u32(SESSION_EXPIRY, 2)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "topic alias in connect",
            c(Props::new().u16(TOPIC_ALIAS, 1)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "request problem information 2",
            c(Props::new().byte(0x17, 2)),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "unknown property id",
            c(Props::new().raw(&[0x7f, 1])),
            MALFORMED_OR_PROTOCOL,
        ),
        (
            "session expiry in will properties",
            Connect5::new("badwill")
                .will("w/t", b"x", 0, Props::new().u32(SESSION_EXPIRY, 5))
                .encode(),
            MALFORMED_OR_PROTOCOL,
        ),
    ];
    for (name, bytes, codes) in &cases {
        bad_connect(&b, name, bytes, codes);
        b.assert_running();
        w.round_trip();
    }
    // Property Length beyond the packet: CONNECT cut right after a Property Length of 20.
    let mut body = common::field(b"MQTT");
    body.extend([5, 0x02, 0, 60, 20, SESSION_EXPIRY, 0, 0]);
    bad_connect(
        &b,
        "property length beyond packet",
        &common::packet(0x10, &body),
        &[0x81],
    );
    w.round_trip();
}

#[test]
fn raw_v5_connect_with_properties_connack_format() {
    let b = Broker5::start(&[
        "max_inflight_messages 7",
        "max_packet_size 3000",
        "max_topic_alias 4",
        "max_qos 1",
        "retain_available false",
    ]);
    let mut c = b.raw();
    let ack = connect_v5(
        &mut c,
        &Connect5::new("")
            .props(
                Props::new()
                    .u32(SESSION_EXPIRY, 10)
                    .u16(RECEIVE_MAXIMUM, 5)
                    .u32(MAXIMUM_PACKET_SIZE, 1000)
                    .u16(TOPIC_ALIAS_MAXIMUM, 3)
                    .user("a", "b"),
            )
            .keep_alive(30),
    );
    assert_eq!((ack.session_present, ack.reason), (false, 0));
    assert_eq!(ack.props.num(RECEIVE_MAXIMUM), Some(7));
    assert_eq!(ack.props.num(MAXIMUM_PACKET_SIZE), Some(3000));
    assert_eq!(ack.props.num(TOPIC_ALIAS_MAXIMUM), Some(4));
    assert_eq!(ack.props.num(MAXIMUM_QOS), Some(1));
    assert_eq!(ack.props.num(RETAIN_AVAILABLE), Some(0));
    let assigned = ack.props.string(ASSIGNED_CLIENT_ID).expect("assigned id");
    assert!(!assigned.is_empty());
    // Section 3.2.2.3.2: a Session Expiry Interval in CONNACK, if any, is what the server uses.
    if let Some(se) = ack.props.num(SESSION_EXPIRY) {
        assert!(se <= 10);
    }
}

// ---------------------------------------------------------------------------------------
// Topic aliases sent by the broker (section 3.3.2.3.4)
// ---------------------------------------------------------------------------------------

fn read_publish_acked(c: &mut Raw) -> Publish5 {
    let m = parse_publish(&c.read_packet());
    if m.qos == 1 {
        c.send(&puback(m.id));
    }
    m
}

#[test]
fn outbound_topic_aliases_only_for_clients_that_accept_them() {
    let b = Broker5::start(&[]);
    let mut aliased = b.client("ta-out", &Props::new().u16(TOPIC_ALIAS_MAXIMUM, 5));
    let mut plain = b.client("ta-plain", &Props::new());
    for c in [&mut aliased, &mut plain] {
        assert_eq!(subscribe_v5(c, 1, &Props::new(), &[("t/#", 1)]), vec![1]);
    }
    let mut publ = b.client("ta-pub", &Props::new());
    let sent = [
        ("t/a", "1"),
        ("t/a", "2"),
        ("t/a", "3"),
        ("t/b", "4"),
        ("t/a", "5"),
    ];
    for (i, (t, p)) in sent.iter().enumerate() {
        publ.send(&publish5(
            t,
            p.as_bytes(),
            1,
            false,
            i as u16 + 1,
            &Props::new(),
        ));
        assert_eq!(parse_ack(&publ.read_packet()).id, i as u16 + 1);
    }
    // The subscriber that accepts 5 aliases: the first t/a carries the topic and sets an
    // alias; the next ones use the alias with an empty topic. Any alias is in 1..=5
    // ([MQTT-3.1.2-26]).
    let got: Vec<Publish5> = sent
        .iter()
        .map(|_| read_publish_acked(&mut aliased))
        .collect();
    let alias_a = got[0]
        .props
        .num(TOPIC_ALIAS)
        .expect("first t/a sets an alias");
    assert!((1..=5).contains(&alias_a), "alias {alias_a}");
    assert_eq!(got[0].topic, "t/a");
    for m in [&got[1], &got[2], &got[4]] {
        assert_eq!(m.topic, "", "a later t/a uses the alias only: {m:?}");
        assert_eq!(m.props.num(TOPIC_ALIAS), Some(alias_a));
    }
    assert_eq!(
        got[3].topic, "t/b",
        "a new topic is sent in full: {:?}",
        got[3]
    );
    if let Some(alias_b) = got[3].props.num(TOPIC_ALIAS) {
        assert!((1..=5).contains(&alias_b) && alias_b != alias_a);
    }
    let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, vec![&b"1"[..], b"2", b"3", b"4", b"5"]);
    // The subscriber without Topic Alias Maximum (0): never an alias ([MQTT-3.1.2-27]).
    for (t, p) in sent {
        let m = read_publish_acked(&mut plain);
        assert_eq!((m.topic.as_str(), &m.payload[..]), (t, p.as_bytes()));
        assert!(!m.props.has(TOPIC_ALIAS), "{m:?}");
    }
}

#[test]
fn outbound_topic_aliases_never_exceed_the_clients_maximum() {
    let b = Broker5::start(&[]);
    let mut sub = b.client("ta-max", &Props::new().u16(TOPIC_ALIAS_MAXIMUM, 2));
    subscribe_v5(&mut sub, 1, &Props::new(), &[("m/#", 0)]);
    let mut publ = b.client("ta-max-pub", &Props::new());
    let topics: Vec<String> = (0..4).map(|i| format!("m/{i}")).collect();
    let mut order = Vec::new();
    for round in 0..3 {
        for t in &topics {
            order.push(t.clone());
            publ.send(&publish5(
                t,
                format!("{round}").as_bytes(),
                0,
                false,
                0,
                &Props::new(),
            ));
        }
    }
    // Resolve aliases as a client must, and check every message lands on its topic.
    let mut map = std::collections::HashMap::new();
    for want in &order {
        let m = parse_publish(&sub.read_packet());
        let topic = match m.props.num(TOPIC_ALIAS) {
            Some(a) => {
                assert!((1..=2).contains(&a), "alias {a} above the maximum 2");
                if m.topic.is_empty() {
                    map.get(&a).cloned().expect("alias used before it was set")
                } else {
                    map.insert(a, m.topic.clone());
                    m.topic.clone()
                }
            }
            None => m.topic.clone(),
        };
        assert_eq!(&topic, want);
    }
}

// ---------------------------------------------------------------------------------------
// Flow control and Maximum Packet Size (section 4.9, 3.1.2.11.4)
// ---------------------------------------------------------------------------------------

#[test]
fn broker_respects_client_receive_maximum() {
    let b = Broker5::start(&[]);
    let mut sub = b.client("rm-sub", &Props::new().u16(RECEIVE_MAXIMUM, 2));
    subscribe_v5(&mut sub, 1, &Props::new(), &[("rm/#", 1)]);
    let mut publ = b.client("rm-pub", &Props::new());
    for i in 0..5u16 {
        publ.send(&publish5(
            "rm/t",
            &[b'0' + i as u8],
            1,
            false,
            i + 1,
            &Props::new(),
        ));
        assert_eq!(parse_ack(&publ.read_packet()).reason, 0);
    }
    // [MQTT-3.3.4-9]: no more than Receive Maximum unacknowledged QoS 1 PUBLISH packets.
    let first: Vec<Publish5> = (0..2).map(|_| parse_publish(&sub.read_packet())).collect();
    sub.expect_silence(QUIET);
    sub.send(&puback(first[0].id));
    let third = parse_publish(&sub.read_packet());
    sub.expect_silence(QUIET);
    sub.send(&puback(first[1].id));
    sub.send(&puback(third.id));
    let rest: Vec<Publish5> = (0..2).map(|_| parse_publish(&sub.read_packet())).collect();
    let all: Vec<u8> = first
        .iter()
        .chain([&third])
        .chain(rest.iter())
        .map(|m| m.payload[0])
        .collect();
    assert_eq!(all, b"01234".to_vec());
    for m in &rest {
        sub.send(&puback(m.id));
    }
    sub.expect_silence(QUIET);
}

#[test]
fn client_exceeding_broker_receive_maximum_gets_disconnect_0x93() {
    let b = Broker5::start(&["max_inflight_messages 2"]);
    let mut c = b.raw();
    let ack = connect_v5(&mut c, &Connect5::new("rm-over"));
    assert_eq!(ack.props.num(RECEIVE_MAXIMUM), Some(2));
    let qos2 = |id: u16| publish5("rmx/t", b"x", 2, false, id, &Props::new());
    c.send(&qos2(1));
    c.send(&qos2(2));
    for id in [1, 2] {
        let a = parse_ack(&c.read_packet());
        assert_eq!((a.kind, a.id), (5, id), "PUBREC");
    }
    // Completing one QoS 2 flow frees a slot.
    c.send(&pubrel(1));
    let comp = parse_ack(&c.read_packet());
    assert_eq!((comp.kind, comp.id, comp.reason), (7, 1, 0));
    c.send(&qos2(3));
    let a = parse_ack(&c.read_packet());
    assert_eq!((a.kind, a.id), (5, 3));
    // Now 2 and 3 are unfinished: a third is more than Receive Maximum (section 3.3.4).
    c.send(&qos2(4));
    expect_disconnect(&mut c, &[0x93]);
}

#[test]
fn message_over_subscribers_maximum_packet_size_is_dropped_for_it_only() {
    let b = Broker5::start(&[]);
    let mut small = b.client("mps-small", &Props::new().u32(MAXIMUM_PACKET_SIZE, 100));
    let mut big = b.client("mps-big", &Props::new());
    for c in [&mut small, &mut big] {
        subscribe_v5(c, 1, &Props::new(), &[("mps/#", 1)]);
    }
    let mut publ = b.client("mps-pub", &Props::new());
    let large = vec![b'x'; 500];
    publ.send(&publish5("mps/large", &large, 1, false, 1, &Props::new()));
    parse_ack(&publ.read_packet());
    publ.send(&publish5("mps/small", b"tiny", 1, false, 2, &Props::new()));
    parse_ack(&publ.read_packet());
    // [MQTT-3.1.2-24], [MQTT-3.1.2-25]: not sent to the client that cannot take it, which
    // goes on with the next message.
    let p = small.read_packet();
    assert!(p.bytes().len() <= 100);
    let m = parse_publish(&p);
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("mps/small", &b"tiny"[..])
    );
    small.send(&puback(m.id));
    small.expect_silence(QUIET);
    let m = read_publish_acked(&mut big);
    assert_eq!((m.topic.as_str(), m.payload.len()), ("mps/large", 500));
    let m = read_publish_acked(&mut big);
    assert_eq!(m.topic, "mps/small");
}

#[test]
fn packet_over_broker_maximum_packet_size_gets_disconnect_0x95() {
    let b = Broker5::start(&["max_packet_size 200"]);
    let mut c = b.raw();
    let ack = connect_v5(&mut c, &Connect5::new("mps-over"));
    assert_eq!(ack.props.num(MAXIMUM_PACKET_SIZE), Some(200));
    let fits = publish5("big/t", &[b'a'; 150], 1, false, 1, &Props::new());
    assert!(fits.len() <= 200);
    c.send(&fits);
    assert_eq!(parse_ack(&c.read_packet()).id, 1);
    let over = publish5("big/t", &[b'a'; 300], 1, false, 2, &Props::new());
    c.send(&over);
    let d = expect_disconnect(&mut c, &[0x95]);
    if let Some(r) = d.props.string(REASON_STRING) {
        assert!(!r.is_empty());
    }
}

#[test]
fn unacknowledged_qos1_is_resent_with_dup_on_session_resume() {
    // Section 4.4: on a resumed session the server resends unacknowledged PUBLISH packets with
    // DUP 1, and the Receive Maximum of the new connection applies.
    let b = Broker5::start(&[]);
    let persistent = Props::new().u32(SESSION_EXPIRY, 60).u16(RECEIVE_MAXIMUM, 1);
    let mut sub = b.raw();
    connect_v5(
        &mut sub,
        &Connect5::new("dup-sub")
            .clean_start(false)
            .props(persistent.clone()),
    );
    subscribe_v5(&mut sub, 1, &Props::new(), &[("dup/#", 1)]);
    let mut publ = b.client("dup-pub", &Props::new());
    for i in 1..=2u16 {
        publ.send(&publish5(
            "dup/t",
            &[b'0' + i as u8],
            1,
            false,
            i,
            &Props::new(),
        ));
        parse_ack(&publ.read_packet());
    }
    let m = parse_publish(&sub.read_packet());
    assert!(!m.dup);
    sub.expect_silence(QUIET);
    drop(sub);
    let mut again = b.raw();
    let ack = connect_v5(
        &mut again,
        &Connect5::new("dup-sub")
            .clean_start(false)
            .props(persistent),
    );
    assert!(ack.session_present);
    let r = parse_publish(&again.read_packet());
    assert_eq!((r.dup, r.id, &r.payload[..]), (true, m.id, &m.payload[..]));
    again.expect_silence(QUIET);
    again.send(&puback(r.id));
    let next = parse_publish(&again.read_packet());
    assert_eq!((next.dup, &next.payload[..]), (false, &b"2"[..]));
}
