"""gatemq's devices as a real Home Assistant (2025.4.4) sees them, over device-based MQTT
discovery: the entities it announces appear with their states, HA's service calls are executed
by gatemq's device executor (one command where HA sends one message) and HA follows the
status, readings follow their files, every command's result (a refusal too) is the device's
"command result" event, removals reach HA (at a reload, while HA was down and gatemq
restarted, while gatemq was stopped), an older gatemq's single-component entities are migrated, and a stopped gatemq makes
the entities unavailable. One Home Assistant serves every test (its start is the cost).

Run by ./tests/run.sh (which makes the Home Assistant venv and sets HA_VENV)."""
import importlib.util
import json
import re
import signal
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
_spec = importlib.util.spec_from_file_location("gatemq_fixtures", HERE.parent / "python" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

from clients import Client  # noqa: E402
from homeassistant import HomeAssistant  # noqa: E402

DEVICES = """
[lamp]
name = "Living room lamp"
commands.power = { type = "bool", initial = "OFF" }
commands.brightness = { type = "int", min = 0, max = 255, initial = 128, icon = "mdi:brightness-6" }
commands.colour = { type = "enum", values = ["warm", "neutral", "cold"], initial = "warm" }

[relay]
name = "Garden pump relay"
commands.power = { type = "bool", action = "file", path = "relay", payload_on = "1", payload_off = "0" }

[bulb]
name = "Desk light"
homeassistant = "light"
commands.power = { type = "bool", initial = "OFF" }
commands.brightness = { type = "int", min = 0, max = 255, initial = 50 }
commands.colour_temp = { type = "int", min = 2700, max = 6500, initial = 4000 }
commands.effect = { type = "enum", values = ["none", "candle"], initial = "none" }

[gateway]
name = "Gateway"
readings.cpu_temp = { type = "float", path = "cpu_temp", scale = 0.001, round = 1, every_s = 0.2, unit = "°C", device_class = "temperature", state_class = "measurement" }
readings.door = { type = "bool", path = "door", every_s = 0.2, payload_on = "1", payload_off = "0", device_class = "door" }

[attic]
name = "Attic fan"
homeassistant = "fan"
commands.power = { type = "bool", initial = "OFF" }
commands.speed = { type = "int", min = 0, max = 3, initial = 1 }

[hall]
name = "Hall fan"
homeassistant = "fan"
commands.power = { type = "bool", initial = "OFF" }
commands.speed = { type = "enum", values = ["eco", "boost"], initial = "eco" }

[blind]
name = "Blind"
homeassistant = "cover"
commands.position = { type = "int", min = 0, max = 100, initial = 100, device_class = "blind" }
commands.move = { type = "enum", values = ["open", "close", "stop"] }

[garage]
name = "Garage door"
homeassistant = "cover"
commands.move = { type = "enum", values = ["open", "close"], initial = "close", device_class = "garage" }

[plug]
name = "Tasmota plug"
availability_topic = "tele/plug1/LWT"
commands.power = { type = "bool", action = "publish", topic = "cmnd/plug1/POWER", state_topic = "stat/plug1/POWER", device_class = "outlet" }
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ha")
    (root / "devices.toml").write_text(DEVICES)
    (root / "cpu_temp").write_text("45312\n")
    (root / "door").write_text("0\n")
    # A fixed port (-p), so that a restarted gatemq is the broker HA knows.
    config = ["devices_file devices.toml", "homeassistant_discovery true",
              "http_listener 0 127.0.0.1"]
    broker = fixtures.Broker(root, config, ["-p", str(fixtures.free_port())])
    broker.start()
    broker.config = config
    ha = HomeAssistant(root)
    try:
        ha.start().onboard()
        ha.add_mqtt(broker.port)
        yield broker, ha, root
    finally:
        ha.stop()
        broker.stop()


def watching(port, *topics):
    """A client subscribed to `topics` (to see what HA's service calls send)."""
    c = Client(port)
    c.connect()
    for t in topics:
        c.subscribe(t, 1)
    return c


def sent(c):
    """The next command message `c` sees (topic, payload)."""
    m = c.get()
    return m.topic, m.payload


def retained(port, topic):
    c = Client(port)
    c.connect()
    c.subscribe(topic, 0)
    m = c.get()
    c.disconnect()
    return m.payload


def test_discovered_entities_and_their_states(setup):
    broker, ha, _ = setup
    want = {"switch.lamp_power": "off", "number.lamp_brightness": "128",
            "select.lamp_colour": "warm", "switch.relay_power": "unknown"}
    seen = {}

    def states():
        s = ha.states()
        seen.update({e: s.get(e, {}).get("state") for e in want})
        return s if seen == want else None

    try:
        got = ha.wait_for(f"the discovered entities in these states: {want}", states, timeout=60)
    except AssertionError:
        raise AssertionError(f"states seen: {seen}") from None
    assert got["switch.lamp_power"]["attributes"]["friendly_name"] == "Living room lamp power"
    assert got["select.lamp_colour"]["attributes"]["options"] == ["warm", "neutral", "cold"]
    assert got["number.lamp_brightness"]["attributes"]["max"] == 255
    assert got["number.lamp_brightness"]["attributes"]["icon"] == "mdi:brightness-6"
    plug = ha.wait_for("switch.plug_power", lambda: ha.state("switch.plug_power"))
    assert plug["attributes"]["device_class"] == "outlet"


def test_the_device_links_gatemqs_status_page(setup):
    """HA's device registry (read through its template API) has the device with gatemq's
    version and the status page as its configuration URL."""
    broker, ha, _ = setup
    ha.wait_for("switch.lamp_power", lambda: ha.state("switch.lamp_power"), timeout=60)
    http = re.search(r"HTTP \(status page, /metrics\) on 127\.0\.0\.1:(\d+)", broker.log()).group(1)
    dev = "device_id('switch.lamp_power')"
    assert ha.template(f"{{{{ device_attr({dev}, 'name') }}}}") == "Living room lamp"
    assert ha.template(f"{{{{ device_attr({dev}, 'manufacturer') }}}}") == "gatemq"
    assert ha.template(f"{{{{ device_attr({dev}, 'configuration_url') }}}}") == \
        f"http://127.0.0.1:{http}/"
    version = re.search(r'^version = "(.+)"', (HERE.parents[1] / "Cargo.toml").read_text(),
                        re.M).group(1)
    assert ha.template(f"{{{{ device_attr({dev}, 'sw_version') }}}}") == version
    # One device holds the lamp's three entities and its command result event.
    assert ha.template(f"{{{{ device_entities({dev}) | sort | join(',') }}}}") == \
        "event.lamp_command_result,number.lamp_brightness,select.lamp_colour,switch.lamp_power"


def test_service_calls_are_executed_by_gatemq(setup):
    broker, ha, root = setup
    ha.wait_for("switch.lamp_power", lambda: ha.state("switch.lamp_power"), timeout=60)
    ha.call("switch", "turn_on", entity_id="switch.lamp_power")
    ha.wait_for("the lamp on", lambda: ha.state("switch.lamp_power")["state"] == "on")
    assert retained(broker.port, "devices/lamp/power") == b"ON"
    ha.call("number", "set_value", entity_id="number.lamp_brightness", value=200)
    ha.wait_for("brightness 200",
                lambda: ha.state("number.lamp_brightness")["state"] == "200")
    assert retained(broker.port, "devices/lamp/brightness") == b"200"
    ha.call("select", "select_option", entity_id="select.lamp_colour", option="cold")
    ha.wait_for("colour cold", lambda: ha.state("select.lamp_colour")["state"] == "cold")
    # A file-backed relay: HA's switch writes the file through gatemq.
    ha.call("switch", "turn_on", entity_id="switch.relay_power")
    ha.wait_for("the relay on", lambda: ha.state("switch.relay_power")["state"] == "on")
    assert (root / "relay").read_text() == "1"


def test_a_light_turned_on_with_a_brightness_is_one_command(setup):
    """homeassistant = "light": power, brightness and effect are one HA light; HA's turn_on
    with brightness 200 reaches gatemq as one multi-command, and HA follows the state."""
    broker, ha, _ = setup
    light = ha.wait_for("light.bulb", lambda: ha.state("light.bulb"), timeout=60)
    assert light["state"] == "off" and light["attributes"]["friendly_name"] == "Desk light"
    assert light["attributes"]["effect_list"] == ["none", "candle"]
    assert ha.state("switch.bulb_power") is None, "no entities of its own for the light's parts"
    assert ha.state("number.bulb_brightness") is None
    watch = Client(broker.port)
    watch.connect()
    watch.subscribe("devices/bulb/set", 1)
    ha.call("light", "turn_on", entity_id="light.bulb", brightness=200)
    ha.wait_for("the light on at 200", lambda: (s := ha.state("light.bulb"))["state"] == "on"
                and s["attributes"].get("brightness") == 200)
    sent = watch.get()
    assert json.loads(sent.payload) == {"power": "ON", "brightness": 200}
    watch.assert_no_message(0.5)
    assert retained(broker.port, "devices/bulb/brightness") == b"200"
    ha.call("light", "turn_on", entity_id="light.bulb", effect="candle")
    ha.wait_for("the candle effect",
                lambda: ha.state("light.bulb")["attributes"].get("effect") == "candle")
    assert json.loads(watch.get().payload)["effect"] == "candle"
    # The colour temperature, in kelvin both ways, with a brightness: one command.
    assert ha.state("light.bulb")["attributes"]["supported_color_modes"] == ["color_temp"]
    assert (light["attributes"]["min_color_temp_kelvin"],
            light["attributes"]["max_color_temp_kelvin"]) == (2700, 6500)
    ha.call("light", "turn_on", entity_id="light.bulb", color_temp_kelvin=3000, brightness=100)
    ha.wait_for("the light at 3000 K", lambda: ha.state("light.bulb")["attributes"].get(
        "color_temp_kelvin") == 3000)
    assert json.loads(watch.get().payload) == {"power": "ON", "brightness": 100, "colour_temp": 3000}
    watch.assert_no_message(0.5)
    assert retained(broker.port, "devices/bulb/colour_temp") == b"3000"
    assert ha.state("light.bulb")["attributes"]["brightness"] == 100
    ha.call("light", "turn_off", entity_id="light.bulb")
    ha.wait_for("the light off", lambda: ha.state("light.bulb")["state"] == "off")
    assert json.loads(watch.get().payload) == {"power": "OFF"}
    watch.disconnect()


def test_readings_follow_their_files(setup):
    """The gateway's readings are a sensor and a binary_sensor that follow their files."""
    broker, ha, root = setup
    cpu = ha.wait_for("sensor.gateway_cpu_temp", lambda: (s := ha.state("sensor.gateway_cpu_temp"))
                      and s["state"] not in ("unknown", "unavailable") and s, timeout=60)
    assert cpu["state"] == "45.3"
    assert (cpu["attributes"]["unit_of_measurement"], cpu["attributes"]["device_class"],
            cpu["attributes"]["state_class"]) == ("°C", "temperature", "measurement")
    assert cpu["attributes"]["friendly_name"] == "Gateway cpu_temp"
    door = ha.state("binary_sensor.gateway_door")
    assert (door["state"], door["attributes"]["device_class"]) == ("off", "door")
    (root / "cpu_temp").write_text("51049\n")
    ha.wait_for("the new temperature", lambda: ha.state("sensor.gateway_cpu_temp")["state"] == "51.0")
    (root / "door").write_text("1\n")
    ha.wait_for("the door open", lambda: ha.state("binary_sensor.gateway_door")["state"] == "on")
    # A device with readings only: no command result event.
    assert ha.state("event.gateway_command_result") is None


def test_a_fan_is_one_entity_and_each_call_one_command(setup):
    broker, ha, _ = setup
    fan = ha.wait_for("fan.attic", lambda: ha.state("fan.attic"), timeout=60)
    assert (fan["state"], fan["attributes"]["percentage"]) == ("off", 33)
    assert ha.state("switch.attic_power") is None and ha.state("number.attic_speed") is None
    watch = watching(broker.port, "devices/attic/+/set", "devices/hall/+/set")
    ha.call("fan", "set_percentage", entity_id="fan.attic", percentage=66)
    ha.wait_for("66 %", lambda: ha.state("fan.attic")["attributes"]["percentage"] == 66)
    assert sent(watch) == ("devices/attic/speed/set", b"2")
    watch.assert_no_message(0.5)
    assert retained(broker.port, "devices/attic/speed") == b"2"
    ha.call("fan", "turn_on", entity_id="fan.attic")
    ha.wait_for("the fan on", lambda: ha.state("fan.attic")["state"] == "on")
    assert sent(watch) == ("devices/attic/power/set", b"ON")
    # An enum speed: preset modes.
    hall = ha.wait_for("fan.hall", lambda: ha.state("fan.hall"))
    assert (hall["attributes"]["preset_modes"], hall["attributes"]["preset_mode"]) == \
        (["eco", "boost"], "eco")
    ha.call("fan", "set_preset_mode", entity_id="fan.hall", preset_mode="boost")
    ha.wait_for("boost", lambda: ha.state("fan.hall")["attributes"]["preset_mode"] == "boost")
    assert sent(watch) == ("devices/hall/speed/set", b"boost")
    watch.assert_no_message(0.5)
    watch.disconnect()


def test_a_cover_is_one_entity_and_each_call_one_command(setup):
    broker, ha, _ = setup
    blind = ha.wait_for("cover.blind", lambda: ha.state("cover.blind"), timeout=60)
    assert (blind["state"], blind["attributes"]["current_position"],
            blind["attributes"]["device_class"]) == ("open", 100, "blind")
    watch = watching(broker.port, "devices/blind/+/set", "devices/garage/+/set")
    ha.call("cover", "set_cover_position", entity_id="cover.blind", position=40)
    ha.wait_for("40 %", lambda: ha.state("cover.blind")["attributes"]["current_position"] == 40)
    assert sent(watch) == ("devices/blind/position/set", b"40")
    watch.assert_no_message(0.5)
    ha.call("cover", "stop_cover", entity_id="cover.blind")
    assert sent(watch) == ("devices/blind/move/set", b"stop")
    ha.call("cover", "set_cover_position", entity_id="cover.blind", position=0)
    ha.wait_for("the blind closed", lambda: ha.state("cover.blind")["state"] == "closed")
    assert sent(watch) == ("devices/blind/position/set", b"0")
    # Without a position: open and close, and HA's state is the last move.
    garage = ha.wait_for("cover.garage", lambda: ha.state("cover.garage"))
    assert (garage["state"], garage["attributes"]["device_class"]) == ("closed", "garage")
    ha.call("cover", "open_cover", entity_id="cover.garage")
    ha.wait_for("the garage open", lambda: ha.state("cover.garage")["state"] == "open")
    assert sent(watch) == ("devices/garage/move/set", b"open")
    watch.assert_no_message(0.5)
    watch.disconnect()


def test_a_refused_command_shows_in_the_command_result_event(setup):
    broker, ha, _ = setup
    entity = "event.lamp_command_result"
    ev = ha.wait_for(entity, lambda: ha.state(entity), timeout=60)
    assert ev["attributes"]["event_types"] == ["ok", "refused"]
    c = Client(broker.port)
    c.connect()
    c.publish("devices/lamp/brightness/set", b"300", qos=1)
    c.disconnect()
    ev = ha.wait_for("the refusal", lambda: (
        s if (s := ha.state(entity))["attributes"].get("event_type") == "refused" else None))
    assert ev["attributes"]["command"] == "brightness"
    assert ev["attributes"]["error"] == "brightness: 300 is above max 255"
    assert ha.state("number.lamp_brightness")["state"] != "300"
    # A command from HA itself: its result is the next event.
    ha.call("select", "select_option", entity_id="select.lamp_colour", option="neutral")
    ev = ha.wait_for("the ok event", lambda: (
        s if (s := ha.state(entity))["attributes"].get("event_type") == "ok" else None))
    assert (ev["attributes"]["command"], ev["attributes"]["value"]) == ("colour", "neutral")


def test_the_plugs_availability_follows_its_lwt(setup):
    """The Tasmota plug is unavailable in HA until its own LWT says Online, and again when it
    says Offline, whatever gatemq does."""
    broker, ha, _ = setup
    entity = "switch.plug_power"
    ha.wait_for(entity, lambda: ha.state(entity), timeout=60)
    assert ha.state(entity)["state"] == "unavailable"
    c = Client(broker.port)
    c.connect()
    c.publish("tele/plug1/LWT", b"Online", qos=1, retain=True)
    ha.wait_for("the plug available", lambda: ha.state(entity)["state"] != "unavailable")
    c.publish("stat/plug1/POWER", b"ON", qos=1)
    ha.wait_for("the plug on", lambda: ha.state(entity)["state"] == "on")
    c.publish("tele/plug1/LWT", b"Offline", qos=1, retain=True)
    ha.wait_for("the plug unavailable", lambda: ha.state(entity)["state"] == "unavailable")
    c.disconnect()


def test_a_device_removed_at_reload_is_gone_from_home_assistant(setup):
    """The relay deleted from the devices file and SIGHUP: gatemq clears what it announced,
    and HA drops the entity and the emptied device."""
    broker, ha, root = setup
    ha.wait_for("switch.relay_power", lambda: ha.state("switch.relay_power"), timeout=60)
    # device_id() takes a device's name too: the registry's entry.
    assert ha.template("{{ device_id('Garden pump relay') is not none }}") == "True"
    toml = root / "devices.toml"
    toml.write_text(DEVICES.split("[relay]")[0] + "[bulb]" + DEVICES.split("[bulb]")[1])
    broker.proc.send_signal(signal.SIGHUP)
    ha.wait_for("the relay gone", lambda: ha.state("switch.relay_power") is None)
    ha.wait_for("its device gone", lambda: ha.template(
        "{{ device_id('Garden pump relay') is none }}") == "True")
    assert ha.state("switch.lamp_power") is not None, "the other devices stay"
    assert ha.state("light.bulb") is not None


def test_a_device_removed_while_home_assistant_was_down_goes_when_it_starts(setup):
    """HA only acts on a clear it gets while connected, for what it discovered since its own
    start. The plug is removed at a reload while HA is stopped, and gatemq is then killed
    with -9 and started again (the removal is in its store); when HA is back, its birth
    message makes gatemq announce the old config again and clear it, and the plug leaves
    HA's entity and device registries."""
    broker, ha, root = setup
    ha.wait_for("switch.plug_power", lambda: ha.state("switch.plug_power"), timeout=60)
    ha.stop()
    watch = watching(broker.port, "homeassistant/device/plug/config")
    assert watch.get().payload, "the plug's config, retained"
    toml = root / "devices.toml"
    toml.write_text(toml.read_text().split("[plug]")[0])
    broker.proc.send_signal(signal.SIGHUP)
    assert watch.get().payload == b"", "the plug's config cleared"
    watch.disconnect()
    broker.stop(sig=signal.SIGKILL)
    broker.start()
    ha.start()
    ha.wait_for("the lamp back", lambda: (s := ha.state("switch.lamp_power")) and
                s["state"] != "unavailable", timeout=60)
    ha.wait_for("the plug gone", lambda: ha.state("switch.plug_power") is None, timeout=30)
    ha.wait_for("its device gone", lambda: ha.template(
        "{{ device_id('Tasmota plug') is none }}") == "True")


def test_stopping_gatemq_makes_the_entities_unavailable_and_a_restart_keeps_the_values(setup):
    """Without persistence: gatemq stopped (unavailable in HA), then killed with -9 after it
    is back: HA shows the values set before, not the declared initial ones."""
    broker, ha, root = setup
    ha.wait_for("switch.lamp_power", lambda: ha.state("switch.lamp_power"), timeout=60)
    assert ha.state("switch.lamp_power")["state"] != "unavailable"
    # gatemq publishes each device's availability "offline" before it exits.
    assert broker.stop(sig=signal.SIGTERM) == 0
    ha.wait_for("unavailable", lambda: ha.state("switch.lamp_power")["state"] == "unavailable")
    for sig in (signal.SIGKILL, None):
        again = fixtures.Broker(root, broker.config, broker.args).start()
        try:
            want = {"switch.lamp_power": "on", "number.lamp_brightness": "200",
                    "select.lamp_colour": "neutral"}
            ha.wait_for(f"the values kept: {want}", lambda: all(
                ha.state(e)["state"] == v for e, v in want.items()), timeout=60)
        finally:
            again.stop(sig=sig or signal.SIGTERM)


def test_removals_made_while_gatemq_was_stopped_and_an_older_gatemqs_entities(setup):
    """gatemq remembers what it announced (the devices store keeps its configs): a device and
    a reading deleted from the file while it was stopped leave Home Assistant once both are
    back, and a switch an older gatemq announced on its own single-component topic is moved
    to the device config, keeping its entity."""
    broker, ha, root = setup
    again = fixtures.Broker(root, broker.config, broker.args).start()
    try:
        ha.wait_for("fan.hall", lambda: (s := ha.state("fan.hall")) and s["state"] != "unavailable",
                    timeout=60)
        # As an older gatemq announced a command: its own topic, gatemq as the origin.
        c = Client(again.port)
        c.connect()
        c.publish("homeassistant/switch/legacy/power/config", json.dumps({
            "name": "power", "unique_id": "gatemq_legacy_power", "object_id": "legacy_power",
            "command_topic": "devices/legacy/power/set", "state_topic": "devices/legacy/power",
            "device": {"identifiers": ["gatemq_legacy"], "name": "Legacy switch"},
            "origin": {"name": "gatemq", "sw_version": "0.0.9"}}).encode(), qos=1, retain=True)
        c.disconnect()
        ha.wait_for("switch.legacy_power", lambda: ha.state("switch.legacy_power"))
        assert again.stop(sig=signal.SIGTERM) == 0
    finally:
        again.stop()
    toml = root / "devices.toml"
    text = toml.read_text()
    text = text.split("[hall]")[0] + "[blind]" + text.split("[blind]")[1]
    text = text.replace("readings.door", "#readings.door")
    text += '\n[legacy]\nname = "Legacy switch"\ncommands.power = { type = "bool", initial = "ON" }\n'
    toml.write_text(text)
    again = fixtures.Broker(root, broker.config, broker.args).start()
    try:
        ha.wait_for("the hall fan gone", lambda: ha.state("fan.hall") is None, timeout=60)
        ha.wait_for("its device gone", lambda: ha.template(
            "{{ device_id('Hall fan') is none }}") == "True")
        ha.wait_for("the door reading gone", lambda: ha.state("binary_sensor.gateway_door") is None)
        assert ha.state("sensor.gateway_cpu_temp")["state"] not in ("unavailable", None)
        assert ha.state("fan.attic") is not None, "the others stay"
        # The older gatemq's switch: the same entity, now from the device config.
        ha.wait_for("the legacy switch on", lambda: (s := ha.state("switch.legacy_power"))
                    and s["state"] == "on")
        assert "Migration to MQTT device discovery schema started for entity switch.legacy_power" \
            in ha.log_path.read_text(errors="replace")
        assert retained(again.port, "homeassistant/device/legacy/config")
        ha.call("switch", "turn_off", entity_id="switch.legacy_power")
        ha.wait_for("the legacy switch off", lambda: ha.state("switch.legacy_power")["state"] == "off")
    finally:
        again.stop()
