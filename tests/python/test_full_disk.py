"""A full disk (a 400 KiB tmpfs nearly filled by a filler file; the tests run as root) never
costs an acknowledged message and never stops the broker: while the journal cannot be
written, the PUBACK of a message that must be kept is held and its publisher not read; QoS 0
and clean sessions keep flowing; after kill -9, a restart on the still full disk serves and
delivers every acknowledged message; when space comes back, held acknowledgements go out in
order by themselves."""
import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from clients import Client, RawClient, publish_packet, uid

HTTP_RE = re.compile(r"HTTP \(status page, /metrics\) on 127\.0\.0\.1:(\d+)")


@pytest.fixture
def disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(disk, leave):
    """Fill `disk` up to `leave` free bytes with a filler file."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
        f.flush()
        os.fsync(f.fileno())


def puback_of(raw, timeout):
    """The packet id of the next PUBACK, or None if none comes within `timeout`."""
    try:
        p = raw.read_packet(timeout=timeout)
    except AssertionError:
        return None
    assert p[0] == 0x40 and len(p) == 4, p
    return int.from_bytes(p[2:4], "big")


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(re.search(rf"^gatemq_{name} (\d+)$", text, re.M).group(1))


def sys_failing(port):
    c = Client(port)
    c.connect()
    c.subscribe("$SYS/broker/persistence/failing", 0)
    value = c.get().payload
    c.disconnect()
    return value


def lines(log, text):
    return [ln for ln in log.splitlines() if text in ln]


def test_a_full_disk_holds_acknowledgements_and_loses_none(make_broker, disk):
    conf = ["persistence true", f"persistence_location {disk}", "http_listener 0 127.0.0.1",
            "sys_interval 1"]
    b = make_broker(conf)
    http = int(HTTP_RE.search(b.log()).group(1))
    keeper = Client(b.port, client_id="keeper", clean_session=False)
    keeper.connect()
    keeper.subscribe("q/#", 1)
    keeper.disconnect()
    assert sys_failing(b.port) == b"0" and metric(http, "persistence_failing") == 0

    # A raw publisher: QoS 1 messages one after another until one is not acknowledged.
    fill(disk, 24 * 1024)
    pub = RawClient(b.port)
    pub.connect(client_id=uid("pub"))
    acked, mid = [], 0
    while True:
        mid += 1
        assert mid < 5000, "the disk never filled"
        pub.send(publish_packet("q/t", f"m{mid:05}".encode(), qos=1, mid=mid))
        got = puback_of(pub, 1.0)
        if got is None:
            break
        assert got == mid
        acked.append(mid)
    held = mid
    for extra in range(3):  # more behind it: not read, not acknowledged
        pub.send(publish_packet("q/t", f"m{held + 1 + extra:05}".encode(), qos=1,
                                mid=held + 1 + extra))
    assert puback_of(pub, 1.0) is None
    assert len(acked) > 20, acked

    # Meanwhile clean sessions and QoS 0 flow, and the broker says persistence is failing.
    live = Client(b.port)
    live.connect()
    live.subscribe("live/#", 1)
    other = Client(b.port)
    other.connect()
    other.publish("live/a", b"qos0", qos=0)
    other.publish("live/b", b"qos1", qos=1)  # to a clean session only: acknowledged
    assert sorted(m.payload for m in live.get_n(2)) == [b"qos0", b"qos1"]
    assert sys_failing(b.port) == b"1"
    assert metric(http, "persistence_failing") == 1
    assert metric(http, "persistence_held_connections") == 1
    assert b.alive()
    log = b.log()
    assert len(lines(log, "persistence: cannot write")) == 1, log
    assert "no space left on device" in lines(log, "persistence: cannot write")[0]

    # kill -9 and a restart on the still full disk: it serves, and every acknowledged message
    # comes back.
    b.stop(sig=signal.SIGKILL)
    b2 = make_broker(conf)
    assert b2.alive()
    assert len(lines(b2.log(), "persistence: cannot write")) == 1, b2.log()
    back = Client(b2.port, client_id="keeper", clean_session=False)
    back.connect()
    got = [int(m.payload[1:]) for m in back.drain()]
    assert set(acked) <= set(got), sorted(set(acked) - set(got))
    assert set(got) <= set(range(1, held + 4))
    print(f"{len(acked)} acknowledged before the disk was full, {len(got)} delivered after "
          f"kill -9 and a restart on the full disk")

    # Still full: a message for the (now online) persistent session is held, in order with the
    # ones behind it; freeing the space releases them by themselves.
    http2 = int(HTTP_RE.search(b2.log()).group(1))
    pub2 = RawClient(b2.port)
    pub2.connect(client_id=uid("pub2"))
    for m in (1, 2, 3):
        pub2.send(publish_packet("q/t", f"n{m:05}".encode(), qos=1, mid=m))
    assert puback_of(pub2, 1.5) is None
    assert metric(http2, "persistence_failing") == 1
    (disk / "filler").unlink()
    freed = time.monotonic()
    assert [puback_of(pub2, 10.0) for _ in range(3)] == [1, 2, 3]
    print(f"acknowledgements resumed {time.monotonic() - freed:.1f} s after the space came back")
    assert sys_failing(b2.port) == b"0"
    assert metric(http2, "persistence_failing") == 0
    assert len(lines(b2.log(), "persistence: writing again after")) == 1, b2.log()
    news = sorted(back.messages.get(timeout=5).payload for _ in range(3))
    assert news == [b"n00001", b"n00002", b"n00003"]
    pub2.send(b"\xe0\x00")  # DISCONNECT
    back.disconnect()
    assert b2.stop() == 0
