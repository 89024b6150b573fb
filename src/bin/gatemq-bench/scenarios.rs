//! The scenarios. Each connects its clients, lines them up on a barrier, measures the broker
//! (CPU from /proc/<pid>/stat, RSS and context switches from /proc/<pid>/status) and the bench
//! itself over the run, and records its figures.

use crate::mqtt::{self, Conn, PINGRESP, PUBACK, PUBLISH, SUBACK};
use crate::procfs;
use std::error::Error;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Where and what to measure, and where the figures go.
pub struct Ctx {
    pub addr: String,
    /// QoS 0 messages per PINGREQ window (0: the scenario's default).
    pub batch: usize,
    pub pid: Option<String>,
    pub broker: String,
    pub record: Option<PathBuf>,
    /// Fan-in's subscriber keeps a session (clean session 0): what persistence stores.
    pub persistent: bool,
}

impl Ctx {
    /// Prints a figure and appends `broker<TAB>key<TAB>value` to the record file.
    pub fn put(&self, key: &str, value: f64) -> io::Result<()> {
        println!("{:<10} {key:<28} {value:.3}", self.broker);
        if let Some(path) = &self.record {
            let mut f = OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{}\t{key}\t{value}", self.broker)?;
        }
        Ok(())
    }

    fn pid(&self) -> Res<&str> {
        Ok(self
            .pid
            .as_deref()
            .ok_or("this scenario measures the broker: give its --pid")?)
    }
}

/// Broker and bench CPU over a run.
pub struct Meter {
    pub t0: Instant,
    broker0: Option<f64>,
    self0: f64,
    system0: f64,
}

pub struct Measured {
    pub wall: f64,
    broker_cpu: Option<f64>,
    bench_cpu: f64,
    /// CPU used by everything else on the machine: interference.
    other_cpu: f64,
}

impl Meter {
    pub fn start(ctx: &Ctx) -> Res<Meter> {
        Ok(Meter {
            broker0: ctx.pid.as_deref().map(procfs::cpu_seconds).transpose()?,
            self0: procfs::cpu_seconds("self")?,
            system0: procfs::system_busy_seconds()?,
            t0: Instant::now(),
        })
    }

    pub fn stop(&self, ctx: &Ctx) -> Res<Measured> {
        let wall = self.t0.elapsed().as_secs_f64();
        let broker1 = ctx.pid.as_deref().map(procfs::cpu_seconds).transpose()?;
        let broker_cpu = broker1.zip(self.broker0).map(|(b, a)| b - a);
        let bench_cpu = procfs::cpu_seconds("self")? - self.self0;
        let system = procfs::system_busy_seconds()? - self.system0;
        Ok(Measured {
            wall,
            broker_cpu,
            bench_cpu,
            other_cpu: (system - bench_cpu - broker_cpu.unwrap_or(0.0)).max(0.0),
        })
    }

    /// Records `<prefix>_cpu_per_m` (broker CPU-s per million `units`), the broker's and the
    /// bench's share of their cores, and the bench's CPU-s per million.
    pub fn record(&self, ctx: &Ctx, m: &Measured, prefix: &str, units: f64) -> Res<()> {
        let millions = units / 1e6;
        if let Some(b) = m.broker_cpu {
            ctx.put(&format!("{prefix}_cpu_per_m"), b / millions)?;
            ctx.put(&format!("{prefix}_broker_cpu_pct"), 100.0 * b / m.wall)?;
        }
        ctx.put(&format!("{prefix}_bench_cpu_per_m"), m.bench_cpu / millions)?;
        ctx.put(
            &format!("{prefix}_bench_cpu_pct"),
            100.0 * m.bench_cpu / m.wall,
        )?;
        ctx.put(
            &format!("{prefix}_other_cpu_pct"),
            100.0 * m.other_cpu / m.wall,
        )?;
        Ok(())
    }
}

fn join<T>(h: thread::JoinHandle<io::Result<T>>, what: &str) -> Res<T> {
    match h.join() {
        Ok(r) => r.map_err(|e| format!("{what}: {e}").into()),
        Err(_) => Err(format!("{what}: thread panicked").into()),
    }
}

/// State shared by the clients of one run.
struct Shared {
    /// Deliveries the publishers have sent so far (messages × subscribers).
    sent: AtomicU64,
    /// Deliveries the subscribers have received so far.
    received: AtomicU64,
    /// Messages published, final once `done`.
    published: AtomicU64,
    /// The publishers are done.
    done: AtomicBool,
    /// The subscribers stopped receiving: the publishers stop.
    stalled: AtomicBool,
    start: Barrier,
}

impl Shared {
    fn new(threads: usize) -> Arc<Shared> {
        Arc::new(Shared {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            published: AtomicU64::new(0),
            done: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            start: Barrier::new(threads + 1),
        })
    }
}

const PAYLOAD: usize = 64;

/// How long a load runs: `count` messages per publisher, or for `time`.
#[derive(Clone, Copy)]
pub enum Load {
    Count(u64),
    Time(Duration),
}

/// A growable bit set of sequence numbers.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; false if it was set already.
    fn set(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if w >= self.0.len() {
            self.0.resize((w + 1).max(self.0.len() * 2), 0);
        }
        let was = self.0[w] & b != 0;
        self.0[w] |= b;
        !was
    }

    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// What one subscriber connection saw.
struct Tally {
    /// Per publisher: the sequence numbers received.
    seen: Vec<Bits>,
    unique: u64,
    dups: u64,
    last: Instant,
}

/// Reads the subscriber connections `conns` on one thread (mio poll over non-blocking
/// sockets, so 50 subscribers cost one thread's wake-ups): PUBLISHes whose payload starts
/// with the publisher byte and a u32 sequence number, acknowledging QoS 1. Stops when the
/// publishers are done and each connection has every message published, or nothing came
/// for a second after they are done (loss), or for 30 s.
fn subscribers(mut conns: Vec<Conn>, pubs: usize, sh: &Shared) -> io::Result<Vec<Tally>> {
    let mut poll = mio::Poll::new()?;
    let mut events = mio::Events::with_capacity(conns.len().max(16));
    for (i, c) in conns.iter().enumerate() {
        c.set_nonblocking()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&c.fd()),
            mio::Token(i),
            mio::Interest::READABLE,
        )?;
    }
    let mut tallies: Vec<Tally> = conns
        .iter()
        .map(|_| Tally {
            seen: (0..pubs).map(|_| Bits::default()).collect(),
            unique: 0,
            dups: 0,
            last: Instant::now(),
        })
        .collect();
    let mut acks = Vec::with_capacity(64 * 1024);
    sh.start.wait();
    let mut last = Instant::now();
    loop {
        if sh.done.load(SeqCst) {
            let published = sh.published.load(SeqCst);
            if tallies.iter().all(|t| t.unique >= published) {
                break;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        let mut progress = false;
        for ev in &events {
            let i = ev.token().0;
            let (c, t) = (&mut conns[i], &mut tallies[i]);
            let was = t.unique;
            loop {
                let mut got = 0;
                let more = c.pump(|first, body| {
                    if first >> 4 == PUBLISH {
                        if let Some(p) = mqtt::parse_publish(first, body) {
                            if p.qos == 1 {
                                mqtt::puback(&mut acks, p.id);
                            }
                            if p.payload.len() >= 5 {
                                let who = p.payload[0] as usize;
                                let seq = u32::from_be_bytes([
                                    p.payload[1],
                                    p.payload[2],
                                    p.payload[3],
                                    p.payload[4],
                                ]) as usize;
                                if t.seen.get_mut(who).is_some_and(|b| b.set(seq)) {
                                    got += 1;
                                } else {
                                    t.dups += 1;
                                }
                            }
                        }
                    }
                    false
                })?;
                if !acks.is_empty() {
                    c.send(&acks)?;
                    acks.clear();
                }
                if got > 0 {
                    t.unique += got;
                    sh.received.fetch_add(got, SeqCst);
                }
                if !more {
                    break;
                }
            }
            if t.unique > was {
                progress = true;
                t.last = Instant::now();
            }
        }
        if progress {
            last = Instant::now();
        } else if (sh.done.load(SeqCst) && last.elapsed() > Duration::from_secs(1))
            || last.elapsed() > Duration::from_secs(30)
        {
            break;
        }
    }
    Ok(tallies)
}

struct PubCfg {
    topic: String,
    who: u8,
    load: Load,
    qos: u8,
    /// QoS 0: messages per PINGREQ window.
    batch: usize,
    /// QoS 1: PUBLISHes not yet acknowledged, at most.
    window: usize,
    /// Deliveries per message (subscribers).
    copies: u64,
    /// Deliveries sent and not yet received, at most: the subscribers keep up.
    cap: u64,
}

/// What a publisher did: messages sent and, for QoS 1, which were acknowledged.
struct Sent {
    count: u64,
    acked: Bits,
}

/// Publishes until its load is done. QoS 0 goes in windows closed by a PINGREQ, QoS 1 with
/// at most `window` unacknowledged; both wait while the subscribers are `cap` behind.
fn publisher(mut c: Conn, cfg: PubCfg, sh: &Shared) -> io::Result<Sent> {
    c.set_timeout(Duration::from_millis(100))?;
    let topic = cfg.topic.as_bytes();
    let mut payload = [0x55u8; PAYLOAD];
    payload[0] = cfg.who;
    let mut out = Vec::with_capacity(cfg.batch.max(cfg.window) * (PAYLOAD + topic.len() + 8));
    let mut acked = Bits::default();
    let mut id_seq = vec![0u32; 65536];
    let (mut next, mut outstanding, mut acked_n) = (0u64, 0usize, 0u64);
    // Waits while the subscribers are `cap` behind; false if they received nothing for 5 s
    // (a broker that dropped messages): then every publisher stops.
    let pace = |n: u64| {
        let mut seen = (sh.received.load(SeqCst), Instant::now());
        loop {
            let received = sh.received.load(SeqCst);
            if sh.sent.load(SeqCst).saturating_sub(received) <= cfg.cap {
                break;
            }
            if received != seen.0 {
                seen = (received, Instant::now());
            } else if seen.1.elapsed() > Duration::from_secs(5) || sh.stalled.load(SeqCst) {
                sh.stalled.store(true, SeqCst);
                return false;
            }
            thread::sleep(Duration::from_micros(50));
        }
        sh.sent.fetch_add(n * cfg.copies, SeqCst);
        true
    };
    sh.start.wait();
    let (count, deadline) = match cfg.load {
        Load::Count(n) => (n, None),
        Load::Time(d) => (u64::from(u32::MAX), Some(Instant::now() + d)),
    };
    let more = |next: u64| {
        next < count && deadline.is_none_or(|d| Instant::now() < d) && !sh.stalled.load(SeqCst)
    };
    if cfg.qos == 0 {
        // Windows of `batch` messages, each closed by a PINGREQ; a new one is sent while at
        // most one other is unanswered, so the broker has the next window when it finishes one.
        let mut pings = 0;
        loop {
            if pings < 2 && more(next) {
                let n = (count - next).min(cfg.batch as u64);
                if !pace(n) {
                    continue;
                }
                out.clear();
                for seq in next..next + n {
                    payload[1..5].copy_from_slice(&(seq as u32).to_be_bytes());
                    mqtt::publish_packet(&mut out, topic, 0, 0, &payload);
                }
                out.extend_from_slice(&mqtt::PINGREQ);
                c.send(&out)?;
                next += n;
                pings += 1;
                continue;
            }
            if pings == 0 {
                break;
            }
            c.expect(PINGRESP, Duration::from_secs(30))?;
            pings -= 1;
        }
        return Ok(Sent { count: next, acked });
    }
    let mut quiet = Instant::now();
    loop {
        if outstanding <= cfg.window / 2 && more(next) {
            let n = (count - next).min((cfg.window - outstanding) as u64);
            if !pace(n) {
                continue;
            }
            out.clear();
            for seq in next..next + n {
                let id = (seq % 65535 + 1) as u16;
                id_seq[id as usize] = seq as u32;
                payload[1..5].copy_from_slice(&(seq as u32).to_be_bytes());
                mqtt::publish_packet(&mut out, topic, cfg.qos, id, &payload);
            }
            c.send(&out)?;
            next += n;
            outstanding += n as usize;
        }
        if outstanding == 0 && !more(next) {
            break;
        }
        let before = acked_n;
        c.pump(|first, body| {
            if first >> 4 == PUBACK && body.len() >= 2 {
                let seq = id_seq[u16::from_be_bytes([body[0], body[1]]) as usize] as usize;
                if acked.set(seq) {
                    acked_n += 1;
                    outstanding -= 1;
                }
            }
            false
        })?;
        if acked_n > before {
            quiet = Instant::now();
        } else if quiet.elapsed() > Duration::from_secs(30) {
            return Err(mqtt::other(format!(
                "{}: {outstanding} of {next} PUBLISHes unacknowledged for 30 s",
                cfg.topic
            )));
        }
    }
    Ok(Sent { count: next, acked })
}

/// Fan-in: 4 publishers on bench/fanin/<i> → 1 subscriber on bench/#, 64-byte payloads.
pub fn fan_in(ctx: &Ctx, qos: u8, load: Load) -> Res<()> {
    const PUBS: usize = 4;
    let load = match load {
        Load::Count(n) => Load::Count(n / PUBS as u64),
        t => t,
    };
    let mut sub = Conn::open_with(&ctx.addr, "bench-fanin-sub", !ctx.persistent)?;
    sub.subscribe("bench/#", qos)?;
    let conns = (0..PUBS)
        .map(|i| Conn::open(&ctx.addr, &format!("bench-fanin-pub{i}")))
        .collect::<io::Result<Vec<_>>>()?;
    let sh = Shared::new(PUBS + 1);
    let sub_h = {
        let sh = sh.clone();
        thread::spawn(move || subscribers(vec![sub], PUBS, &sh))
    };
    let pub_hs: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let sh = sh.clone();
            let cfg = PubCfg {
                topic: format!("bench/fanin/{i}"),
                who: i as u8,
                load,
                qos,
                batch: if ctx.batch > 0 { ctx.batch } else { 100 },
                window: 100,
                copies: 1,
                cap: 4000,
            };
            thread::spawn(move || publisher(c, cfg, &sh))
        })
        .collect();
    sh.start.wait();
    let meter = Meter::start(ctx)?;
    let mut sent = Vec::new();
    let mut failed = None;
    for (i, h) in pub_hs.into_iter().enumerate() {
        match join(h, &format!("publisher {i}")) {
            Ok(s) => sent.push(s),
            Err(e) => failed = Some(e),
        }
    }
    let total: u64 = sent.iter().map(|s| s.count).sum();
    // The one subscriber gets every publisher's messages. (After a failed publisher, the
    // subscriber stops after a quiet second.)
    sh.published.store(total, SeqCst);
    sh.done.store(true, SeqCst);
    let tally = join(sub_h, "subscriber")?.remove(0);
    let m = meter.stop(ctx)?;
    if let Some(e) = failed {
        return Err(e);
    }
    let p = format!("fanin_q{qos}");
    let active = tally.last.duration_since(meter.t0).as_secs_f64();
    ctx.put(&format!("{p}_messages"), total as f64)?;
    ctx.put(&format!("{p}_msgs_per_s"), tally.unique as f64 / active)?;
    ctx.put(
        &format!("{p}_loss"),
        total.saturating_sub(tally.unique) as f64,
    )?;
    meter.record(ctx, &m, &p, total as f64)?;
    if tally.dups > 0 {
        println!(
            "{:<10} note: {} duplicate deliveries",
            ctx.broker, tally.dups
        );
    }
    if qos > 0 {
        let lost: u64 = sent
            .iter()
            .zip(&tally.seen)
            .map(|(s, seen)| {
                (0..s.count as usize)
                    .filter(|&i| s.acked.get(i) && !seen.get(i))
                    .count() as u64
            })
            .sum();
        if lost > 0 {
            eprintln!(
                "\n!!!!!!!! FAIL: {}: QoS {qos} fan-in LOST {lost} ACKNOWLEDGED MESSAGES of {total} !!!!!!!!\n",
                ctx.broker
            );
            return Err(format!("QoS {qos} lost {lost} acknowledged messages").into());
        }
    }
    Ok(())
}

/// Fan-out: 1 publisher → `subs` subscribers on one topic, QoS 0.
pub fn fan_out(ctx: &Ctx, subs: usize, load: Load) -> Res<()> {
    let topic = "bench/fanout/topic";
    let mut conns = Vec::new();
    for i in 0..subs {
        let mut c = Conn::open(&ctx.addr, &format!("bench-fanout-sub{i}"))?;
        c.subscribe(topic, 0)?;
        conns.push(c);
    }
    let publ = Conn::open(&ctx.addr, "bench-fanout-pub")?;
    let sh = Shared::new(2);
    let sub_h = {
        let sh = sh.clone();
        thread::spawn(move || subscribers(conns, 1, &sh))
    };
    let pub_h = {
        let sh = sh.clone();
        let cfg = PubCfg {
            topic: topic.into(),
            who: 0,
            load,
            qos: 0,
            batch: if ctx.batch > 0 { ctx.batch } else { 100 },
            window: 0,
            copies: subs as u64,
            cap: 1000 * subs as u64,
        };
        thread::spawn(move || publisher(publ, cfg, &sh))
    };
    sh.start.wait();
    let meter = Meter::start(ctx)?;
    let published = join(pub_h, "publisher");
    let messages = published.as_ref().map_or(0, |s| s.count);
    sh.published.store(messages, SeqCst);
    sh.done.store(true, SeqCst);
    let mut received = 0;
    let mut last = meter.t0;
    for t in join(sub_h, "subscribers")? {
        received += t.unique;
        last = last.max(t.last);
    }
    let m = meter.stop(ctx)?;
    published?;
    let expected = messages * subs as u64;
    let active = last.duration_since(meter.t0).as_secs_f64();
    ctx.put("fanout_messages", messages as f64)?;
    ctx.put("fanout_deliveries_per_s", received as f64 / active)?;
    ctx.put("fanout_loss", expected.saturating_sub(received) as f64)?;
    meter.record(ctx, &m, "fanout", expected as f64)?;
    Ok(())
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// Latency: `rate` QoS 0 messages per second for `seconds`, each carrying its send time.
pub fn latency(ctx: &Ctx, rate: u64, seconds: f64) -> Res<()> {
    let topic = "bench/latency";
    let warm = rate / 5;
    let count = (rate as f64 * seconds) as u64;
    let mut sub = Conn::open(&ctx.addr, "bench-latency-sub")?;
    sub.subscribe(topic, 0)?;
    sub.set_timeout(Duration::from_millis(100))?;
    let mut publ = Conn::open(&ctx.addr, "bench-latency-pub")?;
    let base = Instant::now();
    let sh = Shared::new(2);
    let sub_h = {
        let sh = sh.clone();
        thread::spawn(move || -> io::Result<(Vec<u64>, u64)> {
            let mut lat = Vec::with_capacity(count as usize);
            let mut got = 0u64;
            let mut last = Instant::now();
            sh.start.wait();
            while got < warm + count {
                let before = got;
                sub.pump(|first, body| {
                    if first >> 4 == PUBLISH {
                        if let Some(p) = mqtt::parse_publish(first, body) {
                            let now = base.elapsed().as_nanos() as u64;
                            let ts = u64::from_be_bytes(p.payload[..8].try_into().unwrap());
                            let seq = u64::from_be_bytes(p.payload[8..16].try_into().unwrap());
                            got += 1;
                            if seq >= warm {
                                lat.push(now.saturating_sub(ts) / 1000);
                            }
                        }
                    }
                    false
                })?;
                if got > before {
                    last = Instant::now();
                } else if sh.done.load(SeqCst) && last.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
            Ok((lat, got))
        })
    };
    let pub_h = {
        let sh = sh.clone();
        thread::spawn(move || -> io::Result<()> {
            let mut payload = [0x55u8; PAYLOAD];
            let mut out = Vec::with_capacity(128);
            sh.start.wait();
            let t0 = Instant::now();
            for i in 0..warm + count {
                let at = t0 + Duration::from_nanos(i * 1_000_000_000 / rate);
                if let Some(d) = at.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
                payload[8..16].copy_from_slice(&i.to_be_bytes());
                payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
                out.clear();
                mqtt::publish_packet(&mut out, topic.as_bytes(), 0, 0, &payload);
                publ.send(&out)?;
            }
            Ok(())
        })
    };
    sh.start.wait();
    let meter = Meter::start(ctx)?;
    let sent = join(pub_h, "publisher");
    sh.done.store(true, SeqCst);
    let (mut lat, got) = join(sub_h, "subscriber")?;
    let m = meter.stop(ctx)?;
    sent?;
    if lat.is_empty() {
        return Err("latency: no message came back".into());
    }
    lat.sort_unstable();
    ctx.put("lat_p50_us", percentile(&lat, 0.50) as f64)?;
    ctx.put("lat_p99_us", percentile(&lat, 0.99) as f64)?;
    ctx.put("lat_p999_us", percentile(&lat, 0.999) as f64)?;
    ctx.put("lat_max_us", *lat.last().unwrap() as f64)?;
    ctx.put("lat_loss", (warm + count - got) as f64)?;
    if let Some(b) = m.broker_cpu {
        ctx.put("lat_broker_cpu_pct", 100.0 * b / m.wall)?;
    }
    ctx.put("lat_bench_cpu_pct", 100.0 * m.bench_cpu / m.wall)?;
    ctx.put("lat_other_cpu_pct", 100.0 * m.other_cpu / m.wall)?;
    Ok(())
}

/// Connections: `n` idle connections with one subscription each; broker RSS growth per
/// connection.
pub fn connections(ctx: &Ctx, mut n: usize) -> Res<()> {
    let pid = ctx.pid()?.to_string();
    let key = format!("conn{n}");
    if let Some(limit) = procfs::open_files_limit() {
        let fits = limit.saturating_sub(procfs::open_files() + 32) as usize;
        if n > fits {
            println!(
                "{:<10} note: {n} connections do not fit this process's open files limit \
                 ({limit}, `ulimit -n`): opening {fits}",
                ctx.broker
            );
            n = fits;
        }
    }
    thread::sleep(Duration::from_millis(300));
    let before = procfs::rss_kb(&pid)?;
    let t0 = Instant::now();
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    let mut failure = None;
    // In groups, each answered before the next, so no listen backlog overflows.
    'open: for group in (0..n).step_by(100) {
        let first = conns.len();
        for i in group..(group + 100).min(n) {
            let s = match TcpStream::connect(&ctx.addr) {
                Ok(s) => s,
                Err(e) => {
                    failure = Some(format!("connect {i}: {e}"));
                    break 'open;
                }
            };
            let mut c = Conn::new(s, 256);
            let mut out = Vec::with_capacity(96);
            mqtt::connect_packet(&mut out, &format!("bench-conn-{i}"));
            mqtt::subscribe_packet(&mut out, 1, &format!("bench/conn/{i}"), 0);
            if let Err(e) = c.send(&out) {
                failure = Some(format!("send {i}: {e}"));
                break 'open;
            }
            conns.push(c);
        }
        for (i, c) in conns[first..].iter_mut().enumerate() {
            if let Err(e) = c.expect(SUBACK, Duration::from_secs(10)) {
                failure = Some(format!("connection {}: {e}", first + i));
                conns.truncate(first + i);
                break 'open;
            }
        }
    }
    let opened = conns.len();
    let took = t0.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(500));
    let after = procfs::rss_kb(&pid)?;
    if let Some(f) = &failure {
        println!(
            "{:<10} note: stopped at {opened} connections: {f}",
            ctx.broker
        );
    }
    ctx.put(&format!("{key}_opened"), opened as f64)?;
    ctx.put(&format!("{key}_per_s"), opened as f64 / took)?;
    ctx.put(&format!("{key}_rss_kb"), after as f64)?;
    if opened > 0 {
        let per = (after as f64 - before as f64) * 1024.0 / opened as f64;
        ctx.put(&format!("{key}_rss_per_conn_b"), per)?;
    }
    for c in &mut conns {
        let _ = c.send(&mqtt::DISCONNECT);
    }
    drop(conns);
    // Let the broker close them before whatever runs next.
    thread::sleep(Duration::from_secs(1));
    if failure.is_some() && opened < n {
        return Err(format!("only {opened} of {n} connections opened").into());
    }
    Ok(())
}

/// Device commands through gatemq's executor: QoS 1 commands to devices/lamp/brightness/set
/// (alternating values, `WINDOW` unanswered at most), counting devices/lamp/brightness/result
/// answers.
pub fn devices(ctx: &Ctx, load: Load) -> Res<()> {
    const WINDOW: u64 = 256;
    let set = b"devices/lamp/brightness/set";
    let result = b"devices/lamp/brightness/result";
    let mut c = Conn::open(&ctx.addr, "bench-devices")?;
    c.subscribe(std::str::from_utf8(result)?, 0)?;
    c.set_timeout(Duration::from_millis(100))?;
    let (mut next, mut answers, mut oks, mut acks) = (0u64, 0u64, 0u64, 0u64);
    let mut out = Vec::with_capacity(4096);
    let mut last_error = String::new();
    let meter = Meter::start(ctx)?;
    let (count, deadline) = match load {
        Load::Count(n) => (n, None),
        Load::Time(d) => (u64::MAX, Some(meter.t0 + d)),
    };
    let more = |next: u64| next < count && deadline.is_none_or(|d| Instant::now() < d);
    let mut quiet = Instant::now();
    loop {
        if next - answers <= WINDOW / 2 && more(next) {
            out.clear();
            while next - answers < WINDOW && next < count {
                let value: &[u8] = if next % 2 == 0 { b"100" } else { b"200" };
                mqtt::publish_packet(&mut out, set, 1, (next % 65535 + 1) as u16, value);
                next += 1;
            }
            c.send(&out)?;
        }
        if answers == next && acks == next && !more(next) {
            break;
        }
        let before = (answers, acks);
        c.pump(|first, body| {
            match first >> 4 {
                PUBACK => acks += 1,
                PUBLISH => {
                    if let Some(p) = mqtt::parse_publish(first, body) {
                        if p.topic == result {
                            answers += 1;
                            if p.payload.starts_with(b"{\"ok\":true") {
                                oks += 1;
                            } else {
                                last_error = String::from_utf8_lossy(p.payload).into();
                            }
                        }
                    }
                }
                _ => {}
            }
            false
        })?;
        if (answers, acks) != before {
            quiet = Instant::now();
        } else if quiet.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "devices: {answers} answers and {acks} PUBACKs of {next} commands, \
                 nothing for 10 s (is this gatemq with the lamp device declared?)"
            )
            .into());
        }
    }
    let m = meter.stop(ctx)?;
    ctx.put("dev_commands", answers as f64)?;
    ctx.put("dev_cmds_per_s", answers as f64 / m.wall)?;
    ctx.put("dev_errors", (answers - oks) as f64)?;
    meter.record(ctx, &m, "dev", answers as f64)?;
    if oks < answers {
        println!("{:<10} note: last error answer: {last_error}", ctx.broker);
    }
    Ok(())
}

/// Idle: the broker's RSS now, and its wake-ups per second (context switches) over `seconds`.
pub fn idle(ctx: &Ctx, seconds: f64) -> Res<()> {
    let pid = ctx.pid()?.to_string();
    let rss = procfs::rss_kb(&pid)?;
    let anon = procfs::rss_anon_kb(&pid)?;
    let cs0 = procfs::context_switches(&pid)?;
    let cpu0 = procfs::cpu_seconds(&pid)?;
    thread::sleep(Duration::from_secs_f64(seconds));
    let cs1 = procfs::context_switches(&pid)?;
    let cpu1 = procfs::cpu_seconds(&pid)?;
    ctx.put("idle_rss_start_kb", rss as f64)?;
    ctx.put("idle_rss_anon_start_kb", anon as f64)?;
    ctx.put("idle_wakeups_per_s", (cs1 - cs0) as f64 / seconds)?;
    ctx.put("idle_cpu_ms_per_s", 1000.0 * (cpu1 - cpu0) / seconds)?;
    Ok(())
}

/// Waits up to `seconds` for the machine to be quiet: under 15% of one CPU busy in each of
/// three seconds in a row.
pub fn quiet(seconds: f64) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut calm = 0;
    loop {
        let a = procfs::system_busy_seconds()?;
        thread::sleep(Duration::from_secs(1));
        let busy = procfs::system_busy_seconds()? - a;
        calm = if busy < 0.15 { calm + 1 } else { 0 };
        if calm == 3 {
            return Ok(());
        }
        if Instant::now() > deadline {
            println!(
                "note: the machine was not quiet for 3 s in a row within {seconds} s (last \
                 second: {:.0}% of one CPU used by other processes); going on",
                busy * 100.0
            );
            return Ok(());
        }
    }
}
