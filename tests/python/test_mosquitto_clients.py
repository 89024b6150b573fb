"""Interoperability with Mosquitto's command line clients (mosquitto_pub / mosquitto_sub)."""
import re
import subprocess
import time

import pytest

from clients import HOST, MosquittoSub, connected, mosquitto_pub, uid


@pytest.fixture
def msub(broker):
    """Factory for mosquitto_sub processes (already subscribed), stopped at test end."""
    procs = []

    def start(*args):
        s = MosquittoSub(broker.port, *args)
        procs.append(s)
        return s.wait_subscribed()

    yield start
    for s in procs:
        s.stop()


def sub_once(port, *args, timeout=5):
    """Run `mosquitto_sub -C 1 -v ...` to completion and return its stdout."""
    r = subprocess.run(["mosquitto_sub", "-h", HOST, "-p", str(port), "-C", "1", "-v",
                        "-W", str(timeout), *args], capture_output=True, text=True,
                       timeout=timeout + 2)
    assert r.returncode == 0, f"mosquitto_sub {args} -> {r.returncode}: {r.stdout}{r.stderr}"
    return r.stdout


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_pub_to_mosquitto_sub_at_each_qos(broker, msub, qos):
    """mosquitto_pub -q n reaches mosquitto_sub -q n with QoS n, retain 0, payload intact."""
    s = msub("-q", str(qos), "-t", "mq/t", "-C", "1")
    mosquitto_pub(broker.port, "-q", str(qos), "-t", "mq/t", "-m", f"hello {qos}")
    assert s.get() == (qos, 0, "mq/t", f"hello {qos}")
    assert s.wait_exit() == 0


def test_mosquitto_pub_retained_then_late_mosquitto_sub(broker):
    """`mosquitto_pub -r` stores the message; a later `mosquitto_sub -C 1 -v` prints it."""
    mosquitto_pub(broker.port, "-r", "-q", "1", "-t", "mq/retained", "-m", "kept value")
    assert sub_once(broker.port, "-t", "mq/retained") == "mq/retained kept value\n"
    assert sub_once(broker.port, "-t", "mq/#") == "mq/retained kept value\n"


def test_mosquitto_pub_null_retained_clears_it(broker, msub):
    """`mosquitto_pub -r -n` (zero-length retained) removes the retained message."""
    mosquitto_pub(broker.port, "-r", "-t", "mq/clear", "-m", "old")
    mosquitto_pub(broker.port, "-r", "-n", "-t", "mq/clear")
    s = msub("-t", "mq/clear", "-C", "1")
    mosquitto_pub(broker.port, "-t", "mq/clear", "-m", "fresh")
    assert s.get() == (0, 0, "mq/clear", "fresh")


def test_sys_broker_uptime_via_mosquitto_sub(broker):
    """$SYS/broker/uptime is published as "N seconds" (Mosquitto's format)."""
    out = sub_once(broker.port, "-t", "$SYS/broker/uptime")
    assert re.fullmatch(r"\$SYS/broker/uptime \d+ seconds\n", out), out


def test_sys_broker_version_via_mosquitto_sub(broker):
    """$SYS/broker/version carries a version string."""
    out = sub_once(broker.port, "-t", "$SYS/broker/version")
    assert re.fullmatch(r"\$SYS/broker/version \S.*\d+\.\d+.*\n", out), out


def test_mosquitto_pub_to_paho_subscriber(broker):
    sub = connected(broker.port)
    sub.subscribe("mix/p", 2)
    mosquitto_pub(broker.port, "-q", "2", "-t", "mix/p", "-m", "from mosquitto_pub")
    m = sub.get()
    assert (m.payload, m.qos) == (b"from mosquitto_pub", 2)


def test_paho_publisher_to_mosquitto_sub(broker, msub):
    s = msub("-q", "1", "-t", "mix/s", "-C", "1")
    pub = connected(broker.port)
    pub.publish("mix/s", b"from paho", qos=1)
    assert s.get() == (1, 0, "mix/s", "from paho")


def test_mosquitto_clients_over_mqtt31(broker, msub):
    """`-V mqttv31` (protocol MQIsdp 3) clients work like 3.1.1 ones."""
    s = msub("-V", "mqttv31", "-q", "2", "-t", "v31/#", "-C", "2")
    mosquitto_pub(broker.port, "-V", "mqttv31", "-q", "2", "-t", "v31/a", "-m", "old")
    mosquitto_pub(broker.port, "-V", "mqttv311", "-q", "1", "-t", "v31/b", "-m", "new")
    assert sorted([s.get(), s.get()]) == [(1, 0, "v31/b", "new"), (2, 0, "v31/a", "old")]
    assert s.wait_exit() == 0


def test_mosquitto_sub_persistent_session(broker):
    """`mosquitto_sub -c -i ID -q 1` keeps its subscription while away: a QoS 1 message
    published meanwhile is printed by the next `mosquitto_sub -c -i ID`."""
    cid = uid("msub")
    r = subprocess.run(["mosquitto_sub", "-h", HOST, "-p", str(broker.port), "-c", "-i", cid,
                        "-q", "1", "-t", "mq/persist", "-E"], capture_output=True, timeout=5)
    assert r.returncode == 0, r
    mosquitto_pub(broker.port, "-q", "1", "-t", "mq/persist", "-m", "while away")
    assert sub_once(broker.port, "-c", "-i", cid, "-q", "1", "-t", "mq/persist") == \
        "mq/persist while away\n"


class SysWatcher:
    """A paho client subscribed to some $SYS topics, remembering their latest values."""

    def __init__(self, port, topics):
        self.c = connected(port)
        self.c.subscribe([("$SYS/broker/" + t, 0) for t in topics + ["uptime"]])
        self.latest = {}
        self.live_uptimes = 0

    def settle(self, cycles=2):
        """Wait for `cycles` periodic (non-retained) $SYS publications: the broker's own $SYS
        topics are then all created, so counters that include them are stable."""
        start = self.live_uptimes
        self.wait("uptime", lambda v: self.live_uptimes >= start + cycles, timeout=cycles + 3)

    def wait(self, topic, pred, timeout=5.0):
        """Wait until $SYS/broker/<topic> has a value v (str) with pred(v); return v."""
        full = "$SYS/broker/" + topic
        if full in self.latest and pred(self.latest[full]):
            return self.latest[full]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{full}: last value {self.latest.get(full)!r} never matched")
            try:
                m = self.c.get(remaining)
            except AssertionError:
                continue
            self.latest[m.topic] = m.payload.decode()
            if m.topic == "$SYS/broker/uptime" and not m.retain:
                self.live_uptimes += 1
            if m.topic == full and pred(self.latest[full]):
                return self.latest[full]

    def value(self, topic):
        return self.wait(topic, lambda v: True)


def equals(n):
    return lambda v: int(v) == n


def at_least(n):
    return lambda v: int(v) >= n


def test_sys_clients_connected_and_maximum_follow_connections(broker):
    """clients/connected counts connected clients (the watcher included); clients/maximum
    remembers the peak."""
    w = SysWatcher(broker.port, ["clients/connected", "clients/maximum"])
    w.wait("clients/connected", equals(1))
    extra = [connected(broker.port) for _ in range(3)]
    w.wait("clients/connected", equals(4))
    for c in extra[:2]:
        c.disconnect()
    w.wait("clients/connected", equals(2))
    w.wait("clients/maximum", at_least(4))


def test_sys_clients_total_includes_disconnected_persistent_sessions(broker):
    """clients/total counts connected clients plus disconnected clients with a persistent
    session; clients/disconnected counts the latter."""
    w = SysWatcher(broker.port, ["clients/connected", "clients/total", "clients/disconnected"])
    w.wait("clients/total", equals(1))
    p = connected(broker.port, client_id=uid("keep"), clean_session=False)
    w.wait("clients/connected", equals(2))
    p.disconnect()
    w.wait("clients/connected", equals(1))
    w.wait("clients/total", equals(2))
    w.wait("clients/disconnected", equals(1))


def test_sys_subscriptions_count_changes(broker):
    """subscriptions/count follows SUBSCRIBE and UNSUBSCRIBE (the watcher's own included)."""
    w = SysWatcher(broker.port, ["subscriptions/count"])
    base = int(w.wait("subscriptions/count", at_least(1)))
    c = connected(broker.port)
    c.subscribe([("sc/a", 0), ("sc/b", 1), ("sc/+/c", 2)])
    w.wait("subscriptions/count", equals(base + 3))
    c.unsubscribe("sc/b")
    w.wait("subscriptions/count", equals(base + 2))
    c.disconnect()  # clean session: its subscriptions go away
    w.wait("subscriptions/count", equals(base))


def test_sys_publish_and_byte_counters_increase(broker):
    """publish/messages/received|sent and bytes/received|sent grow with traffic."""
    topics = ["publish/messages/received", "publish/messages/sent", "bytes/received",
              "bytes/sent", "messages/received", "messages/sent"]
    w = SysWatcher(broker.port, topics)
    before = {t: int(w.value(t)) for t in topics}
    sub = connected(broker.port)
    sub.subscribe("cnt/t", 1)
    pub = connected(broker.port)
    for i in range(10):
        pub.publish("cnt/t", b"x" * 100, qos=1)
    sub.get_n(10)
    w.wait("publish/messages/received", at_least(before["publish/messages/received"] + 10))
    w.wait("publish/messages/sent", at_least(before["publish/messages/sent"] + 10))
    w.wait("bytes/received", at_least(before["bytes/received"] + 1000))
    w.wait("bytes/sent", at_least(before["bytes/sent"] + 1000))
    w.wait("messages/received", at_least(before["messages/received"] + 10))
    w.wait("messages/sent", at_least(before["messages/sent"] + 10))


def test_sys_retained_messages_count(broker):
    """\"retained messages/count\" follows storing and deleting retained messages."""
    w = SysWatcher(broker.port, ["retained messages/count"])
    w.settle()  # $SYS messages are retained too
    base = int(w.value("retained messages/count"))
    pub = connected(broker.port)
    for t in ["rc/a", "rc/b", "rc/c"]:
        pub.publish(t, b"r", qos=1, retain=True)
    w.wait("retained messages/count", equals(base + 3))
    pub.publish("rc/a", b"", qos=1, retain=True)
    w.wait("retained messages/count", equals(base + 2))


def test_sys_load_messages_received_1min_becomes_positive(broker):
    """load/messages/received/1min is a decimal rate that rises above 0 with traffic."""
    w = SysWatcher(broker.port, ["load/messages/received/1min"])
    pub = connected(broker.port)
    for _ in range(30):
        pub.publish("load/t", b"x", qos=1)
    v = w.wait("load/messages/received/1min", lambda v: float(v) > 0)
    assert re.fullmatch(r"\d+(\.\d+)?", v), v
