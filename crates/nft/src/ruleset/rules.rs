//! The chains and their rules: each rule's chain, its text as `nft list` prints it and its
//! expressions, defined together.

use super::*;

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

pub(super) const R0: Reg = Reg::r32(0);

pub(super) fn nfproto(p: u8) -> [Expr; 2] {
    [meta(MetaKey::Nfproto, R0), cmp_eq(R0, [p])]
}

pub(super) fn accept() -> Expr {
    verdict(crate::Verdict::Accept)
}

pub(super) fn drop_() -> Expr {
    verdict(crate::Verdict::Drop)
}

pub(super) fn goto(chain: &str) -> Expr {
    verdict(crate::Verdict::Goto(chain.to_string()))
}

pub(super) fn ct_dnat() -> Vec<Expr> {
    let mut v = vec![ct(CtKey::Status, R0)];
    v.extend(bits_set(R0, CT_STATUS_DNAT));
    v
}

/// `ip daddr . meta l4proto . th dport @open4[_ranges]` (v4) / `ip6 ...` (v6).
pub(super) fn open_lookup(v6: bool, ranges: bool) -> Vec<Expr> {
    let set = match (v6, ranges) {
        (false, false) => SetId::Open4,
        (false, true) => SetId::Open4Ranges,
        (true, false) => SetId::Open6,
        (true, true) => SetId::Open6Ranges,
    };
    let mut v = Vec::new();
    let (proto_reg, port_reg) = if v6 {
        v.extend(nfproto(NFPROTO_IPV6));
        v.push(payload(PayloadBase::Network, 24, 16, R0));
        (Reg::r32(4), Reg::r32(5))
    } else {
        v.extend(nfproto(NFPROTO_IPV4));
        v.push(payload(PayloadBase::Network, 16, 4, R0));
        (Reg::r32(1), Reg::r32(2))
    };
    v.push(meta(MetaKey::L4proto, proto_reg));
    if ranges {
        v.push(l4proto_hton(proto_reg));
    }
    v.push(payload(PayloadBase::Transport, 2, 2, port_reg));
    v.push(lookup(set.name(), R0));
    v.push(accept());
    v
}

/// What nft puts after `meta l4proto` in the key of a concatenated interval set (see
/// [`Expr::ByteorderHton`]).
pub(super) fn l4proto_hton(reg: Reg) -> Expr {
    Expr::ByteorderHton {
        sreg: reg,
        dreg: reg,
        len: 1,
        size: 2,
    }
}

pub(super) fn icmp_echo(v6: bool) -> Vec<Expr> {
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

pub(super) fn fib_local_goto_published() -> Vec<Expr> {
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

/// `dnat ip(6) to meta l4proto [. ip(6) daddr] . th dport map @dnatX_Y[_ranges]`. A port
/// map's value is address . port; a range map's is the address alone, and a DNAT without a
/// port keeps the packet's destination port, which is what makes one element serve a run
/// of same-numbered ports.
pub(super) fn dnat_rule(v6: bool, bound: bool, ranges: bool) -> Vec<Expr> {
    let (fam, set) = match (v6, bound, ranges) {
        (false, false, false) => (NFPROTO_IPV4, SetId::Dnat4Any),
        (false, true, false) => (NFPROTO_IPV4, SetId::Dnat4Bound),
        (true, false, false) => (NFPROTO_IPV6, SetId::Dnat6Any),
        (true, true, false) => (NFPROTO_IPV6, SetId::Dnat6Bound),
        (false, false, true) => (NFPROTO_IPV4, SetId::Dnat4AnyRanges),
        (false, true, true) => (NFPROTO_IPV4, SetId::Dnat4BoundRanges),
        (true, false, true) => (NFPROTO_IPV6, SetId::Dnat6AnyRanges),
        (true, true, true) => (NFPROTO_IPV6, SetId::Dnat6BoundRanges),
    };
    let mut v = nfproto(fam).to_vec();
    v.push(meta(MetaKey::L4proto, R0));
    if ranges {
        v.push(l4proto_hton(R0));
    }
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
    // A port map's value is address . port: the port sits right after the address.
    let port_reg = match (ranges, v6) {
        (true, _) => None,
        (false, true) => Some(Reg::r32(4)),
        (false, false) => Some(Reg::r32(1)),
    };
    v.push(Expr::Nat {
        kind: NatType::Dnat,
        family: fam,
        addr_min: Some(R0),
        proto_min: port_reg,
        flags: 0,
    });
    v
}

pub(super) fn hairpin_masq(v6: bool) -> Vec<Expr> {
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
pub(super) fn loopback4(offset: u32) -> Vec<Expr> {
    let mut v = nfproto(NFPROTO_IPV4).to_vec();
    v.push(payload(PayloadBase::Network, offset, 1, R0));
    v.push(cmp_eq(R0, [127]));
    v
}

/// `ct status dnat oifname @bridges ip saddr 127.0.0.0/8 masquerade`: the host reaching a
/// port published on 127.0.0.1 (route_localnet on the bridge lets the packet leave with its
/// loopback source; the container must answer to the bridge address instead).
pub(super) fn loopback_masq() -> Vec<Expr> {
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
pub(super) fn loopback_input(accept_dnat: bool) -> Vec<Expr> {
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
pub(super) fn loopback_source_drop(v6: bool) -> Vec<Expr> {
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

pub(super) fn outbound_masq(v6: bool) -> Vec<Expr> {
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

pub(super) fn iface_vmap(v6: bool, key: MetaKey, set: SetId) -> Vec<Expr> {
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
pub(super) fn filter_rules(r: &mut Vec<RuleDef>) {
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
        open_lookup(false, false),
    );
    add(
        "cross_net",
        "ip daddr . meta l4proto . th dport @open4_ranges accept",
        open_lookup(false, true),
    );
    add(
        "cross_net",
        "ip6 daddr . meta l4proto . th dport @open6 accept",
        open_lookup(true, false),
    );
    add(
        "cross_net",
        "ip6 daddr . meta l4proto . th dport @open6_ranges accept",
        open_lookup(true, true),
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
        open_lookup(false, false),
    );
    add(
        tr,
        "ip daddr . meta l4proto . th dport @open4_ranges accept",
        open_lookup(false, true),
    );
    add(
        tr,
        "ip6 daddr . meta l4proto . th dport @open6 accept",
        open_lookup(true, false),
    );
    add(
        tr,
        "ip6 daddr . meta l4proto . th dport @open6_ranges accept",
        open_lookup(true, true),
    );
    add(tr, "icmp type echo-request accept", icmp_echo(false));
    add(tr, "icmpv6 type echo-request accept", icmp_echo(true));
    add(tr, "drop", vec![drop_()]);
}

/// Published ports (DNAT) and masquerade.
pub(super) fn nat_rules(r: &mut Vec<RuleDef>) {
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

    // The first rule that finds the packet's key DNATs it (nat is a final verdict), so
    // ports bound to one host address come before those published on every address,
    // whether they sit in a port map or a range map.
    add(
        "published",
        "dnat ip to meta l4proto . ip daddr . th dport map @dnat4_bound",
        dnat_rule(false, true, false),
    );
    add(
        "published",
        "dnat ip to meta l4proto . ip daddr . th dport map @dnat4_bound_ranges",
        dnat_rule(false, true, true),
    );
    add(
        "published",
        "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @dnat4_any",
        dnat_rule(false, false, false),
    );
    add(
        "published",
        "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @dnat4_any_ranges",
        dnat_rule(false, false, true),
    );
    add(
        "published",
        "dnat ip6 to meta l4proto . ip6 daddr . th dport map @dnat6_bound",
        dnat_rule(true, true, false),
    );
    add(
        "published",
        "dnat ip6 to meta l4proto . ip6 daddr . th dport map @dnat6_bound_ranges",
        dnat_rule(true, true, true),
    );
    add(
        "published",
        "meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @dnat6_any",
        dnat_rule(true, false, false),
    );
    add(
        "published",
        "meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @dnat6_any_ranges",
        dnat_rule(true, false, true),
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
pub(super) fn input_rules(r: &mut Vec<RuleDef>) {
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
