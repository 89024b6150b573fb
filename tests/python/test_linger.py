"""Lingering close: a client the broker disconnects with a reason reads that reason (then EOF)
even while it is still sending, and the socket kept for that is bounded in number and time.

Raw sockets on loopback. The first test reproduces what broke the Paho MQTT 5 interop test
for Receive Maximum: closed at once, a socket with unread input answers with a reset that
throws away what it had not sent yet, the DISCONNECT among it."""
import os
import socket
import struct
import threading
import time

from clients import _remaining_length, _str, packet

HOST = "127.0.0.1"
LINGER = 2.0  # src/net/linger.rs TIME
SLOTS = 64  # src/net/linger.rs SLOTS


def connect_v5(client_id):
    return packet(0x10, _str("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 60) + b"\x00"
                  + _str(client_id))


def publish_v5(topic, payload, qos=0, mid=1, retain=False):
    head = _str(topic) + (struct.pack("!H", mid) if qos else b"") + b"\x00"
    return packet(0x30 | (qos << 1) | int(retain), head + payload)


def disconnect_v5(code, reason):
    props = b"\x1f" + _str(reason)
    body = bytes([code]) + _remaining_length(len(props)) + props
    return bytes([0xE0]) + _remaining_length(len(body)) + body


def read_packets(sock, timeout=10.0):
    """Everything until EOF, split into packets; raises on a reset (the reason is lost)."""
    data = b""
    sock.settimeout(timeout)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    out = []
    while data:
        length, mult, i = 0, 1, 1
        while True:
            length += (data[i] & 0x7F) * mult
            mult *= 128
            i += 1
            if not data[i - 1] & 0x80:
                break
        out.append(data[:i + length])
        data = data[i + length:]
    return out


def open_v5(port, client_id, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((HOST, port))
    s.sendall(connect_v5(client_id))
    s.settimeout(5)
    head = s.recv(2)
    body = b""
    while len(body) < head[1]:
        body += s.recv(head[1] - len(body))
    assert head[0] == 0x20 and body[1] == 0, f"CONNACK {head + body!r}"
    return s


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid, want, timeout):
    deadline = time.monotonic() + timeout
    while fds(pid) != want:
        assert time.monotonic() < deadline, f"{fds(pid)} fds, not {want}, after {timeout} s"
        time.sleep(0.02)


def assert_lingers(pid, want, seconds):
    """The broker holds `want` fds for `seconds` (its lingering sockets stay open)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert fds(pid) == want, f"{fds(pid)} fds, not {want}: the socket did not linger"
        time.sleep(0.02)


def test_client_still_sending_reads_the_disconnect_reason(make_broker):
    b = make_broker(["max_inflight_messages 5"])  # Receive Maximum 5
    # A retained message that fills the victim's small receive window, so the broker still
    # holds unsent output when it ends the connection.
    setter = open_v5(b.port, "setter")
    big = bytes(16 * 1024)
    setter.sendall(publish_v5("big/r", big, qos=0, retain=True) + b"\xe0\x00")
    assert read_packets(setter) == []
    s = open_v5(b.port, "victim", rcvbuf=4096)
    # SUBSCRIBE big/r, six QoS 2 publishes without PUBREL (one over Receive Maximum), then
    # more publishes for as long as the broker takes them, as a busy client would.
    sub = packet(0x82, struct.pack("!H", 1) + b"\x00" + _str("big/r") + b"\x00")
    qos2 = b"".join(publish_v5("t/x", b"p", qos=2, mid=i) for i in range(1, 7))
    more = publish_v5("t/more", bytes(200)) * 5000
    sent = {}

    def send():
        try:
            s.sendall(sub + qos2)
            for _ in range(2):
                s.sendall(more)
            sent["all"] = True
        except OSError as e:
            sent["error"] = e

    t = threading.Thread(target=send)
    t.start()
    t.join(10)
    got = read_packets(s)
    s.close()
    assert [p[0] for p in got[:2]] == [0x90, 0x31], got[:2]  # SUBACK, the retained PUBLISH
    assert got[1].endswith(big)
    # PUBREC 0x10: accepted, no subscriber matched.
    assert got[2:7] == [b"\x50\x03" + struct.pack("!H", i) + b"\x10" for i in range(1, 6)]
    assert got[7:] == [disconnect_v5(0x93, "receive maximum exceeded")], got[7:]


def test_lingering_socket_is_gone_after_its_time(make_broker):
    b = make_broker(["max_connections 1"])
    pid = b.proc.pid
    base = fds(pid)
    s = open_v5(b.port, "twice")
    s.sendall(connect_v5("twice"))  # a second CONNECT: protocol error
    assert read_packets(s) == [disconnect_v5(0x82, "second CONNECT")]
    # It is no longer a client: the one connection allowed is free.
    other = open_v5(b.port, "next")
    other.sendall(b"\xe0\x00")
    assert read_packets(other) == []
    other.close()
    wait_fds(pid, base + 1, 1)
    # The client keeps its socket open: the broker's end lingers (still there half way
    # through), then closes by itself.
    assert_lingers(pid, base + 1, LINGER / 2)
    wait_fds(pid, base, LINGER + 2)
    s.close()


def test_lingering_ends_when_the_client_closes(make_broker):
    b = make_broker()
    pid = b.proc.pid
    base = fds(pid)
    s = open_v5(b.port, "closes")
    s.sendall(connect_v5("closes"))
    assert read_packets(s) == [disconnect_v5(0x82, "second CONNECT")]
    s.close()
    wait_fds(pid, base, LINGER / 2)


def test_at_most_64_sockets_linger(make_broker):
    b = make_broker()
    pid = b.proc.pid
    base = fds(pid)
    held = [open_v5(b.port, f"many-{i}") for i in range(SLOTS + 6)]
    # All at once (well within the linger time): a second CONNECT on each.
    for i, s in enumerate(held):
        s.sendall(connect_v5(f"many-{i}"))
    for i, s in enumerate(held):
        # Every one reads its reason; the ones beyond the slots are closed at once.
        assert read_packets(s) == [disconnect_v5(0x82, "second CONNECT")], i
    # (Those closed at once may take a moment after their EOF to be gone.)
    wait_fds(pid, base + SLOTS, 1)
    # The broker still serves while they linger, and every socket is closed in the end.
    c = open_v5(b.port, "served")
    c.close()
    wait_fds(pid, base, LINGER + 2)
    for s in held:
        s.close()


def test_refused_connack_then_eof_while_the_client_sends(make_broker):
    b = make_broker()
    pid = b.proc.pid
    base = fds(pid)
    s = socket.create_connection((HOST, b.port))
    # MQTT 3.1.1 with an unknown protocol level, and packets after it.
    bad = packet(0x10, _str("MQTT") + bytes([9, 0x02]) + struct.pack("!H", 60) + _str("lvl9"))
    s.sendall(bad + publish_v5("t/more", bytes(200)) * 500)
    assert read_packets(s) == [b"\x20\x02\x00\x01"]  # CONNACK 1: unacceptable protocol version
    assert_lingers(pid, base + 1, LINGER / 4)
    s.close()
    wait_fds(pid, base, LINGER / 2)
