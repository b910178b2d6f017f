//! The NETLINK_NETFILTER socket: one sendmsg per batch, then every acknowledgement.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::batch::{Batch, ElemGroup};
use super::NftError;

const NETLINK_NETFILTER: libc::c_int = 12;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSG_ERROR: u16 = 2;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// How long to wait for the kernel's answer to a batch before giving up.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A NETLINK_NETFILTER socket, bound, in the network namespace of the calling thread.
pub(crate) fn open_netfilter() -> Result<OwnedFd, NftError> {
    // SAFETY: plain syscall; the fd is owned right after creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(NftError::io("socket(NETLINK_NETFILTER)"));
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sa is a valid sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(NftError::io("bind(netlink)"));
    }
    Ok(fd)
}

/// A netlink socket bound to the network namespace of the thread that opened it.
pub struct Socket {
    fd: OwnedFd,
    next_seq: u32,
}

/// One message the kernel rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub desc: String,
    pub errno: i32,
    pub elem: Option<(ElemGroup, usize)>,
    pub extack: Option<String>,
}

impl Socket {
    pub fn open() -> Result<Socket, NftError> {
        let fd = open_netfilter()?;
        // Capped acks keep an error from echoing a 60 KiB element message back; extended
        // acks tell which attribute (element) was rejected. Both are optional extras.
        let _ = setsockopt_int(&fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = setsockopt_int(&fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let tv = libc::timeval {
            tv_sec: ACK_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NftError::io("setsockopt(SO_RCVTIMEO)"));
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket { fd, next_seq: seed })
    }

    /// Sends the batch with one sendmsg and waits for every acknowledgement. On error the
    /// kernel has applied nothing (the transaction is aborted as a whole).
    pub fn commit(&mut self, batch: &Batch) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        let begin = self.next_seq;
        let n = batch.len() as u32;
        self.next_seq = self.next_seq.wrapping_add(n + 2);
        let enc = batch.encode(begin)?;

        // The default buffers are what makes big batches fail: the send buffer must hold the
        // whole batch (else EMSGSIZE) and the receive buffer every ack (else ENOBUFS, even
        // though the kernel committed). Each ack costs about 1 KiB of skb truesize.
        let snd = enc.bytes.len() + 64 * 1024;
        let rcv = batch.len() * 1024 + 256 * 1024;
        set_buf(&self.fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, snd)?;
        set_buf(&self.fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, rcv)?;

        // SAFETY: sockaddr_nl is plain old data; all zeroes is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let mut iov = libc::iovec {
            iov_base: enc.bytes.as_ptr() as *mut libc::c_void,
            iov_len: enc.bytes.len(),
        };
        // SAFETY: msghdr is plain old data; the null pointers of all zeroes are set below.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_name = &mut sa as *mut libc::sockaddr_nl as *mut libc::c_void;
        mh.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        // SAFETY: mh points at live locals and at enc.bytes, which outlive the call.
        let sent = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &mh, 0) };
        if sent < 0 {
            return Err(NftError::io("sendmsg(batch)"));
        }
        if sent as usize != enc.bytes.len() {
            return Err(NftError::Io {
                op: "sendmsg(batch)",
                source: io::Error::new(io::ErrorKind::WriteZero, "short send"),
            });
        }
        self.collect_acks(batch, enc.begin_seq, enc.first_seq)
    }

    fn collect_acks(&self, batch: &Batch, begin_seq: u32, first_seq: u32) -> Result<(), NftError> {
        let n = batch.len();
        let mut acked = vec![false; n];
        let mut remaining = n;
        let mut rejections: Vec<(usize, Rejection)> = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        while remaining > 0 {
            // SAFETY: buf is a writable buffer of the length passed.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EAGAIN) => NftError::Timeout {
                        missing: remaining,
                        total: n,
                    },
                    Some(libc::EINTR) => continue,
                    _ => NftError::Io {
                        op: "recv(acks)",
                        source: e,
                    },
                });
            }
            let data = &buf[..got as usize];
            let mut off = 0;
            while off + 16 <= data.len() {
                let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap()) as usize;
                if len < 16 || off + len > data.len() {
                    break;
                }
                let ty = u16::from_ne_bytes(data[off + 4..off + 6].try_into().unwrap());
                let flags = u16::from_ne_bytes(data[off + 6..off + 8].try_into().unwrap());
                let seq = u32::from_ne_bytes(data[off + 8..off + 12].try_into().unwrap());
                let msg = &data[off..off + len];
                off += (len + 3) & !3;
                if ty != NLMSG_ERROR || msg.len() < 20 {
                    continue;
                }
                let errno = -i32::from_ne_bytes(msg[16..20].try_into().unwrap());
                let (extack, offs) = parse_ext_ack(msg, flags);
                if seq == begin_seq {
                    // The batch as a whole failed (e.g. at commit): no per-message acks follow.
                    return Err(NftError::Batch { errno, extack });
                }
                let idx = seq.wrapping_sub(first_seq) as usize;
                if idx >= n || acked[idx] {
                    continue;
                }
                acked[idx] = true;
                remaining -= 1;
                if errno != 0 {
                    let m = &batch.msgs[idx];
                    let elem = offs.and_then(|o| {
                        m.elems
                            .iter()
                            .rev()
                            .find(|s| s.offset <= o as usize)
                            .map(|s| (s.group, s.index))
                    });
                    rejections.push((
                        idx,
                        Rejection {
                            desc: m.desc.clone(),
                            errno,
                            elem,
                            extack,
                        },
                    ));
                }
            }
        }
        if rejections.is_empty() {
            return Ok(());
        }
        rejections.sort_by_key(|(i, _)| *i);
        let more = rejections.len() - 1;
        let first = rejections.swap_remove(0).1;
        Err(NftError::Rejected {
            first: Box::new(first),
            elem_text: None,
            more,
        })
    }
}

fn parse_ext_ack(msg: &[u8], flags: u16) -> (Option<String>, Option<u32>) {
    if flags & NLM_F_ACK_TLVS == 0 {
        return (None, None);
    }
    // nlmsgerr = error (4) + the original header (16), plus its payload unless capped.
    let orig_len = u32::from_ne_bytes(msg[20..24].try_into().unwrap_or([0; 4])) as usize;
    let mut off = if flags & NLM_F_CAPPED != 0 {
        16 + 4 + 16
    } else {
        16 + 4 + ((orig_len + 3) & !3)
    };
    let (mut text, mut offs) = (None, None);
    while off + 4 <= msg.len() {
        let alen = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
        let aty = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
        if alen < 4 || off + alen > msg.len() {
            break;
        }
        let val = &msg[off + 4..off + alen];
        match aty {
            NLMSGERR_ATTR_MSG => {
                let s = val.split(|b| *b == 0).next().unwrap_or(&[]);
                text = Some(String::from_utf8_lossy(s).into_owned());
            }
            NLMSGERR_ATTR_OFFS if val.len() >= 4 => {
                offs = Some(u32::from_ne_bytes(val[..4].try_into().unwrap()));
            }
            _ => {}
        }
        off += (alen + 3) & !3;
    }
    (text, offs)
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: v is a valid c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Raises a buffer past `net.core.{w,r}mem_max` when allowed (CAP_NET_ADMIN), else as far
/// as the sysctl permits.
fn set_buf(
    fd: &OwnedFd,
    force: libc::c_int,
    plain: libc::c_int,
    size: usize,
) -> Result<(), NftError> {
    let size = size.min(i32::MAX as usize / 2) as libc::c_int;
    if setsockopt_int(fd, libc::SOL_SOCKET, force, size).is_ok() {
        return Ok(());
    }
    setsockopt_int(fd, libc::SOL_SOCKET, plain, size).map_err(|source| NftError::Io {
        op: "setsockopt(socket buffer)",
        source,
    })
}
