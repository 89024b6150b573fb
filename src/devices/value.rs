//! Command values: validate a value against its command's type and write its normal form,
//! or write what is wrong with it in words a person can act on. Writes go into a caller's
//! reused `String`, so a valid command allocates nothing.

use super::decl::{Command, Kind};
use std::fmt::Write;

/// Longest piece of a bad value echoed back in an error.
const ECHO_MAX: usize = 32;

/// Validate `input` for `cmd`. On success `out` holds the normal form (ON/OFF, the number, the
/// enum value as declared) and the result is true; on failure `out` holds the error message.
/// `current` is the command's current value (for TOGGLE).
#[must_use]
pub fn normalise(cmd: &Command, input: &str, current: &str, out: &mut String) -> bool {
    out.clear();
    let name = &cmd.name;
    let v = input.trim();
    if v.is_empty() && cmd.kind != Kind::Trigger {
        let _ = write!(out, "{name}: a value is needed");
        return false;
    }
    match &cmd.kind {
        Kind::Bool => {
            let on = if v.eq_ignore_ascii_case("on") || v.eq_ignore_ascii_case("true") || v == "1" {
                true
            } else if v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("false") || v == "0" {
                false
            } else if v.eq_ignore_ascii_case("toggle") {
                current != "ON"
            } else {
                let _ = write!(
                    out,
                    "{name}: '{}' is not ON or OFF (nor on/off, true/false, 1/0, TOGGLE)",
                    echo(v)
                );
                return false;
            };
            out.push_str(if on { "ON" } else { "OFF" });
            true
        }
        Kind::Int { min, max } => {
            // Home Assistant's number entity sends "128.0": a whole float is a whole number.
            let n = match v.parse::<i64>() {
                Ok(n) => n,
                Err(_) => match v.parse::<f64>() {
                    Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => f as i64,
                    _ => {
                        let _ = write!(out, "{name}: '{}' is not a whole number", echo(v));
                        return false;
                    }
                },
            };
            if n > *max {
                let _ = write!(out, "{name}: {n} is above max {max}");
                false
            } else if n < *min {
                let _ = write!(out, "{name}: {n} is below min {min}");
                false
            } else {
                let _ = write!(out, "{n}");
                true
            }
        }
        Kind::Float {
            min,
            max,
            step,
            decimals,
        } => {
            let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) else {
                let _ = write!(out, "{name}: '{}' is not a number", echo(v));
                return false;
            };
            if f > *max {
                let _ = write!(out, "{name}: {f} is above max {max}");
                return false;
            }
            if f < *min {
                let _ = write!(out, "{name}: {f} is below min {min}");
                return false;
            }
            match step {
                Some(step) => {
                    let base = if min.is_finite() && *min > f64::MIN {
                        *min
                    } else {
                        0.0
                    };
                    let snapped = (base + ((f - base) / step).round() * step).clamp(*min, *max);
                    let _ = write!(out, "{:.*}", decimals, snapped + 0.0);
                }
                None => {
                    let _ = write!(out, "{}", f + 0.0);
                }
            }
            true
        }
        Kind::Enum { values } => match values.iter().find(|x| x.eq_ignore_ascii_case(v)) {
            Some(x) => {
                out.push_str(x);
                true
            }
            None => {
                let _ = write!(out, "{name}: '{}' is not one of ", echo(v));
                for (i, x) in values.iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { ", " });
                    out.push_str(x);
                }
                false
            }
        },
        Kind::Str { max_len } => {
            let n = v.chars().count();
            if n > *max_len {
                let _ = write!(out, "{name}: {n} characters is longer than max {max_len}");
                false
            } else {
                out.push_str(v);
                true
            }
        }
        Kind::Trigger => true,
    }
}

/// Whether this command's values are JSON numbers (rather than strings).
pub fn is_numeric(kind: &Kind) -> bool {
    matches!(kind, Kind::Int { .. } | Kind::Float { .. })
}

/// At most ECHO_MAX bytes of `v`, cut on a character boundary.
fn echo(v: &str) -> &str {
    let mut end = v.len().min(ECHO_MAX);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::decl::Action;

    fn cmd(name: &str, kind: Kind) -> Command {
        Command {
            name: name.into(),
            kind,
            action: Action::State,
            payload_on: "ON".into(),
            payload_off: "OFF".into(),
            state_topic: None,
            state_key: name.into(),
            initial: None,
            ha: Vec::new(),
        }
    }

    fn check(c: &Command, input: &str) -> Result<String, String> {
        let mut out = String::new();
        if normalise(c, input, "OFF", &mut out) {
            Ok(out)
        } else {
            Err(out)
        }
    }

    #[test]
    fn bool_values() {
        let c = cmd("power", Kind::Bool);
        for (i, o) in [
            ("ON", "ON"),
            ("on", "ON"),
            ("true", "ON"),
            ("1", "ON"),
            ("OFF", "OFF"),
            ("false", "OFF"),
            ("0", "OFF"),
            ("toggle", "ON"),
        ] {
            assert_eq!(check(&c, i).as_deref(), Ok(o), "{i}");
        }
        assert_eq!(
            check(&c, "maybe").unwrap_err(),
            "power: 'maybe' is not ON or OFF (nor on/off, true/false, 1/0, TOGGLE)"
        );
        assert_eq!(check(&c, " ").unwrap_err(), "power: a value is needed");
    }

    #[test]
    fn int_values() {
        let c = cmd("brightness", Kind::Int { min: 0, max: 255 });
        assert_eq!(check(&c, "128").as_deref(), Ok("128"));
        assert_eq!(check(&c, "128.0").as_deref(), Ok("128"));
        assert_eq!(
            check(&c, "300").unwrap_err(),
            "brightness: 300 is above max 255"
        );
        assert_eq!(
            check(&c, "-1").unwrap_err(),
            "brightness: -1 is below min 0"
        );
        assert_eq!(
            check(&c, "1.5").unwrap_err(),
            "brightness: '1.5' is not a whole number"
        );
        assert_eq!(
            check(&c, "bright").unwrap_err(),
            "brightness: 'bright' is not a whole number"
        );
    }

    #[test]
    fn float_values() {
        let c = cmd(
            "speed",
            Kind::Float {
                min: 0.0,
                max: 1.0,
                step: Some(0.25),
                decimals: 2,
            },
        );
        assert_eq!(check(&c, "0.3").as_deref(), Ok("0.25"));
        assert_eq!(check(&c, "1").as_deref(), Ok("1.00"));
        assert_eq!(check(&c, "1.5").unwrap_err(), "speed: 1.5 is above max 1");
        assert_eq!(
            check(&c, "NaN").unwrap_err(),
            "speed: 'NaN' is not a number"
        );
        let t = cmd(
            "temp",
            Kind::Float {
                min: f64::MIN,
                max: f64::MAX,
                step: None,
                decimals: 0,
            },
        );
        assert_eq!(check(&t, "21.5").as_deref(), Ok("21.5"));
        assert_eq!(check(&t, "-0").as_deref(), Ok("0"));
    }

    #[test]
    fn enum_string_trigger() {
        let e = cmd(
            "colour",
            Kind::Enum {
                values: vec!["warm".into(), "cold".into()],
            },
        );
        assert_eq!(check(&e, "WARM").as_deref(), Ok("warm"));
        assert_eq!(
            check(&e, "purple").unwrap_err(),
            "colour: 'purple' is not one of warm, cold"
        );
        let s = cmd("label", Kind::Str { max_len: 5 });
        assert_eq!(check(&s, "héllo").as_deref(), Ok("héllo"));
        assert_eq!(
            check(&s, "héllo!").unwrap_err(),
            "label: 6 characters is longer than max 5"
        );
        let t = cmd("identify", Kind::Trigger);
        assert_eq!(check(&t, "").as_deref(), Ok(""));
        assert_eq!(check(&t, "PRESS").as_deref(), Ok(""));
        let long = "x".repeat(100);
        assert_eq!(
            check(&e, &long).unwrap_err().len(),
            "colour: '' is not one of warm, cold".len() + 32
        );
    }
}
