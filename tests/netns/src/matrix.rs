//! The isolation matrix: for each kind of network, which traffic netd lets through. One table
//! drives both `docs/isolation.md` (rendered and checked by a test, so the document cannot
//! drift) and the reachability tests in `tests/isolation.rs`, which probe every cell with real
//! TCP, UDP and ICMP packets over IPv4 and IPv6.

/// The kinds of network a user can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Default,
    IccOff,
    Internal,
    /// `--routed`: IPv6 routed, IPv4 NATed (Docker's direct-routing setup).
    Routed,
    /// Both families routed: `--routed --gateway-mode-ipv4 routed`.
    RoutedBoth,
    Isolated,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Default,
        Kind::IccOff,
        Kind::Internal,
        Kind::Routed,
        Kind::RoutedBoth,
        Kind::Isolated,
    ];

    /// How the document names it (the netctl options that make it).
    pub fn title(self) -> &'static str {
        match self {
            Kind::Default => "default (`nat`)",
            Kind::IccOff => "`--icc=false`",
            Kind::Internal => "`--internal`",
            Kind::Routed => "`--routed` (IPv6 routed, IPv4 nat)",
            Kind::RoutedBoth => "`--routed --gateway-mode-ipv4 routed`",
            Kind::Isolated => "`--gateway-mode-ipv4/6 isolated`",
        }
    }

    /// `netctl network create` options (besides the subnets; every matrix network has both
    /// families).
    pub fn create_args(self) -> &'static [&'static str] {
        match self {
            Kind::Default => &[],
            Kind::IccOff => &["--icc=false"],
            Kind::Internal => &["--internal"],
            Kind::Routed => &["--routed"],
            Kind::RoutedBoth => &["--routed", "--gateway-mode-ipv4", "routed"],
            Kind::Isolated => &[
                "--gateway-mode-ipv4",
                "isolated",
                "--gateway-mode-ipv6",
                "isolated",
            ],
        }
    }

    /// Whether this kind routes (no NAT) the given family.
    pub fn routes(self, fam: Fam) -> bool {
        match self {
            Kind::Routed => fam == Fam::V6,
            Kind::RoutedBoth => true,
            _ => false,
        }
    }
}

/// Address family of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub const ALL: [Fam; 2] = [Fam::V4, Fam::V6];
}

/// Who talks to whom. "c1" is a container on the network under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// c1 → another container on the same network.
    SameNetwork,
    /// c1 → the network's gateway address (the host).
    Gateway,
    /// c1 → a container on another (default) network, at its address.
    OtherNetwork,
    /// c1 → a host outside, beyond the host's uplink.
    External,
    /// A host outside (with a route to the subnet via the host) → c1's address, on a port
    /// that is not published.
    ExternalToContainer,
    /// The host itself → c1's address.
    HostToContainer,
}

impl Path {
    pub const ALL: [Path; 6] = [
        Path::SameNetwork,
        Path::Gateway,
        Path::OtherNetwork,
        Path::External,
        Path::ExternalToContainer,
        Path::HostToContainer,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Path::SameNetwork => "container → same-network container",
            Path::Gateway => "container → gateway / host",
            Path::OtherNetwork => "container → other network's container",
            Path::External => "container → external host",
            Path::ExternalToContainer => "external host → container address (unpublished port)",
            Path::HostToContainer => "host → container",
        }
    }
}

/// Whether TCP, UDP and ICMP echo get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub tcp: bool,
    pub udp: bool,
    pub icmp: bool,
}

const YES: Outcome = Outcome {
    tcp: true,
    udp: true,
    icmp: true,
};
const NO: Outcome = Outcome {
    tcp: false,
    udp: false,
    icmp: false,
};
const PING_ONLY: Outcome = Outcome {
    tcp: false,
    udp: false,
    icmp: true,
};

/// The matrix, per address family (`--routed` routes IPv6 only).
pub fn expected(kind: Kind, path: Path, fam: Fam) -> Outcome {
    use Kind::*;
    use Path::*;
    match (kind, path) {
        (IccOff, SameNetwork) => NO,
        (_, SameNetwork) => YES,
        (_, Gateway) => YES,
        (_, OtherNetwork) => NO,
        (Internal | Isolated, External) => NO,
        (_, External) => YES,
        (k, ExternalToContainer) if k.routes(fam) => PING_ONLY,
        (_, ExternalToContainer) => NO,
        (_, HostToContainer) => YES,
    }
}

/// What an external host sees as the source of a container's connection.
pub fn external_sees(kind: Kind, fam: Fam) -> Option<&'static str> {
    match kind {
        Kind::Internal | Kind::Isolated => None,
        k if k.routes(fam) => Some("the container's own address"),
        _ => Some("the host's address (masquerade)"),
    }
}

fn cell(o: Outcome) -> &'static str {
    match (o.tcp, o.udp, o.icmp) {
        (true, true, true) => "yes",
        (false, false, false) => "no",
        (false, false, true) => "ping only",
        _ => "partly",
    }
}

/// The Markdown table that `docs/isolation.md` carries between its markers.
pub fn render_markdown() -> String {
    let mut s = String::from("| | ");
    s.push_str(
        &Kind::ALL
            .iter()
            .map(|k| k.title())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    s.push_str(" |\n|---|");
    s.push_str(&"---|".repeat(Kind::ALL.len()));
    s.push('\n');
    // A cell names the families only where they differ.
    let per_family = |v4: &str, v6: &str| {
        if v4 == v6 {
            v4.to_string()
        } else {
            format!("IPv4: {v4}; IPv6: {v6}")
        }
    };
    for p in Path::ALL {
        s.push_str(&format!("| {} |", p.title()));
        for k in Kind::ALL {
            let v4 = cell(expected(k, p, Fam::V4));
            let v6 = cell(expected(k, p, Fam::V6));
            s.push_str(&format!(" {} |", per_family(v4, v6)));
        }
        s.push('\n');
    }
    s.push_str("| source address an external host sees |");
    for k in Kind::ALL {
        let v4 = external_sees(k, Fam::V4).unwrap_or("—");
        let v6 = external_sees(k, Fam::V6).unwrap_or("—");
        s.push_str(&format!(" {} |", per_family(v4, v6)));
    }
    s.push('\n');
    s
}

pub const BEGIN: &str = "<!-- matrix:begin (generated from tests/netns/src/matrix.rs) -->";
pub const END: &str = "<!-- matrix:end -->";
