"""Retained messages (MQTT 3.1.1 section 3.3.1.3)."""
from clients import connected


def test_late_subscriber_gets_retained_message_with_retain_flag(broker):
    """[MQTT-3.3.1-6], [MQTT-3.3.1-8]: a new subscription receives the last retained message
    on the topic, with RETAIN set to 1."""
    pub = connected(broker.port)
    pub.publish("ret/t", b"kept", qos=1, retain=True)
    pub.disconnect()
    sub = connected(broker.port)
    sub.subscribe("ret/t", 1)
    m = sub.get()
    assert (m.topic, m.payload, m.qos, m.retain) == ("ret/t", b"kept", 1, True)


def test_retained_qos_is_downgraded_to_granted_qos(broker):
    """A retained QoS 2 message sent to a QoS 0 subscription arrives at QoS 0."""
    pub = connected(broker.port)
    pub.publish("ret/q", b"kept", qos=2, retain=True)
    sub = connected(broker.port)
    sub.subscribe("ret/q", 0)
    m = sub.get()
    assert (m.payload, m.qos, m.retain) == (b"kept", 0, True)


def test_forwarding_to_existing_subscriber_clears_retain_flag(broker):
    """[MQTT-3.3.1-9]: a retained PUBLISH forwarded to an established subscription has
    RETAIN 0."""
    sub = connected(broker.port)
    sub.subscribe("ret/live", 1)
    pub = connected(broker.port)
    pub.publish("ret/live", b"now", qos=1, retain=True)
    m = sub.get()
    assert (m.payload, m.retain) == (b"now", False)
    # ...but it was still stored: a new subscriber gets it with the flag set.
    late = connected(broker.port)
    late.subscribe("ret/live", 1)
    m = late.get()
    assert (m.payload, m.retain) == (b"now", True)


def test_empty_retained_payload_deletes_retained_message(broker):
    """[MQTT-3.3.1-10], [MQTT-3.3.1-11]: a zero-byte retained PUBLISH removes the retained
    message, so later subscribers get nothing at subscribe time."""
    pub = connected(broker.port)
    pub.publish("ret/del", b"old", qos=1, retain=True)
    pub.publish("ret/del", b"", qos=1, retain=True)
    sub = connected(broker.port)
    sub.subscribe("ret/del", 1)
    # A retained message would be sent on SUBSCRIBE, before anything published afterwards.
    pub.publish("ret/del", b"live", qos=1)
    m = sub.get()
    assert (m.payload, m.retain) == (b"live", False)


def test_retained_messages_delivered_to_wildcard_subscription(broker):
    """A wildcard subscription receives every matching retained message, each once."""
    pub = connected(broker.port)
    for t in ["wild/a", "wild/b/c", "other/x"]:
        pub.publish(t, t.encode(), qos=1, retain=True)
    sub = connected(broker.port)
    sub.subscribe("wild/#", 1)
    got = sub.get_n(2)
    assert sorted((m.topic, m.payload, m.retain) for m in got) == [
        ("wild/a", b"wild/a", True), ("wild/b/c", b"wild/b/c", True)]
    plus = connected(broker.port)
    plus.subscribe("+/a", 1)
    m = plus.get()
    assert (m.topic, m.retain) == ("wild/a", True)
    pub.publish("wild/end", qos=1)
    assert sub.collect_until("wild/end") == []


def test_new_retained_message_replaces_previous_one(broker):
    """[MQTT-3.3.1-5]: the server replaces any existing retained message for the topic."""
    pub = connected(broker.port)
    pub.publish("ret/rep", b"first", qos=1, retain=True)
    pub.publish("ret/rep", b"second", qos=1, retain=True)
    sub = connected(broker.port)
    sub.subscribe([("ret/rep", 1), ("ret/end", 1)])
    m = sub.get()
    assert (m.payload, m.retain) == (b"second", True)
    pub.publish("ret/end", qos=1)
    assert sub.collect_until("ret/end") == []


def test_non_retained_publish_does_not_replace_retained_message(broker):
    """[MQTT-3.3.1-12]: a PUBLISH with RETAIN 0 must not store or replace the retained one."""
    pub = connected(broker.port)
    pub.publish("ret/keep", b"retained", qos=1, retain=True)
    pub.publish("ret/keep", b"transient", qos=1, retain=False)
    sub = connected(broker.port)
    sub.subscribe("ret/keep", 1)
    m = sub.get()
    assert (m.payload, m.retain) == (b"retained", True)


def test_resubscribe_resends_retained_message(broker):
    """[MQTT-3.8.4-3]: on a repeated SUBSCRIBE for the same filter, retained messages are
    re-sent."""
    pub = connected(broker.port)
    pub.publish("ret/again", b"r", qos=1, retain=True)
    sub = connected(broker.port)
    sub.subscribe("ret/again", 1)
    assert sub.get().retain
    sub.subscribe("ret/again", 1)
    m = sub.get()
    assert (m.payload, m.retain) == (b"r", True)
