"""Raw-socket protocol flows: QoS 2 resends, and misbehaving clients."""
import pytest

from clients import (PINGREQ, RawClient, ack_packet, connect_packet, connected,
                     publish_packet, subscribe_packet, uid)


def test_qos2_resent_publish_is_delivered_exactly_once(broker):
    """Section 4.3.3: the receiver of a QoS 2 PUBLISH answers every copy (DUP=1 resend included)
    with PUBREC and must not deliver the message onwards more than once; PUBREL -> PUBCOMP."""
    sub = connected(broker.port)
    sub.subscribe([("once/t", 2), ("once/end", 2)])
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("qos2"))
    raw.send(publish_packet("once/t", b"exactly once", qos=2, mid=7))
    assert raw.read_packet() == b"\x50\x02\x00\x07"  # PUBREC 7
    raw.send(publish_packet("once/t", b"exactly once", qos=2, mid=7, dup=True))
    assert raw.read_packet() == b"\x50\x02\x00\x07"  # PUBREC 7 again
    raw.send(ack_packet(0x62, 7))  # PUBREL 7
    assert raw.read_packet() == b"\x70\x02\x00\x07"  # PUBCOMP 7
    # End marker, also QoS 2 (paho hands QoS 2 messages over on PUBREL, so a QoS 1 marker
    # could overtake the message).
    raw.send(publish_packet("once/end", b"", qos=2, mid=8))
    assert raw.read_packet() == b"\x50\x02\x00\x08"
    raw.send(ack_packet(0x62, 8))
    assert raw.read_packet() == b"\x70\x02\x00\x08"
    got = sub.collect_until("once/end")
    assert [(m.topic, m.payload, m.qos) for m in got] == [("once/t", b"exactly once", 2)]


def test_qos2_packet_id_reusable_after_pubcomp(broker):
    """After PUBCOMP the packet identifier is free: a new PUBLISH with id 7 is a new message."""
    sub = connected(broker.port)
    sub.subscribe("reuse/t", 2)
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("qos2"))
    for payload in (b"first", b"second"):
        raw.send(publish_packet("reuse/t", payload, qos=2, mid=7))
        assert raw.read_packet() == b"\x50\x02\x00\x07"
        raw.send(ack_packet(0x62, 7))
        assert raw.read_packet() == b"\x70\x02\x00\x07"
    assert [m.payload for m in sub.get_n(2)] == [b"first", b"second"]


def test_qos1_resent_publish_is_acknowledged_each_time(broker):
    """Section 4.3.2: each QoS 1 PUBLISH (DUP resend included) gets a PUBACK; QoS 1 is
    at-least-once, so the subscriber sees the message one or two times, never zero."""
    sub = connected(broker.port)
    sub.subscribe([("dup1/t", 1), ("dup1/end", 1)])
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("qos1"))
    raw.send(publish_packet("dup1/t", b"m", qos=1, mid=3))
    assert raw.read_packet() == b"\x40\x02\x00\x03"
    raw.send(publish_packet("dup1/t", b"m", qos=1, mid=3, dup=True))
    assert raw.read_packet() == b"\x40\x02\x00\x03"
    raw.send(publish_packet("dup1/end", qos=1, mid=4))
    assert raw.read_packet() == b"\x40\x02\x00\x04"
    assert [m.payload for m in sub.collect_until("dup1/end")] in ([b"m"], [b"m", b"m"])


def test_raw_subscribe_gets_suback_and_messages(broker):
    """SUBSCRIBE -> SUBACK with the same packet id and the granted QoS (section 3.9)."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("rawsub"))
    raw.send(subscribe_packet(0x1234, "raw/t", 1))
    assert raw.read_packet() == b"\x90\x03\x12\x34\x01"
    pub = connected(broker.port)
    pub.publish("raw/t", b"hi", qos=0)
    assert raw.read_packet() == publish_packet("raw/t", b"hi", qos=0)


@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x00\x00", id="reserved-packet-type-0"),
    pytest.param(publish_packet("early/t", b"x"), id="publish-before-connect"),
    pytest.param(PINGREQ, id="pingreq-before-connect"),
    pytest.param(b"\x10\x0c\x00\x04XXXX\x04\x02\x00\x3c\x00\x00", id="bad-protocol-name"),
    pytest.param(b"\xff\xff\xff\xff\xff", id="malformed-remaining-length"),
])
def test_misbehaving_client_is_dropped_and_others_unaffected(broker, garbage):
    """[MQTT-3.1.0-1]: the first packet must be CONNECT, and protocol violations close the
    connection (section 4.8). The broker keeps serving other clients."""
    before = connected(broker.port)
    before.subscribe("alive/t", 1)
    bad = RawClient(broker.port)
    bad.send(garbage)
    bad.wait_closed(2)
    assert not before.disconnected.is_set()
    after = connected(broker.port)
    after.publish("alive/t", b"still serving", qos=1)
    assert before.get().payload == b"still serving"


def test_second_connect_closes_connection(broker):
    """[MQTT-3.1.0-2]: a second CONNECT on a connection is a protocol violation -> disconnect."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("twice"))
    raw.send(connect_packet(client_id=uid("twice")))
    raw.wait_closed(2)


def test_unsupported_protocol_level_gets_return_code_1(broker):
    """[MQTT-3.1.2-2]: an unsupported protocol level gets CONNACK 0x01 and the connection is
    closed."""
    raw = RawClient(broker.port)
    body = b"\x00\x04MQTT\x09\x02\x00\x3c\x00\x01x"
    raw.send(bytes([0x10, len(body)]) + body)
    assert raw.read_packet() == b"\x20\x02\x00\x01"
    raw.wait_closed(2)


def test_subscribe_with_invalid_filter_closes_connection_or_fails(broker):
    """Section 4.7.3: a filter like 'a/#/b' is invalid. Mosquitto closes the connection;
    3.1.1 also allows SUBACK 0x80. Either way, no successful grant."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("badfilter"))
    raw.send(subscribe_packet(5, "a/#/b", 0))
    try:
        reply = raw.read_packet(timeout=2)
    except ConnectionError:
        return
    assert reply == b"\x90\x03\x00\x05\x80"


@pytest.mark.parametrize("topic", ["bad/+", "bad/#", "bad/+/x"])
def test_publish_to_wildcard_topic_closes_connection(broker, topic):
    """[MQTT-3.3.2-2]: the Topic Name in a PUBLISH must not contain wildcards; Mosquitto
    disconnects the client, and the message reaches no subscriber."""
    sub = connected(broker.port)
    sub.subscribe("#", 0)
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("wild"))
    raw.send(publish_packet(topic, b"x", qos=0))
    raw.wait_closed(2)
    pub = connected(broker.port)
    pub.publish("ok/marker", qos=1)
    assert [m.topic for m in sub.collect_until("ok/marker")] == []


def test_subscribe_with_qos_3_closes_connection(broker):
    """[MQTT-3-8.3-4]: a SUBSCRIBE requested QoS of 3 is malformed -> the server closes the
    connection."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("qos3"))
    raw.send(subscribe_packet(9, "q/t", 3))
    raw.wait_closed(2)


@pytest.mark.parametrize("size", [127, 128, 16_383, 16_384, 300_000])
def test_payload_sizes_across_remaining_length_boundaries(broker, size):
    """Section 2.2.3: Remaining Length takes 1-4 bytes; payloads around the 1/2/3-byte
    boundaries (and a 300 kB one) arrive byte for byte."""
    sub = connected(broker.port)
    sub.subscribe("big/t", 1)
    pub = connected(broker.port)
    payload = bytes(i % 251 for i in range(size))
    pub.publish("big/t", payload, qos=1)
    assert sub.get().payload == payload


def test_fan_out_to_many_subscribers(broker):
    """One publish reaches each of 30 subscribers exactly once."""
    subs = [connected(broker.port) for _ in range(30)]
    for s in subs:
        s.subscribe([("fan/t", 1), ("fan/end", 1)])
    pub = connected(broker.port)
    pub.publish("fan/t", b"to all", qos=1)
    pub.publish("fan/end", qos=1)
    for s in subs:
        assert [m.payload for m in s.collect_until("fan/end")] == [b"to all"]


def test_zero_length_payload_and_utf8_topic(broker):
    """Zero-length payloads are valid for non-retained messages; topic names are UTF-8."""
    sub = connected(broker.port)
    sub.subscribe("ünï/cødé/+", 1)
    pub = connected(broker.port)
    pub.publish("ünï/cødé/✓", b"", qos=1)
    m = sub.get()
    assert (m.topic, m.payload) == ("ünï/cødé/✓", b"")
