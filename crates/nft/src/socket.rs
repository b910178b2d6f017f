//! The NETLINK_NETFILTER socket: one sendmsg per batch, then every acknowledgement.

use std::io;
use std::time::Duration;

use netd_netlink::{NlSocket, NLMSG_ERROR};

use super::batch::{Batch, ElemGroup};
use super::NftError;

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
