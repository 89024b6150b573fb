//! The MQTT-SN scenario: sensors publish over UDP through gatemq's MQTT-SN gateway to an MQTT
//! subscriber over TCP. Each sensor is a thread with a UDP socket of its own; at QoS 1 it waits
//! for each PUBACK (one message in flight, as MQTT-SN clients do), at QoS 0 and -1 it keeps at
//! most `WINDOW` messages not yet seen by the subscriber (UDP has no flow control: a sender
//! faster than the gateway only fills socket buffers and loses datagrams).

use crate::mqtt::{Conn, PUBLISH};
use crate::scenarios::{Ctx, Load, Meter, Res};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const SENSORS: usize = 4;
const WINDOW: u64 = 64;
/// A sensor reading: a small payload.
const PAYLOAD: &[u8] = b"{\"t\":21.5,\"h\":40}";

fn msg(kind: u8, body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(body.len() as u8 + 2);
    out.push(kind);
    out.extend_from_slice(body);
}

/// CONNECT and REGISTER `bench/sn/<i>`: the topic id.
fn connect(s: &UdpSocket, i: usize) -> Res<u16> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    let mut body = vec![0x04, 1, 0x03, 0x84]; // clean session, keep-alive 900 s
    body.extend_from_slice(format!("bench-sn-{i}").as_bytes());
    msg(0x04, &body, &mut out);
    s.send(&out)?;
    let n = s.recv(&mut buf)?;
    if buf[..n] != [3, 0x05, 0] {
        return Err(format!("sensor {i}: CONNACK expected, got {:?}", &buf[..n]).into());
    }
    let mut body = vec![0, 0, 0, 1];
    body.extend_from_slice(format!("bench/sn/{i}").as_bytes());
    msg(0x0A, &body, &mut out);
    s.send(&out)?;
    let n = s.recv(&mut buf)?;
    if n != 7 || buf[1] != 0x0B || buf[6] != 0 {
        return Err(format!("sensor {i}: REGACK expected, got {:?}", &buf[..n]).into());
    }
    Ok(u16::from_be_bytes([buf[2], buf[3]]))
}

struct Shared {
    start: Barrier,
    /// Messages of each sensor the subscriber got.
    seen: Vec<AtomicU64>,
    done: AtomicBool,
}

/// Which sensor a topic is from: `bench/sn/<i>` or the short name `s<i>`.
fn sensor_of(topic: &[u8]) -> Option<usize> {
    let d = match topic {
        [b's', d] => *d,
        t if t.starts_with(b"bench/sn/") && t.len() == 10 => t[9],
        _ => return None,
    };
    d.checked_sub(b'0')
        .map(usize::from)
        .filter(|&i| i < SENSORS)
}

pub fn mqttsn(ctx: &Ctx, sn_addr: &str, qos: i8, load: Load) -> Res<()> {
    let mut sub = Conn::open(&ctx.addr, "bench-sn-sub")?;
    sub.subscribe("bench/sn/#", 0)?;
    sub.subscribe("+", 0)?;
    sub.set_timeout(Duration::from_millis(50))?;
    let sh = Arc::new(Shared {
        start: Barrier::new(SENSORS + 2),
        seen: (0..SENSORS).map(|_| AtomicU64::new(0)).collect(),
        done: AtomicBool::new(false),
    });
    let sub_h = {
        let sh = sh.clone();
        thread::spawn(move || -> std::io::Result<()> {
            sh.start.wait();
            while !sh.done.load(SeqCst) {
                sub.pump(|first, body| {
                    if first >> 4 == PUBLISH {
                        if let Some(p) = crate::mqtt::parse_publish(first, body) {
                            if let Some(i) = sensor_of(p.topic) {
                                sh.seen[i].fetch_add(1, SeqCst);
                            }
                        }
                    }
                    false
                })?;
            }
            Ok(())
        })
    };
    let mut sensors = Vec::new();
    for i in 0..SENSORS {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect(sn_addr)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let topic = match qos {
            -1 => u16::from_be_bytes([b's', b'0' + i as u8]),
            _ => connect(&s, i)?,
        };
        let sh = sh.clone();
        sensors.push(thread::spawn(move || -> Res<(u64, u64)> {
            sensor(s, i, topic, qos, load, &sh)
        }));
    }
    sh.start.wait();
    let meter = Meter::start(ctx)?;
    let mut sent = 0;
    let mut retries = 0;
    for (i, h) in sensors.into_iter().enumerate() {
        let (n, r) = h.join().map_err(|_| format!("sensor {i} panicked"))??;
        sent += n;
        retries += r;
    }
    // What is still on its way arrives within a moment.
    let seen = |sh: &Shared| sh.seen.iter().map(|s| s.load(SeqCst)).sum::<u64>();
    let t = Instant::now();
    while seen(&sh) < sent && t.elapsed() < Duration::from_secs(1) {
        thread::sleep(Duration::from_millis(5));
    }
    let got = seen(&sh);
    let m = meter.stop(ctx)?;
    sh.done.store(true, SeqCst);
    sub_h.join().map_err(|_| "subscriber panicked")??;
    let p = match qos {
        -1 => "sn_qm1".to_string(),
        q => format!("sn_q{q}"),
    };
    ctx.put(&format!("{p}_messages"), got as f64)?;
    ctx.put(&format!("{p}_msgs_per_s"), got as f64 / m.wall)?;
    ctx.put(&format!("{p}_loss"), sent.saturating_sub(got) as f64)?;
    if qos == 1 {
        ctx.put(&format!("{p}_resent"), retries as f64)?;
    }
    meter.record(ctx, &m, &p, got as f64)?;
    Ok(())
}

/// One sensor: publishes until the load is done; returns (messages sent, resends).
fn sensor(s: UdpSocket, i: usize, topic: u16, qos: i8, load: Load, sh: &Shared) -> Res<(u64, u64)> {
    let (flags, count, deadline) = {
        let f = match qos {
            -1 => 0x62, // QoS -1, short topic name
            0 => 0x00,  // QoS 0, normal topic id
            _ => 0x20,  // QoS 1, normal topic id
        };
        sh.start.wait();
        match load {
            Load::Count(n) => (f, n / SENSORS as u64, None),
            Load::Time(d) => (f, u64::MAX, Some(Instant::now() + d)),
        }
    };
    let mut out = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    let (mut sent, mut resent, mut lost) = (0u64, 0u64, 0u64);
    let mut stalled = Instant::now();
    let mut last_seen = 0;
    while sent < count && deadline.is_none_or(|d| Instant::now() < d) {
        let msg_id = (sent % 65535 + 1) as u16;
        let mut body = [0u8; 5 + PAYLOAD.len()];
        body[0] = flags;
        body[1..3].copy_from_slice(&topic.to_be_bytes());
        if qos == 1 {
            body[3..5].copy_from_slice(&msg_id.to_be_bytes());
        }
        body[5..].copy_from_slice(PAYLOAD);
        msg(0x0C, &body, &mut out);
        if qos == 1 {
            // One in flight: PUBACK, or the same message again with DUP.
            loop {
                s.send(&out)?;
                match s.recv(&mut buf) {
                    Ok(7) if buf[1] == 0x0D && buf[4..6] == msg_id.to_be_bytes() => break,
                    Ok(_) => {}
                    Err(_) => {
                        resent += 1;
                        out[2] |= 0x80;
                    }
                }
            }
        } else {
            // Window: at most WINDOW not yet seen by the subscriber (those not seen after a
            // quiet 200 ms are counted lost, and the window moves on).
            loop {
                let seen = sh.seen[i].load(SeqCst);
                if seen != last_seen {
                    last_seen = seen;
                    stalled = Instant::now();
                }
                // Readings counted lost may arrive after all (without this, sent - seen -
                // lost wrapped and the sensor stood still for 200 ms).
                lost = lost.min(sent - seen);
                if sent - seen - lost < WINDOW {
                    break;
                }
                if stalled.elapsed() > Duration::from_millis(200) {
                    lost = sent - seen;
                    stalled = Instant::now();
                    break;
                }
                thread::yield_now();
            }
            s.send(&out)?;
        }
        sent += 1;
    }
    Ok((sent, resent))
}
