//! The netlink plumbing netd's netfilter edges share: a bound netlink socket ([`NlSocket`], on
//! netlink-sys; `NETLINK_NETFILTER`, or `NETLINK_ROUTE` for the few look-ups conntrack needs)
//! and the pure walkers over what it sends and receives ([`messages`], [`attrs`], [`ack`],
//! [`nfnl_request`]).
//!
//! nf_tables batches, the nf_tables monitor and dumps, and ctnetlink all speak nfnetlink over
//! the same kind of socket; they differ only in the subsystem byte of the message type and in
//! their attributes. Keeping the socket and the header/attribute/ack parsing here means the
//! unsafe code and the netlink constants exist once.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use netlink_sys::Socket;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
/// An ack carries only the request's header, not its payload (NETLINK_CAP_ACK).
pub const NLM_F_CAPPED: u16 = 0x100;
/// An ack carries extended-ack attributes (NETLINK_EXT_ACK).
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
const NETLINK_NETFILTER: isize = 12;
const NETLINK_ROUTE: isize = 0;
/// `<linux/netlink.h>` socket options at `SOL_NETLINK`.
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_DROP_MEMBERSHIP: libc::c_int = 2;

/// A netlink socket bound in the network namespace of the thread that opened it.
pub struct NlSocket {
    sock: Socket,
    portid: u32,
}

impl NlSocket {
    /// nfnetlink: nf_tables, its notifications, ctnetlink.
    pub fn netfilter() -> io::Result<NlSocket> {
        NlSocket::open(NETLINK_NETFILTER)
    }

    /// rtnetlink, for look-ups the netfilter edges need (the host's addresses).
    pub fn route() -> io::Result<NlSocket> {
        NlSocket::open(NETLINK_ROUTE)
    }

    fn open(protocol: isize) -> io::Result<NlSocket> {
        let mut sock = Socket::new(protocol)?;
        let addr = sock.bind_auto()?;
        Ok(NlSocket {
            sock,
            portid: addr.port_number(),
        })
    }

    /// The port id the kernel gave this socket: nf_tables notifications name it as the
    /// sender of a batch, which is how the healer recognises netd's own changes.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Asks for capped acks (an error does not echo a 60 KiB element message back) and
    /// extended acks (the kernel says which attribute it refused). Both are optional extras
    /// older kernels lack, so failures are ignored.
    pub fn request_extended_acks(&self) {
        let _ = self.sock.set_cap_ack(true);
        let _ = self.sock.set_ext_ack(true);
    }

    pub fn join_group(&self, group: u32) -> io::Result<()> {
        self.sock.add_membership(group)
    }

    /// A handle on this socket's membership of multicast `group`, usable from another
    /// thread: it holds a duplicate of the socket's descriptor, so it changes this very
    /// socket's subscription (see [`Membership`]).
    pub fn membership(&self, group: u32) -> io::Result<Membership> {
        Ok(Membership {
            fd: self.sock.as_fd().try_clone_to_owned()?,
            group,
        })
    }

    /// Blocks `recv` for at most `t` (at least 1 ms: a zero timeout means forever).
    pub fn set_recv_timeout(&self, t: Duration) -> io::Result<()> {
        let t = t.max(Duration::from_millis(1));
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        setsockopt(&self.sock, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    /// Raises the send buffer past `net.core.wmem_max` when allowed (CAP_NET_ADMIN), else as
    /// far as the sysctl permits.
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        self.set_buffer(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)
    }

    /// The receive buffer, likewise.
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<()> {
        self.set_buffer(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)
    }

    fn set_buffer(&self, force: libc::c_int, plain: libc::c_int, bytes: usize) -> io::Result<()> {
        let size = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        setsockopt(&self.sock, libc::SOL_SOCKET, force, &size)
            .or_else(|_| setsockopt(&self.sock, libc::SOL_SOCKET, plain, &size))
    }

    /// Sends one datagram, all of it or an error.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let sent = loop {
            match self.sock.send(bytes, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if sent != bytes.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
        }
        Ok(())
    }

    /// Receives one datagram into `buf` (whose capacity is the largest datagram accepted) and
    /// returns it. A timeout is `ErrorKind::WouldBlock`; EINTR is retried.
    pub fn recv<'a>(&self, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        loop {
            buf.clear();
            match self.sock.recv(buf, 0) {
                Ok(_) => return Ok(&buf[..]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One socket's membership of one multicast group, as a handle another thread can hold.
///
/// The kernel builds some notifications only while anyone is subscribed (nf_tables checks
/// `nfnetlink_has_listeners` before building one per set element), so leaving the group
/// for a moment saves the sender that work; whoever leaves must account for what the
/// socket did not hear meanwhile. Both calls are idempotent.
pub struct Membership {
    fd: OwnedFd,
    group: u32,
}

impl Membership {
    /// `NETLINK_DROP_MEMBERSHIP`: from now on the socket receives nothing of the group.
    pub fn leave(&self) -> io::Result<()> {
        setsockopt(
            &self.fd,
            libc::SOL_NETLINK,
            NETLINK_DROP_MEMBERSHIP,
            &self.group,
        )
    }

    /// `NETLINK_ADD_MEMBERSHIP`: the socket receives the group's messages again.
    pub fn join(&self) -> io::Result<()> {
        setsockopt(
            &self.fd,
            libc::SOL_NETLINK,
            NETLINK_ADD_MEMBERSHIP,
            &self.group,
        )
    }
}

fn setsockopt<T>(
    sock: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: v points at a live value of the size passed; the fd stays open for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A netlink message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub portid: u32,
}

/// The messages of one datagram: (header, the whole message, its payload after the header).
/// Stops at the first malformed one; never panics.
pub fn messages(data: &[u8]) -> impl Iterator<Item = (Header, &[u8], &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let h = data.get(off..off + NLMSG_HDRLEN)?;
        let len = u32::from_ne_bytes(h[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || off + len > data.len() {
            return None;
        }
        let header = Header {
            ty: u16::from_ne_bytes(h[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(h[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(h[8..12].try_into().ok()?),
            portid: u32::from_ne_bytes(h[12..16].try_into().ok()?),
        };
        let msg = &data[off..off + len];
        off += (len + 3) & !3;
        Some((header, msg, &msg[NLMSG_HDRLEN..]))
    })
}

/// The attributes in `data` as (type without the nested/byte-order flags, value). Stops at
/// the first malformed one; never panics.
pub fn attrs(data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let h = data.get(off..off + 4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > data.len() {
            return None;
        }
        let val = &data[off + 4..off + len];
        off += (len + 3) & !3;
        Some((ty, val))
    })
}

/// The first attribute of type `want`.
pub fn attr(data: &[u8], want: u16) -> Option<&[u8]> {
    attrs(data).find(|(t, _)| *t == want).map(|(_, v)| v)
}

/// Appends one attribute, padded to 4 bytes.
pub fn push_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + ((4 - len % 4) % 4), 0);
}

/// What an `NLMSG_ERROR` message says: `errno` 0 is a plain acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// A positive errno, or 0.
    pub errno: i32,
    /// The kernel's extended-ack message, if it sent one.
    pub message: Option<String>,
    /// The offset, in the request, of the attribute the kernel refused.
    pub offset: Option<u32>,
}

/// Parses an `NLMSG_ERROR` message (`msg` is the whole message, `flags` its header's).
pub fn ack(msg: &[u8], flags: u16) -> Option<Ack> {
    let code = i32::from_ne_bytes(msg.get(16..20)?.try_into().ok()?);
    let mut a = Ack {
        errno: -code,
        message: None,
        offset: None,
    };
    if flags & NLM_F_ACK_TLVS == 0 {
        return Some(a);
    }
    // nlmsgerr = error (4) + the request's header (16), plus its payload unless capped.
    let req_len = msg
        .get(20..24)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| u32::from_ne_bytes(b) as usize);
    let tlvs = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN + 4 + NLMSG_HDRLEN
    } else {
        NLMSG_HDRLEN + 4 + ((req_len + 3) & !3)
    };
    for (ty, val) in attrs(msg.get(tlvs..).unwrap_or(&[])) {
        match ty {
            NLMSGERR_ATTR_MSG => {
                let s = val.split(|b| *b == 0).next().unwrap_or(&[]);
                a.message = Some(String::from_utf8_lossy(s).into_owned());
            }
            NLMSGERR_ATTR_OFFS if val.len() >= 4 => {
                a.offset = val[..4].try_into().ok().map(u32::from_ne_bytes);
            }
            _ => {}
        }
    }
    Some(a)
}

/// A netlink message: header, then `body` (which starts with the family's own header).
pub fn request(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body.len();
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&ty.to_ne_bytes());
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(body);
    req
}

/// One nfnetlink request: header, `nfgenmsg` (family, version 0, resource id 0), attributes.
pub fn nfnl_request(
    subsys: u16,
    msg: u16,
    flags: u16,
    seq: u32,
    family: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + body.len());
    b.extend_from_slice(&[family, 0, 0, 0]);
    b.extend_from_slice(body);
    request((subsys << 8) | msg, flags, seq, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_walks_back_to_its_parts() {
        let mut body = Vec::new();
        push_attr(&mut body, 1, b"netd\0");
        push_attr(&mut body, 2, &7u32.to_be_bytes());
        let req = nfnl_request(10, 1, NLM_F_REQUEST | NLM_F_DUMP, 42, 1, &body);
        let mut all = req.clone();
        all.extend_from_slice(&req);
        let msgs: Vec<_> = messages(&all).collect();
        assert_eq!(msgs.len(), 2);
        let (h, whole, payload) = msgs[0];
        assert_eq!(
            h,
            Header {
                ty: (10 << 8) | 1,
                flags: NLM_F_REQUEST | NLM_F_DUMP,
                seq: 42,
                portid: 0
            }
        );
        assert_eq!(whole.len(), req.len());
        assert_eq!(payload[0], 1);
        let a: Vec<_> = attrs(&payload[4..]).collect();
        assert_eq!(a, vec![(1, &b"netd\0"[..]), (2, &[0, 0, 0, 7][..])]);
        assert_eq!(attr(&payload[4..], 2), Some(&[0, 0, 0, 7][..]));
    }

    #[test]
    fn acks_carry_errno_and_extended_attributes() {
        // NLMSG_ERROR, capped, with a message and an offset.
        let mut tlv = Vec::new();
        push_attr(&mut tlv, NLMSGERR_ATTR_MSG, b"no such set\0");
        push_attr(&mut tlv, NLMSGERR_ATTR_OFFS, &36u32.to_ne_bytes());
        let mut m = Vec::new();
        let len = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN + tlv.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        m.extend_from_slice(&(100u32).to_ne_bytes());
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&tlv);
        let (h, whole, _) = messages(&m).next().unwrap();
        let a = ack(whole, h.flags).unwrap();
        assert_eq!(a.errno, libc::ENOENT);
        assert_eq!(a.message.as_deref(), Some("no such set"));
        assert_eq!(a.offset, Some(36));
        // Without NLM_F_ACK_TLVS the attributes are not looked for.
        assert_eq!(ack(whole, 0).unwrap().message, None);
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..64u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = messages(&data).count();
            let _ = attrs(&data).count();
            let _ = ack(&data, NLM_F_ACK_TLVS);
        }
        // A length field larger than the data ends the walk.
        let mut m = nfnl_request(1, 1, 0, 1, 2, &[]);
        m[0] = 200;
        assert_eq!(messages(&m).count(), 0);
    }
}
