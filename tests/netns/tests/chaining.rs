//! Chaining: netd-cni with Debian's reference plugins (containernetworking-plugins 1.1.1 in
//! /usr/lib/cni) in one conflist, run by a chain executor that does what libcni does: ADD
//! through the plugins in order, each getting the previous result as `prevResult`; CHECK in
//! order and DEL in reverse, each with the chain's final ADD result. Needs the product
//! binaries (`cargo build --workspace --bins`) and the reference plugins.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use netd_netns_tests::util::{run_cmd, CMD_TIMEOUT};
use netd_netns_tests::*;

const NET: &str = "chain";
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A libcni-like runner for one conflist and one container interface.
struct Chain<'a> {
    w: &'a World,
    list: Value,
    /// CNI_PATH: where plugins are looked up by `type`, in order.
    path: Vec<PathBuf>,
}

/// One plugin's run.
#[derive(Debug)]
struct Step {
    plugin: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exit={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.plugin, self.code, self.stdout, self.stderr
        )
    }
}

impl<'a> Chain<'a> {
    fn new(w: &'a World, list: Value) -> Chain<'a> {
        let reference = Path::new(REFERENCE_PLUGINS);
        for p in list["plugins"].as_array().unwrap() {
            let t = p["type"].as_str().unwrap();
            // The reference plugins are a test dependency: missing is a failure, not a skip.
            assert!(
                t == "netd-cni" || reference.join(t).exists(),
                "{} missing: install containernetworking-plugins",
                reference.join(t).display()
            );
        }
        let ours = w.bin("netd-cni").parent().unwrap().to_path_buf();
        Chain {
            w,
            list,
            path: vec![ours, reference.to_path_buf()],
        }
    }

    fn find(&self, plugin_type: &str) -> PathBuf {
        self.path
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {plugin_type} not in CNI_PATH {:?}", self.path))
    }

    /// libcni's per-plugin configuration: the entry, the list's name and cniVersion,
    /// `runtimeConfig` with only the capabilities the plugin declares, and `prevResult`.
    fn conf(&self, plugin: &Value, runtime: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.list["name"].clone();
        conf["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(caps) = plugin["capabilities"].as_object() {
            let rc: serde_json::Map<String, Value> = caps
                .iter()
                .filter(|(k, on)| on.as_bool() == Some(true) && runtime.get(k.as_str()).is_some())
                .map(|(k, _)| (k.clone(), runtime[k.as_str()].clone()))
                .collect();
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn exec(&self, cmd: &str, c: &Netns, plugin: &Value, conf: &Value) -> Step {
        let t = plugin["type"].as_str().unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.w.host.name()])
            .arg(self.find(t))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", c.label())
            .env("CNI_NETNS", c.path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
            )
            .env(
                "CNI_PATH",
                std::env::join_paths(&self.path).expect("CNI_PATH joins"),
            );
        let out = run_cmd(command, Some(conf.to_string().as_bytes()), CMD_TIMEOUT);
        Step {
            plugin: t.to_string(),
            code: out.code,
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    fn plugins(&self) -> Vec<Value> {
        self.list["plugins"].as_array().unwrap().clone()
    }

    /// ADD through the chain; the final result (what libcni caches) or the failing step.
    fn add(&self, c: &Netns, runtime: &Value) -> Result<Value, Step> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let conf = self.conf(&plugin, runtime, prev.as_ref());
            let step = self.exec("ADD", c, &plugin, &conf);
            if step.code != Some(0) {
                return Err(step);
            }
            prev = Some(
                serde_json::from_str(&step.stdout)
                    .unwrap_or_else(|e| panic!("{} printed no result ({e}): {step}", step.plugin)),
            );
        }
        Ok(prev.expect("a chain has plugins"))
    }

    /// CHECK in order, or DEL in reverse, each plugin with the cached ADD result.
    fn run_with_result(
        &self,
        cmd: &str,
        c: &Netns,
        runtime: &Value,
        result: &Value,
    ) -> Result<(), Step> {
        let mut plugins = self.plugins();
        if cmd == "DEL" {
            plugins.reverse();
        }
        for plugin in plugins {
            let conf = self.conf(&plugin, runtime, Some(result));
            let step = self.exec(cmd, c, &plugin, &conf);
            if step.code != Some(0) {
                return Err(step);
            }
        }
        Ok(())
    }
}

/// `ip -j link` of one link in `ns`.
fn link(ns: &Netns, name: &str) -> Value {
    ns.ip_json(&["-d", "link", "show", "dev", name])[0].clone()
}

fn ifb_links(host: &Netns) -> Vec<String> {
    host.ip_json(&["-d", "link", "show", "type", "ifb"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn netd_first_then_tuning_and_bandwidth() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(NET, &["--subnet", "10.92.1.0/24"]);
    let own = w.cni_conf(NET);
    let data_dir = w.dir().join("tuning");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "plugins": [
            own.clone(),
            {"type": "tuning", "mtu": 1400, "dataDir": data_dir,
             "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "2"}},
            {"type": "bandwidth",
             "ingressRate": 8_000_000, "ingressBurst": 200_000,
             "egressRate": 4_000_000, "egressBurst": 100_000}
        ]
    });
    let chain = Chain::new(&w, list);
    let runtime =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});

    // A control container attached by netd-cni alone, without the chain.
    let plain = w.container("plain");
    w.cni_add(&plain, NET);
    let c = w.container("chained");
    let result = chain.add(&c, &runtime).unwrap_or_else(|s| {
        panic!(
            "chain ADD failed at {s}\n--- netd log ---\n{}",
            w.netd_log()
        )
    });
    let veth = netd::model::host_veth_name(c.label(), "eth0");
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], veth.as_str(), "{result}");
    assert_eq!(result["ips"][0]["address"], "10.92.1.3/24", "{result}");

    // tuning, inside the container: MTU and sysctl; the control container has neither.
    assert_eq!(link(&c, "eth0")["mtu"], 1400);
    assert_eq!(link(&plain, "eth0")["mtu"], 1500);
    let sysctl = |ns: &Netns| ns.sysctl_get("net.ipv4.conf.eth0.arp_ignore");
    assert_eq!(sysctl(&c), "2");
    assert_eq!(sysctl(&plain), "0");

    // bandwidth, on the host veth: tbf for traffic to the container, an ingress qdisc that
    // redirects traffic from the container to an ifb with its own tbf.
    let qdiscs = w.host.exec_ok(&["tc", "qdisc", "show", "dev", &veth]);
    assert!(
        qdiscs.contains("qdisc tbf") && qdiscs.contains("qdisc ingress"),
        "{qdiscs}"
    );
    let plain_veth = netd::model::host_veth_name(plain.label(), "eth0");
    let plain_qdiscs = w.host.exec_ok(&["tc", "qdisc", "show", "dev", &plain_veth]);
    assert!(!plain_qdiscs.contains("tbf"), "{plain_qdiscs}");
    let ifbs = ifb_links(&w.host);
    assert_eq!(ifbs.len(), 1, "{ifbs:?}");
    let ifb_qdisc = w.host.exec_ok(&["tc", "qdisc", "show", "dev", &ifbs[0]]);
    assert!(ifb_qdisc.contains("tbf"), "{ifb_qdisc}");

    // The attachment works: neighbour and published port (through the shaped veth).
    let srv = TcpServer::start_on_port(&c, 80);
    let seen = assert_tcp_ok(&plain, srv.addr(ip("10.92.1.3")));
    assert_eq!(seen.ip(), ip("10.92.1.2"));
    assert_tcp_ok(
        &w.external,
        std::net::SocketAddr::new(ip("192.0.2.1"), 8080),
    );
    assert_tcp_blocked(
        &w.external,
        std::net::SocketAddr::new(ip("192.0.2.1"), 8081),
    );

    // CHECK through the whole chain passes; and fails once netd's part is broken.
    chain
        .run_with_result("CHECK", &c, &runtime, &result)
        .unwrap_or_else(|s| panic!("chain CHECK failed at {s}"));
    let mut wrong = result.clone();
    wrong["ips"][0]["address"] = json!("10.92.1.77/24");
    let failed = chain
        .run_with_result("CHECK", &c, &runtime, &wrong)
        .expect_err("CHECK with a result netd did not give");
    assert_eq!(failed.plugin, "netd-cni", "{failed}");
    assert!(failed.stdout.contains("10.92.1.3"), "{failed}");

    // DEL in reverse leaves nothing: no endpoint, no veth, no ifb, no published port.
    chain
        .run_with_result("DEL", &c, &runtime, &result)
        .unwrap_or_else(|s| panic!("chain DEL failed at {s}"));
    assert!(
        w.host
            .wait_link_gone(&veth, std::time::Duration::from_secs(5)),
        "{veth} left"
    );
    assert!(
        ifb_links(&w.host).is_empty(),
        "ifb left: {:?}",
        ifb_links(&w.host)
    );
    assert!(!c.has_link("eth0"));
    let eps = w.netctl_json(&["endpoint", "ls"]);
    assert_eq!(
        eps.as_array().unwrap().len(),
        1,
        "only the control container: {eps}"
    );
    assert_tcp_blocked(
        &w.external,
        std::net::SocketAddr::new(ip("192.0.2.1"), 8080),
    );
    // DEL is idempotent through the chain too.
    chain
        .run_with_result("DEL", &c, &runtime, &result)
        .unwrap_or_else(|s| panic!("second chain DEL failed at {s}"));
    w.cni_del(&plain, NET);
}

#[test]
fn netd_after_another_plugin() {
    let mut w = World::new();
    w.start_netd();
    w.create_network(NET, &["--subnet", "10.92.2.0/24"]);
    let own = w.cni_conf(NET);
    // loopback first: netd-cni gets its result as prevResult and appends to it.
    let list = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "plugins": [{"type": "loopback"}, own]
    });
    let chain = Chain::new(&w, list);
    let runtime = json!({});
    let c = w.container("second");
    let result = chain
        .add(&c, &runtime)
        .unwrap_or_else(|s| panic!("chain ADD failed at {s}"));
    let names: Vec<&str> = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let veth = netd::model::host_veth_name(c.label(), "eth0");
    assert_eq!(names, vec!["lo", veth.as_str(), "eth0"], "{result}");
    let ips: Vec<&str> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert!(
        ips.contains(&"127.0.0.1/8") && ips.contains(&"10.92.2.2/24"),
        "{ips:?}"
    );
    let ours = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == "10.92.2.2/24")
        .unwrap();
    assert_eq!(
        ours["interface"], 2,
        "indices count the earlier plugin's interfaces"
    );
    assert_ping_ok(&c, ip("10.92.2.1"));
    chain
        .run_with_result("CHECK", &c, &runtime, &result)
        .unwrap_or_else(|s| panic!("chain CHECK failed at {s}"));
    chain
        .run_with_result("DEL", &c, &runtime, &result)
        .unwrap_or_else(|s| panic!("chain DEL failed at {s}"));
    assert!(w
        .host
        .wait_link_gone(&veth, std::time::Duration::from_secs(5)));

    // An earlier plugin that already made CNI_IFNAME: refused up front, nothing made.
    let c2 = w.container("clash");
    let table = w.host.nft_table("inet", "netd");
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": c2.path()}],
        "ips": [{"address": "192.168.7.2/24", "interface": 0}]});
    let r = w.cni_with_prev("ADD", &c2, "eth0", NET, None, Some(prev));
    assert_eq!(r.error_code(), Some(7), "{r}");
    assert!(r.stdout.contains("already made interface eth0"), "{r}");
    assert_eq!(w.host.nft_table("inet", "netd"), table);
    assert!(!w
        .host
        .has_link(&netd::model::host_veth_name(c2.label(), "eth0")));
    assert!(w
        .netctl_json(&["endpoint", "ls"])
        .as_array()
        .unwrap()
        .is_empty());
}
