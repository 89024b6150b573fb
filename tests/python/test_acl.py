"""Mosquitto's ACL file, differentially: one ACL file and one password file are loaded into
Debian's mosquitto and into gatemq, and a table of (user, client id, topic, read/write) cases
must get the same allow/deny from both (observed with real clients: is a published message
delivered?). Both must also agree with the table written here."""
import queue
import subprocess
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"

ACL = """\
# anonymous clients
topic read pub/#
topic write anon/in

user alice
topic read a/#
topic write b/#
topic readwrite c/+/x
topic deny c/secret/x

user bob
topic readwrite b/#
topic deny b/private

user admin
topic readwrite #

pattern readwrite dev/%u/#
pattern read cl/%c/#
pattern readwrite done/%c
"""

USERS = {"alice": "a-pass", "bob": "b-pass", "admin": "adm"}

# (user or None, client id, topic, expected allowed)
WRITES = [
    ("alice", "alice-c", "b/x", True), ("alice", "alice-c", "a/x", False),
    ("alice", "alice-c", "c/open/x", True), ("alice", "alice-c", "c/secret/x", False),
    ("alice", "alice-c", "dev/alice/t", True), ("alice", "alice-c", "dev/bob/t", False),
    ("bob", "bob-c", "b/x", True), ("bob", "bob-c", "b/private", False),
    (None, "anon-c", "anon/in", True), (None, "anon-c", "pub/x", False),
    (None, "anon-c", "dev/anon/t", False),
]
READS = [
    ("alice", "alice-c", "a/x", True), ("alice", "alice-c", "b/x", False),
    ("alice", "alice-c", "c/open/x", True), ("alice", "alice-c", "c/secret/x", False),
    ("alice", "alice-c", "dev/alice/t", True), ("alice", "alice-c", "cl/alice-c/t", True),
    ("alice", "alice-c", "pub/x", False), ("alice", "alice-c", "cl/bob-c/t", False),
    ("bob", "bob-c", "b/x", True), ("bob", "bob-c", "b/private", False),
    (None, "anon-c", "pub/x", True), (None, "anon-c", "cl/anon-c/t", True),
    (None, "anon-c", "dev/anon/t", False), (None, "anon-c", "a/x", False),
]


class Client:
    def __init__(self, port, user, client_id):
        self.q = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if user:
            self.c.username_pw_set(user, USERS[user])
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, m.payload.decode()))
        connected = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p=None: connected.put(rc)
        self.c.connect(HOST, port)
        self.c.loop_start()
        assert connected.get(timeout=5) == 0

    def subscribe(self, *filters):
        done = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rcs, p=None: done.put(rcs)
        self.c.subscribe([(f, 1) for f in filters])
        done.get(timeout=5)

    def publish(self, topic, payload):
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def until(self, marker_topic, timeout=5):
        """Messages before the one on marker_topic."""
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                t, p = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            if t == marker_topic:
                return got
            got.append((t, p))
        raise AssertionError(f"no marker on {marker_topic}; got {got}")

    def close(self):
        # Disconnect first: it wakes paho's loop, so loop_stop need not wait out its select.
        self.c.disconnect()
        self.c.loop_stop()


def outcomes(port):
    """Run the table against a broker on `port`: {case: allowed}."""
    result = {}
    admin = Client(port, "admin", f"admin-{uuid.uuid4().hex[:6]}")
    admin.subscribe("#")
    for user, cid, topic, _ in WRITES:
        w = Client(port, user, cid)
        payload = uuid.uuid4().hex
        w.publish(topic, payload)
        w.publish(f"done/{cid}", "marker")
        got = admin.until(f"done/{cid}")
        result[("write", user, cid, topic)] = (topic, payload) in got
        w.close()
    by_reader = {}
    for user, cid, topic, _ in READS:
        by_reader.setdefault((user, cid), []).append(topic)
    for (user, cid), topics in by_reader.items():
        for wildcard in (False, True):
            r = Client(port, user, cid)
            if wildcard:
                r.subscribe("#", f"done/{cid}")
            else:
                r.subscribe(*topics, f"done/{cid}")
            for t in topics:
                admin.publish(t, t)
            admin.publish(f"done/{cid}", "marker")
            got = {t for t, _ in r.until(f"done/{cid}")}
            for t in topics:
                result[("read-#" if wildcard else "read", user, cid, t)] = t in got
            r.close()
    admin.close()
    return result


def expected():
    e = {("write", u, c, t): ok for u, c, t, ok in WRITES}
    for u, c, t, ok in READS:
        e[("read", u, c, t)] = ok
        e[("read-#", u, c, t)] = ok
    return e


@pytest.fixture
def files(tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "alice", USERS["alice"]], check=True)
    for u in ("bob", "admin"):
        subprocess.run(["mosquitto_passwd", "-b", str(pw), u, USERS[u]], check=True)
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return pw, acl


def test_gatemq_and_mosquitto_agree_on_every_acl_case(make_broker, mosquitto, files):
    pw, acl = files
    port = mosquitto(["allow_anonymous true", f"password_file {pw}", f"acl_file {acl}"])
    theirs = outcomes(port)
    g = make_broker([f"password_file {pw}", f"acl_file {acl}", "allow_anonymous true"])
    ours = outcomes(g.port)
    differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert differ == {}, f"gatemq vs mosquitto: {differ}"
    wrong = {k: v for k, v in ours.items() if v != expected()[k]}
    assert wrong == {}, f"both differ from the table: {wrong}"


def test_denied_subscribe_and_publish_get_reason_codes(make_broker, files):
    """3.1.1: a denied subscription gets SUBACK 0x80 (not a silent grant); MQTT 5: SUBACK 0x87
    and PUBACK 0x87 for a denied publish. Denied commands to device topics are never run."""
    pw, acl = files
    g = make_broker([f"password_file {pw}", f"acl_file {acl}", "allow_anonymous true"])
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alice-c", protocol=mqtt.MQTTv5)
    c.username_pw_set("alice", USERS["alice"])
    got = queue.Queue()
    c.on_connect = lambda cl, u, f, rc, p: got.put(("connack", rc.value))
    c.on_subscribe = lambda cl, u, mid, rcs, p: got.put(("suback", [r.value for r in rcs]))
    c.on_publish = lambda cl, u, mid, rc, p: got.put(("puback", rc.value))
    c.connect(HOST, g.port)
    c.loop_start()
    try:
        assert got.get(timeout=5) == ("connack", 0)
        c.subscribe([("a/#", 1), ("b/#", 1), ("z", 0)])
        assert got.get(timeout=5) == ("suback", [1, 0x87, 0x87])
        c.publish("b/x", "ok", qos=1)
        assert got.get(timeout=5) == ("puback", 0x10)  # allowed; nobody subscribed
        c.publish("a/x", "no", qos=1)
        assert got.get(timeout=5) == ("puback", 0x87)
    finally:
        c.disconnect()
        c.loop_stop()
    # 3.1.1: SUBACK 0x80 for the denied filter, the allowed one granted.
    v3 = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alice-c")
    v3.username_pw_set("alice", USERS["alice"])
    v3.on_subscribe = lambda cl, u, mid, rcs, p: got.put(("suback", [r.value for r in rcs]))
    v3.connect(HOST, g.port)
    v3.loop_start()
    try:
        v3.subscribe([("a/#", 1), ("b/#", 1)])
        assert got.get(timeout=5) == ("suback", [1, 0x80])
    finally:
        v3.disconnect()
        v3.loop_stop()
