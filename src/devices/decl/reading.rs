//! `readings.<name>`: a value gatemq reads itself, from a file (a sysfs attribute, a 1-wire
//! thermometer, a GPIO input) or from a program's output, every `every_s` seconds.
//!
//! ```toml
//! readings.cpu_temp = { type = "float", path = "/sys/class/thermal/thermal_zone0/temp", scale = 0.001, round = 1, every_s = 30, unit = "°C", device_class = "temperature" }
//! readings.door = { type = "bool", path = "/sys/class/gpio/gpio17/value", every_s = 1, payload_on = "1", payload_off = "0", device_class = "door" }
//! readings.wifi = { type = "int", program = "/usr/local/bin/rssi", args = ["wlan0"], every_s = 60 }
//! ```

use super::{Key, Parser, Val, HA_KEYS, RESERVED};
use std::path::PathBuf;
use std::time::Duration;

/// What a reading's text is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadingKind {
    Float,
    Int,
    /// ON/OFF: `payload_on`/`payload_off` when declared, else ON/OFF, on/off, true/false, 1/0.
    Bool,
    /// The text itself (at most 255 characters: Home Assistant's limit for a state).
    Str,
}

/// Where a reading's text comes from: its first line, trimmed.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(PathBuf),
    /// A program (no shell) whose output's first line is the reading.
    Program {
        program: PathBuf,
        args: Vec<Box<str>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: Box<str>,
    pub kind: ReadingKind,
    pub source: Source,
    pub every: Duration,
    /// A program is killed after this; a file read taking longer is counted as failed.
    pub timeout: Duration,
    /// Numbers: the value read is multiplied by it.
    pub scale: f64,
    /// Floats: decimals kept (and shown by Home Assistant).
    pub round: Option<u8>,
    /// Numbers: a change up to this much is not published.
    pub deadband: f64,
    pub payload_on: Option<Box<str>>,
    pub payload_off: Option<Box<str>>,
    /// What Home Assistant discovery says of its sensor (as for a command's `ha`).
    pub ha: Vec<(&'static str, Box<str>)>,
}

/// Fastest a reading may be taken.
const MIN_EVERY: Duration = Duration::from_millis(100);

const KNOWN: [&str; 11] = [
    "type",
    "path",
    "program",
    "args",
    "every_s",
    "timeout_ms",
    "scale",
    "round",
    "deadband",
    "payload_on",
    "payload_off",
];

impl Parser<'_> {
    pub(super) fn reading(
        &self,
        device: &str,
        id: &Key<'_>,
        v: &Val<'_>,
    ) -> Result<Reading, String> {
        let name = id.get_ref().as_ref();
        let key = format!("{device}.readings.{name}");
        if !super::valid_level(name) || RESERVED.contains(&name) {
            return Err(self.err(
                id.span(),
                &key,
                "a reading name must be one topic level, and not set, state, availability, result or event",
            ));
        }
        let t = self.table(&key, v)?;
        for (k, _) in t.iter() {
            let k: &str = k.get_ref().as_ref();
            if !KNOWN.contains(&k) && !HA_KEYS.iter().any(|(f, _)| *f == k) {
                let span = t.get(k).map_or(v.span(), |x| x.span());
                return Err(self.err(span, &format!("{key}.{k}"), "unknown key"));
            }
        }
        let field = |f: &str| t.get(f);
        let sub = |f: &str| format!("{key}.{f}");
        let kind_val = field("type").ok_or_else(|| self.err(v.span(), &key, "missing 'type'"))?;
        let kind = match &*self.string(&sub("type"), kind_val)? {
            "float" => ReadingKind::Float,
            "int" => ReadingKind::Int,
            "bool" => ReadingKind::Bool,
            "string" => ReadingKind::Str,
            other => {
                return Err(self.err(
                    kind_val.span(),
                    &sub("type"),
                    &format!("unknown type '{other}' (expected float, int, bool or string)"),
                ))
            }
        };
        let source = match (field("path"), field("program")) {
            (Some(p), None) => Source::File(self.path(&sub("path"), p)?),
            (None, Some(p)) => Source::Program {
                program: self.path(&sub("program"), p)?,
                args: field("args")
                    .map(|a| self.strings(&sub("args"), a))
                    .transpose()?
                    .unwrap_or_default(),
            },
            _ => {
                return Err(self.err(
                    v.span(),
                    &key,
                    "a reading needs either 'path' (a file) or 'program'",
                ))
            }
        };
        if field("args").is_some() && matches!(source, Source::File(_)) {
            return Err(self.err(v.span(), &sub("args"), "only with 'program'"));
        }
        let every = match field("every_s") {
            Some(e) => {
                let (s, _) = self.number(&sub("every_s"), e)?;
                let d = Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO);
                if d < MIN_EVERY || s > 31_536_000.0 {
                    return Err(self.err(
                        e.span(),
                        &sub("every_s"),
                        "expected 0.1 to 31536000 seconds",
                    ));
                }
                d
            }
            None => Duration::from_secs(60),
        };
        let timeout = Duration::from_millis(
            field("timeout_ms")
                .map(|t| self.nonneg(&sub("timeout_ms"), t))
                .transpose()?
                .unwrap_or(5000)
                .max(1),
        );
        let numeric = matches!(kind, ReadingKind::Float | ReadingKind::Int);
        let only = |f: &str, ok: bool, what: &str| -> Result<(), String> {
            match field(f) {
                Some(x) if !ok => Err(self.err(x.span(), &sub(f), what)),
                _ => Ok(()),
            }
        };
        only("scale", numeric, "only for float and int readings")?;
        only("deadband", numeric, "only for float and int readings")?;
        only(
            "round",
            kind == ReadingKind::Float,
            "only for float readings",
        )?;
        only(
            "payload_on",
            kind == ReadingKind::Bool,
            "only for bool readings",
        )?;
        only(
            "payload_off",
            kind == ReadingKind::Bool,
            "only for bool readings",
        )?;
        let scale = match field("scale") {
            Some(s) => {
                let (x, _) = self.number(&sub("scale"), s)?;
                if x == 0.0 {
                    return Err(self.err(s.span(), &sub("scale"), "must not be 0"));
                }
                x
            }
            None => 1.0,
        };
        let deadband = match field("deadband") {
            Some(s) => {
                let (x, _) = self.number(&sub("deadband"), s)?;
                if x < 0.0 {
                    return Err(self.err(s.span(), &sub("deadband"), "must not be negative"));
                }
                x
            }
            None => 0.0,
        };
        let round = match field("round") {
            Some(r) => {
                let n = self.nonneg(&sub("round"), r)?;
                if n > 9 {
                    return Err(self.err(r.span(), &sub("round"), "expected 0 to 9 decimals"));
                }
                Some(n as u8)
            }
            None => None,
        };
        let text = |f: &str| field(f).map(|x| self.string(&sub(f), x)).transpose();
        let (payload_on, payload_off) = (text("payload_on")?, text("payload_off")?);
        if payload_on.is_some() != payload_off.is_some() {
            return Err(self.err(v.span(), &key, "payload_on and payload_off go together"));
        }
        let ha = self.ha_keys(&key, |f| field(f), &["diagnostic"])?;
        Ok(Reading {
            name: name.into(),
            kind,
            source,
            every,
            timeout,
            scale,
            round,
            deadband,
            payload_on,
            payload_off,
            ha,
        })
    }
}
