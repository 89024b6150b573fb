//! A reload's re-check of connected clients: the broker core decides who is still allowed
//! (`broker/access.rs`); what it cannot see, a TLS client's certificate, is checked here
//! against the listener's new TLS settings.

use super::*;
use crate::broker::{CertCheck, ConnId};
use std::time::Instant;

impl Server {
    /// After the broker core took the new configuration: disconnect the clients it no longer
    /// lets in (returns how many). Bridges' upstream links are not clients and are not
    /// checked.
    pub(super) fn recheck_access(&mut self, now: Instant) -> usize {
        let Server {
            conns,
            listeners,
            broker,
            ..
        } = self;
        let mut check = |id: ConnId| -> CertCheck {
            #[cfg(feature = "tls")]
            if let Some(conn) = conns.stream(id).filter(|c| c.bridge.is_none()) {
                if let Some(tls) = conn.tls.as_deref() {
                    let listener = listeners.get(conn.listener as usize);
                    return super::tls::recheck(listener.and_then(|l| l.tls.as_ref()), tls);
                }
            }
            #[cfg(not(feature = "tls"))]
            let _ = (id, &conns, &listeners);
            CertCheck::Unchecked
        };
        let closed = broker.recheck_access(&mut check, now);
        if closed > 0 {
            log::info!("reload: {closed} connections no longer allowed were closed");
        }
        closed
    }
}

impl Server {
    /// What a reload needs from the command line: `-p`'s port, and whether the config's log
    /// level is the one in force (not when RUST_LOG or `-v` set it).
    pub fn set_command_line(&mut self, port_override: Option<u16>, log_level_from_config: bool) {
        self.port_override = port_override;
        self.log_level_from_config = log_level_from_config;
    }

    /// SIGHUP: read the config file (and the password, ACL and devices files it names) again.
    /// A file that does not load leaves everything as it is. Listeners are matched by port
    /// and address: kept ones keep their connections (and take new TLS files and limits),
    /// new ones are opened, and removed ones are closed with their connections.
    pub(super) fn reload(&mut self) {
        let Some(path) = self.config.source.clone() else {
            log::info!("SIGHUP received: there is no config file to reload");
            return;
        };
        log::info!("SIGHUP received: reloading {}", path.display());
        let mut new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload failed, the running configuration stays: {e}");
                return;
            }
        };
        if let (Some(port), Some(l)) = (self.port_override, new.listeners.first_mut()) {
            l.port = port;
        }
        if new.persistence != self.config.persistence {
            log::warn!("reload: persistence settings change at the next start, not now");
            new.persistence = self.config.persistence.clone();
        }
        // Bridges keep running as started (the broker core says so if the file changed them),
        // and so does the HTTP listener.
        new.bridges = self.config.bridges.clone();
        if new.http_listener != self.config.http_listener {
            log::warn!("reload: http_listener changes at the next start, not now");
            new.http_listener = self.config.http_listener.clone();
        }
        // Match each new listener to a running one with the same port and address.
        let old = self.config.listeners.clone();
        let mut taken = vec![false; old.len()];
        let mut from: Vec<Option<usize>> = Vec::new();
        for l in &new.listeners {
            let j = (0..old.len()).find(|&j| {
                !taken[j]
                    && old[j].port == l.port
                    && old[j].address == l.address
                    && old[j].mqttsn.is_some() == l.mqttsn.is_some()
            });
            if let Some(j) = j {
                taken[j] = true;
            }
            from.push(j);
        }
        // Everything that can fail comes first: new sockets, TLS setups of kept listeners.
        enum Prepared {
            New(Listener),
            Kept(usize, TlsSetup),
        }
        let mut prepared = Vec::new();
        for (i, l) in new.listeners.iter().enumerate() {
            let result = match from[i] {
                None => open_listener(&self.poll, l, LISTENER_BASE + self.listeners.len() + i)
                    .map(Prepared::New),
                Some(j) => tls_setup(l).map(|t| Prepared::Kept(j, t)),
            };
            match result {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    for p in prepared {
                        if let Prepared::New(mut l) = p {
                            let _ = self.poll.registry().deregister(l.socket.source());
                        }
                    }
                    log::error!("reload failed, the running configuration stays: {e}");
                    return;
                }
            }
        }
        // Commit. Connections of removed listeners are closed.
        let now = Instant::now();
        let gone: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| match c {
                Slot::Stream(c) => c.bridge.is_none() && !taken[c.listener as usize],
                Slot::Datagram { listener } => !taken[*listener as usize],
            })
            .map(|(id, _)| id)
            .collect();
        for id in gone {
            self.close(id, now);
        }
        let mut map = vec![u16::MAX; old.len()];
        let mut old_listeners: Vec<Option<Listener>> = self.listeners.drain(..).map(Some).collect();
        for (i, p) in prepared.into_iter().enumerate() {
            let l = &new.listeners[i];
            let mut listener = match p {
                Prepared::New(fresh) => {
                    fresh.announce();
                    fresh
                }
                Prepared::Kept(j, _tls) => {
                    map[j] = i as u16;
                    let mut kept = old_listeners[j].take().expect("matched once");
                    kept.max_connections = l.max_connections;
                    kept.websockets = l.websockets;
                    #[cfg(feature = "tls")]
                    {
                        kept.tls = _tls;
                        kept.identity = l.tls.use_identity_as_username;
                    }
                    kept
                }
            };
            // An MQTT-SN gateway takes the section's new options and its listener's index.
            if let (Some(gw), Some(o)) = (listener.gateway.as_mut(), &l.mqttsn) {
                gw.reconfigure(o.clone(), i as u16, now);
            }
            let _ = self.poll.registry().reregister(
                listener.socket.source(),
                Token(LISTENER_BASE + i),
                Interest::READABLE,
            );
            self.listeners.push(listener);
        }
        for mut l in old_listeners.into_iter().flatten() {
            let _ = self.poll.registry().deregister(l.socket.source());
            if let Ok(a) = l.socket.local_addr() {
                log::info!("no longer listening on {a}");
            }
        }
        for (_, slot) in self.conns.iter_mut() {
            match slot {
                Slot::Stream(c) if c.bridge.is_none() => c.listener = map[c.listener as usize],
                Slot::Stream(_) => {}
                Slot::Datagram { listener } => *listener = map[*listener as usize],
            }
        }
        self.broker.reconfigure(new.broker.clone(), &map, now);
        let revoked = self.recheck_access(now);
        match &new.devices {
            Some(devices) => {
                let mut options = new.device_options.clone();
                options.status_url = self.status_url.clone();
                let ex = crate::devices::Executor::new(devices.clone(), options)
                    .with_waker(self.waker.clone());
                self.broker.set_devices(ex);
            }
            None => self.broker.clear_devices(),
        }
        self.max_connections = new.max_connections;
        self.nodelay = new.set_tcp_nodelay;
        mqttsn_anonymous_warning(&new);
        if self.log_level_from_config {
            log::set_max_level(new.log_level);
        }
        log::info!(
            "configuration reloaded: {} listeners, {} connections kept",
            self.listeners.len(),
            self.conns.len() - revoked
        );
        self.config = new;
    }
}
