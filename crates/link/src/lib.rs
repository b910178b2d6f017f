//! Links through rtnetlink: bridges, veth pairs, and configuration inside container network
//! namespaces.
//!
//! The facade is synchronous because its callers are a short-lived CNI plugin process and the
//! daemon (from `spawn_blocking`); inside, every operation runs rtnetlink on a current-thread
//! tokio runtime.
//!
//! Namespaces: [`HostLinks`] acts in the network namespace of the thread that created it. Work
//! inside a container namespace ([`configure_container`], [`inspect_container`],
//! [`delete_container_iface`]) runs on a dedicated thread that `setns`es into the namespace
//! and opens its own netlink socket there; the caller's thread and tokio's workers never change
//! namespace, so nothing else they do can land in the wrong one by accident.

mod container;
mod host;
mod netns;
mod nl;
mod sysctl;

use std::fmt;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use container::{
    configure_container, configure_container_with_mac, delete_container_iface, inspect_container,
};
pub use host::HostLinks;
pub use netns::is_netns;

pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// A failed step, naming the object and what was being done to it, e.g.
/// "moving veth vn123 into netns /run/netns/x: No such file or directory".
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The kernel (or the OS) refused a step.
    #[error("{step}: {}", os_text(err))]
    Os { step: String, err: io::Error },
    /// The path exists but is not a network namespace (a plain file, another namespace type).
    #[error("{path} is not a network namespace")]
    NotNetns { path: String },
    /// Something the caller asked for cannot be done as asked (a bad name, an object of the
    /// wrong kind, a gateway of the wrong family).
    #[error("{step}: {msg}")]
    Invalid { step: String, msg: String },
    /// The netlink conversation itself went wrong (an answer we could not parse).
    #[error("{step}: netlink: {msg}")]
    Protocol { step: String, msg: String },
}

impl LinkError {
    /// The errno behind an [`LinkError::Os`], so callers can tell EEXIST from EPERM.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Os { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn os(step: impl Into<String>, err: io::Error) -> Self {
        LinkError::Os {
            step: step.into(),
            err,
        }
    }

    pub(crate) fn invalid(step: impl Into<String>, msg: impl Into<String>) -> Self {
        LinkError::Invalid {
            step: step.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn from_rtnl(step: impl Into<String>, err: rtnetlink::Error) -> Self {
        match err {
            rtnetlink::Error::NetlinkError(msg) => LinkError::os(step, msg.to_io()),
            other => LinkError::Protocol {
                step: step.into(),
                msg: other.to_string(),
            },
        }
    }
}

/// "No such file or directory" rather than std's "No such file or directory (os error 2)":
/// the step already says what failed, and the errno is available through
/// [`LinkError::errno`].
fn os_text(err: &io::Error) -> String {
    let s = err.to_string();
    match err.raw_os_error() {
        Some(code) => s
            .strip_suffix(&format!(" (os error {code})"))
            .map(str::to_string)
            .unwrap_or(s),
        None => s,
    }
}

/// A route inside a container: `dst` via `gateway`, or directly on the link when `gateway` is
/// None.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

impl Route {
    pub fn default_via(gateway: IpAddr) -> Self {
        let dst = match gateway {
            IpAddr::V4(_) => IpNet::V4(Default::default()),
            IpAddr::V6(_) => IpNet::V6(Default::default()),
        };
        Route {
            dst,
            gateway: Some(gateway),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gateway {
            Some(gw) => write!(f, "{} via {}", self.dst, gw),
            None => write!(f, "{}", self.dst),
        }
    }
}

/// A container's interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerIface {
    pub ifname: String,
    pub index: u32,
    /// "aa:bb:cc:dd:ee:ff"
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    /// Global-scope addresses only: link-local ones are the kernel's, not ours to report.
    pub addrs: Vec<IpNet>,
    /// Routes through this interface in the main table, without the kernel's own prefix
    /// routes.
    pub routes: Vec<Route>,
}

/// A link in the namespace of a [`HostLinks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    /// "bridge", "veth", ... (None for links without IFLA_INFO_KIND, like physical NICs).
    pub kind: Option<String>,
    /// The index of the bridge this link is a port of.
    pub master: Option<u32>,
    /// Administratively up (IFF_UP), whatever the carrier.
    pub up: bool,
    pub mac: Option<String>,
    pub mtu: u32,
    /// IFLA_IFALIAS; netd marks its own bridges and host veths with [`owner_alias`].
    pub alias: Option<String>,
}

/// What [`HostLinks::delete_owned`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Deleted,
    /// There was no link of that name.
    Missing,
    /// A link of that name exists but netd did not make it (or not for that network, or it
    /// is of another kind); it was left alone. Says why.
    Foreign(String),
}

const ALIAS_PREFIX: &str = "netd network ";

/// The interface alias (IFLA_IFALIAS, `ip link show` prints it as `alias`) that marks a
/// bridge or host veth as made by netd for `network`. Reconciliation and `network rm` delete
/// only links carrying it, so a bridge named `nd-*` or a veth named `vn*` that someone else
/// made is never netd's to remove, whatever its name.
pub fn owner_alias(network: &str) -> String {
    format!("{ALIAS_PREFIX}{network}")
}

/// The network named by a netd alias, or None for any other alias.
pub fn alias_network(alias: &str) -> Option<&str> {
    alias.strip_prefix(ALIAS_PREFIX).filter(|n| !n.is_empty())
}

/// Reads a sysctl of the calling thread's network namespace, e.g. "net.ipv4.ip_forward".
/// Names containing '/' are taken as paths under /proc/sys, so interface names with dots
/// ("net/ipv4/conf/eth0.5/forwarding") stay expressible. Read through this process's private
/// procfs where it has one ([`sysctl`] says why).
pub fn read_sysctl(name: &str) -> io::Result<String> {
    let s = sysctl::read(&sysctl_path(name)?)?;
    Ok(s.trim_end_matches('\n').to_string())
}

/// Writes a sysctl of the calling thread's network namespace; names as for [`read_sysctl`].
pub fn write_sysctl(name: &str, value: &str) -> io::Result<()> {
    sysctl::write(&sysctl_path(name)?, value.as_bytes())
}

/// The path of a sysctl relative to /proc/sys.
fn sysctl_path(name: &str) -> io::Result<String> {
    let rel = if name.contains('/') {
        name.trim_start_matches('/').to_string()
    } else {
        name.replace('.', "/")
    };
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid sysctl name {name:?}"),
        ));
    }
    Ok(rel)
}

/// A locally administered unicast MAC derived from the bridge name. A bridge without an
/// explicit address takes the lowest of its ports' addresses, which changes as containers
/// come and go and makes every neighbour cache on the bridge go stale.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let h = netd_core::model::fnv1a(&[b"netd-bridge-mac/", bridge.as_bytes()]).to_be_bytes();
    let mut mac = [h[0], h[1], h[2], h[3], h[4], h[5]];
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

pub(crate) fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(crate) fn check_ifname(what: &str, name: &str) -> Result<()> {
    netd_core::model::validate_ifname(name)
        .map_err(|e| LinkError::invalid(format!("checking {what} name {name:?}"), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mac_is_stable_local_unicast() {
        let a = bridge_mac("netd0");
        assert_eq!(a, bridge_mac("netd0"));
        assert_ne!(a, bridge_mac("netd1"));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        assert_eq!(format_mac(&a).len(), 17);
    }

    #[test]
    fn sysctl_names() {
        assert_eq!(read_sysctl("kernel.ostype").unwrap(), "Linux");
        assert_eq!(read_sysctl("kernel/ostype").unwrap(), "Linux");
        assert!(read_sysctl("net..x").is_err());
        assert!(read_sysctl("net/../../etc/passwd").is_err());
    }

    #[test]
    fn errors_name_the_step() {
        let e = LinkError::os(
            "moving veth vn123 into netns /run/netns/x",
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(
            e.to_string(),
            "moving veth vn123 into netns /run/netns/x: No such file or directory"
        );
        assert_eq!(e.errno(), Some(libc::ENOENT));
    }

    #[test]
    fn owner_aliases_round_trip() {
        assert_eq!(owner_alias("web"), "netd network web");
        assert_eq!(alias_network(&owner_alias("web")), Some("web"));
        assert_eq!(alias_network("netd network "), None);
        assert_eq!(alias_network("uplink to the lab"), None);
    }

    #[test]
    fn default_route_family_follows_gateway() {
        let r = Route::default_via("10.0.0.1".parse().unwrap());
        assert_eq!(r.to_string(), "0.0.0.0/0 via 10.0.0.1");
        let r = Route::default_via("fd00::1".parse().unwrap());
        assert_eq!(r.to_string(), "::/0 via fd00::1");
    }

    #[test]
    fn host_links_can_be_dropped_in_async_context() {
        let links = HostLinks::new().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move { drop(links) });
    }

    /// Lets the daemon share one handle between spawn_blocking calls.
    #[test]
    fn host_links_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<HostLinks>();
    }

    #[test]
    fn netns_files_are_recognised() {
        assert!(is_netns("/proc/self/ns/net"));
        assert!(!is_netns("/proc/self/ns/mnt"));
        assert!(!is_netns("/proc/self/status"));
        assert!(!is_netns("/nonexistent/netns"));
    }

    /// The daemon calls the facade from spawn_blocking; its own runtime must not clash with
    /// the daemon's. Read-only, so it is safe in whatever namespace the test runs.
    #[test]
    fn host_links_work_from_spawn_blocking() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let lo = rt
            .block_on(async {
                tokio::task::spawn_blocking(|| HostLinks::new().unwrap().link_state("lo").unwrap())
                    .await
            })
            .unwrap()
            .expect("lo exists");
        assert!(lo.index > 0);
        assert_eq!(lo.name, "lo");
    }
}
