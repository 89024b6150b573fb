//! Malformed and invalid MQTT 3.1.1 / 3.1 input, sent as hand-built bytes. Every test checks
//! that the offending connection is closed (with the CONNACK return code where the spec asks
//! for one) and that a client connected before it still gets a publish/subscribe round trip
//! afterwards, and that a new client can still connect.

mod common;

use common::*;
use std::time::Duration;

/// A fresh broker with a witness client already subscribed.
#[track_caller]
fn setup(extra: &str) -> (Broker, Witness) {
    let b = Broker::start(extra);
    let w = Witness::new(&b);
    (b, w)
}

/// The broker survived: the witness round trip works and a new client can connect.
#[track_caller]
fn still_works(b: &mut Broker, w: &mut Witness) {
    b.assert_running();
    w.round_trip();
    let mut c = b.client("after-the-bad-one");
    c.ping();
}

/// `bytes` as the first thing on a connection: closed, nothing sent back.
#[track_caller]
fn closed_before_connect(bytes: &[u8]) {
    let (mut b, mut w) = setup("");
    let mut bad = b.raw();
    bad.send(bytes);
    bad.expect_closed();
    still_works(&mut b, &mut w);
}

/// `bytes` after a successful CONNECT: closed, nothing sent back.
#[track_caller]
fn closed_after_connect(bytes: &[u8]) {
    let (mut b, mut w) = setup("");
    let mut bad = b.client("bad");
    bad.send(bytes);
    bad.expect_closed();
    still_works(&mut b, &mut w);
}

/// `bytes` as CONNECT: CONNACK with `code` (session present 0), then closed.
#[track_caller]
fn refused(b: &mut Broker, w: &mut Witness, bytes: &[u8], code: u8) {
    let mut bad = b.raw();
    bad.send(bytes);
    let p = bad.read_packet();
    assert_eq!(
        p.bytes(),
        vec![0x20, 0x02, 0x00, code],
        "expected CONNACK return code {code}"
    );
    bad.expect_closed();
    w.round_trip();
}

/// `bytes` as CONNECT: CONNACK accepted.
#[track_caller]
fn accepted(b: &Broker, bytes: &[u8]) -> Raw {
    let mut c = b.raw();
    c.send(bytes);
    let p = c.read_packet();
    assert_eq!(
        p.bytes(),
        vec![0x20, 0x02, 0x00, 0x00],
        "expected CONNACK 0"
    );
    c.ping();
    c
}

// ----------------------------------------------------------------------------------------
// CONNECT
// ----------------------------------------------------------------------------------------

#[test]
fn wrong_protocol_level_gets_connack_1_then_close() {
    let (mut b, mut w) = setup("");
    // [MQTT-3.1.2-2]: CONNACK 0x01 and disconnect.
    for (name, level) in [
        (&b"MQTT"[..], 0u8),
        (b"MQTT", 2),
        (b"MQTT", 3),
        (b"MQTT", 6),
        (b"MQTT", 255),
        (b"MQIsdp", 4),
    ] {
        let bytes = connect_raw(name, level, 0x02, 60, &[b"lvl"]);
        refused(&mut b, &mut w, &bytes, 1);
    }
    still_works(&mut b, &mut w);
}

#[test]
fn unknown_protocol_name_closes_without_connack() {
    let (mut b, mut w) = setup("");
    for name in [&b"MQTX"[..], b"mqtt", b"", b"MQIsdpX", b"HTTP"] {
        let mut bad = b.raw();
        bad.send(&connect_raw(name, 4, 0x02, 60, &[b"name"]));
        bad.expect_closed();
    }
    still_works(&mut b, &mut w);
}

#[test]
fn connect_reserved_flag_set() {
    // [MQTT-3.1.2-3]
    closed_before_connect(&connect_raw(b"MQTT", 4, 0x03, 60, &[b"res"]));
}

#[test]
fn connect_fixed_header_flags_set() {
    // [MQTT-2.2.2-2]: CONNECT's fixed-header flags are reserved (0).
    let mut bytes = connect("fh", true, 60, None, None, None);
    bytes[0] = 0x11;
    closed_before_connect(&bytes);
}

#[test]
fn connect_will_qos_3() {
    // [MQTT-3.1.2-14]
    closed_before_connect(&connect_raw(
        b"MQTT",
        4,
        0x02 | 0x04 | 0x18,
        60,
        &[b"wq3", b"will/t", b"bye"],
    ));
}

#[test]
fn connect_will_retain_without_will_flag() {
    // [MQTT-3.1.2-15]
    closed_before_connect(&connect_raw(b"MQTT", 4, 0x22, 60, &[b"wr"]));
}

#[test]
fn connect_will_qos_without_will_flag() {
    // [MQTT-3.1.2-13]
    closed_before_connect(&connect_raw(b"MQTT", 4, 0x0a, 60, &[b"wq"]));
}

#[test]
fn connect_password_without_username() {
    // [MQTT-3.1.2-22]
    closed_before_connect(&connect_raw(b"MQTT", 4, 0x42, 60, &[b"pw", b"secret"]));
}

#[test]
fn connect_username_flag_but_no_username() {
    // The payload ends where the username should be.
    closed_before_connect(&connect_raw(b"MQTT", 4, 0x82, 60, &[b"nouser"]));
}

#[test]
fn connect_will_flag_but_no_will_fields() {
    closed_before_connect(&connect_raw(b"MQTT", 4, 0x06, 60, &[b"nowill"]));
}

#[test]
fn connect_trailing_bytes() {
    // Bytes after the last field the flags announce.
    closed_before_connect(&connect_raw(b"MQTT", 4, 0x02, 60, &[b"trail", b"junk"]));
}

#[test]
fn connect_client_id_invalid_utf8() {
    // [MQTT-1.5.3-1]
    closed_before_connect(&connect_raw(b"MQTT", 4, 0x02, 60, &[b"bad\xff\xfe"]));
}

#[test]
fn connect_will_topic_with_wildcard() {
    // The will is published like a PUBLISH: its topic must be a valid topic name.
    closed_before_connect(&connect(
        "wildwill",
        true,
        60,
        Some(Will {
            topic: "will/#",
            payload: b"bye",
            qos: 0,
            retain: false,
        }),
        None,
        None,
    ));
}

#[test]
fn second_connect_closes_connection() {
    // [MQTT-3.1.0-2]
    closed_after_connect(&connect("bad-again", true, 60, None, None, None));
}

#[test]
fn first_packet_not_connect() {
    // [MQTT-3.1.0-1]
    let (mut b, mut w) = setup("");
    for bytes in [
        pingreq(),
        // Addressed to the witness: it must not be routed (round_trip fails on a stray message).
        publish("witness/topic", b"sneaky", 0, false, false, 0),
        publish("witness/topic", b"sneaky", 1, false, false, 3),
        subscribe(1, &[("#", 0)]),
        unsubscribe(1, &["#"]),
        puback(1),
    ] {
        let mut bad = b.raw();
        bad.send(&bytes);
        bad.expect_closed();
    }
    still_works(&mut b, &mut w);
}

// ----------------------------------------------------------------------------------------
// CONNACK return codes
// ----------------------------------------------------------------------------------------

#[test]
fn empty_client_id_without_clean_session_gets_code_2() {
    // [MQTT-3.1.3-8]
    let (mut b, mut w) = setup("");
    refused(&mut b, &mut w, &connect("", false, 60, None, None, None), 2);
    // With clean session the server assigns an id [MQTT-3.1.3-6].
    let _kept = accepted(&b, &connect("", true, 60, None, None, None));
    still_works(&mut b, &mut w);
}

#[test]
fn mqtt31_empty_client_id_gets_code_2() {
    let (mut b, mut w) = setup("");
    let bytes = connect_level(b"MQIsdp", 3, "", true, 60, None, None, None);
    refused(&mut b, &mut w, &bytes, 2);
    still_works(&mut b, &mut w);
}

#[test]
fn mqtt31_client_id_longer_than_23_gets_code_2() {
    let (mut b, mut w) = setup("");
    let id24 = "a".repeat(24);
    let bytes = connect_level(b"MQIsdp", 3, &id24, true, 60, None, None, None);
    refused(&mut b, &mut w, &bytes, 2);
    // 23 characters are fine, and 3.1 clients work.
    let id23 = "b".repeat(23);
    let mut ok = accepted(
        &b,
        &connect_level(b"MQIsdp", 3, &id23, true, 60, None, None, None),
    );
    ok.subscribe(1, &[("v31/t", 1)], &[1]);
    // 3.1.1 has no such limit.
    let _kept = accepted(&b, &connect(&"c".repeat(100), true, 60, None, None, None));
    still_works(&mut b, &mut w);
}

#[test]
fn keepalive_above_max_keepalive_gets_code_2() {
    let (mut b, mut w) = setup("max_keepalive 60");
    refused(
        &mut b,
        &mut w,
        &connect("ka61", true, 61, None, None, None),
        2,
    );
    refused(
        &mut b,
        &mut w,
        &connect("ka65535", true, 65535, None, None, None),
        2,
    );
    let _kept = accepted(&b, &connect("ka60", true, 60, None, None, None));
    let _kept = accepted(&b, &connect("ka1", true, 1, None, None, None));
    still_works(&mut b, &mut w);
}

#[test]
fn keepalive_zero_is_accepted_with_max_keepalive_set() {
    // Keep-alive 0 switches keep-alive off, which MQTT allows: accepted whatever max_keepalive.
    let (mut b, mut w) = setup("max_keepalive 60");
    let _kept = accepted(&b, &connect("ka0", true, 0, None, None, None));
    still_works(&mut b, &mut w);
}

#[test]
fn allow_zero_keepalive_false_is_mosquittos_rule() {
    // Mosquitto 2.0.12+ (handle_connect.c: `max_keepalive && (keepalive > max_keepalive ||
    // keepalive == 0)`) refuses a 3.1.1 client with keep-alive 0, code 2, when max_keepalive
    // is set; `allow_zero_keepalive false` asks for that.
    let (mut b, mut w) = setup("max_keepalive 60\nallow_zero_keepalive false");
    refused(
        &mut b,
        &mut w,
        &connect("ka0", true, 0, None, None, None),
        2,
    );
    let _kept = accepted(&b, &connect("ka60", true, 60, None, None, None));
    still_works(&mut b, &mut w);
}

#[test]
fn max_keepalive_0_means_no_limit() {
    // Mosquitto's max_keepalive: "Set to 0 to allow clients to set keepalive = 0"; 0 turns
    // the check off, it does not refuse every client that has a keep-alive.
    let (mut b, mut w) = setup("max_keepalive 0");
    let _kept = accepted(&b, &connect("ka30", true, 30, None, None, None));
    let _kept = accepted(&b, &connect("ka0", true, 0, None, None, None));
    still_works(&mut b, &mut w);
}

#[test]
fn anonymous_refused_with_code_5() {
    let b = Broker::start("allow_anonymous false");
    // A client with a username gets in (no password file: any user is accepted) ...
    let mut ok = accepted(&b, &connect("named", true, 60, None, Some("user"), None));
    ok.subscribe(1, &[("anon/t", 0)], &[0]);
    // ... one without is refused [MQTT-3.2.2-5: CONNACK then close].
    let mut bad = b.raw();
    bad.send(&connect("anon", true, 60, None, None, None));
    assert_eq!(bad.read_packet().bytes(), vec![0x20, 0x02, 0x00, 0x05]);
    bad.expect_closed();
    let mut bad = b.raw();
    bad.send(&connect_level(
        b"MQIsdp", 3, "anon31", true, 60, None, None, None,
    ));
    assert_eq!(bad.read_packet().bytes(), vec![0x20, 0x02, 0x00, 0x05]);
    bad.expect_closed();
    // The named client still works.
    ok.send(&publish("anon/t", b"x", 0, false, false, 0));
    assert_eq!(ok.read_publish().payload, b"x");
    ok.ping();
}

// ----------------------------------------------------------------------------------------
// PUBLISH
// ----------------------------------------------------------------------------------------

#[test]
fn publish_qos_3() {
    // [MQTT-3.3.1-4]
    closed_after_connect(&publish("a/b", b"x", 3, false, false, 1));
}

#[test]
fn publish_dup_on_qos_0() {
    // [MQTT-3.3.1-2]
    closed_after_connect(&publish("witness/topic", b"x", 0, false, true, 0));
}

#[test]
fn publish_topic_with_wildcard() {
    // [MQTT-3.3.2-2]
    for topic in ["a/#", "a/+/b", "+", "#", "a+b"] {
        closed_after_connect(&publish(topic, b"x", 0, false, false, 0));
    }
}

#[test]
fn publish_empty_topic() {
    // [MQTT-4.7.3-1]
    closed_after_connect(&publish("", b"x", 0, false, false, 0));
    closed_after_connect(&publish("", b"x", 1, false, false, 1));
}

#[test]
fn publish_topic_invalid_utf8() {
    // [MQTT-1.5.3-1]: ill-formed UTF-8, including an encoded surrogate and an overlong NUL.
    for topic in [
        &b"a/\xff"[..],
        b"\xc3\x28",
        b"a\xed\xa0\x80",
        b"\xc0\x80",
        b"\xe2\x82",
    ] {
        closed_after_connect(&publish_raw(topic, b"x", 0, false, false, 0));
    }
}

#[test]
fn publish_topic_with_nul() {
    // [MQTT-1.5.3-2]
    closed_after_connect(&publish_raw(b"a/\0/b", b"x", 0, false, false, 0));
    closed_after_connect(&publish_raw(b"a/\0/b", b"x", 1, false, false, 1));
}

#[test]
fn publish_qos1_packet_id_0() {
    // [MQTT-2.3.1-1]
    closed_after_connect(&publish("witness/topic", b"x", 1, false, false, 0));
    closed_after_connect(&publish("witness/topic", b"x", 2, false, false, 0));
}

#[test]
fn publish_qos1_without_packet_id() {
    // Remaining length ends inside the packet identifier.
    closed_after_connect(&packet(0x32, &[0, 1, b'a', 0]));
    closed_after_connect(&packet(0x32, &[0, 1, b'a']));
}

#[test]
fn publish_topic_length_past_end() {
    closed_after_connect(&packet(0x30, &[0, 10, b'a', b'b']));
}

// ----------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE
// ----------------------------------------------------------------------------------------

#[test]
fn subscribe_packet_id_0() {
    // [MQTT-2.3.1-1]
    closed_after_connect(&subscribe(0, &[("a/b", 0)]));
}

#[test]
fn subscribe_wrong_fixed_header_flags() {
    // [MQTT-3.8.1-1]
    for first in [0x80, 0x81, 0x83, 0x8a] {
        let mut bytes = subscribe(1, &[("a/b", 0)]);
        bytes[0] = first;
        closed_after_connect(&bytes);
    }
}

#[test]
fn subscribe_without_filters() {
    // [MQTT-3.8.3-3]
    closed_after_connect(&packet(0x82, &[0, 1]));
}

#[test]
fn subscribe_requested_qos_3() {
    // [MQTT-3-8.3-4]
    closed_after_connect(&subscribe(1, &[("a/b", 3)]));
    // Also when it is not the first filter.
    closed_after_connect(&subscribe(1, &[("a/b", 1), ("c/d", 3)]));
}

#[test]
fn subscribe_reserved_option_bits() {
    // [MQTT-3-8.3-4]: the upper six bits of the QoS byte are reserved.
    for q in [0x04u8, 0x40, 0x80, 0xfc] {
        closed_after_connect(&subscribe(1, &[("a/b", q)]));
    }
}

#[test]
fn subscribe_missing_qos_byte() {
    closed_after_connect(&packet(0x82, &[0, 1, 0, 1, b'a']));
}

#[test]
fn subscribe_filter_invalid_utf8_or_nul() {
    let mut body = vec![0, 1];
    body.extend(field(b"a/\xff"));
    body.push(0);
    closed_after_connect(&packet(0x82, &body));
    let mut body = vec![0, 1];
    body.extend(field(b"a/\0"));
    body.push(0);
    closed_after_connect(&packet(0x82, &body));
}

#[test]
fn unsubscribe_without_filters() {
    // [MQTT-3.10.3-2]
    closed_after_connect(&packet(0xa2, &[0, 1]));
}

#[test]
fn unsubscribe_wrong_fixed_header_flags() {
    // [MQTT-3.10.1-1]
    let mut bytes = unsubscribe(1, &["a/b"]);
    bytes[0] = 0xa0;
    closed_after_connect(&bytes);
}

#[test]
fn unsubscribe_packet_id_0() {
    closed_after_connect(&unsubscribe(0, &["a/b"]));
}

#[test]
fn invalid_filters_get_0x80_and_connection_stays_open() {
    let (mut b, mut w) = setup("");
    let mut c = b.client("filters");
    c.subscribe(
        7,
        &[
            ("ok/+", 1),
            ("a/#/b", 0),
            ("a+", 1),
            ("x/#", 2),
            ("#/a", 0),
            ("a/b#", 2),
            ("+/c", 0),
        ],
        &[1, 0x80, 0x80, 2, 0x80, 0x80, 0],
    );
    c.ping();
    // The valid filters are in force, at their QoS.
    let mut p = b.client("pub");
    p.send(&publish("ok/1", b"one", 1, false, false, 1));
    assert_eq!(p.read_packet().bytes(), puback(1));
    let m = c.read_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos),
        ("ok/1", &b"one"[..], 1)
    );
    c.send(&puback(m.id));
    p.send(&publish("x/y/z", b"two", 0, false, false, 0));
    let m = c.read_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos),
        ("x/y/z", &b"two"[..], 0)
    );
    // Nothing for the refused ones ("a+" as a literal topic is not a valid topic name either).
    p.send(&publish("a/x/b", b"three", 0, false, false, 0));
    p.ping();
    c.expect_silence(QUIET);
    still_works(&mut b, &mut w);
}

// ----------------------------------------------------------------------------------------
// Framing
// ----------------------------------------------------------------------------------------

#[test]
fn remaining_length_of_five_bytes() {
    closed_after_connect(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    closed_after_connect(&[0xc0, 0x80, 0x80, 0x80, 0x80, 0x00]);
}

#[test]
fn remaining_length_not_minimal() {
    // [MQTT-1.5.5-1] (MQTT 5 wording; 3.1.1's table 2.4 gives one encoding per value).
    closed_after_connect(&[0xc0, 0x80, 0x00]);
    closed_after_connect(&[0xe0, 0x80, 0x80, 0x00]);
}

#[test]
fn packet_larger_than_max_packet_size_closed_before_body() {
    let (mut b, mut w) = setup("max_packet_size 1000");
    let mut bad = b.client("big");
    // Only the fixed header and a bit of the topic: the body is never sent.
    let mut head = vec![0x30];
    head.extend(varint(5000));
    head.extend(field(b"witness/topic"));
    bad.send(&head);
    bad.expect_closed();
    // Before CONNECT, too.
    let mut bad = b.raw();
    let mut head = vec![0x10];
    head.extend(varint(5000));
    bad.send(&head);
    bad.expect_closed();
    // A packet just under the limit is fine.
    let mut ok = b.client("small");
    ok.subscribe(1, &[("small/t", 0)], &[0]);
    // 1 + 2 (Remaining Length) + 2 + 7 (topic) + payload = 1000.
    let payload = vec![b'p'; 1000 - 1 - 2 - 2 - 7];
    let bytes = publish("small/t", &payload, 0, false, false, 0);
    assert_eq!(bytes.len(), 1000);
    ok.send(&bytes);
    assert_eq!(ok.read_publish().payload, payload);
    still_works(&mut b, &mut w);
}

#[test]
fn reserved_packet_types() {
    closed_after_connect(&[0x00, 0x00]);
    closed_after_connect(&[0xf0, 0x00]);
    closed_before_connect(&[0x00, 0x00]);
    closed_before_connect(&[0xf0, 0x00]);
}

#[test]
fn server_only_packets_from_client() {
    for bytes in [
        vec![0x20, 0x02, 0x00, 0x00],       // CONNACK
        vec![0x90, 0x03, 0x00, 0x01, 0x00], // SUBACK
        unsuback(1),
        vec![0xd0, 0x00], // PINGRESP
    ] {
        closed_after_connect(&bytes);
    }
}

#[test]
fn pingreq_with_body() {
    closed_after_connect(&[0xc0, 0x01, 0x00]);
}

#[test]
fn pingreq_with_flags() {
    closed_after_connect(&[0xc1, 0x00]);
}

#[test]
fn disconnect_with_body_or_flags() {
    closed_after_connect(&[0xe0, 0x01, 0x00]);
    closed_after_connect(&[0xe2, 0x00]);
}

#[test]
fn acks_with_bad_length_or_flags() {
    for bytes in [
        vec![0x40, 0x03, 0x00, 0x01, 0x00], // PUBACK too long
        vec![0x40, 0x01, 0x00],             // PUBACK too short
        vec![0x41, 0x02, 0x00, 0x01],       // PUBACK flags
        vec![0x60, 0x02, 0x00, 0x01],       // PUBREL without its 0b0010 flags
        vec![0x70, 0x00],                   // PUBCOMP without id
        vec![0x50, 0x02, 0x00, 0x00],       // PUBREC id 0
    ] {
        closed_after_connect(&bytes);
    }
}

#[test]
fn truncated_connect_then_client_closes() {
    let (mut b, mut w) = setup("");
    let full = connect("trunc", true, 60, None, None, None);
    let mut bad = b.raw();
    bad.send(&full[..full.len() - 4]);
    bad.shutdown_write();
    bad.expect_closed();
    // Truncated inside the fixed header.
    let mut bad = b.raw();
    bad.send(&[0x10, 0x80]);
    bad.shutdown_write();
    bad.expect_closed();
    still_works(&mut b, &mut w);
}

#[test]
fn truncated_packet_after_connect_then_client_closes() {
    let (mut b, mut w) = setup("");
    let mut bad = b.client("trunc2");
    let full = publish("witness/topic", b"half a message", 1, false, false, 9);
    bad.send(&full[..full.len() - 3]);
    bad.shutdown_write();
    bad.expect_closed();
    // The half message was not routed to the witness.
    still_works(&mut b, &mut w);
}

#[test]
fn garbage_bytes() {
    // 'G' reads as PUBACK with flags 7 and 'E' as a Remaining Length of 69: send more than
    // that so the broker has the whole "packet" to reject.
    closed_before_connect(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    );
    closed_before_connect(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"); // TLS hello
    closed_after_connect(b"\xff\xff\xff\xff\xff\xff\xff\xff");
    // 'h' is PUBREL with flags 8 and 'e' a Remaining Length of 101.
    closed_after_connect("hello world\n".repeat(20).as_bytes());
}

// ----------------------------------------------------------------------------------------
// A protocol error is an unclean disconnect: the will goes out.
// ----------------------------------------------------------------------------------------

#[test]
fn protocol_error_publishes_the_will() {
    let (mut b, mut w) = setup("");
    let mut sub = b.client("will-watcher");
    sub.subscribe(1, &[("will/bad", 1)], &[1]);
    let mut bad = b.raw();
    bad.send(&connect(
        "bad-with-will",
        true,
        60,
        Some(Will {
            topic: "will/bad",
            payload: b"it broke",
            qos: 1,
            retain: false,
        }),
        None,
        None,
    ));
    assert_eq!(bad.read_packet().bytes(), vec![0x20, 2, 0, 0]);
    bad.send(&[0xc0, 0x01, 0x00]);
    bad.expect_closed();
    let m = sub.read_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos, m.retain),
        ("will/bad", &b"it broke"[..], 1, false)
    );
    sub.send(&puback(m.id));
    still_works(&mut b, &mut w);
}

#[test]
fn refused_connect_publishes_no_will() {
    let (mut b, mut w) = setup("max_keepalive 60");
    let mut sub = b.client("will-watcher");
    sub.subscribe(1, &[("will/refused", 0)], &[0]);
    refused(
        &mut b,
        &mut w,
        &connect(
            "refused-with-will",
            true,
            600,
            Some(Will {
                topic: "will/refused",
                payload: b"never",
                qos: 0,
                retain: false,
            }),
            None,
            None,
        ),
        2,
    );
    sub.expect_silence(Duration::from_millis(300));
    still_works(&mut b, &mut w);
}

#[test]
fn peer_close_does_not_close_the_next_connection() {
    // A client that drops its socket, and a new client connecting right after: the new one
    // must get its CONNACK (the first may be released in the same event-loop turn as the
    // second is accepted, possibly into the same connection slot).
    let (mut b, mut w) = setup("");
    for i in 0..50 {
        let mut first = b.client(&format!("first-{i}"));
        first.ping();
        drop(first);
        let mut second = b.raw();
        second.send(&connect(&format!("second-{i}"), true, 60, None, None, None));
        let p = second.try_read_packet(READ_TIMEOUT);
        assert_eq!(
            p.map(|p| p.bytes()),
            Some(vec![0x20, 0x02, 0x00, 0x00]),
            "round {i}: the new connection did not get its CONNACK"
        );
    }
    still_works(&mut b, &mut w);
}
