//! Published ports: which host bindings a mapping claims, and conflicts between endpoints.
//! Pure.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::model::{Endpoint, GatewayMode, Network, PortMapping, Proto};

/// Address family of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

/// One (family, protocol, host address, host port) claim. `addr` None means every host
/// address of that family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Binding {
    pub family: Family,
    pub proto: Proto,
    pub addr: Option<IpAddr>,
    pub port: u16,
}

impl Binding {
    /// Two bindings clash when they share family, protocol and port and their addresses
    /// overlap. [`check`] answers this through an index (`Claims`); the tests hold the index
    /// to this definition.
    #[cfg(test)]
    fn clashes(&self, other: &Binding) -> bool {
        self.family == other.family
            && self.proto == other.proto
            && self.port == other.port
            && (self.addr.is_none() || other.addr.is_none() || self.addr == other.addr)
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.family) {
            (Some(IpAddr::V6(a)), _) => write!(f, "{}/[{a}]:{}", self.proto, self.port),
            (Some(a), _) => write!(f, "{}/{a}:{}", self.proto, self.port),
            (None, Family::V4) => write!(f, "{}/0.0.0.0:{}", self.proto, self.port),
            (None, Family::V6) => write!(f, "{}/[::]:{}", self.proto, self.port),
        }
    }
}

/// Where a mapping applies on a network, one entry per family: a mapping without a host
/// address (or with the unspecified one) applies to every family the network has; one with an
/// address only to that address's family (as in Docker: `-p 127.0.0.1:8080:80` is IPv4 only).
/// What each entry becomes depends on the family's gateway mode (see [`bindings`]).
pub fn targets(net: &Network, pm: &PortMapping) -> Vec<Binding> {
    target_iter(net, pm).collect()
}

/// [`targets`] without allocating: at most two bindings (one per family). The hot paths
/// (checks, planning) run it once per mapping, and a container may publish 10,000.
pub(crate) fn target_iter(net: &Network, pm: &PortMapping) -> impl Iterator<Item = Binding> {
    let fam = |family, addr| Binding {
        family,
        proto: pm.protocol,
        addr,
        port: pm.host_port,
    };
    let pair = match pm.host_ip {
        None => [
            net.subnet4.map(|_| fam(Family::V4, None)),
            net.subnet6.map(|_| fam(Family::V6, None)),
        ],
        Some(IpAddr::V4(a)) if a.is_unspecified() => [Some(fam(Family::V4, None)), None],
        Some(IpAddr::V6(a)) if a.is_unspecified() => [Some(fam(Family::V6, None)), None],
        Some(a @ IpAddr::V4(_)) => [Some(fam(Family::V4, Some(a))), None],
        Some(a @ IpAddr::V6(_)) => [Some(fam(Family::V6, Some(a))), None],
    };
    pair.into_iter().flatten()
}

/// A network's gateway mode for one family.
pub fn mode(net: &Network, family: Family) -> GatewayMode {
    match family {
        Family::V4 => net.gateway_mode4,
        Family::V6 => net.gateway_mode6,
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// The host bindings a mapping claims: its [`targets`] in `nat` families. A `routed` family
/// opens the container port at the container's own address and claims no host port (two
/// routed containers may both publish port 80); an `isolated` one publishes nothing.
pub fn bindings(net: &Network, pm: &PortMapping) -> Vec<Binding> {
    binding_iter(net, pm).collect()
}

/// [`bindings`] without allocating.
fn binding_iter<'a>(net: &'a Network, pm: &PortMapping) -> impl Iterator<Item = Binding> + 'a {
    target_iter(net, pm).filter(|b| mode(net, b.family) == GatewayMode::Nat)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port mapping {0}: port 0 is not a valid host or container port")]
    Zero(String),
    #[error("port mapping {mapping}: network {network} has no {family} subnet")]
    NoFamily {
        mapping: String,
        network: String,
        family: &'static str,
    },
    #[error("network {0} is internal; it cannot publish ports")]
    Internal(String),
    #[error("host port {binding} is already published by container {container} ({ifname}) on network {network}")]
    Taken {
        binding: String,
        container: String,
        ifname: String,
        network: String,
    },
    #[error("host port {0} is requested twice by this endpoint")]
    Duplicate(String),
    #[error("port mapping {mapping}: network {network} routes {family} (gateway mode routed), so the port is opened at the container's own address for every host that can route to it; a host address cannot narrow that, and netd will not widen the binding behind your back. Publish it without hostIP (or with {any}), or publish on one host address from a network whose {family} gateway mode is nat")]
    RoutedHostIp {
        mapping: String,
        network: String,
        family: &'static str,
        any: &'static str,
    },
    #[error("port mapping {mapping}: network {network} publishes nothing there ({families} gateway mode isolated: no traffic in or out)")]
    Isolated {
        mapping: String,
        network: String,
        families: String,
    },
}

fn describe(pm: &PortMapping) -> String {
    match pm.host_ip {
        Some(ip) => format!(
            "{ip}:{}->{}/{}",
            pm.host_port, pm.container_port, pm.protocol
        ),
        None => format!("{}->{}/{}", pm.host_port, pm.container_port, pm.protocol),
    }
}

/// Checks what the network's gateway modes make of each mapping, before any conflict check:
/// a specific host address on a routed family is refused (routed ports are the container's
/// own, reachable by whoever routes to it, so a host address could only pretend to narrow
/// them), and so is a mapping that publishes nothing because each family it applies to is
/// isolated. Internal networks and families without a subnet are [`check`]'s to refuse.
pub fn validate(net: &Network, mappings: &[PortMapping]) -> Result<(), PortError> {
    if net.internal {
        return Ok(());
    }
    for pm in mappings {
        let present = || {
            target_iter(net, pm).filter(|b| match b.family {
                Family::V4 => net.subnet4.is_some(),
                Family::V6 => net.subnet6.is_some(),
            })
        };
        if let Some(b) =
            present().find(|b| b.addr.is_some() && mode(net, b.family) == GatewayMode::Routed)
        {
            return Err(PortError::RoutedHostIp {
                mapping: describe(pm),
                network: net.name.clone(),
                family: family_name(b.family),
                any: match b.family {
                    Family::V4 => "0.0.0.0",
                    Family::V6 => "::",
                },
            });
        }
        if present().next().is_some()
            && present().all(|b| mode(net, b.family) == GatewayMode::Isolated)
        {
            return Err(PortError::Isolated {
                mapping: describe(pm),
                network: net.name.clone(),
                families: present()
                    .map(|b| family_name(b.family))
                    .collect::<Vec<_>>()
                    .join(" and "),
            });
        }
    }
    Ok(())
}

/// Checks a new endpoint's mappings against themselves and against every existing endpoint.
/// `existing` yields each endpoint with its network.
pub fn check<'a>(
    net: &Network,
    mappings: &[PortMapping],
    existing: impl Iterator<Item = (&'a Endpoint, &'a Network)>,
) -> Result<(), PortError> {
    if mappings.is_empty() {
        return Ok(());
    }
    if net.internal {
        return Err(PortError::Internal(net.name.clone()));
    }
    // Indexed by (family, protocol, port): only bindings with the same key can clash, so a
    // container publishing 10,000 ports costs 10,000 lookups, not 10,000² comparisons.
    let mut mine = Claims::new();
    for pm in mappings {
        if pm.host_port == 0 || pm.container_port == 0 {
            return Err(PortError::Zero(describe(pm)));
        }
        let (wants4, wants6) = match pm.host_ip {
            Some(IpAddr::V4(_)) => (true, false),
            Some(IpAddr::V6(_)) => (false, true),
            None => (false, false),
        };
        if wants4 && net.subnet4.is_none() || wants6 && net.subnet6.is_none() {
            return Err(PortError::NoFamily {
                mapping: describe(pm),
                network: net.name.clone(),
                family: if wants4 { "IPv4" } else { "IPv6" },
            });
        }
        for b in binding_iter(net, pm) {
            if mine.clash(&b).is_some() {
                return Err(PortError::Duplicate(b.to_string()));
            }
            mine.insert(b);
        }
    }
    for (ep, ep_net) in existing {
        for pm in &ep.ports {
            for theirs in binding_iter(ep_net, pm) {
                if let Some(b) = mine.clash(&theirs) {
                    return Err(PortError::Taken {
                        binding: b.to_string(),
                        container: ep.container_id.clone(),
                        ifname: ep.ifname.clone(),
                        network: ep.network.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Keys (family, protocol, port) as dense indices: 2 × 3 × 65,536.
const KEYS: usize = 6 << 16;

fn key_index(b: &Binding) -> usize {
    let family = match b.family {
        Family::V4 => 0,
        Family::V6 => 1,
    };
    let proto = match b.proto {
        Proto::Tcp => 0,
        Proto::Udp => 1,
        Proto::Sctp => 2,
    };
    ((family * 3 + proto) << 16) | usize::from(b.port)
}

/// The host bindings one request claims, for [`check`]. A request holds, per key, either one
/// any-address binding or address-bound ones with distinct addresses (anything else clashes
/// and is refused), so a bit per key for the first kind and a set of (key, address) for the
/// second say everything [`Binding::clashes`] asks, without an allocation per binding (two
/// 48 KiB bitmaps per request instead).
struct Claims {
    any: Vec<u64>,
    bound_keys: Vec<u64>,
    /// The first address-bound binding of each key that has one (a clash names it).
    first_bound: HashMap<usize, Binding>,
    bound: HashSet<(usize, IpAddr)>,
}

impl Claims {
    fn new() -> Self {
        Claims {
            any: vec![0; KEYS / 64],
            bound_keys: vec![0; KEYS / 64],
            first_bound: HashMap::new(),
            bound: HashSet::new(),
        }
    }

    fn bit(bits: &[u64], k: usize) -> bool {
        bits[k / 64] & (1 << (k % 64)) != 0
    }

    /// The claimed binding `b` clashes with, the first claimed if several do.
    fn clash(&self, b: &Binding) -> Option<Binding> {
        let k = key_index(b);
        if Self::bit(&self.any, k) {
            return Some(Binding { addr: None, ..*b });
        }
        match b.addr {
            None => self.first_bound.get(&k).copied(),
            Some(a) => self.bound.contains(&(k, a)).then_some(*b),
        }
    }

    /// Claims `b`, which must not clash with what is claimed.
    fn insert(&mut self, b: Binding) {
        let k = key_index(&b);
        match b.addr {
            None => self.any[k / 64] |= 1 << (k % 64),
            Some(a) => {
                if !Self::bit(&self.bound_keys, k) {
                    self.bound_keys[k / 64] |= 1 << (k % 64);
                    self.first_bound.insert(k, b);
                }
                self.bound.insert((k, a));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GatewayMode;

    /// The index answers exactly what comparing with every claimed binding in order answers
    /// (which one clashes included, since errors name it), over every sequence a simple
    /// generator makes from a small space of keys and addresses.
    #[test]
    fn claims_index_agrees_with_pairwise_comparison() {
        let addrs: [Option<IpAddr>; 4] = [
            None,
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
            Some("fd00::1".parse().unwrap()),
        ];
        let mut all = Vec::new();
        for family in [Family::V4, Family::V6] {
            for proto in [Proto::Tcp, Proto::Sctp] {
                for port in [1, 65535] {
                    for addr in addrs {
                        all.push(Binding {
                            family,
                            proto,
                            addr,
                            port,
                        });
                    }
                }
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut claims = Claims::new();
            let mut claimed: Vec<Binding> = Vec::new();
            for _ in 0..12 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let b = all[(seed % all.len() as u64) as usize];
                let want = claimed.iter().find(|m| m.clashes(&b)).copied();
                assert_eq!(claims.clash(&b), want, "{b:?} against {claimed:?}");
                if want.is_none() {
                    claims.insert(b);
                    claimed.push(b);
                }
            }
        }
    }

    fn net(name: &str, v6: bool) -> Network {
        Network {
            name: name.into(),
            bridge: format!("nd-{name}"),
            subnet4: Some("10.1.0.0/24".parse().unwrap()),
            gateway4: Some("10.1.0.1".parse().unwrap()),
            subnet6: v6.then(|| "fd00:1::/64".parse().unwrap()),
            gateway6: v6.then(|| "fd00:1::1".parse().unwrap()),
            internal: false,
            icc: true,
            gateway_mode4: GatewayMode::Nat,
            gateway_mode6: GatewayMode::Nat,
            mtu: 1500,
            cni_version: "1.0.0".into(),
            created: 0,
        }
    }

    fn pm(host: u16, proto: Proto, ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: 80,
            protocol: proto,
            host_ip: ip.map(|s| s.parse().unwrap()),
        }
    }

    fn ep(cid: &str, ports: Vec<PortMapping>) -> Endpoint {
        Endpoint {
            network: "a".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            host_veth: "vnx".into(),
            addr4: None,
            addr6: None,
            ports,
            mac: None,
            created: 0,
        }
    }

    #[test]
    fn conflicts_name_the_holder() {
        let n = net("a", true);
        let holder = ep("c1", vec![pm(8080, Proto::Tcp, None)]);
        let existing = [(&holder, &n)];
        let err = check(
            &n,
            &[pm(8080, Proto::Tcp, Some("192.0.2.1"))],
            existing.into_iter(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "host port tcp/192.0.2.1:8080 is already published by container c1 (eth0) on network a"
        );
        // Other protocol, other port: fine.
        assert!(check(&n, &[pm(8080, Proto::Udp, None)], existing.into_iter()).is_ok());
        assert!(check(&n, &[pm(8081, Proto::Tcp, None)], existing.into_iter()).is_ok());
    }

    #[test]
    fn bound_addresses_only_clash_with_the_same_address_or_any() {
        let n = net("a", false);
        let holder = ep("c1", vec![pm(53, Proto::Udp, Some("192.0.2.1"))]);
        let existing = [(&holder, &n)];
        assert!(check(
            &n,
            &[pm(53, Proto::Udp, Some("192.0.2.2"))],
            existing.into_iter()
        )
        .is_ok());
        assert!(check(
            &n,
            &[pm(53, Proto::Udp, Some("192.0.2.1"))],
            existing.into_iter()
        )
        .is_err());
        assert!(check(&n, &[pm(53, Proto::Udp, None)], existing.into_iter()).is_err());
    }

    #[test]
    fn families_are_independent() {
        let n = net("a", true);
        let holder = ep("c1", vec![pm(80, Proto::Tcp, Some("0.0.0.0"))]);
        let existing = [(&holder, &n)];
        assert!(check(&n, &[pm(80, Proto::Tcp, Some("::"))], existing.into_iter()).is_ok());
        assert!(check(&n, &[pm(80, Proto::Tcp, None)], existing.into_iter()).is_err());
    }

    #[test]
    fn routed_ports_claim_no_host_port() {
        let mut r = net("r", true);
        r.gateway_mode4 = GatewayMode::Routed;
        r.gateway_mode6 = GatewayMode::Routed;
        let nat = net("a", false);
        let routed_holder = ep("c1", vec![pm(80, Proto::Tcp, None)]);
        let nat_holder = ep("c2", vec![pm(80, Proto::Tcp, None)]);
        let existing = [(&routed_holder, &r), (&nat_holder, &nat)];
        // Another routed container publishing 80, and on every host address: no conflict.
        assert!(bindings(&r, &pm(80, Proto::Tcp, None)).is_empty());
        assert_eq!(targets(&r, &pm(80, Proto::Tcp, None)).len(), 2);
        assert!(check(&r, &[pm(80, Proto::Tcp, None)], existing.into_iter()).is_ok());
        // A NAT network's host port 80 is still held by the NAT container only.
        let err = check(&nat, &[pm(80, Proto::Tcp, None)], existing.into_iter()).unwrap_err();
        assert!(err.to_string().contains("container c2"), "{err}");
    }

    #[test]
    fn a_host_address_never_widens_on_a_routed_family() {
        // Docker's direct-routing network: IPv6 routed, IPv4 nat.
        let mut n = net("d", true);
        n.gateway_mode6 = GatewayMode::Routed;
        for ip in ["2001:db8::1", "::1"] {
            let err = validate(&n, &[pm(8080, Proto::Tcp, Some(ip))]).unwrap_err();
            assert!(
                matches!(err, PortError::RoutedHostIp { family: "IPv6", .. }),
                "{err}"
            );
            assert!(err.to_string().contains("routes IPv6"), "{err}");
        }
        // An IPv4 address applies to the NATed IPv4 family only, as in Docker: accepted, and
        // it opens nothing over IPv6.
        let lo = pm(8080, Proto::Tcp, Some("127.0.0.1"));
        assert!(validate(&n, &[lo]).is_ok());
        assert_eq!(targets(&n, &lo).len(), 1);
        assert_eq!(bindings(&n, &lo)[0].family, Family::V4);
        // Unspecified or no address: accepted.
        for ip in [None, Some("::"), Some("0.0.0.0")] {
            assert!(validate(&n, &[pm(8080, Proto::Tcp, ip)]).is_ok(), "{ip:?}");
        }
        // Routed IPv4 refuses an IPv4 host address the same way.
        n.gateway_mode4 = GatewayMode::Routed;
        let err = validate(&n, &[lo]).unwrap_err();
        assert!(err.to_string().contains("0.0.0.0"), "{err}");
    }

    #[test]
    fn a_mapping_that_publishes_nothing_is_refused() {
        let mut n = net("i", true);
        n.gateway_mode6 = GatewayMode::Isolated;
        // Still published over IPv4.
        assert!(validate(&n, &[pm(80, Proto::Tcp, None)]).is_ok());
        let err = validate(&n, &[pm(80, Proto::Tcp, Some("::"))]).unwrap_err();
        assert!(matches!(err, PortError::Isolated { .. }), "{err}");
        n.gateway_mode4 = GatewayMode::Isolated;
        let err = validate(&n, &[pm(80, Proto::Tcp, None)]).unwrap_err();
        assert!(err.to_string().contains("IPv4 and IPv6"), "{err}");
    }

    #[test]
    fn bad_requests() {
        let n = net("a", false);
        let none = std::iter::empty();
        assert!(matches!(
            check(&n, &[pm(0, Proto::Tcp, None)], none),
            Err(PortError::Zero(_))
        ));
        assert!(matches!(
            check(
                &n,
                &[pm(80, Proto::Tcp, Some("2001:db8::1"))],
                std::iter::empty()
            ),
            Err(PortError::NoFamily { .. })
        ));
        assert!(matches!(
            check(
                &n,
                &[pm(80, Proto::Tcp, None), pm(80, Proto::Tcp, None)],
                std::iter::empty()
            ),
            Err(PortError::Duplicate(_))
        ));
        let mut internal = net("i", false);
        internal.internal = true;
        assert!(matches!(
            check(&internal, &[pm(80, Proto::Tcp, None)], std::iter::empty()),
            Err(PortError::Internal(_))
        ));
    }
}
