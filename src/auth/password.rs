//! Mosquitto's password file: `username:$7$<iterations>$<salt>$<hash>` (PBKDF2-HMAC-SHA512,
//! base64 salt and hash, Mosquitto 2's default) or `username:$6$<salt>$<hash>` (SHA-512 of
//! the password followed by the salt, Mosquitto 1.6 and earlier). Files written by
//! `mosquitto_passwd` work here unchanged, and files written by `gatemq passwd` work in
//! Mosquitto. Passwords are compared in constant time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Iterations `mosquitto_passwd` uses for new entries.
pub const DEFAULT_ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Hash {
    fn parse(s: &str) -> Result<Hash, &'static str> {
        let parts: Vec<&str> = s.split('$').collect();
        let b64 = |x: &str| B64.decode(x).map_err(|_| "invalid base64");
        match parts.as_slice() {
            ["", "6", salt, hash] => Ok(Hash::Sha512 {
                salt: b64(salt)?,
                hash: b64(hash)?,
            }),
            ["", "7", iterations, salt, hash] => Ok(Hash::Pbkdf2 {
                iterations: iterations
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("invalid iteration count")?,
                salt: b64(salt)?,
                hash: b64(hash)?,
            }),
            _ => {
                Err("not a $6$ or $7$ password hash (run `gatemq passwd -U` on a plain-text file)")
            }
        }
    }

    fn compute(&self, password: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha512 { salt, .. } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                h.finalize().to_vec()
            }
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len().max(1)];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out
            }
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        let expected = match self {
            Hash::Sha512 { hash, .. } | Hash::Pbkdf2 { hash, .. } => hash,
        };
        let got = self.compute(password);
        got.len() == expected.len() && bool::from(got.ct_eq(expected))
    }

    fn encode(&self) -> String {
        match self {
            Hash::Sha512 { salt, hash } => format!("$6${}${}", B64.encode(salt), B64.encode(hash)),
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash))
            }
        }
    }

    fn new_pbkdf2(password: &[u8], salt: Vec<u8>) -> Hash {
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, DEFAULT_ITERATIONS, &mut hash);
        Hash::Pbkdf2 {
            iterations: DEFAULT_ITERATIONS,
            salt,
            hash,
        }
    }
}

/// A digest of one password file entry (username and hash): equal digests, same entry. An
/// entry rewritten with the same password gets a new salt, so a new digest: the password
/// itself is not known, only that the entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryDigest([u8; 16]);

impl EntryDigest {
    fn of(user: &str, hash: &Hash) -> EntryDigest {
        let mut h = Sha512::new();
        h.update(user.as_bytes());
        h.update(b":");
        h.update(hash.encode().as_bytes());
        let mut d = [0u8; 16];
        d.copy_from_slice(&h.finalize()[..16]);
        EntryDigest(d)
    }
}

/// A password file: users in file order, so rewriting it keeps the order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PasswordFile {
    entries: Vec<(String, Hash)>,
}

impl PasswordFile {
    pub fn load(path: &std::path::Path) -> Result<PasswordFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read password file {}: {}",
                path.display(),
                crate::config::io_reason(&e)
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse a password file; errors name the file and the line. Blank lines and `#` comments
    /// are skipped, as Mosquitto does.
    pub fn parse(text: &str, name: &str) -> Result<PasswordFile, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("{name}:{}: expected username:password-hash", n + 1))?;
            let hash =
                Hash::parse(hash).map_err(|e| format!("{name}:{}: user '{user}': {e}", n + 1))?;
            entries.push((user.to_string(), hash));
        }
        Ok(PasswordFile { entries })
    }

    /// Does `password` match `user`'s entry? False for an unknown user, and false for an empty
    /// password whatever the file holds (a file written elsewhere may hash one), as Mosquitto.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        self.verify(user, password).is_some()
    }

    /// [`PasswordFile::check`], giving the digest of the entry that matched: a connection
    /// keeps it (never the password) so that a reload can tell whether that entry is still
    /// the same.
    pub fn verify(&self, user: &str, password: &[u8]) -> Option<EntryDigest> {
        match self.entries.iter().find(|(u, _)| u == user) {
            Some((_, h)) => {
                (h.verify(password) && !password.is_empty()).then(|| EntryDigest::of(user, h))
            }
            // Spend the same effort for an unknown user, so timing does not tell who exists.
            None => {
                let _ = Hash::new_pbkdf2(password, vec![0; SALT_LEN]);
                None
            }
        }
    }

    /// The digest of `user`'s entry, if the file has one.
    pub fn entry_digest(&self, user: &str) -> Option<EntryDigest> {
        self.entries
            .iter()
            .find(|(u, _)| u == user)
            .map(|(u, h)| EntryDigest::of(u, h))
    }

    pub fn contains(&self, user: &str) -> bool {
        self.entries.iter().any(|(u, _)| u == user)
    }

    /// Add or replace `user` with a new PBKDF2-SHA512 hash of `password` and a random salt.
    /// An empty password is refused: the broker would never accept it.
    pub fn set(&mut self, user: &str, password: &str) -> Result<(), String> {
        if password.is_empty() {
            return Err(format!("empty password for user '{user}' (not allowed)"));
        }
        let hash = Hash::new_pbkdf2(password.as_bytes(), random_salt()?);
        match self.entries.iter_mut().find(|(u, _)| u == user) {
            Some(e) => e.1 = hash,
            None => self.entries.push((user.to_string(), hash)),
        }
        Ok(())
    }

    /// Remove `user`; false if it was not there.
    pub fn delete(&mut self, user: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(u, _)| u != user);
        self.entries.len() != before
    }

    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(u, h)| format!("{u}:{}\n", h.encode()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn random_salt() -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut salt = vec![0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(salt)
}

/// Check a username: not empty, no ':' (it ends the name in the file).
pub fn valid_username(user: &str) -> bool {
    !user.is_empty() && !user.contains([':', '\n', '\r'])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by Debian's mosquitto_passwd 2.0.11 (passwords "secret1" and "p@ss word").
    const MOSQUITTO: &str = "alice:$7$101$zdgo19t4Ef3FDoYu$wm+h3SLTyoRMBBJRbTDBCA4aUSN7jO3yrEFpZVE2QtNyVnaspEoQeaW2kRL6tkTFdJZX22wb3LWn0d0WKgAAVw==\n\
bob:$7$101$2p6FINpsYSeE0B/C$RxAdlQ84VllOVQNqJWhmATcd0/7I0UreV+JtfTj1wvsAUQY3hKZ/QAZKnHZ8L4Qqg11vbdixQpmCR25GQOZ6Vg==\n";

    #[test]
    fn mosquitto_written_file() {
        let f = PasswordFile::parse(MOSQUITTO, "pw").unwrap();
        assert!(f.check("alice", b"secret1"));
        assert!(!f.check("alice", b"secret2"));
        assert!(f.check("bob", b"p@ss word"));
        assert!(!f.check("carol", b"secret1"));
        assert_eq!(f.to_text(), MOSQUITTO);
    }

    #[test]
    fn sha512_entries() {
        let salt = b"0123456789ab".to_vec();
        let mut h = Sha512::new();
        h.update(b"pw");
        h.update(&salt);
        let line = format!(
            "old:$6${}${}\n",
            B64.encode(&salt),
            B64.encode(h.finalize())
        );
        let f = PasswordFile::parse(&line, "pw").unwrap();
        assert!(f.check("old", b"pw"));
        assert!(!f.check("old", b"px"));
    }

    #[test]
    fn set_delete_roundtrip_and_errors() {
        let mut f = PasswordFile::default();
        f.set("dev1", "s3cret").unwrap();
        f.set("dev2", "x").unwrap();
        f.set("dev1", "new").unwrap();
        let again = PasswordFile::parse(&f.to_text(), "pw").unwrap();
        assert!(again.check("dev1", b"new") && !again.check("dev1", b"s3cret"));
        assert!(f.delete("dev2") && !f.delete("dev2"));
        assert_eq!(f.len(), 1);
        assert_eq!(
            PasswordFile::parse("x\n", "pw").unwrap_err(),
            "pw:1: expected username:password-hash"
        );
        assert!(PasswordFile::parse("# c\n\nu:plain\n", "pw")
            .unwrap_err()
            .starts_with("pw:3: user 'u': not a $6$ or $7$"));
        assert!(PasswordFile::parse("u:$7$0$AAAA$AAAA\n", "pw").is_err());
        assert_eq!(
            f.set("dev3", "").unwrap_err(),
            "empty password for user 'dev3' (not allowed)"
        );
        assert!(!f.contains("dev3"));
    }

    #[test]
    fn entry_digests_change_with_the_entry_not_with_other_entries() {
        let f = PasswordFile::parse(MOSQUITTO, "pw").unwrap();
        let alice = f.verify("alice", b"secret1").unwrap();
        assert_eq!(f.entry_digest("alice"), Some(alice));
        assert_eq!(f.verify("alice", b"wrong"), None);
        assert_ne!(f.entry_digest("bob"), Some(alice));
        let mut g = f.clone();
        g.set("bob", "other").unwrap();
        assert_eq!(
            g.entry_digest("alice"),
            Some(alice),
            "bob's change is not alice's"
        );
        g.set("alice", "secret1").unwrap();
        assert!(g.check("alice", b"secret1"));
        assert_ne!(
            g.entry_digest("alice"),
            Some(alice),
            "same password, new salt: changed"
        );
        g.delete("alice");
        assert_eq!(g.entry_digest("alice"), None);
    }

    #[test]
    fn an_empty_password_never_matches_even_if_the_file_hashes_one() {
        let salted = Hash::new_pbkdf2(b"", vec![1; SALT_LEN]);
        let f = PasswordFile::parse(&format!("u:{}\n", salted.encode()), "pw").unwrap();
        assert!(
            salted.verify(b""),
            "the entry really is the empty password's hash"
        );
        assert!(!f.check("u", b""));
        let old = PasswordFile::parse("v:$6$AAAA$AAAA\n", "pw").unwrap();
        assert!(!old.check("v", b""));
    }
}
