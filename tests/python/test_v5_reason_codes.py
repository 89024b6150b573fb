"""MQTT 5.0 reason codes in acknowledgements and in the DISCONNECT the broker sends (spec
sections 2.4, 3.4-3.7, 3.9, 3.11, 3.14, 4.13)."""
import time

from test_v5_support import (PFI, PUBACK, PUBCOMP, PUBREC, PUBREL, REASON_STRING, RawV5, ack5,
                             publish5, subscribe5, uid, v5, will)


def test_puback_no_matching_subscribers_then_success(broker):
    """Section 3.4.2.1: PUBACK 0x10 (No matching subscribers) when nobody is subscribed, 0x00
    once somebody is."""
    pub = v5(broker.port)
    assert pub.publish("rc/a", b"1", qos=1) == 0x10
    sub = v5(broker.port)
    sub.subscribe("rc/#", 1)
    assert pub.publish("rc/a", b"2", qos=1) == 0x00
    assert sub.get().payload == b"2"


def test_pubrec_no_matching_subscribers_then_pubcomp(broker):
    """Section 3.5.2.1: PUBREC 0x10 for a QoS 2 message nobody subscribed to; the flow still
    completes with PUBCOMP 0x00 (0x10 is below 0x80, not an error)."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(publish5("rc/none", b"x", qos=2, mid=7))
    rec = raw.read_kind(PUBREC)
    assert (rec.mid, rec.reason) == (7, 0x10)
    raw.send(ack5(0x62, 7))
    comp = raw.read_kind(PUBCOMP)
    assert (comp.mid, comp.reason) == (7, 0x00)


def test_suback_reason_codes_per_filter(broker):
    """[MQTT-3.9.3-1]: one reason code per filter, in order: the granted QoS, or 0x8F (Topic
    Filter invalid) for filters that break the wildcard rules of section 4.7.1."""
    raw = RawV5(broker.port)
    raw.connect()
    codes = raw.subscribe(3, [("ok/#", 2), ("bad/#/x", 1), ("ok/+/y", 1), ("bad+", 0), ("ok/z", 0)])
    assert codes == [2, 0x8F, 1, 0x8F, 0]


def test_unsuback_reason_codes(broker):
    """Section 3.11.3: UNSUBACK 0x00 for a subscription that existed, 0x11 (No subscription
    existed) otherwise, one per filter in order."""
    c = v5(broker.port)
    c.subscribe("u/a", 1)
    assert c.unsubscribe(["u/a", "u/b"]) == [0x00, 0x11]
    assert c.unsubscribe("u/a") == [0x11]


def test_pubrel_for_unknown_packet_id_gets_pubcomp_0x92(broker):
    """Section 3.7.2.1: PUBCOMP 0x92 (Packet Identifier not found) for a PUBREL whose id the
    server does not know."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(ack5(0x62, 4242))
    comp = raw.read_kind(PUBCOMP)
    assert (comp.mid, comp.reason) == (4242, 0x92)


def test_pubrec_for_unknown_packet_id_gets_pubrel_0x92(broker):
    """Section 3.6.2.1: PUBREL 0x92 (Packet Identifier not found) for a PUBREC whose id the
    server never sent."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(ack5(0x50, 999))
    rel = raw.read_kind(PUBREL)
    assert (rel.mid, rel.reason, rel.flags) == (999, 0x92, 0x2)


def test_payload_format_invalid_gets_puback_0x99_and_is_not_delivered(broker):
    """[MQTT-3.3.2-4] / section 3.3.2.3.2: Payload Format Indicator 1 with a payload that is
    not UTF-8: PUBACK 0x99 (Payload format invalid), and the message is not forwarded."""
    sub = v5(broker.port)
    sub.subscribe("pf/#", 1)
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(publish5("pf/a", b"\xff\xfe bad", qos=1, mid=5, properties=[(PFI, 1)]))
    ack = raw.read_kind(PUBACK)
    assert (ack.mid, ack.reason) == (5, 0x99)
    raw.send(publish5("pf/a", "gültig".encode(), qos=1, mid=6, properties=[(PFI, 1)]))
    assert raw.read_kind(PUBACK).reason == 0
    m = sub.get()
    assert (m.payload.decode(), m.props.get("PayloadFormatIndicator")) == ("gültig", 1)
    sub.assert_no_message()


def test_keep_alive_timeout_disconnect_0x8d(broker):
    """[MQTT-3.1.2-22]: no packet within 1.5 x Keep Alive -> the server closes the connection,
    telling a v5 client DISCONNECT 0x8D (Keep Alive timeout)."""
    raw = RawV5(broker.port)
    raw.connect(keepalive=1)
    start = time.monotonic()
    d = raw.expect_disconnect(timeout=4)
    assert d.reason == 0x8D, d
    assert 1.0 <= time.monotonic() - start <= 3.0


def test_second_connect_is_protocol_error_0x82(broker):
    """[MQTT-3.1.0-2]: a second CONNECT is a Protocol Error: DISCONNECT 0x82, then close."""
    from test_v5_support import connect5
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(connect5(uid("again")))
    assert raw.expect_disconnect().reason == 0x82


def test_malformed_publish_disconnect_0x81_with_reason_string(broker):
    """[MQTT-3.3.1-4]: a PUBLISH with both QoS bits set is a Malformed Packet: DISCONNECT 0x81.
    The server may add a Reason String; if present it is a non-empty string."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(bytes([0x36]) + publish5("m/a", b"x", qos=1, mid=1)[1:])
    d = raw.expect_disconnect()
    assert d.reason == 0x81, d
    if REASON_STRING in d.props.ids():
        assert d.props.get(REASON_STRING)
    assert v5(broker.port).connack[0] == 0


def test_disconnect_with_will_message_publishes_will(broker):
    """Section 3.14.2.1: DISCONNECT 0x04 (Disconnect with Will Message): the will is sent."""
    sub = v5(broker.port)
    sub.subscribe("will/#", 1)
    c = v5(broker.port, will=will("will/t", b"asked for"))
    c.disconnect(reason=0x04)
    m = sub.get(3)
    assert (m.topic, m.payload, m.qos) == ("will/t", b"asked for", 1)


def test_normal_disconnect_discards_will(broker):
    """[MQTT-3.1.2-10]: DISCONNECT 0x00 deletes the will."""
    sub = v5(broker.port)
    sub.subscribe("will/#", 1)
    c = v5(broker.port, will=will("will/t", b"no!"))
    c.disconnect(reason=0x00)
    pub = v5(broker.port)
    time.sleep(0.2)
    pub.publish("will/marker", b"m", qos=1)
    assert [m.payload for m in sub.collect_until("will/marker")] == []


def test_subscribe_packet_reaches_server_with_raw_options(broker):
    """Subscription options byte with every option bit: QoS 1, No Local, Retain As Published,
    Retain Handling 2 is accepted and granted QoS 1 (section 3.8.3.1)."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(subscribe5(9, [("opt/t", 0x01 | 0x04 | 0x08 | 0x20)]))
    ack = raw.read()
    assert (ack.mid, ack.codes) == (9, [1])
