"""MQTT 5.0 wills: Will Delay Interval and Will Properties (section 3.1.3.2)."""
import time

from test_v5_support import V5Client, uid, v5, will


def will_subscriber(port):
    s = v5(port)
    s.subscribe("w5/#", 1)
    return s


def test_will_delay_interval(broker):
    """[MQTT-3.1.3-9]: with Will Delay Interval 2 (and a session that outlives it) the will
    is published about 2 s after the connection drops, not at once."""
    sub = will_subscriber(broker.port)
    c = v5(broker.port, client_id=uid("wd"), SessionExpiryInterval=30,
           will=will("w5/delayed", b"late", WillDelayInterval=2))
    c.kill()
    start = time.monotonic()
    m = sub.get(5)
    waited = time.monotonic() - start
    assert (m.topic, m.payload) == ("w5/delayed", b"late")
    assert 1.5 <= waited <= 3.5, waited


def test_will_delay_cancelled_by_reconnect(broker):
    """[MQTT-3.1.3-9]: a new network connection to the session before the Will Delay Interval
    passes means the will is not sent."""
    sub = will_subscriber(broker.port)
    cid = uid("wc")
    c = v5(broker.port, clean_start=False, client_id=cid, SessionExpiryInterval=30,
           will=will("w5/cancelled", b"never", WillDelayInterval=2))
    c.kill()
    time.sleep(0.3)
    back = V5Client(broker.port, client_id=cid)
    assert back.connect(clean_start=False, SessionExpiryInterval=30)[1] is True
    time.sleep(2.5)
    back.publish("w5/marker", b"m", qos=1)
    assert [m.topic for m in sub.collect_until("w5/marker")] == []


def test_will_sent_when_session_expires_before_will_delay(broker):
    """Section 3.1.3.2.2: the will is published when the Will Delay Interval passes or the
    session ends, whichever is first: Session Expiry 1 s, Will Delay 5 s -> about 1 s."""
    sub = will_subscriber(broker.port)
    c = v5(broker.port, client_id=uid("we"), SessionExpiryInterval=1,
           will=will("w5/expired", b"session over", WillDelayInterval=5))
    c.kill()
    start = time.monotonic()
    m = sub.get(4)
    waited = time.monotonic() - start
    assert m.payload == b"session over"
    assert 0.5 <= waited <= 2.5, waited


def test_will_properties_are_delivered(broker):
    """[MQTT-3.1.3-10] and section 3.1.3.2: the will's Content Type, Response Topic,
    Correlation Data, Payload Format Indicator and User Properties (in order) reach the
    subscriber."""
    sub = will_subscriber(broker.port)
    c = v5(broker.port, will=will("w5/props", b"{\"state\":\"offline\"}", ContentType="application/json",
                                  ResponseTopic="w5/reply", CorrelationData=b"\x00\x01corr",
                                  PayloadFormatIndicator=1,
                                  UserProperty=[("k", "1"), ("z", "2"), ("k", "3")]))
    c.kill()
    m = sub.get(3)
    assert (m.topic, m.payload) == ("w5/props", b"{\"state\":\"offline\"}")
    p = m.props
    assert p.get("ContentType") == "application/json"
    assert p.get("ResponseTopic") == "w5/reply"
    assert p.get("CorrelationData") == b"\x00\x01corr"
    assert p.get("PayloadFormatIndicator") == 1
    assert p.get("UserProperty") == [("k", "1"), ("z", "2"), ("k", "3")]


def test_retained_will_with_message_expiry(broker):
    """A retained will carries its Message Expiry Interval and is retained for a later
    subscriber with RETAIN 1."""
    sub = will_subscriber(broker.port)
    c = v5(broker.port, will=will("w5/ret", b"last", retain=True, MessageExpiryInterval=60))
    c.kill()
    assert sub.get(3).payload == b"last"
    late = v5(broker.port)
    late.subscribe("w5/ret", 1)
    m = late.get(3)
    assert (m.payload, m.retain) == (b"last", True)
    assert 58 <= m.props.get("MessageExpiryInterval", -1) <= 60
    late.publish("w5/ret", b"", qos=1, retain=True)
