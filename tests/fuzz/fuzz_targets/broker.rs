//! The broker core with no sockets: several clients send arbitrary byte streams, interleaved
//! with time jumps, drained output and lost connections, and a declared device listens on its
//! command topics. The last connection slot is a bridge's link to an upstream broker, so its
//! bytes are what an upstream sends (CONNACK, SUBACK, PUBLISH, ...). Must never panic, and the
//! core's bookkeeping must stay consistent.
#![no_main]
use gatemq::broker::bridge::{BridgeSpec, BridgeTopic, Direction};
use gatemq::broker::{Broker, BrokerConfig};
use gatemq::devices::{decl::Devices, Executor, Options};
use gatemq::wire::frame_len;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;
const DEVICES: &str = r#"
[lamp]
commands.power = { type = "bool" }
commands.level = { type = "int", min = 0, max = 9 }
[plug]
commands.power = { type = "bool", action = "publish", topic = "cmnd/plug/POWER", state_topic = "stat/plug/POWER" }
"#;

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let cfg = BrokerConfig {
        sys_interval: if data.first().is_some_and(|b| b & 1 == 1) {
            1
        } else {
            0
        },
        max_inflight_messages: 3,
        max_queued_messages: 5,
        max_packet_size: 4096,
        output_buffer_soft: 512,
        max_topic_alias: 4,
        bridges: vec![BridgeSpec {
            name: "up".into(),
            remote_clientid: "gw.up".into(),
            local_clientid: "local.gw.up".into(),
            topics: vec![
                BridgeTopic::new("#", Direction::Out, 2, "up/", "site/up/"),
                BridgeTopic::new("#", Direction::In, 2, "down/", "site/down/"),
                BridgeTopic::new("both/#", Direction::Both, 1, "", ""),
            ],
            protocol: if data.first().is_some_and(|b| b & 2 == 2) {
                5
            } else {
                4
            },
            try_private: true,
            cleansession: false,
            local_cleansession: None,
            keepalive: 2,
            username: None,
            password: None,
            notifications: true,
            notifications_local_only: false,
            // Not under $SYS (which is not kept), so the replay check covers it.
            notification_topic: "bridges/gw.up/state".into(),
            outgoing_retain: true,
        }],
        ..BrokerConfig::default()
    };
    let sys = cfg.sys_interval;
    let mut b = Broker::new(cfg, now);
    // Persistence on: every change is journaled; at the end the journal must rebuild the
    // same state.
    b.enable_journal();
    let mut journal = Vec::new();
    let devices =
        Devices::parse(DEVICES, "devices.toml", std::path::Path::new(".")).expect("devices");
    b.set_devices(Executor::new(devices, Options::default()));
    b.start_bridges();
    let bridge = CLIENTS - 1;
    let open_conn = |b: &mut Broker, id: usize, now: Instant| match id == bridge {
        true => b.open_bridge(id, 0, None, now),
        false => b.open(id, None, 0, now),
    };
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); CLIENTS];
    let mut open = [true; CLIENTS];
    for id in 0..CLIENTS {
        open_conn(&mut b, id, now);
    }
    let mut closing = Vec::new();
    let mut i = 1;
    while i + 1 < data.len() {
        let (op, len) = (data[i], data[i + 1] as usize);
        i += 2;
        let id = (op as usize) % CLIENTS;
        match op >> 4 {
            // Time passes: keep-alives, session expiry, delayed wills, $SYS.
            0 => {
                now += Duration::from_millis(len as u64 * 250);
                b.handle_timeout(now);
            }
            // The client reads what it was sent.
            1 => {
                let n = b.output(id).len().min(len * 16);
                b.consume_output(id, n);
            }
            // The socket is lost; a new connection takes the slot.
            2 => {
                if open[id] {
                    b.release(id, now);
                }
                open_conn(&mut b, id, now);
                open[id] = true;
                pending[id].clear();
            }
            // Bytes from the client, framed as the event loop frames them.
            _ => {
                let end = (i + len).min(data.len());
                if open[id] {
                    pending[id].extend_from_slice(&data[i..end]);
                    let mut used = 0;
                    while b.is_open(id) {
                        match frame_len(&pending[id][used..], 4096) {
                            Ok(Some(f)) if used + f.total_len <= pending[id].len() => {
                                let frame = pending[id][used..used + f.total_len].to_vec();
                                b.handle_packet(id, &frame, f.header_len, now);
                                used += f.total_len;
                            }
                            Ok(_) => break,
                            Err(e) => {
                                b.frame_error(id, e, now);
                                break;
                            }
                        }
                    }
                    pending[id].drain(..used);
                }
                i = end;
            }
        }
        b.take_closing(&mut closing);
        for &c in &closing {
            b.release(c, now);
            open[c] = false;
        }
        b.take_journal(&mut journal);
    }
    for id in 0..CLIENTS {
        if open[id] {
            b.release(id, now);
        }
    }
    // Every connection is gone: only retained messages, offline sessions' queues and wills
    // may hold messages now, and the statistics must not have wrapped.
    assert_eq!(b.stats().clients_connected, 0);
    b.take_journal(&mut journal);
    let mut r = Broker::new(BrokerConfig::default(), now);
    r.enable_journal();
    r.restore(&journal, now);
    assert_eq!(
        r.session_count(),
        b.session_count(),
        "sessions after replay"
    );
    if sys == 0 {
        assert_eq!(
            r.retained_count(),
            b.retained_count(),
            "retained after replay"
        );
    }
    assert_eq!(
        r.subscription_count(),
        b.subscription_count(),
        "subscriptions after replay"
    );
    assert_eq!(
        r.session_holdings(),
        b.session_holdings(),
        "messages held after replay"
    );
});
