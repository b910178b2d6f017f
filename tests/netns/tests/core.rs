//! End-to-end tests of the core path: netd + netctl + netd-cni in private
//! network namespaces. They need the product binaries
//! (`cargo build --workspace --bins`).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};

use netd_netns_tests::world::{EXT_V4, HOST_EXT_V4};
use netd_netns_tests::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ext_v4() -> IpAddr {
    ip(EXT_V4)
}

/// The IPv4 gateway of `network`, from `netctl network inspect`.
fn gateway4(w: &World, network: &str) -> IpAddr {
    let v = w.inspect_network(network);
    v["gateway4"]
        .as_str()
        .unwrap_or_else(|| panic!("no gateway4 in inspect {network}: {v}"))
        .parse()
        .expect("gateway4 is an IP")
}

/// Sorts arrays (recursively) so that listings compare independently of order.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(canonical).collect();
            items.sort_by_key(|x| x.to_string());
            Value::Array(items)
        }
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        x => x.clone(),
    }
}

/// Asserts `c`'s interface `eth0` got the address of the CNI result.
fn assert_container_addr(c: &Netns, r: &CniOutput) {
    let want = r.ip();
    let have = c.addrs_of("eth0");
    assert!(
        have.contains(&want),
        "container {} eth0 has {have:?}, CNI result says {want}: {r}",
        c.label()
    );
}

fn check_cni_result_shape(w: &World, network: &str, r: &CniOutput, subnet_prefix: &str) {
    let j = r.json.as_ref().expect("JSON result");
    let conf_version = w.cni_conf(network)["cniVersion"].clone();
    assert_eq!(conf_version, "1.0.0", "conflist cniVersion");
    assert_eq!(j["cniVersion"], conf_version, "result cniVersion: {j}");
    let addr = j["ips"][0]["address"].as_str().expect("ips[0].address");
    assert!(
        addr.starts_with(subnet_prefix) && addr.ends_with("/24"),
        "ips[0].address {addr} not in {subnet_prefix}x/24"
    );
    assert!(j["ips"][0]["gateway"].is_string(), "no gateway: {j}");
}

// ---------------------------------------------------------------------------
// 1. Connectivity on one network, masquerade to the outside, isolation of two
//    networks.
// ---------------------------------------------------------------------------

#[test]
fn same_network_reachable_masquerade_out_networks_isolated() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    w.create_network("b", &["--subnet", "10.89.2.0/24"]);

    let inspect = w.inspect_network("a");
    for f in [
        "name",
        "bridge",
        "subnet4",
        "gateway4",
        "internal",
        "icc",
        "gateway_mode4",
        "mtu",
    ] {
        assert!(inspect.get(f).is_some(), "inspect a lacks {f}: {inspect}");
    }
    assert_eq!(inspect["name"], "a");
    assert_eq!(inspect["subnet4"], "10.89.1.0/24");
    assert_eq!(inspect["internal"], false);
    assert_eq!(inspect["icc"], true);
    let ls = w.netctl_json(&["network", "ls"]);
    let names: Vec<&str> = ls
        .as_array()
        .expect("network ls is an array")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert!(names.contains(&"a") && names.contains(&"b"), "{ls}");
    // The table form works too.
    assert!(w.netctl_ok(&["network", "ls"]).contains("10.89.1.0/24"));

    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let c3 = w.container("c3");
    let r1 = w.cni_add(&c1, "a");
    let r2 = w.cni_add(&c2, "a");
    let r3 = w.cni_add(&c3, "b");
    check_cni_result_shape(&w, "a", &r1, "10.89.1.");
    check_cni_result_shape(&w, "a", &r2, "10.89.1.");
    check_cni_result_shape(&w, "b", &r3, "10.89.2.");
    for (c, r) in [(&c1, &r1), (&c2, &r2), (&c3, &r3)] {
        assert_container_addr(c, r);
    }
    let (a1, a2, a3) = (r1.ip(), r2.ip(), r3.ip());
    assert_ne!(a1, a2);
    let gw_a = gateway4(&w, "a");
    let gw_b = gateway4(&w, "b");
    assert_eq!(r1.gateway(), Some(gw_a));
    assert_eq!(r3.gateway(), Some(gw_b));

    // Same network: ping and TCP both ways, and the gateway.
    assert_ping_ok(&c1, a2);
    assert_ping_ok(&c2, a1);
    assert_ping_ok(&c1, gw_a);
    assert_ping_ok(&c2, gw_a);
    let s1 = TcpServer::start(&c1);
    let s2 = TcpServer::start(&c2);
    let s3 = TcpServer::start(&c3);
    assert_eq!(
        assert_tcp_ok(&c1, s2.addr(a2)).ip(),
        a1,
        "no NAT inside a network"
    );
    assert_eq!(
        assert_tcp_ok(&c2, s1.addr(a1)).ip(),
        a2,
        "no NAT inside a network"
    );
    let u2 = UdpServer::start(&c2);
    assert_eq!(assert_udp_ok(&c1, u2.addr(a2)).ip(), a1);

    // Out to the external netns: masqueraded behind the host's uplink address.
    let ext = TcpServer::start(&w.external);
    let uext = UdpServer::start(&w.external);
    assert_ping_ok(&c1, ext_v4());
    assert_eq!(assert_tcp_ok(&c1, ext.addr(ext_v4())).ip(), ip(HOST_EXT_V4));
    assert_eq!(assert_tcp_ok(&c3, ext.addr(ext_v4())).ip(), ip(HOST_EXT_V4));
    assert_eq!(
        assert_udp_ok(&c2, uext.addr(ext_v4())).ip(),
        ip(HOST_EXT_V4)
    );

    // Two networks: isolated both ways (the servers are up, see above / below).
    assert_tcp_blocked(&c1, s3.addr(a3));
    assert_tcp_blocked(&c3, s1.addr(a1));
    assert_ping_fails(&c1, a3);
    assert_ping_fails(&c3, a1);
    // Positive controls after the negative ones: both servers still answer
    // (c3's from the host, which reaches its own container networks).
    assert_tcp_ok(&c2, s1.addr(a1));
    assert_tcp_ok(&w.host, s3.addr(a3));
    assert_ping_ok(&c3, gw_b);

    // The external netns does not reach containers without a route.
    assert_tcp_blocked(&w.external, s1.addr(a1));

    // Endpoints are listed; network rm is refused while attached.
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(3), "endpoint ls: {eps}");
    let mut listed: Vec<String> = eps
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["container_id"].as_str().unwrap_or("?"),
                e["network"].as_str().unwrap_or("?"),
                e["addr4"].as_str().unwrap_or("?")
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            format!("c1 a {a1}"),
            format!("c2 a {a2}"),
            format!("c3 b {a3}")
        ],
        "endpoint ls disagrees with the CNI results: {eps}"
    );
    let rm = w.netctl(&["network", "rm", "a"]);
    assert!(
        !rm.success(),
        "network rm a with endpoints should fail: {rm}"
    );
    w.inspect_network("a");

    for (c, n) in [(&c1, "a"), (&c2, "a"), (&c3, "b")] {
        w.cni_del(c, n);
    }
    assert!(
        c1.wait_link_gone("eth0", Duration::from_secs(5)),
        "DEL left eth0 in the container"
    );
    w.netctl_ok(&["network", "rm", "a"]);
    w.netctl_ok(&["network", "rm", "b"]);
    let ls = w.netctl_json(&["network", "ls"]);
    assert_eq!(ls.as_array().map(Vec::len), Some(0), "{ls}");
    assert!(!w.conflist_path("a").exists(), "conflist of a left behind");
    w.stop_netd_gracefully();
}

// ---------------------------------------------------------------------------
// 2. netd refuses to start without IPv4 forwarding in its netns.
// ---------------------------------------------------------------------------

#[test]
fn netd_refuses_to_start_without_ip_forward() {
    let mut w = World::with(WorldOptions {
        ip_forward: false,
        ..Default::default()
    });
    let (status, log) = w.run_netd_expect_exit(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("netd kept running with ip_forward=0:\n{log}"));
    assert!(!status.success(), "netd exited 0 with ip_forward=0:\n{log}");
    assert!(
        log.contains("net.ipv4.ip_forward"),
        "netd's message does not name net.ipv4.ip_forward:\n{log}"
    );
    // It must not have "fixed" the sysctl or left a table behind.
    assert_eq!(w.host.sysctl_get("net.ipv4.ip_forward"), "0");
    assert!(w.host.nft_table("inet", "netd").is_none());
    assert!(!w.socket().exists() || std::os::unix::net::UnixStream::connect(w.socket()).is_err());
}

// ---------------------------------------------------------------------------
// 3. Foreign tables are left byte-identical by a full lifecycle.
// ---------------------------------------------------------------------------

fn foreign_tables(policy: &str) -> String {
    format!(
        "table ip filter {{
    chain FORWARD {{
        type filter hook forward priority filter; policy {policy};
        iifname \"nosuch0\" counter drop
        ip saddr 203.0.113.0/24 drop
    }}
    chain INPUT {{
        type filter hook input priority filter; policy accept;
    }}
}}
table inet other {{
    set blocked {{
        type ipv4_addr
        flags interval
        elements = {{ 198.51.100.0/24 }}
    }}
    chain forward_other {{
        type filter hook forward priority 10; policy accept;
        ip daddr @blocked drop
        tcp dport 6666 reject
    }}
}}
"
    )
}

fn foreign_tables_survive(policy: &str) {
    let mut w = World::new();
    w.host.nft_apply(&foreign_tables(policy));
    let before_filter = w.host.nft_table("ip", "filter").expect("ip filter");
    let before_other = w.host.nft_table("inet", "other").expect("inet other");

    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    w.create_network("b", &["--subnet", "10.89.2.0/24", "--icc=false"]);
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let c3 = w.container("c3");
    let r1 = w.cni_add(&c1, "a");
    let r2 = w.cni_add(&c2, "a");
    let _r3 = w.cni_add(&c3, "b");

    if policy == "accept" {
        // The foreign table lets forwarded traffic through: netd's rules work.
        let s2 = TcpServer::start(&c2);
        let ext = TcpServer::start(&w.external);
        assert_eq!(assert_tcp_ok(&c1, s2.addr(r2.ip())).ip(), r1.ip());
        assert_eq!(assert_tcp_ok(&c1, ext.addr(ext_v4())).ip(), ip(HOST_EXT_V4));
    }
    // With policy drop the foreign table drops forwarded traffic (nft verdicts
    // of all tables must accept): only the tables are compared.

    assert_eq!(
        w.host.nft_table("ip", "filter").as_deref(),
        Some(&*before_filter)
    );
    assert_eq!(
        w.host.nft_table("inet", "other").as_deref(),
        Some(&*before_other)
    );

    w.cni_del(&c1, "a");
    w.cni_del(&c2, "a");
    w.cni_del(&c3, "b");
    w.netctl_ok(&["network", "rm", "a"]);
    w.netctl_ok(&["network", "rm", "b"]);
    w.stop_netd_gracefully();

    let after_filter = w.host.nft_table("ip", "filter").expect("ip filter gone");
    let after_other = w.host.nft_table("inet", "other").expect("inet other gone");
    assert_eq!(before_filter, after_filter, "table ip filter changed");
    assert_eq!(before_other, after_other, "table inet other changed");
}

#[test]
fn foreign_tables_untouched_forward_policy_drop() {
    foreign_tables_survive("drop");
}

#[test]
fn foreign_tables_untouched_forward_policy_accept() {
    foreign_tables_survive("accept");
}

// ---------------------------------------------------------------------------
// 4. Bad ADDs leave nothing behind; DEL is idempotent; CHECK sees a lost veth.
// ---------------------------------------------------------------------------

/// Host-netns state that a failed ADD must not change.
struct HostState {
    links: String,
    addrs: String,
    table: Option<String>,
    container_links: Vec<String>,
}

fn host_state(w: &World, c: &Netns) -> HostState {
    HostState {
        links: w.host.links_detail(),
        // IPv6 link-local addresses of links made just before lose their "tentative" flag
        // when duplicate address detection ends; that is the kernel's clock, not the ADD.
        addrs: w.host.ip(&["addr", "show"]).replace(" tentative", ""),
        table: w.host.nft_table("inet", "netd"),
        container_links: c.link_names(),
    }
}

fn assert_unchanged(before: &HostState, after: &HostState, case: &str) {
    assert!(
        before.links == after.links,
        "{case}: host links changed\n--- before ---\n{}\n--- after ---\n{}",
        before.links,
        after.links
    );
    assert!(
        before.addrs == after.addrs,
        "{case}: host addresses changed\n--- before ---\n{}\n--- after ---\n{}",
        before.addrs,
        after.addrs
    );
    assert!(
        before.table == after.table,
        "{case}: table inet netd changed\n--- before ---\n{:?}\n--- after ---\n{:?}",
        before.table,
        after.table
    );
    assert_eq!(
        before.container_links, after.container_links,
        "{case}: container links changed"
    );
}

/// (case, environment, stdin, expected CNI error code)
type BadAdd = (&'static str, Vec<(String, String)>, Vec<u8>, u64);

fn env_pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn bad_adds_leave_nothing_del_idempotent_check_detects_lost_veth() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    // One good endpoint so the state is not trivially empty.
    let c0 = w.container("c0");
    w.cni_add(&c0, "a");

    let c = w.container("bad");
    let env = w.cni_env("ADD", &c, "eth0");
    let good_conf = w.cni_conf("a");

    let cases: Vec<BadAdd> = vec![
        (
            "malformed JSON",
            env.clone(),
            b"{\"cniVersion\": \"1.1.0\", \"name\": ".to_vec(),
            6,
        ),
        (
            "unknown network",
            env.clone(),
            {
                let mut conf = good_conf.clone();
                conf["network"] = json!("nosuch");
                conf.to_string().into_bytes()
            },
            7,
        ),
        (
            "unsupported cniVersion",
            env.clone(),
            {
                let mut conf = good_conf.clone();
                conf["cniVersion"] = json!("99.0.0");
                conf.to_string().into_bytes()
            },
            1,
        ),
        (
            "missing CNI_NETNS",
            env.iter()
                .filter(|(k, _)| k != "CNI_NETNS")
                .cloned()
                .collect(),
            good_conf.to_string().into_bytes(),
            4,
        ),
    ];
    for (case, env, stdin, code) in cases {
        let before = host_state(&w, &c);
        let r = w.cni_raw(&env_pairs(&env), &stdin);
        assert!(!r.success(), "{case}: ADD should fail: {r}");
        assert_eq!(
            r.error_code(),
            Some(code),
            "{case}: wrong CNI error code: {r}"
        );
        assert!(
            r.json.as_ref().is_some_and(|j| j["msg"].is_string()),
            "{case}: error has no msg: {r}"
        );
        let after = host_state(&w, &c);
        assert_unchanged(&before, &after, case);
        assert!(!c.has_link("eth0"), "{case}: eth0 created in the container");
    }
    // None of the bad ADDs registered an endpoint.
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(1), "endpoint ls: {eps}");

    // DEL twice succeeds.
    w.cni_del(&c0, "a");
    w.cni_del(&c0, "a");
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(0), "endpoint ls: {eps}");

    // CHECK: fine right after ADD, fails once the host-side veth is gone.
    let c1 = w.container("c1");
    let r1 = w.cni_add(&c1, "a");
    let prev = r1.json.clone();
    let ok = w.cni_with_prev("CHECK", &c1, "eth0", "a", None, prev.clone());
    assert!(ok.success(), "CHECK right after ADD failed: {ok}");
    let peer = c1.ip_json(&["link", "show", "dev", "eth0"])[0]["link_index"]
        .as_u64()
        .expect("eth0 is a veth with a peer index");
    let host_links = w.host.ip_json(&["link", "show"]);
    let host_veth = host_links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifindex"].as_u64() == Some(peer))
        .and_then(|l| l["ifname"].as_str())
        .unwrap_or_else(|| panic!("host-side veth (ifindex {peer}) not found: {host_links}"))
        .to_string();
    w.host.ip(&["link", "del", &host_veth]);
    let bad = w.cni_with_prev("CHECK", &c1, "eth0", "a", None, prev);
    assert!(
        !bad.success(),
        "CHECK after deleting {host_veth} succeeded: {bad}"
    );
    // DEL still cleans up.
    w.cni_del(&c1, "a");
    w.cni_del(&c1, "a");
    w.netctl_ok(&["network", "rm", "a"]);
}

// ---------------------------------------------------------------------------
// 5. Restart (SIGTERM, kill -9) keeps networks, endpoints and traffic.
// ---------------------------------------------------------------------------

fn restart_keeps_state(signal: i32) {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.1.0/24"]);
    w.create_network("b", &["--subnet", "10.89.2.0/24"]);
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let c3 = w.container("c3");
    let r1 = w.cni_add(&c1, "a");
    let r2 = w.cni_add(&c2, "a");
    let r3 = w.cni_add(&c3, "b");

    let nets = canonical(&w.netctl_json(&["network", "ls"]));
    let eps = canonical(&w.netctl_json(&["endpoint", "ls"]));
    let insp = w.inspect_network("a");

    let s2 = TcpServer::start(&c2);
    let s3 = TcpServer::start(&c3);
    assert_eq!(assert_tcp_ok(&c1, s2.addr(r2.ip())).ip(), r1.ip());

    w.stop_netd(signal);
    // Dataplane keeps working while netd is down.
    assert_eq!(assert_tcp_ok(&c1, s2.addr(r2.ip())).ip(), r1.ip());
    w.start_netd();

    assert_eq!(
        canonical(&w.netctl_json(&["network", "ls"])),
        nets,
        "networks after restart"
    );
    assert_eq!(
        canonical(&w.netctl_json(&["endpoint", "ls"])),
        eps,
        "endpoints after restart"
    );
    assert_eq!(w.inspect_network("a"), insp, "inspect a after restart");

    // Traffic still flows, isolation and masquerade still hold.
    assert_eq!(assert_tcp_ok(&c1, s2.addr(r2.ip())).ip(), r1.ip());
    assert_ping_ok(&c2, r1.ip());
    let ext = TcpServer::start(&w.external);
    assert_eq!(assert_tcp_ok(&c1, ext.addr(ext_v4())).ip(), ip(HOST_EXT_V4));
    assert_tcp_blocked(&c1, s3.addr(r3.ip()));

    // A new ADD gets a fresh address.
    let c4 = w.container("c4");
    let r4 = w.cni_add(&c4, "a");
    assert!(
        r4.ip() != r1.ip() && r4.ip() != r2.ip(),
        "new endpoint got {} which is already used by {} / {}",
        r4.ip(),
        r1.ip(),
        r2.ip()
    );
    assert_container_addr(&c4, &r4);
    assert_eq!(assert_tcp_ok(&c4, s2.addr(r2.ip())).ip(), r4.ip());

    // And the restarted netd can still tear everything down.
    for (c, n) in [(&c1, "a"), (&c2, "a"), (&c3, "b"), (&c4, "a")] {
        w.cni_del(c, n);
    }
    w.netctl_ok(&["network", "rm", "a"]);
    w.netctl_ok(&["network", "rm", "b"]);
    w.stop_netd_gracefully();
}

#[test]
fn restart_after_sigterm_keeps_state() {
    restart_keeps_state(libc::SIGTERM);
}

#[test]
fn restart_after_kill_9_keeps_state() {
    restart_keeps_state(libc::SIGKILL);
}

// ---------------------------------------------------------------------------
// 1b. The same core path over IPv6 (dual-stack network).
// ---------------------------------------------------------------------------

#[test]
fn dual_stack_network_ipv6_reachable_and_masqueraded() {
    use netd_netns_tests::world::{EXT_V6, HOST_EXT_V6};
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
    let insp = w.inspect_network("d");
    assert_eq!(insp["subnet6"], "fd00:89:3::/64", "{insp}");
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let r1 = w.cni_add(&c1, "d");
    let r2 = w.cni_add(&c2, "d");
    let v6 = |r: &CniOutput| {
        r.ips()
            .into_iter()
            .find(IpAddr::is_ipv6)
            .unwrap_or_else(|| panic!("no IPv6 address in the CNI result: {r}"))
    };
    let (a1, a2) = (v6(&r1), v6(&r2));
    assert!(c1.addrs_of("eth0").contains(&a1));
    assert_ping_ok(&c1, a2);
    let s2 = TcpServer::start(&c2);
    assert_eq!(
        assert_tcp_ok(&c1, s2.addr(a2)).ip(),
        a1,
        "no NAT inside a network"
    );
    let ext = TcpServer::start(&w.external);
    assert_eq!(
        assert_tcp_ok(&c1, ext.addr(ip(EXT_V6))).ip(),
        ip(HOST_EXT_V6),
        "IPv6 leaves a NAT network masqueraded"
    );
    assert_ping_ok(&c2, ip(EXT_V6));
    w.cni_del(&c1, "d");
    w.cni_del(&c2, "d");
    w.netctl_ok(&["network", "rm", "d"]);
}

// ---------------------------------------------------------------------------
// 6. netd removes a DEL's veth pair after answering; an immediate ADD of the same container
//    interface still works (netd settles the pending removal first).
// ---------------------------------------------------------------------------

#[test]
fn del_then_immediate_add_of_the_same_interface() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.6.0/24"]);
    let c = w.container("c1");
    let peer = w.container("c2");
    let rp = w.cni_add(&peer, "a");
    let srv = TcpServer::start(&peer);
    for round in 0..5 {
        let r = w.cni_add(&c, "a");
        assert_eq!(
            assert_tcp_ok(&c, srv.addr(rp.ip())).ip(),
            r.ip(),
            "round {round}"
        );
        w.cni_del(&c, "a");
    }
    let veth = w
        .host
        .link_names()
        .into_iter()
        .filter(|l| l.starts_with("vn"))
        .count();
    assert!(
        c.wait_link_gone("eth0", Duration::from_secs(5)),
        "the container's end outlived the DEL"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while w
        .host
        .link_names()
        .iter()
        .filter(|l| l.starts_with("vn"))
        .count()
        > 1
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        w.host
            .link_names()
            .iter()
            .filter(|l| l.starts_with("vn"))
            .count(),
        1,
        "only the peer's host veth remains (was {veth} right after the DEL)"
    );
}

/// 200 DEL/ADD pairs of one container interface, back to back through the plugin: every one
/// succeeds. An ADD right after a DEL races the reaper removing the old veth pair (netd
/// settles that removal first); a settle that returned early showed up as "host link vn...
/// exists" or EEXIST from the veth create.
#[test]
fn two_hundred_back_to_back_del_add_pairs_all_succeed() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.7.0/24"]);
    let c = w.container("c1");
    let peer = w.container("c2");
    let rp = w.cni_add(&peer, "a");
    let srv = TcpServer::start(&peer);
    w.cni_add(&c, "a");
    let mut failures = Vec::new();
    let mut last = None;
    for round in 0..200 {
        let del = w.cni("DEL", &c, "eth0", "a", None);
        if !del.success() {
            failures.push(format!("round {round} DEL: {del}"));
        }
        let add = w.cni("ADD", &c, "eth0", "a", None);
        if add.success() && add.json.is_some() {
            last = Some(add);
        } else {
            failures.push(format!("round {round} ADD: {add}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 400 calls failed; first: {}\n--- netd log ---\n{}",
        failures.len(),
        failures[0],
        w.netd_log()
    );
    // The last ADD's interface works: the container reaches its peer with its new address.
    let r = last.expect("an ADD succeeded");
    assert_eq!(assert_tcp_ok(&c, srv.addr(rp.ip())).ip(), r.ip());
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(2), "{eps:#}");
}

/// A DEL names a network; the host veth's name does not. A DEL for network "b" of a
/// container interface that is attached to network "a" (a runtime cleaning up after an ADD to
/// "b" that was refused) must not remove "a"'s veth: the reaper removes only a veth marked
/// for the DEL's network. Control: "a"'s own DEL does remove it.
#[test]
fn a_del_for_another_network_leaves_the_attached_veth() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.8.0/24"]);
    w.create_network("b", &["--subnet", "10.89.9.0/24"]);
    let c = w.container("c1");
    let peer = w.container("c2");
    let rp = w.cni_add(&peer, "a");
    let srv = TcpServer::start(&peer);
    w.cni_add(&c, "a");
    assert_tcp_ok(&c, srv.addr(rp.ip()));
    let veth = |w: &World| {
        w.host
            .link_names()
            .into_iter()
            .filter(|l| l.starts_with("vn"))
            .count()
    };
    assert_eq!(veth(&w), 2);

    w.cni_del(&c, "b");
    // The reaper works after the answer: give it the time it needs for a removal.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(veth(&w), 2, "the DEL for b removed a's veth");
    assert!(c.has_link("eth0"), "the container lost its interface");
    assert_tcp_ok(&c, srv.addr(rp.ip()));

    w.cni_del(&c, "a");
    assert!(
        c.wait_link_gone("eth0", Duration::from_secs(5)),
        "a's own DEL left the container's interface"
    );
    assert_eq!(veth(&w), 1);
}

/// Makes the veth pair an ADD makes while netd works on the attach (host end named from the
/// container ID and `eth0`, down, unmarked, in no bridge; the peer under a temporary name in
/// `peer_ns`), as a plugin killed before netd's answer leaves it. Returns the host end's name.
fn unfinished_add_pair(w: &World, c: &Netns, peer_ns: &Netns) -> String {
    let veth = netd::model::host_veth_name(c.label(), "eth0");
    w.host.ip(&[
        "link",
        "add",
        &veth,
        "type",
        "veth",
        "peer",
        "name",
        "vtleftover",
        "netns",
        peer_ns.name(),
    ]);
    veth
}

/// A plugin killed between making the veth pair and marking it leaves an unmarked pair that
/// netd's reaper does not take (it takes marked veths only). The runtime's DEL removes it,
/// and an ADD of the same interface replaces it, where before it was refused as "already
/// attached" until the container's namespace went away. Controls: an unmarked veth of
/// netd-cni's name for another container whose peer is elsewhere is nobody's leftover here:
/// that container's DEL leaves it, and its ADD is refused without touching it.
#[test]
fn an_unfinished_adds_veth_pair_is_removed_by_del_and_replaced_by_add() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.13.0/24"]);

    let c1 = w.container("c1");
    let v1 = unfinished_add_pair(&w, &c1, &c1);
    w.cni_del(&c1, "a");
    assert!(!w.host.has_link(&v1), "DEL left the unmarked pair {v1}");
    assert!(!c1.has_link("vtleftover"));

    let c2 = w.container("c2");
    let elsewhere = w.container("elsewhere");
    let v2 = unfinished_add_pair(&w, &c2, &elsewhere);
    w.cni_del(&c2, "a");
    assert!(
        w.host.has_link(&v2),
        "c2's DEL removed a veth whose peer is elsewhere"
    );
    assert!(elsewhere.has_link("vtleftover"));
    let r = w.cni("ADD", &c2, "eth0", "a", None);
    assert_eq!(r.error_code(), Some(100), "{r}");
    assert!(
        r.stderr.contains("already attached") || r.stdout.contains("already attached"),
        "{r}"
    );
    assert!(w.host.has_link(&v2) && elsewhere.has_link("vtleftover"));
    assert!(!c2.has_link("eth0"));

    let peer = w.container("peer");
    let rp = w.cni_add(&peer, "a");
    let srv = TcpServer::start(&peer);
    let c3 = w.container("c3");
    let v3 = unfinished_add_pair(&w, &c3, &c3);
    let r = w.cni_add(&c3, "a");
    assert!(!c3.has_link("vtleftover"), "the old peer is still there");
    assert_eq!(assert_tcp_ok(&c3, srv.addr(rp.ip())).ip(), r.ip());
    let link = w.host.ip_json(&["link", "show", "dev", &v3]);
    assert_eq!(link[0]["ifalias"], "netd network a", "{link}");
    w.cni_del(&c3, "a");
    assert!(c3.wait_link_gone("eth0", Duration::from_secs(5)));
}

/// With netd down, DEL removes the links itself, but only those that are netd's for it: the
/// host veth marked for the DEL's network, or the unmarked pair of an unfinished ADD whose
/// peer is in the DEL's container. A veth marked for another network (with the container
/// interface at its other end) and an unmarked veth of netd-cni's name whose peer is
/// elsewhere are left alone; before, DEL deleted the veth of its name, whoever's it was.
#[test]
fn del_without_netd_removes_only_netds_links() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.14.0/24"]);
    w.create_network("b", &["--subnet", "10.89.15.0/24"]);
    let attached = w.container("attached");
    w.cni_add(&attached, "a");
    let va = netd::model::host_veth_name(attached.label(), "eth0");
    let left = w.container("left");
    let vl = unfinished_add_pair(&w, &left, &left);
    let other = w.container("other");
    let elsewhere = w.container("elsewhere");
    let vo = unfinished_add_pair(&w, &other, &elsewhere);
    w.kill_netd();

    // A DEL for network b of the interface attached to a (a runtime cleaning up after a
    // refused ADD to b).
    w.cni_del(&attached, "b");
    assert!(w.host.has_link(&va), "a DEL for b removed a's veth");
    assert!(
        attached.has_link("eth0"),
        "a DEL for b removed the container's interface"
    );
    w.cni_del(&other, "a");
    assert!(
        w.host.has_link(&vo),
        "DEL removed a veth whose peer is elsewhere"
    );
    assert!(elsewhere.has_link("vtleftover"));

    // Positive controls: the unfinished ADD's pair, and a's own DEL.
    w.cni_del(&left, "a");
    assert!(!w.host.has_link(&vl) && !left.has_link("vtleftover"));
    w.cni_del(&attached, "a");
    assert!(!w.host.has_link(&va) && !attached.has_link("eth0"));
}

/// ADDs `c` to `network` and then puts the pair back as the plugin made it before netd's
/// answer (see [`unfinished_add_pair`]): netd holds the endpoint, the pair is unmarked.
fn held_with_unfinished_pair(w: &World, network: &str, c: &Netns, peer_ns: &Netns) -> String {
    w.cni_add(c, network);
    let veth = netd::model::host_veth_name(c.label(), "eth0");
    w.host.ip(&["link", "del", &veth]);
    assert!(c.wait_link_gone("eth0", Duration::from_secs(5)));
    unfinished_add_pair(w, c, peer_ns)
}

/// netd held the endpoint: the plugin died after netd answered the attach, before it marked
/// the pair. The runtime's DEL releases the endpoint, and netd's reaper removes the unmarked
/// pair after answering, because its peer is in the endpoint's netns. Control: an unmarked
/// veth of that name whose peer is elsewhere stays.
#[test]
fn del_of_an_endpoint_whose_add_never_finished_removes_its_pair() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.16.0/24"]);
    let c1 = w.container("c1");
    let v1 = held_with_unfinished_pair(&w, "a", &c1, &c1);
    let c2 = w.container("c2");
    let elsewhere = w.container("elsewhere");
    let v2 = held_with_unfinished_pair(&w, "a", &c2, &elsewhere);

    w.cni_del(&c1, "a");
    assert!(
        c1.wait_link_gone("vtleftover", Duration::from_secs(5)),
        "the reaper left the unmarked pair of a released endpoint"
    );
    assert!(!w.host.has_link(&v1));
    w.cni_del(&c2, "a");
    // The reaper works after the answer: give it the time it needs for a removal.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w.host.has_link(&v2),
        "the reaper removed a veth whose peer is elsewhere"
    );
    assert!(elsewhere.has_link("vtleftover"));
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(0), "{eps}");
}

/// GC removes the host veths of the endpoints it released by DEL's rule: a veth marked for
/// the network goes, an unmarked one of a released endpoint's name whose peer is elsewhere
/// stays (before, GC deleted whatever had the name).
#[test]
fn gc_removes_only_netds_veths_of_released_endpoints() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.17.0/24"]);
    let c1 = w.container("c1");
    w.cni_add(&c1, "a");
    let v1 = netd::model::host_veth_name(c1.label(), "eth0");
    let c2 = w.container("c2");
    let elsewhere = w.container("elsewhere");
    let v2 = held_with_unfinished_pair(&w, "a", &c2, &elsewhere);

    // GC exists from CNI 1.1.0 on; nothing is valid, so both endpoints are released.
    let mut conf = w.cni_conf("a");
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    let env = w.cni_env("GC", &c1, "eth0");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = w.cni_raw(&env, conf.to_string().as_bytes());
    assert!(r.success(), "{r}");
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(0), "{eps}");
    assert!(
        !w.host.has_link(&v1),
        "GC left the marked veth of a released endpoint"
    );
    assert!(
        w.host.has_link(&v2),
        "GC removed a veth whose peer is elsewhere"
    );
    assert!(elsewhere.has_link("vtleftover"));
}
