//! Text: elements, the template filled with a state, and the template itself rendered from
//! the declarations and rules (the one source).

use super::*;

// ---------------------------------------------------------------------------------------
// Rendering (what `nft list table` prints)
// ---------------------------------------------------------------------------------------

pub(super) fn verdict_text(v: Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Goto(c) => format!("goto {}", c.name()),
    }
}

pub(super) fn net4_text(n: &Ipv4Net) -> String {
    if n.prefix_len() == 32 {
        n.network().to_string()
    } else {
        format!("{}/{}", n.network(), n.prefix_len())
    }
}

pub(super) fn net6_text(n: &Ipv6Net) -> String {
    if n.prefix_len() == 128 {
        n.network().to_string()
    } else {
        format!("{}/{}", n.network(), n.prefix_len())
    }
}

/// A port range as nft prints it: `first-last`, or the port alone for a one-port range.
fn ports_text(first: u16, last: u16) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// One element in nft's syntax (`"br0" : goto to_nat`, `tcp . 8080 : 10.88.0.2 . 80`).
pub fn elem_text(e: &Elem) -> String {
    match e {
        Elem::Iface(n) => format!("\"{n}\""),
        Elem::SameIface(n, v) => format!("\"{n}\" . \"{n}\" : {}", verdict_text(*v)),
        Elem::IfaceVerdict(n, v) => format!("\"{n}\" : {}", verdict_text(*v)),
        Elem::Net4(n) => net4_text(n),
        Elem::Net6(n) => net6_text(n),
        Elem::Dnat4 {
            proto,
            host_addr,
            host_port,
            addr,
            port,
        } => match host_addr {
            Some(h) => format!("{proto} . {h} . {host_port} : {addr} . {port}"),
            None => format!("{proto} . {host_port} : {addr} . {port}"),
        },
        Elem::Dnat6 {
            proto,
            host_addr,
            host_port,
            addr,
            port,
        } => match host_addr {
            Some(h) => format!("{proto} . {h} . {host_port} : {addr} . {port}"),
            None => format!("{proto} . {host_port} : {addr} . {port}"),
        },
        Elem::Open4 { addr, proto, port } => format!("{addr} . {proto} . {port}"),
        Elem::Open6 { addr, proto, port } => format!("{addr} . {proto} . {port}"),
        Elem::Dnat4Range {
            proto,
            host_addr,
            first,
            last,
            addr,
        } => match host_addr {
            Some(h) => format!("{proto} . {h} . {} : {addr}", ports_text(*first, *last)),
            None => format!("{proto} . {} : {addr}", ports_text(*first, *last)),
        },
        Elem::Dnat6Range {
            proto,
            host_addr,
            first,
            last,
            addr,
        } => match host_addr {
            Some(h) => format!("{proto} . {h} . {} : {addr}", ports_text(*first, *last)),
            None => format!("{proto} . {} : {addr}", ports_text(*first, *last)),
        },
        Elem::Open4Range {
            addr,
            proto,
            first,
            last,
        } => format!("{addr} . {proto} . {}", ports_text(*first, *last)),
        Elem::Open6Range {
            addr,
            proto,
            first,
            last,
        } => format!("{addr} . {proto} . {}", ports_text(*first, *last)),
    }
}

/// nft sorts hash-set elements by their key read as one host-order (little endian here)
/// number, i.e. comparing key bytes from the last one; interval sets by address. It does not
/// sort concatenated interval sets (the port ranges): it prints them in the kernel's order,
/// which is the order they were added in. That is netd's own order (the elements' `Ord`)
/// after a full sync or a single addition to an empty set, so that is the order rendered.
pub(super) fn print_order(set: SetId, a: &Elem, b: &Elem) -> Ordering {
    let d = decl(set);
    if d.interval && d.key.len() > 1 {
        return a.cmp(b);
    }
    let key = |e: &Elem| {
        encode_elem(set, e)
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|k| k.key)
            .unwrap_or_default()
    };
    let (ka, kb) = (key(a), key(b));
    if d.interval {
        ka.cmp(&kb)
    } else {
        ka.iter().rev().cmp(kb.iter().rev())
    }
}

pub(super) fn elements_line(set: SetId, elems: &BTreeSet<Elem>) -> Option<String> {
    if elems.is_empty() {
        return None;
    }
    let mut v: Vec<&Elem> = elems.iter().collect();
    v.sort_by(|a, b| print_order(set, a, b));
    // nft puts IPv4 addresses two to a line and every other element type on its own line.
    let per_line = if matches!(set, SetId::Masq4 | SetId::Subnets4) {
        2
    } else {
        1
    };
    let mut s = String::from("\t\telements = { ");
    for (i, e) in v.iter().enumerate() {
        if i > 0 {
            if i % per_line == 0 {
                s.push_str(",\n\t\t\t     ");
            } else {
                s.push_str(", ");
            }
        }
        s.push_str(&elem_text(e));
    }
    s.push_str(" }\n");
    Some(s)
}

/// Fills the template's `@elements NAME@` lines with `desired`'s elements in the format nft
/// 1.0.6 prints them (or drops the line for an empty set). For small states the result equals
/// `nft list table inet netd`; nft wraps very long element lines, which this does not model.
pub fn render_template(template: &str, desired: &Desired) -> String {
    let by_name: HashMap<&str, SetId> = SetId::ALL.iter().map(|s| (s.name(), *s)).collect();
    let mut out = String::with_capacity(template.len() + 256);
    for line in template.split_inclusive('\n') {
        let t = line.trim();
        let set = t
            .strip_prefix("@elements ")
            .and_then(|r| r.strip_suffix('@'))
            .and_then(|n| by_name.get(n));
        match set {
            Some(set) => {
                if let Some(l) = elements_line(*set, &desired.normalized(*set)) {
                    out.push_str(&l);
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// `listing` (an `nft list table` output, or [`render_template`]'s) with every element list
/// written one element per line in sorted order. nft prints the port-range sets in the order
/// their elements were added (see [`print_order`]), which churn changes, so two listings of
/// the same table compare equal only in this form. Elements never contain a comma, and nft
/// separates them with one.
pub fn sort_elements(listing: &str) -> String {
    const OPEN: &str = "\t\telements = { ";
    let mut out = String::with_capacity(listing.len());
    let mut lines = listing.split_inclusive('\n');
    while let Some(line) = lines.next() {
        let Some(first) = line.strip_prefix(OPEN) else {
            out.push_str(line);
            continue;
        };
        let mut list = first.trim_end().to_string();
        while !list.ends_with(" }") {
            match lines.next() {
                Some(more) => list.push_str(more.trim()),
                None => break,
            }
        }
        let list = list.strip_suffix(" }").unwrap_or(&list);
        let mut elems: Vec<&str> = list.split(',').map(str::trim).collect();
        elems.sort_unstable();
        out.push_str(OPEN);
        out.push_str(&elems.join(",\n\t\t\t     "));
        out.push_str(" }\n");
    }
    out
}

/// A base chain's first line as nft prints it (nft names the standard priorities).
pub(super) fn base_chain_text(b: &BaseChain) -> String {
    let (ty, hook) = match (b.chain_type, b.hook) {
        (ChainType::Filter, h) => ("filter", h),
        (ChainType::Nat, h) => ("nat", h),
        (ChainType::Route, h) => ("route", h),
    };
    let hook_name = match hook {
        HookNum::Prerouting => "prerouting",
        HookNum::Input => "input",
        HookNum::Forward => "forward",
        HookNum::Output => "output",
        HookNum::Postrouting => "postrouting",
    };
    let prio = match (ty, hook, b.priority) {
        ("filter", _, 0) => "filter".to_string(),
        ("nat", HookNum::Prerouting, -100) => "dstnat".to_string(),
        ("nat", HookNum::Postrouting, 100) => "srcnat".to_string(),
        (_, _, p) => p.to_string(),
    };
    let policy = match b.policy {
        Policy::Accept => "accept",
        Policy::Drop => "drop",
    };
    format!("type {ty} hook {hook_name} priority {prio}; policy {policy};")
}

/// `nft-templates/netd.nft` as the set declarations, chains and rules above define it: the one
/// source of the table. The file is checked against this (and regenerated from it) without
/// root; the netns tests check the kernel's own listing of the table netd writes against the
/// file, which ties each rule's text to its expressions.
pub fn render_skeleton() -> String {
    let mut out = format!("table inet {DEFAULT_TABLE} {{\n");
    let mut blocks = Vec::new();
    for set in SetId::ALL {
        let d = decl(set);
        let (kind, ty) = match d.data {
            Data::None => ("set", fields_text(d.key)),
            Data::Verdict => ("map", format!("{} : verdict", fields_text(d.key))),
            Data::Fields(v) => (
                "map",
                format!("{} : {}", fields_text(d.key), fields_text(v)),
            ),
        };
        let mut b = format!("\t{kind} {} {{\n\t\ttype {ty}\n", set.name());
        if d.interval {
            b.push_str("\t\tflags interval\n");
        }
        b.push_str(&format!("\t\t@elements {}@\n\t}}\n", set.name()));
        blocks.push(b);
    }
    let rules = rules();
    for (chain, base) in chains() {
        let mut b = format!("\tchain {chain} {{\n");
        if let Some(base) = base {
            b.push_str(&format!("\t\t{}\n", base_chain_text(&base)));
        }
        for (_, text, _) in rules.iter().filter(|(c, _, _)| *c == chain) {
            b.push_str(&format!("\t\t{text}\n"));
        }
        b.push_str("\t}\n");
        blocks.push(b);
    }
    out.push_str(&blocks.join("\n"));
    out.push_str("}\n");
    out
}
