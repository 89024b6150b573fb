//! Authentication and authorisation: Mosquitto's password file (and, with the security work,
//! its ACL file), read as they are.

pub mod acl;
pub mod passwd_cmd;
pub mod password;
