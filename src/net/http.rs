//! `http_listener`: the gateway's own small HTTP server, off by default. `GET /metrics` is the
//! Prometheus text format, `GET /` the status page (one HTML file embedded in the binary, no
//! CDN, no build step), `GET /api/clients` and `GET /api/devices` the JSON the page lists.
//!
//! The page talks MQTT itself, over the WebSocket listener, so what it may see and command is
//! decided by the same password file and ACL as any client. The HTTP endpoints themselves are
//! not authenticated (as Prometheus exporters usually are not): the JSON holds no device
//! values, but it does list who is connected, so bind the listener where that is fine. Each
//! connection serves one request (HTTP/1.1 `Connection: close`) and is closed after the answer
//! or after 10 s.

use crate::broker::Broker;
use crate::devices::decl::{Kind, ReadingKind};
use crate::devices::json::push_str;
use mio::net::TcpStream;
use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// The status page. `/*CONFIG*/null` is replaced by the JSON of [`PageConfig`].
const PAGE: &str = include_str!("status.html");
const MAX_REQUEST: usize = 8192;
/// A connection that has not got its answer out by then is closed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What the page needs to know to reach the broker over MQTT.
pub struct PageConfig {
    /// The WebSocket listener's port (the page uses the host it was loaded from), and TLS.
    pub ws: Option<(u16, bool)>,
    /// The devices' topic prefix.
    pub prefix: String,
}

/// What `/metrics` reports beyond the broker's own counters.
pub struct Extra {
    pub persistence_bytes: Option<u64>,
    /// With persistence on: whether it is failing to write.
    pub persistence_failing: Option<bool>,
    pub uptime: Duration,
}

/// One HTTP connection.
pub struct HttpConn {
    pub stream: TcpStream,
    request: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    pub opened: Instant,
}

/// What to do with a connection after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Wait,
    Close,
}

impl HttpConn {
    pub fn new(stream: TcpStream, now: Instant) -> Self {
        HttpConn {
            stream,
            request: Vec::new(),
            out: Vec::new(),
            sent: 0,
            opened: now,
        }
    }

    /// Read the request; once it is whole, answer it from `answer`, and write.
    pub fn ready(&mut self, answer: impl FnOnce(&str, &str) -> Vec<u8>) -> Next {
        if self.out.is_empty() {
            let mut buf = [0u8; 2048];
            let mut ended = false;
            loop {
                match self.stream.read(&mut buf) {
                    // The client may half-close after its request: answer what came.
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => self.request.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return Next::Close,
                }
                if self.request.len() > MAX_REQUEST {
                    break;
                }
            }
            match head(&self.request) {
                Some(Ok((method, path))) => self.out = answer(method, path),
                Some(Err(status)) => self.out = response(status, "text/plain", status.as_bytes()),
                None if self.request.len() > MAX_REQUEST => {
                    self.out = response("431 Request Header Fields Too Large", "text/plain", b"")
                }
                None if ended => return Next::Close,
                None => return Next::Wait,
            }
        }
        match self.write() {
            Ok(true) => Next::Close,
            Ok(false) => Next::Wait,
            Err(_) => Next::Close,
        }
    }

    /// Write the answer; true once all of it is out.
    fn write(&mut self) -> io::Result<bool> {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Ok(true),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// The request line of a whole request head: (method, path), or the error status to answer.
fn head(req: &[u8]) -> Option<Result<(&str, &str), &'static str>> {
    let end = req.windows(4).position(|w| w == b"\r\n\r\n")?;
    let Ok(text) = std::str::from_utf8(&req[..end]) else {
        return Some(Err("400 Bad Request"));
    };
    let line = text.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") => Some(Ok((m, p))),
        _ => Some(Err("400 Bad Request")),
    }
}

/// Answer one request.
pub fn answer(method: &str, path: &str, b: &Broker, page: &PageConfig, extra: &Extra) -> Vec<u8> {
    if method != "GET" && method != "HEAD" {
        return response("405 Method Not Allowed", "text/plain", b"GET only\n");
    }
    let path = path.split('?').next().unwrap_or("");
    let mut r = match path {
        "/" | "/index.html" => response("200 OK", "text/html; charset=utf-8", &status_page(page)),
        "/metrics" => response(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(b, extra).as_bytes(),
        ),
        "/api/clients" => response("200 OK", "application/json", &clients(b)),
        "/api/devices" => response("200 OK", "application/json", &devices(b)),
        _ => response("404 Not Found", "text/plain", b"not found\n"),
    };
    if method == "HEAD" {
        if let Some(end) = r.windows(4).position(|w| w == b"\r\n\r\n") {
            r.truncate(end + 4);
        }
    }
    r
}

fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn status_page(page: &PageConfig) -> Vec<u8> {
    let mut cfg = Vec::new();
    cfg.extend_from_slice(b"{\"ws_port\":");
    match page.ws {
        Some((port, _)) => cfg.extend_from_slice(port.to_string().as_bytes()),
        None => cfg.extend_from_slice(b"null"),
    }
    cfg.extend_from_slice(b",\"ws_tls\":");
    cfg.extend_from_slice(if page.ws.is_some_and(|w| w.1) {
        b"true"
    } else {
        b"false"
    });
    cfg.extend_from_slice(b",\"prefix\":");
    push_str(&mut cfg, &page.prefix);
    cfg.push(b'}');
    // Inside a <script>: no "</" may end it early.
    let cfg = String::from_utf8_lossy(&cfg).replace('<', "\\u003c");
    PAGE.replacen("/*CONFIG*/null", &cfg, 1).into_bytes()
}

/// `[{"client_id":..,"address":..,"protocol":..,"bridge":..,"asleep":..,"queued":..,"inflight":..}]`
/// (`protocol` is "5.0", "3.1.1", "3.1" or "MQTT-SN 1.2"; `asleep`: a sleeping MQTT-SN client)
fn clients(b: &Broker) -> Vec<u8> {
    let mut out = b"[".to_vec();
    b.for_each_client(|c| {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"client_id\":");
        push_str(&mut out, c.client_id);
        out.extend_from_slice(b",\"address\":");
        match c.peer {
            Some(p) => push_str(&mut out, &p.to_string()),
            None => out.extend_from_slice(b"null"),
        }
        let version = match c.protocol {
            _ if c.mqttsn => "MQTT-SN 1.2",
            5 => "5.0",
            4 => "3.1.1",
            _ => "3.1",
        };
        let _ = write!(
            Bytes(&mut out),
            ",\"protocol\":\"{version}\",\"bridge\":{},\"asleep\":{},\"queued\":{},\"inflight\":{}}}",
            c.bridge,
            c.asleep,
            c.queued,
            c.inflight
        );
    });
    out.push(b']');
    out
}

/// `{"prefix":..,"devices":[{"id":..,"name":..,"commands":[{"name":..,"type":..,...}],
/// "readings":[{"name":..,"type":..,"unit":..,"every_s":..}]}]}`
fn devices(b: &Broker) -> Vec<u8> {
    let mut out = b"{\"prefix\":".to_vec();
    let Some(ex) = b.devices() else {
        out.extend_from_slice(b"null,\"devices\":[]}");
        return out;
    };
    push_str(&mut out, &ex.options().prefix);
    out.extend_from_slice(b",\"devices\":");
    array(&mut out, ex.declared(), |out, d| {
        out.extend_from_slice(b"{\"id\":");
        push_str(out, &d.id);
        out.extend_from_slice(b",\"name\":");
        push_str(out, &d.name);
        out.extend_from_slice(b",\"commands\":");
        array(out, &d.commands, |out, c| {
            out.extend_from_slice(b"{\"name\":");
            push_str(out, &c.name);
            let o = &mut Bytes(out);
            let _ = match &c.kind {
                Kind::Bool => write!(o, ",\"type\":\"bool\""),
                Kind::Int { min, max } => {
                    write!(o, ",\"type\":\"int\",\"min\":{min},\"max\":{max}")
                }
                Kind::Float { min, max, step, .. } => write!(
                    o,
                    ",\"type\":\"float\",\"min\":{min},\"max\":{max},\"step\":{}",
                    step.map_or("null".to_string(), |s| s.to_string())
                ),
                Kind::Str { max_len } => write!(o, ",\"type\":\"string\",\"max_length\":{max_len}"),
                Kind::Trigger => write!(o, ",\"type\":\"trigger\""),
                Kind::Enum { values } => {
                    out.extend_from_slice(b",\"type\":\"enum\",\"values\":");
                    array(out, values, |out, v| push_str(out, v));
                    Ok(())
                }
            };
            out.push(b'}');
        });
        out.extend_from_slice(b",\"readings\":");
        array(out, &d.readings, |out, r| {
            out.extend_from_slice(b"{\"name\":");
            push_str(out, &r.name);
            out.extend_from_slice(b",\"type\":");
            push_str(
                out,
                match r.kind {
                    ReadingKind::Float => "float",
                    ReadingKind::Int => "int",
                    ReadingKind::Bool => "bool",
                    ReadingKind::Str => "string",
                },
            );
            if let Some((_, unit)) = r.ha.iter().find(|(k, _)| *k == "unit_of_measurement") {
                out.extend_from_slice(b",\"unit\":");
                push_str(out, unit);
            }
            let _ = write!(Bytes(out), ",\"every_s\":{}", r.every.as_secs_f64());
            out.push(b'}');
        });
        out.push(b'}');
    });
    out.push(b'}');
    out
}

/// A JSON array of `items`, each written by `f`, comma-separated.
fn array<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut f: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        f(out, item);
    }
    out.push(b']');
}

/// `fmt::Write` into a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The Prometheus text format (version 0.0.4).
pub fn metrics(b: &Broker, extra: &Extra) -> String {
    let s = b.stats();
    let mut m = String::with_capacity(4096);
    let mut one = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            m,
            "# HELP gatemq_{name} {help}\n# TYPE gatemq_{name} {kind}\ngatemq_{name} {value}"
        );
    };
    one(
        "uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        extra.uptime.as_secs(),
    );
    one(
        "clients_connected",
        "gauge",
        "Clients connected now (bridge links included).",
        s.clients_connected as u64,
    );
    one(
        "clients_maximum",
        "gauge",
        "Most clients connected at once.",
        s.clients_maximum as u64,
    );
    one(
        "sessions",
        "gauge",
        "Sessions kept, online or not.",
        b.session_count() as u64,
    );
    one(
        "subscriptions",
        "gauge",
        "Subscriptions in the topic table.",
        b.subscription_count() as u64,
    );
    one(
        "retained_messages",
        "gauge",
        "Retained messages.",
        b.retained_count() as u64,
    );
    one(
        "messages_received_total",
        "counter",
        "MQTT packets received.",
        s.messages_received,
    );
    one(
        "messages_sent_total",
        "counter",
        "MQTT packets sent.",
        s.messages_sent,
    );
    one(
        "publish_received_total",
        "counter",
        "PUBLISH packets received.",
        s.publish_received,
    );
    one(
        "publish_sent_total",
        "counter",
        "PUBLISH packets sent.",
        s.publish_sent,
    );
    one(
        "bytes_received_total",
        "counter",
        "Bytes received from clients.",
        s.bytes_received,
    );
    one(
        "bytes_sent_total",
        "counter",
        "Bytes sent to clients.",
        s.bytes_sent,
    );
    let (queued, inflight, queued_bytes) = b.queue_depths();
    one(
        "queued_messages",
        "gauge",
        "Messages queued for sessions, online or not.",
        queued as u64,
    );
    one(
        "inflight_messages",
        "gauge",
        "QoS 1/2 messages sent and not yet acknowledged.",
        inflight as u64,
    );
    one(
        "queued_bytes",
        "gauge",
        "Payload bytes of the queued messages.",
        queued_bytes as u64,
    );
    if let Some(n) = extra.persistence_bytes {
        one(
            "persistence_bytes_written_total",
            "counter",
            "Bytes written to the journal and snapshots.",
            n,
        );
    }
    if let Some(failing) = extra.persistence_failing {
        one(
            "persistence_failing",
            "gauge",
            "1 while the journal cannot be written (acknowledgements of messages to keep are held).",
            failing as u64,
        );
        one(
            "persistence_held_connections",
            "gauge",
            "Publishers whose acknowledgements wait for the journal.",
            b.held_connections() as u64,
        );
    }
    let d = &s.dropped;
    let _ = writeln!(m, "# HELP gatemq_publish_dropped_total Messages dropped, by reason.\n# TYPE gatemq_publish_dropped_total counter");
    for (reason, n) in [
        ("queue_full", d.queue_full),
        ("too_large", d.too_large),
        ("expired", d.expired),
        ("message_size_limit", d.size_limit),
        ("bridge_link_down", d.link_down),
    ] {
        let _ = writeln!(m, "gatemq_publish_dropped_total{{reason=\"{reason}\"}} {n}");
    }
    if let Some(sn) = b.mqttsn_stats() {
        for (name, kind, help, v) in [
            (
                "mqttsn_clients_connected",
                "gauge",
                "MQTT-SN clients connected (active, asleep or awake).",
                sn.clients_connected,
            ),
            (
                "mqttsn_clients_asleep",
                "gauge",
                "MQTT-SN clients asleep (their messages are kept).",
                sn.clients_asleep,
            ),
            (
                "mqttsn_clients_refused_total",
                "counter",
                "MQTT-SN CONNECTs refused at the listener's or a source's client limit.",
                sn.refused_limit,
            ),
            (
                "mqttsn_clients_lost_total",
                "counter",
                "MQTT-SN clients lost after their retransmissions went unanswered.",
                sn.lost,
            ),
            (
                "mqttsn_clients_evicted_total",
                "counter",
                "MQTT-SN clients with keep-alive 0 evicted, after mqttsn_idle_evict seconds of silence, to make room for a new one.",
                sn.evicted_idle,
            ),
            (
                "mqttsn_datagrams_received_total",
                "counter",
                "MQTT-SN datagrams received.",
                sn.datagrams_received,
            ),
            (
                "mqttsn_datagrams_sent_total",
                "counter",
                "MQTT-SN datagrams sent.",
                sn.datagrams_sent,
            ),
            (
                "mqttsn_bytes_received_total",
                "counter",
                "MQTT-SN bytes received (UDP payloads).",
                sn.bytes_received,
            ),
            (
                "mqttsn_bytes_sent_total",
                "counter",
                "MQTT-SN bytes sent (UDP payloads).",
                sn.bytes_sent,
            ),
            (
                "mqttsn_retransmissions_total",
                "counter",
                "MQTT-SN messages, REGISTERs and will requests sent again for want of an acknowledgement.",
                sn.retransmissions,
            ),
            (
                "mqttsn_duplicates_total",
                "counter",
                "Resent MQTT-SN publishes and subscribes answered without handling them again.",
                sn.duplicates,
            ),
            (
                "mqttsn_publish_qos_minus1_total",
                "counter",
                "MQTT-SN QoS -1 publishes routed.",
                sn.qos_minus1,
            ),
        ] {
            let _ = writeln!(
                m,
                "# HELP gatemq_{name} {help}\n# TYPE gatemq_{name} {kind}\ngatemq_{name} {v}"
            );
        }
        let _ = writeln!(m, "# HELP gatemq_mqttsn_dropped_total MQTT-SN datagrams and messages dropped, by reason.\n# TYPE gatemq_mqttsn_dropped_total counter");
        for (reason, n) in [
            ("malformed", sn.malformed),
            ("not_connected", sn.not_connected),
            ("unexpected", sn.unexpected),
            ("paused", sn.paused),
            ("send_failed", sn.send_failed),
            ("qos_minus1_refused", sn.qos_minus1_dropped),
            ("undeliverable", sn.dropped),
            ("register_congestion", sn.register_congestion),
            ("will_too_large", sn.will_too_large),
        ] {
            let _ = writeln!(m, "gatemq_mqttsn_dropped_total{{reason=\"{reason}\"}} {n}");
        }
    }
    if let Some(ex) = b.devices() {
        let _ = writeln!(m, "# HELP gatemq_device_commands_total Device commands, by device and result (device \"_undeclared\": for devices not declared).\n# TYPE gatemq_device_commands_total counter");
        for (id, ok, failed) in ex.command_counts() {
            let id = if id.is_empty() {
                "_undeclared".into()
            } else {
                label(id)
            };
            let _ = writeln!(
                m,
                "gatemq_device_commands_total{{device=\"{id}\",result=\"ok\"}} {ok}"
            );
            let _ = writeln!(
                m,
                "gatemq_device_commands_total{{device=\"{id}\",result=\"failed\"}} {failed}"
            );
        }
        let mut reads = ex.reading_counts().peekable();
        if reads.peek().is_some() {
            let _ = writeln!(m, "# HELP gatemq_device_reads_total Device readings taken, by device, reading and result (failed: the last value stayed).\n# TYPE gatemq_device_reads_total counter");
        }
        for (id, name, ok, failed) in reads {
            let (id, name) = (label(id), label(name));
            for (result, n) in [("ok", ok), ("failed", failed)] {
                let _ = writeln!(
                    m,
                    "gatemq_device_reads_total{{device=\"{id}\",reading=\"{name}\",result=\"{result}\"}} {n}"
                );
            }
        }
    }
    // Each family's lines together, after its HELP and TYPE.
    let mut bridges = Vec::new();
    b.for_each_bridge(|name, up, held, dropped| {
        bridges.push((label(name), up as u64, held as u64, dropped))
    });
    if !bridges.is_empty() {
        for (family, kind, help, pick) in [
            ("bridge_up", "gauge", "Whether the bridge's link is up.", 1),
            (
                "bridge_queued_messages",
                "gauge",
                "Messages a bridge holds for upstream.",
                2,
            ),
            (
                "bridge_dropped_total",
                "counter",
                "Messages a bridge could not keep.",
                3,
            ),
        ] {
            let _ = writeln!(
                m,
                "# HELP gatemq_{family} {help}\n# TYPE gatemq_{family} {kind}"
            );
            for (name, up, held, dropped) in &bridges {
                let v = [0, *up, *held, *dropped][pick];
                let _ = writeln!(m, "gatemq_{family}{{bridge=\"{name}\"}} {v}");
            }
        }
    }
    m
}

/// A label value with `\`, `"` and newlines escaped (the text format's rules).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        assert_eq!(
            head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Ok(("GET", "/metrics")))
        );
        assert_eq!(head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head(b"nonsense\r\n\r\n"), Some(Err("400 Bad Request")));
        assert_eq!(head(b"\xff\xfe\r\n\r\n"), Some(Err("400 Bad Request")));
    }

    #[test]
    fn page_config_cannot_end_the_script() {
        let page = status_page(&PageConfig {
            ws: Some((8080, false)),
            prefix: "a</script><b".into(),
        });
        let page = String::from_utf8(page).unwrap();
        assert!(
            page.contains(r#"{"ws_port":8080,"ws_tls":false,"prefix":"a\u003c/script>\u003cb"}"#)
        );
        assert_eq!(
            page.matches("</script>").count(),
            PAGE.matches("</script>").count()
        );
    }
}
