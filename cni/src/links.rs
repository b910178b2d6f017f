//! Everything the plugin does to kernel links goes through [`Links`], so the commands can be
//! tested with a fake and the link layer's final names only matter in this file.
//!
//! With the `netd-link` feature, [`SystemLinks`] calls `netd::link`, written in parallel on
//! branch `link`; this follows that branch as of its commit 0fa9760 (namespace paths as
//! `&str`, `create_veth` returning the host ifindex, `ContainerIface` with addresses and
//! routes). Without the feature — the default until `netd::link` lands on main —
//! [`SystemLinks`] is a STAND-IN: it answers the read-only questions from sysfs and
//! `statfs(2)` and refuses to create or delete links, so the crate builds and every path that
//! needs no link change (VERSION, STATUS, GC without released endpoints, DEL after the
//! namespace is gone, all validation) behaves as in production.
//! TODO(merge): enable `netd-link` by default, then delete the stand-in.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
}

/// The container side of a veth as configured or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIface {
    pub ifname: String,
    pub mac: String,
    /// The kernel ifindex inside the container's namespace.
    pub index: u32,
    pub addrs: Vec<IpNet>,
    /// Routes through the interface, without the kernel's prefix routes.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

pub trait Links {
    /// Creates the bridge if missing and makes sure it carries `addrs`; returns its ifindex.
    fn ensure_bridge(&self, name: &str, addrs: &[IpNet], mtu: u32) -> Result<u32, LinkError>;
    /// Creates the pair, enslaves the host end to the bridge and moves the peer into `netns`;
    /// leaves nothing behind when it fails.
    #[allow(clippy::too_many_arguments)]
    fn create_veth(
        &self,
        host_name: &str,
        peer_tmp_name: &str,
        bridge_index: u32,
        mtu: u32,
        isolated: bool,
        netns: &Path,
    ) -> Result<(), LinkError>;
    /// False when there was no such link.
    fn delete_link(&self, name: &str) -> Result<bool, LinkError>;
    fn link_exists(&self, name: &str) -> Result<bool, LinkError>;
    /// The MAC of a host link, for the result; None when it cannot be read.
    fn link_mac(&self, name: &str) -> Option<String>;
    /// Renames `tmp_name` to `ifname` inside `netns`, sets addresses, routes and MTU, brings it up.
    fn configure_container(
        &self,
        netns: &Path,
        tmp_name: &str,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[Route],
        mtu: u32,
    ) -> Result<ContainerIface, LinkError>;
    fn inspect_container(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<ContainerIface>, LinkError>;
    /// False when there was no such interface.
    fn delete_container_iface(&self, netns: &Path, ifname: &str) -> Result<bool, LinkError>;
    fn is_netns(&self, path: &Path) -> bool;
}

/// Read from sysfs because the link layer offers no MAC lookup for host links and the result
/// only reports it; the plugin runs in the host namespace, whose /sys is the one mounted.
fn sysfs_mac(name: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(feature = "netd-link")]
mod system {
    use std::cell::OnceCell;
    use std::path::Path;

    use ipnet::IpNet;
    use netd::link as nl;

    use super::{ContainerIface, LinkError, Links, Route};

    fn err(e: impl std::fmt::Display) -> LinkError {
        LinkError(e.to_string())
    }

    /// netd::link takes namespace paths as text (netd stores them so); the commands refuse a
    /// non-UTF-8 CNI_NETNS before any link call.
    fn text(netns: &Path) -> Result<&str, LinkError> {
        netns
            .to_str()
            .ok_or_else(|| LinkError(format!("{netns:?} is not UTF-8")))
    }

    /// Opens the rtnetlink handle on first use: commands that end before touching a link
    /// (validation errors, netd unreachable) must not need one.
    #[derive(Default)]
    pub struct SystemLinks {
        host: OnceCell<nl::HostLinks>,
    }

    impl SystemLinks {
        fn host(&self) -> Result<&nl::HostLinks, LinkError> {
            if let Some(h) = self.host.get() {
                return Ok(h);
            }
            let h = nl::HostLinks::new().map_err(err)?;
            Ok(self.host.get_or_init(|| h))
        }
    }

    fn iface(c: nl::ContainerIface) -> ContainerIface {
        ContainerIface {
            ifname: c.ifname,
            mac: c.mac,
            index: c.index,
            addrs: c.addrs,
            routes: c
                .routes
                .into_iter()
                .map(|r| Route {
                    dst: r.dst,
                    gateway: r.gateway,
                })
                .collect(),
        }
    }

    impl Links for SystemLinks {
        fn ensure_bridge(&self, name: &str, addrs: &[IpNet], mtu: u32) -> Result<u32, LinkError> {
            self.host()?.ensure_bridge(name, addrs, mtu).map_err(err)
        }

        fn create_veth(
            &self,
            host_name: &str,
            peer_tmp_name: &str,
            bridge_index: u32,
            mtu: u32,
            isolated: bool,
            netns: &Path,
        ) -> Result<(), LinkError> {
            self.host()?
                .create_veth(
                    host_name,
                    peer_tmp_name,
                    bridge_index,
                    mtu,
                    isolated,
                    text(netns)?,
                )
                .map(|_index| ())
                .map_err(err)
        }

        fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
            self.host()?.delete_link(name).map_err(err)
        }

        fn link_exists(&self, name: &str) -> Result<bool, LinkError> {
            self.host()?.link_exists(name).map_err(err)
        }

        fn link_mac(&self, name: &str) -> Option<String> {
            match self.host().ok()?.link_state(name) {
                Ok(Some(state)) => state.mac,
                _ => super::sysfs_mac(name),
            }
        }

        fn configure_container(
            &self,
            netns: &Path,
            tmp_name: &str,
            ifname: &str,
            addrs: &[IpNet],
            routes: &[Route],
            mtu: u32,
        ) -> Result<ContainerIface, LinkError> {
            let routes: Vec<nl::Route> = routes
                .iter()
                .map(|r| nl::Route {
                    dst: r.dst,
                    gateway: r.gateway,
                })
                .collect();
            nl::configure_container(text(netns)?, tmp_name, ifname, addrs, &routes, mtu)
                .map(iface)
                .map_err(err)
        }

        fn inspect_container(
            &self,
            netns: &Path,
            ifname: &str,
        ) -> Result<Option<ContainerIface>, LinkError> {
            nl::inspect_container(text(netns)?, ifname)
                .map(|found| found.map(iface))
                .map_err(err)
        }

        fn delete_container_iface(&self, netns: &Path, ifname: &str) -> Result<bool, LinkError> {
            nl::delete_container_iface(text(netns)?, ifname).map_err(err)
        }

        fn is_netns(&self, path: &Path) -> bool {
            nl::is_netns(path)
        }
    }
}

// STAND-IN until netd::link lands (see the module docs). Not for production: it cannot attach.
#[cfg(not(feature = "netd-link"))]
mod system {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use ipnet::IpNet;

    use super::{ContainerIface, LinkError, Links, Route};

    const NSFS_MAGIC: i64 = 0x6e73_6673;

    fn unavailable(what: &str) -> LinkError {
        LinkError(format!(
            "{what}: this netd-cni was built without the netd-link feature and cannot change links"
        ))
    }

    #[derive(Default)]
    pub struct SystemLinks {
        _private: (),
    }

    impl Links for SystemLinks {
        fn ensure_bridge(&self, name: &str, _: &[IpNet], _: u32) -> Result<u32, LinkError> {
            Err(unavailable(&format!("ensure bridge {name}")))
        }

        fn create_veth(
            &self,
            host_name: &str,
            _: &str,
            _: u32,
            _: u32,
            _: bool,
            _: &Path,
        ) -> Result<(), LinkError> {
            Err(unavailable(&format!("create veth {host_name}")))
        }

        fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
            if self.link_exists(name)? {
                Err(unavailable(&format!("delete {name}")))
            } else {
                Ok(false)
            }
        }

        fn link_exists(&self, name: &str) -> Result<bool, LinkError> {
            Ok(Path::new("/sys/class/net").join(name).exists())
        }

        fn link_mac(&self, name: &str) -> Option<String> {
            super::sysfs_mac(name)
        }

        fn configure_container(
            &self,
            _: &Path,
            _: &str,
            ifname: &str,
            _: &[IpNet],
            _: &[Route],
            _: u32,
        ) -> Result<ContainerIface, LinkError> {
            Err(unavailable(&format!("configure {ifname}")))
        }

        fn inspect_container(
            &self,
            _: &Path,
            ifname: &str,
        ) -> Result<Option<ContainerIface>, LinkError> {
            Err(unavailable(&format!("inspect {ifname}")))
        }

        fn delete_container_iface(&self, _: &Path, ifname: &str) -> Result<bool, LinkError> {
            Err(unavailable(&format!("delete {ifname}")))
        }

        fn is_netns(&self, path: &Path) -> bool {
            let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
                return false;
            };
            // SAFETY: statfs only writes into the zeroed struct we own; the path is NUL-terminated.
            unsafe {
                let mut st: libc::statfs = std::mem::zeroed();
                libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
            }
        }
    }
}

pub use system::SystemLinks;

#[cfg(all(test, not(feature = "netd-link")))]
mod tests {
    use super::*;

    #[test]
    fn stand_in_recognises_a_netns() {
        let l = SystemLinks::default();
        assert!(l.is_netns(Path::new("/proc/self/ns/net")));
        assert!(!l.is_netns(Path::new("/proc/self/status")));
        assert!(!l.is_netns(Path::new("/nonexistent/netns")));
        assert!(!l.link_exists("vn-not-there").unwrap());
        assert!(!l.delete_link("vn-not-there").unwrap());
    }
}
