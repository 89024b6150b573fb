//! gatemq-bench: drives any MQTT broker at host:port with a hand-rolled MQTT 3.1.1 client
//! (threads and blocking sockets) and measures the broker whose PID is given: CPU-seconds per
//! million messages from /proc/<pid>/stat, RSS and context switches from /proc/<pid>/status.
//! The bench measures its own CPU too, so a saturated load generator shows in the figures.
//! `tests/bench/run.sh` runs every scenario against gatemq and Mosquitto and writes
//! BENCHMARKS.md with `report`.

#[path = "gatemq-bench/mqtt.rs"]
mod mqtt;
#[path = "gatemq-bench/mqttsn.rs"]
mod mqttsn;
#[path = "gatemq-bench/procfs.rs"]
mod procfs;
#[path = "gatemq-bench/report.rs"]
mod report;
#[path = "gatemq-bench/scenarios.rs"]
mod scenarios;

use scenarios::{Ctx, Load, Res};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const HELP: &str = "\
gatemq-bench: MQTT broker benchmark (any broker; hand-rolled MQTT 3.1.1 client)

usage: gatemq-bench SCENARIO [options]

scenarios:
  fan-in       4 publishers -> 1 subscriber on bench/#, 64-byte payloads (--qos 0|1)
  fan-out      1 publisher -> --subscribers subscribers on one topic, QoS 0
  latency      --rate msg/s for --seconds, send time in the payload: p50/p99/p99.9/max
  connections  --connections idle connections, one subscription each: broker RSS per connection
  devices      QoS 1 commands to devices/lamp/brightness/set (gatemq's executor), answers/s
  idle         broker RSS now and wake-ups per second over --seconds
  mqttsn       4 MQTT-SN sensors over UDP (--sn-port) -> 1 MQTT subscriber over TCP, through
               gatemq's gateway (--qos -1|0|1: QoS -1 short topics, else registered ids)
  report       medians of --record FILE into --out BENCHMARKS.md (with --command, --meta)
  free-port    print a free loopback TCP port
  wait         wait until something accepts TCP connections at --host:--port (10 s)
  quiet        wait up to --seconds (60) until other processes use under 15% of a CPU

options:
  --host HOST          broker address (127.0.0.1)
  --port PORT          broker port (1883)
  --pid PID            the broker's process, measured from /proc (needed for CPU, RSS, idle)
  --broker NAME        name of the broker in the output and the record (broker)
  --record FILE        append each figure as NAME<TAB>key<TAB>value to FILE
  --seconds S          fan-in, fan-out, devices: publish for S seconds (3);
                       latency, idle: duration (10)
  --messages N         fan-in/fan-out: publish N messages (fan-in: in all) instead of --seconds
  --qos Q              fan-in QoS, 0 or 1 (0); mqttsn: -1, 0 or 1
  --sn-port PORT       mqttsn: the broker's MQTT-SN (UDP) port
  --persistent-subscriber  fan-in: the subscriber keeps its session (clean session 0),
                       so a broker with persistence stores every message it queues
  --subscribers N      fan-out subscribers (50)
  --rate N             latency messages per second (1000)
  --connections N      idle connections (1000)
  --commands N         devices: send N commands instead of for --seconds
  --batch N            QoS 0 messages per PINGREQ window, per publisher (fan-in 100, fan-out 20)
report options:
  --out FILE           markdown file to write (BENCHMARKS.md)
  --command TEXT       the command that produced the figures
  --meta TEXT          a line about the run (repeatable)
  --base NAME          the broker under test (gatemq); --other NAME: the reference (mosquitto)

Exit status: 0 on success; 1 on an error; 2 when a QoS 1 run lost an acknowledged message or
(report) a run failed or a target is not met.
";

struct Args {
    scenario: String,
    host: String,
    port: u16,
    pid: Option<String>,
    broker: String,
    record: Option<PathBuf>,
    messages: Option<u64>,
    qos: i8,
    sn_port: u16,
    subscribers: usize,
    rate: u64,
    seconds: Option<f64>,
    connections: usize,
    commands: Option<u64>,
    batch: usize,
    out: PathBuf,
    command: String,
    meta: Vec<String>,
    base: String,
    other: String,
    persistent: bool,
}

fn parse() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        scenario: String::new(),
        host: "127.0.0.1".into(),
        port: 1883,
        pid: None,
        broker: "broker".into(),
        record: None,
        messages: None,
        qos: 0,
        sn_port: 0,
        subscribers: 50,
        rate: 1000,
        seconds: None,
        connections: 1000,
        commands: None,
        batch: 0,
        out: "BENCHMARKS.md".into(),
        command: String::new(),
        meta: Vec::new(),
        base: "gatemq".into(),
        other: "mosquitto".into(),
        persistent: false,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("host") => a.host = p.value()?.parse()?,
            Long("port") => a.port = p.value()?.parse()?,
            Long("pid") => {
                let pid: u32 = p.value()?.parse()?;
                a.pid = Some(pid.to_string());
            }
            Long("broker") => a.broker = p.value()?.parse()?,
            Long("record") => a.record = Some(p.value()?.into()),
            Long("messages") => a.messages = Some(p.value()?.parse()?),
            Long("qos") => a.qos = p.value()?.parse()?,
            Long("sn-port") => a.sn_port = p.value()?.parse()?,
            Long("subscribers") => a.subscribers = p.value()?.parse()?,
            Long("rate") => a.rate = p.value()?.parse()?,
            Long("seconds") => a.seconds = Some(p.value()?.parse()?),
            Long("connections") => a.connections = p.value()?.parse()?,
            Long("commands") => a.commands = Some(p.value()?.parse()?),
            Long("batch") => a.batch = p.value()?.parse()?,
            Long("persistent-subscriber") => a.persistent = true,
            Long("out") => a.out = p.value()?.into(),
            Long("command") => a.command = p.value()?.parse()?,
            Long("meta") => a.meta.push(p.value()?.parse()?),
            Long("base") => a.base = p.value()?.parse()?,
            Long("other") => a.other = p.value()?.parse()?,
            Short('h') | Long("help") => {
                print!("{HELP}");
                std::process::exit(0);
            }
            Value(v) if a.scenario.is_empty() => a.scenario = v.parse()?,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(a)
}

fn wait_for(addr: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("nothing accepts at {addr}: {e}").into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn run(a: &Args) -> Res<()> {
    let ctx = Ctx {
        addr: format!("{}:{}", a.host, a.port),
        batch: a.batch,
        pid: a.pid.clone(),
        broker: a.broker.clone(),
        record: a.record.clone(),
        persistent: a.persistent,
    };
    let load = match a.messages {
        Some(n) => Load::Count(n),
        None if a.scenario == "devices" && a.commands.is_some() => {
            Load::Count(a.commands.unwrap_or(0))
        }
        None => Load::Time(Duration::from_secs_f64(a.seconds.unwrap_or(3.0))),
    };
    match a.scenario.as_str() {
        "fan-in" => {
            if !(0..=1).contains(&a.qos) {
                return Err("fan-in: --qos 0 or 1".into());
            }
            scenarios::fan_in(&ctx, a.qos as u8, load)
        }
        "fan-out" => scenarios::fan_out(&ctx, a.subscribers, load),
        "latency" => scenarios::latency(&ctx, a.rate.max(1), a.seconds.unwrap_or(10.0)),
        "connections" => scenarios::connections(&ctx, a.connections),
        "devices" => scenarios::devices(&ctx, load),
        "idle" => scenarios::idle(&ctx, a.seconds.unwrap_or(10.0)),
        "mqttsn" => {
            if !(-1..=1).contains(&a.qos) || a.sn_port == 0 {
                return Err("mqttsn: --sn-port PORT and --qos -1, 0 or 1".into());
            }
            mqttsn::mqttsn(&ctx, &format!("{}:{}", a.host, a.sn_port), a.qos, load)
        }
        "free-port" => {
            let l = std::net::TcpListener::bind((a.host.as_str(), 0))?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
        "wait" => wait_for(&ctx.addr),
        "quiet" => scenarios::quiet(a.seconds.unwrap_or(60.0)),
        "" => Err("no scenario given (see --help)".into()),
        s => Err(format!("unknown scenario '{s}' (see --help)").into()),
    }
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gatemq-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.scenario == "report" {
        let Some(record) = &a.record else {
            eprintln!("gatemq-bench: report needs --record FILE");
            return ExitCode::FAILURE;
        };
        let inp = report::Input {
            records: record,
            out: &a.out,
            command: &a.command,
            meta: &a.meta,
            base: &a.base,
            other: &a.other,
        };
        return match report::write(&inp) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(2),
            Err(e) => {
                eprintln!("gatemq-bench: report: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatemq-bench: {} {}: {e}", a.broker, a.scenario);
            if e.to_string().contains("acknowledged messages") {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
