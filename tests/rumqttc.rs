//! Interoperability with rumqttc (MQTT 3.1.1), plus the QoS flows that need a client which
//! misbehaves on purpose (resends, missing acknowledgements), done with the raw client.

mod common;

use common::*;
use rumqttc::{
    Client, ConnAck, ConnectReturnCode, Event, Incoming, LastWill, MqttOptions, Outgoing, Publish,
    QoS, SubscribeReasonCode,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

/// A rumqttc client whose connection is driven by a thread that forwards every event.
struct Mq {
    client: Client,
    events: Receiver<Result<Event, String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn mq(b: &Broker, id: &str, configure: impl FnOnce(&mut MqttOptions)) -> Mq {
    let mut opts = MqttOptions::new(id, "127.0.0.1", b.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
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
                Err(rumqttc::RecvTimeoutError::Timeout) => {}
                Err(rumqttc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Dropping `connection` here closes the socket without DISCONNECT.
    });
    Mq {
        client,
        events,
        stop,
        thread: Some(thread),
    }
}

/// Connect and check CONNACK accepted with this session-present flag.
fn connected(b: &Broker, id: &str, clean: bool, session_present: bool) -> Mq {
    let m = mq(b, id, |o| {
        o.set_clean_session(clean);
    });
    let ack = m.connack();
    assert_eq!(
        ack,
        ConnAck {
            session_present,
            code: ConnectReturnCode::Success
        },
        "CONNACK for {id}"
    );
    m
}

impl Mq {
    /// The next event matching `pick`; other events are skipped. Panics after WAIT or if the
    /// connection fails.
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
                Err(RecvTimeoutError::Timeout) => panic!("no {what} within {WAIT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("event thread ended before {what}"),
            }
        }
    }

    fn connack(&self) -> ConnAck {
        self.wait("CONNACK", |e| match e {
            Event::Incoming(Incoming::ConnAck(a)) => Some(a.clone()),
            _ => None,
        })
    }

    fn subscribe(&self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).unwrap();
        let codes = self.wait("SUBACK", |e| match e {
            Event::Incoming(Incoming::SubAck(s)) => Some(s.return_codes.clone()),
            _ => None,
        });
        assert_eq!(codes, vec![SubscribeReasonCode::Success(qos)], "{filter}");
    }

    /// Publish and wait for the end of the QoS flow (PUBACK / PUBCOMP; QoS 0: the write).
    fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .unwrap();
        match qos {
            QoS::AtMostOnce => self.wait("outgoing PUBLISH", |e| {
                matches!(e, Event::Outgoing(Outgoing::Publish(_))).then_some(())
            }),
            QoS::AtLeastOnce => self.wait("PUBACK", |e| {
                matches!(e, Event::Incoming(Incoming::PubAck(_))).then_some(())
            }),
            QoS::ExactlyOnce => self.wait("PUBCOMP", |e| {
                matches!(e, Event::Incoming(Incoming::PubComp(_))).then_some(())
            }),
        }
    }

    fn next_publish(&self) -> Publish {
        self.wait("PUBLISH", |e| match e {
            Event::Incoming(Incoming::Publish(p)) => Some(p.clone()),
            _ => None,
        })
    }

    /// Every PUBLISH received during `d` (which must pass without a connection failure).
    fn publishes_during(&self, d: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + d;
        let mut v = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => v.push(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("connection failed: {e}"),
                Err(RecvTimeoutError::Timeout) => return v,
                Err(RecvTimeoutError::Disconnected) => panic!("event thread ended"),
            }
        }
    }

    /// A clean DISCONNECT; returns once the connection is gone.
    fn disconnect(mut self) {
        self.client.disconnect().unwrap();
        self.wait("outgoing DISCONNECT", |e| {
            matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
        });
        // The broker closes the socket after DISCONNECT: the thread sees the error and ends.
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

    /// Drop the TCP connection without DISCONNECT.
    fn kill(mut self) {
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

fn check(p: &Publish, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
    assert_eq!(p.topic, topic);
    assert_eq!(&p.payload[..], payload, "payload on {topic}");
    assert_eq!(p.qos, qos, "QoS on {topic}");
    assert_eq!(p.retain, retain, "RETAIN on {topic}");
    assert!(!p.dup, "DUP on a first delivery on {topic}");
}

fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

// ----------------------------------------------------------------------------------------
// rumqttc round trips
// ----------------------------------------------------------------------------------------

fn round_trip(qos: QoS) {
    let b = Broker::start("");
    let sub = connected(&b, "rt-sub", true, false);
    let topic = format!("rt/{}/x", qos as u8);
    sub.subscribe(&format!("rt/{}/+", qos as u8), qos);
    let publ = connected(&b, "rt-pub", true, false);
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let payloads: Vec<&[u8]> = vec![
        b"hello",
        b"",
        &all_bytes,
        &big,
        "h\u{e9}llo \u{1f600}".as_bytes(),
    ];
    for p in &payloads {
        publ.publish(&topic, qos, false, p);
    }
    for p in &payloads {
        let m = sub.next_publish();
        check(&m, &topic, p, qos, false);
    }
    assert!(sub.publishes_during(QUIET).is_empty(), "extra messages");
}

#[test]
fn qos0_round_trip() {
    round_trip(QoS::AtMostOnce);
}

#[test]
fn qos1_round_trip() {
    round_trip(QoS::AtLeastOnce);
}

#[test]
fn qos2_round_trip() {
    round_trip(QoS::ExactlyOnce);
}

#[test]
fn delivery_qos_is_the_lower_of_publish_and_subscription() {
    let b = Broker::start("");
    let publ = connected(&b, "dg-pub", true, false);
    // Kept connected to the end, so no client goes away while another connects.
    let mut subs = Vec::new();
    for (sub_q, pub_q) in [(0u8, 2u8), (1, 2), (2, 1), (0, 1), (2, 0)] {
        subs.push(connected(
            &b,
            &format!("dg-sub-{sub_q}{pub_q}"),
            true,
            false,
        ));
        let sub = subs.last().unwrap();
        let topic = format!("dg/{sub_q}/{pub_q}");
        sub.subscribe(&topic, qos_of(sub_q));
        publ.publish(&topic, qos_of(pub_q), false, b"m");
        let m = sub.next_publish();
        check(&m, &topic, b"m", qos_of(sub_q.min(pub_q)), false);
    }
}

#[test]
fn wildcards_and_unsubscribe() {
    let b = Broker::start("");
    let sub = connected(&b, "wc-sub", true, false);
    sub.subscribe("wc/+/temp", QoS::AtLeastOnce);
    let publ = connected(&b, "wc-pub", true, false);
    publ.publish("wc/kitchen/temp", QoS::AtLeastOnce, false, b"21");
    publ.publish("wc/kitchen/humidity", QoS::AtLeastOnce, false, b"40");
    publ.publish("wc/a/b/temp", QoS::AtLeastOnce, false, b"no");
    publ.publish("wc/hall/temp", QoS::AtLeastOnce, false, b"19");
    let got: Vec<(String, Vec<u8>)> = (0..2)
        .map(|_| sub.next_publish())
        .map(|p| (p.topic, p.payload.to_vec()))
        .collect();
    assert!(sub.publishes_during(QUIET).is_empty(), "extra messages");
    assert_eq!(
        got,
        vec![
            ("wc/kitchen/temp".to_string(), b"21".to_vec()),
            ("wc/hall/temp".to_string(), b"19".to_vec())
        ]
    );
    sub.client.unsubscribe("wc/+/temp").unwrap();
    sub.wait("UNSUBACK", |e| {
        matches!(e, Event::Incoming(Incoming::UnsubAck(_))).then_some(())
    });
    publ.publish("wc/kitchen/temp", QoS::AtLeastOnce, false, b"22");
    assert!(sub.publishes_during(QUIET).is_empty());
}

#[test]
fn retained_message_to_late_subscriber() {
    let b = Broker::start("");
    let publ = connected(&b, "ret-pub", true, false);
    publ.publish("ret/a", QoS::AtLeastOnce, true, b"kept");
    publ.publish("ret/b", QoS::AtMostOnce, true, b"kept too");
    publ.publish("ret/c", QoS::AtLeastOnce, false, b"not kept");

    let late = connected(&b, "ret-late", true, false);
    late.subscribe("ret/+", QoS::AtLeastOnce);
    let mut got = [late.next_publish(), late.next_publish()];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert!(late.publishes_during(QUIET).is_empty(), "extra messages");
    check(&got[0], "ret/a", b"kept", QoS::AtLeastOnce, true);
    check(&got[1], "ret/b", b"kept too", QoS::AtMostOnce, true);

    // A live message to an existing subscription has RETAIN 0 [MQTT-3.3.1-9].
    publ.publish("ret/a", QoS::AtLeastOnce, true, b"new");
    check(
        &late.next_publish(),
        "ret/a",
        b"new",
        QoS::AtLeastOnce,
        false,
    );

    // An empty retained message clears it [MQTT-3.3.1-10].
    publ.publish("ret/a", QoS::AtLeastOnce, true, b"");
    publ.publish("ret/b", QoS::AtLeastOnce, true, b"");
    let later = connected(&b, "ret-later", true, false);
    later.subscribe("ret/#", QoS::AtLeastOnce);
    assert!(later.publishes_during(QUIET).is_empty());
}

#[test]
fn persistent_session_queues_qos1_while_offline() {
    let b = Broker::start("");
    let sub = connected(&b, "persist", false, false);
    sub.subscribe("ps/t", QoS::AtLeastOnce);
    sub.disconnect();

    let publ = connected(&b, "persist-pub", true, false);
    for i in 0..3 {
        publ.publish("ps/t", QoS::AtLeastOnce, false, format!("m{i}").as_bytes());
    }
    // QoS 0 is not queued for offline clients by default (queue_qos0_messages false).
    publ.publish("ps/t", QoS::AtMostOnce, false, b"q0");
    publ.publish("ps/t", QoS::ExactlyOnce, false, b"m3");

    let sub = connected(&b, "persist", false, true);
    let got: Vec<Publish> = (0..4).map(|_| sub.next_publish()).collect();
    assert!(sub.publishes_during(QUIET).is_empty(), "extra messages");
    let payloads: Vec<Vec<u8>> = got.iter().map(|p| p.payload.to_vec()).collect();
    assert_eq!(
        payloads,
        vec![
            b"m0".to_vec(),
            b"m1".to_vec(),
            b"m2".to_vec(),
            b"m3".to_vec()
        ]
    );
    for p in &got {
        assert_eq!(p.qos, QoS::AtLeastOnce, "granted QoS 1");
    }
    // The subscription survived too.
    publ.publish("ps/t", QoS::AtLeastOnce, false, b"live");
    check(
        &sub.next_publish(),
        "ps/t",
        b"live",
        QoS::AtLeastOnce,
        false,
    );
    sub.disconnect();

    // Clean session 1 discards the session [MQTT-3.1.2-6] ...
    let clean = connected(&b, "persist", true, false);
    clean.disconnect();
    // ... and nothing is kept from it.
    let sub = connected(&b, "persist", false, false);
    publ.publish("ps/t", QoS::AtLeastOnce, false, b"nobody");
    assert!(sub.publishes_during(QUIET).is_empty());
}

#[test]
fn will_on_abrupt_disconnect() {
    let b = Broker::start("");
    let watcher = connected(&b, "will-watch", true, false);
    watcher.subscribe("will/+", QoS::AtLeastOnce);
    let dying = mq(&b, "will-dying", |o| {
        o.set_last_will(LastWill::new("will/dying", "gone", QoS::AtLeastOnce, true));
    });
    assert_eq!(dying.connack().code, ConnectReturnCode::Success);
    assert!(watcher
        .publishes_during(Duration::from_millis(200))
        .is_empty());
    dying.kill();
    check(
        &watcher.next_publish(),
        "will/dying",
        b"gone",
        QoS::AtLeastOnce,
        false,
    );
    // The will was retained.
    let late = connected(&b, "will-late", true, false);
    late.subscribe("will/#", QoS::AtLeastOnce);
    check(
        &late.next_publish(),
        "will/dying",
        b"gone",
        QoS::AtLeastOnce,
        true,
    );
}

#[test]
fn no_will_on_clean_disconnect() {
    let b = Broker::start("");
    let watcher = connected(&b, "nowill-watch", true, false);
    watcher.subscribe("nowill/#", QoS::AtLeastOnce);
    let polite = mq(&b, "nowill-polite", |o| {
        o.set_last_will(LastWill::new("nowill/x", "gone", QoS::AtLeastOnce, false));
    });
    assert_eq!(polite.connack().code, ConnectReturnCode::Success);
    polite.disconnect();
    assert!(watcher.publishes_during(QUIET).is_empty());
}

#[test]
fn will_on_keepalive_timeout() {
    // [MQTT-3.1.2-24]: no packet within 1.5 x keep-alive: the broker disconnects, with the will.
    let b = Broker::start("");
    let watcher = connected(&b, "ka-watch", true, false);
    watcher.subscribe("ka/will", QoS::AtMostOnce);
    let mut silent = b.raw();
    silent.send(&connect(
        "ka-silent",
        true,
        1,
        Some(Will {
            topic: "ka/will",
            payload: b"timed out",
            qos: 0,
            retain: false,
        }),
        None,
        None,
    ));
    assert_eq!(silent.read_packet().bytes(), vec![0x20, 2, 0, 0]);
    let start = Instant::now();
    silent.expect_closed_within(Duration::from_secs(4));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "closed too early: {waited:?}"
    );
    check(
        &watcher.next_publish(),
        "ka/will",
        b"timed out",
        QoS::AtMostOnce,
        false,
    );
}

#[test]
fn session_takeover_closes_the_old_connection() {
    // [MQTT-3.1.4-2]
    let b = Broker::start("");
    let mut old = b.client("same-id");
    let mut new = b.client("same-id");
    old.expect_closed();
    new.subscribe(1, &[("to/new", 0)], &[0]);
    new.send(&publish("to/new", b"hi", 0, false, false, 0));
    assert_eq!(new.read_publish().payload, b"hi");
}

// ----------------------------------------------------------------------------------------
// QoS flows with a raw peer
// ----------------------------------------------------------------------------------------

#[test]
fn qos2_exactly_once_with_resent_publish() {
    let b = Broker::start("");
    let sub = connected(&b, "eo-sub", true, false);
    sub.subscribe("eo/t", QoS::ExactlyOnce);

    let mut publ = b.client("eo-pub");
    publ.send(&publish("eo/t", b"once", 2, false, false, 7));
    assert_eq!(publ.read_packet().bytes(), pubrec(7));
    // The PUBREC "was lost": resend with DUP, same packet id [MQTT-4.3.3-2 method B].
    publ.send(&publish("eo/t", b"once", 2, false, true, 7));
    assert_eq!(publ.read_packet().bytes(), pubrec(7));
    publ.send(&publish("eo/t", b"once", 2, false, true, 7));
    assert_eq!(publ.read_packet().bytes(), pubrec(7));
    publ.send(&pubrel(7));
    assert_eq!(publ.read_packet().bytes(), pubcomp(7));
    // A PUBREL resent after PUBCOMP still gets PUBCOMP [MQTT-4.3.3-2].
    publ.send(&pubrel(7));
    assert_eq!(publ.read_packet().bytes(), pubcomp(7));

    check(
        &sub.next_publish(),
        "eo/t",
        b"once",
        QoS::ExactlyOnce,
        false,
    );
    let extra = sub.publishes_during(QUIET);
    assert!(extra.is_empty(), "exactly one copy; also got {extra:?}");

    // After PUBREL the packet id is free: the same id is a new message.
    publ.send(&publish("eo/t", b"again", 2, false, false, 7));
    assert_eq!(publ.read_packet().bytes(), pubrec(7));
    publ.send(&pubrel(7));
    assert_eq!(publ.read_packet().bytes(), pubcomp(7));
    check(
        &sub.next_publish(),
        "eo/t",
        b"again",
        QoS::ExactlyOnce,
        false,
    );
    assert!(sub.publishes_during(QUIET).is_empty());
}

#[test]
fn qos1_resent_with_dup_on_reconnect() {
    let b = Broker::start("");
    let mut sub = b.raw();
    assert!(!sub.connect_ok("resend-sub", false));
    sub.subscribe(1, &[("rs/t", 1)], &[1]);

    let mut publ = b.client("resend-pub");
    publ.send(&publish("rs/t", b"hello", 1, false, false, 1));
    assert_eq!(publ.read_packet().bytes(), puback(1));

    let first = sub.read_publish();
    assert_eq!(
        (
            first.topic.as_str(),
            &first.payload[..],
            first.qos,
            first.dup
        ),
        ("rs/t", &b"hello"[..], 1, false)
    );
    // No PUBACK: go away.
    sub.send(&disconnect());
    sub.expect_closed();

    let mut sub = b.raw();
    sub.send(&connect("resend-sub", false, 60, None, None, None));
    assert_eq!(
        sub.read_packet().bytes(),
        vec![0x20, 0x02, 0x01, 0x00],
        "CONNACK with session present"
    );
    let again = sub.read_publish();
    assert_eq!(
        again,
        RxPublish {
            dup: true,
            ..first.clone()
        },
        "the same message, DUP set, same packet id [MQTT-4.4.0-1]"
    );
    sub.send(&puback(again.id));
    sub.ping();
    sub.send(&disconnect());
    sub.expect_closed();

    // Acknowledged: not resent again.
    let mut sub = b.raw();
    assert!(sub.connect_ok("resend-sub", false));
    sub.expect_silence(QUIET);
}

#[test]
fn qos2_pubrel_resent_on_reconnect() {
    let b = Broker::start("");
    let mut sub = b.raw();
    assert!(!sub.connect_ok("rel-sub", false));
    sub.subscribe(1, &[("rel/t", 2)], &[2]);
    let mut publ = b.client("rel-pub");
    publ.send(&publish("rel/t", b"two", 2, false, false, 3));
    assert_eq!(publ.read_packet().bytes(), pubrec(3));
    publ.send(&pubrel(3));
    assert_eq!(publ.read_packet().bytes(), pubcomp(3));

    let m = sub.read_publish();
    assert_eq!((&m.payload[..], m.qos, m.dup), (&b"two"[..], 2, false));
    // Unanswered QoS 2 PUBLISH: resent with DUP.
    sub.send(&disconnect());
    sub.expect_closed();
    let mut sub = b.raw();
    assert!(sub.connect_ok("rel-sub", false));
    let again = sub.read_publish();
    assert_eq!(
        again,
        RxPublish {
            dup: true,
            ..m.clone()
        }
    );
    // PUBREC, then PUBREL comes; no PUBCOMP: after reconnect PUBREL again, no PUBLISH.
    sub.send(&pubrec(m.id));
    assert_eq!(sub.read_packet().bytes(), pubrel(m.id));
    sub.send(&disconnect());
    sub.expect_closed();
    let mut sub = b.raw();
    assert!(sub.connect_ok("rel-sub", false));
    assert_eq!(sub.read_packet().bytes(), pubrel(m.id));
    sub.send(&pubcomp(m.id));
    sub.expect_silence(QUIET);
}

#[test]
fn max_inflight_messages_limits_unacknowledged_qos1() {
    let b = Broker::start("max_inflight_messages 2");
    let mut sub = b.client("inflight-sub");
    sub.subscribe(1, &[("if/t", 1)], &[1]);
    let mut publ = b.client("inflight-pub");
    for i in 0..5u16 {
        publ.send(&publish(
            "if/t",
            format!("m{i}").as_bytes(),
            1,
            false,
            false,
            i + 1,
        ));
        assert_eq!(publ.read_packet().bytes(), puback(i + 1));
    }
    let m0 = sub.read_publish();
    let m1 = sub.read_publish();
    assert_eq!((&m0.payload[..], &m1.payload[..]), (&b"m0"[..], &b"m1"[..]));
    sub.expect_silence(QUIET);
    sub.send(&puback(m0.id));
    let m2 = sub.read_publish();
    assert_eq!(m2.payload, b"m2");
    sub.expect_silence(QUIET);
    sub.send(&puback(m1.id));
    sub.send(&puback(m2.id));
    let m3 = sub.read_publish();
    let m4 = sub.read_publish();
    assert_eq!((&m3.payload[..], &m4.payload[..]), (&b"m3"[..], &b"m4"[..]));
    sub.send(&puback(m3.id));
    sub.send(&puback(m4.id));
    sub.expect_silence(QUIET);
    for m in [&m0, &m1, &m2, &m3, &m4] {
        assert_eq!((m.qos, m.dup), (1, false));
    }
}
