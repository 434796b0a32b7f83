//! Hosts of a test as network namespaces on a private bridge: veth pairs, addresses
//! `10.213.N.i+1/24` inside and `10.213.N.254` on the bridge (the test's own namespace, which
//! can then act as a host too), multicast on. Everything is removed on drop, also after a
//! failure. Each test picks its own subnet `N`, so tests of one binary can run side by side.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::clean_command;

/// The namespaces, bridge and links.
pub struct Net {
    /// A name unique to this test run (bridge and namespace names carry it).
    pub id: String,
    /// The namespaces, by index.
    pub spaces: Vec<String>,
    subnet: u8,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    fn bridge(&self) -> String {
        format!("dsb{}", self.id)
    }

    /// Namespace `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 1)
    }

    /// The bridge's address, in the test's own namespace.
    pub fn host_addr(&self) -> String {
        format!("10.213.{}.254", self.subnet)
    }

    /// Creates `n` namespaces joined by a bridge on subnet `10.213.SUBNET.0/24`.
    pub fn create(subnet: u8, n: usize) -> Result<Net, String> {
        let id = format!("{}{subnet}", std::process::id() % 10_000);
        let mut net = Net { id, spaces: Vec::new(), subnet };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        let _ = ip(&["link", "set", &br, "type", "bridge", "mcast_snooping", "0"]);
        ip(&["addr", "add", &format!("{}/24", net.host_addr()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..n {
            let ns = format!("dscm-{}-{i}", net.id);
            ip(&["netns", "add", &ns])?;
            net.spaces.push(ns.clone());
            let host_end = format!("dsv{}{i}", net.id);
            let peer = format!("dsp{}{i}", net.id);
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", &br, "up"])?;
            let x = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            x(&["link", "set", "lo", "up"])?;
            x(&["link", "set", &peer, "name", "eth0"])?;
            x(&["addr", "add", &format!("{}/24", net.addr(i)), "dev", "eth0"])?;
            x(&["link", "set", "eth0", "up", "multicast", "on"])?;
            x(&["route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(net)
    }

    /// `program args` inside namespace `i`, with the test's clean environment.
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut cmd = clean_command("ip");
        cmd.args(["netns", "exec", &self.spaces[i]]).arg(program);
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.spaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
