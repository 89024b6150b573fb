//! DESIGN.md contract 1: after warm-up, routing a message allocates nothing.
//!
//! The broker runs in-process on its own thread over real loopback sockets; a counting global
//! allocator counts that thread's allocations and frees while counting is switched on. Each
//! scenario warms up with the same traffic it then measures, and asserts zero of both.
//!
//! Queues, output buffers and the message pool grow to a high-water mark and keep their
//! capacity; how deep they get depends on thread timing. So the warm-up runs with the
//! subscribers starting to read late (`LAG`): their queues and buffers fill as far as the
//! traffic and the configured limits let them, and the measured run, read at once, cannot go
//! deeper. What is left to allocate in the measured run is what allocates per message.

use gatemq::config::{Config, ListenerConfig};
use gatemq::net::Server;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
}

fn count(c: &'static std::thread::LocalKey<Cell<u64>>) {
    if ON.try_with(|on| on.get()).unwrap_or(false) {
        let _ = c.try_with(|n| n.set(n.get() + 1));
        // ZERO_ALLOC_TRACE=N prints where the first N counted allocations came from.
        ON.with(|on| on.set(false));
        if let Some(limit) = std::env::var("ZERO_ALLOC_TRACE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            if ALLOCS.with(|n| n.get()) <= limit {
                eprintln!(
                    "counted allocation:\n{}",
                    std::backtrace::Backtrace::force_capture()
                );
            }
        }
        ON.with(|on| on.set(true));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(&ALLOCS);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(&FREES);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count(&ALLOCS);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// A broker on its own thread. `measure(true)` starts counting from its next loop turn.
struct InProcess {
    addr: SocketAddr,
    /// A second listener's address, when the test configures one (WebSocket or MQTT-SN).
    second_addr: Option<SocketAddr>,
    /// Connected before anything is measured; its PINGREQ wakes the loop.
    waker: std::sync::Mutex<Option<Client>>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    result: Option<thread::JoinHandle<(u64, u64)>>,
}

impl InProcess {
    fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config {
            listeners: vec![ListenerConfig::new(0, Some("127.0.0.1"))],
            ..Config::default()
        };
        cfg.broker.sys_interval = 0;
        tweak(&mut cfg);
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (m, s) = (measuring.clone(), stop.clone());
        let result = thread::spawn(move || {
            let mut server = Server::bind(&cfg).expect("bind");
            tx.send(server.local_addrs()).unwrap();
            let mut events = mio::Events::with_capacity(1024);
            while !s.load(Ordering::SeqCst) {
                ON.with(|on| on.set(m.load(Ordering::SeqCst)));
                server.turn(&mut events).expect("turn");
                ON.with(|on| on.set(false));
            }
            (ALLOCS.with(|c| c.get()), FREES.with(|c| c.get()))
        });
        let addrs = rx.recv().unwrap();
        let addr = addrs[0];
        let waker = std::sync::Mutex::new(Some(Client::connect(addr, "waker", true)));
        InProcess {
            addr,
            second_addr: addrs.get(1).copied(),
            waker,
            measuring,
            stop,
            result: Some(result),
        }
    }

    fn measure(&self, on: bool) {
        self.measuring.store(on, Ordering::SeqCst);
        // Two round trips through the loop: the switch has taken effect in the second.
        let mut waker = self.waker.lock().unwrap();
        let w = waker.as_mut().unwrap();
        for _ in 0..2 {
            w.send(&[0xc0, 0]);
            assert_eq!(w.read().0, 0xd0);
        }
    }

    /// Stop the broker; the allocations and frees counted while measuring.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let mut w = self.waker.lock().unwrap().take().unwrap();
        w.send(&[0xc0, 0]);
        self.result.take().unwrap().join().unwrap()
    }
}

/// A minimal raw MQTT 3.1.1 client, over TCP or WebSocket.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    /// Over WebSocket: frames read and not yet unwrapped into `buf`.
    ws: Option<Vec<u8>>,
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    gatemq::wire::put_varint(&mut v, body.len());
    v.extend_from_slice(body);
    v
}

fn publish(topic: &str, payload: &[u8], qos: u8, retain: bool, id: u16) -> Vec<u8> {
    let mut v = Vec::new();
    gatemq::wire::encode_publish_header(
        &mut v,
        topic.as_bytes(),
        qos,
        retain,
        false,
        id,
        payload.len(),
    );
    v.extend_from_slice(payload);
    v
}

impl Client {
    fn connect(addr: SocketAddr, id: &str, clean: bool) -> Client {
        Client::open(addr, id, clean, false)
    }

    /// Over WebSocket: the upgrade first, then MQTT in masked binary frames.
    fn connect_ws(addr: SocketAddr, id: &str) -> Client {
        Client::open(addr, id, true, true)
    }

    fn open(addr: SocketAddr, id: &str, clean: bool, ws: bool) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        if ws {
            s.write_all(b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").unwrap();
        }
        let mut c = Client {
            s,
            buf: Vec::new(),
            ws: ws.then(Vec::new),
        };
        if ws {
            // The 101 answer, up to its blank line; frames may follow in the same read.
            let raw = c.ws.as_mut().unwrap();
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut tmp = [0u8; 1024];
                let n = c.s.read(&mut tmp).unwrap();
                assert!(n > 0, "closed during the upgrade");
                raw.extend_from_slice(&tmp[..n]);
            }
            assert!(raw.starts_with(b"HTTP/1.1 101"));
            let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            raw.drain(..end);
        }
        let mut body = Vec::new();
        gatemq::wire::put_str(&mut body, b"MQTT");
        body.extend_from_slice(&[4, (clean as u8) << 1, 0, 60]);
        gatemq::wire::put_str(&mut body, id.as_bytes());
        c.send(&packet(0x10, &body));
        let (first, _) = c.read();
        assert_eq!(first, 0x20);
        c
    }

    fn send(&mut self, b: &[u8]) {
        if self.ws.is_none() {
            return self.s.write_all(b).unwrap();
        }
        // One masked binary frame.
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x82];
        match b.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(b.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    /// Move the payloads of whole server frames from `ws` into `buf`.
    fn unwrap_frames(&mut self) {
        let Some(raw) = &mut self.ws else { return };
        loop {
            if raw.len() < 2 {
                return;
            }
            let (len, at) = match raw[1] & 0x7f {
                126 if raw.len() >= 4 => (u16::from_be_bytes([raw[2], raw[3]]) as usize, 4),
                127 if raw.len() >= 10 => (
                    u64::from_be_bytes(raw[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => return,
                n => (n as usize, 2),
            };
            if raw.len() < at + len {
                return;
            }
            assert_eq!(raw[0], 0x82, "a binary frame");
            self.buf.extend_from_slice(&raw[at..at + len]);
            raw.drain(..at + len);
        }
    }

    fn read_or(&mut self, on_fail: impl FnOnce()) -> (u8, Vec<u8>) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read()));
        r.unwrap_or_else(|e| {
            on_fail();
            std::panic::resume_unwind(e)
        })
    }

    fn read(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Ok(Some(f)) = gatemq::wire::frame_len(&self.buf, usize::MAX) {
                if self.buf.len() >= f.total_len {
                    let p = (self.buf[0], self.buf[f.header_len..f.total_len].to_vec());
                    self.buf.drain(..f.total_len);
                    return p;
                }
            }
            self.unwrap_frames();
            if let Ok(Some(f)) = gatemq::wire::frame_len(&self.buf, usize::MAX) {
                if self.buf.len() >= f.total_len {
                    continue;
                }
            }
            let mut tmp = [0u8; 65536];
            let n = match self.s.read(&mut tmp) {
                Ok(n) => n,
                Err(e) => panic!("read: {e} ({} bytes buffered)", self.buf.len()),
            };
            assert!(n > 0, "broker closed the connection");
            match &mut self.ws {
                Some(raw) => raw.extend_from_slice(&tmp[..n]),
                None => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: u8) {
        let mut body = vec![0, 1];
        gatemq::wire::put_str(&mut body, filter.as_bytes());
        body.push(qos);
        self.send(&packet(0x82, &body));
        loop {
            if self.read().0 == 0x90 {
                return;
            }
        }
    }

    /// Receive `n` PUBLISHes, acknowledging each as its QoS requires.
    fn receive(&mut self, n: usize) {
        let mut got = 0;
        while got < n {
            let (first, body) = self.read_or(|| eprintln!("received {got} of {n}"));
            match first >> 4 {
                3 => {
                    got += 1;
                    let qos = (first >> 1) & 3;
                    if qos > 0 {
                        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                        let id = [body[2 + tl], body[3 + tl]];
                        self.send(&[if qos == 1 { 0x40 } else { 0x50 }, 2, id[0], id[1]]);
                    }
                }
                6 => self.send(&[0x70, 2, body[0], body[1]]),
                _ => {}
            }
        }
    }

    /// Publish `n` messages in batches, completing each batch's QoS flow before the next.
    fn publish_many(&mut self, topic: &str, qos: u8, retain: bool, n: usize) {
        let payload = [0x55u8; 64];
        let mut sent = 0;
        while sent < n {
            let batch = (n - sent).min(100);
            let mut out = Vec::new();
            for i in 0..batch {
                out.extend_from_slice(&publish(topic, &payload, qos, retain, (i + 1) as u16));
            }
            self.send(&out);
            if qos == 0 {
                // QoS 0 has no flow control: pace with a PINGREQ round trip per batch so a
                // subscriber that reads as fast as it can never overflows its queue.
                self.send(&[0xc0, 0]);
                while self.read().0 != 0xd0 {}
            } else {
                let mut done = 0;
                while done < batch {
                    let (first, body) = self.read();
                    match first >> 4 {
                        4 | 7 => done += 1,
                        5 => self.send(&[0x62, 2, body[0], body[1]]),
                        _ => {}
                    }
                }
            }
            sent += batch;
        }
    }
}

/// How late subscribers start reading in the warm-up.
const LAG: Duration = Duration::from_millis(300);

/// Run `traffic` twice to warm up (subscribers lagging by `LAG`, then not) and once measured
/// (no lag); assert nothing was allocated or freed in the measured run.
fn assert_no_alloc(broker: InProcess, mut traffic: impl FnMut(Duration)) {
    traffic(LAG);
    // And once as measured: a lagging subscriber pauses publishers, which changes how much
    // output a loop turn makes for them; both patterns must have been seen.
    traffic(Duration::ZERO);
    broker.measure(true);
    traffic(Duration::ZERO);
    broker.measure(false);
    let (allocs, frees) = broker.finish();
    assert_eq!(
        (allocs, frees),
        (0, 0),
        "allocations and frees while routing"
    );
}

fn fan_in(qos: u8, total: usize) {
    // QoS 0 has no flow control: a queue that holds everything keeps the count exact.
    let broker = InProcess::start(|c| {
        if qos == 0 {
            c.broker.max_queued_messages = 2 * total;
        }
    });
    let mut sub = Client::connect(broker.addr, "sub", true);
    sub.subscribe("bench/#", qos);
    let mut pubs: Vec<Client> = (0..4)
        .map(|i| Client::connect(broker.addr, &format!("pub{i}"), true))
        .collect();
    assert_no_alloc(broker, |lag| {
        thread::scope(|s| {
            for (i, p) in pubs.iter_mut().enumerate() {
                s.spawn(move || p.publish_many(&format!("bench/{i}"), qos, false, total / 4));
            }
            thread::sleep(lag);
            sub.receive(total);
        });
    });
}

/// QoS 1 fan-in and delivery over a WebSocket listener: frames are unmasked in place and
/// output is framed into a reused buffer.
#[test]
fn qos1_fan_in_over_websocket() {
    let broker = InProcess::start(|c| {
        let mut ws = ListenerConfig::new(0, Some("127.0.0.1"));
        ws.websockets = true;
        c.listeners.push(ws);
    });
    let addr = broker.second_addr.expect("the WebSocket listener");
    let mut sub = Client::connect_ws(addr, "sub");
    sub.subscribe("bench/#", 1);
    let mut pubs: Vec<Client> = (0..4)
        .map(|i| Client::connect_ws(addr, &format!("pub{i}")))
        .collect();
    let total = 20_000;
    assert_no_alloc(broker, |lag| {
        thread::scope(|s| {
            for (i, p) in pubs.iter_mut().enumerate() {
                s.spawn(move || p.publish_many(&format!("bench/{i}"), 1, false, total / 4));
            }
            thread::sleep(lag);
            sub.receive(total);
        });
    });
}

#[test]
fn qos0_fan_in() {
    fan_in(0, 100_000);
}

#[test]
fn qos1_fan_in() {
    fan_in(1, 100_000);
}

#[test]
fn qos2_fan_in() {
    fan_in(2, 100_000);
}

#[test]
fn fan_out_to_50_subscribers() {
    // Above the burst: the publisher's PUBACKs do not wait for the 50 subscribers.
    let broker = InProcess::start(|c| c.broker.max_queued_messages = 10_000);
    let mut subs: Vec<Client> = (0..50)
        .map(|i| {
            let mut c = Client::connect(broker.addr, &format!("sub{i}"), true);
            c.subscribe(if i % 2 == 0 { "fan/out" } else { "fan/+" }, 1);
            c
        })
        .collect();
    let mut publisher = Client::connect(broker.addr, "pub", true);
    // 2 000 messages x 50 subscribers = 100 000 deliveries, QoS 1 end to end.
    assert_no_alloc(broker, |lag| {
        thread::scope(|s| {
            for sub in subs.iter_mut() {
                s.spawn(move || {
                    thread::sleep(lag);
                    sub.receive(2_000)
                });
            }
            publisher.publish_many("fan/out", 1, false, 2_000);
        });
    });
}

#[test]
fn retained_publish_and_delivery() {
    let broker = InProcess::start(|_| {});
    let mut sub = Client::connect(broker.addr, "sub", true);
    sub.subscribe("status/#", 1);
    let mut publisher = Client::connect(broker.addr, "pub", true);
    assert_no_alloc(broker, |lag| {
        thread::scope(|s| {
            s.spawn(|| {
                thread::sleep(lag);
                sub.receive(100_000)
            });
            for i in 0..100 {
                publisher.publish_many(&format!("status/device{i}"), 1, true, 1_000);
            }
        });
    });
}

#[test]
fn offline_queueing_for_a_persistent_session() {
    let broker = InProcess::start(|c| c.broker.max_queued_messages = 2_000);
    let mut sub = Client::connect(broker.addr, "offline", false);
    sub.subscribe("q/#", 1);
    sub.send(&[0xe0, 0]);
    let mut publisher = Client::connect(broker.addr, "pub", true);
    let addr = broker.addr;
    // Measured: publishing into the offline session's queue. Not measured: the reconnect
    // that drains it (a new connection is allowed to allocate).
    for round in 0..10 {
        if round > 0 {
            broker.measure(true);
        }
        publisher.publish_many("q/x", 1, false, 1_000);
        broker.measure(false);
        let mut again = Client::connect(addr, "offline", false);
        again.receive(1_000);
        again.send(&[0xe0, 0]);
        thread::sleep(Duration::from_millis(20));
    }
    let (allocs, frees) = broker.finish();
    assert_eq!(
        (allocs, frees),
        (0, 0),
        "allocations and frees while queueing"
    );
}

#[test]
fn device_commands_with_state_and_publish_actions() {
    let devices = gatemq::devices::decl::Devices::parse(
        r#"
[lamp]
commands.power = { type = "bool" }
commands.brightness = { type = "int", min = 0, max = 255 }
commands.colour = { type = "enum", values = ["warm", "cold"] }
[plug]
commands.power = { type = "bool", action = "publish", topic = "cmnd/plug1/POWER", state_topic = "stat/plug1/POWER" }
"#,
        "devices.toml",
        std::path::Path::new("."),
    )
    .unwrap();
    let broker = InProcess::start(|c| {
        c.devices = Some(devices);
        // Home Assistant discovery on: each result is also a "command result" event.
        c.device_options.discovery = true;
    });
    // Sees every status, state, result, event and forwarded command.
    let mut watcher = Client::connect(broker.addr, "watcher", true);
    watcher.subscribe("devices/+/+/result", 1);
    watcher.subscribe("devices/+/event", 1);
    watcher.subscribe("cmnd/#", 1);
    let mut publisher = Client::connect(broker.addr, "app", true);
    let commands: [(&str, &[u8]); 5] = [
        ("devices/lamp/power/set", b"ON"),
        ("devices/lamp/brightness/set", b"{\"value\": 200}"),
        ("devices/lamp/colour/set", b"cold"),
        ("devices/lamp/brightness/set", b"300"),
        ("devices/plug/power/set", b"OFF"),
    ];
    // 20 000 commands, 4 000 of each kind: a result and an event for each, and the forwarded
    // plug commands.
    assert_no_alloc(broker, |lag| {
        thread::scope(|s| {
            s.spawn(|| {
                thread::sleep(lag);
                watcher.receive(2 * 20_000 + 4_000)
            });
            for round in 0..200 {
                let mut out = Vec::new();
                for i in 0..100 {
                    let (topic, payload) = commands[(round * 100 + i) % commands.len()];
                    out.extend_from_slice(&publish(topic, payload, 1, false, (i + 1) as u16));
                }
                publisher.send(&out);
                let mut acks = 0;
                while acks < 100 {
                    if publisher.read().0 >> 4 == 4 {
                        acks += 1;
                    }
                }
            }
        });
    });
}

#[test]
fn device_readings_from_files() {
    // Readings: a file read by its thread (woken loop, value parsed and published with the
    // device's state), a bool that does not change, a file that cannot be read (counted, its
    // log rate-limited), and a program run once at start.
    let dir = std::env::temp_dir().join(format!("gatemq-zero-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cpu = dir.join("cpu");
    std::fs::write(&cpu, "40000\n").unwrap();
    std::fs::write(dir.join("door"), "1\n").unwrap();
    let devices = gatemq::devices::decl::Devices::parse(
        r#"
[gw]
readings.cpu = { type = "float", path = "cpu", scale = 0.001, round = 1, deadband = 0.05, every_s = 0.1, unit = "°C" }
readings.door = { type = "bool", path = "door", every_s = 0.1, payload_on = "1", payload_off = "0" }
readings.gone = { type = "int", path = "no-such-file", every_s = 0.1 }
readings.up = { type = "int", program = "/bin/echo", args = ["7"], every_s = 3600 }
commands.fan = { type = "bool" }
"#,
        "devices.toml",
        &dir,
    )
    .unwrap();
    let broker = InProcess::start(|c| {
        c.devices = Some(devices);
        c.device_options.discovery = true;
    });
    let mut watcher = Client::connect(broker.addr, "watcher", true);
    watcher.subscribe("devices/gw/cpu", 0);
    watcher.subscribe("devices/gw/state", 0);
    // Whatever the first reads published (retained or not) is skipped: from here on, only the
    // file's changes publish.
    thread::sleep(Duration::from_millis(500));
    watcher.send(&[0xc0, 0]);
    while watcher.read().0 != 0xd0 {}
    let mut value = 40_000;
    assert_no_alloc(broker, |_| {
        // Each new value in the file: read, published, and the state with it.
        for _ in 0..15 {
            value += 100;
            // Written whole (a rename), so a read never sees half of it.
            let next = dir.join("cpu.next");
            std::fs::write(&next, format!("{value}\n")).unwrap();
            std::fs::rename(&next, &cpu).unwrap();
            watcher.receive(2);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw MQTT-SN client on a UDP socket of its own (a test thread: not counted).
struct SnClient {
    s: std::net::UdpSocket,
    to: SocketAddr,
    buf: Vec<u8>,
}

impl SnClient {
    /// A source that never connects (QoS -1 publishes only).
    fn unconnected(to: SocketAddr) -> SnClient {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        SnClient {
            s,
            to,
            buf: Vec::new(),
        }
    }

    fn connect(to: SocketAddr, id: &str) -> SnClient {
        let mut c = SnClient::unconnected(to);
        let mut body = vec![0x04, 1, 0, 60];
        body.extend_from_slice(id.as_bytes());
        c.send(0x04, &body);
        assert_eq!(c.recv(), (0x05, vec![0]));
        c
    }

    fn send(&mut self, kind: u8, body: &[u8]) {
        self.buf.clear();
        self.buf.push(body.len() as u8 + 2);
        self.buf.push(kind);
        self.buf.extend_from_slice(body);
        self.s.send_to(&self.buf, self.to).unwrap();
    }

    fn recv(&mut self) -> (u8, Vec<u8>) {
        let mut d = [0u8; 2048];
        let (n, _) = self
            .s
            .recv_from(&mut d)
            .expect("a datagram from the gateway");
        assert!(n >= 2 && d[0] as usize == n, "short form");
        (d[1], d[2..n].to_vec())
    }

    fn register(&mut self, topic: &str) -> u16 {
        let mut body = vec![0, 0, 0, 1];
        body.extend_from_slice(topic.as_bytes());
        self.send(0x0A, &body);
        let (kind, b) = self.recv();
        assert_eq!((kind, b[4]), (0x0B, 0));
        u16::from_be_bytes([b[0], b[1]])
    }
}

/// MQTT-SN publishes (QoS 1 with a registered topic id, QoS 0, and QoS -1 to a predefined
/// id, from the connected sensor, which makes it its own QoS 0 publish, and from a source
/// that never connected, which is anonymous) reach an MQTT subscriber: datagram decoded,
/// topic id resolved, MQTT PUBLISH built into a reused buffer, PUBACK translated back.
#[test]
fn mqttsn_publishes_to_an_mqtt_subscriber() {
    let broker = InProcess::start(|c| {
        let mut sn = ListenerConfig::new(0, Some("127.0.0.1"));
        sn.mqttsn = Some(gatemq::mqttsn::Options {
            topics: vec![(1, "bench/predefined".into())],
            ..Default::default()
        });
        c.listeners.push(sn);
        c.broker.max_queued_messages = 10_000;
    });
    let sn_addr = broker.second_addr.expect("the MQTT-SN listener");
    let mut sub = Client::connect(broker.addr, "sub", true);
    sub.subscribe("bench/#", 1);
    let mut sensor = SnClient::connect(sn_addr, "sensor");
    let tid = sensor.register("bench/sn");
    let mut anonymous = SnClient::unconnected(sn_addr);
    let payload = [0x55u8; 32];
    // 4 000 messages: each QoS 1 one waits for its PUBACK (one in flight, as MQTT-SN has it),
    // and the QoS 0 and QoS -1 ones sent before it are handled before it.
    assert_no_alloc(broker, |lag| {
        thread::scope(|s| {
            s.spawn(|| {
                thread::sleep(lag);
                sub.receive(4_000)
            });
            let mut body = Vec::new();
            for i in 0..1_000u16 {
                for (flags, topic) in [(0x00u8, tid), (0x61, 1), (0x20, tid)] {
                    body.clear();
                    body.push(flags);
                    body.extend_from_slice(&topic.to_be_bytes());
                    body.extend_from_slice(&(i + 1).to_be_bytes());
                    body.extend_from_slice(&payload);
                    if flags == 0x61 {
                        anonymous.send(0x0C, &body);
                    }
                    sensor.send(0x0C, &body);
                }
                let (kind, b) = sensor.recv();
                assert_eq!((kind, b[4]), (0x0D, 0), "PUBACK");
            }
        });
    });
}

/// MQTT publishes reach an MQTT-SN subscriber at QoS 1 and QoS 0: the output translated into
/// datagrams (the topic registered with it once, in the warm-up), PUBACKs handed back.
#[test]
fn mqtt_publishes_to_an_mqttsn_subscriber() {
    let broker = InProcess::start(|c| {
        let mut sn = ListenerConfig::new(0, Some("127.0.0.1"));
        // A QoS 1 datagram the lagging node's full socket dropped comes again soon (and the
        // retransmission allocates nothing either).
        sn.mqttsn = Some(gatemq::mqttsn::Options {
            retry_interval: Duration::from_secs(1),
            ..Default::default()
        });
        c.listeners.push(sn);
    });
    let sn_addr = broker.second_addr.expect("the MQTT-SN listener");
    let mut node = SnClient::connect(sn_addr, "node");
    let mut body = vec![0x20, 0, 1];
    body.extend_from_slice(b"cmd/#");
    node.send(0x12, &body);
    assert_eq!(node.recv().0, 0x13, "SUBACK");
    let mut publisher = Client::connect(broker.addr, "app", true);
    // First 2 000 QoS 0 messages, then 2 000 QoS 1 ones (flow-controlled: one in flight to
    // the node, the rest queued). In the first warm-up the node is late to acknowledge the
    // REGISTER of the QoS 0 topic, so its output fills to the limit behind it: the most it
    // ever holds. (A lagging node's socket may drop QoS 0 datagrams, as UDP does: only the
    // QoS 1 ones are counted.)
    assert_no_alloc(broker, |lag| {
        thread::scope(|s| {
            s.spawn(|| {
                thread::sleep(lag);
                let mut reliable = 0;
                while reliable < 2_000 {
                    let (kind, b) = node.recv();
                    match kind {
                        // REGISTER (first message on a topic): REGACK.
                        0x0A => node.send(0x0B, &[b[0], b[1], b[2], b[3], 0]),
                        0x0C => {
                            if (b[0] >> 5) & 3 == 1 {
                                reliable += 1;
                                node.send(0x0D, &[b[1], b[2], b[3], b[4], 0]);
                            }
                        }
                        k => panic!("unexpected {k:#x}"),
                    }
                }
            });
            publisher.publish_many("cmd/buzzer", 0, false, 2_000);
            publisher.publish_many("cmd/led", 1, false, 2_000);
        });
    });
}
