"""Keep Alive (MQTT 3.1.1 section 3.1.2.10)."""
import re
import subprocess
import time

from clients import PINGREQ, RawClient, connect_packet, connected, publish_packet, uid


def test_silent_client_disconnected_after_one_and_a_half_keepalive(broker):
    """[MQTT-3.1.2-24]: if no control packet arrives within 1.5 x Keep Alive the server
    disconnects the client. Keep Alive 1 -> closed after about 1.5 s, not at once."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("silent"), keepalive=1)
    elapsed = raw.wait_closed(timeout=4)
    assert 1.0 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s"


def test_pingreq_keeps_raw_client_alive(broker):
    """[MQTT-3.12.4-1]: the server answers each PINGREQ with PINGRESP; a client pinging every
    0.5 s with Keep Alive 1 stays connected well past 1.5 s."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("pinger"), keepalive=1)
    deadline = time.monotonic() + 3.0
    pongs = 0
    while time.monotonic() < deadline:
        raw.send(PINGREQ)
        assert raw.read_packet(timeout=1) == b"\xd0\x00"
        pongs += 1
        time.sleep(0.5)
    assert pongs >= 5
    raw.send(PINGREQ)
    assert raw.read_packet(timeout=1) == b"\xd0\x00"


def test_any_control_packet_resets_keepalive_timer(broker):
    """Section 3.1.2.10 counts any Control Packet, not only PINGREQ: a Keep Alive 1 client
    that only publishes (QoS 0, every 0.5 s) stays connected past 1.5 s."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("talker"), keepalive=1)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        raw.send(publish_packet("ka/chatter", b"x"))
        time.sleep(0.5)
    raw.send(PINGREQ)
    assert raw.read_packet(timeout=1) == b"\xd0\x00"


def test_paho_client_with_short_keepalive_stays_connected(broker):
    """paho sends PINGREQ on its own; with Keep Alive 1 it stays connected for 3 s and can
    still receive."""
    c = connected(broker.port, keepalive=1)
    c.subscribe("ka/t", 1)
    assert not c.disconnected.wait(3.0), "paho client with keepalive 1 was disconnected"
    pub = connected(broker.port)
    pub.publish("ka/t", b"still here", qos=1)
    assert c.get().payload == b"still here"


def silent_for(raw, seconds):
    """Nothing at all arrives (no packet, no close) for `seconds`."""
    raw.sock.settimeout(seconds)
    try:
        data = raw.sock.recv(16)
    except TimeoutError:
        data = None
    assert data is None, f"broker sent {data!r} (b'' = closed) to a keepalive-0 client"


def test_keepalive_zero_accepted_by_default(broker):
    """Keep Alive 0 (no keep-alive, section 3.1.2.10) is accepted with the default
    max_keepalive, as umqtt.simple and the Paho interop suite connect; the silent client is
    not disconnected, and still answered."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("zero"), keepalive=0)
    silent_for(raw, 2.5)
    raw.send(PINGREQ)
    assert raw.read_packet(timeout=1) == b"\xd0\x00"


def test_allow_zero_keepalive_false_is_mosquittos_rule(make_broker):
    """`allow_zero_keepalive false`: Mosquitto 2.0.12+'s rule, Keep Alive 0 counts as above
    max_keepalive: CONNACK 0x02 for 3.1.1, then the connection is closed."""
    b = make_broker(["allow_zero_keepalive false"])
    raw = RawClient(b.port)
    raw.send(connect_packet(client_id=uid("zero"), keepalive=0))
    assert raw.read_packet() == b"\x20\x02\x00\x02"
    raw.wait_closed(2)
    RawClient(b.port).connect(client_id=uid("one"), keepalive=1)


def test_client_sockets_have_tcp_keepalive(broker):
    """A keep-alive-0 client that vanishes is found by TCP keepalive: the broker's side of
    the connection runs the kernel's keepalive timer (ss shows `timer:(keepalive,...)`),
    first probe after 120 s idle."""
    raw = RawClient(broker.port)
    raw.connect(client_id=uid("zero"), keepalive=0)
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{broker.port} )"],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("\n") == 1, out
    m = re.search(r"timer:\(keepalive,(?:(\d+)min)?(?:(\d+)(?:\.\d+)?sec)?,0\)", out)
    assert m, out
    left = int(m.group(1) or 0) * 60 + int(m.group(2) or 0)
    assert 100 <= left <= 120, out


def test_keepalive_above_max_keepalive_rejected(make_broker):
    """`max_keepalive 10`: a 3.1.1 client asking for Keep Alive 60 gets CONNACK 0x02 (there is
    no server keep-alive in 3.1.1); Keep Alive 10 is accepted."""
    b = make_broker(["max_keepalive 10"])
    raw = RawClient(b.port)
    raw.send(connect_packet(client_id=uid("long"), keepalive=60))
    assert raw.read_packet() == b"\x20\x02\x00\x02"
    raw.wait_closed(2)
    ok = RawClient(b.port)
    ok.connect(client_id=uid("short"), keepalive=10)


def test_keepalive_zero_allowed_with_max_keepalive_0(make_broker):
    """`max_keepalive 0` allows Keep Alive 0, which turns the mechanism off
    (section 3.1.2.10): a silent client is not disconnected (checked for 2.5 s)."""
    b = make_broker(["max_keepalive 0"])
    raw = RawClient(b.port)
    raw.connect(client_id=uid("zero"), keepalive=0)
    raw.sock.settimeout(2.5)
    try:
        data = raw.sock.recv(16)
    except TimeoutError:
        data = None
    assert data is None, f"broker sent {data!r} (b'' = closed) to a keepalive-0 client"
    raw.send(PINGREQ)
    assert raw.read_packet(timeout=1) == b"\xd0\x00"
