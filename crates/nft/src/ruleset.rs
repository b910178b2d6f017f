//! netd's table for the nf_tables layer: the fixed chains and set declarations of
//! `nft-templates/netd.nft`, and the encoding of [`netd_core::plan::Elem`]s.
//!
//! The chains and rules never change at run time, so a full sync re-creates them from the
//! code below and a diff only touches set elements. [`render_template`] gives the text
//! `nft list table inet netd` prints for a [`Desired`], which is what the tests compare.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::expr::{build::*, *};
use crate::{
    BaseChain, Batch, ChainType, ElemData, ElemGroup, Family, HookNum, NftError, Policy, SetElem,
    SetSpec, Socket, DATA_TYPE_VERDICT, SET_ELEM_F_INTERVAL_END, SET_F_INTERVAL, SET_F_MAP,
};
use netd_core::model::Proto;
use netd_core::plan::{ChainId, Desired, Diff, Elem, SetId, Verdict};

/// `nft-templates/netd.nft`: what `nft list table inet netd` prints for an empty state, with
/// one `@elements NAME@` line per set where its elements go (see [`render_template`]).
pub const TEMPLATE: &str = include_str!("../../../nft-templates/netd.nft");

pub const DEFAULT_TABLE: &str = "netd";

/// The operator's chain: created empty, never flushed.
pub const USER_CHAIN: &str = "user_forward";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
    #[error("invalid element for set {set}: {reason}")]
    Invalid { set: &'static str, reason: String },
}

// ---------------------------------------------------------------------------------------
// Set declarations
// ---------------------------------------------------------------------------------------

/// One field of a set key or map value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Ifname,
    Ip4,
    Ip6,
    Proto,
    Port,
}

impl Field {
    /// nft's datatype ids (`TYPE_IFNAME` etc.), only meaningful to nft when printing.
    fn type_id(self) -> u32 {
        match self {
            Field::Ip4 => 7,
            Field::Ip6 => 8,
            Field::Proto => 12,
            Field::Port => 13,
            Field::Ifname => 41,
        }
    }
    fn len(self) -> u32 {
        match self {
            Field::Ifname | Field::Ip6 => 16,
            Field::Ip4 => 4,
            Field::Proto => 1,
            Field::Port => 2,
        }
    }
    /// nft's `enum byteorder`: strings are host order, numbers and addresses big endian.
    fn byteorder(self) -> u32 {
        match self {
            Field::Ifname => 1,
            _ => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Data {
    None,
    Verdict,
    Fields(&'static [Field]),
}

#[derive(Debug, Clone, Copy)]
struct Decl {
    key: &'static [Field],
    data: Data,
    interval: bool,
}

use Field::*;

fn decl(set: SetId) -> Decl {
    let d = |key, data, interval| Decl {
        key,
        data,
        interval,
    };
    match set {
        SetId::Bridges | SetId::Sealed => d(&[Ifname], Data::None, false),
        SetId::SameNet => d(&[Ifname, Ifname], Data::Verdict, false),
        SetId::In4 | SetId::In6 | SetId::Out4 | SetId::Out6 => d(&[Ifname], Data::Verdict, false),
        SetId::Masq4 | SetId::Subnets4 => d(&[Ip4], Data::None, true),
        SetId::Masq6 | SetId::Subnets6 => d(&[Ip6], Data::None, true),
        SetId::Dnat4Any => d(&[Proto, Port], Data::Fields(&[Ip4, Port]), false),
        SetId::Dnat4Bound => d(&[Proto, Ip4, Port], Data::Fields(&[Ip4, Port]), false),
        SetId::Dnat6Any => d(&[Proto, Port], Data::Fields(&[Ip6, Port]), false),
        SetId::Dnat6Bound => d(&[Proto, Ip6, Port], Data::Fields(&[Ip6, Port]), false),
        SetId::Open4 => d(&[Ip4, Proto, Port], Data::None, false),
        SetId::Open6 => d(&[Ip6, Proto, Port], Data::None, false),
    }
}

fn type_id(fields: &[Field]) -> u32 {
    fields.iter().fold(0, |acc, f| (acc << 6) | f.type_id())
}

/// Length in the kernel: a concatenation puts every field in its own 4-byte registers.
fn fields_len(fields: &[Field]) -> u32 {
    if fields.len() == 1 {
        fields[0].len()
    } else {
        fields.iter().map(|f| (f.len() + 3) & !3).sum()
    }
}

// nft's set userdata TLVs (libnftnl `enum udata_set_type`).
const UDATA_KEYBYTEORDER: u8 = 0;
const UDATA_DATABYTEORDER: u8 = 1;
const UDATA_KEY_TYPEOF: u8 = 3;
const UDATA_DATA_TYPEOF: u8 = 4;
const UDATA_DATA_INTERVAL: u8 = 6;
/// nft's `EXPR_CONCAT`, in a typeof record with no fields (what nft 1.0.6 sends for `type a . b`).
const EXPR_CONCAT: u32 = 13;

fn udata_u32(out: &mut Vec<u8>, ty: u8, v: u32) {
    out.extend_from_slice(&[ty, 4]);
    out.extend_from_slice(&v.to_le_bytes());
}

fn udata_concat_typeof(out: &mut Vec<u8>, ty: u8) {
    out.extend_from_slice(&[ty, 8]);
    udata_u32(out, 0, EXPR_CONCAT); // NFTNL_UDATA_SET_TYPEOF_EXPR
    out.extend_from_slice(&[1, 0]); // NFTNL_UDATA_SET_TYPEOF_DATA, empty
}

/// The `NEWSET` of one of netd's sets, byte for byte what nft 1.0.6 sends for the template.
pub fn set_spec(set: SetId) -> SetSpec {
    let d = decl(set);
    let concat = d.key.len() > 1;
    let mut flags = 0;
    if d.interval {
        flags |= SET_F_INTERVAL;
    }
    let data = match d.data {
        Data::None => None,
        Data::Verdict => Some((DATA_TYPE_VERDICT, 0)),
        Data::Fields(f) => Some((type_id(f), fields_len(f))),
    };
    if data.is_some() {
        flags |= SET_F_MAP;
    }
    let mut ud = Vec::new();
    udata_u32(
        &mut ud,
        UDATA_KEYBYTEORDER,
        if concat { 0 } else { d.key[0].byteorder() },
    );
    if data.is_some() {
        udata_u32(&mut ud, UDATA_DATABYTEORDER, 0);
    }
    if concat {
        udata_concat_typeof(&mut ud, UDATA_KEY_TYPEOF);
    }
    if let Data::Fields(f) = d.data {
        if f.len() > 1 {
            udata_concat_typeof(&mut ud, UDATA_DATA_TYPEOF);
        }
    }
    if data.is_some() {
        udata_u32(&mut ud, UDATA_DATA_INTERVAL, 0);
    }
    SetSpec {
        name: set.name().to_string(),
        flags,
        key_type: type_id(d.key),
        key_len: fields_len(d.key),
        data,
        concat: d.key.iter().map(|f| f.len()).collect(),
        userdata: ud,
    }
}

// ---------------------------------------------------------------------------------------
// Chains and rules
// ---------------------------------------------------------------------------------------

/// netd's chains in template order, with the base-chain spec of the hooked ones.
pub fn chains() -> Vec<(&'static str, Option<BaseChain>)> {
    let base = |chain_type, hook, priority| {
        Some(BaseChain {
            chain_type,
            hook,
            priority,
            policy: Policy::Accept,
        })
    };
    vec![
        (USER_CHAIN, None),
        ("forward", base(ChainType::Filter, HookNum::Forward, 0)),
        ("cross_net", None),
        (ChainId::IccOff.name(), None),
        (ChainId::ToNat.name(), None),
        (ChainId::ToRouted.name(), None),
        (
            "prerouting",
            base(ChainType::Nat, HookNum::Prerouting, -100),
        ),
        ("output", base(ChainType::Nat, HookNum::Output, -100)),
        ("published", None),
        (
            "postrouting",
            base(ChainType::Nat, HookNum::Postrouting, 100),
        ),
        ("input", base(ChainType::Filter, HookNum::Input, 0)),
    ]
}

const R0: Reg = Reg::r32(0);

fn nfproto(p: u8) -> [Expr; 2] {
    [meta(MetaKey::Nfproto, R0), cmp_eq(R0, [p])]
}

fn accept() -> Expr {
    verdict(crate::Verdict::Accept)
}

fn drop_() -> Expr {
    verdict(crate::Verdict::Drop)
}

fn goto(chain: &str) -> Expr {
    verdict(crate::Verdict::Goto(chain.to_string()))
}

fn ct_dnat() -> Vec<Expr> {
    let mut v = vec![ct(CtKey::Status, R0)];
    v.extend(bits_set(R0, CT_STATUS_DNAT));
    v
}

/// `ip daddr . meta l4proto . th dport @open4` (v4) / `ip6 ...` (v6).
fn open_lookup(v6: bool) -> Vec<Expr> {
    let mut v = Vec::new();
    if v6 {
        v.extend(nfproto(NFPROTO_IPV6));
        v.push(payload(PayloadBase::Network, 24, 16, R0));
        v.push(meta(MetaKey::L4proto, Reg::r32(4)));
        v.push(payload(PayloadBase::Transport, 2, 2, Reg::r32(5)));
        v.push(lookup(SetId::Open6.name(), R0));
    } else {
        v.extend(nfproto(NFPROTO_IPV4));
        v.push(payload(PayloadBase::Network, 16, 4, R0));
        v.push(meta(MetaKey::L4proto, Reg::r32(1)));
        v.push(payload(PayloadBase::Transport, 2, 2, Reg::r32(2)));
        v.push(lookup(SetId::Open4.name(), R0));
    }
    v.push(accept());
    v
}

fn icmp_echo(v6: bool) -> Vec<Expr> {
    let (fam, l4, ty) = if v6 {
        (NFPROTO_IPV6, 58, 128)
    } else {
        (NFPROTO_IPV4, 1, 8)
    };
    let mut v = nfproto(fam).to_vec();
    v.push(meta(MetaKey::L4proto, R0));
    v.push(cmp_eq(R0, [l4]));
    v.push(payload(PayloadBase::Transport, 0, 1, R0));
    v.push(cmp_eq(R0, [ty]));
    v.push(accept());
    v
}

fn fib_local_goto_published() -> Vec<Expr> {
    vec![
        Expr::Fib {
            flags: FIB_F_DADDR,
            result: FibResult::AddrType,
            dreg: R0,
        },
        cmp_eq(R0, RTN_LOCAL.to_ne_bytes()),
        goto("published"),
    ]
}

/// `dnat ip(6) to meta l4proto [. ip(6) daddr] . th dport map @dnatX_Y`
fn dnat_rule(v6: bool, bound: bool) -> Vec<Expr> {
    let (fam, set) = match (v6, bound) {
        (false, false) => (NFPROTO_IPV4, SetId::Dnat4Any),
        (false, true) => (NFPROTO_IPV4, SetId::Dnat4Bound),
        (true, false) => (NFPROTO_IPV6, SetId::Dnat6Any),
        (true, true) => (NFPROTO_IPV6, SetId::Dnat6Bound),
    };
    let mut v = nfproto(fam).to_vec();
    v.push(meta(MetaKey::L4proto, R0));
    let mut next = 1;
    if bound {
        if v6 {
            v.push(payload(PayloadBase::Network, 24, 16, Reg::r32(1)));
            next = 5;
        } else {
            v.push(payload(PayloadBase::Network, 16, 4, Reg::r32(1)));
            next = 2;
        }
    }
    v.push(payload(PayloadBase::Transport, 2, 2, Reg::r32(next)));
    v.push(map(set.name(), R0, R0));
    // The map value is address . port: the port sits right after the address.
    let port_reg = if v6 { Reg::r32(4) } else { Reg::r32(1) };
    v.push(Expr::Nat {
        kind: NatType::Dnat,
        family: fam,
        addr_min: Some(R0),
        proto_min: Some(port_reg),
        flags: 0,
    });
    v
}

fn hairpin_masq(v6: bool) -> Vec<Expr> {
    let mut v = ct_dnat();
    v.push(meta(MetaKey::Oifname, R0));
    v.push(lookup(SetId::Bridges.name(), R0));
    if v6 {
        v.extend(nfproto(NFPROTO_IPV6));
        v.push(payload(PayloadBase::Network, 8, 16, R0));
        v.push(lookup(SetId::Subnets6.name(), R0));
    } else {
        v.extend(nfproto(NFPROTO_IPV4));
        v.push(payload(PayloadBase::Network, 12, 4, R0));
        v.push(lookup(SetId::Subnets4.name(), R0));
    }
    v.push(Expr::Masq);
    v
}

/// `ip daddr 127.0.0.0/8` (nft loads the first byte only).
fn loopback4(offset: u32) -> Vec<Expr> {
    let mut v = nfproto(NFPROTO_IPV4).to_vec();
    v.push(payload(PayloadBase::Network, offset, 1, R0));
    v.push(cmp_eq(R0, [127]));
    v
}

/// `ct status dnat oifname @bridges ip saddr 127.0.0.0/8 masquerade`: the host reaching a
/// port published on 127.0.0.1 (route_localnet on the bridge lets the packet leave with its
/// loopback source; the container must answer to the bridge address instead).
fn loopback_masq() -> Vec<Expr> {
    let mut v = ct_dnat();
    v.push(meta(MetaKey::Oifname, R0));
    v.push(lookup(SetId::Bridges.name(), R0));
    v.extend(loopback4(12));
    v.push(Expr::Masq);
    v
}

/// `iifname @bridges ip daddr 127.0.0.0/8 [ct status dnat accept | drop]`: with route_localnet
/// on netd's bridges, only replies of the host's own DNATed loopback connections may arrive
/// on a bridge for 127.0.0.0/8; anything else is what the kernel drops as martian by default.
fn loopback_input(accept_dnat: bool) -> Vec<Expr> {
    let mut v = vec![
        meta(MetaKey::Iifname, R0),
        lookup(SetId::Bridges.name(), R0),
    ];
    v.extend(loopback4(16));
    if accept_dnat {
        v.extend(ct_dnat());
        v.push(accept());
    } else {
        v.push(drop_());
    }
    v
}

/// `iifname @bridges ip saddr 127.0.0.0/8 drop` / `iifname @bridges ip6 saddr ::1 drop`.
/// route_localnet on netd's bridges also switches off the kernel's martian check for 127/8
/// *sources* arriving there (ip_route_input_slow), so a container could send packets that
/// claim to come from the host's loopback; these rules put that check back, on the input and
/// forward paths. No legitimate packet has such a source on a bridge: the host's DNATed
/// 127.0.0.1 connections leave masqueraded to the bridge address, and their answers come
/// from the container's address. The kernel drops ::1 sources on non-loopback interfaces
/// itself (ip6_rcv_core); netd's rule says the same for the table's readers.
fn loopback_source_drop(v6: bool) -> Vec<Expr> {
    let mut v = vec![
        meta(MetaKey::Iifname, R0),
        lookup(SetId::Bridges.name(), R0),
    ];
    if v6 {
        v.extend(nfproto(NFPROTO_IPV6));
        v.push(payload(PayloadBase::Network, 8, 16, R0));
        v.push(cmp_eq(R0, Ipv6Addr::LOCALHOST.octets()));
    } else {
        v.extend(loopback4(12));
    }
    v.push(drop_());
    v
}

fn outbound_masq(v6: bool) -> Vec<Expr> {
    let mut v = Vec::new();
    if v6 {
        v.extend(nfproto(NFPROTO_IPV6));
        v.push(payload(PayloadBase::Network, 8, 16, R0));
        v.push(lookup(SetId::Masq6.name(), R0));
    } else {
        v.extend(nfproto(NFPROTO_IPV4));
        v.push(payload(PayloadBase::Network, 12, 4, R0));
        v.push(lookup(SetId::Masq4.name(), R0));
    }
    v.push(meta(MetaKey::Oifname, R0));
    v.push(lookup_not(SetId::Bridges.name(), R0));
    v.push(Expr::Masq);
    v
}

fn iface_vmap(v6: bool, key: MetaKey, set: SetId) -> Vec<Expr> {
    let mut v = nfproto(if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }).to_vec();
    v.push(meta(key, R0));
    v.push(map(set.name(), R0, Reg::VERDICT));
    v
}

/// The rules of netd's own chains (every chain but `user_forward`), with their nft text for
/// error messages. The expressions are the ones nft 1.0.6 generates for the template.
pub fn rules() -> Vec<RuleDef> {
    let mut r = Vec::new();
    filter_rules(&mut r);
    nat_rules(&mut r);
    input_rules(&mut r);
    r
}

/// A rule: its chain, its text as `nft list` prints it, its expressions. One definition
/// gives the batch, the template (`render_skeleton`) and error messages.
pub type RuleDef = (&'static str, &'static str, Vec<Expr>);

/// `forward` and the chains its verdict maps jump to.
fn filter_rules(r: &mut Vec<RuleDef>) {
    let mut add = |chain, text, e: Vec<Expr>| r.push((chain, text, e));

    // Before the operator's chain: no rule of theirs should let a spoofed loopback through.
    add(
        "forward",
        "iifname @bridges ip saddr 127.0.0.0/8 drop",
        loopback_source_drop(false),
    );
    add(
        "forward",
        "iifname @bridges ip6 saddr ::1 drop",
        loopback_source_drop(true),
    );
    add(
        "forward",
        "jump user_forward",
        vec![verdict(crate::Verdict::Jump(USER_CHAIN.into()))],
    );
    let mut est = vec![ct(CtKey::State, R0)];
    est.extend(bits_set(R0, CT_STATE_ESTABLISHED | CT_STATE_RELATED));
    est.push(accept());
    add("forward", "ct state established,related accept", est);
    add(
        "forward",
        "iifname . oifname vmap @same_net",
        vec![
            meta(MetaKey::Iifname, R0),
            meta(MetaKey::Oifname, Reg::r32(4)),
            map(SetId::SameNet.name(), R0, Reg::VERDICT),
        ],
    );
    add(
        "forward",
        "iifname @bridges oifname @bridges goto cross_net",
        vec![
            meta(MetaKey::Iifname, R0),
            lookup(SetId::Bridges.name(), R0),
            meta(MetaKey::Oifname, R0),
            lookup(SetId::Bridges.name(), R0),
            goto("cross_net"),
        ],
    );
    add(
        "forward",
        "meta nfproto ipv4 oifname vmap @in4",
        iface_vmap(false, MetaKey::Oifname, SetId::In4),
    );
    add(
        "forward",
        "meta nfproto ipv6 oifname vmap @in6",
        iface_vmap(true, MetaKey::Oifname, SetId::In6),
    );
    add(
        "forward",
        "meta nfproto ipv4 iifname vmap @out4",
        iface_vmap(false, MetaKey::Iifname, SetId::Out4),
    );
    add(
        "forward",
        "meta nfproto ipv6 iifname vmap @out6",
        iface_vmap(true, MetaKey::Iifname, SetId::Out6),
    );

    for key in [MetaKey::Iifname, MetaKey::Oifname] {
        let text = if key == MetaKey::Iifname {
            "iifname @sealed drop"
        } else {
            "oifname @sealed drop"
        };
        add(
            "cross_net",
            text,
            vec![meta(key, R0), lookup(SetId::Sealed.name(), R0), drop_()],
        );
    }
    let mut dn = ct_dnat();
    dn.push(accept());
    add("cross_net", "ct status dnat accept", dn.clone());
    add(
        "cross_net",
        "ip daddr . meta l4proto . th dport @open4 accept",
        open_lookup(false),
    );
    add(
        "cross_net",
        "ip6 daddr . meta l4proto . th dport @open6 accept",
        open_lookup(true),
    );
    add("cross_net", "drop", vec![drop_()]);

    for chain in [ChainId::IccOff.name(), ChainId::ToNat.name()] {
        add(chain, "ct status dnat accept", dn.clone());
        add(chain, "drop", vec![drop_()]);
    }

    let tr = ChainId::ToRouted.name();
    add(tr, "ct status dnat accept", dn);
    add(
        tr,
        "ip daddr . meta l4proto . th dport @open4 accept",
        open_lookup(false),
    );
    add(
        tr,
        "ip6 daddr . meta l4proto . th dport @open6 accept",
        open_lookup(true),
    );
    add(tr, "icmp type echo-request accept", icmp_echo(false));
    add(tr, "icmpv6 type echo-request accept", icmp_echo(true));
    add(tr, "drop", vec![drop_()]);
}

/// Published ports (DNAT) and masquerade.
fn nat_rules(r: &mut Vec<RuleDef>) {
    let mut add = |chain, text, e: Vec<Expr>| r.push((chain, text, e));
    let mut lo4 = nfproto(NFPROTO_IPV4).to_vec();
    lo4.push(payload(PayloadBase::Network, 16, 1, R0));
    lo4.push(cmp_eq(R0, [127]));
    lo4.push(verdict(crate::Verdict::Return));
    add("prerouting", "ip daddr 127.0.0.0/8 return", lo4);
    let mut lo6 = nfproto(NFPROTO_IPV6).to_vec();
    lo6.push(payload(PayloadBase::Network, 24, 16, R0));
    lo6.push(cmp_eq(R0, Ipv6Addr::LOCALHOST.octets()));
    lo6.push(verdict(crate::Verdict::Return));
    add("prerouting", "ip6 daddr ::1 return", lo6.clone());
    add(
        "prerouting",
        "fib daddr type local goto published",
        fib_local_goto_published(),
    );
    add("output", "ip6 daddr ::1 return", lo6.clone());
    add(
        "output",
        "fib daddr type local goto published",
        fib_local_goto_published(),
    );

    add(
        "published",
        "dnat ip to meta l4proto . ip daddr . th dport map @dnat4_bound",
        dnat_rule(false, true),
    );
    add(
        "published",
        "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @dnat4_any",
        dnat_rule(false, false),
    );
    add(
        "published",
        "dnat ip6 to meta l4proto . ip6 daddr . th dport map @dnat6_bound",
        dnat_rule(true, true),
    );
    add(
        "published",
        "meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @dnat6_any",
        dnat_rule(true, false),
    );

    add(
        "postrouting",
        "ct status dnat oifname @bridges ip saddr @subnets4 masquerade",
        hairpin_masq(false),
    );
    add(
        "postrouting",
        "ct status dnat oifname @bridges ip6 saddr @subnets6 masquerade",
        hairpin_masq(true),
    );
    add(
        "postrouting",
        "ct status dnat oifname @bridges ip saddr 127.0.0.0/8 masquerade",
        loopback_masq(),
    );
    add(
        "postrouting",
        "ip saddr @masq4 oifname != @bridges masquerade",
        outbound_masq(false),
    );
    add(
        "postrouting",
        "ip6 saddr @masq6 oifname != @bridges masquerade",
        outbound_masq(true),
    );
}

/// The host's loopback, guarded against netd's bridges (see docs/ports.md).
fn input_rules(r: &mut Vec<RuleDef>) {
    let mut add = |chain, text, e: Vec<Expr>| r.push((chain, text, e));
    add(
        "input",
        "iifname @bridges ip saddr 127.0.0.0/8 drop",
        loopback_source_drop(false),
    );
    add(
        "input",
        "iifname @bridges ip6 saddr ::1 drop",
        loopback_source_drop(true),
    );
    add(
        "input",
        "iifname @bridges ip daddr 127.0.0.0/8 ct status dnat accept",
        loopback_input(true),
    );
    add(
        "input",
        "iifname @bridges ip daddr 127.0.0.0/8 drop",
        loopback_input(false),
    );
}

// ---------------------------------------------------------------------------------------
// Elements
// ---------------------------------------------------------------------------------------

fn invalid(set: SetId, reason: impl Into<String>) -> ApplyError {
    ApplyError::Invalid {
        set: set.name(),
        reason: reason.into(),
    }
}

fn ifname(set: SetId, name: &str) -> Result<[u8; 16], ApplyError> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty() || name.len() > 15 || name.as_bytes().contains(&0) {
        return Err(invalid(set, format!("bad interface name {name:?}")));
    }
    let mut k = [0u8; 16];
    k[..name.len()].copy_from_slice(name.as_bytes());
    Ok(k)
}

fn pad4(v: &mut Vec<u8>, field: &[u8]) {
    v.extend_from_slice(field);
    v.resize((v.len() + 3) & !3, 0);
}

fn verdict_of(v: Verdict) -> crate::Verdict {
    match v {
        Verdict::Accept => crate::Verdict::Accept,
        Verdict::Drop => crate::Verdict::Drop,
        Verdict::Goto(c) => crate::Verdict::Goto(c.name().to_string()),
    }
}

fn elem(key: Vec<u8>, data: Option<ElemData>) -> SetElem {
    SetElem {
        key,
        key_end: None,
        data,
        flags: 0,
    }
}

/// An interval `[start, end)` as nft sends it: the start, and the first address past the
/// range flagged as interval end (omitted when the range runs to the top of the space).
fn interval(start: &[u8], last: &[u8]) -> Vec<SetElem> {
    let mut v = vec![elem(start.to_vec(), None)];
    let mut end = last.to_vec();
    let mut carry = true;
    for b in end.iter_mut().rev() {
        if !carry {
            break;
        }
        let (n, c) = b.overflowing_add(1);
        *b = n;
        carry = c;
    }
    if !carry {
        v.push(SetElem {
            key: end,
            key_end: None,
            data: None,
            flags: SET_ELEM_F_INTERVAL_END,
        });
    }
    v
}

fn dnat_key(proto: Proto, host: Option<&[u8]>, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    pad4(&mut k, &[proto.number()]);
    if let Some(h) = host {
        pad4(&mut k, h);
    }
    pad4(&mut k, &port.to_be_bytes());
    k
}

fn addr_port(addr: &[u8], port: u16) -> Vec<u8> {
    let mut v = addr.to_vec();
    pad4(&mut v, &port.to_be_bytes());
    v
}

/// The kernel element(s) of one plan element: one, or two for an interval.
/// A DNAT map element, or None when the element's binding does not match the map (a bound
/// binding belongs in the `_bound` map, an any-address one in the `_any` map).
fn dnat_elem(
    bound_map: bool,
    proto: Proto,
    host: Option<Vec<u8>>,
    host_port: u16,
    addr: &[u8],
    port: u16,
) -> Option<Vec<SetElem>> {
    if host.is_some() != bound_map {
        return None;
    }
    Some(vec![elem(
        dnat_key(proto, host.as_deref(), host_port),
        Some(ElemData::Value(addr_port(addr, port))),
    )])
}

pub fn encode_elem(set: SetId, e: &Elem) -> Result<Vec<SetElem>, ApplyError> {
    let wrong = || invalid(set, format!("element {e:?} does not belong in this set"));
    Ok(match (set, e) {
        (SetId::Bridges | SetId::Sealed, Elem::Iface(n)) => {
            vec![elem(ifname(set, n)?.to_vec(), None)]
        }
        (SetId::SameNet, Elem::SameIface(n, v)) => {
            let k = ifname(set, n)?;
            let mut key = k.to_vec();
            key.extend_from_slice(&k);
            vec![elem(key, Some(ElemData::Verdict(verdict_of(*v))))]
        }
        (SetId::In4 | SetId::In6 | SetId::Out4 | SetId::Out6, Elem::IfaceVerdict(n, v)) => {
            vec![elem(
                ifname(set, n)?.to_vec(),
                Some(ElemData::Verdict(verdict_of(*v))),
            )]
        }
        (SetId::Masq4 | SetId::Subnets4, Elem::Net4(n)) => {
            interval(&n.network().octets(), &n.broadcast().octets())
        }
        (SetId::Masq6 | SetId::Subnets6, Elem::Net6(n)) => {
            interval(&n.network().octets(), &n.broadcast().octets())
        }
        (
            SetId::Dnat4Any | SetId::Dnat4Bound,
            Elem::Dnat4 {
                proto,
                host_addr,
                host_port,
                addr,
                port,
            },
        ) => {
            let host = host_addr.map(|a| a.octets().to_vec());
            dnat_elem(
                set == SetId::Dnat4Bound,
                *proto,
                host,
                *host_port,
                &addr.octets(),
                *port,
            )
            .ok_or_else(wrong)?
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
        ) => {
            let host = host_addr.map(|a| a.octets().to_vec());
            dnat_elem(
                set == SetId::Dnat6Bound,
                *proto,
                host,
                *host_port,
                &addr.octets(),
                *port,
            )
            .ok_or_else(wrong)?
        }
        (SetId::Open4, Elem::Open4 { addr, proto, port }) => {
            let mut k = addr.octets().to_vec();
            pad4(&mut k, &[proto.number()]);
            pad4(&mut k, &port.to_be_bytes());
            vec![elem(k, None)]
        }
        (SetId::Open6, Elem::Open6 { addr, proto, port }) => {
            let mut k = addr.octets().to_vec();
            pad4(&mut k, &[proto.number()]);
            pad4(&mut k, &port.to_be_bytes());
            vec![elem(k, None)]
        }
        _ => return Err(wrong()),
    })
}

// ---------------------------------------------------------------------------------------
// Rendering (what `nft list table` prints)
// ---------------------------------------------------------------------------------------

fn verdict_text(v: Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Goto(c) => format!("goto {}", c.name()),
    }
}

fn net4_text(n: &Ipv4Net) -> String {
    if n.prefix_len() == 32 {
        n.network().to_string()
    } else {
        format!("{}/{}", n.network(), n.prefix_len())
    }
}

fn net6_text(n: &Ipv6Net) -> String {
    if n.prefix_len() == 128 {
        n.network().to_string()
    } else {
        format!("{}/{}", n.network(), n.prefix_len())
    }
}

/// One element in nft's syntax (`"br0" : goto to_nat`, `tcp . 8080 : 10.88.0.2 . 80`).
pub fn elem_text(e: &Elem) -> String {
    match e {
        Elem::Iface(n) => format!("\"{n}\""),
        Elem::SameIface(n, v) => format!("\"{n}\" . \"{n}\" : {}", verdict_text(*v)),
        Elem::IfaceVerdict(n, v) => format!("\"{n}\" : {}", verdict_text(*v)),
        Elem::Net4(n) => net4_text(n),
        Elem::Net6(n) => net6_text(n),
        Elem::Dnat4 {
            proto,
            host_addr,
            host_port,
            addr,
            port,
        } => match host_addr {
            Some(h) => format!("{proto} . {h} . {host_port} : {addr} . {port}"),
            None => format!("{proto} . {host_port} : {addr} . {port}"),
        },
        Elem::Dnat6 {
            proto,
            host_addr,
            host_port,
            addr,
            port,
        } => match host_addr {
            Some(h) => format!("{proto} . {h} . {host_port} : {addr} . {port}"),
            None => format!("{proto} . {host_port} : {addr} . {port}"),
        },
        Elem::Open4 { addr, proto, port } => format!("{addr} . {proto} . {port}"),
        Elem::Open6 { addr, proto, port } => format!("{addr} . {proto} . {port}"),
    }
}

/// nft sorts hash-set elements by their key read as one host-order (little endian here)
/// number, i.e. comparing key bytes from the last one; interval sets by address.
fn print_order(set: SetId, a: &Elem, b: &Elem) -> Ordering {
    let key = |e: &Elem| {
        encode_elem(set, e)
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|k| k.key)
            .unwrap_or_default()
    };
    let (ka, kb) = (key(a), key(b));
    if decl(set).interval {
        ka.cmp(&kb)
    } else {
        ka.iter().rev().cmp(kb.iter().rev())
    }
}

fn elements_line(set: SetId, elems: &BTreeSet<Elem>) -> Option<String> {
    if elems.is_empty() {
        return None;
    }
    let mut v: Vec<&Elem> = elems.iter().collect();
    v.sort_by(|a, b| print_order(set, a, b));
    // nft puts IPv4 addresses two to a line and every other element type on its own line.
    let per_line = if matches!(set, SetId::Masq4 | SetId::Subnets4) {
        2
    } else {
        1
    };
    let mut s = String::from("\t\telements = { ");
    for (i, e) in v.iter().enumerate() {
        if i > 0 {
            if i % per_line == 0 {
                s.push_str(",\n\t\t\t     ");
            } else {
                s.push_str(", ");
            }
        }
        s.push_str(&elem_text(e));
    }
    s.push_str(" }\n");
    Some(s)
}

/// Fills the template's `@elements NAME@` lines with `desired`'s elements in the format nft
/// 1.0.6 prints them (or drops the line for an empty set). For small states the result equals
/// `nft list table inet netd`; nft wraps very long element lines, which this does not model.
pub fn render_template(template: &str, desired: &Desired) -> String {
    let by_name: HashMap<&str, SetId> = SetId::ALL.iter().map(|s| (s.name(), *s)).collect();
    let mut out = String::with_capacity(template.len() + 256);
    for line in template.split_inclusive('\n') {
        let t = line.trim();
        let set = t
            .strip_prefix("@elements ")
            .and_then(|r| r.strip_suffix('@'))
            .and_then(|n| by_name.get(n));
        match set {
            Some(set) => {
                if let Some(l) = elements_line(*set, &desired.normalized(*set)) {
                    out.push_str(&l);
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Applier
// ---------------------------------------------------------------------------------------

/// Which elements each element group of a batch carried (kernel element index -> plan
/// element), to name a rejected element.
pub type Groups = HashMap<ElemGroup, (SetId, Vec<Elem>)>;

/// Applies netd's table in the network namespace the Applier was created in (its netlink
/// socket is opened by [`Applier::new`] and stays bound to that namespace).
pub struct Applier {
    table: String,
    sock: Socket,
}

impl Applier {
    pub fn new(table: &str) -> Result<Self, ApplyError> {
        Ok(Applier {
            table: table.to_string(),
            sock: Socket::open()?,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The batch [`Applier::sync_full`] sends.
    pub fn sync_full_batch(&self, desired: &Desired) -> Result<(Batch, Groups), ApplyError> {
        full_batch(&self.table, desired)
    }

    /// The batch [`Applier::apply_diff`] sends.
    pub fn diff_batch(&self, diff: &Diff) -> Result<(Batch, Groups), ApplyError> {
        diff_batch(&self.table, diff)
    }

    /// Creates whatever is missing of the table, chains and sets, replaces the rules of netd's
    /// own chains and the elements of every set with `desired`, in one atomic batch. The
    /// operator's `user_forward` chain is created if missing and otherwise left alone.
    pub fn sync_full(&mut self, desired: &Desired) -> Result<(), ApplyError> {
        let (b, groups) = self.sync_full_batch(desired)?;
        self.commit(&b, &groups)
    }

    /// Applies element removals, then additions, in one atomic batch. Strict: removing a
    /// missing element or adding an existing one fails the whole batch, which means the
    /// kernel drifted from netd's view and a [`Applier::sync_full`] is due.
    pub fn apply_diff(&mut self, diff: &Diff) -> Result<(), ApplyError> {
        let (b, groups) = self.diff_batch(diff)?;
        self.commit(&b, &groups)
    }

    /// Sends any batch on this Applier's socket.
    pub fn commit(&mut self, batch: &Batch, groups: &Groups) -> Result<(), ApplyError> {
        match self.sock.commit(batch) {
            Ok(()) => Ok(()),
            Err(NftError::Rejected {
                first,
                elem_text: None,
                more,
            }) => {
                let text = first.elem.and_then(|(g, i)| {
                    let (_, elems) = groups.get(&g)?;
                    elems.get(i).map(elem_text)
                });
                Err(NftError::Rejected {
                    first,
                    elem_text: text,
                    more,
                }
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The one batch of a full sync of table `table` to `desired` (pure; see
/// [`Applier::sync_full`]).
pub fn full_batch(table: &str, desired: &Desired) -> Result<(Batch, Groups), ApplyError> {
    let t = table;
    let mut b = Batch::new(Family::Inet);
    let mut groups = Groups::new();
    b.add_table(t);
    // Chains before sets, as nft does, so that a fresh table gets the same object handles
    // as one loaded from the template with `nft -f`.
    for (name, base) in chains() {
        b.add_chain(t, name, base.as_ref());
    }
    for set in SetId::ALL {
        b.add_set(t, &set_spec(set));
    }
    for (name, _) in chains() {
        if name != USER_CHAIN {
            b.flush_chain(t, name);
        }
    }
    for (chain, text, exprs) in rules() {
        b.add_rule(t, chain, &exprs, text);
    }
    for set in SetId::ALL {
        b.flush_set(t, set.name());
        let elems: Vec<Elem> = desired.normalized(set).into_iter().collect();
        push_elems(&mut b, &mut groups, t, set, elems, false, false)?;
    }
    Ok((b, groups))
}

/// The one batch applying `diff`: every removal, then every addition (pure; see
/// [`Applier::apply_diff`]).
pub fn diff_batch(table: &str, diff: &Diff) -> Result<(Batch, Groups), ApplyError> {
    let t = table;
    let mut b = Batch::new(Family::Inet);
    let mut groups = Groups::new();
    for (set, elems) in &diff.remove {
        push_elems(&mut b, &mut groups, t, *set, elems.clone(), true, false)?;
    }
    for (set, elems) in &diff.add {
        push_elems(&mut b, &mut groups, t, *set, elems.clone(), false, true)?;
    }
    Ok((b, groups))
}

/// Adds the kernel elements of `elems` as one group; the group's indices refer to kernel
/// elements, so intervals map back through `owner`.
fn push_elems(
    b: &mut Batch,
    groups: &mut Groups,
    table: &str,
    set: SetId,
    elems: Vec<Elem>,
    delete: bool,
    excl: bool,
) -> Result<(), ApplyError> {
    if elems.is_empty() {
        return Ok(());
    }
    let mut kernel = Vec::with_capacity(elems.len());
    let mut owner = Vec::with_capacity(elems.len());
    for e in &elems {
        for k in encode_elem(set, e)? {
            kernel.push(k);
            owner.push(e.clone());
        }
    }
    let g = if delete {
        b.del_elems(table, set.name(), &kernel)
    } else {
        b.add_elems(table, set.name(), &kernel, excl)
    };
    groups.insert(g, (set, owner));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The template, from the one source
// ---------------------------------------------------------------------------------------

impl Field {
    /// The datatype's name as nft prints it in a `type` line.
    fn nft_name(self) -> &'static str {
        match self {
            Field::Ifname => "ifname",
            Field::Ip4 => "ipv4_addr",
            Field::Ip6 => "ipv6_addr",
            Field::Proto => "inet_proto",
            Field::Port => "inet_service",
        }
    }
}

fn fields_text(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| f.nft_name())
        .collect::<Vec<_>>()
        .join(" . ")
}

/// A base chain's first line as nft prints it (nft names the standard priorities).
fn base_chain_text(b: &BaseChain) -> String {
    let (ty, hook) = match (b.chain_type, b.hook) {
        (ChainType::Filter, h) => ("filter", h),
        (ChainType::Nat, h) => ("nat", h),
        (ChainType::Route, h) => ("route", h),
    };
    let hook_name = match hook {
        HookNum::Prerouting => "prerouting",
        HookNum::Input => "input",
        HookNum::Forward => "forward",
        HookNum::Output => "output",
        HookNum::Postrouting => "postrouting",
    };
    let prio = match (ty, hook, b.priority) {
        ("filter", _, 0) => "filter".to_string(),
        ("nat", HookNum::Prerouting, -100) => "dstnat".to_string(),
        ("nat", HookNum::Postrouting, 100) => "srcnat".to_string(),
        (_, _, p) => p.to_string(),
    };
    let policy = match b.policy {
        Policy::Accept => "accept",
        Policy::Drop => "drop",
    };
    format!("type {ty} hook {hook_name} priority {prio}; policy {policy};")
}

/// `nft-templates/netd.nft` as the set declarations, chains and rules above define it: the one
/// source of the table. The file is checked against this (and regenerated from it) without
/// root; the netns tests check the kernel's own listing of the table netd writes against the
/// file, which ties each rule's text to its expressions.
pub fn render_skeleton() -> String {
    let mut out = format!("table inet {DEFAULT_TABLE} {{\n");
    let mut blocks = Vec::new();
    for set in SetId::ALL {
        let d = decl(set);
        let (kind, ty) = match d.data {
            Data::None => ("set", fields_text(d.key)),
            Data::Verdict => ("map", format!("{} : verdict", fields_text(d.key))),
            Data::Fields(v) => (
                "map",
                format!("{} : {}", fields_text(d.key), fields_text(v)),
            ),
        };
        let mut b = format!("\t{kind} {} {{\n\t\ttype {ty}\n", set.name());
        if d.interval {
            b.push_str("\t\tflags interval\n");
        }
        b.push_str(&format!("\t\t@elements {}@\n\t}}\n", set.name()));
        blocks.push(b);
    }
    let rules = rules();
    for (chain, base) in chains() {
        let mut b = format!("\tchain {chain} {{\n");
        if let Some(base) = base {
            b.push_str(&format!("\t\t{}\n", base_chain_text(&base)));
        }
        for (_, text, _) in rules.iter().filter(|(c, _, _)| *c == chain) {
            b.push_str(&format!("\t\t{text}\n"));
        }
        b.push_str("\t}\n");
        blocks.push(b);
    }
    out.push_str(&blocks.join("\n"));
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn d4(proto: Proto, host: Option<[u8; 4]>, hp: u16, a: [u8; 4], p: u16) -> Elem {
        Elem::Dnat4 {
            proto,
            host_addr: host.map(Ipv4Addr::from),
            host_port: hp,
            addr: Ipv4Addr::from(a),
            port: p,
        }
    }

    #[test]
    fn set_specs_match_nft() {
        // Values read from `nft --debug=mnl -f netd.nft` (NEWSET messages).
        let s = set_spec(SetId::SameNet);
        assert_eq!((s.flags, s.key_type, s.key_len), (8, 0x0a69, 32));
        assert_eq!(s.data, Some((0xffff_ff00, 0)));
        assert_eq!(
            s.userdata,
            [0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0, 0]
        );
        let s = set_spec(SetId::Bridges);
        assert_eq!((s.flags, s.key_type, s.key_len, s.data), (0, 41, 16, None));
        assert_eq!(s.userdata, [0, 4, 1, 0, 0, 0]);
        let s = set_spec(SetId::In4);
        assert_eq!(
            s.userdata,
            [0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0]
        );
        let s = set_spec(SetId::Masq6);
        assert_eq!((s.flags, s.key_type, s.key_len), (4, 8, 16));
        assert_eq!(s.userdata, [0, 4, 2, 0, 0, 0]);
        let s = set_spec(SetId::Dnat4Bound);
        assert_eq!(
            (s.key_type, s.key_len, s.data),
            (0xc1cd, 12, Some((0x1cd, 8)))
        );
        assert_eq!(s.userdata.len(), 38);
        let s = set_spec(SetId::Dnat6Bound);
        assert_eq!(
            (s.key_type, s.key_len, s.data),
            (0xc20d, 24, Some((0x20d, 20)))
        );
        let s = set_spec(SetId::Open6);
        assert_eq!((s.flags, s.key_type, s.key_len), (0, 0x830d, 24));
        assert_eq!(
            s.userdata,
            [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn element_encoding() {
        let e = encode_elem(
            SetId::Dnat4Any,
            &d4(Proto::Tcp, None, 8080, [10, 88, 0, 2], 80),
        )
        .unwrap();
        assert_eq!(e[0].key, [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(
            e[0].data,
            Some(ElemData::Value(vec![10, 88, 0, 2, 0, 80, 0, 0]))
        );
        let e = encode_elem(
            SetId::Dnat4Bound,
            &d4(Proto::Udp, Some([192, 0, 2, 1]), 53, [10, 88, 0, 3], 5353),
        )
        .unwrap();
        assert_eq!(e[0].key, [17, 0, 0, 0, 192, 0, 2, 1, 0, 53, 0, 0]);
        assert!(encode_elem(
            SetId::Dnat4Any,
            &d4(Proto::Udp, Some([1, 1, 1, 1]), 1, [1, 1, 1, 1], 1)
        )
        .is_err());

        let e = encode_elem(SetId::Masq4, &Elem::Net4("10.90.1.7/24".parse().unwrap())).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].key, [10, 90, 1, 0]);
        assert_eq!((e[1].key.as_slice(), e[1].flags), (&[10, 90, 2, 0][..], 1));
        let e = encode_elem(SetId::Masq4, &Elem::Net4("0.0.0.0/0".parse().unwrap())).unwrap();
        assert_eq!(e.len(), 1);

        let e = encode_elem(
            SetId::SameNet,
            &Elem::SameIface("br-a".into(), Verdict::Goto(ChainId::IccOff)),
        )
        .unwrap();
        assert_eq!(e[0].key.len(), 32);
        assert_eq!(&e[0].key[16..20], b"br-a");
        assert!(encode_elem(SetId::Bridges, &Elem::Iface("a-very-long-name".into())).is_err());
    }

    #[test]
    fn diff_is_set_difference_with_normalized_intervals() {
        let mut old = Desired::default();
        old.insert(SetId::Bridges, Elem::Iface("br0".into()));
        old.insert(SetId::Masq4, Elem::Net4("10.0.0.0/24".parse().unwrap()));
        let mut new = Desired::default();
        new.insert(SetId::Bridges, Elem::Iface("br1".into()));
        new.insert(SetId::Masq4, Elem::Net4("10.0.0.0/24".parse().unwrap()));
        new.insert(SetId::Masq4, Elem::Net4("10.0.0.0/16".parse().unwrap()));
        let d = old.diff(&new);
        assert_eq!(d.remove[&SetId::Bridges], vec![Elem::Iface("br0".into())]);
        assert_eq!(d.add[&SetId::Bridges], vec![Elem::Iface("br1".into())]);
        assert_eq!(
            d.remove[&SetId::Masq4],
            vec![Elem::Net4("10.0.0.0/24".parse().unwrap())]
        );
        assert_eq!(
            d.add[&SetId::Masq4],
            vec![Elem::Net4("10.0.0.0/16".parse().unwrap())]
        );
        assert!(new.diff(&new).is_empty());
    }

    #[test]
    fn render_orders_like_nft() {
        let mut d = Desired::default();
        // Order nft 1.0.6 printed for these (observed in a netns).
        for n in [
            "zz", "a", "br-ab", "b", "br0", "br10", "br9", "aa", "ab", "ba",
        ] {
            d.insert(SetId::Bridges, Elem::Iface(n.into()));
        }
        for (p, hp) in [
            (Proto::Udp, 53),
            (Proto::Tcp, 9000),
            (Proto::Tcp, 80),
            (Proto::Tcp, 256),
            (Proto::Tcp, 1),
            (Proto::Sctp, 1),
        ] {
            d.insert(SetId::Dnat4Any, d4(p, None, hp, [10, 0, 0, 1], 1));
        }
        for n in [
            "10.0.0.0/24",
            "10.0.1.0/24",
            "192.168.0.0/16",
            "0.0.0.0/8",
            "1.2.3.4/32",
            "5.0.0.0/8",
        ] {
            d.insert(SetId::Subnets4, Elem::Net4(n.parse().unwrap()));
        }
        let out = render_template(TEMPLATE, &d);
        assert!(out.contains(
            "\t\telements = { \"a\",\n\t\t\t     \"b\",\n\t\t\t     \"aa\",\n\t\t\t     \"ba\",\n\t\t\t     \"ab\",\n\t\t\t     \"zz\",\n\t\t\t     \"br0\",\n\t\t\t     \"br9\",\n\t\t\t     \"br10\",\n\t\t\t     \"br-ab\" }\n"
        ), "{out}");
        assert!(out.contains(
            "\t\telements = { tcp . 256 : 10.0.0.1 . 1,\n\t\t\t     tcp . 1 : 10.0.0.1 . 1,\n\t\t\t     sctp . 1 : 10.0.0.1 . 1,\n\t\t\t     tcp . 9000 : 10.0.0.1 . 1,\n\t\t\t     udp . 53 : 10.0.0.1 . 1,\n\t\t\t     tcp . 80 : 10.0.0.1 . 1 }\n"
        ), "{out}");
        assert!(out.contains(
            "\t\telements = { 0.0.0.0/8, 1.2.3.4,\n\t\t\t     5.0.0.0/8, 10.0.0.0/24,\n\t\t\t     10.0.1.0/24, 192.168.0.0/16 }\n"
        ), "{out}");
        assert!(!out.contains("@elements"));
        assert_eq!(
            render_template(TEMPLATE, &Desired::default())
                .lines()
                .count(),
            TEMPLATE.lines().count() - SetId::ALL.len()
        );
    }

    #[test]
    fn full_batch_is_pure_and_complete() {
        let mut d = Desired::default();
        d.insert(SetId::Bridges, Elem::Iface("br0".into()));
        d.insert(SetId::Masq4, Elem::Net4("10.0.0.0/24".parse().unwrap()));
        let (b, groups) = full_batch("netd", &d).unwrap();
        // table + 11 chains + 17 sets + 10 flushes + 44 rules + 17 set flushes + 2 elem msgs
        assert_eq!(b.len(), 1 + 11 + 17 + 10 + 44 + 17 + 2);
        assert!(b
            .descriptions()
            .all(|d| d != "flush chain netd user_forward"));
        assert_eq!(groups.len(), 2);
        let masq = groups.values().find(|(s, _)| *s == SetId::Masq4).unwrap();
        assert_eq!(
            masq.1.len(),
            2,
            "start and end element map to the same network"
        );
        b.encode(1).unwrap();

        let mut bad = Desired::default();
        bad.insert(SetId::Bridges, Elem::Net4("10.0.0.0/24".parse().unwrap()));
        assert!(matches!(
            full_batch("netd", &bad),
            Err(ApplyError::Invalid { set: "bridges", .. })
        ));
    }

    #[test]
    fn the_template_is_rendered_from_the_rules() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../nft-templates/netd.nft");
        let have = render_skeleton();
        if std::env::var_os("NETD_UPDATE_GOLDEN").is_some() {
            // The file is compiled in (TEMPLATE): the next build compares the new one.
            std::fs::write(path, &have).unwrap();
            return;
        }
        assert!(
            TEMPLATE == have,
            "nft-templates/netd.nft differs from the rules in ruleset.rs; after an intended change \
             run NETD_UPDATE_GOLDEN=1 cargo test -p netd-nft\n--- file ---\n{TEMPLATE}\n--- rules ---\n{have}"
        );
        // Every chain that has rules is declared, so no rule text is left out of the file.
        let names: Vec<_> = chains().iter().map(|(c, _)| *c).collect();
        assert!(rules().iter().all(|(c, _, _)| names.contains(c)));
    }

    #[test]
    fn sync_batch_shape() {
        // Building needs no socket; check the pure parts through the free functions.
        assert_eq!(chains().len(), 11);
        let r = rules();
        assert!(r.iter().all(|(c, _, _)| *c != USER_CHAIN));
        assert_eq!(r.len(), 44);
    }
}
