//! The set and map declarations: key and data types, flags, and the user data nft reads back
//! to print them.

use super::*;

// ---------------------------------------------------------------------------------------
// Set declarations
// ---------------------------------------------------------------------------------------

/// One field of a set key or map value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Ifname,
    Ip4,
    Ip6,
    Proto,
    Port,
}

impl Field {
    /// nft's datatype ids (`TYPE_IFNAME` etc.), only meaningful to nft when printing.
    pub(super) fn type_id(self) -> u32 {
        match self {
            Field::Ip4 => 7,
            Field::Ip6 => 8,
            Field::Proto => 12,
            Field::Port => 13,
            Field::Ifname => 41,
        }
    }
    pub(super) fn len(self) -> u32 {
        match self {
            Field::Ifname | Field::Ip6 => 16,
            Field::Ip4 => 4,
            Field::Proto => 1,
            Field::Port => 2,
        }
    }
    /// nft's `enum byteorder`: strings are host order, numbers and addresses big endian.
    pub(super) fn byteorder(self) -> u32 {
        match self {
            Field::Ifname => 1,
            _ => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Data {
    None,
    Verdict,
    Fields(&'static [Field]),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Decl {
    pub(super) key: &'static [Field],
    pub(super) data: Data,
    pub(super) interval: bool,
}

use Field::*;

pub(super) fn decl(set: SetId) -> Decl {
    let d = |key, data, interval| Decl {
        key,
        data,
        interval,
    };
    match set {
        SetId::Bridges | SetId::Sealed => d(&[Ifname], Data::None, false),
        SetId::SameNet => d(&[Ifname, Ifname], Data::Verdict, false),
        SetId::In4 | SetId::In6 | SetId::Out4 | SetId::Out6 => d(&[Ifname], Data::Verdict, false),
        SetId::Masq4 | SetId::Subnets4 => d(&[Ip4], Data::None, true),
        SetId::Masq6 | SetId::Subnets6 => d(&[Ip6], Data::None, true),
        SetId::Dnat4Any => d(&[Proto, Port], Data::Fields(&[Ip4, Port]), false),
        SetId::Dnat4Bound => d(&[Proto, Ip4, Port], Data::Fields(&[Ip4, Port]), false),
        SetId::Dnat6Any => d(&[Proto, Port], Data::Fields(&[Ip6, Port]), false),
        SetId::Dnat6Bound => d(&[Proto, Ip6, Port], Data::Fields(&[Ip6, Port]), false),
        SetId::Open4 => d(&[Ip4, Proto, Port], Data::None, false),
        SetId::Open6 => d(&[Ip6, Proto, Port], Data::None, false),
        SetId::Dnat4AnyRanges => d(&[Proto, Port], Data::Fields(&[Ip4]), true),
        SetId::Dnat4BoundRanges => d(&[Proto, Ip4, Port], Data::Fields(&[Ip4]), true),
        SetId::Dnat6AnyRanges => d(&[Proto, Port], Data::Fields(&[Ip6]), true),
        SetId::Dnat6BoundRanges => d(&[Proto, Ip6, Port], Data::Fields(&[Ip6]), true),
        SetId::Open4Ranges => d(&[Ip4, Proto, Port], Data::None, true),
        SetId::Open6Ranges => d(&[Ip6, Proto, Port], Data::None, true),
    }
}

pub(super) fn type_id(fields: &[Field]) -> u32 {
    fields.iter().fold(0, |acc, f| (acc << 6) | f.type_id())
}

/// Length in the kernel: a concatenation puts every field in its own 4-byte registers.
pub(super) fn fields_len(fields: &[Field]) -> u32 {
    if fields.len() == 1 {
        fields[0].len()
    } else {
        fields.iter().map(|f| (f.len() + 3) & !3).sum()
    }
}

// nft's set userdata TLVs (libnftnl `enum udata_set_type`).
pub(super) const UDATA_KEYBYTEORDER: u8 = 0;
pub(super) const UDATA_DATABYTEORDER: u8 = 1;
pub(super) const UDATA_KEY_TYPEOF: u8 = 3;
pub(super) const UDATA_DATA_TYPEOF: u8 = 4;
pub(super) const UDATA_DATA_INTERVAL: u8 = 6;
/// nft's `EXPR_CONCAT`, in a typeof record with no fields (what nft 1.0.6 sends for `type a . b`).
pub(super) const EXPR_CONCAT: u32 = 13;

pub(super) fn udata_u32(out: &mut Vec<u8>, ty: u8, v: u32) {
    out.extend_from_slice(&[ty, 4]);
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn udata_concat_typeof(out: &mut Vec<u8>, ty: u8) {
    out.extend_from_slice(&[ty, 8]);
    udata_u32(out, 0, EXPR_CONCAT); // NFTNL_UDATA_SET_TYPEOF_EXPR
    out.extend_from_slice(&[1, 0]); // NFTNL_UDATA_SET_TYPEOF_DATA, empty
}

/// The `NEWSET` of one of netd's sets, byte for byte what nft 1.0.6 sends for the template.
pub fn set_spec(set: SetId) -> SetSpec {
    let d = decl(set);
    let concat = d.key.len() > 1;
    let mut flags = 0;
    if d.interval {
        flags |= SET_F_INTERVAL;
        if concat {
            // A concatenated interval set is the kernel's pipapo (Linux 5.6), which needs
            // the flag and each field's length (NFTA_SET_DESC_CONCAT, sent by add_set).
            flags |= SET_F_CONCAT;
        }
    }
    let data = match d.data {
        Data::None => None,
        Data::Verdict => Some((DATA_TYPE_VERDICT, 0)),
        Data::Fields(f) => Some((type_id(f), fields_len(f))),
    };
    if data.is_some() {
        flags |= SET_F_MAP;
    }
    let mut ud = Vec::new();
    udata_u32(
        &mut ud,
        UDATA_KEYBYTEORDER,
        if concat { 0 } else { d.key[0].byteorder() },
    );
    if data.is_some() {
        // A value of one field has that field's byte order; a concatenation, like a
        // verdict, none (what nft sends).
        let order = match d.data {
            Data::Fields([f]) => f.byteorder(),
            _ => 0,
        };
        udata_u32(&mut ud, UDATA_DATABYTEORDER, order);
    }
    if concat {
        udata_concat_typeof(&mut ud, UDATA_KEY_TYPEOF);
    }
    if let Data::Fields(f) = d.data {
        if f.len() > 1 {
            udata_concat_typeof(&mut ud, UDATA_DATA_TYPEOF);
        }
    }
    if data.is_some() {
        udata_u32(&mut ud, UDATA_DATA_INTERVAL, 0);
    }
    SetSpec {
        name: set.name().to_string(),
        flags,
        key_type: type_id(d.key),
        key_len: fields_len(d.key),
        data,
        concat: d.key.iter().map(|f| f.len()).collect(),
        userdata: ud,
    }
}

impl Field {
    /// The datatype's name as nft prints it in a `type` line.
    pub(super) fn nft_name(self) -> &'static str {
        match self {
            Field::Ifname => "ifname",
            Field::Ip4 => "ipv4_addr",
            Field::Ip6 => "ipv6_addr",
            Field::Proto => "inet_proto",
            Field::Port => "inet_service",
        }
    }
}

pub(super) fn fields_text(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| f.nft_name())
        .collect::<Vec<_>>()
        .join(" . ")
}
