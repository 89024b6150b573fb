"""Limits against abuse, each with its config option (security issue): clients that never
send CONNECT, too many connections, topics too long or too deep, too many subscriptions,
queues bounded in bytes, and a publisher faster than its subscriber is read from less
instead of being buffered without bound."""
import time

from clients import (Client, RawClient, connected, connect_packet, publish_packet, subscribe_packet,
                     ack_packet, uid)


def test_connection_without_connect_is_closed_after_connect_timeout(make_broker):
    """Slowloris: a socket that sends nothing, or half a CONNECT, is closed after connect_timeout."""
    b = make_broker(["connect_timeout 1"])
    silent = RawClient(b.port)
    partial = RawClient(b.port)
    partial.send(connect_packet(client_id="slow")[:7])
    assert 0.8 < silent.wait_closed(timeout=4) < 3.5
    assert partial.wait_closed(timeout=4) < 3.5
    c = connected(b.port)  # the broker still serves
    c.disconnect()


def test_max_connections(make_broker):
    b = make_broker(["max_connections 2"])
    first, second = connected(b.port), connected(b.port)
    third = RawClient(b.port)
    assert third.wait_closed(timeout=3) < 2
    topic = uid("mc")
    first.subscribe(topic, qos=1)
    second.publish(topic, b"still fine", qos=1)
    assert first.get().payload == b"still fine"
    first.disconnect()
    second.disconnect()


def test_topic_length_and_levels(make_broker):
    b = make_broker(["max_topic_length 20", "max_topic_levels 4"])
    # A subscription past the limits is refused, not granted.
    s = RawClient(b.port)
    s.connect(client_id="lim-sub")
    s.send(subscribe_packet(1, "a/b/c/d/e", 0) + subscribe_packet(2, "x" * 21, 0) + subscribe_packet(3, "a/b/c/d", 0))
    codes = [s.read_packet()[-1] for _ in range(3)]
    assert codes == [0x80, 0x80, 0x00]
    # A publish past the limits is a protocol violation: closed.
    for topic in ("a/b/c/d/e", "t" * 21):
        p = RawClient(b.port)
        p.connect(client_id=uid("lim"))
        p.send(publish_packet(topic, b"x"))
        p.wait_closed(timeout=3)
    ok = RawClient(b.port)
    ok.connect(client_id="lim-ok")
    ok.send(publish_packet("a/b/c/d", b"within", qos=1, mid=1))
    assert ok.read_packet() == ack_packet(0x40, 1)
    assert s.read_packet()[-6:] == b"within"


def test_subscriptions_per_client(make_broker):
    b = make_broker(["max_subscriptions_per_client 2"])
    s = RawClient(b.port)
    s.connect(client_id="quota")
    codes = []
    for mid, f in enumerate(["q/1", "q/2", "q/3", "q/1"], start=1):
        s.send(subscribe_packet(mid, f, 1))
        codes.append(s.read_packet()[-1])
    # The third is over the quota; re-subscribing an existing filter is not a new one.
    assert codes == [1, 1, 0x80, 1]


def test_queue_bounded_in_bytes(make_broker):
    """max_queued_bytes bounds an offline session's queue by payload bytes; the rest is dropped."""
    b = make_broker(["max_queued_bytes 150"])
    sub = Client(b.port, client_id="bytes-sub", clean_session=False)
    sub.connect()
    topic = uid("qb")
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    pub = connected(b.port)
    for i in range(10):
        pub.publish(topic, bytes([48 + i]) * 64, qos=1)
    pub.disconnect()
    again = Client(b.port, client_id="bytes-sub", clean_session=False)
    again.connect()
    got = again.get_n(2)
    again.assert_no_message(timeout=0.5)
    assert [m.payload[:1] for m in got] == [b"0", b"1"]
    again.disconnect()


def test_fast_publisher_is_read_from_less_not_buffered(make_broker):
    """A QoS 1 publisher faster than its subscriber is paused (its PUBACKs stop coming) once
    the subscriber's queue is full, instead of the broker buffering without bound; when the
    subscriber reads, the publisher resumes and nothing is lost."""
    b = make_broker(["max_queued_messages 10", "max_inflight_messages 5"])
    sub = RawClient(b.port)
    sub.connect(client_id="slow-sub")
    sub.send(subscribe_packet(1, "bp/t", 1))
    sub.read_packet()
    pub = RawClient(b.port)
    pub.connect(client_id="fast-pub")
    n = 60
    pub.send(b"".join(publish_packet("bp/t", b"%03d" % i, qos=1, mid=i + 1) for i in range(n)))
    acks = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            if pub.read_packet(timeout=0.2)[0] == 0x40:
                acks += 1
        except AssertionError:
            pass
    # 5 in flight + 10 queued (+1 past the limit that paused it): the rest wait unread.
    assert 10 <= acks <= 20, acks
    other = connected(b.port)  # everyone else is served meanwhile
    other.disconnect()
    got = []
    while len(got) < n:
        p = sub.read_packet(timeout=5)
        if p[0] >> 4 == 3:
            got.append(p[-3:])
            sub.send(ack_packet(0x40, int.from_bytes(p[8:10], "big")))
    assert got == [b"%03d" % i for i in range(n)]
    while acks < n:
        if pub.read_packet(timeout=5)[0] == 0x40:
            acks += 1
