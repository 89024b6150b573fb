//! The config file: Mosquitto's syntax (`option value`, `#` comments) and, where an option
//! means the same thing, Mosquitto's option names. An unknown or unsupported option is an
//! error naming the file, the line and the option; nothing is silently ignored.

use crate::broker::bridge::BridgeSpec;
use crate::broker::{BrokerConfig, ListenerPolicy};
use log::LevelFilter;
use std::fmt;
use std::path::{Path, PathBuf};

mod collide;

/// Where a listener listens and the options of its section (the lines after `listener`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerConfig {
    pub port: u16,
    /// `None` for all interfaces.
    pub address: Option<String>,
    /// Clients this listener takes at once; `None`: only the global limit.
    pub max_connections: Option<usize>,
    /// TLS, when `certfile` is set.
    pub tls: TlsOptions,
    /// Its own security options (they count with `per_listener_settings true`).
    pub security: SecurityOptions,
    pub use_username_as_clientid: bool,
    /// `protocol websockets`: MQTT over WebSocket.
    pub websockets: bool,
    /// `protocol mqttsn`: MQTT-SN over UDP, with the `mqttsn_*` options of the section.
    pub mqttsn: Option<crate::mqttsn::Options>,
    /// The config line that made it (`listener`, `port` or `bind_address`); 0 for the
    /// listener gatemq opens when the config names none.
    pub line: usize,
    /// The `protocol mqttsn` line, for errors about the section.
    pub mqttsn_line: usize,
    /// `mqttsn_advertise_interval` and `mqttsn_advertise_address` as read (they go together).
    pub mqttsn_advertise: (Option<std::time::Duration>, Option<std::net::SocketAddr>),
}

impl ListenerConfig {
    pub fn new(port: u16, address: Option<&str>) -> Self {
        ListenerConfig {
            port,
            address: address.map(Into::into),
            ..Default::default()
        }
    }
}

/// Mosquitto's certificate-based TLS options of one listener. Paths are as written in the
/// config until [`Config::load`] makes them relative to the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    pub require_certificate: bool,
    pub use_identity_as_username: bool,
    /// The oldest TLS version accepted: 12 or 13 (Mosquitto's `tls_version`; `tlsv1.1` is
    /// taken as 1.2, the oldest this TLS library speaks).
    pub min_version: Option<u8>,
    /// The config line of the first TLS option, for errors about the whole set.
    pub line: usize,
}

impl TlsOptions {
    pub fn enabled(&self) -> bool {
        self.certfile.is_some()
    }
}

/// The options `per_listener_settings` is about. `None`: not set, the default applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityOptions {
    pub allow_anonymous: Option<bool>,
    /// The password file as named in the config, with its line.
    pub password_file: Option<(PathBuf, usize)>,
    /// The ACL file as named in the config, with its line.
    pub acl_file: Option<(PathBuf, usize)>,
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
    /// Security options set anywhere in the file (the last setting wins): they apply to every
    /// listener unless `per_listener_settings` is true.
    pub security: SecurityOptions,
    pub per_listener_settings: bool,
    /// The devices file (`devices_file`) as named in the config, with its line, and its
    /// declarations once loaded.
    pub devices_file: Option<(PathBuf, usize)>,
    pub devices: Option<crate::devices::decl::Devices>,
    pub device_options: crate::devices::Options,
    /// Mosquitto's `persistence true` with its location and file, and when to sync.
    pub persistence: Option<Persistence>,
    /// The socket side of each bridge (`connection` section); the protocol side is in
    /// `broker.bridges`, at the same index.
    pub bridges: Vec<crate::bridge::BridgeLink>,
    /// `http_listener <port> [address]`: `/metrics` and the status page (off by default).
    pub http_listener: Option<(u16, Option<String>)>,
    /// The file this was read from, if any.
    pub source: Option<PathBuf>,
}

/// Where and how the state is kept across restarts (see `src/store/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// The folder (`persistence_location`; relative to the config file's folder).
    pub location: PathBuf,
    /// The snapshot's file name (`persistence_file`); the journal is this + `.journal`.
    pub file: String,
    pub sync: crate::store::SyncPolicy,
    /// `persistence false` with devices declared: only the devices' retained status topics
    /// are kept, in [`DEVICE_STATE_FILE`].
    pub devices_only: bool,
}

/// Where the devices' last values are kept when `persistence` is off.
pub const DEVICE_STATE_FILE: &str = "gatemq-devices.db";

impl Default for Config {
    /// No config file: one listener on 127.0.0.1:1883, as Mosquitto 2 does.
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig::new(1883, Some("127.0.0.1"))],
            broker: BrokerConfig::default(),
            max_connections: None,
            log_level: LevelFilter::Info,
            set_tcp_nodelay: true,
            security: SecurityOptions::default(),
            per_listener_settings: false,
            devices_file: None,
            devices: None,
            device_options: crate::devices::Options::default(),
            persistence: None,
            bridges: Vec::new(),
            http_listener: None,
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
        // Relative paths are found next to the config file.
        let dir = crate::store::folder_of(path);
        let files = c.listeners.iter_mut().flat_map(|l| {
            let t = &mut l.tls;
            [
                &mut t.certfile,
                &mut t.keyfile,
                &mut t.cafile,
                &mut t.capath,
            ]
        });
        let bridge_files = c.bridges.iter_mut().flat_map(|l| {
            let t = &mut l.tls;
            [
                &mut t.certfile,
                &mut t.keyfile,
                &mut t.cafile,
                &mut t.capath,
            ]
        });
        for p in files.chain(bridge_files).flatten() {
            *p = dir.join(&*p);
        }
        if let Some(p) = &mut c.persistence {
            p.location = dir.join(&p.location);
        }
        // Each file is read once, however many listeners use it.
        let mut passwords = Vec::new();
        let mut acls = Vec::new();
        for i in 0..c.listeners.len() {
            let sec = c.security_of(i).clone();
            let policy = &mut c.broker.listeners[i];
            if let Some((file, line)) = &sec.password_file {
                policy.passwords = Some(load_once(&mut passwords, dir, file, |f| {
                    crate::auth::password::PasswordFile::load(f)
                        .map_err(|e| file_error(e, &name, *line, "password_file"))
                })?);
            }
            if let Some((file, line)) = &sec.acl_file {
                policy.acl = Some(load_once(&mut acls, dir, file, |f| {
                    crate::auth::acl::AclFile::load(f)
                        .map_err(|e| file_error(e, &name, *line, "acl_file"))
                })?);
            }
        }
        if let Some((file, line)) = &c.devices_file {
            let devices = crate::devices::decl::Devices::load(&dir.join(file))
                .map_err(|e| file_error(e, &name, *line, "devices_file"))?;
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
        // Listener options before any `listener` line belong to the default listener.
        let mut default_listener = ListenerConfig::default();
        let mut listener_option_line = 0;
        let mut security_before_listener = 0;
        let mut persistence = false;
        let mut location = PathBuf::new();
        let mut file = "gatemq.db".to_string();
        let mut sync = crate::store::SyncPolicy::Always;
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
            // The section this line is in: the last `listener`, or the default listener's.
            let in_listener = !c.listeners.is_empty();
            let section = match c.listeners.last_mut() {
                Some(l) => l,
                None => &mut default_listener,
            };
            if !in_listener && LISTENER_OPTIONS.contains(&option) && listener_option_line == 0 {
                listener_option_line = n + 1;
            }
            let security = matches!(option, "allow_anonymous" | "password_file" | "acl_file");
            if !in_listener && security && security_before_listener == 0 {
                security_before_listener = n + 1;
            }
            match option {
                "listener" => {
                    let (port, address) = match args.as_slice() {
                        [p] => (at.parse_num(p, 0, 65535)? as u16, None),
                        [p, a] => (at.parse_num(p, 0, 65535)? as u16, Some(*a)),
                        _ => return Err(at.err("expects a port and an optional bind address")),
                    };
                    c.listeners.push(ListenerConfig {
                        line: n + 1,
                        ..ListenerConfig::new(port, address)
                    });
                }
                "port" => {
                    default_port = Some(at.parse_num(at.one(&args)?, 0, 65535)? as u16);
                    if default_listener.line == 0 {
                        default_listener.line = n + 1;
                    }
                }
                "bind_address" => {
                    bind_address = Some(at.one(&args)?.to_string());
                    if default_listener.line == 0 {
                        default_listener.line = n + 1;
                    }
                }
                "per_listener_settings" => c.per_listener_settings = at.parse_bool(&args)?,
                "persistence" => persistence = at.parse_bool(&args)?,
                "persistence_location" => location = PathBuf::from(at.path(rest)?),
                "persistence_file" => {
                    let f = at.one(&args)?;
                    if f.contains('/') {
                        return Err(at.err("is a file name; the folder is persistence_location"));
                    }
                    file = f.to_string();
                }
                "persistence_sync" => {
                    sync = match args.as_slice() {
                        ["always"] => crate::store::SyncPolicy::Always,
                        ["never"] => crate::store::SyncPolicy::Never,
                        ["interval", n] => crate::store::SyncPolicy::Interval(
                            std::time::Duration::from_secs(at.parse_num(n, 1, 86_400)?),
                        ),
                        _ => return Err(at.err("expects always, never or interval SECONDS")),
                    }
                }
                // Mosquitto saves a snapshot every autosave_interval; gatemq journals every
                // change, so these have nothing to set. Accepted so Mosquitto configs load.
                "autosave_interval" | "autosave_on_changes" => {
                    at.one(&args)?;
                    log::debug!(
                        "{name}:{}: {option} is not needed: gatemq journals every change",
                        n + 1
                    );
                }
                "allow_anonymous" => {
                    let v = Some(at.parse_bool(&args)?);
                    section.security.allow_anonymous = v;
                    c.security.allow_anonymous = v;
                }
                "password_file" => {
                    let v = Some((PathBuf::from(at.path(rest)?), n + 1));
                    section.security.password_file = v.clone();
                    c.security.password_file = v;
                }
                "acl_file" => {
                    let v = Some((PathBuf::from(at.path(rest)?), n + 1));
                    section.security.acl_file = v.clone();
                    c.security.acl_file = v;
                }
                "max_connections" => {
                    let v = at.one(&args)?;
                    let max = if v == "-1" {
                        None
                    } else {
                        Some(at.parse_num(v, 0, u32::MAX as u64)? as usize)
                    };
                    // Before any listener: every connection counts against it.
                    if in_listener {
                        section.max_connections = max;
                    } else {
                        c.max_connections = max;
                    }
                }
                "use_username_as_clientid" => {
                    section.use_username_as_clientid = at.parse_bool(&args)?
                }
                "protocol" => match at.one(&args)? {
                    "mqtt" => {
                        section.websockets = false;
                        section.mqttsn = None;
                    }
                    "websockets" => {
                        section.websockets = true;
                        section.mqttsn = None;
                    }
                    "mqttsn" => {
                        section.websockets = false;
                        section.mqttsn = Some(crate::mqttsn::Options::default());
                        if section.mqttsn_line == 0 {
                            section.mqttsn_line = n + 1;
                        }
                    }
                    other => {
                        return Err(at.err(&format!(
                            "unknown protocol '{other}' (expected mqtt, websockets or mqttsn)"
                        )))
                    }
                },
                _ if option.starts_with("mqttsn_") => {
                    let Some(o) = section.mqttsn.as_mut() else {
                        return Err(at.err(
                            "belongs to a listener section with 'protocol mqttsn' (after that line)",
                        ));
                    };
                    mqttsn_option(&at, o, &args, &mut section.mqttsn_advertise)?;
                }
                "certfile" | "keyfile" | "cafile" | "capath" => {
                    let t = &mut section.tls;
                    let path = Some(PathBuf::from(at.path(rest)?));
                    match option {
                        "certfile" => t.certfile = path,
                        "keyfile" => t.keyfile = path,
                        "cafile" => t.cafile = path,
                        _ => t.capath = path,
                    }
                    if t.line == 0 {
                        t.line = n + 1;
                    }
                }
                "require_certificate" => section.tls.require_certificate = at.parse_bool(&args)?,
                "use_identity_as_username" => {
                    section.tls.use_identity_as_username = at.parse_bool(&args)?
                }
                "tls_version" => {
                    section.tls.min_version = Some(match at.one(&args)? {
                        "tlsv1.1" | "tlsv1.2" => 12,
                        "tlsv1.3" => 13,
                        other => {
                            return Err(at.err(&format!(
                            "unknown TLS version '{other}' (expected tlsv1.1, tlsv1.2 or tlsv1.3)"
                        )))
                        }
                    })
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
                "allow_zero_keepalive" => b.allow_zero_keepalive = at.parse_bool(&args)?,
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
                "devices_file" => c.devices_file = Some((PathBuf::from(at.path(rest)?), n + 1)),
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
                "http_listener" => {
                    c.http_listener = Some(match args.as_slice() {
                        [p] => (at.parse_num(p, 0, 65535)? as u16, None),
                        [p, a] => (at.parse_num(p, 0, 65535)? as u16, Some(a.to_string())),
                        _ => return Err(at.err("expects a port and an optional bind address")),
                    })
                }
                "connection" => {
                    let name = at.one(&args)?;
                    if c.bridges.iter().any(|l| l.name == name) {
                        return Err(at.err(&format!("a bridge named '{name}' is declared already")));
                    }
                    let remote_clientid = format!("{}.{name}", crate::bridge::hostname());
                    c.bridges.push(crate::bridge::BridgeLink {
                        name: name.to_string(),
                        addresses: Vec::new(),
                        restart_base: std::time::Duration::from_secs(5),
                        restart_cap: Some(std::time::Duration::from_secs(30)),
                        round_robin: false,
                        tls: Default::default(),
                        line: n + 1,
                    });
                    c.broker.bridges.push(BridgeSpec {
                        name: name.to_string(),
                        local_clientid: String::new(),
                        notification_topic: String::new(),
                        remote_clientid,
                        topics: Vec::new(),
                        protocol: crate::wire::LEVEL_311,
                        try_private: true,
                        cleansession: false,
                        local_cleansession: None,
                        keepalive: 60,
                        username: None,
                        password: None,
                        notifications: true,
                        notifications_local_only: false,
                        outgoing_retain: true,
                    });
                }
                _ if BRIDGE_OPTIONS.contains(&option) => {
                    let (Some(link), Some(spec)) =
                        (c.bridges.last_mut(), c.broker.bridges.last_mut())
                    else {
                        return Err(
                            at.err("is a bridge option: it belongs after a 'connection' line")
                        );
                    };
                    bridge_option(&at, link, spec, &args, rest)?;
                }
                _ if UNSUPPORTED.contains(&option) => {
                    return Err(at.err("is a Mosquitto option that gatemq does not support"))
                }
                _ => {
                    return Err(ConfigError(format!(
                        "{name}:{}: unknown option '{option}'",
                        n + 1
                    )))
                }
            }
        }
        if persistence {
            c.persistence = Some(Persistence {
                location,
                file,
                sync,
                devices_only: false,
            });
        } else if c.devices_file.is_some() {
            // Without persistence the devices' last values are kept all the same, in a small
            // store of their own (their retained status topics only).
            c.persistence = Some(Persistence {
                location,
                file: DEVICE_STATE_FILE.into(),
                sync: crate::store::SyncPolicy::Always,
                devices_only: true,
            });
        }
        if let Some(level) = log_types {
            c.log_level = level;
        }
        // Mosquitto: `port`/`bind_address` make the default listener; with neither and no
        // `listener`, the broker listens on the loopback interface only.
        let had_listeners = !c.listeners.is_empty();
        // Mosquitto 2: anonymous clients are refused unless allowed, once the config names a
        // listener; with none, the broker listens on the loopback interface only and lets
        // them in.
        let anonymous_default =
            !(had_listeners || default_port.is_some() || bind_address.is_some());
        if default_port.is_some() || bind_address.is_some() || !had_listeners {
            let address = bind_address.or_else(|| {
                if default_port.is_none() {
                    Some("127.0.0.1".into())
                } else {
                    None
                }
            });
            default_listener.port = default_port.unwrap_or(1883);
            default_listener.address = address;
            c.listeners.insert(0, default_listener);
        } else if listener_option_line > 0 {
            return Err(ConfigError(format!(
                "{name}:{listener_option_line}: this listener option comes before any 'listener' line, and there is no default listener ('port') for it"
            )));
        } else if c.per_listener_settings && security_before_listener > 0 {
            return Err(ConfigError(format!(
                "{name}:{security_before_listener}: with per_listener_settings true this option belongs to the default listener ('port'), which this config does not have; put it after the 'listener' line it is for"
            )));
        }

        for l in &mut c.listeners {
            check_tls(&l.tls, name)?;
            check_mqttsn(l, name)?;
        }
        collide::check(&c.listeners, name)?;
        for (link, spec) in c.bridges.iter().zip(c.broker.bridges.iter_mut()) {
            let at = |what: &str| {
                ConfigError(format!(
                    "{name}:{}: bridge {}: {what}",
                    link.line, link.name
                ))
            };
            if link.addresses.is_empty() {
                return Err(at("needs an 'address'"));
            }
            if spec.topics.is_empty() {
                return Err(at("needs at least one 'topic'"));
            }
            if link.tls.enabled() && !cfg!(feature = "tls") {
                return Err(at("this gatemq was built without TLS (the 'tls' feature)"));
            }
            if link.tls.certfile.is_some() != link.tls.keyfile.is_some() {
                return Err(at("'bridge_certfile' and 'bridge_keyfile' go together"));
            }
            if (link.tls.certfile.is_some() || link.tls.insecure) && !link.tls.enabled() {
                return Err(at("TLS options need 'bridge_cafile' or 'bridge_capath'"));
            }
            if spec.password.is_some()
                && spec.username.is_none()
                && spec.protocol == crate::wire::LEVEL_311
            {
                return Err(at(
                    "'remote_password' needs 'remote_username' with MQTT 3.1.1",
                ));
            }
            if spec.local_clientid.is_empty() {
                spec.local_clientid = format!("local.{}", spec.remote_clientid);
            }
            if spec.notification_topic.is_empty() {
                spec.notification_topic =
                    format!("$SYS/broker/connection/{}/state", spec.remote_clientid);
            }
        }
        for (i, spec) in c.broker.bridges.iter().enumerate() {
            let clash = c.broker.bridges[..i]
                .iter()
                .any(|o| o.local_clientid == spec.local_clientid);
            if clash {
                return Err(ConfigError(format!(
                    "{name}:{}: bridge {}: its local client id '{}' is another bridge's",
                    c.bridges[i].line, spec.name, spec.local_clientid
                )));
            }
        }
        c.broker.listeners = (0..c.listeners.len())
            .map(|i| {
                let l = &c.listeners[i];
                ListenerPolicy {
                    allow_anonymous: c
                        .security_of(i)
                        .allow_anonymous
                        .unwrap_or(anonymous_default),
                    use_username_as_clientid: l.use_username_as_clientid,
                    use_identity_as_username: l.tls.use_identity_as_username,
                    ..ListenerPolicy::default()
                }
            })
            .collect();
        Ok(c)
    }

    /// The security options that apply to listener `i`: its own with `per_listener_settings`,
    /// else the file's.
    pub fn security_of(&self, i: usize) -> &SecurityOptions {
        match self.listeners.get(i) {
            Some(l) if self.per_listener_settings => &l.security,
            _ => &self.security,
        }
    }
}

/// One `mqttsn_*` option of an MQTT-SN listener's section.
fn mqttsn_option(
    at: &Line<'_>,
    o: &mut crate::mqttsn::Options,
    args: &[&str],
    advertise: &mut (Option<std::time::Duration>, Option<std::net::SocketAddr>),
) -> Result<(), ConfigError> {
    use std::time::Duration;
    match at.option {
        "mqttsn_topic" => {
            let [id, topic] = args else {
                return Err(at.err("expects a topic id (1 to 65534) and a topic name"));
            };
            let id = at.parse_num(id, 1, 65534)? as u16;
            if !crate::broker::topic::valid_name(topic) {
                return Err(at.err(&format!("'{topic}' is not a topic name (no wildcards)")));
            }
            if o.topics.iter().any(|(i, _)| *i == id) {
                return Err(at.err(&format!("topic id {id} is given twice")));
            }
            if o.topics.iter().any(|(_, t)| t == topic) {
                return Err(at.err(&format!("topic '{topic}' has an id already")));
            }
            o.topics.push((id, topic.to_string()));
        }
        "mqttsn_gateway_id" => o.gateway_id = at.parse_num(at.one(args)?, 0, 255)? as u8,
        "mqttsn_retry_interval" => {
            o.retry_interval = Duration::from_secs(at.parse_num(at.one(args)?, 1, 3600)?)
        }
        "mqttsn_retry_count" => o.retry_count = at.parse_num(at.one(args)?, 0, 100)? as u32,
        "mqttsn_max_clients_per_source" => {
            o.max_clients_per_source = at.parse_num(at.one(args)?, 1, 1 << 20)? as usize
        }
        "mqttsn_max_topic_bytes" => {
            o.max_topic_bytes = at.parse_num(at.one(args)?, 1, 1 << 24)? as usize
        }
        "mqttsn_max_will_size" => o.max_will_size = at.parse_num(at.one(args)?, 0, 65535)? as usize,
        "mqttsn_idle_evict" => {
            o.idle_evict = Duration::from_secs(at.parse_num(at.one(args)?, 0, 1 << 32)?)
        }
        "mqttsn_advertise_interval" => {
            advertise.0 = Some(Duration::from_secs(at.parse_num(
                at.one(args)?,
                1,
                65535,
            )?))
        }
        "mqttsn_advertise_address" => {
            let a = at.one(args)?;
            advertise.1 = Some(a.parse().map_err(|_| {
                at.err(&format!(
                    "'{a}' is not an address and port (e.g. 192.168.1.255:1884)"
                ))
            })?);
        }
        _ => return Err(at.err("is not an MQTT-SN option")),
    }
    Ok(())
}

/// An MQTT-SN listener's section as a whole: no TLS (MQTT-SN 1.2 has no DTLS here), ADVERTISE
/// only with the address it goes to, `max_connections` as its client limit.
fn check_mqttsn(l: &mut ListenerConfig, name: &str) -> Result<(), ConfigError> {
    let Some(o) = l.mqttsn.as_mut() else {
        return Ok(());
    };
    let at = |what: &str| ConfigError(format!("{name}:{}: {what}", l.mqttsn_line));
    if l.tls.enabled() || l.tls.cafile.is_some() || l.tls.capath.is_some() {
        return Err(at(
            "an MQTT-SN listener cannot use TLS (certfile, keyfile, cafile)",
        ));
    }
    o.advertise = match l.mqttsn_advertise {
        (Some(every), Some(addr)) => Some((every, addr)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(at(
                "mqttsn_advertise_interval needs mqttsn_advertise_address: ADVERTISE goes only where it is told",
            ))
        }
        (None, Some(_)) => return Err(at("mqttsn_advertise_address needs mqttsn_advertise_interval")),
    };
    if let Some(max) = l.max_connections {
        o.max_clients = max;
    }
    Ok(())
}

/// Options that belong to a listener's section.
const LISTENER_OPTIONS: &[&str] = &[
    "mqttsn_topic",
    "mqttsn_gateway_id",
    "mqttsn_retry_interval",
    "mqttsn_retry_count",
    "mqttsn_max_clients_per_source",
    "mqttsn_idle_evict",
    "mqttsn_max_topic_bytes",
    "mqttsn_max_will_size",
    "mqttsn_advertise_interval",
    "mqttsn_advertise_address",
    "certfile",
    "keyfile",
    "cafile",
    "capath",
    "require_certificate",
    "use_identity_as_username",
    "tls_version",
    "use_username_as_clientid",
    "protocol",
];

/// Options of a bridge (`connection` section).
const BRIDGE_OPTIONS: &[&str] = &[
    "address",
    "addresses",
    "topic",
    "bridge_protocol_version",
    "remote_clientid",
    "local_clientid",
    "remote_username",
    "remote_password",
    "cleansession",
    "local_cleansession",
    "keepalive_interval",
    "restart_timeout",
    "round_robin",
    "try_private",
    "notifications",
    "notifications_local_only",
    "notification_topic",
    "bridge_outgoing_retain",
    "start_type",
    "bridge_cafile",
    "bridge_capath",
    "bridge_certfile",
    "bridge_keyfile",
    "bridge_insecure",
    "bridge_tls_version",
];

/// One option of the bridge declared last.
fn bridge_option(
    at: &Line<'_>,
    link: &mut crate::bridge::BridgeLink,
    spec: &mut BridgeSpec,
    args: &[&str],
    rest: &str,
) -> Result<(), ConfigError> {
    use crate::broker::bridge::{BridgeTopic, Direction};
    match at.option {
        "address" | "addresses" => {
            if args.is_empty() {
                return Err(at.err("expects host[:port], one or more"));
            }
            for a in args {
                let (host, port) = match a.rsplit_once(':') {
                    // `[v6]:port`, or `host:port` (a bare IPv6 address has several colons,
                    // `[v6]` none after its bracket).
                    Some((h, p))
                        if !a.ends_with(']') && (h.starts_with('[') || !h.contains(':')) =>
                    {
                        (
                            h.trim_start_matches('[').trim_end_matches(']'),
                            at.parse_num(p, 1, 65535)? as u16,
                        )
                    }
                    _ => (a.trim_start_matches('[').trim_end_matches(']'), 1883),
                };
                if host.is_empty() {
                    return Err(at.err(&format!("invalid address '{a}'")));
                }
                link.addresses.push((host.to_string(), port));
            }
        }
        "topic" => {
            // Mosquitto's `""` is an empty pattern or prefix.
            let unquote = |s: &str| {
                if s == "\"\"" {
                    String::new()
                } else {
                    s.to_string()
                }
            };
            let pattern = unquote(
                args.first()
                    .ok_or_else(|| at.err("expects a topic pattern"))?,
            );
            let direction = match args.get(1).copied() {
                None | Some("out") => Direction::Out,
                Some("in") => Direction::In,
                Some("both") => Direction::Both,
                Some(d) => {
                    return Err(at.err(&format!(
                        "unknown direction '{d}' (expected in, out or both)"
                    )))
                }
            };
            let qos = match args.get(2) {
                Some(q) => at.parse_num(q, 0, 2)? as u8,
                None => 0,
            };
            let local = args.get(3).map(|s| unquote(s)).unwrap_or_default();
            let remote = args.get(4).map(|s| unquote(s)).unwrap_or_default();
            if args.len() > 5 {
                return Err(
                    at.err("expects: pattern [in|out|both] [qos] [local-prefix] [remote-prefix]")
                );
            }
            let t = BridgeTopic::new(&pattern, direction, qos, &local, &remote);
            for (p, what) in [(&local, "local prefix"), (&remote, "remote prefix")] {
                if p.contains(['+', '#']) {
                    return Err(at.err(&format!("the {what} '{p}' may not hold wildcards")));
                }
            }
            if !crate::broker::topic::valid_filter(&t.local_filter)
                || !crate::broker::topic::valid_filter(&t.remote_filter)
            {
                return Err(at.err(&format!(
                    "invalid topic pattern '{pattern}' (with its prefixes)"
                )));
            }
            spec.topics.push(t);
        }
        "bridge_protocol_version" => {
            spec.protocol = match at.one(args)? {
                "mqttv311" => crate::wire::LEVEL_311,
                "mqttv50" => crate::wire::LEVEL_5,
                "mqttv31" => {
                    return Err(
                        at.err("mqttv31 bridges are not supported (use mqttv311 or mqttv50)")
                    )
                }
                v => {
                    return Err(at.err(&format!(
                        "unknown version '{v}' (expected mqttv311 or mqttv50)"
                    )))
                }
            }
        }
        "remote_clientid" => spec.remote_clientid = at.one(args)?.to_string(),
        "local_clientid" => spec.local_clientid = at.one(args)?.to_string(),
        "remote_username" => spec.username = Some(at.one(args)?.to_string()),
        "remote_password" => spec.password = Some(at.one(args)?.to_string()),
        "cleansession" => spec.cleansession = at.parse_bool(args)?,
        "local_cleansession" => spec.local_cleansession = Some(at.parse_bool(args)?),
        // Not 0: a bridge without keep-alive never notices a half-open uplink.
        "keepalive_interval" => spec.keepalive = at.parse_num(at.one(args)?, 1, 65535)? as u16,
        "restart_timeout" => {
            let secs = |v: &str| {
                at.parse_num(v, 1, 86_400)
                    .map(std::time::Duration::from_secs)
            };
            match args {
                [v] => (link.restart_base, link.restart_cap) = (secs(v)?, None),
                [b, c] => {
                    let (b, c) = (secs(b)?, secs(c)?);
                    if c < b {
                        return Err(at.err("the cap is smaller than the base"));
                    }
                    (link.restart_base, link.restart_cap) = (b, Some(c));
                }
                _ => return Err(at.err("expects a delay in seconds, or a base and a cap")),
            }
        }
        "round_robin" => link.round_robin = at.parse_bool(args)?,
        "try_private" => spec.try_private = at.parse_bool(args)?,
        "notifications" => spec.notifications = at.parse_bool(args)?,
        "notifications_local_only" => spec.notifications_local_only = at.parse_bool(args)?,
        "notification_topic" => {
            let t = at.one(args)?;
            if !crate::broker::topic::valid_name(t) {
                return Err(at.err(&format!("invalid topic '{t}'")));
            }
            spec.notification_topic = t.to_string();
        }
        "bridge_outgoing_retain" => spec.outgoing_retain = at.parse_bool(args)?,
        "start_type" => match at.one(args)? {
            "automatic" => {}
            v @ ("lazy" | "once") => {
                return Err(at.err(&format!("start_type {v} is not supported (only automatic)")))
            }
            v => return Err(at.err(&format!("unknown start_type '{v}'"))),
        },
        "bridge_cafile" => link.tls.cafile = Some(PathBuf::from(at.path(rest)?)),
        "bridge_capath" => link.tls.capath = Some(PathBuf::from(at.path(rest)?)),
        "bridge_certfile" => link.tls.certfile = Some(PathBuf::from(at.path(rest)?)),
        "bridge_keyfile" => link.tls.keyfile = Some(PathBuf::from(at.path(rest)?)),
        "bridge_insecure" => link.tls.insecure = at.parse_bool(args)?,
        "bridge_tls_version" => {
            link.tls.min_version = Some(match at.one(args)? {
                "tlsv1.2" => 12,
                "tlsv1.3" => 13,
                v => {
                    return Err(at.err(&format!(
                        "unknown TLS version '{v}' (expected tlsv1.2 or tlsv1.3)"
                    )))
                }
            })
        }
        _ => return Err(at.err("is not a bridge option")),
    }
    Ok(())
}

/// Mosquitto options gatemq knows but does not implement: named as such, not as typos.
const UNSUPPORTED: &[&str] = &[
    "mount_point",
    "socket_domain",
    "bind_interface",
    "http_dir",
    "ciphers",
    "ciphers_tls1.3",
    "crlfile",
    "dhparamfile",
    "psk_hint",
    "psk_file",
    "use_subject_as_username",
    "tls_engine",
    "tls_keyform",
    "tls_engine_kpass_sha1",
    "plugin",
    "auth_plugin",
    "websockets_log_level",
    "websockets_headers_size",
    "bridge_alpn",
    "bridge_attempt_unsubscribe",
    "bridge_bind_address",
    "bridge_identity",
    "bridge_psk",
    "bridge_require_ocsp",
    "bridge_max_packet_size",
    "idle_timeout",
    "threshold",
    "local_username",
    "local_password",
];

/// A listener's TLS options make sense together (each error names the listener's first TLS
/// line).
fn check_tls(t: &TlsOptions, name: &str) -> Result<(), ConfigError> {
    let used = t.certfile.is_some()
        || t.keyfile.is_some()
        || t.cafile.is_some()
        || t.capath.is_some()
        || t.require_certificate
        || t.use_identity_as_username
        || t.min_version.is_some();
    if !used {
        return Ok(());
    }
    let err = |what: &str| Err(ConfigError(format!("{name}:{}: {what}", t.line.max(1))));
    if !cfg!(feature = "tls") {
        return err("this gatemq was built without TLS (the 'tls' feature)");
    }
    if t.certfile.is_none() || t.keyfile.is_none() {
        return err("a TLS listener needs both 'certfile' and 'keyfile'");
    }
    if t.require_certificate && t.cafile.is_none() && t.capath.is_none() {
        return err("'require_certificate true' needs 'cafile' or 'capath' to check client certificates against");
    }
    if t.use_identity_as_username && !t.require_certificate {
        return err("'use_identity_as_username true' needs 'require_certificate true'");
    }
    Ok(())
}

/// Load a file once for every listener that names it.
fn load_once<T: Clone>(
    cache: &mut Vec<(PathBuf, T)>,
    dir: &Path,
    file: &Path,
    load: impl FnOnce(&Path) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let file = dir.join(file);
    if let Some((_, v)) = cache.iter().find(|(p, _)| *p == file) {
        return Ok(v.clone());
    }
    let v = load(&file)?;
    cache.push((file, v.clone()));
    Ok(v)
}

/// A file named by option `option` on line `line` could not be used: a read error gets the
/// config's file and line in front; a content error names its own file and line already.
fn file_error(e: String, name: &str, line: usize, option: &str) -> ConfigError {
    if e.starts_with("cannot read") {
        ConfigError(format!("{name}:{line}: option '{option}': {e}"))
    } else {
        ConfigError(e)
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
    /// A path: the rest of the line, spaces included.
    fn path<'s>(&self, rest: &'s str) -> Result<&'s str, ConfigError> {
        if rest.is_empty() {
            return Err(self.err("expects a path"));
        }
        Ok(rest)
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
        // No listener named: loopback only, anonymous clients allowed (Mosquitto 2).
        assert!(Config::parse("", "x.conf").unwrap().broker.listeners[0].allow_anonymous);
        assert!(
            !Config::parse("listener 1883\n", "x.conf")
                .unwrap()
                .broker
                .listeners[0]
                .allow_anonymous
        );
        assert!(
            !Config::parse("port 1883\n", "x.conf")
                .unwrap()
                .broker
                .listeners[0]
                .allow_anonymous
        );
        let c = Config::parse("# nothing\n\n", "x.conf").unwrap();
        assert_eq!(
            c.listeners,
            vec![ListenerConfig::new(1883, Some("127.0.0.1"))]
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
        let first = ListenerConfig {
            line: 1,
            ..ListenerConfig::new(1884, None)
        };
        assert_eq!(c.listeners[0], first);
        assert_eq!(c.listeners[1].line, 2);
        assert_eq!(c.broker.max_inflight_messages, 5);
        // Without per_listener_settings, allow_anonymous counts for every listener.
        assert_eq!(c.broker.listeners.len(), 2);
        assert!(c.broker.listeners.iter().all(|p| !p.allow_anonymous));
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(c.max_connections, None);
        assert_eq!(c.broker.sys_interval, 0);
    }

    #[test]
    fn port_makes_default_listener_on_all_interfaces() {
        let c = Config::parse("port 1999\n", "x.conf").unwrap();
        let want = ListenerConfig {
            line: 1,
            ..ListenerConfig::new(1999, None)
        };
        assert_eq!(c.listeners, vec![want]);
    }

    #[test]
    fn per_listener_settings_give_each_listener_its_own_security() {
        let text = "per_listener_settings true
allow_anonymous false
port 1883
                    listener 8883
certfile s.crt
keyfile s.key
cafile ca.crt
                    require_certificate true
use_identity_as_username true
max_connections 5
                    listener 1884
allow_anonymous true
password_file pw
use_username_as_clientid true
";
        let c = Config::parse(text, "x.conf").unwrap();
        let ports: Vec<u16> = c.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [1883, 8883, 1884]);
        let anon = |c: &Config| -> Vec<bool> {
            c.broker
                .listeners
                .iter()
                .map(|p| p.allow_anonymous)
                .collect()
        };
        // The default listener has the lines before any `listener`; 8883 sets nothing, and
        // a config with listeners refuses anonymous clients by default (Mosquitto 2).
        assert_eq!(anon(&c), [false, false, true]);
        assert!(c.listeners[1].tls.enabled() && c.listeners[1].tls.require_certificate);
        assert!(c.broker.listeners[1].use_identity_as_username);
        assert_eq!(c.listeners[1].max_connections, Some(5));
        assert!(c.broker.listeners[2].use_username_as_clientid);
        assert_eq!(c.security_of(2).password_file, Some(("pw".into(), 13)));
        assert_eq!(c.security_of(0).password_file, None);
        // The same file without per_listener_settings: the last setting is everyone's.
        let c = Config::parse(
            &text.replace(
                "true\nallow_anonymous false",
                "false\nallow_anonymous false",
            ),
            "x.conf",
        )
        .unwrap();
        assert_eq!(anon(&c), [true, true, true]);
        assert_eq!(c.security_of(0).password_file, Some(("pw".into(), 13)));
    }

    #[test]
    fn tls_options_are_checked_together() {
        let e = |text: &str| Config::parse(text, "t.conf").unwrap_err().0;
        assert_eq!(
            e("listener 8883\ncertfile a.crt\n"),
            "t.conf:2: a TLS listener needs both 'certfile' and 'keyfile'"
        );
        assert!(
            e("listener 8883\ncertfile a\nkeyfile b\nrequire_certificate true\n")
                .contains("needs 'cafile' or 'capath'")
        );
        assert!(
            e("listener 8883\ncertfile a\nkeyfile b\nuse_identity_as_username true\n")
                .contains("needs 'require_certificate true'")
        );
        assert!(e("listener 1\ntls_version sslv3\n").contains("unknown TLS version 'sslv3'"));
        assert!(e("listener 1\nmount_point x/\n").contains("gatemq does not support"));
        assert!(e("certfile a\nlisten 1\n").contains("unknown option 'listen'"));
        assert!(e("certfile a\nkeyfile b\nlistener 1883\n")
            .starts_with("t.conf:1: this listener option comes before any 'listener'"));
        assert!(e("per_listener_settings true\nacl_file acl\nlistener 1883\n").starts_with(
            "t.conf:2: with per_listener_settings true this option belongs to the default listener"
        ));
        // Without per_listener_settings the same line is for every listener.
        assert!(Config::parse("acl_file acl\nlistener 1883\n", "t.conf").is_ok());
    }

    #[test]
    fn bridge_sections() {
        let c = Config::parse(
            "connection cloud\naddress mqtt.example.com [::1] [::1]:1884 10.0.0.1:8883\n\
             topic sensors/# out 1 \"\" site1/\ntopic cmd/# in\nremote_clientid gw1\n\
             restart_timeout 2\nbridge_protocol_version mqttv50\n",
            "g.conf",
        )
        .unwrap();
        let (link, spec) = (&c.bridges[0], &c.broker.bridges[0]);
        assert_eq!(
            link.addresses,
            [
                ("mqtt.example.com".to_string(), 1883),
                ("::1".into(), 1883),
                ("::1".into(), 1884),
                ("10.0.0.1".into(), 8883)
            ]
        );
        assert_eq!((link.restart_base.as_secs(), link.restart_cap), (2, None));
        assert_eq!(spec.local_clientid, "local.gw1");
        assert_eq!(spec.notification_topic, "$SYS/broker/connection/gw1/state");
        assert_eq!(spec.protocol, crate::wire::LEVEL_5);
        let t = &spec.topics[0];
        assert_eq!(
            (&*t.local_filter, &*t.remote_filter, t.qos),
            ("sensors/#", "site1/sensors/#", 1)
        );
        assert_eq!(spec.topics[1].qos, 0);
        for (text, want) in [
            ("address h\n", "belongs after a 'connection' line"),
            ("connection a\ntopic x\n", "needs an 'address'"),
            ("connection a\naddress h\n", "needs at least one 'topic'"),
            (
                "connection a\naddress h\ntopic x sideways\n",
                "unknown direction",
            ),
            (
                "connection a\naddress h\ntopic x/# out 1 a/+/\n",
                "may not hold wildcards",
            ),
            (
                "connection a\naddress h\ntopic x\nkeepalive_interval 0\n",
                "from 1 to 65535",
            ),
            (
                "connection a\naddress h\ntopic x\nremote_password p\n",
                "needs 'remote_username'",
            ),
            (
                "connection a\naddress h\ntopic x\nstart_type lazy\n",
                "not supported",
            ),
            (
                "connection a\naddress h\ntopic x\nbridge_psk k\n",
                "does not support",
            ),
            (
                "connection a\naddress h\ntopic x\nconnection a\n",
                "declared already",
            ),
        ] {
            let e = Config::parse(text, "g.conf").unwrap_err();
            assert!(e.0.contains(want), "{text:?}: {e}");
        }
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

    #[test]
    fn mqttsn_listener_section() {
        let c = Config::parse(
            "listener 1883\nlistener 1883\nprotocol mqttsn\nmqttsn_topic 1 a/b\nmqttsn_topic 2 c\nmqttsn_retry_interval 5\nmqttsn_retry_count 4\nmqttsn_advertise_interval 900\nmqttsn_advertise_address 192.168.1.255:1884\nmqttsn_gateway_id 9\nmax_connections 50\nmqttsn_max_clients_per_source 8\nmqttsn_idle_evict 0\nmqttsn_max_topic_bytes 2048\nmqttsn_max_will_size 100\n",
            "g.conf",
        )
        .unwrap();
        // The same port number over UDP is another socket: no collision.
        assert!(c.listeners[0].mqttsn.is_none());
        let o = c.listeners[1].mqttsn.as_ref().unwrap();
        assert_eq!(o.topics, vec![(1, "a/b".into()), (2, "c".into())]);
        assert_eq!(o.retry_interval, std::time::Duration::from_secs(5));
        assert_eq!((o.retry_count, o.gateway_id), (4, 9));
        assert_eq!((o.max_clients, o.max_clients_per_source), (50, 8));
        assert_eq!(o.idle_evict, std::time::Duration::ZERO);
        assert_eq!((o.max_topic_bytes, o.max_will_size), (2048, 100));
        assert_eq!(
            o.advertise,
            Some((
                std::time::Duration::from_secs(900),
                "192.168.1.255:1884".parse().unwrap()
            ))
        );
        for (text, err) in [
            ("listener 1\nmqttsn_topic 1 a\n", "g.conf:2: option 'mqttsn_topic': belongs to a listener section with 'protocol mqttsn'"),
            ("listener 1\nprotocol mqttsn\nmqttsn_topic 1 a/#\n", "g.conf:3: option 'mqttsn_topic': 'a/#' is not a topic name"),
            ("listener 1\nprotocol mqttsn\nmqttsn_topic 1 a\nmqttsn_topic 1 b\n", "g.conf:4: option 'mqttsn_topic': topic id 1 is given twice"),
            ("listener 1\nprotocol mqttsn\nmqttsn_advertise_interval 60\n", "g.conf:2: mqttsn_advertise_interval needs mqttsn_advertise_address"),
            ("listener 1\nprotocol mqttsn\nmqttsn_advertise_address 10.0.0.255\n", "g.conf:3: option 'mqttsn_advertise_address': '10.0.0.255' is not an address and port"),
            ("listener 1\nprotocol mqttsn\ncertfile a.crt\nkeyfile a.key\n", "g.conf:2: an MQTT-SN listener cannot use TLS"),
            ("listener 1\nprotocol mqttsn\nlistener 1\nprotocol mqttsn\n", "g.conf:3: this listener (port 1 on all IPv4 interfaces) collides with the listener on g.conf:1"),
            ("listener 1\nprotocol mqtsn\n", "g.conf:2: option 'protocol': unknown protocol 'mqtsn' (expected mqtt, websockets or mqttsn)"),
        ] {
            let e = Config::parse(text, "g.conf").unwrap_err();
            assert!(e.0.starts_with(err), "{text:?}: {e}");
        }
    }
}
