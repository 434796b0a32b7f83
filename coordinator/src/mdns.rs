//! Advertising the coordinator over mDNS as `_discomy._tcp.local.`, with TXT records `farm`
//! (the farm's name) and `proto` (the protocol version), so nodes and agents find it without an
//! address and several farms on one network stay apart.

use std::collections::HashMap;

use discomy_protocol::coordinator::MDNS_SERVICE;
use discomy_protocol::version;
use mdns_sd::{ServiceDaemon, ServiceInfo};

/// The advertisement; dropping it withdraws it.
pub struct Advertisement(ServiceDaemon);

impl Drop for Advertisement {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Advertises a coordinator of `farm` listening on `port` on every interface's addresses.
pub fn advertise(farm: &str, port: u16) -> Result<Advertisement, mdns_sd::Error> {
    let daemon = ServiceDaemon::new()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "discomy".into());
    let instance = format!("{farm}-{host}-{}", std::process::id());
    let props: HashMap<String, String> = [
        ("farm".to_string(), farm.to_string()),
        ("proto".to_string(), version::CURRENT.to_string()),
    ]
    .into_iter()
    .collect();
    let info =
        ServiceInfo::new(MDNS_SERVICE, &instance, &format!("{host}.local."), "", port, props)?
            .enable_addr_auto();
    daemon.register(info)?;
    Ok(Advertisement(daemon))
}
