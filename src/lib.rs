//! gatemq: a lean MQTT broker for LAN gateways.
//!
//! The broker is a library so tests and the bench tool can embed it: [`wire`] is the codec,
//! [`broker`] the protocol logic with no sockets, [`net`] the single-threaded mio event loop,
//! [`config`] the Mosquitto-style config file.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod config;
pub mod devices;
pub mod mqttsn;
// musl's x86_64 memcpy is slow to start on short copies: the static amd64 build gets ours.
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub mod memcopy;
pub mod net;
pub mod store;
pub mod wire;
