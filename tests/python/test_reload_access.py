"""SIGHUP revokes access: at a reload every connected client is checked again against the new
allow_anonymous, password file, certificate rules and ACL. Those no longer allowed are
disconnected (MQTT 5: DISCONNECT 0x87 Not authorized; 3.1.1: the connection is closed, no
packet), those still allowed stay connected and keep receiving, and nothing the new ACL denies
is delivered any more: not live, not retained, not queued for an offline session, not resent
from in flight."""
import signal
import socket
import ssl
import struct
import subprocess

from clients import (HOST, PINGREQ, Client, RawClient, _str, ack_packet, connect_packet, packet,
                     subscribe_packet, uid)
from conftest import BIN
from test_bridge import gateway, wait_up  # noqa: F401 (gateway is a fixture)
from test_reload import reload
from test_tls import context, pki, tls_lines  # noqa: F401 (pki is a fixture)

NOT_AUTHORIZED = 0x87


def configure(b, *lines):
    b.conf.write_text("listener 0 127.0.0.1\n" + "".join(l + "\n" for l in lines))


def passwd(*args):
    subprocess.run([BIN, "passwd", *args], check=True, capture_output=True)


def raw_v3(port, client_id, user=None, password=None, sock=None, subscribe="t/#"):
    """A raw MQTT 3.1.1 client (optionally with a username and password), subscribed."""
    r = RawClient.__new__(RawClient)
    r.sock = sock or socket.create_connection((HOST, port), timeout=5)
    r.buf = b""
    flags = 0x02 | (0x80 if user else 0) | (0x40 if password else 0)
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + _str(client_id)
    body += (_str(user) if user else b"") + (_str(password) if password else b"")
    r.send(packet(0x10, body))
    assert r.read_packet() == b"\x20\x02\x00\x00"
    r.send(subscribe_packet(1, subscribe, 0))
    assert r.read_packet() == b"\x90\x03\x00\x01\x00"
    return r


def closed_without_a_packet(r, timeout=5):
    """Everything the broker sends until it closes the connection (3.1.1: nothing)."""
    data = b""
    r.sock.settimeout(timeout)
    try:
        while chunk := r.sock.recv(4096):
            data += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return r.buf + data


def v5(port, **kw):
    c = Client(port, protocol=5, clean_session=None, **kw)
    c.connect()
    c.subscribe("t/#", 0)
    return c


def revoked_lines(b):
    return [l for l in b.log().splitlines() if "disconnected at reload, not authorized" in l]


def test_anonymous_clients_go_when_anonymous_is_turned_off_users_stay(make_broker, tmp_path):
    pw = tmp_path / "pw"
    passwd("-c", "-b", str(pw), "keep", "k1")
    b = make_broker(["password_file pw"])
    anon5 = v5(b.port)
    anon3 = raw_v3(b.port, "anon3")
    keep5 = v5(b.port, username="keep", password="k1")
    keep3 = raw_v3(b.port, "keep3", "keep", "k1")
    keep5.publish("t/before", b"1")
    for c in (anon5, keep5):
        assert c.get().topic == "t/before"
    for r in (anon3, keep3):
        assert r.read_packet() == b"\x30\x0b\x00\x08t/before1"

    configure(b, "allow_anonymous false", "password_file pw")
    reload(b)
    assert anon5.disconnected.wait(5) and anon5.server_disconnect == NOT_AUTHORIZED
    assert closed_without_a_packet(anon3) == b""
    # Still allowed: untouched, and still receiving.
    keep5.publish("t/after", b"2")
    assert keep5.get().topic == "t/after"
    assert keep3.read_packet() == b"\x30\x0a\x00\x07t/after2"
    assert not keep5.disconnected.is_set()
    lines = revoked_lines(b)
    assert len(lines) == 2 and all("anonymous clients are no longer allowed" in l for l in lines)
    assert f"Client {anon5.client_id} disconnected at reload" in b.log()
    assert "Client anon3 disconnected at reload" in b.log()
    assert "2 connections kept" in b.log()  # keep5 and keep3
    keep5.disconnect()
    keep3.close()


def test_deleted_and_changed_users_go_unchanged_ones_stay(make_broker, tmp_path):
    pw = tmp_path / "pw"
    passwd("-c", "-b", str(pw), "alice", "a1")
    for user, password in (("bob", "b1"), ("carol", "c1"), ("dave", "d1")):
        passwd("-b", str(pw), user, password)
    b = make_broker(["allow_anonymous false", "password_file pw"])
    alice5 = v5(b.port, username="alice", password="a1")
    alice5.subscribe("will/#", 0)
    alice3 = raw_v3(b.port, "alice3", "alice", "a1")
    gone5 = {u: v5(b.port, username=u, password=f"{u[0]}1",
                   will=dict(topic=f"will/{u}", payload=b"offline"))
             for u in ("bob", "carol", "dave")}
    gone3 = {u: raw_v3(b.port, f"{u}3", u, f"{u[0]}1") for u in ("bob", "carol", "dave")}

    passwd("-D", str(pw), "bob")
    passwd("-b", str(pw), "carol", "c2")
    passwd("-b", str(pw), "dave", "d1")  # the same password: a new salt, so a new entry
    reload(b)
    for u, c in gone5.items():
        assert c.disconnected.wait(5), u
        assert c.server_disconnect == NOT_AUTHORIZED, u
    for u, r in gone3.items():
        assert closed_without_a_packet(r) == b"", u
    alice5.publish("t/after", b"x")
    # No will of a revoked client was published: the marker is the first message.
    assert alice5.get().topic == "t/after"
    assert alice3.read_packet() == b"\x30\x0a\x00\x07t/afterx"
    assert not alice5.disconnected.is_set()
    log = b.log()
    assert len(revoked_lines(b)) == 6
    assert log.count("user 'bob' is no longer in the password file") == 2
    assert log.count("the password file entry of user 'carol' changed") == 2
    assert log.count("the password file entry of user 'dave' changed") == 2
    # They may come back with what the file says now.
    for user, password, rc in (("carol", "c2", 0), ("dave", "d1", 0), ("bob", "b1", 134)):  # paho: 0x86 for 3.1.1 return code 4
        c = Client(b.port, username=user, password=password)
        assert c.connect(expect_ok=False)[0] == rc, user
        c.disconnect()
    alice5.disconnect()


def test_a_new_acl_stops_live_retained_queued_and_in_flight_deliveries(make_broker, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n")
    b = make_broker(["acl_file acl"])
    live = Client(b.port, protocol=5, clean_session=None)
    live.connect()
    assert live.subscribe([("a/#", 1), ("secret/#", 1), ("m/#", 1)]) == [1, 1, 1]
    keeper = Client(b.port, client_id=uid("keeper"), clean_session=False)
    keeper.connect()
    keeper.subscribe([("a/#", 1), ("secret/#", 1)])
    keeper.disconnect()
    # A 3.1.1 session that holds a QoS 1 message unacknowledged when it goes.
    holder = RawClient(b.port)
    holder.connect(client_id="holder", clean=False)
    holder.send(subscribe_packet(1, "secret/#", 1))
    assert holder.read_packet() == b"\x90\x03\x00\x01\x01"
    pub = Client(b.port)
    pub.connect()
    pub.publish("secret/inflight", b"i", qos=1)
    assert holder.read_packet()[:1] == b"\x32"  # not acknowledged
    holder.close()
    for topic in ("secret/r", "a/r"):
        pub.publish(topic, b"retained", qos=1, retain=True)
    for topic in ("secret/q", "a/q"):
        pub.publish(topic, b"queued", qos=1)
    pub.publish("m/1", b"", qos=1)
    assert [m.topic for m in live.collect_until("m/1")] == [
        "secret/inflight", "secret/r", "a/r", "secret/q", "a/q"]

    acl.write_text("topic readwrite #\ntopic deny secret/#\n")
    reload(b)
    # Live: the subscription stays, what it matches is filtered; the client stays connected.
    pub.publish("secret/after", b"no", qos=1)
    pub.publish("a/after", b"yes", qos=1)
    assert [m.topic for m in live.collect_until("a/after")] == []
    assert not live.disconnected.is_set()
    # Retained, to a new subscription: only what the ACL allows.
    assert live.subscribe("+/r", 1) == [1]
    got = live.get()
    assert (got.topic, got.retain) == ("a/r", True)
    live.assert_no_message()
    # Queued while offline before the reload: only what the ACL allows now.
    keeper2 = Client(b.port, client_id=keeper.client_id, clean_session=False)
    assert keeper2.connect()[1] is True
    pub.publish("a/end", b"", qos=1)
    assert [m.topic for m in keeper2.collect_until("a/end")] == ["a/r", "a/q", "a/after"]
    # In flight: not sent again; nothing queued either: the PINGRESP is the first packet.
    holder = RawClient(b.port)
    holder.send(connect_packet(client_id="holder", clean=False))
    assert holder.read_packet() == b"\x20\x02\x01\x00"
    holder.send(PINGREQ)
    assert holder.read_packet() == b"\xd0\x00"
    holder.send(ack_packet(0x40, 1))  # a late PUBACK of the forgotten message is harmless
    assert "the new ACL denies 5 queued messages and 0 wills" in b.log()
    assert revoked_lines(b) == []
    for c in (live, keeper2, pub):
        c.disconnect()
    holder.close()


def tls_raw_v3(port, ctx, client_id):
    s = ctx.wrap_socket(socket.create_connection((HOST, port), timeout=5), server_hostname=HOST)
    return raw_v3(port, client_id, sock=s)


def test_tls_clients_whose_certificate_no_longer_passes_go(make_broker, pki, tmp_path):  # noqa: F811
    both = tmp_path / "both-cas.crt"
    both.write_text((pki / "ca.crt").read_text() + (pki / "other-ca.crt").read_text())
    strict = tls_lines(pki, f"cafile {both}", "require_certificate true")
    lax = tls_lines(pki)
    b = make_broker(["listener 0 127.0.0.1", *strict, "listener 0 127.0.0.1", *lax])
    _, a, l = b.ports
    alice5 = v5(a, tls=context(pki, cert="alice"))
    mallory5 = v5(a, tls=context(pki, cert="mallory"))
    mallory3 = tls_raw_v3(a, context(pki, cert="mallory"), "mallory3")
    nocert5 = v5(l, tls=context(pki))
    nocert3 = tls_raw_v3(l, context(pki), "nocert3")
    plain = v5(b.port)

    # The first TLS listener trusts only the CA now; the second asks for a certificate.
    b.conf.write_text("listener 0 127.0.0.1\nallow_anonymous true\n"
                      + "".join(x + "\n" for x in [
                          "listener 0 127.0.0.1", *tls_lines(pki, f"cafile {pki}/ca.crt",
                                                             "require_certificate true"),
                          "listener 0 127.0.0.1", *tls_lines(pki, f"cafile {pki}/ca.crt",
                                                             "require_certificate true")]))
    reload(b)
    for c in (mallory5, nocert5):
        assert c.disconnected.wait(5) and c.server_disconnect == NOT_AUTHORIZED
    for r in (mallory3, nocert3):
        assert closed_without_a_packet(r) == b""
    plain.publish("t/after", b"x")
    assert alice5.get().topic == "t/after" and plain.get().topic == "t/after"
    assert not alice5.disconnected.is_set() and not plain.disconnected.is_set()
    log = b.log()
    assert len(revoked_lines(b)) == 4
    assert log.count("its client certificate does not pass the listener's TLS settings now") == 2
    assert log.count("no client certificate, and require_certificate is on") == 2
    alice5.disconnect()
    plain.disconnect()


def test_what_the_new_acl_let_go_stays_gone_after_kill_9(make_broker, tmp_path):
    """The queued messages let go at the reload are journaled as gone: a kill -9 and a restart
    do not bring them back."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n")
    lines = ["acl_file acl", "persistence true", f"persistence_location {tmp_path}"]
    b = make_broker(lines)
    keeper = Client(b.port, client_id=uid("keeper"), clean_session=False)
    keeper.connect()
    keeper.subscribe([("a/#", 1), ("secret/#", 1)])
    keeper.disconnect()
    pub = Client(b.port)
    pub.connect()
    for topic in ("secret/1", "a/1", "secret/2", "a/2"):
        pub.publish(topic, b"q", qos=1)
    pub.disconnect()
    acl.write_text("topic readwrite #\ntopic deny secret/#\n")
    reload(b)
    before = b.log()
    b.stop(sig=signal.SIGKILL)
    b.start()
    back = Client(b.port, client_id=keeper.client_id, clean_session=False)
    assert back.connect()[1] is True
    pub = Client(b.port)
    pub.connect()
    pub.publish("a/end", b"", qos=1)
    assert [m.topic for m in back.collect_until("a/end")] == ["a/1", "a/2"]
    assert "the new ACL denies 2 queued messages" in before
    back.disconnect()
    pub.disconnect()


def test_a_bridge_link_is_not_checked_and_keeps_running(make_broker, gateway, tmp_path):  # noqa: F811
    """The gateway's own link to its upstream is not a client: turning anonymous access off
    and adding a password file and an ACL at the gateway leaves it up, and it carries on."""
    up = make_broker()
    bridge = ["connection up", f"address 127.0.0.1:{up.port}", "restart_timeout 1",
              "topic x/# out 1"]
    gw = gateway(up.port, ["topic x/# out 1"])
    wait_up(gw)
    anon = v5(gw.port)
    remote = Client(up.port)
    remote.connect()
    remote.subscribe("x/#", 1)
    pw = tmp_path / "gw-pw"
    passwd("-c", "-b", str(pw), "dev", "d1")
    (tmp_path / "gw-acl").write_text("user dev\ntopic write x/#\n")
    configure(gw, "allow_anonymous false", f"password_file {pw}", "acl_file gw-acl", *bridge)
    reload(gw)
    assert anon.disconnected.wait(5) and anon.server_disconnect == NOT_AUTHORIZED
    dev = Client(gw.port, username="dev", password="d1")
    dev.connect()
    dev.publish("x/after", b"1", qos=1)
    assert remote.get().topic == "x/after"
    assert gw.log().count("Bridge up connected to") == 1
    assert len(revoked_lines(gw)) == 1
    for c in (dev, remote):
        c.disconnect()
