"""MQTT 5.0 subscriptions: Shared Subscriptions (section 4.8.2), Subscription Options (section
3.8.3.1) and Subscription Identifiers (section 3.8.2.1.2, 3.3.4)."""
import queue
import time

from test_v5_support import RawV5, subscribe5, uid, v5

END = "so/end"


def ids(m):
    return sorted(m.props.get("SubscriptionIdentifier", []))


def receive_split(clients, total, timeout=5.0):
    """Payloads (as ints) each client receives until `total` arrived between them."""
    got = [[] for _ in clients]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < total and time.monotonic() < deadline:
        for c, g in zip(clients, got):
            try:
                g.append(int(c.messages.get(timeout=0.02).payload))
            except queue.Empty:
                pass
    return got


# --- shared subscriptions ------------------------------------------------------------------------

def test_shared_subscription_splits_messages_round_robin(broker):
    """[MQTT-4.8.2-..]: each message of a shared subscription goes to exactly one member; with
    round robin two members get 5 of 10 each. A plain t/# subscriber gets all 10."""
    a, b, plain = v5(broker.port), v5(broker.port), v5(broker.port)
    assert a.subscribe("$share/g/sh/#", 1) == [1]
    assert b.subscribe("$share/g/sh/#", 1) == [1]
    plain.subscribe("sh/#", 1)
    pub = v5(broker.port)
    for i in range(10):
        assert pub.publish(f"sh/{i}", str(i).encode(), qos=1) == 0
    assert sorted(int(m.payload) for m in plain.get_n(10)) == list(range(10))
    got_a, got_b = receive_split([a, b], 10)
    assert sorted(got_a + got_b) == list(range(10))
    assert (len(got_a), len(got_b)) == (5, 5), (got_a, got_b)
    a.assert_no_message(0.2)
    b.assert_no_message(0.1)


def test_shared_subscription_member_leaving_leaves_all_to_the_other(broker):
    """When one member disconnects (normally, session ends) the remaining member gets every
    message."""
    a, b = v5(broker.port), v5(broker.port)
    a.subscribe("$share/g2/sl/#", 1)
    b.subscribe("$share/g2/sl/#", 1)
    a.disconnect()
    pub = v5(broker.port)
    for i in range(6):
        pub.publish(f"sl/{i}", str(i).encode(), qos=1)
    assert [int(m.payload) for m in b.get_n(6)] == list(range(6))


def test_shared_subscription_invalid_share_names_get_0x8f(broker):
    """[MQTT-4.8.2-1], [MQTT-4.8.2-2]: the ShareName is at least one character, without '/',
    '+' or '#', and must be followed by '/' and a Topic Filter: otherwise SUBACK 0x8F (Topic
    Filter invalid), per filter. A valid one in the same SUBSCRIBE is granted."""
    raw = RawV5(broker.port)
    raw.connect()
    codes = raw.subscribe(1, [("$share/g", 1), ("$share/a+b/t", 1), ("$share/ok/t/#", 1),
                              ("$share//t", 1), ("$share/a#/t", 1)])
    assert codes == [0x8F, 0x8F, 1, 0x8F, 0x8F]


def test_shared_subscription_with_no_local_is_protocol_error(broker):
    """[MQTT-3.8.3-4]: 'It is a Protocol Error to set the No Local bit to 1 on a Shared
    Subscription': DISCONNECT 0x82 (section 4.13.1)."""
    raw = RawV5(broker.port)
    raw.connect()
    raw.send(subscribe5(1, [("$share/g/t/#", 0x04 | 1)]))
    assert raw.expect_disconnect().reason == 0x82


# --- subscription options ------------------------------------------------------------------------

def test_no_local(broker):
    """[MQTT-3.8.3-3]: with No Local a client does not get its own messages; other clients'
    messages, and a No Local 0 subscriber, are unaffected."""
    me = v5(broker.port)
    me.subscribe("nl/#", 1, no_local=True)
    other = v5(broker.port)
    other.subscribe("nl/#", 1)
    me.publish("nl/mine", b"mine", qos=1)
    assert other.get().payload == b"mine"
    other.publish("nl/theirs", b"theirs", qos=1)
    assert [m.payload for m in me.get_n(1)] == [b"theirs"]
    assert other.get().payload == b"theirs"
    me.assert_no_message()


def test_retain_as_published(broker):
    """[MQTT-3.3.1-12], [MQTT-3.3.1-13]: a forwarded retained message keeps RETAIN 1 only for a
    Retain As Published subscription; the retained message sent on a new subscription has
    RETAIN 1 either way ([MQTT-3.3.1-9])."""
    rap, plain = v5(broker.port), v5(broker.port)
    rap.subscribe("rap/#", 1, retain_as_published=True)
    plain.subscribe("rap/#", 1)
    pub = v5(broker.port)
    pub.publish("rap/a", b"r", qos=1, retain=True)
    pub.publish("rap/b", b"n", qos=1, retain=False)
    assert [(m.payload, m.retain) for m in rap.get_n(2)] == [(b"r", True), (b"n", False)]
    assert [(m.payload, m.retain) for m in plain.get_n(2)] == [(b"r", False), (b"n", False)]
    late = v5(broker.port)
    late.subscribe("rap/a", 1)
    m = late.get()
    assert (m.payload, m.retain) == (b"r", True)
    pub.publish("rap/a", b"", qos=1, retain=True)  # clear


def retained_after_subscribe(client, pub, topic, handling):
    """Subscribe `topic` with this Retain Handling; return the payloads that arrive before a
    marker (which proves anything retained was sent before it)."""
    assert client.subscribe(topic, 1, retain_handling=handling) == [1]
    pub.publish(END, qos=1)
    return [m.payload for m in client.collect_until(END)]


def test_retain_handling(broker):
    """Section 3.8.3.1: Retain Handling 0 sends retained messages on every subscribe, 1 only
    when the subscription did not exist ([MQTT-3.3.1-10]), 2 never ([MQTT-3.3.1-11])."""
    pub = v5(broker.port)
    pub.publish("rh/t", b"kept", qos=1, retain=True)
    c = v5(broker.port)
    c.subscribe(END, 1)
    assert retained_after_subscribe(c, pub, "rh/t", 0) == [b"kept"]
    assert retained_after_subscribe(c, pub, "rh/t", 0) == [b"kept"]
    assert retained_after_subscribe(c, pub, "rh/+", 1) == [b"kept"]
    assert retained_after_subscribe(c, pub, "rh/+", 1) == []
    assert retained_after_subscribe(c, pub, "rh/#", 2) == []
    assert retained_after_subscribe(c, pub, "rh/#", 2) == []
    pub.publish("rh/t", b"", qos=1, retain=True)


def test_subscription_identifier_delivered(broker):
    """[MQTT-3.3.4-3]: a message matching a subscription made with a Subscription Identifier
    carries it; without one, no Subscription Identifier; re-subscribing the same filter with
    another identifier replaces it ([MQTT-3.8.4-3])."""
    c, plain = v5(broker.port), v5(broker.port)
    c.subscribe("si/#", 1, sub_id=7)
    plain.subscribe("si/#", 1)
    pub = v5(broker.port)
    pub.publish("si/a", b"1", qos=1)
    assert ids(c.get()) == [7]
    assert "SubscriptionIdentifier" not in plain.get().props
    c.subscribe("si/#", 1, sub_id=300000)
    pub.publish("si/a", b"2", qos=1)
    assert ids(c.get()) == [300000]


def test_overlapping_subscriptions_one_copy_with_all_identifiers(broker):
    """[MQTT-3.3.4-2], [MQTT-3.3.4-3]: overlapping subscriptions of one client; gatemq sends ONE
    copy, at the highest granted QoS, carrying the identifiers of both subscriptions (the spec
    also allows one copy per subscription; this is the behaviour chosen)."""
    c = v5(broker.port)
    c.subscribe("ov/#", 0, sub_id=1)
    c.subscribe("ov/+", 1, sub_id=2)
    c.subscribe(END, 1)
    pub = v5(broker.port)
    pub.publish("ov/a", b"x", qos=1)
    pub.publish(END, qos=1)
    got = c.collect_until(END)
    assert [(m.topic, m.qos, ids(m)) for m in got] == [("ov/a", 1, [1, 2])]


def test_unsubscribe_one_of_overlapping_keeps_the_other(broker):
    """After unsubscribing one of two overlapping filters the message still arrives, carrying
    only the remaining subscription's identifier."""
    c = v5(broker.port, client_id=uid("ov"))
    c.subscribe("ou/#", 1, sub_id=11)
    c.subscribe("ou/+", 1, sub_id=12)
    assert c.unsubscribe("ou/#") == [0]
    pub = v5(broker.port)
    pub.publish("ou/a", b"x", qos=1)
    assert ids(c.get()) == [12]
    c.assert_no_message()
