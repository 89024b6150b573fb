//! The `gatemq` command: parse the command line, load the config, start logging, serve.

mod passwd_cmd;

use gatemq::config::Config;
use gatemq::net::Server;
use log::LevelFilter;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
gatemq: an MQTT broker for LAN gateways

Usage: gatemq [-c FILE] [-p PORT] [-v] [--test-config]
       gatemq passwd [-c | -D | -U | -b] FILE [USER [PASSWORD]]   (like mosquitto_passwd)

Options:
  -c, --config-file FILE  read the configuration from FILE (Mosquitto syntax)
  -p, --port PORT         listen on PORT instead of the default listener's port
  -v, --verbose           log everything (like log_type all); RUST_LOG overrides
      --test-config       check the configuration and exit: 0 if it is good, 1 if not
  -V, --version           print the version and exit
  -h, --help              print this help and exit

Without a config file gatemq listens on 127.0.0.1:1883.";

struct Args {
    config: Option<PathBuf>,
    port: Option<u16>,
    verbose: bool,
    test_config: bool,
}

fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        config: None,
        port: None,
        verbose: false,
        test_config: false,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config-file") => args.config = Some(parser.value()?.into()),
            Short('p') | Long("port") => args.port = Some(parser.value()?.parse()?),
            Short('v') | Long("verbose") => args.verbose = true,
            Long("test-config") => args.test_config = true,
            Short('V') | Long("version") => {
                println!("gatemq {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Short('h') | Long("help") => {
                println!("{USAGE}");
                return Ok(None);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("passwd") {
        return passwd_cmd::main(&argv[1..]);
    }
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatemq: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gatemq: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    if let Some(port) = args.port {
        // Like Mosquitto's -p: the default (first) listener's port.
        if let Some(l) = config.listeners.first_mut() {
            l.port = port;
        }
    }
    if args.test_config {
        let name = args
            .config
            .as_ref()
            .map_or("(none)".into(), |p| p.display().to_string());
        println!("gatemq: configuration file {name} test is successful");
        return ExitCode::SUCCESS;
    }
    // The config's log level can change at a reload unless RUST_LOG or -v decided it.
    let level_from_config = !args.verbose && std::env::var_os("RUST_LOG").is_none();
    init_logging(if args.verbose {
        LevelFilter::Trace
    } else {
        config.log_level
    });
    // A start that fails says so in one sentence, and nothing else: the version line comes
    // once the listeners are open (Mosquitto's "running").
    let mut server = match Server::bind(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gatemq: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("gatemq {} running", env!("CARGO_PKG_VERSION"));
    server.set_command_line(args.port, level_from_config);
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatemq: the event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` wins over the config's level, as a person debugging expects. When stderr is the
/// systemd journal (`JOURNAL_STREAM` names it), lines carry a syslog priority prefix (`<3>` for
/// errors ... `<7>` for debug) and no timestamp, so `journalctl -p` filters them.
fn init_logging(level: LevelFilter) {
    let mut b = env_logger::Builder::new();
    let from_env = std::env::var("RUST_LOG").ok();
    // Everything passes the logger's own filter and `log`'s maximum level decides, so a
    // reload can change the level (RUST_LOG's filters, when given, stay as they are).
    b.filter_level(LevelFilter::Trace);
    if let Some(spec) = &from_env {
        b.parse_filters(spec);
    }
    if stderr_is_journal() {
        use std::io::Write;
        b.format(|buf, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}", record.args())
        });
    } else {
        b.format_target(false);
    }
    b.init();
    if from_env.is_none() {
        log::set_max_level(level);
    }
}

/// `JOURNAL_STREAM` is "device:inode" of the journal's stream; it counts only if stderr is
/// that stream (a child of a service inherits the variable with other stderrs).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}
