//! Address management: choosing subnets for new networks and addresses for endpoints.
//! Pure: callers pass in everything that is taken (other networks, host routes, endpoints).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no free /{prefix} subnet left in the pool {pool}")]
    PoolExhausted { pool: IpNet, prefix: u8 },
    #[error("subnet {subnet} is full")]
    SubnetFull { subnet: IpNet },
    #[error("subnet {subnet} overlaps {other}")]
    Overlap { subnet: IpNet, other: String },
    #[error("subnet {subnet} is too small: the smallest usable IPv4 subnet is a /30")]
    TooSmall { subnet: IpNet },
    #[error("gateway {gateway} is not a usable host address of {subnet}")]
    BadGateway { gateway: String, subnet: IpNet },
    #[error("address {addr} is outside the network's subnet {subnet}")]
    OutsideSubnet { addr: IpAddr, subnet: IpNet },
    #[error("address {addr} is the {what} of {subnet}, not a host address")]
    NotAHost {
        addr: IpAddr,
        subnet: IpNet,
        what: &'static str,
    },
    #[error("address {addr} is the gateway of {subnet}")]
    IsGateway { addr: IpAddr, subnet: IpNet },
    #[error("address {addr} is taken by {holder}")]
    Taken { addr: IpAddr, holder: String },
}

impl IpamError {
    /// Whether the request clashes with state (another holder) rather than being wrong in
    /// itself; the API reports the first as a conflict, the rest as invalid.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            IpamError::Taken { .. }
                | IpamError::Overlap { .. }
                | IpamError::SubnetFull { .. }
                | IpamError::PoolExhausted { .. }
        )
    }
}

/// Checks an address a runtime asks for (a fixed IP): a host address of `subnet` (not the
/// network or, in IPv4, the broadcast address), not the gateway, and not held by anyone in
/// `used` (address → who holds it). The same rules the allocator follows, so a fixed address
/// is one the allocator could have handed out, and, once held, one it never hands out again.
pub fn check_requested(
    subnet: IpNet,
    gateway: IpAddr,
    addr: IpAddr,
    used: &BTreeMap<IpAddr, String>,
) -> Result<(), IpamError> {
    if !subnet.contains(&addr) {
        return Err(IpamError::OutsideSubnet { addr, subnet });
    }
    if addr == subnet.network() {
        let what = if subnet.addr().is_ipv4() {
            "network address"
        } else {
            "subnet-router anycast address"
        };
        return Err(IpamError::NotAHost { addr, subnet, what });
    }
    if subnet.addr().is_ipv4() && addr == subnet.broadcast() {
        return Err(IpamError::NotAHost {
            addr,
            subnet,
            what: "broadcast address",
        });
    }
    if addr == gateway {
        return Err(IpamError::IsGateway { addr, subnet });
    }
    if let Some(holder) = used.get(&addr) {
        return Err(IpamError::Taken {
            addr,
            holder: holder.clone(),
        });
    }
    Ok(())
}

/// Whether two prefixes share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Refuses a subnet that overlaps any of `taken` (name, prefix).
pub fn check_free(subnet: IpNet, taken: &[(String, IpNet)]) -> Result<(), IpamError> {
    match taken.iter().find(|(_, t)| overlaps(&subnet, t)) {
        Some((who, t)) => Err(IpamError::Overlap {
            subnet,
            other: format!("{t} ({who})"),
        }),
        None => Ok(()),
    }
}

/// The first /`prefix` subnet of `pool` that overlaps nothing in `taken`.
pub fn choose_subnet4(pool: Ipv4Net, prefix: u8, taken: &[IpNet]) -> Result<Ipv4Net, IpamError> {
    let exhausted = IpamError::PoolExhausted {
        pool: IpNet::V4(pool),
        prefix,
    };
    let subnets = pool.subnets(prefix).map_err(|_| exhausted.clone())?;
    for s in subnets {
        let candidate = IpNet::V4(s);
        // Default routes (0.0.0.0/0) overlap everything; only more specific routes count.
        if !taken
            .iter()
            .any(|t| t.prefix_len() > 0 && overlaps(&candidate, t))
        {
            return Ok(s);
        }
    }
    Err(exhausted)
}

/// The first /64 of a /48 ULA prefix that overlaps nothing in `taken`.
pub fn choose_subnet6(pool: Ipv6Net, taken: &[IpNet]) -> Result<Ipv6Net, IpamError> {
    let exhausted = IpamError::PoolExhausted {
        pool: IpNet::V6(pool),
        prefix: 64,
    };
    let subnets = pool.subnets(64).map_err(|_| exhausted.clone())?;
    for s in subnets.take(1 << 16) {
        let candidate = IpNet::V6(s);
        if !taken
            .iter()
            .any(|t| t.prefix_len() > 0 && overlaps(&candidate, t))
        {
            return Ok(s);
        }
    }
    Err(exhausted)
}

/// The RFC 4193 ULA /48 for a 40-bit global ID (fd00::/8 + global ID).
pub fn ula_prefix(global_id: u64) -> Ipv6Net {
    let id = global_id & 0xff_ffff_ffff;
    let hi = (0xfd_u128 << 120) | (u128::from(id) << 80);
    Ipv6Net::new(Ipv6Addr::from(hi), 48).expect("48 is a valid prefix")
}

/// The default gateway of a subnet: its first host address.
pub fn default_gateway4(subnet: Ipv4Net) -> Result<Ipv4Addr, IpamError> {
    if subnet.prefix_len() > 30 {
        return Err(IpamError::TooSmall {
            subnet: IpNet::V4(subnet),
        });
    }
    Ok(Ipv4Addr::from(u32::from(subnet.network()) + 1))
}

pub fn default_gateway6(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// Checks that a gateway is a host address of the subnet (not the network or broadcast address).
pub fn check_gateway4(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), IpamError> {
    if subnet.prefix_len() > 30 {
        return Err(IpamError::TooSmall {
            subnet: IpNet::V4(subnet),
        });
    }
    if !subnet.contains(&gateway) || gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(IpamError::BadGateway {
            gateway: gateway.to_string(),
            subnet: IpNet::V4(subnet),
        });
    }
    Ok(())
}

pub fn check_gateway6(subnet: Ipv6Net, gateway: Ipv6Addr) -> Result<(), IpamError> {
    // The subnet-router anycast address (all host bits zero) cannot be a unicast gateway.
    if !subnet.contains(&gateway) || gateway == subnet.network() {
        return Err(IpamError::BadGateway {
            gateway: gateway.to_string(),
            subnet: IpNet::V6(subnet),
        });
    }
    Ok(())
}

/// Where address allocation continues in one network: the last address handed out per
/// family (next-fit, like host-local's `last_reserved_ip`). It is persisted, so that a restart
/// does not hand out an address that was just released either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last6: Option<Ipv6Addr>,
}

/// The addresses already in use, as [`allocate4`] and [`allocate6`] ask about them: a sorted
/// set where one exists, a hash set where one is built for the call.
pub trait Used<A> {
    fn holds(&self, addr: &A) -> bool;
}

impl<A: Ord> Used<A> for BTreeSet<A> {
    fn holds(&self, addr: &A) -> bool {
        self.contains(addr)
    }
}

impl<A: Eq + Hash> Used<A> for HashSet<A> {
    fn holds(&self, addr: &A) -> bool {
        self.contains(addr)
    }
}

/// Picks a free host address in `subnet`, starting after `after` (the last one handed out) so
/// that a released address is not reused at once: its stale conntrack entries and ARP caches
/// then have time to expire.
pub fn allocate4(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: &impl Used<Ipv4Addr>,
    after: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    if first > last {
        return Err(IpamError::TooSmall {
            subnet: IpNet::V4(subnet),
        });
    }
    let start = match after.map(u32::from) {
        Some(a) if a >= first && a < last => a + 1,
        _ => first,
    };
    let span = last - first + 1;
    for i in 0..span {
        let candidate = first + (start - first + i) % span;
        let addr = Ipv4Addr::from(candidate);
        if addr != gateway && !used.holds(&addr) {
            return Ok(addr);
        }
    }
    Err(IpamError::SubnetFull {
        subnet: IpNet::V4(subnet),
    })
}

/// IPv6 counterpart of [`allocate4`]; hands out ::2, ::3, ... of the subnet (a /64 never fills
/// up in practice, so the search is bounded).
pub fn allocate6(
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    used: &impl Used<Ipv6Addr>,
    after: Option<Ipv6Addr>,
) -> Result<Ipv6Addr, IpamError> {
    let base = u128::from(subnet.network());
    let host_bits = 128 - u32::from(subnet.prefix_len());
    let size: u128 = if host_bits >= 127 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    if size < 4 {
        return Err(IpamError::TooSmall {
            subnet: IpNet::V6(subnet),
        });
    }
    let offset_of = |a: Ipv6Addr| u128::from(a).wrapping_sub(base);
    let mut offset = match after {
        Some(a) if subnet.contains(&a) => offset_of(a) + 1,
        _ => 1,
    };
    for _ in 0..(1u32 << 20) {
        if offset >= size - 1 || offset == 0 {
            offset = 1;
        }
        let addr = Ipv6Addr::from(base + offset);
        if addr != gateway && !used.holds(&addr) {
            return Ok(addr);
        }
        offset += 1;
    }
    Err(IpamError::SubnetFull {
        subnet: IpNet::V6(subnet),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_choice_skips_taken_and_routes() {
        let pool: Ipv4Net = "10.89.0.0/16".parse().unwrap();
        let taken = vec![n("10.89.0.0/24"), n("10.89.1.128/25"), n("0.0.0.0/0")];
        assert_eq!(
            choose_subnet4(pool, 24, &taken).unwrap(),
            "10.89.2.0/24".parse().unwrap()
        );
        let all: Vec<IpNet> = vec![n("10.89.0.0/16")];
        assert!(matches!(
            choose_subnet4(pool, 24, &all),
            Err(IpamError::PoolExhausted { .. })
        ));
    }

    #[test]
    fn requested_addresses_must_be_free_host_addresses_of_the_subnet() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let s4 = n("10.1.0.0/24");
        let gw4 = ip("10.1.0.1");
        let mut used = BTreeMap::new();
        used.insert(ip("10.1.0.7"), "container c7 eth0".to_string());
        check_requested(s4, gw4, ip("10.1.0.5"), &used).unwrap();
        check_requested(s4, gw4, ip("10.1.0.254"), &used).unwrap();
        let e = check_requested(s4, gw4, ip("10.1.0.7"), &used).unwrap_err();
        assert!(e.is_conflict());
        assert_eq!(
            e.to_string(),
            "address 10.1.0.7 is taken by container c7 eth0"
        );
        for (addr, want) in [
            ("10.1.1.5", "outside the network's subnet 10.1.0.0/24"),
            ("10.1.0.0", "network address of 10.1.0.0/24"),
            ("10.1.0.255", "broadcast address of 10.1.0.0/24"),
            ("10.1.0.1", "the gateway of 10.1.0.0/24"),
            ("fd00::5", "outside"),
        ] {
            let e = check_requested(s4, gw4, ip(addr), &used).unwrap_err();
            assert!(!e.is_conflict(), "{addr}");
            assert!(e.to_string().contains(want), "{addr}: {e}");
        }
        let s6 = n("fd00:1::/64");
        let gw6 = ip("fd00:1::1");
        check_requested(s6, gw6, ip("fd00:1::ffff:ffff:ffff:ffff"), &used).unwrap();
        let e = check_requested(s6, gw6, ip("fd00:1::"), &used).unwrap_err();
        assert!(e.to_string().contains("anycast"), "{e}");
        assert!(check_requested(s6, gw6, ip("fd00:1::1"), &used).is_err());
    }

    #[test]
    fn the_allocator_skips_an_address_held_as_a_fixed_one() {
        let s: Ipv4Net = "10.1.0.0/29".parse().unwrap();
        let gw: Ipv4Addr = "10.1.0.1".parse().unwrap();
        // 10.1.0.2 was asked for by a runtime; the next dynamic allocation goes around it.
        let used: BTreeSet<Ipv4Addr> = ["10.1.0.2".parse().unwrap()].into();
        assert_eq!(
            allocate4(s, gw, &used, None).unwrap().to_string(),
            "10.1.0.3"
        );
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(overlaps(&n("10.0.0.0/8"), &n("10.1.2.0/24")));
        assert!(overlaps(&n("10.1.2.0/24"), &n("10.0.0.0/8")));
        assert!(!overlaps(&n("10.1.2.0/24"), &n("10.1.3.0/24")));
        assert!(!overlaps(&n("10.1.2.0/24"), &n("fd00::/8")));
        let taken = vec![("blue".to_string(), n("10.1.0.0/16"))];
        let err = check_free(n("10.1.5.0/24"), &taken).unwrap_err();
        assert_eq!(
            err.to_string(),
            "subnet 10.1.5.0/24 overlaps 10.1.0.0/16 (blue)"
        );
    }

    #[test]
    fn allocation_skips_gateway_and_used_and_wraps() {
        let s: Ipv4Net = "10.0.0.0/29".parse().unwrap(); // hosts .1 - .6
        let gw = default_gateway4(s).unwrap();
        let mut used = BTreeSet::new();
        let a = allocate4(s, gw, &used, None).unwrap();
        assert_eq!(a, "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        used.insert(a);
        let b = allocate4(s, gw, &used, Some(a)).unwrap();
        assert_eq!(b, "10.0.0.3".parse::<Ipv4Addr>().unwrap());
        // Released .2 is not reused while later addresses are free.
        used.remove(&a);
        used.insert(b);
        let c = allocate4(s, gw, &used, Some(b)).unwrap();
        assert_eq!(c, "10.0.0.4".parse::<Ipv4Addr>().unwrap());
        // Fill up, then wrap around to the free .2.
        for x in [4, 5, 6] {
            used.insert(Ipv4Addr::new(10, 0, 0, x));
        }
        assert_eq!(
            allocate4(s, gw, &used, Some(Ipv4Addr::new(10, 0, 0, 6))).unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        used.insert(Ipv4Addr::new(10, 0, 0, 2));
        assert!(matches!(
            allocate4(s, gw, &used, None),
            Err(IpamError::SubnetFull { .. })
        ));
    }

    #[test]
    fn gateways_are_checked() {
        let s: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert!(check_gateway4(s, "10.0.0.254".parse().unwrap()).is_ok());
        assert!(check_gateway4(s, "10.0.0.0".parse().unwrap()).is_err());
        assert!(check_gateway4(s, "10.0.0.255".parse().unwrap()).is_err());
        assert!(check_gateway4(s, "10.0.1.1".parse().unwrap()).is_err());
        assert!(default_gateway4("10.0.0.0/31".parse().unwrap()).is_err());
    }

    #[test]
    fn ipv6_allocation_and_ula() {
        let p = ula_prefix(0x12_3456_789a);
        assert_eq!(p.to_string(), "fd12:3456:789a::/48");
        let s = choose_subnet6(p, &[n("fd12:3456:789a::/64")]).unwrap();
        assert_eq!(s.to_string(), "fd12:3456:789a:1::/64");
        let gw = default_gateway6(s);
        let used = BTreeSet::new();
        let a = allocate6(s, gw, &used, None).unwrap();
        assert_eq!(a.to_string(), "fd12:3456:789a:1::2");
        let b = allocate6(s, gw, &used, Some(a)).unwrap();
        assert_eq!(b.to_string(), "fd12:3456:789a:1::3");
    }
}
