//! Everything the plugin does to kernel links goes through [`Links`], so the commands can be
//! tested with a fake and the link layer's final names only matter in this file.
//!
//! [`SystemLinks`] is the real implementation on `netd_link`.

use std::path::Path;

use ipnet::IpNet;

/// The link layer's own types: the plugin speaks to it directly, no copies across the
/// boundary.
pub use netd_link::{ContainerIface, LinkError, Removal, Route};

pub trait Links {
    /// Creates the bridge if missing and makes sure it carries `addrs` and netd's mark for
    /// `network`; returns its ifindex.
    fn ensure_bridge(
        &self,
        name: &str,
        addrs: &[IpNet],
        mtu: u32,
        network: &str,
    ) -> Result<u32, LinkError>;
    /// Creates the pair with the peer inside `netns`, both ends down and not yet a bridge
    /// port; leaves nothing behind when it fails, and fails with EEXIST (making nothing) when
    /// a link named `host_name` exists. Returns the host end's MAC.
    fn create_veth(
        &self,
        host_name: &str,
        peer_tmp_name: &str,
        netns: &Path,
    ) -> Result<String, LinkError>;
    /// Enslaves the host end to the bridge, sets the MTU, the port flags and netd's mark for
    /// `network`, and brings it up. The caller deletes the pair when this fails.
    fn attach_veth(
        &self,
        host_name: &str,
        bridge_index: u32,
        mtu: u32,
        isolated: bool,
        network: &str,
    ) -> Result<(), LinkError>;
    /// False when there was no such link.
    fn delete_link(&self, name: &str) -> Result<bool, LinkError>;
    /// Deletes host veth `name` only if it is netd's to remove for this container: marked
    /// as `network`'s, or unmarked with its peer inside `netns` (the pair of an ADD whose
    /// plugin died before marking it). Anything else is left alone and reported as
    /// [`Removal::Foreign`]; see `netd_link::HostLinks::delete_host_veth`.
    fn delete_host_veth(
        &self,
        name: &str,
        network: Option<&str>,
        netns: Option<&Path>,
    ) -> Result<Removal, LinkError>;
    fn link_exists(&self, name: &str) -> Result<bool, LinkError>;
    /// Renames `tmp_name` to `ifname` inside `netns`, sets the MAC (if given), addresses,
    /// routes and MTU, brings it up.
    #[allow(clippy::too_many_arguments)]
    fn configure_container(
        &self,
        netns: &Path,
        tmp_name: &str,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[Route],
        mtu: u32,
        mac: Option<[u8; 6]>,
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

mod system {
    use std::cell::OnceCell;
    use std::path::Path;

    use ipnet::IpNet;
    use netd_link as nl;

    use super::{ContainerIface, LinkError, Links, Removal, Route};

    /// netd_link takes namespace paths as text (netd stores them so); the commands refuse a
    /// non-UTF-8 CNI_NETNS before any link call.
    fn text(netns: &Path) -> Result<&str, LinkError> {
        netns.to_str().ok_or_else(|| LinkError::Invalid {
            step: "reading CNI_NETNS".into(),
            msg: format!("{netns:?} is not UTF-8"),
        })
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
            let h = nl::HostLinks::new()?;
            Ok(self.host.get_or_init(|| h))
        }
    }

    impl Links for SystemLinks {
        fn ensure_bridge(
            &self,
            name: &str,
            addrs: &[IpNet],
            mtu: u32,
            network: &str,
        ) -> Result<u32, LinkError> {
            self.host()?.ensure_bridge(name, addrs, mtu, network)
        }

        fn create_veth(
            &self,
            host_name: &str,
            peer_tmp_name: &str,
            netns: &Path,
        ) -> Result<String, LinkError> {
            self.host()?
                .create_veth(host_name, peer_tmp_name, text(netns)?)
                .map(|mac| netd_core::model::MacAddr(mac).to_string())
        }

        fn attach_veth(
            &self,
            host_name: &str,
            bridge_index: u32,
            mtu: u32,
            isolated: bool,
            network: &str,
        ) -> Result<(), LinkError> {
            self.host()?
                .attach_veth(host_name, bridge_index, mtu, isolated, network)
        }

        fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
            self.host()?.delete_link(name)
        }

        fn link_exists(&self, name: &str) -> Result<bool, LinkError> {
            self.host()?.link_exists(name)
        }

        fn delete_host_veth(
            &self,
            name: &str,
            network: Option<&str>,
            netns: Option<&Path>,
        ) -> Result<Removal, LinkError> {
            let netns = netns.map(text).transpose()?;
            self.host()?.delete_host_veth(name, network, netns)
        }

        fn configure_container(
            &self,
            netns: &Path,
            tmp_name: &str,
            ifname: &str,
            addrs: &[IpNet],
            routes: &[Route],
            mtu: u32,
            mac: Option<[u8; 6]>,
        ) -> Result<ContainerIface, LinkError> {
            nl::configure_container_with_mac(
                text(netns)?,
                tmp_name,
                ifname,
                addrs,
                routes,
                mtu,
                mac,
            )
        }

        fn inspect_container(
            &self,
            netns: &Path,
            ifname: &str,
        ) -> Result<Option<ContainerIface>, LinkError> {
            nl::inspect_container(text(netns)?, ifname)
        }

        fn delete_container_iface(&self, netns: &Path, ifname: &str) -> Result<bool, LinkError> {
            nl::delete_container_iface(text(netns)?, ifname)
        }

        fn is_netns(&self, path: &Path) -> bool {
            nl::is_netns(path)
        }
    }
}

pub use system::SystemLinks;
