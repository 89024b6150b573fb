"""Persistence (`persistence true`): retained messages and persistent sessions with their
subscriptions survive a restart, a kill -9 right after the acknowledgement, and damaged files.

The journal format is read here too (16-byte header, then frames of u32 length, u32 CRC-32,
body) to know exactly which records lie before a cut or a flipped byte."""
import os
import random
import shutil
import signal
import struct
import time
import zlib

import pytest

from clients import Client, uid

MQTTv5 = 5


def persist_lines(d, *extra):
    return ["persistence true", f"persistence_location {d}", *extra]


def retained(port, prefix="r/", wait=1.0):
    """{topic: payload} of the retained messages under prefix."""
    c = Client(port)
    c.connect()
    c.subscribe(prefix + "#", 1)
    got = {}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            m = c.messages.get(timeout=0.2)
        except Exception:
            continue
        assert m.retain
        got[m.topic] = m.payload
    c.disconnect()
    return got


def publish_retained(port, items, qos=1):
    c = Client(port)
    c.connect()
    for topic, payload in items:
        c.publish(topic, payload, qos=qos, retain=True)  # waits for PUBACK
    c.disconnect()


def journal_frames(path):
    """(start, end) byte offsets of each frame in a journal or snapshot file."""
    data = path.read_bytes()
    out, at = [], 16
    while at + 8 <= len(data):
        n, crc = struct.unpack_from("<II", data, at)
        body = data[at + 8:at + 8 + n]
        if len(body) < n or zlib.crc32(body) != crc:
            break
        out.append((at, at + 8 + n))
        at += 8 + n
    return out


def test_retained_and_sessions_survive_a_restart(make_broker, tmp_path):
    d = tmp_path / "data"
    b = make_broker(persist_lines(d))
    publish_retained(b.port, [("r/a", b"one"), ("r/b/c", b"two"), ("r/gone", b"x")])
    publish_retained(b.port, [("r/gone", b"")])  # deleted again
    v5 = Client(b.port, protocol=MQTTv5, clean_session=None)
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "text/plain"
    props.UserProperty = [("k", "v")]
    v5.connect()
    v5.c.publish("r/props", b"with props", qos=1, retain=True, properties=props).wait_for_publish(5)
    v5.disconnect()
    sub = Client(b.port, client_id="keeper", clean_session=False)
    sub.connect()
    sub.subscribe([("s/#", 1), ("t/+/x", 2)])
    sub.disconnect()
    assert b.stop() == 0
    assert "restored" in b.log()

    b2 = make_broker(persist_lines(d))
    assert "3 retained messages and 1 sessions restored" in b2.log(), b2.log()
    assert retained(b2.port) == {"r/a": b"one", "r/b/c": b"two", "r/props": b"with props"}
    # The subscriptions are back: messages for the offline session are queued.
    pub = Client(b2.port)
    pub.connect()
    pub.publish("s/1", b"while away", qos=1)
    pub.publish("t/y/x", b"qos2 filter", qos=2)
    pub.disconnect()
    sub = Client(b2.port, client_id="keeper", clean_session=False)
    rc, present = sub.connect()
    assert present
    got = sorted((m.topic, m.payload, m.qos) for m in sub.get_n(2))
    assert got == [("s/1", b"while away", 1), ("t/y/x", b"qos2 filter", 2)]
    sub.disconnect()
    # MQTT 5 properties of a retained message came back too.
    got = []
    c = Client(b2.port, protocol=MQTTv5, clean_session=None)
    c.c.on_message = lambda cl, u, m: got.append(m)
    c.connect()
    c.subscribe("r/props", 1)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    c.disconnect()
    assert got and got[0].properties.ContentType == "text/plain"
    assert got[0].properties.UserProperty == [("k", "v")]


def test_kill_9_right_after_the_acknowledgement_loses_nothing(make_broker, tmp_path):
    d = tmp_path / "data"
    b = make_broker(persist_lines(d))
    items = [(f"r/{i}", f"v{i}".encode()) for i in range(200)]
    publish_retained(b.port, items)  # every one acknowledged (PUBACK) before the kill
    sub = Client(b.port, client_id="k9", clean_session=False)
    sub.connect()
    sub.subscribe("q/#", 1)
    sub.disconnect()
    b.stop(sig=signal.SIGKILL)
    b2 = make_broker(persist_lines(d))
    assert retained(b2.port) == dict(items)
    assert "1 sessions restored" in b2.log()


def test_a_session_that_ends_is_not_restored(make_broker, tmp_path):
    d = tmp_path / "data"
    b = make_broker(persist_lines(d))
    c = Client(b.port, client_id="temp", clean_session=False)
    c.connect()
    c.subscribe("x/#", 1)
    c.disconnect()
    # Clean session: the old session ends.
    c = Client(b.port, client_id="temp", clean_session=True)
    c.connect()
    c.disconnect()
    b.stop(sig=signal.SIGKILL)
    b2 = make_broker(persist_lines(d))
    assert "0 sessions restored" in b2.log(), b2.log()


def test_nothing_is_written_while_nothing_changes(make_broker, tmp_path):
    d = tmp_path / "data"
    b = make_broker(persist_lines(d))
    publish_retained(b.port, [("r/a", b"1")])
    time.sleep(0.3)
    journal = d / "gatemq.db.journal"
    size = journal.stat().st_size
    # Clean-session clients coming and going and QoS 0 traffic change nothing kept.
    for _ in range(5):
        c = Client(b.port)
        c.connect()
        c.subscribe("n/#", 0)
        c.publish("n/x", b"transient", qos=1)
        c.disconnect()
    time.sleep(1.5)
    assert journal.stat().st_size == size
    assert b.stop() == 0
    # The final snapshot holds the state; the journal starts empty.
    assert journal.stat().st_size == 16
    assert len(journal_frames(d / "gatemq.db")) == 1


def make_journal(make_broker, tmp_path, n=30):
    """A data folder whose journal holds n retained-message records (the broker killed)."""
    d = tmp_path / "data"
    b = make_broker(persist_lines(d))
    publish_retained(b.port, [(f"r/{i:02}", f"v{i}".encode()) for i in range(n)])
    b.stop(sig=signal.SIGKILL)
    frames = journal_frames(d / "gatemq.db.journal")
    assert len(frames) == n
    return d, frames


def test_a_journal_cut_anywhere_keeps_every_record_before_the_cut(make_broker, tmp_path):
    d, frames = make_journal(make_broker, tmp_path)
    journal = d / "gatemq.db.journal"
    data = journal.read_bytes()
    rnd = random.Random(5)
    cuts = sorted(rnd.sample(range(17, len(data)), 6)) + [frames[-1][1] - 1]
    for cut in cuts:
        run = tmp_path / f"cut{cut}"
        shutil.copytree(d, run)
        (run / "gatemq.db.journal").write_bytes(data[:cut])
        b = make_broker(persist_lines(run))
        whole = sum(1 for s, e in frames if e <= cut)
        assert retained(b.port, wait=0.5) == {f"r/{i:02}": f"v{i}".encode() for i in range(whole)}
        if cut not in {e for _, e in frames}:
            assert "was cut short" in b.log()
        b.stop()


def test_a_flipped_bit_costs_its_record_only_and_the_file_is_moved_aside(make_broker, tmp_path):
    d, frames = make_journal(make_broker, tmp_path)
    data = (d / "gatemq.db.journal").read_bytes()
    rnd = random.Random(9)
    # Random places, and the first and last byte of a middle record and of the last one.
    places = [rnd.randrange(16, len(data)) for _ in range(4)]
    places += [frames[12][0], frames[12][1] - 1, frames[-1][0] + 1]
    for k, at in enumerate(places):
        bad = bytearray(data)
        bad[at] ^= 1 << rnd.randrange(8)
        run = tmp_path / f"flip{k}"
        shutil.copytree(d, run)
        (run / "gatemq.db.journal").write_bytes(bytes(bad))
        b = make_broker(persist_lines(run))
        hit = next(i for i, (s, e) in enumerate(frames) if s <= at < e)
        want = {f"r/{i:02}": f"v{i}".encode() for i in range(len(frames)) if i != hit}
        assert retained(b.port, wait=0.5) == want, f"flip at {at} (record {hit})"
        log = b.log()
        assert b.alive()
        b.stop()
        if "was cut short" in log:
            # Only the last record's length can run past the end: a torn tail, not damage.
            assert hit == len(frames) - 1, log
            continue
        n = frames[hit][1] - frames[hit][0]
        assert (f"gatemq.db.journal is damaged: {n} bytes in 1 place skipped (the first at "
                f"byte {frames[hit][0]}); the {len(frames) - 1} intact records around them "
                "were read (the file is moved aside)") in log, log
        assert any(p.name.startswith("gatemq.db.journal.damaged-") for p in run.iterdir())


def frame_kinds(path):
    """(start, end, kind, message id) of each frame; the id of Message (5) and Hold (6) records."""
    data, out = path.read_bytes(), []
    for s, e in journal_frames(path):
        body = data[s + 8:e]
        kind, mid = body[0], None
        if kind == 5:
            mid = struct.unpack_from("<Q", body, 1)[0]
        elif kind == 6:
            n = struct.unpack_from("<H", body, 1)[0]
            mid = struct.unpack_from("<Q", body, 3 + n)[0]
        out.append((s, e, kind, mid, body))
    return out


def test_a_damaged_sector_mid_journal_costs_only_the_records_in_it(make_broker, tmp_path):
    """300 messages queued for an offline persistent session, then 50 retained ones; kill -9;
    one 512-byte sector in the middle of the journal overwritten with garbage. Every message
    and retained message whose records lie outside that sector comes back, exactly."""
    d = tmp_path / "data"
    b = make_broker(persist_lines(d))
    sub = Client(b.port, client_id="sector", clean_session=False)
    sub.connect()
    sub.subscribe("q/#", 1)
    sub.disconnect()
    pub = Client(b.port)
    pub.connect()
    for i in range(300):
        pub.publish("q/t", f"queued-{i:03}".encode(), qos=1)  # waits for PUBACK
    pub.disconnect()
    publish_retained(b.port, [(f"r/{i:02}", f"ret-{i:02}".encode()) for i in range(50)])
    b.stop(sig=signal.SIGKILL)
    journal = d / "gatemq.db.journal"
    frames = frame_kinds(journal)
    data = journal.read_bytes()
    assert len(frames) >= 1 + 300 + 50 and frames[-1][1] == len(data)
    start = (len(data) // 2) & ~511
    sector = range(start, start + 512)
    bad = bytearray(data)
    bad[start:start + 512] = random.Random(3).randbytes(512)
    journal.write_bytes(bytes(bad))
    hit = [f for f in frames if f[0] < sector.stop and sector.start < f[1]]
    lost_ids = {f[3] for f in hit if f[2] in (5, 6)}
    payload = {f[3]: f[4] for f in frames if f[2] == 5}
    want_queued = {f"queued-{i:03}".encode() for i in range(300)}
    lost_payloads = {q for q in want_queued if any(q in payload[mid] for mid in lost_ids)}
    want_queued -= lost_payloads
    lost_retained = {f"r/{i:02}" for i in range(50)
                     if any(f[2] == 1 and f"ret-{i:02}".encode() in f[4] for f in hit)}
    want_retained = {f"r/{i:02}": f"ret-{i:02}".encode() for i in range(50)
                     if f"r/{i:02}" not in lost_retained}

    b2 = make_broker(persist_lines(d))
    log = b2.log()
    assert "gatemq.db.journal is damaged: " in log and "in 1 place skipped" in log, log
    assert retained(b2.port) == want_retained
    back = Client(b2.port, client_id="sector", clean_session=False)
    back.connect()
    got = [m.payload for m in back.drain(1.0)]
    back.disconnect()
    assert sorted(got) == sorted(want_queued)
    print(f"sector at {start}: {len(hit)} records hit; {len(got)}/300 queued and "
          f"{len(want_retained)}/50 retained came back;",
          next(ln for ln in log.splitlines() if "is damaged" in ln))


def test_a_snapshot_that_is_not_ours_is_moved_aside_and_the_broker_serves(make_broker, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "gatemq.db").write_bytes(os.urandom(300))
    b = make_broker(persist_lines(d))
    assert "is not a gatemq snapshot file" in b.log()
    assert any(p.name.startswith("gatemq.db.damaged-") for p in d.iterdir())
    publish_retained(b.port, [("r/new", b"ok")])
    assert retained(b.port) == {"r/new": b"ok"}


def test_persistence_options(make_broker, tmp_path):
    d = tmp_path / "other"
    b = make_broker(persist_lines(d, "persistence_file state.db", "persistence_sync interval 1",
                                  "autosave_interval 1800"))
    publish_retained(b.port, [("r/a", b"1")])
    b.stop(sig=signal.SIGKILL)
    assert (d / "state.db").exists() and (d / "state.db.journal").exists()
    b2 = make_broker(persist_lines(d, "persistence_file state.db", "persistence_sync never"))
    assert retained(b2.port) == {"r/a": b"1"}


def test_kill_9_mid_stream_loses_no_acknowledged_message_and_qos2_stays_exactly_once(
        make_broker, tmp_path):
    """QoS 1 and 2 messages stream to an offline persistent subscriber; the broker is killed
    at a random point, restarted, and the subscriber collects: every message whose PUBACK /
    PUBCOMP the publisher got is there, and no QoS 2 message twice. Three random points."""
    d = tmp_path / "data"
    lines = persist_lines(d, "max_queued_messages 0", "max_inflight_messages 0")
    rnd = random.Random(int(time.time()))
    b = make_broker(lines)
    sub = Client(b.port, client_id="offline-sub", clean_session=False)
    sub.connect()
    sub.subscribe([("stream/q1", 1), ("stream/q2", 2)])
    sub.disconnect()
    for run in range(3):
        pub = Client(b.port, client_id=f"pub-{run}")
        pub.connect()
        infos = []
        for i in range(3000):
            qos = 1 + i % 2
            infos.append((qos, f"{run}-{i}", pub.c.publish(f"stream/q{qos}", f"{run}-{i}", qos=qos)))
        time.sleep(rnd.uniform(0.01, 0.3))
        b.stop(sig=signal.SIGKILL)
        pub.kill()
        acked = {(q, p) for q, p, info in infos if info.is_published()}
        b = make_broker(lines)
        sub = Client(b.port, client_id="offline-sub", clean_session=False)
        sub.connect()
        got = sub.drain()
        sub.disconnect()
        delivered = [(m.qos, m.payload.decode()) for m in got]
        missing = acked - set(delivered)
        assert not missing, f"run {run}: {len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
        q2 = [p for q, p in delivered if q == 2]
        assert len(q2) == len(set(q2)), f"run {run}: a QoS 2 message came twice"
        assert len(acked) > 0, f"run {run}: nothing was acknowledged before the kill"
        print(f"run {run}: {len(acked)} acknowledged, {len(delivered)} delivered after kill -9")


def test_device_values_survive_kill_9(make_broker, tmp_path):
    d = tmp_path / "data"
    (tmp_path / "devices.toml").write_text(
        '[lamp]\ncommands.power = { type = "bool", initial = "OFF" }\n'
        'commands.brightness = { type = "int", min = 0, max = 255, initial = 128 }\n')
    lines = persist_lines(d, "devices_file devices.toml")
    b = make_broker(lines)
    c = Client(b.port)
    c.connect()
    c.subscribe("devices/lamp/+/result", 1)
    c.publish("devices/lamp/power/set", b"ON", qos=1)
    c.publish("devices/lamp/brightness/set", b"42", qos=1)
    assert len(c.get_n(2)) == 2
    c.disconnect()
    b.stop(sig=signal.SIGKILL)
    b2 = make_broker(lines)
    s = Client(b2.port)
    s.connect()
    s.subscribe("devices/lamp/state", 1)
    assert s.get().payload == b'{"power":"ON","brightness":42}'
    s.disconnect()


def test_a_delayed_will_survives_kill_9_and_goes_out_on_time(make_broker, tmp_path):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    d = tmp_path / "data"
    b = make_broker(persist_lines(d))
    watcher = Client(b.port)
    watcher.connect()
    watcher.subscribe("wills/#", 1)
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = 3
    cp = Properties(PacketTypes.CONNECT)
    cp.SessionExpiryInterval = 60
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dying", protocol=mqtt.MQTTv5)
    dev.will_set("wills/dying", b"gone", qos=1, retain=False, properties=wp)
    dev.connect("127.0.0.1", b.port, properties=cp)
    dev.loop(1)
    lost_at = time.monotonic()
    dev.socket().close()  # connection lost: the will waits 3 s
    time.sleep(0.3)
    watcher.assert_no_message(0.2)
    b.stop(sig=signal.SIGKILL)
    watcher.kill()
    b2 = make_broker(persist_lines(d))
    w2 = Client(b2.port)
    w2.connect()
    w2.subscribe("wills/#", 1)
    m = w2.get(timeout=6)
    assert (m.topic, m.payload) == ("wills/dying", b"gone")
    # Not before its delay (whole seconds are kept), not long after it.
    assert 2.0 <= time.monotonic() - lost_at <= 5.5
    w2.disconnect()


def test_a_config_named_without_a_folder_starts_and_keeps_its_state(tmp_path):
    """`gatemq -c gatemq.conf` run in the config's own folder: the files it names are found
    there, and the journal, its snapshot and the devices' values are written there (the folder
    of a bare file name was the empty path, which the snapshot's directory sync could not
    open, so the broker stopped at start)."""
    import subprocess
    from conftest import BIN, free_port

    port = free_port()
    (tmp_path / "devices.toml").write_text('[lamp]\ncommands.power = { type = "bool", initial = "OFF" }\n')
    (tmp_path / "gatemq.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\ndevices_file devices.toml\n")

    log = tmp_path / "gatemq.log"

    def start():
        proc = subprocess.Popen([BIN, "-c", "gatemq.conf"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        deadline = time.monotonic() + 10
        while f"listening on 127.0.0.1:{port}" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        return proc

    proc = start()
    try:
        publish_retained(port, [("r/kept", b"yes")])
        c = Client(port)
        c.connect()
        c.subscribe("devices/lamp/power", 1)
        c.get()  # the retained OFF
        c.publish("devices/lamp/power/set", b"ON", qos=1)
        assert c.get().payload == b"ON"
        c.disconnect()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    assert (tmp_path / "gatemq.db").exists(), sorted(p.name for p in tmp_path.iterdir())

    proc = start()
    try:
        assert retained(port) == {"r/kept": b"yes"}
        assert retained(port, "devices/lamp/")["devices/lamp/power"] == b"ON"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
