//! The endpoints netd holds, with the lookups an attach makes kept beside them: per network,
//! how many endpoints it has and which addresses they hold, and which endpoints map each host
//! port. An attach then costs the same at 1,000 endpoints as at 10: before, it filtered every
//! endpoint for its network's count and addresses and walked every endpoint's port mappings
//! (docs/benchmarks.md, "Why N = 1,000 is slower than N = 10").
//!
//! The index is not a second source of truth: it is changed only together with the map, by
//! [`Endpoints::insert`] and [`Endpoints::remove`], derived from the endpoint alone (not from
//! its network, whose gateway modes decide which mappings claim host ports), and the tests
//! hold it equal to one built from scratch after every step of random sequences.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::ipam::Used;
use crate::model::{Endpoint, EndpointKey, PortMapping};

/// Holders of one address or host port, in key order. Almost always one, kept without a
/// vector of its own (a container publishing 10,000 ports indexes 10,000 of them); several
/// only for host ports that do not clash (other host addresses, or routed families, which
/// claim none) or in a state that should not exist (an address held twice), which the index
/// still counts exactly rather than lose on the first removal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holders {
    One(Arc<EndpointKey>),
    /// Two or more, sorted.
    Many(Vec<Arc<EndpointKey>>),
}

impl Holders {
    fn as_slice(&self) -> &[Arc<EndpointKey>] {
        match self {
            Holders::One(k) => std::slice::from_ref(k),
            Holders::Many(v) => v,
        }
    }

    fn add(&mut self, key: &Arc<EndpointKey>) {
        if let Err(at) = self.as_slice().binary_search(key) {
            let mut all = self.as_slice().to_vec();
            all.insert(at, key.clone());
            *self = Holders::Many(all);
        }
    }

    /// Drops `key`; returns whether none is left.
    fn remove(&mut self, key: &EndpointKey) -> bool {
        let Holders::Many(all) = self else {
            return self.as_slice()[0].as_ref() == key;
        };
        if let Ok(at) = all.binary_search_by(|h| h.as_ref().cmp(key)) {
            all.remove(at);
            if let [one] = all.as_slice() {
                *self = Holders::One(one.clone());
            }
        }
        false
    }
}

/// The endpoints by key, and their index.
#[derive(Debug, Default, Clone)]
pub struct Endpoints {
    /// Keys are shared with the index, which holds references rather than copies of the
    /// three strings per entry.
    by_key: BTreeMap<Arc<EndpointKey>, Endpoint>,
    index: Index,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Index {
    networks: HashMap<String, NetIndex>,
    /// By (protocol, host port) of every mapping, whatever its host address, family or gateway
    /// mode: a superset of the endpoints whose host bindings can clash with a mapping of that
    /// protocol and port ([`crate::ports::check`] decides which do).
    ports: HashMap<PortKey, Holders, BuildHasherDefault<PortHasher>>,
}

/// A protocol and host port as one number: the protocol number above the port.
type PortKey = u32;

/// The hash of a [`PortKey`]: one multiplication (Fibonacci hashing), which spreads the
/// 24-bit keys over the high bits the table probes with. std's SipHash costs several times
/// that per key, paid 10,000 times by a container that publishes 10,000 ports; it resists
/// keys chosen to collide, which host ports, bounded to 3 × 65,535 values and published by
/// the runtime, do not need.
#[derive(Debug, Default, Clone, Copy)]
struct PortHasher(u64);

impl Hasher for PortHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct NetIndex {
    count: usize,
    addrs: HashMap<IpAddr, Holders>,
}

/// The (protocol, host port) key an endpoint's mapping is indexed under.
fn port_key(pm: &PortMapping) -> PortKey {
    (u32::from(pm.protocol.number()) << 16) | u32::from(pm.host_port)
}

fn addrs(ep: &Endpoint) -> impl Iterator<Item = IpAddr> {
    [ep.addr4.map(IpAddr::V4), ep.addr6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
}

fn hold<K: Hash + Eq, S: BuildHasher>(
    map: &mut HashMap<K, Holders, S>,
    slot: K,
    key: &Arc<EndpointKey>,
) {
    match map.entry(slot) {
        Entry::Vacant(v) => {
            v.insert(Holders::One(key.clone()));
        }
        Entry::Occupied(mut o) => o.get_mut().add(key),
    }
}

/// Drops `key` from the holders at `slot`, and the slot once empty, so that an index built
/// incrementally equals one built from scratch.
fn release<K: Hash + Eq, S: BuildHasher>(
    map: &mut HashMap<K, Holders, S>,
    slot: K,
    key: &EndpointKey,
) {
    if let Some(holders) = map.get_mut(&slot) {
        if holders.remove(key) {
            map.remove(&slot);
        }
    }
}

impl Index {
    fn add(&mut self, key: &Arc<EndpointKey>, ep: &Endpoint) {
        let net = self.networks.entry(ep.network.clone()).or_default();
        net.count += 1;
        for a in addrs(ep) {
            hold(&mut net.addrs, a, key);
        }
        self.ports.reserve(ep.ports.len());
        for pm in &ep.ports {
            hold(&mut self.ports, port_key(pm), key);
        }
    }

    fn drop_endpoint(&mut self, key: &EndpointKey, ep: &Endpoint) {
        if let Some(net) = self.networks.get_mut(&ep.network) {
            for a in addrs(ep) {
                release(&mut net.addrs, a, key);
            }
            net.count -= 1;
            if net.count == 0 {
                self.networks.remove(&ep.network);
            }
        }
        for pm in &ep.ports {
            release(&mut self.ports, port_key(pm), key);
        }
    }
}

impl FromIterator<Endpoint> for Endpoints {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(iter: I) -> Self {
        let mut eps = Endpoints::default();
        for ep in iter {
            eps.insert(ep);
        }
        eps
    }
}

impl Endpoints {
    /// Adds `ep`, replacing an endpoint of the same key.
    pub fn insert(&mut self, ep: Endpoint) {
        let key = ep.key();
        self.remove(&key);
        let key = Arc::new(key);
        self.index.add(&key, &ep);
        self.by_key.insert(key, ep);
    }

    /// Removes and returns the endpoint of `key`, if there is one.
    pub fn remove(&mut self, key: &EndpointKey) -> Option<Endpoint> {
        let ep = self.by_key.remove(key)?;
        self.index.drop_endpoint(key, &ep);
        Some(ep)
    }

    pub fn get(&self, key: &EndpointKey) -> Option<&Endpoint> {
        self.by_key.get(key)
    }

    pub fn contains_key(&self, key: &EndpointKey) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every endpoint, in key order.
    pub fn values(&self) -> impl Iterator<Item = &Endpoint> + Clone {
        self.by_key.values()
    }

    pub fn keys(&self) -> impl Iterator<Item = &EndpointKey> {
        self.by_key.keys().map(|k| k.as_ref())
    }

    /// How many endpoints `network` has.
    pub fn count_in(&self, network: &str) -> usize {
        self.index.networks.get(network).map_or(0, |n| n.count)
    }

    /// The endpoint of `network` holding `addr` (the last in key order if, against the
    /// rules, several do).
    pub fn holder_of(&self, network: &str, addr: IpAddr) -> Option<&Endpoint> {
        let key = self
            .index
            .networks
            .get(network)?
            .addrs
            .get(&addr)?
            .as_slice()
            .last()?;
        self.by_key.get(key.as_ref())
    }

    /// The addresses `network`'s endpoints hold, for the allocator.
    pub fn addrs_in(&self, network: &str) -> AddrsInUse<'_> {
        AddrsInUse(self.index.networks.get(network).map(|n| &n.addrs))
    }

    /// In key order, the endpoints with a mapping of the protocol and host port of one of
    /// `mappings`: every endpoint whose host bindings could clash with theirs, so that
    /// [`crate::ports::check`] over these finds what it would find over all endpoints, and
    /// names the same holder first.
    pub fn port_neighbours(&self, mappings: &[PortMapping]) -> Vec<&Endpoint> {
        if self.index.ports.is_empty() {
            return Vec::new();
        }
        let keys: BTreeSet<&Arc<EndpointKey>> = mappings
            .iter()
            .filter_map(|pm| self.index.ports.get(&port_key(pm)))
            .flat_map(Holders::as_slice)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.by_key.get(k.as_ref()))
            .collect()
    }
}

/// The addresses of one network's endpoints ([`Endpoints::addrs_in`]).
#[derive(Debug, Clone, Copy)]
pub struct AddrsInUse<'a>(Option<&'a HashMap<IpAddr, Holders>>);

impl Used<Ipv4Addr> for AddrsInUse<'_> {
    fn holds(&self, addr: &Ipv4Addr) -> bool {
        self.0.is_some_and(|m| m.contains_key(&IpAddr::V4(*addr)))
    }
}

impl Used<Ipv6Addr> for AddrsInUse<'_> {
    fn holds(&self, addr: &Ipv6Addr) -> bool {
        self.0.is_some_and(|m| m.contains_key(&IpAddr::V6(*addr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GatewayMode, Network, Proto};
    use crate::ports;

    /// A small deterministic generator (xorshift), so failures reproduce from the seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn rebuilt(eps: &Endpoints) -> Index {
        let mut index = Index::default();
        for (key, ep) in &eps.by_key {
            index.add(key, ep);
        }
        index
    }

    /// A random endpoint of one of three networks, drawn from small ranges so that
    /// addresses, host ports and keys collide often.
    fn random_endpoint(rng: &mut Rng) -> Endpoint {
        let network = ["a", "b", "c"][rng.below(3) as usize].to_string();
        let container_id = format!("c{}", rng.below(12));
        let ifname = format!("eth{}", rng.below(2));
        let ports = (0..rng.below(4))
            .map(|_| PortMapping {
                host_port: 8000 + rng.below(6) as u16,
                container_port: 80,
                protocol: [Proto::Tcp, Proto::Udp, Proto::Sctp][rng.below(3) as usize],
                host_ip: match rng.below(4) {
                    0 => Some("127.0.0.1".parse().unwrap()),
                    1 => Some("::1".parse().unwrap()),
                    2 => Some("10.1.1.1".parse().unwrap()),
                    _ => None,
                },
            })
            .collect();
        Endpoint {
            host_veth: crate::model::host_veth_name(&container_id, &ifname),
            network,
            container_id,
            ifname,
            netns: "/run/netns/x".into(),
            addr4: (rng.below(5) > 0).then(|| Ipv4Addr::new(10, 0, 0, 2 + rng.below(8) as u8)),
            addr6: (rng.below(2) > 0)
                .then(|| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2 + rng.below(8) as u16)),
            ports,
            mac: None,
            created: 0,
        }
    }

    #[test]
    fn the_index_equals_a_rebuild_after_every_insert_and_remove() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut eps = Endpoints::default();
            let mut replaced = 0;
            for step in 0..400 {
                let ep = random_endpoint(&mut rng);
                if rng.below(3) == 0 {
                    let had = eps.get(&ep.key()).cloned();
                    assert_eq!(eps.remove(&ep.key()), had, "seed {seed} step {step}");
                } else {
                    replaced += usize::from(eps.contains_key(&ep.key()));
                    eps.insert(ep.clone());
                    assert_eq!(eps.get(&ep.key()), Some(&ep));
                }
                assert_eq!(eps.index, rebuilt(&eps), "seed {seed} step {step}");
                for net in ["a", "b", "c"] {
                    let of_net: Vec<&Endpoint> =
                        eps.values().filter(|e| e.network == net).collect();
                    assert_eq!(eps.count_in(net), of_net.len());
                    let used = eps.addrs_in(net);
                    for i in 0..12u8 {
                        let a4 = Ipv4Addr::new(10, 0, 0, i);
                        let a6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i));
                        assert_eq!(used.holds(&a4), of_net.iter().any(|e| e.addr4 == Some(a4)));
                        assert_eq!(used.holds(&a6), of_net.iter().any(|e| e.addr6 == Some(a6)));
                        // The last holder in key order, as a map collected in that order keeps.
                        let last4 = of_net.iter().rev().find(|e| e.addr4 == Some(a4));
                        assert_eq!(eps.holder_of(net, IpAddr::V4(a4)), last4.copied());
                    }
                }
            }
            assert!(replaced > 0, "seed {seed}: no insert replaced an endpoint");
            // Everything removed: nothing left in the index either.
            let keys: Vec<EndpointKey> = eps.keys().cloned().collect();
            for k in keys {
                eps.remove(&k);
            }
            assert!(eps.is_empty());
            assert_eq!(eps.index, Index::default(), "seed {seed}");
        }
    }

    fn network(name: &str, mode4: GatewayMode, v6: bool) -> Network {
        Network {
            name: name.into(),
            bridge: format!("nd-{name}"),
            subnet4: Some("10.0.0.0/24".parse().unwrap()),
            gateway4: Some("10.0.0.1".parse().unwrap()),
            subnet6: v6.then(|| "fd00::/64".parse().unwrap()),
            gateway6: v6.then(|| "fd00::1".parse().unwrap()),
            internal: false,
            icc: true,
            gateway_mode4: mode4,
            gateway_mode6: GatewayMode::Nat,
            mtu: 1500,
            cni_version: "1.0.0".into(),
            created: 0,
        }
    }

    /// `ports::check` over the port neighbours answers exactly what it answers over every
    /// endpoint: the same verdict, and a clash names the same holder and binding.
    #[test]
    fn port_neighbours_give_the_same_check_as_every_endpoint() {
        let nets: BTreeMap<String, Network> = [
            network("a", GatewayMode::Nat, true),
            network("b", GatewayMode::Routed, true),
            network("c", GatewayMode::Nat, false),
        ]
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
        let (mut clashes, mut passes) = (0, 0);
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut eps = Endpoints::default();
            for _ in 0..60 {
                eps.insert(random_endpoint(&mut rng));
            }
            for _ in 0..200 {
                let req = random_endpoint(&mut rng);
                let net = &nets[&req.network];
                let with = |it: Vec<&Endpoint>| {
                    ports::check(
                        net,
                        &req.ports,
                        it.into_iter().map(|e| (e, &nets[&e.network])),
                    )
                };
                let all = with(eps.values().collect());
                assert_eq!(with(eps.port_neighbours(&req.ports)), all, "seed {seed}");
                match all {
                    Err(ports::PortError::Taken { .. }) => clashes += 1,
                    Ok(()) if !req.ports.is_empty() => passes += 1,
                    _ => {}
                }
            }
        }
        assert!(
            clashes > 100 && passes > 100,
            "{clashes} clashes, {passes} passes"
        );
    }
}
