//! Netlink attribute (TLV) encoding.
//!
//! nf_tables integers are big endian on the wire (NLA_BE32); only the netlink and nfgenmsg
//! headers are in host order.

pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_HDRLEN: usize = 4;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A growing message body. A nest longer than `nla_len` (u16) can describe is recorded in
/// `overflow` instead of silently wrapping: the kernel would parse a wrapped length as a
/// different, corrupt message.
#[derive(Debug, Default, Clone)]
pub(crate) struct AttrBuf {
    pub bytes: Vec<u8>,
    pub overflow: bool,
}

impl AttrBuf {
    pub fn new() -> Self {
        AttrBuf::default()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        if len > u16::MAX as usize {
            self.overflow = true;
        }
        self.bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&ty.to_ne_bytes());
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    pub fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    /// NUL-terminated, as the kernel's NLA_STRING policy and nft expect.
    pub fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    pub fn nest_start(&mut self, ty: u16) -> usize {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub fn nest_end(&mut self, start: usize) {
        let len = self.bytes.len() - start;
        if len > u16::MAX as usize {
            self.overflow = true;
        }
        self.bytes[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    pub fn nested(&mut self, ty: u16, f: impl FnOnce(&mut AttrBuf)) {
        let start = self.nest_start(ty);
        f(self);
        self.nest_end(start);
    }

    fn pad(&mut self) {
        let n = align4(self.bytes.len());
        self.bytes.resize(n, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_attr_is_nul_terminated_and_padded() {
        let mut b = AttrBuf::new();
        b.put_str(1, "netd");
        // nla_len counts the NUL but not the padding, as in `nft --debug=mnl`: |00009|--|00001|
        assert_eq!(b.bytes, [9, 0, 1, 0, b'n', b'e', b't', b'd', 0, 0, 0, 0]);
    }

    #[test]
    fn be32_and_nesting() {
        let mut b = AttrBuf::new();
        b.nested(4, |b| {
            b.put_be32(1, 2);
            b.put_be32(2, (-100i32) as u32);
        });
        assert_eq!(
            b.bytes,
            [20, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 2, 8, 0, 2, 0, 0xff, 0xff, 0xff, 0x9c]
        );
        assert!(!b.overflow);
    }

    #[test]
    fn oversized_nest_is_flagged() {
        let mut b = AttrBuf::new();
        b.nested(3, |b| {
            for _ in 0..20_000 {
                b.put_be32(1, 0);
            }
        });
        assert!(b.overflow);
    }
}
