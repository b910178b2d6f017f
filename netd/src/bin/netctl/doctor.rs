//! `netctl doctor`: looks at the host for what stops container traffic or exposes netd, and
//! says for each finding how to fix it. It only reads: sysctls under /proc/sys (of netctl's
//! own network namespace), the socket's metadata, the conflists, netd's API, and the ruleset
//! through `nft -j list ruleset` (a CLI may run nft; the daemon never does).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use netd::api::{Client, ClientError, Status};
use netd::conflist;
use netd::model::Network;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The nft program used to read the ruleset.
    #[arg(long, default_value = "nft", value_name = "PATH")]
    nft: PathBuf,
    /// Where netd writes conflists (default: what netd reports, else /etc/cni/net.d).
    #[arg(long, value_name = "DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// Directories searched for the netd-cni plugin.
    #[arg(
        long,
        value_name = "DIR",
        value_delimiter = ',',
        default_value = "/opt/cni/bin,/usr/lib/cni"
    )]
    cni_bin_dir: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn finding(check: &str, status: Level, detail: impl Into<String>, fix: Option<String>) -> Finding {
    Finding {
        check: check.to_string(),
        status,
        detail: detail.into(),
        fix,
    }
}

/// What doctor knows about netd: from its API when it answers.
struct Netd {
    status: Option<Status>,
    networks: Vec<Network>,
}

pub fn run(client: &Client, args: &DoctorArgs) -> Vec<Finding> {
    let mut out = Vec::new();
    let netd = socket_and_daemon(client, &mut out);
    forwarding(&netd, &mut out);
    let bridges: Vec<String> = netd.networks.iter().map(|n| n.bridge.clone()).collect();
    let table = netd
        .status
        .as_ref()
        .map_or_else(|| "netd".to_string(), |s| s.table.clone());
    let br_nf = br_netfilter(&mut out);
    ruleset(&args.nft, &table, &bridges, br_nf, &mut out);
    rp_filter(&netd.networks, &mut out);
    let conf_dir = args.cni_conf_dir.clone().unwrap_or_else(|| {
        netd.status
            .as_ref()
            .filter(|s| !s.cni_conf_dir.is_empty())
            .map_or_else(
                || PathBuf::from("/etc/cni/net.d"),
                |s| s.cni_conf_dir.clone().into(),
            )
    });
    conflists(&netd, client.socket_path(), &conf_dir, &mut out);
    plugin(&args.cni_bin_dir, &mut out);
    out
}

fn read_sysctl(name: &str) -> Option<String> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn socket_and_daemon(client: &Client, out: &mut Vec<Finding>) -> Netd {
    let path = client.socket_path();
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) => out.push(finding(
            "socket",
            Level::Fail,
            format!("{shown}: {e}"),
            Some(
                "start netd (systemctl start netd), or point netctl at its socket with --socket"
                    .into(),
            ),
        )),
        Ok(m) if !m.file_type().is_socket() => out.push(finding(
            "socket",
            Level::Fail,
            format!("{shown} is not a socket"),
            Some("check --socket / NETD_SOCKET and netd's `socket` setting".into()),
        )),
        Ok(m) => {
            let mode = m.mode() & 0o7777;
            if mode & 0o007 != 0 {
                out.push(finding(
                    "socket",
                    Level::Fail,
                    format!("{shown} has mode {mode:04o}: every local user can change the firewall through it"),
                    Some(format!("chmod 0660 {shown}; netd sets 0660 itself, so find what changed it")),
                ));
            } else if m.uid() != 0 {
                out.push(finding(
                    "socket",
                    Level::Warn,
                    format!("{shown} belongs to uid {}, not root", m.uid()),
                    Some("run netd as root (the systemd unit does)".into()),
                ));
            } else {
                out.push(finding(
                    "socket",
                    Level::Ok,
                    format!("{shown}: mode {mode:04o}, owner root, group {}", m.gid()),
                    None,
                ));
            }
        }
    }
    let status = match client.status() {
        Ok(s) => {
            out.push(finding(
                "netd",
                Level::Ok,
                format!(
                    "netd {} answers; table inet {}, {} network(s), {} endpoint(s)",
                    s.version, s.table, s.networks, s.endpoints
                ),
                None,
            ));
            Some(s)
        }
        Err(e) => {
            let fix = match &e {
                ClientError::Unreachable { source, .. } => super::unreachable_hint(source).into(),
                _ => "look at netd's log: journalctl -u netd".into(),
            };
            out.push(finding("netd", Level::Fail, e.to_string(), Some(fix)));
            None
        }
    };
    let networks = if status.is_some() {
        client.networks().unwrap_or_default()
    } else {
        Vec::new()
    };
    Netd { status, networks }
}

fn forwarding(netd: &Netd, out: &mut Vec<Finding>) {
    let wants6 = netd.networks.iter().any(|n| n.subnet6.is_some());
    for (sysctl, needed) in [
        ("net.ipv4.ip_forward", true),
        ("net.ipv6.conf.all.forwarding", wants6),
    ] {
        match read_sysctl(sysctl) {
            Some(v) if v == "1" => out.push(finding("forwarding", Level::Ok, format!("{sysctl} = 1"), None)),
            Some(v) => out.push(finding(
                "forwarding",
                if needed { Level::Fail } else { Level::Warn },
                if needed {
                    format!("{sysctl} = {v}: containers cannot reach anything beyond their bridge, and netd refuses to start")
                } else {
                    format!("{sysctl} = {v}: fine while no network has IPv6; IPv6 networks need it")
                },
                Some(format!(
                    "sysctl -w {sysctl}=1 and persist it: echo '{sysctl} = 1' > /etc/sysctl.d/90-netd.conf. This routes between all of the host's interfaces, so make sure another firewall guards non-container forwarding"
                )),
            )),
            None => out.push(finding("forwarding", Level::Warn, format!("cannot read {sysctl}"), None)),
        }
    }
}

/// Whether br_netfilter hands bridged IPv4 traffic to the forward hook.
fn br_netfilter(out: &mut Vec<Finding>) -> bool {
    match read_sysctl("net.bridge.bridge-nf-call-iptables") {
        None => {
            out.push(finding(
                "br_netfilter",
                Level::Ok,
                "not loaded: traffic between containers of one network stays on the bridge (ICC isolation uses the bridge port's isolated flag)",
                None,
            ));
            false
        }
        Some(v) if v == "1" => {
            out.push(finding(
                "br_netfilter",
                Level::Ok,
                "loaded, bridge-nf-call-iptables = 1: traffic between containers of one network also passes the forward hook; netd's table accepts it, but a drop in another table's forward chain would cut it too",
                None,
            ));
            true
        }
        Some(v) => {
            out.push(finding(
                "br_netfilter",
                Level::Ok,
                format!("loaded, bridge-nf-call-iptables = {v}: bridged traffic does not pass the forward hook"),
                None,
            ));
            false
        }
    }
}

/// Reads the ruleset and reports forward base chains of other tables that drop what netd's
/// table accepts: a packet must be accepted by every base chain on a hook, so netd's accept
/// cannot override another table's drop.
fn ruleset(nft: &Path, table: &str, bridges: &[String], br_nf: bool, out: &mut Vec<Finding>) {
    let text = match Command::new(nft).args(["-j", "list", "ruleset"]).output() {
        Err(e) => {
            out.push(finding(
                "ruleset",
                Level::Warn,
                format!(
                    "cannot run {}: {e}; other tables' forward chains were not checked",
                    nft.display()
                ),
                Some("install nftables (the nft program), or pass --nft PATH".into()),
            ));
            return;
        }
        Ok(o) if !o.status.success() => {
            out.push(finding(
                "ruleset",
                Level::Warn,
                format!(
                    "nft -j list ruleset failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Some("run netctl doctor as root so it can read the ruleset".into()),
            ));
            return;
        }
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
    };
    let findings = forward_findings(&text, table, bridges, br_nf);
    if findings.is_empty() {
        out.push(finding(
            "ruleset",
            Level::Ok,
            "no other table's forward chain drops container traffic",
            None,
        ));
    }
    out.extend(findings);
}

/// The analysis of `nft -j list ruleset` output, apart from running nft (unit-tested).
pub fn forward_findings(json: &str, table: &str, bridges: &[String], br_nf: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let v: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => {
            out.push(finding(
                "ruleset",
                Level::Warn,
                format!("nft printed no JSON: {e}"),
                None,
            ));
            return out;
        }
    };
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let ours = |family: &str, t: &str| family == "inet" && t == table;
    let matcher = if bridges.is_empty() {
        "\"nd-*\"".to_string()
    } else {
        format!(
            "{{ {} }}",
            bridges
                .iter()
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let what = if br_nf {
        "container traffic (also between containers of one network, since br_netfilter is on)"
    } else {
        "container traffic leaving or entering netd's bridges"
    };
    for item in &items {
        let Some(c) = item.get("chain") else { continue };
        let (family, tname, chain) = (
            c["family"].as_str().unwrap_or(""),
            c["table"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or(""),
        );
        if c["hook"].as_str() != Some("forward") || ours(family, tname) {
            continue;
        }
        if !matches!(family, "ip" | "ip6" | "inet" | "bridge") {
            continue;
        }
        let names = if bridges.is_empty() {
            vec!["nd-NAME".to_string()]
        } else {
            bridges.to_vec()
        };
        let fix = |verb: &str| {
            if tname == "firewalld" {
                // firewalld rewrites its table on reload; the change belongs in its zones.
                let adds: Vec<String> = names
                    .iter()
                    .map(|b| format!("firewall-cmd --permanent --zone=trusted --add-interface={b}"))
                    .collect();
                return format!(
                    "put netd's bridges in firewalld's trusted zone, so that netd's table decides for them: {}; firewall-cmd --reload",
                    adds.join("; ")
                );
            }
            format!(
                "let netd's table decide for its bridges: nft insert rule {family} {tname} {chain} iifname {matcher} accept; nft insert rule {family} {tname} {chain} oifname {matcher} accept (an accept there ends only that chain: netd's own chain still applies its isolation). With iptables: iptables -I {chain} -i nd-+ -j ACCEPT; iptables -I {chain} -o nd-+ -j ACCEPT. {verb}"
            )
        };
        let lets_netd_through =
            rules_of(&items, family, tname, chain).any(|r| accepts_bridges(r, bridges));
        if c["policy"].as_str() == Some("drop") && !lets_netd_through {
            out.push(finding(
                "ruleset",
                Level::Fail,
                format!(
                    "table {family} {tname}, chain {chain} (hook forward, priority {}) has policy drop: it drops {what} that none of its rules accepts",
                    c["prio"]
                ),
                Some(fix("Or make the policy accept if nothing else relies on it.")),
            ));
        }
        for r in rules_of(&items, family, tname, chain) {
            let exprs = r["expr"].as_array().cloned().unwrap_or_default();
            let drops = exprs
                .iter()
                .any(|e| e.get("drop").is_some() || e.get("reject").is_some());
            if !drops {
                continue;
            }
            let only_counters = exprs.iter().all(|e| {
                e.get("drop").is_some() || e.get("reject").is_some() || e.get("counter").is_some()
            });
            let handle = &r["handle"];
            if only_counters {
                out.push(finding(
                    "ruleset",
                    Level::Fail,
                    format!("table {family} {tname}, chain {chain}, rule handle {handle} drops every forwarded packet, {what} included"),
                    Some(fix(&format!("Or delete the rule: nft delete rule {family} {tname} {chain} handle {handle}."))),
                ));
            } else if !lets_netd_through && !only_invalid(&exprs) {
                out.push(finding(
                    "ruleset",
                    Level::Warn,
                    format!("table {family} {tname}, chain {chain}, rule handle {handle} drops or rejects some forwarded packets; check that it does not match container traffic (nft -a list chain {family} {tname} {chain})"),
                    None,
                ));
            }
        }
    }
    out
}

/// `ct state invalid drop`: drops nothing a working connection sends.
fn only_invalid(exprs: &[Value]) -> bool {
    exprs.iter().any(|e| {
        let m = &e["match"];
        m["left"]["ct"]["key"] == "state" && m["right"] == "invalid"
    })
}

fn rules_of<'a>(
    items: &'a [Value],
    family: &'a str,
    table: &'a str,
    chain: &'a str,
) -> impl Iterator<Item = &'a Value> + 'a {
    items.iter().filter_map(move |i| {
        let r = i.get("rule")?;
        (r["family"].as_str() == Some(family)
            && r["table"].as_str() == Some(table)
            && r["chain"].as_str() == Some(chain))
        .then_some(r)
    })
}

/// A rule that matches only an interface name that covers netd's bridges (`nd-*` or one of
/// them) and accepts: the fix doctor suggests, already in place.
fn accepts_bridges(rule: &Value, bridges: &[String]) -> bool {
    let exprs = rule["expr"].as_array().cloned().unwrap_or_default();
    if !exprs.iter().any(|e| e.get("accept").is_some()) {
        return false;
    }
    exprs.iter().any(|e| {
        let Some(m) = e.get("match") else {
            return false;
        };
        let key = m["left"]["meta"]["key"].as_str().unwrap_or("");
        if key != "iifname" && key != "oifname" {
            return false;
        }
        let names: Vec<&str> = match &m["right"] {
            Value::String(s) => vec![s.as_str()],
            Value::Object(o) => o
                .get("set")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
            _ => vec![],
        };
        names
            .iter()
            .any(|n| *n == "nd-*" || *n == "nd-+" || bridges.iter().any(|b| b == n))
    })
}

fn rp_filter(networks: &[Network], out: &mut Vec<Finding>) {
    let all: u8 = read_sysctl("net.ipv4.conf.all.rp_filter")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for n in networks.iter().filter(|n| n.subnet4.is_some()) {
        let b = &n.bridge;
        let Some(own) = read_sysctl(&format!("net.ipv4.conf.{b}.rp_filter")) else {
            out.push(finding(
                "rp_filter",
                Level::Ok,
                format!(
                    "bridge {b} of network {} is not up yet (it appears with its first container)",
                    n.name
                ),
                None,
            ));
            continue;
        };
        // The kernel uses the larger of the `all` and the interface value.
        let effective = own.parse::<u8>().unwrap_or(0).max(all);
        if effective == 1 && n.gateway_mode4 == netd::model::GatewayMode::Routed {
            out.push(finding(
                "rp_filter",
                Level::Warn,
                format!("strict reverse-path filtering (rp_filter = 1) on {b}: routed network {} drops packets whose return route leaves through another interface", n.name),
                Some(format!("sysctl -w net.ipv4.conf.{b}.rp_filter=2 (loose), and net.ipv4.conf.all.rp_filter=2 if `all` is 1")),
            ));
        } else {
            out.push(finding(
                "rp_filter",
                Level::Ok,
                format!("{b}: rp_filter = {effective}"),
                None,
            ));
        }
    }
}

fn conflists(netd: &Netd, socket: &Path, dir: &Path, out: &mut Vec<Finding>) {
    if netd.status.is_none() {
        return;
    }
    let mut bad = 0;
    for n in &netd.networks {
        let path = dir.join(conflist::file_name(&n.name));
        let problem = match std::fs::read_to_string(&path) {
            Err(e) => Some(format!("{}: {e}", path.display())),
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Err(e) => Some(format!("{} is not JSON: {e}", path.display())),
                Ok(v) => {
                    let p = &v["plugins"][0];
                    if v["name"] != n.name.as_str() || p["network"] != n.name.as_str() {
                        Some(format!("{} names another network", path.display()))
                    } else if p["type"] != conflist::PLUGIN_TYPE {
                        Some(format!(
                            "{} does not use the {} plugin",
                            path.display(),
                            conflist::PLUGIN_TYPE
                        ))
                    } else if p["socket"].as_str() != Some(&*socket.to_string_lossy()) {
                        Some(format!(
                            "{} sends the plugin to socket {}, netd listens on {}",
                            path.display(),
                            p["socket"],
                            socket.display()
                        ))
                    } else {
                        None
                    }
                }
            },
        };
        if let Some(p) = problem {
            bad += 1;
            out.push(finding(
                "conflists",
                Level::Fail,
                format!("network {}: {p}", n.name),
                Some("restart netd (systemctl restart netd): it rewrites missing or stale conflists at start".into()),
            ));
        }
    }
    let known: Vec<&str> = netd.networks.iter().map(|n| n.name.as_str()).collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = conflist::network_of(&file) {
                if !known.contains(&name) {
                    bad += 1;
                    out.push(finding(
                        "conflists",
                        Level::Warn,
                        format!("{} is for network {name}, which netd does not have: runtimes will offer a network that fails", e.path().display()),
                        Some(format!("rm {} (or restart netd, which removes it)", e.path().display())),
                    ));
                }
            }
        }
    }
    if bad == 0 {
        out.push(finding(
            "conflists",
            Level::Ok,
            format!(
                "{} conflist(s) in {} match netd's networks",
                netd.networks.len(),
                dir.display()
            ),
            None,
        ));
    }
}

fn plugin(dirs: &[PathBuf], out: &mut Vec<Finding>) {
    let found: Vec<String> = dirs
        .iter()
        .map(|d| d.join(conflist::PLUGIN_TYPE))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if found.is_empty() {
        out.push(finding(
            "plugin",
            Level::Warn,
            format!(
                "{} is in none of {}",
                conflist::PLUGIN_TYPE,
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(
                "run scripts/install.sh, or copy netd-cni into your runtime's CNI plugin directory"
                    .into(),
            ),
        ));
    } else {
        out.push(finding(
            "plugin",
            Level::Ok,
            format!("found {}", found.join(", ")),
            None,
        ));
    }
}

pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.status {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        s.push_str(&format!("{tag}  {:<13}{}\n", f.check, f.detail));
        if let Some(fix) = &f.fix {
            s.push_str(&format!("      {:<13}fix: {fix}\n", ""));
        }
    }
    let fails = findings.iter().filter(|f| f.status == Level::Fail).count();
    let warns = findings.iter().filter(|f| f.status == Level::Warn).count();
    s.push_str(&format!("\n{fails} failed, {warns} warning(s)\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERISH: &str = r#"{"nftables":[
      {"metainfo":{"version":"1.0.9"}},
      {"table":{"family":"ip","name":"filter","handle":1}},
      {"chain":{"family":"ip","table":"filter","name":"FORWARD","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"drop"}},
      {"chain":{"family":"inet","table":"netd","name":"forward","handle":2,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
      {"rule":{"family":"inet","table":"netd","chain":"forward","handle":9,"expr":[{"drop":null}]}},
      {"chain":{"family":"inet","table":"fw","name":"fwd","handle":3,"type":"filter","hook":"forward","prio":10,"policy":"accept"}},
      {"rule":{"family":"inet","table":"fw","chain":"fwd","handle":4,"expr":[{"counter":{"packets":0,"bytes":0}},{"drop":null}]}}
    ]}"#;

    #[test]
    fn names_foreign_drop_policies_and_unconditional_drops() {
        let f = forward_findings(DOCKERISH, "netd", &["nd-a".into()], false);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(
            f[0].detail.contains("table ip filter, chain FORWARD"),
            "{f:#?}"
        );
        assert!(f[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("iifname { \"nd-a\" } accept"));
        assert!(
            f[1].detail
                .contains("table inet fw, chain fwd, rule handle 4"),
            "{f:#?}"
        );
        assert!(f.iter().all(|x| x.status == Level::Fail));
    }

    #[test]
    fn conditional_drops_are_warnings_and_invalid_state_drops_are_fine() {
        let json = r#"{"nftables":[
          {"chain":{"family":"inet","table":"firewalld","name":"filter_FORWARD","hook":"forward","prio":10,"policy":"accept"}},
          {"rule":{"family":"inet","table":"firewalld","chain":"filter_FORWARD","handle":7,"expr":[
            {"match":{"op":"in","left":{"ct":{"key":"state"}},"right":"invalid"}},{"drop":null}]}},
          {"rule":{"family":"inet","table":"firewalld","chain":"filter_FORWARD","handle":8,"expr":[
            {"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"eth1"}},{"drop":null}]}},
          {"rule":{"family":"inet","table":"firewalld","chain":"filter_FORWARD","handle":9,"expr":[
            {"reject":{"type":"icmpx","expr":"admin-prohibited"}}]}}
        ]}"#;
        let f = forward_findings(json, "netd", &[], true);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(f[0].status, Level::Warn);
        assert!(f[0].detail.contains("rule handle 8"), "{f:#?}");
        assert_eq!(f[1].status, Level::Fail);
        assert!(f[1].detail.contains("rule handle 9"), "{f:#?}");
        assert!(
            f[1].fix
                .as_deref()
                .unwrap()
                .contains("--zone=trusted --add-interface=nd-NAME"),
            "{f:#?}"
        );
    }

    #[test]
    fn an_accept_for_netds_bridges_settles_a_drop_policy() {
        let json = r#"{"nftables":[
          {"chain":{"family":"ip","table":"filter","name":"FORWARD","hook":"forward","prio":0,"policy":"drop"}},
          {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":5,"expr":[
            {"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"nd-*"}},{"accept":null}]}}
        ]}"#;
        assert!(forward_findings(json, "netd", &[], false).is_empty());
    }
}
