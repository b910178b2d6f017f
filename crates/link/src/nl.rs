//! rtnetlink requests shared by the host and container sides. Errors stay rtnetlink's here;
//! callers add the step that names the object.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InfoBridge, InfoData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::{Error, Handle, LinkUnspec, RouteMessageBuilder};

use super::{format_mac, LinkState, Route};

/// The errno of a netlink NACK, if that is what `err` is.
pub(crate) fn errno(err: &Error) -> Option<i32> {
    match err {
        Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

pub(crate) fn is_errno(err: &Error, code: i32) -> bool {
    errno(err) == Some(code)
}

pub(crate) async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(msg) => Ok(msg),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the peer of the veth `link` (a message answered in `h`'s namespace) lives in the
/// namespace open as `ns_fd`. The link's IFLA_LINK_NETNSID is the id `h`'s namespace gives the
/// peer's namespace; RTM_GETNSID says which id it gives `ns_fd`'s. Ids are compared, not
/// paths: `/run/netns/x` and `/proc/PID/ns/net` can name one namespace. Answering for the
/// link made the kernel assign the peer's namespace an id if it had none, so a namespace
/// without an id is not the peer's. No IFLA_LINK_NETNSID: the peer is in `h`'s own namespace.
pub(crate) async fn peer_in_netns(
    h: &Handle,
    link: &LinkMessage,
    ns_fd: RawFd,
) -> Result<bool, Error> {
    let Some(peer) = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    }) else {
        return Ok(false);
    };
    Ok(netns_id(h, ns_fd).await? == Some(peer))
}

/// The id `h`'s namespace gives the namespace open as `fd`; None when it has none.
pub(crate) async fn netns_id(h: &Handle, fd: RawFd) -> Result<Option<i32>, Error> {
    let mut msg = NsidMessage::default();
    let fd = u32::try_from(fd).map_err(|_| Error::InvalidNla(format!("bad fd {fd}")))?;
    msg.attributes = vec![NsidAttribute::Fd(fd)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut answers = h.clone().request(req)?;
    while let Some(answer) = answers.next().await {
        match answer.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(Error::NetlinkError(e)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                let id = m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                });
                return Ok(id);
            }
            _ => {}
        }
    }
    Ok(None)
}

pub(crate) async fn list_links(h: &Handle) -> Result<Vec<LinkMessage>, Error> {
    h.link().get().execute().try_collect().await
}

pub(crate) fn link_state(msg: &LinkMessage) -> LinkState {
    let mut st = LinkState {
        name: String::new(),
        index: msg.header.index,
        kind: None,
        master: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        mac: None,
        mtu: 0,
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => st.name = n.clone(),
            LinkAttribute::Controller(m) if *m != 0 => st.master = Some(*m),
            LinkAttribute::Address(a) => st.mac = Some(format_mac(a)),
            LinkAttribute::Mtu(m) => st.mtu = *m,
            LinkAttribute::IfAlias(a) => st.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        st.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    st
}

/// What [`HostLinks::ensure_bridge`](super::HostLinks::ensure_bridge) reads from a bridge's
/// own link message besides [`LinkState`], so that an ADD needs no further request (and no
/// /proc/sys lookup) to know them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BridgeFacts {
    /// IFLA_BR_MCAST_SNOOPING; None when the answer did not say.
    pub mcast_snooping: Option<bool>,
    /// net.ipv4.conf.BRIDGE.route_localnet, from IFLA_AF_SPEC; None without IPv4 conf.
    pub route_localnet: Option<bool>,
}

pub(crate) fn bridge_facts(msg: &LinkMessage) -> BridgeFacts {
    let mut facts = BridgeFacts::default();
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Data(InfoData::Bridge(data)) = info {
                        for d in data {
                            if let InfoBridge::MulticastSnooping(on) = d {
                                facts.mcast_snooping = Some(*on);
                            }
                        }
                    }
                }
            }
            LinkAttribute::AfSpecUnspec(specs) => {
                for spec in specs {
                    if let AfSpecUnspec::Inet(inet) = spec {
                        for i in inet {
                            if let AfSpecInet::DevConf(conf) = i {
                                facts.route_localnet = Some(conf.route_localnet != 0);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    facts
}

pub(crate) async fn set_up(h: &Handle, index: u32) -> Result<(), Error> {
    h.link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

pub(crate) async fn delete_index(h: &Handle, index: u32) -> Result<bool, Error> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Addresses on `index` with their scope.
pub(crate) async fn addresses(h: &Handle, index: u32) -> Result<Vec<(IpNet, bool)>, Error> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for m in msgs {
        // IPv4 keeps the interface's own address in IFA_LOCAL (IFA_ADDRESS is the peer on
        // point-to-point links); IPv6 has only IFA_ADDRESS.
        let mut addr = None;
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(ip) => addr = Some(*ip),
                AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = addr {
            if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                out.push((net, m.header.scope == AddressScope::Universe));
            }
        }
    }
    Ok(out)
}

/// Adds `net` unless it is there; IPv6 addresses skip duplicate address detection so they are
/// usable as soon as this returns (a tentative address cannot be a source or a gateway).
pub(crate) async fn ensure_address(h: &Handle, index: u32, net: IpNet) -> Result<(), Error> {
    let mut req = h.address().add(index, net.addr(), net.prefix_len());
    if net.addr().is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        r => r,
    }
}

pub(crate) fn route_message(index: u32, route: &Route) -> Result<RouteMessage, String> {
    let dst = route.dst.trunc();
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| e.to_string())?
        .output_interface(index);
    match route.gateway {
        Some(gw) => {
            if gw.is_ipv4() != dst.addr().is_ipv4() {
                return Err(format!("gateway {gw} is not of the family of {dst}"));
            }
            b = b.gateway(gw).map_err(|e| e.to_string())?;
        }
        None => b = b.scope(RouteScope::Link),
    }
    Ok(b.build())
}

/// Adds `route` through `index`. An equal route already there is fine (a retry); another
/// route for the same destination (say a default route a chained plugin set through another
/// interface) is not, and keeps its EEXIST.
pub(crate) async fn ensure_route(h: &Handle, index: u32, route: &Route) -> Result<(), Error> {
    let msg = route_message(index, route).map_err(Error::InvalidNla)?;
    match h.route().add(msg).execute().await {
        Err(e) if is_errno(&e, libc::EEXIST) => {
            let want = Route {
                dst: route.dst.trunc(),
                gateway: route.gateway,
            };
            if routes(h, index).await?.contains(&want) {
                Ok(())
            } else {
                Err(e)
            }
        }
        r => r,
    }
}

/// Routes through `index` in the main table that someone added (not the kernel's prefix
/// routes).
pub(crate) async fn routes(h: &Handle, index: u32) -> Result<Vec<Route>, Error> {
    let mut msgs: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    let v6: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    msgs.extend(v6);
    let mut out = Vec::new();
    for m in msgs {
        if m.header.protocol == RouteProtocol::Kernel || m.header.kind != RouteType::Unicast {
            continue;
        }
        let mut table = u32::from(m.header.table);
        let mut oif = None;
        let mut dst = None;
        let mut gateway = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Destination(d) => dst = route_ip(d),
                RouteAttribute::Gateway(g) => gateway = route_ip(g),
                RouteAttribute::Via(RouteVia::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
                RouteAttribute::Via(RouteVia::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) || oif != Some(index) {
            continue;
        }
        let dst = dst.unwrap_or(match m.header.address_family {
            netlink_packet_route::AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
        if let Ok(dst) = IpNet::new(dst, m.header.destination_prefix_length) {
            out.push(Route { dst, gateway });
        }
    }
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}
