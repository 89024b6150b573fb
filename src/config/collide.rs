//! Two listeners that the kernel cannot both bind: found while checking the config, so
//! `--test-config`, a start and a reload name the two lines instead of failing later with a
//! bare "address already in use".

use super::{ConfigError, ListenerConfig};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Linux refuses a second listening socket on a port when its address equals the first's or
/// one of them is the wildcard that covers the other: `0.0.0.0` covers every IPv4 address and
/// `::` (dual-stack, Linux's default `bindv6only 0`) every address. Port 0 never collides.
pub(super) fn check(listeners: &[ListenerConfig], name: &str) -> Result<(), ConfigError> {
    let mut seen: Vec<(SocketAddr, &ListenerConfig)> = Vec::new();
    for l in listeners {
        let Some(addr) = resolve(l.address.as_deref(), l.port) else {
            continue;
        };
        // A UDP port (MQTT-SN) and a TCP port of the same number are different sockets.
        let udp = l.mqttsn.is_some();
        if let Some((other, first)) = seen
            .iter()
            .find(|(s, f)| f.mqttsn.is_some() == udp && overlap(*s, addr))
        {
            return Err(ConfigError(format!(
                "{}: this listener ({}) collides with the listener on {} ({}): the system cannot bind both",
                place(l, name),
                shown(addr),
                place(first, name),
                shown(*other),
            )));
        }
        seen.push((addr, l));
    }
    Ok(())
}

/// Where a listener was declared, for a person: `file:line` of its line.
fn place(l: &ListenerConfig, name: &str) -> String {
    match l.line {
        0 => "the default listener".into(),
        n => format!("{name}:{n}"),
    }
}

/// The address a listener binds, as the event loop will bind it (`None`: port 0, or a name
/// that does not resolve, which the start reports itself).
fn resolve(address: Option<&str>, port: u16) -> Option<SocketAddr> {
    if port == 0 {
        return None;
    }
    let host = address.unwrap_or("0.0.0.0");
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => (host, port).to_socket_addrs().ok()?.next()?.ip(),
    };
    Some(SocketAddr::new(ip.to_canonical(), port))
}

fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let covers = |w: IpAddr, x: IpAddr| match w {
        IpAddr::V6(v6) => v6.is_unspecified(),
        IpAddr::V4(v4) => v4.is_unspecified() && x.is_ipv4(),
    };
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

fn shown(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            format!("port {} on all IPv4 interfaces", a.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => format!("port {} on all interfaces", a.port()),
        _ => a.to_string(),
    }
}
