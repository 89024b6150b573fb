//! Shared helpers for the black-box integration tests: a `Broker` process on an ephemeral
//! port, a raw MQTT client over a `TcpStream`, and hand-built packets.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatemq");

/// How long a read waits before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the broker gets to close a connection it should close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long we listen to be sure that nothing (more) arrives.
pub const QUIET: Duration = Duration::from_millis(400);

/// A path in the temp directory that no other test (or test process) uses.
pub fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "gatemq-test-{}-{n}-{nanos}-{tag}",
        std::process::id()
    ))
}

/// Write `text` to a fresh temp file and return its path.
pub fn write_temp(tag: &str, text: &str) -> PathBuf {
    let p = temp_path(tag);
    fs::write(&p, text).expect("write temp file");
    p
}

/// A gatemq process. Killed (and its temp files removed) on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    conf: Option<PathBuf>,
    log: PathBuf,
}

impl Broker {
    /// A broker on an ephemeral 127.0.0.1 port, with `extra` config lines.
    pub fn start(extra: &str) -> Broker {
        let conf = write_temp(
            "broker.conf",
            &format!("listener 0 127.0.0.1\nallow_anonymous true\nsys_interval 0\n{extra}\n"),
        );
        let mut b = Broker::spawn(&["-c".as_ref(), conf.as_os_str()], None);
        b.conf = Some(conf);
        b
    }

    /// Spawn gatemq with `args` and wait for its "listening on 127.0.0.1:PORT" line. With
    /// `want_port`, that must be the port.
    pub fn spawn(args: &[&std::ffi::OsStr], want_port: Option<u16>) -> Broker {
        let log = temp_path("stderr.log");
        let err = fs::File::create(&log).expect("create log file");
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn gatemq");
        let mut b = Broker {
            child,
            port: 0,
            conf: None,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = b.log();
            if let Some(port) = listening_port(&text) {
                if let Some(want) = want_port {
                    assert_eq!(port, want, "listening on the wrong port:\n{text}");
                }
                b.port = port;
                return b;
            }
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("gatemq exited ({status}) before listening:\n{text}");
            }
            if Instant::now() > deadline {
                panic!("gatemq did not log 'listening on' within 5 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything the broker wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A raw TCP connection to the broker (no CONNECT sent yet).
    pub fn raw(&self) -> Raw {
        Raw::open(self.port)
    }

    /// A raw client that sent CONNECT (clean session) and got CONNACK accepted.
    #[track_caller]
    pub fn client(&self, client_id: &str) -> Raw {
        let mut c = self.raw();
        c.connect_ok(client_id, true);
        c
    }

    /// Send a signal with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Wait up to `timeout` for the broker to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Panic (with the log) if the broker process is gone.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("gatemq exited ({st}):\n{}", self.log());
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- gatemq log ----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
        if let Some(c) = &self.conf {
            let _ = fs::remove_file(c);
        }
    }
}

/// The port of the first "listening on 127.0.0.1:PORT" log line.
pub fn listening_port(log: &str) -> Option<u16> {
    let line = log
        .lines()
        .find(|l| l.contains("listening on 127.0.0.1:"))?;
    let rest = &line[line.find("listening on 127.0.0.1:")? + "listening on 127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The result of running gatemq to completion.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run gatemq with `args`; kill it and panic if it has not exited within 5 s.
pub fn run(args: &[&std::ffi::OsStr]) -> Run {
    let out = temp_path("stdout");
    let err = temp_path("stderr");
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn gatemq");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gatemq {args:?} still running after 5 s; stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let r = Run {
        code: status.code(),
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    };
    let _ = fs::remove_file(&out);
    let _ = fs::remove_file(&err);
    r
}

pub fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

pub fn path_os(p: &Path) -> &std::ffi::OsStr {
    p.as_os_str()
}

// ---------------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------------

/// One packet as received: the first byte of the fixed header and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    pub header: u8,
    pub body: Vec<u8>,
}

impl Pkt {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }
    /// The whole packet re-encoded (fixed header included), for byte comparisons.
    pub fn bytes(&self) -> Vec<u8> {
        packet(self.header, &self.body)
    }
    /// This packet as a PUBLISH; panics if it is not one.
    #[track_caller]
    pub fn publish(&self) -> RxPublish {
        assert_eq!(
            self.kind(),
            3,
            "expected PUBLISH, got {:02x?}",
            self.bytes()
        );
        let qos = (self.header >> 1) & 3;
        let tlen = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let topic = String::from_utf8(self.body[2..2 + tlen].to_vec()).expect("utf-8 topic");
        let mut pos = 2 + tlen;
        let id = if qos > 0 {
            pos += 2;
            u16::from_be_bytes([self.body[pos - 2], self.body[pos - 1]])
        } else {
            0
        };
        RxPublish {
            topic,
            payload: self.body[pos..].to_vec(),
            qos,
            retain: self.header & 1 != 0,
            dup: self.header & 8 != 0,
            id,
        }
    }
}

/// A decoded PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxPublish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub id: u16,
}

pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    pub fn open(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the broker");
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let _ = s.set_nodelay(true);
        Raw { s }
    }

    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to the broker");
    }

    /// Send, ignoring errors (the broker may already have closed the socket).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    /// Read exactly `buf.len()` bytes; `Err` describes EOF/timeout/error.
    fn read_exact_or(&mut self, buf: &mut [u8]) -> Result<(), String> {
        let mut got = 0;
        while got < buf.len() {
            match self.s.read(&mut buf[got..]) {
                Ok(0) => return Err(format!("connection closed after {got} bytes")),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read failed after {got} bytes: {e}")),
            }
        }
        Ok(())
    }

    fn read_packet_inner(&mut self) -> Result<Pkt, String> {
        let mut h = [0u8; 1];
        self.read_exact_or(&mut h)?;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let mut b = [0u8; 1];
            self.read_exact_or(&mut b)?;
            len |= ((b[0] & 0x7f) as usize) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                return Err("remaining length longer than 4 bytes".into());
            }
        }
        let mut body = vec![0u8; len];
        self.read_exact_or(&mut body)?;
        Ok(Pkt { header: h[0], body })
    }

    /// Read one packet, or panic (after READ_TIMEOUT at most).
    #[track_caller]
    pub fn read_packet(&mut self) -> Pkt {
        self.s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        match self.read_packet_inner() {
            Ok(p) => p,
            Err(e) => panic!("expected a packet from the broker: {e}"),
        }
    }

    /// Read one packet if one starts arriving within `wait`.
    #[track_caller]
    pub fn try_read_packet(&mut self, wait: Duration) -> Option<Pkt> {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut h = [0u8; 1];
        let first = match self.s.peek(&mut h) {
            Ok(0) => None,
            Ok(_) => Some(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("read failed: {e}"),
        };
        self.s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        first.map(|_| self.read_packet())
    }

    /// Assert that nothing arrives for a while (the connection may be open or closed,
    /// but no bytes may come).
    #[track_caller]
    pub fn expect_silence(&mut self, wait: Duration) {
        if let Some(p) = self.try_read_packet(wait) {
            panic!("expected nothing from the broker, got {:02x?}", p.bytes());
        }
    }

    /// Read a PUBLISH (panics on anything else).
    #[track_caller]
    pub fn read_publish(&mut self) -> RxPublish {
        self.read_packet().publish()
    }

    /// Assert that the broker closes the connection within CLOSE_TIMEOUT without sending
    /// anything (more).
    #[track_caller]
    pub fn expect_closed(&mut self) {
        self.expect_closed_within(CLOSE_TIMEOUT);
    }

    /// Assert that the broker closes the connection within `limit` without sending anything.
    #[track_caller]
    pub fn expect_closed_within(&mut self, limit: Duration) {
        self.s.set_read_timeout(Some(limit)).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => panic!(
                    "expected the broker to close the connection, it sent {:02x?}",
                    &buf[..n]
                ),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "the broker did not close the connection within {:?}",
                        start.elapsed()
                    )
                }
                Err(e) => panic!("unexpected read error while waiting for close: {e}"),
            }
        }
    }

    /// Send CONNECT (3.1.1, keep-alive 60) and expect CONNACK accepted; returns the
    /// session-present flag.
    #[track_caller]
    pub fn connect_ok(&mut self, client_id: &str, clean: bool) -> bool {
        self.send(&connect(client_id, clean, 60, None, None, None));
        let p = self.read_packet();
        assert_eq!(p.header, 0x20, "expected CONNACK, got {:02x?}", p.bytes());
        assert_eq!(p.body.len(), 2, "CONNACK length: {:02x?}", p.bytes());
        assert_eq!(p.body[1], 0, "CONNACK refused: {:02x?}", p.bytes());
        assert!(p.body[0] <= 1, "CONNACK flags: {:02x?}", p.bytes());
        p.body[0] == 1
    }

    /// SUBSCRIBE and expect a SUBACK granting exactly `want` codes.
    #[track_caller]
    pub fn subscribe(&mut self, id: u16, filters: &[(&str, u8)], want: &[u8]) {
        self.send(&subscribe(id, filters));
        let p = self.read_packet();
        let mut expected = vec![(id >> 8) as u8, id as u8];
        expected.extend_from_slice(want);
        assert_eq!(
            (p.header, p.body.clone()),
            (0x90, expected),
            "SUBACK for {filters:?}"
        );
    }

    /// PINGREQ and expect PINGRESP.
    #[track_caller]
    pub fn ping(&mut self) {
        self.send(&pingreq());
        let p = self.read_packet();
        assert_eq!(p.bytes(), vec![0xd0, 0x00], "expected PINGRESP");
    }

    /// Close the write side (like a client that stops sending).
    pub fn shutdown_write(&self) {
        let _ = self.s.shutdown(Shutdown::Write);
    }
}

// ---------------------------------------------------------------------------------------
// Witness: a well-behaved client that proves the broker still works.
// ---------------------------------------------------------------------------------------

/// A client connected and subscribed before a misbehaving client does its thing; afterwards
/// `round_trip` checks that it can still publish to itself and receive the message.
pub struct Witness {
    c: Raw,
    topic: String,
    n: u16,
}

impl Witness {
    #[track_caller]
    pub fn new(b: &Broker) -> Witness {
        let mut c = b.client("witness");
        let topic = "witness/topic".to_string();
        c.subscribe(1, &[(&topic, 1)], &[1]);
        Witness { c, topic, n: 1 }
    }

    #[track_caller]
    pub fn round_trip(&mut self) {
        self.n += 1;
        let payload = format!("still alive {}", self.n);
        self.c.send(&publish(
            &self.topic,
            payload.as_bytes(),
            1,
            false,
            false,
            self.n,
        ));
        // Our PUBACK and the routed PUBLISH, in either order.
        let mut got_ack = false;
        let mut got_msg = false;
        for _ in 0..2 {
            let p = self.c.read_packet();
            match p.kind() {
                4 => {
                    assert_eq!(p.bytes(), puback(self.n), "witness PUBACK");
                    got_ack = true;
                }
                3 => {
                    let m = p.publish();
                    assert_eq!(m.topic, self.topic);
                    assert_eq!(m.payload, payload.as_bytes());
                    assert_eq!(m.qos, 1);
                    self.c.send(&puback(m.id));
                    got_msg = true;
                }
                _ => panic!("witness got an unexpected packet {:02x?}", p.bytes()),
            }
        }
        assert!(got_ack && got_msg, "witness round trip incomplete");
        self.c.ping();
    }
}

// ---------------------------------------------------------------------------------------
// Packet builders
// ---------------------------------------------------------------------------------------

pub fn varint(mut n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    loop {
        let mut b = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        v.push(b);
        if n == 0 {
            return v;
        }
    }
}

/// A whole packet: first byte, Remaining Length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend(varint(body.len()));
    v.extend_from_slice(body);
    v
}

/// A length-prefixed string or binary field.
pub fn field(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
}

/// CONNECT with every part spelled out: protocol name, level, raw flags byte, keep-alive and
/// the payload fields in order.
pub fn connect_raw(name: &[u8], level: u8, flags: u8, keepalive: u16, fields: &[&[u8]]) -> Vec<u8> {
    let mut body = field(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keepalive.to_be_bytes());
    for f in fields {
        body.extend(field(f));
    }
    packet(0x10, &body)
}

/// A well-formed 3.1.1 CONNECT.
pub fn connect(
    client_id: &str,
    clean: bool,
    keepalive: u16,
    will: Option<Will>,
    user: Option<&str>,
    pass: Option<&[u8]>,
) -> Vec<u8> {
    connect_level(b"MQTT", 4, client_id, clean, keepalive, will, user, pass)
}

#[allow(clippy::too_many_arguments)]
pub fn connect_level(
    name: &[u8],
    level: u8,
    client_id: &str,
    clean: bool,
    keepalive: u16,
    will: Option<Will>,
    user: Option<&str>,
    pass: Option<&[u8]>,
) -> Vec<u8> {
    let mut flags = 0u8;
    let mut fields: Vec<&[u8]> = vec![client_id.as_bytes()];
    if clean {
        flags |= 0x02;
    }
    if let Some(w) = &will {
        flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
        fields.push(w.topic.as_bytes());
        fields.push(w.payload);
    }
    if let Some(u) = user {
        flags |= 0x80;
        fields.push(u.as_bytes());
    }
    if let Some(p) = pass {
        flags |= 0x40;
        fields.push(p);
    }
    connect_raw(name, level, flags, keepalive, &fields)
}

/// PUBLISH with a raw topic (may be invalid on purpose).
pub fn publish_raw(
    topic: &[u8],
    payload: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    id: u16,
) -> Vec<u8> {
    let first = 0x30 | (dup as u8) << 3 | (qos & 3) << 1 | retain as u8;
    let mut body = field(topic);
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

pub fn publish(topic: &str, payload: &[u8], qos: u8, retain: bool, dup: bool, id: u16) -> Vec<u8> {
    publish_raw(topic.as_bytes(), payload, qos, retain, dup, id)
}

/// SUBSCRIBE with (filter, requested QoS byte) pairs; the byte is sent as given.
pub fn subscribe(id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for (f, q) in filters {
        body.extend(field(f.as_bytes()));
        body.push(*q);
    }
    packet(0x82, &body)
}

pub fn unsubscribe(id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for f in filters {
        body.extend(field(f.as_bytes()));
    }
    packet(0xa2, &body)
}

fn ack(first: u8, id: u16) -> Vec<u8> {
    packet(first, &id.to_be_bytes())
}

pub fn puback(id: u16) -> Vec<u8> {
    ack(0x40, id)
}
pub fn pubrec(id: u16) -> Vec<u8> {
    ack(0x50, id)
}
pub fn pubrel(id: u16) -> Vec<u8> {
    ack(0x62, id)
}
pub fn pubcomp(id: u16) -> Vec<u8> {
    ack(0x70, id)
}
pub fn unsuback(id: u16) -> Vec<u8> {
    ack(0xb0, id)
}
pub fn pingreq() -> Vec<u8> {
    vec![0xc0, 0x00]
}
pub fn disconnect() -> Vec<u8> {
    vec![0xe0, 0x00]
}
