//! netd's table for the nf_tables layer, one concern per file:
//!
//! * `sets`: the set and map declarations ([`set_spec`]);
//! * `rules`: the chains and rules, each rule's chain, text and expressions together
//!   ([`chains`], [`rules`]), the one source of `nft-templates/netd.nft`;
//! * `elements`: the encoding of [`netd_core::plan::Elem`]s per set ([`encode_elem`]);
//! * `text`: what `nft list table` prints: [`render_skeleton`] (the template, from the
//!   declarations and rules) and [`render_template`] (the template filled with a state);
//! * `applier`: whole-table and diff batches, and the [`Applier`] that sends them.
//!
//! The chains and rules never change at run time, so a full sync re-creates them and a diff
//! only touches set elements.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::expr::{build::*, *};
use crate::{
    BaseChain, Batch, ChainType, ElemData, ElemGroup, Family, HookNum, NftError, Policy, SetElem,
    SetSpec, Socket, DATA_TYPE_VERDICT, SET_ELEM_F_INTERVAL_END, SET_F_CONCAT, SET_F_INTERVAL,
    SET_F_MAP,
};
use netd_core::model::Proto;
use netd_core::plan::{ChainId, Desired, Diff, Elem, SetId, Verdict};

/// `nft-templates/netd.nft`: what `nft list table inet netd` prints for an empty state, with
/// one `@elements NAME@` line per set where its elements go (see [`render_template`]).
pub const TEMPLATE: &str = include_str!("../../../../nft-templates/netd.nft");

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

mod applier;
mod elements;
mod rules;
mod sets;
mod text;

use sets::*;

pub use applier::{diff_batch, full_batch, next_generation, Applier, Groups, Unheard};
pub use elements::encode_elem;
pub use rules::{chains, rules, RuleDef};
pub use sets::set_spec;
pub use text::{elem_text, render_skeleton, render_template, sort_elements};

#[cfg(test)]
mod tests {
    use super::applier::*;
    use super::elements::*;
    use super::rules::*;
    use super::text::*;
    use super::*;
    use netd_core::plan::sets as plan_sets;
    use netd_core::plan::shape::*;
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
        // Concatenated interval sets: interval, concat (and map) flags, the field lengths,
        // and for a one-field address value its byte order (big endian, 2).
        let s = set_spec(SetId::Dnat4AnyRanges);
        assert_eq!(
            (s.flags, s.key_type, s.key_len, s.data),
            (0x8c, 0x30d, 8, Some((7, 4)))
        );
        assert_eq!(s.concat, [1, 2]);
        assert_eq!(
            s.userdata,
            [0, 4, 0, 0, 0, 0, 1, 4, 2, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0, 0]
        );
        let s = set_spec(SetId::Open4Ranges);
        assert_eq!(
            (s.flags, s.key_type, s.key_len, s.data),
            (0x84, 0x730d, 12, None)
        );
        assert_eq!(s.concat, [4, 1, 2]);
        assert_eq!(
            s.userdata,
            [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn range_elements_carry_first_and_last_key() {
        // As nft sends `tcp . 20000-20099 : 10.88.0.2` (nft --debug=netlink: key
        // 00000006 0000204e, key end 00000006 0000834e, data 0200580a).
        let e = encode_elem(
            SetId::Dnat4AnyRanges,
            &Elem::Dnat4Range {
                proto: Proto::Tcp,
                host_addr: None,
                first: 20000,
                last: 20099,
                addr: Ipv4Addr::new(10, 88, 0, 2),
            },
        )
        .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, [6, 0, 0, 0, 0x4e, 0x20, 0, 0]);
        assert_eq!(
            e[0].key_end.as_deref(),
            Some(&[6, 0, 0, 0, 0x4e, 0x83, 0, 0][..])
        );
        assert_eq!(e[0].data, Some(ElemData::Value(vec![10, 88, 0, 2])));
        assert_eq!(e[0].flags, 0);
        // A bound range belongs in the bound map only, and a reversed range nowhere.
        let bound = Elem::Dnat4Range {
            proto: Proto::Udp,
            host_addr: Some(Ipv4Addr::new(192, 0, 2, 1)),
            first: 53,
            last: 54,
            addr: Ipv4Addr::new(10, 88, 0, 3),
        };
        let e = encode_elem(SetId::Dnat4BoundRanges, &bound).unwrap();
        assert_eq!(e[0].key, [17, 0, 0, 0, 192, 0, 2, 1, 0, 53, 0, 0]);
        assert!(encode_elem(SetId::Dnat4AnyRanges, &bound).is_err());
        let reversed = Elem::Open4Range {
            addr: Ipv4Addr::new(10, 0, 0, 2),
            proto: Proto::Tcp,
            first: 200,
            last: 100,
        };
        assert!(encode_elem(SetId::Open4Ranges, &reversed).is_err());
        let e = encode_elem(
            SetId::Open4Ranges,
            &Elem::Open4Range {
                addr: Ipv4Addr::new(10, 0, 0, 2),
                proto: Proto::Tcp,
                first: 100,
                last: 200,
            },
        )
        .unwrap();
        assert_eq!(e[0].key, [10, 0, 0, 2, 6, 0, 0, 0, 0, 100, 0, 0]);
        assert_eq!(
            e[0].key_end.as_deref(),
            Some(&[10, 0, 0, 2, 6, 0, 0, 0, 0, 200, 0, 0][..])
        );
        assert_eq!(elem_text(&bound), "udp . 192.0.2.1 . 53-54 : 10.88.0.3");
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
        old.insert(plan_sets::BRIDGES, Iface("br0".into()));
        old.insert(plan_sets::MASQ4, "10.0.0.0/24".parse().unwrap());
        let mut new = Desired::default();
        new.insert(plan_sets::BRIDGES, Iface("br1".into()));
        new.insert(plan_sets::MASQ4, "10.0.0.0/24".parse().unwrap());
        new.insert(plan_sets::MASQ4, "10.0.0.0/16".parse().unwrap());
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
            d.insert(plan_sets::BRIDGES, Iface(n.into()));
        }
        for (p, hp) in [
            (Proto::Udp, 53),
            (Proto::Tcp, 9000),
            (Proto::Tcp, 80),
            (Proto::Tcp, 256),
            (Proto::Tcp, 1),
            (Proto::Sctp, 1),
        ] {
            d.insert(
                plan_sets::DNAT4_ANY,
                Dnat {
                    proto: p,
                    host_port: hp,
                    addr: Ipv4Addr::new(10, 0, 0, 1),
                    port: 1,
                },
            );
        }
        for n in [
            "10.0.0.0/24",
            "10.0.1.0/24",
            "192.168.0.0/16",
            "0.0.0.0/8",
            "1.2.3.4/32",
            "5.0.0.0/8",
        ] {
            d.insert(plan_sets::SUBNETS4, n.parse().unwrap());
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
    fn sorted_element_lists_ignore_the_order_of_elements() {
        let a = "table inet netd {\n\tmap m {\n\t\ttype x\n\t\telements = { tcp . 7-8 : 10.0.0.2,\n\t\t\t     tcp . 1-2 : 10.0.0.1 }\n\t}\n\tset s {\n\t\telements = { 10.0.0.0/24, 10.1.0.0/24,\n\t\t\t     10.2.0.0/24 }\n\t}\n}\n";
        let b = "table inet netd {\n\tmap m {\n\t\ttype x\n\t\telements = { tcp . 1-2 : 10.0.0.1,\n\t\t\t     tcp . 7-8 : 10.0.0.2 }\n\t}\n\tset s {\n\t\telements = { 10.0.0.0/24,\n\t\t\t     10.2.0.0/24, 10.1.0.0/24 }\n\t}\n}\n";
        assert_ne!(a, b);
        assert_eq!(sort_elements(a), sort_elements(b));
        assert!(sort_elements(a).contains(
            "\t\telements = { tcp . 1-2 : 10.0.0.1,\n\t\t\t     tcp . 7-8 : 10.0.0.2 }\n\t}\n"
        ));
        // A different element is still a difference.
        assert_ne!(sort_elements(a), sort_elements(&b.replace("7-8", "7-9")));
        // Everything else is kept as it is.
        let t = render_template(TEMPLATE, &Desired::default());
        assert_eq!(sort_elements(&t), t);
    }

    #[test]
    fn full_batch_is_pure_and_complete() {
        let mut d = Desired::default();
        d.insert(plan_sets::BRIDGES, Iface("br0".into()));
        d.insert(plan_sets::MASQ4, "10.0.0.0/24".parse().unwrap());
        let (b, groups) = full_batch("netd", &d).unwrap();
        // table + 11 chains + 23 sets + 10 flushes + 52 rules + 23 set flushes + 2 elem msgs
        assert_eq!(b.len(), 1 + 11 + 23 + 10 + 52 + 23 + 2);
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
        // Only a hand-made state can hold this (typed sets do not compile it); the encoder still
        // refuses it rather than sending the kernel garbage.
        bad.sets
            .entry(SetId::Bridges)
            .or_default()
            .insert(Elem::Net4("10.0.0.0/24".parse().unwrap()));
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
            "nft-templates/netd.nft differs from the rules in ruleset/rules.rs; after an intended change \
             run NETD_UPDATE_GOLDEN=1 cargo test -p netd-nft\n--- file ---\n{TEMPLATE}\n--- rules ---\n{have}"
        );
        // Every chain that has rules is declared, so no rule text is left out of the file.
        let names: Vec<_> = chains().iter().map(|(c, _)| *c).collect();
        assert!(rules().iter().all(|(c, _, _)| names.contains(c)));
    }

    #[test]
    fn every_typed_set_takes_elements_its_encoder_accepts() {
        use netd_core::plan::shape::*;
        let a4 = Ipv4Addr::new(10, 0, 0, 2);
        let a6: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        let mut d = Desired::default();
        d.insert(plan_sets::BRIDGES, Iface("br0".into()));
        d.insert(plan_sets::SEALED, Iface("br0".into()));
        d.insert(
            plan_sets::SAME_NET,
            SameIface("br0".into(), Verdict::Accept),
        );
        for set in [
            plan_sets::IN4,
            plan_sets::IN6,
            plan_sets::OUT4,
            plan_sets::OUT6,
        ] {
            d.insert(set, IfaceVerdict("br0".into(), Verdict::Drop));
        }
        for set in [plan_sets::MASQ4, plan_sets::SUBNETS4] {
            d.insert(set, "10.0.0.0/24".parse().unwrap());
        }
        for set in [plan_sets::MASQ6, plan_sets::SUBNETS6] {
            d.insert(set, "fd00::/64".parse().unwrap());
        }
        let (proto, host_port, port) = (Proto::Tcp, 8080, 80);
        d.insert(
            plan_sets::DNAT4_ANY,
            Dnat {
                proto,
                host_port,
                addr: a4,
                port,
            },
        );
        d.insert(
            plan_sets::DNAT6_ANY,
            Dnat {
                proto,
                host_port,
                addr: a6,
                port,
            },
        );
        d.insert(
            plan_sets::DNAT4_BOUND,
            BoundDnat {
                proto,
                host_addr: a4,
                host_port,
                addr: a4,
                port,
            },
        );
        d.insert(
            plan_sets::DNAT6_BOUND,
            BoundDnat {
                proto,
                host_addr: a6,
                host_port,
                addr: a6,
                port,
            },
        );
        d.insert(
            plan_sets::OPEN4,
            Open {
                addr: a4,
                proto,
                port,
            },
        );
        d.insert(
            plan_sets::OPEN6,
            Open {
                addr: a6,
                proto,
                port,
            },
        );
        let (first, last) = (20000, 20099);
        d.insert(
            plan_sets::DNAT4_ANY_RANGES,
            DnatRange {
                proto,
                first,
                last,
                addr: a4,
            },
        );
        d.insert(
            plan_sets::DNAT6_ANY_RANGES,
            DnatRange {
                proto,
                first,
                last,
                addr: a6,
            },
        );
        d.insert(
            plan_sets::DNAT4_BOUND_RANGES,
            BoundDnatRange {
                proto,
                host_addr: a4,
                first,
                last,
                addr: a4,
            },
        );
        d.insert(
            plan_sets::DNAT6_BOUND_RANGES,
            BoundDnatRange {
                proto,
                host_addr: a6,
                first,
                last,
                addr: a6,
            },
        );
        d.insert(
            plan_sets::OPEN4_RANGES,
            OpenRange {
                addr: a4,
                proto,
                first,
                last,
            },
        );
        d.insert(
            plan_sets::OPEN6_RANGES,
            OpenRange {
                addr: a6,
                proto,
                first,
                last,
            },
        );
        for set in SetId::ALL {
            let elems: Vec<_> = d.elems(set).collect();
            assert!(!elems.is_empty(), "{set:?} got no element");
            for e in elems {
                encode_elem(set, e).unwrap_or_else(|err| panic!("{set:?}: {err}"));
            }
        }
        full_batch("netd", &d).unwrap();
    }

    #[test]
    fn sync_batch_shape() {
        // Building needs no socket; check the pure parts through the free functions.
        assert_eq!(chains().len(), 11);
        let r = rules();
        assert!(r.iter().all(|(c, _, _)| *c != USER_CHAIN));
        assert_eq!(r.len(), 52);
    }
}
