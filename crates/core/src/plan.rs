//! The desired contents of netd's nftables table, computed from state.
//!
//! netd's table has a fixed shape: its chains and rules never change at run time (see
//! `nft-templates/netd.nft`). Everything that depends on networks and endpoints lives in named
//! sets and maps, so a change is a list of element additions and removals, and the per-packet
//! cost is one hash or interval lookup however many networks or endpoints exist.
//!
//! This module is pure: it takes the model and returns values.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::{Endpoint, GatewayMode, Network, PortMapping, Proto};
use crate::ports::{self, Family};
use shape::{BoundDnat, Dnat, Iface, IfaceVerdict, Open, SameIface};

/// The named sets and maps of netd's table. The names are the ones in `nft-templates/netd.nft`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetId {
    /// `set bridges { type ifname }`: every bridge netd manages.
    Bridges,
    /// `map same_net { type ifname . ifname : verdict }`: traffic that stays on one bridge
    /// (seen by the inet forward hook only through br_netfilter or hairpin NAT).
    SameNet,
    /// `map in4 / in6 { type ifname : verdict }`: traffic entering a network from outside,
    /// keyed by the output bridge, per address family.
    In4,
    In6,
    /// `map out4 / out6 { type ifname : verdict }`: traffic leaving a network, keyed by the
    /// input bridge, per address family.
    Out4,
    Out6,
    /// `set sealed { type ifname }`: bridges of internal networks.
    Sealed,
    /// `set masq4 / masq6 { flags interval }`: subnets whose outbound traffic is masqueraded.
    Masq4,
    Masq6,
    /// `set subnets4 / subnets6 { flags interval }`: every netd subnet (hairpin masquerade).
    Subnets4,
    Subnets6,
    /// `map dnat4_any { type inet_proto . inet_service : ipv4_addr . inet_service }`:
    /// ports published on every host address.
    Dnat4Any,
    /// `map dnat4_bound { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service }`:
    /// ports published on one host address.
    Dnat4Bound,
    Dnat6Any,
    Dnat6Bound,
    /// `set open4 / open6 { type ipv4_addr . inet_proto . inet_service }`: container ports that
    /// answer at the container's own address (routed gateway mode).
    Open4,
    Open6,
    /// `map dnat4_any_ranges { type inet_proto . inet_service : ipv4_addr; flags interval }`:
    /// runs of two or more consecutive host ports published on every host address, each to
    /// the same port of one container (`-p 20000-29999:20000-29999`). DNAT to an address
    /// alone keeps the destination port, so a run needs one element, where the port maps
    /// need one per port.
    Dnat4AnyRanges,
    /// `map dnat4_bound_ranges { type inet_proto . ipv4_addr . inet_service : ipv4_addr;
    /// flags interval }`: the same, on one host address.
    Dnat4BoundRanges,
    Dnat6AnyRanges,
    Dnat6BoundRanges,
    /// `set open4_ranges / open6_ranges { type ipv4_addr . inet_proto . inet_service; flags
    /// interval }`: runs of two or more consecutive container ports open at the container's
    /// own address (routed gateway mode).
    Open4Ranges,
    Open6Ranges,
}

impl SetId {
    pub const ALL: [SetId; 23] = [
        SetId::Bridges,
        SetId::SameNet,
        SetId::In4,
        SetId::In6,
        SetId::Out4,
        SetId::Out6,
        SetId::Sealed,
        SetId::Masq4,
        SetId::Masq6,
        SetId::Subnets4,
        SetId::Subnets6,
        SetId::Dnat4Any,
        SetId::Dnat4Bound,
        SetId::Dnat6Any,
        SetId::Dnat6Bound,
        SetId::Open4,
        SetId::Open6,
        SetId::Dnat4AnyRanges,
        SetId::Dnat4BoundRanges,
        SetId::Dnat6AnyRanges,
        SetId::Dnat6BoundRanges,
        SetId::Open4Ranges,
        SetId::Open6Ranges,
    ];

    /// Prefix sets hold subnets (intervals of addresses), which [`Desired::normalized`]
    /// brings into canonical form. The port-range sets are interval sets too, but their
    /// elements never overlap (each port is one endpoint's), so they need no normalizing.
    pub fn is_interval(self) -> bool {
        matches!(
            self,
            SetId::Masq4 | SetId::Masq6 | SetId::Subnets4 | SetId::Subnets6
        )
    }

    /// The set's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            SetId::Bridges => "bridges",
            SetId::SameNet => "same_net",
            SetId::In4 => "in4",
            SetId::In6 => "in6",
            SetId::Out4 => "out4",
            SetId::Out6 => "out6",
            SetId::Sealed => "sealed",
            SetId::Masq4 => "masq4",
            SetId::Masq6 => "masq6",
            SetId::Subnets4 => "subnets4",
            SetId::Subnets6 => "subnets6",
            SetId::Dnat4Any => "dnat4_any",
            SetId::Dnat4Bound => "dnat4_bound",
            SetId::Dnat6Any => "dnat6_any",
            SetId::Dnat6Bound => "dnat6_bound",
            SetId::Open4 => "open4",
            SetId::Open6 => "open6",
            SetId::Dnat4AnyRanges => "dnat4_any_ranges",
            SetId::Dnat4BoundRanges => "dnat4_bound_ranges",
            SetId::Dnat6AnyRanges => "dnat6_any_ranges",
            SetId::Dnat6BoundRanges => "dnat6_bound_ranges",
            SetId::Open4Ranges => "open4_ranges",
            SetId::Open6Ranges => "open6_ranges",
        }
    }
}

/// Regular chains that verdict-map elements may jump to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainId {
    /// Same-network traffic of a network with inter-container communication off.
    IccOff,
    /// Traffic entering a network in `nat` gateway mode from outside.
    ToNat,
    /// Traffic entering a network in `routed` gateway mode from outside.
    ToRouted,
}

impl ChainId {
    pub fn name(self) -> &'static str {
        match self {
            ChainId::IccOff => "icc_off",
            ChainId::ToNat => "to_nat",
            ChainId::ToRouted => "to_routed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Goto(ChainId),
}

/// One element of one of netd's sets or maps. Which variants a set takes is fixed by its
/// [`SetId`]; see [`SetId`]'s docs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    /// `bridges`, `sealed`
    Iface(String),
    /// `same_net`: the key is the interface twice (`"br" . "br"`).
    SameIface(String, Verdict),
    /// `in4`, `in6`, `out4`, `out6`
    IfaceVerdict(String, Verdict),
    /// `masq4`, `subnets4`
    Net4(Ipv4Net),
    /// `masq6`, `subnets6`
    Net6(Ipv6Net),
    /// `dnat4_any` (host_addr None) and `dnat4_bound` (host_addr Some)
    Dnat4 {
        proto: Proto,
        host_addr: Option<Ipv4Addr>,
        host_port: u16,
        addr: Ipv4Addr,
        port: u16,
    },
    /// `dnat6_any` and `dnat6_bound`
    Dnat6 {
        proto: Proto,
        host_addr: Option<Ipv6Addr>,
        host_port: u16,
        addr: Ipv6Addr,
        port: u16,
    },
    /// `open4`
    Open4 {
        addr: Ipv4Addr,
        proto: Proto,
        port: u16,
    },
    /// `open6`
    Open6 {
        addr: Ipv6Addr,
        proto: Proto,
        port: u16,
    },
    /// `dnat4_any_ranges` (host_addr None) and `dnat4_bound_ranges` (host_addr Some): host
    /// ports `first..=last` to the same ports of `addr`.
    Dnat4Range {
        proto: Proto,
        host_addr: Option<Ipv4Addr>,
        first: u16,
        last: u16,
        addr: Ipv4Addr,
    },
    /// `dnat6_any_ranges` and `dnat6_bound_ranges`
    Dnat6Range {
        proto: Proto,
        host_addr: Option<Ipv6Addr>,
        first: u16,
        last: u16,
        addr: Ipv6Addr,
    },
    /// `open4_ranges`: container ports `first..=last`.
    Open4Range {
        addr: Ipv4Addr,
        proto: Proto,
        first: u16,
        last: u16,
    },
    /// `open6_ranges`
    Open6Range {
        addr: Ipv6Addr,
        proto: Proto,
        first: u16,
        last: u16,
    },
}

/// The elements every set of netd's table should hold. A set absent from the map is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub sets: BTreeMap<SetId, BTreeSet<Elem>>,
}

impl Desired {
    pub fn elems(&self, set: SetId) -> impl Iterator<Item = &Elem> {
        self.sets.get(&set).into_iter().flatten()
    }

    /// Adds an element to a set. The set's type names the shape of its elements, so an
    /// element that does not fit the set does not compile.
    pub fn insert<K: Into<Elem>>(&mut self, set: Set<K>, elem: K) {
        self.sets.entry(set.id).or_default().insert(elem.into());
    }

    /// `self` after `diff`: removals, then additions. Diffs come from [`Desired::diff`] and
    /// [`endpoint_elems`], whose elements were made through typed sets.
    pub fn apply(&mut self, diff: &Diff) {
        for (set, elems) in &diff.remove {
            if let Some(s) = self.sets.get_mut(set) {
                for e in elems {
                    s.remove(e);
                }
            }
        }
        for (set, elems) in &diff.add {
            let s = self.sets.entry(*set).or_default();
            if elems.len() >= s.len() {
                // Many at once (10,000 published ports): building a tree from the sorted
                // union is linear, where inserting one by one pays a descent each.
                s.append(&mut elems.iter().cloned().collect());
            } else {
                s.extend(elems.iter().cloned());
            }
        }
    }
}

/// One of netd's sets, typed by the shape of its elements (`K`): [`Desired::insert`] and
/// [`typed`] take a `Set<K>` and a `K`, which ties each element to its set at compile time.
/// The constants in [`sets`] are the only values.
#[derive(Debug)]
pub struct Set<K> {
    id: SetId,
    shape: PhantomData<fn(K) -> Elem>,
}

impl<K> Clone for Set<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K> Copy for Set<K> {}

impl<K> Set<K> {
    const fn new(id: SetId) -> Set<K> {
        Set {
            id,
            shape: PhantomData,
        }
    }

    pub fn id(self) -> SetId {
        self.id
    }
}

/// An element of a set as the (set, element) pair diffs and encoders use.
pub fn typed<K: Into<Elem>>(set: Set<K>, elem: K) -> (SetId, Elem) {
    (set.id, elem.into())
}

/// Element shapes (see [`sets`]).
pub mod shape {
    use super::*;

    /// An interface name: `bridges`, `sealed`.
    pub struct Iface(pub String);
    /// An interface and a verdict: `in4`, `in6`, `out4`, `out6`.
    pub struct IfaceVerdict(pub String, pub Verdict);
    /// A bridge and the verdict for traffic staying on it: `same_net`.
    pub struct SameIface(pub String, pub Verdict);
    /// A port published on every host address: `dnat4_any`, `dnat6_any`.
    pub struct Dnat<A> {
        pub proto: Proto,
        pub host_port: u16,
        pub addr: A,
        pub port: u16,
    }
    /// A port published on one host address: `dnat4_bound`, `dnat6_bound`.
    pub struct BoundDnat<A> {
        pub proto: Proto,
        pub host_addr: A,
        pub host_port: u16,
        pub addr: A,
        pub port: u16,
    }
    /// A container port open at the container's own address: `open4`, `open6`.
    pub struct Open<A> {
        pub addr: A,
        pub proto: Proto,
        pub port: u16,
    }

    /// Host ports `first..=last` on every host address to the same ports of `addr`:
    /// `dnat4_any_ranges`, `dnat6_any_ranges`.
    pub struct DnatRange<A> {
        pub proto: Proto,
        pub first: u16,
        pub last: u16,
        pub addr: A,
    }
    /// The same on one host address: `dnat4_bound_ranges`, `dnat6_bound_ranges`.
    pub struct BoundDnatRange<A> {
        pub proto: Proto,
        pub host_addr: A,
        pub first: u16,
        pub last: u16,
        pub addr: A,
    }
    /// Container ports `first..=last` open at its own address: `open4_ranges`, `open6_ranges`.
    pub struct OpenRange<A> {
        pub addr: A,
        pub proto: Proto,
        pub first: u16,
        pub last: u16,
    }

    impl From<DnatRange<Ipv4Addr>> for Elem {
        fn from(d: DnatRange<Ipv4Addr>) -> Elem {
            Elem::Dnat4Range {
                proto: d.proto,
                host_addr: None,
                first: d.first,
                last: d.last,
                addr: d.addr,
            }
        }
    }
    impl From<DnatRange<Ipv6Addr>> for Elem {
        fn from(d: DnatRange<Ipv6Addr>) -> Elem {
            Elem::Dnat6Range {
                proto: d.proto,
                host_addr: None,
                first: d.first,
                last: d.last,
                addr: d.addr,
            }
        }
    }
    impl From<BoundDnatRange<Ipv4Addr>> for Elem {
        fn from(d: BoundDnatRange<Ipv4Addr>) -> Elem {
            Elem::Dnat4Range {
                proto: d.proto,
                host_addr: Some(d.host_addr),
                first: d.first,
                last: d.last,
                addr: d.addr,
            }
        }
    }
    impl From<BoundDnatRange<Ipv6Addr>> for Elem {
        fn from(d: BoundDnatRange<Ipv6Addr>) -> Elem {
            Elem::Dnat6Range {
                proto: d.proto,
                host_addr: Some(d.host_addr),
                first: d.first,
                last: d.last,
                addr: d.addr,
            }
        }
    }
    impl From<OpenRange<Ipv4Addr>> for Elem {
        fn from(o: OpenRange<Ipv4Addr>) -> Elem {
            Elem::Open4Range {
                addr: o.addr,
                proto: o.proto,
                first: o.first,
                last: o.last,
            }
        }
    }
    impl From<OpenRange<Ipv6Addr>> for Elem {
        fn from(o: OpenRange<Ipv6Addr>) -> Elem {
            Elem::Open6Range {
                addr: o.addr,
                proto: o.proto,
                first: o.first,
                last: o.last,
            }
        }
    }

    impl From<Iface> for Elem {
        fn from(i: Iface) -> Elem {
            Elem::Iface(i.0)
        }
    }
    impl From<IfaceVerdict> for Elem {
        fn from(i: IfaceVerdict) -> Elem {
            Elem::IfaceVerdict(i.0, i.1)
        }
    }
    impl From<SameIface> for Elem {
        fn from(i: SameIface) -> Elem {
            Elem::SameIface(i.0, i.1)
        }
    }
    impl From<Ipv4Net> for Elem {
        fn from(n: Ipv4Net) -> Elem {
            Elem::Net4(n)
        }
    }
    impl From<Ipv6Net> for Elem {
        fn from(n: Ipv6Net) -> Elem {
            Elem::Net6(n)
        }
    }
    impl From<Dnat<Ipv4Addr>> for Elem {
        fn from(d: Dnat<Ipv4Addr>) -> Elem {
            Elem::Dnat4 {
                proto: d.proto,
                host_addr: None,
                host_port: d.host_port,
                addr: d.addr,
                port: d.port,
            }
        }
    }
    impl From<Dnat<Ipv6Addr>> for Elem {
        fn from(d: Dnat<Ipv6Addr>) -> Elem {
            Elem::Dnat6 {
                proto: d.proto,
                host_addr: None,
                host_port: d.host_port,
                addr: d.addr,
                port: d.port,
            }
        }
    }
    impl From<BoundDnat<Ipv4Addr>> for Elem {
        fn from(d: BoundDnat<Ipv4Addr>) -> Elem {
            Elem::Dnat4 {
                proto: d.proto,
                host_addr: Some(d.host_addr),
                host_port: d.host_port,
                addr: d.addr,
                port: d.port,
            }
        }
    }
    impl From<BoundDnat<Ipv6Addr>> for Elem {
        fn from(d: BoundDnat<Ipv6Addr>) -> Elem {
            Elem::Dnat6 {
                proto: d.proto,
                host_addr: Some(d.host_addr),
                host_port: d.host_port,
                addr: d.addr,
                port: d.port,
            }
        }
    }
    impl From<Open<Ipv4Addr>> for Elem {
        fn from(o: Open<Ipv4Addr>) -> Elem {
            Elem::Open4 {
                addr: o.addr,
                proto: o.proto,
                port: o.port,
            }
        }
    }
    impl From<Open<Ipv6Addr>> for Elem {
        fn from(o: Open<Ipv6Addr>) -> Elem {
            Elem::Open6 {
                addr: o.addr,
                proto: o.proto,
                port: o.port,
            }
        }
    }
}

/// Every set of netd's table with the shape of its elements.
pub mod sets {
    use super::shape::*;
    use super::*;

    pub const BRIDGES: Set<Iface> = Set::new(SetId::Bridges);
    pub const SAME_NET: Set<SameIface> = Set::new(SetId::SameNet);
    pub const IN4: Set<IfaceVerdict> = Set::new(SetId::In4);
    pub const IN6: Set<IfaceVerdict> = Set::new(SetId::In6);
    pub const OUT4: Set<IfaceVerdict> = Set::new(SetId::Out4);
    pub const OUT6: Set<IfaceVerdict> = Set::new(SetId::Out6);
    pub const SEALED: Set<Iface> = Set::new(SetId::Sealed);
    pub const MASQ4: Set<Ipv4Net> = Set::new(SetId::Masq4);
    pub const MASQ6: Set<Ipv6Net> = Set::new(SetId::Masq6);
    pub const SUBNETS4: Set<Ipv4Net> = Set::new(SetId::Subnets4);
    pub const SUBNETS6: Set<Ipv6Net> = Set::new(SetId::Subnets6);
    pub const DNAT4_ANY: Set<Dnat<Ipv4Addr>> = Set::new(SetId::Dnat4Any);
    pub const DNAT4_BOUND: Set<BoundDnat<Ipv4Addr>> = Set::new(SetId::Dnat4Bound);
    pub const DNAT6_ANY: Set<Dnat<Ipv6Addr>> = Set::new(SetId::Dnat6Any);
    pub const DNAT6_BOUND: Set<BoundDnat<Ipv6Addr>> = Set::new(SetId::Dnat6Bound);
    pub const OPEN4: Set<Open<Ipv4Addr>> = Set::new(SetId::Open4);
    pub const OPEN6: Set<Open<Ipv6Addr>> = Set::new(SetId::Open6);
    pub const DNAT4_ANY_RANGES: Set<DnatRange<Ipv4Addr>> = Set::new(SetId::Dnat4AnyRanges);
    pub const DNAT4_BOUND_RANGES: Set<BoundDnatRange<Ipv4Addr>> = Set::new(SetId::Dnat4BoundRanges);
    pub const DNAT6_ANY_RANGES: Set<DnatRange<Ipv6Addr>> = Set::new(SetId::Dnat6AnyRanges);
    pub const DNAT6_BOUND_RANGES: Set<BoundDnatRange<Ipv6Addr>> = Set::new(SetId::Dnat6BoundRanges);
    pub const OPEN4_RANGES: Set<OpenRange<Ipv4Addr>> = Set::new(SetId::Open4Ranges);
    pub const OPEN6_RANGES: Set<OpenRange<Ipv6Addr>> = Set::new(SetId::Open6Ranges);
}

/// Element changes that turn one [`Desired`] into another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub remove: BTreeMap<SetId, Vec<Elem>>,
    pub add: BTreeMap<SetId, Vec<Elem>>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.remove.values().all(Vec::is_empty) && self.add.values().all(Vec::is_empty)
    }
}

impl Desired {
    /// The element changes that turn `self` into `new`: removals of what `new` lacks, additions
    /// of what `self` lacks. A map element whose data changed appears in both, so applying
    /// removals before additions replaces it.
    pub fn diff(&self, new: &Desired) -> Diff {
        let mut diff = Diff::default();
        for set in SetId::ALL {
            let old_elems = self.normalized(set);
            let new_elems = new.normalized(set);
            let removed: Vec<Elem> = old_elems.difference(&new_elems).cloned().collect();
            let added: Vec<Elem> = new_elems.difference(&old_elems).cloned().collect();
            if !removed.is_empty() {
                diff.remove.insert(set, removed);
            }
            if !added.is_empty() {
                diff.add.insert(set, added);
            }
        }
        diff
    }

    /// The elements of a set as the kernel holds them: interval sets hold networks in
    /// canonical form, without networks another one already covers (the kernel refuses
    /// overlapping intervals, and the union is the same).
    pub fn normalized(&self, set: SetId) -> BTreeSet<Elem> {
        let Some(elems) = self.sets.get(&set) else {
            return BTreeSet::new();
        };
        if !set.is_interval() {
            return elems.clone();
        }
        let nets: Vec<Elem> = elems
            .iter()
            .map(|e| match e {
                Elem::Net4(n) => Elem::Net4(n.trunc()),
                Elem::Net6(n) => Elem::Net6(n.trunc()),
                e => e.clone(),
            })
            .collect();
        let covered_by = |n: &Elem, m: &Elem| match (n, m) {
            (Elem::Net4(n), Elem::Net4(m)) => m != n && m.contains(n),
            (Elem::Net6(n), Elem::Net6(m)) => m != n && m.contains(n),
            _ => false,
        };
        nets.iter()
            .filter(|n| !nets.iter().any(|m| covered_by(n, m)))
            .cloned()
            .collect()
    }

    /// How many elements the table holds in all.
    pub fn len(&self) -> usize {
        self.sets.values().map(BTreeSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Computes the table's contents for a set of networks and endpoints.
///
/// Per network: its bridge classifies traffic in `in4/in6` (entering), `out4/out6` (leaving)
/// and `same_net` (ICC). A family the network has no subnet for is dropped both ways, as is
/// everything of an internal network, whose bridge is also `sealed` against other networks.
/// Per endpoint: each published port becomes a DNAT element (nat mode) or an `open` element for
/// the container port (routed mode).
pub fn desired<'a>(
    networks: impl IntoIterator<Item = &'a Network>,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> Desired {
    let mut d = Desired::default();
    let mut by_name = BTreeMap::new();
    for net in networks {
        by_name.insert(net.name.as_str(), net);
        let br = &net.bridge;
        d.insert(sets::BRIDGES, Iface(br.clone()));
        let icc = if net.icc {
            Verdict::Accept
        } else {
            Verdict::Goto(ChainId::IccOff)
        };
        d.insert(sets::SAME_NET, SameIface(br.clone(), icc));
        if net.internal {
            d.insert(sets::SEALED, Iface(br.clone()));
        }
        let families = [
            (
                net.subnet4.is_some(),
                net.gateway_mode4,
                sets::IN4,
                sets::OUT4,
            ),
            (
                net.subnet6.is_some(),
                net.gateway_mode6,
                sets::IN6,
                sets::OUT6,
            ),
        ];
        for (present, mode, in_set, out_set) in families {
            let (inbound, outbound) = if !present || net.internal {
                (Verdict::Drop, Verdict::Drop)
            } else {
                match mode {
                    GatewayMode::Nat => (Verdict::Goto(ChainId::ToNat), Verdict::Accept),
                    GatewayMode::Routed => (Verdict::Goto(ChainId::ToRouted), Verdict::Accept),
                    GatewayMode::Isolated => (Verdict::Drop, Verdict::Drop),
                }
            };
            d.insert(in_set, IfaceVerdict(br.clone(), inbound));
            d.insert(out_set, IfaceVerdict(br.clone(), outbound));
        }
        if let Some(s) = net.subnet4 {
            d.insert(sets::SUBNETS4, s.trunc());
            if !net.internal && net.gateway_mode4 == GatewayMode::Nat {
                d.insert(sets::MASQ4, s.trunc());
            }
        }
        if let Some(s) = net.subnet6 {
            d.insert(sets::SUBNETS6, s.trunc());
            if !net.internal && net.gateway_mode6 == GatewayMode::Nat {
                d.insert(sets::MASQ6, s.trunc());
            }
        }
    }
    for ep in endpoints {
        if let Some(net) = by_name.get(ep.network.as_str()) {
            for (set, elem) in endpoint_elems(net, ep) {
                d.sets.entry(set).or_default().insert(elem);
            }
        }
    }
    d
}

/// The elements one endpoint contributes (its published ports), each once. No two endpoints
/// share one: DNAT keys are host bindings, which [`ports::check`] keeps unique, and open-port
/// keys start with the container's own address. So an endpoint's elements can be added and
/// removed on their own, without recomputing the table.
///
/// A run of two or more consecutive ports that keep their number (host port = container
/// port, same protocol, host address and container) becomes one element of a `_ranges` set
/// ([`fold_ranges`]); a lone port, and every port that is translated, stays an element of
/// its port map. The rule depends only on the endpoint's own mappings, so ADD and DEL
/// compute the same elements.
///
/// Sorted and without repeats (what a set would give), built as a vector: sorting 10,000
/// elements once is cheaper than 10,000 tree insertions.
pub fn endpoint_elems(net: &Network, ep: &Endpoint) -> Vec<(SetId, Elem)> {
    let mut out = Vec::new();
    if net.internal {
        return out;
    }
    out.reserve(ep.ports.len());
    for pm in &ep.ports {
        for b in ports::target_iter(net, pm) {
            let (mode, ctr) = match b.family {
                Family::V4 => (net.gateway_mode4, ep.addr4.map(IpAddr::V4)),
                Family::V6 => (net.gateway_mode6, ep.addr6.map(IpAddr::V6)),
            };
            out.extend(ctr.and_then(|ctr| port_elem(mode, pm, b.addr, ctr)));
        }
    }
    out.sort_unstable();
    out.dedup();
    let mut out = fold_ranges(out);
    out.sort_unstable();
    out
}

/// Where a port element may join a run: the `_ranges` set, the run's identity (protocol,
/// host address, container address) and the port that must follow the run's last one.
/// Translated DNAT ports (host port ≠ container port) join none: an interval maps to an
/// address only, and the kernel keeps the destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunKey {
    set: SetId,
    proto: Proto,
    host: Option<IpAddr>,
    addr: IpAddr,
}

fn run_of(set: SetId, e: &Elem) -> Option<(RunKey, u16)> {
    let key = |set, proto, host, addr| RunKey {
        set,
        proto,
        host,
        addr,
    };
    match (set, e) {
        (
            SetId::Dnat4Any | SetId::Dnat4Bound,
            Elem::Dnat4 {
                proto,
                host_addr,
                host_port,
                addr,
                port,
            },
        ) if host_port == port => {
            let ranges = match host_addr {
                Some(_) => SetId::Dnat4BoundRanges,
                None => SetId::Dnat4AnyRanges,
            };
            let host = host_addr.map(IpAddr::V4);
            Some((key(ranges, *proto, host, IpAddr::V4(*addr)), *port))
        }
        (
            SetId::Dnat6Any | SetId::Dnat6Bound,
            Elem::Dnat6 {
                proto,
                host_addr,
                host_port,
                addr,
                port,
            },
        ) if host_port == port => {
            let ranges = match host_addr {
                Some(_) => SetId::Dnat6BoundRanges,
                None => SetId::Dnat6AnyRanges,
            };
            let host = host_addr.map(IpAddr::V6);
            Some((key(ranges, *proto, host, IpAddr::V6(*addr)), *port))
        }
        (SetId::Open4, Elem::Open4 { addr, proto, port }) => Some((
            key(SetId::Open4Ranges, *proto, None, IpAddr::V4(*addr)),
            *port,
        )),
        (SetId::Open6, Elem::Open6 { addr, proto, port }) => Some((
            key(SetId::Open6Ranges, *proto, None, IpAddr::V6(*addr)),
            *port,
        )),
        _ => None,
    }
}

/// The range element of a run `first..=last` (`first < last`).
fn range_elem(k: RunKey, first: u16, last: u16) -> (SetId, Elem) {
    let v4 = |a: Option<IpAddr>| match a {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let v6 = |a: Option<IpAddr>| match a {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    let elem = match (k.set, k.addr) {
        (SetId::Open4Ranges, IpAddr::V4(addr)) => Elem::Open4Range {
            addr,
            proto: k.proto,
            first,
            last,
        },
        (SetId::Open6Ranges, IpAddr::V6(addr)) => Elem::Open6Range {
            addr,
            proto: k.proto,
            first,
            last,
        },
        (_, IpAddr::V4(addr)) => Elem::Dnat4Range {
            proto: k.proto,
            host_addr: v4(k.host),
            first,
            last,
            addr,
        },
        (_, IpAddr::V6(addr)) => Elem::Dnat6Range {
            proto: k.proto,
            host_addr: v6(k.host),
            first,
            last,
            addr,
        },
    };
    (k.set, elem)
}

/// Folds runs of two or more consecutive same-numbered ports of sorted, deduplicated port
/// elements into range elements (see [`endpoint_elems`]). In that order the ports of one
/// run are adjacent: elements sort by set, protocol, host address (or container address
/// for `open`) and then port, and no two elements of an endpoint share a host binding.
fn fold_ranges(sorted: Vec<(SetId, Elem)>) -> Vec<(SetId, Elem)> {
    let mut out = Vec::with_capacity(sorted.len());
    // The run being built: its key, first and last port, and its first element (emitted
    // as it is when the run stays a lone port).
    let mut run: Option<(RunKey, u16, u16, (SetId, Elem))> = None;
    let flush = |run: Option<(RunKey, u16, u16, (SetId, Elem))>, out: &mut Vec<_>| {
        if let Some((k, first, last, single)) = run {
            if first == last {
                out.push(single);
            } else {
                out.push(range_elem(k, first, last));
            }
        }
    };
    for (set, e) in sorted {
        let Some((k, port)) = run_of(set, &e) else {
            flush(run.take(), &mut out);
            out.push((set, e));
            continue;
        };
        match &mut run {
            Some((rk, _, last, _)) if *rk == k && last.checked_add(1) == Some(port) => {
                *last = port;
            }
            _ => {
                flush(run.take(), &mut out);
                run = Some((k, port, port, (set, e)));
            }
        }
    }
    flush(run, &mut out);
    out
}

/// What a published port becomes for one address family: a DNAT map element in nat mode
/// (bound to one host address or to all), an open container port in routed mode, nothing in
/// isolated mode.
fn port_elem(
    mode: GatewayMode,
    pm: &PortMapping,
    host: Option<IpAddr>,
    ctr: IpAddr,
) -> Option<(SetId, Elem)> {
    let (proto, host_port, port) = (pm.protocol, pm.host_port, pm.container_port);
    Some(match (mode, ctr, host) {
        (GatewayMode::Nat, IpAddr::V4(addr), Some(IpAddr::V4(host_addr))) => typed(
            sets::DNAT4_BOUND,
            BoundDnat {
                proto,
                host_addr,
                host_port,
                addr,
                port,
            },
        ),
        (GatewayMode::Nat, IpAddr::V4(addr), _) => typed(
            sets::DNAT4_ANY,
            Dnat {
                proto,
                host_port,
                addr,
                port,
            },
        ),
        (GatewayMode::Nat, IpAddr::V6(addr), Some(IpAddr::V6(host_addr))) => typed(
            sets::DNAT6_BOUND,
            BoundDnat {
                proto,
                host_addr,
                host_port,
                addr,
                port,
            },
        ),
        (GatewayMode::Nat, IpAddr::V6(addr), _) => typed(
            sets::DNAT6_ANY,
            Dnat {
                proto,
                host_port,
                addr,
                port,
            },
        ),
        (GatewayMode::Routed, IpAddr::V4(addr), _) => {
            typed(sets::OPEN4, Open { addr, proto, port })
        }
        (GatewayMode::Routed, IpAddr::V6(addr), _) => {
            typed(sets::OPEN6, Open { addr, proto, port })
        }
        (GatewayMode::Isolated, _, _) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_has_one_typed_handle() {
        use super::sets::*;
        let ids = [
            BRIDGES.id(),
            SAME_NET.id(),
            IN4.id(),
            IN6.id(),
            OUT4.id(),
            OUT6.id(),
            SEALED.id(),
            MASQ4.id(),
            MASQ6.id(),
            SUBNETS4.id(),
            SUBNETS6.id(),
            DNAT4_ANY.id(),
            DNAT4_BOUND.id(),
            DNAT6_ANY.id(),
            DNAT6_BOUND.id(),
            OPEN4.id(),
            OPEN6.id(),
            DNAT4_ANY_RANGES.id(),
            DNAT4_BOUND_RANGES.id(),
            DNAT6_ANY_RANGES.id(),
            DNAT6_BOUND_RANGES.id(),
            OPEN4_RANGES.id(),
            OPEN6_RANGES.id(),
        ];
        assert_eq!(ids, SetId::ALL);
    }
    use crate::model::PortMapping;

    fn net(name: &str) -> Network {
        Network {
            name: name.into(),
            bridge: format!("nd-{name}"),
            subnet4: Some("10.1.0.0/24".parse().unwrap()),
            gateway4: Some("10.1.0.1".parse().unwrap()),
            subnet6: None,
            gateway6: None,
            internal: false,
            icc: true,
            gateway_mode4: GatewayMode::Nat,
            gateway_mode6: GatewayMode::Nat,
            mtu: 1500,
            cni_version: "1.0.0".into(),
            created: 0,
        }
    }

    fn ep(net: &str, cid: &str, addr: &str, ports: Vec<PortMapping>) -> Endpoint {
        Endpoint {
            network: net.into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            host_veth: crate::model::host_veth_name(cid, "eth0"),
            addr4: Some(addr.parse().unwrap()),
            addr6: None,
            ports,
            mac: None,
            created: 0,
        }
    }

    fn tcp(host: u16, ctr: u16) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: ctr,
            protocol: Proto::Tcp,
            host_ip: None,
        }
    }

    fn has(d: &Desired, set: SetId, e: Elem) -> bool {
        d.sets.get(&set).is_some_and(|s| s.contains(&e))
    }

    #[test]
    fn nat_network_with_a_published_port() {
        let n = net("a");
        let e = ep("a", "c1", "10.1.0.2", vec![tcp(8080, 80)]);
        let d = desired([&n], [&e]);
        let br = || "nd-a".to_string();
        assert!(has(&d, SetId::Bridges, Elem::Iface(br())));
        assert!(has(
            &d,
            SetId::SameNet,
            Elem::SameIface(br(), Verdict::Accept)
        ));
        assert!(has(
            &d,
            SetId::In4,
            Elem::IfaceVerdict(br(), Verdict::Goto(ChainId::ToNat))
        ));
        assert!(has(
            &d,
            SetId::Out4,
            Elem::IfaceVerdict(br(), Verdict::Accept)
        ));
        // No IPv6 subnet: IPv6 is dropped both ways.
        assert!(has(&d, SetId::In6, Elem::IfaceVerdict(br(), Verdict::Drop)));
        assert!(has(
            &d,
            SetId::Out6,
            Elem::IfaceVerdict(br(), Verdict::Drop)
        ));
        assert!(has(
            &d,
            SetId::Masq4,
            Elem::Net4("10.1.0.0/24".parse().unwrap())
        ));
        assert!(has(
            &d,
            SetId::Dnat4Any,
            Elem::Dnat4 {
                proto: Proto::Tcp,
                host_addr: None,
                host_port: 8080,
                addr: "10.1.0.2".parse().unwrap(),
                port: 80
            }
        ));
        assert!(d.elems(SetId::Dnat6Any).next().is_none());
        assert!(d.elems(SetId::Sealed).next().is_none());
    }

    #[test]
    fn internal_icc_off_and_routed() {
        let mut i = net("i");
        i.internal = true;
        i.icc = false;
        let mut r = net("r");
        r.subnet4 = Some("10.2.0.0/24".parse().unwrap());
        r.gateway_mode4 = GatewayMode::Routed;
        let er = ep("r", "c2", "10.2.0.2", vec![tcp(8080, 80)]);
        let d = desired([&i, &r], [&er]);
        assert!(has(&d, SetId::Sealed, Elem::Iface("nd-i".into())));
        assert!(has(
            &d,
            SetId::SameNet,
            Elem::SameIface("nd-i".into(), Verdict::Goto(ChainId::IccOff))
        ));
        assert!(has(
            &d,
            SetId::Out4,
            Elem::IfaceVerdict("nd-i".into(), Verdict::Drop)
        ));
        assert!(!has(
            &d,
            SetId::Masq4,
            Elem::Net4("10.1.0.0/24".parse().unwrap())
        ));
        assert!(!has(
            &d,
            SetId::Masq4,
            Elem::Net4("10.2.0.0/24".parse().unwrap())
        ));
        assert!(has(
            &d,
            SetId::Subnets4,
            Elem::Net4("10.2.0.0/24".parse().unwrap())
        ));
        assert!(has(
            &d,
            SetId::Open4,
            Elem::Open4 {
                addr: "10.2.0.2".parse().unwrap(),
                proto: Proto::Tcp,
                port: 80
            }
        ));
        assert!(d.elems(SetId::Dnat4Any).next().is_none());
    }

    #[test]
    fn diff_replaces_changed_map_data_and_is_empty_for_equal_states() {
        let n = net("a");
        let e1 = ep("a", "c1", "10.1.0.2", vec![tcp(8080, 80)]);
        let e2 = ep("a", "c2", "10.1.0.3", vec![tcp(8080, 80)]);
        let before = desired([&n], [&e1]);
        let after = desired([&n], [&e2]);
        assert!(before.diff(&before).is_empty());
        let diff = before.diff(&after);
        assert_eq!(diff.remove[&SetId::Dnat4Any].len(), 1);
        assert_eq!(diff.add[&SetId::Dnat4Any].len(), 1);
        assert_eq!(diff.remove.len(), 1);
        let none = desired([], []);
        assert!(none.is_empty());
        assert_eq!(
            none.diff(&before).add.values().map(Vec::len).sum::<usize>(),
            before.len()
        );
    }

    fn bound_tcp(host_ip: &str, host: u16, ctr: u16) -> PortMapping {
        PortMapping {
            host_ip: Some(host_ip.parse().unwrap()),
            ..tcp(host, ctr)
        }
    }

    #[test]
    fn consecutive_same_numbered_ports_fold_into_one_range() {
        let n = net("a");
        let mut ports: Vec<PortMapping> = (20000..20100).map(|p| tcp(p, p)).collect();
        ports.push(tcp(8080, 80)); // translated: stays a port-map element
        ports.push(tcp(9000, 9000)); // a lone same-numbered port: stays one too
        ports.push(bound_tcp("192.0.2.1", 30000, 30000));
        ports.push(bound_tcp("192.0.2.1", 30001, 30001));
        // The same numbers over UDP are a run of their own.
        ports.extend((20000..20003).map(|p| PortMapping {
            protocol: Proto::Udp,
            ..tcp(p, p)
        }));
        // Given in any order.
        ports.reverse();
        let e = ep("a", "c1", "10.1.0.2", ports);
        let elems = endpoint_elems(&n, &e);
        let addr: Ipv4Addr = "10.1.0.2".parse().unwrap();
        let range = |proto, host_addr, first, last| Elem::Dnat4Range {
            proto,
            host_addr,
            first,
            last,
            addr,
        };
        let single = |host_port, port| Elem::Dnat4 {
            proto: Proto::Tcp,
            host_addr: None,
            host_port,
            addr,
            port,
        };
        let mut want = vec![
            (SetId::Dnat4Any, single(8080, 80)),
            (SetId::Dnat4Any, single(9000, 9000)),
            (SetId::Dnat4AnyRanges, range(Proto::Tcp, None, 20000, 20099)),
            (SetId::Dnat4AnyRanges, range(Proto::Udp, None, 20000, 20002)),
            (
                SetId::Dnat4BoundRanges,
                range(Proto::Tcp, Some("192.0.2.1".parse().unwrap()), 30000, 30001),
            ),
        ];
        want.sort();
        assert_eq!(elems, want);
        // The table holds the same, and the whole plan agrees with the endpoint's part.
        let d = desired([&n], [&e]);
        assert_eq!(d.elems(SetId::Dnat4AnyRanges).count(), 2);
        assert_eq!(d.elems(SetId::Dnat4Any).count(), 2);
    }

    #[test]
    fn a_gap_or_another_target_ends_a_run() {
        let n = net("a");
        // 100, 101 | gap | 103, 104, 105 ; 106 is translated (to 80), 107 stands alone.
        let mut ports: Vec<PortMapping> = [100, 101, 103, 104, 105, 107]
            .iter()
            .map(|p| tcp(*p, *p))
            .collect();
        ports.push(tcp(106, 80));
        let e = ep("a", "c1", "10.1.0.2", ports);
        let elems = endpoint_elems(&n, &e);
        let runs: Vec<(u16, u16)> = elems
            .iter()
            .filter_map(|(_, e)| match e {
                Elem::Dnat4Range { first, last, .. } => Some((*first, *last)),
                _ => None,
            })
            .collect();
        assert_eq!(runs, [(100, 101), (103, 105)]);
        let singles: Vec<(u16, u16)> = elems
            .iter()
            .filter_map(|(_, e)| match e {
                Elem::Dnat4 {
                    host_port, port, ..
                } => Some((*host_port, *port)),
                _ => None,
            })
            .collect();
        assert_eq!(singles, [(106, 80), (107, 107)]);
        // Runs end at the top of the port space without overflowing.
        let top = ep(
            "a",
            "c2",
            "10.1.0.3",
            vec![tcp(65534, 65534), tcp(65535, 65535)],
        );
        assert_eq!(
            endpoint_elems(&n, &top),
            vec![(
                SetId::Dnat4AnyRanges,
                Elem::Dnat4Range {
                    proto: Proto::Tcp,
                    host_addr: None,
                    first: 65534,
                    last: 65535,
                    addr: "10.1.0.3".parse().unwrap(),
                }
            )]
        );
    }

    #[test]
    fn routed_container_ports_fold_whatever_the_host_port() {
        let mut r = net("r");
        r.gateway_mode4 = GatewayMode::Routed;
        // Routed mode opens container ports: 80..=82 whatever host ports were asked for,
        // and a container port asked twice is one element.
        let e = ep(
            "r",
            "c1",
            "10.1.0.2",
            vec![
                tcp(8080, 80),
                tcp(8081, 81),
                tcp(8082, 82),
                tcp(9080, 80),
                tcp(443, 443),
            ],
        );
        let addr: Ipv4Addr = "10.1.0.2".parse().unwrap();
        let mut want = vec![
            (
                SetId::Open4Ranges,
                Elem::Open4Range {
                    addr,
                    proto: Proto::Tcp,
                    first: 80,
                    last: 82,
                },
            ),
            (
                SetId::Open4,
                Elem::Open4 {
                    addr,
                    proto: Proto::Tcp,
                    port: 443,
                },
            ),
        ];
        want.sort();
        assert_eq!(endpoint_elems(&r, &e), want);
    }
}
