"""Bridges to an upstream broker: Debian's real mosquitto, started by the test, is the upstream.

Messages both ways with prefixes and QoS (MQTT 3.1.1 and 5 bridges); the outage test (stop the
upstream, publish 1000 QoS 1 messages, start it again: all 1000 arrive upstream, in order);
the queue bound and the drop counts; two gatemq gateways exchanging messages through one
upstream without loops; a restart of gatemq (kill -9) with persistence keeping the queue;
notifications; failover between addresses, a host name, TLS, and a gatemq upstream (the
bridge mark it does not take).
"""
import signal
import socket
import subprocess
import time

import pytest

from clients import (HOST, Client, RawClient, ack_packet, packet, publish_packet,
                     subscribe_packet, uid)
from conftest import Broker, free_port
from test_tls import pki  # noqa: F401  (the certificates fixture)


class Upstream:
    """mosquitto on a fixed loopback port, so it can be stopped and started again; with
    persistence, so its subscribers' sessions outlive a restart."""

    def __init__(self, tmp_path, lines=()):
        self.port = free_port()
        self.dir = tmp_path / f"upstream-{self.port}"
        self.dir.mkdir()
        self.conf = self.dir / "mosquitto.conf"
        # `user root`: as root, mosquitto would switch to its own user, which cannot write here.
        self.conf.write_text(
            f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.dir}/\nmax_queued_messages 100000\n"
            + "".join(l + "\n" for l in lines))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return self
            except OSError:
                assert self.proc.poll() is None, f"mosquitto exited with {self.proc.returncode}"
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto writes its persistence file
            self.proc.wait(10)


@pytest.fixture
def upstream(tmp_path):
    made = []

    def make(lines=()):
        u = Upstream(tmp_path, lines).start()
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()


@pytest.fixture
def gateway(tmp_path):
    """Factory: gateway(upstream port, topic lines, extra lines) -> a started gatemq bridged to
    it (not waiting for the link)."""
    started = []

    def make(port, topics, extra=(), name="up", address=None):
        lines = [f"connection {name}", f"address {address or f'127.0.0.1:{port}'}",
                 "restart_timeout 1", *topics, *extra]
        b = Broker(tmp_path, lines).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


def wait_log(broker, text, count=1, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.log().count(text) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {text!r} (x{count}) in the log within {timeout}s:\n{broker.log()[-3000:]}")


def wait_up(broker, name="up", count=1):
    wait_log(broker, f"Bridge {name} connected to", count)


def client(port, **kw):
    c = Client(port, **kw)
    c.connect()
    return c


def sys_value(port, topic):
    """A retained `$SYS` value of a broker, read by a fresh subscriber."""
    c = client(port)
    c.subscribe(topic, 0)
    try:
        return c.get().payload.decode()
    finally:
        c.disconnect()


@pytest.mark.parametrize("version", ["mqttv311", "mqttv50"])
def test_messages_both_ways_with_prefixes_and_qos(upstream, gateway, version):
    up = upstream()
    gw = gateway(up.port, ['topic sensors/# out 1 "" site1/', 'topic cmd/# in 2 "" site1/',
                           'topic status/# out 0 "" site1/'],
                 [f"bridge_protocol_version {version}"])
    wait_up(gw)
    remote = client(up.port)
    remote.subscribe("site1/#", 2)
    local = client(gw.port)
    local.subscribe("cmd/#", 2)
    time.sleep(0.2)  # the bridge's upstream SUBSCRIBE follows its CONNACK

    pub = client(gw.port)
    pub.publish("sensors/t1", b"21.5", qos=1)
    m = remote.get()
    assert (m.topic, m.payload, m.qos) == ("site1/sensors/t1", b"21.5", 1)
    # The topic line's QoS caps what goes up.
    pub.publish("status/t1", b"ok", qos=2)
    m = remote.get()
    assert (m.topic, m.payload, m.qos) == ("site1/status/t1", b"ok", 0)

    remote.publish("site1/cmd/lamp", b"on", qos=2)
    assert remote.get().topic == "site1/cmd/lamp"  # its own subscription
    m = local.get()
    assert (m.topic, m.payload, m.qos) == ("cmd/lamp", b"on", 2)

    # Not in the bridge's topics (or not in their direction): nothing crosses.
    remote.publish("site1/sensors/t2", b"from upstream", qos=1)
    assert remote.get().topic == "site1/sensors/t2"
    pub.publish("cmd/local-only", b"x", qos=1)
    assert local.get().topic == "cmd/local-only"
    remote.assert_no_message(0.5)
    local.assert_no_message(0.2)

    # A retained message keeps its flag on the way up (bridge_outgoing_retain true).
    pub.publish("sensors/kept", b"r", qos=1, retain=True)
    assert remote.get().topic == "site1/sensors/kept"
    late = client(up.port)
    late.subscribe("site1/sensors/kept", 1)
    m = late.get()
    assert (m.payload, m.retain) == (b"r", True)
    for c in (remote, local, pub, late):
        c.disconnect()


def test_outage_1000_qos1_messages_arrive_in_order(upstream, gateway):
    up = upstream()
    gw = gateway(up.port, ['topic data/# out 1 "" site1/'],
                 ["max_queued_messages 5000", "sys_interval 1"])
    wait_up(gw)
    # A persistent subscriber upstream: its session survives the upstream's restart.
    sub_id = uid("cloud")
    remote = client(up.port, client_id=sub_id, clean_session=False)
    remote.subscribe("site1/data/#", 1)
    remote.disconnect()

    up.stop()
    wait_log(gw, "Bridge up is down")
    pub = client(gw.port)
    n = 1000
    for i in range(n):
        pub.publish("data/seq", str(i).encode(), qos=1, wait=False)
    pub.publish("data/last", b"", qos=1)  # acknowledged after every one before it
    # Held for upstream: every message, nothing dropped.
    deadline = time.monotonic() + 5
    while sys_value(gw.port, "$SYS/broker/connection/+/queued") != str(n + 1):
        assert time.monotonic() < deadline, "the bridge queue never held every message"
        time.sleep(0.2)
    assert sys_value(gw.port, "$SYS/broker/connection/+/dropped") == "0"

    started = time.monotonic()
    up.start()
    remote = client(up.port, client_id=sub_id, clean_session=False)
    got = remote.collect_until("site1/data/last", timeout=30)
    drained = time.monotonic() - started
    seqs = [int(m.payload) for m in got]
    # QoS 1 allows a resend; without duplicates the sequence is exactly 0..n-1.
    unique = list(dict.fromkeys(seqs))
    assert unique == list(range(n)), f"{len(unique)} of {n} arrived, first gap near " \
        f"{next((i for i, s in enumerate(unique) if s != i), None)}"
    print(f"\n  bridge outage: {n} QoS 1 messages queued, delivered upstream "
          f"{drained:.2f} s after the upstream started ({len(seqs) - n} duplicates)")
    remote.disconnect()
    pub.disconnect()


def test_queue_bound_and_qos0_while_down_are_dropped_and_counted(upstream, gateway):
    up = upstream()
    gw = gateway(up.port, ['topic data/# out 1'], ["max_queued_messages 100", "sys_interval 1"])
    wait_up(gw)
    sub_id = uid("cloud")
    remote = client(up.port, client_id=sub_id, clean_session=False)
    remote.subscribe("data/#", 1)
    remote.disconnect()
    up.stop()
    wait_log(gw, "Bridge up is down")
    pub = client(gw.port)
    for i in range(150):
        pub.publish("data/q1", str(i).encode(), qos=1, wait=False)
    for i in range(20):
        pub.publish("data/q0", str(i).encode(), qos=0, wait=False)
    pub.publish("data/sync", b"", qos=1)  # every publish above has been handled
    deadline = time.monotonic() + 5
    while sys_value(gw.port, "$SYS/broker/connection/+/dropped") != "71":
        assert time.monotonic() < deadline, "dropped count never reached 50 + 20 + 1"
        time.sleep(0.2)
    assert sys_value(gw.port, "$SYS/broker/connection/+/queued") == "100"
    up.start()
    remote = client(up.port, client_id=sub_id, clean_session=False)
    got = remote.get_n(100, timeout=15)
    assert [int(m.payload) for m in got] == list(range(100))
    remote.assert_no_message(0.5)
    remote.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", ["mqttv311", "mqttv50"])
def test_two_gateways_exchange_through_upstream_without_loops(upstream, gateway, version):
    up = upstream()
    proto = [f"bridge_protocol_version {version}"]
    a = gateway(up.port, ["topic shared/# both 1"], proto + ["remote_clientid gw-a"])
    b = gateway(up.port, ["topic shared/# both 1"], proto + ["remote_clientid gw-b"])
    wait_up(a)
    wait_up(b)
    time.sleep(0.3)
    subs = {name: client(port) for name, port in (("a", a.port), ("b", b.port), ("up", up.port))}
    for c in subs.values():
        c.subscribe("shared/#", 1)
    pa, pb = client(a.port), client(b.port)
    for i in range(5):
        pa.publish("shared/from-a", f"a{i}".encode(), qos=1)
        pb.publish("shared/from-b", f"b{i}".encode(), qos=1)
    for name, c in subs.items():
        got = sorted(m.payload.decode() for m in c.get_n(10))
        assert got == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]), name
    # A loop would bring each message back again and again.
    for c in subs.values():
        c.assert_no_message(1.0)
    for c in [*subs.values(), pa, pb]:
        c.disconnect()


def test_restart_with_persistence_keeps_the_queue(upstream, gateway, tmp_path):
    up = upstream()
    store = tmp_path / "gw-store"
    store.mkdir()
    gw = gateway(up.port, ['topic data/# out 1'],
                 ["persistence true", f"persistence_location {store}"])
    wait_up(gw)
    sub_id = uid("cloud")
    remote = client(up.port, client_id=sub_id, clean_session=False)
    remote.subscribe("data/#", 1)
    remote.disconnect()
    up.stop()
    wait_log(gw, "Bridge up is down")
    pub = client(gw.port)
    for i in range(300):
        pub.publish("data/seq", str(i).encode(), qos=1, wait=False)
    pub.publish("data/last", b"", qos=1)
    pub.disconnect()
    gw.stop(signal.SIGKILL)  # acknowledged means journaled: nothing may be lost
    gw.start()
    up.start()
    wait_up(gw)
    remote = client(up.port, client_id=sub_id, clean_session=False)
    got = remote.collect_until("data/last", timeout=15)
    assert list(dict.fromkeys(int(m.payload) for m in got)) == list(range(300))
    remote.disconnect()


def test_notifications_here_and_upstream(upstream, gateway):
    # No persistence upstream: after its restart, a "1" can only be the bridge's new one.
    up = upstream(["persistence false"])
    watcher = client(up.port)
    watcher.subscribe("$SYS/broker/connection/+/state", 1)
    gw = gateway(up.port, ["topic x/# out 1"], ["remote_clientid site1"])
    wait_up(gw)
    m = watcher.get()
    assert (m.topic, m.payload) == ("$SYS/broker/connection/site1/state", b"1")
    local = client(gw.port)
    local.subscribe("$SYS/broker/connection/site1/state", 1)
    assert local.get().payload == b"1"
    up.stop()
    assert local.get().payload == b"0"
    local.disconnect()
    up.start()
    wait_up(gw, count=2)
    watcher = client(up.port)
    watcher.subscribe("$SYS/broker/connection/+/state", 1)
    assert watcher.get().payload == b"1"
    # The gateway dies: upstream publishes its will.
    gw.stop(signal.SIGKILL)
    m = watcher.get(timeout=10)
    assert (m.topic, m.payload) == ("$SYS/broker/connection/site1/state", b"0")
    watcher.disconnect()


def test_failover_to_the_next_address_and_host_names(upstream, gateway):
    up = upstream()
    dead = free_port()
    gw = gateway(up.port, ["topic x/# out 1"], address=f"127.0.0.1:{dead} localhost:{up.port}")
    wait_log(gw, f"Bridge up: connecting to 127.0.0.1:{dead}")
    wait_up(gw)
    assert f"connected to 127.0.0.1:{up.port}" in gw.log()
    remote = client(up.port)
    remote.subscribe("x/#", 1)
    time.sleep(0.1)
    pub = client(gw.port)
    pub.publish("x/1", b"via failover", qos=1)
    assert remote.get().payload == b"via failover"
    remote.disconnect()
    pub.disconnect()


def test_tls_bridge(upstream, gateway, pki):  # noqa: F811
    up = upstream([f"cafile {pki}/ca.crt", f"certfile {pki}/server.crt",
                   f"keyfile {pki}/server.key"])
    gw = gateway(up.port, ["topic x/# both 1"], [f"bridge_cafile {pki}/ca.crt"],
                 address=f"localhost:{up.port}")
    wait_up(gw)
    remote = client(up.port, tls=tls_context(pki))
    remote.subscribe("x/#", 1)
    pub = client(gw.port)
    pub.publish("x/over-tls", b"sealed", qos=1)
    assert remote.get().payload == b"sealed"
    remote.disconnect()
    pub.disconnect()
    wrong = gateway(up.port, ["topic x/# both 1"], [f"bridge_cafile {pki}/other-ca.crt"],
                    name="wrong-ca")
    wait_log(wrong, "UnknownIssuer")
    assert "Bridge wrong-ca connected" not in wrong.log()


def tls_context(pki):
    import ssl
    return ssl.create_default_context(cafile=str(pki / "ca.crt"))


def test_tls_bridge_checks_the_name_unless_insecure(upstream, gateway, pki, tmp_path):  # noqa: F811
    """An upstream certificate from the right CA for another name: refused, and taken with
    bridge_insecure true."""
    d = tmp_path
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", *ec, "-keyout", "other.key", "-out", "other.csr", "-subj", "/CN=other")
    (d / "other.ext").write_text("subjectAltName=DNS:other.invalid\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "other.csr", "-CA", str(pki / "ca.crt"), "-CAkey",
            str(pki / "ca.key"), "-CAcreateserial", "-out", "other.crt", "-days", "2",
            "-extfile", "other.ext")
    up = upstream([f"certfile {d}/other.crt", f"keyfile {d}/other.key"])
    strict = gateway(up.port, ["topic x/# out 1"], [f"bridge_cafile {pki}/ca.crt"], name="strict")
    wait_log(strict, "certificate not valid for name")
    loose = gateway(up.port, ["topic x/# out 1"],
                    [f"bridge_cafile {pki}/ca.crt", "bridge_insecure true"], name="loose")
    wait_up(loose, "loose")
    assert "Bridge strict connected" not in strict.log()


def test_gatemq_upstream_takes_the_bridge_mark(make_broker, gateway):
    """gatemq as the upstream: it takes Mosquitto's bridge mark (try_private), so what the
    gateway sends up is not echoed back down the 3.1.1 bridge."""
    up = make_broker()
    gw = gateway(up.port, ["topic shared/# both 1"])
    wait_up(gw)
    wait_log(up, "New bridge connected")
    local, remote = client(gw.port), client(up.port)
    local.subscribe("shared/#", 1)
    remote.subscribe("shared/#", 1)
    time.sleep(0.2)
    remote.publish("shared/down", b"1", qos=1)
    assert local.get().payload == b"1"
    assert remote.get().payload == b"1"
    local.publish("shared/up", b"2", qos=1)
    assert local.get().payload == b"2"
    assert remote.get().payload == b"2"
    local.assert_no_message(0.5)
    remote.assert_no_message(0.2)
    local.disconnect()
    remote.disconnect()


def test_silent_upstream_is_detected_by_keepalive(upstream, gateway):
    up = upstream()
    gw = gateway(up.port, ["topic x/# out 1"], ["keepalive_interval 1"])
    wait_up(gw)
    up.proc.send_signal(signal.SIGSTOP)  # the socket stays open; nothing answers
    try:
        wait_log(gw, "timed out", timeout=5)
        wait_log(gw, "Bridge up is down")
    finally:
        up.proc.send_signal(signal.SIGCONT)
    wait_up(gw, count=2)


def test_reload_keeps_the_bridge_link(upstream, gateway):
    up = upstream()
    gw = gateway(up.port, ["topic x/# out 1"])
    wait_up(gw)
    remote = client(up.port)
    remote.subscribe("x/#", 1)
    gw.proc.send_signal(signal.SIGHUP)
    wait_log(gw, "configuration reloaded")
    pub = client(gw.port)
    pub.publish("x/after-reload", b"1", qos=1)
    assert remote.get().topic == "x/after-reload"
    assert gw.log().count("Bridge up connected to") == 1
    remote.disconnect()
    pub.disconnect()


def test_upstream_maximum_qos_caps_what_is_sent(upstream, gateway):
    """An MQTT 5 upstream with max_qos 1: the bridge's QoS 2 topic goes up at QoS 1 instead of
    getting the link closed."""
    up = upstream(["max_qos 1"])
    gw = gateway(up.port, ["topic x/# out 2"], ["bridge_protocol_version mqttv50"])
    wait_up(gw)
    remote = client(up.port)
    remote.subscribe("x/#", 1)
    pub = client(gw.port)
    for i in range(3):
        pub.publish("x/q2", str(i).encode(), qos=2)
    got = remote.get_n(3)
    assert [(m.payload, m.qos) for m in got] == [(b"0", 1), (b"1", 1), (b"2", 1)]
    assert gw.log().count("Bridge up connected to") == 1
    remote.disconnect()
    pub.disconnect()


def test_a_client_cannot_take_the_bridge_session(upstream, gateway):
    """The bridge's local client id belongs to the bridge: a client using it is refused (it
    would take the queue for upstream, and end the session the bridge needs)."""
    up = upstream()
    gw = gateway(up.port, ["topic x/# out 1"], ["local_clientid bridge-session"])
    wait_up(gw)
    for clean in (True, False):
        c = Client(gw.port, client_id="bridge-session", clean_session=clean)
        assert c.connect(expect_ok=False)[0] in (2, 0x85)  # identifier rejected
        c.disconnect()
    up.stop()
    wait_log(gw, "Bridge up is down")
    up.start()
    wait_up(gw, count=2)
    remote = client(up.port)
    remote.subscribe("x/#", 1)
    pub = client(gw.port)
    pub.publish("x/still", b"mine", qos=1)
    assert remote.get().payload == b"mine"
    assert gw.alive()
    remote.disconnect()
    pub.disconnect()


def test_upstream_qos_and_retain_above_local_limits_do_not_break_the_link(upstream, gateway):
    up = upstream()
    remote = client(up.port)
    # Retained upstream: sent to the bridge, retained, at QoS 2, whenever it subscribes.
    remote.publish("cmd/kept", b"r", qos=2, retain=True)
    gw = gateway(up.port, ['topic cmd/# in 2'], ["max_qos 1", "retain_available false"])
    wait_up(gw)
    local = client(gw.port)
    local.subscribe("cmd/#", 1)
    time.sleep(0.2)
    remote.publish("cmd/live", b"q2", qos=2)
    # (The retained one may come first, live, if it reached the gateway after this subscribe.)
    msgs = []
    while not any(m.topic == "cmd/live" for m in msgs):
        msgs.append(local.get())
    assert all(m.qos <= 1 and not m.retain for m in msgs), msgs
    assert (msgs[-1].payload, msgs[-1].qos) == (b"q2", 1)
    time.sleep(0.5)
    assert gw.log().count("Bridge up connected to") == 1, "the link flapped"
    local.disconnect()
    remote.disconnect()


def test_upstream_maximum_packet_size_counts_the_remote_prefix(upstream, gateway):
    """A message that fits here but not upstream once the remote prefix is added is dropped
    and counted; it does not take an in-flight slot for ever."""
    up = upstream(["max_packet_size 200"])
    prefix = "a-long-remote-prefix/" * 4
    gw = gateway(up.port, [f'topic x/# out 1 "" {prefix}'],
                 ["bridge_protocol_version mqttv50", "max_inflight_messages 1", "sys_interval 1"])
    wait_up(gw)
    remote = client(up.port)
    remote.subscribe(f"{prefix}x/#", 1)
    pub = client(gw.port)
    pub.publish("x/big", b"b" * 150, qos=1)  # 150 + the prefixed topic > 200
    for i in range(3):
        pub.publish("x/small", str(i).encode(), qos=1)
    assert [m.payload for m in remote.get_n(3)] == [b"0", b"1", b"2"]
    remote.disconnect()
    pub.disconnect()


def test_a_paused_bridge_is_not_taken_for_dead(upstream, gateway):
    """A local subscriber that does not acknowledge fills its queue, and reading from the
    bridge pauses (QoS 1 backpressure): the PINGRESP waits unread, and that is no reason to
    drop a healthy link."""
    up = upstream()
    gw = gateway(up.port, ["topic cmd/# in 1"], ["max_queued_messages 5", "keepalive_interval 2"])
    wait_up(gw)
    slow = RawClient(gw.port)
    slow.connect(client_id="slow")
    slow.send(subscribe_packet(1, "cmd/#", 1))
    assert slow.read_packet()[0] == 0x90
    remote = client(up.port)
    for i in range(50):
        remote.publish("cmd/x", str(i).encode(), qos=1, wait=False)
    remote.publish("cmd/last", b"", qos=1)
    time.sleep(7)  # more than three keep-alive intervals
    assert "timed out" not in gw.log()
    assert gw.log().count("Bridge up connected to") == 1
    # The subscriber catches up: everything arrives.
    got = []
    while len(got) < 51:
        p = slow.read_packet(timeout=10)
        if p[0] & 0xF0 == 0x30:
            mid = p[4 + p[3]: 6 + p[3]]
            slow.send(ack_packet(0x40, int.from_bytes(mid, "big")))
            got.append(p)
    slow.close()
    remote.disconnect()


def fake_upstream():
    """A listening loopback socket standing in for an upstream broker: (socket, port)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, 0))
    srv.listen(4)
    return srv, srv.getsockname()[1]


def fake_upstream_link(srv, connack):
    """Accept the gateway's bridge connection on `srv`, take its CONNECT, answer `connack`."""
    srv.settimeout(15)
    conn, _ = srv.accept()
    raw = RawClient.__new__(RawClient)
    raw.sock, raw.buf = conn, b""
    assert raw.read_packet()[0] == 0x10
    raw.send(connack)
    return raw


def test_qos2_ids_from_a_previous_upstream_session_are_forgotten(gateway, make_broker):
    """A fake upstream sends QoS 2 id 1, drops the link before PUBREL, then (no session
    present) sends a new QoS 2 message with id 1 again: it is a new message, delivered."""
    srv, port = fake_upstream()
    gw = gateway(port, ["topic cmd/# in 2"], ["notifications false", "try_private false"])
    local = client(gw.port)
    local.subscribe("cmd/#", 2)

    def accept_link():
        raw = fake_upstream_link(srv, b"\x20\x02\x00\x00")  # CONNACK, no session present
        assert raw.read_packet()[0] == 0x82  # SUBSCRIBE
        return raw

    link = accept_link()
    link.send(publish_packet("cmd/a", b"first", qos=2, mid=1))
    assert link.read_packet() == ack_packet(0x50, 1)  # PUBREC
    assert local.get().payload == b"first"
    link.close()
    link = accept_link()
    link.send(publish_packet("cmd/a", b"second", qos=2, mid=1))
    assert link.read_packet() == ack_packet(0x50, 1)
    link.send(ack_packet(0x62, 1))
    assert local.get().payload == b"second"
    link.close()
    srv.close()
    local.disconnect()


def test_hung_upstream_is_detected_while_output_waits(upstream, gateway):
    """A stopped upstream stops reading: the bridge's output fills, and a link whose PINGREQ
    is unanswered and whose output does not move is dead (a full buffer is no excuse)."""
    up = upstream()
    gw = gateway(up.port, ["topic x/# out 0"], ["keepalive_interval 1"])
    wait_up(gw)
    up.proc.send_signal(signal.SIGSTOP)
    try:
        pub = client(gw.port)
        for _ in range(60):
            pub.publish("x/big", b"b" * 600_000, qos=0)
        wait_log(gw, "Bridge up is down", timeout=20)
        pub.disconnect()
    finally:
        up.proc.send_signal(signal.SIGCONT)
    wait_up(gw, count=2)


def test_resent_message_keeps_to_the_upstream_maximum_qos(gateway, tmp_path):
    """A QoS 2 message sent at QoS 1 to an MQTT 5 upstream with Maximum QoS 1 and not yet
    acknowledged is resent at QoS 1 after a gateway restart (kill -9), not at QoS 2."""
    srv, port = fake_upstream()
    store = tmp_path / "gw-store"
    store.mkdir()
    gw = gateway(port, ["topic x/# out 2"], ["bridge_protocol_version mqttv50",
                                             "notifications false", "persistence true",
                                             f"persistence_location {store}"])
    pub = client(gw.port)
    pub.publish("x/a", b"held", qos=2)  # queued: the link is not up yet
    max_qos_1 = lambda present: bytes([0x20, 5, present, 0, 2, 0x24, 1])  # noqa: E731
    link = fake_upstream_link(srv, max_qos_1(0))
    p = link.read_packet()
    assert p[0] == 0x32, f"first send {p[0]:#x}"  # QoS 1, no DUP
    pub.disconnect()
    gw.stop(signal.SIGKILL)
    link.close()
    gw.start()
    link = fake_upstream_link(srv, max_qos_1(1))
    p = link.read_packet()
    assert p[0] == 0x3A, f"resend {p[0]:#x}"  # DUP, QoS 1
    link.close()
    srv.close()
