//! Request resolution: a request to create a network or attach an endpoint, plus the facts it
//! needs (the networks and endpoints that exist, the host's routes, the daemon's defaults),
//! becomes the [`Network`] or [`Endpoint`] to store, or a typed refusal. Validation, subnet
//! choice, gateways, modes, the bridge name, the CNI version, port-mapping checks, fixed
//! addresses and address allocation all happen here, without I/O: the daemon's engine gathers
//! the facts from the kernel and its state, calls these functions, and applies the result.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::conflist;
use crate::endpoints::Endpoints;
use crate::ipam::{self, Cursor, IpamError};
use crate::model::{
    self, Endpoint, EndpointKey, GatewayMode, MacAddr, NameError, Network, PortMapping,
    RequestedAddr,
};
use crate::ports::{self, PortError};

/// A Linux bridge numbers its ports in 10 bits and port 0 is reserved (the kernel's
/// BR_MAX_PORTS), so one network holds at most this many endpoints whatever its subnet.
pub const MAX_BRIDGE_PORTS: usize = 1023;

/// How a refusal is reported: the request is wrong in itself, it clashes with what exists,
/// or the state it was checked against is inconsistent (a bug, not the caller's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    Conflict,
    Inconsistent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("network {0:?} already exists")]
    NetworkExists(String),
    #[error("bridge {bridge} is already used by network {network}")]
    BridgeUsed { bridge: String, network: String },
    #[error("an internal network has no gateway to the outside, so it cannot use the routed gateway mode")]
    InternalRouted,
    #[error("a network without IPv4 needs IPv6 (--ipv6)")]
    NoFamily,
    #[error("--subnet/--gateway contradict a network without IPv4")]
    Ipv4WithoutIpv4,
    #[error("an IPv6 gateway mode needs an IPv6 network (--ipv6)")]
    Ipv6ModeWithoutIpv6,
    #[error(transparent)]
    CniVersion(#[from] conflist::UnsupportedVersion),
    #[error("MTU {0} is out of range (68-65535)")]
    MtuRange(u32),
    #[error("MTU {0} is below IPv6's minimum of 1280")]
    MtuBelowIpv6(u32),
    #[error("subnet {subnet} has host bits set; did you mean {}?", .subnet.trunc())]
    HostBits { subnet: IpNet },
    #[error("subnet {0} is too small")]
    SubnetTooSmall(IpNet),
    /// A subnet asked for overlaps another network's, or no automatic one is left.
    #[error(transparent)]
    Subnet(IpamError),
    /// A gateway that is no host address of its subnet (or a subnet without one).
    #[error(transparent)]
    Gateway(IpamError),
    /// IPv6 is asked for but the host does not forward it; the text says why and how to fix.
    #[error("{0}")]
    Ipv6Forwarding(String),
    #[error("an automatic IPv6 subnet was asked for, but no ULA prefix was given")]
    NoUlaPrefix,
    #[error("the network to ensure is {ensure:?}, but the attach is to {attach:?}")]
    EnsureOtherNetwork { ensure: String, attach: String },
    #[error(
        "network {network} exists with subnets {has}, but the CNI configuration asks for {asked}; \
         fix the configuration's \"subnets\" or remove the network (netctl network rm {network})"
    )]
    OtherSubnets {
        network: String,
        has: String,
        asked: String,
    },
    #[error(
        "network {network} exists with {family} gateway mode {has}, but the CNI configuration asks \
         for {asked}; fix the configuration or remove the network (netctl network rm {network})"
    )]
    OtherMode {
        network: String,
        family: &'static str,
        has: GatewayMode,
        asked: GatewayMode,
    },
    #[error("netns {0:?} is not an absolute path")]
    NetnsNotAbsolute(String),
    #[error("container {} already has interface {} on network {}", .0.container_id, .0.ifname, .0.network)]
    EndpointExists(EndpointKey),
    #[error("network {network} has {attached} endpoints, the most a Linux bridge can hold ({MAX_BRIDGE_PORTS} ports); attach further containers to another network")]
    BridgeFull { network: String, attached: usize },
    #[error(transparent)]
    Port(PortError),
    #[error("port mapping [::1]:{}->{}/{}: netd cannot publish ports on the IPv6 loopback address ::1 (Linux has no route_localnet for IPv6: answers addressed back to ::1 are dropped when they arrive from a container); publish on 127.0.0.1 or on a host address instead", .0.host_port, .0.container_port, .0.protocol)]
    Ipv6Loopback(PortMapping),
    #[error("two {family} addresses asked for; network {network} gives a container one address per family")]
    TwoAddresses {
        family: &'static str,
        network: String,
    },
    #[error("address {addr} asked for, but network {network} has no {family} subnet")]
    NoSubnetFor {
        addr: IpAddr,
        network: String,
        family: &'static str,
    },
    #[error("address {addr} asked for with prefix /{prefix}, but network {network}'s subnet is {subnet}")]
    PrefixMismatch {
        addr: RequestedAddr,
        prefix: u8,
        network: String,
        subnet: IpNet,
    },
    /// A fixed address that is no host address of the subnet, or that someone holds.
    #[error(transparent)]
    FixedAddress(IpamError),
    #[error("network {network} has no gateway for {addr}")]
    NoGateway { network: String, addr: IpAddr },
    /// The allocator found no free address.
    #[error(transparent)]
    Allocation(IpamError),
}

impl ResolveError {
    /// How the API reports this refusal (docs/reliability.md lists the statuses and CNI codes).
    pub fn kind(&self) -> Kind {
        use ResolveError as E;
        match self {
            E::NetworkExists(_)
            | E::BridgeUsed { .. }
            | E::Subnet(_)
            | E::OtherSubnets { .. }
            | E::OtherMode { .. }
            | E::EndpointExists(_)
            | E::BridgeFull { .. }
            | E::Allocation(_) => Kind::Conflict,
            // A host binding another endpoint holds is a conflict; every other refused mapping
            // (port 0, a family the network lacks, an internal network, a binding asked for
            // twice, what the gateway modes make of it) can never work as asked.
            E::Port(PortError::Taken { .. }) => Kind::Conflict,
            E::FixedAddress(e) if e.is_conflict() => Kind::Conflict,
            E::NoGateway { .. } | E::NoUlaPrefix => Kind::Inconsistent,
            _ => Kind::Invalid,
        }
    }
}

/// What a create request asks for (the API's `CreateNetwork`, field for field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    pub name: String,
    pub subnet4: Option<Ipv4Net>,
    pub gateway4: Option<Ipv4Addr>,
    pub bridge: Option<String>,
    pub ipv6: bool,
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub no_ipv4: bool,
    pub internal: bool,
    pub icc: Option<bool>,
    pub gateway_mode4: Option<GatewayMode>,
    pub gateway_mode6: Option<GatewayMode>,
    pub mtu: Option<u32>,
    pub cni_version: Option<String>,
}

impl NetworkRequest {
    pub fn wants_ipv6(&self) -> bool {
        self.ipv6 || self.subnet6.is_some() || self.gateway6.is_some()
    }

    /// Whether an IPv4 subnet is chosen automatically (from the pool, clear of host routes).
    pub fn chooses_subnet4(&self) -> bool {
        !self.no_ipv4 && self.subnet4.is_none()
    }

    /// Whether an IPv6 subnet is chosen automatically (from the ULA prefix).
    pub fn chooses_subnet6(&self) -> bool {
        self.wants_ipv6() && self.subnet6.is_none()
    }
}

/// The daemon's defaults for what a create request leaves open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    pub pool4: Ipv4Net,
    pub pool4_prefix: u8,
    pub cni_version: String,
}

/// What the host contributes to a new network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFacts {
    /// Destinations of the host's routes; automatic subnets keep clear of them. Needed only
    /// when a subnet is chosen automatically.
    pub routes: Vec<IpNet>,
    /// The ULA /48 automatic IPv6 subnets come from; needed only when one is chosen.
    pub ula: Option<Ipv6Net>,
    /// Why IPv6 forwarding is unusable, if it is (checked only for networks with IPv6).
    pub ipv6_forwarding: Result<(), String>,
    /// When the network is created (seconds since the epoch).
    pub now: u64,
}

/// `nd-NAME` when that fits an interface name, else `nd-` and a hash of the name.
pub fn default_bridge_name(network: &str) -> String {
    let plain = format!("nd-{network}");
    if model::validate_ifname(&plain).is_ok() {
        plain
    } else {
        format!("nd-{:012x}", model::fnv1a(&[network.as_bytes()]) >> 16)
    }
}

/// The first step of a create: the name, and the bridge the network gets (asked for or
/// derived from the name), neither used by another network. Whether the host already has
/// a link of that name is the caller's to check before [`network`].
pub fn bridge(
    req: &NetworkRequest,
    networks: &BTreeMap<String, Network>,
) -> Result<String, ResolveError> {
    model::validate_network_name(&req.name)?;
    if networks.contains_key(&req.name) {
        return Err(ResolveError::NetworkExists(req.name.clone()));
    }
    let bridge = match &req.bridge {
        Some(b) => {
            model::validate_ifname(b)?;
            b.clone()
        }
        None => default_bridge_name(&req.name),
    };
    if let Some(other) = networks.values().find(|n| n.bridge == bridge) {
        return Err(ResolveError::BridgeUsed {
            bridge,
            network: other.name.clone(),
        });
    }
    Ok(bridge)
}

/// The rest of a create: modes, MTU, CNI version, and per family the subnet (asked for and
/// free, or the first free one) and its gateway.
pub fn network(
    req: NetworkRequest,
    bridge: String,
    networks: &BTreeMap<String, Network>,
    defaults: &Defaults,
    facts: &NetworkFacts,
) -> Result<Network, ResolveError> {
    let mode4 = req.gateway_mode4.unwrap_or_default();
    let mode6 = req.gateway_mode6.unwrap_or_default();
    if req.internal && (mode4 == GatewayMode::Routed || mode6 == GatewayMode::Routed) {
        return Err(ResolveError::InternalRouted);
    }
    let wants6 = req.wants_ipv6();
    if req.no_ipv4 && !wants6 {
        return Err(ResolveError::NoFamily);
    }
    if req.no_ipv4 && (req.subnet4.is_some() || req.gateway4.is_some()) {
        return Err(ResolveError::Ipv4WithoutIpv4);
    }
    if !wants6 && req.gateway_mode6.is_some() {
        return Err(ResolveError::Ipv6ModeWithoutIpv6);
    }
    let cni_version = req
        .cni_version
        .clone()
        .unwrap_or_else(|| defaults.cni_version.clone());
    conflist::check_version(&cni_version)?;
    let mtu = req.mtu.unwrap_or(1500);
    if !(68..=65535).contains(&mtu) {
        return Err(ResolveError::MtuRange(mtu));
    }
    if wants6 && mtu < 1280 {
        return Err(ResolveError::MtuBelowIpv6(mtu));
    }

    let taken: Vec<(String, IpNet)> = networks
        .values()
        .flat_map(|n| {
            let name = format!("network {}", n.name);
            n.subnet4
                .map(IpNet::V4)
                .into_iter()
                .chain(n.subnet6.map(IpNet::V6))
                .map(move |s| (name.clone(), s))
        })
        .collect();
    let avoid: Vec<IpNet> = taken
        .iter()
        .map(|(_, s)| *s)
        .chain(facts.routes.iter().copied())
        .collect();

    let (subnet4, gateway4) = if req.no_ipv4 {
        (None, None)
    } else {
        let subnet = subnet(req.subnet4, &taken, || {
            ipam::choose_subnet4(defaults.pool4, defaults.pool4_prefix, &avoid)
                .map_err(ResolveError::Subnet)
        })?;
        let gateway = match req.gateway4 {
            Some(g) => ipam::check_gateway4(subnet, g).map(|()| g),
            None => ipam::default_gateway4(subnet),
        }
        .map_err(ResolveError::Gateway)?;
        (Some(subnet), Some(gateway))
    };

    let (subnet6, gateway6) = if wants6 {
        facts
            .ipv6_forwarding
            .clone()
            .map_err(ResolveError::Ipv6Forwarding)?;
        let subnet = subnet(req.subnet6, &taken, || {
            let ula = facts.ula.ok_or(ResolveError::NoUlaPrefix)?;
            ipam::choose_subnet6(ula, &avoid).map_err(ResolveError::Subnet)
        })?;
        let gateway = match req.gateway6 {
            Some(g) => ipam::check_gateway6(subnet, g)
                .map(|()| g)
                .map_err(ResolveError::Gateway)?,
            None => ipam::default_gateway6(subnet),
        };
        (Some(subnet), Some(gateway))
    } else {
        (None, None)
    };

    Ok(Network {
        name: req.name,
        bridge,
        subnet4,
        gateway4,
        subnet6,
        gateway6,
        internal: req.internal,
        icc: req.icc.unwrap_or(true),
        gateway_mode4: mode4,
        gateway_mode6: mode6,
        mtu,
        cni_version,
        created: facts.now,
    })
}

/// One family's subnet: the one asked for (no host bits, not too small for a gateway and an
/// endpoint, overlapping no other network), or `auto`'s choice.
fn subnet<S: Copy + Into<IpNet>>(
    asked: Option<S>,
    taken: &[(String, IpNet)],
    auto: impl FnOnce() -> Result<S, ResolveError>,
) -> Result<S, ResolveError> {
    let Some(s) = asked else {
        return auto();
    };
    let net: IpNet = s.into();
    if net != net.trunc() {
        return Err(ResolveError::HostBits { subnet: net });
    }
    // IPv4's smallest usable subnet is the gateway's business (ipam::default_gateway4).
    if matches!(net, IpNet::V6(_)) && net.prefix_len() > 126 {
        return Err(ResolveError::SubnetTooSmall(net));
    }
    ipam::check_free(net, taken).map_err(ResolveError::Subnet)?;
    Ok(s)
}

/// An attach request arriving with a network description (`ensure_network`): it must name
/// the attach's network, and if that network exists already, have exactly its subnets.
/// Attaching pods to a network other than the one the node's configuration describes would
/// give them addresses nobody routes.
pub fn check_ensure(
    spec: &NetworkRequest,
    attach_to: &str,
    existing: Option<&Network>,
) -> Result<(), ResolveError> {
    if spec.name != attach_to {
        return Err(ResolveError::EnsureOtherNetwork {
            ensure: spec.name.clone(),
            attach: attach_to.to_string(),
        });
    }
    let Some(net) = existing else {
        return Ok(());
    };
    let list = |v4: Option<Ipv4Net>, v6: Option<Ipv6Net>| {
        let v: Vec<String> = v4
            .map(|s| s.to_string())
            .into_iter()
            .chain(v6.map(|s| s.to_string()))
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    if spec.subnet4 != net.subnet4 || spec.subnet6 != net.subnet6 {
        return Err(ResolveError::OtherSubnets {
            network: net.name.clone(),
            has: list(net.subnet4, net.subnet6),
            asked: list(spec.subnet4, spec.subnet6),
        });
    }
    // A gateway mode the configuration names must be the network's too: pods attached in
    // nat mode where the operator asked for routed would be unreachable from other nodes.
    let modes = [
        (
            "IPv4",
            spec.gateway_mode4,
            net.gateway_mode4,
            net.subnet4.is_some(),
        ),
        (
            "IPv6",
            spec.gateway_mode6,
            net.gateway_mode6,
            net.subnet6.is_some(),
        ),
    ];
    for (family, asked, has, present) in modes {
        if let Some(asked) = asked.filter(|a| present && *a != has) {
            return Err(ResolveError::OtherMode {
                network: net.name.clone(),
                family,
                has,
                asked,
            });
        }
    }
    Ok(())
}

/// What an attach request asks for (the API's `AttachRequest` without `ensure_network`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRequest {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub port_mappings: Vec<PortMapping>,
    pub ips: Vec<RequestedAddr>,
    pub mac: Option<MacAddr>,
}

impl EndpointRequest {
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// The checks of an attach that need nothing but the request: the names, and a netns given
/// as an absolute path (the caller then looks at that path).
pub fn check_endpoint_request(req: &EndpointRequest) -> Result<(), ResolveError> {
    model::validate_container_id(&req.container_id)?;
    model::validate_ifname(&req.ifname)?;
    if !req.netns.starts_with('/') {
        return Err(ResolveError::NetnsNotAbsolute(req.netns.clone()));
    }
    Ok(())
}

/// The networks and endpoints that exist, by key (the endpoints with their index, so an
/// attach looks up what it needs instead of walking them all).
#[derive(Debug, Clone, Copy)]
pub struct State<'a> {
    pub networks: &'a BTreeMap<String, Network>,
    pub endpoints: &'a Endpoints,
}

/// A resolved attach: the endpoint to store, and the network's allocation cursor after it
/// (moved only by allocated addresses: a fixed one says nothing about where the next free
/// address is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub endpoint: Endpoint,
    pub cursor: Cursor,
}

/// The rest of an attach to `net` (a network of `state`), after [`check_endpoint_request`]:
/// no such endpoint yet, room on the bridge, port mappings that work and clash with no other
/// endpoint's, fixed addresses that are free, and an allocated address for each other family
/// (next-fit from `cursor`).
pub fn endpoint(
    req: EndpointRequest,
    net: &Network,
    state: State<'_>,
    cursor: Cursor,
    now: u64,
) -> Result<Resolved, ResolveError> {
    let key = req.key();
    if state.endpoints.contains_key(&key) {
        return Err(ResolveError::EndpointExists(key));
    }
    let attached = state.endpoints.count_in(&net.name);
    if attached >= MAX_BRIDGE_PORTS {
        return Err(ResolveError::BridgeFull {
            network: net.name.clone(),
            attached,
        });
    }
    check_ports(net, &req.port_mappings, state)?;

    let (fixed4, fixed6) = fixed_addrs(net, &req.ips, state.endpoints)?;
    let used = state.endpoints.addrs_in(&net.name);
    let mut cursor = cursor;
    let addr4 = address(
        fixed4,
        net.subnet4.zip(net.gateway4),
        &mut cursor.last4,
        |(subnet, gateway), after| ipam::allocate4(subnet, gateway, &used, after),
    )?;
    let addr6 = address(
        fixed6,
        net.subnet6.zip(net.gateway6),
        &mut cursor.last6,
        |(subnet, gateway), after| ipam::allocate6(subnet, gateway, &used, after),
    )?;
    let mut ports = req.port_mappings;
    ports.sort();
    let endpoint = Endpoint {
        network: req.network,
        host_veth: model::host_veth_name(&req.container_id, &req.ifname),
        container_id: req.container_id,
        ifname: req.ifname,
        netns: req.netns,
        addr4,
        addr6,
        ports,
        mac: req.mac,
        created: now,
    };
    Ok(Resolved { endpoint, cursor })
}

/// One family's address: the fixed one asked for, else the next free one after the cursor
/// `last` (which then moves on to it), else none for a family the network lacks (`pool`:
/// its subnet and gateway). Only allocated addresses move the cursor: a fixed one says
/// nothing about where the next free address is.
fn address<A: Copy, P>(
    fixed: Option<A>,
    pool: Option<P>,
    last: &mut Option<A>,
    allocate: impl FnOnce(P, Option<A>) -> Result<A, IpamError>,
) -> Result<Option<A>, ResolveError> {
    if fixed.is_some() {
        return Ok(fixed);
    }
    let Some(pool) = pool else {
        return Ok(None);
    };
    let addr = allocate(pool, *last).map_err(ResolveError::Allocation)?;
    *last = Some(addr);
    Ok(Some(addr))
}

/// Port mappings: first what the gateway modes make of them (a property of the request),
/// then clashes with each other and with every existing endpoint's (looked for only among
/// the endpoints that map one of the same host ports, which the index finds), then ::1.
fn check_ports(
    net: &Network,
    mappings: &[PortMapping],
    state: State<'_>,
) -> Result<(), ResolveError> {
    ports::validate(net, mappings).map_err(ResolveError::Port)?;
    let existing = state
        .endpoints
        .port_neighbours(mappings)
        .into_iter()
        .filter_map(|e| state.networks.get(&e.network).map(|n| (e, n)));
    ports::check(net, mappings, existing).map_err(ResolveError::Port)?;
    // ::1 cannot be DNATed to a container (IPv6 has no route_localnet: the answer, de-NATed
    // back to ::1, is dropped when it arrives on the bridge), so such a binding is refused
    // rather than accepted and silently dead. See docs/ports.md.
    match mappings
        .iter()
        .find(|pm| pm.host_ip == Some(IpAddr::V6(Ipv6Addr::LOCALHOST)))
    {
        Some(pm) => Err(ResolveError::Ipv6Loopback(*pm)),
        None => Ok(()),
    }
}

/// The fixed addresses an attach asks for, checked against the network: one per family, in
/// its subnet with its prefix, a host address, not the gateway, and held by no other
/// endpoint of the network.
fn fixed_addrs(
    net: &Network,
    ips: &[RequestedAddr],
    endpoints: &Endpoints,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ResolveError> {
    let (mut v4, mut v6) = (None, None);
    for r in ips {
        let (subnet, slot_taken) = match r.addr {
            IpAddr::V4(a) => (net.subnet4.map(IpNet::V4), v4.replace(a).is_some()),
            IpAddr::V6(a) => (net.subnet6.map(IpNet::V6), v6.replace(a).is_some()),
        };
        let family = if r.addr.is_ipv4() { "IPv4" } else { "IPv6" };
        if slot_taken {
            return Err(ResolveError::TwoAddresses {
                family,
                network: net.name.clone(),
            });
        }
        let Some(subnet) = subnet else {
            return Err(ResolveError::NoSubnetFor {
                addr: r.addr,
                network: net.name.clone(),
                family,
            });
        };
        if let Some(p) = r.prefix.filter(|p| *p != subnet.prefix_len()) {
            return Err(ResolveError::PrefixMismatch {
                addr: *r,
                prefix: p,
                network: net.name.clone(),
                subnet,
            });
        }
    }
    if v4.is_none() && v6.is_none() {
        return Ok((None, None));
    }
    // Only the holders of the requested addresses: naming every endpoint of the network
    // would cost a string per endpoint on every attach.
    let holders: BTreeMap<IpAddr, String> = [v4.map(IpAddr::V4), v6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let e = endpoints.holder_of(&net.name, a)?;
            Some((a, format!("container {} {}", e.container_id, e.ifname)))
        })
        .collect();
    let family4 = (
        v4.map(IpAddr::V4),
        net.subnet4.map(IpNet::V4),
        net.gateway4.map(IpAddr::V4),
    );
    let family6 = (
        v6.map(IpAddr::V6),
        net.subnet6.map(IpNet::V6),
        net.gateway6.map(IpAddr::V6),
    );
    for (addr, subnet, gateway) in [family4, family6] {
        let Some(addr) = addr else { continue };
        // The loop above refused a family without a subnet; a subnet always has a gateway.
        let (Some(subnet), Some(gateway)) = (subnet, gateway) else {
            return Err(ResolveError::NoGateway {
                network: net.name.clone(),
                addr,
            });
        };
        ipam::check_requested(subnet, gateway, addr, &holders)
            .map_err(ResolveError::FixedAddress)?;
    }
    Ok((v4, v6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;

    fn defaults() -> Defaults {
        Defaults {
            pool4: "10.99.0.0/16".parse().unwrap(),
            pool4_prefix: 24,
            cni_version: "1.0.0".into(),
        }
    }

    fn facts() -> NetworkFacts {
        NetworkFacts {
            routes: vec![
                "10.99.0.0/24".parse().unwrap(),
                "fd00:1:2::/64".parse().unwrap(),
            ],
            ula: Some("fd00:1:2::/48".parse().unwrap()),
            ipv6_forwarding: Ok(()),
            now: 7,
        }
    }

    fn req(name: &str) -> NetworkRequest {
        NetworkRequest {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Both steps of a create, against `networks`.
    fn create(
        r: NetworkRequest,
        networks: &BTreeMap<String, Network>,
        facts: &NetworkFacts,
    ) -> Result<Network, ResolveError> {
        let bridge = bridge(&r, networks)?;
        network(r, bridge, networks, &defaults(), facts)
    }

    fn with(nets: &[Network]) -> BTreeMap<String, Network> {
        nets.iter().map(|n| (n.name.clone(), n.clone())).collect()
    }

    #[test]
    fn a_bare_request_gets_defaults_and_the_first_free_subnet() {
        let none = BTreeMap::new();
        let a = create(req("a"), &none, &facts()).unwrap();
        // 10.99.0.0/24 is a host route.
        assert_eq!(a.subnet4.unwrap().to_string(), "10.99.1.0/24");
        assert_eq!(a.gateway4.unwrap().to_string(), "10.99.1.1");
        assert_eq!(a.subnet6, None);
        assert_eq!(a.bridge, "nd-a");
        assert_eq!((a.mtu, a.icc, a.internal), (1500, true, false));
        assert_eq!(a.cni_version, "1.0.0");
        assert_eq!(a.created, 7);
        let b = create(req("b"), &with(std::slice::from_ref(&a)), &facts()).unwrap();
        assert_eq!(b.subnet4.unwrap().to_string(), "10.99.2.0/24");

        // The ULA prefix's first /64 is routed on the host already.
        let v6 = NetworkRequest {
            ipv6: true,
            ..req("six")
        };
        let six = create(v6.clone(), &none, &facts()).unwrap();
        assert_eq!(six.subnet6.unwrap().to_string(), "fd00:1:2:1::/64");
        assert_eq!(six.gateway6.unwrap().to_string(), "fd00:1:2:1::1");
        let no_ula = NetworkFacts {
            ula: None,
            ..facts()
        };
        let err = create(v6, &none, &no_ula).unwrap_err();
        assert_eq!(err, ResolveError::NoUlaPrefix);
        assert_eq!(err.kind(), Kind::Inconsistent);
    }

    #[test]
    fn names_and_bridges_are_checked_first() {
        let a = create(req("a"), &BTreeMap::new(), &facts()).unwrap();
        let nets = with(&[a]);
        let cases = [
            (req("bad/name"), Kind::Invalid, "contains"),
            (req("a"), Kind::Conflict, "network \"a\" already exists"),
            (
                NetworkRequest {
                    bridge: Some("nd-a".into()),
                    ..req("b")
                },
                Kind::Conflict,
                "bridge nd-a is already used by network a",
            ),
            (
                NetworkRequest {
                    bridge: Some("a-name-too-long-for-linux".into()),
                    ..req("b")
                },
                Kind::Invalid,
                "the limit is 15",
            ),
        ];
        for (r, kind, text) in cases {
            let err = bridge(&r, &nets).unwrap_err();
            assert_eq!(err.kind(), kind, "{r:?}: {err}");
            assert!(err.to_string().contains(text), "{r:?}: {err}");
        }
        assert_eq!(default_bridge_name("web"), "nd-web");
        let long = default_bridge_name("a-rather-long-network-name");
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("nd-"));
        assert_eq!(long, default_bridge_name("a-rather-long-network-name"));
    }

    #[test]
    fn contradictory_modes_versions_and_mtus_are_refused() {
        let taken = create(
            NetworkRequest {
                subnet4: Some("10.50.0.0/24".parse().unwrap()),
                ..req("taken")
            },
            &BTreeMap::new(),
            &facts(),
        )
        .unwrap();
        let nets = with(&[taken]);
        let ok = facts();
        let cases: Vec<(NetworkRequest, &NetworkFacts, Kind, &str)> = vec![
            (
                NetworkRequest {
                    internal: true,
                    gateway_mode4: Some(GatewayMode::Routed),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "cannot use the routed gateway mode",
            ),
            (
                NetworkRequest {
                    no_ipv4: true,
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "needs IPv6",
            ),
            (
                NetworkRequest {
                    no_ipv4: true,
                    ipv6: true,
                    subnet4: Some("10.60.0.0/24".parse().unwrap()),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "contradict a network without IPv4",
            ),
            (
                NetworkRequest {
                    gateway_mode6: Some(GatewayMode::Nat),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "needs an IPv6 network",
            ),
            (
                NetworkRequest {
                    cni_version: Some("1.2.0".into()),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "\"1.2.0\"",
            ),
            (
                NetworkRequest {
                    mtu: Some(67),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "MTU 67 is out of range",
            ),
            (
                NetworkRequest {
                    mtu: Some(1200),
                    ipv6: true,
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "below IPv6's minimum",
            ),
        ];
        for (r, f, kind, text) in cases {
            let err = create(r.clone(), &nets, f).unwrap_err();
            assert_eq!(err.kind(), kind, "{r:?}: {err}");
            assert!(err.to_string().contains(text), "{r:?}: {err}");
        }
        // Without the contradictions the same fields pass.
        let fine = NetworkRequest {
            mtu: Some(1280),
            ipv6: true,
            gateway_mode6: Some(GatewayMode::Routed),
            cni_version: Some("1.1.0".into()),
            ..req("x")
        };
        assert!(create(fine, &nets, &ok).is_ok());
    }

    #[test]
    fn impossible_subnets_and_gateways_are_refused() {
        let taken = create(
            NetworkRequest {
                subnet4: Some("10.50.0.0/24".parse().unwrap()),
                ..req("taken")
            },
            &BTreeMap::new(),
            &facts(),
        )
        .unwrap();
        let nets = with(&[taken]);
        let no_fwd = NetworkFacts {
            ipv6_forwarding: Err("net.ipv6.conf.all.forwarding is 0".into()),
            ..facts()
        };
        let ok = facts();
        let cases: Vec<(NetworkRequest, &NetworkFacts, Kind, &str)> = vec![
            (
                NetworkRequest {
                    subnet4: Some("10.60.0.1/24".parse().unwrap()),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "host bits set; did you mean 10.60.0.0/24?",
            ),
            (
                NetworkRequest {
                    subnet4: Some("10.50.0.128/25".parse().unwrap()),
                    ..req("x")
                },
                &ok,
                Kind::Conflict,
                "overlaps 10.50.0.0/24 (network taken)",
            ),
            (
                NetworkRequest {
                    subnet4: Some("10.60.0.0/24".parse().unwrap()),
                    gateway4: Some("10.61.0.1".parse().unwrap()),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "gateway 10.61.0.1 is not a usable host address",
            ),
            (
                NetworkRequest {
                    subnet4: Some("10.60.0.0/31".parse().unwrap()),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "too small",
            ),
            (
                NetworkRequest {
                    subnet6: Some("fd00:60::/127".parse().unwrap()),
                    ..req("x")
                },
                &ok,
                Kind::Invalid,
                "subnet fd00:60::/127 is too small",
            ),
            (
                NetworkRequest {
                    ipv6: true,
                    ..req("x")
                },
                &no_fwd,
                Kind::Invalid,
                "forwarding is 0",
            ),
        ];
        for (r, f, kind, text) in cases {
            let err = create(r.clone(), &nets, f).unwrap_err();
            assert_eq!(err.kind(), kind, "{r:?}: {err}");
            assert!(err.to_string().contains(text), "{r:?}: {err}");
        }
        // The same requests without the contradiction pass: the refusals above are theirs.
        let fine = NetworkRequest {
            subnet4: Some("10.60.0.0/24".parse().unwrap()),
            gateway4: Some("10.60.0.254".parse().unwrap()),
            mtu: Some(1280),
            ipv6: true,
            ..req("x")
        };
        let x = create(fine, &nets, &facts()).unwrap();
        assert_eq!(x.gateway4.unwrap().to_string(), "10.60.0.254");
        // A full pool is a conflict with what exists, not a bad request.
        let full = Defaults {
            pool4: "10.99.0.0/24".parse().unwrap(),
            ..defaults()
        };
        let r = req("y");
        let b = bridge(&r, &nets).unwrap();
        let err = network(r, b, &nets, &full, &facts()).unwrap_err();
        assert_eq!(err.kind(), Kind::Conflict, "{err}");
    }

    #[test]
    fn an_ensured_network_must_be_the_attach_target_with_the_same_subnets() {
        let spec = NetworkRequest {
            subnet4: Some("10.244.1.0/24".parse().unwrap()),
            ..req("pods")
        };
        let pods = create(spec.clone(), &BTreeMap::new(), &facts()).unwrap();
        assert_eq!(check_ensure(&spec, "pods", None), Ok(()));
        assert_eq!(check_ensure(&spec, "pods", Some(&pods)), Ok(()));
        let err = check_ensure(&spec, "other", None).unwrap_err();
        assert_eq!(err.kind(), Kind::Invalid);
        let moved = NetworkRequest {
            subnet4: Some("10.244.2.0/24".parse().unwrap()),
            ..spec
        };
        let err = check_ensure(&moved, "pods", Some(&pods)).unwrap_err();
        assert_eq!(err.kind(), Kind::Conflict);
        assert!(
            err.to_string()
                .contains("exists with subnets 10.244.1.0/24, but the CNI configuration asks for 10.244.2.0/24"),
            "{err}"
        );
    }

    #[test]
    fn an_ensured_network_must_have_the_gateway_modes_the_configuration_names() {
        let spec = NetworkRequest {
            subnet4: Some("10.244.1.0/24".parse().unwrap()),
            ..req("pods")
        };
        let pods = create(spec.clone(), &BTreeMap::new(), &facts()).unwrap();
        assert_eq!(pods.gateway_mode4, GatewayMode::Nat);
        // Naming the mode the network has, or none, is fine.
        let nat = NetworkRequest {
            gateway_mode4: Some(GatewayMode::Nat),
            ..spec.clone()
        };
        assert_eq!(check_ensure(&nat, "pods", Some(&pods)), Ok(()));
        // A mode for a family the network lacks says nothing about it.
        let v6 = NetworkRequest {
            gateway_mode6: Some(GatewayMode::Routed),
            ..spec.clone()
        };
        assert_eq!(check_ensure(&v6, "pods", Some(&pods)), Ok(()));
        let routed = NetworkRequest {
            gateway_mode4: Some(GatewayMode::Routed),
            ..spec
        };
        let err = check_ensure(&routed, "pods", Some(&pods)).unwrap_err();
        assert_eq!(err.kind(), Kind::Conflict);
        assert!(
            err.to_string().contains(
                "exists with IPv4 gateway mode nat, but the CNI configuration asks for routed"
            ),
            "{err}"
        );
    }

    fn attach(cid: &str) -> EndpointRequest {
        EndpointRequest {
            network: "a".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{cid}"),
            port_mappings: vec![],
            ips: vec![],
            mac: None,
        }
    }

    fn tcp(host: u16) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: 80,
            protocol: Proto::Tcp,
            host_ip: None,
        }
    }

    /// A dual-stack network "a" (10.50.0.0/24, fd00:50::/64) and its endpoints, resolved one
    /// after the other as the engine would.
    struct World {
        networks: BTreeMap<String, Network>,
        endpoints: Endpoints,
        cursor: Cursor,
    }

    impl World {
        fn new() -> World {
            let a = create(
                NetworkRequest {
                    subnet4: Some("10.50.0.0/24".parse().unwrap()),
                    subnet6: Some("fd00:50::/64".parse().unwrap()),
                    ..req("a")
                },
                &BTreeMap::new(),
                &facts(),
            )
            .unwrap();
            World {
                networks: with(&[a]),
                endpoints: Endpoints::default(),
                cursor: Cursor::default(),
            }
        }
        fn resolve(&self, r: EndpointRequest) -> Result<Resolved, ResolveError> {
            check_endpoint_request(&r)?;
            let state = State {
                networks: &self.networks,
                endpoints: &self.endpoints,
            };
            endpoint(r, &self.networks["a"], state, self.cursor, 9)
        }
        fn add(&mut self, r: EndpointRequest) -> Endpoint {
            let done = self.resolve(r).unwrap();
            self.cursor = done.cursor;
            self.endpoints.insert(done.endpoint.clone());
            done.endpoint
        }
    }

    #[test]
    fn endpoints_get_next_fit_addresses_and_fixed_ones_do_not_move_the_cursor() {
        let mut w = World::new();
        let one = w.add(attach("c1"));
        assert_eq!(one.addr4.unwrap().to_string(), "10.50.0.2");
        assert_eq!(one.addr6.unwrap().to_string(), "fd00:50::2");
        assert_eq!(one.host_veth, model::host_veth_name("c1", "eth0"));
        assert_eq!(one.created, 9);
        let fixed = w.add(EndpointRequest {
            ips: vec!["10.50.0.200/24".parse().unwrap()],
            ..attach("c2")
        });
        assert_eq!(fixed.addr4.unwrap().to_string(), "10.50.0.200");
        assert_eq!(fixed.addr6.unwrap().to_string(), "fd00:50::3");
        assert_eq!(w.cursor.last4, one.addr4, "a fixed address moves no cursor");
        assert_eq!(w.cursor.last6, fixed.addr6);
        // Released: the next endpoint continues after the cursor, not in the gap.
        w.endpoints.remove(&one.key());
        let three = w.add(attach("c3"));
        assert_eq!(three.addr4.unwrap().to_string(), "10.50.0.3");
        // Mappings are stored sorted.
        let four = w.add(EndpointRequest {
            port_mappings: vec![tcp(9000), tcp(8000)],
            ..attach("c4")
        });
        assert_eq!(four.ports, vec![tcp(8000), tcp(9000)]);
    }

    #[test]
    fn refused_names_and_port_mappings_say_why() {
        let mut w = World::new();
        w.add(EndpointRequest {
            port_mappings: vec![tcp(8080)],
            ips: vec!["10.50.0.2".parse().unwrap()],
            ..attach("c1")
        });
        let loopback6 = PortMapping {
            host_ip: Some("::1".parse().unwrap()),
            ..tcp(8081)
        };
        let cases = [
            (attach("bad/id"), Kind::Invalid, "contains"),
            (
                EndpointRequest {
                    netns: "netns/x".into(),
                    ..attach("c9")
                },
                Kind::Invalid,
                "is not an absolute path",
            ),
            (attach("c1"), Kind::Conflict, "already has interface eth0"),
            (
                EndpointRequest {
                    port_mappings: vec![tcp(8080)],
                    ..attach("c9")
                },
                Kind::Conflict,
                "already published by container c1",
            ),
            (
                EndpointRequest {
                    port_mappings: vec![tcp(0)],
                    ..attach("c9")
                },
                Kind::Invalid,
                "port 0",
            ),
            (
                EndpointRequest {
                    port_mappings: vec![tcp(8082), tcp(8082)],
                    ..attach("c9")
                },
                Kind::Invalid,
                "requested twice",
            ),
            (
                EndpointRequest {
                    port_mappings: vec![loopback6],
                    ..attach("c9")
                },
                Kind::Invalid,
                "IPv6 loopback",
            ),
        ];
        for (r, kind, text) in cases {
            let err = w.resolve(r.clone()).unwrap_err();
            assert_eq!(err.kind(), kind, "{r:?}: {err}");
            assert!(err.to_string().contains(text), "{r:?}: {err}");
        }
    }

    #[test]
    fn refused_fixed_addresses_say_why() {
        let mut w = World::new();
        w.add(EndpointRequest {
            port_mappings: vec![tcp(8080)],
            ips: vec!["10.50.0.2".parse().unwrap()],
            ..attach("c1")
        });
        let ips = |v: &[&str]| v.iter().map(|a| a.parse().unwrap()).collect::<Vec<_>>();
        let cases = [
            (
                EndpointRequest {
                    ips: ips(&["10.50.0.2"]),
                    ..attach("c9")
                },
                Kind::Conflict,
                "taken by container c1 eth0",
            ),
            (
                EndpointRequest {
                    ips: ips(&["10.50.0.1"]),
                    ..attach("c9")
                },
                Kind::Invalid,
                "is the gateway",
            ),
            (
                EndpointRequest {
                    ips: ips(&["10.50.0.0"]),
                    ..attach("c9")
                },
                Kind::Invalid,
                "network address",
            ),
            (
                EndpointRequest {
                    ips: ips(&["10.50.0.8", "10.50.0.9"]),
                    ..attach("c9")
                },
                Kind::Invalid,
                "two IPv4 addresses",
            ),
            (
                EndpointRequest {
                    ips: ips(&["10.50.0.255"]),
                    ..attach("c9")
                },
                Kind::Invalid,
                "broadcast address",
            ),
            (
                EndpointRequest {
                    ips: ips(&["10.50.1.9"]),
                    ..attach("c9")
                },
                Kind::Invalid,
                "outside the network's subnet 10.50.0.0/24",
            ),
            (
                EndpointRequest {
                    ips: ips(&["10.50.0.9/16"]),
                    ..attach("c9")
                },
                Kind::Invalid,
                "prefix /16",
            ),
            (
                EndpointRequest {
                    ips: ips(&["fd00:50::9", "fd00:50::a"]),
                    ..attach("c9")
                },
                Kind::Invalid,
                "two IPv6 addresses",
            ),
        ];
        for (r, kind, text) in cases {
            let err = w.resolve(r.clone()).unwrap_err();
            assert_eq!(err.kind(), kind, "{r:?}: {err}");
            assert!(err.to_string().contains(text), "{r:?}: {err}");
        }
        // A network without IPv6 refuses an IPv6 address; one with it takes it.
        let err = {
            let mut v4 = World::new();
            let a = v4.networks.get_mut("a").unwrap();
            (a.subnet6, a.gateway6) = (None, None);
            v4.resolve(EndpointRequest {
                ips: ips(&["fd00:50::9"]),
                ..attach("c9")
            })
            .unwrap_err()
        };
        assert!(
            err.to_string().contains("network a has no IPv6 subnet"),
            "{err}"
        );
        let ok = w
            .resolve(EndpointRequest {
                ips: ips(&["fd00:50::9"]),
                ..attach("c9")
            })
            .unwrap();
        assert_eq!(ok.endpoint.addr6.unwrap().to_string(), "fd00:50::9");
    }

    #[test]
    fn a_full_subnet_or_bridge_is_a_conflict() {
        let mut w = World::new();
        let a = w.networks.get_mut("a").unwrap();
        (a.subnet4, a.gateway4) = (
            Some("10.50.0.0/30".parse().unwrap()),
            Some("10.50.0.1".parse().unwrap()),
        );
        w.add(attach("c1"));
        let err = w.resolve(attach("c2")).unwrap_err();
        assert_eq!(err.kind(), Kind::Conflict);
        assert!(
            err.to_string().contains("subnet 10.50.0.0/30 is full"),
            "{err}"
        );

        let mut w = World::new();
        let a = w.networks.get_mut("a").unwrap();
        a.subnet4 = Some("10.48.0.0/20".parse().unwrap());
        a.gateway4 = Some("10.48.0.1".parse().unwrap());
        for i in 0..MAX_BRIDGE_PORTS {
            w.add(attach(&format!("c{i}")));
        }
        let err = w.resolve(attach("one-too-many")).unwrap_err();
        assert_eq!(err.kind(), Kind::Conflict);
        assert!(err.to_string().contains("1023 ports"), "{err}");
    }
}
