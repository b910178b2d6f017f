//! The isolation matrix (`src/matrix.rs`, `docs/isolation.md`) probed cell by cell with real
//! TCP, UDP and ICMP packets over IPv4 and IPv6: every allowed path must carry traffic and
//! every refused one must fail within the probe timeout.

use std::net::{IpAddr, SocketAddr};

use netd_netns_tests::matrix::{self, expected, Fam, Kind, Path};
use netd_netns_tests::world::{EXT_V4, EXT_V6, HOST_EXT_V4, HOST_EXT_V6};
use netd_netns_tests::*;

#[test]
fn document_matches_the_matrix() {
    let doc_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/isolation.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/isolation.md exists");
    let (before, rest) = doc.split_once(matrix::BEGIN).expect("begin marker");
    let (_, after) = rest.split_once(matrix::END).expect("end marker");
    let fresh = format!(
        "{before}{}\n{}{}{after}",
        matrix::BEGIN,
        matrix::render_markdown(),
        matrix::END
    );
    if std::env::var_os("NETD_BLESS").is_some() {
        std::fs::write(&doc_path, &fresh).unwrap();
    }
    assert_eq!(
        doc, fresh,
        "docs/isolation.md is out of date; regenerate it with NETD_BLESS=1 cargo test -p netd-netns-tests --test isolation document"
    );
}

struct Family {
    v6: bool,
}

impl Family {
    fn fam(&self) -> Fam {
        if self.v6 {
            Fam::V6
        } else {
            Fam::V4
        }
    }
    fn ext(&self) -> IpAddr {
        (if self.v6 { EXT_V6 } else { EXT_V4 }).parse().unwrap()
    }
    fn host_uplink(&self) -> IpAddr {
        (if self.v6 { HOST_EXT_V6 } else { HOST_EXT_V4 })
            .parse()
            .unwrap()
    }
    fn pick(&self, addrs: &[IpAddr]) -> IpAddr {
        *addrs
            .iter()
            .find(|a| a.is_ipv6() == self.v6)
            .unwrap_or_else(|| {
                panic!(
                    "no {} address in {addrs:?}",
                    if self.v6 { "IPv6" } else { "IPv4" }
                )
            })
    }
}

fn check(
    from: &Netns,
    to: IpAddr,
    tcp: &TcpServer,
    udp: &UdpServer,
    want: matrix::Outcome,
    what: &str,
) -> Option<SocketAddr> {
    eprintln!("probe {what}: {} → {to} expecting {want:?}", from.label());
    let mut seen = None;
    if want.tcp {
        seen = Some(assert_tcp_ok(from, tcp.addr(to)));
    } else {
        assert_tcp_blocked(from, tcp.addr(to));
    }
    if want.udp {
        assert_udp_ok(from, udp.addr(to));
    } else {
        assert_udp_blocked(from, udp.addr(to));
    }
    if want.icmp {
        assert_ping_ok(from, to);
    } else {
        assert_ping_fails(from, to);
    }
    seen
}

/// One network of `kind` with containers c1, c2, a default network "peer" with p1, every
/// subnet routed from the external host via the host; then every path of the matrix.
fn run_kind(kind: Kind, n: u8) {
    let mut w = World::new();
    w.start_netd();
    let subnet4 = format!("10.77.{n}.0/24");
    let subnet6 = format!("fd77:{n}::/64");
    let peer4 = format!("10.78.{n}.0/24");
    let peer6 = format!("fd78:{n}::/64");
    let mut args = vec!["--subnet", &subnet4, "--ipv6", "--subnet6", &subnet6];
    args.extend_from_slice(kind.create_args());
    w.create_network("k", &args);
    w.create_network("peer", &["--subnet", &peer4, "--ipv6", "--subnet6", &peer6]);
    for s in [&subnet4, &subnet6, &peer4, &peer6] {
        w.external_route_via_host(s);
    }
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let p1 = w.container("p1");
    let r1 = w.cni_add(&c1, "k");
    let r2 = w.cni_add(&c2, "k");
    let rp = w.cni_add(&p1, "peer");
    let inspect = w.inspect_network("k");
    let gw: Vec<IpAddr> = ["gateway4", "gateway6"]
        .iter()
        .map(|k| inspect[k].as_str().unwrap().parse().unwrap())
        .collect();

    let servers = |ns: &Netns| (TcpServer::start(ns), UdpServer::start(ns));
    let (t_c1, u_c1) = servers(&c1);
    let (t_c2, u_c2) = servers(&c2);
    let (t_p1, u_p1) = servers(&p1);
    let (t_host, u_host) = servers(&w.host);
    let (t_ext, u_ext) = servers(&w.external);

    for fam in [Family { v6: false }, Family { v6: true }] {
        let a1 = fam.pick(&r1.ips());
        let a2 = fam.pick(&r2.ips());
        let ap = fam.pick(&rp.ips());
        // Positive controls in this very setup, so that no refusal below can pass because a
        // server, an address or a route is missing: every container's servers answer the
        // host, and the external host reaches the host (its route back exists).
        for (t, u, a) in [(&t_c1, &u_c1, a1), (&t_c2, &u_c2, a2), (&t_p1, &u_p1, ap)] {
            assert_tcp_ok(&w.host, t.addr(a));
            assert_udp_ok(&w.host, u.addr(a));
        }
        assert_tcp_ok(&w.external, t_host.addr(fam.host_uplink()));
        for path in Path::ALL {
            let want = expected(kind, path, fam.fam());
            let what = format!("{kind:?} {path:?} v6={}", fam.v6);
            match path {
                Path::SameNetwork => {
                    check(&c1, a2, &t_c2, &u_c2, want, &what);
                }
                Path::Gateway => {
                    check(&c1, fam.pick(&gw), &t_host, &u_host, want, &what);
                }
                Path::OtherNetwork => {
                    check(&c1, ap, &t_p1, &u_p1, want, &what);
                }
                Path::External => {
                    let seen = check(&c1, fam.ext(), &t_ext, &u_ext, want, &what);
                    if let Some(seen) = seen {
                        let expect = if kind.routes(fam.fam()) {
                            a1
                        } else {
                            fam.host_uplink()
                        };
                        assert_eq!(
                            seen.ip(),
                            expect,
                            "{what}: source seen by the external host"
                        );
                    }
                }
                Path::ExternalToContainer => {
                    check(&w.external, a1, &t_c1, &u_c1, want, &what);
                }
                Path::HostToContainer => {
                    check(&w.host, a1, &t_c1, &u_c1, want, &what);
                }
            }
        }
    }
}

#[test]
fn matrix_default() {
    run_kind(Kind::Default, 1);
}

#[test]
fn matrix_icc_off() {
    run_kind(Kind::IccOff, 2);
}

#[test]
fn matrix_internal() {
    run_kind(Kind::Internal, 3);
}

#[test]
fn matrix_routed() {
    run_kind(Kind::Routed, 4);
}

#[test]
fn matrix_isolated() {
    run_kind(Kind::Isolated, 5);
}

#[test]
fn matrix_routed_both() {
    run_kind(Kind::RoutedBoth, 6);
}

/// ICC isolation must not depend on br_netfilter: with the bridge-nf-call sysctls off in the
/// host netns, bridged frames never reach the inet forward hook, and the bridge-port
/// `isolated` flag alone keeps containers apart (ARP included), while the gateway answers.
#[test]
fn icc_off_holds_without_br_netfilter() {
    let mut w = World::new();
    let nf_call = [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ];
    if w.host.exec(&["sysctl", "-n", nf_call[0]]).success() {
        for k in nf_call {
            w.host.sysctl(k, "0");
        }
    } else {
        eprintln!("br_netfilter is not loaded here: bridged frames skip the inet hooks anyway");
    }
    w.start_netd();
    w.create_network(
        "iso",
        &[
            "--subnet",
            "10.79.1.0/24",
            "--ipv6",
            "--subnet6",
            "fd79:1::/64",
            "--icc=false",
        ],
    );
    w.create_network("open", &["--subnet", "10.79.2.0/24"]);
    let (a, b) = (w.container("a"), w.container("b"));
    let (o1, o2) = (w.container("o1"), w.container("o2"));
    let ra = w.cni_add(&a, "iso");
    let rb = w.cni_add(&b, "iso");
    w.cni_add(&o1, "open");
    let ro2 = w.cni_add(&o2, "open");
    let (tb, ub) = (TcpServer::start(&b), UdpServer::start(&b));
    for addr in rb.ips() {
        // Control: b's servers answer the host at this address.
        assert_tcp_ok(&w.host, tb.addr(addr));
        assert_udp_ok(&w.host, ub.addr(addr));
        assert_tcp_blocked(&a, tb.addr(addr));
        assert_udp_blocked(&a, ub.addr(addr));
        assert_ping_fails(&a, addr);
    }
    // No ARP/ND answer crosses isolated ports either: a has no neighbour entry for b.
    let neigh = a.ip(&["neigh", "show", "dev", "eth0"]);
    for addr in rb.ips() {
        let line = neigh.lines().find(|l| l.starts_with(&format!("{addr} ")));
        assert!(
            line.is_none_or(|l| !l.contains("lladdr")),
            "a learned b's MAC: {neigh}"
        );
    }
    let gw = w.inspect_network("iso")["gateway4"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ping_ok(&a, gw);
    let _ = ra;
    // Control: on an ICC network the same sysctls leave containers reachable.
    let t2 = TcpServer::start(&o2);
    assert_tcp_ok(&o1, t2.addr(ro2.ip()));
}
