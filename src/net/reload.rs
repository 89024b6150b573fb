//! A reload's re-check of connected clients: the broker core decides who is still allowed
//! (`broker/access.rs`); what it cannot see, a TLS client's certificate, is checked here
//! against the listener's new TLS settings.

use super::Server;
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
            if let Some(conn) = conns.get(id).filter(|c| c.bridge.is_none()) {
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
