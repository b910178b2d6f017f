//! Kubernetes nodes without a manual step: a conflist entry that carries its network's subnets
//! (as containerd renders `{{.PodCIDRRanges}}` from `conf_template`) makes netd create the
//! network on the first ADD, once, however many ADDs race for it; a conflist whose subnets
//! disagree with an existing network is refused, naming both. Needs the product binaries
//! (`cargo build --workspace --bins`).

use std::net::IpAddr;

use serde_json::{json, Value};

use netd_netns_tests::world::EXT_V4;
use netd_netns_tests::*;

const POD_CIDR4: &str = "10.244.1.0/24";
const POD_CIDR6: &str = "fd00:10:244:1::/64";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The range expression of `deploy/netd.conflist.tmpl` that lists the node's pod CIDRs.
const RANGE: &str = r#"[{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}"{{$r}}"{{end}}]"#;

/// `deploy/netd.conflist.tmpl` rendered as containerd renders it for a node whose pod CIDRs
/// are `cidrs` (Go's text/template on that one range expression), then the netd-cni entry with
/// name and cniVersion injected as libcni does, pointed at this world's netd and `network`.
fn rendered(w: &World, network: &str, cidrs: &[&str]) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/netd.conflist.tmpl"
    );
    let template = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        template.contains(RANGE),
        "{path} no longer lists .PodCIDRRanges as expected"
    );
    let list: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    let text = template.replace(RANGE, &format!("[{}]", list.join(", ")));
    let conflist: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("rendered template: {e}\n{text}"));
    let mut conf = conflist["plugins"][0].clone();
    assert_eq!(conf["type"], "netd-cni");
    assert_eq!(conf["network"], "pods");
    assert_eq!(conf["socket"], "/run/netd/netd.sock");
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["socket"] = json!(w.socket());
    conf["network"] = json!(network);
    conf
}

fn run(w: &World, cmd: &str, c: &Netns, conf: &Value) -> CniOutput {
    let env = w.cni_env(cmd, c, "eth0");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    w.cni_raw(&env, conf.to_string().as_bytes())
}

#[test]
fn the_first_adds_create_one_network_even_in_parallel() {
    let mut w = World::new();
    w.start_netd();
    let conf = rendered(&w, "pods", &[POD_CIDR4, POD_CIDR6]);
    let pods: Vec<Netns> = (0..6).map(|i| w.container(&format!("pod{i}"))).collect();

    // All first ADDs at once: netd serialises them, so one creates and the rest attach.
    let results: Vec<CniOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| run(&w, "ADD", p, &conf)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs = Vec::new();
    for r in &results {
        assert!(r.success(), "{r}\n--- netd log ---\n{}", w.netd_log());
        assert_eq!(r.json.as_ref().unwrap()["cniVersion"], "1.0.0");
        addrs.extend(r.ips());
    }
    let mut unique = addrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 12, "distinct addresses: {addrs:?}");

    let nets = w.netctl_json(&["network", "ls"]);
    let nets = nets.as_array().unwrap();
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!(nets[0]["name"], "pods");
    assert_eq!(nets[0]["subnet4"], POD_CIDR4);
    assert_eq!(nets[0]["subnet6"], POD_CIDR6);
    assert_eq!(nets[0]["cni_version"], "1.0.0");
    let own: Value =
        serde_json::from_str(&std::fs::read_to_string(w.conflist_path("pods")).unwrap()).unwrap();
    assert_eq!(own["cniVersion"], "1.0.0");
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(eps.as_array().unwrap().len(), 6);

    // Packets: pod to pod on both families, pod to the outside (NAT); and the outside cannot
    // open a connection to a pod (no published port).
    let srv = TcpServer::start(&pods[1]);
    let p1 = results[1].ips();
    assert_tcp_ok(&pods[0], srv.addr(p1[0]));
    assert_tcp_ok(&pods[0], srv.addr(p1[1]));
    let ext = TcpServer::start(&w.external);
    let seen = assert_tcp_ok(&pods[0], ext.addr(ip(EXT_V4)));
    assert_eq!(seen.ip(), ip("192.0.2.1"), "masqueraded");
    w.external_route_via_host(POD_CIDR4);
    assert_tcp_blocked(&w.external, srv.addr(p1[0]));

    // After a restart the network is still the one the conflist describes: ADDs attach to it.
    w.restart_netd(libc::SIGTERM);
    let late = w.container("pod-late");
    let r = run(&w, "ADD", &late, &conf);
    assert!(r.success(), "{r}");
    assert_eq!(
        w.netctl_json(&["network", "ls"]).as_array().unwrap().len(),
        1
    );
    assert_tcp_ok(&late, srv.addr(p1[0]));

    for p in pods.iter().chain([&late]) {
        let r = run(&w, "DEL", p, &conf);
        assert!(r.success(), "{r}");
    }
    assert!(w
        .netctl_json(&["endpoint", "ls"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_configuration_that_disagrees_with_the_network_is_refused() {
    let mut w = World::new();
    w.start_netd();
    w.create_network("pods", &["--subnet", "10.244.9.0/24"]);
    let c = w.container("pod");
    let table = w.host.nft_table("inet", "netd");
    let veth = netd::model::host_veth_name(c.label(), "eth0");

    let r = run(&w, "ADD", &c, &rendered(&w, "pods", &[POD_CIDR4]));
    assert_eq!(r.error_code(), Some(100), "{r}");
    assert!(
        r.stdout.contains("exists with subnets 10.244.9.0/24")
            && r.stdout.contains("asks for 10.244.1.0/24"),
        "{r}"
    );
    // Unknown network and no subnets: unchanged behaviour, an error that says what to do.
    let r = run(&w, "ADD", &c, &rendered(&w, "nope", &[]));
    assert_eq!(r.error_code(), Some(7), "{r}");
    assert!(r.stdout.contains("not known to netd"), "{r}");
    assert!(r.stdout.contains("\\\"subnets\\\""), "{r}");
    // A subnet another network holds: the creation fails, nothing is made.
    let r = run(&w, "ADD", &c, &rendered(&w, "pods2", &["10.244.9.0/25"]));
    assert_eq!(r.error_code(), Some(100), "{r}");
    assert!(r.stdout.contains("overlaps"), "{r}");

    assert_eq!(w.host.nft_table("inet", "netd"), table, "table unchanged");
    assert!(!w.host.has_link(&veth), "no veth left");
    assert!(!c.has_link("eth0"));
    let nets = w.netctl_json(&["network", "ls"]);
    assert_eq!(nets.as_array().unwrap().len(), 1, "{nets}");
    assert!(!w.conflist_path("pods2").exists());

    // Positive control: the configuration that agrees attaches, and the pod reaches its gateway.
    let r = run(&w, "ADD", &c, &rendered(&w, "pods", &["10.244.9.0/24"]));
    assert!(r.success(), "{r}");
    assert_ping_ok(&c, ip("10.244.9.1"));
    let r = run(&w, "DEL", &c, &rendered(&w, "pods", &["10.244.9.0/24"]));
    assert!(r.success(), "{r}");
}
