//! Self-tests of the harness: they need only `ip`, `nft`, `ping`, `sysctl`
//! (no product binaries) and must pass on their own.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netd_netns_tests::*;

fn ns_exists(name: &str) -> bool {
    run_ok(&["ip", "netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Two netns linked by a veth: a (10.250.0.1, fd00:250::1), b (.2, ::2).
fn pair() -> (Netns, Netns) {
    let a = Netns::new("a", "a");
    let b = Netns::new("b", "b");
    a.ip(&[
        "link",
        "add",
        "va",
        "type",
        "veth",
        "peer",
        "name",
        "vb",
        "netns",
        b.name(),
    ]);
    a.ip(&["addr", "add", "10.250.0.1/24", "dev", "va"]);
    a.ip(&["addr", "add", "fd00:250::1/64", "dev", "va", "nodad"]);
    b.ip(&["addr", "add", "10.250.0.2/24", "dev", "vb"]);
    b.ip(&["addr", "add", "fd00:250::2/64", "dev", "vb", "nodad"]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    (a, b)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn unique_names_are_short_and_distinct() {
    let a = unique_name("h");
    let b = unique_name("h");
    assert_ne!(a, b);
    assert!(a.len() <= 15, "{a} too long for an interface name");
}

#[test]
fn tcp_and_udp_probes_see_real_source() {
    let (a, b) = pair();
    let tcp = TcpServer::start(&b);
    let udp = UdpServer::start(&b);
    let seen = assert_tcp_ok(&a, tcp.addr(ip("10.250.0.2")));
    assert_eq!(seen.ip(), ip("10.250.0.1"));
    let seen = assert_udp_ok(&a, udp.addr(ip("10.250.0.2")));
    assert_eq!(seen.ip(), ip("10.250.0.1"));
    let seen = assert_tcp_ok(&a, tcp.addr(ip("fd00:250::2")));
    assert_eq!(seen.ip(), ip("fd00:250::1"));
    let seen = assert_udp_ok(&a, udp.addr(ip("fd00:250::2")));
    assert_eq!(seen.ip(), ip("fd00:250::1"));
    // And the other way round, server in a.
    let tcp_a = TcpServer::start(&a);
    let seen = assert_tcp_ok(&b, tcp_a.addr(ip("10.250.0.1")));
    assert_eq!(seen.ip(), ip("10.250.0.2"));
}

#[test]
fn closed_port_and_filtered_address_fail_fast() {
    let (a, b) = pair();
    let tcp = TcpServer::start(&b);
    let udp = UdpServer::start(&b);
    // Closed port: refused (by a reset, well within the probe timeout).
    let closed: SocketAddr = SocketAddr::new(ip("10.250.0.2"), 1);
    let err = tcp_probe(&a, closed, PROBE_TIMEOUT).unwrap_err();
    assert!(err.contains("refused"), "{err}");
    assert_udp_blocked(&a, closed);
    // Unrouted address: no route, fails immediately.
    assert_tcp_blocked(&a, SocketAddr::new(ip("198.51.100.7"), tcp.port()));
    // Silently dropped by nft in b: fails by the probe timeout, not by luck.
    b.nft_apply(
        "table inet t {
            chain in {
                type filter hook input priority 0; policy accept;
                ip saddr 10.250.0.1 tcp dport 1-65535 drop
                ip saddr 10.250.0.1 udp dport 1-65535 drop
            }
        }",
    );
    let t = Instant::now();
    assert_tcp_blocked(&a, tcp.addr(ip("10.250.0.2")));
    assert!(t.elapsed() >= PROBE_TIMEOUT - Duration::from_millis(100));
    assert_udp_blocked(&a, udp.addr(ip("10.250.0.2")));
    // IPv6 is not filtered: the servers are still up.
    assert_tcp_ok(&a, tcp.addr(ip("fd00:250::2")));
    assert_udp_ok(&a, udp.addr(ip("fd00:250::2")));
}

#[test]
fn ping_ok_and_fail() {
    let (a, b) = pair();
    assert_ping_ok(&a, ip("10.250.0.2"));
    assert_ping_ok(&a, ip("fd00:250::2"));
    assert_ping_ok(&b, ip("10.250.0.1"));
    assert_ping_fails(&a, ip("10.250.0.3"));
    assert_ping_fails(&a, ip("198.51.100.7"));
    b.nft_apply(
        "table inet t {
            chain in {
                type filter hook input priority 0;
                icmp type echo-request drop
            }
        }",
    );
    assert_ping_fails(&a, ip("10.250.0.2"));
    assert_ping_ok(&a, ip("fd00:250::2"));
}

#[test]
fn netns_are_removed_on_drop_and_on_panic() {
    let (a, b) = pair();
    let (na, nb) = (a.name().to_string(), b.name().to_string());
    assert!(ns_exists(&na) && ns_exists(&nb));
    drop((a, b));
    assert!(!ns_exists(&na) && !ns_exists(&nb));

    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let w = World::new();
        let c = w.container("c1");
        let srv = TcpServer::start(&w.external);
        names.lock().unwrap().extend([
            w.host.name().to_string(),
            w.external.name().to_string(),
            c.name().to_string(),
        ]);
        let _ = srv;
        panic!("deliberate");
    });
    assert!(r.is_err());
    for n in names.lock().unwrap().iter() {
        assert!(!ns_exists(n), "netns {n} left behind");
    }
}

#[test]
fn run_in_sockets_stay_in_their_netns() {
    let (a, _b) = pair();
    let names: Vec<String> = a.run_in(|| {
        // Read the links of the netns this thread is in via /sys-independent
        // means: the socket-level view (bind to a's address must work).
        let s = std::net::UdpSocket::bind("10.250.0.1:0");
        vec![format!("{}", s.is_ok())]
    });
    assert_eq!(names, vec!["true"]);
    // The test thread itself is still in the root netns: 10.250.0.1 is not there
    // (unless the machine happens to have it, which the root netns must not).
    assert!(std::net::UdpSocket::bind("10.250.0.1:0").is_err());
}

#[test]
fn world_layout() {
    let w = World::new();
    assert_eq!(w.host.sysctl_get("net.ipv4.ip_forward"), "1");
    assert_eq!(w.host.sysctl_get("net.ipv6.conf.all.forwarding"), "1");
    assert!(w.host.has_link("uplink0"));
    assert!(w.external.has_link("eth0"));
    assert_ping_ok(&w.host, ip("192.0.2.2"));
    assert_ping_ok(&w.host, ip("2001:db8:1::2"));
    assert_ping_ok(&w.external, ip("192.0.2.1"));
    let srv = TcpServer::start(&w.external);
    assert_eq!(
        assert_tcp_ok(&w.host, srv.addr(ip("192.0.2.2"))).ip(),
        ip("192.0.2.1")
    );
    // External has no route to container subnets until told so.
    assert_ping_fails(&w.external, ip("10.89.0.1"));
    w.external_route_via_host("10.89.0.0/24");
    let routes = w.external.ip(&["route"]);
    assert!(routes.contains("10.89.0.0/24 via 192.0.2.1"), "{routes}");
    assert!(w.socket().starts_with(w.dir()));
    assert!(w.state_dir().is_dir() && w.cni_conf_dir().is_dir());

    let w0 = World::with(WorldOptions {
        ip_forward: false,
        ..Default::default()
    });
    assert_eq!(w0.host.sysctl_get("net.ipv4.ip_forward"), "0");
    assert_ne!(w0.host.name(), w.host.name());
}

#[test]
fn snapshot_detects_changes() {
    let ns = Netns::new("s", "s");
    let s1 = ns.snapshot();
    let s2 = ns.snapshot();
    s1.assert_same(&s2, "unchanged");
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.nft_apply("table inet x {\n set s {\n type ipv4_addr\n elements = { 10.0.0.1 }\n }\n}\n");
    let s3 = ns.snapshot();
    assert_ne!(s1.links, s3.links);
    assert_ne!(s1.nft, s3.nft);
    assert!(ns.nft_table("inet", "x").unwrap().contains("10.0.0.1"));
    assert!(ns.nft_table("inet", "nope").is_none());
    assert!(ns.link_names().contains(&"d0".to_string()));
    // Bridge timers tick, but are masked.
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["link", "set", "d0", "master", "br0"]);
    ns.ip(&["link", "set", "br0", "up"]);
    ns.ip(&["link", "set", "d0", "up"]);
    let l1 = ns.links_detail();
    assert!(l1.contains("gc_timer *"), "{l1}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(l1, ns.links_detail());
    assert_eq!(
        netd_netns_tests::netns::mask_timers("  a gc_timer   1.00 b hello_timer 2 c\n"),
        "  a gc_timer * b hello_timer * c\n"
    );
}

#[test]
fn missing_binaries_are_reported() {
    let r = std::panic::catch_unwind(|| netd_netns_tests::util::bin("no-such-binary"));
    let msg = r
        .err()
        .and_then(|e| e.downcast::<String>().ok())
        .expect("panics with a message");
    assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
}

/// What netd + netd-cni are expected to build, done by hand with `ip`/`nft`
/// inside the World's host netns: proves that the World topology supports
/// the core tests' assertions (masquerade seen as 192.0.2.1, fast refusal
/// between networks, finding the host-side veth of a container).
#[test]
fn world_supports_core_scenario_by_hand() {
    let w = World::new();
    let attach = |c: &Netns, br: &str, hv: &str, addr: &str, gw: &str| {
        w.host.ip(&[
            "link",
            "add",
            hv,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            c.name(),
        ]);
        w.host.ip(&["link", "set", hv, "master", br, "up"]);
        c.ip(&["addr", "add", addr, "dev", "eth0"]);
        c.ip(&["link", "set", "eth0", "up"]);
        c.ip(&["route", "add", "default", "via", gw]);
    };
    for (br, gw) in [("br-a", "10.89.1.1/24"), ("br-b", "10.89.2.1/24")] {
        w.host.ip(&["link", "add", br, "type", "bridge"]);
        w.host.ip(&["addr", "add", gw, "dev", br]);
        w.host.ip(&["link", "set", br, "up"]);
    }
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let c3 = w.container("c3");
    attach(&c1, "br-a", "vh1", "10.89.1.2/24", "10.89.1.1");
    attach(&c2, "br-a", "vh2", "10.89.1.3/24", "10.89.1.1");
    attach(&c3, "br-b", "vh3", "10.89.2.2/24", "10.89.2.1");
    w.host.nft_apply(
        "table inet t {
            chain forward_t {
                type filter hook forward priority 0; policy accept;
                iifname \"br-a\" oifname \"br-b\" drop
                iifname \"br-b\" oifname \"br-a\" drop
            }
            chain postrouting_t {
                type nat hook postrouting priority srcnat; policy accept;
                ip saddr 10.89.0.0/16 oifname != \"br-*\" masquerade
            }
        }",
    );
    let s2 = TcpServer::start(&c2);
    let s3 = TcpServer::start(&c3);
    let ext = TcpServer::start(&w.external);
    assert_ping_ok(&c1, ip("10.89.1.3"));
    assert_ping_ok(&c1, ip("10.89.1.1"));
    assert_eq!(
        assert_tcp_ok(&c1, s2.addr(ip("10.89.1.3"))).ip(),
        ip("10.89.1.2")
    );
    assert_eq!(
        assert_tcp_ok(&c1, ext.addr(ip("192.0.2.2"))).ip(),
        ip("192.0.2.1")
    );
    assert_eq!(
        assert_tcp_ok(&c3, ext.addr(ip("192.0.2.2"))).ip(),
        ip("192.0.2.1")
    );
    assert_tcp_blocked(&c1, s3.addr(ip("10.89.2.2")));
    assert_ping_fails(&c1, ip("10.89.2.2"));
    // External has no route to the containers until a router learns it.
    assert_tcp_blocked(&w.external, s2.addr(ip("10.89.1.3")));
    w.external_route_via_host("10.89.1.0/24");
    assert_eq!(
        assert_tcp_ok(&w.external, s2.addr(ip("10.89.1.3"))).ip(),
        ip("192.0.2.2")
    );
    // Host-side veth of c1 from eth0's peer index.
    let peer = c1.ip_json(&["link", "show", "dev", "eth0"])[0]["link_index"]
        .as_u64()
        .expect("link_index");
    let links = w.host.ip_json(&["link", "show"]);
    let name = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifindex"].as_u64() == Some(peer))
        .and_then(|l| l["ifname"].as_str());
    assert_eq!(name, Some("vh1"));
}

const FAKE_NETD: &str = r#"#!/usr/bin/env python3
# Stand-in for netd: checks forwarding, writes a conflist, listens, exits 0 on SIGTERM.
import json, os, signal, socket, sys
a = sys.argv[1:]
opt = lambda n: a[a.index(n) + 1]
sock, state, cni = opt("--socket"), opt("--state-dir"), opt("--cni-conf-dir")
assert opt("--table") == "netd"
if open("/proc/sys/net/ipv4/ip_forward").read().strip() != "1":
    print("fake netd: net.ipv4.ip_forward is 0 in this netns", file=sys.stderr)
    sys.exit(1)
with open(os.path.join(state, "starts"), "a") as f:
    f.write("%d\n" % os.getpid())
conf = {"cniVersion": "1.1.0", "name": "fake", "plugins": [{"type": "netd-cni",
        "network": "fake", "socket": sock, "capabilities": {"portMappings": True}}]}
with open(os.path.join(cni, "netd-fake.conflist"), "w") as f:
    json.dump(conf, f)
def term(*_):
    os.unlink(sock)
    print("fake netd: SIGTERM", file=sys.stderr, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
if os.path.exists(sock):
    os.unlink(sock)
s = socket.socket(socket.AF_UNIX)
s.bind(sock)
s.listen(16)
print("fake netd: ready", file=sys.stderr, flush=True)
while True:
    c, _ = s.accept()
    c.close()
"#;

const FAKE_CNI: &str = r#"#!/usr/bin/env python3
# Stand-in for netd-cni: echoes what it was given, and the netns it runs in.
import json, os, sys
out = {"env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")},
       "stdin": sys.stdin.read(),
       "netns_ino": os.stat("/proc/self/ns/net").st_ino}
print(json.dumps(out))
sys.exit(0 if os.environ.get("CNI_COMMAND") in ("ADD", "DEL", "CHECK") else 3)
"#;

const FAKE_NETCTL: &str = "#!/bin/sh\nprintf '{\"args\": \"%s\"}\\n' \"$*\"\n";

fn fake_bins() -> Option<netd_netns_tests::util::TempDir> {
    if !run(&["python3", "-c", "pass"]).success() {
        netd_netns_tests::util::cannot_run(
            "the fake-binaries test",
            "python3 is not installed (apt-get install python3)",
        );
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    let d = netd_netns_tests::util::TempDir::new("b");
    for (name, text) in [
        ("netd", FAKE_NETD),
        ("netd-cni", FAKE_CNI),
        ("netctl", FAKE_NETCTL),
    ] {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Some(d)
}

/// The World's netd / netctl / CNI drivers, against stand-in binaries.
#[test]
fn world_drives_binaries_like_a_runtime() {
    let Some(bins) = fake_bins() else { return };
    let opts = WorldOptions {
        bin_dir: Some(bins.path().to_path_buf()),
        ..Default::default()
    };
    let mut w = World::with(opts.clone());
    w.start_netd();
    assert!(w.netd_running());
    let starts_file = w.state_dir().join("starts");
    let starts = || {
        std::fs::read_to_string(&starts_file)
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(starts(), 1);

    // CNI: env and stdin as libcni gives them, run in the host netns.
    let c = w.container("ctr1");
    let r = w.cni(
        "ADD",
        &c,
        "eth0",
        "fake",
        Some(World::port_mappings(&[(8080, 80, "tcp")])),
    );
    assert!(r.success(), "{r}");
    let j = r.json.clone().expect("JSON");
    let env = &j["env"];
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "ctr1");
    assert_eq!(env["CNI_NETNS"], c.path().display().to_string());
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(env["CNI_PATH"], bins.path().display().to_string());
    let conf: serde_json::Value = serde_json::from_str(j["stdin"].as_str().unwrap()).unwrap();
    assert_eq!(conf["name"], "fake");
    assert_eq!(conf["cniVersion"], "1.1.0");
    assert_eq!(conf["type"], "netd-cni");
    assert_eq!(conf["network"], "fake");
    assert_eq!(conf["socket"], w.socket().display().to_string());
    assert_eq!(conf["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert_eq!(conf["runtimeConfig"]["portMappings"][0]["protocol"], "tcp");
    use std::os::unix::fs::MetadataExt;
    let host_ino = std::fs::metadata(w.host.path()).unwrap().ino();
    assert_eq!(
        j["netns_ino"].as_u64(),
        Some(host_ino),
        "plugin not run in the host netns"
    );
    // CHECK carries prevResult.
    let r = w.cni_with_prev(
        "CHECK",
        &c,
        "eth0",
        "fake",
        None,
        Some(serde_json::json!({"ips": []})),
    );
    let conf: serde_json::Value =
        serde_json::from_str(r.json.as_ref().unwrap()["stdin"].as_str().unwrap()).unwrap();
    assert_eq!(conf["prevResult"]["ips"], serde_json::json!([]));
    // Raw variant: exactly the given env and stdin.
    let r = w.cni_raw(&[("CNI_COMMAND", "VERSION")], b"not json");
    assert_eq!(r.code, Some(3));
    let j = r.json.unwrap();
    assert_eq!(j["stdin"], "not json");
    assert_eq!(j["env"], serde_json::json!({"CNI_COMMAND": "VERSION"}));

    // netctl gets --socket first, then the arguments.
    let v = w.netctl_json(&["network", "ls"]);
    let args = v["args"].as_str().unwrap();
    assert_eq!(
        args,
        format!("--socket {} --format json network ls", w.socket().display())
    );

    // Stop / restart / kill -9.
    let st = w.stop_netd(libc::SIGTERM);
    assert!(st.success(), "{st}");
    assert!(w.netd_log().contains("fake netd: SIGTERM"));
    w.start_netd();
    assert_eq!(starts(), 2);
    let pid = w.netd_pid().unwrap();
    w.restart_netd(libc::SIGKILL);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(starts(), 3);
    let pid = w.netd_pid().unwrap();
    drop(w);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "netd survived the World"
    );

    // Start failures are reported with the log.
    let mut w0 = World::with(WorldOptions {
        ip_forward: false,
        ..opts
    });
    let (st, log) = w0.run_netd_expect_exit(Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(1));
    assert!(log.contains("net.ipv4.ip_forward"), "{log}");
    let e = w0.try_start_netd().unwrap_err();
    assert!(
        e.contains("exited during startup") && e.contains("net.ipv4.ip_forward"),
        "{e}"
    );
}

/// A panicking test leaves no netd process and no netns behind.
#[test]
fn panic_with_netd_running_cleans_up() {
    let Some(bins) = fake_bins() else { return };
    let state = std::sync::Mutex::new((0u32, Vec::new()));
    let r = std::panic::catch_unwind(|| {
        let mut w = World::with(WorldOptions {
            bin_dir: Some(bins.path().to_path_buf()),
            ..Default::default()
        });
        w.start_netd();
        let c = w.container("c1");
        let _srv = UdpServer::start(&c);
        let mut s = state.lock().unwrap();
        s.0 = w.netd_pid().unwrap();
        s.1 = vec![
            w.host.name().to_string(),
            w.external.name().to_string(),
            c.name().to_string(),
        ];
        s.1.push(w.dir().display().to_string());
        drop(s);
        panic!("deliberate");
    });
    assert!(r.is_err());
    let s = state.lock().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{}", s.0)).exists(),
        "netd left running"
    );
    for n in &s.1[..3] {
        assert!(!ns_exists(n), "netns {n} left behind");
    }
    assert!(
        !std::path::Path::new(&s.1[3]).exists(),
        "temp dir left behind"
    );
}
