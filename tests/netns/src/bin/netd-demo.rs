//! The README's demo: netd, netctl and netd-cni attaching "containers" (network namespaces)
//! inside a private host namespace, then real traffic showing what is allowed and what is not.
//! Nothing outside the namespaces it creates is changed; they are removed at the end.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use netd_netns_tests::world::{EXT_V4, HOST_EXT_V4};
use netd_netns_tests::*;

struct Demo {
    failures: usize,
}

impl Demo {
    fn step(&self, text: &str) {
        println!("\n== {text}");
    }

    fn show(&self, cmd: &str, out: &str) {
        println!("$ {cmd}");
        for line in out.lines() {
            println!("  {line}");
        }
    }

    fn expect(&mut self, what: &str, want: bool, got: Result<SocketAddr, String>) {
        let ok = got.is_ok() == want;
        if !ok {
            self.failures += 1;
        }
        let outcome = match &got {
            Ok(seen) => format!("connected (server saw {})", seen.ip()),
            Err(e) => format!("refused ({e})"),
        };
        println!(
            "  [{}] {what}: {outcome}{}",
            if ok { "ok" } else { "UNEXPECTED" },
            if want { "" } else { " — as it should be" }
        );
    }
}

fn main() -> ExitCode {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "netd-demo needs root: it creates network namespaces (it never changes the host's own)"
        );
        return ExitCode::from(1);
    }
    let mut d = Demo { failures: 0 };
    d.step("A private \"host\" network namespace (ip_forward=1 inside it) and an external host 192.0.2.2");
    let mut w = World::new();
    w.start_netd();
    d.show("netctl status", &w.netctl_ok(&["status"]));

    d.step(
        "Two networks: \"web\" (default: NAT out, ICC on) and \"db\" (internal: no way in or out)",
    );
    w.create_network("web", &["--subnet", "10.99.10.0/24"]);
    w.create_network("db", &["--subnet", "10.99.20.0/24", "--internal"]);
    d.show("netctl network ls", &w.netctl_ok(&["network", "ls"]));

    d.step("Containers attached by the CNI plugin, as containerd or Podman would run it");
    let web1 = w.container("web1");
    let web2 = w.container("web2");
    let db1 = w.container("db1");
    let ports = World::port_mappings(&[(8080, 80, "tcp")]);
    let r = w.cni("ADD", &web1, "eth0", "web", Some(ports));
    assert!(r.success(), "ADD web1: {r}");
    println!("$ CNI_COMMAND=ADD netd-cni < web conflist (+ portMappings 8080->80)");
    println!("  {}", r.stdout.trim());
    let web1_ip = r.ip();
    let web2_ip = w.cni_add(&web2, "web").ip();
    let db1_ip = w.cni_add(&db1, "db").ip();
    d.show("netctl endpoint ls", &w.netctl_ok(&["endpoint", "ls"]));

    d.step("Real traffic");
    let web1_srv = TcpServer::start_on_port(&web1, 80);
    let web2_srv = TcpServer::start_on_port(&web2, 80);
    let db1_srv = TcpServer::start_on_port(&db1, 80);
    let ext_srv = TcpServer::start_on_port(&w.external, 80);
    let ext: IpAddr = EXT_V4.parse().unwrap();
    let host_uplink: IpAddr = HOST_EXT_V4.parse().unwrap();
    // A router outside that learned the container subnets (to show direct access is refused).
    w.external_route_via_host("10.99.10.0/24");
    w.external_route_via_host("10.99.20.0/24");
    let t = PROBE_TIMEOUT;
    d.expect(
        "web1 → web2 (same network)",
        true,
        tcp_probe(&web1, web2_srv.addr(web2_ip), t),
    );
    d.expect(
        "web1 → external host (masqueraded)",
        true,
        tcp_probe(&web1, ext_srv.addr(ext), t),
    );
    d.expect(
        "external host → host:8080 (published, DNAT to web1:80)",
        true,
        tcp_probe(&w.external, SocketAddr::new(host_uplink, 8080), t),
    );
    d.expect(
        "external host → web1:80 directly (unpublished path)",
        false,
        tcp_probe(&w.external, web1_srv.addr(web1_ip), t),
    );
    d.expect(
        "web1 → db1 (other network)",
        false,
        tcp_probe(&web1, db1_srv.addr(db1_ip), t),
    );
    d.expect(
        "db1 → external host (internal network)",
        false,
        tcp_probe(&db1, ext_srv.addr(ext), t),
    );

    d.step("netd's own table (nothing else in the ruleset is netd's)");
    let table = w.host.nft_table("inet", "netd").unwrap_or_default();
    d.show("nft list table inet netd", &table);

    d.step("Detach, remove networks, stop netd; the namespaces go away with the demo");
    for (c, n) in [(&web1, "web"), (&web2, "web"), (&db1, "db")] {
        w.cni_del(c, n);
    }
    d.show(
        "netctl network rm web db",
        &w.netctl_ok(&["network", "rm", "web", "db"]),
    );
    w.stop_netd_gracefully();
    drop(w);
    if d.failures == 0 {
        println!("\nAll checks behaved as expected.");
        ExitCode::SUCCESS
    } else {
        println!("\n{} check(s) did not behave as expected.", d.failures);
        ExitCode::from(1)
    }
}
