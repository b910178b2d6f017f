//! The operator's override hook: rules in `user_forward` (netd creates the chain empty and
//! never touches it again) are evaluated before netd's own verdicts, both to deny what netd
//! allows and to allow what netd denies, and they survive netd's changes and restarts.

use std::net::IpAddr;

use netd_netns_tests::world::EXT_V4;
use netd_netns_tests::*;

#[test]
fn user_forward_rules_come_first_and_survive() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("a", &["--subnet", "10.87.1.0/24"]);
    w.external_route_via_host("10.87.1.0/24");
    let c = w.container("c1");
    let r = w.cni_add(&c, "a");
    let addr = r.ip();
    let ext_ip: IpAddr = EXT_V4.parse().unwrap();
    let ext = TcpServer::start(&w.external);
    let web = TcpServer::start(&c);

    // netd's defaults: out allowed, direct access in refused (nat mode).
    assert_tcp_ok(&c, ext.addr(ext_ip));
    assert_tcp_blocked(&w.external, web.addr(addr));

    // Deny what netd allows, and allow what netd denies.
    let nft = |rule: &str| {
        w.host.exec_ok(&[
            "sh",
            "-c",
            &format!("nft add rule inet netd user_forward {rule}"),
        ])
    };
    nft(&format!(
        "ip saddr {addr} ip daddr {EXT_V4} tcp dport {} drop",
        ext.port()
    ));
    nft(&format!(
        "ip saddr {EXT_V4} ip daddr {addr} tcp dport {} accept",
        web.port()
    ));
    assert_tcp_blocked(&c, ext.addr(ext_ip));
    assert_tcp_ok(&w.external, web.addr(addr));

    // netd changes its table (a network, an endpoint) and restarts: the rules stay in force.
    w.create_network("b", &["--subnet", "10.87.2.0/24"]);
    let c2 = w.container("c2");
    w.cni_add(&c2, "b");
    w.restart_netd(libc::SIGTERM);
    w.restart_netd(libc::SIGKILL);
    let chain = w
        .host
        .exec_ok(&["nft", "list", "chain", "inet", "netd", "user_forward"]);
    assert!(
        chain.contains("drop") && chain.contains("accept"),
        "{chain}"
    );
    assert_tcp_blocked(&c, ext.addr(ext_ip));
    assert_tcp_ok(&w.external, web.addr(addr));
    // Other containers are untouched by those rules.
    assert_tcp_ok(&c2, ext.addr(ext_ip));
}
