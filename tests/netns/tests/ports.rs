//! Published ports (issue #4), end to end with real packets: CNI ADD with
//! `runtimeConfig.portMappings`, netd's DNAT maps, and TCP/UDP/SCTP traffic from an
//! external netns, from the host itself and from containers (hairpin). They need the
//! product binaries (`cargo build --workspace --bins`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use netd_netns_tests::world::{EXT_V4, EXT_V6, HOST_EXT_V4, HOST_EXT_V6, HOST_UPLINK};
use netd_netns_tests::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

/// One `portMappings` entry as runtimes send it.
fn pm(host: u16, ctr: u16, proto: &str, host_ip: Option<&str>) -> Value {
    let mut v = json!({"hostPort": host, "containerPort": ctr, "protocol": proto});
    if let Some(h) = host_ip {
        v["hostIP"] = json!(h);
    }
    v
}

fn add_ports(w: &World, c: &Netns, net: &str, maps: Vec<Value>) -> CniOutput {
    w.cni("ADD", c, "eth0", net, Some(json!({ "portMappings": maps })))
}

fn add_ports_ok(w: &World, c: &Netns, net: &str, maps: Vec<Value>) -> CniOutput {
    let r = add_ports(w, c, net, maps);
    assert!(
        r.success(),
        "ADD of {} with ports failed: {r}\n--- netd log ---\n{}",
        c.label(),
        w.netd_log()
    );
    r
}

fn table(w: &World) -> String {
    w.host.nft_table("inet", "netd").expect("table inet netd")
}

/// Asserts no TCP connection gets through and the server saw nothing.
fn refused(ns: &Netns, dst: SocketAddr) {
    assert_tcp_blocked(ns, dst);
}

// ---------------------------------------------------------------------------
// Reachability: outside, host, hairpin; real client address; only way in.
// ---------------------------------------------------------------------------

#[test]
fn tcp_and_udp_reachable_from_outside_host_and_containers() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    w.create_network("b", &["--subnet", "10.89.2.0/24"]);
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let c3 = w.container("c3");
    let s1 = TcpServer::start(&c1);
    let u1 = UdpServer::start(&c1);
    let other = TcpServer::start(&c1); // listening but not published
    let r1 = add_ports_ok(
        &w,
        &c1,
        "a",
        vec![
            pm(8080, s1.port(), "tcp", None),
            pm(5353, u1.port(), "udp", None),
        ],
    );
    let r2 = w.cni_add(&c2, "a");
    w.cni_add(&c3, "b");
    let gw_a = ip("10.89.1.1");
    let gw_b = ip("10.89.2.1");
    let t = table(&w);
    assert!(
        t.contains(&format!("tcp . 8080 : {} . {}", r1.ip(), s1.port())),
        "{t}"
    );
    assert!(
        t.contains(&format!("udp . 5353 : {} . {}", r1.ip(), u1.port())),
        "{t}"
    );

    let host = sa(HOST_EXT_V4, 8080);
    let host_udp = sa(HOST_EXT_V4, 5353);
    // From the external netns: the container sees the client's real address.
    assert_eq!(assert_tcp_ok(&w.external, host).ip(), ip(EXT_V4));
    assert_eq!(assert_udp_ok(&w.external, host_udp).ip(), ip(EXT_V4));
    // From the host itself, through its own non-loopback address.
    assert_eq!(assert_tcp_ok(&w.host, host).ip(), ip(HOST_EXT_V4));
    assert_eq!(assert_udp_ok(&w.host, host_udp).ip(), ip(HOST_EXT_V4));
    // And on 127.0.0.1 (route_localnet on netd's bridge; masqueraded to the gateway).
    assert_eq!(assert_tcp_ok(&w.host, sa("127.0.0.1", 8080)).ip(), gw_a);
    // Hairpin: another container of the same network, a container of another network,
    // and the publishing container itself (masqueraded to their gateway).
    assert_eq!(assert_tcp_ok(&c2, host).ip(), gw_a);
    assert_eq!(assert_udp_ok(&c2, host_udp).ip(), gw_a);
    assert_eq!(assert_tcp_ok(&c3, host).ip(), gw_a);
    let _ = gw_b;
    assert_eq!(assert_tcp_ok(&c1, host).ip(), gw_a);
    assert_eq!(assert_udp_ok(&c1, host_udp).ip(), gw_a);
    // Other containers reach c1 directly too (ICC on), with their own address.
    assert_eq!(assert_tcp_ok(&c2, s1.addr(r1.ip())).ip(), r2.ip());

    // NAT mode: the published port is the only way in from outside. Even with a route to
    // the container subnet, the container's own address does not answer from outside.
    w.external_route_via_host("10.89.1.0/24");
    // Control: c1's servers answer at its own address (from the host).
    assert_tcp_ok(&w.host, other.addr(r1.ip()));
    assert_udp_ok(&w.host, u1.addr(r1.ip()));
    refused(&w.external, s1.addr(r1.ip()));
    refused(&w.external, other.addr(r1.ip()));
    assert_udp_blocked(&w.external, u1.addr(r1.ip()));
    // Unpublished host ports and the wrong protocol answer nothing.
    refused(&w.external, sa(HOST_EXT_V4, 8081));
    assert_udp_blocked(&w.external, sa(HOST_EXT_V4, 8080));
    refused(&w.external, sa(HOST_EXT_V4, other.port()));
    // Positive control after the refusals.
    assert_eq!(assert_tcp_ok(&w.external, host).ip(), ip(EXT_V4));
}

#[test]
fn ipv6_published_port_reachable_and_ipv6_loopback_refused() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "d",
        &[
            "--subnet",
            "10.89.3.0/24",
            "--ipv6",
            "--subnet6",
            "fd00:89:3::/64",
        ],
    );
    let c1 = w.container("c1");
    let s1 = TcpServer::start(&c1);
    add_ports_ok(&w, &c1, "d", vec![pm(8080, s1.port(), "tcp", None)]);
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V6, 8080)).ip(),
        ip(EXT_V6)
    );
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080)).ip(),
        ip(EXT_V4)
    );
    // [::1] on the host is not DNATed: with a host service on port 8080, [::1]:8080 reaches
    // that service (which sees ::1), not the container (a refusal alone would also pass if
    // ::1 reached nothing at all).
    let host_8080 = TcpServer::start_on_port(&w.host, 8080);
    assert_eq!(
        assert_tcp_ok(&w.host, sa("::1", host_8080.port())).ip(),
        ip("::1")
    );
    drop(host_8080);
    refused(&w.host, sa("::1", 8080));

    // ::1 bindings are refused with a clear error, and nothing changes.
    let c2 = w.container("c2");
    let s2 = TcpServer::start(&c2);
    let before = table(&w);
    let r = add_ports(&w, &c2, "d", vec![pm(9090, s2.port(), "tcp", Some("::1"))]);
    assert!(!r.success(), "ADD with hostIP ::1 should fail: {r}");
    assert_eq!(r.error_code(), Some(7), "{r}");
    let msg = r.json.as_ref().map(|j| j.to_string()).unwrap_or_default();
    assert!(
        msg.contains("::1") && msg.contains("route_localnet"),
        "error does not explain ::1: {r}"
    );
    assert_eq!(table(&w), before, "a refused ::1 ADD changed the table");
    assert!(c2.wait_link_gone("eth0", Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------
// Host-IP bindings.
// ---------------------------------------------------------------------------

#[test]
fn host_ip_binding_answers_only_on_that_address() {
    let mut w = World::new();
    w.host
        .ip(&["addr", "add", "192.0.2.3/24", "dev", HOST_UPLINK]);
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let s1 = TcpServer::start(&c1);
    let u1 = UdpServer::start(&c1);
    let s2 = TcpServer::start(&c2);
    add_ports_ok(
        &w,
        &c1,
        "a",
        vec![
            pm(8080, s1.port(), "tcp", Some(HOST_EXT_V4)),
            pm(5353, u1.port(), "udp", Some(HOST_EXT_V4)),
        ],
    );
    let t = table(&w);
    assert!(t.contains("tcp . 192.0.2.1 . 8080 : "), "{t}");

    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080)).ip(),
        ip(EXT_V4)
    );
    assert_eq!(
        assert_udp_ok(&w.external, sa(HOST_EXT_V4, 5353)).ip(),
        ip(EXT_V4)
    );
    assert_tcp_ok(&w.host, sa(HOST_EXT_V4, 8080));
    // The host's other address does not answer, from outside nor from the host, although
    // it and 127.0.0.1 reach the host's own services (control).
    let host_srv = TcpServer::start(&w.host);
    assert_tcp_ok(&w.external, sa("192.0.2.3", host_srv.port()));
    assert_tcp_ok(&w.host, sa("192.0.2.3", host_srv.port()));
    assert_tcp_ok(&w.host, sa("127.0.0.1", host_srv.port()));
    refused(&w.external, sa("192.0.2.3", 8080));
    assert_udp_blocked(&w.external, sa("192.0.2.3", 5353));
    refused(&w.host, sa("192.0.2.3", 8080));
    refused(&w.host, sa("127.0.0.1", 8080));

    // The same port bound to the other address is free for another container.
    add_ports_ok(
        &w,
        &c2,
        "a",
        vec![pm(8080, s2.port(), "tcp", Some("192.0.2.3"))],
    );
    // Hairpin honours the binding too.
    assert_eq!(
        assert_tcp_ok(&c2, sa(HOST_EXT_V4, 8080)).ip(),
        ip("10.89.1.1")
    );
    let seen1 = assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080));
    let seen2 = assert_tcp_ok(&w.external, sa("192.0.2.3", 8080));
    assert_eq!((seen1.ip(), seen2.ip()), (ip(EXT_V4), ip(EXT_V4)));
    // ... and each address reaches its own container: stop c2's server, .3 goes dark.
    drop(s2);
    refused(&w.external, sa("192.0.2.3", 8080));
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080));
}

// ---------------------------------------------------------------------------
// Ranges, conflicts, DEL.
// ---------------------------------------------------------------------------

#[test]
fn a_range_of_100_ports() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let servers: Vec<TcpServer> = (0..100)
        .map(|i| TcpServer::start_on_port(&c1, 30000 + i))
        .collect();
    // As runtimes pass a range: one mapping per port.
    let maps = (0..100)
        .map(|i| pm(20000 + i, 30000 + i, "tcp", None))
        .collect();
    let r = add_ports_ok(&w, &c1, "a", maps);
    let t = table(&w);
    for i in 0..100u16 {
        let e = format!("tcp . {} : {} . {}", 20000 + i, r.ip(), 30000 + i);
        assert!(t.contains(&e), "missing {e}:\n{t}");
    }
    for i in 0..100u16 {
        // The server on 30000+i answers through 20000+i.
        assert_eq!(
            assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 20000 + i)).ip(),
            ip(EXT_V4)
        );
    }
    refused(&w.external, sa(HOST_EXT_V4, 19999));
    refused(&w.external, sa(HOST_EXT_V4, 20100));
    // DEL removes the whole range.
    w.cni_del(&c1, "a");
    let t = table(&w);
    assert!(!t.contains("tcp . 200"), "range left behind:\n{t}");
    refused(&w.external, sa(HOST_EXT_V4, 20050));
    drop(servers);
}

/// `-p 40000-40099:40000-40099` plus a translated port: the run of same-numbered ports is
/// one interval element (DNAT to the container's address keeps the port), the translated
/// one a port-map element. First, middle and last port of the run answer from outside; the
/// ports just outside it do not, though the container listens there too. A second
/// container cannot take one port in the middle of the run, but can take the one after it.
/// DEL removes the element, the answers and the run's conntrack entries.
#[test]
fn a_run_of_same_numbered_ports_is_one_element_and_answers_throughout() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let (first, mid, last) = (40000u16, 40050u16, 40099u16);
    let in_run: Vec<TcpServer> = [first, mid, last]
        .iter()
        .map(|p| TcpServer::start_on_port(&c1, *p))
        .collect();
    // Listening just outside the run, so that a refusal there is the table's doing.
    let below = TcpServer::start_on_port(&c1, first - 1);
    let above = TcpServer::start_on_port(&c1, last + 1);
    let translated = TcpServer::start(&c1);
    let udp_last = UdpServer::start_on_port(&c1, 41001);
    let mut maps: Vec<Value> = (first..=last).map(|p| pm(p, p, "tcp", None)).collect();
    maps.push(pm(8080, translated.port(), "tcp", None));
    maps.push(pm(41000, 41000, "udp", None));
    maps.push(pm(41001, 41001, "udp", None));
    let r = add_ports_ok(&w, &c1, "a", maps);
    let c1_ip = r.ip();

    let t = table(&w);
    assert!(
        t.contains(&format!("tcp . {first}-{last} : {c1_ip}")),
        "no range element:
{t}"
    );
    assert!(t.contains(&format!("udp . 41000-41001 : {c1_ip}")), "{t}");
    assert!(
        t.contains(&format!("tcp . 8080 : {c1_ip} . {}", translated.port())),
        "{t}"
    );
    assert!(
        !t.contains(&format!("tcp . {mid} : ")),
        "a port of the run has an element of its own:
{t}"
    );

    for p in [first, mid, last] {
        assert_eq!(
            assert_tcp_ok(&w.external, sa(HOST_EXT_V4, p)).ip(),
            ip(EXT_V4),
            "port {p} of the run"
        );
    }
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080)).ip(),
        ip(EXT_V4)
    );
    assert_eq!(
        assert_udp_ok(&w.external, sa(HOST_EXT_V4, 41001)).ip(),
        ip(EXT_V4)
    );
    // Just outside the run: the servers are up (the host reaches them at c1's own
    // address), yet the host's published address does not lead there.
    for s in [&below, &above] {
        assert_tcp_ok(&w.host, s.addr(c1_ip));
        refused(&w.external, sa(HOST_EXT_V4, s.port()));
    }

    // A crash loses nothing: the run comes back from the journal (one entry with a count)
    // and the table netd restores at start is the one it had.
    let journal = std::fs::read(w.state_dir().join("journal")).expect("read the journal");
    let run =
        format!(r#"{{"host_port":{first},"container_port":{first},"protocol":"tcp","count":100}}"#);
    assert!(
        journal.windows(run.len()).any(|b| b == run.as_bytes()),
        "the journal does not hold the run as one entry"
    );
    let before_crash = netd::ruleset::sort_elements(&t);
    w.restart_netd(libc::SIGKILL);
    assert_eq!(netd::ruleset::sort_elements(&table(&w)), before_crash);
    for p in [first, last] {
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, p));
    }

    // Someone else deletes the run's element: netd's healer puts it back.
    w.host.exec_ok(&[
        "nft",
        "delete",
        "element",
        "inet",
        "netd",
        "dnat4_any_ranges",
        &format!("{{ tcp . {first}-{last} }}"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while netd::ruleset::sort_elements(&table(&w)) != before_crash && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        netd::ruleset::sort_elements(&table(&w)),
        before_crash,
        "the deleted run was not restored"
    );
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, mid));

    // One port in the middle of c1's run is c1's: refused with the usual error, naming it.
    let c2 = w.container("c2");
    let s2 = TcpServer::start_on_port(&c2, last + 1);
    let before = table(&w);
    let clash = add_ports(&w, &c2, "a", vec![pm(mid, mid, "tcp", None)]);
    assert!(!clash.success(), "{clash}");
    assert_eq!(clash.error_code(), Some(100), "{clash}");
    let msg = clash
        .json
        .as_ref()
        .map(|j| j.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "host port tcp/0.0.0.0:{mid} is already published by container c1"
        )),
        "{clash}"
    );
    assert_eq!(table(&w), before, "a refused ADD changed the table");
    assert!(c2.wait_link_gone("eth0", Duration::from_secs(5)));
    // The port right after the run is free.
    let r2 = add_ports_ok(&w, &c2, "a", vec![pm(last + 1, last + 1, "tcp", None)]);
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, last + 1)).ip(),
        ip(EXT_V4)
    );
    assert_eq!(s2.port(), last + 1);

    // The UDP exchange left a conntrack entry DNATed to c1; DEL clears it with the rest.
    let ct = conntrack_udp(&w, 41001);
    assert!(ct.contains(&format!("src={c1_ip} ")), "{ct}");
    w.cni_del(&c1, "a");
    let t = table(&w);
    assert!(
        !t.contains(&c1_ip.to_string()),
        "c1 left elements:
{t}"
    );
    assert!(!t.contains(&format!("{first}-{last}")), "{t}");
    for p in [first, mid, last, 8080] {
        refused(&w.external, sa(HOST_EXT_V4, p));
    }
    // netd clears them right after answering the DEL (daemon/sweeper.rs).
    let gone = |ct: &str| !ct.contains(&format!("src={c1_ip} "));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut ct = conntrack_udp(&w, 41001);
    while !gone(&ct) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        ct = conntrack_udp(&w, 41001);
    }
    assert!(
        gone(&ct),
        "the run's entry is left 2 s after the DEL:\n{ct}"
    );
    // c2's port, next to where the run was, still answers.
    assert!(
        t.contains(&format!("tcp . {} : {} . {}", last + 1, r2.ip(), last + 1)),
        "{t}"
    );
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, last + 1));
    drop((in_run, below, above, translated, udp_last));
}

/// Routed mode: a run of container ports is one element of `open4_ranges`; the run's ports
/// answer at the container's own address, the port after it does not.
#[test]
fn routed_run_of_ports_opens_exactly_that_run() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "r",
        &["--subnet", "10.89.5.0/24", "--gateway-mode-ipv4", "routed"],
    );
    w.external_route_via_host("10.89.5.0/24");
    let c1 = w.container("c1");
    let servers: Vec<TcpServer> = [7000u16, 7005, 7009, 7010]
        .iter()
        .map(|p| TcpServer::start_on_port(&c1, *p))
        .collect();
    let maps = (7000u16..=7009).map(|p| pm(p, p, "tcp", None)).collect();
    let r = add_ports_ok(&w, &c1, "r", maps);
    let t = table(&w);
    assert!(t.contains(&format!("{} . tcp . 7000-7009", r.ip())), "{t}");
    for s in &servers[..3] {
        assert_eq!(assert_tcp_ok(&w.external, s.addr(r.ip())).ip(), ip(EXT_V4));
    }
    // 7010 is up (the host reaches it), but not opened.
    assert_tcp_ok(&w.host, servers[3].addr(r.ip()));
    refused(&w.external, servers[3].addr(r.ip()));
    w.cni_del(&c1, "r");
    let t = table(&w);
    assert!(!t.contains("7000-7009"), "{t}");
}

/// 10,000 mappings in one ADD (issue #14): the plugin gets no echo of them from netd
/// (`?ports=omit`), yet netd holds and publishes every one, refuses a clash with any of
/// them, and DEL removes them all.
#[test]
fn ten_thousand_ports_in_one_add() {
    const N: u16 = 10_000;
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let first = TcpServer::start_on_port(&c1, 30000);
    let last = TcpServer::start_on_port(&c1, 30000 + N - 1);
    let maps = (0..N)
        .map(|i| pm(20000 + i, 30000 + i, "tcp", None))
        .collect();
    let r = add_ports_ok(&w, &c1, "a", maps);
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 20000)).ip(),
        ip(EXT_V4)
    );
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 20000 + N - 1)).ip(),
        ip(EXT_V4)
    );
    refused(&w.external, sa(HOST_EXT_V4, 20000 + N));
    let t = table(&w);
    let elems = t.matches(&format!(": {} . ", r.ip())).count();
    assert_eq!(elems, usize::from(N), "DNAT elements of c1:\n{t}");

    // netd keeps every mapping even though the plugin's answer carried none.
    let client = netd::api::Client::new(w.socket());
    let held = client.endpoint("a", c1.label(), "eth0").unwrap();
    assert_eq!(held.endpoint.ports.len(), usize::from(N));

    // The full answer (no `ports=omit`) still echoes the mappings; the brief one does not.
    let c2 = w.container("c2");
    let c3 = w.container("c3");
    let req = |c: &Netns, host: u16| netd::api::AttachRequest {
        network: "a".into(),
        container_id: c.label().into(),
        ifname: "eth0".into(),
        netns: c.path().display().to_string(),
        port_mappings: vec![netd::model::PortMapping {
            host_port: host,
            container_port: 80,
            protocol: netd::model::Proto::Tcp,
            host_ip: None,
        }],
        ips: vec![],
        mac: None,
        ensure_network: None,
    };
    let full = client.attach(&req(&c2, 8080)).unwrap();
    assert_eq!(full.endpoint.ports.len(), 1);
    let brief = client
        .attach_omitting_ports(&req(&c3, 8081), &mut || {})
        .unwrap();
    assert!(brief.endpoint.ports.is_empty(), "{brief:?}");
    let held = client.endpoint("a", c3.label(), "eth0").unwrap();
    assert_eq!(held.endpoint.ports.len(), 1);

    // Any one of the 10,000 still clashes, naming the holder.
    let c4 = w.container("c4");
    let clash = add_ports(&w, &c4, "a", vec![pm(20000 + N / 2, 80, "tcp", None)]);
    assert!(!clash.success(), "{clash}");
    assert!(clash.stdout.contains("c1"), "{clash}");

    w.cni_del(&c1, "a");
    let t = table(&w);
    assert_eq!(t.matches(&format!(": {} . ", r.ip())).count(), 0, "{t}");
    refused(&w.external, sa(HOST_EXT_V4, 20000));
    refused(&w.external, sa(HOST_EXT_V4, 20000 + N - 1));
    drop((first, last));
}

#[test]
fn conflicting_add_is_refused_naming_the_holder_and_changes_nothing() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    w.create_network("b", &["--subnet", "10.89.2.0/24"]);
    let c1 = w.container("holder");
    let s1 = TcpServer::start(&c1);
    add_ports_ok(&w, &c1, "a", vec![pm(8080, s1.port(), "tcp", None)]);

    let c2 = w.container("late");
    let s2 = TcpServer::start(&c2);
    let cases = [
        ("a", pm(8080, s2.port(), "tcp", None)),
        ("a", pm(8080, s2.port(), "tcp", Some(HOST_EXT_V4))),
        ("b", pm(8080, s2.port(), "tcp", None)),
    ];
    for (net, map) in cases {
        let before = table(&w);
        let links = w.host.links_detail();
        let r = add_ports(&w, &c2, net, vec![map.clone()]);
        assert!(!r.success(), "ADD {map} on {net} should be refused: {r}");
        assert_eq!(r.error_code(), Some(100), "{r}");
        let msg = r.json.as_ref().map(|j| j["msg"].to_string());
        let all = r.json.as_ref().map(|j| j.to_string()).unwrap_or_default();
        assert!(
            all.contains("holder") && all.contains("8080"),
            "the error does not name the holder: {msg:?} / {r}"
        );
        assert_eq!(
            table(&w),
            before,
            "refused ADD {map} changed table inet netd"
        );
        assert_eq!(w.host.links_detail(), links, "refused ADD changed links");
        assert!(c2.wait_link_gone("eth0", Duration::from_secs(5)));
    }
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(1), "{eps}");
    // The holder still answers; another protocol or port is fine.
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080));
    add_ports_ok(
        &w,
        &c2,
        "a",
        vec![
            pm(8080, s2.port(), "udp", None),
            pm(8081, s2.port(), "tcp", None),
        ],
    );
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8081));
}

#[test]
fn del_removes_exactly_that_endpoints_mappings() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let s1 = TcpServer::start(&c1);
    let s2 = TcpServer::start(&c2);
    let u2 = UdpServer::start(&c2);
    add_ports_ok(&w, &c1, "a", vec![pm(8080, s1.port(), "tcp", None)]);
    add_ports_ok(
        &w,
        &c2,
        "a",
        vec![
            pm(8081, s2.port(), "tcp", None),
            pm(8081, u2.port(), "udp", None),
        ],
    );
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080));
    w.cni_del(&c1, "a");
    let t = table(&w);
    assert!(!t.contains("tcp . 8080 :"), "{t}");
    assert!(
        t.contains("tcp . 8081 :") && t.contains("udp . 8081 :"),
        "{t}"
    );
    refused(&w.external, sa(HOST_EXT_V4, 8080));
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8081));
    assert_udp_ok(&w.external, sa(HOST_EXT_V4, 8081));
    // A repeated DEL changes nothing.
    w.cni_del(&c1, "a");
    assert_eq!(table(&w), t);
}

#[test]
fn mappings_are_keyed_by_container_not_by_address() {
    let mut w = World::new();
    w.start_netd();
    // A /30 has one container address: B must get A's address.
    w.create_network("a", &["--subnet", "10.89.9.0/30"]);
    let ca = w.container("ctr-a");
    let cb = w.container("ctr-b");
    let sa_ = TcpServer::start(&ca);
    let sb = TcpServer::start(&cb);
    let ra = add_ports_ok(&w, &ca, "a", vec![pm(8080, sa_.port(), "tcp", None)]);
    w.cni_del(&ca, "a");
    let rb = add_ports_ok(
        &w,
        &cb,
        "a",
        vec![
            pm(8080, sb.port(), "tcp", None),
            pm(9090, sb.port(), "tcp", None),
        ],
    );
    assert_eq!(ra.ip(), rb.ip(), "the /30 forces address reuse");
    // A late DEL of A (a runtime retrying) must not touch B's mappings.
    let before = table(&w);
    w.cni_del(&ca, "a");
    assert_eq!(table(&w), before, "DEL of A changed B's mappings");
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080));
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 9090));
    // Stop A's server: 8080 still answers, so it reaches B.
    drop(sa_);
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080));
    w.cni_del(&cb, "a");
    refused(&w.external, sa(HOST_EXT_V4, 9090));
}

// ---------------------------------------------------------------------------
// Restart.
// ---------------------------------------------------------------------------

fn restart_keeps_mappings(signal: i32) {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let s1 = TcpServer::start(&c1);
    let u1 = UdpServer::start(&c1);
    add_ports_ok(
        &w,
        &c1,
        "a",
        vec![
            pm(8080, s1.port(), "tcp", None),
            pm(5353, u1.port(), "udp", Some(HOST_EXT_V4)),
        ],
    );
    let before = table(&w);
    w.stop_netd(signal);
    // The dataplane keeps working while netd is down.
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080));
    w.start_netd();
    assert_eq!(table(&w), before, "table after restart");
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080)).ip(),
        ip(EXT_V4)
    );
    assert_udp_ok(&w.external, sa(HOST_EXT_V4, 5353));
    // The restarted netd still refuses a conflict and releases on DEL.
    let c2 = w.container("c2");
    let r = add_ports(&w, &c2, "a", vec![pm(8080, 80, "tcp", None)]);
    assert!(!r.success(), "conflict after restart accepted: {r}");
    w.cni_del(&c1, "a");
    refused(&w.external, sa(HOST_EXT_V4, 8080));
}

#[test]
fn restart_after_sigterm_keeps_mappings() {
    restart_keeps_mappings(libc::SIGTERM);
}

#[test]
fn restart_after_kill_9_keeps_mappings() {
    restart_keeps_mappings(libc::SIGKILL);
}

// ---------------------------------------------------------------------------
// 127.0.0.1: host only.
// ---------------------------------------------------------------------------

/// Makes `ns` send packets for 127.0.0.1 to `via` on `dev` (policy routing ahead of the
/// local table), as a remote host that routes 127.0.0.1 to the host would.
fn route_loopback_via(ns: &Netns, via: &str, dev: &str) {
    ns.ip(&[
        "route",
        "add",
        "127.0.0.1/32",
        "via",
        via,
        "dev",
        dev,
        "table",
        "100",
    ]);
    ns.ip(&[
        "rule",
        "add",
        "pref",
        "10",
        "to",
        "127.0.0.1/32",
        "lookup",
        "100",
    ]);
    ns.ip(&["rule", "del", "pref", "0"]);
    ns.ip(&["rule", "add", "pref", "20", "lookup", "local"]);
    // The attacker also accepts answers from 127.0.0.1 on its own side.
    ns.sysctl(&format!("net.ipv4.conf.{dev}.route_localnet"), "1");
}

/// Packets for 127.0.0.1:`port` the host netns saw arrive (a counter in a test table).
fn loopback_arrivals(w: &World, port: u16) -> u64 {
    let t = w.host.nft_table("ip", "probe").unwrap_or_default();
    let needle = format!("ip daddr 127.0.0.1 tcp dport {port} counter packets ");
    t.lines()
        .find_map(|l| l.trim().strip_prefix(&needle))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter for port {port} in:\n{t}"))
}

#[test]
fn loopback_binding_answers_only_on_the_host() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let s1 = TcpServer::start(&c1);
    add_ports_ok(
        &w,
        &c1,
        "a",
        vec![pm(8080, s1.port(), "tcp", Some("127.0.0.1"))],
    );
    w.cni_add(&c2, "a");
    let bridge = w.inspect_network("a")["bridge"]
        .as_str()
        .expect("bridge")
        .to_string();
    assert_eq!(
        w.host
            .sysctl_get(&format!("net.ipv4.conf.{bridge}.route_localnet")),
        "1"
    );
    // The global and the uplink's setting are untouched.
    assert_eq!(w.host.sysctl_get("net.ipv4.conf.all.route_localnet"), "0");
    assert_eq!(
        w.host
            .sysctl_get(&format!("net.ipv4.conf.{HOST_UPLINK}.route_localnet")),
        "0"
    );

    // The host reaches it on 127.0.0.1 (masqueraded to the gateway), not elsewhere, although
    // the host's address answers for the host's own services (control).
    let lo = sa("127.0.0.1", 8080);
    assert_eq!(assert_tcp_ok(&w.host, lo).ip(), ip("10.89.1.1"));
    let host_srv = TcpServer::start(&w.host);
    assert_tcp_ok(&w.host, sa(HOST_EXT_V4, host_srv.port()));
    assert_tcp_ok(&w.external, sa(HOST_EXT_V4, host_srv.port()));
    assert_tcp_ok(&c2, sa(HOST_EXT_V4, host_srv.port()));
    drop(host_srv);
    refused(&w.host, sa(HOST_EXT_V4, 8080));
    refused(&w.external, sa(HOST_EXT_V4, 8080));
    refused(&c2, sa(HOST_EXT_V4, 8080));

    // A host-only service on the host's loopback, as a control for the attack below.
    let host_lo = TcpServer::start(&w.host);
    assert_tcp_ok(&w.host, sa("127.0.0.1", host_lo.port()));
    w.host.nft_apply(&format!(
        "table ip probe {{
            chain pre {{
                type filter hook prerouting priority -300; policy accept;
                ip daddr 127.0.0.1 tcp dport 8080 counter
                ip daddr 127.0.0.1 tcp dport {} counter
            }}
        }}",
        host_lo.port()
    ));

    // A remote host routing 127.0.0.1 to the host: the packets arrive and go nowhere.
    route_loopback_via(&w.external, HOST_EXT_V4, "eth0");
    refused(&w.external, lo);
    assert!(
        loopback_arrivals(&w, 8080) > 0,
        "the external netns did not send 127.0.0.1 to the host"
    );
    refused(&w.external, sa("127.0.0.1", host_lo.port()));

    // The same from a container, through a bridge that has route_localnet: still nothing,
    // neither the published port nor the host's loopback services.
    let before = loopback_arrivals(&w, 8080);
    route_loopback_via(&c2, "10.89.1.1", "eth0");
    refused(&c2, lo);
    assert!(
        loopback_arrivals(&w, 8080) > before,
        "c2's packets did not arrive"
    );
    let before = loopback_arrivals(&w, host_lo.port());
    refused(&c2, sa("127.0.0.1", host_lo.port()));
    assert!(loopback_arrivals(&w, host_lo.port()) > before);
    let host_lo_udp = UdpServer::start(&w.host);
    assert_udp_ok(&w.host, sa("127.0.0.1", host_lo_udp.port()));
    assert_udp_blocked(&c2, sa("127.0.0.1", host_lo_udp.port()));
    assert_udp_blocked(&w.external, sa("127.0.0.1", host_lo_udp.port()));
    // Control: c2 reaches the host service on the gateway address, and the host still
    // reaches the published port.
    assert_tcp_ok(&c2, sa("10.89.1.1", host_lo.port()));
    assert_tcp_ok(&w.host, lo);
}

/// Sends one UDP datagram from `ns` with a source address of our choosing, as a container
/// that forges its source would: a raw socket with its own IPv4 header (the kernel fills in
/// the total length, ID and header checksum, and keeps the source; a UDP checksum of 0 means
/// none in IPv4).
fn send_udp4_from(ns: &Netns, src: Ipv4Addr, dst: SocketAddrV4, payload: &[u8]) {
    let mut pkt = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    pkt.extend_from_slice(&src.octets());
    pkt.extend_from_slice(&dst.ip().octets());
    pkt.extend_from_slice(&40000u16.to_be_bytes());
    pkt.extend_from_slice(&dst.port().to_be_bytes());
    pkt.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    pkt.extend_from_slice(&[0, 0]);
    pkt.extend_from_slice(payload);
    ns.run_in(|| {
        // SAFETY: a fresh raw socket, a sockaddr_in on the stack, a buffer we own; closed here.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = libc::AF_INET as u16;
            a.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
            let n = libc::sendto(
                fd,
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(n, pkt.len() as isize, "raw send from {src} to {dst}: {err}");
        }
    });
}

/// The sources of the datagrams `sock` receives within one second.
fn sources(sock: &UdpSocket) -> Vec<IpAddr> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 256];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            seen.push(from.ip());
        }
    }
    seen
}

/// route_localnet on netd's bridges (for ports published on 127.0.0.1) also switches off the
/// kernel's martian check for 127/8 *sources* arriving there. netd's input and forward chains
/// drop such packets; a container forging 127.0.0.2 reaches neither the host nor the outside,
/// while the same datagram with its real source does, and the host's own loopback DNAT works.
#[test]
fn spoofed_loopback_sources_from_a_container_are_dropped() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let s1 = TcpServer::start(&c1);
    let r1 = add_ports_ok(
        &w,
        &c1,
        "a",
        vec![pm(8080, s1.port(), "tcp", Some("127.0.0.1"))],
    );
    let a1 = match r1.ip() {
        IpAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    };
    let gw = Ipv4Addr::new(10, 89, 1, 1);
    // Not 127.0.0.1: the kernel still refuses a source that is one of its own addresses
    // (fib_validate_source), but any other 127/8 source passes once route_localnet is on.
    let forged = Ipv4Addr::new(127, 0, 0, 2);
    let bridge = w.inspect_network("a")["bridge"]
        .as_str()
        .expect("bridge")
        .to_string();
    // The kernel's own check is off on this bridge, and reverse-path filtering (which would
    // refuse 127/8 sources too) is off as by the kernel's default: only netd's rules stand
    // in the way.
    assert_eq!(
        w.host
            .sysctl_get(&format!("net.ipv4.conf.{bridge}.route_localnet")),
        "1"
    );
    w.host.sysctl("net.ipv4.conf.all.rp_filter", "0");
    w.host
        .sysctl(&format!("net.ipv4.conf.{bridge}.rp_filter"), "0");
    let host_rx = w.host.run_in(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
    let ext_rx = w.external.run_in(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
    let (p_in, p_out) = (
        host_rx.local_addr().unwrap().port(),
        ext_rx.local_addr().unwrap().port(),
    );
    // Counts the forged datagrams arriving on the bridge, so "nothing received" cannot mean
    // "nothing sent".
    w.host.nft_apply(&format!(
        "table ip probe {{
            chain pre {{
                type filter hook prerouting priority -300; policy accept;
                iifname \"{bridge}\" ip saddr {forged} udp dport {p_in} counter
                iifname \"{bridge}\" ip saddr {forged} udp dport {p_out} counter
            }}
        }}"
    ));
    let arrivals = |port: u16| -> u64 {
        let t = w.host.nft_table("ip", "probe").unwrap_or_default();
        let needle = format!("udp dport {port} counter packets ");
        t.lines()
            .find_map(|l| l.split_once(&needle).map(|(_, r)| r.to_string()))
            .and_then(|r| r.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| panic!("no counter for port {port} in:\n{t}"))
    };

    // Input path (to the gateway address): the real source arrives, the forged one does not.
    send_udp4_from(&c1, a1, SocketAddrV4::new(gw, p_in), b"real\n");
    assert_eq!(sources(&host_rx), vec![IpAddr::V4(a1)]);
    send_udp4_from(&c1, forged, SocketAddrV4::new(gw, p_in), b"forged\n");
    assert_eq!(sources(&host_rx), Vec::<IpAddr>::new());
    assert_eq!(
        arrivals(p_in),
        1,
        "the forged datagram did not reach the bridge"
    );

    // Forward path (to the external host). The real source goes first: it also resolves the
    // neighbours on the way (an ARP request from a 127/8 source would itself be refused).
    let ext = SocketAddrV4::new(EXT_V4.parse().unwrap(), p_out);
    send_udp4_from(&c1, a1, ext, b"real\n");
    assert_eq!(sources(&ext_rx), vec![ip(HOST_EXT_V4)], "masqueraded");
    // The external host is told to accept loopback sources on its uplink, and does: the host
    // itself gets such a datagram through to it.
    w.external.sysctl("net.ipv4.conf.eth0.route_localnet", "1");
    send_udp4_from(&w.host, forged, ext, b"from the host\n");
    assert_eq!(sources(&ext_rx), vec![IpAddr::V4(forged)]);
    send_udp4_from(&c1, forged, ext, b"forged\n");
    assert_eq!(sources(&ext_rx), Vec::<IpAddr>::new());
    assert_eq!(
        arrivals(p_out),
        1,
        "the forged datagram did not reach the bridge"
    );

    // The host's own connection to the port published on 127.0.0.1 still works.
    assert_eq!(
        assert_tcp_ok(&w.host, sa("127.0.0.1", 8080)).ip(),
        ip("10.89.1.1")
    );
}

// ---------------------------------------------------------------------------
// UDP conntrack.
// ---------------------------------------------------------------------------

/// netd's log without terminal colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn conntrack_udp(w: &World, port: u16) -> String {
    let out = w.host.exec(&[
        "conntrack",
        "-L",
        "-p",
        "udp",
        "--orig-port-dst",
        &port.to_string(),
    ]);
    out.stdout
}

#[test]
fn stale_udp_conntrack_entries_are_cleared_on_add() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let u1 = UdpServer::start(&c1);
    // A container's own outbound flow to a remote port 5353 must survive the clearing.
    let c0 = w.container("c0");
    let r0 = w.cni_add(&c0, "a");
    let out = c0.run_in(|| UdpSocket::bind("0.0.0.0:0")).expect("bind");
    out.connect(sa(EXT_V4, 5353)).expect("connect");
    out.send(b"out\n").expect("send");
    let outbound = format!("src={} dst={EXT_V4} ", r0.ip());

    // A client keeps sending to 192.0.2.1:5353 (and :5354) before anything is published.
    let sock = w
        .external
        .run_in(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("bind");
    sock.connect(sa(HOST_EXT_V4, 5353)).expect("connect");
    let other = w
        .external
        .run_in(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("bind");
    other.connect(sa(HOST_EXT_V4, 5354)).expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (s, o, stop) = (
            sock.try_clone().unwrap(),
            other.try_clone().unwrap(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = s.send(b"early\n");
                let _ = o.send(b"early\n");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let ct = conntrack_udp(&w, 5353);
    let client = format!(
        "src={EXT_V4} dst={HOST_EXT_V4} sport={} dport=5353 ",
        sock.local_addr().unwrap().port()
    );
    let client_entry = |ct: &str| -> String {
        ct.lines()
            .find(|l| l.contains(&client))
            .unwrap_or_else(|| panic!("no entry {client:?} in:\n{ct}"))
            .to_string()
    };
    assert!(
        client_entry(&ct).contains(&format!("[UNREPLIED] src={HOST_EXT_V4} ")),
        "expected an un-NATed entry before the ADD:\n{ct}"
    );

    assert!(ct.contains(&outbound), "no outbound entry:\n{ct}");
    let r = add_ports_ok(&w, &c1, "a", vec![pm(5353, u1.port(), "udp", None)]);
    // The client keeps sending across the ADD, then asks for an answer.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();

    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 256];
    let mut answer = None;
    let mut tries = 0;
    let t0 = Instant::now();
    // At most one pending ICMP error from before the ADD may be reported first.
    while tries < 3 && answer.is_none() {
        tries += 1;
        sock.send(b"probe\n").unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => answer = Some(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            Err(e) => eprintln!("try {tries}: {e}"),
        }
    }
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "the same client never reached the new container ({:?}):\n{}",
            t0.elapsed(),
            conntrack_udp(&w, 5353)
        )
    });
    let local = sock.local_addr().unwrap();
    assert_eq!(
        answer,
        format!("{EXT_V4}:{}", local.port()),
        "the container sees the client's real address and port"
    );
    // Exactly the client's entry: not the one to :5354, not c0's outbound one.
    let log = strip_ansi(&w.netd_log());
    assert!(
        log.lines()
            .any(|l| l.contains("cleared stale UDP conntrack entries") && l.contains("deleted=1")),
        "netd did not report clearing one entry:\n{log}"
    );
    let ct = conntrack_udp(&w, 5353);
    assert!(
        client_entry(&ct).contains(&format!("src={} dst={EXT_V4} ", r.ip())),
        "the flow is not DNATed to the container after the ADD:\n{ct}"
    );
    assert!(
        conntrack_udp(&w, 5354).contains("dport=5354"),
        "an unrelated UDP entry was cleared"
    );
    assert!(
        ct.contains(&outbound),
        "the container's outbound flow to a remote port 5353 was cleared:\n{ct}"
    );
}

/// The host's IPv4 conntrack entries that name `addr` in either tuple.
fn conntrack_with(w: &World, addr: IpAddr) -> Vec<String> {
    let out = w.host.exec(&["conntrack", "-L"]);
    assert!(out.success(), "conntrack -L: {out}");
    let needle = (format!("src={addr} "), format!("dst={addr} "));
    out.stdout
        .lines()
        .filter(|l| l.contains(&needle.0) || l.contains(&needle.1))
        .map(str::to_string)
        .collect()
}

/// DEL ends the released endpoint's flows: its conntrack entries (UDP and TCP, DNATed to it
/// or masqueraded from it) go, so a UDP client that keeps sending to the published port
/// reaches nothing afterwards, and the container that later gets the same address (the
/// allocation cursor, kept across a restart, first hands out every other free address)
/// receives none of the stale datagrams.
#[test]
fn del_clears_the_endpoints_flows_and_its_address_comes_back_last() {
    let mut w = World::new();
    w.start_netd();
    // A /29: containers get .2 to .6, so five more ADDs bring a released .2 round again.
    w.create_network("a", &["--subnet", "10.89.9.0/29"]);
    let c1 = w.container("c1");
    let u1 = UdpServer::start_on_port(&c1, 53);
    let t1 = TcpServer::start(&c1);
    let r1 = add_ports_ok(
        &w,
        &c1,
        "a",
        vec![pm(5353, 53, "udp", None), pm(8080, t1.port(), "tcp", None)],
    );
    let a1 = r1.ip();

    // A client that keeps sending to the published UDP port, and is answered by c1.
    let client = w
        .external
        .run_in(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("bind");
    client.connect(sa(HOST_EXT_V4, 5353)).expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (s, stop) = (client.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = s.send(b"stale\n");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let answers = |within: Duration| -> usize {
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 256];
        let mut n = 0;
        while Instant::now() < deadline {
            // An ICMP port unreachable surfaces as an error on the connected socket.
            if client.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    };
    assert!(answers(Duration::from_secs(1)) > 0, "c1 did not answer");
    // More flows through c1: a DNATed TCP connection, and its own outbound TCP and UDP.
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 8080)).ip(),
        ip(EXT_V4)
    );
    let (ext_t, ext_u) = (TcpServer::start(&w.external), UdpServer::start(&w.external));
    assert_eq!(
        assert_tcp_ok(&c1, ext_t.addr(ip(EXT_V4))).ip(),
        ip(HOST_EXT_V4)
    );
    assert_eq!(
        assert_udp_ok(&c1, ext_u.addr(ip(EXT_V4))).ip(),
        ip(HOST_EXT_V4)
    );
    let before = conntrack_with(&w, a1);
    for want in [
        "dport=5353",
        "dport=8080",
        &format!("dport={}", ext_t.port()),
    ] {
        assert!(
            before.iter().any(|l| l.contains(want)),
            "no entry with {want} for {a1}:\n{}",
            before.join("\n")
        );
    }
    assert!(before
        .iter()
        .any(|l| l.starts_with("udp") && l.contains(&format!("dport={}", ext_u.port()))));

    w.cni_del(&c1, "a");
    // netd clears them right after answering the DEL (daemon/sweeper.rs), before the
    // address can be handed out again.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = conntrack_with(&w, a1);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = conntrack_with(&w, a1);
    }
    assert_eq!(
        left,
        Vec::<String>::new(),
        "entries of the released address are left 2 s after the DEL"
    );
    let log = strip_ansi(&w.netd_log());
    assert!(
        log.lines().any(
            |l| l.contains("cleared released endpoints' conntrack entries")
                && !l.contains("deleted=0")
        ),
        "netd did not report clearing entries:\n{log}"
    );
    // The client, still sending, reaches nothing (answers already on their way are drained).
    std::thread::sleep(Duration::from_millis(300));
    answers(Duration::from_millis(300));
    assert_eq!(answers(Duration::from_secs(1)), 0, "answered after DEL");
    drop(u1);

    // The cursor survives a restart: the next ADDs take every other free address first.
    w.restart_netd(libc::SIGTERM);
    let others: Vec<Netns> = (0..4).map(|i| w.container(&format!("d{i}"))).collect();
    for (i, d) in others.iter().enumerate() {
        let got = w.cni_add(d, "a").ip();
        assert_ne!(got, a1, "the released address came back at once (ADD {i})");
        if i == 0 {
            assert_eq!(got, ip("10.89.9.3"), "next-fit continues after {a1}");
        }
    }
    let c2 = w.container("c2");
    let rx = c2
        .run_in(|| UdpSocket::bind("0.0.0.0:53"))
        .expect("bind :53");
    let r2 = w.cni_add(&c2, "a");
    assert_eq!(r2.ip(), a1, "the /29 is full but for c1's old address");
    // c2 listens where c1 did and gets nothing of the client's, which is still sending ...
    assert_eq!(
        sources(&rx),
        Vec::<IpAddr>::new(),
        "stale datagrams reached c2"
    );
    // ... although it receives what is sent to it (control).
    let probe = w.host.run_in(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
    probe.send_to(b"hello\n", SocketAddr::new(a1, 53)).unwrap();
    assert_eq!(sources(&rx), vec![ip("10.89.9.1")]);
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
}

// ---------------------------------------------------------------------------
// SCTP.
// ---------------------------------------------------------------------------

/// An SCTP (one-to-one style) listener in `ns` on `port` that writes "ok\n" to one
/// connection; None if the kernel has no SCTP.
fn sctp_listen(ns: &Netns, port: u16) -> Result<i32, String> {
    ns.run_in(|| {
        // SAFETY: plain socket calls on a fresh fd.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP);
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = libc::AF_INET as u16;
            a.sin_port = port.to_be();
            if libc::bind(
                fd,
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            ) < 0
                || libc::listen(fd, 4) < 0
            {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(format!("bind/listen: {e}"));
            }
            Ok(fd)
        }
    })
}

fn sctp_connect(ns: &Netns, dst: std::net::SocketAddrV4) -> Result<(), String> {
    // SAFETY: plain socket calls on a fresh fd, closed before returning.
    ns.run_in(|| unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as u16;
        a.sin_port = dst.port().to_be();
        a.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
        let r = if libc::connect(
            fd,
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) < 0
        {
            Err(format!("connect: {}", std::io::Error::last_os_error()))
        } else {
            let mut buf = [0u8; 16];
            let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
            if n == 3 && &buf[..3] == b"ok\n" {
                Ok(())
            } else {
                Err(format!("read: {n} {}", std::io::Error::last_os_error()))
            }
        };
        libc::close(fd);
        r
    })
}

/// Accepts one connection on `fd` in a thread and writes "ok\n".
fn sctp_serve_once(fd: i32) -> std::thread::JoinHandle<bool> {
    // SAFETY: poll/accept/write/close on fds this thread owns.
    std::thread::spawn(move || unsafe {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut p, 1, 5000) <= 0 {
            libc::close(fd);
            return false;
        }
        let c = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
        let ok = c >= 0 && libc::write(c, b"ok\n".as_ptr() as *const libc::c_void, 3) == 3;
        if c >= 0 {
            libc::close(c);
        }
        libc::close(fd);
        ok
    })
}

/// CRC32c (Castagnoli, reflected), SCTP's checksum (RFC 9260, appendix A).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet holding one INIT chunk, with its checksum: what a client's first packet
/// of an association looks like to conntrack and NAT.
fn sctp_init_packet(src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(src_port.to_be_bytes());
    p.extend(dst_port.to_be_bytes());
    p.extend(0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend(0u32.to_be_bytes()); // checksum, below
    p.extend([1u8, 0]); // chunk INIT, no flags
    p.extend(20u16.to_be_bytes());
    p.extend(0x5eed_0001u32.to_be_bytes()); // initiate tag
    p.extend(65535u32.to_be_bytes()); // a_rwnd
    p.extend(1u16.to_be_bytes()); // outbound streams
    p.extend(1u16.to_be_bytes()); // inbound streams
    p.extend(1u32.to_be_bytes()); // initial TSN
                                  // Linux stores the CRC little-endian (sctp_compute_cksum: cpu_to_le32).
    let c = crc32c(&p);
    p[8..12].copy_from_slice(&c.to_le_bytes());
    p
}

fn raw_sctp_socket(ns: &Netns) -> i32 {
    ns.run_in(|| {
        // SAFETY: plain socket calls on a fresh fd. Raw IP sockets of protocol 132 need no
        // SCTP support in the kernel: they see and send SCTP packets as plain IP payloads.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_SCTP);
            assert!(
                fd >= 0,
                "raw SCTP socket in {}: {}",
                ns.name(),
                std::io::Error::last_os_error()
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            fd
        }
    })
}

fn raw_send(fd: i32, dst: std::net::Ipv4Addr, payload: &[u8]) {
    // SAFETY: sendto with a valid buffer and address.
    unsafe {
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as u16;
        a.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let n = libc::sendto(
            fd,
            payload.as_ptr() as *const libc::c_void,
            payload.len(),
            0,
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(
            n,
            payload.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// An SCTP packet as a raw socket received it: (IP source, IP destination, source port,
/// destination port, whether its CRC32c is right).
type SeenSctp = (std::net::Ipv4Addr, std::net::Ipv4Addr, u16, u16, bool);

/// SCTP packets `fd` receives within `limit`.
fn raw_recv_sctp(fd: i32, limit: Duration) -> Vec<SeenSctp> {
    let mut seen = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 2048];
    while t0.elapsed() < limit {
        // SAFETY: recv into a buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let pkt = &buf[..n as usize];
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        if pkt.len() < ihl + 12 {
            continue;
        }
        let ip = |o: usize| std::net::Ipv4Addr::new(pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]);
        let mut sctp = pkt[ihl..].to_vec();
        let stored = u32::from_le_bytes(sctp[8..12].try_into().unwrap());
        sctp[8..12].fill(0);
        seen.push((
            ip(12),
            ip(16),
            u16::from_be_bytes([pkt[ihl], pkt[ihl + 1]]),
            u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]),
            crc32c(&sctp) == stored,
        ));
    }
    seen
}

/// SCTP published ports, proved with SCTP packets. This kernel (like CI's) is built without
/// SCTP sockets (CONFIG_IP_SCTP unset, so no module to load either), but conntrack and NAT
/// handle SCTP without it. So the test sends an INIT from a raw socket outside to the
/// published host port and asserts that the container's raw socket receives it DNATed to
/// its own address and container port, with the checksum rewritten correctly, and that an
/// INIT to an unpublished port reaches nothing. Where the kernel does offer SCTP sockets, a
/// real association through the published port is made as well.
#[test]
fn sctp_published_port() {
    assert_eq!(crc32c(b"123456789"), 0xe306_9283, "CRC32c check value");
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    let c1 = w.container("c1");
    let r = add_ports_ok(&w, &c1, "a", vec![pm(9000, 9001, "sctp", None)]);
    let t = table(&w);
    assert!(
        t.contains(&format!("sctp . 9000 : {} . 9001", r.ip())),
        "no SCTP element:\n{t}"
    );
    let IpAddr::V4(cip) = r.ip() else {
        panic!("no IPv4 address: {r}")
    };
    let host: std::net::Ipv4Addr = HOST_EXT_V4.parse().unwrap();
    let ext: std::net::Ipv4Addr = EXT_V4.parse().unwrap();
    let rx = raw_sctp_socket(&c1);
    let tx = raw_sctp_socket(&w.external);
    // Negative probe first: an unpublished SCTP port reaches nothing in the container.
    raw_send(tx, host, &sctp_init_packet(40002, 9002));
    let seen = raw_recv_sctp(rx, Duration::from_millis(800));
    assert!(
        seen.is_empty(),
        "an unpublished port reached the container: {seen:?}"
    );
    // Positive control in the same setup: the published port does, DNATed.
    let mut seen = Vec::new();
    for _ in 0..3 {
        raw_send(tx, host, &sctp_init_packet(40001, 9000));
        seen = raw_recv_sctp(rx, Duration::from_millis(800));
        if !seen.is_empty() {
            break;
        }
    }
    // SAFETY: closing fds this test opened.
    unsafe {
        libc::close(rx);
        libc::close(tx);
    }
    assert_eq!(
        seen.first().copied(),
        Some((ext, cip, 40001, 9001, true)),
        "the INIT to {host}:9000 should arrive as {ext}:40001 -> {cip}:9001 with a valid checksum; saw {seen:?}"
    );

    match sctp_listen(&c1, 9001) {
        Ok(fd) => {
            let server = sctp_serve_once(fd);
            let dst = "192.0.2.1:9000".parse().unwrap();
            let res = sctp_connect(&w.external, dst);
            let served = server.join().unwrap();
            res.unwrap_or_else(|e| panic!("SCTP to {dst} failed: {e}"));
            assert!(served);
            assert!(sctp_connect(&w.external, "192.0.2.1:9002".parse().unwrap()).is_err());
        }
        // Not a skip: the packets above proved the published port; this kernel just cannot
        // terminate an association.
        Err(e) => println!("no SCTP association test: the kernel has no SCTP sockets ({e})"),
    }
}

// ---------------------------------------------------------------------------
// Routed mode: the container's own address answers on the published port only.
// ---------------------------------------------------------------------------

#[test]
fn routed_mode_opens_only_the_published_container_port() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "r",
        &["--subnet", "10.89.5.0/24", "--gateway-mode-ipv4", "routed"],
    );
    w.external_route_via_host("10.89.5.0/24");
    let c1 = w.container("c1");
    let s1 = TcpServer::start(&c1);
    let other = TcpServer::start(&c1);
    let r = add_ports_ok(&w, &c1, "r", vec![pm(8080, s1.port(), "tcp", None)]);
    let t = table(&w);
    assert!(
        t.contains(&format!("{} . tcp . {}", r.ip(), s1.port())),
        "{t}"
    );
    assert_eq!(assert_tcp_ok(&w.external, s1.addr(r.ip())).ip(), ip(EXT_V4));
    // The unpublished server is up (it answers the host), yet closed from outside.
    assert_tcp_ok(&w.host, other.addr(r.ip()));
    refused(&w.external, other.addr(r.ip()));
}

/// Asserts an ADD with `maps` on `net` is refused as invalid (CNI code 7) with a message
/// containing `needle`, and changes neither the table nor the endpoints nor the links.
fn refused_as_invalid(w: &World, c: &Netns, net: &str, maps: Vec<Value>, needle: &str) {
    let before = table(w);
    let eps = w.netctl_json(&["endpoint", "ls"]);
    let r = add_ports(w, c, net, maps.clone());
    assert!(!r.success(), "ADD {maps:?} on {net} should be refused: {r}");
    assert_eq!(r.error_code(), Some(7), "{r}");
    let msg = r.json.as_ref().map(|j| j.to_string()).unwrap_or_default();
    assert!(
        msg.contains(needle),
        "the error does not say {needle:?}: {r}"
    );
    assert_eq!(table(w), before, "a refused ADD changed the table");
    assert_eq!(w.netctl_json(&["endpoint", "ls"]), eps);
    assert!(c.wait_link_gone("eth0", Duration::from_secs(5)));
}

/// In routed mode the host port is not used: two routed containers both publish container
/// port 80, and a NAT network's container holds host port 80, without any conflict. Each
/// routed one answers at its own address, the NAT one at the host's. A mapping on an isolated
/// family publishes nothing and is refused rather than stored.
#[test]
fn routed_ports_are_not_host_ports() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "r",
        &["--subnet", "10.89.5.0/24", "--gateway-mode-ipv4", "routed"],
    );
    w.create_network("n", &["--subnet", "10.89.6.0/24"]);
    w.create_network(
        "iso",
        &[
            "--subnet",
            "10.89.7.0/24",
            "--gateway-mode-ipv4",
            "isolated",
        ],
    );
    w.external_route_via_host("10.89.5.0/24");
    let (c1, c2, c3) = (w.container("c1"), w.container("c2"), w.container("c3"));
    let (s1, s2, s3) = (
        TcpServer::start_on_port(&c1, 80),
        TcpServer::start_on_port(&c2, 80),
        TcpServer::start_on_port(&c3, 80),
    );
    let unpublished = TcpServer::start_on_port(&c1, 81);
    let u1 = UdpServer::start_on_port(&c1, 80);
    let r3 = add_ports_ok(&w, &c3, "n", vec![pm(80, 80, "tcp", None)]);
    let r1 = add_ports_ok(
        &w,
        &c1,
        "r",
        vec![pm(80, 80, "tcp", None), pm(80, 80, "udp", None)],
    );
    let r2 = add_ports_ok(&w, &c2, "r", vec![pm(80, 80, "tcp", Some("0.0.0.0"))]);
    let t = table(&w);
    for r in [&r1, &r2] {
        assert!(t.contains(&format!("{} . tcp . 80", r.ip())), "{t}");
    }

    // Each routed container at its own address; the external host's real address is seen.
    assert_eq!(
        assert_tcp_ok(&w.external, s1.addr(r1.ip())).ip(),
        ip(EXT_V4)
    );
    assert_eq!(
        assert_udp_ok(&w.external, u1.addr(r1.ip())).ip(),
        ip(EXT_V4)
    );
    assert_eq!(
        assert_tcp_ok(&w.external, s2.addr(r2.ip())).ip(),
        ip(EXT_V4)
    );
    // The NAT container at the host's port 80, which is its alone.
    assert_eq!(
        assert_tcp_ok(&w.external, sa(HOST_EXT_V4, 80)).ip(),
        ip(EXT_V4)
    );
    // Only the published container port opens: c1's 81 answers the host but not outside.
    assert_tcp_ok(&w.host, unpublished.addr(r1.ip()));
    refused(&w.external, unpublished.addr(r1.ip()));
    // The NAT container's own address stays closed (control: the host reaches it).
    w.external_route_via_host("10.89.6.0/24");
    assert_tcp_ok(&w.host, s3.addr(r3.ip()));
    refused(&w.external, s3.addr(r3.ip()));

    // Isolated: the mapping would publish nothing, so it is refused (code 7), not stored.
    let c4 = w.container("c4");
    refused_as_invalid(
        &w,
        &c4,
        "iso",
        vec![pm(8080, 80, "tcp", None)],
        "publishes nothing",
    );
    // Without mappings the same container attaches fine (the refusal was the mapping's).
    w.cni_add(&c4, "iso");
}

/// A host address never widens exposure: on a routed family a mapping bound to one host
/// address is refused (code 7) instead of opening the container port to every host that can
/// route to it. On Docker's direct-routing network (IPv6 routed, IPv4 nat) an IPv4 host
/// address applies to the NATed IPv4 family only, and opens nothing over IPv6.
#[test]
fn routed_family_refuses_a_host_address() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "d",
        &[
            "--subnet",
            "10.89.8.0/24",
            "--ipv6",
            "--subnet6",
            "fd00:89:8::/64",
            "--routed",
        ],
    );
    w.create_network(
        "r4",
        &["--subnet", "10.89.9.0/24", "--gateway-mode-ipv4", "routed"],
    );
    w.external_route_via_host("fd00:89:8::/64");
    let c0 = w.container("c0");
    for (net, host_ip) in [
        ("d", HOST_EXT_V6),
        ("d", "::1"),
        ("r4", "127.0.0.1"),
        ("r4", HOST_EXT_V4),
    ] {
        refused_as_invalid(
            &w,
            &c0,
            net,
            vec![pm(8080, 80, "tcp", Some(host_ip))],
            "gateway mode routed",
        );
    }

    // 127.0.0.1:8080:80 on the dual-stack network: IPv4 only, and it works on the host.
    let c1 = w.container("c1");
    let s1 = TcpServer::start_on_port(&c1, 80);
    let r1 = add_ports_ok(&w, &c1, "d", vec![pm(8080, 80, "tcp", Some("127.0.0.1"))]);
    let v6_1 = r1.ips().into_iter().find(IpAddr::is_ipv6).expect("IPv6");
    assert_eq!(
        assert_tcp_ok(&w.host, sa("127.0.0.1", 8080)).ip(),
        ip("10.89.8.1")
    );
    // A mapping without host address on the same network opens IPv6 port 80 (control) ...
    let c2 = w.container("c2");
    let s2 = TcpServer::start_on_port(&c2, 80);
    let r2 = add_ports_ok(&w, &c2, "d", vec![pm(9090, 80, "tcp", None)]);
    let v6_2 = r2.ips().into_iter().find(IpAddr::is_ipv6).expect("IPv6");
    assert_eq!(assert_tcp_ok(&w.external, s2.addr(v6_2)).ip(), ip(EXT_V6));
    // ... while c1's IPv4-only mapping opens nothing over IPv6 (its server answers the host).
    assert_tcp_ok(&w.host, s1.addr(v6_1));
    refused(&w.external, s1.addr(v6_1));
    let t = table(&w);
    assert!(!t.contains(&format!("{v6_1} . tcp . 80")), "{t}");
    // The unspecified IPv6 address is accepted: `::` opens the container port over IPv6.
    let c3 = w.container("c3");
    let s3 = TcpServer::start_on_port(&c3, 80);
    let r3 = add_ports_ok(&w, &c3, "d", vec![pm(7070, 80, "tcp", Some("::"))]);
    let v6_3 = r3.ips().into_iter().find(IpAddr::is_ipv6).expect("IPv6");
    assert_tcp_ok(&w.external, s3.addr(v6_3));
}

/// Why netd refuses ::1: the same DNAT + masquerade that makes 127.0.0.1 work (here in a
/// hand-written table) gets the SYN to the container, but the SYN-ACK, de-NATed back to ::1
/// on the bridge, is dropped by the host's IPv6 input path; IPv6 has no route_localnet.
#[test]
fn ipv6_loopback_dnat_cannot_work() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(
        "d",
        &[
            "--subnet",
            "10.89.3.0/24",
            "--ipv6",
            "--subnet6",
            "fd00:89:3::/64",
        ],
    );
    let c1 = w.container("c1");
    let s1 = TcpServer::start(&c1);
    let r = add_ports_ok(&w, &c1, "d", vec![]);
    let v6 = r.ips().into_iter().find(IpAddr::is_ipv6).expect("IPv6");
    assert_tcp_ok(&w.host, s1.addr(v6));
    w.host.nft_apply(&format!(
        "table inet exp {{
            chain xo {{
                type nat hook output priority -150; policy accept;
                ip6 daddr ::1 tcp dport 8080 counter dnat ip6 to [{v6}]:{}
            }}
            chain xp {{
                type nat hook postrouting priority 200; policy accept;
                ip6 saddr ::1 counter masquerade
            }}
        }}",
        s1.port()
    ));
    let res = tcp_probe(&w.host, sa("::1", 8080), PROBE_TIMEOUT);
    let t = w.host.nft_table("inet", "exp").expect("exp");
    assert!(res.is_err(), "[::1] DNAT worked after all: {res:?}");
    assert!(
        t.contains("dport 8080 counter packets 1") && t.contains("saddr ::1 counter packets 1"),
        "the SYN was not DNATed and masqueraded:\n{t}"
    );
    let c1_stats = c1.exec_ok(&["nstat", "-az", "TcpInSegs"]);
    eprintln!("{res:?}; container: {c1_stats}");
}
