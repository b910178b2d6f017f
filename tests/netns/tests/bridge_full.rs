//! A network's bridge near the kernel's port limit (1,023 ports, `BR_MAX_PORTS`) while DELs
//! leave veths that netd's reaper has not removed yet: those veths are still ports of the
//! bridge, so an ADD that the endpoint count allows must not fail with the kernel's
//! "Exchange full" (EXFULL). And when the endpoints themselves fill the bridge, the ADD is
//! refused with netd's own error naming the limit.
//!
//! Filling a bridge through the plugin takes a netns and a plugin run per container, so most
//! of the 1,023 endpoints are attached through netd's API instead, all in one netns, with
//! their host veths made by `ip -batch` as the plugin would make them (named by netd's rule,
//! marked for the network, ports of its bridge). The churn itself goes through the plugin.

use std::process::Command;
use std::time::Duration;

use netd::api::{AttachRequest, Client};
use netd::model::host_veth_name;
use netd::resolve::MAX_BRIDGE_PORTS;
use netd_netns_tests::util::{run_cmd, CMD_TIMEOUT};
use netd_netns_tests::*;

/// The ports of `bridge` in the World's host netns.
fn bridge_ports(w: &World, bridge: &str) -> usize {
    w.host
        .ip(&["-o", "link", "show", "master", bridge])
        .lines()
        .count()
}

/// Attaches filler endpoints `from..to` of network `network` through the API, all in netns
/// `fill`, and makes each one's host veth a marked port of `bridge`, as the plugin would.
fn fill(w: &World, network: &str, bridge: &str, fill: &Netns, from: usize, to: usize) {
    let client = Client::new(w.socket()).with_timeout(Duration::from_secs(30));
    let mut batch = String::new();
    for i in from..to {
        let cid = format!("fill{i}");
        let req = AttachRequest {
            network: network.into(),
            container_id: cid.clone(),
            ifname: "eth0".into(),
            netns: fill.path().display().to_string(),
            port_mappings: vec![],
            ips: vec![],
            mac: None,
            ensure_network: None,
        };
        if let Err(e) = client.attach(&req) {
            panic!(
                "attaching filler {i} through the API: {e}\n--- netd log ---\n{}",
                w.netd_log()
            );
        }
        let veth = host_veth_name(&cid, "eth0");
        batch.push_str(&format!(
            "link add {veth} type veth peer name f{i} netns {}\n\
             link set {veth} master {bridge} alias \"netd network {network}\"\n",
            fill.name()
        ));
    }
    let mut cmd = Command::new("ip");
    cmd.args(["-n", w.host.name(), "-batch", "-"]);
    let out = run_cmd(cmd, Some(batch.as_bytes()), CMD_TIMEOUT);
    assert!(out.success(), "making the fillers' veths: {out}");
}

#[test]
fn churn_on_a_nearly_full_bridge_waits_for_pending_removals_and_a_full_one_is_refused() {
    let mut w = World::new();
    // A reaper that takes a minute before each removal: the DELs below leave their veths on
    // the bridge for the whole test unless the attach removes them itself. No periodic
    // check, which would remove them too.
    w.set_netd_env("NETD_TEST_REAPER_DELAY_MS", "60000");
    w.set_netd_env("NETD_CHECK_INTERVAL", "3600");
    w.start_netd();
    w.create_network("a", &["--subnet", "10.89.64.0/21"]);
    let bridge = w.inspect_network("a")["bridge"]
        .as_str()
        .expect("bridge name")
        .to_string();

    // Three containers through the plugin (the first makes the bridge), then fillers up to
    // 1,020 endpoints.
    let olds: Vec<Netns> = (0..3).map(|i| w.container(&format!("old{i}"))).collect();
    for c in &olds {
        w.cni_add(c, "a");
    }
    let filler = w.container("fill");
    fill(&w, "a", &bridge, &filler, 0, MAX_BRIDGE_PORTS - 6);
    assert_eq!(bridge_ports(&w, &bridge), MAX_BRIDGE_PORTS - 3);

    // The three DELs succeed and release their endpoints; their veths stay ports of the
    // bridge, queued for removal.
    for c in &olds {
        w.cni_del(c, "a");
    }
    assert_eq!(
        bridge_ports(&w, &bridge),
        MAX_BRIDGE_PORTS - 3,
        "the DELs' veths must still be on the bridge for this test to mean anything"
    );

    // Four new containers: 1,021 endpoints in the end, within the limit. The first three
    // fill the bridge's ports; the fourth needs a port that only a pending removal frees
    // (before netd made room, the kernel refused it with "Exchange full").
    let news: Vec<Netns> = (0..4).map(|i| w.container(&format!("new{i}"))).collect();
    let mut results = Vec::new();
    for (i, c) in news.iter().enumerate() {
        let r = w.cni("ADD", c, "eth0", "a", None);
        assert!(
            r.success() && r.json.is_some(),
            "ADD of new{i} with {} endpoints attached failed: {r}\n--- netd log ---\n{}",
            MAX_BRIDGE_PORTS - 6 + i,
            w.netd_log()
        );
        results.push(r);
    }
    assert!(bridge_ports(&w, &bridge) <= MAX_BRIDGE_PORTS);
    // The last one's port forwards: it reaches the first new container.
    assert_ping_ok(&news[3], results[0].ip());
    assert_ping_ok(&news[0], results[3].ip());

    // Fillers up to the limit: now the endpoints themselves fill the bridge (the attaches
    // made room by finishing the remaining removals), and the next ADD is refused with
    // netd's error, not the kernel's.
    fill(
        &w,
        "a",
        &bridge,
        &filler,
        MAX_BRIDGE_PORTS - 6,
        MAX_BRIDGE_PORTS - 4,
    );
    assert_eq!(bridge_ports(&w, &bridge), MAX_BRIDGE_PORTS);
    let last = w.container("last");
    let r = w.cni("ADD", &last, "eth0", "a", None);
    assert!(
        !r.success(),
        "an ADD past the bridge's limit succeeded: {r}"
    );
    assert!(
        r.stdout.contains("1023 endpoints") && r.stdout.contains("1023 ports"),
        "the refusal should name the bridge's limit: {r}"
    );
    assert!(
        !r.stdout.contains("Exchange full"),
        "refused by the kernel, not by netd: {r}"
    );
    assert!(!w.host.has_link(&host_veth_name(last.label(), "eth0")));
    assert_eq!(bridge_ports(&w, &bridge), MAX_BRIDGE_PORTS);
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().map(Vec::len), Some(MAX_BRIDGE_PORTS));
}
