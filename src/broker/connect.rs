//! CONNECT: check the protocol level, client id and credentials, take over or resume the
//! session, answer CONNACK (with MQTT 5 properties saying what this broker supports), and
//! resend what was in flight for a resumed session.

use super::access::Credential;
use super::session::{Awaiting, Session, NEVER_EXPIRES};
use super::{publish, topic, Broker, ConnId, ListenerPolicy, SessionId};
use crate::auth::acl::Access;
use crate::wire::properties::id;
use crate::wire::{self, ConnAck, Connect, DecodeError, PropBuf, LEVEL_31, LEVEL_5};
use std::borrow::Cow;
use std::time::Instant;

/// MQTT 5 CONNACK reason codes used here.
const CLIENT_ID_NOT_VALID: u8 = 0x85;
const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
const NOT_AUTHORIZED: u8 = 0x87;
const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
const QOS_NOT_SUPPORTED: u8 = 0x9B;
const RETAIN_NOT_SUPPORTED: u8 = 0x9A;

pub(super) fn handle(b: &mut Broker, id: ConnId, c: Connect<'_>, now: Instant) {
    let v5 = c.level == LEVEL_5;
    match accept(b, id, &c, now) {
        Ok(()) => {}
        Err(Refused::Version) => refuse(b, id, false, ConnAck::UnacceptableProtocolVersion, 0, now),
        Err(Refused::Connack(code, reason)) => refuse(b, id, v5, code, reason, now),
        Err(Refused::Protocol(why)) => b.protocol_error(id, DecodeError::protocol(why), now),
    }
}

/// Why a CONNECT is not accepted (logged where it is decided).
enum Refused {
    /// An unsupported protocol level: answered in 3.1.1's form.
    Version,
    /// CONNACK with this return code (3.1.x) or reason code (MQTT 5), then close.
    Connack(ConnAck, u8),
    /// Closed without CONNACK.
    Protocol(&'static str),
}

/// Who the client is, as decided from its CONNECT and its listener's rules.
struct Client<'c> {
    listener: u16,
    /// The TLS certificate's identity names the user (`use_identity_as_username`).
    use_identity: bool,
    username: Option<Cow<'c, str>>,
    client_id: Cow<'c, str>,
    keep_alive: u16,
    /// MQTT 5: the keep-alive it is told to use instead of its own (Server Keep Alive).
    server_keep_alive: Option<u16>,
}

/// The phases of a CONNECT: validate, identify, authenticate, take over or resume the session,
/// attach the connection to it, CONNACK, resend what was in flight.
fn accept(b: &mut Broker, id: ConnId, c: &Connect<'_>, now: Instant) -> Result<(), Refused> {
    let who = super::peer(&b.conns[id].as_ref().and_then(|c| c.peer));
    validate(b, c, &who)?;
    let client = identify(b, id, c, &who)?;
    let policy = b.policy(client.listener);
    let username = client.username.as_deref();
    let credential = authenticate(policy, username, c.password, client.use_identity).map_err(
        |(code, reason, why)| {
            log::info!("Client {} refused: {why}", client.client_id);
            Refused::Connack(code, reason)
        },
    )?;
    // 3.1.x: clean session 0 keeps the session for ever; MQTT 5 says how long.
    let expiry = match (c.level == LEVEL_5, c.clean_session) {
        (true, _) => c.properties.u32(id::SESSION_EXPIRY_INTERVAL).unwrap_or(0),
        (false, true) => 0,
        (false, false) => NEVER_EXPIRES,
    };
    let (sid, session_present) = take_over_or_resume(b, id, c, &client, expiry, now)?;
    attach(b, id, sid, c, &client, expiry, credential, now);
    log::info!(
        "New {} connected from {who} as {} (p{}, c{}, k{}{}).",
        if c.bridge { "bridge" } else { "client" },
        client.client_id,
        c.level,
        c.clean_session as u8,
        c.keep_alive,
        username.map(|u| format!(", u'{u}'")).unwrap_or_default()
    );
    connack(b, id, c, &client, session_present);
    if session_present {
        resend_inflight(b, id, sid, now);
        publish::pump(b, sid);
    }
    Ok(())
}

/// What the CONNECT asks for that this broker does not offer: the protocol level, a will it
/// cannot take, an authentication method.
fn validate(b: &Broker, c: &Connect<'_>, who: &str) -> Result<(), Refused> {
    if !c.is_supported_level() {
        log::info!(
            "Connection from {who} refused: unsupported protocol {} level {}",
            c.protocol_name,
            c.level
        );
        return Err(Refused::Version);
    }
    if let Some(w) = &c.will {
        if !topic::valid_name(w.topic) || !b.topic_within_limits(w.topic) {
            return Err(Refused::Protocol("invalid will topic"));
        }
        if w.retain && !b.cfg.retain_available {
            log::info!("Connection from {who} refused: retained will, but retain is not available");
            return Err(Refused::Connack(
                ConnAck::NotAuthorized,
                RETAIN_NOT_SUPPORTED,
            ));
        }
        if w.qos > b.cfg.max_qos {
            log::info!(
                "Connection from {who} refused: will QoS {} above max_qos",
                w.qos
            );
            return Err(Refused::Connack(ConnAck::NotAuthorized, QOS_NOT_SUPPORTED));
        }
    }
    if c.level == LEVEL_5 && c.properties.str(id::AUTHENTICATION_METHOD).is_some() {
        // No enhanced authentication method is offered (spec 4.12).
        log::info!("Connection from {who} refused: authentication method not supported");
        return Err(Refused::Connack(
            ConnAck::NotAuthorized,
            BAD_AUTHENTICATION_METHOD,
        ));
    }
    Ok(())
}

/// The username (the CONNECT's, or the TLS certificate's), the client id (given, the username,
/// or assigned) and the keep-alive, under the listener's rules.
fn identify<'c>(
    b: &mut Broker,
    id: ConnId,
    c: &Connect<'c>,
    who: &str,
) -> Result<Client<'c>, Refused> {
    let not_authorized = Refused::Connack(ConnAck::NotAuthorized, NOT_AUTHORIZED);
    let id_rejected = || Refused::Connack(ConnAck::IdentifierRejected, CLIENT_ID_NOT_VALID);
    let listener = b.conns[id].as_ref().map_or(0, |c| c.listener);
    let policy = b.policy(listener);
    let (use_identity, use_username_as_clientid) = (
        policy.use_identity_as_username,
        policy.use_username_as_clientid,
    );
    // TLS client certificates as identity: the certificate names the user, the CONNECT's
    // username and password do not count.
    let identity = b.identities.remove(&id);
    let username: Option<Cow<'c, str>> = if use_identity {
        let Some(identity) = identity else {
            log::info!("Connection from {who} refused: no client certificate identity");
            return Err(not_authorized);
        };
        Some(Cow::Owned(identity.into()))
    } else {
        c.username.map(Cow::Borrowed)
    };
    // Mosquitto's use_username_as_clientid: the username is the client id.
    let given: Cow<'c, str> = match (use_username_as_clientid, &username) {
        (true, Some(u)) => u.clone(),
        (true, None) => {
            log::info!("Connection from {who} refused: no username to use as client id");
            return Err(not_authorized);
        }
        (false, _) => Cow::Borrowed(c.client_id),
    };
    // Client identifier rules (3.1.1 section 3.1.3.1; 3.1 requires 1 to 23 characters; MQTT 5
    // assigns one to any empty id and says which in CONNACK).
    let v5 = c.level == LEVEL_5;
    let client_id = if given.is_empty() {
        if c.level == LEVEL_31 || (!c.clean_session && !v5) {
            log::info!("Connection from {who} refused: empty client id without clean session");
            return Err(id_rejected());
        }
        Cow::Owned(b.assign_client_id())
    } else {
        given
    };
    if c.level == LEVEL_31 && client_id.len() > 23 {
        log::info!("Connection from {who} refused: MQTT 3.1 client id longer than 23 characters");
        return Err(id_rejected());
    }
    // A keep-alive above max_keepalive is not accepted: MQTT 5 clients are told the limit
    // (Server Keep Alive); 3.1.x clients, who cannot be told, are refused. Keep-alive 0 (none)
    // is allowed, as MQTT says (the socket's TCP keepalive finds a vanished peer), unless
    // allow_zero_keepalive is false: Mosquitto 2.0.12+'s rule. max_keepalive 0 = no limit.
    let max = b.cfg.max_keepalive;
    let zero_refused = c.keep_alive == 0 && !b.cfg.allow_zero_keepalive;
    let out_of_range = max > 0 && (c.keep_alive > max || zero_refused);
    if out_of_range && !v5 {
        log::info!(
            "Client {client_id} refused: keep-alive {} is not within max_keepalive {max}",
            c.keep_alive
        );
        return Err(id_rejected());
    }
    Ok(Client {
        listener,
        use_identity,
        username,
        client_id,
        keep_alive: if out_of_range { max } else { c.keep_alive },
        server_keep_alive: out_of_range.then_some(max),
    })
}

/// The session for this connection: a connection already using the client id is closed (with
/// its will); Clean Session / Clean Start 0 resumes a kept session (spec 3.1.2.4), else a new
/// one starts. Returns it and whether it was present.
fn take_over_or_resume(
    b: &mut Broker,
    id: ConnId,
    c: &Connect<'_>,
    client: &Client<'_>,
    expiry: u32,
    now: Instant,
) -> Result<(SessionId, bool), Refused> {
    let client_id = &*client.client_id;
    // A bridge's session is not a client's to take over (it holds what waits for upstream).
    let existing = b.by_client_id.get(&b.sessions, client_id);
    if existing.is_some_and(|sid| b.sessions[sid].bridge) {
        log::info!("Client {client_id} refused: that client id is a bridge's");
        return Err(Refused::Connack(
            ConnAck::IdentifierRejected,
            CLIENT_ID_NOT_VALID,
        ));
    }
    if let Some(old_conn) = existing.and_then(|sid| b.sessions[sid].conn) {
        log::info!("Client {client_id} already connected, closing the old connection");
        b.disconnect_v5(old_conn, 0x8E, Some("session taken over"));
        b.end_connection(old_conn, "session taken over", true, now);
    }
    // The old connection's end may have removed a session that does not outlive it.
    let existing = b.by_client_id.get(&b.sessions, client_id);
    let (sid, session_present) = match existing {
        Some(sid) if !c.clean_session => (sid, true),
        other => {
            if let Some(sid) = other {
                b.remove_session(sid);
            }
            let sid = b.sessions.insert(Session::new(client_id, expiry));
            b.by_client_id.insert(&b.sessions, sid);
            (sid, false)
        }
    };
    let s = &mut b.sessions[sid];
    s.expiry = expiry;
    s.conn = Some(id);
    s.username = client.username.as_deref().map(Into::into);
    s.listener = client.listener;
    b.session_changed(sid);
    let s = &mut b.sessions[sid];
    // Back in time: the delayed will is not sent (spec 3.1.3.2.2), the session does not expire.
    s.expires_at = None;
    s.timer_gen += 1;
    if let Some((w, _)) = s.pending_will.take() {
        b.pool.release(w);
        b.journal_will(sid);
    }
    Ok((sid, session_present))
}

/// Bind connection `id` to session `sid`: its protocol, keep-alive, credential, will, and the
/// MQTT 5 limits it asked for.
#[allow(clippy::too_many_arguments)]
fn attach(
    b: &mut Broker,
    id: ConnId,
    sid: SessionId,
    c: &Connect<'_>,
    client: &Client<'_>,
    expiry: u32,
    credential: Credential,
    now: Instant,
) {
    // A will whose topic its client may not publish to is dropped (logged at debug).
    let will_allowed = c
        .will
        .as_ref()
        .is_none_or(|w| b.acl_allows(sid, w.topic, Access::Write));
    if !will_allowed {
        log::debug!(
            "{}: will on a topic it may not publish to, dropped",
            client.client_id
        );
    }
    let will = c.will.as_ref().filter(|_| will_allowed).map(|w| {
        let expiry = w.properties.u32(id::MESSAGE_EXPIRY_INTERVAL);
        // The will's expiry counts from when it is published: kept as seconds until then.
        let props = w.properties.iter().filter(|(p, _)| {
            !matches!(
                p.id(),
                id::WILL_DELAY_INTERVAL | id::MESSAGE_EXPIRY_INTERVAL
            )
        });
        let m = b.pool.store_iter(
            w.topic,
            props.map(|(_, raw)| raw),
            w.payload,
            w.qos,
            w.retain,
            None,
        );
        (
            m,
            w.properties.u32(id::WILL_DELAY_INTERVAL).unwrap_or(0),
            expiry,
        )
    });
    let v5 = c.level == LEVEL_5;
    let conn = b.conns[id].as_mut().expect("connection is open");
    conn.session = Some(sid);
    conn.level = c.level;
    conn.v5 = v5;
    conn.peer_bridge = c.bridge;
    conn.keep_alive = client.keep_alive;
    conn.connect_expiry = expiry;
    conn.credential = credential;
    conn.will = will.map(|w| w.0);
    conn.will_delay = will.map_or(0, |w| w.1);
    conn.will_expiry = will.and_then(|w| w.2);
    if v5 {
        let p = &c.properties;
        conn.receive_max = p.u16(id::RECEIVE_MAXIMUM).unwrap_or(u16::MAX);
        conn.max_packet = p
            .u32(id::MAXIMUM_PACKET_SIZE)
            .map_or(usize::MAX, |m| m as usize);
        conn.alias_max_out = p.u16(id::TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    }
    b.arm_keep_alive(id, now);
    b.stats.clients_connected += 1;
    b.stats.clients_maximum = b.stats.clients_maximum.max(b.stats.clients_connected);
}

/// CONNACK: accepted, with the session present flag (and MQTT 5 properties).
fn connack(b: &mut Broker, id: ConnId, c: &Connect<'_>, client: &Client<'_>, present: bool) {
    if c.level == LEVEL_5 {
        let mut props = PropBuf::default();
        connack_properties(
            b,
            &mut props,
            c,
            &client.client_id,
            client.server_keep_alive,
        );
        wire::encode_connack_v5(b.out(id), present, 0, &props);
    } else {
        ConnAck::Accepted.encode(b.out(id), present);
    }
    b.stats.messages_sent += 1;
}

/// May `username` (None: anonymous) in with `password` under `policy`? The credential it
/// proved itself with is kept for a reload to check again (`access.rs`); a refusal gives the
/// 3.1.x return code, the MQTT 5 reason code and a log line's reason.
fn authenticate(
    policy: &ListenerPolicy,
    username: Option<&str>,
    password: Option<&[u8]>,
    use_identity: bool,
) -> Result<Credential, (ConnAck, u8, String)> {
    let Some(user) = username else {
        return match policy.allow_anonymous {
            true => Ok(Credential::Unchecked),
            false => Err((
                ConnAck::NotAuthorized,
                NOT_AUTHORIZED,
                "anonymous clients are not allowed".into(),
            )),
        };
    };
    if use_identity {
        // The certificate named the user; the CONNECT's password does not count.
        return Ok(Credential::Identity);
    }
    // With a password file, a username must come with its password (Mosquitto's rule).
    let Some(passwords) = &policy.passwords else {
        return Ok(Credential::Unchecked);
    };
    match passwords.verify(user, password.unwrap_or(&[])) {
        Some(entry) => Ok(Credential::Password(entry)),
        None => Err((
            ConnAck::BadUsernameOrPassword,
            BAD_USERNAME_OR_PASSWORD,
            format!("bad username or password (u'{user}')"),
        )),
    }
}

/// What this broker supports, from the config (spec 3.2.2.3); a property left out means its
/// default (Wildcard, Subscription Identifier and Shared Subscriptions available).
fn connack_properties(
    b: &Broker,
    p: &mut PropBuf,
    c: &Connect<'_>,
    client_id: &str,
    server_keep_alive: Option<u16>,
) {
    let cfg = &b.cfg;
    if cfg.max_inflight_messages > 0 {
        p.u16(id::RECEIVE_MAXIMUM, cfg.max_inflight_messages);
    }
    if cfg.max_qos < 2 {
        p.byte(id::MAXIMUM_QOS, cfg.max_qos);
    }
    if !cfg.retain_available {
        p.byte(id::RETAIN_AVAILABLE, 0);
    }
    if cfg.max_packet_size < crate::wire::MAX_REMAINING_LENGTH + 5 {
        p.u32(id::MAXIMUM_PACKET_SIZE, cfg.max_packet_size as u32);
    }
    if c.client_id.is_empty() {
        p.str(id::ASSIGNED_CLIENT_IDENTIFIER, client_id);
    }
    if cfg.max_topic_alias > 0 {
        p.u16(id::TOPIC_ALIAS_MAXIMUM, cfg.max_topic_alias);
    }
    if let Some(k) = server_keep_alive {
        p.u16(id::SERVER_KEEP_ALIVE, k);
    }
    if c.properties.byte(id::REQUEST_RESPONSE_INFORMATION) == Some(1) {
        if let Some(info) = &cfg.response_information {
            p.str(id::RESPONSE_INFORMATION, info);
        }
    }
}

/// Refuse with a return code (3.1.x) or reason code (MQTT 5), then close. No will: the client
/// never connected.
fn refuse(b: &mut Broker, id: ConnId, v5: bool, code: ConnAck, reason: u8, now: Instant) {
    if v5 {
        wire::encode_connack_v5(b.out(id), false, reason, &PropBuf::default());
    } else {
        code.encode(b.out(id), false);
    }
    b.stats.messages_sent += 1;
    b.end_connection(id, "connection refused", false, now);
}

/// Spec 4.4: on reconnect with a kept session, resend unacknowledged PUBLISH packets with DUP
/// set and unacknowledged PUBRELs, in their original order.
pub(super) fn resend_inflight(b: &mut Broker, id: ConnId, sid: usize, now: Instant) {
    forget_denied_inflight(b, sid);
    let Broker {
        sessions,
        conns,
        pool,
        dirty,
        stats,
        cfg,
        ..
    } = b;
    let session = &mut sessions[sid];
    let conn = conns[id].as_mut().expect("connection is open");
    // A bridge's upstream may take less than the QoS a message was held at (its Maximum QoS
    // now): it is sent at what upstream takes, and awaits the acknowledgement of that.
    // At Maximum QoS 0 nothing will acknowledge them: sent once at QoS 0, then done.
    let cap = conn.max_qos_out;
    let mut done = Vec::new();
    for i in session.inflight.iter_mut() {
        if i.awaiting != Awaiting::PubComp && i.msg.is_some() && i.qos > cap {
            i.qos = cap;
            i.awaiting = Awaiting::PubAck;
            if cap == 0 {
                done.push(i.packet_id);
            }
        }
        match (i.awaiting, i.msg) {
            (Awaiting::PubComp, _) => {
                wire::encode_ack(&mut conn.out, wire::kind::PUBREL, i.packet_id)
            }
            (_, Some(m)) => {
                publish::resend(conn, pool, i, m, now, cfg);
                stats.publish_sent += 1;
            }
            (_, None) => continue,
        }
        stats.messages_sent += 1;
    }
    if !session.inflight.is_empty() && !conn.dirty {
        conn.dirty = true;
        dirty.push(id);
    }
    for packet_id in done {
        let s = &mut b.sessions[sid];
        if let Some(at) = s.inflight.iter().position(|i| i.packet_id == packet_id) {
            if let Some(m) = s.inflight.remove(at).and_then(|i| i.msg) {
                b.pool.release(m);
            }
            b.journal_ack(sid, super::persist::AckStep::Done(packet_id));
        }
    }
}

/// In-flight messages whose topic the ACL (changed by a reload since they were sent) no longer
/// lets session `sid` read are not sent again: they are done with.
fn forget_denied_inflight(b: &mut Broker, sid: usize) {
    if b.policy(b.sessions[sid].listener).acl.is_none() {
        return;
    }
    let denied: Vec<u16> = b.sessions[sid]
        .inflight
        .iter()
        .filter(|i| {
            i.msg
                .is_some_and(|m| !b.acl_allows(sid, b.pool.get(m).topic_str(), Access::Read))
        })
        .map(|i| i.packet_id)
        .collect();
    for packet_id in denied {
        let s = &mut b.sessions[sid];
        if let Some(at) = s.inflight.iter().position(|i| i.packet_id == packet_id) {
            if let Some(m) = s.inflight.remove(at).and_then(|i| i.msg) {
                b.pool.release(m);
            }
            b.journal_ack(sid, super::persist::AckStep::Done(packet_id));
        }
    }
}
