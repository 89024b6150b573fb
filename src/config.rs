//! The config file: Mosquitto's syntax (`option value`, `#` comments) and, where an option
//! means the same thing, Mosquitto's option names. An unknown or unsupported option is an
//! error naming the file, the line and the option; nothing is silently ignored.

use crate::broker::BrokerConfig;
use log::LevelFilter;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a listener listens. `address` is `None` for all interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub port: u16,
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub broker: BrokerConfig,
    /// `None`: no connection limit.
    pub max_connections: Option<usize>,
    /// The most verbose level that `log_type` enabled (information by default, like Mosquitto).
    pub log_level: LevelFilter,
    pub set_tcp_nodelay: bool,
    /// The password file (`password_file`) as named in the config, with its line.
    pub password_file: Option<(PathBuf, usize)>,
    /// The ACL file (`acl_file`) as named in the config, with its line.
    pub acl_file: Option<(PathBuf, usize)>,
    /// The devices file (`devices_file`) as named in the config, with its line, and its
    /// declarations once loaded.
    pub devices_file: Option<(PathBuf, usize)>,
    pub devices: Option<crate::devices::decl::Devices>,
    pub device_options: crate::devices::Options,
    /// The file this was read from, if any.
    pub source: Option<PathBuf>,
}

impl Default for Config {
    /// No config file: one listener on 127.0.0.1:1883, as Mosquitto 2 does.
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig {
                port: 1883,
                address: Some("127.0.0.1".into()),
            }],
            broker: BrokerConfig::default(),
            max_connections: None,
            log_level: LevelFilter::Info,
            set_tcp_nodelay: true,
            password_file: None,
            acl_file: None,
            devices_file: None,
            devices: None,
            device_options: crate::devices::Options::default(),
            source: None,
        }
    }
}

/// A config error, worded for a person: file, line, option and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read config file {}: {}",
                path.display(),
                io_reason(&e)
            ))
        })?;
        let name = path.display().to_string();
        let mut c = Config::parse(&text, &name)?;
        if let Some((file, line)) = &c.password_file {
            // Relative paths are found next to the config file.
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            let passwords = crate::auth::password::PasswordFile::load(&file).map_err(|e| {
                if e.starts_with("cannot read") {
                    ConfigError(format!("{name}:{line}: option 'password_file': {e}"))
                } else {
                    ConfigError(e)
                }
            })?;
            c.broker.passwords = Some(passwords);
        }
        if let Some((file, line)) = &c.acl_file {
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            let acl = crate::auth::acl::AclFile::load(&file).map_err(|e| {
                if e.starts_with("cannot read") {
                    ConfigError(format!("{name}:{line}: option 'acl_file': {e}"))
                } else {
                    ConfigError(e)
                }
            })?;
            c.broker.acl = Some(acl);
        }
        if let Some((file, line)) = &c.devices_file {
            // A relative devices_file is found next to the config file.
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            let devices = crate::devices::decl::Devices::load(&file).map_err(|e| {
                if e.starts_with("cannot read") {
                    ConfigError(format!("{name}:{line}: option 'devices_file': {e}"))
                } else {
                    ConfigError(e)
                }
            })?;
            c.devices = Some(devices);
        }
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parse config text; `name` is the file name used in error messages.
    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let mut c = Config {
            listeners: Vec::new(),
            ..Config::default()
        };
        let mut default_port: Option<u16> = None;
        let mut bind_address: Option<String> = None;
        let mut log_types: Option<LevelFilter> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (option, rest) = match line.split_once(char::is_whitespace) {
                Some((o, r)) => (o, r.trim()),
                None => (line, ""),
            };
            let at = Line {
                name,
                line: n + 1,
                option,
            };
            let args: Vec<&str> = rest.split_whitespace().collect();
            let b = &mut c.broker;
            match option {
                "listener" => {
                    let (port, address) = match args.as_slice() {
                        [p] => (at.parse_num(p, 0, 65535)? as u16, None),
                        [p, a] => (at.parse_num(p, 0, 65535)? as u16, Some(a.to_string())),
                        _ => return Err(at.err("expects a port and an optional bind address")),
                    };
                    c.listeners.push(ListenerConfig { port, address });
                }
                "port" => default_port = Some(at.parse_num(at.one(&args)?, 0, 65535)? as u16),
                "bind_address" => bind_address = Some(at.one(&args)?.to_string()),
                "allow_anonymous" => b.allow_anonymous = at.parse_bool(&args)?,
                "max_connections" => {
                    let v = at.one(&args)?;
                    c.max_connections = if v == "-1" {
                        None
                    } else {
                        Some(at.parse_num(v, 0, u32::MAX as u64)? as usize)
                    };
                }
                "max_inflight_messages" => {
                    b.max_inflight_messages = at.parse_num(at.one(&args)?, 0, 65535)? as u16
                }
                "max_queued_messages" => {
                    b.max_queued_messages =
                        at.parse_num(at.one(&args)?, 0, u32::MAX as u64)? as usize
                }
                "max_queued_bytes" => {
                    b.max_queued_bytes = at.parse_num(at.one(&args)?, 0, u32::MAX as u64)? as usize
                }
                "queue_qos0_messages" => b.queue_qos0_messages = at.parse_bool(&args)?,
                "message_size_limit" => {
                    b.message_size_limit =
                        at.parse_num(at.one(&args)?, 0, crate::wire::MAX_REMAINING_LENGTH as u64)?
                            as usize
                }
                "max_packet_size" => {
                    b.max_packet_size = at.parse_num(
                        at.one(&args)?,
                        20,
                        crate::wire::MAX_REMAINING_LENGTH as u64 + 5,
                    )? as usize
                }
                "max_keepalive" => b.max_keepalive = at.parse_num(at.one(&args)?, 0, 65535)? as u16,
                "retain_available" => b.retain_available = at.parse_bool(&args)?,
                "max_topic_length" => {
                    b.max_topic_length = at.parse_num(at.one(&args)?, 1, 65535)? as usize
                }
                "max_topic_levels" => {
                    b.max_topic_levels = at.parse_num(at.one(&args)?, 1, 32768)? as usize
                }
                "max_subscriptions_per_client" => {
                    b.max_subscriptions_per_client =
                        at.parse_num(at.one(&args)?, 0, u32::MAX as u64)? as usize
                }
                "connect_timeout" => {
                    b.connect_timeout =
                        std::time::Duration::from_secs(at.parse_num(at.one(&args)?, 1, 3600)?)
                }
                "max_topic_alias" => {
                    b.max_topic_alias = at.parse_num(at.one(&args)?, 0, 65535)? as u16
                }
                "max_qos" => b.max_qos = at.parse_num(at.one(&args)?, 0, 2)? as u8,
                "response_information" => {
                    if rest.is_empty() {
                        return Err(at.err("expects a value"));
                    }
                    b.response_information = Some(rest.to_string());
                }
                "sys_interval" => b.sys_interval = at.parse_num(at.one(&args)?, 0, 86_400)? as u32,
                "set_tcp_nodelay" => c.set_tcp_nodelay = at.parse_bool(&args)?,
                "devices_file" => c.devices_file = Some((PathBuf::from(rest), n + 1)),
                "password_file" => c.password_file = Some((PathBuf::from(rest), n + 1)),
                "acl_file" => c.acl_file = Some((PathBuf::from(rest), n + 1)),
                "devices_prefix" => {
                    let p = at.one(&args)?;
                    if !crate::broker::topic::valid_name(p)
                        || p.starts_with('/')
                        || p.ends_with('/')
                    {
                        return Err(at.err(&format!("invalid topic prefix '{p}'")));
                    }
                    c.device_options.prefix = p.to_string();
                }
                "devices_route_commands" => {
                    c.device_options.route_commands = at.parse_bool(&args)?
                }
                "homeassistant_discovery" => c.device_options.discovery = at.parse_bool(&args)?,
                "homeassistant_prefix" => {
                    let p = at.one(&args)?;
                    if !crate::broker::topic::valid_name(p) {
                        return Err(at.err(&format!("invalid topic prefix '{p}'")));
                    }
                    c.device_options.discovery_prefix = p.to_string();
                }
                "log_type" => {
                    let level = match at.one(&args)? {
                        "none" => LevelFilter::Off,
                        "error" => LevelFilter::Error,
                        "warning" => LevelFilter::Warn,
                        "notice" | "information" => LevelFilter::Info,
                        "debug" | "subscribe" | "unsubscribe" => LevelFilter::Debug,
                        "all" => LevelFilter::Trace,
                        other => {
                            return Err(at.err(&format!(
                                "unknown log type '{other}' (expected none, error, warning, notice, information, debug, subscribe, unsubscribe or all)"
                            )))
                        }
                    };
                    log_types = Some(log_types.map_or(level, |l| l.max(level)));
                }
                "log_dest" => match at.one(&args)? {
                    "stderr" => {}
                    other => {
                        return Err(at.err(&format!(
                            "log destination '{other}' is not supported (only stderr)"
                        )))
                    }
                },
                _ => {
                    return Err(ConfigError(format!(
                        "{name}:{}: unknown option '{option}'",
                        n + 1
                    )))
                }
            }
        }
        if let Some(level) = log_types {
            c.log_level = level;
        }
        // Mosquitto: `port`/`bind_address` make the default listener; with neither and no
        // `listener`, the broker listens on the loopback interface only.
        if default_port.is_some() || bind_address.is_some() || c.listeners.is_empty() {
            let address = bind_address.or_else(|| {
                if default_port.is_none() {
                    Some("127.0.0.1".into())
                } else {
                    None
                }
            });
            c.listeners.insert(
                0,
                ListenerConfig {
                    port: default_port.unwrap_or(1883),
                    address,
                },
            );
        }
        Ok(c)
    }
}

struct Line<'a> {
    name: &'a str,
    line: usize,
    option: &'a str,
}

impl Line<'_> {
    fn err(&self, what: &str) -> ConfigError {
        ConfigError(format!(
            "{}:{}: option '{}': {}",
            self.name, self.line, self.option, what
        ))
    }
    fn one<'s>(&self, args: &[&'s str]) -> Result<&'s str, ConfigError> {
        match args {
            [v] => Ok(v),
            [] => Err(self.err("expects a value")),
            _ => Err(self.err("expects a single value")),
        }
    }
    fn parse_bool(&self, args: &[&str]) -> Result<bool, ConfigError> {
        match self.one(args)? {
            "true" => Ok(true),
            "false" => Ok(false),
            v => Err(self.err(&format!("invalid value '{v}' (expected true or false)"))),
        }
    }
    fn parse_num(&self, v: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.err(&format!(
                "invalid value '{v}' (expected a whole number from {min} to {max})"
            ))),
        }
    }
}

/// An I/O error's reason without Rust's "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => "no such file or directory".into(),
        PermissionDenied => "permission denied".into(),
        AddrInUse => "address already in use".into(),
        AddrNotAvailable => "address not available on this machine".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_listener() {
        let c = Config::parse("# nothing\n\n", "x.conf").unwrap();
        assert_eq!(
            c.listeners,
            vec![ListenerConfig {
                port: 1883,
                address: Some("127.0.0.1".into())
            }]
        );
    }

    #[test]
    fn options() {
        let c = Config::parse(
            "listener 1884\nlistener 0 127.0.0.1\nmax_inflight_messages 5\nallow_anonymous false\nlog_type debug\nlog_type error\nmax_connections -1\nsys_interval 0\n",
            "x.conf",
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            c.listeners[0],
            ListenerConfig {
                port: 1884,
                address: None
            }
        );
        assert_eq!(c.broker.max_inflight_messages, 5);
        assert!(!c.broker.allow_anonymous);
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(c.max_connections, None);
        assert_eq!(c.broker.sys_interval, 0);
    }

    #[test]
    fn port_makes_default_listener_on_all_interfaces() {
        let c = Config::parse("port 1999\n", "x.conf").unwrap();
        assert_eq!(
            c.listeners,
            vec![ListenerConfig {
                port: 1999,
                address: None
            }]
        );
    }

    #[test]
    fn errors_name_file_line_option() {
        let e = Config::parse("\nfoo bar\n", "g.conf").unwrap_err();
        assert_eq!(e.0, "g.conf:2: unknown option 'foo'");
        let e = Config::parse("max_keepalive lots\n", "g.conf").unwrap_err();
        assert_eq!(
            e.0,
            "g.conf:1: option 'max_keepalive': invalid value 'lots' (expected a whole number from 0 to 65535)"
        );
        let e = Config::parse("allow_anonymous yes\n", "g.conf").unwrap_err();
        assert!(e.0.starts_with("g.conf:1: option 'allow_anonymous'"), "{e}");
        assert!(Config::parse("listener\n", "g.conf").is_err());
        assert!(Config::parse("listener 70000\n", "g.conf").is_err());
    }
}
