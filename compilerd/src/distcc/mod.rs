//! distcc, the protocol users already run: sending a unit to a real distccd ([`client`]), taking
//! a distcc client's argv apart ([`args`]), and client address allow-lists ([`cidr`]). The
//! worker's distcc listener is `worker::distcc`.

pub mod args;
pub mod cidr;
pub mod client;
