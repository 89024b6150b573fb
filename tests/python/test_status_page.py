"""`http_listener`: the status page in headless Chromium (Debian's chromium, driven by
Playwright's playwright-core from tests/js), `/metrics` parsed and checked against traffic the
test makes, and the JSON the page lists."""
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

from clients import Client, RawClient, uid
from conftest import BIN, ROOT

JS = ROOT / "tests" / "js"
ARTIFACTS = JS / "artifacts"
HTTP_RE = re.compile(r"HTTP \(status page, /metrics\) on 127\.0\.0\.1:(\d+)")
DEVICES = """
[lamp]
name = "Living room lamp"
commands.power = { type = "bool", initial = "OFF" }
commands.brightness = { type = "int", min = 0, max = 255, initial = 128 }
commands.colour = { type = "enum", values = ["warm", "neutral", "cold"], initial = "warm" }

[fan]
name = "Attic fan"
commands.speed = { type = "enum", values = ["off", "low", "high"], initial = "off" }
commands.boost = { type = "trigger" }

[gw]
name = "Gateway"
readings.cpu_temp = { type = "float", path = "cpu_temp", scale = 0.001, round = 1, every_s = 0.2, unit = "°C" }
"""


def gateway(make_broker, tmp_path, *extra):
    """A broker with a WebSocket listener (ports[0]), a plain one (ports[1]), devices, and the
    http_listener on a free port; returns (broker, base URL)."""
    (tmp_path / "devices.toml").write_text(DEVICES)
    (tmp_path / "cpu_temp").write_text("47250\n")
    b = make_broker(["protocol websockets", "listener 0 127.0.0.1", "http_listener 0 127.0.0.1",
                     "devices_file devices.toml", *extra])
    port = int(HTTP_RE.search(b.log()).group(1))
    return b, f"http://127.0.0.1:{port}"


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def test_status_page_in_chromium(make_broker, tmp_path):
    """Anonymous clients are refused: the page logs in with a user of the password file."""
    passwd = tmp_path / "passwd"
    subprocess.run([BIN, "passwd", "-b", "-c", str(passwd), "dash", "board"], check=True,
                   capture_output=True)
    b, url = gateway(make_broker, tmp_path, f"password_file {passwd}", "allow_anonymous false")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    watcher = Client(b.ports[1], username="dash", password="board")
    watcher.connect()
    watcher.subscribe("devices/lamp/power/set", 1)
    r = subprocess.run(["node", str(JS / "status_page.mjs"), url + "/", str(shot), "dash:board"],
                       capture_output=True, text=True, timeout=90, cwd=JS)
    assert r.returncode == 0, r.stdout + r.stderr + b.log()[-3000:]
    assert "ALL OK" in r.stdout
    # The page's press went over MQTT like any client's command, and the broker executed it.
    m = watcher.get()
    assert (m.topic, m.payload) == ("devices/lamp/power/set", b"ON")
    check = Client(b.ports[1], username="dash", password="board")
    check.connect()
    check.subscribe("devices/lamp/power", 1)
    assert check.get().payload == b"ON"
    assert shot.stat().st_size > 10_000
    watcher.disconnect()
    check.disconnect()


def metrics(url):
    status, ctype, body = get(url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    values, typed, done, current = {}, set(), set(), None
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            family = name.split("{")[0]
            assert family in typed, f"{name} has no # TYPE line"
            # The text format wants each family's lines together.
            if family != current:
                assert family not in done, f"{family} is split up"
                done.add(current)
                current = family
            values[name] = float(value)
    return values


def test_metrics_follow_the_traffic(make_broker, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    b, url = gateway(make_broker, tmp_path, "max_queued_messages 2", "message_size_limit 1000",
                     "persistence true", f"persistence_location {store}")
    before = metrics(url)
    # An offline persistent subscriber whose queue holds 2: 5 QoS 1 messages, 3 dropped.
    sub_id = uid("slow")
    slow = Client(b.ports[1], client_id=sub_id, clean_session=False)
    slow.connect()
    slow.subscribe("m/#", 1)
    slow.disconnect()
    pub = Client(b.ports[1])
    pub.connect()
    for i in range(5):
        pub.publish("m/x", b"12345678", qos=1)
    pub.publish("m/big", b"b" * 2000, qos=1)  # above message_size_limit
    # Device commands: two done, one refused, one for a device nobody declared.
    pub.publish("devices/lamp/power/set", b"ON", qos=1)
    pub.publish("devices/fan/speed/set", b"high", qos=1)
    pub.publish("devices/lamp/brightness/set", b"999", qos=1)
    pub.publish("devices/toaster/power/set", b"ON", qos=1)
    time.sleep(0.2)
    after = metrics(url)
    delta = lambda k: after[k] - before.get(k, 0)  # noqa: E731
    assert delta("gatemq_publish_received_total") == 10
    assert delta('gatemq_publish_dropped_total{reason="queue_full"}') == 3
    assert delta('gatemq_publish_dropped_total{reason="message_size_limit"}') == 1
    assert after["gatemq_queued_messages"] == 2
    assert after["gatemq_queued_bytes"] == 16
    assert after["gatemq_clients_connected"] == 1
    assert after['gatemq_device_commands_total{device="lamp",result="ok"}'] == 1
    assert after['gatemq_device_commands_total{device="lamp",result="failed"}'] == 1
    assert after['gatemq_device_commands_total{device="fan",result="ok"}'] == 1
    assert after['gatemq_device_commands_total{device="_undeclared",result="failed"}'] == 1
    assert delta("gatemq_persistence_bytes_written_total") > 0
    assert delta("gatemq_bytes_received_total") > 2000
    pub.disconnect()


def test_the_json_the_page_lists(make_broker, tmp_path):
    b, url = gateway(make_broker, tmp_path)
    c = Client(b.ports[1], client_id="kitchen-sensor")
    c.connect()
    _, ctype, body = get(url + "/api/clients")
    assert ctype == "application/json"
    clients = json.loads(body)
    assert [x["client_id"] for x in clients] == ["kitchen-sensor"]
    assert clients[0]["protocol"] == "3.1.1" and clients[0]["address"].startswith("127.0.0.1:")
    devices = json.loads(get(url + "/api/devices")[2])
    assert devices["prefix"] == "devices"
    lamp = devices["devices"][0]
    assert (lamp["id"], lamp["name"]) == ("lamp", "Living room lamp")
    assert lamp["commands"][1] == {"name": "brightness", "type": "int", "min": 0, "max": 255}
    assert devices["devices"][1]["commands"][1] == {"name": "boost", "type": "trigger"}
    assert devices["devices"][1]["commands"][0] == {
        "name": "speed", "type": "enum", "values": ["off", "low", "high"]}
    assert lamp["readings"] == [] and devices["devices"][2]["commands"] == []
    assert devices["devices"][2]["readings"] == [
        {"name": "cpu_temp", "type": "float", "unit": "°C", "every_s": 0.2}]
    page = get(url + "/")[2].decode()
    assert f'"ws_port":{b.ports[0]}' in page and "<script>" in page
    c.disconnect()


def test_http_errors_and_no_websocket_listener(make_broker):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: the bridges' links stay down
    port = dead.getsockname()[1]
    b = make_broker(["http_listener 0 127.0.0.1", "connection up1", f"address 127.0.0.1:{port}",
                     "topic a/# out 1", "connection up2", f"address 127.0.0.1:{port}",
                     "topic b/# out 1"])
    url = "http://127.0.0.1:" + HTTP_RE.search(b.log()).group(1)
    assert '"ws_port":null' in get(url + "/")[2].decode()
    m = metrics(url)
    assert (m['gatemq_bridge_up{bridge="up1"}'], m['gatemq_bridge_up{bridge="up2"}']) == (0, 0)
    assert m['gatemq_bridge_queued_messages{bridge="up2"}'] == 0
    for path, method, code in (("/nope", "GET", 404), ("/metrics", "POST", 405)):
        try:
            urllib.request.urlopen(urllib.request.Request(url + path, method=method), timeout=5)
            raise AssertionError("no error")
        except urllib.error.HTTPError as e:
            assert e.code == code
    head = urllib.request.urlopen(urllib.request.Request(url + "/metrics", method="HEAD"), timeout=5)
    assert head.status == 200 and head.read() == b""
    # Garbage and a silent connection do not stop it.
    http_port = int(url.rsplit(":", 1)[1])
    raw = RawClient(http_port)
    raw.send(b"\x00\x01garbage\r\n\r\n")
    assert raw.sock.recv(100).startswith(b"HTTP/1.1 400")
    # A request and a half-close in one go (nc -N, health checkers) is answered.
    half = RawClient(http_port)
    half.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    half.sock.shutdown(socket.SHUT_WR)
    assert half.sock.recv(100).startswith(b"HTTP/1.1 200")
    assert get(url + "/metrics")[0] == 200
    dead.close()


def test_silent_http_connections_time_out_and_the_next_is_served(make_broker):
    """32 connections that never send a request fill the server; after 10 s they are closed
    and a request waiting in the backlog is answered."""
    b = make_broker(["http_listener 0 127.0.0.1"])
    port = int(HTTP_RE.search(b.log()).group(1))
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
    time.sleep(0.3)
    started = time.monotonic()
    status, _, _ = get_with_timeout(f"http://127.0.0.1:{port}/metrics", 20)
    waited = time.monotonic() - started
    assert status == 200 and 5 < waited < 15, waited
    for s in silent:
        assert s.recv(10) == b""  # closed by the server
        s.close()


def get_with_timeout(url, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read()
