//! Encoding [`Elem`]s as the kernel stores them, per set.

use super::*;

// ---------------------------------------------------------------------------------------
// Elements
// ---------------------------------------------------------------------------------------

pub(super) fn invalid(set: SetId, reason: impl Into<String>) -> ApplyError {
    ApplyError::Invalid {
        set: set.name(),
        reason: reason.into(),
    }
}

pub(super) fn ifname(set: SetId, name: &str) -> Result<[u8; 16], ApplyError> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty() || name.len() > 15 || name.as_bytes().contains(&0) {
        return Err(invalid(set, format!("bad interface name {name:?}")));
    }
    let mut k = [0u8; 16];
    k[..name.len()].copy_from_slice(name.as_bytes());
    Ok(k)
}

pub(super) fn pad4(v: &mut Vec<u8>, field: &[u8]) {
    v.extend_from_slice(field);
    v.resize((v.len() + 3) & !3, 0);
}

pub(super) fn verdict_of(v: Verdict) -> crate::Verdict {
    match v {
        Verdict::Accept => crate::Verdict::Accept,
        Verdict::Drop => crate::Verdict::Drop,
        Verdict::Goto(c) => crate::Verdict::Goto(c.name().to_string()),
    }
}

pub(super) fn elem(key: Vec<u8>, data: Option<ElemData>) -> SetElem {
    SetElem {
        key,
        key_end: None,
        data,
        flags: 0,
    }
}

/// An interval `[start, end)` as nft sends it: the start, and the first address past the
/// range flagged as interval end (omitted when the range runs to the top of the space).
pub(super) fn interval(start: &[u8], last: &[u8]) -> Vec<SetElem> {
    let mut v = vec![elem(start.to_vec(), None)];
    let mut end = last.to_vec();
    let mut carry = true;
    for b in end.iter_mut().rev() {
        if !carry {
            break;
        }
        let (n, c) = b.overflowing_add(1);
        *b = n;
        carry = c;
    }
    if !carry {
        v.push(SetElem {
            key: end,
            key_end: None,
            data: None,
            flags: SET_ELEM_F_INTERVAL_END,
        });
    }
    v
}

pub(super) fn dnat_key(proto: Proto, host: Option<&[u8]>, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    pad4(&mut k, &[proto.number()]);
    if let Some(h) = host {
        pad4(&mut k, h);
    }
    pad4(&mut k, &port.to_be_bytes());
    k
}

pub(super) fn addr_port(addr: &[u8], port: u16) -> Vec<u8> {
    let mut v = addr.to_vec();
    pad4(&mut v, &port.to_be_bytes());
    v
}

/// An element of a concatenated interval set (pipapo): the key of the first port and, as
/// `NFTA_SET_ELEM_KEY_END`, the key of the last one (inclusive, unlike the prefix sets'
/// end elements), no flags.
pub(super) fn range_elem(first: Vec<u8>, last: Vec<u8>, data: Option<ElemData>) -> SetElem {
    SetElem {
        key: first,
        key_end: Some(last),
        data,
        flags: 0,
    }
}

/// `addr . proto . port` (the `open` sets' keys).
pub(super) fn open_key(addr: &[u8], proto: Proto, port: u16) -> Vec<u8> {
    let mut k = addr.to_vec();
    pad4(&mut k, &[proto.number()]);
    pad4(&mut k, &port.to_be_bytes());
    k
}

/// A port-range DNAT element, or None when the element's binding does not match the map
/// (as for [`dnat_elem`]). The value is the container's address alone: DNAT keeps the port.
pub(super) fn dnat_range_elem(
    bound_map: bool,
    proto: Proto,
    host: Option<Vec<u8>>,
    (first, last): (u16, u16),
    addr: &[u8],
) -> Option<Vec<SetElem>> {
    if host.is_some() != bound_map || first > last {
        return None;
    }
    Some(vec![range_elem(
        dnat_key(proto, host.as_deref(), first),
        dnat_key(proto, host.as_deref(), last),
        Some(ElemData::Value(addr.to_vec())),
    )])
}

/// A DNAT map element, or None when the element's binding does not match the map (a bound
/// binding belongs in the `_bound` map, an any-address one in the `_any` map).
pub(super) fn dnat_elem(
    bound_map: bool,
    proto: Proto,
    host: Option<Vec<u8>>,
    host_port: u16,
    addr: &[u8],
    port: u16,
) -> Option<Vec<SetElem>> {
    if host.is_some() != bound_map {
        return None;
    }
    Some(vec![elem(
        dnat_key(proto, host.as_deref(), host_port),
        Some(ElemData::Value(addr_port(addr, port))),
    )])
}

/// The kernel element(s) of one plan element: one, or two for a prefix (start, and end
/// flagged as such); a port range is one element with an end key.
pub fn encode_elem(set: SetId, e: &Elem) -> Result<Vec<SetElem>, ApplyError> {
    let wrong = || invalid(set, format!("element {e:?} does not belong in this set"));
    Ok(match (set, e) {
        (SetId::Bridges | SetId::Sealed, Elem::Iface(n)) => {
            vec![elem(ifname(set, n)?.to_vec(), None)]
        }
        (SetId::SameNet, Elem::SameIface(n, v)) => {
            let k = ifname(set, n)?;
            let mut key = k.to_vec();
            key.extend_from_slice(&k);
            vec![elem(key, Some(ElemData::Verdict(verdict_of(*v))))]
        }
        (SetId::In4 | SetId::In6 | SetId::Out4 | SetId::Out6, Elem::IfaceVerdict(n, v)) => {
            vec![elem(
                ifname(set, n)?.to_vec(),
                Some(ElemData::Verdict(verdict_of(*v))),
            )]
        }
        (SetId::Masq4 | SetId::Subnets4, Elem::Net4(n)) => {
            interval(&n.network().octets(), &n.broadcast().octets())
        }
        (SetId::Masq6 | SetId::Subnets6, Elem::Net6(n)) => {
            interval(&n.network().octets(), &n.broadcast().octets())
        }
        (
            SetId::Dnat4Any | SetId::Dnat4Bound,
            Elem::Dnat4 {
                proto,
                host_addr,
                host_port,
                addr,
                port,
            },
        ) => {
            let host = host_addr.map(|a| a.octets().to_vec());
            dnat_elem(
                set == SetId::Dnat4Bound,
                *proto,
                host,
                *host_port,
                &addr.octets(),
                *port,
            )
            .ok_or_else(wrong)?
        }
        (
            SetId::Dnat6Any | SetId::Dnat6Bound,
            Elem::Dnat6 {
                proto,
                host_addr,
                host_port,
                addr,
                port,
            },
        ) => {
            let host = host_addr.map(|a| a.octets().to_vec());
            dnat_elem(
                set == SetId::Dnat6Bound,
                *proto,
                host,
                *host_port,
                &addr.octets(),
                *port,
            )
            .ok_or_else(wrong)?
        }
        (SetId::Open4, Elem::Open4 { addr, proto, port }) => {
            vec![elem(open_key(&addr.octets(), *proto, *port), None)]
        }
        (SetId::Open6, Elem::Open6 { addr, proto, port }) => {
            vec![elem(open_key(&addr.octets(), *proto, *port), None)]
        }
        (
            SetId::Dnat4AnyRanges | SetId::Dnat4BoundRanges,
            Elem::Dnat4Range {
                proto,
                host_addr,
                first,
                last,
                addr,
            },
        ) => dnat_range_elem(
            set == SetId::Dnat4BoundRanges,
            *proto,
            host_addr.map(|a| a.octets().to_vec()),
            (*first, *last),
            &addr.octets(),
        )
        .ok_or_else(wrong)?,
        (
            SetId::Dnat6AnyRanges | SetId::Dnat6BoundRanges,
            Elem::Dnat6Range {
                proto,
                host_addr,
                first,
                last,
                addr,
            },
        ) => dnat_range_elem(
            set == SetId::Dnat6BoundRanges,
            *proto,
            host_addr.map(|a| a.octets().to_vec()),
            (*first, *last),
            &addr.octets(),
        )
        .ok_or_else(wrong)?,
        (
            SetId::Open4Ranges,
            Elem::Open4Range {
                addr,
                proto,
                first,
                last,
            },
        ) if first <= last => vec![range_elem(
            open_key(&addr.octets(), *proto, *first),
            open_key(&addr.octets(), *proto, *last),
            None,
        )],
        (
            SetId::Open6Ranges,
            Elem::Open6Range {
                addr,
                proto,
                first,
                last,
            },
        ) if first <= last => vec![range_elem(
            open_key(&addr.octets(), *proto, *first),
            open_key(&addr.octets(), *proto, *last),
            None,
        )],
        _ => return Err(wrong()),
    })
}
