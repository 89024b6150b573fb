"""MQTT 5.0 Topic Aliases (section 3.3.2.3.4, actions in section 3.3.4)."""
from test_v5_support import (REASON_STRING, TOPIC_ALIAS, RawV5, publish5, uid, v5)


def test_inbound_alias_set_used_and_replaced(broker):
    """A PUBLISH with a topic and Topic Alias 1 sets the mapping; an empty topic with alias 1
    is delivered on that topic; a new topic with alias 1 replaces the mapping. Subscribers
    never see the publisher's alias."""
    sub = v5(broker.port)
    sub.subscribe("ta/#", 1)
    pub = v5(broker.port)
    assert pub.connack[2]["TopicAliasMaximum"] >= 1
    pub.publish("ta/x", b"1", qos=1, TopicAlias=1)
    pub.publish("", b"2", qos=1, TopicAlias=1)
    pub.publish("ta/y", b"3", qos=0, TopicAlias=1)
    pub.publish("", b"4", qos=1, TopicAlias=1)
    got = sub.get_n(4)
    assert [(m.topic, m.payload) for m in got] == [("ta/x", b"1"), ("ta/x", b"2"), ("ta/y", b"3"), ("ta/y", b"4")]
    assert all(m.wire_topic == m.topic and "TopicAlias" not in m.props for m in got)


def test_inbound_alias_above_maximum_disconnect_0x94(make_broker):
    """A Topic Alias greater than the Topic Alias Maximum the server sent is a Protocol Error:
    DISCONNECT 0x94 (Topic Alias invalid), section 3.3.4, with a Reason String."""
    b = make_broker(["max_topic_alias 3"])
    pub = v5(b.port)
    assert pub.connack[2]["TopicAliasMaximum"] == 3
    pub.publish("ta/x", b"ok", qos=1, TopicAlias=3)
    # The invalid alias goes over a raw socket: paho's own loop thread made the paho version of
    # this step racy under load (it sometimes saw its socket gone before sending).
    raw = RawV5(b.port)
    raw.connect()
    raw.send(publish5("ta/x", b"ok", qos=1, mid=1, properties=[(TOPIC_ALIAS, 3)]))
    assert raw.read_kind(4).reason in (0x00, 0x10)
    raw.send(publish5("ta/x", b"no", qos=1, mid=2, properties=[(TOPIC_ALIAS, 4)]))
    d = raw.expect_disconnect()
    assert d.reason == 0x94, d
    assert any(pid == REASON_STRING and text for pid, text in d.props), f"a Reason String: {d}"


def test_inbound_alias_zero_disconnect_0x94(broker):
    """[MQTT-3.3.2-8]: Topic Alias 0 is not permitted; section 3.3.4: 'A Topic Alias value of 0
    or greater than the Maximum Topic Alias is a Protocol Error, the receiver uses DISCONNECT
    with Reason Code of 0x94 (Topic Alias invalid)'."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(publish5("ta/x", b"zero", qos=1, mid=1, properties=[(TOPIC_ALIAS, 0)]))
    assert raw.expect_disconnect().reason == 0x94


def test_inbound_unknown_alias_with_empty_topic_disconnect_0x82(broker):
    """Section 3.3.4: an empty Topic Name with an alias that has no mapping is a Protocol
    Error, DISCONNECT 0x82, with a Reason String (e.g. "topic alias 2 not defined")."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(publish5("", b"who?", qos=1, mid=1, properties=[(TOPIC_ALIAS, 2)]))
    d = raw.expect_disconnect()
    assert d.reason == 0x82
    assert d.props.get(REASON_STRING), d


def test_inbound_aliases_do_not_survive_the_connection(broker):
    """[MQTT-3.3.2-7]: mappings are per network connection; a new connection of the same client
    that uses alias 1 with an empty topic gets DISCONNECT 0x82."""
    cid = uid("ta")
    first = RawV5(broker.port)
    first.connect(client_id=cid, clean_start=False, properties=[(0x11, 60)])
    first.send(publish5("ta/x", b"1", qos=1, mid=1, properties=[(TOPIC_ALIAS, 1)]))
    assert first.read().kind == 4
    first.send(b"\xe0\x00")
    first.wait_closed()
    second = RawV5(broker.port)
    assert second.connect(client_id=cid, clean_start=False, properties=[(0x11, 60)]).session_present
    second.send(publish5("", b"2", qos=1, mid=2, properties=[(TOPIC_ALIAS, 1)]))
    assert second.expect_disconnect().reason == 0x82


def test_empty_topic_without_alias_is_protocol_error(broker):
    """Section 3.3.2.1: 'It is a Protocol Error if the Topic Name is zero length and there is no
    Topic Alias'."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(publish5("", b"nowhere", qos=0))
    assert raw.expect_disconnect().reason == 0x82


def test_paho_subscriber_with_topic_alias_maximum_gets_right_topics(broker):
    """A paho v5 subscriber that accepts 2 aliases receives every message on its right topic
    over 3 topics (the wrapper resolves aliases as the client must); any alias the server uses
    is within 1..2 ([MQTT-3.1.2-26]) and was set by a PUBLISH with the full topic first."""
    sub = v5(broker.port, TopicAliasMaximum=2)
    sub.subscribe("tb/#", 1)
    pub = v5(broker.port)
    sent = [(f"tb/{t}", f"{t}{i}".encode()) for i in range(3) for t in ("a", "b", "c")]
    for topic, payload in sent:
        pub.publish(topic, payload, qos=1)
    got = sub.get_n(len(sent))
    assert [(m.topic, m.payload) for m in got] == sent
    for m in got:
        alias = m.props.get("TopicAlias")
        assert alias is None or 1 <= alias <= 2, m
