//! The devices file: TOML declarations of devices, their commands, types and actions (the
//! Factory the executor is built from). Read at start and on reload, never on the message
//! path. Every error names the file, the line and the key.
//!
//! ```toml
//! [lamp]
//! name = "Living room lamp"
//! min_interval_ms = 200            # optional rate limit
//! commands.power = { type = "bool" }                       # action "state" by default
//! commands.brightness = { type = "int", min = 0, max = 255 }
//! commands.colour = { type = "enum", values = ["warm", "cold"] }
//!
//! [gateway]
//! readings.cpu_temp = { type = "float", path = "/sys/class/thermal/thermal_zone0/temp", scale = 0.001 }
//! ```
//!
//! `homeassistant = "light"`, `"fan"` or `"cover"` makes some commands one Home Assistant entity
//! ([`Entity`]); readings are declared in `decl/reading.rs`.

mod reading;

pub use reading::{Reading, ReadingKind, Source};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A command's value type and its limits.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// ON/OFF, on/off, true/false, 1/0 (and TOGGLE); normalised to ON/OFF.
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
        step: Option<f64>,
        decimals: usize,
    },
    Enum {
        values: Vec<Box<str>>,
    },
    Str {
        max_len: usize,
    },
    /// No value: the command is an event (a button press).
    Trigger,
}

/// What executing a command does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A virtual device: the value becomes its state.
    State,
    /// Write the value to a file (sysfs LED, GPIO value); optionally read it back as the state.
    File { path: PathBuf, read_back: bool },
    /// Run a program (no shell); `{value}`, `{device}`, `{command}` in its arguments are
    /// replaced, the value always as one whole argument.
    Exec {
        program: PathBuf,
        args: Vec<Box<str>>,
        timeout: Duration,
    },
    /// The Adapter: publish a templated payload to another topic (a Tasmota `cmnd/...` topic,
    /// a Zigbee2MQTT `.../set`); the state comes back on a state topic.
    Publish {
        topic: Box<str>,
        payload: Box<str>,
        retain: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: Box<str>,
    pub kind: Kind,
    pub action: Action,
    /// For bool commands: what `{value}` becomes in an action for ON and OFF.
    pub payload_on: Box<str>,
    pub payload_off: Box<str>,
    /// A topic the device reports this command's value on (plain payload, or JSON with
    /// `state_key`).
    pub state_topic: Option<Box<str>>,
    /// The key of this command's value in JSON state reports (default: the command's name).
    pub state_key: Box<str>,
    /// The value before any command, published at start.
    pub initial: Option<Box<str>>,
    /// What Home Assistant discovery says of its entity beyond the type: `device_class`,
    /// `unit_of_measurement` (`unit`), `icon`, `entity_category`, `state_class`, as
    /// (discovery key, value).
    pub ha: Vec<(&'static str, Box<str>)>,
}

/// Per-command and per-reading keys passed to Home Assistant discovery: (devices file key,
/// discovery key).
const HA_KEYS: [(&str, &str); 5] = [
    ("device_class", "device_class"),
    ("unit", "unit_of_measurement"),
    ("icon", "icon"),
    ("entity_category", "entity_category"),
    ("state_class", "state_class"),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub id: Box<str>,
    pub name: Box<str>,
    pub commands: Vec<Command>,
    /// Commands closer together than this are refused.
    pub min_interval: Duration,
    /// A topic the device reports JSON state on (e.g. `zigbee2mqtt/lamp`).
    pub state_topic: Option<Box<str>>,
    /// Exec commands waiting while one runs; more are refused.
    pub exec_queue: usize,
    /// The device reports its own availability (e.g. Tasmota's LWT): that, not gatemq
    /// running, is what `<prefix>/<device>/availability` says.
    pub availability: Option<Availability>,
    /// `homeassistant = "light"`, `"fan"` or `"cover"`: some of its commands are one Home
    /// Assistant entity (see [`Entity`]).
    pub entity: Option<Entity>,
    /// Values gatemq reads itself (a file, a program's output), every so often.
    pub readings: Vec<Reading>,
}

/// The key of a device's "command result" `event` among its Home Assistant entities.
pub(super) const COMMAND_RESULT: &str = "command_result";

/// One Home Assistant entity made of several commands, by their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// `power` (bool), and if declared `brightness` (int), `colour_temp` or `color_temp` (int,
    /// kelvin), `effect` (enum).
    Light,
    /// `power` (bool), and if declared `speed`: an int (a percentage of its range) or an enum
    /// (preset modes).
    Fan,
    /// `position` (int, closed at its `min`, open at its `max`) and/or `move` (an enum of
    /// open, close and optionally stop).
    Cover,
}

impl Entity {
    /// The Home Assistant platform.
    pub fn platform(self) -> &'static str {
        match self {
            Entity::Light => "light",
            Entity::Fan => "fan",
            Entity::Cover => "cover",
        }
    }

    /// Is command `name` part of this entity (not an entity of its own)?
    pub fn has(self, name: &str) -> bool {
        match self {
            Entity::Light => matches!(
                name,
                "power" | "brightness" | "effect" | "colour_temp" | "color_temp"
            ),
            Entity::Fan => matches!(name, "power" | "speed"),
            Entity::Cover => matches!(name, "position" | "move"),
        }
    }
}

/// A device's own availability report.
#[derive(Debug, Clone, PartialEq)]
pub struct Availability {
    pub topic: Box<str>,
    /// The payload (or, with `key`, the JSON member's value) that means online / offline.
    pub available: Box<str>,
    pub not_available: Box<str>,
    /// A JSON object's member holding it (`state` for Zigbee2MQTT's `{"state":"online"}`).
    pub key: Option<Box<str>>,
}

/// A devices file, as declared.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Devices {
    pub devices: Vec<Device>,
    pub source: Option<PathBuf>,
}

/// Names that are topic levels of their own under a device.
const RESERVED: [&str; 5] = ["set", "state", "availability", "result", "event"];

impl Devices {
    pub fn load(path: &Path) -> Result<Devices, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read devices file {}: {}",
                path.display(),
                crate::config::io_reason(&e)
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut d = Devices::parse(&text, &path.display().to_string(), base)?;
        d.source = Some(path.to_path_buf());
        Ok(d)
    }

    /// Parse devices-file text; `name` is used in errors, relative paths are taken from `base`.
    pub fn parse(text: &str, name: &str, base: &Path) -> Result<Devices, String> {
        let p = Parser { text, name, base };
        let root = DeTable::parse(text).map_err(|e| {
            let at = e
                .span()
                .map_or(String::new(), |s| format!("{}: ", p.line(s.start)));
            format!("{name}:{at}{}", e.message().trim_end())
        })?;
        let mut devices = Vec::new();
        for (id, value) in sorted(root.get_ref()) {
            devices.push(p.device(id, value)?);
        }
        Ok(Devices {
            devices,
            source: None,
        })
    }
}

/// A table's entries in the order they were written (the map itself is sorted by key).
fn sorted<'a, 'i>(
    t: &'a DeTable<'i>,
) -> Vec<(
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

struct Parser<'a> {
    text: &'a str,
    name: &'a str,
    base: &'a Path,
}

type Key<'i> = Spanned<std::borrow::Cow<'i, str>>;
type Val<'i> = Spanned<DeValue<'i>>;

impl Parser<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn err(&self, span: Range<usize>, key: &str, what: &str) -> String {
        format!("{}:{}: {key}: {what}", self.name, self.line(span.start))
    }

    fn table<'v, 'i>(&self, key: &str, v: &'v Val<'i>) -> Result<&'v DeTable<'i>, String> {
        match v.get_ref() {
            DeValue::Table(t) => Ok(t),
            _ => Err(self.err(v.span(), key, "expected a table")),
        }
    }

    fn string(&self, key: &str, v: &Val<'_>) -> Result<Box<str>, String> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.as_ref().into()),
            _ => Err(self.err(v.span(), key, "expected a string")),
        }
    }

    fn int(&self, key: &str, v: &Val<'_>) -> Result<i64, String> {
        match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| self.err(v.span(), key, "integer out of range")),
            _ => Err(self.err(v.span(), key, "expected a whole number")),
        }
    }

    fn number(&self, key: &str, v: &Val<'_>) -> Result<(f64, usize), String> {
        match v.get_ref() {
            DeValue::Integer(_) => Ok((self.int(key, v)? as f64, 0)),
            DeValue::Float(f) => {
                let s = f.as_str();
                let x: f64 = s
                    .parse()
                    .map_err(|_| self.err(v.span(), key, "invalid number"))?;
                if !x.is_finite() {
                    return Err(self.err(v.span(), key, "expected a finite number"));
                }
                let decimals = s.split_once('.').map_or(0, |(_, frac)| {
                    frac.split(['e', 'E']).next().unwrap_or("").len()
                });
                Ok((x, decimals))
            }
            _ => Err(self.err(v.span(), key, "expected a number")),
        }
    }

    fn boolean(&self, key: &str, v: &Val<'_>) -> Result<bool, String> {
        match v.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.err(v.span(), key, "expected true or false")),
        }
    }

    fn strings(&self, key: &str, v: &Val<'_>) -> Result<Vec<Box<str>>, String> {
        match v.get_ref() {
            DeValue::Array(a) => a.iter().map(|e| self.string(key, e)).collect(),
            _ => Err(self.err(v.span(), key, "expected a list of strings")),
        }
    }

    fn path(&self, key: &str, v: &Val<'_>) -> Result<PathBuf, String> {
        let s = self.string(key, v)?;
        if s.is_empty() {
            return Err(self.err(v.span(), key, "expected a path"));
        }
        Ok(self.base.join(&*s))
    }

    fn device(&self, id: &Key<'_>, v: &Val<'_>) -> Result<Device, String> {
        let key = id.get_ref().as_ref();
        if !valid_level(key) || RESERVED.contains(&key) {
            return Err(self.err(
                id.span(),
                key,
                "a device id must be one topic level (no '/', '+', '#', not empty)",
            ));
        }
        let t = self.table(key, v)?;
        let mut d = Device {
            id: key.into(),
            name: key.into(),
            commands: Vec::new(),
            min_interval: Duration::ZERO,
            state_topic: None,
            exec_queue: 8,
            availability: None,
            entity: None,
            readings: Vec::new(),
        };
        let mut entity_span = None;
        let mut avail: [Option<Box<str>>; 4] = Default::default();
        let mut avail_span = None;
        for (k, v) in sorted(t) {
            let field = k.get_ref().as_ref();
            let path = format!("{key}.{field}");
            match field {
                "name" => d.name = self.string(&path, v)?,
                "min_interval_ms" => d.min_interval = Duration::from_millis(self.nonneg(&path, v)?),
                "state_topic" => d.state_topic = Some(self.topic(&path, v)?),
                "exec_queue" => d.exec_queue = self.nonneg(&path, v)? as usize,
                "availability_topic" => avail[0] = Some(self.topic(&path, v)?),
                "homeassistant" => {
                    d.entity = Some(match &*self.string(&path, v)? {
                        "light" => Entity::Light,
                        "fan" => Entity::Fan,
                        "cover" => Entity::Cover,
                        other => {
                            return Err(self.err(
                                v.span(),
                                &path,
                                &format!("unknown Home Assistant entity '{other}' (expected light, fan or cover)"),
                            ))
                        }
                    });
                    entity_span = Some(v.span());
                }
                "payload_available" | "payload_not_available" | "availability_key" => {
                    let i = match field {
                        "payload_available" => 1,
                        "payload_not_available" => 2,
                        _ => 3,
                    };
                    avail[i] = Some(self.string(&path, v)?);
                    avail_span.get_or_insert((k.span(), path));
                }
                "commands" => {
                    for (ck, cv) in sorted(self.table(&path, v)?) {
                        d.commands.push(self.command(key, ck, cv)?);
                    }
                }
                "readings" => {
                    for (rk, rv) in sorted(self.table(&path, v)?) {
                        d.readings.push(self.reading(key, rk, rv)?);
                    }
                }
                _ => return Err(self.err(k.span(), &path, "unknown key")),
            }
        }
        if d.commands.is_empty() && d.readings.is_empty() {
            return Err(self.err(
                id.span(),
                key,
                "a device needs at least one command (commands.<name> = { type = ... }) or reading",
            ));
        }
        if let Some(r) = d
            .readings
            .iter()
            .find(|r| d.commands.iter().any(|c| c.name == r.name))
        {
            return Err(self.err(
                id.span(),
                &format!("{key}.readings.{}", r.name),
                "a command has that name already",
            ));
        }
        if let (Some(entity), Some(span)) = (d.entity, entity_span) {
            if let Err(what) = entity_commands(entity, &d.commands) {
                return Err(self.err(span, &format!("{key}.homeassistant"), what));
            }
        }
        // Each entity is a key of the device's one Home Assistant config (`cmps`) and part of
        // its unique_id: a command or reading must not take the key of the grouped entity or
        // of the command result event, or one entity would hide the other.
        let own = d
            .commands
            .iter()
            .filter(|c| !d.entity.is_some_and(|e| e.has(&c.name)))
            .map(|c| ("commands", &c.name))
            .chain(d.readings.iter().map(|r| ("readings", &r.name)));
        for (table, name) in own {
            let taken = match d.entity {
                Some(e) if e.platform() == &**name => {
                    format!("the name of the device's Home Assistant {name} (homeassistant = \"{name}\")")
                }
                _ if &**name == COMMAND_RESULT => {
                    "the name of the device's Home Assistant \"command result\" event".to_string()
                }
                _ => continue,
            };
            return Err(self.err(id.span(), &format!("{key}.{table}.{name}"), &taken));
        }
        let [topic, available, not_available, avail_key] = avail;
        match (topic, avail_span) {
            (Some(topic), _) => {
                d.availability = Some(Availability {
                    topic,
                    available: available.unwrap_or_else(|| "Online".into()),
                    not_available: not_available.unwrap_or_else(|| "Offline".into()),
                    key: avail_key,
                })
            }
            (None, Some((span, path))) => {
                return Err(self.err(span, &path, "only with availability_topic"))
            }
            (None, None) => {}
        }
        Ok(d)
    }

    fn nonneg(&self, key: &str, v: &Val<'_>) -> Result<u64, String> {
        let n = self.int(key, v)?;
        u64::try_from(n).map_err(|_| self.err(v.span(), key, "must not be negative"))
    }

    fn topic(&self, key: &str, v: &Val<'_>) -> Result<Box<str>, String> {
        let s = self.string(key, v)?;
        if !crate::broker::topic::valid_name(&s) {
            return Err(self.err(
                v.span(),
                key,
                "expected a topic name (not empty, no wildcards)",
            ));
        }
        Ok(s)
    }

    fn command(&self, device: &str, id: &Key<'_>, v: &Val<'_>) -> Result<Command, String> {
        let name = id.get_ref().as_ref();
        let key = format!("{device}.commands.{name}");
        if !valid_level(name) || RESERVED.contains(&name) {
            return Err(self.err(
                id.span(),
                &key,
                "a command name must be one topic level, and not set, state, availability, result or event",
            ));
        }
        let t = self.table(&key, v)?;
        let field = |f: &str| t.get(f);
        let kind_val = field("type").ok_or_else(|| self.err(v.span(), &key, "missing 'type'"))?;
        let kpath = format!("{key}.type");
        let (min, max) = (field("min"), field("max"));
        let kind = match &*self.string(&kpath, kind_val)? {
            "bool" => Kind::Bool,
            "int" => {
                let min = min
                    .map(|m| self.int(&format!("{key}.min"), m))
                    .transpose()?
                    .unwrap_or(i64::MIN);
                let max = max
                    .map(|m| self.int(&format!("{key}.max"), m))
                    .transpose()?
                    .unwrap_or(i64::MAX);
                if min > max {
                    return Err(self.err(v.span(), &key, "min is above max"));
                }
                Kind::Int { min, max }
            }
            "float" => {
                let (lo, _) = min
                    .map(|m| self.number(&format!("{key}.min"), m))
                    .transpose()?
                    .unwrap_or((f64::MIN, 0));
                let (hi, _) = max
                    .map(|m| self.number(&format!("{key}.max"), m))
                    .transpose()?
                    .unwrap_or((f64::MAX, 0));
                if lo > hi {
                    return Err(self.err(v.span(), &key, "min is above max"));
                }
                let step = field("step")
                    .map(|s| self.number(&format!("{key}.step"), s))
                    .transpose()?;
                if let Some((s, _)) = step {
                    if s <= 0.0 {
                        return Err(self.err(v.span(), &format!("{key}.step"), "must be above 0"));
                    }
                }
                Kind::Float {
                    min: lo,
                    max: hi,
                    step: step.map(|s| s.0),
                    decimals: step.map_or(0, |s| s.1),
                }
            }
            "enum" => {
                let values = field("values")
                    .ok_or_else(|| self.err(v.span(), &key, "an enum needs 'values'"))
                    .and_then(|vals| self.strings(&format!("{key}.values"), vals))?;
                if values.is_empty() {
                    return Err(self.err(v.span(), &format!("{key}.values"), "must not be empty"));
                }
                Kind::Enum { values }
            }
            "string" => Kind::Str {
                max_len: field("max_length")
                    .map(|m| self.nonneg(&format!("{key}.max_length"), m))
                    .transpose()?
                    .unwrap_or(256) as usize,
            },
            "trigger" => Kind::Trigger,
            other => {
                return Err(self.err(
                    kind_val.span(),
                    &kpath,
                    &format!(
                    "unknown type '{other}' (expected bool, int, float, enum, string or trigger)"
                ),
                ))
            }
        };
        let action_name = match field("action") {
            Some(a) => self.string(&format!("{key}.action"), a)?,
            None => "state".into(),
        };
        let action = match &*action_name {
            "state" => Action::State,
            "file" => Action::File {
                path: self.path(
                    &format!("{key}.path"),
                    field("path")
                        .ok_or_else(|| self.err(v.span(), &key, "a file action needs 'path'"))?,
                )?,
                read_back: field("read_back")
                    .map(|b| self.boolean(&format!("{key}.read_back"), b))
                    .transpose()?
                    .unwrap_or(false),
            },
            "exec" => Action::Exec {
                program: self.path(
                    &format!("{key}.program"),
                    field("program").ok_or_else(|| {
                        self.err(v.span(), &key, "an exec action needs 'program'")
                    })?,
                )?,
                args: field("args")
                    .map(|a| self.strings(&format!("{key}.args"), a))
                    .transpose()?
                    .unwrap_or_default(),
                timeout: Duration::from_millis(
                    field("timeout_ms")
                        .map(|t| self.nonneg(&format!("{key}.timeout_ms"), t))
                        .transpose()?
                        .unwrap_or(5000),
                ),
            },
            "publish" => Action::Publish {
                topic: self.topic(
                    &format!("{key}.topic"),
                    field("topic").ok_or_else(|| {
                        self.err(v.span(), &key, "a publish action needs 'topic'")
                    })?,
                )?,
                payload: match field("payload") {
                    Some(p) => self.string(&format!("{key}.payload"), p)?,
                    None => "{value}".into(),
                },
                retain: field("retain")
                    .map(|b| self.boolean(&format!("{key}.retain"), b))
                    .transpose()?
                    .unwrap_or(false),
            },
            other => {
                return Err(self.err(
                    field("action").map_or(v.span(), |a| a.span()),
                    &format!("{key}.action"),
                    &format!("unknown action '{other}' (expected state, file, exec or publish)"),
                ))
            }
        };
        let known: &[&str] = &[
            "type",
            "min",
            "max",
            "step",
            "values",
            "max_length",
            "action",
            "path",
            "read_back",
            "program",
            "args",
            "timeout_ms",
            "topic",
            "payload",
            "retain",
            "payload_on",
            "payload_off",
            "state_topic",
            "state_key",
            "initial",
        ];
        for (k, _) in t.iter() {
            let k_str: &str = k.get_ref().as_ref();
            if !known.contains(&k_str) && !HA_KEYS.iter().any(|(f, _)| *f == k_str) {
                return Err(self.err(k.span(), &format!("{key}.{}", k.get_ref()), "unknown key"));
            }
        }
        let text = |f: &str, default: &str| -> Result<Box<str>, String> {
            field(f).map_or(Ok(default.into()), |x| {
                self.string(&format!("{key}.{f}"), x)
            })
        };
        let cmd = Command {
            name: name.into(),
            payload_on: text("payload_on", "ON")?,
            payload_off: text("payload_off", "OFF")?,
            state_topic: field("state_topic")
                .map(|s| self.topic(&format!("{key}.state_topic"), s))
                .transpose()?,
            state_key: text("state_key", name)?,
            initial: field("initial")
                .map(|s| self.scalar_text(&format!("{key}.initial"), s))
                .transpose()?,
            kind,
            action,
            ha: self.ha_keys(&key, field, &["config", "diagnostic"])?,
        };
        if let Some(init) = &cmd.initial {
            let mut out = String::new();
            if !crate::devices::value::normalise(&cmd, init, "OFF", &mut out) {
                return Err(self.err(
                    field("initial").map_or(v.span(), |s| s.span()),
                    &format!("{key}.initial"),
                    &out,
                ));
            }
        }
        Ok(cmd)
    }

    /// The Home Assistant keys of a command or reading `key`; `categories`: the entity
    /// categories its platform takes (HA refuses `config` for a sensor).
    fn ha_keys<'v, 'i: 'v>(
        &self,
        key: &str,
        field: impl Fn(&str) -> Option<&'v Val<'i>>,
        categories: &[&str],
    ) -> Result<Vec<(&'static str, Box<str>)>, String> {
        HA_KEYS
            .iter()
            .filter_map(|&(f, ha)| field(f).map(|x| (f, ha, x)))
            .map(|(f, ha, x)| {
                let v = self.string(&format!("{key}.{f}"), x)?;
                if f == "entity_category" && !categories.contains(&&*v) {
                    return Err(self.err(
                        x.span(),
                        &format!("{key}.{f}"),
                        &format!("expected {}", categories.join(" or ")),
                    ));
                }
                Ok((ha, v))
            })
            .collect()
    }

    /// An initial value written as a string, number or boolean.
    fn scalar_text(&self, key: &str, v: &Val<'_>) -> Result<Box<str>, String> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.as_ref().into()),
            DeValue::Integer(_) => Ok(self.int(key, v)?.to_string().into()),
            DeValue::Float(f) => Ok(f.as_str().into()),
            DeValue::Boolean(b) => Ok(if *b { "ON" } else { "OFF" }.into()),
            _ => Err(self.err(v.span(), key, "expected a string, number or boolean")),
        }
    }
}

/// Do `commands` make a Home Assistant `entity`? The error says what it needs.
fn entity_commands(entity: Entity, commands: &[Command]) -> Result<(), &'static str> {
    let kind = |name: &str| commands.iter().find(|c| &*c.name == name).map(|c| &c.kind);
    let int = |name: &str| kind(name).is_none_or(|k| matches!(k, Kind::Int { .. }));
    let enum_ = |name: &str| kind(name).is_none_or(|k| matches!(k, Kind::Enum { .. }));
    match entity {
        Entity::Light => {
            let ok = matches!(kind("power"), Some(Kind::Bool))
                && int("brightness")
                && int("colour_temp")
                && int("color_temp")
                && enum_("effect");
            if !ok {
                return Err("a light needs a bool command 'power' (and 'brightness' and 'colour_temp' ints, 'effect' an enum, if declared)");
            }
            if kind("colour_temp").is_some() && kind("color_temp").is_some() {
                return Err("a light has 'colour_temp' or 'color_temp', not both");
            }
            if let Some(Kind::Int { min, max }) = kind("colour_temp").or(kind("color_temp")) {
                if *min < 1000 || *max > 20000 {
                    return Err("a light's colour temperature is in kelvin: give it a min and max within 1000 to 20000");
                }
            }
        }
        Entity::Fan => {
            let speed = kind("speed").is_none_or(|k| {
                matches!(k, Kind::Int { min, .. } if *min >= 0) || matches!(k, Kind::Enum { .. })
            });
            if !matches!(kind("power"), Some(Kind::Bool)) || !speed {
                return Err("a fan needs a bool command 'power' (and 'speed' an int from 0 up or an enum, if declared)");
            }
            if let Some(Kind::Int { min, max }) = kind("speed") {
                // Home Assistant's speed range starts at 1 (0 is off) and must not be empty.
                if *max > 1_000_000 || *max <= (*min).max(1) {
                    return Err(
                        "a fan's int 'speed' needs a max above its min and above 1 (up to 1000000)",
                    );
                }
            }
        }
        Entity::Cover => {
            let position = matches!(kind("position"), Some(Kind::Int { min, max }) if max > min && *min >= 0 && *max <= 1_000_000);
            let moves = match kind("move") {
                Some(Kind::Enum { values }) => {
                    let has = |v: &str| values.iter().any(|x| x.eq_ignore_ascii_case(v));
                    Some(
                        has("open")
                            && has("close")
                            && values.iter().all(|x| {
                                ["open", "close", "stop"]
                                    .iter()
                                    .any(|v| x.eq_ignore_ascii_case(v))
                            }),
                    )
                }
                Some(_) => Some(false),
                None => None,
            };
            let ok = match (kind("position"), moves) {
                (None, None) => false,
                (p, m) => (p.is_none() || position) && m.unwrap_or(true),
            };
            if !ok {
                return Err("a cover needs an int command 'position' (min below max, from 0 up) and/or an enum command 'move' of open, close and stop");
            }
        }
    }
    Ok(())
}

fn valid_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Devices, String> {
        Devices::parse(text, "d.toml", Path::new("/etc/gatemq"))
    }

    #[test]
    fn full_declaration_in_file_order() {
        let d = parse(
            r#"
[lamp]
name = "Living room lamp"
min_interval_ms = 100
commands.power = { type = "bool", initial = false }
commands.brightness = { type = "int", min = 0, max = 255 }
commands.colour = { type = "enum", values = ["warm", "cold"] }

[relay]
commands.on = { type = "bool", action = "file", path = "relay1", payload_on = "1", payload_off = "0", read_back = true }

[fan]
commands.speed = { type = "float", min = 0, max = 1, step = 0.25, action = "exec", program = "/bin/fan", args = ["--speed", "{value}"], timeout_ms = 2000 }

[plug]
commands.power = { type = "bool", action = "publish", topic = "cmnd/plug1/POWER", state_topic = "stat/plug1/POWER" }
"#,
        )
        .unwrap();
        let ids: Vec<&str> = d.devices.iter().map(|d| &*d.id).collect();
        assert_eq!(ids, ["lamp", "relay", "fan", "plug"]);
        let lamp = &d.devices[0];
        assert_eq!(lamp.name.as_ref(), "Living room lamp");
        let names: Vec<&str> = lamp.commands.iter().map(|c| &*c.name).collect();
        assert_eq!(names, ["power", "brightness", "colour"]);
        assert_eq!(lamp.commands[0].initial.as_deref(), Some("OFF"));
        assert_eq!(lamp.commands[1].kind, Kind::Int { min: 0, max: 255 });
        assert_eq!(
            d.devices[1].commands[0].action,
            Action::File {
                path: "/etc/gatemq/relay1".into(),
                read_back: true
            }
        );
        assert_eq!(
            d.devices[2].commands[0].kind,
            Kind::Float {
                min: 0.0,
                max: 1.0,
                step: Some(0.25),
                decimals: 2
            }
        );
        assert_eq!(
            d.devices[3].commands[0].state_topic.as_deref(),
            Some("stat/plug1/POWER")
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[lamp]\ncommands.power = { type = \"boolean\" }\n").unwrap_err();
        assert_eq!(
            e,
            "d.toml:2: lamp.commands.power.type: unknown type 'boolean' (expected bool, int, float, enum, string or trigger)"
        );
        let e = parse("[lamp]\n\ncommands.b = { type = \"int\", min = 5, max = 1 }\n").unwrap_err();
        assert_eq!(e, "d.toml:3: lamp.commands.b: min is above max");
        let e = parse("[lamp]\ncolor = 1\ncommands.p = { type = \"bool\" }\n").unwrap_err();
        assert_eq!(e, "d.toml:2: lamp.color: unknown key");
        let e = parse("[lamp]\ncommands.p = { type = \"bool\", speed = 1 }\n").unwrap_err();
        assert_eq!(e, "d.toml:2: lamp.commands.p.speed: unknown key");
        let e = parse("[\"a/b\"]\ncommands.p = { type = \"bool\" }\n").unwrap_err();
        assert!(e.starts_with("d.toml:1: a/b: a device id"), "{e}");
        let e = parse("[lamp]\ncommands.set = { type = \"bool\" }\n").unwrap_err();
        assert!(e.starts_with("d.toml:2: lamp.commands.set:"), "{e}");
        // devices/<d>/event carries the results for Home Assistant.
        let e = parse("[lamp]\ncommands.event = { type = \"bool\" }\n").unwrap_err();
        assert!(
            e.ends_with("not set, state, availability, result or event"),
            "{e}"
        );
        let e =
            parse("[lamp]\ncommands.b = { type = \"int\", max = 9, initial = 10 }\n").unwrap_err();
        assert_eq!(e, "d.toml:2: lamp.commands.b.initial: b: 10 is above max 9");
        let e =
            parse("[lamp]\ncommands.x = { type = \"bool\", action = \"publish\" }\n").unwrap_err();
        assert_eq!(
            e,
            "d.toml:2: lamp.commands.x: a publish action needs 'topic'"
        );
        let e = parse("[lamp\n").unwrap_err();
        assert!(e.starts_with("d.toml:1: "), "{e}");
        let e = parse("[lamp]\nname = \"x\"\n").unwrap_err();
        assert!(
            e.starts_with("d.toml:1: lamp: a device needs at least one command"),
            "{e}"
        );
    }
}
