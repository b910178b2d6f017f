//! The desired contents of netd's nftables table, computed from state.
//!
//! netd's table has a fixed shape: its chains and rules never change at run time (see
//! `nft-templates/netd.nft`). Everything that depends on networks and endpoints lives in named
//! sets and maps, so a change is a list of element additions and removals, and the per-packet
//! cost is one hash or interval lookup however many networks or endpoints exist.
//!
//! This module is pure: it takes the model and returns values.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::Proto;

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
}

impl SetId {
    pub const ALL: [SetId; 17] = [
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
    ];

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
    Open4 { addr: Ipv4Addr, proto: Proto, port: u16 },
    /// `open6`
    Open6 { addr: Ipv6Addr, proto: Proto, port: u16 },
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

    pub fn insert(&mut self, set: SetId, elem: Elem) {
        self.sets.entry(set).or_default().insert(elem);
    }
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
