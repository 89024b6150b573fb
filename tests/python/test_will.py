"""Will messages (MQTT 3.1.1 section 3.1.2.5)."""
import time

from clients import DISCONNECT, Client, RawClient, connected, uid

WILL = {"topic": "will/t", "payload": b"gone", "qos": 1}


def will_subscriber(port, topic="will/t"):
    s = connected(port)
    s.subscribe(topic, 1)
    return s


def test_will_published_when_paho_client_connection_drops(broker):
    """[MQTT-3.1.2-8]: the will is published when the network connection is closed without a
    DISCONNECT."""
    sub = will_subscriber(broker.port)
    victim = connected(broker.port, will=dict(WILL))
    victim.kill()
    m = sub.get(3)
    assert (m.topic, m.payload, m.qos, m.retain) == ("will/t", b"gone", 1, False)


def test_will_published_when_raw_client_closes_socket(broker):
    """Same with a raw CONNECT carrying a will, then close()."""
    sub = will_subscriber(broker.port)
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("raw"), will={"topic": "will/t", "payload": b"raw gone", "qos": 1})
    raw.close()
    assert sub.get(3).payload == b"raw gone"


def test_no_will_after_clean_disconnect(broker):
    """[MQTT-3.1.2-10]: the will is deleted when the server receives DISCONNECT."""
    sub = will_subscriber(broker.port)
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("raw"), will={"topic": "will/t", "payload": b"no!", "qos": 1})
    raw.send(DISCONNECT)
    raw.wait_closed(2)  # the broker has handled the DISCONNECT
    pub = connected(broker.port)
    pub.publish("will/t", b"marker", qos=1)
    assert sub.get().payload == b"marker"


def test_no_will_after_paho_disconnect(broker):
    """A paho client with a will that calls disconnect() does not trigger the will."""
    sub = will_subscriber(broker.port)
    polite = connected(broker.port, will=dict(WILL, payload=b"no!"))
    polite.disconnect()
    # Another client's will on the same topic is the marker: it is published when its
    # connection drops, which happens after the first client's DISCONNECT was handled.
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("raw"), will={"topic": "will/t", "payload": b"marker", "qos": 1})
    raw.close()
    assert sub.get().payload == b"marker"


def test_will_published_on_keepalive_timeout(broker):
    """Section 3.1.2.10: no packet within 1.5 x Keep Alive -> the server disconnects the client
    as a network failure, which publishes the will."""
    sub = will_subscriber(broker.port)
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("silent"), keepalive=1,
                will={"topic": "will/t", "payload": b"timed out", "qos": 1})
    start = time.monotonic()
    m = sub.get(4)
    elapsed = time.monotonic() - start
    assert m.payload == b"timed out"
    assert 1.0 <= elapsed <= 3.0, f"will after {elapsed:.2f}s, expected ~1.5s"
    raw.close()


def test_will_with_retain_flag_is_retained(broker):
    """[MQTT-3.1.2-17]: Will Retain = 1 -> the will is published as a retained message, so a
    later subscriber receives it with RETAIN set."""
    live = will_subscriber(broker.port, "will/retained")
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("raw"),
                will={"topic": "will/retained", "payload": b"last", "qos": 1, "retain": True})
    raw.close()
    assert live.get(3).payload == b"last"
    late = connected(broker.port)
    late.subscribe("will/retained", 1)
    m = late.get()
    assert (m.payload, m.retain) == (b"last", True)


def test_will_qos_is_applied(broker):
    """[MQTT-3.1.2-14..16]: the will is published with its Will QoS (2 here), downgraded by
    the subscription QoS as usual."""
    sub2 = connected(broker.port)
    sub2.subscribe("will/q", 2)
    sub0 = connected(broker.port)
    sub0.subscribe("will/q", 0)
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("raw"), will={"topic": "will/q", "payload": b"q2", "qos": 2})
    raw.close()
    assert (sub2.get(3).qos, sub0.get(3).qos) == (2, 0)


def test_taken_over_client_will_is_published(broker):
    """Mosquitto publishes the will of a client disconnected by a takeover (section 3.1.4 lets
    the server treat the old connection as closed without DISCONNECT)."""
    sub = will_subscriber(broker.port)
    cid = uid("twin")
    first = Client(broker.port, client_id=cid, will=dict(WILL, payload=b"taken over"))
    first.connect()
    connected(broker.port, client_id=cid)
    assert sub.get(3).payload == b"taken over"
