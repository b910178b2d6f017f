//! The three systems under test, each in its own private host netns (with its own external
//! netns), driven only through their public interfaces: netd through netctl and netd-cni, the
//! CNI reference plugins as a chained conflist the way libcni runs it, netavark through
//! `netavark setup/teardown` with the JSON Podman passes.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use netd_netns_tests::util::TempDir;
use netd_netns_tests::{Netns, World};

use crate::runner::{self, Runner, Timed};

/// One published port: host port → container port (TCP, all host addresses).
pub type Port = (u16, u16);

pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
pub const NETAVARK_BIN: &str = "/usr/lib/podman/netavark";

/// How long one ADD/DEL may take before the bench gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Netd,
    Cni,
    Netavark,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Netd => "netd",
            Kind::Cni => "cni-plugins",
            Kind::Netavark => "netavark",
        }
    }
}

/// A container: its netns, and the per-container facts a runtime keeps between ADD and DEL.
pub struct Ctr {
    pub ns: Netns,
    pub id: String,
}

struct Attached {
    ports: Vec<Port>,
    result: Option<Value>,
    ip: Option<Ipv4Addr>,
}

pub struct System {
    pub kind: Kind,
    pub world: World,
    runner: Runner,
    tmp: TempDir,
    attached: HashMap<String, Attached>,
    /// netd's conflist entry (netd) or the conflist (cni).
    conf: Value,
    /// netavark: next host part of the static IP Podman would allocate.
    next_ip: u32,
}

/// Subnet of each system's network: /20, room for 4,000 containers.
fn subnet(kind: Kind) -> (&'static str, Ipv4Addr) {
    match kind {
        Kind::Netd => ("10.90.0.0/20", Ipv4Addr::new(10, 90, 0, 0)),
        Kind::Cni => ("10.91.0.0/20", Ipv4Addr::new(10, 91, 0, 0)),
        Kind::Netavark => ("10.92.0.0/20", Ipv4Addr::new(10, 92, 0, 0)),
    }
}

impl System {
    pub fn new(kind: Kind) -> System {
        let mut world = World::new();
        let tmp = TempDir::new(kind.name());
        let (sub, _) = subnet(kind);
        let conf = match kind {
            Kind::Netd => {
                world.start_netd();
                world.create_network("bench", &["--subnet", sub]);
                world.cni_conf("bench")
            }
            Kind::Cni => json!({
                "cniVersion": "1.0.0",
                "name": "cnibench",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni-bench0",
                        "isGateway": true,
                        "ipMasq": true,
                        "hairpinMode": true,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": sub}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": tmp.path().join("ipam").display().to_string(),
                        }
                    },
                    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                    {"type": "firewall"}
                ]
            }),
            Kind::Netavark => Value::Null,
        };
        let runner = Runner::start(world.host.name());
        System {
            kind,
            world,
            runner,
            tmp,
            attached: HashMap::new(),
            conf,
            next_ip: 2,
        }
    }

    /// netd's pid (netd only).
    pub fn netd_pid(&self) -> Option<u32> {
        self.world.netd_pid()
    }

    fn cni_env(&self, cmd: &str, c: &Ctr, path: &str) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), cmd.into()),
            ("CNI_CONTAINERID".into(), c.id.clone()),
            ("CNI_NETNS".into(), c.ns.path().display().to_string()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), path.into()),
        ]
    }

    fn mappings(ports: &[Port]) -> Value {
        Value::Array(
            ports
                .iter()
                .map(|(h, c)| json!({"hostPort": h, "containerPort": c, "protocol": "tcp"}))
                .collect(),
        )
    }

    /// The netavark options Podman would pass; consecutive ports become one `range` entry.
    fn netavark_opts(&self, c: &Ctr, ip: Ipv4Addr, ports: &[Port]) -> Value {
        let (sub, base) = subnet(self.kind);
        let gw = Ipv4Addr::from(u32::from(base) + 1);
        let mut pm: Vec<Value> = Vec::new();
        let mut i = 0;
        while i < ports.len() {
            let (h, ct) = ports[i];
            let mut n = 1u32;
            while i + (n as usize) < ports.len()
                && ports[i + n as usize] == (h + n as u16, ct + n as u16)
            {
                n += 1;
            }
            pm.push(json!({"host_ip": "", "container_port": ct, "host_port": h, "range": n, "protocol": "tcp"}));
            i += n as usize;
        }
        json!({
            "container_id": c.id,
            "container_name": c.id,
            "networks": {"nvbench": {"interface_name": "eth0", "static_ips": [ip.to_string()]}},
            "network_info": {"nvbench": {
                "dns_enabled": false,
                "driver": "bridge",
                "id": "6e7662656e6368000000000000000000000000000000000000000000000000aa",
                "internal": false,
                "ipv6_enabled": false,
                "name": "nvbench",
                "network_interface": "nv-bench0",
                "subnets": [{"subnet": sub, "gateway": gw.to_string()}],
                "ipam_options": {"driver": "host-local"}
            }},
            "port_mappings": pm,
        })
    }

    fn steps(&self, cmd: &str, c: &Ctr, ports: &[Port], prev: Option<&Value>) -> Vec<Value> {
        let rc = json!({"portMappings": Self::mappings(ports)});
        match self.kind {
            Kind::Netd => {
                let bin = self.world.bin("netd-cni");
                let dir = bin.parent().unwrap().display().to_string();
                let env = self.cni_env(cmd, c, &dir);
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut conf = self.conf.clone();
                conf["runtimeConfig"] = rc;
                if let Some(p) = prev {
                    conf["prevResult"] = p.clone();
                }
                vec![runner::step(
                    &[&bin.display().to_string()],
                    &env,
                    conf,
                    false,
                )]
            }
            Kind::Cni => {
                let env = self.cni_env(cmd, c, CNI_BIN_DIR);
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let plugins = self.conf["plugins"].as_array().unwrap();
                let mut out = Vec::new();
                let order: Vec<&Value> = if cmd == "DEL" {
                    plugins.iter().rev().collect()
                } else {
                    plugins.iter().collect()
                };
                for (i, p) in order.into_iter().enumerate() {
                    let mut conf = p.clone();
                    conf["name"] = self.conf["name"].clone();
                    conf["cniVersion"] = self.conf["cniVersion"].clone();
                    if p["capabilities"]["portMappings"] == true {
                        conf["runtimeConfig"] = rc.clone();
                    }
                    if let Some(pr) = prev {
                        conf["prevResult"] = pr.clone();
                    }
                    let bin = format!("{CNI_BIN_DIR}/{}", p["type"].as_str().unwrap());
                    out.push(runner::step(&[&bin], &env, conf, cmd == "ADD" && i > 0));
                }
                out
            }
            Kind::Netavark => unreachable!("netavark has its own call shape"),
        }
    }

    fn netavark_call(&self, cmd: &str, c: &Ctr, ip: Ipv4Addr, ports: &[Port]) -> Vec<Value> {
        let opts = self.netavark_opts(c, ip, ports);
        let cfg = self.tmp.path().join("netavark");
        let _ = std::fs::create_dir_all(&cfg);
        let ns = c.ns.path().display().to_string();
        let sub = if cmd == "ADD" { "setup" } else { "teardown" };
        vec![runner::step(
            &[
                NETAVARK_BIN,
                "--config",
                &cfg.display().to_string(),
                sub,
                &ns,
            ],
            &[("RUST_LOG", "warn")],
            opts,
            false,
        )]
    }

    /// ADD `c` with `ports`, as the runtime would; times the whole call.
    pub fn add(&mut self, c: &Ctr, ports: &[Port]) -> Timed {
        let (steps, ip) = match self.kind {
            Kind::Netavark => {
                let (_, base) = subnet(self.kind);
                let ip = Ipv4Addr::from(u32::from(base) + self.next_ip);
                self.next_ip += 1;
                (self.netavark_call("ADD", c, ip, ports), Some(ip))
            }
            _ => (self.steps("ADD", c, ports, None), None),
        };
        let t = self.runner.call(steps, CALL_TIMEOUT);
        if t.ok {
            self.attached.insert(
                c.id.clone(),
                Attached {
                    ports: ports.to_vec(),
                    result: t.json(),
                    ip,
                },
            );
        }
        t
    }

    /// The cost of just starting the system's processes: CNI `VERSION` on every plugin of
    /// the chain (netd-cni; bridge, portmap, firewall), `netavark version`.
    pub fn version_call(&mut self) -> Timed {
        let env = [("CNI_COMMAND", "VERSION")];
        let stdin = json!({"cniVersion": "1.0.0"});
        let steps = match self.kind {
            Kind::Netd => {
                let bin = self.world.bin("netd-cni").display().to_string();
                vec![runner::step(&[&bin], &env, stdin, false)]
            }
            Kind::Cni => ["bridge", "portmap", "firewall"]
                .iter()
                .map(|p| runner::step(&[&format!("{CNI_BIN_DIR}/{p}")], &env, stdin.clone(), false))
                .collect(),
            Kind::Netavark => vec![runner::step(&[NETAVARK_BIN, "version"], &[], stdin, false)],
        };
        self.runner.call(steps, CALL_TIMEOUT)
    }

    /// DEL `c` (with the cached ADD result as prevResult, as libcni does).
    pub fn del(&mut self, c: &Ctr) -> Timed {
        let a = self.attached.remove(&c.id);
        let ports = a.as_ref().map(|a| a.ports.clone()).unwrap_or_default();
        let steps = match self.kind {
            Kind::Netavark => {
                let ip = a
                    .as_ref()
                    .and_then(|a| a.ip)
                    .unwrap_or(Ipv4Addr::new(10, 92, 0, 2));
                self.netavark_call("DEL", c, ip, &ports)
            }
            _ => {
                let prev = a.as_ref().and_then(|a| a.result.clone());
                self.steps("DEL", c, &ports, prev.as_ref())
            }
        };
        self.runner.call(steps, CALL_TIMEOUT)
    }

    pub fn available(kind: Kind) -> Result<(), String> {
        let need: Vec<PathBuf> = match kind {
            Kind::Netd => vec![],
            Kind::Cni => ["bridge", "portmap", "firewall", "host-local"]
                .iter()
                .map(|p| PathBuf::from(CNI_BIN_DIR).join(p))
                .collect(),
            Kind::Netavark => vec![PathBuf::from(NETAVARK_BIN)],
        };
        for p in need {
            if !runner::executable(&p) {
                return Err(format!("{} is missing", p.display()));
            }
        }
        Ok(())
    }

    /// Version string of the system.
    pub fn version(kind: Kind, netd_bin: &std::path::Path) -> String {
        let run = |argv: &[&str]| {
            std::process::Command::new(argv[0])
                .args(&argv[1..])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        match kind {
            Kind::Netd => run(&[&netd_bin.display().to_string(), "--version"]),
            Kind::Cni => {
                let v = run(&[
                    "dpkg-query",
                    "-W",
                    "-f=${Version}",
                    "containernetworking-plugins",
                ]);
                format!("containernetworking-plugins {v} (Debian), iptables backend")
            }
            Kind::Netavark => {
                let v = run(&["dpkg-query", "-W", "-f=${Version}", "netavark"]);
                format!("netavark {v} (Debian), iptables driver")
            }
        }
    }
}
