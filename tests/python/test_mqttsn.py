"""MQTT-SN 1.2 with raw UDP datagrams, for what the mqtt-sn-12 client does not do: QoS -1,
sleeping clients, the will dialogue, forwarder encapsulation, malformed and duplicate
datagrams, loss and retransmission, REGISTER both ways, short and predefined topics,
persistence, the ACL, limits. Against the real binary on loopback, beside MQTT clients."""
import re
import signal
import socket
import struct
import time
import urllib.request

import pytest

from clients import SN, Client, SnClient, connected, mosquitto_pub, sn_flags, sn_msg, sn_parse

SECTION = ["mqttsn_topic 1 sensors/hall/motion", "mqttsn_topic 2 devices/lamp/power/set",
           "mqttsn_retry_interval 1", "mqttsn_retry_count 2"]
HTTP_RE = re.compile(r"HTTP \(status page, /metrics\) on 127\.0\.0\.1:(\d+)")


@pytest.fixture
def sn(sn_broker):
    """A broker with an MQTT-SN listener (SECTION) and $SYS every second."""
    return sn_broker(SECTION, ["sys_interval 1"])


@pytest.fixture
def sn_clients():
    made = []

    def make(port, **kw):
        c = SnClient(port, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def sys_value(port, topic, timeout=5):
    c = connected(port)
    c.subscribe(topic, 0)
    m = c.get(timeout=timeout)
    c.disconnect()
    return m.payload.decode()


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def metrics(b):
    port = int(HTTP_RE.search(b.log()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_qos_minus_one_publishes_without_connecting(sn, sn_clients):
    sub = connected(sn.port)
    sub.subscribe("#", 0)
    c = sn_clients(sn.sn_port)
    c.publish(1, b"motion", qos=-1, topic_type=SN.PREDEFINED)
    c.publish(int.from_bytes(b"pt", "big"), b"short", qos=-1, topic_type=SN.SHORT)
    # A normal topic id means nothing without a connection: dropped, counted.
    c.publish(1, b"lost", qos=-1, topic_type=SN.NORMAL)
    got = [(m.topic, m.payload) for m in sub.get_n(2)]
    assert got == [("sensors/hall/motion", b"motion"), ("pt", b"short")]
    sub.assert_no_message(0.3)
    c.nothing()
    assert wait_for(lambda: sys_value(sn.port, "$SYS/broker/mqttsn/publish/qos-1") == "2")


def test_register_both_ways_short_predefined_and_wildcards(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    c.connect("sn-reg")
    # REGISTER from the client: the same name gets the same id.
    tid = c.register("sensors/kitchen/temp")
    assert c.register("sensors/kitchen/temp") == tid
    sub = connected(sn.port)
    sub.subscribe("sensors/#", 1)
    c.publish(tid, b"21.5", qos=1)
    ack = c.expect(SN.PUBACK)
    assert (ack.u16(0), ack.body[4]) == (tid, SN.ACCEPTED)
    assert sub.get().payload == b"21.5"
    # Subscriptions: a wildcard, a predefined id, a short name.
    assert c.subscribe("alerts/#", qos=1).body[5] == SN.ACCEPTED
    m = c.subscribe(2, topic_type=SN.PREDEFINED)
    assert (m.u16(1), m.body[5]) == (2, SN.ACCEPTED)
    assert c.subscribe(int.from_bytes(b"xy", "big"), topic_type=SN.SHORT).body[5] == SN.ACCEPTED
    # An unknown predefined id is refused.
    bad = c.subscribe(99, topic_type=SN.PREDEFINED)
    assert bad.body[5] == SN.INVALID_TOPIC_ID
    # REGISTER from the gateway for a topic the client has no id for, before its PUBLISH.
    mosquitto_pub(sn.port, "-t", "alerts/smoke/kitchen", "-m", "SMOKE", "-q", "1")
    reg = c.expect(SN.REGISTER)
    assert reg.body[4:] == b"alerts/smoke/kitchen"
    c.nothing(0.3)  # nothing more until REGACK
    c.ack(reg)
    p = c.expect(SN.PUBLISH)
    assert (p.u16(1), p.topic_type, p.qos, p.body[5:]) == (reg.u16(0), SN.NORMAL, 1, b"SMOKE")
    c.ack(p)
    mosquitto_pub(sn.port, "-t", "devices/lamp/power/set", "-m", "ON")
    p = c.expect(SN.PUBLISH)
    assert (p.topic_type, p.u16(1), p.body[5:]) == (SN.PREDEFINED, 2, b"ON")
    mosquitto_pub(sn.port, "-t", "xy", "-m", "s")
    p = c.expect(SN.PUBLISH)
    assert (p.topic_type, p.body[1:3], p.body[5:]) == (SN.SHORT, b"xy", b"s")
    # Unsubscribed: no more.
    c.send(SN.UNSUBSCRIBE, bytes([sn_flags(topic_type=SN.SHORT)]) + struct.pack(">H", 9) + b"xy")
    assert c.expect(SN.UNSUBACK).u16(0) == 9
    mosquitto_pub(sn.port, "-t", "xy", "-m", "s")
    c.nothing()


def test_retained_both_ways(sn, sn_clients):
    mosquitto_pub(sn.port, "-t", "config/s9/interval", "-m", "60", "-r")
    c = sn_clients(sn.sn_port)
    c.connect("sn-ret")
    tid = c.subscribe("config/s9/interval").u16(1)
    p = c.expect(SN.PUBLISH)
    assert (p.retain, p.u16(1), p.body[5:]) == (True, tid, b"60")
    t2 = c.register("status/s9")
    c.publish(t2, b"online", qos=1, retain=True)
    c.expect(SN.PUBACK)
    late = connected(sn.port)
    late.subscribe("status/#", 1)
    m = late.get()
    assert (m.topic, m.payload, m.retain) == ("status/s9", b"online", True)


def test_sleeping_client_gets_what_was_kept_on_pingreq(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    c.connect("sn-sleepy", duration=30)
    c.subscribe("cmd/sleepy/#", qos=1)
    c.disconnect(duration=60)
    assert wait_for(lambda: sys_value(sn.port, "$SYS/broker/mqttsn/clients/asleep") == "1")
    for i, qos in enumerate((0, 1, 1)):
        mosquitto_pub(sn.port, "-t", "cmd/sleepy/led", "-m", f"m{i}", "-q", str(qos))
    c.nothing(1.0)  # asleep: kept, not sent
    c.send(SN.PINGREQ, b"sn-sleepy")
    got = []
    while len(got) < 3:
        got.append(c.get_publish().body[5:])
    assert got == [b"m0", b"m1", b"m2"]
    c.expect(SN.PINGRESP)
    # Back asleep: a message now waits for the next wake-up.
    mosquitto_pub(sn.port, "-t", "cmd/sleepy/led", "-m", "later", "-q", "1")
    c.nothing(0.5)
    c.send(SN.PINGREQ, b"sn-sleepy")
    assert c.get_publish().body[5:] == b"later"
    c.expect(SN.PINGRESP)
    # CONNECT makes it active again: messages flow at once.
    c.connect("sn-sleepy", clean=False)
    mosquitto_pub(sn.port, "-t", "cmd/sleepy/led", "-m", "awake", "-q", "1")
    assert c.get_publish().body[5:] == b"awake"


def test_will_dialogue_updates_and_lost_sleeper(sn, sn_clients):
    watch = connected(sn.port)
    watch.subscribe("wills/#", 1)
    c = sn_clients(sn.sn_port)
    c.connect("sn-willing", will=True)
    c.expect(SN.WILLTOPICREQ)
    # The WILLTOPICREQ "lost": asked again after mqttsn_retry_interval.
    c.expect(SN.WILLTOPICREQ, timeout=3)
    c.send(SN.WILLTOPIC, bytes([sn_flags(qos=1, retain=True)]) + b"wills/sn-willing")
    c.expect(SN.WILLMSGREQ)
    c.send(SN.WILLMSG, b"first")
    assert c.expect(SN.CONNACK).body[0] == SN.ACCEPTED
    # WILLTOPICUPD and WILLMSGUPD change it while connected.
    c.send(SN.WILLTOPICUPD, bytes([sn_flags(qos=1)]) + b"wills/sn-willing/v2")
    assert c.expect(SN.WILLTOPICRESP).body[0] == SN.ACCEPTED
    c.send(SN.WILLMSGUPD, b"gone")
    assert c.expect(SN.WILLMSGRESP).body[0] == SN.ACCEPTED
    # Asleep for 1 s; it never wakes: lost after 1.5 s, its will published.
    c.disconnect(duration=1)
    m = watch.get(timeout=5)
    assert (m.topic, m.payload, m.retain) == ("wills/sn-willing/v2", b"gone", False)
    assert "Client sn-willing has exceeded its keep-alive timeout" in sn.log()
    # A clean DISCONNECT publishes no will.
    c2 = sn_clients(sn.sn_port)
    c2.connect("sn-polite", will=True)
    c2.expect(SN.WILLTOPICREQ)
    c2.send(SN.WILLTOPIC, bytes([0]) + b"wills/sn-polite")
    c2.expect(SN.WILLMSGREQ)
    c2.send(SN.WILLMSG, b"never")
    c2.expect(SN.CONNACK)
    c2.disconnect()
    watch.assert_no_message(2.0)


def test_a_sleeper_that_wakes_with_a_new_will_keeps_its_session_and_the_new_will(sn, sn_clients):
    """A sleeping client's CONNECT with the will flag runs the will dialogue again while it
    stays the same client: its kept messages still come, and the will it gave now is the one
    published when it is lost."""
    watch = connected(sn.port)
    watch.subscribe("wills/#", 1)
    c = sn_clients(sn.sn_port)
    assert will_dialogue(c, "sn-rewill", b"wills/old", b"old", duration=60) == SN.ACCEPTED
    c.subscribe("to/rewill", qos=1)
    c.disconnect(duration=60)
    mosquitto_pub(sn.port, "-t", "to/rewill", "-m", "kept", "-q", "1")
    # Woken by CONNECT with a new will; then asleep for 1 s and never heard from again.
    assert will_dialogue(c, "sn-rewill", b"wills/new", b"new", duration=1) == SN.ACCEPTED
    assert c.get_publish().body[5:] == b"kept"
    c.disconnect(duration=1)
    m = watch.get(timeout=5)
    assert (m.topic, m.payload) == ("wills/new", b"new")
    watch.assert_no_message(1.0)


def test_forwarder_encapsulation(sn, sn_clients):
    sub = connected(sn.port)
    sub.subscribe("radio/#", 0)
    a = sn_clients(sn.sn_port, node_id=b"\x00\x12\x4b\x00\x01\x02\x03\x04")
    a.connect("radio-node-1")
    # Two nodes behind the same forwarder (one UDP address) are two clients.
    b2 = SnClient(sn.sn_port)
    b2.s.close()
    b2.s = a.s
    b2.node_id = b"\x00\x12\x4b\x00\x01\x02\x03\x05"
    b2.connect("radio-node-2")
    t = a.register("radio/node1")
    a.publish(t, b"1", qos=1)
    ack = a.expect(SN.PUBACK)
    assert ack.node_id == a.node_id
    assert sub.get().topic == "radio/node1"
    # What goes to node 2 carries node 2's id (its REGISTER, acknowledged through the
    # forwarder, then the PUBLISH).
    b2.subscribe("radio/#")
    a.publish(t, b"2")
    p = b2.get_publish()
    assert (p.node_id, p.body[5:]) == (b2.node_id, b"2")
    assert "radio-node-1 connected from 127.0.0.1" in sn.log() and "(forwarded)" in sn.log()


def test_malformed_and_duplicate_datagrams(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    for bad in [b"", b"\x00", b"\x01\x00", b"\x05\x0c\x00", b"\xff" * 40, b"\x03\x99\x00",
                b"\x02\x05\x07", b"\x01\x00\x10\x0c" + b"x" * 3]:
        c.send_raw(bad)
    c.nothing(0.3)
    # The broker serves on, MQTT and MQTT-SN alike.
    c.connect("sn-dups")
    sub = connected(sn.port)
    sub.subscribe("d/#", 2)
    t = c.register("d/x")
    mid = c.publish(t, b"once", qos=1)
    c.expect(SN.PUBACK)
    # Our PUBACK "lost": the client sends it again with DUP. Answered, not delivered twice.
    c.publish(t, b"once", qos=1, mid=mid, dup=True)
    c.expect(SN.PUBACK)
    # QoS 2, PUBLISH sent twice before PUBREL: delivered once.
    mid2 = c.publish(t, b"exactly", qos=2)
    assert c.expect(SN.PUBREC).u16(0) == mid2
    c.publish(t, b"exactly", qos=2, mid=mid2, dup=True)
    c.expect(SN.PUBREC)
    c.send(SN.PUBREL, struct.pack(">H", mid2))
    assert c.expect(SN.PUBCOMP).u16(0) == mid2
    got = sub.drain(quiet=0.7)
    assert [(m.payload) for m in got] == [b"once", b"exactly"]
    assert wait_for(lambda: sys_value(sn.port, "$SYS/broker/mqttsn/datagrams/malformed") == "8")
    # Logged at each doubling of the count, not once per datagram.
    counts = re.findall(r"MQTT-SN: malformed datagram from \S+ dropped \(.*\); (\d+) so far", sn.log())
    assert counts == ["1", "2", "4", "8"]


def test_unacknowledged_publish_is_sent_again_with_dup_then_the_client_is_lost(sn, sn_clients):
    watch = connected(sn.port)
    watch.subscribe("wills/#", 1)
    c = sn_clients(sn.sn_port)
    assert will_dialogue(c, "sn-deaf", b"wills/sn-deaf", b"deaf") == SN.ACCEPTED
    c.subscribe(int.from_bytes(b"zz", "big"), qos=1, topic_type=SN.SHORT)
    mosquitto_pub(sn.port, "-t", "zz", "-m", "hello", "-q", "1")
    first = c.expect(SN.PUBLISH)
    assert not first.dup
    t0 = time.monotonic()
    # mqttsn_retry_interval 1, mqttsn_retry_count 2: two resends with DUP, same message id.
    for _ in range(2):
        again = c.expect(SN.PUBLISH, timeout=3)
        assert again.dup and again.u16(3) == first.u16(3) and again.body[5:] == b"hello"
    assert 1.5 < time.monotonic() - t0 < 4
    # Then it is lost: told so, and its will is published.
    c.expect(SN.DISCONNECT, timeout=3)
    m = watch.get(timeout=3)
    assert (m.topic, m.payload) == ("wills/sn-deaf", b"deaf")
    assert "MQTT-SN client sn-deaf lost: no answer after 2 retransmissions" in sn.log()


def test_a_late_acknowledgement_stops_the_retransmission(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    c.connect("sn-slow")
    c.subscribe(int.from_bytes(b"zq", "big"), qos=1, topic_type=SN.SHORT)
    mosquitto_pub(sn.port, "-t", "zq", "-m", "a", "-q", "1")
    mosquitto_pub(sn.port, "-t", "zq", "-m", "b", "-q", "1")
    first = c.expect(SN.PUBLISH)
    again = c.expect(SN.PUBLISH, timeout=3)  # lost ack: resent
    assert again.dup and again.body[5:] == b"a"
    c.ack(again)
    nxt = c.expect(SN.PUBLISH)
    assert (nxt.dup, nxt.body[5:]) == (False, b"b")
    c.ack(nxt)
    c.nothing(2.5)
    assert first.u16(3) != nxt.u16(3)


def test_clean_session_0_across_reconnect_and_restart(sn_broker, sn_clients, tmp_path):
    b = sn_broker(SECTION, ["persistence true", f"persistence_location {tmp_path}"])
    c = sn_clients(b.sn_port)
    c.connect("sn-keeper", clean=False)
    c.subscribe("keep/#", qos=1)
    c.disconnect()
    # Offline: QoS 1 messages are kept for its session.
    mosquitto_pub(b.port, "-t", "keep/a", "-m", "while away", "-q", "1")
    c2 = sn_clients(b.sn_port)  # another address, same client id
    c2.connect("sn-keeper", clean=False)
    assert c2.get_publish().body[5:] == b"while away"
    c2.disconnect()
    mosquitto_pub(b.port, "-t", "keep/b", "-m", "across a restart", "-q", "1")
    # The broker restarts; the session and its message come back from the journal.
    assert b.stop() == 0
    b.start()
    sn_port = b.ports[1]
    c3 = sn_clients(sn_port)
    c3.connect("sn-keeper", clean=False)
    p = c3.get_publish()
    assert p.body[5:] == b"across a restart"
    # Its subscription too: a new message reaches it.
    mosquitto_pub(b.port, "-t", "keep/c", "-m", "new", "-q", "1")
    assert c3.get_publish().body[5:] == b"new"
    # clean session 1 ends it.
    c3.disconnect()
    c3.connect("sn-keeper", clean=True)
    mosquitto_pub(b.port, "-t", "keep/d", "-m", "gone", "-q", "1")
    c3.nothing()


def test_acl_by_client_id(sn_broker, sn_clients, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic read #\npattern write sensors/%c/#\n")
    b = sn_broker(SECTION + ["mqttsn_topic 7 sensors/dev1/temp", "mqttsn_topic 8 sensors/node9/temp"],
                  [f"acl_file {acl}", "http_listener 0 127.0.0.1"])
    sub = connected(b.port)
    sub.subscribe("sensors/#", 1)
    c = sn_clients(b.sn_port)
    c.connect("dev1")
    own = c.register("sensors/dev1/temp")
    other = c.register("sensors/dev2/temp")
    c.publish(own, b"mine", qos=1)
    c.expect(SN.PUBACK)
    c.publish(other, b"not mine", qos=1)
    c.expect(SN.PUBACK)  # acknowledged, dropped (3.1.1 semantics)
    assert [m.payload for m in sub.drain(quiet=0.7)] == [b"mine"]
    # QoS -1 from a connected client's address is that client's QoS 0 publish: its %c rule
    # applies (predefined, short, or its own registered id), and it is not answered.
    c.publish(7, b"mine at qos -1", qos=-1, topic_type=SN.PREDEFINED)
    c.publish(own, b"registered id at qos -1", qos=-1, dup=True)
    c.publish(1, b"not mine at qos -1", qos=-1, topic_type=SN.PREDEFINED)
    c.publish(99, b"unknown id", qos=-1, topic_type=SN.PREDEFINED)
    got = sub.drain(quiet=0.7)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("sensors/dev1/temp", b"mine at qos -1", 0), ("sensors/dev1/temp", b"registered id at qos -1", 0)]
    c.nothing(0.1)
    # Another connected client: its own client id, which the rule does not give id 7.
    dev2 = sn_clients(b.sn_port)
    dev2.connect("dev2")
    dev2.publish(7, b"dev2 as dev1", qos=-1, topic_type=SN.PREDEFINED)
    # A node behind a forwarder is known by its node id: its own publish. The forwarder's
    # address without encapsulation is no client: anonymous, and %c gives that nothing.
    node = sn_clients(b.sn_port, node_id=b"\x00\x09")
    node.connect("node9")
    node.publish(8, b"node9", qos=-1, topic_type=SN.PREDEFINED)
    bare = SnClient(b.sn_port)
    bare.s.close()
    bare.s = node.s
    bare.publish(8, b"forwarder itself", qos=-1, topic_type=SN.PREDEFINED)
    # A source that is no client: anonymous, as before.
    stranger = sn_clients(b.sn_port)
    stranger.publish(7, b"anonymous", qos=-1, topic_type=SN.PREDEFINED)
    got = sub.drain(quiet=0.7)
    assert [(m.topic, m.payload) for m in got] == [("sensors/node9/temp", b"node9")]
    # The anonymous path counts its own; the clients' publishes are theirs (the unknown
    # predefined id from dev1 is dropped and counted with the refused QoS -1 ones).
    text = metrics(b)
    assert "gatemq_mqttsn_publish_qos_minus1_total 0" in text
    assert re.search(r'gatemq_mqttsn_dropped_total\{reason="qos_minus1_refused"\} 3\b', text)


def test_anonymous_refused_is_said_at_start_and_to_each_client(sn_broker, sn_clients):
    b = sn_broker(SECTION + ["allow_anonymous false"], ["per_listener_settings true"])
    assert "(MQTT-SN): allow_anonymous is false, so every MQTT-SN client is refused" in b.log()
    c = sn_clients(b.sn_port)
    c.connect("sn-nobody", rc=SN.NOT_SUPPORTED)
    c.publish(1, b"x", qos=-1, topic_type=SN.PREDEFINED)
    c.nothing()
    # The MQTT listener keeps its own rule (anonymous allowed in the test config).
    connected(b.port).disconnect()


def test_flood_limits_searchgw_and_unknown_sources(sn_broker, sn_clients):
    b = sn_broker(SECTION + ["max_connections 6", "mqttsn_max_clients_per_source 4"],
                  ["http_listener 0 127.0.0.1", "sys_interval 1"])
    codes = []
    for i in range(8):
        c = sn_clients(b.sn_port)
        c.send(SN.CONNECT, bytes([sn_flags(clean=True), 1]) + struct.pack(">H", 60)
               + f"flood-{i}".encode())
        codes.append(c.expect(SN.CONNACK).body[0])
    assert codes == [SN.ACCEPTED] * 4 + [SN.CONGESTION] * 4  # one source: 4 at most
    text = metrics(b)
    assert "gatemq_mqttsn_clients_connected 4" in text
    assert "gatemq_mqttsn_clients_refused_total 4" in text
    assert wait_for(lambda: sys_value(b.port, "$SYS/broker/mqttsn/clients/refused") == "4")
    # A source that is not a client is told so; SEARCHGW is answered to it alone.
    x = sn_clients(b.sn_port)
    x.send(SN.PINGREQ)
    x.expect(SN.DISCONNECT)
    x.send(SN.SEARCHGW, b"\x00")
    gw = x.expect(SN.GWINFO)
    assert gw.body == b"\x01"
    assert re.search(r'gatemq_mqttsn_dropped_total\{reason="not_connected"\} 1', metrics(b))
    # The clients are listed beside the MQTT ones.
    assert api_clients(b).count('"protocol":"MQTT-SN 1.2"') == 4


def test_advertise_goes_only_to_the_named_address(sn_broker):
    listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen.bind(("127.0.0.1", 0))
    port = listen.getsockname()[1]
    b = sn_broker(SECTION + ["mqttsn_advertise_interval 1", f"mqttsn_advertise_address 127.0.0.1:{port}",
                             "mqttsn_gateway_id 7"])
    listen.settimeout(3)
    d1, _ = listen.recvfrom(100)
    d2, _ = listen.recvfrom(100)
    assert d1 == d2 == bytes([5, SN.ADVERTISE, 7]) + struct.pack(">H", 1)
    listen.close()


def test_mqtt_sn_clients_stay_across_a_reload(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    c.connect("sn-reload")
    c.subscribe(int.from_bytes(b"rl", "big"), topic_type=SN.SHORT)
    sn.conf.write_text(sn.conf.read_text() + "mqttsn_topic 3 added/at/reload\n")
    sn.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "configuration reloaded" in sn.log())
    mosquitto_pub(sn.port, "-t", "rl", "-m", "still here")
    assert c.expect(SN.PUBLISH).body[5:] == b"still here"
    sub = connected(sn.port)
    sub.subscribe("added/#", 0)
    c.publish(3, b"new id", qos=-1, topic_type=SN.PREDEFINED)
    assert sub.get().payload == b"new id"


def api_clients(b):
    port = int(HTTP_RE.search(b.log()).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/clients", timeout=5) as r:
        return r.read().decode()


def test_takeover_between_mqtt_and_mqtt_sn_with_the_same_client_id(sn_broker, sn_clients):
    """An MQTT-SN client and a TCP client are slots of one connection slab: a takeover either
    way ends the other kind of connection (its socket, or its datagrams) and hands the session
    over, and nothing of the old one is left behind in the gateway, the status page or $SYS."""
    b = sn_broker(SECTION, ["http_listener 0 127.0.0.1", "sys_interval 1"])
    # TCP first; an MQTT-SN client takes its session over.
    tcp = connected(b.port, client_id="dual", clean_session=False)
    tcp.subscribe("to/dual/#", 1)
    sn = sn_clients(b.sn_port)
    sn.connect("dual", clean=False)
    assert tcp.disconnected.wait(5), "the TCP connection was not ended by the takeover"
    mosquitto_pub(b.port, "-t", "to/dual/a", "-m", "to sn", "-q", "1")
    assert sn.get_publish().body[5:] == b"to sn"
    listed = api_clients(b)
    assert listed.count('"client_id":"dual"') == 1 and '"protocol":"MQTT-SN 1.2"' in listed
    # And back: a TCP client with that id takes the session from the MQTT-SN client, which
    # is told with DISCONNECT and is then unknown to the gateway.
    tcp2 = connected(b.port, client_id="dual", clean_session=False)
    sn.expect(SN.DISCONNECT)
    mosquitto_pub(b.port, "-t", "to/dual/b", "-m", "to tcp", "-q", "1")
    assert tcp2.get().payload == b"to tcp"
    sn.send(SN.PINGREQ)
    sn.expect(SN.DISCONNECT)
    listed = api_clients(b)
    assert listed.count('"client_id":"dual"') == 1 and '"protocol":"3.1.1"' in listed
    assert "gatemq_mqttsn_clients_connected 0" in metrics(b)
    # The MQTT-SN client takes it once more, from the same address it had.
    sn.connect("dual", clean=False)
    assert tcp2.disconnected.wait(5)
    mosquitto_pub(b.port, "-t", "to/dual/c", "-m", "to sn again", "-q", "1")
    assert sn.get_publish().body[5:] == b"to sn again"
    assert "gatemq_mqttsn_clients_connected 1" in metrics(b)
    assert wait_for(lambda: sys_value(b.port, "$SYS/broker/mqttsn/clients/connected") == "1")


def test_a_sleeper_waking_from_a_new_port_gets_its_messages(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    c.connect("sn-new-port", duration=30)
    c.subscribe("cmd/new-port/#", qos=1)
    c.disconnect(duration=60)
    mosquitto_pub(sn.port, "-t", "cmd/new-port/led", "-m", "kept", "-q", "1")
    # Its radio slept; it comes back on another UDP port and names itself in PINGREQ.
    again = sn_clients(sn.sn_port)
    again.send(SN.PINGREQ, b"sn-new-port")
    assert again.get_publish().body[5:] == b"kept"
    again.expect(SN.PINGRESP)
    c.nothing()
    assert wait_for(lambda: sys_value(sn.port, "$SYS/broker/mqttsn/clients/asleep") == "1")


def test_a_reload_that_refuses_anonymous_clients_disconnects_mqtt_sn_clients(sn_broker,
                                                                             sn_clients):
    b = sn_broker(SECTION + ["allow_anonymous true"], ["per_listener_settings true"])
    c = sn_clients(b.sn_port)
    c.connect("sn-revoked")
    b.conf.write_text(b.conf.read_text().replace("mqttsn_retry_count 2\nallow_anonymous true",
                                                 "mqttsn_retry_count 2\nallow_anonymous false"))
    b.proc.send_signal(signal.SIGHUP)
    # The re-check of access at a reload covers the gateway's clients: told, then unknown.
    c.expect(SN.DISCONNECT)
    assert wait_for(lambda: "configuration reloaded" in b.log())
    assert "(MQTT-SN): allow_anonymous is false, so every MQTT-SN client is refused" in b.log()
    c.connect("sn-revoked", rc=SN.NOT_SUPPORTED)
    # The MQTT listener keeps its own rule.
    connected(b.port).disconnect()


def test_qos_2_to_an_mqtt_sn_subscriber_with_a_lost_pubcomp(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    c.connect("sn-qos2")
    assert c.subscribe(int.from_bytes(b"q2", "big"), qos=2, topic_type=SN.SHORT).flags >> 5 & 3 == 2
    mosquitto_pub(sn.port, "-t", "q2", "-m", "once", "-q", "2")
    mosquitto_pub(sn.port, "-t", "q2", "-m", "twice", "-q", "2")
    p = c.expect(SN.PUBLISH)
    assert (p.qos, p.body[5:]) == (2, b"once")
    mid = p.u16(3)
    c.send(SN.PUBREC, struct.pack(">H", mid))
    assert c.expect(SN.PUBREL).u16(0) == mid
    # Our PUBCOMP "lost": the PUBREL comes again after mqttsn_retry_interval, and nothing
    # else meanwhile (one message in flight).
    assert c.expect(SN.PUBREL, timeout=3).u16(0) == mid
    c.send(SN.PUBCOMP, struct.pack(">H", mid))
    p2 = c.expect(SN.PUBLISH)
    assert (p2.qos, p2.dup, p2.body[5:]) == (2, False, b"twice")
    c.send(SN.PUBREC, struct.pack(">H", p2.u16(3)))
    c.expect(SN.PUBREL)
    c.send(SN.PUBCOMP, struct.pack(">H", p2.u16(3)))
    c.nothing(1.5)


def test_client_ids_longer_than_64_bytes_are_refused(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    c.connect("s" * 65, rc=SN.NOT_SUPPORTED)
    c.connect("s" * 64)


def test_messages_of_256_bytes_and_more_use_the_long_length_form(sn, sn_clients):
    c = sn_clients(sn.sn_port)
    c.connect("sn-long")
    sub = connected(sn.port)
    sub.subscribe("long/#", 1)
    tid = c.register("long/in")
    big = bytes(range(256)) * 4
    c.publish(tid, big, qos=1)  # sn_msg: 0x01 and a 2-byte length from 256 bytes on
    c.expect(SN.PUBACK)
    assert sub.get().payload == big
    c.subscribe("long/out", qos=1)
    mosquitto_pub(sn.port, "-t", "long/out", "-m", "y" * 1000, "-q", "1")
    c.s.settimeout(5)
    d, _ = c.s.recvfrom(65535)
    assert d[0] == 0x01 and struct.unpack(">H", d[1:3])[0] == len(d) == 3 + 1 + 5 + 1000
    p = sn_parse(d)
    assert (p.kind, p.body[5:]) == (SN.PUBLISH, b"y" * 1000)


def test_a_full_source_evicts_its_longest_silent_client_with_keep_alive_0(sn_broker, sn_clients):
    """Keep-alive 0 over UDP: nothing would ever end such a client (no TCP keepalive), so a
    sensor that lost its power kept its place for ever. A CONNECT that finds the table full
    evicts the one silent the longest, if silent for mqttsn_idle_evict, as a lost client."""
    b = sn_broker(["mqttsn_retry_interval 30", "mqttsn_max_clients_per_source 5",
                   "mqttsn_idle_evict 2"], ["http_listener 0 127.0.0.1", "sys_interval 1"])
    watch = connected(b.port)
    watch.subscribe("wills/#", 1)
    # Silent longer than any, but each with something that ends it in time: asleep with a
    # duration, a keep-alive, a QoS 1 message in flight (retransmitted, then lost).
    sleeper = sn_clients(b.sn_port)
    sleeper.connect("sleeper", duration=0)
    sleeper.disconnect(duration=600)
    keeper = sn_clients(b.sn_port)
    keeper.connect("keeper", duration=600)
    busy = sn_clients(b.sn_port)
    busy.connect("busy", duration=0)
    busy.subscribe(int.from_bytes(b"bz", "big"), qos=1, topic_type=SN.SHORT)
    mosquitto_pub(b.port, "-t", "bz", "-m", "unacknowledged", "-q", "1")
    assert busy.expect(SN.PUBLISH).qos == 1
    # Keep-alive 0, nothing in flight: the oldest silence goes first.
    old = sn_clients(b.sn_port)
    assert will_dialogue(old, "idle-old", b"wills/idle-old", b"gone", duration=0) == SN.ACCEPTED
    newer = sn_clients(b.sn_port)
    newer.connect("idle-newer", duration=0)
    # Full, and nobody silent for 2 s yet: CONGESTION, as before.
    fresh = sn_clients(b.sn_port)
    fresh.connect("fresh", rc=SN.CONGESTION)
    time.sleep(2.3)
    fresh.connect("fresh")
    old.expect(SN.DISCONNECT)
    m = watch.get(timeout=3)
    assert (m.topic, m.payload) == ("wills/idle-old", b"gone")
    old.send(SN.PINGREQ)
    old.expect(SN.DISCONNECT)  # unknown now
    assert "MQTT-SN client idle-old evicted to make room for a new client: keep-alive 0 and silent for 2 s" in b.log()
    # The others are untouched: the sleeper is asleep, the keeper and idle-newer answer.
    for c in (keeper, newer):
        c.send(SN.PINGREQ)
        c.expect(SN.PINGRESP)
    busy.nothing(0.2)
    sleeper.send(SN.PINGREQ, b"sleeper")
    sleeper.expect(SN.PINGRESP)
    # idle-newer was just heard from: no one can go, the next CONNECT is refused.
    sn_clients(b.sn_port).connect("another", rc=SN.CONGESTION)
    text = metrics(b)
    assert "gatemq_mqttsn_clients_evicted_total 1" in text
    assert "gatemq_mqttsn_clients_connected 5" in text
    assert wait_for(lambda: sys_value(b.port, "$SYS/broker/mqttsn/clients/evicted") == "1")
    watch.assert_no_message(0.3)


def test_a_full_listener_evicts_across_sources_and_0_never_evicts(sn_broker, sn_clients):
    b = sn_broker(["max_connections 2", "mqttsn_idle_evict 1"])
    a = sn_clients(b.sn_port, source="127.0.0.2")
    a.connect("from-2", duration=0)
    c = sn_clients(b.sn_port, source="127.0.0.3")
    c.connect("from-3", duration=0)
    time.sleep(1.2)
    c.send(SN.PINGREQ)  # heard from: stays
    c.expect(SN.PINGRESP)
    sn_clients(b.sn_port, source="127.0.0.4").connect("from-4")
    a.expect(SN.DISCONNECT)
    c.send(SN.PINGREQ)
    c.expect(SN.PINGRESP)
    # mqttsn_idle_evict 0: never, the full table refuses as it did.
    b2 = sn_broker(["max_connections 1", "mqttsn_idle_evict 0"])
    sn_clients(b2.sn_port).connect("first", duration=0)
    time.sleep(1.2)
    sn_clients(b2.sn_port).connect("second", rc=SN.CONGESTION)


def regack(c, reg, code):
    c.send(SN.REGACK, struct.pack(">HH", reg.u16(0), reg.u16(2)) + bytes([code]))


def test_a_register_answered_with_congestion_is_sent_again_later(sn_broker, sn_clients):
    """REGACK CONGESTION means busy, try later (spec 6.13): the REGISTER goes again after
    mqttsn_retry_interval, up to mqttsn_retry_count times; then that one message is dropped
    for that client, which stays connected. Other refusals stand for the session."""
    b = sn_broker(SECTION, ["http_listener 0 127.0.0.1"])  # retry: 1 s, 2 times
    c = sn_clients(b.sn_port)
    c.connect("sn-busy")
    c.subscribe("busy/#", qos=1)
    mosquitto_pub(b.port, "-t", "busy/a", "-m", "first", "-q", "1")
    reg = c.expect(SN.REGISTER)
    t0 = time.monotonic()
    regack(c, reg, SN.CONGESTION)
    c.nothing(0.6)  # not at once: it waits
    again = c.expect(SN.REGISTER, timeout=3)
    assert 0.8 < time.monotonic() - t0 < 2.5
    # The same topic id and name, as a new message (a new message id).
    assert (again.u16(0), again.body[4:]) == (reg.u16(0), b"busy/a")
    assert again.u16(2) != reg.u16(2)
    c.ack(again)
    p = c.expect(SN.PUBLISH)
    assert (p.u16(1), p.body[5:]) == (reg.u16(0), b"first")
    c.ack(p)
    # Busy three times (more than mqttsn_retry_count 2): that message is dropped, the client
    # is not lost, and the next message on the topic registers it again.
    mosquitto_pub(b.port, "-t", "busy/b", "-m", "dropped", "-q", "1")
    mosquitto_pub(b.port, "-t", "busy/b", "-m", "second", "-q", "1")
    ids = set()
    for _ in range(3):
        reg = c.expect(SN.REGISTER, timeout=3)
        assert reg.body[4:] == b"busy/b"
        ids.add(reg.u16(2))
        regack(c, reg, SN.CONGESTION)
    assert len(ids) == 3
    reg = c.expect(SN.REGISTER, timeout=3)
    c.ack(reg)
    p = c.expect(SN.PUBLISH)
    assert p.body[5:] == b"second"
    c.ack(p)
    c.nothing(1.5)
    c.send(SN.PINGREQ)
    c.expect(SN.PINGRESP)
    text = metrics(b)
    assert re.search(r'gatemq_mqttsn_dropped_total\{reason="register_congestion"\} 1\b', text)
    assert "gatemq_mqttsn_retransmissions_total 3" in text
    assert "gatemq_mqttsn_clients_lost_total 0" in text
    # "Not supported" stands: no REGISTER again, and messages on it are not sent to it.
    mosquitto_pub(b.port, "-t", "busy/c", "-m", "refused", "-q", "1")
    regack(c, c.expect(SN.REGISTER), SN.NOT_SUPPORTED)
    mosquitto_pub(b.port, "-t", "busy/c", "-m", "refused too", "-q", "1")
    mosquitto_pub(b.port, "-t", "busy/a", "-m", "flows", "-q", "1")
    p = c.expect(SN.PUBLISH)
    assert p.body[5:] == b"flows"
    c.ack(p)
    c.nothing(1.5)


def test_a_lost_register_is_sent_again_after_a_puback_for_another_message(sn, sn_clients):
    """A REGISTER and a QoS 1 PUBLISH can be out at once (one timer per client): the PUBACK
    of the one must not stop the retransmission of the other."""
    c = sn_clients(sn.sn_port)
    c.connect("sn-two-out")
    c.subscribe(int.from_bytes(b"zz", "big"), qos=1, topic_type=SN.SHORT)
    c.subscribe("w/#", qos=0)
    mosquitto_pub(sn.port, "-t", "zz", "-m", "in flight", "-q", "1")
    p = c.expect(SN.PUBLISH)
    mosquitto_pub(sn.port, "-t", "w/x", "-m", "needs an id")
    reg = c.expect(SN.REGISTER)  # "lost": not answered
    c.ack(p)
    again = c.expect(SN.REGISTER, timeout=3)
    assert (again.u16(0), again.u16(2), again.body[4:]) == (reg.u16(0), reg.u16(2), b"w/x")
    c.ack(again)
    assert c.expect(SN.PUBLISH).body[5:] == b"needs an id"


def register_code(c, topic):
    mid = c.next_mid()
    c.send(SN.REGISTER, struct.pack(">HH", 0, mid) + topic.encode())
    m = c.expect(SN.REGACK)
    assert m.u16(2) == mid
    return m.body[4]


def will_dialogue(c, client_id, topic: bytes, msg: bytes, duration=60):
    """CONNECT with a will; the CONNACK's return code (or None if WILLMSG was not asked)."""
    c.connect(client_id, duration=duration, will=True)
    c.expect(SN.WILLTOPICREQ)
    c.send(SN.WILLTOPIC, bytes([sn_flags(qos=1)]) + topic)
    m = c.recv()
    if m.kind == SN.CONNACK:
        return m.body[0]
    assert m.kind == SN.WILLMSGREQ, m.kind
    c.send(SN.WILLMSG, msg)
    return c.expect(SN.CONNACK).body[0]


def test_topic_names_and_wills_per_client_are_bounded(sn_broker, sn_clients):
    """The defaults a 512 MB Pi can afford at 1024 clients: 8 KiB of topic names and 1024
    ids per client, a will topic and a will message of at most 1024 bytes each."""
    b = sn_broker(SECTION, ["http_listener 0 127.0.0.1"])
    watch = connected(b.port)
    watch.subscribe("wills/#", 1)
    c = sn_clients(b.sn_port)
    c.connect("sn-names")
    codes = [register_code(c, f"names/{i}/" + "x" * 990) for i in range(9)]  # 1000 bytes each
    assert codes == [SN.ACCEPTED] * 8 + [SN.CONGESTION]
    # A name that still fits goes in; a message on a topic beyond is not sent, and counted.
    assert register_code(c, "short/one") == SN.ACCEPTED
    c.subscribe("far/#")
    mosquitto_pub(b.port, "-t", "far/" + "y" * 300, "-m", "beyond")
    c.nothing(0.5)
    assert re.search(r'gatemq_mqttsn_dropped_total\{reason="undeliverable"\} 1\b', metrics(b))
    # Wills: 1024 bytes is the most for a topic and for a message.
    w = sn_clients(b.sn_port)
    assert will_dialogue(w, "sn-big-will", b"wills/" + b"t" * 1019, b"m" * 1025) == SN.NOT_SUPPORTED
    w.send(SN.PINGREQ)
    w.expect(SN.DISCONNECT)  # not connected
    assert will_dialogue(w, "sn-big-will", b"wills/" + b"t" * 1020, b"m") == SN.NOT_SUPPORTED
    big_topic, big_msg = b"wills/" + b"t" * 1018, b"m" * 1024
    assert will_dialogue(w, "sn-big-will", big_topic, big_msg, duration=30) == SN.ACCEPTED
    w.send(SN.WILLMSGUPD, b"u" * 1025)
    assert w.expect(SN.WILLMSGRESP).body[0] == SN.NOT_SUPPORTED
    w.send(SN.WILLTOPICUPD, bytes([sn_flags(qos=1)]) + b"wills/" + b"v" * 1019)
    assert w.expect(SN.WILLTOPICRESP).body[0] == SN.NOT_SUPPORTED
    # Refused updates leave the will as it was: lost while asleep, it is published whole.
    w.disconnect(duration=1)
    m = watch.get(timeout=5)
    assert (m.topic.encode(), m.payload) == (big_topic, big_msg)
    assert re.search(r'gatemq_mqttsn_dropped_total\{reason="will_too_large"\} 4\b', metrics(b))
    # A sleeper that wakes with a CONNECT asking to give a will too large keeps its session
    # and its old will.
    s = sn_clients(b.sn_port)
    assert will_dialogue(s, "sn-sleeper-will", b"wills/sleeper", b"old", duration=30) == SN.ACCEPTED
    s.subscribe("to/sleeper", qos=1)
    s.disconnect(duration=60)
    mosquitto_pub(b.port, "-t", "to/sleeper", "-m", "kept", "-q", "1")
    assert will_dialogue(s, "sn-sleeper-will", b"wills/sleeper", b"n" * 1025) == SN.NOT_SUPPORTED
    s.send(SN.PINGREQ, b"sn-sleeper-will")
    assert s.get_publish().body[5:] == b"kept"
    s.expect(SN.PINGRESP)


def test_topic_and_will_limits_are_options(sn_broker, sn_clients):
    b = sn_broker(SECTION + ["mqttsn_max_topic_bytes 100", "mqttsn_max_will_size 16"])
    c = sn_clients(b.sn_port)
    c.connect("sn-small")
    assert [register_code(c, f"t/{i}/" + "x" * 36) for i in range(3)] == [SN.ACCEPTED] * 2 + [SN.CONGESTION]
    w = sn_clients(b.sn_port)
    assert will_dialogue(w, "sn-small-will", b"wills/w", b"m" * 17) == SN.NOT_SUPPORTED
    assert will_dialogue(w, "sn-small-will", b"wills/w", b"m" * 16) == SN.ACCEPTED


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_the_worst_case_per_client_is_what_the_readme_says(sn_broker, sn_clients):
    """Clients that fill everything the gateway keeps for them: 1024 topic ids whose names
    fill the 8 KiB, and a will of 1024 + 1024 bytes. The README states about 28 KiB each
    (so 28 MiB at 1024 clients); the broker's resident memory grows by no more than 40."""
    n = 32
    b = sn_broker(SECTION + ["mqttsn_max_clients_per_source 100"])
    clients = []
    for i in range(n):
        c = sn_clients(b.sn_port)
        c.connect(f"sn-full-{i}")
        clients.append(c)
    time.sleep(0.2)
    before = vm_rss_kib(b.proc.pid)
    for i, c in enumerate(clients):
        assert will_dialogue(c, f"sn-full-{i}", f"wills/{i:04d}/".encode() + b"t" * 1013,
                             b"m" * 1024) == SN.ACCEPTED
        for k in range(0, 1024, 128):
            for j in range(k, k + 128):
                c.send(SN.REGISTER, struct.pack(">HH", 0, 1) + f"{j:08d}".encode())
            assert all(c.expect(SN.REGACK).body[4] == SN.ACCEPTED for _ in range(128))
        assert register_code(c, "one/more") == SN.CONGESTION
    per_client = (vm_rss_kib(b.proc.pid) - before) / n
    assert per_client < 40, f"{per_client:.1f} KiB per client"
