//! Clearing stale conntrack entries over netlink (NETLINK_NETFILTER, ctnetlink).
//!
//! After an ADD: a client that kept sending UDP to `hostIP:port` before a port was published
//! there has a conntrack entry without DNAT (the datagrams went to the host itself, or to a
//! container that published the port before). UDP has no handshake to end that entry, so as
//! long as the client keeps sending, the entry lives on and the new mapping never sees the
//! flow. After an endpoint publishes UDP ports, netd deletes the UDP entries whose original
//! destination is one of the new bindings, as Docker and netavark do ([`clear_udp`]).
//!
//! After a DEL: the released endpoint's entries (any protocol, DNATed to it or not) would keep
//! carrying a client's flow to its address, and so to the next container that gets that
//! address. netd deletes every entry whose original or reply tuple holds one of the
//! endpoint's addresses ([`clear_addrs`]).
//!
//! The request encoding and the entry matching are pure ([`dump_request`], [`delete_request`],
//! [`parse_flows`], [`Flow::matches`], [`Flow::involves`], [`addr_dump_request`],
//! [`parse_addrs`]); [`clear_udp`] and [`clear_addrs`] do the socket work in the calling
//! thread's network namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use netd_netlink::{
    attrs, push_attr, NlSocket, NLA_F_NESTED, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};

use crate::model::Proto;
use crate::ports::{Binding, Family};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const IPPROTO_UDP: u8 = 17;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack netlink: {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("conntrack netlink: malformed answer: {0}")]
    Malformed(&'static str),
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> ConntrackError {
    move |source| ConntrackError::Io { op, source }
}

/// One conntrack entry's original tuple, as the dump gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub family: u8,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub zone: Option<u16>,
    /// Source and destination of the reply tuple (after NAT: a DNATed flow's reply comes
    /// from the container's address).
    pub reply: Option<(IpAddr, IpAddr)>,
    /// The CTA_TUPLE_ORIG payload, sent back as is to delete the entry.
    orig: Vec<u8>,
}

impl Flow {
    /// Whether this is a UDP flow to one of `bindings`: same family and port, and the bound
    /// address when the binding has one, else any of the host's `local` addresses (so that
    /// flows of the host or its containers to a remote port of the same number are kept).
    pub fn matches(&self, bindings: &[Binding], local: &[IpAddr]) -> bool {
        self.proto == IPPROTO_UDP
            && bindings.iter().any(|b| {
                b.proto == Proto::Udp
                    && b.port == self.dport
                    && match b.family {
                        Family::V4 => self.family == AF_INET,
                        Family::V6 => self.family == AF_INET6,
                    }
                    && match b.addr {
                        Some(a) => a == self.dst,
                        None => local.contains(&self.dst),
                    }
            })
    }
}

impl Flow {
    /// Whether any address of the entry, original or reply, is one of `addrs`: a flow from or
    /// to that address, DNATed to it, or masqueraded from it.
    pub fn involves(&self, addrs: &[IpAddr]) -> bool {
        let mut all = vec![self.src, self.dst];
        if let Some((s, d)) = self.reply {
            all.extend([s, d]);
        }
        all.iter().any(|a| addrs.contains(a))
    }
}

fn message(msg: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    netd_netlink::nfnl_request(NFNL_SUBSYS_CTNETLINK, msg, flags, seq, family, attrs)
}

/// `IPCTNL_MSG_CT_GET` dump of the whole conntrack table (every family).
pub fn dump_request(seq: u32) -> Vec<u8> {
    message(
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        libc::AF_UNSPEC as u8,
        &[],
    )
}

/// `IPCTNL_MSG_CT_DELETE` of one entry, by its original tuple (and zone).
pub fn delete_request(flow: &Flow, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    push_attr(&mut attrs, CTA_TUPLE_ORIG | NLA_F_NESTED, &flow.orig);
    if let Some(z) = flow.zone {
        push_attr(&mut attrs, CTA_ZONE, &z.to_be_bytes());
    }
    message(
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        flow.family,
        &attrs,
    )
}

fn ip_of(p: &[u8]) -> Option<IpAddr> {
    match p.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3]))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(p).ok()?))),
        _ => None,
    }
}

fn port_of(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

/// The flow of one `IPCTNL_MSG_CT_NEW` dump message (payload after the netlink header).
fn parse_entry(payload: &[u8]) -> Option<Flow> {
    let family = *payload.first()?;
    let mut orig = None;
    let mut reply = None;
    let mut zone = None;
    for (ty, p) in attrs(payload.get(4..)?) {
        match ty {
            CTA_TUPLE_ORIG => orig = Some(p),
            CTA_TUPLE_REPLY => reply = tuple_addrs(p),
            CTA_ZONE => zone = port_of(p),
            _ => {}
        }
    }
    let orig = orig?;
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for (ty, p) in attrs(orig) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, p) in attrs(p) {
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip_of(p),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip_of(p),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p) in attrs(p) {
                    match ty {
                        CTA_PROTO_NUM => proto = p.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port_of(p),
                        CTA_PROTO_DST_PORT => dport = port_of(p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Flow {
        family,
        proto: proto?,
        src: src?,
        dst: dst?,
        sport: sport.unwrap_or(0),
        dport: dport.unwrap_or(0),
        zone,
        reply,
        orig: orig.to_vec(),
    })
}

/// Source and destination address of a tuple.
fn tuple_addrs(tuple: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let (mut src, mut dst) = (None, None);
    for (ty, p) in attrs(tuple) {
        if ty == CTA_TUPLE_IP {
            for (ty, p) in attrs(p) {
                match ty {
                    CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip_of(p),
                    CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip_of(p),
                    _ => {}
                }
            }
        }
    }
    Some((src?, dst?))
}

/// What one datagram of answers held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed<T> {
    pub items: Vec<T>,
    pub done: bool,
    /// Errnos of NLMSG_ERROR answers (0 is an acknowledgement).
    pub errors: Vec<i32>,
}

/// Splits a datagram of netlink messages into DONE, errors/acks and items (`item` gets each
/// other message's type and payload). A datagram that does not split into whole messages is
/// malformed.
fn parse_messages<T>(
    b: &[u8],
    item: impl Fn(u16, &[u8]) -> Option<T>,
) -> Result<Parsed<T>, ConntrackError> {
    let mut out = Parsed {
        items: Vec::new(),
        done: false,
        errors: Vec::new(),
    };
    let mut consumed = 0;
    for (h, msg, payload) in netd_netlink::messages(b) {
        consumed += (msg.len() + 3) & !3;
        match h.ty {
            NLMSG_DONE => out.done = true,
            NLMSG_ERROR => {
                let ack = netd_netlink::ack(msg, 0)
                    .ok_or(ConntrackError::Malformed("short error message"))?;
                out.errors.push(ack.errno);
            }
            _ => out.items.extend(item(h.ty, payload)),
        }
    }
    if consumed < b.len() {
        return Err(ConntrackError::Malformed("netlink message length"));
    }
    Ok(out)
}

/// Parses a datagram of ctnetlink answers: dump entries, DONE, errors and acks.
pub fn parse_flows(b: &[u8]) -> Result<Parsed<Flow>, ConntrackError> {
    parse_messages(b, |_, p| parse_entry(p))
}

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// `RTM_GETADDR` dump of every address of every interface.
pub fn addr_dump_request(seq: u32) -> Vec<u8> {
    // struct ifaddrmsg: family (all), prefixlen, flags, scope, index
    netd_netlink::request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, &[0u8; 8])
}

/// The local address of one `RTM_NEWADDR` (IFA_LOCAL, else IFA_ADDRESS).
fn parse_addr(ty: u16, payload: &[u8]) -> Option<IpAddr> {
    if ty != RTM_NEWADDR {
        return None;
    }
    let (mut local, mut address) = (None, None);
    for (t, p) in attrs(payload.get(8..)?) {
        match t {
            IFA_LOCAL => local = ip_of(p),
            IFA_ADDRESS => address = ip_of(p),
            _ => {}
        }
    }
    local.or(address)
}

/// Parses a datagram of rtnetlink address answers.
pub fn parse_addrs(b: &[u8]) -> Result<Parsed<IpAddr>, ConntrackError> {
    parse_messages(b, parse_addr)
}

/// How long a ctnetlink or rtnetlink answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn open(sock: io::Result<NlSocket>) -> Result<NlSocket, ConntrackError> {
    let sock = sock.map_err(io_err("socket(AF_NETLINK)"))?;
    sock.set_recv_timeout(ANSWER_TIMEOUT)
        .map_err(io_err("setsockopt(SO_RCVTIMEO)"))?;
    Ok(sock)
}

/// Sends a dump request and collects every item of the answer.
fn dump<T>(
    sock: &NlSocket,
    request: &[u8],
    what: &'static str,
    parse: impl Fn(&[u8]) -> Result<Parsed<T>, ConntrackError>,
) -> Result<Vec<T>, ConntrackError> {
    sock.send(request).map_err(io_err("send"))?;
    let mut buf = Vec::with_capacity(1 << 16);
    let mut out = Vec::new();
    loop {
        let p = parse(sock.recv(&mut buf).map_err(io_err("recv"))?)?;
        if let Some(e) = p.errors.iter().find(|e| **e != 0) {
            return Err(ConntrackError::Io {
                op: what,
                source: io::Error::from_raw_os_error(*e),
            });
        }
        out.extend(p.items);
        if p.done {
            return Ok(out);
        }
    }
}

/// The host's addresses (of the calling thread's network namespace).
pub fn local_addrs() -> Result<Vec<IpAddr>, ConntrackError> {
    let sock = open(NlSocket::route())?;
    dump(
        &sock,
        &addr_dump_request(1),
        "listing addresses",
        parse_addrs,
    )
}

/// Deletes every UDP conntrack entry (of the calling thread's network namespace) whose
/// original destination is one of `bindings` (see [`Flow::matches`]). Returns how many were
/// deleted; entries that vanished meanwhile are not errors.
pub fn clear_udp(bindings: &[Binding]) -> Result<usize, ConntrackError> {
    if !bindings.iter().any(|b| b.proto == Proto::Udp) {
        return Ok(0);
    }
    let local = if bindings.iter().any(|b| b.addr.is_none()) {
        local_addrs()?
    } else {
        Vec::new()
    };
    delete_where(|f| f.matches(bindings, &local))
}

/// Deletes every conntrack entry (of the calling thread's network namespace, any protocol)
/// that involves one of `addrs` (see [`Flow::involves`]). Returns how many were deleted.
pub fn clear_addrs(addrs: &[IpAddr]) -> Result<usize, ConntrackError> {
    if addrs.is_empty() {
        return Ok(0);
    }
    delete_where(|f| f.involves(addrs))
}

/// Dumps the table once and deletes the entries `stale` picks, by original tuple and zone;
/// entries that vanished meanwhile are not errors.
fn delete_where(stale: impl Fn(&Flow) -> bool) -> Result<usize, ConntrackError> {
    let sock = open(NlSocket::netfilter())?;
    let stale: Vec<Flow> = dump(
        &sock,
        &dump_request(1),
        "dumping the conntrack table",
        parse_flows,
    )?
    .into_iter()
    .filter(|f| stale(f))
    .collect();
    let mut buf = Vec::with_capacity(4096);
    let mut deleted = 0;
    for (i, flow) in stale.iter().enumerate() {
        sock.send(&delete_request(flow, 2 + i as u32))
            .map_err(io_err("send"))?;
        let p = parse_flows(sock.recv(&mut buf).map_err(io_err("recv"))?)?;
        match p.errors.first() {
            Some(0) => deleted += 1,
            Some(e) if *e == libc::ENOENT => {}
            Some(e) => {
                return Err(ConntrackError::Io {
                    op: "deleting a conntrack entry",
                    source: io::Error::from_raw_os_error(*e),
                })
            }
            None => return Err(ConntrackError::Malformed("no acknowledgement")),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NLM_F_MULTI: u16 = 0x2;

    fn entry(family: u8, src: &[u8], dst: &[u8], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let (s, d) = if family == AF_INET {
            (CTA_IP_V4_SRC, CTA_IP_V4_DST)
        } else {
            (CTA_IP_V6_SRC, CTA_IP_V6_DST)
        };
        let mut ip = Vec::new();
        push_attr(&mut ip, s, src);
        push_attr(&mut ip, d, dst);
        let mut pr = Vec::new();
        push_attr(&mut pr, CTA_PROTO_NUM, &[proto]);
        push_attr(&mut pr, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
        push_attr(&mut pr, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
        let mut tuple = Vec::new();
        push_attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
        push_attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &pr);
        let mut a = Vec::new();
        push_attr(&mut a, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
        push_attr(&mut a, CTA_ZONE, &7u16.to_be_bytes());
        message(0, NLM_F_MULTI, 1, family, &a)
    }

    /// A TCP entry of a DNATed flow: client -> host:8080, answered by ctr:80 -> client.
    fn dnat_entry(client: [u8; 4], host: [u8; 4], ctr: [u8; 4]) -> Vec<u8> {
        let tuple = |src: &[u8], dst: &[u8], sport: u16, dport: u16| {
            let mut ip = Vec::new();
            push_attr(&mut ip, CTA_IP_V4_SRC, src);
            push_attr(&mut ip, CTA_IP_V4_DST, dst);
            let mut pr = Vec::new();
            push_attr(&mut pr, CTA_PROTO_NUM, &[6]);
            push_attr(&mut pr, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
            push_attr(&mut pr, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
            let mut t = Vec::new();
            push_attr(&mut t, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
            push_attr(&mut t, CTA_TUPLE_PROTO | NLA_F_NESTED, &pr);
            t
        };
        let mut a = Vec::new();
        push_attr(
            &mut a,
            CTA_TUPLE_ORIG | NLA_F_NESTED,
            &tuple(&client, &host, 40000, 8080),
        );
        push_attr(
            &mut a,
            CTA_TUPLE_REPLY | NLA_F_NESTED,
            &tuple(&ctr, &client, 80, 40000),
        );
        message(0, NLM_F_MULTI, 1, AF_INET, &a)
    }

    #[test]
    fn released_addresses_match_original_and_reply_tuples() {
        let p = parse_flows(&dnat_entry([192, 0, 2, 2], [192, 0, 2, 1], [10, 1, 0, 2])).unwrap();
        let f = &p.items[0];
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(f.reply, Some((a("10.1.0.2"), a("192.0.2.2"))));
        // DNATed to the container: only the reply tuple names it.
        assert!(f.involves(&[a("10.1.0.2")]));
        assert!(f.involves(&[a("192.0.2.2")]));
        assert!(!f.involves(&[a("10.1.0.3"), a("fd00::2")]));
        assert!(!f.involves(&[]));
    }

    fn b(family: Family, addr: Option<&str>, port: u16) -> Binding {
        Binding {
            family,
            proto: Proto::Udp,
            addr: addr.map(|a| a.parse().unwrap()),
            port,
        }
    }

    #[test]
    fn parses_dump_entries_and_matches_bindings() {
        let mut dgram = entry(AF_INET, &[192, 0, 2, 2], &[192, 0, 2, 1], 17, 40000, 5353);
        dgram.extend(entry(
            AF_INET,
            &[192, 0, 2, 2],
            &[192, 0, 2, 1],
            6,
            40000,
            5353,
        ));
        let v6dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        dgram.extend(entry(
            AF_INET6,
            &Ipv6Addr::LOCALHOST.octets(),
            &v6dst.octets(),
            17,
            1,
            5353,
        ));
        dgram.extend(message(0, 0, 1, 0, &[]).iter().enumerate().map(|(i, x)| {
            // turn the empty message into NLMSG_DONE
            if i == 4 {
                NLMSG_DONE as u8
            } else if i == 5 {
                0
            } else {
                *x
            }
        }));
        let p = parse_flows(&dgram).unwrap();
        assert!(p.done);
        assert_eq!(p.items.len(), 3);
        let f = &p.items[0];
        assert_eq!(
            (f.proto, f.sport, f.dport, f.zone),
            (17, 40000, 5353, Some(7))
        );
        assert_eq!(f.dst, "192.0.2.1".parse::<IpAddr>().unwrap());

        let local: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), IpAddr::V6(v6dst)];
        let any4 = [b(Family::V4, None, 5353)];
        assert!(f.matches(&any4, &local));
        assert!(!f.matches(&any4, &[]), "not to a host address");
        assert!(!p.items[1].matches(&any4, &local), "TCP is left alone");
        assert!(!p.items[2].matches(&any4, &local), "other family");
        assert!(p.items[2].matches(&[b(Family::V6, None, 5353)], &local));
        assert!(f.matches(&[b(Family::V4, Some("192.0.2.1"), 5353)], &[]));
        assert!(!f.matches(&[b(Family::V4, Some("192.0.2.3"), 5353)], &local));
        assert!(!f.matches(&[b(Family::V4, None, 5354)], &local));

        // The delete request carries the original tuple back, and the zone.
        let del = delete_request(f, 9);
        assert_eq!(
            u16::from_ne_bytes([del[4], del[5]]),
            (1 << 8) | IPCTNL_MSG_CT_DELETE
        );
        assert_eq!(del[16], AF_INET);
        let a: Vec<(u16, Vec<u8>)> = attrs(&del[20..]).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(a[0], (CTA_TUPLE_ORIG, f.orig.clone()));
        assert_eq!(a[1], (CTA_ZONE, vec![0, 7]));
    }

    #[test]
    fn parses_address_dumps() {
        let mut a = Vec::new();
        push_attr(&mut a, IFA_ADDRESS, &[192, 0, 2, 9]);
        push_attr(&mut a, IFA_LOCAL, &[192, 0, 2, 1]);
        let mut payload = vec![AF_INET, 24, 0, 0, 2, 0, 0, 0];
        payload.extend(a);
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend(payload);
        let p = parse_addrs(&m).unwrap();
        assert_eq!(p.items, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        let req = addr_dump_request(3);
        assert_eq!(req.len(), 24);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), RTM_GETADDR);
    }

    #[test]
    fn errors_are_reported() {
        let mut m = message(0, 0, 1, 0, &[]);
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.truncate(16);
        m.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_flows(&m).unwrap().errors, vec![libc::ENOENT]);
        assert!(parse_flows(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
