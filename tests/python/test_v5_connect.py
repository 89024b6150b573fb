"""MQTT 5.0 CONNECT / CONNACK: what the broker advertises and enforces (spec section 3.2)."""
from test_v5_support import (AUTH_METHOD, CONNACK, DISCONNECT, MAX_PACKET_SIZE, RECEIVE_MAX,
                             REASON_STRING, TOPIC_ALIAS_MAX, RawV5, V5Client, publish5, uid, v5)


def test_connack_advertises_default_limits(broker):
    """Section 3.2.2.3: Receive Maximum = max_inflight_messages (20), Maximum Packet Size =
    max_packet_size (1048576), Topic Alias Maximum = max_topic_alias (10). Maximum QoS is absent
    (2 supported), Retain / Wildcard / Subscription Identifier / Shared Subscription Available
    are absent or 1 (absent means supported)."""
    rc, present, p = v5(broker.port).connack
    assert (rc, present) == (0, False)
    assert p.get("ReceiveMaximum") == 20, p
    assert p.get("MaximumPacketSize") == 1048576, p
    assert p.get("TopicAliasMaximum") == 10, p
    assert "MaximumQoS" not in p, p
    for name in ("RetainAvailable", "WildcardSubscriptionAvailable",
                 "SubscriptionIdentifierAvailable", "SharedSubscriptionAvailable"):
        assert p.get(name, 1) == 1, (name, p)
    assert "AssignedClientIdentifier" not in p, p  # the client sent an id
    assert "ServerKeepAlive" not in p, p  # 60 s is within max_keepalive's default


def test_connack_follows_configured_limits(make_broker):
    """The configured values are what CONNACK advertises."""
    b = make_broker(["max_inflight_messages 5", "max_packet_size 5000", "max_topic_alias 3"])
    p = v5(b.port).connack[2]
    assert (p.get("ReceiveMaximum"), p.get("MaximumPacketSize"), p.get("TopicAliasMaximum")) == (5, 5000, 3), p


def test_raw_v5_connect_with_properties_is_accepted(broker):
    """A hand-built protocol level 5 CONNECT with properties gets CONNACK 0x00 with the
    properties above (byte-level check of the CONNACK format, section 3.2.2)."""
    raw = RawV5(broker.port)
    ack = raw.connect(properties=[(0x11, 30), (RECEIVE_MAX, 10), (MAX_PACKET_SIZE, 4096),
                                  (TOPIC_ALIAS_MAX, 4), (0x26, ("k", "v"))])
    assert ack.raw[0] == 0x20 and not ack.session_present and ack.reason == 0
    assert ack.props.get(RECEIVE_MAX) == 20 and ack.props.get(TOPIC_ALIAS_MAX) == 10, ack.props
    assert ack.props.get(MAX_PACKET_SIZE) == 1048576, ack.props
    raw.send(b"\xc0\x00")
    assert raw.read().raw == b"\xd0\x00"


def test_empty_client_id_gets_assigned_client_identifier(broker):
    """[MQTT-3.2.2-16]: a zero length ClientID is answered with an Assigned Client Identifier."""
    c = V5Client(broker.port, client_id="")
    rc, present, p = c.connect()
    assigned = p.get("AssignedClientIdentifier")
    assert isinstance(assigned, str) and assigned, p
    other = V5Client(broker.port, client_id="")
    assert other.connect()[2].get("AssignedClientIdentifier") not in (None, assigned)


def test_server_keep_alive_caps_keepalive_above_max(make_broker):
    """Section 3.2.2.3.14: with max_keepalive 30, a v5 client asking for 60 s is accepted and
    told Server Keep Alive = 30; 20 s and 0 (no keep-alive) are left alone, and with
    `allow_zero_keepalive false` (Mosquitto's rule) 0 is told 30 too."""
    b = make_broker(["max_keepalive 30"])
    assert v5(b.port, keepalive=60).connack[2].get("ServerKeepAlive") == 30
    assert "ServerKeepAlive" not in v5(b.port, keepalive=0).connack[2]
    assert "ServerKeepAlive" not in v5(b.port, keepalive=20).connack[2]
    strict = make_broker(["max_keepalive 30", "allow_zero_keepalive false"])
    assert v5(strict.port, keepalive=0).connack[2].get("ServerKeepAlive") == 30
    assert "ServerKeepAlive" not in v5(strict.port, keepalive=20).connack[2]


def test_response_information_only_when_requested(make_broker):
    """[MQTT-3.1.2-28]: Response Information only if the client sent Request Response
    Information 1; the value is the response_information setting."""
    b = make_broker(["response_information replies/"])
    assert v5(b.port, RequestResponseInformation=1).connack[2].get("ResponseInformation") == "replies/"
    assert "ResponseInformation" not in v5(b.port, RequestResponseInformation=0).connack[2]
    assert "ResponseInformation" not in v5(b.port).connack[2]


def test_max_qos_1_advertised_downgrades_subscriptions_and_rejects_qos2(make_broker):
    """Section 3.2.2.3.4: max_qos 1 -> CONNACK Maximum QoS 1; a QoS 2 subscription is granted
    QoS 1 ([MQTT-3.2.2-9] the server may grant less); a QoS 2 PUBLISH from the client is
    answered with DISCONNECT 0x9B (QoS not supported)."""
    b = make_broker(["max_qos 1"])
    c = v5(b.port)
    assert c.connack[2].get("MaximumQoS") == 1
    assert c.subscribe("q/#", 2) == [1]
    assert c.publish("q/a", b"one", qos=1) == 0
    assert c.get().qos == 1
    raw = RawV5(b.port)
    raw.connect()
    raw.send(publish5("q/a", b"two", qos=2, mid=1))
    assert raw.expect_disconnect().reason == 0x9B
    c.assert_no_message()


def test_retain_not_available_rejects_retained_publish(make_broker):
    """retain_available false -> CONNACK Retain Available 0; a retained PUBLISH is answered
    with DISCONNECT 0x9A (Retain not supported), section 3.2.2.3.5."""
    b = make_broker(["retain_available false"])
    c = v5(b.port)
    assert c.connack[2].get("RetainAvailable") == 0
    c.publish("r/a", b"x", qos=1, retain=True, wait=False)
    d = c.wait_server_disconnect()
    assert d is not None and d[0] == 0x9A, d
    assert b.alive()


def test_unsupported_authentication_method_gets_connack_0x8c(broker):
    """Section 4.12: a CONNECT with an Authentication Method the server does not support is
    refused with CONNACK 0x8C (Bad authentication method) and the connection is closed."""
    raw = RawV5(broker.port)
    ack = raw.connect(properties=[(AUTH_METHOD, "SCRAM-SHA-512")], expect_reason=0x8C)
    assert ack.kind == CONNACK and not ack.session_present
    raw.wait_closed()
    assert v5(broker.port).connack[0] == 0


def test_takeover_sends_disconnect_0x8e_to_old_connection(broker):
    """[MQTT-3.1.4-3]: a second connection with the same ClientID takes over; the server sends
    the old one DISCONNECT 0x8E (Session taken over) before closing it."""
    cid = uid("take")
    old = RawV5(broker.port)
    old.connect(client_id=cid)
    new = v5(broker.port, client_id=cid)
    d = old.expect_disconnect()
    assert d.kind == DISCONNECT and d.reason == 0x8E, d
    assert new.subscribe("x/y", 1) == [1]
    if d.props:
        assert set(d.props.ids()) <= {REASON_STRING, 0x26}, d.props
