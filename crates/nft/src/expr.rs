//! nf_tables expressions and data (the contents of a rule).

use super::attr::AttrBuf;

/// A register number as the kernel sees it.
///
/// The kernel has sixteen 4-byte registers (`NFT_REG32_00..15`) that overlap four legacy
/// 16-byte ones (`NFT_REG_1..4`). Concatenations need the 4-byte ones, because each field
/// starts on its own 4-byte register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u32);

impl Reg {
    pub const VERDICT: Reg = Reg(0);

    /// The 4-byte register `n` (0..=15). Registers that start a 16-byte one are encoded as the
    /// legacy number, as nft does, so `nft --debug=netlink` output compares one to one.
    pub const fn r32(n: u8) -> Reg {
        assert!(n < 16);
        if n & 3 == 0 {
            Reg(1 + n as u32 / 4)
        } else {
            Reg(8 + n as u32)
        }
    }

    pub fn raw(self) -> u32 {
        self.0
    }
}

/// A verdict, for `immediate` expressions and verdict-map elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> u32 {
        match self {
            Verdict::Drop => 0,                  // NF_DROP
            Verdict::Accept => 1,                // NF_ACCEPT
            Verdict::Continue => (-1i32) as u32, // NFT_CONTINUE
            Verdict::Jump(_) => (-3i32) as u32,  // NFT_JUMP
            Verdict::Goto(_) => (-4i32) as u32,  // NFT_GOTO
            Verdict::Return => (-5i32) as u32,   // NFT_RETURN
        }
    }

    /// `NFTA_DATA_VERDICT { CODE, CHAIN? }` inside an already opened nft_data nest.
    pub(crate) fn encode_data(&self, b: &mut AttrBuf) {
        b.nested(NFTA_DATA_VERDICT, |b| {
            b.put_be32(NFTA_VERDICT_CODE, self.code());
            if let Verdict::Jump(c) | Verdict::Goto(c) = self {
                b.put_str(NFTA_VERDICT_CHAIN, c);
            }
        });
    }
}

pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// Writes an `nft_data` nest holding a plain value.
pub(crate) fn put_value(b: &mut AttrBuf, ty: u16, value: &[u8]) {
    b.nested(ty, |b| b.put(NFTA_DATA_VALUE, value));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Iifname = 6,
    Oifname = 7,
    Nfproto = 15,
    L4proto = 16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    State = 0,
    Status = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Link = 0,
    Network = 1,
    Transport = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Lt = 2,
    Lte = 3,
    Gt = 4,
    Gte = 5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatType {
    Snat = 0,
    Dnat = 1,
}

/// `fib` result kinds (`enum nft_fib_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FibResult {
    Oif = 1,
    Oifname = 2,
    AddrType = 3,
}

pub const FIB_F_SADDR: u32 = 1 << 0;
pub const FIB_F_DADDR: u32 = 1 << 1;
pub const FIB_F_IIF: u32 = 1 << 3;
pub const FIB_F_OIF: u32 = 1 << 4;

/// `RTN_LOCAL`, what `fib daddr type local` compares against (host byte order).
pub const RTN_LOCAL: u32 = 2;

/// ct state bits (host byte order in the register).
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;
/// ct status bit `IPS_DST_NAT`.
pub const CT_STATUS_DNAT: u32 = 1 << 5;

pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

pub const NFT_LOOKUP_F_INV: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: MetaKey,
        dreg: Reg,
    },
    Cmp {
        sreg: Reg,
        op: CmpOp,
        data: Vec<u8>,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: Reg,
    },
    /// Set membership (`dreg: None`) or map lookup (`dreg: Some`, `Reg::VERDICT` for vmaps).
    Lookup {
        set: String,
        sreg: Reg,
        dreg: Option<Reg>,
        invert: bool,
    },
    ImmediateData {
        dreg: Reg,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    Counter,
    Ct {
        key: CtKey,
        dreg: Reg,
    },
    /// `dreg = (sreg & mask) ^ xor`, with `mask` and `xor` as long as the operand.
    Bitwise {
        sreg: Reg,
        dreg: Reg,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Nat {
        kind: NatType,
        family: u8,
        addr_min: Option<Reg>,
        proto_min: Option<Reg>,
        flags: u32,
    },
    Masq,
    Fib {
        flags: u32,
        result: FibResult,
        dreg: Reg,
    },
    /// `dreg = hton(sreg)` over `len` bytes in units of `size` bytes. nft puts one with
    /// `len` 1 and `size` 2 after `meta l4proto` in keys of concatenated interval sets: a
    /// no-op in the kernel (it converts `len / size` = 0 units), kept so that netd's rules
    /// are the expressions nft generates for the template.
    ByteorderHton {
        sreg: Reg,
        dreg: Reg,
        len: u32,
        size: u32,
    },
}

const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

impl Expr {
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Lookup { .. } => "lookup",
            Expr::ImmediateData { .. } | Expr::Verdict(_) => "immediate",
            Expr::Counter => "counter",
            Expr::Ct { .. } => "ct",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Nat { .. } => "nat",
            Expr::Masq => "masq",
            Expr::Fib { .. } => "fib",
            Expr::ByteorderHton { .. } => "byteorder",
        }
    }

    /// Writes `NFTA_EXPR_NAME` and `NFTA_EXPR_DATA` (the caller opens the list element).
    /// Attribute order follows what nft 1.0.6 sends.
    pub(crate) fn encode(&self, b: &mut AttrBuf) {
        b.put_str(NFTA_EXPR_NAME, self.name());
        b.nested(NFTA_EXPR_DATA, |b| match self {
            Expr::Meta { key, dreg } => {
                b.put_be32(2, *key as u32); // NFTA_META_KEY
                b.put_be32(1, dreg.raw()); // NFTA_META_DREG
            }
            Expr::Cmp { sreg, op, data } => {
                b.put_be32(1, sreg.raw()); // NFTA_CMP_SREG
                b.put_be32(2, *op as u32); // NFTA_CMP_OP
                put_value(b, 3, data); // NFTA_CMP_DATA
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                b.put_be32(1, dreg.raw());
                b.put_be32(2, *base as u32);
                b.put_be32(3, *offset);
                b.put_be32(4, *len);
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                b.put_be32(2, sreg.raw()); // NFTA_LOOKUP_SREG
                if let Some(d) = dreg {
                    b.put_be32(3, d.raw()); // NFTA_LOOKUP_DREG
                }
                b.put_str(1, set); // NFTA_LOOKUP_SET
                if *invert {
                    b.put_be32(5, NFT_LOOKUP_F_INV); // NFTA_LOOKUP_FLAGS
                }
            }
            Expr::ImmediateData { dreg, data } => {
                b.put_be32(1, dreg.raw());
                put_value(b, 2, data);
            }
            Expr::Verdict(v) => {
                b.put_be32(1, Reg::VERDICT.raw());
                b.nested(2, |b| v.encode_data(b));
            }
            Expr::Counter => {
                b.put(1, &0u64.to_be_bytes()); // NFTA_COUNTER_BYTES
                b.put(2, &0u64.to_be_bytes()); // NFTA_COUNTER_PACKETS
            }
            Expr::Ct { key, dreg } => {
                b.put_be32(2, *key as u32); // NFTA_CT_KEY
                b.put_be32(1, dreg.raw()); // NFTA_CT_DREG
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                b.put_be32(1, sreg.raw());
                b.put_be32(2, dreg.raw());
                b.put_be32(3, mask.len() as u32);
                put_value(b, 4, mask);
                put_value(b, 5, xor);
            }
            Expr::Nat {
                kind,
                family,
                addr_min,
                proto_min,
                flags,
            } => {
                b.put_be32(1, *kind as u32); // NFTA_NAT_TYPE
                b.put_be32(2, *family as u32); // NFTA_NAT_FAMILY
                if let Some(r) = addr_min {
                    b.put_be32(3, r.raw()); // NFTA_NAT_REG_ADDR_MIN
                }
                if let Some(r) = proto_min {
                    b.put_be32(5, r.raw()); // NFTA_NAT_REG_PROTO_MIN
                }
                if *flags != 0 {
                    b.put_be32(7, *flags); // NFTA_NAT_FLAGS
                }
            }
            Expr::Masq => {}
            Expr::Fib {
                flags,
                result,
                dreg,
            } => {
                b.put_be32(3, *flags); // NFTA_FIB_FLAGS
                b.put_be32(2, *result as u32); // NFTA_FIB_RESULT
                b.put_be32(1, dreg.raw()); // NFTA_FIB_DREG
            }
            Expr::ByteorderHton {
                sreg,
                dreg,
                len,
                size,
            } => {
                b.put_be32(1, sreg.raw()); // NFTA_BYTEORDER_SREG
                b.put_be32(2, dreg.raw()); // NFTA_BYTEORDER_DREG
                b.put_be32(3, 1); // NFTA_BYTEORDER_OP: NFT_BYTEORDER_HTON
                b.put_be32(4, *len); // NFTA_BYTEORDER_LEN
                b.put_be32(5, *size); // NFTA_BYTEORDER_SIZE
            }
        });
    }
}

/// Small constructors so rules read close to their nft text.
pub mod build {
    use super::*;

    pub fn meta(key: MetaKey, dreg: Reg) -> Expr {
        Expr::Meta { key, dreg }
    }
    pub fn cmp(sreg: Reg, op: CmpOp, data: impl Into<Vec<u8>>) -> Expr {
        Expr::Cmp {
            sreg,
            op,
            data: data.into(),
        }
    }
    pub fn cmp_eq(sreg: Reg, data: impl Into<Vec<u8>>) -> Expr {
        cmp(sreg, CmpOp::Eq, data)
    }
    pub fn payload(base: PayloadBase, offset: u32, len: u32, dreg: Reg) -> Expr {
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        }
    }
    pub fn lookup(set: &str, sreg: Reg) -> Expr {
        Expr::Lookup {
            set: set.to_string(),
            sreg,
            dreg: None,
            invert: false,
        }
    }
    pub fn lookup_not(set: &str, sreg: Reg) -> Expr {
        Expr::Lookup {
            set: set.to_string(),
            sreg,
            dreg: None,
            invert: true,
        }
    }
    pub fn map(set: &str, sreg: Reg, dreg: Reg) -> Expr {
        Expr::Lookup {
            set: set.to_string(),
            sreg,
            dreg: Some(dreg),
            invert: false,
        }
    }
    pub fn verdict(v: Verdict) -> Expr {
        Expr::Verdict(v)
    }
    pub fn ct(key: CtKey, dreg: Reg) -> Expr {
        Expr::Ct { key, dreg }
    }
    /// `reg & mask != 0` on a 4-byte host-order value (ct state/status bits).
    pub fn bits_set(reg: Reg, mask: u32) -> [Expr; 2] {
        [
            Expr::Bitwise {
                sreg: reg,
                dreg: reg,
                mask: mask.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            cmp(reg, CmpOp::Neq, vec![0; 4]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(e: &Expr) -> Vec<u8> {
        let mut b = AttrBuf::new();
        e.encode(&mut b);
        b.bytes
    }

    #[test]
    fn registers_match_nft_numbering() {
        // nft --debug=netlink: "meta load l4proto => reg 9", "... => reg 10", "reg 13", "reg 2"
        assert_eq!(Reg::r32(0).raw(), 1);
        assert_eq!(Reg::r32(1).raw(), 9);
        assert_eq!(Reg::r32(2).raw(), 10);
        assert_eq!(Reg::r32(4).raw(), 2);
        assert_eq!(Reg::r32(5).raw(), 13);
    }

    #[test]
    fn meta_nfproto_and_cmp_bytes() {
        // [ meta load nfproto => reg 1 ] as sent by nft 1.0.6
        assert_eq!(
            enc(&build::meta(MetaKey::Nfproto, Reg::r32(0))),
            [
                9, 0, 1, 0, b'm', b'e', b't', b'a', 0, 0, 0, 0, //
                20, 0, 2, 0x80, 8, 0, 2, 0, 0, 0, 0, 15, 8, 0, 1, 0, 0, 0, 0, 1
            ]
        );
        // [ cmp eq reg 1 0x0000000a ]: one byte of data
        assert_eq!(
            enc(&build::cmp_eq(Reg::r32(0), [NFPROTO_IPV6])),
            [
                8, 0, 1, 0, b'c', b'm', b'p', 0, //
                32, 0, 2, 0x80, 8, 0, 1, 0, 0, 0, 0, 1, 8, 0, 2, 0, 0, 0, 0, 0, //
                12, 0, 3, 0x80, 5, 0, 1, 0, 10, 0, 0, 0
            ]
        );
    }

    #[test]
    fn inverted_lookup_has_flags() {
        let e = enc(&build::lookup_not("bridges", Reg::r32(0)));
        // sreg, set name, flags = NFT_LOOKUP_F_INV
        assert!(e.ends_with(&[
            8, 0, 2, 0, 0, 0, 0, 1, 12, 0, 1, 0, b'b', b'r', b'i', b'd', b'g', b'e', b's', 0, 8, 0,
            5, 0, 0, 0, 0, 1
        ]));
    }

    #[test]
    fn goto_verdict_bytes() {
        let e = enc(&build::verdict(Verdict::Goto("cross_net".into())));
        let tail = [
            44, 0, 2, 0x80, 8, 0, 1, 0, 0, 0, 0, 0, // dreg verdict
            32, 0, 2, 0x80, 28, 0, 2, 0x80, 8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfc, 14, 0, 2, 0, b'c',
            b'r', b'o', b's', b's', b'_', b'n', b'e', b't', 0, 0, 0,
        ];
        assert!(e.ends_with(&tail), "{e:?}");
    }

    #[test]
    fn nat_dnat_ip6_registers() {
        let e = enc(&Expr::Nat {
            kind: NatType::Dnat,
            family: NFPROTO_IPV6,
            addr_min: Some(Reg::r32(0)),
            proto_min: Some(Reg::r32(4)),
            flags: 0,
        });
        assert!(e.ends_with(&[
            36, 0, 2, 0x80, 8, 0, 1, 0, 0, 0, 0, 1, 8, 0, 2, 0, 0, 0, 0, 10, 8, 0, 3, 0, 0, 0, 0,
            1, 8, 0, 5, 0, 0, 0, 0, 2
        ]));
    }

    #[test]
    fn fib_daddr_type() {
        let e = enc(&Expr::Fib {
            flags: FIB_F_DADDR,
            result: FibResult::AddrType,
            dreg: Reg::r32(0),
        });
        assert!(e.ends_with(&[
            28, 0, 2, 0x80, 8, 0, 3, 0, 0, 0, 0, 2, 8, 0, 2, 0, 0, 0, 0, 3, 8, 0, 1, 0, 0, 0, 0, 1
        ]));
    }

    #[test]
    fn masq_has_empty_data() {
        assert_eq!(
            enc(&Expr::Masq),
            [9, 0, 1, 0, b'm', b'a', b's', b'q', 0, 0, 0, 0, 4, 0, 2, 0x80]
        );
    }
}
