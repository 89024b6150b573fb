//! A connection's socket I/O: reading and framing what it sends, WebSocket and TLS on the
//! same socket, flushing what the broker wrote for it, and ending it (with a lingering close).

use super::*;

pub(super) struct Connection {
    pub(super) stream: TcpStream,
    /// Bytes of a packet not yet whole; empty (and unallocated) between packets.
    pub(super) partial: Vec<u8>,
    /// Readable data may be left unread (budget spent or reading paused).
    pub(super) read_pending: bool,
    /// Index of the listener it came in on (`u16::MAX` for a bridge).
    pub(super) listener: u16,
    /// The bridge whose upstream link this is.
    pub(super) bridge: Option<u16>,
    /// The TLS session of a connection on a TLS listener, or of a bridge over TLS.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<Box<rustls::Connection>>,
    /// Its certificate identity has been given to the broker (or is not needed).
    #[cfg(feature = "tls")]
    pub(super) identified: bool,
    /// MQTT over WebSocket: the upgrade and the frames around the MQTT bytes.
    pub(super) ws: Option<Box<ws::WebSocket>>,
}

impl Connection {
    /// Read plain MQTT bytes (decrypted, on a TLS listener) into `buf`; `Ok(0)` at the end.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return tls::read(tls, &mut self.stream, buf);
        }
        self.stream.read(buf)
    }

    /// Write MQTT bytes, in WebSocket frames on a WebSocket listener. Returns what was taken;
    /// 0 when nothing more fits now.
    pub(super) fn write(&mut self, out: &[u8]) -> io::Result<usize> {
        if self.ws.is_none() {
            return self.write_raw(out);
        }
        // What is framed already goes first; then one more chunk is framed (the frames wait
        // in the codec while the socket is full: at most one chunk beyond the broker's limit).
        self.send_ws()?;
        let take = out.len().min(SCRATCH_SIZE);
        if let Some(ws) = &mut self.ws {
            ws.output(&out[..take]);
        }
        match self.send_ws() {
            Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
            _ => Ok(take),
        }
    }

    /// Send the WebSocket codec's bytes (upgrade answer, frames) until none are left
    /// (`Ok`) or the socket takes no more (`WouldBlock`).
    pub(super) fn send_ws(&mut self) -> io::Result<()> {
        while let Some(ws) = self.ws.as_mut().filter(|ws| !ws.out.is_empty()) {
            let mut out = std::mem::take(&mut ws.out);
            let written = self.write_raw(&out);
            let ws = self.ws.as_mut().expect("checked above");
            match written {
                Ok(0) => {
                    ws.out = out;
                    return Err(ErrorKind::WouldBlock.into());
                }
                Ok(n) => {
                    out.drain(..n);
                    ws.out = out;
                }
                Err(e) => {
                    ws.out = out;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The WebSocket codec holds more than a chunk of unsent bytes (pongs a client asked for
    /// and does not read): not read from until they drain, as for MQTT output.
    pub(super) fn ws_backlogged(&self) -> bool {
        self.ws
            .as_ref()
            .is_some_and(|ws| ws.out.len() > SCRATCH_SIZE)
    }

    /// Everything below the MQTT bytes that waits for the socket: WebSocket frames, TLS
    /// records.
    pub(super) fn send_pending(&mut self) -> io::Result<()> {
        self.send_ws()?;
        self.send_tls()
    }

    /// Write bytes to the connection: straight to the socket, or into the TLS session (then
    /// sent by [`Connection::send_tls`]). Returns what was taken; 0 when nothing more fits.
    pub(super) fn write_raw(&mut self, out: &[u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            self.send_tls()?;
            if let Some(tls) = &mut self.tls {
                return tls.writer().write(out);
            }
        }
        self.stream.write(out)
    }

    /// Neither TLS nor WebSocket: MQTT bytes go to the socket as they are.
    pub(super) fn is_plain(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return false;
        }
        self.ws.is_none()
    }

    /// A TLS session has records (handshake, alerts) waiting to be sent.
    pub(super) fn tls_wants_write(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.wants_write();
        }
        false
    }

    /// Tell the peer the connection ends: a WebSocket close frame, a TLS close_notify (best
    /// effort: what the socket takes now).
    pub(super) fn close_notify(&mut self) {
        if let Some(ws) = self.ws.as_mut().filter(|ws| ws.upgraded()) {
            ws.close(1000);
            let _ = self.send_ws();
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = self.send_tls();
        }
    }

    /// Send what the TLS session has ready (records, handshake, alerts), until the socket is
    /// full (`WouldBlock`) or nothing is left. A no-op for plain connections.
    pub(super) fn send_tls(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

impl Server {
    /// Read what connection `id` has, up to its budget, and hand whole packets to the broker.
    /// Packets are handled only while the broker wants them: a paused connection keeps the
    /// rest in its partial buffer, handled first when it resumes.
    pub(super) fn read(&mut self, id: ConnId, now: Instant) {
        let mut budget = READ_BUDGET;
        if self.conns.stream(id).is_some_and(|c| !c.partial.is_empty()) {
            self.process(id, 0, now);
        }
        loop {
            let Some(conn) = self.conns.stream_mut(id) else {
                return;
            };
            if !self.broker.wants_read(id) || conn.ws_backlogged() {
                conn.read_pending = true;
                return;
            }
            if budget == 0 {
                conn.read_pending = true;
                self.pending_reads.push(id);
                return;
            }
            conn.read_pending = false;
            let n = match conn.read(&mut self.scratch[..]) {
                Ok(0) => return self.lost(id, "connection closed by peer", now),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // A TLS handshake may have something to answer now (its own records
                    // only: MQTT output, acknowledgements among it, waits for the end of the
                    // turn, after the journal).
                    if conn.tls_wants_write() {
                        if let Err(e) = conn.send_tls() {
                            if e.kind() != ErrorKind::WouldBlock {
                                return self.lost(id, &io_reason(&e), now);
                            }
                        }
                    }
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A TLS error's alert goes out before the close.
                    let _ = conn.send_tls();
                    return self.lost(id, &io_reason(&e), now);
                }
            };
            #[cfg(feature = "tls")]
            self.identify(id);
            budget = budget.saturating_sub(n);
            self.broker.count_bytes_received(n);
            let n = match self.websocket_input(id, n) {
                Ok(n) => n,
                Err(reason) => return self.lost(id, &reason, now),
            };
            self.process(id, n, now);
        }
    }

    /// On a WebSocket connection: the `n` bytes read into the scratch buffer are frames (or the
    /// upgrade request); returns how many MQTT bytes they held, moved to the buffer's front.
    /// Answers (the upgrade, pongs) are sent with the turn's output.
    pub(super) fn websocket_input(&mut self, id: ConnId, n: usize) -> Result<usize, String> {
        let Some(ws) = self.conns.stream_mut(id).and_then(|c| c.ws.as_mut()) else {
            return Ok(n);
        };
        let result = ws.input(&mut self.scratch[..n]);
        let answer = !ws.out.is_empty();
        if let Err(end) = &result {
            // Last words (a 400, a close frame) go out before the close, if the socket takes them.
            if let Some(conn) = self.conns.stream_mut(id) {
                let _ = conn.send_pending();
            }
            return Err(match end {
                ws::End::BadRequest(why) => format!("WebSocket upgrade refused: {why}"),
                ws::End::Protocol(why) => format!("WebSocket protocol error: {why}"),
                ws::End::Closed => "WebSocket closed by peer".into(),
            });
        }
        if answer && !self.pending_writes.contains(&id) {
            self.pending_writes.push(id);
        }
        result.map_err(|_| String::new())
    }

    /// Give the broker the client certificate's identity before the first packet is handled,
    /// on a listener that uses it as the username.
    #[cfg(feature = "tls")]
    pub(super) fn identify(&mut self, id: ConnId) {
        let Some(conn) = self.conns.stream_mut(id) else {
            return;
        };
        if conn.identified {
            return;
        }
        conn.identified = true;
        if let Some(cn) = conn.tls.as_deref().and_then(tls::peer_common_name) {
            self.broker.set_identity(id, &cn);
        }
    }

    /// Frame and handle the `n` bytes just read into the scratch buffer, after any bytes the
    /// connection already holds.
    pub(super) fn process(&mut self, id: ConnId, n: usize, now: Instant) {
        let Server {
            conns,
            broker,
            scratch,
            spare_buffers,
            ..
        } = self;
        let Some(conn) = conns.stream_mut(id) else {
            return;
        };
        let max = broker.config().max_packet_size;
        if conn.partial.is_empty() {
            // The common case: packets straight from the scratch buffer, no copy.
            let data = &scratch[..n];
            let used = handle_frames(broker, id, data, max, now);
            if used < n && broker.is_open(id) {
                if conn.partial.capacity() == 0 {
                    conn.partial = spare_buffers.pop().unwrap_or_default();
                }
                conn.partial.extend_from_slice(&data[used..]);
            }
        } else {
            conn.partial.extend_from_slice(&scratch[..n]);
            let used = handle_frames(broker, id, &conn.partial, max, now);
            conn.partial.drain(..used);
            if conn.partial.is_empty() {
                let buf = std::mem::take(&mut conn.partial);
                if spare_buffers.len() < SPARE_READ_BUFFERS && buf.capacity() <= 2 * SCRATCH_SIZE {
                    spare_buffers.push(buf);
                }
            }
        }
    }

    /// Write connection `id`'s output until it is empty or the socket is full.
    pub(super) fn flush(&mut self, id: ConnId, now: Instant) {
        if let Some(&Slot::Datagram { listener }) = self.conns.get(id) {
            return self.flush_datagram(listener, id, now);
        }
        // Nothing leaves before the journal records made so far are written (persistence).
        if self.journal_waiting() {
            self.persist(false);
        }
        // Each write may let the broker move more queued messages in; bound the rounds (the
        // rest is flushed next turn, so one busy connection does not hold up the loop).
        let mut drained = false;
        for _ in 0..64 {
            let Some(conn) = self.conns.stream_mut(id) else {
                return;
            };
            let out = self.broker.output(id);
            let written = if out.is_empty() {
                // Nothing from the broker; WebSocket frames or TLS records may wait.
                conn.send_pending().map(|_| 0)
            } else {
                conn.write(out)
            };
            match written {
                Ok(0) if out.is_empty() => {
                    drained = true;
                    break;
                }
                // The TLS session's buffer is full and the socket takes no more.
                Ok(0) => return,
                Ok(n) => {
                    self.broker.consume_output(id, n);
                    // Queued messages moved into the output have records to write first:
                    // the rest goes next turn, after them (one sync per turn, not per write).
                    if self.journal_waiting() {
                        if !self.pending_writes.contains(&id) {
                            self.pending_writes.push(id);
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return self.lost(id, &io_reason(&e), now),
            }
        }
        // What the last round put into a TLS session goes out now.
        if let Some(conn) = self.conns.stream_mut(id) {
            match conn.send_pending() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => return self.lost(id, &io_reason(&e), now),
            }
        }
        if !drained && !self.pending_writes.contains(&id) {
            self.pending_writes.push(id);
        }
        // Reading was paused while the client left its output unread; resume.
        self.resume(id);
    }

    /// Read connection `id` next turn if it has unread input and the broker wants it.
    pub(super) fn resume(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.stream(id) {
            if conn.read_pending
                && self.broker.wants_read(id)
                && !conn.ws_backlogged()
                && !self.pending_reads.contains(&id)
            {
                self.pending_reads.push(id);
            }
        }
    }

    /// The socket failed or was closed by the peer.
    pub(super) fn lost(&mut self, id: ConnId, reason: &str, now: Instant) {
        match self.conns.stream(id).and_then(|c| c.bridge) {
            Some(b) => log::warn!("Bridge {}: {reason}", self.links[b as usize].cfg.name),
            None => log::debug!("connection {id}: {reason}"),
        }
        self.close(id, now);
    }

    /// The broker ended connection `id`. Its last words (a DISCONNECT with a reason, a
    /// refusing CONNACK) go out first, and the socket lingers so a client still sending reads
    /// them (see `linger`); one with TLS records or WebSocket frames still waiting, or more
    /// output than lingering takes, closes at once.
    pub(super) fn end(&mut self, id: ConnId, now: Instant) {
        if let Some(&Slot::Datagram { listener }) = self.conns.get(id) {
            return self.close_datagram(listener, id, now);
        }
        self.flush(id, now);
        let Some(conn) = self.conns.stream_mut(id) else {
            return;
        };
        conn.close_notify();
        // The tail goes out after the records of what moved into it, as all output does.
        if self.journal_waiting() {
            self.persist(false);
        }
        let Some(conn) = self.conns.stream_mut(id) else {
            return;
        };
        let tail = self.broker.output(id);
        let lingers = conn.bridge.is_none()
            && !conn.tls_wants_write()
            && conn.ws.as_ref().is_none_or(|ws| ws.out.is_empty())
            && (tail.is_empty() || conn.is_plain())
            && self.linger.has_room(tail.len());
        if !lingers {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            return self.close(id, now);
        }
        let tail = tail.to_vec();
        if let Some(conn) = self.remove(id, now) {
            self.linger
                .take(self.poll.registry(), conn.stream, tail, now);
        }
    }

    pub(super) fn close(&mut self, id: ConnId, now: Instant) {
        if let Some(&Slot::Datagram { listener }) = self.conns.get(id) {
            return self.close_datagram(listener, id, now);
        }
        self.remove(id, now);
    }

    /// Take connection `id` out of the loop and the broker; the caller has its socket.
    pub(super) fn remove(&mut self, id: ConnId, now: Instant) -> Option<Connection> {
        if !matches!(self.conns.get(id), Some(Slot::Stream(_))) {
            return None;
        }
        let Some(Slot::Stream(mut conn)) = self.conns.try_remove(id) else {
            return None;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Some(l) = self.listeners.get_mut(conn.listener as usize) {
            l.connections -= 1;
        }
        self.broker.release(id, now);
        if let Some(b) = conn.bridge {
            let was_up = self.broker.bridge_was_up(b as usize);
            if let Some(link) = self.links.get_mut(b as usize) {
                if !self.stopping {
                    link.failed(now, was_up);
                }
            }
        }
        Some(conn)
    }

    /// Watch a new connection and give it a slot: its key, the mio token.
    pub(super) fn add_connection(&mut self, mut conn: Connection) -> io::Result<ConnId> {
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        self.poll.registry().register(
            &mut conn.stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Slot::Stream(conn));
        self.room_for_connections();
        Ok(id)
    }

    /// The per-turn lists hold each connection at most once: sized to the connection count
    /// when a connection opens, they never grow while routing (however many connections one
    /// turn happens to make ready).
    pub(super) fn room_for_connections(&mut self) {
        let n = self.conns.len();
        for list in [
            &mut self.pending_reads,
            &mut self.pending_writes,
            &mut self.reading,
            &mut self.work,
        ] {
            room_for(list, n);
        }
    }

    /// Write every connection that got output, close every connection the broker ended.
    /// Closing may publish wills, which makes more output: repeat until both lists are empty.
    pub(super) fn flush_and_close(&mut self, now: Instant) {
        loop {
            self.broker.take_dirty(&mut self.work);
            for i in 0..self.work.len() {
                self.flush(self.work[i], now);
            }
            self.broker.take_resumed(&mut self.work);
            for i in 0..self.work.len() {
                self.resume(self.work[i]);
            }
            self.broker.take_closing(&mut self.work);
            if self.work.is_empty() {
                break;
            }
            for i in 0..self.work.len() {
                self.end(self.work[i], now);
            }
        }
    }
}

/// Hand every whole packet at the start of `data` to the broker; return the bytes used.
pub(super) fn handle_frames(
    broker: &mut Broker,
    id: ConnId,
    data: &[u8],
    max: usize,
    now: Instant,
) -> usize {
    let mut used = 0;
    while broker.wants_read(id) {
        let rest = &data[used..];
        match frame_len(rest, max) {
            Ok(Some(f)) if f.total_len <= rest.len() => {
                broker.handle_packet(id, &rest[..f.total_len], f.header_len, now);
                used += f.total_len;
            }
            Ok(_) => break,
            Err(e) => {
                broker.frame_error(id, e, now);
                break;
            }
        }
    }
    used
}
