//! The host side: bridges and the host ends of veth pairs.

use std::future::Future;
use std::sync::Mutex;

use ipnet::IpNet;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::netns::NetnsFile;
use super::{
    alias_network, bridge_mac, check_ifname, format_mac, nl, owner_alias, LinkError, LinkState,
    Removal, Result,
};

/// A netlink connection to the network namespace of the thread that called [`HostLinks::new`].
///
/// Methods block; call them from a plain thread or `spawn_blocking`, never from inside an
/// async task (they drive their own current-thread runtime).
pub struct HostLinks {
    /// Always Some until drop.
    rt: Option<tokio::runtime::Runtime>,
    handle: Handle,
    /// The kernel runs one dump per netlink socket at a time and answers a second with EBUSY,
    /// so threads sharing a handle take turns, one whole operation each.
    turn: Mutex<()>,
}

impl HostLinks {
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| LinkError::os("starting a tokio runtime", e))?;
        let (conn, handle, _) = {
            // The socket registers with the reactor of the runtime that is current.
            let _enter = rt.enter();
            rtnetlink::new_connection().map_err(|e| LinkError::os("opening a netlink socket", e))?
        };
        rt.spawn(conn);
        Ok(HostLinks {
            rt: Some(rt),
            handle,
            turn: Mutex::new(()),
        })
    }

    fn run<F: Future>(&self, fut: F) -> F::Output {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        self.rt
            .as_ref()
            .expect("runtime lives until drop")
            .block_on(fut)
    }

    /// Creates bridge `name` unless it exists, gives it its stable MAC (see [`bridge_mac`]),
    /// the MTU (0 leaves it), the gateway addresses `addrs` and the alias that marks it as
    /// netd's bridge of `network` ([`owner_alias`]), and sets it up. An existing bridge
    /// without an alias (one made before netd marked its links) is adopted and marked; one
    /// whose alias says someone else made it is refused. Safe to race: parallel plugin
    /// processes may all ensure the same bridge. Returns its ifindex.
    pub fn ensure_bridge(
        &self,
        name: &str,
        addrs: &[IpNet],
        mtu: u32,
        network: &str,
    ) -> Result<u32> {
        check_ifname("bridge", name)?;
        let alias = owner_alias(network);
        let h = &self.handle;
        let mac = bridge_mac(name);
        self.run(async {
            let lookup = |e| LinkError::from_rtnl(format!("looking up bridge {name}"), e);
            let link = match nl::get_link(h, name).await.map_err(lookup)? {
                Some(link) => link,
                None => {
                    // Multicast snooping off (see below, where an existing bridge is set).
                    let mut b = LinkBridge::new(name)
                        .address(mac.to_vec())
                        .mcast_snooping(false);
                    if mtu > 0 {
                        b = b.mtu(mtu);
                    }
                    match h.link().add(b.build()).execute().await {
                        Ok(()) => {}
                        // Another process created it between our lookup and our add.
                        Err(e) if nl::is_errno(&e, libc::EEXIST) => {}
                        Err(e) => {
                            return Err(LinkError::from_rtnl(format!("creating bridge {name}"), e))
                        }
                    }
                    nl::get_link(h, name)
                        .await
                        .map_err(lookup)?
                        .ok_or_else(|| {
                            LinkError::os(
                                format!("looking up bridge {name} after creating it"),
                                std::io::Error::from_raw_os_error(libc::ENODEV),
                            )
                        })?
                }
            };
            let st = nl::link_state(&link);
            if st.kind.as_deref() != Some("bridge") {
                return Err(LinkError::invalid(
                    format!("using {name} as a bridge"),
                    format!(
                        "a link of kind {} has that name",
                        st.kind.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
            match st.alias.as_deref() {
                None | Some("") => {}
                Some(a) if a == alias => {}
                Some(a) => {
                    return Err(LinkError::invalid(
                        format!("using {name} as the bridge of network {network}"),
                        format!("the bridge is marked {a:?}, not {alias:?}: netd did not make it for this network"),
                    ))
                }
            }
            let index = st.index;
            let facts = nl::bridge_facts(&link);

            let mut change = LinkUnspec::new_with_index(index);
            let mut what = Vec::new();
            if st.alias.as_deref() != Some(alias.as_str()) {
                change = change.alias(alias.clone());
                what.push(format!("alias {alias:?}"));
            }
            if st.mac.as_deref() != Some(format_mac(&mac).as_str()) {
                change = change.address(mac.to_vec());
                what.push(format!("address {}", format_mac(&mac)));
            }
            if mtu > 0 && st.mtu != mtu {
                change = change.mtu(mtu);
                what.push(format!("mtu {mtu}"));
            }
            if !what.is_empty() {
                h.link()
                    .change(change.build())
                    .execute()
                    .await
                    .map_err(|e| {
                        LinkError::from_rtnl(
                            format!("setting {} on bridge {name}", what.join(", ")),
                            e,
                        )
                    })?;
            }

            // Multicast snooping off. Without a querier on the segment (netd runs none, and a
            // container network rarely has one) a snooping bridge floods multicast to every
            // port anyway, so containers see no difference; but with snooping on, every port
            // that is enabled makes the kernel re-enable multicast on all the bridge's ports
            // (timers included), a cost per ADD that grows with the ports of the bridge (16%
            // of the plugin's CPU at 1,000 ports, profiled).
            // Only on a bridge that already carries netd's mark (one netd creates has it off
            // from the start): an unmarked bridge that netd adopts below keeps its setting
            // this time, as it may have a querier and an uplink.
            if facts.mcast_snooping != Some(false) && st.alias.as_deref() == Some(alias.as_str())
            {
                h.link()
                    .change(
                        LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
                            .index(index)
                            .mcast_snooping(false)
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|e| {
                        LinkError::from_rtnl(
                            format!("turning multicast snooping off on bridge {name}"),
                            e,
                        )
                    })?;
            }

            // Adding an address the bridge has already is EEXIST, which ensure_address accepts:
            // cheaper than listing, which dumps every address of the host (the kernel has no
            // per-link filter), one per container veth on a busy host.
            for net in addrs {
                nl::ensure_address(h, index, *net).await.map_err(|e| {
                    LinkError::from_rtnl(format!("adding address {net} to bridge {name}"), e)
                })?;
            }

            if !st.up {
                nl::set_up(h, index)
                    .await
                    .map_err(|e| LinkError::from_rtnl(format!("bringing up bridge {name}"), e))?;
            }
            Ok((index, facts.route_localnet))
        })
        .and_then(|(index, route_localnet)| {
            // Read from the bridge's link message: a /proc/sys lookup costs a walk over one
            // entry per network namespace that ever looked at /proc/sys/net (every
            // container's, once the plugin has set a sysctl inside it).
            if addrs.iter().any(|a| a.addr().is_ipv4()) && route_localnet != Some(true) {
                enable_route_localnet(name)?;
            }
            Ok(index)
        })
    }

    /// Deletes bridge `name`; false when there is none. Refuses to delete a link of another
    /// kind that happens to have the name.
    pub fn delete_bridge(&self, name: &str) -> Result<bool> {
        check_ifname("bridge", name)?;
        let h = &self.handle;
        self.run(async {
            let Some(link) = nl::get_link(h, name)
                .await
                .map_err(|e| LinkError::from_rtnl(format!("looking up bridge {name}"), e))?
            else {
                return Ok(false);
            };
            let st = nl::link_state(&link);
            if st.kind.as_deref() != Some("bridge") {
                return Err(LinkError::invalid(
                    format!("deleting bridge {name}"),
                    format!(
                        "it is a link of kind {}",
                        st.kind.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
            nl::delete_index(h, st.index)
                .await
                .map_err(|e| LinkError::from_rtnl(format!("deleting bridge {name}"), e))
        })
    }

    /// Creates the veth pair `host_name`/`peer_name` with the peer born inside the namespace
    /// at `netns_path` (so a half-made pair never shows up in the host under a temporary name),
    /// both ends down. Fails with
    /// EEXIST, having made nothing, when a link named `host_name` exists. On any other failure
    /// nothing it created is left behind. Returns the host end's MAC, chosen here so that the
    /// plugin's result needs no lookup: every answer about a host veth makes the kernel find
    /// its peer's namespace id by walking a list with one entry per container, so a lookup
    /// costs more the more containers the host runs.
    ///
    /// The pair is not a bridge port yet ([`HostLinks::attach_veth`]), so the plugin can
    /// create it while netd is still deciding the container's addresses: the pair is the
    /// largest piece of kernel work of an ADD and does not depend on them.
    pub fn create_veth(
        &self,
        host_name: &str,
        peer_name: &str,
        netns_path: &str,
    ) -> Result<[u8; 6]> {
        check_ifname("host veth", host_name)?;
        check_ifname("container veth", peer_name)?;
        let ns = NetnsFile::open(netns_path)?;
        let mac = random_mac()?;
        let h = &self.handle;
        self.run(async {
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(peer_name)
                .setns_by_fd(ns.raw_fd());
            let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(host_name)
                .address(mac.to_vec())
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
            h.link().add(veth.build()).execute().await.map_err(|e| {
                LinkError::from_rtnl(
                    format!(
                        "creating veth {host_name} with peer {peer_name} in netns {netns_path}"
                    ),
                    e,
                )
            })?;
            // A bridge port forwards IPv6 frames without any IPv6 of its own. With it, each
            // veth adds a multicast route (and, unless told otherwise, a link-local address
            // and its routes) to the host's IPv6 table, and every state change of a link that
            // is not up yet (this one's own attach among them) walks that whole table: 11% of
            // the plugin's CPU at 1,000 containers on one bridge. The id this namespace just
            // gave the container's says about how many containers there are (ids are handed
            // out lowest-free). On a crowded host the veth gets `disable_ipv6` now, before it
            // is up, so none of that is made; otherwise `attach_veth` asks for no address
            // through netlink, because the sysctl write contends for the kernel's rtnl lock
            // (it retries the system call until it gets it), which in a burst of concurrent
            // ADDs cost more than a walk over fewer than a hundred routes.
            if let Ok(Some(id)) = nl::netns_id(h, ns.raw_fd()).await {
                super::sysctl::note_namespace_count(id);
            }
            if super::sysctl::crowded() {
                if let Err(e) = super::sysctl::disable_ipv6(host_name) {
                    if let Err(del) = self.delete_by_name(host_name).await {
                        tracing::warn!(veth = host_name, error = %del, "could not delete the veth made for a failed ADD");
                    }
                    return Err(LinkError::os(
                        format!("turning IPv6 off on veth {host_name}"),
                        e,
                    ));
                }
            }
            Ok(mac)
        })
    }

    /// Makes the host veth `name` (from [`HostLinks::create_veth`]) a port of the bridge
    /// `bridge_index` with the MTU (0 leaves it), hairpin on (a container can reach itself
    /// through a published port) and `isolated` as asked (ICC off: isolated ports do not talk
    /// to each other, only to the bridge and non-isolated ports), marks it as netd's for
    /// `network` ([`owner_alias`]) and sets it up. Two requests that find the link by name.
    /// The caller owns cleanup: on error, delete the pair.
    pub fn attach_veth(
        &self,
        name: &str,
        bridge_index: u32,
        mtu: u32,
        isolated: bool,
        network: &str,
    ) -> Result<()> {
        check_ifname("host veth", name)?;
        let h = &self.handle;
        self.run(async {
            let mut enslave = LinkUnspec::new_with_name(name).controller(bridge_index);
            if mtu > 0 {
                enslave = enslave.mtu(mtu);
            }
            h.link()
                .change(enslave.build())
                .execute()
                .await
                .map_err(|e| {
                    LinkError::from_rtnl(
                        format!("attaching veth {name} to bridge with index {bridge_index}"),
                        e,
                    )
                })?;
            // A second request because the kernel applies port flags through the bridge the
            // link has when the request arrives. The alias is never part of a create either:
            // the kernel ignores IFLA_IFALIAS there (only a change sets it). Up comes last, in
            // the same request, after the flags.
            let alias = owner_alias(network);
            // On a host that is not crowded, IPv6 is kept off the port here (see
            // `create_veth`): address generation mode "none", in the same request.
            let no_ipv6 = !super::sysctl::crowded();
            let finish = |ipv6_attr: bool| {
                let mut m = LinkBridgePort::new(0)
                    .name(name)
                    .alias(alias.clone())
                    .isolated(isolated)
                    .hairpin(true);
                if ipv6_attr {
                    m = m.append_extra_attribute(no_ipv6_addresses());
                }
                h.link().set_port(m.up().build()).execute()
            };
            let res = match finish(no_ipv6).await {
                // The kernel refuses the whole request when the link has no IPv6 state (IPv6
                // disabled on the host, or an MTU below IPv6's 1280): then there is no IPv6
                // address to avoid either.
                Err(e) if no_ipv6 && nl::is_errno(&e, libc::EAFNOSUPPORT) => finish(false).await,
                r => r,
            };
            res.map_err(|e| {
                    LinkError::from_rtnl(
                        format!(
                            "setting alias {alias:?}, bridge port flags (isolated {}, hairpin on) and up on veth {name}",
                            if isolated { "on" } else { "off" }
                        ),
                        e,
                    )
                })
        })
    }

    async fn delete_by_name(&self, name: &str) -> Result<bool> {
        let h = &self.handle;
        let Some(link) = nl::get_link(h, name)
            .await
            .map_err(|e| LinkError::from_rtnl(format!("looking up link {name}"), e))?
        else {
            return Ok(false);
        };
        nl::delete_index(h, link.header.index)
            .await
            .map_err(|e| LinkError::from_rtnl(format!("deleting link {name}"), e))
    }

    /// Deletes link `name` only if it is of `kind` ("bridge", "veth") and marked as netd's
    /// ([`owner_alias`]; of `network` when given, of any network otherwise). A link netd
    /// did not make, or of another kind, is left alone and reported as [`Removal::Foreign`].
    pub fn delete_owned(&self, name: &str, kind: &str, network: Option<&str>) -> Result<Removal> {
        check_ifname("link", name)?;
        let h = &self.handle;
        self.run(async {
            let step = || format!("deleting {kind} {name}");
            let (_, st) = match find_of_kind(h, name, kind, &step).await? {
                Ok(found) => found,
                Err(removal) => return Ok(removal),
            };
            let owner = st.alias.as_deref().and_then(alias_network);
            match (owner, network) {
                (None, _) => {
                    return Ok(Removal::Foreign(format!(
                        "it does not carry netd's mark (alias {:?})",
                        st.alias.as_deref().unwrap_or("")
                    )))
                }
                (Some(o), Some(n)) if o != n => {
                    return Ok(Removal::Foreign(format!(
                        "it is marked as network {o}'s, not {n}'s"
                    )))
                }
                _ => {}
            }
            delete_found(h, st.index, &step).await
        })
    }

    /// Deletes the host veth `name` if it is netd's to remove here: marked as `network`'s
    /// ([`owner_alias`]), or unmarked with its peer inside the namespace at `peer_netns`.
    /// The second is the pair an ADD creates before netd answers and marks only after
    /// ([`HostLinks::create_veth`]), left behind when the plugin died in between. Being
    /// unmarked does not make a link netd's; its other end in the container's own namespace
    /// does, so a veth of that name whose peer is anywhere else, a link of another kind, or
    /// one marked for another network is left alone and reported as [`Removal::Foreign`].
    /// `None` leaves the respective case out.
    pub fn delete_host_veth(
        &self,
        name: &str,
        network: Option<&str>,
        peer_netns: Option<&str>,
    ) -> Result<Removal> {
        check_ifname("host veth", name)?;
        let h = &self.handle;
        self.run(async {
            let step = || format!("deleting host veth {name}");
            let (link, st) = match find_of_kind(h, name, "veth", &step).await? {
                Ok(found) => found,
                Err(removal) => return Ok(removal),
            };
            match (st.alias.as_deref().filter(|a| !a.is_empty()), network) {
                (Some(a), Some(n)) if alias_network(a) == Some(n) => {}
                (Some(a), _) => {
                    return Ok(Removal::Foreign(format!(
                        "it is marked {a:?}, not as netd's for {}",
                        network.map_or("this container".to_string(), |n| format!("network {n}"))
                    )))
                }
                (None, _) => {
                    let Some(path) = peer_netns else {
                        return Ok(Removal::Foreign("it does not carry netd's mark".into()));
                    };
                    let ns = match NetnsFile::open(path) {
                        Ok(ns) => ns,
                        Err(e) => {
                            return Ok(Removal::Foreign(format!(
                                "it does not carry netd's mark, and where its peer is cannot be checked: {e}"
                            )))
                        }
                    };
                    if !nl::peer_in_netns(h, &link, ns.raw_fd())
                        .await
                        .map_err(|e| LinkError::from_rtnl(format!("{}: finding its peer", step()), e))?
                    {
                        return Ok(Removal::Foreign(format!(
                            "it does not carry netd's mark and its peer is not in {path}"
                        )));
                    }
                }
            }
            delete_found(h, st.index, &step).await
        })
    }

    /// Deletes link `name` whatever its kind; false when there is none. Deleting a host veth
    /// deletes its container end too.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        check_ifname("link", name)?;
        self.run(self.delete_by_name(name))
    }

    pub fn link_state(&self, name: &str) -> Result<Option<LinkState>> {
        check_ifname("link", name)?;
        self.run(async {
            let link = nl::get_link(&self.handle, name)
                .await
                .map_err(|e| LinkError::from_rtnl(format!("looking up link {name}"), e))?;
            Ok(link.as_ref().map(nl::link_state))
        })
    }

    pub fn link_exists(&self, name: &str) -> Result<bool> {
        Ok(self.link_state(name)?.is_some())
    }

    /// Every link in the namespace, by index (for reconciliation: which veths are ports of
    /// which bridge).
    pub fn list_links(&self) -> Result<Vec<LinkState>> {
        self.run(async {
            let links = nl::list_links(&self.handle)
                .await
                .map_err(|e| LinkError::from_rtnl("listing links", e))?;
            let mut states: Vec<LinkState> = links.iter().map(nl::link_state).collect();
            states.sort_by_key(|st| st.index);
            Ok(states)
        })
    }

    /// Names of the links starting with `prefix` (e.g. the host veths, "vn"), sorted.
    pub fn list_links_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list_links()?
            .into_iter()
            .map(|st| st.name)
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }
}

impl Drop for HostLinks {
    /// A plain runtime drop blocks, and tokio panics when that happens inside an async task,
    /// which is where the last `Arc<HostLinks>` of the daemon may well go away.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Link `name` with its state if it is of `kind`; otherwise what [`HostLinks::delete_owned`]
/// and [`HostLinks::delete_host_veth`] report for it (missing, or someone else's).
async fn find_of_kind(
    h: &Handle,
    name: &str,
    kind: &str,
    step: &impl Fn() -> String,
) -> Result<std::result::Result<(LinkMessage, LinkState), Removal>> {
    let Some(link) = nl::get_link(h, name)
        .await
        .map_err(|e| LinkError::from_rtnl(step(), e))?
    else {
        return Ok(Err(Removal::Missing));
    };
    let st = nl::link_state(&link);
    if st.kind.as_deref() != Some(kind) {
        return Ok(Err(Removal::Foreign(format!(
            "it is a link of kind {}",
            st.kind.as_deref().unwrap_or("(none)")
        ))));
    }
    Ok(Ok((link, st)))
}

/// Deletes the link found and checked as `index`. By index: a link that replaced it under the
/// same name since the lookup is not the one that was checked.
async fn delete_found(h: &Handle, index: u32, step: &impl Fn() -> String) -> Result<Removal> {
    let deleted = nl::delete_index(h, index)
        .await
        .map_err(|e| LinkError::from_rtnl(step(), e))?;
    Ok(if deleted {
        Removal::Deleted
    } else {
        Removal::Missing
    })
}

/// IFLA_AF_SPEC asking the kernel to give a host veth no IPv6 address of its own (address
/// generation mode "none"): no link-local address or routes; the kernel's multicast route
/// (`ff00::/8`) remains.
fn no_ipv6_addresses() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])])
}

/// A random unicast, locally administered MAC, as the kernel would pick for a veth.
fn random_mac() -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most mac.len() bytes into the live buffer.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(LinkError::os(
            "choosing a MAC for a veth",
            std::io::Error::last_os_error(),
        ));
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// Sets `net.ipv4.conf.BRIDGE.route_localnet=1` on one of netd's own bridges (never a global
/// or another interface's sysctl), so that the host can reach ports published on 127.0.0.1:
/// the DNATed packet leaves through the bridge with its loopback source (masqueraded to the
/// bridge address by netd's table) and the answer, de-NATed back to 127.0.0.1, is accepted on
/// the bridge. netd's table drops every other packet for 127.0.0.0/8 arriving on a bridge, so
/// containers gain no access to the host's loopback services (see docs/ports.md).
pub fn enable_route_localnet(bridge: &str) -> Result<()> {
    check_ifname("bridge", bridge)?;
    let key = format!("net/ipv4/conf/{bridge}/route_localnet");
    if super::read_sysctl(&key).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    super::write_sysctl(&key, "1")
        .map_err(|e| LinkError::os(format!("setting {} to 1", key.replace('/', ".")), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread parked in a network namespace of its own; the namespace lives while it does.
    struct Parked {
        path: String,
        stop: std::sync::mpsc::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    }

    fn parked_netns() -> Parked {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare on this thread only; the namespace goes with the thread.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: gettid cannot fail.
            let tid = unsafe { libc::gettid() };
            tx.send(format!("/proc/{}/task/{tid}/ns/net", std::process::id()))
                .unwrap();
            let _ = stopped.recv();
        });
        Parked {
            path: rx.recv().unwrap(),
            stop,
            thread,
        }
    }

    /// On a host with many containers, a new host veth gets no IPv6 at all: `disable_ipv6`
    /// before it is up, so not even the multicast route is made (crates/link/src/sysctl.rs
    /// says why this depends on the count). Needs root, as the plugin.
    #[test]
    fn a_crowded_hosts_veths_get_no_ipv6_at_all() {
        let host = parked_netns();
        let containers: Vec<Parked> = (0..super::super::sysctl::CROWDED + 2)
            .map(|_| parked_netns())
            .collect();
        let host_path = host.path.clone();
        let paths: Vec<String> = containers.iter().map(|c| c.path.clone()).collect();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&host_path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with an open namespace file.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let links = HostLinks::new().unwrap();
            let mut last = String::new();
            for (i, p) in paths.iter().enumerate() {
                last = format!("vncrowd{i}");
                links
                    .create_veth(&last, &format!("tmpcrowd{i}"), p)
                    .unwrap();
            }
            assert!(
                super::super::sysctl::crowded(),
                "{} namespaces with ids",
                paths.len()
            );
            let off =
                std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{last}/disable_ipv6"));
            assert_eq!(off.unwrap(), "1\n");
            // Up, as an attach leaves it: still nothing of it in the IPv6 table.
            links
                .run(nl::set_up(
                    &links.handle,
                    links.link_state(&last).unwrap().unwrap().index,
                ))
                .unwrap();
            let routes = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap();
            assert!(!routes.contains(&last), "{routes}");
        })
        .join()
        .unwrap();
        for p in containers.into_iter().chain([host]) {
            let _ = p.stop.send(());
            p.thread.join().unwrap();
        }
    }
}
