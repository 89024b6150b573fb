//! MQTT-SN listeners, the socket side: one UDP socket per `protocol mqttsn` listener in the
//! same poll loop, its datagrams handed to the listener's [`Gateway`], what the gateway sends
//! written with `send_to`, and a connection slot (in the same slab as TCP connections, so the
//! broker's connection ids stay one space) for each client's broker connection.

use super::*;
use crate::mqttsn::{Gateway, Host};
use mio::net::UdpSocket;

/// Datagrams read from one MQTT-SN socket per loop turn before others get their turn.
const DATAGRAM_BUDGET: usize = 256;

/// What a listener listens with.
pub(super) enum ListenSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl ListenSocket {
    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            ListenSocket::Tcp(s) => s.local_addr(),
            ListenSocket::Udp(s) => s.local_addr(),
        }
    }

    pub(super) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            ListenSocket::Tcp(s) => s,
            ListenSocket::Udp(s) => s,
        }
    }
}

/// A slot of the connection slab: a TCP connection's socket and buffers, or the broker
/// connection of an MQTT-SN client of listener `listener` (its datagrams go through the
/// listener's socket).
pub(super) enum Slot {
    Stream(Connection),
    Datagram { listener: u16 },
}

/// The slab's TCP connections, by key (a datagram slot is none).
pub(super) trait Streams {
    fn stream(&self, id: ConnId) -> Option<&Connection>;
    fn stream_mut(&mut self, id: ConnId) -> Option<&mut Connection>;
}

impl Streams for Slab<Slot> {
    fn stream(&self, id: ConnId) -> Option<&Connection> {
        match self.get(id) {
            Some(Slot::Stream(c)) => Some(c),
            _ => None,
        }
    }
    fn stream_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        match self.get_mut(id) {
            Some(Slot::Stream(c)) => Some(c),
            _ => None,
        }
    }
}

/// The gateway's way out: its listener's socket, and slots in the connection slab.
struct NetHost<'a> {
    socket: &'a UdpSocket,
    conns: &'a mut Slab<Slot>,
    listener: u16,
    max_connections: Option<usize>,
}

impl Host for NetHost<'_> {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        loop {
            match self.socket.send_to(datagram, to) {
                Ok(_) => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("MQTT-SN: cannot send to {to}: {e}");
                    return false;
                }
            }
        }
    }

    fn open_slot(&mut self) -> Option<ConnId> {
        if self
            .max_connections
            .is_some_and(|max| self.conns.len() >= max)
        {
            return None;
        }
        Some(self.conns.insert(Slot::Datagram {
            listener: self.listener,
        }))
    }
}

/// Open, bind and watch (as `token`) the MQTT-SN listener `l` describes.
pub(super) fn open_mqttsn_listener(
    poll: &Poll,
    l: &ListenerConfig,
    index: usize,
    token: usize,
) -> Result<Listener, StartError> {
    let opts = l.mqttsn.clone().unwrap_or_default();
    let host = l.address.as_deref().unwrap_or("0.0.0.0");
    let addr = (host, l.port)
        .to_socket_addrs()
        .map_err(|e| StartError(format!("cannot resolve listener address {host}: {e}")))?
        .next()
        .ok_or_else(|| StartError(format!("listener address {host} has no IP address")))?;
    let mut socket = UdpSocket::bind(addr).map_err(|e| {
        StartError(format!(
            "cannot listen on {addr} (UDP, MQTT-SN): {}",
            io_reason(&e)
        ))
    })?;
    if opts.advertise.is_some() {
        // ADVERTISE may go to a broadcast address the operator named.
        let _ = socket.set_broadcast(true);
    }
    poll.registry()
        .register(&mut socket, Token(token), Interest::READABLE)
        .map_err(|e| StartError(format!("cannot watch listener {addr}: {e}")))?;
    Ok(Listener {
        socket: ListenSocket::Udp(socket),
        max_connections: l.max_connections,
        connections: 0,
        #[cfg(feature = "tls")]
        tls: None,
        #[cfg(feature = "tls")]
        identity: false,
        websockets: false,
        gateway: Some(Box::new(Gateway::new(opts, index as u16, Instant::now()))),
    })
}

impl Server {
    /// Read what MQTT-SN listener `index` has, up to its budget, and hand each datagram to
    /// its gateway.
    pub(super) fn datagrams(&mut self, index: usize, now: Instant) {
        let mut budget = DATAGRAM_BUDGET;
        loop {
            let Server {
                listeners,
                conns,
                broker,
                scratch,
                max_connections,
                pending_datagrams,
                ..
            } = self;
            let Some(Listener {
                socket: ListenSocket::Udp(socket),
                gateway: Some(gw),
                ..
            }) = listeners.get_mut(index)
            else {
                return;
            };
            if budget == 0 {
                if !pending_datagrams.contains(&index) {
                    pending_datagrams.push(index);
                }
                break;
            }
            match socket.recv_from(&mut scratch[..]) {
                Ok((n, from)) => {
                    budget -= 1;
                    let mut host = NetHost {
                        socket,
                        conns,
                        listener: index as u16,
                        max_connections: *max_connections,
                    };
                    gw.datagram(broker, &mut host, from, &scratch[..n], now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // An ICMP error for an earlier send, most likely: the next read goes on.
                    log::debug!("MQTT-SN: receive error: {e}");
                }
            }
        }
        self.room_for_connections();
    }

    /// Run `f` with listener `listener`'s gateway and a host for it.
    fn with_gateway(
        &mut self,
        listener: u16,
        f: impl FnOnce(&mut Gateway, &mut Broker, &mut NetHost<'_>),
    ) {
        let Server {
            listeners,
            conns,
            broker,
            max_connections,
            ..
        } = self;
        if let Some(Listener {
            socket: ListenSocket::Udp(socket),
            gateway: Some(gw),
            ..
        }) = listeners.get_mut(listener as usize)
        {
            let mut host = NetHost {
                socket,
                conns,
                listener,
                max_connections: *max_connections,
            };
            f(gw, broker, &mut host);
        }
    }

    /// Translate what the broker wrote for MQTT-SN client slot `id` into datagrams (after
    /// the journal records made so far, as for any output).
    pub(super) fn flush_datagram(&mut self, listener: u16, id: ConnId, now: Instant) {
        if self.journal_waiting() {
            self.persist(false);
        }
        self.with_gateway(listener, |gw, b, host| gw.flush(b, host, id, now));
    }

    /// The broker ended MQTT-SN client slot `id` (or the loop closes it): its last output goes
    /// out, the gateway forgets it, the slot is free.
    pub(super) fn close_datagram(&mut self, listener: u16, id: ConnId, now: Instant) {
        self.flush_datagram(listener, id, now);
        self.with_gateway(listener, |gw, b, host| gw.closed(b, host, id));
        self.conns.try_remove(id);
        self.broker.release(id, now);
    }

    /// The MQTT-SN gateways' retransmissions and ADVERTISEs that are due.
    pub(super) fn gateway_timeouts(&mut self, now: Instant) {
        for i in 0..self.listeners.len() {
            let due = self.listeners[i]
                .gateway
                .as_ref()
                .and_then(|g| g.next_deadline())
                .is_some_and(|t| t <= now);
            if due {
                self.with_gateway(i as u16, |gw, b, host| gw.handle_timeout(b, host, now));
            }
        }
    }

    /// The earliest deadline of any gateway.
    pub(super) fn gateway_deadline(&self) -> Option<Instant> {
        self.listeners
            .iter()
            .filter_map(|l| l.gateway.as_ref()?.next_deadline())
            .min()
    }
}
