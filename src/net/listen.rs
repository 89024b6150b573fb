//! Listeners and accepting: opening each configured listener (TCP, TLS, WebSocket), accepting
//! connections within the limits, and the socket options a client's socket gets.

use super::*;

/// One listening socket and what it needs to take a connection.
pub(super) struct Listener {
    pub(super) socket: ListenSocket,
    /// Its own connection limit, and how many it holds.
    pub(super) max_connections: Option<usize>,
    pub(super) connections: usize,
    #[cfg(feature = "tls")]
    pub(super) tls: Option<tls::Context>,
    /// TLS client certificate identities become usernames.
    #[cfg(feature = "tls")]
    pub(super) identity: bool,
    /// `protocol websockets`.
    pub(super) websockets: bool,
    /// `protocol mqttsn`: the gateway of its UDP socket's clients.
    pub(super) gateway: Option<Box<crate::mqttsn::Gateway>>,
}

impl Listener {
    /// Say it listens, once nothing can fail any more (a start that fails says one sentence).
    pub(super) fn announce(&self) {
        #[cfg(feature = "tls")]
        let tls_on = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls_on = false;
        let kind = match (tls_on, self.websockets) {
            _ if self.gateway.is_some() => " (MQTT-SN, UDP)",
            (false, false) => "",
            (true, false) => " (TLS)",
            (false, true) => " (WebSocket)",
            (true, true) => " (WebSocket, TLS)",
        };
        if let Ok(local) = self.socket.local_addr() {
            log::info!("listening on {local}{kind}");
        }
    }
}

impl Server {
    pub(super) fn accept(&mut self, index: usize, now: Instant) {
        loop {
            let Some(listener) = self.listeners.get_mut(index) else {
                return;
            };
            let ListenSocket::Tcp(socket) = &listener.socket else {
                return;
            };
            let (stream, peer) = match socket.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: try again on the next event.
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if self
                .max_connections
                .is_some_and(|max| self.conns.len() >= max)
            {
                log::info!("Connection from {peer} refused: max_connections reached");
                continue;
            }
            if listener
                .max_connections
                .is_some_and(|max| listener.connections >= max)
            {
                log::info!(
                    "Connection from {peer} refused: the listener's max_connections reached"
                );
                continue;
            }
            #[cfg(feature = "tls")]
            let tls = match &listener.tls {
                Some(ctx) => match tls::accept(ctx) {
                    Some(t) => Some(t),
                    None => {
                        log::warn!("cannot start TLS for {peer}");
                        continue;
                    }
                },
                None => None,
            };
            #[cfg(feature = "tls")]
            let identified = !listener.identity;
            if self.nodelay {
                let _ = stream.set_nodelay(true);
            }
            set_tcp_keepalive(&stream);
            let ws = listener.websockets.then(|| Box::new(ws::WebSocket::new()));
            let added = self.add_connection(Connection {
                stream,
                partial: Vec::new(),
                read_pending: false,
                listener: index as u16,
                bridge: None,
                #[cfg(feature = "tls")]
                tls,
                #[cfg(feature = "tls")]
                identified,
                ws,
            });
            let id = match added {
                Ok(id) => id,
                Err(e) => {
                    log::warn!("cannot watch connection from {peer}: {e}");
                    continue;
                }
            };
            self.listeners[index].connections += 1;
            self.broker.open(id, Some(peer), index, now);
            log::debug!("New connection from {peer} (slot {id})");
        }
    }
}

/// A listener's TLS setup, built from its options (none for a plain listener, and nothing at
/// all in a build without TLS).
#[cfg(feature = "tls")]
pub(super) type TlsSetup = Option<tls::Context>;
#[cfg(not(feature = "tls"))]
pub(super) type TlsSetup = ();

pub(super) fn tls_setup(l: &ListenerConfig) -> Result<TlsSetup, StartError> {
    #[cfg(feature = "tls")]
    {
        if !l.tls.enabled() {
            return Ok(None);
        }
        tls::context(&l.tls)
            .map(Some)
            .map_err(|e| StartError(format!("listener on port {}: {e}", l.port)))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = l;
        Ok(())
    }
}

/// Open, bind and watch (as `token`) the listener `l` describes.
pub(super) fn open_listener(
    poll: &Poll,
    l: &ListenerConfig,
    token: usize,
) -> Result<Listener, StartError> {
    if l.mqttsn.is_some() {
        return super::mqttsn::open_mqttsn_listener(poll, l, token - LISTENER_BASE, token);
    }
    #[cfg(feature = "tls")]
    let tls = tls_setup(l)?;
    let host = l.address.as_deref().unwrap_or("0.0.0.0");
    let addrs: Vec<SocketAddr> = (host, l.port)
        .to_socket_addrs()
        .map_err(|e| StartError(format!("cannot resolve listener address {host}: {e}")))?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| StartError(format!("listener address {host} has no IP address")))?;
    let mut listener = TcpListener::bind(addr)
        .map_err(|e| StartError(format!("cannot listen on {addr}: {}", io_reason(&e))))?;
    poll.registry()
        .register(&mut listener, Token(token), Interest::READABLE)
        .map_err(|e| StartError(format!("cannot watch listener {addr}: {e}")))?;
    Ok(Listener {
        socket: ListenSocket::Tcp(listener),
        max_connections: l.max_connections,
        connections: 0,
        #[cfg(feature = "tls")]
        tls,
        #[cfg(feature = "tls")]
        identity: l.tls.use_identity_as_username,
        websockets: l.websockets,
        gateway: None,
    })
}

/// TCP keepalive on a client's socket: a client with MQTT keep-alive 0 that vanishes (power cut,
/// Wi-Fi gone) is found dead by the kernel after `TCP_KEEPIDLE` + `TCP_KEEPCNT` unanswered
/// probes `TCP_KEEPINTVL` apart (120 s + 3 x 20 s), and its connection is closed like any lost
/// one (its will is published), instead of being kept for ever.
pub const TCP_KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(120), Duration::from_secs(20), 3);

pub(super) fn set_tcp_keepalive(stream: &TcpStream) {
    let (idle, interval, count) = TCP_KEEPALIVE;
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(count);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        log::debug!("cannot set TCP keepalive: {e}");
    }
}
