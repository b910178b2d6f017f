//! The container side: work inside a container's network namespace.

use ipnet::IpNet;
use rtnetlink::{Handle, LinkUnspec};

use super::netns::{run_in_netns, NetnsFile};
use super::{check_ifname, nl, ContainerIface, LinkError, Result, Route};

/// Inside the namespace at `netns_path`: renames `tmp_name` (the veth end that
/// [`HostLinks::create_veth`](super::HostLinks::create_veth) put there) to `ifname`, sets the
/// MTU (0 leaves it), brings `lo` and `ifname` up, adds `addrs` (IPv6 without duplicate
/// address detection, so they work as soon as this returns) and `routes`. Addresses and routes
/// already on the interface are fine, so a retry after a partial failure converges (pass
/// `tmp_name == ifname` once the rename happened); a route for the same destination through
/// another interface is an EEXIST error, not silently kept. The caller owns cleanup: on error,
/// delete the host end.
pub fn configure_container(
    netns_path: &str,
    tmp_name: &str,
    ifname: &str,
    addrs: &[IpNet],
    routes: &[Route],
    mtu: u32,
) -> Result<ContainerIface> {
    configure_container_with_mac(netns_path, tmp_name, ifname, addrs, routes, mtu, None)
}

/// [`configure_container`], also setting the interface's MAC when `mac` is given (a runtime's
/// fixed MAC). Set while the link is still down, together with the rename.
pub fn configure_container_with_mac(
    netns_path: &str,
    tmp_name: &str,
    ifname: &str,
    addrs: &[IpNet],
    routes: &[Route],
    mtu: u32,
    mac: Option<[u8; 6]>,
) -> Result<ContainerIface> {
    check_ifname("container veth", tmp_name)?;
    check_ifname("container interface", ifname)?;
    // Validate every route before touching anything, so a bad request changes nothing.
    for r in routes {
        nl::route_message(0, r)
            .map_err(|msg| LinkError::invalid(format!("checking route {r}"), msg))?;
    }
    let ns = NetnsFile::open(netns_path)?;
    let p = netns_path;
    run_in_netns(&ns, |h| async move {
        let link = nl::get_link(&h, tmp_name)
            .await
            .map_err(|e| LinkError::from_rtnl(format!("looking up {tmp_name} in netns {p}"), e))?
            .ok_or_else(|| {
                LinkError::os(
                    format!("looking up {tmp_name} in netns {p}"),
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
        let st = nl::link_state(&link);
        let index = st.index;

        // An interface without an IPv6 address of ours gets no IPv6 at all, as Docker does
        // since 26.0.1 (CVE-2024-32473): with it, the kernel would give it a link-local
        // address, and a router advertisement from another container on the bridge would
        // give it global ones, IPv6 that the network's firewall rules never cover. It also
        // spares every container on the bridge the multicast listener reports such an
        // interface sends, which the bridge floods to all its ports. Before up, so no
        // address is ever made. In this thread's namespace: /proc/sys/net follows the
        // opener's network namespace.
        if !addrs.iter().any(|a| a.addr().is_ipv6()) {
            super::sysctl::disable_ipv6(tmp_name).map_err(|e| {
                LinkError::os(
                    format!("turning IPv6 off on {tmp_name} in netns {p} (an IPv4-only network)"),
                    e,
                )
            })?;
        }

        // One request: the kernel renames, sets the MTU and the MAC, and only then applies
        // the flags, so the link is still down for the rename (which a running link refuses).
        let mut change = LinkUnspec::new_with_index(index).up();
        let mut what = Vec::new();
        if tmp_name != ifname {
            change = change.name(ifname);
            what.push(format!("renaming {tmp_name} to {ifname}"));
        }
        if mtu > 0 && st.mtu != mtu {
            change = change.mtu(mtu);
            what.push(format!("setting mtu {mtu} on {tmp_name}"));
        }
        let mut mac_text = st.mac.clone().unwrap_or_default();
        if let Some(mac) = mac {
            let text = super::format_mac(&mac);
            if st.mac.as_deref() != Some(text.as_str()) {
                change = change.address(mac.to_vec());
                what.push(format!("setting MAC {text} on {tmp_name}"));
            }
            mac_text = text;
        }
        what.push(format!("bringing up {ifname}"));
        h.link()
            .change(change.build())
            .execute()
            .await
            .map_err(|e| LinkError::from_rtnl(format!("{} in netns {p}", what.join(", ")), e))?;

        nl::set_up(&h, LOOPBACK_IFINDEX)
            .await
            .map_err(|e| LinkError::from_rtnl(format!("bringing up lo in netns {p}"), e))?;

        for net in addrs {
            nl::ensure_address(&h, index, *net).await.map_err(|e| {
                LinkError::from_rtnl(format!("adding address {net} to {ifname} in netns {p}"), e)
            })?;
        }
        for r in routes {
            nl::ensure_route(&h, index, r).await.map_err(|e| {
                LinkError::from_rtnl(format!("adding route {r} on {ifname} in netns {p}"), e)
            })?;
        }

        // What was configured, not read back: every step above was acknowledged, and a
        // read-back would cost four more round trips (link, addresses, two route dumps).
        Ok(ContainerIface {
            ifname: ifname.to_string(),
            index,
            mac: mac_text,
            mtu: if mtu > 0 { mtu } else { st.mtu },
            up: true,
            addrs: addrs.to_vec(),
            routes: routes
                .iter()
                .map(|r| Route {
                    dst: r.dst.trunc(),
                    gateway: r.gateway,
                })
                .collect(),
        })
    })
}

/// The loopback device has this index in every network namespace (the kernel registers it
/// first and reserves the number), so bringing it up needs no lookup.
const LOOPBACK_IFINDEX: u32 = 1;

/// The interface `ifname` inside the namespace at `netns_path` with its addresses and routes
/// (for CNI CHECK); None when there is no such interface. A missing namespace is an error here:
/// CHECK must report it.
pub fn inspect_container(netns_path: &str, ifname: &str) -> Result<Option<ContainerIface>> {
    check_ifname("container interface", ifname)?;
    let ns = NetnsFile::open(netns_path)?;
    run_in_netns(&ns, |h| async move { iface(&h, ifname, netns_path).await })
}

/// Deletes `ifname` inside the namespace at `netns_path`, which deletes the whole veth pair.
/// False when there was nothing to delete: the namespace is gone (or no longer a namespace,
/// as after `ip netns del` left the mount point behind) or has no such interface. CNI DEL
/// must succeed in all those cases.
pub fn delete_container_iface(netns_path: &str, ifname: &str) -> Result<bool> {
    check_ifname("container interface", ifname)?;
    let ns = match NetnsFile::open(netns_path) {
        Ok(ns) => ns,
        Err(LinkError::NotNetns { .. }) => return Ok(false),
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    run_in_netns(&ns, |h| async move {
        let step = || format!("deleting {ifname} in netns {netns_path}");
        let Some(link) = nl::get_link(&h, ifname)
            .await
            .map_err(|e| LinkError::from_rtnl(step(), e))?
        else {
            return Ok(false);
        };
        nl::delete_index(&h, link.header.index)
            .await
            .map_err(|e| LinkError::from_rtnl(step(), e))
    })
}

async fn iface(h: &Handle, ifname: &str, p: &str) -> Result<Option<ContainerIface>> {
    let Some(link) = nl::get_link(h, ifname)
        .await
        .map_err(|e| LinkError::from_rtnl(format!("looking up {ifname} in netns {p}"), e))?
    else {
        return Ok(None);
    };
    let st = nl::link_state(&link);
    let addrs = nl::addresses(h, st.index)
        .await
        .map_err(|e| {
            LinkError::from_rtnl(format!("listing addresses of {ifname} in netns {p}"), e)
        })?
        .into_iter()
        .filter(|(_, global)| *global)
        .map(|(net, _)| net)
        .collect();
    let routes = nl::routes(h, st.index)
        .await
        .map_err(|e| LinkError::from_rtnl(format!("listing routes of {ifname} in netns {p}"), e))?;
    Ok(Some(ContainerIface {
        ifname: st.name,
        index: st.index,
        mac: st.mac.unwrap_or_default(),
        mtu: st.mtu,
        up: st.up,
        addrs,
        routes,
    }))
}
