"""Password files both ways with Mosquitto: a file written by Debian's mosquitto_passwd works
in gatemq, and a file written by `gatemq passwd` works in Debian's mosquitto."""
import os
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import BIN

HOST = "127.0.0.1"


def connect_rc(port, user=None, password=None, v5=False):
    """The CONNACK code a client gets (paho: 0 ok, 4/5 for 3.1.1; reason codes for v5)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pw-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if user is not None:
        c.username_pw_set(user, password)
    got = []
    c.on_connect = lambda cl, u, f, rc, p=None: got.append(rc.value if hasattr(rc, "value") else rc)
    c.connect(HOST, port)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        c.loop(0.1)
    c.disconnect()
    assert got, "no CONNACK"
    # paho 2 reports a 3.1.1 return code as the MQTT 5 reason code of the same meaning.
    return {134: 4, 135: 5}.get(got[0], got[0]) if not v5 else got[0]


def mosquitto_passwd(*args):
    subprocess.run(["mosquitto_passwd", *args], check=True, capture_output=True)


def test_mosquitto_passwd_file_works_in_gatemq(make_broker, tmp_path):
    pw = tmp_path / "passwd"
    mosquitto_passwd("-c", "-b", str(pw), "alice", "s3cret")
    mosquitto_passwd("-b", str(pw), "bob", "p@ss word:with colon")
    mosquitto_passwd("-H", "sha512", "-b", str(pw), "old", "legacy")  # $6$ entry
    assert "old:$6$" in pw.read_text()
    b = make_broker([f"password_file {pw.name}", "allow_anonymous false"])
    assert connect_rc(b.port, "alice", "s3cret") == 0
    assert connect_rc(b.port, "bob", "p@ss word:with colon") == 0
    assert connect_rc(b.port, "old", "legacy") == 0
    assert connect_rc(b.port, "alice", "wrong") == 4  # bad username or password
    assert connect_rc(b.port, "nobody", "s3cret") == 4
    assert connect_rc(b.port) == 5  # anonymous: not authorized
    assert connect_rc(b.port, "alice", "wrong", v5=True) == 0x86
    assert connect_rc(b.port, None, None, v5=True) == 0x87
    assert connect_rc(b.port, "alice", "s3cret", v5=True) == 0


def test_anonymous_still_allowed_with_a_password_file_when_configured(make_broker, tmp_path):
    pw = tmp_path / "passwd"
    mosquitto_passwd("-c", "-b", str(pw), "alice", "s3cret")
    b = make_broker([f"password_file {pw.name}", "allow_anonymous true"])
    assert connect_rc(b.port) == 0
    assert connect_rc(b.port, "alice", "bad") == 4


def pub_rc(port, user, password):
    return subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(port), "-u", user, "-P", password,
                           "-t", "t", "-m", "x"], capture_output=True, timeout=10).returncode


def test_gatemq_passwd_file_works_in_mosquitto(mosquitto, tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run([BIN, "passwd", "-c", "-b", str(pw), "dev1", "first one"], check=True)
    subprocess.run([BIN, "passwd", "-b", str(pw), "dev2", "second"], check=True)
    subprocess.run([BIN, "passwd", "-b", str(pw), "dev1", "changed"], check=True)
    assert oct(os.stat(pw).st_mode & 0o777) == "0o600"
    port = mosquitto(["allow_anonymous false", f"password_file {pw}"])
    assert pub_rc(port, "dev1", "changed") == 0
    assert pub_rc(port, "dev2", "second") == 0
    assert pub_rc(port, "dev1", "first one") != 0
    assert pub_rc(port, "dev3", "x") != 0


def test_gatemq_passwd_delete_and_update_plain_text(mosquitto, make_broker, tmp_path):
    pw = tmp_path / "passwd"
    pw.write_text("plain1:one\nplain2:two\n")
    subprocess.run([BIN, "passwd", "-U", str(pw)], check=True)
    text = pw.read_text()
    assert text.count("$7$101$") == 2 and "one" not in text
    subprocess.run([BIN, "passwd", "-D", str(pw), "plain2"], check=True)
    missing = subprocess.run([BIN, "passwd", "-D", str(pw), "plain2"], capture_output=True, text=True)
    assert missing.returncode == 1 and "not found" in missing.stderr
    port = mosquitto(["allow_anonymous false", f"password_file {pw}"])
    assert pub_rc(port, "plain1", "one") == 0
    assert pub_rc(port, "plain2", "two") != 0
    b = make_broker([f"password_file {pw}", "allow_anonymous false"])
    assert connect_rc(b.port, "plain1", "one") == 0
    assert connect_rc(b.port, "plain2", "two") == 4


def test_bad_password_file_is_a_clear_startup_error(tmp_path):
    pw = tmp_path / "passwd"
    pw.write_text("alice:notahash\n")
    conf = tmp_path / "g.conf"
    conf.write_text("listener 0 127.0.0.1\npassword_file passwd\n")
    r = subprocess.run([BIN, "--test-config", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{pw}:1: user 'alice': not a $6$ or $7$ password hash" in r.stderr
    conf.write_text("listener 0 127.0.0.1\npassword_file missing\n")
    r = subprocess.run([BIN, "--test-config", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 1 and "option 'password_file': cannot read password file" in r.stderr


def test_empty_passwords_are_refused_by_the_tool_and_the_broker(make_broker, tmp_path):
    pw = tmp_path / "passwd"
    for how in (dict(args=["-b", str(pw), "alice", ""]),
                dict(args=[str(pw), "alice"], stdin=subprocess.DEVNULL),  # stdin at EOF
                dict(args=[str(pw), "alice"], input="\n\n")):  # two empty lines
        r = subprocess.run([BIN, "passwd", "-c", *how["args"]], capture_output=True, text=True,
                           stdin=how.get("stdin"), input=how.get("input"))
        assert r.returncode == 1, how
        assert r.stderr == "gatemq passwd: empty password for user 'alice' (not allowed)\n"
        assert not pw.exists()
    pw.write_text("ok:fine\nblank:\n")
    r = subprocess.run([BIN, "passwd", "-U", str(pw)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr == f"gatemq passwd: {pw}:2: empty password for user 'blank' (not allowed)\n"
    assert pw.read_text() == "ok:fine\nblank:\n", "nothing written"
    # A file that does hash an empty password (written by hand or by an older tool): the
    # broker still never accepts an empty password, for that user or any other.
    import base64, hashlib
    salt = b"0123456789ab"
    empty = base64.b64encode(hashlib.pbkdf2_hmac("sha512", b"", salt, 101)).decode()
    pw.write_text(f"blank:$7$101${base64.b64encode(salt).decode()}${empty}\n")
    subprocess.run([BIN, "passwd", "-b", str(pw), "alice", "s3cret"], check=True)
    b = make_broker([f"password_file {pw}", "allow_anonymous false"])
    assert connect_rc(b.port, "alice", "s3cret") == 0
    # 3.1.1 return code 4 and MQTT 5 reason 0x86, both "bad user name or password".
    for v5, refused in ((False, 4), (True, 0x86)):
        assert connect_rc(b.port, "blank", "", v5=v5) == refused
        assert connect_rc(b.port, "blank", None, v5=v5) == refused  # username, no password
        assert connect_rc(b.port, "alice", "", v5=v5) == refused
