"""Topic filters: wildcards, $SYS isolation, overlapping subscriptions, (re|un)subscribe."""
import pytest

from clients import connected

END = "end/marker"
CANDIDATES = ["sport", "sport/", "sport/tennis", "sport//player1", "sport/tennis/player1",
              "sport/tennis/player1/ranking", "/finance", "a/b/c/d"]


def deliveries(broker, filters, topics):
    """Subscribe one client to `filters` (QoS 1), publish each of `topics` at QoS 1 from another,
    then an end marker; return the topics the subscriber received before the marker."""
    sub = connected(broker.port)
    sub.subscribe([(f, 1) for f in filters] + [(END, 1)])
    pub = connected(broker.port)
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    pub.publish(END, qos=1)
    return [m.topic for m in sub.collect_until(END)]


@pytest.mark.parametrize("filt, matching", [
    ("sport/+", ["sport/", "sport/tennis"]),
    ("sport/+/player1", ["sport/tennis/player1", "sport//player1"]),
    ("+/+", ["/finance", "sport/tennis", "sport/"]),
    ("+", ["sport"]),
    ("/+", ["/finance"]),
    ("sport/#", ["sport", "sport/", "sport/tennis", "sport//player1", "sport/tennis/player1",
                 "sport/tennis/player1/ranking"]),
    ("#", CANDIDATES),
    ("sport/tennis/#", ["sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking"]),
    ("sport/tennis/player1/ranking", ["sport/tennis/player1/ranking"]),
])
def test_wildcard_filter_matches(broker, filt, matching):
    """Section 4.7.1: '#' matches the parent and any number of levels, '+' exactly one level."""
    got = deliveries(broker, [filt], CANDIDATES)
    assert got == [t for t in CANDIDATES if t in matching]


def test_hash_and_plus_do_not_match_sys_topics(broker):
    """Section 4.7.2: filters starting with a wildcard must not match topics starting with '$'."""
    sub = connected(broker.port)
    sub.subscribe([("#", 0), ("+/broker/uptime", 0), ("+/#", 0)])
    explicit = connected(broker.port)
    explicit.subscribe("$SYS/broker/uptime", 0)
    # The broker publishes $SYS/broker/uptime every second (sys_interval 1).
    m = explicit.get(timeout=4)
    assert m.topic == "$SYS/broker/uptime"
    pub = connected(broker.port)
    pub.publish("plain/after", qos=1)
    got = sub.collect_until("plain/after")
    assert [m.topic for m in got if m.topic.startswith("$")] == []


def test_sys_wildcard_filter_matches_sys_topics(broker):
    """'$SYS/#' (a filter that names '$SYS' explicitly) receives the broker's $SYS topics."""
    sub = connected(broker.port)
    sub.subscribe("$SYS/#", 0)
    topics = {sub.get(timeout=4).topic for _ in range(3)}
    assert all(t.startswith("$SYS/broker/") for t in topics), topics


def test_overlapping_subscriptions_deliver_one_copy_at_highest_qos(broker):
    """Section 3.3.5: with overlapping subscriptions the server delivers the message respecting
    the maximum QoS of all matching subscriptions (Mosquitto: a single copy)."""
    sub = connected(broker.port)
    assert sub.subscribe([("a/#", 0), ("a/b", 2), (END, 2)]) == [0, 2, 2]
    pub = connected(broker.port)
    pub.publish("a/b", b"once", qos=2)
    pub.publish(END, qos=2)
    got = sub.collect_until(END)
    assert [(m.topic, m.payload, m.qos) for m in got] == [("a/b", b"once", 2)]


def test_overlapping_subscriptions_highest_qos_from_wildcard(broker):
    """Same as above with the wildcard holding the higher QoS: one copy at QoS 1."""
    sub = connected(broker.port)
    assert sub.subscribe([("a/+", 1), ("a/b", 0), (END, 1)]) == [1, 0, 1]
    pub = connected(broker.port)
    pub.publish("a/b", b"once", qos=2)
    pub.publish(END, qos=1)
    got = sub.collect_until(END)
    assert [(m.topic, m.payload, m.qos) for m in got] == [("a/b", b"once", 1)]


def test_resubscribe_replaces_granted_qos(broker):
    """Section 3.8.4: a SUBSCRIBE with an existing filter replaces that subscription (and its
    QoS); it does not add a second one."""
    sub = connected(broker.port)
    assert sub.subscribe("re/t", 2) == [2]
    assert sub.subscribe("re/t", 0) == [0]
    sub.subscribe(END, 2)
    pub = connected(broker.port)
    pub.publish("re/t", b"m", qos=2)
    pub.publish(END, qos=2)
    got = sub.collect_until(END)
    assert [(m.payload, m.qos) for m in got] == [(b"m", 0)]


def test_unsubscribe_stops_delivery(broker):
    """Section 3.10.4: after UNSUBACK the server stops adding messages for that filter."""
    sub = connected(broker.port)
    sub.subscribe([("un/a", 1), ("un/b", 1), (END, 1)])
    pub = connected(broker.port)
    pub.publish("un/a", b"1", qos=1)
    pub.publish(END, qos=1)
    assert [m.topic for m in sub.collect_until(END)] == ["un/a"]
    sub.unsubscribe("un/a")
    pub.publish("un/a", b"2", qos=1)
    pub.publish("un/b", b"3", qos=1)
    pub.publish(END, qos=1)
    assert [(m.topic, m.payload) for m in sub.collect_until(END)] == [("un/b", b"3")]


def test_unsubscribe_of_unknown_filter_is_acknowledged(broker):
    """Section 3.10.4: UNSUBACK is sent even if no subscription matched; the client goes on."""
    sub = connected(broker.port)
    sub.unsubscribe("never/subscribed")
    sub.subscribe("still/works", 1)
    pub = connected(broker.port)
    pub.publish("still/works", b"ok", qos=1)
    assert sub.get().payload == b"ok"
