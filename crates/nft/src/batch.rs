//! nf_tables messages and atomic batches (pure encoding, no socket).

use super::attr::{align4, AttrBuf};
use super::expr::{put_value, Expr, Verdict};
use super::NftError;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// Attribute of the batch-begin message: the generation the batch was prepared against.
const NFNL_BATCH_GENID: u16 = 1;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// Where the attributes of a message start, counted from its netlink header (extack offsets
/// are relative to that header).
pub(crate) const ATTRS_OFFSET: usize = NLMSG_HDRLEN + NFGENMSG_LEN;

/// Element lists are split so that one list nest stays well below the 64 KiB an `nla_len` can
/// describe.
pub const MAX_ELEMS_BYTES: usize = 60 * 1024;

/// `NFPROTO_*` of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Ipv4 = 2,
    Ipv6 = 10,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookNum {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Drop = 0,
    Accept = 1,
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: HookNum,
    pub priority: i32,
    pub policy: Policy,
}

pub const SET_F_INTERVAL: u32 = 0x4;
pub const SET_F_MAP: u32 = 0x8;
pub const SET_F_CONCAT: u32 = 0x80;
pub const SET_ELEM_F_INTERVAL_END: u32 = 0x1;

/// `NFT_DATA_VERDICT` as a set's data type.
pub const DATA_TYPE_VERDICT: u32 = 0xffff_ff00;

/// A named set or map declaration (`NFT_MSG_NEWSET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub flags: u32,
    /// nft's datatype id (concatenations: ids joined 6 bits apart), only used by nft to print.
    pub key_type: u32,
    pub key_len: u32,
    /// `(data_type, data_len)` for maps; verdict maps use `(DATA_TYPE_VERDICT, 0)`.
    pub data: Option<(u32, u32)>,
    /// Field lengths of a concatenated key; sent as `NFTA_SET_DESC_CONCAT` only for interval
    /// sets, where the kernel needs them (pipapo).
    pub concat: Vec<u32>,
    /// `NFTA_SET_USERDATA`: nft's TLVs telling it how to print elements.
    pub userdata: Vec<u8>,
}

/// One kernel set element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<ElemData>,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemData {
    Value(Vec<u8>),
    Verdict(Verdict),
}

/// Identifies one `add_elems`/`del_elems` call of a batch, so that an element the kernel
/// rejects can be traced back to the caller's element (see [`NftError::Rejected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ElemGroup(pub u32);

#[derive(Debug, Clone)]
pub(crate) struct ElemSpan {
    /// Offset of the element's list nest from the message's netlink header.
    pub offset: usize,
    pub group: ElemGroup,
    pub index: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub ty: u16,
    pub flags: u16,
    pub body: AttrBuf,
    pub desc: String,
    pub elems: Vec<ElemSpan>,
}

/// An atomic nf_tables transaction: everything in it is applied or nothing is.
#[derive(Debug, Clone)]
pub struct Batch {
    family: Family,
    pub(crate) msgs: Vec<Msg>,
    next_group: u32,
    next_set_id: u32,
    max_elems_bytes: usize,
}

/// A batch in wire format, with the sequence number of each message.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub begin_seq: u32,
    /// Message `i` of the batch has sequence number `first_seq + i`.
    pub first_seq: u32,
}

impl Batch {
    pub fn new(family: Family) -> Self {
        Batch {
            family,
            msgs: Vec::new(),
            next_group: 0,
            next_set_id: 0,
            max_elems_bytes: MAX_ELEMS_BYTES,
        }
    }

    /// Lowers the per-message element budget (tests use it to force several messages).
    pub fn with_max_elems_bytes(mut self, n: usize) -> Self {
        self.max_elems_bytes = n.max(1);
        self
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Number of nf_tables messages (without the batch begin/end markers).
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// What each message does, in order (the texts used in errors).
    pub fn descriptions(&self) -> impl Iterator<Item = &str> {
        self.msgs.iter().map(|m| m.desc.as_str())
    }

    fn push(&mut self, ty: u16, flags: u16, body: AttrBuf, desc: String) {
        self.msgs.push(Msg {
            ty,
            flags,
            body,
            desc,
            elems: Vec::new(),
        });
    }

    /// Creates the table unless it exists (no `NLM_F_EXCL`).
    pub fn add_table(&mut self, table: &str) {
        let mut b = AttrBuf::new();
        b.put_str(1, table); // NFTA_TABLE_NAME
        b.put_be32(2, 0); // NFTA_TABLE_FLAGS
        let desc = format!("add table {} {table}", self.family.name());
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, b, desc);
    }

    pub fn del_table(&mut self, table: &str) {
        let mut b = AttrBuf::new();
        b.put_str(1, table);
        let desc = format!("delete table {} {table}", self.family.name());
        self.push(NFT_MSG_DELTABLE, 0, b, desc);
    }

    /// Creates the chain unless it exists; an existing base chain gets `base`'s policy.
    pub fn add_chain(&mut self, table: &str, chain: &str, base: Option<&BaseChain>) {
        let mut b = AttrBuf::new();
        b.put_str(1, table); // NFTA_CHAIN_TABLE
        b.put_str(3, chain); // NFTA_CHAIN_NAME
        if let Some(bc) = base {
            b.put_str(7, bc.chain_type.name()); // NFTA_CHAIN_TYPE
            b.put_be32(5, bc.policy as u32); // NFTA_CHAIN_POLICY
            b.nested(4, |b| {
                b.put_be32(1, bc.hook as u32); // NFTA_HOOK_HOOKNUM
                b.put_be32(2, bc.priority as u32); // NFTA_HOOK_PRIORITY
            });
        }
        self.push(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            b,
            format!("add chain {table} {chain}"),
        );
    }

    /// Deletes every rule of the chain (`DELRULE` with only table and chain).
    pub fn flush_chain(&mut self, table: &str, chain: &str) {
        let mut b = AttrBuf::new();
        b.put_str(1, table);
        b.put_str(2, chain);
        self.push(
            NFT_MSG_DELRULE,
            0,
            b,
            format!("flush chain {table} {chain}"),
        );
    }

    /// Appends a rule. `what` names the rule in errors (e.g. its nft text).
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr], what: &str) {
        let mut b = AttrBuf::new();
        b.put_str(1, table); // NFTA_RULE_TABLE
        b.put_str(2, chain); // NFTA_RULE_CHAIN
        b.nested(4, |b| {
            for e in exprs {
                b.nested(1, |b| e.encode(b));
            }
        });
        self.push(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            b,
            format!("add rule to chain {chain} ({what})"),
        );
    }

    /// Creates the set unless it exists.
    pub fn add_set(&mut self, table: &str, set: &SetSpec) {
        let mut b = AttrBuf::new();
        b.put_str(1, table); // NFTA_SET_TABLE
        b.put_str(2, &set.name); // NFTA_SET_NAME
        b.put_be32(3, set.flags); // NFTA_SET_FLAGS
        b.put_be32(4, set.key_type); // NFTA_SET_KEY_TYPE
        b.put_be32(5, set.key_len); // NFTA_SET_KEY_LEN
        if let Some((ty, len)) = set.data {
            b.put_be32(6, ty); // NFTA_SET_DATA_TYPE
            b.put_be32(7, len); // NFTA_SET_DATA_LEN
        }
        // The kernel requires a transaction-unique set id even when nothing refers to it.
        self.next_set_id += 1;
        b.put_be32(10, self.next_set_id); // NFTA_SET_ID
        if set.flags & SET_F_INTERVAL != 0 && set.concat.len() > 1 {
            b.nested(9, |b| {
                // NFTA_SET_DESC
                b.nested(2, |b| {
                    // NFTA_SET_DESC_CONCAT
                    for len in &set.concat {
                        b.nested(1, |b| b.put_be32(1, *len)); // NFTA_LIST_ELEM { FIELD_LEN }
                    }
                });
            });
        }
        if !set.userdata.is_empty() {
            b.put(13, &set.userdata); // NFTA_SET_USERDATA
        }
        self.push(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            b,
            format!("add set {table} {}", set.name),
        );
    }

    /// Removes every element (`DELSETELEM` without an element list).
    pub fn flush_set(&mut self, table: &str, set: &str) {
        let mut b = AttrBuf::new();
        b.put_str(1, table);
        b.put_str(2, set);
        self.push(NFT_MSG_DELSETELEM, 0, b, format!("flush set {table} {set}"));
    }

    /// Adds elements, split over as many messages as needed. With `excl`, an element that
    /// exists already fails the batch (`EEXIST`); without it, only a clashing map value does.
    pub fn add_elems(
        &mut self,
        table: &str,
        set: &str,
        elems: &[SetElem],
        excl: bool,
    ) -> ElemGroup {
        let flags = NLM_F_CREATE | if excl { NLM_F_EXCL } else { 0 };
        let desc = format!("add element to set {set}");
        self.elems(NFT_MSG_NEWSETELEM, flags, table, set, elems, desc)
    }

    /// Deletes elements (keys and interval flags are what the kernel matches on).
    pub fn del_elems(&mut self, table: &str, set: &str, elems: &[SetElem]) -> ElemGroup {
        let desc = format!("delete element from set {set}");
        self.elems(NFT_MSG_DELSETELEM, 0, table, set, elems, desc)
    }

    fn elems(
        &mut self,
        ty: u16,
        flags: u16,
        table: &str,
        set: &str,
        elems: &[SetElem],
        desc: String,
    ) -> ElemGroup {
        let group = ElemGroup(self.next_group);
        self.next_group += 1;
        let mut i = 0;
        while i < elems.len() {
            let mut b = AttrBuf::new();
            b.put_str(1, table); // NFTA_SET_ELEM_LIST_TABLE
            b.put_str(2, set); // NFTA_SET_ELEM_LIST_SET
            let list = b.nest_start(3); // NFTA_SET_ELEM_LIST_ELEMENTS
            let mut spans = Vec::new();
            while i < elems.len() {
                let before = b.len();
                let offset = ATTRS_OFFSET + before;
                encode_elem(&mut b, &elems[i], ty == NFT_MSG_DELSETELEM);
                // Always at least one element per message, so an oversized element is
                // reported by the overflow check rather than looping forever.
                if b.len() - list > self.max_elems_bytes && !spans.is_empty() {
                    b.bytes.truncate(before);
                    break;
                }
                spans.push(ElemSpan {
                    offset,
                    group,
                    index: i,
                });
                i += 1;
            }
            b.nest_end(list);
            self.msgs.push(Msg {
                ty,
                flags,
                body: b,
                desc: desc.clone(),
                elems: spans,
            });
        }
        group
    }

    /// Wire format: `BATCH_BEGIN`, the messages with `NLM_F_ACK`, `BATCH_END`.
    pub fn encode(&self, begin_seq: u32) -> Result<Encoded, NftError> {
        self.encode_at(begin_seq, None)
    }

    /// [`Batch::encode`], and with `genid` the batch-begin message carries
    /// `NFNL_BATCH_GENID`: the kernel then applies the batch only if the ruleset is still at
    /// that generation when the batch takes the commit lock, and otherwise refuses it as a
    /// whole with `ERESTART` (what `nft` uses to keep its cache coherent).
    pub fn encode_at(&self, begin_seq: u32, genid: Option<u32>) -> Result<Encoded, NftError> {
        if let Some(m) = self.msgs.iter().find(|m| m.body.overflow) {
            return Err(NftError::TooLarge(m.desc.clone()));
        }
        let total: usize = self
            .msgs
            .iter()
            .map(|m| ATTRS_OFFSET + align4(m.body.len()))
            .sum::<usize>()
            + 2 * ATTRS_OFFSET;
        let mut out = Vec::with_capacity(total);
        let subsys_be = NFNL_SUBSYS_NFTABLES.to_be_bytes();
        let mut begin_attrs = Vec::new();
        if let Some(id) = genid {
            netd_netlink::push_attr(&mut begin_attrs, NFNL_BATCH_GENID, &id.to_be_bytes());
        }
        put_header(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin_seq,
            0,
            subsys_be,
            &begin_attrs,
        );
        for (i, m) in self.msgs.iter().enumerate() {
            put_header(
                &mut out,
                (NFNL_SUBSYS_NFTABLES << 8) | m.ty,
                NLM_F_REQUEST | NLM_F_ACK | m.flags,
                begin_seq.wrapping_add(1 + i as u32),
                self.family as u8,
                [0, 0],
                &m.body.bytes,
            );
        }
        let end_seq = begin_seq.wrapping_add(1 + self.msgs.len() as u32);
        put_header(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            subsys_be,
            &[],
        );
        Ok(Encoded {
            bytes: out,
            begin_seq,
            first_seq: begin_seq.wrapping_add(1),
        })
    }
}

fn put_header(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: [u8; 2],
    body: &[u8],
) {
    let len = ATTRS_OFFSET + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id);
    out.extend_from_slice(body);
    out.resize(align4(out.len()), 0);
}

fn encode_elem(b: &mut AttrBuf, e: &SetElem, delete: bool) {
    b.nested(1, |b| {
        // NFTA_LIST_ELEM
        if e.flags != 0 {
            b.put_be32(3, e.flags); // NFTA_SET_ELEM_FLAGS
        }
        put_value(b, 1, &e.key); // NFTA_SET_ELEM_KEY
        if let Some(end) = &e.key_end {
            put_value(b, 10, end); // NFTA_SET_ELEM_KEY_END
        }
        // A deletion is matched on the key; sending the data would also make the kernel
        // resolve (and require) goto targets.
        if !delete {
            match &e.data {
                Some(ElemData::Value(v)) => put_value(b, 2, v), // NFTA_SET_ELEM_DATA
                Some(ElemData::Verdict(v)) => b.nested(2, |b| v.encode_data(b)),
                None => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(batch: &Batch, i: usize) -> &[u8] {
        &batch.msgs[i].body.bytes
    }

    #[test]
    fn a_generation_rides_on_the_batch_begin_message() {
        let b = Batch::new(Family::Inet);
        let w = b.encode_at(7, Some(0x0102_0304)).unwrap().bytes;
        // BATCH_BEGIN: len 28, nfgenmsg with res_id htons(10), then NFNL_BATCH_GENID (be32).
        assert_eq!(&w[0..4], &28u32.to_ne_bytes());
        assert_eq!(&w[16..20], &[0, 0, 0, 10]);
        assert_eq!(&w[20..28], &[8, 0, 1, 0, 1, 2, 3, 4]);
        // BATCH_END follows at once; without a generation the framing is unchanged.
        assert_eq!(&w[32..34], &0x11u16.to_ne_bytes());
        assert_eq!(
            b.encode_at(7, None).unwrap().bytes,
            b.encode(7).unwrap().bytes
        );
    }

    #[test]
    fn batch_framing() {
        let mut b = Batch::new(Family::Inet);
        b.add_table("netd");
        let enc = b.encode(100).unwrap();
        let w = &enc.bytes;
        // BATCH_BEGIN: len 20, type 0x10, flags REQUEST, seq 100, res_id htons(10)
        assert_eq!(
            &w[0..20],
            &[20, 0, 0, 0, 0x10, 0, 1, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        );
        // NEWTABLE: len 40, type 0x0a00, REQUEST|ACK|CREATE, seq 101, family inet
        assert_eq!(&w[20..24], &40u32.to_ne_bytes());
        assert_eq!(&w[24..26], &0x0a00u16.to_ne_bytes());
        assert_eq!(&w[26..28], &(0x1u16 | 0x4 | 0x400).to_ne_bytes());
        assert_eq!(&w[28..32], &101u32.to_ne_bytes());
        assert_eq!(&w[36..40], &[1, 0, 0, 0]);
        // body as `nft --debug=mnl` shows it: name "netd", flags 0
        assert_eq!(
            &w[40..60],
            &[9, 0, 1, 0, b'n', b'e', b't', b'd', 0, 0, 0, 0, 8, 0, 2, 0, 0, 0, 0, 0]
        );
        // BATCH_END
        assert_eq!(&w[60..64], &20u32.to_ne_bytes());
        assert_eq!(&w[64..66], &0x11u16.to_ne_bytes());
        assert_eq!(&w[68..72], &102u32.to_ne_bytes());
        assert_eq!(w.len(), 80);
    }

    #[test]
    fn base_chain_matches_nft() {
        let mut b = Batch::new(Family::Inet);
        let bc = BaseChain {
            chain_type: ChainType::Filter,
            hook: HookNum::Forward,
            priority: 0,
            policy: Policy::Accept,
        };
        b.add_chain("netd", "forward", Some(&bc));
        #[rustfmt::skip]
        let want = [
            9, 0, 1, 0, b'n', b'e', b't', b'd', 0, 0, 0, 0,
            12, 0, 3, 0, b'f', b'o', b'r', b'w', b'a', b'r', b'd', 0,
            11, 0, 7, 0, b'f', b'i', b'l', b't', b'e', b'r', 0, 0,
            8, 0, 5, 0, 0, 0, 0, 1,
            20, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 2, 8, 0, 2, 0, 0, 0, 0, 0,
        ];
        assert_eq!(body(&b, 0), want);
    }

    #[test]
    fn interval_end_element_matches_nft() {
        let mut b = Batch::new(Family::Inet);
        let e = SetElem {
            key: vec![10, 89, 0, 0],
            key_end: None,
            data: None,
            flags: SET_ELEM_F_INTERVAL_END,
        };
        b.add_elems("netd", "masq4", &[e], false);
        let m = body(&b, 0);
        // list { elem { flags 1, key { value 0a590000 } } }
        #[rustfmt::skip]
        let tail = [
            28, 0, 3, 0x80,
            24, 0, 1, 0x80,
            8, 0, 3, 0, 0, 0, 0, 1,
            12, 0, 1, 0x80, 8, 0, 1, 0, 10, 89, 0, 0,
        ];
        assert!(m.ends_with(&tail), "{m:?}");
    }

    #[test]
    fn vmap_goto_element() {
        let mut b = Batch::new(Family::Inet);
        let mut key = b"br-a".to_vec();
        key.resize(16, 0);
        let e = SetElem {
            key,
            key_end: None,
            data: Some(ElemData::Verdict(Verdict::Goto("to_nat".into()))),
            flags: 0,
        };
        b.add_elems("netd", "in4", &[e], false);
        #[rustfmt::skip]
        let tail = [
            28, 0, 2, 0x80, 24, 0, 2, 0x80,
            8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfc,
            11, 0, 2, 0, b't', b'o', b'_', b'n', b'a', b't', 0, 0,
        ];
        assert!(body(&b, 0).ends_with(&tail));
    }

    #[test]
    fn elements_are_chunked_below_u16() {
        let elems: Vec<SetElem> = (0..10_000u32)
            .map(|i| SetElem {
                key: i.to_be_bytes().to_vec(),
                key_end: None,
                data: Some(ElemData::Value(vec![0; 8])),
                flags: 0,
            })
            .collect();
        let mut b = Batch::new(Family::Inet);
        b.add_elems("netd", "m", &elems, false);
        assert!(b.len() > 1);
        let mut seen = 0;
        for m in &b.msgs {
            assert!(!m.body.overflow);
            assert!(m.body.len() < 64 * 1024);
            for s in &m.elems {
                assert_eq!(s.index, seen);
                seen += 1;
            }
        }
        assert_eq!(seen, 10_000);
        let enc = b.encode(1).unwrap();
        assert_eq!(enc.first_seq, 2);
    }

    #[test]
    fn small_budget_still_makes_progress() {
        let elems = vec![
            SetElem {
                key: vec![1; 4],
                key_end: None,
                data: None,
                flags: 0
            };
            3
        ];
        let mut b = Batch::new(Family::Inet).with_max_elems_bytes(1);
        b.add_elems("netd", "s", &elems, true);
        assert_eq!(b.len(), 3);
        assert_eq!(b.msgs[0].flags, 0x400 | 0x200);
    }
}
