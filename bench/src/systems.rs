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
/// Debian's netavark 1.4 (iptables driver): the installed package, else the package unpacked
/// into the bench's cache by scripts/bench.sh (installing it would switch Podman's default
/// network backend from CNI to netavark on this machine). `BENCH_NETAVARK14` overrides.
const NETAVARK14_BINS: [&str; 2] = [
    "/usr/lib/podman/netavark",
    "/var/cache/netd-bench/netavark-1.4/usr/lib/podman/netavark",
];
/// netavark 2.1.0 built by scripts/bench.sh with `cargo install` into the bench's cache
/// (never into the repository). `BENCH_NETAVARK21` overrides.
const NETAVARK21_BIN: &str = "/var/cache/netd-bench/netavark-2.1.0/bin/netavark";

/// The netavark binary of `kind` (Netavark or Netavark2).
pub fn netavark_bin(kind: Kind) -> String {
    match kind {
        Kind::Netavark2 => std::env::var("BENCH_NETAVARK21").unwrap_or(NETAVARK21_BIN.into()),
        _ => std::env::var("BENCH_NETAVARK14").unwrap_or_else(|_| {
            NETAVARK14_BINS
                .iter()
                .find(|p| runner::executable(std::path::Path::new(p)))
                .unwrap_or(&NETAVARK14_BINS[0])
                .to_string()
        }),
    }
}

/// How long one ADD/DEL may take before the bench gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Netd,
    Cni,
    /// Debian's netavark 1.4.0, iptables driver.
    Netavark,
    /// netavark 2.1.0 from crates.io, `--firewall-driver nftables`.
    Netavark2,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Netd => "netd",
            Kind::Cni => "cni-plugins",
            Kind::Netavark => "netavark-1.4",
            Kind::Netavark2 => "netavark-2.1",
        }
    }

    pub fn is_netavark(self) -> bool {
        matches!(self, Kind::Netavark | Kind::Netavark2)
    }
}

/// A container: its netns, and the per-container facts a runtime keeps between ADD and DEL.
pub struct Ctr {
    pub ns: Netns,
    pub id: String,
    /// Which of the system's networks it joins (netd's scale phase has several).
    pub net: usize,
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
    /// netd's conflist entry per network (netd) or the conflist (cni).
    confs: Vec<Value>,
    /// netavark: next host part of the static IP Podman would allocate.
    next_ip: u32,
}

/// Subnet of each system's network: /20, room for 4,000 containers.
fn subnet(kind: Kind) -> (&'static str, Ipv4Addr) {
    match kind {
        Kind::Netd => ("10.90.0.0/20", Ipv4Addr::new(10, 90, 0, 0)),
        Kind::Cni => ("10.91.0.0/20", Ipv4Addr::new(10, 91, 0, 0)),
        Kind::Netavark => ("10.92.0.0/20", Ipv4Addr::new(10, 92, 0, 0)),
        Kind::Netavark2 => ("10.93.0.0/20", Ipv4Addr::new(10, 93, 0, 0)),
    }
}

impl System {
    pub fn new(kind: Kind) -> System {
        Self::with_networks(kind, 1)
    }

    /// netd with `networks` networks (`bench`, or `bench0`… with /22 subnets from 10.100.0.0
    /// when more than one: a bridge holds at most 1,023 ports); the peers always have one.
    pub fn with_networks(kind: Kind, networks: usize) -> System {
        let mut world = World::new();
        let tmp = TempDir::new(kind.name());
        let (sub, _) = subnet(kind);
        let confs = match kind {
            Kind::Netd if networks > 1 => {
                world.start_netd();
                (0..networks)
                    .map(|i| {
                        let name = format!("bench{i}");
                        let sub = format!("10.{}.{}.0/22", 100 + i / 64, (i % 64) * 4);
                        world.create_network(&name, &["--subnet", &sub]);
                        world.cni_conf(&name)
                    })
                    .collect()
            }
            Kind::Netd => {
                world.start_netd();
                world.create_network("bench", &["--subnet", sub]);
                vec![world.cni_conf("bench")]
            }
            Kind::Cni => vec![json!({
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
            })],
            Kind::Netavark | Kind::Netavark2 => vec![Value::Null],
        };
        let runner = Runner::start(world.host.name());
        System {
            kind,
            world,
            runner,
            tmp,
            attached: HashMap::new(),
            confs,
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
                let mut conf = self.confs[c.net.min(self.confs.len() - 1)].clone();
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
                let list = &self.confs[0];
                let plugins = list["plugins"].as_array().unwrap();
                let mut out = Vec::new();
                let order: Vec<&Value> = if cmd == "DEL" {
                    plugins.iter().rev().collect()
                } else {
                    plugins.iter().collect()
                };
                for (i, p) in order.into_iter().enumerate() {
                    let mut conf = p.clone();
                    conf["name"] = list["name"].clone();
                    conf["cniVersion"] = list["cniVersion"].clone();
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
            Kind::Netavark | Kind::Netavark2 => unreachable!("netavark has its own call shape"),
        }
    }

    fn netavark_call(&self, cmd: &str, c: &Ctr, ip: Ipv4Addr, ports: &[Port]) -> Vec<Value> {
        let opts = self.netavark_opts(c, ip, ports);
        let cfg = self.tmp.path().join("netavark");
        let _ = std::fs::create_dir_all(&cfg);
        let ns = c.ns.path().display().to_string();
        let sub = if cmd == "ADD" { "setup" } else { "teardown" };
        let bin = netavark_bin(self.kind);
        let cfg = cfg.display().to_string();
        let mut argv: Vec<&str> = vec![&bin];
        if self.kind == Kind::Netavark2 {
            // 2.x builds with nftables as the default already; said explicitly so that the
            // run does not depend on how the binary was compiled.
            argv.extend(["--firewall-driver", "nftables"]);
        }
        argv.extend(["--config", &cfg, sub, &ns]);
        vec![runner::step(&argv, &[("RUST_LOG", "warn")], opts, false)]
    }

    /// The steps of an ADD of `c` with `ports`, and the address the bench chose (netavark);
    /// [`System::added`] records the answer.
    pub fn add_steps(&mut self, c: &Ctr, ports: &[Port]) -> (Vec<Value>, Option<Ipv4Addr>) {
        match self.kind {
            Kind::Netavark | Kind::Netavark2 => {
                let (_, base) = subnet(self.kind);
                let ip = Ipv4Addr::from(u32::from(base) + self.next_ip);
                self.next_ip += 1;
                (self.netavark_call("ADD", c, ip, ports), Some(ip))
            }
            _ => (self.steps("ADD", c, ports, None), None),
        }
    }

    /// Records a finished ADD (what a runtime keeps for the DEL).
    pub fn added(&mut self, c: &Ctr, ports: &[Port], ip: Option<Ipv4Addr>, t: &Timed) {
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
    }

    /// ADD `c` with `ports`, as the runtime would; times the whole call.
    pub fn add(&mut self, c: &Ctr, ports: &[Port]) -> Timed {
        let (steps, ip) = self.add_steps(c, ports);
        let t = self.runner.call(steps, CALL_TIMEOUT);
        self.added(c, ports, ip, &t);
        t
    }

    /// ADDs of all `ctrs` (with their ports) started at once, as a node booting or
    /// `podman play kube` would; the runner times each call and the whole burst.
    pub fn add_burst(&mut self, ctrs: &[(&Ctr, Vec<Port>)]) -> runner::Burst {
        let mut calls = Vec::new();
        let mut ips = Vec::new();
        for (c, ports) in ctrs {
            let (steps, ip) = self.add_steps(c, ports);
            calls.push(steps);
            ips.push(ip);
        }
        let b = self.runner.burst(calls, CALL_TIMEOUT);
        for (((c, ports), ip), t) in ctrs.iter().zip(ips).zip(&b.calls) {
            self.added(c, ports, ip, t);
        }
        b
    }

    /// DELs of all `ctrs` started at once.
    pub fn del_burst(&mut self, ctrs: &[&Ctr]) -> runner::Burst {
        let calls = ctrs.iter().map(|c| self.del_steps(c)).collect();
        self.runner.burst(calls, CALL_TIMEOUT)
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
            Kind::Netavark | Kind::Netavark2 => vec![runner::step(
                &[&netavark_bin(self.kind), "version"],
                &[],
                stdin,
                false,
            )],
        };
        self.runner.call(steps, CALL_TIMEOUT)
    }

    /// DEL `c` (with the cached ADD result as prevResult, as libcni does).
    pub fn del(&mut self, c: &Ctr) -> Timed {
        let steps = self.del_steps(c);
        self.runner.call(steps, CALL_TIMEOUT)
    }

    fn del_steps(&mut self, c: &Ctr) -> Vec<Value> {
        let a = self.attached.remove(&c.id);
        let ports = a.as_ref().map(|a| a.ports.clone()).unwrap_or_default();
        match self.kind {
            Kind::Netavark | Kind::Netavark2 => {
                let ip = a.as_ref().and_then(|a| a.ip).unwrap_or(subnet(self.kind).1);
                self.netavark_call("DEL", c, ip, &ports)
            }
            _ => {
                let prev = a.as_ref().and_then(|a| a.result.clone());
                self.steps("DEL", c, &ports, prev.as_ref())
            }
        }
    }

    pub fn available(kind: Kind) -> Result<(), String> {
        let need: Vec<PathBuf> = match kind {
            Kind::Netd => vec![],
            Kind::Cni => ["bridge", "portmap", "firewall", "host-local"]
                .iter()
                .map(|p| PathBuf::from(CNI_BIN_DIR).join(p))
                .collect(),
            Kind::Netavark | Kind::Netavark2 => vec![PathBuf::from(netavark_bin(kind))],
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
            Kind::Netavark | Kind::Netavark2 => {
                let bin = netavark_bin(kind);
                let out = run(&[&bin, "version"]);
                let v = serde_json::from_str::<Value>(&out)
                    .ok()
                    .and_then(|v| v["version"].as_str().map(String::from))
                    .unwrap_or(out);
                if kind == Kind::Netavark {
                    format!("netavark {v} (Debian package, {bin}), iptables driver")
                } else {
                    format!("netavark {v} (crates.io, {bin}), nftables driver")
                }
            }
        }
    }
}
