//! systemd's notify protocol, by hand (no libsystemd): datagrams like `READY=1` to the socket
//! named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Does nothing when
//! the broker is not run by systemd. `WATCHDOG_USEC` (for this PID) asks for `WATCHDOG=1` at
//! least that often; gatemq sends it from the event loop at half the interval, so a hung loop
//! is noticed and restarted.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// How often to send WATCHDOG=1, and when next.
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Self::new(
            std::env::var("NOTIFY_SOCKET").ok().as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
    }

    pub fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        let socket = socket.filter(|s| !s.is_empty()).and_then(|path| {
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(path).ok()?
            };
            let sock = UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        let for_us = watchdog_pid.is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u) / 2);
        Notifier {
            socket,
            watchdog,
            next_watchdog: watchdog.map(|w| Instant::now() + w),
        }
    }

    /// Send one state change, e.g. `READY=1` or `STATUS=...`. Errors are logged, not fatal.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                log::debug!("systemd notify failed: {e}");
            }
        }
    }

    /// When the loop must wake next for the watchdog.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Called every loop turn: pet the watchdog when due.
    pub fn tick(&mut self, now: Instant) {
        if let (Some(every), Some(next)) = (self.watchdog, self.next_watchdog) {
            if now >= next {
                self.notify("WATCHDOG=1");
                self.next_watchdog = Some(now + every);
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket_and_pets_the_watchdog() {
        let dir = std::env::temp_dir().join(format!("gatemq-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let pid = std::process::id().to_string();
        let mut n = Notifier::new(path.to_str(), Some("20000"), Some(&pid));
        assert!(n.enabled());
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        n.tick(Instant::now() + Duration::from_millis(20));
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn watchdog_for_another_pid_is_ignored() {
        let n = Notifier::new(None, Some("1000000"), Some("1"));
        assert!(n.next_deadline().is_none() || std::process::id() == 1);
        assert!(!n.enabled());
    }
}
