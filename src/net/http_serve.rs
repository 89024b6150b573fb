//! The `http_listener`: accepting HTTP connections, answering them, timing them out.

use super::*;

impl Server {
    /// Take what waits on the `http_listener`.
    pub(super) fn http_accept(&mut self, now: Instant) {
        while self.http_conns.len() < MAX_HTTP_CONNECTIONS {
            let Some(l) = &self.http else { return };
            let mut stream = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let entry = self.http_conns.vacant_entry();
            let token = Token(HTTP_BASE + entry.key());
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_ok()
            {
                entry.insert(http::HttpConn::new(stream, now));
            }
        }
    }

    /// An HTTP connection can be read or written: answer it, close it when done.
    pub(super) fn http_ready(&mut self, key: usize) {
        let page = self.page_config();
        let extra = http::Extra {
            persistence_bytes: self.store.as_ref().map(|s| s.bytes_written),
            persistence_failing: self.store.as_ref().map(|s| !s.durable()),
            uptime: self.started.elapsed(),
        };
        let broker = &self.broker;
        let Some(conn) = self.http_conns.get_mut(key) else {
            return;
        };
        let next = conn.ready(|method, path| http::answer(method, path, broker, &page, &extra));
        if next == http::Next::Close {
            let mut conn = self.http_conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
            // More may wait in the backlog now that a slot is free.
            self.http_accept(Instant::now());
        }
    }

    /// Close HTTP connections that have not been answered in time.
    pub(super) fn http_timeouts(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .http_conns
            .iter()
            .filter(|(_, c)| c.opened + http::TIMEOUT <= now)
            .map(|(k, _)| k)
            .collect();
        let freed = !late.is_empty();
        for k in late {
            let mut conn = self.http_conns.remove(k);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        // The listener's readiness was used up at the cap: take what waits now.
        if freed {
            self.http_accept(now);
        }
    }

    /// What the status page is told: the first WebSocket listener, the devices' prefix.
    pub(super) fn page_config(&self) -> http::PageConfig {
        let ws = self
            .config
            .listeners
            .iter()
            .zip(&self.listeners)
            .find(|(c, _)| c.websockets)
            .and_then(|(c, l)| Some((l.socket.local_addr().ok()?.port(), c.tls.enabled())));
        http::PageConfig {
            ws,
            prefix: self.config.device_options.prefix.clone(),
        }
    }
}

/// Open the `http_listener`.
/// The status page's address for Home Assistant (`configuration_url`): the listener's own
/// address, or on all interfaces the machine's host name.
pub(super) fn status_url(l: &TcpListener) -> Option<String> {
    let addr = l.local_addr().ok()?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())?,
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Some(format!("http://{host}:{}/", addr.port()))
}

pub(super) fn open_http(
    poll: &Poll,
    port: u16,
    address: Option<&str>,
) -> Result<TcpListener, StartError> {
    let host = address.unwrap_or("0.0.0.0");
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| StartError(format!("cannot resolve http_listener address {host}")))?;
    let mut l = TcpListener::bind(addr).map_err(|e| {
        StartError(format!(
            "cannot listen on {addr} (http_listener): {}",
            io_reason(&e)
        ))
    })?;
    poll.registry()
        .register(&mut l, HTTP_LISTENER_TOKEN, Interest::READABLE)
        .map_err(|e| StartError(format!("cannot watch http_listener {addr}: {e}")))?;
    log::info!(
        "HTTP (status page, /metrics) on {}",
        l.local_addr().unwrap_or(addr)
    );
    Ok(l)
}
