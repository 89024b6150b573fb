//! Bridges, the event loop's side: when a link is due, its host name lookup and its socket.

use super::*;

impl Server {
    /// Bridges: collect finished name lookups, and connect the links that are due.
    pub(super) fn bridges_due(&mut self, now: Instant) {
        use crate::bridge::State;
        while let Some((i, result)) = self.resolver.as_ref().and_then(|r| r.take()) {
            if self.links[i].state != State::Resolving {
                continue;
            }
            match result {
                Ok(addr) => self.bridge_open(i, addr, now),
                Err(e) => {
                    log::warn!("Bridge {}: {e}", self.links[i].cfg.name);
                    self.links[i].failed(now, false);
                }
            }
        }
        if self.stopping {
            return;
        }
        for i in 0..self.links.len() {
            let State::Waiting(at) = self.links[i].state else {
                continue;
            };
            if at > now {
                continue;
            }
            let (host, port) = self.links[i].address().clone();
            match crate::bridge::literal(&host, port) {
                Some(addr) => self.bridge_open(i, addr, now),
                None => {
                    self.links[i].state = State::Resolving;
                    if let Some(r) = &self.resolver {
                        r.start(i, &host, port);
                    }
                }
            }
        }
    }

    /// Open bridge `i`'s socket to `addr` without waiting for it to connect; the broker puts
    /// the CONNECT in its output.
    pub(super) fn bridge_open(&mut self, i: usize, addr: SocketAddr, now: Instant) {
        let link = &mut self.links[i];
        let name = link.cfg.name.clone();
        log::info!("Bridge {name}: connecting to {addr}");
        let stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("Bridge {name}: cannot connect to {addr}: {}", io_reason(&e));
                return link.failed(now, false);
            }
        };
        if self.nodelay {
            let _ = stream.set_nodelay(true);
        }
        #[cfg(feature = "tls")]
        let tls = match &self.bridge_tls[i] {
            None => None,
            Some(ctx) => match tls::connect(ctx, &link.address().0) {
                Ok(t) => Some(t),
                Err(e) => {
                    log::warn!("Bridge {name}: {e}");
                    return link.failed(now, false);
                }
            },
        };
        let added = self.add_connection(Connection {
            stream,
            partial: Vec::new(),
            read_pending: false,
            listener: u16::MAX,
            bridge: Some(i as u16),
            #[cfg(feature = "tls")]
            tls,
            #[cfg(feature = "tls")]
            identified: true,
            ws: None,
        });
        let link = &mut self.links[i];
        match added {
            Ok(id) => {
                link.state = crate::bridge::State::Open(id);
                self.broker.open_bridge(id, i, Some(addr), now);
            }
            Err(e) => {
                log::warn!("Bridge {name}: cannot watch the connection: {e}");
                link.failed(now, false);
            }
        }
    }
}

/// A seed for a bridge's backoff jitter: links of gateways restarted together (a power cut)
/// should not all come back in the same second.
pub(super) fn seed(i: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64) << 20 ^ i as u64
}
