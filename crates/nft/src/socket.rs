//! The NETLINK_NETFILTER socket: one sendmsg per batch, then every acknowledgement.

use std::io;
use std::time::Duration;

use netd_netlink::{NlSocket, NLMSG_ERROR, NLM_F_REQUEST};

use super::batch::{Batch, ElemGroup};
use super::NftError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = super::monitor::NFT_MSG_NEWGEN as u16;
const NFT_MSG_GETGEN: u16 = 16;
/// `NFTA_GEN_ID`, the generation in a `NEWGEN` message.
const NFTA_GEN_ID: u16 = 1;

/// How long to wait for the kernel's answer to a batch before giving up.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A NETLINK_NETFILTER socket, bound, in the network namespace of the calling thread.
pub(crate) fn open_netfilter() -> Result<NlSocket, NftError> {
    NlSocket::netfilter().map_err(|source| NftError::Io {
        op: "socket(NETLINK_NETFILTER)",
        source,
    })
}

/// A netlink socket bound to the network namespace of the thread that opened it.
pub struct Socket {
    sock: NlSocket,
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
        let sock = open_netfilter()?;
        // Capped acks keep an error from echoing a 60 KiB element message back; extended
        // acks tell which attribute (element) was rejected.
        sock.request_extended_acks();
        sock.set_recv_timeout(ACK_TIMEOUT)
            .map_err(|source| NftError::Io {
                op: "setsockopt(SO_RCVTIMEO)",
                source,
            })?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket {
            sock,
            next_seq: seed,
        })
    }

    /// Sends the batch with one sendmsg and waits for every acknowledgement. On error the
    /// kernel has applied nothing (the transaction is aborted as a whole).
    pub fn commit(&mut self, batch: &Batch) -> Result<(), NftError> {
        self.commit_at(batch, None)
    }

    /// [`Socket::commit`], applied only if the ruleset is still at generation `genid` (see
    /// [`Batch::encode_at`]); otherwise it fails with [`NftError::Batch`] and `ERESTART`.
    pub fn commit_at(&mut self, batch: &Batch, genid: Option<u32>) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        let begin = self.next_seq;
        let n = batch.len() as u32;
        self.next_seq = self.next_seq.wrapping_add(n + 2);
        let enc = batch.encode_at(begin, genid)?;

        // The default buffers are what makes big batches fail: the send buffer must hold the
        // whole batch (else EMSGSIZE) and the receive buffer every ack (else ENOBUFS, even
        // though the kernel committed). Each ack costs about 1 KiB of skb truesize.
        let snd = enc.bytes.len() + 64 * 1024;
        let rcv = batch.len() * 1024 + 256 * 1024;
        let buf_err = |source| NftError::Io {
            op: "setsockopt(socket buffer)",
            source,
        };
        self.sock.set_send_buffer(snd).map_err(buf_err)?;
        self.sock.set_recv_buffer(rcv).map_err(buf_err)?;
        self.sock.send(&enc.bytes).map_err(|source| NftError::Io {
            op: "sendmsg(batch)",
            source,
        })?;
        self.collect_acks(batch, enc.begin_seq, enc.first_seq)
    }

    /// The ruleset's generation (`NFT_MSG_GETGEN`): a counter every committed transaction in
    /// this network namespace raises by one (skipping 0 when it wraps). The kernel reads it
    /// without the commit lock, so a transaction may be half done when it is read.
    pub fn generation(&mut self) -> Result<u32, NftError> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let req = netd_netlink::nfnl_request(
            NFNL_SUBSYS_NFTABLES,
            NFT_MSG_GETGEN,
            NLM_F_REQUEST,
            seq,
            0, // NFPROTO_UNSPEC
            &[],
        );
        let io_err = |op| move |source| NftError::Io { op, source };
        self.sock.send(&req).map_err(io_err("send(GETGEN)"))?;
        let mut buf = Vec::with_capacity(8 * 1024);
        loop {
            let data = self.sock.recv(&mut buf).map_err(io_err("recv(GETGEN)"))?;
            for (h, msg, payload) in netd_netlink::messages(data) {
                if h.seq != seq {
                    continue;
                }
                if h.ty == NLMSG_ERROR {
                    let errno = netd_netlink::ack(msg, h.flags).map_or(0, |a| a.errno);
                    return Err(NftError::Io {
                        op: "GETGEN",
                        source: io::Error::from_raw_os_error(errno.max(1)),
                    });
                }
                if h.ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
                    let id = payload
                        .get(4..)
                        .and_then(|a| netd_netlink::attr(a, NFTA_GEN_ID))
                        .and_then(|v| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)));
                    return id.ok_or_else(|| NftError::Io {
                        op: "GETGEN",
                        source: io::Error::other("answer without a generation id"),
                    });
                }
            }
        }
    }

    /// Waits until every transaction that held the commit lock when this was called has
    /// finished, notifications included: an empty batch takes and releases the lock (and,
    /// being empty, commits nothing, so the generation does not move). nfnetlink processes a
    /// batch inside the sender's `sendmsg`, and an empty one is answered with nothing, so
    /// the return of the send is the end of the wait.
    pub fn barrier(&mut self) -> Result<(), NftError> {
        let begin = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(2);
        let enc = Batch::new(super::Family::Inet).encode(begin)?;
        self.sock.send(&enc.bytes).map_err(|source| NftError::Io {
            op: "sendmsg(empty batch)",
            source,
        })
    }

    fn collect_acks(&self, batch: &Batch, begin_seq: u32, first_seq: u32) -> Result<(), NftError> {
        let n = batch.len();
        let mut acked = vec![false; n];
        let mut remaining = n;
        let mut rejections: Vec<(usize, Rejection)> = Vec::new();
        let mut buf = Vec::with_capacity(256 * 1024);
        while remaining > 0 {
            let data = match self.sock.recv(&mut buf) {
                Ok(data) => data,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NftError::Timeout {
                        missing: remaining,
                        total: n,
                    })
                }
                Err(source) => {
                    return Err(NftError::Io {
                        op: "recv(acks)",
                        source,
                    })
                }
            };
            for (h, msg, _) in netd_netlink::messages(data) {
                if h.ty != NLMSG_ERROR {
                    continue;
                }
                let Some(ack) = netd_netlink::ack(msg, h.flags) else {
                    continue;
                };
                if h.seq == begin_seq {
                    // The batch as a whole failed (e.g. at commit): no per-message acks follow.
                    return Err(NftError::Batch {
                        errno: ack.errno,
                        extack: ack.message,
                    });
                }
                let idx = h.seq.wrapping_sub(first_seq) as usize;
                if idx >= n || acked[idx] {
                    continue;
                }
                acked[idx] = true;
                remaining -= 1;
                if ack.errno != 0 {
                    let m = &batch.msgs[idx];
                    let elem = ack.offset.and_then(|o| {
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
                            errno: ack.errno,
                            elem,
                            extack: ack.message,
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
