"""A real Home Assistant for the tests: started from the cached venv (HA_VENV, made by
tests/run.sh with Python 3.13 and homeassistant==2025.4.4), onboarded over its REST API (a
user, then a token), with the MQTT integration added through its config flow. Stopped by PID.

Only the standard library here: the tests run in the main venv; Home Assistant runs in its own.
"""
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class HomeAssistant:
    def __init__(self, root: Path):
        venv = os.environ.get("HA_VENV")
        assert venv, "HA_VENV is not set: run the Home Assistant tests through ./tests/run.sh"
        self.hass = Path(venv) / "bin" / "hass"
        assert self.hass.exists(), f"{self.hass} is missing: ./tests/run.sh makes the venv"
        self.config = root / "ha-config"
        self.config.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        (self.config / "configuration.yaml").write_text(
            "homeassistant:\n"
            "  name: gatemq test\n"
            "  latitude: 0\n  longitude: 0\n  elevation: 0\n"
            "  unit_system: metric\n  time_zone: UTC\n  country: DE\n"
            "http:\n"
            f"  server_host: {HOST}\n"
            f"  server_port: {self.port}\n"
            "api:\n"
            "onboarding:\n"
            "logger:\n"
            "  default: warning\n"
            "  logs:\n"
            "    homeassistant.components.mqtt: debug\n"
        )
        self.log_path = root / "ha.log"
        self.proc = None
        self.token = None

    # --- process ---------------------------------------------------------------------------

    def start(self, timeout=240):
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.hass), "-c", str(self.config), "--skip-pip", "--log-no-color"],
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"hass exited {self.proc.returncode}:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"{self.url}/api/onboarding", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"Home Assistant did not answer in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log_file.close()

    # --- REST --------------------------------------------------------------------------------

    def request(self, method, path, body=None, form=None, auth=True):
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read().decode()
                if "json" not in (r.headers.get("Content-Type") or ""):
                    return r.status, text
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def onboard(self):
        """The owner user by onboarding, then an access token from its auth code."""
        client_id = f"{self.url}/"
        status, user = self.request("POST", "/api/onboarding/users", {
            "client_id": client_id, "name": "Test", "username": "test",
            "password": "test-password-1", "language": "en"}, auth=False)
        assert status == 200, (status, user)
        status, tok = self.request("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": user["auth_code"],
            "client_id": client_id}, auth=False)
        assert status == 200, (status, tok)
        self.token = tok["access_token"]
        return self

    def add_mqtt(self, port):
        """The MQTT integration through its config flow, pointed at gatemq."""
        status, flow = self.request("POST", "/api/config/config_entries/flow",
                                    {"handler": "mqtt", "show_advanced_options": False})
        assert status == 200, (status, flow)
        while flow.get("type") == "form":
            step = flow["step_id"]
            answer = {"broker": HOST, "port": port} if step == "broker" else {}
            status, flow = self.request(
                "POST", f"/api/config/config_entries/flow/{flow['flow_id']}", answer)
            assert status == 200, (step, status, flow)
        assert flow.get("type") == "create_entry", flow
        return flow

    def states(self):
        status, states = self.request("GET", "/api/states")
        assert status == 200, (status, states)
        return {s["entity_id"]: s for s in states}

    def state(self, entity_id):
        status, s = self.request("GET", f"/api/states/{entity_id}")
        return s if status == 200 else None

    def wait_for(self, what, check, timeout=30):
        """Poll until check() is truthy; its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"Home Assistant: {what} not within {timeout} s (last: {last!r})\n"
                             f"{self.log()[-4000:]}")

    def template(self, text):
        """A Jinja template rendered by HA (its registries are reachable from templates)."""
        status, out = self.request("POST", "/api/template", {"template": text})
        assert status == 200, (text, status, out)
        return out

    def call(self, domain, service, **data):
        status, out = self.request("POST", f"/api/services/{domain}/{service}", data)
        assert status == 200, (domain, service, status, out)
        return out
