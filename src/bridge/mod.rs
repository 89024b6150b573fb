//! Bridges to upstream brokers, the socket side (the protocol side is `broker::bridge`): when
//! to connect, to which address, with what backoff, and the name lookup that must not block
//! the loop.
//!
//! A bridge is one more connection of the same event loop. Its socket is opened without
//! blocking (`connect` returns at once; the CONNECT waits in the output until the socket is
//! writable), a lost or refused link is tried again after `restart_timeout` (jittered
//! exponential backoff between a base and a cap, as Mosquitto does), and with several
//! addresses each failure moves on to the next one. A host name is looked up on a short-lived
//! thread that wakes the loop when done: `getaddrinfo` can block for many seconds exactly
//! when the uplink is down, and the LAN must be served meanwhile.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The socket side of one `connection` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeLink {
    pub name: String,
    /// `address host[:port] ...`: tried in turn, the next one after each failure.
    pub addresses: Vec<(String, u16)>,
    /// `restart_timeout base [cap]`: a constant delay, or jittered backoff up to `cap`.
    pub restart_base: Duration,
    pub restart_cap: Option<Duration>,
    /// `round_robin false` (the default): after a failover, go back to the first address
    /// at the next reconnection.
    pub round_robin: bool,
    pub tls: BridgeTls,
    /// The config line of the `connection`, for errors.
    pub line: usize,
}

/// `bridge_cafile`, `bridge_capath`, `bridge_certfile`, `bridge_keyfile`, `bridge_insecure`,
/// `bridge_tls_version`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BridgeTls {
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// Do not check that the server certificate names the host.
    pub insecure: bool,
    pub min_version: Option<u8>,
}

impl BridgeTls {
    /// TLS is on when a CA to check the upstream against is named (Mosquitto's rule).
    pub fn enabled(&self) -> bool {
        self.cafile.is_some() || self.capath.is_some()
    }
}

/// Where a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connect at this time.
    Waiting(Instant),
    /// A host name lookup is running.
    Resolving,
    /// The socket is open (connecting, or up): connection slot.
    Open(usize),
}

/// One bridge's link state in the event loop.
pub struct Link {
    pub cfg: BridgeLink,
    pub state: State,
    /// Failures since the link was last up (sets the backoff).
    attempts: u32,
    /// Index into `cfg.addresses` of the address to try next.
    address: usize,
    rng: u64,
}

impl Link {
    pub fn new(cfg: BridgeLink, now: Instant, seed: u64) -> Self {
        Link {
            cfg,
            state: State::Waiting(now),
            attempts: 0,
            address: 0,
            rng: seed | 1,
        }
    }

    /// The address to connect to now: host and port.
    pub fn address(&self) -> &(String, u16) {
        &self.cfg.addresses[self.address % self.cfg.addresses.len()]
    }

    /// When the loop must wake for this link.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Waiting(t) => Some(t),
            _ => None,
        }
    }

    /// The link ended or could not be made; `was_up` if it had been accepted upstream.
    pub fn failed(&mut self, now: Instant, was_up: bool) {
        if was_up {
            self.attempts = 0;
            if !self.cfg.round_robin {
                self.address = 0;
            }
        } else {
            // Failover: the next address.
            self.address = (self.address + 1) % self.cfg.addresses.len();
        }
        self.attempts = self.attempts.saturating_add(1);
        let delay = self.backoff();
        log::info!(
            "Bridge {}: connecting again in {:.1} s",
            self.cfg.name,
            delay.as_secs_f64()
        );
        self.state = State::Waiting(now + delay);
    }

    /// Mosquitto's `restart_timeout`: one value is a constant delay; `base cap` is backoff
    /// with "full jitter": a random delay between base and min(cap, base * 2^attempts).
    fn backoff(&mut self) -> Duration {
        let base = self.cfg.restart_base;
        let Some(cap) = self.cfg.restart_cap else {
            return base;
        };
        let shift = self.attempts.min(16);
        let top = base.saturating_mul(1 << shift).min(cap).max(base);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = (top - base).as_millis() as u64;
        base + Duration::from_millis(if span == 0 { 0 } else { self.rng % (span + 1) })
    }
}

/// The address of `host` when it is an IP literal (no lookup needed).
pub fn literal(host: &str, port: u16) -> Option<SocketAddr> {
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

/// Name lookups for bridge addresses, off the loop's thread.
pub struct Resolver {
    waker: Arc<mio::Waker>,
    done_tx: mpsc::Sender<(usize, Result<SocketAddr, String>)>,
    done_rx: mpsc::Receiver<(usize, Result<SocketAddr, String>)>,
}

impl Resolver {
    pub fn new(waker: Arc<mio::Waker>) -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        Resolver {
            waker,
            done_tx,
            done_rx,
        }
    }

    /// Look `host` up for link `link`; the answer comes from [`Resolver::take`] after the
    /// loop is woken.
    pub fn start(&self, link: usize, host: &str, port: u16) {
        let (host, tx, waker) = (host.to_string(), self.done_tx.clone(), self.waker.clone());
        let spawned = std::thread::Builder::new()
            .name("gatemq-resolve".into())
            .spawn(move || {
                let result = match (host.as_str(), port).to_socket_addrs() {
                    // IPv4 first: a gateway's uplink often has no IPv6 route.
                    Ok(addrs) => {
                        let addrs: Vec<_> = addrs.collect();
                        addrs
                            .iter()
                            .find(|a| a.is_ipv4())
                            .or(addrs.first())
                            .copied()
                            .ok_or_else(|| format!("{host} has no address"))
                    }
                    Err(e) => Err(format!("cannot resolve {host}: {e}")),
                };
                let _ = tx.send((link, result));
                let _ = waker.wake();
            });
        if let Err(e) = spawned {
            let _ = self
                .done_tx
                .send((link, Err(format!("cannot start a lookup: {e}"))));
            let _ = self.waker.wake();
        }
    }

    /// A finished lookup, if any.
    pub fn take(&self) -> Option<(usize, Result<SocketAddr, String>)> {
        self.done_rx.try_recv().ok()
    }
}

/// The host name this machine goes by (Mosquitto's default remote client id starts with it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gatemq".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(base: u64, cap: Option<u64>) -> Link {
        let cfg = BridgeLink {
            name: "up".into(),
            addresses: vec![("a".into(), 1883), ("b".into(), 1884)],
            restart_base: Duration::from_secs(base),
            restart_cap: cap.map(Duration::from_secs),
            round_robin: false,
            tls: BridgeTls::default(),
            line: 1,
        };
        Link::new(cfg, Instant::now(), 42)
    }

    #[test]
    fn backoff_stays_between_base_and_cap_and_fails_over() {
        let now = Instant::now();
        let mut l = link(5, Some(30));
        for i in 0..20 {
            l.failed(now, false);
            let State::Waiting(t) = l.state else { panic!() };
            let d = t - now;
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_secs(30),
                "{d:?}"
            );
            // Each failure moves to the other address.
            assert_eq!(l.address().0, if i % 2 == 0 { "b" } else { "a" });
        }
        // Up, then lost: back to the first address and the base delay's range.
        l.failed(now, true);
        assert_eq!(l.address().0, "a");
        let mut c = link(2, None);
        c.failed(now, false);
        assert_eq!(c.state, State::Waiting(now + Duration::from_secs(2)));
    }
}
