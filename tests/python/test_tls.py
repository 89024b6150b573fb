"""TLS listeners with real clients (paho-mqtt over Python's ssl, mosquitto_pub/sub with
--cafile/--cert/--key), certificates made by openssl at test time; and the listener options
that go with them: per_listener_settings, a listener's max_connections,
use_identity_as_username, use_username_as_clientid."""
import socket
import threading
import ssl
import subprocess
import time

import pytest

from clients import (HOST, Client, MosquittoSub, connect_packet, mosquitto_pub,
                     subscribe_packet, uid)
from conftest import BIN


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, a server certificate for 127.0.0.1, client certificates for 'alice' (from
    the CA) and 'mallory' (CN alice too, but from another CA)."""
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                "-subj", f"/CN=gatemq test {ca}")

    def leaf(name, cn, ca, ext):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/O=gatemq/CN={cn}")
        (d / f"{name}.ext").write_text(ext)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")

    leaf("server", "localhost", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    leaf("alice", "alice", "ca", "extendedKeyUsage=clientAuth\n")
    leaf("mallory", "alice", "other-ca", "extendedKeyUsage=clientAuth\n")
    return d


def tls_lines(pki, *extra):
    return [f"certfile {pki}/server.crt", f"keyfile {pki}/server.key", *extra]


def context(pki, cert=None, ca="ca", maximum=None):
    ctx = ssl.create_default_context(cafile=str(pki / f"{ca}.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def tls_connack(port, ctx, **connect):
    """CONNECT over TLS: the CONNACK's return code, or None when the TLS handshake or the
    connection fails before one arrives (TLS 1.3 reports a refused client certificate only
    after the client's side of the handshake is done)."""
    raw = socket.create_connection((HOST, port), timeout=5)
    try:
        s = ctx.wrap_socket(raw, server_hostname=HOST)
        s.sendall(connect_packet(client_id=uid("tls"), **connect))
        data = s.recv(4)
        return data[3] if len(data) == 4 and data[0] == 0x20 else None
    except (ssl.SSLError, ConnectionError, socket.timeout):
        return None
    finally:
        raw.close()


def test_mosquitto_clients_over_tls(make_broker, pki):
    b = make_broker(tls_lines(pki))
    assert "(TLS)" in b.log()
    ca = str(pki / "ca.crt")
    sub = MosquittoSub(b.port, "--cafile", ca, "-t", "tls/#", "-q", "1").wait_subscribed()
    try:
        mosquitto_pub(b.port, "--cafile", ca, "-t", "tls/a", "-m", "over tls", "-q", "1")
        mosquitto_pub(b.port, "--cafile", ca, "-t", "tls/b", "-m", "qos2", "-q", "2", "-r")
        assert sub.get() == (1, 0, "tls/a", "over tls")
        assert sub.get() == (1, 0, "tls/b", "qos2")  # granted QoS 1
    finally:
        sub.stop()


@pytest.mark.parametrize("protocol", [4, 5])
def test_paho_over_tls_many_and_large_messages(make_broker, pki, protocol):
    """More than rustls buffers at once (64 KiB): 300 QoS 1 messages and one of 400 KB, in
    order, both ways through TLS sessions."""
    b = make_broker(tls_lines(pki))
    v5 = {"clean_session": None} if protocol == 5 else {}
    sub = Client(b.port, tls=context(pki), protocol=protocol, **v5)
    sub.connect()
    sub.subscribe("big/#", 1)
    pub = Client(b.port, tls=context(pki), protocol=protocol, **v5)
    pub.connect()
    for i in range(300):
        pub.publish("big/n", f"{i}".encode(), qos=1, wait=False)
    large = bytes(range(256)) * 1600
    pub.publish("big/large", large, qos=1)
    got = sub.get_n(301, timeout=20)
    assert [m.payload for m in got[:300]] == [f"{i}".encode() for i in range(300)]
    assert got[300].payload == large
    pub.disconnect()
    sub.disconnect()


def test_plain_mqtt_on_a_tls_port_is_closed_and_others_carry_on(make_broker, pki):
    b = make_broker(tls_lines(pki))
    raw = socket.create_connection((HOST, b.port), timeout=5)
    raw.sendall(connect_packet(client_id="plain"))
    raw.settimeout(5)
    data = b""
    try:
        while chunk := raw.recv(100):
            data += chunk
    except ConnectionError:
        pass
    raw.close()
    assert not data.startswith(b"\x20"), "a plain client got a CONNACK on a TLS listener"
    assert tls_connack(b.port, context(pki)) == 0
    assert b.alive()


def test_client_that_does_not_trust_the_server_certificate_fails(make_broker, pki):
    b = make_broker(tls_lines(pki))
    assert tls_connack(b.port, context(pki, ca="other-ca")) is None
    assert tls_connack(b.port, context(pki)) == 0


def test_require_certificate(make_broker, pki):
    b = make_broker(tls_lines(pki, f"cafile {pki}/ca.crt", "require_certificate true"))
    assert tls_connack(b.port, context(pki)) is None  # no client certificate
    assert tls_connack(b.port, context(pki, cert="mallory")) is None  # another CA's
    assert tls_connack(b.port, context(pki, cert="alice")) == 0
    ca, crt, key = (str(pki / f) for f in ("ca.crt", "alice.crt", "alice.key"))
    sub = MosquittoSub(b.port, "--cafile", ca, "--cert", crt, "--key", key, "-t", "c/#").wait_subscribed()
    try:
        mosquitto_pub(b.port, "--cafile", ca, "--cert", crt, "--key", key, "-t", "c/1", "-m", "x")
        assert sub.get() == (0, 0, "c/1", "x")
    finally:
        sub.stop()


def test_certificate_identity_is_the_username_for_the_acl(make_broker, pki, tmp_path):
    (tmp_path / "acl").write_text("user alice\ntopic readwrite alice/#\n")
    b = make_broker(tls_lines(pki, f"cafile {pki}/ca.crt", "require_certificate true",
                              "use_identity_as_username true", "allow_anonymous false",
                              "acl_file acl"))
    # The CONNECT's own username and password do not count: the certificate says alice.
    c = Client(b.port, tls=context(pki, cert="alice"), username="bob", password="nonsense")
    c.connect()
    assert c.subscribe([("alice/#", 1), ("bob/#", 1)]) == [1, 0x80]
    c.disconnect()
    assert "u'alice'" in b.log()
    ctx = context(pki, cert="alice")
    raw = ctx.wrap_socket(socket.create_connection((HOST, b.port), timeout=5), server_hostname=HOST)
    raw.sendall(connect_packet(client_id="raw-alice") + subscribe_packet(1, "alice/x", 1))
    assert raw.recv(4) == b"\x20\x02\x00\x00"
    assert raw.recv(5) == b"\x90\x03\x00\x01\x01"
    raw.close()


def test_tls_version_sets_the_oldest_version_accepted(make_broker, pki):
    b = make_broker(tls_lines(pki, "tls_version tlsv1.3"))
    assert tls_connack(b.port, context(pki, maximum=ssl.TLSVersion.TLSv1_2)) is None
    assert tls_connack(b.port, context(pki)) == 0
    b12 = make_broker(tls_lines(pki))
    assert tls_connack(b12.port, context(pki, maximum=ssl.TLSVersion.TLSv1_2)) == 0


@pytest.mark.parametrize("lines,says", [
    (["certfile {d}/missing.crt", "keyfile {d}/server.key"],
     "cannot read certfile {d}/missing.crt: no such file or directory"),
    (["certfile {d}/server.crt", "keyfile {d}/server.crt"],
     "keyfile {d}/server.crt holds no private key"),
    (["certfile {d}/server.key", "keyfile {d}/server.key"],
     "certfile {d}/server.key holds no certificate"),
    (["certfile {d}/server.crt", "keyfile {d}/ca.key"],
     "certfile {d}/server.crt and keyfile {d}/ca.key cannot be used together"),
    (["certfile {d}/server.crt", "keyfile {d}/server.key", "cafile {d}/server.key", "require_certificate true"],
     "cafile {d}/server.key holds no certificate"),
])
def test_a_bad_certificate_setup_is_one_sentence_at_start(tmp_path, pki, lines, says):
    conf = tmp_path / "bad.conf"
    conf.write_text("listener 0 127.0.0.1\n" + "".join(l.format(d=pki) + "\n" for l in lines))
    r = subprocess.run([BIN, "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("gatemq: listener on port 0: ") and says.format(d=pki) in last, r.stderr


def connack_rc(port, tls=None, **kw):
    c = Client(port, tls=tls, **kw)
    rc = c.connect(expect_ok=False)[0]
    c.disconnect()
    return rc


def test_per_listener_settings_plain_with_passwords_tls_anonymous(make_broker, pki, tmp_path):
    subprocess.run([BIN, "passwd", "-c", "-b", str(tmp_path / "pw"), "dev", "pw1"], check=True)
    b = make_broker([
        "per_listener_settings true",
        "allow_anonymous false", "password_file pw",  # the first (plain) listener
        "listener 0 127.0.0.1", *tls_lines(pki), "allow_anonymous true",
    ])
    plain, secure = b.ports
    assert connack_rc(plain) == 135  # anonymous: not authorized
    assert connack_rc(plain, username="dev", password="pw1") == 0
    assert connack_rc(secure, tls=context(pki)) == 0
    # One broker behind both: a TLS subscriber gets a plain publisher's message.
    sub = Client(secure, tls=context(pki))
    sub.connect()
    sub.subscribe("mixed/#", 1)
    pub = Client(plain, username="dev", password="pw1")
    pub.connect()
    pub.publish("mixed/a", b"across", qos=1)
    assert sub.get().payload == b"across"
    sub.disconnect()
    pub.disconnect()


def test_per_listener_acl(make_broker, tmp_path):
    (tmp_path / "acl").write_text("topic read open/#\n")
    b = make_broker(["per_listener_settings true", "acl_file acl", "listener 0 127.0.0.1",
                     "allow_anonymous true"])
    restricted, free = b.ports
    watcher = Client(free)
    watcher.connect()
    watcher.subscribe("open/#", 1)
    r = Client(restricted)
    r.connect()
    r.publish("open/x", b"denied", qos=1)  # the ACL of its listener allows reading only
    watcher.assert_no_message(0.5)
    f = Client(free)
    f.connect()
    f.publish("open/x", b"allowed", qos=1)
    assert watcher.get().payload == b"allowed"
    for c in (watcher, r, f):
        c.disconnect()
    # Without per_listener_settings the one acl_file counts on both listeners.
    b2 = make_broker(["acl_file acl", "listener 0 127.0.0.1"])
    w2 = Client(b2.ports[0])
    w2.connect()
    w2.subscribe("open/#", 1)
    f2 = Client(b2.ports[1])
    f2.connect()
    f2.publish("open/x", b"denied too", qos=1)
    w2.assert_no_message(0.5)
    w2.disconnect()
    f2.disconnect()


def test_a_listeners_max_connections(make_broker):
    b = make_broker(["listener 0 127.0.0.1", "max_connections 2"])
    first, limited = b.ports
    held = [Client(limited) for _ in range(2)]
    for c in held:
        c.connect()
    raw = socket.create_connection((HOST, limited), timeout=5)
    raw.sendall(connect_packet(client_id="third"))
    try:
        assert raw.recv(4) == b""
    except ConnectionError:
        pass
    raw.close()
    # The other listener has no limit of its own.
    others = [Client(first) for _ in range(3)]
    for c in others:
        c.connect()
    held[0].disconnect()
    time.sleep(0.2)
    assert connack_rc(limited) == 0
    for c in held[1:] + others:
        c.disconnect()


def test_use_username_as_clientid(make_broker):
    b = make_broker(["use_username_as_clientid true"])
    first = Client(b.port, client_id="one", username="meter")
    first.connect()
    second = Client(b.port, client_id="two", username="meter")
    second.connect()
    # Both are client 'meter': the second took the session over.
    assert first.disconnected.wait(5)
    assert "as meter" in b.log()
    assert connack_rc(b.port) == 135  # no username, no client id
    second.disconnect()


@pytest.mark.parametrize("use_tls", [True, False])
def test_a_long_burst_to_a_fast_reader_never_stalls(make_broker, pki, use_tls):
    """100 MB of QoS 0 in one burst to a subscriber that keeps up: a flush stops after a
    bounded number of rounds with output left although the socket took everything, and no
    writable event will come for it; the rest must go out next turn, not at the next unrelated
    event (with no timers armed, never). Before the fix: 4 stalls in 8 TLS runs."""
    from clients import publish_packet
    b = make_broker(["sys_interval 0", "max_queued_messages 0", "max_keepalive 0",
                     *(tls_lines(pki) if use_tls else [])])

    def conn():
        s = socket.create_connection((HOST, b.port))
        return context(pki).wrap_socket(s, server_hostname=HOST) if use_tls else s

    sub = conn()
    sub.sendall(connect_packet(client_id="fast-sub", keepalive=0) + subscribe_packet(1, "burst", 0))
    pub = conn()
    pub.sendall(connect_packet(client_id="burst-pub", keepalive=0))
    pkt = publish_packet("burst", b"z" * 1000)
    n = 100_000
    expect = 4 + 5 + n * len(pkt)  # CONNACK, SUBACK, the publishes
    got = [0]

    def reader():
        buf = bytearray(4 << 20)
        while got[0] < expect:
            k = sub.recv_into(buf)
            if not k:
                break
            got[0] += k

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.3)
    pub.sendall(pkt * n)
    t.join(30)
    assert got[0] == expect, f"got {got[0]} of {expect} bytes"
    sub.close()
    pub.close()
