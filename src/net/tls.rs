//! TLS listeners (the `tls` feature): rustls on the same non-blocking sockets and the same
//! loop. A TLS connection reads records from its socket into rustls and hands the plaintext to
//! the broker exactly as a plain connection's bytes; output is encrypted as the socket takes
//! it, with rustls's own buffer bounded (64 KiB) so backpressure works as for plain TCP.

use crate::bridge::BridgeTls;
use crate::broker::CertCheck;
use crate::config::TlsOptions;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ClientConnection, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::{Connection, RootCertStore};
use std::io::{self, ErrorKind, Read};
use std::path::Path;
use std::sync::Arc;

/// A listener's TLS setup, built at start and at a reload.
#[derive(Clone)]
pub struct Context {
    config: Arc<ServerConfig>,
    /// `require_certificate`: what checks client certificates (kept to check connected
    /// clients' certificates again at a reload).
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// Build a listener's TLS context from its options, or say in one sentence what is wrong
/// (which file, and why).
pub fn context(t: &TlsOptions) -> Result<Context, String> {
    let (Some(certfile), Some(keyfile)) = (&t.certfile, &t.keyfile) else {
        return Err("a TLS listener needs both certfile and keyfile".into());
    };
    let certs = certificates(certfile, "certfile")?;
    let key = private_key(keyfile, "keyfile")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(t.min_version))
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let mut client_verifier = None;
    let builder = if t.require_certificate {
        let mut roots = RootCertStore::empty();
        if let Some(cafile) = &t.cafile {
            add_roots(&mut roots, cafile, "cafile")?;
        }
        if let Some(capath) = &t.capath {
            add_dir_roots(&mut roots, capath, "capath")?;
        }
        if roots.is_empty() {
            return Err(
                "require_certificate is set, but cafile/capath hold no CA certificate".into(),
            );
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("cannot check client certificates: {e}"))?;
        client_verifier = Some(verifier.clone());
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "certfile {} and keyfile {} cannot be used together: {e}",
            certfile.display(),
            keyfile.display()
        )
    })?;
    Ok(Context {
        config: Arc::new(config),
        client_verifier,
    })
}

/// A connected client's certificate checked again, against `ctx`: its listener's TLS setup
/// now (None: the listener has no TLS now). A connection still in its handshake is checked
/// by the handshake. Without `require_certificate` nothing is checked, and a certificate
/// that is not checked names no one.
pub fn recheck(ctx: Option<&Context>, tls: &Connection) -> CertCheck {
    let Some(verifier) = ctx.and_then(|c| c.client_verifier.as_ref()) else {
        return CertCheck::Unchecked;
    };
    if tls.is_handshaking() {
        return CertCheck::Unchecked;
    }
    let Some((end_entity, intermediates)) = tls.peer_certificates().and_then(|c| c.split_first())
    else {
        return CertCheck::Invalid("no client certificate, and require_certificate is on".into());
    };
    match verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
        Ok(_) => CertCheck::Valid(common_name(end_entity)),
        Err(e) => CertCheck::Invalid(format!(
            "its client certificate does not pass the listener's TLS settings now: {e}"
        )),
    }
}

/// TLS 1.3 only with `tls_version tlsv1.3`, else 1.2 and 1.3.
fn versions(min: Option<u8>) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    match min {
        Some(13) => &ONLY_13,
        _ => &BOTH,
    }
}

fn private_key(path: &Path, option: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path, option)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| format!("{option} {} holds no private key", path.display()))
}

/// Every file in a folder that holds certificates (c_rehash's links included).
fn add_dir_roots(roots: &mut RootCertStore, dir: &Path, option: &str) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!(
            "cannot read {option} {}: {}",
            dir.display(),
            crate::config::io_reason(&e)
        )
    })?;
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_file() {
            let _ = add_roots(roots, &p, option);
        }
    }
    Ok(())
}

fn read_file(path: &Path, option: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {option} {}: {}",
            path.display(),
            crate::config::io_reason(&e)
        )
    })
}

fn certificates(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path, option)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{option} {} is not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{option} {} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn add_roots(roots: &mut RootCertStore, path: &Path, option: &str) -> Result<(), String> {
    for cert in certificates(path, option)? {
        roots
            .add(cert)
            .map_err(|e| format!("{option} {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A new server side of a TLS connection.
pub fn accept(ctx: &Context) -> Option<Box<Connection>> {
    ServerConnection::new(ctx.config.clone())
        .ok()
        .map(|c| Box::new(Connection::Server(c)))
}

/// A bridge's TLS setup, built once at start.
pub type ClientContext = Arc<ClientConfig>;

/// Build a bridge's TLS context: the upstream's certificate is checked against
/// `bridge_cafile`/`bridge_capath` (and its name against the address, unless
/// `bridge_insecure`); `bridge_certfile`/`bridge_keyfile` are this side's certificate.
pub fn client_context(t: &BridgeTls) -> Result<ClientContext, String> {
    let mut roots = RootCertStore::empty();
    if let Some(cafile) = &t.cafile {
        add_roots(&mut roots, cafile, "bridge_cafile")?;
    }
    if let Some(capath) = &t.capath {
        add_dir_roots(&mut roots, capath, "bridge_capath")?;
    }
    if roots.is_empty() {
        return Err("bridge_cafile/bridge_capath hold no CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(t.min_version))
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("cannot check the upstream's certificate: {e}"))?;
    let builder = if t.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
    } else {
        builder.with_webpki_verifier(webpki)
    };
    let config = match (&t.certfile, &t.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let certs = certificates(certfile, "bridge_certfile")?;
            let key = private_key(keyfile, "bridge_keyfile")?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                format!(
                    "bridge_certfile {} and bridge_keyfile {} cannot be used together: {e}",
                    certfile.display(),
                    keyfile.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A new client side of a TLS connection to `host` (a name or an IP address).
pub fn connect(ctx: &ClientContext, host: &str) -> Result<Box<Connection>, String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("'{host}' is not a name TLS can check"))?;
    ClientConnection::new(ctx.clone(), name)
        .map(|c| Box::new(Connection::Client(c)))
        .map_err(|e| format!("cannot start TLS: {e}"))
}

/// `bridge_insecure`: the certificate chain is checked, the name in it is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Read plaintext into `buf`: what rustls holds already, else the next records from the
/// socket. `Ok(0)` is the end of the connection; `WouldBlock` means nothing more for now
/// (the caller then flushes, as the handshake may have something to send).
pub fn read(tls: &mut Connection, stream: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // Closed without close_notify: the end all the same.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if tls.read_tls(stream)? == 0 {
            return Ok(0);
        }
        if let Err(e) = tls.process_new_packets() {
            // The alert that says why is queued: the caller's flush sends it.
            return Err(io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}")));
        }
    }
}

/// The Common Name of the client certificate's subject (the first one, as Mosquitto takes).
pub fn peer_common_name(tls: &Connection) -> Option<String> {
    common_name(tls.peer_certificates()?.first()?)
}

/// The subject Common Name of a DER certificate. Reads only the structure it walks through
/// and never panics on a bad one (the verifier has checked it; this is for the name).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert, _) = tlv(der, Some(0x30))?;
    let (_, tbs, _) = tlv(cert, Some(0x30))?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = tlv(rest, None)?.2; // version
    }
    // serialNumber, signature, issuer, validity; then the subject.
    for _ in 0..4 {
        rest = tlv(rest, None)?.2;
    }
    let (_, mut rdns, _) = tlv(rest, Some(0x30))?;
    while !rdns.is_empty() {
        let (_, mut set, next) = tlv(rdns, Some(0x31))?;
        while !set.is_empty() {
            let (_, atv, after) = tlv(set, Some(0x30))?;
            let (_, oid, value) = tlv(atv, Some(0x06))?;
            if oid == [0x55, 0x04, 0x03] {
                let (tag, v, _) = tlv(value, None)?;
                return match tag {
                    // BMPString: UTF-16 big-endian.
                    0x1E => {
                        let units: Vec<u16> = v
                            .chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect();
                        String::from_utf16(&units).ok()
                    }
                    _ => String::from_utf8(v.to_vec()).ok(),
                };
            }
            set = after;
        }
        rdns = next;
    }
    None
}

/// One DER tag-length-value at the start of `b` (with tag `want` if given): (tag, value, rest).
fn tlv(b: &[u8], want: Option<u8>) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    if want.is_some_and(|w| w != tag) {
        return None;
    }
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (first as usize, b)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | x as usize);
        (len, &b[n..])
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element with a short or long length.
    fn el(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn name(attrs: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
        let mut rdns = Vec::new();
        for (oid, tag, value) in attrs {
            let atv = [el(0x06, oid), el(*tag, value)].concat();
            rdns.extend(el(0x31, &el(0x30, &atv)));
        }
        el(0x30, &rdns)
    }

    fn cert(subject: &[u8]) -> Vec<u8> {
        let tbs = [
            el(0xA0, &el(0x02, &[2])),
            el(0x02, &[1, 2, 3]),
            el(0x30, &el(0x06, &[1, 2])),
            name(&[(&[0x55, 4, 3], 0x0C, b"issuer")]),
            el(0x30, &[]),
            subject.to_vec(),
            vec![0u8; 200], // the rest, long enough for a long-form length
        ]
        .concat();
        el(0x30, &[el(0x30, &tbs), el(0x30, &[])].concat())
    }

    #[test]
    fn common_name_of_the_subject_not_the_issuer() {
        let subject = name(&[
            (&[0x55, 4, 6], 0x13, b"DE"),
            (&[0x55, 4, 3], 0x0C, b"sensor-7"),
            (&[0x55, 4, 3], 0x0C, b"second"),
        ]);
        assert_eq!(common_name(&cert(&subject)).as_deref(), Some("sensor-7"));
        let bmp = name(&[(&[0x55, 4, 3], 0x1E, &[0, b'h', 0, b'i'])]);
        assert_eq!(common_name(&cert(&bmp)).as_deref(), Some("hi"));
        let no_cn = name(&[(&[0x55, 4, 10], 0x0C, b"org")]);
        assert_eq!(common_name(&cert(&no_cn)), None);
    }

    #[test]
    fn broken_certificates_give_none_never_a_panic() {
        let good = cert(&name(&[(&[0x55, 4, 3], 0x0C, b"x")]));
        for cut in 0..good.len() {
            let _ = common_name(&good[..cut]);
        }
        let mut flipped = good.clone();
        for i in 0..good.len() {
            flipped[i] ^= 0xFF;
            let _ = common_name(&flipped);
            flipped[i] ^= 0xFF;
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
    }
}
