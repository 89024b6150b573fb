"""Sessions: clean_session=0 persistence, offline queueing, client takeover, client ids."""
from clients import (Client, RawClient, ack_packet, connect_packet, connected,
                     subscribe_packet, uid)

END = "sess/end"


def persistent_subscriber(port, cid, qos=1):
    """Connect cid with clean_session=0, subscribe to sess/# at qos, disconnect cleanly."""
    c = Client(port, client_id=cid, clean_session=False)
    assert c.connect() == (0, False)
    c.subscribe("sess/#", qos)
    c.disconnect()


def test_persistent_session_receives_qos1_and_qos2_published_while_offline(broker):
    """Section 3.1.2.4: with CleanSession=0 the session (subscriptions and QoS 1/2 messages
    published while disconnected) survives; the reconnect gets Session Present = 1 (3.2.2.2)."""
    cid = uid("persist")
    persistent_subscriber(broker.port, cid, qos=2)
    pub = connected(broker.port)
    pub.publish("sess/a", b"one", qos=1)
    pub.publish("sess/b", b"two", qos=2)
    sub = Client(broker.port, client_id=cid, clean_session=False)
    assert sub.connect() == (0, True)
    got = sub.get_n(2)
    assert [(m.topic, m.payload, m.qos) for m in got] == [("sess/a", b"one", 1), ("sess/b", b"two", 2)]


def test_persistent_session_does_not_queue_qos0_while_offline(broker):
    """QoS 0 messages for a disconnected client are not stored (Mosquitto default:
    queue_qos0_messages false); the QoS 1 message around them is."""
    cid = uid("persist")
    persistent_subscriber(broker.port, cid, qos=1)
    pub = connected(broker.port)
    pub.publish("sess/x", b"zero", qos=0)
    pub.publish("sess/x", b"one", qos=1)
    pub.publish("sess/x", b"zero again", qos=0)
    sub = Client(broker.port, client_id=cid, clean_session=False)
    assert sub.connect() == (0, True)
    pub.publish(END, qos=1)  # matches sess/#: arrives after anything that was queued
    assert [m.payload for m in sub.collect_until(END)] == [b"one"]


def test_clean_session_reconnect_discards_session(broker):
    """[MQTT-3.1.2-6], [MQTT-3.2.2-1]: CleanSession=1 discards the previous session; CONNACK has
    Session Present = 0 and no subscription or queued message survives."""
    cid = uid("persist")
    persistent_subscriber(broker.port, cid, qos=1)
    pub = connected(broker.port)
    pub.publish("sess/x", b"queued", qos=1)
    clean = Client(broker.port, client_id=cid, clean_session=True)
    assert clean.connect() == (0, False)
    clean.subscribe("other/end", 1)
    pub.publish("sess/x", b"after", qos=1)
    pub.publish("other/end", qos=1)
    assert clean.collect_until("other/end") == []
    clean.disconnect()
    # And the persistent session is gone for good: a clean_session=0 reconnect starts afresh.
    again = Client(broker.port, client_id=cid, clean_session=False)
    assert again.connect() == (0, False)


def test_first_persistent_connect_has_session_present_0(broker):
    """[MQTT-3.2.2-3]: no stored session for this id, so Session Present is 0."""
    c = Client(broker.port, client_id=uid("fresh"), clean_session=False)
    assert c.connect() == (0, False)


def test_max_queued_messages_limits_offline_queue(make_broker):
    """`max_queued_messages 5`: only 5 of 10 QoS 1 messages published while the client is
    offline are kept (Mosquitto keeps the oldest, drops the new ones)."""
    b = make_broker(["max_queued_messages 5"])
    cid = uid("persist")
    persistent_subscriber(b.port, cid, qos=1)
    pub = connected(b.port)
    for i in range(10):
        pub.publish("sess/q", str(i).encode(), qos=1)
    sub = Client(b.port, client_id=cid, clean_session=False)
    assert sub.connect() == (0, True)
    pub.publish(END, qos=1)
    got = [m.payload for m in sub.collect_until(END)]
    assert got == [str(i).encode() for i in range(5)]


def test_client_takeover_disconnects_first_client(broker):
    """[MQTT-3.1.4-2]: a CONNECT with the id of a connected client makes the server
    disconnect the existing client; the new one works normally."""
    cid = uid("twin")
    first = connected(broker.port, client_id=cid)
    second = connected(broker.port, client_id=cid)
    assert first.disconnected.wait(3), "first client was not disconnected"
    second.subscribe("twin/t", 1)
    pub = connected(broker.port)
    pub.publish("twin/t", b"to the new one", qos=1)
    assert second.get().payload == b"to the new one"
    assert not second.disconnected.is_set()
    first.assert_no_message(0)


def test_takeover_of_persistent_session_keeps_subscriptions(broker):
    """Takeover with CleanSession=0 resumes the session: Session Present = 1 and the
    subscription made by the first connection still delivers."""
    cid = uid("twin")
    first = Client(broker.port, client_id=cid, clean_session=False)
    first.connect()
    first.subscribe("twin/p", 1)
    second = Client(broker.port, client_id=cid, clean_session=False)
    assert second.connect() == (0, True)
    assert first.disconnected.wait(3)
    pub = connected(broker.port)
    pub.publish("twin/p", b"kept", qos=1)
    assert second.get().payload == b"kept"


def test_empty_client_id_with_clean_session_is_accepted(broker):
    """[MQTT-3.1.3-6]: a zero-byte ClientId with CleanSession=1 is accepted (the server assigns
    an id); the client can then subscribe and receive."""
    raw = RawClient(broker.port)
    raw.send(connect_packet(client_id="", clean=True))
    assert raw.read_packet() == b"\x20\x02\x00\x00"
    c = connected(broker.port, client_id="")
    c.subscribe("anon/t", 1)
    c.publish("anon/t", b"me", qos=1)
    assert c.get().payload == b"me"


def test_two_empty_client_ids_do_not_take_each_other_over(broker):
    """Each empty-id client gets its own assigned id, so the second does not kick the first."""
    a = connected(broker.port, client_id="")
    b = connected(broker.port, client_id="")
    a.subscribe("anon/both", 1)
    b.subscribe("anon/both", 1)
    pub = connected(broker.port)
    pub.publish("anon/both", b"x", qos=1)
    assert a.get().payload == b"x"
    assert b.get().payload == b"x"
    assert not a.disconnected.is_set()


def test_empty_client_id_without_clean_session_is_rejected(broker):
    """[MQTT-3.1.3-8]: zero-byte ClientId with CleanSession=0 gets CONNACK return code 0x02
    (identifier rejected) and the connection is closed."""
    raw = RawClient(broker.port)
    raw.send(connect_packet(client_id="", clean=False))
    assert raw.read_packet() == b"\x20\x02\x00\x02"
    raw.wait_closed(2)


def test_offline_message_delivered_at_subscription_qos(broker):
    """Queued messages respect the granted QoS: QoS 2 published to a QoS 1 subscription of an
    offline client arrives at QoS 1."""
    cid = uid("persist")
    persistent_subscriber(broker.port, cid, qos=1)
    pub = connected(broker.port)
    pub.publish("sess/down", b"two", qos=2)
    sub = Client(broker.port, client_id=cid, clean_session=False)
    assert sub.connect() == (0, True)
    m = sub.get()
    assert (m.payload, m.qos) == (b"two", 1)


def test_unacknowledged_qos1_message_resent_with_dup_on_reconnect(broker):
    """[MQTT-4.4.0-1]: on reconnect with CleanSession=0 the server re-sends unacknowledged
    PUBLISH packets with their original packet id and DUP set (3.3.1.1)."""
    cid = uid("inflight")
    raw = RawClient(broker.port)
    raw.connect(client_id=cid, clean=False)
    raw.send(subscribe_packet(1, "sess/inflight", 1))
    assert raw.read_packet() == b"\x90\x03\x00\x01\x01"
    pub = connected(broker.port)
    pub.publish("sess/inflight", b"ack me", qos=1)
    first = raw.read_packet()
    assert first[0] == 0x32 and first.endswith(b"ack me"), first  # QoS 1, DUP 0
    raw.close()  # no PUBACK
    again = RawClient(broker.port)
    again.send(connect_packet(client_id=cid, clean=False))
    assert again.read_packet() == b"\x20\x02\x01\x00"  # session present
    resent = again.read_packet()
    assert resent == bytes([0x3A]) + first[1:], (first, resent)  # same packet, DUP set
    again.send(ack_packet(0x40, int.from_bytes(first[17:19], "big")))


def test_pubrel_resent_on_reconnect_after_pubrec(broker):
    """[MQTT-4.4.0-1]: a QoS 2 outgoing flow interrupted after PUBREC resumes on reconnect with
    a PUBREL for the same packet id; PUBCOMP completes it and the message is not re-sent."""
    cid = uid("inflight")
    raw = RawClient(broker.port)
    raw.connect(client_id=cid, clean=False)
    raw.send(subscribe_packet(1, "sess/q2", 2))
    assert raw.read_packet() == b"\x90\x03\x00\x01\x02"
    pub = connected(broker.port)
    pub.publish("sess/q2", b"two", qos=2)
    p = raw.read_packet()
    assert p[0] == 0x34 and p.endswith(b"two"), p
    mid = int.from_bytes(p[11:13], "big")
    raw.send(ack_packet(0x50, mid))  # PUBREC
    assert raw.read_packet() == ack_packet(0x62, mid)  # PUBREL
    raw.close()  # no PUBCOMP
    again = RawClient(broker.port)
    again.send(connect_packet(client_id=cid, clean=False))
    assert again.read_packet() == b"\x20\x02\x01\x00"
    assert again.read_packet() == ack_packet(0x62, mid)  # PUBREL again, not the PUBLISH
    again.send(ack_packet(0x70, mid))  # PUBCOMP
    again.send(b"\xc0\x00")  # PINGREQ: the next packet must be the PINGRESP
    assert again.read_packet() == b"\xd0\x00"


def test_unsubscribe_in_persistent_session_is_remembered(broker):
    """An UNSUBSCRIBE is part of the session state: after reconnecting with CleanSession=0 the
    removed subscription stays removed and the others stay."""
    cid = uid("persist")
    c = Client(broker.port, client_id=cid, clean_session=False)
    c.connect()
    c.subscribe([("sess/keep", 1), ("sess/drop", 1)])
    c.unsubscribe("sess/drop")
    c.disconnect()
    again = Client(broker.port, client_id=cid, clean_session=False)
    assert again.connect() == (0, True)
    pub = connected(broker.port)
    pub.publish("sess/drop", b"no", qos=1)
    pub.publish("sess/keep", b"yes", qos=1)
    assert again.get().payload == b"yes"
