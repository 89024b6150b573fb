"""MQTT 5.0 sessions: Clean Start, Session Expiry Interval (section 3.1.2.11.2, 4.1) and Message
Expiry Interval (section 3.3.2.3.3)."""
import time

from test_v5_support import DISCONNECT, SESSION_EXPIRY, RawV5, V5Client, disconnect5, uid, v5

END = "sx/end"


def offline_subscriber(port, cid, expiry, qos=1, topic="sx/#"):
    """cid connects with Clean Start 0 and this Session Expiry Interval (None: absent = 0),
    subscribes, and disconnects normally."""
    kw = {} if expiry is None else {"SessionExpiryInterval": expiry}
    c = v5(port, clean_start=False, client_id=cid, **kw)
    assert c.connack[1] is False
    c.subscribe(topic, qos)
    c.disconnect()


def reconnect(port, cid, clean_start=False, expiry=60):
    c = V5Client(port, client_id=cid)
    c.connect(clean_start=clean_start, SessionExpiryInterval=expiry)
    return c


def test_session_expiry_absent_ends_session_at_disconnect(broker):
    """Section 3.1.2.11.2: no Session Expiry Interval (0): the session ends when the network
    connection closes, so a Clean Start 0 reconnect has Session Present 0 and no subscription."""
    cid = uid("sx0")
    offline_subscriber(broker.port, cid, None)
    pub = v5(broker.port)
    assert pub.publish("sx/a", b"lost", qos=1) == 0x10  # no subscriber left
    c = reconnect(broker.port, cid)
    assert c.connack[1] is False
    c.subscribe(END, 1)
    pub.publish(END, qos=1)
    assert c.collect_until(END) == []


def test_session_expiry_interval_keeps_session_for_that_long(broker):
    """Session Expiry Interval 2: a reconnect after 1 s finds the session (Session Present 1)
    with the QoS 1 messages queued meanwhile; 3.5 s after the next disconnect it is gone."""
    cid = uid("sx2")
    offline_subscriber(broker.port, cid, 2)
    pub = v5(broker.port)
    assert pub.publish("sx/a", b"kept 1", qos=1) == 0
    pub.publish("sx/b", b"kept 2", qos=1)
    time.sleep(1.0)
    c = V5Client(broker.port, client_id=cid)
    assert c.connect(clean_start=False, SessionExpiryInterval=2)[1] is True
    assert [(m.topic, m.payload, m.qos) for m in c.get_n(2)] == [("sx/a", b"kept 1", 1), ("sx/b", b"kept 2", 1)]
    c.disconnect()
    time.sleep(3.5)
    assert pub.publish("sx/a", b"too late", qos=1) == 0x10  # the subscription went with the session
    again = reconnect(broker.port, cid)
    assert again.connack[1] is False
    again.subscribe(END, 1)
    pub.publish(END, qos=1)
    assert again.collect_until(END) == []


def test_session_expiry_max_keeps_session(broker):
    """0xFFFFFFFF means the session does not expire."""
    cid = uid("sxmax")
    offline_subscriber(broker.port, cid, 0xFFFFFFFF)
    pub = v5(broker.port)
    time.sleep(0.3)
    pub.publish("sx/a", b"forever", qos=1)
    c = reconnect(broker.port, cid)
    assert c.connack[1] is True
    assert c.get().payload == b"forever"


def test_session_expiry_lowered_to_zero_in_disconnect_ends_session(broker):
    """Section 3.14.2.2.2: the client may change the Session Expiry Interval in DISCONNECT;
    60 -> 0 ends the session at once."""
    cid = uid("sx60")
    c = v5(broker.port, clean_start=False, client_id=cid, SessionExpiryInterval=60)
    c.subscribe("sx/#", 1)
    c.disconnect(SessionExpiryInterval=0)
    again = reconnect(broker.port, cid)
    assert again.connack[1] is False


def test_session_expiry_raised_from_zero_in_disconnect_is_protocol_error(broker):
    """Section 3.14.2.2.2: if CONNECT had Session Expiry Interval 0, a non-zero one in
    DISCONNECT is a Protocol Error: the server answers DISCONNECT 0x82 and, since this is not a
    valid DISCONNECT, the will is published (section 3.1.2.5)."""
    sub = v5(broker.port)
    sub.subscribe("sxwill/#", 1)
    raw = RawV5(broker.port)
    raw.connect(client_id=uid("sxbad"), will={"topic": "sxwill/t", "payload": b"bad bye", "qos": 1})
    raw.send(disconnect5(0, [(SESSION_EXPIRY, 60)]))
    d = raw.expect_disconnect()
    assert (d.kind, d.reason) == (DISCONNECT, 0x82)
    assert sub.get(3).payload == b"bad bye"


def test_clean_start_discards_existing_session(broker):
    """[MQTT-3.1.2-4]: Clean Start 1 discards the session: Session Present 0, queued messages
    and subscriptions gone."""
    cid = uid("sxclean")
    offline_subscriber(broker.port, cid, 60)
    pub = v5(broker.port)
    pub.publish("sx/a", b"queued", qos=1)
    c = reconnect(broker.port, cid, clean_start=True)
    assert c.connack[1] is False
    c.subscribe(END, 1)
    pub.publish("sx/a", b"after", qos=1)
    pub.publish(END, qos=1)
    assert c.collect_until(END) == []


def test_message_expiry_while_queued(broker):
    """[MQTT-3.3.2-5]: a queued message whose Message Expiry Interval passed is not delivered;
    [MQTT-3.3.2-6]: one delivered later carries the received interval minus the time it waited
    (10 s published, ~2 s waited -> 7 or 8). A retained message expires too (section
    3.3.2.3.3), while one without expiry is kept."""
    cid = uid("mx")
    offline_subscriber(broker.port, cid, 60)
    pub = v5(broker.port)
    pub.publish("sx/short", b"expires", qos=1, MessageExpiryInterval=1)
    pub.publish("sx/long", b"survives", qos=1, MessageExpiryInterval=10)
    pub.publish("mxr/short", b"retained, expires", qos=1, retain=True, MessageExpiryInterval=1)
    pub.publish("mxr/keep", b"retained, kept", qos=1, retain=True)
    time.sleep(2.0)
    c = reconnect(broker.port, cid)
    assert c.connack[1] is True
    c.subscribe("mxr/#", 1)
    c.subscribe(END, 1)
    pub.publish(END, qos=1)
    got = c.collect_until(END)
    assert [(m.topic, m.payload) for m in got] == [("sx/long", b"survives"), ("mxr/keep", b"retained, kept")]
    assert 7 <= got[0].props.get("MessageExpiryInterval", -1) <= 8, got[0].props
    assert "MessageExpiryInterval" not in got[1].props


def test_message_expiry_forwarded_to_online_subscriber(broker):
    """A message forwarded at once keeps (nearly) its full Message Expiry Interval."""
    sub = v5(broker.port)
    sub.subscribe("mx/#", 1)
    pub = v5(broker.port)
    pub.publish("mx/a", b"x", qos=1, MessageExpiryInterval=30)
    assert sub.get().props.get("MessageExpiryInterval") in (29, 30)

