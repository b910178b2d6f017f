//! Watching and inspecting nf_tables: the change notifications of the `NFNLGRP_NFTABLES`
//! multicast group (what `nft monitor` shows), and dumps of one table's chains, rules, sets
//! and elements, so that the daemon can notice when someone else changed its table.
//!
//! Parsing is pure ([`parse_events`], [`parse_elems`]) and never panics on any input; the
//! sockets are thin wrappers around it.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

pub use netd_netlink::Membership;
use netd_netlink::{NlSocket, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};

use super::batch::{ElemData, SetElem, SET_ELEM_F_INTERVAL_END};
use super::expr::Verdict;
use super::socket::open_netfilter;
use super::NftError;

/// `NFNLGRP_NFTABLES`.
pub const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

pub const NFT_MSG_NEWTABLE: u8 = 0;
pub const NFT_MSG_GETTABLE: u8 = 1;
pub const NFT_MSG_DELTABLE: u8 = 2;
pub const NFT_MSG_NEWCHAIN: u8 = 3;
pub const NFT_MSG_GETCHAIN: u8 = 4;
pub const NFT_MSG_DELCHAIN: u8 = 5;
pub const NFT_MSG_NEWRULE: u8 = 6;
pub const NFT_MSG_GETRULE: u8 = 7;
pub const NFT_MSG_DELRULE: u8 = 8;
pub const NFT_MSG_NEWSET: u8 = 9;
pub const NFT_MSG_GETSET: u8 = 10;
pub const NFT_MSG_DELSET: u8 = 11;
pub const NFT_MSG_NEWSETELEM: u8 = 12;
pub const NFT_MSG_GETSETELEM: u8 = 13;
pub const NFT_MSG_DELSETELEM: u8 = 14;
pub const NFT_MSG_NEWGEN: u8 = 15;

/// The multicast receive buffer: large enough for the per-element notifications of a big
/// batch; if it overflows anyway the kernel reports ENOBUFS and we fall back to a check.
const MONITOR_RCVBUF: usize = 16 << 20;

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A table, chain, rule, set, element, object or flowtable was added or removed.
    Object {
        /// `NFT_MSG_*` type (NEWTABLE, DELCHAIN, NEWSETELEM, ...).
        msg: u8,
        /// `NFPROTO_*` of the table.
        family: u8,
        table: Option<String>,
        /// The chain (chains, rules) or set (sets, elements) the event is about.
        object: Option<String>,
        /// Netlink port id of the socket that sent the change.
        portid: u32,
    },
    /// The end of one transaction: the new generation and who committed it.
    NewGen {
        id: u32,
        /// `NFTA_GEN_PROC_PID`: the kernel task id (thread id) that committed.
        pid: Option<u32>,
        /// `NFTA_GEN_PROC_NAME`: its command name.
        name: Option<String>,
        portid: u32,
    },
}

/// What kind of nf_tables object a notification is about, from its `NFT_MSG_*` type (each
/// kind has NEW, GET and DEL messages, in that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    Table,
    Chain,
    Rule,
    Set,
    Element,
    /// Stateful objects and flowtables: netd makes none.
    Other,
}

impl ObjectKind {
    pub fn of(msg: u8) -> ObjectKind {
        match msg {
            NFT_MSG_NEWTABLE..=NFT_MSG_DELTABLE => ObjectKind::Table,
            NFT_MSG_NEWCHAIN..=NFT_MSG_DELCHAIN => ObjectKind::Chain,
            NFT_MSG_NEWRULE..=NFT_MSG_DELRULE => ObjectKind::Rule,
            NFT_MSG_NEWSET..=NFT_MSG_DELSET => ObjectKind::Set,
            NFT_MSG_NEWSETELEM..=NFT_MSG_DELSETELEM => ObjectKind::Element,
            _ => ObjectKind::Other,
        }
    }
}

impl Event {
    /// The kind of object an `Object` event is about (None for `NewGen`).
    pub fn kind(&self) -> Option<ObjectKind> {
        match self {
            Event::Object { msg, .. } => Some(ObjectKind::of(*msg)),
            Event::NewGen { .. } => None,
        }
    }

    /// Whether the event changed something of table `table` (family inet).
    pub fn touches(&self, table: &str) -> bool {
        matches!(self, Event::Object { family, table: Some(t), .. } if *family == 1 && t == table)
    }
}

/// `nft monitor`-like text: "delete chain inet netd forward".
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Object {
                msg,
                family,
                table,
                object,
                ..
            } => {
                let (verb, what) = msg_text(*msg);
                let fam = match family {
                    1 => "inet",
                    2 => "ip",
                    10 => "ip6",
                    3 => "arp",
                    7 => "bridge",
                    5 => "netdev",
                    _ => "?",
                };
                write!(f, "{verb} {what} {fam} {}", table.as_deref().unwrap_or("?"))?;
                if let Some(o) = object {
                    write!(f, " {o}")?;
                }
                Ok(())
            }
            Event::NewGen { id, pid, name, .. } => write!(
                f,
                "new generation {id} by pid {} ({})",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                name.as_deref().unwrap_or("?")
            ),
        }
    }
}

fn msg_text(msg: u8) -> (&'static str, &'static str) {
    let verb = match msg {
        NFT_MSG_NEWTABLE | NFT_MSG_NEWCHAIN | NFT_MSG_NEWRULE | NFT_MSG_NEWSET
        | NFT_MSG_NEWSETELEM | 18 | 22 => "add",
        _ => "delete",
    };
    let what = match ObjectKind::of(msg) {
        ObjectKind::Table => "table",
        ObjectKind::Chain => "chain",
        ObjectKind::Rule => "rule in",
        ObjectKind::Set => "set",
        ObjectKind::Element => "element of",
        ObjectKind::Other if (22..=24).contains(&msg) => "flowtable",
        ObjectKind::Other => "object",
    };
    (verb, what)
}

pub(crate) use netd_netlink::attrs;

use netd_netlink::attr;

fn attr_str(data: &[u8], want: u16) -> Option<String> {
    let v = attr(data, want)?;
    let v = v.split(|b| *b == 0).next().unwrap_or(&[]);
    Some(String::from_utf8_lossy(v).into_owned())
}

fn attr_be32(data: &[u8], want: u16) -> Option<u32> {
    let v = attr(data, want)?;
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

/// One netlink message: (type, flags, portid, payload after the nlmsghdr).
fn messages(data: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
    netd_netlink::messages(data).map(|(h, _, payload)| (h.ty, h.flags, h.portid, payload))
}

/// Parses the nf_tables notifications in one datagram. Anything else is skipped.
pub fn parse_events(data: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    for (ty, _flags, portid, payload) in messages(data) {
        if ty >> 8 != NFNL_SUBSYS_NFTABLES || payload.len() < 4 {
            continue;
        }
        let msg = (ty & 0xff) as u8;
        let family = payload[0];
        let a = &payload[4..];
        if msg == NFT_MSG_NEWGEN {
            out.push(Event::NewGen {
                id: attr_be32(a, 1).unwrap_or(0),
                pid: attr_be32(a, 2),
                name: attr_str(a, 3),
                portid,
            });
            continue;
        }
        let object = match ObjectKind::of(msg) {
            ObjectKind::Table => None,
            ObjectKind::Chain => attr_str(a, 3), // NFTA_CHAIN_NAME
            _ => attr_str(a, 2), // rule's chain, set name, element's set, object name
        };
        out.push(Event::Object {
            msg,
            family,
            table: attr_str(a, 1),
            object,
            portid,
        });
    }
    out
}

/// A socket subscribed to nf_tables notifications in the network namespace of the thread that
/// opened it.
pub struct Monitor {
    sock: NlSocket,
    buf: Vec<u8>,
}

/// Why [`Monitor::recv`] returned no events.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The receive buffer overflowed: some notifications were lost.
    #[error("notifications were lost (receive buffer overrun)")]
    Overrun,
    #[error("recv(nf_tables notifications): {0}")]
    Io(io::Error),
}

impl Monitor {
    pub fn open() -> Result<Monitor, NftError> {
        let sock = open_netfilter()?;
        sock.join_group(NFNLGRP_NFTABLES)
            .map_err(|source| NftError::Io {
                op: "joining NFNLGRP_NFTABLES",
                source,
            })?;
        // Best effort: without the larger buffer an overrun is reported and a check follows.
        let _ = sock.set_recv_buffer(MONITOR_RCVBUF);
        Ok(Monitor {
            sock,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    /// A handle on this socket's subscription, for a thread that commits a large batch to
    /// take it out of the group meanwhile (see [`crate::ruleset::Applier::commit_unheard`]).
    pub fn membership(&self) -> Result<Membership, NftError> {
        self.sock
            .membership(NFNLGRP_NFTABLES)
            .map_err(|source| NftError::Io {
                op: "dup(monitor socket)",
                source,
            })
    }

    /// Subscribes again (a no-op when subscribed): after someone's [`Membership::leave`]
    /// whose matching join may have failed.
    pub fn rejoin(&self) -> Result<(), NftError> {
        self.sock
            .join_group(NFNLGRP_NFTABLES)
            .map_err(|source| NftError::Io {
                op: "joining NFNLGRP_NFTABLES",
                source,
            })
    }

    /// Waits up to `timeout` for notifications; an empty list means none arrived in time.
    pub fn recv(&mut self, timeout: Duration) -> Result<Vec<Event>, RecvError> {
        self.sock.set_recv_timeout(timeout).map_err(RecvError::Io)?;
        match self.sock.recv(&mut self.buf) {
            Ok(data) => Ok(parse_events(data)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(RecvError::Overrun),
            Err(e) => Err(RecvError::Io(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dumps
// ---------------------------------------------------------------------------------------

/// One element as the kernel stores it, in a form both sides can produce.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElemPrint {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    /// Data bytes, or (for verdicts) the code's 4 bytes followed by the chain name.
    pub data: Option<Vec<u8>>,
    pub interval_end: bool,
}

impl ElemPrint {
    pub fn of(e: &SetElem) -> ElemPrint {
        ElemPrint {
            key: e.key.clone(),
            key_end: e.key_end.clone(),
            data: e.data.as_ref().map(|d| match d {
                ElemData::Value(v) => v.clone(),
                ElemData::Verdict(v) => {
                    let mut b = verdict_code(v).to_be_bytes().to_vec();
                    if let Verdict::Jump(c) | Verdict::Goto(c) = v {
                        b.extend_from_slice(c.as_bytes());
                    }
                    b
                }
            }),
            interval_end: e.flags & SET_ELEM_F_INTERVAL_END != 0,
        }
    }
}

/// The kernel's code of a verdict (as [`Verdict`] encodes it).
fn verdict_code(v: &Verdict) -> u32 {
    match v {
        Verdict::Drop => 0,
        Verdict::Accept => 1,
        Verdict::Continue => (-1i32) as u32,
        Verdict::Jump(_) => (-3i32) as u32,
        Verdict::Goto(_) => (-4i32) as u32,
        Verdict::Return => (-5i32) as u32,
    }
}

fn data_print(nest: &[u8]) -> Option<Vec<u8>> {
    if let Some(v) = attr(nest, 1) {
        return Some(v.to_vec()); // NFTA_DATA_VALUE
    }
    let verdict = attr(nest, 2)?; // NFTA_DATA_VERDICT
    let mut b = attr_be32(verdict, 1)?.to_be_bytes().to_vec();
    if let Some(c) = attr_str(verdict, 2) {
        b.extend_from_slice(c.as_bytes());
    }
    Some(b)
}

/// The elements in the payload (after nfgenmsg) of one `NEWSETELEM` message.
pub fn parse_elems(attrs_data: &[u8]) -> Vec<ElemPrint> {
    let mut out = Vec::new();
    let Some(list) = attr(attrs_data, 3) else {
        return out; // NFTA_SET_ELEM_LIST_ELEMENTS
    };
    for (ty, e) in attrs(list) {
        if ty != 1 {
            continue;
        }
        let key = attr(e, 1).and_then(|k| attr(k, 1)).unwrap_or(&[]).to_vec();
        let key_end = attr(e, 10).and_then(|k| attr(k, 1)).map(<[u8]>::to_vec);
        let data = attr(e, 2).and_then(data_print);
        let flags = attr_be32(e, 3).unwrap_or(0);
        out.push(ElemPrint {
            key,
            key_end,
            data,
            interval_end: flags & SET_ELEM_F_INTERVAL_END != 0,
        });
    }
    out
}

/// What a table holds, as far as a cheap consistency check needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableView {
    pub exists: bool,
    /// Chain name → number of rules.
    pub chains: BTreeMap<String, usize>,
    /// Base chain name → its policy (NF_ACCEPT 1, NF_DROP 0).
    pub policies: BTreeMap<String, u32>,
    /// Chain name → its rules in order, each as the kernel dumps its expressions
    /// (NFTA_RULE_EXPRESSIONS), so that a rule replaced by another one is seen even when the
    /// number of rules stays the same. In an expected view, only the chains listed here are
    /// compared.
    pub rules: BTreeMap<String, Vec<Vec<u8>>>,
    /// Set name → its elements, sorted.
    pub sets: BTreeMap<String, Vec<ElemPrint>>,
}

/// A socket for dumping table contents.
pub struct Inspector {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl Inspector {
    pub fn open() -> Result<Inspector, NftError> {
        let sock = open_netfilter()?;
        sock.set_recv_timeout(Duration::from_secs(5))
            .map_err(|source| NftError::Io {
                op: "setsockopt(SO_RCVTIMEO)",
                source,
            })?;
        Ok(Inspector {
            sock,
            seq: 1,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    /// Sends one dump request and returns the attribute payloads (after nfgenmsg) of its
    /// answers. `Ok(None)` means the kernel answered ENOENT.
    fn dump(&mut self, msg: u8, body: &[u8]) -> Result<Option<Vec<Vec<u8>>>, NftError> {
        for _ in 0..3 {
            match self.dump_once(msg, body)? {
                Dumped::Done(v) => return Ok(Some(v)),
                Dumped::Missing => return Ok(None),
                Dumped::Interrupted => continue,
            }
        }
        Err(NftError::Io {
            op: "dump",
            source: io::Error::other("dump kept being interrupted by concurrent changes"),
        })
    }

    fn dump_once(&mut self, msg: u8, body: &[u8]) -> Result<Dumped, NftError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = netd_netlink::nfnl_request(
            NFNL_SUBSYS_NFTABLES,
            msg as u16,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            1, // NFPROTO_INET
            body,
        );
        self.sock.send(&req).map_err(|source| NftError::Io {
            op: "send(dump request)",
            source,
        })?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let data = self
                .sock
                .recv(&mut self.buf)
                .map_err(|source| NftError::Io {
                    op: "recv(dump)",
                    source,
                })?;
            if data.is_empty() {
                return Err(NftError::Io {
                    op: "recv(dump)",
                    source: io::Error::other("empty answer"),
                });
            }
            for (ty, flags, _portid, payload) in messages(data) {
                if flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match ty {
                    NLMSG_DONE => {
                        return Ok(if interrupted {
                            Dumped::Interrupted
                        } else {
                            Dumped::Done(out)
                        });
                    }
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|b| -i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
                            .unwrap_or(0);
                        if errno == 0 {
                            continue;
                        }
                        if errno == libc::ENOENT {
                            return Ok(Dumped::Missing);
                        }
                        return Err(NftError::Io {
                            op: "dump",
                            source: io::Error::from_raw_os_error(errno),
                        });
                    }
                    _ if payload.len() >= 4 => out.push(payload[4..].to_vec()),
                    _ => {}
                }
            }
        }
    }

    /// Dumps table `table` (family inet): whether it exists, its chains with their rule
    /// counts, policies and rules, its sets with their elements.
    pub fn table(&mut self, table: &str) -> Result<TableView, NftError> {
        let mut view = TableView::default();
        let tables = self.dump(NFT_MSG_GETTABLE, &[])?.unwrap_or_default();
        view.exists = tables
            .iter()
            .any(|a| attr_str(a, 1).as_deref() == Some(table));
        if !view.exists {
            return Ok(view);
        }
        let name_attr = |ty: u16| {
            let mut b = Vec::new();
            put_str(&mut b, ty, table);
            b
        };
        for c in self
            .dump(NFT_MSG_GETCHAIN, &name_attr(1))?
            .unwrap_or_default()
        {
            if attr_str(&c, 1).as_deref() == Some(table) {
                if let Some(name) = attr_str(&c, 3) {
                    // NFTA_CHAIN_POLICY, present on base chains only.
                    if let Some(policy) = attr_be32(&c, 5) {
                        view.policies.insert(name.clone(), policy);
                    }
                    view.chains.insert(name, 0);
                }
            }
        }
        for r in self
            .dump(NFT_MSG_GETRULE, &name_attr(1))?
            .unwrap_or_default()
        {
            if attr_str(&r, 1).as_deref() != Some(table) {
                continue;
            }
            if let Some(chain) = attr_str(&r, 2) {
                *view.chains.entry(chain.clone()).or_default() += 1;
                // NFTA_RULE_EXPRESSIONS; a dump lists a chain's rules in their order.
                let exprs = attr(&r, 4).unwrap_or_default().to_vec();
                view.rules.entry(chain).or_default().push(exprs);
            }
        }
        let mut names = Vec::new();
        for s in self
            .dump(NFT_MSG_GETSET, &name_attr(1))?
            .unwrap_or_default()
        {
            if attr_str(&s, 1).as_deref() == Some(table) {
                names.extend(attr_str(&s, 2));
            }
        }
        for set in names {
            let mut body = name_attr(1);
            put_str(&mut body, 2, &set);
            let Some(msgs) = self.dump(NFT_MSG_GETSETELEM, &body)? else {
                continue; // removed meanwhile: reported as missing
            };
            let mut elems: Vec<ElemPrint> = msgs.iter().flat_map(|m| parse_elems(m)).collect();
            elems.sort();
            view.sets.insert(set, elems);
        }
        Ok(view)
    }
}

enum Dumped {
    Done(Vec<Vec<u8>>),
    Missing,
    Interrupted,
}

fn put_str(b: &mut Vec<u8>, ty: u16, s: &str) {
    let len = 4 + s.len() + 1;
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(s.as_bytes());
    b.push(0);
    b.resize((b.len() + 3) & !3, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, portid: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + attrs.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&portid.to_ne_bytes());
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(attrs);
        m
    }

    #[test]
    fn parses_a_transaction_of_notifications() {
        let mut a = Vec::new();
        put_str(&mut a, 1, "netd");
        put_str(&mut a, 2, "dnat4_any");
        let mut data = msg((10 << 8) | NFT_MSG_DELSETELEM as u16, 77, 1, &a);
        let mut g = Vec::new();
        g.extend_from_slice(&8u16.to_ne_bytes());
        g.extend_from_slice(&1u16.to_ne_bytes());
        g.extend_from_slice(&42u32.to_be_bytes());
        g.extend_from_slice(&8u16.to_ne_bytes());
        g.extend_from_slice(&2u16.to_ne_bytes());
        g.extend_from_slice(&1234u32.to_be_bytes());
        put_str(&mut g, 3, "nft");
        data.extend(msg((10 << 8) | NFT_MSG_NEWGEN as u16, 77, 0, &g));
        let ev = parse_events(&data);
        assert_eq!(ev.len(), 2);
        assert!(ev[0].touches("netd"));
        assert!(!ev[0].touches("other"));
        assert_eq!(ev[0].to_string(), "delete element of inet netd dnat4_any");
        assert_eq!(
            ev[1],
            Event::NewGen {
                id: 42,
                pid: Some(1234),
                name: Some("nft".into()),
                portid: 77
            }
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for n in 0..2000 {
            let len = n % 300;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            if len >= 20 {
                // Plausible headers make the parser go deeper.
                buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
                buf[5] = 10;
            }
            let _ = parse_events(&buf);
            let _ = parse_elems(&buf);
        }
    }

    #[test]
    fn elem_prints_match_for_verdicts_and_values() {
        let e = SetElem {
            key: vec![1, 2, 3, 4],
            key_end: None,
            data: Some(ElemData::Verdict(Verdict::Goto("to_nat".into()))),
            flags: 0,
        };
        // What the kernel dumps for it.
        let mut verdict = Vec::new();
        verdict.extend_from_slice(&8u16.to_ne_bytes());
        verdict.extend_from_slice(&1u16.to_ne_bytes());
        verdict.extend_from_slice(&((-4i32) as u32).to_be_bytes());
        put_str(&mut verdict, 2, "to_nat");
        let mut data = Vec::new();
        nest(&mut data, 2, &verdict);
        let mut key = Vec::new();
        key.extend_from_slice(&8u16.to_ne_bytes());
        key.extend_from_slice(&1u16.to_ne_bytes());
        key.extend_from_slice(&[1, 2, 3, 4]);
        let mut el = Vec::new();
        nest(&mut el, 1, &key);
        nest(&mut el, 2, &data);
        let mut list = Vec::new();
        nest(&mut list, 1, &el);
        let mut top = Vec::new();
        nest(&mut top, 3, &list);
        assert_eq!(parse_elems(&top), vec![ElemPrint::of(&e)]);
    }

    fn nest(b: &mut Vec<u8>, ty: u16, inner: &[u8]) {
        b.extend_from_slice(&((4 + inner.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&(ty | 0x8000).to_ne_bytes());
        b.extend_from_slice(inner);
    }
}
