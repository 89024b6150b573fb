//! Authentication and authorisation: Mosquitto's password and ACL files, read as they are.
//! (`gatemq passwd`, which edits password files, is part of the binary: src/passwd_cmd.rs.)

pub mod acl;
pub mod password;
