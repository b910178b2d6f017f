//! The live table of a running netd equals `nft-templates/netd.nft` rendered for the state netd
//! reports, so the template is a faithful, readable description of what netd does to the host.

use netd::model::{Endpoint, Network};
use netd::{plan, ruleset};
use netd_netns_tests::*;

#[test]
fn live_table_equals_the_rendered_template() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("web", &["--subnet", "10.88.1.0/24"]);
    w.create_network(
        "api",
        &[
            "--subnet",
            "10.88.2.0/24",
            "--ipv6",
            "--subnet6",
            "fd88:2::/64",
            "--routed",
            "--icc=false",
        ],
    );
    w.create_network("db", &["--subnet", "10.88.3.0/24", "--internal"]);
    let c1 = w.container("c1");
    let c2 = w.container("c2");
    let c3 = w.container("c3");
    let ports = |m: &[(u16, u16, &str)]| Some(World::port_mappings(m));
    assert!(w
        .cni(
            "ADD",
            &c1,
            "eth0",
            "web",
            // 30000-30004 keep their numbers: one interval element, not five.
            ports(&[
                (8080, 80, "tcp"),
                (5353, 53, "udp"),
                (30000, 30000, "tcp"),
                (30001, 30001, "tcp"),
                (30002, 30002, "tcp"),
                (30003, 30003, "tcp"),
                (30004, 30004, "tcp"),
            ])
        )
        .success());
    assert!(w
        .cni(
            "ADD",
            &c2,
            "eth0",
            "api",
            ports(&[(9443, 443, "tcp"), (7000, 7000, "tcp"), (7001, 7001, "tcp")])
        )
        .success());
    w.cni_add(&c3, "db");

    let networks: Vec<Network> = serde_json::from_value(w.netctl_json(&["network", "ls"])).unwrap();
    let endpoints: Vec<Endpoint> =
        serde_json::from_value(w.netctl_json(&["endpoint", "ls"])).unwrap();
    assert_eq!((networks.len(), endpoints.len()), (3, 3));
    let desired = plan::desired(&networks, &endpoints);
    let want = ruleset::render_template(ruleset::TEMPLATE, &desired);
    let live = w.host.nft_table("inet", "netd").expect("netd's table");
    // nft lists the range sets in the order their elements were added (here c1's, then
    // c2's), and the renderer in netd's order: compare the element lists sorted.
    assert_eq!(
        ruleset::sort_elements(&live),
        ruleset::sort_elements(&want),
        "live table differs from the rendered template"
    );
    assert!(live.contains("tcp . 30000-30004 : 10.88.1.2"), "{live}");
    assert!(live.contains(". tcp . 7000-7001 }"), "{live}");

    // `netctl plan` is that renderer as users run it: from the daemon, and from the state dir.
    assert_eq!(w.netctl_ok(&["plan"]), want);
    let state = w.state_dir();
    let state = state.to_str().unwrap();
    assert_eq!(w.netctl_ok(&["plan", "--state-dir", state]), want);
    let same = w.netctl(&["plan", "--diff"]);
    assert!(same.success(), "{same}");
    assert_eq!(same.stdout.trim(), "the live table matches the plan");
    // Against the plan of another state (no networks), --diff names the live table's elements
    // as extra lines and fails.
    let empty = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../nft-templates/scenarios/empty"
    );
    let other = w.netctl(&["plan", "--diff", "--state-dir", empty]);
    assert_eq!(other.code, Some(1), "{other}");
    assert!(other.stdout.contains("\"nd-web\""), "{other}");
    assert!(
        other.stdout.lines().all(|l| l.starts_with('-')),
        "the empty plan adds nothing: {other}"
    );

    // Detaching empties the endpoint maps again, and the template follows.
    w.cni_del(&c1, "web");
    let endpoints: Vec<Endpoint> =
        serde_json::from_value(w.netctl_json(&["endpoint", "ls"])).unwrap();
    let want = ruleset::render_template(ruleset::TEMPLATE, &plan::desired(&networks, &endpoints));
    assert_eq!(w.host.nft_table("inet", "netd").unwrap(), want);
    assert!(!want.contains("tcp . 8080"));
}
