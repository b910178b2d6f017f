//! Podman 4.x (CNI backend) on netd networks, end to end with real packets (issue #11).
//!
//! Podman runs from a private configuration inside the test's host netns and a private mount
//! namespace (see `runtime::podman`), against conflists exactly as `netctl network create`
//! writes them. Containers run busybox from an image built from busybox-static. Each
//! container serves `nc -ll -p 80 -e echo NAME`, so a TCP connection to it answers NAME.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netd_netns_tests::runtime::podman::Podman;
use netd_netns_tests::runtime::{assert_banner, assert_banner_blocked, require};
use netd_netns_tests::world::{EXT_V4, HOST_EXT_V4};
use netd_netns_tests::*;

/// How long a container's server may take to listen after `podman run` returns.
const START: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, port)
}

/// `podman run -d --network NET [extra] IMAGE nc -ll -p 80 -e echo NAME`; returns the ID.
fn serve(pm: &Podman, name: &str, net: &str, extra: &[&str]) -> String {
    let mut a = vec!["--network", net];
    a.extend_from_slice(extra);
    a.extend_from_slice(&[&pm.image, "nc", "-ll", "-p", "80", "-e", "echo", name]);
    pm.run(name, &a)
}

/// World + netd + Podman, or None when the runtime is missing and the skip variable is set.
fn setup() -> Option<(World, Podman)> {
    if !require(&["podman", "runc", "conmon", "nsenter", "unshare", "busybox"]) {
        return None;
    }
    let mut w = World::new();
    let pm = Podman::new(&mut w);
    Some((w, pm))
}

fn endpoint_ids(w: &World) -> Vec<String> {
    w.netctl_json(&["endpoint", "ls"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["container_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn podman_run_publishes_port_reaches_out_and_rm_cleans_up() {
    let Some((w, pm)) = setup() else { return };
    w.create_network("web", &["--subnet", "10.89.60.0/24"]);
    w.create_network("other", &["--subnet", "10.89.61.0/24"]);

    // `podman network ls` lists netd's networks, read from netd's conflists.
    let ls = pm.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    for net in ["web", "other"] {
        assert!(
            ls.lines().any(|l| l == format!("{net} netd-cni")),
            "podman network ls should list {net} with driver netd-cni:\n{ls}"
        );
    }

    let id1 = serve(&pm, "c1", "web", &["-p", "8080:80", "-p", "5353:5353/udp"]);
    let id2 = serve(&pm, "c2", "web", &["-p", "8082:80"]);
    let c1 = pm.netns("c1");
    let ip1 = pm.ip("c1", "web");
    assert!(
        ip1.to_string().starts_with("10.89.60."),
        "c1 got {ip1} on web"
    );
    assert!(
        endpoint_ids(&w).contains(&id1),
        "netctl endpoint ls should list c1 ({id1})"
    );

    // Published ports from the external netns; a port nobody published is refused.
    let host = ip(HOST_EXT_V4);
    assert_banner(&w.external, sa(host, 8080), "c1", START);
    assert_banner(&w.external, sa(host, 8082), "c2", START);
    assert_banner_blocked(&w.external, sa(host, 8081));
    // UDP: a server in c1's netns sees the external client's own address.
    let udp = UdpServer::start_on_port(&c1, 5353);
    let seen = assert_udp_ok(&w.external, sa(host, 5353));
    assert_eq!(
        seen.ip(),
        ip(EXT_V4),
        "UDP to c1 should keep the client address"
    );
    assert_udp_blocked(&w.external, sa(host, 5354));

    // Container to the external host, masqueraded to the host's uplink address; from the
    // container's own process too (ping through `podman exec`).
    let ext = TcpServer::start(&w.external);
    let seen = assert_tcp_ok(&c1, ext.addr(ip(EXT_V4)));
    assert_eq!(seen.ip(), host, "c1 -> external should be masqueraded");
    let out = pm.exec("c1", &["ping", "-c1", "-W2", EXT_V4]);
    assert!(out.success(), "podman exec c1 ping {EXT_V4}: {out}");

    // `podman rm` runs CNI DEL: the port is gone (refused from outside, while c2's still
    // answers) and so is c1's host veth.
    let veth1 = netd::model::host_veth_name(&id1, "eth0");
    assert!(w.host.has_link(&veth1), "c1's host veth {veth1} missing");
    pm.rm("c1");
    drop(udp);
    assert_banner_blocked(&w.external, sa(host, 8080));
    assert_udp_blocked(&w.external, sa(host, 5353));
    assert_banner(&w.external, sa(host, 8082), "c2", START);
    assert!(
        w.host.wait_link_gone(&veth1, Duration::from_secs(5)),
        "c1's host veth {veth1} still there after podman rm"
    );
    let ids = endpoint_ids(&w);
    assert!(!ids.contains(&id1), "c1 still an endpoint: {ids:?}");
    assert!(
        ids.contains(&id2),
        "c2 should still be an endpoint: {ids:?}"
    );
}

#[test]
fn podman_containers_talk_with_icc_and_not_without() {
    let Some((w, pm)) = setup() else { return };
    w.create_network("icc", &["--subnet", "10.89.62.0/24"]);
    w.create_network("noicc", &["--subnet", "10.89.63.0/24", "--icc=false"]);
    serve(&pm, "a1", "icc", &[]);
    serve(&pm, "b1", "icc", &[]);
    serve(&pm, "a2", "noicc", &[]);
    serve(&pm, "b2", "noicc", &[]);
    let (a1, b1, a2, b2) = (
        pm.netns("a1"),
        pm.netns("b1"),
        pm.netns("a2"),
        pm.netns("b2"),
    );
    let (ip_a1, ip_b1) = (pm.ip("a1", "icc"), pm.ip("b1", "icc"));
    let (ip_a2, ip_b2) = (pm.ip("a2", "noicc"), pm.ip("b2", "noicc"));

    // ICC on: both ways, TCP and ping from the container's own process.
    assert_banner(&a1, sa(ip_b1, 80), "b1", START);
    assert_banner(&b1, sa(ip_a1, 80), "a1", START);
    let out = pm.exec("a1", &["ping", "-c1", "-W2", &ip_b1.to_string()]);
    assert!(out.success(), "a1 -> b1 ping with ICC on: {out}");

    // ICC off: refused both ways and for ping...
    assert_banner_blocked(&a2, sa(ip_b2, 80));
    assert_banner_blocked(&b2, sa(ip_a2, 80));
    let out = pm.exec("a2", &["ping", "-c1", "-W1", &ip_b2.to_string()]);
    assert!(!out.success(), "a2 -> b2 ping should fail with --icc=false");
    // ...while both containers are up and reachable otherwise: from the host (the gateway
    // side) and out to the external host.
    assert_banner(&w.host, sa(ip_b2, 80), "b2", START);
    assert_banner(&w.host, sa(ip_a2, 80), "a2", START);
    let ext = TcpServer::start(&w.external);
    assert_tcp_ok(&a2, ext.addr(ip(EXT_V4)));
}

#[test]
fn podman_internal_network_has_no_way_out_but_works_inside() {
    let Some((w, pm)) = setup() else { return };
    w.create_network("int", &["--subnet", "10.89.64.0/24", "--internal"]);
    w.create_network("out", &["--subnet", "10.89.65.0/24"]);
    serve(&pm, "i1", "int", &[]);
    serve(&pm, "i2", "int", &[]);
    serve(&pm, "o1", "out", &[]);
    let (i1, o1) = (pm.netns("i1"), pm.netns("o1"));
    let ext = TcpServer::start(&w.external);

    // Inside the internal network: fine.
    assert_banner(&i1, sa(pm.ip("i2", "int"), 80), "i2", START);
    // Out of it: blocked, while a container of a normal network gets out (control).
    assert_tcp_blocked(&i1, ext.addr(ip(EXT_V4)));
    let out = pm.exec("i1", &["ping", "-c1", "-W1", EXT_V4]);
    assert!(
        !out.success(),
        "ping out of an internal network should fail"
    );
    assert_tcp_ok(&o1, ext.addr(ip(EXT_V4)));
}

#[test]
fn podman_traffic_survives_a_netd_restart() {
    let Some((mut w, pm)) = setup() else { return };
    w.create_network("web", &["--subnet", "10.89.66.0/24"]);
    let id = serve(&pm, "r1", "web", &["-p", "8080:80"]);
    let r1 = pm.netns("r1");
    let host = ip(HOST_EXT_V4);
    let ext = TcpServer::start(&w.external);
    assert_banner(&w.external, sa(host, 8080), "r1", START);

    w.stop_netd(libc::SIGTERM);
    // netd down: the kernel keeps forwarding by the table netd left.
    assert_banner(&w.external, sa(host, 8080), "r1", START);
    assert_tcp_ok(&r1, ext.addr(ip(EXT_V4)));

    w.start_netd();
    assert_banner(&w.external, sa(host, 8080), "r1", START);
    assert_tcp_ok(&r1, ext.addr(ip(EXT_V4)));
    assert!(
        endpoint_ids(&w).contains(&id),
        "the restarted netd should still know r1"
    );
    // A new container and a removal go through the restarted daemon.
    serve(&pm, "r2", "web", &["-p", "8081:80"]);
    assert_banner(&w.external, sa(host, 8081), "r2", START);
    pm.rm("r1");
    assert_banner_blocked(&w.external, sa(host, 8080));
    assert_banner(&w.external, sa(host, 8081), "r2", START);
}

/// Podman 4.3 (libcni 1.1) reads results up to cniVersion 1.0.0: the conflist netctl writes
/// works, and the same conflist declaring 1.1.0 fails with the error docs/guide.md quotes.
#[test]
fn podman_accepts_cni_1_0_0_and_refuses_1_1_0() {
    let Some((w, pm)) = setup() else { return };
    w.create_network("v100", &["--subnet", "10.89.67.0/24"]);
    w.create_network("v110", &["--subnet", "10.89.68.0/24"]);
    assert_eq!(w.cni_conf("v100")["cniVersion"], "1.0.0");
    let p = w.conflist_path("v110");
    let text = std::fs::read_to_string(&p).expect("read conflist");
    std::fs::write(&p, text.replace("\"1.0.0\"", "\"1.1.0\"")).expect("write conflist");
    assert_eq!(w.cni_conf("v110")["cniVersion"], "1.1.0");

    serve(&pm, "ok", "v100", &[]);
    assert_banner(&w.host, sa(pm.ip("ok", "v100"), 80), "ok", START);

    let mut a = vec!["run", "-d", "--name", "bad", "--network", "v110"];
    a.extend_from_slice(netd_netns_tests::runtime::podman::RUN_FLAGS);
    a.extend_from_slice(&[&pm.image, "sleep", "60"]);
    let out = pm.podman(&a);
    assert!(!out.success(), "podman run on a 1.1.0 conflist should fail");
    assert!(
        out.stderr.contains(
            r#"plugin type="netd-cni" failed (add): unsupported CNI result version "1.1.0""#
        ),
        "unexpected error: {out}"
    );
    // The plugin had attached the container; Podman runs DEL after rejecting the answer
    // (while the 1.0.0 container stays listed: the filter does find endpoints).
    let on = |net: &str| -> usize {
        w.netctl_json(&["endpoint", "ls"])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["network"] == net)
            .count()
    };
    assert_eq!(on("v100"), 1, "the 1.0.0 container should be listed");
    assert_eq!(on("v110"), 0, "endpoints left on v110");
}
