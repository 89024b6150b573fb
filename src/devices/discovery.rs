//! Home Assistant MQTT discovery. Each declared device is announced as one retained
//! device-based config, `<discovery prefix>/device/<device>/config` (HA 2024.11 and later),
//! holding the device, the origin (gatemq) and its entities as `cmps`:
//!
//! - each command of its own: bool → `switch`, int/float → `number`, enum → `select`,
//!   trigger → `button`, string → `text`;
//! - `homeassistant = "light"`, `"fan"` or `"cover"`: the commands it is made of as one entity;
//! - each reading: bool → `binary_sensor`, else `sensor`;
//! - the "command result" `event` (when the device has commands).
//!
//! Home Assistant removes a component of a device config when it gets the config with that
//! component as `{"p": "<platform>"}` only ([`announce_removals`], not retained: the retained
//! config is the device as declared now). What was announced before, and what to remove, is
//! `reload.rs`'s business; this file only writes configs.

use super::decl::{Command, Device, Entity, Kind, Reading, ReadingKind, COMMAND_RESULT};
use super::{json, Options, Outbox, EVENT};

/// One Home Assistant entity of a device: its platform and its key among the device's `cmps`
/// (also the last level of its single-component topic, `<prefix>/<platform>/<device>/<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Component {
    pub platform: &'static str,
    pub key: Box<str>,
}

/// What a component is made of.
enum Part<'a> {
    Command(&'a Command),
    Entity(Entity),
    Event,
    Reading(&'a Reading),
}

fn parts(dev: &Device) -> Vec<(Component, Part<'_>)> {
    let mut v = Vec::new();
    let comp = |platform: &'static str, key: &str| Component {
        platform,
        key: key.into(),
    };
    for cmd in &dev.commands {
        if !dev.entity.is_some_and(|e| e.has(&cmd.name)) {
            v.push((comp(platform(&cmd.kind), &cmd.name), Part::Command(cmd)));
        }
    }
    if let Some(e) = dev.entity {
        v.push((comp(e.platform(), e.platform()), Part::Entity(e)));
    }
    for r in &dev.readings {
        let p = match r.kind {
            ReadingKind::Bool => "binary_sensor",
            _ => "sensor",
        };
        v.push((comp(p, &r.name), Part::Reading(r)));
    }
    if !dev.commands.is_empty() {
        v.push((comp("event", COMMAND_RESULT), Part::Event));
    }
    v
}

/// The entities device `dev` is announced with.
pub(super) fn components(dev: &Device) -> Vec<Component> {
    parts(dev).into_iter().map(|(c, _)| c).collect()
}

/// `<discovery prefix>/device/<device>/config`.
pub(super) fn device_topic(opts: &Options, id: &str) -> String {
    format!("{}/device/{id}/config", opts.discovery_prefix)
}

/// What a retained discovery topic under the discovery prefix is: a device config
/// (`Some((id, None))`) or a single-component one (`Some((id, Some(component)))`).
pub(super) fn parse_topic<'t>(
    opts: &Options,
    topic: &'t str,
) -> Option<(&'t str, Option<(&'t str, &'t str)>)> {
    let rest = topic
        .strip_prefix(opts.discovery_prefix.as_str())?
        .strip_prefix('/')?
        .strip_suffix("/config")?;
    let mut levels = rest.split('/');
    match (levels.next(), levels.next(), levels.next(), levels.next()) {
        (Some("device"), Some(id), None, None) => Some((id, None)),
        (Some(platform), Some(id), Some(key), None) => Some((id, Some((platform, key)))),
        _ => None,
    }
}

/// Is `payload` a discovery config gatemq wrote? (Others' configs under the same prefix are
/// not gatemq's to keep or clear.)
pub(super) fn is_ours(payload: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(payload) else {
        return false;
    };
    let origin = json::members(text).find_map(|m| match m {
        Ok(("origin" | "o", json::Value::Nested(o))) => Some(o),
        _ => None,
    });
    origin.is_some_and(|o| {
        json::members(o).any(|m| matches!(m, Ok(("name", json::Value::Str("gatemq")))))
    })
}

/// The component keys (with their platform) of device config `payload` that are entities in
/// it, not removals.
pub(super) fn announced_components(payload: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(text) = std::str::from_utf8(payload) else {
        return out;
    };
    let Some(cmps) = json::members(text).find_map(|m| match m {
        Ok(("cmps", json::Value::Nested(c))) => Some(c),
        _ => None,
    }) else {
        return out;
    };
    for (key, v) in json::members(cmps).filter_map(Result::ok) {
        let json::Value::Nested(body) = v else {
            continue;
        };
        let mut platform = None;
        let mut fields = 0;
        for (k, v) in json::members(body).filter_map(Result::ok) {
            fields += 1;
            if let ("p" | "platform", json::Value::Str(p)) = (k, v) {
                platform = Some(p);
            }
        }
        let mut k = String::new();
        if let (Some(p), true) = (platform, fields > 1) {
            if json::unescape(key, &mut k) {
                out.push((k, p.to_string()));
            }
        }
    }
    out
}

/// Announce device `dev`: its config with all its entities.
pub(super) fn announce(opts: &Options, dev: &Device, retain: bool, out: &mut Outbox) {
    let topic = device_topic(opts, &dev.id);
    let t = out.topic(&[&topic]);
    let p = out.bytes.len();
    let b = &mut out.bytes;
    b.push(b'{');
    device_json(b, &dev.id, &dev.name, opts);
    b.extend_from_slice(b",\"cmps\":{");
    let mut first = true;
    for (c, part) in parts(dev) {
        if !first {
            b.push(b',');
        }
        first = false;
        json::push_str(b, &c.key);
        b.extend_from_slice(b":{\"p\":");
        json::push_str(b, c.platform);
        let mut j = Json(b);
        match part {
            Part::Command(cmd) => command(&mut j, opts, dev, cmd, c.platform),
            Part::Entity(Entity::Light) => light(&mut j, opts, dev),
            Part::Entity(Entity::Fan) => fan(&mut j, opts, dev),
            Part::Entity(Entity::Cover) => cover(&mut j, opts, dev),
            Part::Event => event(&mut j, opts, dev),
            Part::Reading(r) => reading(&mut j, opts, dev, r, c.platform),
        }
        b.push(b'}');
    }
    b.extend_from_slice(b"}}");
    out.end(t, p, retain);
}

/// Device `dev`'s config with only `removed` in it, each as `{"p": "<platform>"}`: Home
/// Assistant removes those entities (not retained; the others are left as they are).
pub(super) fn announce_removals(
    opts: &Options,
    dev: &Device,
    removed: &[Component],
    out: &mut Outbox,
) {
    let t = out.topic(&[&device_topic(opts, &dev.id)]);
    let p = out.bytes.len();
    let b = &mut out.bytes;
    b.push(b'{');
    device_json(b, &dev.id, &dev.name, opts);
    b.extend_from_slice(b",\"cmps\":{");
    for (i, c) in removed.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        json::push_str(b, &c.key);
        b.extend_from_slice(b":{\"p\":");
        json::push_str(b, c.platform);
        b.push(b'}');
    }
    b.extend_from_slice(b"}}");
    out.end(t, p, false);
}

/// Writes `,"key":value` members.
struct Json<'b>(&'b mut Vec<u8>);

impl Json<'_> {
    fn key(&mut self, k: &str) {
        self.0.push(b',');
        json::push_str(self.0, k);
        self.0.push(b':');
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        json::push_str(self.0, v);
    }
    /// A number, `true`/`false` or `null`, as given.
    fn raw(&mut self, k: &str, v: impl std::fmt::Display) {
        self.key(k);
        self.0.extend_from_slice(v.to_string().as_bytes());
    }
    fn strs<'s>(&mut self, k: &str, values: impl IntoIterator<Item = &'s str>) {
        self.key(k);
        self.0.push(b'[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            json::push_str(self.0, v);
        }
        self.0.push(b']');
    }
    /// Names and ids of an entity: its own `name` (`None`: the device's), `unique_id`,
    /// `object_id` and `default_entity_id` (HA 2025.10+ wants the latter, and `object_id`
    /// stops working in 2026.4; older HA drops the unknown key and uses `object_id`).
    fn ids(&mut self, platform: &str, id: &str, name: Option<&str>, object: &str) {
        match name {
            Some(n) => self.str("name", n),
            None => self.raw("name", "null"),
        }
        self.str("unique_id", &format!("gatemq_{id}_{object}"));
        let object_id = match name {
            Some(n) => format!("{id}_{n}"),
            None => id.to_string(),
        };
        self.str("default_entity_id", &format!("{platform}.{object_id}"));
        self.str("object_id", &object_id);
    }
    fn availability(&mut self, opts: &Options, id: &str) {
        self.str(
            "availability_topic",
            &format!("{}/{id}/availability", opts.prefix),
        );
    }
    fn ha(&mut self, ha: &[(&'static str, Box<str>)], only: Option<&[&str]>) {
        for (k, v) in ha {
            if only.is_none_or(|o| o.contains(k)) {
                self.str(k, v);
            }
        }
    }
}

/// A command of its own.
fn command(j: &mut Json<'_>, opts: &Options, dev: &Device, cmd: &Command, platform: &str) {
    let (pre, id, name) = (&opts.prefix, &*dev.id, &*cmd.name);
    j.ids(platform, id, Some(name), name);
    j.str("command_topic", &format!("{pre}/{id}/{name}/set"));
    if cmd.kind != Kind::Trigger {
        j.str("state_topic", &format!("{pre}/{id}/{name}"));
    }
    j.availability(opts, id);
    match &cmd.kind {
        Kind::Bool => {
            for (k, v) in [
                ("payload_on", "ON"),
                ("payload_off", "OFF"),
                ("state_on", "ON"),
                ("state_off", "OFF"),
            ] {
                j.str(k, v);
            }
        }
        Kind::Int { min, max } => {
            j.raw("min", (*min).max(-1_000_000_000));
            j.raw("max", (*max).min(1_000_000_000));
            j.raw("step", 1);
        }
        Kind::Float { min, max, step, .. } => {
            j.raw("min", min.max(-1e9));
            j.raw("max", max.min(1e9));
            j.raw("step", step.unwrap_or(0.001));
        }
        Kind::Enum { values } => j.strs("options", values.iter().map(|v| &**v)),
        Kind::Str { max_len } => j.raw("max", max_len.min(&255)),
        Kind::Trigger => j.str("payload_press", "PRESS"),
    }
    j.ha(&cmd.ha, None);
}

fn find<'d>(dev: &'d Device, name: &str) -> Option<&'d Command> {
    dev.commands.iter().find(|c| &*c.name == name)
}

/// What an entity made of several commands takes from its main command's own keys.
const ENTITY_KEYS: [&str; 2] = ["icon", "entity_category"];

/// `homeassistant = "light"`: `power`, `brightness`, `colour_temp` and `effect` as one light,
/// in HA's template schema over the device's own topics, so that HA's turn_on with a
/// brightness is one message on `<prefix>/<device>/set`, run as one multi-command (all values
/// checked first). HA's 0–255 brightness is scaled to the command's `max`; the colour
/// temperature is in kelvin both ways.
fn light(j: &mut Json<'_>, opts: &Options, dev: &Device) {
    let (pre, id) = (&opts.prefix, &*dev.id);
    j.ids("light", id, None, "light");
    j.str("schema", "template");
    j.str("command_topic", &format!("{pre}/{id}/set"));
    j.str("state_topic", &format!("{pre}/{id}/state"));
    j.availability(opts, id);
    j.str("command_off_template", "{\"power\":\"OFF\"}");
    j.str("state_template", "{{ value_json.power | lower }}");
    let mut on = String::from("{\"power\":\"ON\"");
    if let Some(Kind::Int { max, .. }) = find(dev, "brightness").map(|c| &c.kind) {
        let max = (*max).max(1);
        on.push_str(&format!(
            "{{% if brightness is defined %}},\"brightness\":{{{{ (brightness * {max} / 255) | round(0) | int }}}}{{% endif %}}"
        ));
        j.str(
            "brightness_template",
            &format!("{{{{ (value_json.brightness * 255 / {max}) | round(0) | int }}}}"),
        );
    }
    if let Some(cmd) = find(dev, "colour_temp").or_else(|| find(dev, "color_temp")) {
        if let Kind::Int { min, max } = &cmd.kind {
            let name = &cmd.name;
            on.push_str(&format!(
                "{{% if color_temp is defined %}},\"{name}\":{{{{ color_temp }}}}{{% endif %}}"
            ));
            j.str(
                "color_temp_template",
                &format!("{{{{ value_json.{name} }}}}"),
            );
            j.raw("color_temp_kelvin", true);
            j.raw("min_kelvin", min);
            j.raw("max_kelvin", max);
        }
    }
    if let Some(Kind::Enum { values }) = find(dev, "effect").map(|c| &c.kind) {
        on.push_str("{% if effect is defined %},\"effect\":\"{{ effect }}\"{% endif %}");
        j.str("effect_template", "{{ value_json.effect }}");
        j.strs("effect_list", values.iter().map(|v| &**v));
    }
    on.push('}');
    j.str("command_on_template", &on);
    if let Some(p) = find(dev, "power") {
        j.ha(&p.ha, Some(&ENTITY_KEYS));
    }
}

/// `homeassistant = "fan"`: `power`, and `speed` as a percentage of its range (an int) or as
/// preset modes (an enum). Each goes to its own command topic: one service call, one command.
fn fan(j: &mut Json<'_>, opts: &Options, dev: &Device) {
    let (pre, id) = (&opts.prefix, &*dev.id);
    j.ids("fan", id, None, "fan");
    j.str("command_topic", &format!("{pre}/{id}/power/set"));
    j.str("state_topic", &format!("{pre}/{id}/power"));
    j.str("payload_on", "ON");
    j.str("payload_off", "OFF");
    j.availability(opts, id);
    match find(dev, "speed").map(|c| &c.kind) {
        Some(Kind::Int { min, max }) => {
            j.str("percentage_command_topic", &format!("{pre}/{id}/speed/set"));
            j.str("percentage_state_topic", &format!("{pre}/{id}/speed"));
            j.raw("speed_range_min", (*min).max(1));
            j.raw("speed_range_max", max);
        }
        Some(Kind::Enum { values }) => {
            j.str(
                "preset_mode_command_topic",
                &format!("{pre}/{id}/speed/set"),
            );
            j.str("preset_mode_state_topic", &format!("{pre}/{id}/speed"));
            j.strs("preset_modes", values.iter().map(|v| &**v));
        }
        _ => {}
    }
    if let Some(p) = find(dev, "power") {
        j.ha(&p.ha, Some(&ENTITY_KEYS));
    }
}

/// `homeassistant = "cover"`: `position` (closed at its min, open at its max) and/or `move`
/// (open, close, stop). Without `move`, HA's open and close set the position to its max and
/// min; without `position`, HA's state is the last `move`.
fn cover(j: &mut Json<'_>, opts: &Options, dev: &Device) {
    let (pre, id) = (&opts.prefix, &*dev.id);
    j.ids("cover", id, None, "cover");
    j.availability(opts, id);
    let position = match find(dev, "position").map(|c| &c.kind) {
        Some(Kind::Int { min, max }) => Some((*min, *max)),
        _ => None,
    };
    let moves = match find(dev, "move").map(|c| &c.kind) {
        Some(Kind::Enum { values }) => Some(values),
        _ => None,
    };
    let value =
        |v: &str| moves.and_then(|m| m.iter().find(|x| x.eq_ignore_ascii_case(v)).map(|x| &**x));
    match (moves, position) {
        (Some(_), _) => {
            j.str("command_topic", &format!("{pre}/{id}/move/set"));
            j.str("payload_open", value("open").unwrap_or("open"));
            j.str("payload_close", value("close").unwrap_or("close"));
            match value("stop") {
                Some(s) => j.str("payload_stop", s),
                None => j.raw("payload_stop", "null"),
            }
        }
        (None, Some((min, max))) => {
            j.str("command_topic", &format!("{pre}/{id}/position/set"));
            j.str("payload_open", &max.to_string());
            j.str("payload_close", &min.to_string());
            j.raw("payload_stop", "null");
        }
        (None, None) => {}
    }
    match position {
        Some((min, max)) => {
            j.str("set_position_topic", &format!("{pre}/{id}/position/set"));
            j.str("position_topic", &format!("{pre}/{id}/position"));
            j.raw("position_open", max);
            j.raw("position_closed", min);
        }
        None => {
            j.str("state_topic", &format!("{pre}/{id}/move"));
            j.str("state_open", value("open").unwrap_or("open"));
            j.str("state_closed", value("close").unwrap_or("close"));
            if let Some(s) = value("stop") {
                j.str("state_stopped", s);
            }
        }
    }
    if let Some(main) = find(dev, "position").or_else(|| find(dev, "move")) {
        j.ha(&main.ha, Some(&["icon", "entity_category", "device_class"]));
    }
}

/// The device's "command result" `event` entity. No availability topic: refusals for an
/// offline device must show too.
fn event(j: &mut Json<'_>, opts: &Options, dev: &Device) {
    let id = &*dev.id;
    j.str("name", "command result");
    j.str("unique_id", &format!("gatemq_{id}_{COMMAND_RESULT}"));
    j.str("default_entity_id", &format!("event.{id}_{COMMAND_RESULT}"));
    j.str("object_id", &format!("{id}_{COMMAND_RESULT}"));
    j.str("state_topic", &format!("{}/{id}/{EVENT}", opts.prefix));
    j.str("icon", "mdi:console-line");
    j.strs("event_types", ["ok", "refused"]);
}

/// A reading: a `sensor`, or a `binary_sensor` for a bool (`platform`, as [`parts`] says).
fn reading(j: &mut Json<'_>, opts: &Options, dev: &Device, r: &Reading, platform: &str) {
    let (id, name) = (&*dev.id, &*r.name);
    j.ids(platform, id, Some(name), name);
    j.str("state_topic", &format!("{}/{id}/{name}", opts.prefix));
    j.availability(opts, id);
    match r.kind {
        ReadingKind::Bool => {
            j.str("payload_on", "ON");
            j.str("payload_off", "OFF");
        }
        ReadingKind::Float => {
            if let Some(n) = r.round {
                j.raw("suggested_display_precision", n);
            }
        }
        ReadingKind::Int | ReadingKind::Str => {}
    }
    j.ha(&r.ha, None);
}

/// The Home Assistant platform a command of this kind is announced as.
fn platform(kind: &Kind) -> &'static str {
    match kind {
        Kind::Bool => "switch",
        Kind::Int { .. } | Kind::Float { .. } => "number",
        Kind::Enum { .. } => "select",
        Kind::Trigger => "button",
        Kind::Str { .. } => "text",
    }
}

/// `"device":{...},"origin":{...}`: the Home Assistant device and what announced it.
fn device_json(b: &mut Vec<u8>, id: &str, name: &str, opts: &Options) {
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    b.extend_from_slice(b"\"device\":{\"identifiers\":[");
    json::push_str(b, &format!("gatemq_{id}"));
    b.extend_from_slice(b"],\"name\":");
    json::push_str(b, name);
    b.extend_from_slice(b",\"manufacturer\":\"gatemq\",\"model\":\"declared device\"");
    b.extend_from_slice(format!(",\"sw_version\":\"{VERSION}\"").as_bytes());
    if let Some(url) = &opts.status_url {
        b.extend_from_slice(b",\"configuration_url\":");
        json::push_str(b, url);
    }
    b.extend_from_slice(
        format!("}},\"origin\":{{\"name\":\"gatemq\",\"sw_version\":\"{VERSION}\"").as_bytes(),
    );
    if let Some(url) = &opts.status_url {
        b.extend_from_slice(b",\"support_url\":");
        json::push_str(b, url);
    }
    b.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::decl::Devices;

    fn device(toml: &str) -> Device {
        Devices::parse(toml, "d.toml", std::path::Path::new("/"))
            .unwrap()
            .devices
            .remove(0)
    }

    #[test]
    fn a_device_config_lists_its_components_and_a_removal_only_the_removed() {
        let dev = device(
            "[gw]\ncommands.power = { type = \"bool\" }\nreadings.t = { type = \"float\", path = \"t\", round = 1 }\n",
        );
        let opts = Options {
            discovery: true,
            ..Options::default()
        };
        let mut out = Outbox::default();
        let gone = Component {
            platform: "number",
            key: "level".into(),
        };
        announce(&opts, &dev, true, &mut out);
        announce_removals(&opts, &dev, &[gone], &mut out);
        let (topic, payload, retain, _) = out.iter().next().unwrap();
        assert_eq!((topic, retain), ("homeassistant/device/gw/config", true));
        assert!(is_ours(payload));
        let mut got = announced_components(payload);
        got.sort();
        assert_eq!(
            got,
            [
                ("command_result".to_string(), "event".to_string()),
                ("power".into(), "switch".into()),
                ("t".into(), "sensor".into())
            ]
        );
        let text = std::str::from_utf8(payload).unwrap();
        assert!(
            text.contains(r#""suggested_display_precision":1"#),
            "{text}"
        );
        let (topic, removal, retain, _) = out.iter().nth(1).unwrap();
        assert_eq!((topic, retain), ("homeassistant/device/gw/config", false));
        assert!(announced_components(removal).is_empty());
        let removal = std::str::from_utf8(removal).unwrap();
        assert!(
            removal.ends_with(r#","cmps":{"level":{"p":"number"}}}"#),
            "{removal}"
        );
        assert_eq!(
            parse_topic(&opts, "homeassistant/switch/gw/power/config"),
            Some(("gw", Some(("switch", "power"))))
        );
        assert_eq!(parse_topic(&opts, topic), Some(("gw", None)));
        assert_eq!(parse_topic(&opts, "homeassistant/status"), None);
    }
}
