//! The device command executor: gatemq knows the devices behind it and runs their commands.
//!
//! When a PUBLISH arrives on `<prefix>/<device>/<command>/set` (or `<prefix>/<device>/set` with
//! a JSON object of several commands), the executor reads the device, the command and the value
//! out of it, validates the value against the declared type, executes the declared action, and
//! answers: the normalised value retained on `<prefix>/<device>/<command>`, all values as
//! retained JSON on `<prefix>/<device>/state`, and a JSON response on `.../<command>/result`.
//! An invalid command is never executed and never changes the state.
//!
//! The broker calls one small interface (the executor observes the command and state topics):
//! [`Executor::observes`], [`Executor::on_publish`], [`Executor::next_deadline`],
//! [`Executor::on_timeout`], [`Executor::on_child_exit`]. What the executor publishes goes into
//! an [`Outbox`] the broker routes, so `state`, `file` and `publish` commands allocate nothing
//! once warm. `exec` commands start a program without blocking the loop; its exit comes back
//! as SIGCHLD, an event of the same loop.

mod availability;
pub mod decl;
mod discovery;
pub(crate) mod json;
mod reading;
mod reload;
pub mod removals;
pub mod value;

use crate::broker::fxhash::FxHashMap;
use decl::{Action, Command, Device, Devices, Kind, ReadingKind};
pub use removals::Removals;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The executor's options from the main config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// First topic level(s) of the device topics.
    pub prefix: String,
    /// Also route command messages to ordinary subscribers.
    pub route_commands: bool,
    /// Publish Home Assistant discovery configs.
    pub discovery: bool,
    pub discovery_prefix: String,
    /// The status page (`http_listener`), announced to Home Assistant as the devices'
    /// `configuration_url` and the origin's `support_url`; set by the event loop once the
    /// listener is open.
    pub status_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "devices".into(),
            route_commands: true,
            discovery: false,
            discovery_prefix: "homeassistant".into(),
            status_url: None,
        }
    }
}

/// Messages the executor wants published, in one reused byte buffer.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    msgs: Vec<OutMsg>,
}

#[derive(Debug, Clone)]
struct OutMsg {
    topic: Range<usize>,
    payload: Range<usize>,
    retain: bool,
    /// Encoded MQTT 5 properties to send with it (a response's Correlation Data).
    props: Range<usize>,
}

impl Outbox {
    /// The messages: (topic, payload, retain, encoded MQTT 5 properties).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8], bool, &[u8])> {
        self.msgs.iter().map(|m| {
            let topic = std::str::from_utf8(&self.bytes[m.topic.clone()]).unwrap_or("");
            (
                topic,
                &self.bytes[m.payload.clone()],
                m.retain,
                &self.bytes[m.props.clone()],
            )
        })
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.msgs.clear();
    }

    /// Start a message: topic parts are appended by the caller, then `payload`, then `end`.
    fn topic(&mut self, parts: &[&str]) -> usize {
        let start = self.bytes.len();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                self.bytes.push(b'/');
            }
            self.bytes.extend_from_slice(p.as_bytes());
        }
        start
    }

    fn end(&mut self, topic_start: usize, payload_start: usize, retain: bool) {
        let end = self.bytes.len();
        self.msgs.push(OutMsg {
            topic: topic_start..payload_start,
            payload: payload_start..end,
            retain,
            props: end..end,
        });
    }

    /// Copy the last message to `reply.topic`, with its Correlation Data (MQTT 5 request/response).
    fn copy_to(&mut self, reply: &Reply) {
        let Some(last) = self.msgs.last().cloned() else {
            return;
        };
        let t = self.bytes.len();
        self.bytes.extend_from_slice(reply.topic.as_bytes());
        let p = self.bytes.len();
        self.bytes.extend_from_within(last.payload);
        let props = self.bytes.len();
        if let Some(corr) = &reply.correlation {
            self.bytes.push(0x09);
            self.bytes
                .extend_from_slice(&(corr.len() as u16).to_be_bytes());
            self.bytes.extend_from_slice(corr);
        }
        let end = self.bytes.len();
        self.msgs.push(OutMsg {
            topic: t..p,
            payload: p..props,
            retain: false,
            props: props..end,
        });
    }
}

/// Where an MQTT 5 command asked for its response (Response Topic, Correlation Data).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub topic: String,
    pub correlation: Option<Vec<u8>>,
}

impl Reply {
    fn set(&mut self, topic: &str, correlation: Option<&[u8]>) {
        self.topic.clear();
        self.topic.push_str(topic);
        match (correlation, &mut self.correlation) {
            (Some(c), Some(v)) => {
                v.clear();
                v.extend_from_slice(c);
            }
            (c, slot) => *slot = c.map(<[u8]>::to_vec),
        }
    }
}

/// Which of the executor's topics a PUBLISH is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    No,
    Command,
    State,
    /// A device's own availability report.
    Availability,
    /// Home Assistant's birth (and last will) message, `<discovery prefix>/status`.
    HomeAssistantStatus,
}

struct DeviceState {
    decl: Device,
    /// Current value per command (capacity kept: updating allocates nothing).
    values: Vec<String>,
    known: Vec<bool>,
    last_command: Option<Instant>,
    /// Open handles of `file` actions, per command, kept so a write allocates nothing.
    files: Vec<Option<File>>,
    exec_queue: VecDeque<(usize, String, Option<Reply>)>,
    running: Option<Running>,
    /// A value changed: `<prefix>/<device>/state` is due (published once per event).
    state_dirty: bool,
    /// Its availability, values and discovery are out already (a reload kept it unchanged).
    announced: bool,
    /// With `availability_topic`: what the device last reported (None: nothing yet).
    online: Option<bool>,
    /// Commands answered ok and refused or failed (for `/metrics`).
    ok: std::cell::Cell<u64>,
    failed: std::cell::Cell<u64>,
    /// Per declared reading (`reading.rs`).
    readings: Vec<reading::ReadingState>,
}

struct Running {
    command: usize,
    value: String,
    reply: Option<Reply>,
    child: Child,
    started: Instant,
    deadline: Instant,
}

pub struct Executor {
    opts: Options,
    devices: Vec<DeviceState>,
    by_id: FxHashMap<Box<str>, usize>,
    /// Observed state topics: (device, command or None for a device-level JSON report).
    state_topics: FxHashMap<Box<str>, Vec<(usize, Option<usize>)>>,
    /// Devices' own availability topics (`availability.rs`).
    availability_topics: FxHashMap<Box<str>, Vec<usize>>,
    /// Removals Home Assistant may not have seen, as what the discovery topic said before and
    /// the removal itself (`removals.rs`): sent again, in order, when HA (re)starts.
    removals: Removals,
    /// Single-component discovery topics of an older gatemq, cleared once the device config
    /// that replaces them is out (`reload.rs`).
    migrated: Vec<String>,
    /// File readings' answers (`reading.rs`).
    reader: reading::Reader,
    /// Reused scratch: the value being validated, a decoded JSON string, several values.
    value: String,
    text: String,
    batch: Vec<(usize, Range<usize>)>,
    batch_values: String,
    /// Running exec children are also checked this often, in case a SIGCHLD was missed.
    next_poll: Option<Instant>,
    /// The current command's MQTT 5 Response Topic, if it has one (capacity kept).
    reply: Reply,
    has_reply: bool,
    /// Commands refused for a device that is not declared.
    unknown_failed: std::cell::Cell<u64>,
}

/// Is `payload` a Home Assistant discovery config gatemq wrote?
pub fn is_our_config(payload: &[u8]) -> bool {
    discovery::is_ours(payload)
}

const RESULT: &str = "result";
/// Every command's result as a Home Assistant `event` (with discovery on).
const EVENT: &str = "event";

impl Executor {
    /// The declared devices, in the file's order.
    pub fn declared(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter().map(|d| &d.decl)
    }

    /// Commands per device: (device id, answered ok, refused or failed); the id `""` counts
    /// commands for devices that are not declared.
    pub fn command_counts(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.devices
            .iter()
            .map(|d| (&*d.decl.id, d.ok.get(), d.failed.get()))
            .chain(std::iter::once(("", 0, self.unknown_failed.get())))
    }

    pub fn new(decl: Devices, opts: Options) -> Executor {
        let mut by_id = FxHashMap::default();
        let mut state_topics: FxHashMap<Box<str>, Vec<(usize, Option<usize>)>> =
            FxHashMap::default();
        let mut availability_topics: FxHashMap<Box<str>, Vec<usize>> = FxHashMap::default();
        let mut devices = Vec::new();
        for (i, d) in decl.devices.into_iter().enumerate() {
            by_id.insert(d.id.clone(), i);
            if let Some(a) = &d.availability {
                availability_topics
                    .entry(a.topic.clone())
                    .or_default()
                    .push(i);
            }
            if let Some(t) = &d.state_topic {
                state_topics.entry(t.clone()).or_default().push((i, None));
            }
            let mut values = Vec::new();
            let mut known = Vec::new();
            for (c, cmd) in d.commands.iter().enumerate() {
                if let Some(t) = &cmd.state_topic {
                    state_topics
                        .entry(t.clone())
                        .or_default()
                        .push((i, Some(c)));
                }
                let mut v = String::with_capacity(value_capacity(&cmd.kind));
                let ok = cmd
                    .initial
                    .as_ref()
                    .is_some_and(|init| value::normalise(cmd, init, "OFF", &mut v));
                if !ok {
                    v.clear();
                }
                values.push(v);
                known.push(ok && cmd.kind != Kind::Trigger);
            }
            let n = d.commands.len();
            let now = Instant::now();
            let readings = d
                .readings
                .iter()
                .map(|r| reading::ReadingState::new(r, now))
                .collect();
            devices.push(DeviceState {
                decl: d,
                values,
                known,
                last_command: None,
                files: (0..n).map(|_| None).collect(),
                exec_queue: VecDeque::new(),
                running: None,
                state_dirty: false,
                announced: false,
                online: None,
                ok: Default::default(),
                failed: Default::default(),
                readings,
            });
        }
        Executor {
            opts,
            devices,
            by_id,
            state_topics,
            availability_topics,
            removals: Removals::default(),
            migrated: Vec::new(),
            reader: reading::Reader::new(),
            value: String::with_capacity(256),
            text: String::with_capacity(256),
            batch: Vec::new(),
            batch_values: String::new(),
            next_poll: None,
            reply: Reply::default(),
            has_reply: false,
            unknown_failed: Default::default(),
        }
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The discovery removals Home Assistant may not have seen (the store keeps them).
    pub fn removals(&self) -> &Removals {
        &self.removals
    }

    pub(crate) fn removals_mut(&mut self) -> &mut Removals {
        &mut self.removals
    }

    /// At start, before [`Executor::adopt_announced`]: the removals the store kept.
    pub fn adopt_removals(&mut self, removals: Removals) {
        self.removals = removals;
    }

    /// Take each command's last known value from `last(device, command)`: the retained status
    /// topic a restarted (persistence) or reloaded broker still holds. A value that is not
    /// valid for the command as declared now is ignored; nothing is executed. Called before
    /// [`Executor::start`], which announces the values.
    pub fn adopt_values(&mut self, mut last: impl FnMut(&str, &str) -> Option<String>) {
        self.adopt_readings(&mut last);
        let mut v = String::new();
        for d in &mut self.devices {
            for (c, cmd) in d.decl.commands.iter().enumerate() {
                if cmd.kind == Kind::Trigger {
                    continue;
                }
                let Some(text) = last(&d.decl.id, &cmd.name) else {
                    continue;
                };
                if value::normalise(cmd, &text, &d.values[c], &mut v) {
                    d.values[c].clone_from(&v);
                    d.known[c] = true;
                }
            }
        }
        for d in 0..self.devices.len() {
            self.read_back_files(d);
        }
    }

    /// The `file` commands of device `d` with `read_back`: what the file holds (the hardware,
    /// after a restart or a change by someone else) wins over the last value known. Returns
    /// the commands whose value changed.
    pub(super) fn read_back_files(&mut self, d: usize) -> Vec<usize> {
        let mut changed = Vec::new();
        let mut v = String::new();
        let dev = &mut self.devices[d];
        for (c, cmd) in dev.decl.commands.iter().enumerate() {
            let Action::File {
                path,
                read_back: true,
            } = &cmd.action
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            let text = text.lines().next().unwrap_or("").trim();
            let text = match (&cmd.kind, text) {
                (Kind::Bool, t) if t == &*cmd.payload_on => "ON",
                (Kind::Bool, t) if t == &*cmd.payload_off => "OFF",
                (_, t) => t,
            };
            if !value::normalise(cmd, text, &dev.values[c], &mut v) {
                log::warn!(
                    "{}/{}: {} holds {text:?}: {v}",
                    dev.decl.id,
                    cmd.name,
                    path.display()
                );
                continue;
            }
            if !dev.known[c] || dev.values[c] != v {
                dev.values[c].clone_from(&v);
                dev.known[c] = true;
                changed.push(c);
            }
        }
        changed
    }

    /// Announce every device at start (at a reload, those not announced already):
    /// availability, initial values, Home Assistant discovery.
    pub fn start(&mut self, out: &mut Outbox) {
        for d in 0..self.devices.len() {
            if self.devices[d].announced {
                continue;
            }
            self.publish_availability(d, out);
            for c in 0..self.devices[d].decl.commands.len() {
                if self.devices[d].known[c] {
                    self.publish_value(d, c, out);
                }
            }
            for i in 0..self.devices[d].readings.len() {
                if self.devices[d].readings[i].known {
                    self.publish_reading(d, i, out);
                }
            }
            if self.opts.discovery {
                self.announce_discovery(d, true, out);
            }
            let dev = &self.devices[d];
            if dev
                .known
                .iter()
                .chain(dev.readings.iter().map(|r| &r.known))
                .any(|k| *k)
            {
                self.publish_state(d, out);
            }
        }
        // An older gatemq's single-component configs: the device configs above replace them.
        for topic in std::mem::take(&mut self.migrated) {
            let t = out.topic(&[&topic]);
            let p = out.bytes.len();
            out.end(t, p, true);
        }
    }

    /// Device `d`'s Home Assistant discovery config.
    pub(super) fn announce_discovery(&self, d: usize, retain: bool, out: &mut Outbox) {
        discovery::announce(&self.opts, &self.devices[d].decl, retain, out);
    }

    /// The broker is stopping: every device goes `offline` (retained), and readings' programs
    /// still running are stopped.
    pub fn stop(&mut self, out: &mut Outbox) {
        for d in &mut self.devices {
            let t = out.topic(&[&self.opts.prefix, &d.decl.id, "availability"]);
            let p = out.bytes.len();
            out.bytes.extend_from_slice(b"offline");
            out.end(t, p, true);
            // A reading's program has no one to answer to any more.
            for r in &mut d.readings {
                r.stop();
            }
        }
    }

    /// Is `topic` one the executor handles?
    pub fn observes(&self, topic: &str) -> Observed {
        let prefix = &self.opts.prefix;
        if topic.len() > prefix.len() + 4
            && topic.starts_with(prefix.as_str())
            && topic.as_bytes()[prefix.len()] == b'/'
            && topic.ends_with("/set")
        {
            return Observed::Command;
        }
        if !self.state_topics.is_empty() && self.state_topics.contains_key(topic) {
            return Observed::State;
        }
        if self.is_availability_topic(topic) {
            return Observed::Availability;
        }
        if self.opts.discovery
            && topic
                .strip_prefix(self.opts.discovery_prefix.as_str())
                .is_some_and(|rest| rest == "/status")
        {
            return Observed::HomeAssistantStatus;
        }
        Observed::No
    }

    /// Handle a PUBLISH on an observed topic.
    /// `reply`: an MQTT 5 command's Response Topic and Correlation Data; its response goes
    /// there too.
    pub fn on_publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: Instant,
        out: &mut Outbox,
        reply: Option<(&str, Option<&[u8]>)>,
    ) {
        self.has_reply = reply.is_some();
        if let Some((t, c)) = reply {
            self.reply.set(t, c);
        }
        match self.observes(topic) {
            Observed::Command => self.on_command(topic, payload, now, out),
            Observed::State => self.on_state_report(topic, payload, out),
            Observed::Availability => self.on_availability(topic, payload, out),
            Observed::HomeAssistantStatus if payload == b"online" => self.resend_removals(now, out),
            // Its last will (`offline`), or anything but its birth.
            Observed::HomeAssistantStatus => self.removals.ha_offline(),
            Observed::No => {}
        }
        self.has_reply = false;
        self.flush_states(out);
    }

    /// Publish the state JSON of every device whose values changed in this event.
    fn flush_states(&mut self, out: &mut Outbox) {
        for d in 0..self.devices.len() {
            if std::mem::take(&mut self.devices[d].state_dirty) {
                self.publish_state(d, out);
            }
        }
    }

    fn on_command(&mut self, topic: &str, payload: &[u8], now: Instant, out: &mut Outbox) {
        let rest = &topic[self.opts.prefix.len() + 1..topic.len() - 4];
        let (device, command) = match rest.split_once('/') {
            Some((d, c)) if !c.contains('/') => (d, Some(c)),
            Some(_) => return,
            None => (rest, None),
        };
        let Some(&d) = self.by_id.get(device) else {
            self.text.clear();
            let _ = write!(self.text, "unknown device '{device}'");
            return self.respond_error(device, command, out);
        };
        let Ok(payload) = std::str::from_utf8(payload) else {
            self.text.clear();
            self.text.push_str("payload is not UTF-8");
            return self.respond_error(device, command, out);
        };
        let Some(command) = command else {
            return self.on_batch(d, payload, now, out);
        };
        let Some(c) = self.devices[d]
            .decl
            .commands
            .iter()
            .position(|x| &*x.name == command)
        else {
            self.text.clear();
            let _ = if self.devices[d]
                .decl
                .readings
                .iter()
                .any(|r| &*r.name == command)
            {
                write!(
                    self.text,
                    "'{command}' is a reading of device '{device}': it takes no commands"
                )
            } else {
                write!(
                    self.text,
                    "unknown command '{command}' for device '{device}'"
                )
            };
            return self.respond_error(device, Some(command), out);
        };
        if !self.command_value(payload) || !self.rate_ok(d, now) {
            return self.respond_error(device, Some(command), out);
        }
        let mut v = std::mem::take(&mut self.value);
        let cmd = &self.devices[d].decl.commands[c];
        if !value::normalise(cmd, &self.text, &self.devices[d].values[c], &mut v) {
            std::mem::swap(&mut self.text, &mut v);
            self.value = v;
            return self.respond_error(device, Some(command), out);
        }
        self.devices[d].last_command = Some(now);
        self.execute(d, c, &v, now, out);
        self.value = v;
    }

    /// `<prefix>/<device>/set` with a JSON object of command: value. All are validated first;
    /// if any is invalid none is executed and the error goes to `<prefix>/<device>/result`.
    fn on_batch(&mut self, d: usize, payload: &str, now: Instant, out: &mut Outbox) {
        let id = self.devices[d].decl.id.clone();
        self.batch.clear();
        self.batch_values.clear();
        let mut failed = !payload.trim_start().starts_with('{');
        if failed {
            self.text.clear();
            self.text
                .push_str("a device-level set needs a JSON object of command: value");
        }
        for m in json::members(payload) {
            if failed {
                break;
            }
            let Ok((key, val)) = m else {
                self.text.clear();
                self.text.push_str("payload is not valid JSON");
                failed = true;
                break;
            };
            let dev = &self.devices[d];
            let Some(c) = dev.decl.commands.iter().position(|x| *x.name == *key) else {
                self.text.clear();
                let _ = write!(self.text, "unknown command '{key}' for device '{id}'");
                failed = true;
                break;
            };
            if !scalar_text(val, &mut self.text) {
                failed = true;
                break;
            }
            if !value::normalise(
                &dev.decl.commands[c],
                &self.text,
                &dev.values[c],
                &mut self.value,
            ) {
                std::mem::swap(&mut self.text, &mut self.value);
                failed = true;
                break;
            }
            let start = self.batch_values.len();
            self.batch_values.push_str(&self.value);
            self.batch.push((c, start..self.batch_values.len()));
        }
        if !failed && !self.rate_ok(d, now) {
            failed = true;
        }
        if failed {
            return self.respond_error(&id, None, out);
        }
        self.devices[d].last_command = Some(now);
        let batch = std::mem::take(&mut self.batch);
        let values = std::mem::take(&mut self.batch_values);
        for (c, r) in &batch {
            self.execute(d, *c, &values[r.clone()], now, out);
        }
        self.batch = batch;
        self.batch_values = values;
    }

    /// The value of a single-command payload into `self.text`: the plain text, or the
    /// `"value"` of a JSON object. On failure `self.text` holds the error.
    fn command_value(&mut self, payload: &str) -> bool {
        self.text.clear();
        if !payload.trim_start().starts_with('{') {
            self.text.push_str(payload);
            return true;
        }
        let mut found = None;
        for m in json::members(payload) {
            match m {
                Ok(("value", v)) => found = Some(v),
                Ok(_) => {}
                Err(()) => {
                    self.text.push_str("payload is not valid JSON");
                    return false;
                }
            }
        }
        match found {
            Some(v) => scalar_text(v, &mut self.text),
            None => {
                self.text.push_str("payload JSON has no \"value\"");
                false
            }
        }
    }

    /// The rate limit; on refusal `self.text` holds the error.
    fn rate_ok(&mut self, d: usize, now: Instant) -> bool {
        let dev = &self.devices[d];
        match dev.last_command {
            Some(last)
                if !dev.decl.min_interval.is_zero()
                    && now.duration_since(last) < dev.decl.min_interval =>
            {
                self.text.clear();
                let _ = write!(
                    self.text,
                    "{}: too many commands, at most one every {} ms",
                    dev.decl.id,
                    dev.decl.min_interval.as_millis()
                );
                false
            }
            _ => true,
        }
    }

    /// Run command `c` of device `d` with the valid, normalised value `v`.
    fn execute(&mut self, d: usize, c: usize, v: &str, now: Instant, out: &mut Outbox) {
        let dev = &mut self.devices[d];
        let cmd = &dev.decl.commands[c];
        match &cmd.action {
            Action::State => self.set_value(d, c, v, out),
            Action::File { path, read_back } => {
                let written = write_file(&mut dev.files[c], path, action_value(cmd, v));
                let result = written.and_then(|()| match read_back {
                    true => read_file(&mut dev.files[c], path, &mut self.text),
                    false => Ok(()),
                });
                match result {
                    Err(e) => {
                        self.text.clear();
                        let _ = write!(self.text, "{}: cannot {e}", cmd.name);
                        let (id, name) = (dev.decl.id.clone(), cmd.name.clone());
                        self.respond_error(&id, Some(&name), out);
                    }
                    Ok(()) if *read_back => {
                        let mut back = std::mem::take(&mut self.value);
                        let cur = &dev.values[c];
                        let text = std::mem::take(&mut self.text);
                        if value::normalise(cmd, &text, cur, &mut back) {
                            self.set_value(d, c, &back, out);
                        } else {
                            log::warn!(
                                "{}/{}: read back {:?}: {back}",
                                self.devices[d].decl.id,
                                self.devices[d].decl.commands[c].name,
                                text.trim()
                            );
                            self.set_value(d, c, v, out);
                        }
                        self.text = text;
                        self.value = back;
                    }
                    Ok(()) => self.set_value(d, c, v, out),
                }
            }
            Action::Publish {
                topic,
                payload,
                retain,
            } => {
                let (t0, retain) = (out.bytes.len(), *retain);
                render(
                    &mut out.bytes,
                    topic,
                    &dev.decl.id,
                    &cmd.name,
                    action_value(cmd, v),
                );
                let p0 = out.bytes.len();
                render(
                    &mut out.bytes,
                    payload,
                    &dev.decl.id,
                    &cmd.name,
                    action_value(cmd, v),
                );
                out.end(t0, p0, retain);
                // With nothing to observe, the forwarded value is the state; otherwise the
                // device's report on its state topic sets it.
                if cmd.state_topic.is_none() && dev.decl.state_topic.is_none() {
                    self.set_value(d, c, v, out);
                } else {
                    self.respond_ok(d, c, Some(v), out);
                }
            }
            Action::Exec { .. } => {
                let reply = self.has_reply.then(|| self.reply.clone());
                if dev.running.is_none() {
                    self.spawn(d, c, v.to_string(), reply, now, out);
                } else if dev.exec_queue.len() < dev.decl.exec_queue {
                    dev.exec_queue.push_back((c, v.to_string(), reply));
                } else {
                    self.text.clear();
                    let _ = write!(
                        self.text,
                        "{}: busy, {} commands already waiting",
                        dev.decl.id,
                        dev.exec_queue.len()
                    );
                    let (id, name) = (dev.decl.id.clone(), cmd.name.clone());
                    self.respond_error(&id, Some(&name), out);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &mut self,
        d: usize,
        c: usize,
        v: String,
        reply: Option<Reply>,
        now: Instant,
        out: &mut Outbox,
    ) {
        let dev = &mut self.devices[d];
        let cmd = &dev.decl.commands[c];
        let Action::Exec {
            program,
            args,
            timeout,
        } = &cmd.action
        else {
            return;
        };
        let mut p = std::process::Command::new(program);
        for a in args.iter() {
            let mut rendered = Vec::new();
            render(
                &mut rendered,
                a,
                &dev.decl.id,
                &cmd.name,
                action_value(cmd, &v),
            );
            p.arg(String::from_utf8_lossy(&rendered).as_ref());
        }
        p.stdin(Stdio::null()).stdout(Stdio::null());
        match p.spawn() {
            Ok(child) => {
                log::debug!(
                    "{}/{}: started {} (pid {})",
                    dev.decl.id,
                    cmd.name,
                    program.display(),
                    child.id()
                );
                dev.running = Some(Running {
                    command: c,
                    value: v,
                    reply,
                    child,
                    started: now,
                    deadline: now + *timeout,
                });
                self.next_poll = Some(now + Duration::from_secs(1));
            }
            Err(e) => {
                self.text.clear();
                let _ = write!(
                    self.text,
                    "{}: cannot run {}: {}",
                    cmd.name,
                    program.display(),
                    crate::config::io_reason(&e)
                );
                let (id, name) = (dev.decl.id.clone(), cmd.name.clone());
                self.with_reply(reply, |ex| ex.respond_error(&id, Some(&name), out));
                self.start_next(d, now, out);
            }
        }
    }

    fn start_next(&mut self, d: usize, now: Instant, out: &mut Outbox) {
        if let Some((c, v, reply)) = self.devices[d].exec_queue.pop_front() {
            self.spawn(d, c, v, reply, now, out);
        }
    }

    /// Respond on behalf of an exec run, to the Response Topic its command gave (if any).
    fn with_reply(&mut self, reply: Option<Reply>, f: impl FnOnce(&mut Self)) {
        let saved = (self.has_reply, std::mem::take(&mut self.reply));
        self.has_reply = reply.is_some();
        self.reply = reply.unwrap_or_default();
        f(self);
        (self.has_reply, self.reply) = saved;
    }

    /// When the executor next needs [`Executor::on_timeout`]: an exec deadline, a reading, a
    /// poll, or removals Home Assistant has had.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.devices
            .iter()
            .filter_map(|d| d.running.as_ref().map(|r| r.deadline))
            .chain(self.next_poll)
            .chain(self.readings_deadline())
            .chain(self.removals.deadline())
            .min()
    }

    /// Kill exec runs past their timeout; reap any that ended; take the readings that are due;
    /// drop the removals Home Assistant has had.
    pub fn on_timeout(&mut self, now: Instant, out: &mut Outbox) {
        self.removals.drop_heard(now);
        self.readings_due(now, out);
        for d in 0..self.devices.len() {
            let Some(r) = self.devices[d].running.as_mut() else {
                continue;
            };
            if r.deadline > now {
                continue;
            }
            let _ = r.child.kill();
            let _ = r.child.wait();
            let r = self.devices[d].running.take().expect("running");
            let dev = &self.devices[d];
            let Action::Exec { timeout, .. } = &dev.decl.commands[r.command].action else {
                continue;
            };
            self.text.clear();
            let _ = write!(
                self.text,
                "{}: exec timed out after {} s",
                dev.decl.commands[r.command].name,
                fmt_secs(*timeout)
            );
            log::warn!(
                "{}/{}: {}",
                dev.decl.id,
                dev.decl.commands[r.command].name,
                self.text
            );
            let (id, name) = (
                dev.decl.id.clone(),
                dev.decl.commands[r.command].name.clone(),
            );
            self.with_reply(r.reply, |ex| ex.respond_error(&id, Some(&name), out));
            self.start_next(d, now, out);
        }
        self.on_child_exit(now, out);
    }

    /// A child process ended (SIGCHLD): finish its command.
    pub fn on_child_exit(&mut self, now: Instant, out: &mut Outbox) {
        let mut any = false;
        for d in 0..self.devices.len() {
            let Some(r) = self.devices[d].running.as_mut() else {
                continue;
            };
            let status = match r.child.try_wait() {
                Ok(Some(s)) => s,
                Ok(None) => {
                    any = true;
                    continue;
                }
                Err(e) => {
                    log::warn!("cannot check exec child {}: {e}", r.child.id());
                    continue;
                }
            };
            let r = self.devices[d].running.take().expect("running");
            let dev = &self.devices[d];
            let name = dev.decl.commands[r.command].name.clone();
            log::debug!(
                "{}/{name}: exec ended with {status} after {:?}",
                dev.decl.id,
                now.duration_since(r.started)
            );
            let reply = r.reply;
            if status.success() {
                self.with_reply(reply, |ex| ex.set_value(d, r.command, &r.value, out));
            } else {
                self.text.clear();
                match status.code() {
                    Some(code) => write!(self.text, "{name}: exec exited with status {code}"),
                    None => write!(self.text, "{name}: exec was killed by a signal"),
                }
                .ok();
                let id = dev.decl.id.clone();
                self.with_reply(reply, |ex| ex.respond_error(&id, Some(&name), out));
            }
            self.start_next(d, now, out);
            any |= self.devices[d].running.is_some();
        }
        any |= self.reap_readings(now, out);
        self.next_poll = any.then(|| now + Duration::from_secs(1));
        self.flush_states(out);
    }

    /// A device reported its state on an observed topic.
    fn on_state_report(&mut self, topic: &str, payload: &[u8], out: &mut Outbox) {
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
        let Some(targets) = self.state_topics.get(topic) else {
            return;
        };
        let is_json = payload.trim_start().starts_with('{');
        for i in 0..targets.len() {
            let (d, c) = self.state_topics[topic][i];
            let commands: Range<usize> = match c {
                Some(c) => c..c + 1,
                None => 0..self.devices[d].decl.commands.len(),
            };
            for c in commands {
                let key = self.devices[d].decl.commands[c].state_key.clone();
                self.text.clear();
                let found = if is_json {
                    json::members(payload)
                        .filter_map(Result::ok)
                        .find(|(k, _)| *k == &*key)
                        .is_some_and(|(_, v)| scalar_text(v, &mut self.text))
                } else {
                    self.text.push_str(payload);
                    true
                };
                if !found {
                    continue;
                }
                let mut v = std::mem::take(&mut self.value);
                let dev = &self.devices[d];
                if value::normalise(&dev.decl.commands[c], &self.text, &dev.values[c], &mut v) {
                    if !dev.known[c] || dev.values[c] != v {
                        self.update(d, c, &v);
                        self.publish_value(d, c, out);
                        self.devices[d].state_dirty = true;
                    }
                } else {
                    log::debug!("{topic}: ignored report: {v}");
                }
                self.value = v;
            }
        }
    }

    fn update(&mut self, d: usize, c: usize, v: &str) {
        let dev = &mut self.devices[d];
        if dev.decl.commands[c].kind != Kind::Trigger {
            dev.values[c].clear();
            dev.values[c].push_str(v);
            dev.known[c] = true;
        }
    }

    /// The command succeeded with value `v`: store it, publish status, state and response.
    fn set_value(&mut self, d: usize, c: usize, v: &str, out: &mut Outbox) {
        self.update(d, c, v);
        if self.devices[d].known[c] {
            self.publish_value(d, c, out);
            self.devices[d].state_dirty = true;
        }
        let trigger = self.devices[d].decl.commands[c].kind == Kind::Trigger;
        self.respond_ok(d, c, (!trigger).then_some(v), out);
    }

    fn publish_value(&self, d: usize, c: usize, out: &mut Outbox) {
        let dev = &self.devices[d];
        let t = out.topic(&[&self.opts.prefix, &dev.decl.id, &dev.decl.commands[c].name]);
        let p = out.bytes.len();
        out.bytes.extend_from_slice(dev.values[c].as_bytes());
        out.end(t, p, true);
    }

    fn publish_state(&self, d: usize, out: &mut Outbox) {
        let dev = &self.devices[d];
        let t = out.topic(&[&self.opts.prefix, &dev.decl.id, "state"]);
        let p = out.bytes.len();
        out.bytes.push(b'{');
        let mut first = true;
        for (c, cmd) in dev.decl.commands.iter().enumerate() {
            if !dev.known[c] {
                continue;
            }
            if !first {
                out.bytes.push(b',');
            }
            first = false;
            json::push_str(&mut out.bytes, &cmd.name);
            out.bytes.push(b':');
            push_value(&mut out.bytes, &cmd.kind, &dev.values[c]);
        }
        for (r, decl) in dev.readings.iter().zip(&dev.decl.readings) {
            if !r.known {
                continue;
            }
            if !first {
                out.bytes.push(b',');
            }
            first = false;
            json::push_str(&mut out.bytes, &decl.name);
            out.bytes.push(b':');
            match decl.kind {
                ReadingKind::Float | ReadingKind::Int => {
                    out.bytes.extend_from_slice(r.value.as_bytes())
                }
                ReadingKind::Bool | ReadingKind::Str => json::push_str(&mut out.bytes, &r.value),
            }
        }
        out.bytes.push(b'}');
        out.end(t, p, true);
    }

    fn respond_ok(&self, d: usize, c: usize, v: Option<&str>, out: &mut Outbox) {
        let dev = &self.devices[d];
        dev.ok.set(dev.ok.get() + 1);
        let cmd = &dev.decl.commands[c];
        let t = out.topic(&[&self.opts.prefix, &dev.decl.id, &cmd.name, RESULT]);
        let p = out.bytes.len();
        out.bytes.extend_from_slice(b"{\"ok\":true");
        if let Some(v) = v {
            out.bytes.extend_from_slice(b",\"value\":");
            push_value(&mut out.bytes, &cmd.kind, v);
        }
        out.bytes.push(b'}');
        out.end(t, p, false);
        if self.has_reply {
            out.copy_to(&self.reply);
        }
        self.result_event(d, Some(&cmd.name), Ok(v.map(|v| (&cmd.kind, v))), out);
    }

    /// The result as a Home Assistant event on `<prefix>/<device>/event` (not retained: HA
    /// ignores retained events): `{"event_type":"ok","command":...,"value":...}` or
    /// `{"event_type":"refused","command":...,"error":...}`.
    fn result_event(
        &self,
        d: usize,
        command: Option<&str>,
        result: Result<Option<(&Kind, &str)>, &str>,
        out: &mut Outbox,
    ) {
        if !self.opts.discovery {
            return;
        }
        let t = out.topic(&[&self.opts.prefix, &self.devices[d].decl.id, EVENT]);
        let p = out.bytes.len();
        let b = &mut out.bytes;
        b.extend_from_slice(match result {
            Ok(_) => b"{\"event_type\":\"ok\"",
            Err(_) => b"{\"event_type\":\"refused\"",
        });
        if let Some(c) = command {
            b.extend_from_slice(b",\"command\":");
            json::push_str(b, c);
        }
        match result {
            Ok(Some((kind, v))) => {
                b.extend_from_slice(b",\"value\":");
                push_value(b, kind, v);
            }
            Ok(None) => {}
            Err(e) => {
                b.extend_from_slice(b",\"error\":");
                json::push_str(b, e);
            }
        }
        b.push(b'}');
        out.end(t, p, false);
    }

    /// Respond with the error in `self.text` on `<prefix>/<device>[/<command>]/result`.
    fn respond_error(&self, device: &str, command: Option<&str>, out: &mut Outbox) {
        let declared = self.by_id.get(device).copied();
        match declared {
            Some(d) => self.devices[d].failed.set(self.devices[d].failed.get() + 1),
            None => self.unknown_failed.set(self.unknown_failed.get() + 1),
        }
        log::debug!(
            "{}/{device}/{}: refused: {}",
            self.opts.prefix,
            command.unwrap_or("set"),
            self.text
        );
        let t = match command {
            Some(c) => out.topic(&[&self.opts.prefix, device, c, RESULT]),
            None => out.topic(&[&self.opts.prefix, device, RESULT]),
        };
        let p = out.bytes.len();
        out.bytes.extend_from_slice(b"{\"ok\":false,\"error\":");
        json::push_str(&mut out.bytes, &self.text);
        out.bytes.push(b'}');
        out.end(t, p, false);
        if self.has_reply {
            out.copy_to(&self.reply);
        }
        if let Some(d) = declared {
            self.result_event(d, command, Err(&self.text), out);
        }
    }
}

/// The text form of a JSON scalar into `out`; on a nested value, `out` holds the error.
fn scalar_text(v: json::Value<'_>, out: &mut String) -> bool {
    out.clear();
    match v {
        json::Value::Str(raw) => {
            if !json::unescape(raw, out) {
                out.clear();
                out.push_str("payload is not valid JSON");
                return false;
            }
        }
        json::Value::Num(n) => out.push_str(n),
        json::Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        json::Value::Null => {}
        json::Value::Nested(_) => {
            out.push_str("a value must be a string, number or boolean");
            return false;
        }
    }
    true
}

/// A normalised value as JSON: numbers bare, everything else a string.
fn push_value(out: &mut Vec<u8>, kind: &Kind, v: &str) {
    if value::is_numeric(kind) {
        out.extend_from_slice(v.as_bytes());
    } else {
        json::push_str(out, v);
    }
}

/// What `{value}` stands for in an action: a bool's declared on/off payloads.
fn action_value<'a>(cmd: &'a Command, v: &'a str) -> &'a str {
    match (&cmd.kind, v) {
        (Kind::Bool, "ON") => &cmd.payload_on,
        (Kind::Bool, _) => &cmd.payload_off,
        _ => v,
    }
}

/// Append `template` with `{value}`, `{device}` and `{command}` replaced.
fn render(out: &mut Vec<u8>, template: &str, device: &str, command: &str, value: &str) {
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let tail = &rest[i..];
        let (sub, len) = if tail.starts_with("{value}") {
            (value, 7)
        } else if tail.starts_with("{device}") {
            (device, 8)
        } else if tail.starts_with("{command}") {
            (command, 9)
        } else {
            ("{", 1)
        };
        out.extend_from_slice(sub.as_bytes());
        rest = &tail[len..];
    }
    out.extend_from_slice(rest.as_bytes());
}

/// Write `value` to a `file` action's path through a kept handle (opened on first use).
fn write_file(
    handle: &mut Option<File>,
    path: &std::path::Path,
    value: &str,
) -> Result<(), String> {
    if handle.is_none() {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
            })
            .map_err(|e| format!("write {}: {}", path.display(), crate::config::io_reason(&e)))?;
        *handle = Some(f);
    }
    let f = handle.as_ref().expect("opened");
    let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    let result = (|| {
        if regular {
            f.set_len(0)?;
        }
        f.write_all_at(value.as_bytes(), 0)
    })();
    result.map_err(|e| {
        *handle = None;
        format!("write {}: {}", path.display(), crate::config::io_reason(&e))
    })
}

/// Read a `file` action's path back into `out` (its first line, trimmed).
fn read_file(
    handle: &mut Option<File>,
    path: &std::path::Path,
    out: &mut String,
) -> Result<(), String> {
    let mut buf = [0u8; 256];
    let n = handle
        .as_ref()
        .ok_or_else(|| format!("read {}: not open", path.display()))?
        .read_at(&mut buf, 0)
        .map_err(|e| format!("read {}: {}", path.display(), crate::config::io_reason(&e)))?;
    out.clear();
    let text = std::str::from_utf8(&buf[..n])
        .map_err(|_| format!("read {}: not UTF-8", path.display()))?;
    out.push_str(text.lines().next().unwrap_or("").trim());
    Ok(())
}

/// Room for a value of this kind without growing.
fn value_capacity(kind: &Kind) -> usize {
    match kind {
        Kind::Str { max_len } => (max_len * 4).min(4096),
        Kind::Enum { values } => values.iter().map(|v| v.len()).max().unwrap_or(8),
        _ => 32,
    }
}

fn fmt_secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}", ms / 1000)
    } else {
        format!("{:.1}", d.as_secs_f64())
    }
}
