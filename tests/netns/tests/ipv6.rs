//! IPv6: ULA subnets that stay put, routed (no-NAT) networks whose published container ports
//! answer at the container's own address, NAT over IPv6, IPv6-only networks, and the
//! forwarding checks. Real packets between private namespaces.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netd_netns_tests::world::{EXT_V4, EXT_V6, HOST_EXT_V4, HOST_EXT_V6};
use netd_netns_tests::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v6_of(r: &CniOutput) -> IpAddr {
    r.ips()
        .into_iter()
        .find(IpAddr::is_ipv6)
        .unwrap_or_else(|| panic!("no IPv6 address in the CNI result: {r}"))
}

#[test]
fn ula_subnets_are_distinct_rfc4193_and_stable_across_restarts() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("u1", &["--ipv6"]);
    w.create_network("u2", &["--ipv6"]);
    let s1 = w.inspect_network("u1")["subnet6"]
        .as_str()
        .unwrap()
        .to_string();
    let s2 = w.inspect_network("u2")["subnet6"]
        .as_str()
        .unwrap()
        .to_string();
    for s in [&s1, &s2] {
        assert!(
            s.starts_with("fd") && s.ends_with("/64"),
            "not a ULA /64: {s}"
        );
    }
    assert_ne!(s1, s2, "two networks got the same ULA subnet");
    // Same /48 (one global ID per installation), different /64s.
    let prefix48 = |s: &str| s.split(':').take(3).collect::<Vec<_>>().join(":");
    assert_eq!(prefix48(&s1), prefix48(&s2));

    w.restart_netd(libc::SIGKILL);
    assert_eq!(w.inspect_network("u1")["subnet6"], s1.as_str());
    w.create_network("u3", &["--ipv6"]);
    let s3 = w.inspect_network("u3")["subnet6"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        prefix48(&s3),
        prefix48(&s1),
        "ULA global ID changed across a restart"
    );
    assert!(s3 != s1 && s3 != s2);

    // The address works as soon as ADD returns (no DAD delay): ping the gateway at once.
    let c = w.container("c");
    let r = w.cni_add(&c, "u1");
    let gw6 = ip(w.inspect_network("u1")["gateway6"].as_str().unwrap());
    assert!(ping(&c, gw6), "IPv6 gateway not reachable right after ADD");
    let a = v6_of(&r);
    let addrs = c.ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]);
    let line = addrs
        .lines()
        .find(|l| l.contains(&format!("{a}/")))
        .unwrap_or_else(|| panic!("{a} not on eth0: {addrs}"));
    assert!(
        !line.contains("tentative"),
        "address still tentative: {line}"
    );
}

/// `--routed` is Docker's direct-routing setup: IPv6 routed, IPv4 still NATed.
#[test]
fn routed_ipv6_publishes_container_ports_at_their_own_address() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "r6",
        &[
            "--ipv6",
            "--subnet6",
            "fd66:1::/64",
            "--subnet",
            "10.66.1.0/24",
            "--routed",
        ],
    );
    let insp = w.inspect_network("r6");
    assert_eq!(insp["gateway_mode6"], "routed");
    assert_eq!(
        insp["gateway_mode4"], "nat",
        "--routed must leave IPv4 NATed"
    );
    w.external_route_via_host("fd66:1::/64");
    w.external_route_via_host("10.66.1.0/24");
    let c = w.container("c");
    let r = w.cni(
        "ADD",
        &c,
        "eth0",
        "r6",
        Some(World::port_mappings(&[
            (8080, 80, "tcp"),
            (5353, 53, "udp"),
        ])),
    );
    assert!(r.success(), "{r}\n{}", w.netd_log());
    let a = v6_of(&r);
    let a4 = r
        .ips()
        .into_iter()
        .find(IpAddr::is_ipv4)
        .expect("IPv4 address");
    let web = TcpServer::start_on_port(&c, 80);
    let other = TcpServer::start_on_port(&c, 81);
    let dns = UdpServer::start_on_port(&c, 53);
    let host_srv = TcpServer::start(&w.host);

    // IPv6: published container ports answer at the container's own address, and the
    // container sees the client's real address (no NAT in either direction).
    let seen = assert_tcp_ok(&w.external, web.addr(a));
    assert_eq!(seen.ip(), ip(EXT_V6));
    assert_eq!(assert_udp_ok(&w.external, dns.addr(a)).ip(), ip(EXT_V6));
    // Unpublished ports do not; ICMPv6 echo does.
    assert_tcp_blocked(&w.external, other.addr(a));
    assert_ping_ok(&w.external, a);
    // The host port means nothing for the routed family: nothing is DNATed on the host's
    // IPv6 address, although the host answers there (control) ...
    assert_tcp_ok(&w.external, host_srv.addr(ip(HOST_EXT_V6)));
    assert_tcp_blocked(&w.external, SocketAddr::new(ip(HOST_EXT_V6), 8080));
    // ... while the NATed IPv4 family publishes the same mapping on the host's address, and
    // the container's IPv4 address is no way in, although the external host routes to it.
    assert_eq!(
        assert_tcp_ok(&w.external, SocketAddr::new(ip(HOST_EXT_V4), 8080)).ip(),
        ip(EXT_V4)
    );
    assert_tcp_blocked(&w.external, web.addr(a4));
    assert_ping_fails(&w.external, a4);
    // Outbound: IPv6 keeps the container's address, IPv4 is masqueraded to the host's.
    let ext = TcpServer::start(&w.external);
    assert_eq!(assert_tcp_ok(&c, ext.addr(ip(EXT_V6))).ip(), a);
    assert_eq!(
        assert_tcp_ok(&c, ext.addr(ip(EXT_V4))).ip(),
        ip(HOST_EXT_V4)
    );
    let ext_udp = UdpServer::start(&w.external);
    assert_eq!(assert_udp_ok(&c, ext_udp.addr(ip(EXT_V6))).ip(), a);
    assert_eq!(
        assert_udp_ok(&c, ext_udp.addr(ip(EXT_V4))).ip(),
        ip(HOST_EXT_V4)
    );

    // DEL closes the port again.
    w.cni_del(&c, "r6");
    assert!(!w
        .host
        .nft_table("inet", "netd")
        .unwrap()
        .contains(&a.to_string()));
}

#[test]
fn nat_ipv6_publishes_on_the_host_address_and_hides_containers() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "n6",
        &[
            "--ipv6",
            "--subnet6",
            "fd66:2::/64",
            "--subnet",
            "10.66.2.0/24",
        ],
    );
    w.external_route_via_host("fd66:2::/64");
    let c = w.container("c");
    let r = w.cni(
        "ADD",
        &c,
        "eth0",
        "n6",
        Some(World::port_mappings(&[(8080, 80, "tcp")])),
    );
    assert!(r.success(), "{r}");
    let a = v6_of(&r);
    let web = TcpServer::start_on_port(&c, 80);
    // DNAT on the host's IPv6 address; the container sees the real client.
    let seen = assert_tcp_ok(&w.external, SocketAddr::new(ip(HOST_EXT_V6), 8080));
    assert_eq!(seen.ip(), ip(EXT_V6));
    // The container's own address is not reachable from outside, not even the published
    // container port, nor by ping, although its server answers the host (control).
    assert_tcp_ok(&w.host, web.addr(a));
    assert_ping_ok(&w.host, a);
    assert_tcp_blocked(&w.external, web.addr(a));
    assert_ping_fails(&w.external, a);
}

#[test]
fn ipv6_only_network() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("o6", &["--ipv6", "--no-ipv4", "--subnet6", "fd66:3::/64"]);
    let insp = w.inspect_network("o6");
    assert!(
        insp.get("subnet4").is_none() || insp["subnet4"].is_null(),
        "{insp}"
    );
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let r1 = w.cni_add(&c1, "o6");
    let r2 = w.cni_add(&c2, "o6");
    assert_eq!(r1.ips().len(), 1, "{r1}");
    let (a1, a2) = (v6_of(&r1), v6_of(&r2));
    let s2 = TcpServer::start(&c2);
    assert_eq!(assert_tcp_ok(&c1, s2.addr(a2)).ip(), a1);
    let ext = TcpServer::start(&w.external);
    assert_eq!(
        assert_tcp_ok(&c1, ext.addr(ip(EXT_V6))).ip(),
        ip(HOST_EXT_V6)
    );
    // No IPv4 on the container interface.
    assert!(c1.addrs_of("eth0").iter().all(IpAddr::is_ipv6));
}

#[test]
fn ipv6_needs_forwarding_to_create_and_to_start() {
    let mut w = World::with(WorldOptions {
        ipv6_forward: false,
        ..Default::default()
    });
    w.start_netd();
    // IPv4-only networks are fine; an IPv6 one is refused with the sysctl's name.
    w.create_network("v4", &["--subnet", "10.66.4.0/24"]);
    let out = w.netctl(&["network", "create", "v6", "--ipv6"]);
    assert!(
        !out.success(),
        "created an IPv6 network without IPv6 forwarding"
    );
    assert!(out.stderr.contains("net.ipv6.conf.all.forwarding"), "{out}");
    assert_eq!(
        w.netctl_json(&["network", "ls"]).as_array().unwrap().len(),
        1
    );

    // With forwarding on, create it; then switch forwarding off: netd refuses to start.
    w.host.sysctl("net.ipv6.conf.all.forwarding", "1");
    w.create_network("v6", &["--ipv6"]);
    w.stop_netd_gracefully();
    w.host.sysctl("net.ipv6.conf.all.forwarding", "0");
    let (status, log) = w.run_netd_expect_exit(Duration::from_secs(10));
    let status = status.expect("netd should exit by itself");
    assert!(
        !status.success(),
        "netd started without IPv6 forwarding: {log}"
    );
    assert!(log.contains("net.ipv6.conf.all.forwarding"), "{log}");
    assert!(
        log.contains("sysctl -w"),
        "the message should say how to fix it: {log}"
    );
}

#[test]
fn subnet_takes_either_family_once() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "ds",
        &[
            "--ipv6",
            "--subnet",
            "fd66:5::/64",
            "--subnet",
            "10.66.5.0/24",
            "--gateway",
            "fd66:5::fe",
        ],
    );
    let insp = w.inspect_network("ds");
    assert_eq!(insp["subnet6"], "fd66:5::/64");
    assert_eq!(insp["subnet4"], "10.66.5.0/24");
    assert_eq!(insp["gateway6"], "fd66:5::fe");
    let twice = w.netctl(&[
        "network",
        "create",
        "x",
        "--subnet",
        "10.66.6.0/24",
        "--subnet",
        "10.66.7.0/24",
    ]);
    assert_eq!(twice.code, Some(2), "{twice}");
    assert!(
        twice.stderr.contains("--subnet was given twice for IPv4"),
        "{twice}"
    );
    assert_eq!(
        w.netctl_json(&["network", "ls"]).as_array().unwrap().len(),
        1
    );
}
